"""Your own dataset: turn its labels into train-id PNGs, as its dataset file describes them.

For each labelled split of the dataset file (or the one --split names), every image
<image_dir>/<sub>/<id><image_suffix> must have its label <label_dir>/<sub>/<id><label_suffix>:
  label_format: rgb   colour-coded labels -> train ids through `palette` (else `colors`); a
                      colour in neither (nor in `ignore_colors`) becomes the ignore label and is
                      reported; a label with such colours on more than half of its pixels fails
                      (a wrong palette, or not a colour-coded label).
  id_map              raw ids -> train ids; values not listed become the ignore label.
The train-id maps are written to <prepared_label_dir>/<sub>/<id>.png, which the registered
split reads. Labels that are train ids already are checked (present, as large as their
image, values within the classes) and left as they are.
Usage: python datasets/prepare_custom.py --dataset-file my.yaml [--split NAME] [--workers N] [--force]
"""
from __future__ import annotations

import difflib
import functools
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from rein_d2.data.dataset_file import SemSegSplit, read_dataset_file
from rein_d2.data.label_io import image_size, read_ids
from rein_d2.data.label_maps import make_lut
from rein_d2.data.prepare_utils import (LabelJob, PrepareError, convert_label, main_guard, prepare_parser,
                                        read_checked_train_ids, run_jobs)
from rein_d2.data.sem_seg_folder import pair_files, require_folder

# A label with colours outside the palette on more than this share of its pixels fails.
MAX_UNKNOWN_SHARE = 0.5
COLOR_MODES = ("RGB", "RGBA", "P")  # P: a palette PNG whose palette holds the class colours
SHOWN_COLORS = 10


def _codes(rgb: np.ndarray) -> np.ndarray:
    """One integer per colour: 0xRRGGBB."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _code(color: tuple[int, int, int]) -> int:
    return (color[0] << 16) | (color[1] << 8) | color[2]


def _color(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def colors_to_train_ids(path: Path, split: SemSegSplit, unknown: Counter) -> np.ndarray:
    """Colours -> train ids; colours outside the palette -> ignore label, counted in `unknown`."""
    try:
        with Image.open(path) as image:
            if image.mode not in COLOR_MODES:
                raise PrepareError(f"label {path} is a {image.mode} image, not a colour-coded label: for labels "
                                   f"of ids set label_format: ids in {split.dataset_file}")
            codes = _codes(np.asarray(image.convert("RGB")))
    except OSError as e:
        raise PrepareError(f"cannot read label {path}: {e}") from e
    values, inverse = np.unique(codes, return_inverse=True)
    known = {_code(color): train_id for color, train_id in split.color_table}
    ignored = {_code(color) for color in split.ignore_colors}
    train_ids = np.array([known.get(v, split.ignore_label) for v in values.tolist()], dtype=np.uint8)
    pixels = np.bincount(inverse.ravel(), minlength=len(values))
    outside = {v: int(n) for v, n in zip(values.tolist(), pixels.tolist()) if v not in known and v not in ignored}
    if sum(outside.values()) > MAX_UNKNOWN_SHARE * codes.size:
        common = ", ".join(str(list(_color(v))) for v, _ in Counter(outside).most_common(3))
        raise PrepareError(f"label {path}: {100 * sum(outside.values()) / codes.size:.0f}% of its pixels have "
                           f"colours outside the palette (most often {common}): is it a colour-coded label, and "
                           f"is the palette (or colors) of split '{split.name}' in {split.dataset_file} right?")
    unknown.update({_color(v): n for v, n in outside.items()})
    return train_ids[inverse].reshape(codes.shape)


def ids_to_train_ids(path: Path, split: SemSegSplit) -> np.ndarray:
    """Raw ids -> train ids through the id_map; values not listed -> ignore label."""
    ids = read_ids(path)
    if ids.dtype not in (np.uint8, np.uint16):
        raise PrepareError(f"label {path} holds {ids.dtype} values: expected 8 or 16-bit ids")
    return make_lut(dict(split.id_map), ids.dtype.type, split.ignore_label)[ids]


def _require_label(job: LabelJob, split: SemSegSplit) -> None:
    if not job.source.is_file():
        raise PrepareError(f"image {job.image} has no label {job.source} (fields label_dir, label_suffix of "
                           f"{split.where})")


def convert(job: LabelJob, split: SemSegSplit) -> tuple[str, Counter]:
    """One raw label -> its prepared train-id PNG; (status, pixels per colour outside the palette)."""
    _require_label(job, split)
    unknown: Counter = Counter()
    to_train_ids = (functools.partial(colors_to_train_ids, split=split, unknown=unknown)
                    if split.label_format == "rgb" else functools.partial(ids_to_train_ids, split=split))
    status = convert_label(job, to_train_ids, num_classes=len(split.classes), ignore_label=split.ignore_label,
                           stamp=split.conversion_stamp())
    return status, unknown


def check(job: LabelJob, split: SemSegSplit) -> str:
    """A label that is a train-id map already: present, as large as its image, valid values."""
    _require_label(job, split)
    read_checked_train_ids(job.source, image_size(job.image), num_classes=len(split.classes),
                           ignore_label=split.ignore_label)
    return "checked"


class UnknownColors:
    """Colours outside the palette, over all labels of a split: pixels and labels per colour."""

    def __init__(self) -> None:
        self.pixels: Counter = Counter()
        self.labels: Counter = Counter()

    def add(self, colors: Counter) -> None:
        """The colours outside the palette of one label, with their pixel counts."""
        self.pixels.update(colors)
        self.labels.update(colors.keys())

    def report(self, split: SemSegSplit) -> str | None:
        if not self.pixels:
            return None
        shown = ", ".join(f"{list(color)} ({n} px in {self.labels[color]} labels)"
                          for color, n in self.pixels.most_common(SHOWN_COLORS))
        more = f" and {len(self.pixels) - SHOWN_COLORS} more" if len(self.pixels) > SHOWN_COLORS else ""
        return (f"{split.name}: {sum(self.pixels.values())} pixels have colours outside the palette and became "
                f"the ignore label {split.ignore_label}: {shown}{more}. If they stand for a class, add them to "
                f"'palette' in {split.dataset_file} (or to 'ignore_colors' to silence this) and re-run.")


def split_jobs(split: SemSegSplit, force: bool) -> list[LabelJob]:
    """One job per image: its raw label -> the train-id label the registered split reads."""
    require_folder(split, split.image_dir, "image_dir")
    require_folder(split, split.label_dir, "label_dir")
    pairs = pair_files(split, (split.label_dir, split.label_suffix))
    # The registered split reads the same pairing with its train-id labels: the prepared ones if converted.
    read = pair_files(split, split.train_id_labels)
    return [LabelJob(raw, out, image, force) for (image, raw), (_, out) in zip(pairs, read)]


def select(splits: tuple[SemSegSplit, ...], name: str | None, path: Path) -> tuple[SemSegSplit, ...]:
    if name is None:
        return splits
    names = [s.name for s in splits]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise PrepareError(f"--split {name}: {path} has no such split; {hint}its splits are {', '.join(names)}")
    return tuple(s for s in splits if s.name == name)


def main(argv: list[str] | None = None) -> int:
    parser = prepare_parser(__doc__, None)
    parser.add_argument("--dataset-file", type=Path, required=True, help="the dataset's YAML or JSON file")
    parser.add_argument("--split", help="prepare this split only (default: every labelled split)")
    args = parser.parse_args(argv)

    def run() -> int:
        code = 0
        for split in select(read_dataset_file(args.dataset_file), args.split, args.dataset_file):
            desc = f"prepare_custom {split.name}"
            if split.label_dir is None:
                print(f"{desc}: no label_dir (an unlabelled split), nothing to prepare")
                continue
            jobs = split_jobs(split, args.force)
            if not split.needs_preparation:
                code = max(code, run_jobs(functools.partial(check, split=split), jobs, args.workers, desc))
                continue
            unknown = UnknownColors()
            code = max(code, run_jobs(functools.partial(convert, split=split), jobs, args.workers, desc, unknown.add))
            report = unknown.report(split)
            if report:
                print(f"note: {report}")
        return code

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
