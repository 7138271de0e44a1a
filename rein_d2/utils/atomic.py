"""Atomic file writes: a reader never sees a half-written file, even after a crash.

Data goes to a hidden temporary file in the destination's folder (same file system),
which then replaces the destination with `os.replace`.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; it replaces `path` only if the block succeeds.

    The temporary name is unique, keeps the suffix (writers pick the format from it) and
    starts with a dot, so dataset scans skip a leftover from a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def encode_image(image: np.ndarray, suffix: str) -> bytes:
    """Encode a BGR (or single-channel) uint8 image in the format named by `suffix`."""
    try:
        ok, buffer = cv2.imencode(suffix, image)
    except cv2.error as e:
        raise ValueError(f"OpenCV cannot encode an image as '{suffix}': {e}. "
                         "Use .png or .jpg.") from e
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {image.shape} image as '{suffix}'. "
                         "Use .png or .jpg.")
    return buffer.tobytes()


def atomic_write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a BGR (or single-channel) uint8 image atomically, format from the file suffix."""
    atomic_write_bytes(path, encode_image(image, Path(path).suffix))
