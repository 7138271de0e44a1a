"""Tiny dataset trees in each real on-disk layout, and the registration/loading tests.

The builders write file names and label encodings as the real releases have them (GTAV
palette PNGs of Cityscapes ids, SYNTHIA 16-bit 3-channel labels, Mapillary v1.2 palette
indices...). Other test modules import them.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import rein_d2.data  # noqa: F401  (registers the DGSS datasets)
from rein_d2.data import ACDC_CONDITIONS, DG_DATASETS, DatasetLayoutError, register_dg_datasets

REPO = Path(__file__).resolve().parent.parent
W, H = 64, 32  # every generated image is 64x32 unless a test needs another size
PALETTE = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 151) % 256)]


def stripes(values, width: int = W, height: int = H, dtype=np.uint8) -> np.ndarray:
    """An id map whose vertical stripes cycle through `values` (each value present)."""
    columns = np.asarray(values, dtype=dtype)[np.arange(width) * len(values) // width]
    return np.repeat(columns[None, :], height, axis=0)


def write_rgb(path: Path, width: int = W, height: int = H, seed: int = 0) -> Path:
    """A random RGB image (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_ids(path: Path, ids: np.ndarray, palette: bool = False) -> Path:
    """A single-channel id PNG: grey ('L') or palette ('P', indices = ids)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), "L")
    if palette:
        image = Image.frombytes("P", image.size, image.tobytes())
        image.putpalette(PALETTE)
    image.save(path)
    return path


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def load_script(name: str):
    """datasets/<name>.py as an importable module (so worker processes can find it)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "datasets" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ---- trees as downloaded (raw labels) ----------------------------------------------------

def make_gtav(root: Path, raw_ids=(7, 8, 26, 0, 34), count: int = 2) -> Path:
    """gta/images/00001.png + gta/labels/00001.png (palette, Cityscapes label ids)."""
    for i in range(1, count + 1):
        write_rgb(root / "gta" / "images" / f"{i:05d}.png", seed=i)
        write_ids(root / "gta" / "labels" / f"{i:05d}.png", stripes(raw_ids), palette=True)
    return root / "gta"


def make_cityscapes(root: Path, raw_ids=(7, 8, 26, 24, 0), splits=("train", "val")) -> Path:
    """leftImg8bit/<split>/<city>/<name>_leftImg8bit.png + gtFine/..._gtFine_labelIds.png."""
    for split in splits:
        city = {"train": "aachen", "val": "frankfurt"}[split]
        for frame in ("000000_000019", "000001_000019"):
            name = f"{city}_{frame}"
            images = root / "cityscapes" / "leftImg8bit" / split / city
            write_rgb(images / f"{name}_leftImg8bit.png")
            write_ids(root / "cityscapes" / "gtFine" / split / city / f"{name}_gtFine_labelIds.png",
                      stripes(raw_ids))
    return root / "cityscapes"


def make_synthia(root: Path, class_ids=(3, 10, 21, 22, 0)) -> Path:
    """RGB/0000000.png + GT/LABELS/0000000.png: 16-bit, red = class id, green = instance."""
    label = np.zeros((H, W, 3), dtype=np.uint16)
    label[..., 0] = stripes(class_ids, dtype=np.uint16)
    label[..., 1] = 1000  # instance ids must not leak into the classes
    for i in range(2):
        write_rgb(root / "synthia" / "RGB" / f"{i:07d}.png", seed=i)
        path = root / "synthia" / "GT" / "LABELS" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), label[..., ::-1])  # OpenCV writes BGR
    return root / "synthia"


def make_urbansyn(root: Path, values=(0, 13, 18, 19)) -> Path:
    """rgb/rgb_0001.png + ss/ss_0001.png (grey train ids, 19 = unlabeled)."""
    for i in (1, 2):
        write_rgb(root / "urbansyn" / "rgb" / f"rgb_{i:04d}.png", seed=i)
        write_ids(root / "urbansyn" / "ss" / f"ss_{i:04d}.png", stripes(values))
    return root / "urbansyn"


def make_mapillary(root: Path, raw_ids=(13, 2, 24, 45, 49, 58, 20, 65, 0),
                   val_size=(66, 34)) -> Path:
    """{training,validation}/images/<id>.jpg + {...}/v1.2/labels/<id>.png (66-class palette)."""
    for split, size in (("training", (W, H)), ("validation", val_size)):
        for key in ("-0aBcD1eFgH2", "_1zYxW3vUt4S"):
            write_rgb(root / "mapillary" / split / "images" / f"{key}.jpg", *size)
            write_ids(root / "mapillary" / split / "v1.2" / "labels" / f"{key}.png",
                      stripes(raw_ids, *size), palette=True)
    return root / "mapillary"


def acdc_name(cond: str, split: str, suffix: str) -> str:
    return f"{cond}/{split}/GOPR0475/GOPR0475_frame_000041{suffix}"


def make_acdc(root: Path, conditions=ACDC_CONDITIONS, train_ids=(0, 10, 255)) -> Path:
    """rgb_anon/<cond>/<split>/<seq>/<seq>_frame_<n>_rgb_anon.png + gt/..._gt_labelTrainIds.png."""
    for cond in conditions:
        for split in ("train", "val", "test"):
            write_rgb(root / "acdc" / "rgb_anon" / acdc_name(cond, split, "_rgb_anon.png"))
            if split != "test":
                write_ids(root / "acdc" / "gt" / acdc_name(cond, split, "_gt_labelTrainIds.png"),
                          stripes(train_ids))
    return root / "acdc"


def make_bdd(root: Path, train_ids=(0, 13, 255), splits=("train", "val")) -> Path:
    """images/10k/<split>/<id>.jpg + labels/sem_seg/masks/<split>/<id>.png (train ids)."""
    for split in splits:
        for key in ("7d2f7975-e0c1c5a7", "7d4a9094-0455564b"):
            write_rgb(root / "bdd100k" / "images" / "10k" / split / f"{key}.jpg", 80, 45)
            write_ids(root / "bdd100k" / "labels" / "sem_seg" / "masks" / split / f"{key}.png",
                      stripes(train_ids, 80, 45))
    return root / "bdd100k"


# ---- the same trees after preparation (for loading tests) --------------------------------

def make_prepared_tree(root: Path) -> Path:
    """Every dataset in its prepared layout, with train-id labels already in place."""
    ids = stripes((0, 13, 255))
    for i in (1, 2):
        write_rgb(root / "gta" / "images" / f"{i:05d}.png")
        write_ids(root / "gta" / "labels" / f"{i:05d}_labelTrainIds.png", ids)
        write_rgb(root / "synthia" / "RGB" / f"{i:07d}.png")
        write_ids(root / "synthia" / "GT" / "LABELS" / f"{i:07d}_labelTrainIds.png", ids)
        write_rgb(root / "urbansyn" / "rgb" / f"rgb_{i:04d}.png")
        write_ids(root / "urbansyn" / "ss" / f"ss_{i:04d}_labelTrainIds.png", ids)
        for folder, labels in (("training/images", "cityscapes_trainIdLabel/train/label"),
                               ("half/val_img", "half/val_label")):
            write_rgb(root / "mapillary" / folder / f"m{i}.jpg")
            write_ids(root / "mapillary" / labels / f"m{i}.png", ids)
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        name = f"{city}_000000_000019"
        write_rgb(root / "cityscapes" / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
        labels = root / "cityscapes" / "gtFine" / split / city
        write_ids(labels / f"{name}_gtFine_labelTrainIds.png", ids)
    make_bdd(root)
    make_acdc(root)
    return root


# ---- tests --------------------------------------------------------------------------------

def test_every_split_is_registered_with_its_metadata():
    import detectron2.data.datasets  # noqa: F401  (Detectron2's builtin names, incl. Cityscapes)
    assert "cityscapes_fine_sem_seg_val" in DatasetCatalog  # builtin still there, untouched
    expected = {"dg_gtav_train", "dg_synthia_train", "dg_urbansyn_train", "dg_cityscapes_train",
                "dg_cityscapes_val", "dg_bdd_train", "dg_bdd_val", "dg_mapillary_train",
                "dg_mapillary_val", "dg_cityscapes_c_fog_5", "dg_cityscapes_c_gaussian_noise_1"}
    expected |= {f"dg_acdc_{c}_{s}" for c in ("night", "snow", "fog", "rain")
                 for s in ("train", "val", "test")}
    names = [d.name for d in DG_DATASETS]
    assert len(names) == len(set(names)) == 9 + 12 + 16 * 5
    assert expected <= set(names) and all(n.startswith("dg_") for n in names)
    for name in names:
        assert name in DatasetCatalog
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == 19 and meta.stuff_classes[13] == "car"
        assert meta.stuff_colors[0] == [128, 64, 128] and meta.ignore_label == 255
        assert meta.evaluator_type == "dg_sem_seg"
        assert meta.prepare_command.startswith("python datasets/prepare_")
    scales = {n: MetadataCatalog.get(n).test_scale for n in
              ("dg_cityscapes_val", "dg_bdd_val", "dg_mapillary_val", "dg_acdc_fog_test",
               "dg_gtav_train", "dg_cityscapes_c_snow_5")}
    assert scales == {"dg_cityscapes_val": (1024, 512), "dg_bdd_val": (1280, 720),
                      "dg_mapillary_val": (1024, 512), "dg_acdc_fog_test": (960, 540),
                      "dg_gtav_train": (1280, 720), "dg_cityscapes_c_snow_5": (1024, 512)}
    assert MetadataCatalog.get("dg_acdc_rain_test").sem_seg_root is None


def test_registration_does_not_touch_the_disk(monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("registration must not read the disk")

    for name in ("is_dir", "is_file", "exists", "iterdir", "glob", "rglob", "stat"):
        monkeypatch.setattr(pathlib.Path, name, forbidden)
    monkeypatch.setattr(os, "walk", forbidden)
    monkeypatch.setattr(os, "scandir", forbidden)
    register_dg_datasets(tmp_path / "nowhere")
    monkeypatch.undo()
    register_dg_datasets()


def test_missing_dataset_error_names_dataset_path_layout_and_command(dg_root):
    with pytest.raises(DatasetLayoutError) as error:
        DatasetCatalog.get("dg_mapillary_val")
    message = str(error.value)
    assert "dg_mapillary_val" in message
    assert str((dg_root / "mapillary" / "half" / "val_img").resolve()) in message
    assert "mapillary/half/val_img/**/<id>.jpg" in message
    assert "mapillary/half/val_label/**/<id>.png" in message
    assert "python datasets/prepare_mapillary.py" in message


def test_each_layout_loads_with_images_paired_to_labels(dg_root):
    make_prepared_tree(dg_root)
    counts = {"dg_gtav_train": 2, "dg_synthia_train": 2, "dg_urbansyn_train": 2,
              "dg_cityscapes_train": 1, "dg_cityscapes_val": 1, "dg_bdd_train": 2, "dg_bdd_val": 2,
              "dg_mapillary_train": 2, "dg_mapillary_val": 2, "dg_acdc_snow_val": 1}
    for name, count in counts.items():
        records = DatasetCatalog.get(name)
        assert len(records) == count, name
        for r in records:
            assert r["dataset_name"] == name and Path(r["file_name"]).is_file()
            assert Path(r["sem_seg_file_name"]).is_file()
            with Image.open(r["file_name"]) as image:  # what aspect-ratio grouping reads
                assert (r["width"], r["height"]) == image.size
    urbansyn = DatasetCatalog.get("dg_urbansyn_train")[0]
    assert Path(urbansyn["file_name"]).name == "rgb_0001.png"
    assert Path(urbansyn["sem_seg_file_name"]).name == "ss_0001_labelTrainIds.png"
    citys = DatasetCatalog.get("dg_cityscapes_val")[0]
    assert citys["sem_seg_file_name"].endswith(
        "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png")
    acdc = DatasetCatalog.get("dg_acdc_night_val")[0]
    assert acdc["sem_seg_file_name"].endswith(
        "gt/night/val/GOPR0475/GOPR0475_frame_000041_gt_labelTrainIds.png")
    test = DatasetCatalog.get("dg_acdc_night_test")
    assert len(test) == 1 and "sem_seg_file_name" not in test[0]


def test_unprepared_labels_and_leftover_partials_are_handled(dg_root):
    make_prepared_tree(dg_root)
    (dg_root / "gta" / "images" / ".00003.partial-99.png").write_bytes(b"half written")
    assert len(DatasetCatalog.get("dg_gtav_train")) == 2  # hidden partial file ignored
    (dg_root / "gta" / "labels" / "00002_labelTrainIds.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"1 of 2 images have no label.*00002_label"):
        DatasetCatalog.get("dg_gtav_train")
    for f in (dg_root / "bdd100k" / "images" / "10k" / "val").iterdir():
        f.unlink()
    with pytest.raises(DatasetLayoutError, match=r"dg_bdd_val.*no image named <id>\.jpg"):
        DatasetCatalog.get("dg_bdd_val")


def test_record_sizes_follow_exif_orientation_as_read_image_does(dg_root):
    """A phone photo stored 64x32 with "rotate 90" in its EXIF block decodes as 32x64."""
    from detectron2.data.detection_utils import read_image

    make_prepared_tree(dg_root)
    path = next((dg_root / "bdd100k" / "images" / "10k" / "val").glob("*.jpg"))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).convert("RGB").save(path, exif=exif)
    record = next(r for r in DatasetCatalog.get("dg_bdd_val") if r["file_name"] == str(path))
    assert (record["height"], record["width"]) == read_image(str(path)).shape[:2] == (80, 45)
