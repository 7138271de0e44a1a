"""Folder datasets in Detectron2's catalogs: images and train-id labels under two folders, declared
by a dataset file (config key DATASETS.FILES) or by one call of register_sem_seg_folder().

Registering reads nothing from disk; the folders are scanned when the split is first loaded.
Detectron2's `load_sem_seg` does not fit: it lists one folder level only, pairs images with
labels by their position in two sorted lists, and keeps the intersection silently when the
counts differ. Here an image `<sub>/<id><image_suffix>` pairs with the label
`<sub>/<id><label_suffix>`, in any sub-folder, and a missing label is an error.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from .dataset_file import DatasetFileError, SemSegSplit, parse_split, read_dataset_file
from .loader import DatasetLayoutError, walk_stems, add_image_sizes

EVALUATOR_TYPE = "sem_seg"
_REGISTERED: dict[str, SemSegSplit] = {}


def pair_files(split: SemSegSplit, labels: tuple[Path, str] | None) -> list[tuple[Path, Path | None]]:
    """(image, label or None) for every non-hidden `<sub>/<id><image_suffix>` of the split, sorted;
    the label `<labels folder>/<sub>/<id><labels suffix>` may not exist; no image is an error.
    Label files are never images: neither those in label folders inside the image folder, nor,
    in an image folder that holds the labels as well, the files named <id><label_suffix>."""
    image_dir = split.image_dir.resolve()
    shared = split.label_dir is not None and split.label_dir.resolve() == image_dir
    inside = [folder.resolve().relative_to(image_dir) for folder in (split.label_dir, split.prepared_label_dir)
              if folder is not None and image_dir in folder.resolve().parents]
    pairs = []
    for sub, stem in walk_stems(split.image_dir, "", split.image_suffix):
        image = split.image_dir / sub / f"{stem}{split.image_suffix}"
        if (shared and split.label_suffix != split.image_suffix and image.name.endswith(split.label_suffix)) or any(
                sub == folder or folder in sub.parents for folder in inside):
            continue
        pairs.append((image, None if labels is None else labels[0] / sub / f"{stem}{labels[1]}"))
    if not pairs:
        paired = "" if labels is None else f"to pair with labels <id>{labels[1]} in {labels[0].resolve()}; "
        raise DatasetLayoutError(f"{split.where}: the split is empty: no file named <id>{split.image_suffix} "
                                 f"in {split.image_dir.resolve()} or its sub-folders ({paired}fields image_dir, "
                                 "image_suffix; suffixes are case-sensitive)")
    return pairs


def require_folder(split: SemSegSplit, folder: Path, key: str) -> None:
    if not folder.is_dir():
        start = "the current directory" if split.dataset_file is None else "the dataset file's folder"
        raise DatasetLayoutError(f"{split.where}, field '{key}': folder not found: {folder.resolve()} "
                                 f"(relative folders start at {start})")


def load_sem_seg_folder(split: SemSegSplit) -> list[dict]:
    """Detectron2 records: file_name, height, width, dataset_name, sem_seg_file_name (if labelled)."""
    require_folder(split, split.image_dir, "image_dir")
    labels = split.train_id_labels
    if labels is not None:
        require_folder(split, split.label_dir, "label_dir")
        if split.needs_preparation and not split.prepared_label_dir.is_dir():
            raise DatasetLayoutError(f"{split.where}: its labels are not prepared yet ({split.prepared_label_dir} "
                                     f"not found); run: {split.prepare_command()}")
    records, missing = [], []
    for image, label in pair_files(split, labels):
        record = {"file_name": str(image), "dataset_name": split.name}
        if label is not None:
            if not label.is_file():
                missing.append(label)
            record["sem_seg_file_name"] = str(label)
        records.append(record)
    if missing:
        fix = (f"prepare them (again): {split.prepare_command()}" if split.needs_preparation
               else f"check the fields label_dir and label_suffix ('{split.label_suffix}')")
        raise DatasetLayoutError(f"{split.where}: {len(missing)} of {len(records)} images have no label "
                                 f"<id>{labels[1]} in {labels[0].resolve()}, e.g. {missing[0].resolve()}; {fix}")
    return add_image_sizes(records)


def metadata(split: SemSegSplit) -> dict:
    """What Detectron2's Metadata carries for the split; stuff_colors only when the file gives colours."""
    meta = {"stuff_classes": list(split.classes), "ignore_label": split.ignore_label,
            "evaluator_type": EVALUATOR_TYPE, "image_root": str(split.image_dir)}
    if split.colors is not None:
        meta["stuff_colors"] = [list(color) for color in split.colors]
    if split.train_id_labels is not None:
        meta["sem_seg_root"] = str(split.train_id_labels[0])
    return meta


def register_split(split: SemSegSplit) -> None:
    """Register `split` in DatasetCatalog and MetadataCatalog. The same split again is a no-op;
    another split under a registered name is an error naming both."""
    known = _REGISTERED.get(split.name)
    if known == split:
        return
    if known is not None:
        differ = [f.name for f in fields(SemSegSplit) if f.compare and getattr(known, f.name) != getattr(split, f.name)]
        raise DatasetFileError(f"{split.where}: dataset '{split.name}' is already registered ({known.where}) "
                               f"with another {', '.join(differ)}; give one of them another name")
    if split.name in DatasetCatalog:
        raise DatasetFileError(f"{split.where}: the dataset name '{split.name}' is already registered (by "
                               "Detectron2's builtin datasets, rein-d2's or another package); choose another name")
    DatasetCatalog.register(split.name, functools.partial(load_sem_seg_folder, split))
    MetadataCatalog.get(split.name).set(**metadata(split))
    _REGISTERED[split.name] = split


def register_dataset_file(path: str | Path) -> tuple[str, ...]:
    """Register every split of a dataset file (all are checked before any is registered); their names."""
    splits = read_dataset_file(path)
    for split in splits:
        register_split(split)
    return tuple(split.name for split in splits)


def register_dataset_files(paths: Iterable[str | Path]) -> tuple[str, ...]:
    """DATASETS.FILES: every split of every file, relative paths from the current directory."""
    return tuple(name for path in paths for name in register_dataset_file(path))


def register_sem_seg_folder(name: str, image_dir: str | Path, label_dir: str | Path | None,
                            classes: Sequence[str], *, image_suffix: str = ".jpg", label_suffix: str = ".png",
                            colors: Sequence[Sequence[int]] | None = None, ignore_label: int = 255) -> SemSegSplit:
    """Register a folder of images and a folder of train-id labels (None: unlabelled) in one call.

    Checked like a dataset file; relative folders are resolved against the current directory.
    Labels that need converting (colour-coded, or raw ids) are described by a dataset file and
    converted by datasets/prepare_custom.py.
    """
    values = {"name": name, "image_dir": str(image_dir), "classes": list(classes), "image_suffix": image_suffix,
              "label_suffix": label_suffix, "ignore_label": ignore_label}
    if label_dir is not None:
        values["label_dir"] = str(label_dir)
    if colors is not None:
        values["colors"] = colors
    split = parse_split(values, f"register_sem_seg_folder('{name}')", Path.cwd(), None)
    register_split(split)
    return split
