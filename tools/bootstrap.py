"""Install rein-d2 and everything it needs into the running Python, with no human.

Detectron2 is not on PyPI under its own name. An importable, registered Detectron2 (for
example one built from source) is kept. Otherwise the registry build `sal-detectron2`
(Detectron2's Python sources in a cp310 wheel) is downloaded, its hash verified, its
compiled `_C` for CPython 3.10 and its stray top-level `tools` package left out, and it
is re-registered under the distribution name `detectron2` so that setup.py's requirement
is satisfied. rein-d2 never uses Detectron2's compiled ops.

Usage: python tools/bootstrap.py [--tests]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import itertools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
D2_WHEEL_NAME = "sal-detectron2"
D2_VERSION = "0.7.2"
D2_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
# Installed without their declared requirements: imagecorruptions-imaug would add the GUI
# build of OpenCV beside the headless one (both own `cv2`); what it imports is in setup.py.
NO_DEPS = ["imagecorruptions-imaug==1.1.5"]
# References in the tests, installed without their declared requirements: the official DINOv2
# model code (its pins, torch 2.0 and xformers, are not needed), MMEngine, which writes
# checkpoints as the official Rein releases were written (it requires the GUI OpenCV, which
# fights the headless build over `cv2`; its light requirements are setup.py's "test" extra), and
# Meta's segment-anything, whose model writes SAM's release layout (it needs only torch).
TEST_ONLY_NO_DEPS = ["dinov2==0.0.1.dev2", "mmengine==0.10.7", "segment-anything==1.0"]


# setup.py's floors (tests/test_bootstrap.py keeps the two equal): what the code calls first
# appeared in these versions. An older one already installed (e.g. a CUDA build chosen by the
# user) is reported here instead of being replaced by pip or failing mid-run.
VERSION_FLOORS = {"torch": ("2.4", "torch.get_autocast_dtype and torch.is_autocast_enabled(device_type)"),
                  "timm": ("1.0.13", "timm.layers.use_reentrant_ckpt")}


def version_tuple(version: str) -> tuple[int, ...]:
    """(2, 4, 1) of "2.4.1+cu121"; enough to compare release versions."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def check_installed_floors() -> None:
    """Refuse to go on over an installed torch or timm older than rein-d2 needs."""
    for package, (floor, needs) in VERSION_FLOORS.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue  # pip installs a recent one
        if version_tuple(installed) < version_tuple(floor):
            raise SystemExit(f"bootstrap: {package} {installed} is installed, but rein-d2 needs {package}>={floor} "
                             f"({needs}). Upgrade it first, keeping your CUDA build, e.g. "
                             f"pip install '{package}>={floor}' (for torch, with the --index-url of your CUDA "
                             "version from pytorch.org), then run this again.")


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def registered_detectron2() -> str | None:
    """Version of an installed, importable Detectron2 distribution, or None."""
    try:
        version = importlib.metadata.version("detectron2")
    except importlib.metadata.PackageNotFoundError:
        return None
    probe = subprocess.run([sys.executable, "-c", "import detectron2"], capture_output=True)
    return version if probe.returncode == 0 else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_registry_wheel(dest: Path) -> Path:
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10",
        "--dest", str(dest), f"{D2_WHEEL_NAME}=={D2_VERSION}")
    wheels = list(dest.glob("sal_detectron2-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"bootstrap: expected one sal_detectron2 wheel in {dest}, found {wheels}")
    actual = sha256_of(wheels[0])
    if actual != D2_SHA256:
        raise SystemExit(f"bootstrap: {wheels[0].name} has sha256 {actual}, expected {D2_SHA256}; "
                         "refusing to install it")
    return wheels[0]


def rewrite_lines(path: Path, replacements: dict[str, str]) -> None:
    """Replace whole lines that start with a key of `replacements`."""
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        key = next((k for k in replacements if line.startswith(k)), None)
        out.append(replacements[key] if key else line)
    path.write_text("\n".join(out) + "\n")


def repack_as_detectron2(wheel: Path, work: Path) -> Path:
    """Turn the sal-detectron2 wheel into a pure-Python wheel named detectron2."""
    pip("install", "--quiet", "wheel")
    subprocess.run([sys.executable, "-m", "wheel", "unpack", str(wheel), "-d", str(work)], check=True)
    root = next(p for p in work.iterdir() if p.is_dir())
    for compiled in (root / "detectron2").glob("_C*.so"):
        compiled.unlink()
    shutil.rmtree(root / "tools", ignore_errors=True)
    old_info = next(root.glob("*.dist-info"))
    info = old_info.rename(root / f"detectron2-{D2_VERSION}.dist-info")
    rewrite_lines(info / "METADATA", {"Name:": "Name: detectron2"})
    rewrite_lines(info / "WHEEL", {"Root-Is-Purelib:": "Root-Is-Purelib: true", "Tag:": "Tag: py3-none-any"})
    (info / "top_level.txt").write_text("detectron2\n")
    (info / "RECORD").unlink()
    packed = root.rename(work / f"detectron2-{D2_VERSION}")
    out = work / "dist"
    out.mkdir()
    subprocess.run([sys.executable, "-m", "wheel", "pack", str(packed), "-d", str(out)], check=True)
    return next(out.glob("detectron2-*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", action="store_true", help="also install the test requirements")
    args = parser.parse_args()

    check_installed_floors()
    kept = registered_detectron2()
    # One resolver run for Detectron2 and rein-d2, so that their requirements agree.
    install = ["install", "--quiet"]
    with tempfile.TemporaryDirectory(prefix="rein-d2-bootstrap-") as tmp:
        if kept:
            print(f"bootstrap: keeping the installed detectron2 {kept}")
        else:
            wheel = download_registry_wheel(Path(tmp) / "download")
            install.append(str(repack_as_detectron2(wheel, Path(tmp) / "repack")))
        install += ["-e", f"{REPO}[test]" if args.tests else str(REPO)]
        pip(*install)
    pip("install", "--quiet", "--no-deps", *NO_DEPS, *(TEST_ONLY_NO_DEPS if args.tests else []))
    print("bootstrap: rein-d2 is installed in", sys.prefix)


if __name__ == "__main__":
    main()
