"""Installs rein_d2; `make test` / `make demo` call this through tools/bootstrap.py."""
from setuptools import find_packages, setup

setup(
    name="rein-d2",
    version="0.1.0",
    description="Rein (CVPR 2024) for Detectron2: parameter-efficient refinement of frozen "
    "vision foundation models for domain-generalised semantic segmentation",
    python_requires=">=3.10",
    packages=find_packages(include=["rein_d2", "rein_d2.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "detectron2",
        "timm>=1.0",
        "fvcore",
        "pycocotools",
        "opencv-python-headless",
        "scipy",
        "safetensors",
        "tqdm",
        "numpy",
        "Pillow",
        "tabulate",
        "matplotlib",
        # Cityscapes-C corruptions (datasets/prepare_cityscapes_c.py): what imagecorruptions-imaug
        # imports; tools/bootstrap.py installs that package itself without its GUI OpenCV.
        "numba",
        "scikit-image",
    ],
    extras_require={"test": ["pytest"]},
)
