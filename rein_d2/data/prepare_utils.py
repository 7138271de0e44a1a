"""Machinery shared by datasets/prepare_*.py: command line, parallel progress, safe writes.

Every output is written to a hidden temporary file in its folder, read back and checked,
then moved into place with os.replace: an interrupted run never leaves a half-written
file under a real name, and a re-run skips what is already complete.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from ..errors import ReinD2Error
from ..utils.atomic import atomic_output
from ..utils.cli import user_errors
from .label_io import LabelError, check_train_ids, image_size, read_ids
from .loader import datasets_root

# PNG text chunk holding the fingerprint of the conversion that made an output (see is_complete).
STAMP_KEY = "rein_d2.conversion"


class PrepareError(ReinD2Error, RuntimeError):
    """One input cannot be prepared; the message names the file and the fix."""


def prepare_parser(description: str, folder: str | None) -> argparse.ArgumentParser:
    """The options every prepare script takes: --root (unless `folder` is None), --workers, --force."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if folder is not None:
        parser.add_argument("--root", type=Path, default=datasets_root() / folder,
                            help=f"dataset folder (default: $DETECTRON2_DATASETS/{folder})")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel processes (default: number of CPUs, at most 8)")
    parser.add_argument("--force", action="store_true",
                        help="redo outputs that already exist and look complete")
    return parser


def require_dir(folder: Path, what: str, hint: str) -> Path:
    """`folder`, or a PrepareError saying what was expected there."""
    if not folder.is_dir():
        raise PrepareError(f"{what} not found: {folder.resolve()}. {hint}")
    return folder


def files_with_suffix(folder: Path, suffix: str, exclude: str | None = None) -> list[Path]:
    """Sorted non-hidden files under `folder` ending with `suffix` (but not `exclude`)."""
    return sorted(p for p in folder.rglob(f"*{suffix}")
                  if not p.name.startswith(".") and not (exclude and p.name.endswith(exclude)))


def _stamp(path: Path) -> str | None:
    with Image.open(path) as image:
        return image.info.get(STAMP_KEY)


def is_complete(path: Path, size: tuple[int, int] | None = None, stamp: str | None = None) -> bool:
    """True if `path` exists, its header reads, its (width, height) is `size` and, if `stamp` is
    given, it was written with that stamp (an output of another conversion is not complete)."""
    if not path.is_file():
        return False
    try:
        return (size is None or image_size(path) == tuple(size)) and (stamp is None or _stamp(path) == stamp)
    except (LabelError, OSError, ValueError):
        return False


def write_image(path: Path, array: np.ndarray, stamp: str | None = None, **save_options) -> None:
    """Write atomically, then read back: lossless formats must match pixel for pixel.
    A `stamp` is stored in a PNG text chunk, for is_complete."""
    if stamp is not None:
        save_options["pnginfo"] = PngInfo()
        save_options["pnginfo"].add_text(STAMP_KEY, stamp)
    with atomic_output(path) as tmp:
        Image.fromarray(array).save(tmp, **save_options)
        with Image.open(tmp) as check:
            back = np.asarray(check)
        lossless = path.suffix.lower() == ".png"
        if back.shape != array.shape or (lossless and not np.array_equal(back, array)):
            raise PrepareError(f"{path}: the file read back differs from what was written "
                               "(disk full or failing?)")


def write_train_ids(path: Path, labels: np.ndarray, source: Path, *, num_classes: int, ignore_label: int,
                    stamp: str | None = None) -> None:
    """Check the values of a converted label map, then write it atomically."""
    check_train_ids(labels, source, num_classes=num_classes, ignore_label=ignore_label)
    write_image(path, labels.astype(np.uint8), stamp)


def read_checked_train_ids(path: Path, size: tuple[int, int] | None, *, num_classes: int,
                           ignore_label: int) -> np.ndarray:
    """A train-id label that must exist, hold valid values and have `size` (w, h)."""
    labels = read_ids(path)
    check_train_ids(labels, path, num_classes=num_classes, ignore_label=ignore_label)
    if size is not None and (labels.shape[1], labels.shape[0]) != tuple(size):
        raise PrepareError(f"label {path} is {labels.shape[1]}x{labels.shape[0]} but its image "
                           f"is {size[0]}x{size[1]}")
    return labels


@dataclass(frozen=True)
class LabelJob:
    """Convert `source` into the train-id label `out`, as large as `image` (or `source`)."""

    source: Path
    out: Path
    image: Path | None = None
    force: bool = False


def sibling_label_jobs(labels_dir: Path, images_dir: Path, out_suffix: str, force: bool, hint: str) -> list[LabelJob]:
    """One job per raw label PNG: its train-id map is written beside it as <stem><out_suffix>,
    sized like the image at the same relative path under `images_dir`."""
    raws = files_with_suffix(labels_dir, ".png", exclude=out_suffix)
    if not raws:
        raise PrepareError(f"no label PNG in {labels_dir.resolve()}. {hint}")
    return [LabelJob(raw, raw.with_name(raw.stem + out_suffix), images_dir / raw.relative_to(labels_dir), force)
            for raw in raws]


def convert_label(job: LabelJob, to_train_ids: Callable[[Path], np.ndarray],
                  resize_to_image: bool = False, *, num_classes: int, ignore_label: int,
                  stamp: str | None = None) -> str:
    """Skip a complete output (of the same `stamp`), else convert, size-check (or resize,
    nearest) and write."""
    if job.image is not None and not job.image.is_file():
        raise PrepareError(f"label {job.source} has no image {job.image}: extract the "
                           "dataset's images as well")
    size = image_size(job.image if job.image is not None else job.source)
    if not job.force and is_complete(job.out, size, stamp):
        return "skipped"
    labels = to_train_ids(job.source)
    status = "written"
    if (labels.shape[1], labels.shape[0]) != size:
        if not resize_to_image:
            raise PrepareError(f"label {job.source} is {labels.shape[1]}x{labels.shape[0]} but "
                               f"its image {job.image} is {size[0]}x{size[1]}")
        labels = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
        status = "written, resized to its image"
    write_train_ids(job.out, labels, job.source, num_classes=num_classes, ignore_label=ignore_label,
                    stamp=stamp)
    return status


def _guarded(work: Callable, job) -> tuple[str, str, object]:
    """(status, "", details) on success, ("failed", message, None) on a bad input."""
    try:
        result = work(job)
    except (PrepareError, LabelError, OSError, ValueError) as e:
        return "failed", str(e), None
    status, details = result if isinstance(result, tuple) else (result, None)
    return status, "", details


def run_jobs(work: Callable, jobs: Sequence, workers: int, desc: str,
             on_details: Callable[[object], None] | None = None) -> int:
    """Run `work(job)` for every job, `workers` processes at a time, with a progress bar.

    `work` returns a status word ("written", "skipped", ...), or (status, details) whose
    details go to `on_details` in this process; errors in one input do not stop the others.
    Prints a summary and returns the exit code (1 if any input failed).
    """
    guarded = functools.partial(_guarded, work)
    counts: Counter[str] = Counter()
    failures: list[str] = []

    def consume(results: Iterable[tuple[str, str, object]]) -> None:
        for status, message, details in tqdm(results, total=len(jobs), desc=desc, unit="file"):
            counts[status] += 1
            if message:
                failures.append(message)
            elif on_details is not None and details is not None:
                on_details(details)

    if workers > 1 and len(jobs) > 1:
        chunksize = max(1, len(jobs) // (workers * 64))
        with Pool(workers) as pool:
            consume(pool.imap_unordered(guarded, jobs, chunksize=chunksize))
    else:
        consume(map(guarded, jobs))
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to do"
    print(f"{desc}: {summary}")
    for message in failures[:20]:
        print(f"  FAILED {message}", file=sys.stderr)
    if len(failures) > 20:
        print(f"  ... and {len(failures) - 20} more failures", file=sys.stderr)
    return 1 if failures else 0


def main_guard(run: Callable[[], int]) -> int:
    """Run a prepare script's body: its exit code, or a user error's message and exit code 2."""
    return user_errors(run)()
