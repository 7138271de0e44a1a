"""Installs rein_d2; `make test` / `make demo` call this through tools/bootstrap.py."""
from setuptools import find_packages, setup

# tools/export_onnx.py and `demo/demo.py --backend onnxruntime`; the tests exercise both. numpy<2 is
# Detectron2 0.7.2's own bound: without it, pip resolving this extra over an installed Detectron2
# upgrades numpy to 2 for onnx's ml_dtypes (0.7 needs numpy 2) and breaks Detectron2.
ONNX = ["onnx", "onnxruntime", "numpy<2"]

setup(
    name="rein-d2",
    version="0.1.0",
    description="Rein (CVPR 2024) for Detectron2: parameter-efficient refinement of frozen "
    "vision foundation models for domain-generalised semantic segmentation",
    python_requires=">=3.10",
    packages=find_packages(include=["rein_d2", "rein_d2.*"]),
    install_requires=[
        # torch 2.4: device-generic autocast (torch.get_autocast_dtype, is_autocast_enabled(device));
        # timm 1.0.13: use_reentrant_ckpt. tools/bootstrap.py checks an installed torch/timm first.
        "torch>=2.4",
        "torchvision",
        "detectron2",
        "timm>=1.0.13",
        "fvcore",
        "pycocotools",
        "opencv-python-headless",
        "scipy",
        "safetensors",
        "tqdm",
        "numpy",
        "Pillow",
        "tabulate",
        "pyyaml",  # dataset files (DATASETS.FILES)
        "matplotlib",
        # Cityscapes-C corruptions (datasets/prepare_cityscapes_c.py): what imagecorruptions-imaug
        # imports; tools/bootstrap.py installs that package itself without its GUI OpenCV.
        "numba",
        "scikit-image",
    ],
    # pytest-xdist: `make test` runs the tests in one process per core.
    # addict, rich, termcolor, yapf: what mmengine (installed by tools/bootstrap.py --tests without
    # its GUI OpenCV requirement) imports; its matplotlib, numpy and pyyaml come with the above.
    extras_require={"onnx": ONNX, "test": ["pytest", "pytest-xdist", "addict", "rich", "termcolor", "yapf", *ONNX]},
)
