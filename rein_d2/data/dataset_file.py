"""A user's own semantic segmentation dataset, described by a YAML or JSON file instead of Python.

A dataset file holds one split (a mapping with `name`), a list of splits, or a mapping of
fields shared by its `splits: [...]`. Every field is checked here, so that a mistake is one
message naming the file, the split and the field; nothing is read from the dataset's folders
(that happens when the split is first loaded, see sem_seg_folder.py). Relative folders are
resolved against the dataset file's folder. The fields are documented with examples in
datasets/README.md, "Your own dataset".
"""
from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from ..errors import ConfigError

RGB = tuple[int, int, int]
LABEL_FORMATS = ("ids", "rgb")
# Labels that need converting are written by datasets/prepare_custom.py as <id> + this suffix.
PREPARED_SUFFIX = ".png"
PREPARED_DIR_SUFFIX = "_trainIds"  # default prepared_label_dir: <label_dir>_trainIds next to label_dir
REQUIRED_FIELDS = ("name", "image_dir", "classes")
PER_SPLIT_FIELDS = ("name", "image_dir", "label_dir", "prepared_label_dir")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
MAX_CLASSES = 255  # train ids 0..254 and an ignore label, in 8-bit PNGs


class DatasetFileError(ConfigError):
    """A dataset file (or register_sem_seg_folder call) that cannot describe a split."""


@dataclass(frozen=True)
class SemSegSplit:
    """One split of a folder dataset: where its images and labels are and what the labels mean.

    An image `<image_dir>/<sub>/<id><image_suffix>` pairs with the label
    `<label_dir>/<sub>/<id><label_suffix>`; without `label_dir` the split is unlabelled
    (inference only). Labels that need converting (colour-coded, or raw ids with an `id_map`)
    are read from `prepared_label_dir/<sub>/<id>.png`, which datasets/prepare_custom.py writes.
    """

    name: str
    image_dir: Path
    classes: tuple[str, ...]
    label_dir: Path | None = None
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    colors: tuple[RGB, ...] | None = None
    ignore_label: int = 255
    label_format: str = "ids"
    id_map: tuple[tuple[int, int], ...] | None = None  # (raw value, train id), sorted
    palette: tuple[tuple[RGB, int], ...] | None = None  # (colour, train id) of rgb labels
    ignore_colors: tuple[RGB, ...] = ()
    prepared_label_dir: Path | None = None
    # The dataset file that declares the split (None: register_sem_seg_folder), for messages.
    dataset_file: str | None = field(default=None, compare=False)

    @property
    def where(self) -> str:
        """The split as messages name it."""
        if self.dataset_file is None:
            return f"register_sem_seg_folder('{self.name}')"
        return f"dataset file {self.dataset_file}, split '{self.name}'"

    @property
    def needs_preparation(self) -> bool:
        """True if the raw labels are not train ids yet (prepare_custom.py converts them)."""
        return self.label_dir is not None and (self.label_format == "rgb" or self.id_map is not None)

    @property
    def train_id_labels(self) -> tuple[Path, str] | None:
        """(folder, suffix) of the train-id labels the registered split reads, None if unlabelled."""
        if self.label_dir is None:
            return None
        if self.needs_preparation:
            return self.prepared_label_dir, PREPARED_SUFFIX
        return self.label_dir, self.label_suffix

    @property
    def color_table(self) -> tuple[tuple[RGB, int], ...]:
        """Colour -> train id of colour-coded labels: `palette`, else `colors` in class order."""
        if self.palette is not None:
            return self.palette
        return tuple((color, train_id) for train_id, color in enumerate(self.colors or ()))

    def conversion_stamp(self) -> str:
        """Fingerprint of what prepare_custom.py makes of a raw label: a prepared label with
        another fingerprint (the palette or id_map changed since) is converted again."""
        recipe = [self.label_format, self.id_map, self.color_table, self.ignore_colors,
                  self.ignore_label, len(self.classes)]
        return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]

    def prepare_command(self) -> str:
        return f"python datasets/prepare_custom.py --dataset-file {self.dataset_file} --split {self.name}"


FIELDS = tuple(f.name for f in fields(SemSegSplit) if f.name != "dataset_file")


@dataclass(frozen=True)
class _Raw:
    """One split's fields as written, where they come from, and what relative folders mean."""

    values: Mapping
    where: str
    base: Path

    def error(self, key: str, problem: str) -> DatasetFileError:
        return DatasetFileError(f"{self.where}, field '{key}': {problem}")

    def get(self, key: str, default=None):
        return self.values.get(key, default)


def _check_keys(values: Mapping, allowed: tuple[str, ...], where: str) -> None:
    for key in values:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"the fields are {', '.join(allowed)}"
            raise DatasetFileError(f"{where}: unknown field '{key}'; {hint} (see datasets/README.md, "
                                   "'Your own dataset')")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(raw: _Raw, key: str, default: str | None = None) -> str | None:
    value = raw.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise raw.error(key, f"expected a non-empty string, got {value!r}")
    return value


def _folder(raw: _Raw, key: str) -> Path | None:
    value = _text(raw, key)
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else raw.base / path


def _rgb(raw: _Raw, key: str, value, what: str) -> RGB:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(_is_int(v) and 0 <= v <= 255 for v in value)):
        raise raw.error(key, f"{what} is {value!r}: expected [R, G, B], three integers 0..255")
    return tuple(value)


def _rgb_list(raw: _Raw, key: str, value, what: str) -> tuple[RGB, ...]:
    """One [R, G, B] or a list of them."""
    if not isinstance(value, (list, tuple)):
        raise raw.error(key, f"{what} is {value!r}: expected [R, G, B] or a list of them")
    single = bool(value) and not any(isinstance(v, (list, tuple)) for v in value)
    return tuple(_rgb(raw, key, color, what) for color in ([value] if single else value))


def _classes(raw: _Raw) -> tuple[str, ...]:
    value = raw.get("classes")
    if not isinstance(value, (list, tuple)) or not value:
        raise raw.error("classes", f"expected a non-empty list of class names in train-id order, got {value!r}")
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name:
            quote = " (YAML reads yes/no/on/off/numbers unquoted as other types: quote the name)"
            raise raw.error("classes", f"entry {index} is {name!r}: expected a class name{quote}")
    seen: dict[str, int] = {}
    for index, name in enumerate(value):
        if name in seen:
            raise raw.error("classes", f"'{name}' is listed twice (train ids {seen[name]} and {index}); "
                                       "class names must be unique")
        seen[name] = index
    if len(value) > MAX_CLASSES:
        raise raw.error("classes", f"{len(value)} classes: at most {MAX_CLASSES} fit in 8-bit label PNGs "
                                   "beside the ignore label")
    return tuple(value)


def _colors(raw: _Raw, classes: tuple[str, ...]) -> tuple[RGB, ...] | None:
    value = raw.get("colors")
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != len(classes):
        count = f"{len(value)} colours" if isinstance(value, (list, tuple)) else f"{value!r} instead of a list"
        raise raw.error("colors", f"{count} for {len(classes)} classes; give one [R, G, B] per "
                                  "class, in the order of 'classes'")
    return tuple(_rgb(raw, "colors", color, f"the colour of '{name}'") for name, color in zip(classes, value))


def _ignore_label(raw: _Raw, classes: tuple[str, ...]) -> int:
    value = raw.get("ignore_label", 255)
    if not _is_int(value) or not len(classes) <= value <= 255:
        raise raw.error("ignore_label", f"{value!r} is not an integer in {len(classes)}..255 (above the "
                                        f"train ids 0..{len(classes) - 1}, within 8-bit label PNGs)")
    return value


def _train_id(raw: _Raw, key: str, value, classes: tuple[str, ...], ignore_label: int, what: str) -> int:
    """A class name, a train id (0..C-1) or the ignore label."""
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    if _is_int(value) and (0 <= value < len(classes) or value == ignore_label):
        return value
    raise raw.error(key, f"{what} maps to {value!r}, which is neither a class name nor a train id "
                         f"0..{len(classes) - 1} (nor the ignore label {ignore_label})")


def _id_map(raw: _Raw, classes: tuple[str, ...], ignore_label: int) -> tuple[tuple[int, int], ...] | None:
    value = raw.get("id_map")
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise raw.error("id_map", f"expected a mapping raw label value -> train id or class name, got {value!r}")
    pairs = {}
    for key, target in value.items():
        raw_id = int(key) if isinstance(key, str) and key.isdigit() else key
        if not _is_int(raw_id) or not 0 <= raw_id <= 65535:
            raise raw.error("id_map", f"key {key!r} is not a raw label value 0..65535")
        pairs[raw_id] = _train_id(raw, "id_map", target, classes, ignore_label, f"raw value {raw_id}")
    return tuple(sorted(pairs.items()))


def _palette(raw: _Raw, classes: tuple[str, ...]) -> tuple[tuple[RGB, int], ...] | None:
    value = raw.get("palette")
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise raw.error("palette", f"expected a mapping class name -> [R, G, B] or a list of them, got {value!r}")
    table = []
    for name, colors in value.items():
        if name not in classes:
            close = difflib.get_close_matches(str(name), classes, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise raw.error("palette", f"'{name}' is not one of the classes{hint}")
        table += [(color, classes.index(name)) for color in _rgb_list(raw, "palette", colors, f"a colour of '{name}'")]
    return tuple(table)


def _check_colours_unique(raw: _Raw, split: SemSegSplit) -> None:
    """A colour can mean one thing only: one class, or ignore."""
    key = "palette" if split.palette is not None else "colors"
    owner: dict[RGB, str] = {}
    meanings = [(c, f"class '{split.classes[i]}'") for c, i in split.color_table]
    for color, meaning in meanings + [(c, "ignore_colors") for c in split.ignore_colors]:
        if color in owner:
            raise raw.error(key, f"colour {list(color)} is used twice ({owner[color]} and {meaning}); "
                                 "each colour of a colour-coded label must stand for one class or for ignore")
        owner[color] = meaning


def _is_within(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


def _prepared_label_dir(raw: _Raw, split: SemSegSplit) -> Path | None:
    given = _folder(raw, "prepared_label_dir")
    image_dir, image_suffix, label_dir = split.image_dir, split.image_suffix, split.label_dir
    if not split.needs_preparation:
        if given is not None:
            raise raw.error("prepared_label_dir", "only labelled splits whose labels need converting "
                                                  "(label_format: rgb, or an id_map) have prepared labels; remove it")
        return None
    prepared = given or label_dir.with_name(label_dir.name + PREPARED_DIR_SUFFIX)
    if _is_within(prepared, label_dir) or _is_within(label_dir, prepared):
        raise raw.error("prepared_label_dir", f"{prepared} and label_dir {label_dir} must be separate folders "
                                              "(neither inside the other): the raw labels stay as they are")
    if PREPARED_SUFFIX.endswith(image_suffix) and (_is_within(prepared, image_dir) or _is_within(image_dir, prepared)):
        raise raw.error("prepared_label_dir", f"{prepared} overlaps image_dir {image_dir}: its <id>{PREPARED_SUFFIX} "
                                              f"labels would be taken for <id>{image_suffix} images; choose another folder")
    return prepared


def parse_split(values: Mapping, where: str, base: Path, dataset_file: str | None) -> SemSegSplit:
    """One checked split from its fields; `where` names it in messages, `base` anchors relative folders."""
    if not isinstance(values, Mapping):
        raise DatasetFileError(f"{where}: expected a mapping of fields (name, image_dir, ...), got {values!r}")
    _check_keys(values, FIELDS, where)
    raw = _Raw(values, where, base)
    for key in REQUIRED_FIELDS:
        if key not in values:
            raise raw.error(key, "missing; every split needs name, image_dir and classes")
    classes = _classes(raw)
    ignore_label = _ignore_label(raw, classes)
    label_format = values.get("label_format", "ids")
    if label_format not in LABEL_FORMATS:
        raise raw.error("label_format", f"{label_format!r}: choose 'ids' (train-id or raw-id label images) or "
                                        "'rgb' (colour-coded labels)")
    split = SemSegSplit(
        name=_text(raw, "name"), image_dir=_folder(raw, "image_dir"), classes=classes,
        label_dir=_folder(raw, "label_dir"), image_suffix=_text(raw, "image_suffix", ".jpg"),
        label_suffix=_text(raw, "label_suffix", ".png"), colors=_colors(raw, classes), ignore_label=ignore_label,
        label_format=label_format, id_map=_id_map(raw, classes, ignore_label), palette=_palette(raw, classes),
        ignore_colors=_rgb_list(raw, "ignore_colors", raw.get("ignore_colors", []), "an ignore colour"),
        dataset_file=dataset_file)
    if split.label_suffix.lower().endswith(LOSSY_SUFFIXES):
        raise raw.error("label_suffix", f"{split.label_suffix!r}: JPEG labels are lossy (their values and "
                                        "colours bleed at every edge); use the dataset's PNG labels")
    if label_format == "rgb":
        if split.id_map is not None:
            raise raw.error("id_map", "applies to label_format 'ids'; colour-coded labels map colours to "
                                      "classes with 'palette' (or 'colors')")
        if split.palette is None and split.colors is None:
            raise raw.error("label_format", "'rgb' needs 'palette' (class -> colours) or 'colors' (one per "
                                            "class) to turn colours into train ids")
        _check_colours_unique(raw, split)
    else:
        for key in ("palette", "ignore_colors"):
            if values.get(key) is not None:
                raise raw.error(key, "applies to colour-coded labels only: set label_format: rgb, or remove it")
    return replace(split, prepared_label_dir=_prepared_label_dir(raw, split))


def _load(path: Path):
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise DatasetFileError(f"dataset file {path} is not valid {suffix[1:].upper()}: {err}") from err
    raise DatasetFileError(f"dataset file {path}: the name must end with .yaml, .yml or .json (the suffix picks the format)")


def _split_entries(data, path: Path) -> list[tuple[str, Mapping]]:
    """(where, fields) of every split, shared fields merged in."""
    where = f"dataset file {path}"
    if isinstance(data, list):
        shared, entries = {}, data
    elif isinstance(data, Mapping) and "splits" in data:
        shared = {k: v for k, v in data.items() if k != "splits"}
        _check_keys(shared, FIELDS + ("splits",), where)
        per_split = [k for k in shared if k in PER_SPLIT_FIELDS]
        if per_split:
            raise DatasetFileError(f"{where}: '{per_split[0]}' is a per-split field: write it in each entry "
                                   "of 'splits', not beside it")
        entries = data["splits"]
        if not isinstance(entries, list):
            raise DatasetFileError(f"{where}, field 'splits': expected a list of splits, got {entries!r}")
    elif isinstance(data, Mapping):
        shared, entries = {}, [data]
    else:
        raise DatasetFileError(f"{where}: expected one split (a mapping with name, image_dir, classes, ...), "
                               f"a list of splits, or a mapping with 'splits'; got {data!r}")
    if not entries:
        raise DatasetFileError(f"{where}: no split in it")
    named = []
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        label = f"split '{name}'" if isinstance(name, str) and name else f"split #{index + 1}"
        named.append((f"{where}, {label}", {**shared, **entry} if isinstance(entry, Mapping) else entry))
    return named


def read_dataset_file(path: str | Path) -> tuple[SemSegSplit, ...]:
    """Every split of a YAML (safe_load) or JSON dataset file, checked; the folders are not read."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(f"dataset file {path} not found (absolute: {path.resolve()})")
    splits = tuple(parse_split(values, where, path.resolve().parent, str(path))
                   for where, values in _split_entries(_load(path), path))
    by_name: dict[str, SemSegSplit] = {}
    by_output: dict[Path, SemSegSplit] = {}
    for split in splits:
        if split.name in by_name:
            raise DatasetFileError(f"dataset file {path}: two splits are named '{split.name}'")
        by_name[split.name] = split
        other = by_output.get(split.prepared_label_dir)
        if other is not None and other.conversion_stamp() != split.conversion_stamp():
            raise DatasetFileError(f"{split.where}, field 'prepared_label_dir': split '{other.name}' writes "
                                   f"other labels to the same folder {split.prepared_label_dir}; give each its own")
        if split.prepared_label_dir is not None:
            by_output[split.prepared_label_dir] = split
    return splits
