"""Detectron2's builtin semantic datasets through train_net.py, by name, and the class checks.

The trees are written as the datasets come: ADE20K as Detectron2's own
datasets/prepare_ade20k_sem_seg.py leaves it (`annotations_detectron2`: the ADE class ids
minus one, "other" 0 wrapping to the ignore label 255), Cityscapes as gtFine is downloaded
(labelIds, instanceIds, polygons JSON) and then prepared (labelTrainIds). Detectron2's own
loaders read them (`load_sem_seg`, `load_cityscapes_semantic`), whose records carry no
"dataset_name" and, for ADE20K, no image size.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin import register_all_ade20k
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from PIL import Image

from rein_d2.config import load_config
from rein_d2.data import DGTestDatasetMapper
from rein_d2.data.dataset_classes import DatasetClasses
from rein_d2.data.records import dataset_records
from rein_d2.data.train_mapper import SemanticTrainMapper
from rein_d2.errors import ConfigError
from test_data_layouts import H, W, make_cityscapes, stripes, write_ids, write_rgb
from test_real_layouts_train import TINY_DEFAULT_LOADER
from test_train_net import CONFIG as GTA_CONFIG

REPO = Path(__file__).resolve().parent.parent
ADE_CONFIG = str(REPO / "configs/ade20k/rein_dinov2_large_ade20k_512.yaml")
# ADE20K class ids as released (0 "other", 1..150): wall, building, sea (id 26 + 1, refused by
# a 19-class check), flag (the 150th class), other.
ADE_RAW_IDS = (1, 2, 27, 150, 0)
SMALL_TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "128"]


def make_ade20k(root: Path, raw_ids=ADE_RAW_IDS, count: int = 2) -> Path:
    """ADEChallengeData2016/images/{training,validation}/*.jpg and annotations/*.png as released,
    then annotations_detectron2/ as Detectron2's prepare_ade20k_sem_seg.py writes it (uint8 id - 1)."""
    ade = root / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in range(1, count + 1):
            name = f"{prefix}_{i:08d}"
            write_rgb(ade / "images" / split / f"{name}.jpg", W, H + 16, seed=i)
            raw = write_ids(ade / "annotations" / split / f"{name}.png", stripes(raw_ids, W, H + 16))
            converted = ade / "annotations_detectron2" / split / f"{name}.png"
            converted.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(Image.open(raw)) - 1).save(converted)
    return ade


def make_cityscapes_gtfine(root: Path) -> Path:
    """Cityscapes as downloaded (what Detectron2's loader reads besides the labels: every
    image's polygons JSON with its size, and the instanceIds PNG)."""
    cityscapes = make_cityscapes(root)
    for label_ids in (cityscapes / "gtFine").rglob("*_gtFine_labelIds.png"):
        stem = label_ids.name[: -len("_labelIds.png")]
        write_ids(label_ids.with_name(f"{stem}_instanceIds.png"), np.zeros((H, W), np.uint8))
        label_ids.with_name(f"{stem}_polygons.json").write_text(
            json.dumps({"imgHeight": H, "imgWidth": W, "objects": []}))
    return cityscapes


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """$DETECTRON2_DATASETS with ADE20K and Cityscapes, the latter prepared by its script."""
    root = tmp_path_factory.mktemp("datasets")
    make_ade20k(root)
    make_cityscapes_gtfine(root)
    env = {**os.environ, "DETECTRON2_DATASETS": str(root)}
    done = subprocess.run([sys.executable, str(REPO / "datasets/prepare_cityscapes.py")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return env


def train_net(env, out: Path, config: str, *opts, flags=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train_net.py"), "--config-file", config, *flags,
                           *TINY_DEFAULT_LOADER, "OUTPUT_DIR", str(out), *opts],
                          env=env, capture_output=True, text=True, cwd=out.parent)


def succeeded(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def per_domain_report(console: str) -> str:
    assert "Semantic segmentation per domain" in console
    return console[console.index("Semantic segmentation per domain"):]


def test_ade20k_trains_and_evaluates_by_name_with_its_150_classes(datasets, tmp_path):
    out = tmp_path / "ade"
    console = succeeded(train_net(datasets, out, ADE_CONFIG, "DATASETS.TRAIN", "('ade20k_sem_seg_train',)",
                                  "DATASETS.TEST", "('ade20k_sem_seg_val',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
                                  "150", "SOLVER.MAX_ITER", "2", *SMALL_TEST_SIZE))
    assert "Starting training from iteration 0" in console and (out / "model_final.pth").is_file()
    report = per_domain_report(console)
    assert "| ade20k_sem_seg_val" in report and "| mean of 1" in report
    for name in ("wall", "building", "sea", "flag", "glass, drinking glass"):  # a row per ADE20K class
        assert f"| {name} " in report
    assert "| road " not in report
    saved = json.loads((out / "inference" / "dg_results.json").read_text())
    assert saved["classes"] == ADE20K_SEM_SEG_CATEGORIES
    iou = saved["datasets"]["ade20k_sem_seg_val"]["IoU"]
    labelled = [name for name, value in iou.items() if value is not None]
    # IoU is defined where a class is labelled or predicted: at least the four labelled classes.
    assert {"wall", "building", "sea", "flag"} <= set(labelled)


def test_cityscapes_builtin_trains_and_is_scored_next_to_a_dgss_domain(datasets, tmp_path):
    out = tmp_path / "citys"
    console = succeeded(train_net(datasets, out, GTA_CONFIG, "DATASETS.TRAIN", "('cityscapes_fine_sem_seg_train',)",
                                  "DATASETS.TEST", "('cityscapes_fine_sem_seg_val', 'dg_cityscapes_val')",
                                  "SOLVER.MAX_ITER", "2", "TEST.SLIDE.ENABLED", "False", *SMALL_TEST_SIZE))
    report = per_domain_report(console)
    assert "| cityscapes_fine_sem_seg_val" in report and "| dg_cityscapes_val" in report
    assert "| mean of 2" in report and "| road " in report
    saved = json.loads((out / "inference" / "dg_results.json").read_text())["datasets"]
    # the same images and labels, read by two loaders, scored alike
    assert saved["cityscapes_fine_sem_seg_val"]["IoU"].keys() == saved["dg_cityscapes_val"]["IoU"].keys()


def test_a_class_count_other_than_the_datasets_is_refused_at_start(datasets, tmp_path):
    done = train_net(datasets, tmp_path / "run", ADE_CONFIG, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19")
    assert done.returncode != 0
    assert ("MODEL.SEM_SEG_HEAD.NUM_CLASSES is 19 but training dataset 'ade20k_sem_seg_train' has 150 classes"
            in done.stderr)
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "model_final.pth").exists()


def test_train_and_test_datasets_with_other_classes_are_refused_naming_both(datasets, tmp_path):
    done = train_net(datasets, tmp_path / "run", ADE_CONFIG, "DATASETS.TEST", "('cityscapes_fine_sem_seg_val',)",
                     flags=["--eval-only"])
    assert done.returncode != 0
    assert ("training dataset 'ade20k_sem_seg_train' (150 classes: wall, building, sky, floor, ...) and test "
            "dataset 'cityscapes_fine_sem_seg_val' (19 classes: road, sidewalk, building, wall, ...) have "
            "different class lists") in done.stderr


def test_a_label_outside_the_classes_names_the_file_the_value_and_the_class_count(tmp_path):
    root = tmp_path / "datasets"
    make_ade20k(root, raw_ids=(1, 2, 201), count=1)  # 201 - 1 = 200: not an ADE20K class
    done = train_net({**os.environ, "DETECTRON2_DATASETS": str(root)}, tmp_path / "run", ADE_CONFIG,
                     *SMALL_TEST_SIZE, flags=["--eval-only"])
    assert done.returncode != 0
    bad = root / "ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png"
    assert (f"label {bad} contains value(s) 200, outside the train ids 0..149 of its dataset's 150 classes"
            in done.stderr)


def test_a_missing_builtin_dataset_names_it_and_its_folders(tmp_path):
    done = train_net({**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "empty")}, tmp_path / "run",
                     ADE_CONFIG, "SOLVER.MAX_ITER", "1")
    assert done.returncode != 0
    assert "dataset 'ade20k_sem_seg_train' cannot be loaded" in done.stderr
    assert f"image_root: {tmp_path / 'empty' / 'ADEChallengeData2016' / 'images' / 'training'}" in done.stderr
    assert "Traceback" not in done.stderr


# ---- in one process: records, test-time resize, mixed ignore labels -----------------------------

@pytest.fixture
def ade20k_here(tmp_path):
    """Detectron2's own ADE20K registration, redone for a tree under tmp_path (then restored)."""
    def register(root: Path) -> None:
        for name in ("ade20k_sem_seg_train", "ade20k_sem_seg_val"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_all_ade20k(str(root))

    original = Path(MetadataCatalog.get("ade20k_sem_seg_val").image_root).parents[2]
    make_ade20k(tmp_path)
    register(tmp_path)
    yield tmp_path
    register(original)


def test_records_of_builtin_loaders_name_their_dataset(ade20k_here):
    assert "dataset_name" not in DatasetCatalog.get("ade20k_sem_seg_val")[0]
    records = dataset_records(["ade20k_sem_seg_val", "ade20k_sem_seg_val"])
    assert len(records) == 4 and {r["dataset_name"] for r in records} == {"ade20k_sem_seg_val"}
    with pytest.raises(ConfigError, match="dataset 'ade20k_sem_seg_vall' is not registered; did you mean "
                                          "ade20k_sem_seg_val"):
        dataset_records("ade20k_sem_seg_vall")


def test_datasets_without_an_official_rule_are_resized_by_min_size_test():
    cfg = load_config(ADE_CONFIG)
    mapper = DGTestDatasetMapper(cfg)
    # by hand: short side 400 -> 512 (x1.28), 600 -> 768; a 3000-wide panorama is capped at 2048
    assert mapper.target_size("ade20k_sem_seg_val", 400, 600) == (512, 768)
    assert mapper.target_size("ade20k_sem_seg_val", 500, 3000) == (341, 2048)
    assert mapper.target_size("dg_cityscapes_val", 1024, 2048) == (512, 1024)  # its own official rule
    assert DGTestDatasetMapper(image_format="RGB").target_size("ade20k_sem_seg_val", 400, 600) == (400, 600)


@pytest.fixture
def two_ignore_labels(tmp_path):
    """Two registered 3-class datasets, ignoring 200 and 255; one image with all values each."""
    names = {"toy_ignore200_train": 200, "toy_ignore255_train": 255}
    records = {}
    for name, ignore in names.items():
        image = write_rgb(tmp_path / name / "img.png", 64, 64)
        label = write_ids(tmp_path / name / "lbl.png", stripes((0, 1, 2, ignore), 64, 64))
        records[name] = [{"file_name": str(image), "sem_seg_file_name": str(label)}]
        DatasetCatalog.register(name, lambda r=records[name]: r)
        MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], ignore_label=ignore)
    yield records
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_datasets_with_different_ignore_labels_train_together(two_ignore_labels):
    cfg = load_config(GTA_CONFIG, ["DATASETS.TRAIN", str(tuple(two_ignore_labels)), "INPUT.MIN_SIZE_TRAIN", "(64,)",
                                   "INPUT.CROP.SIZE", "(64, 64)", "INPUT.SIZE_DIVISIBILITY", "64",
                                   "INPUT.RANDOM_FLIP", "none", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    mapper = SemanticTrainMapper(cfg)
    for record in dataset_records(cfg.DATASETS.TRAIN):
        values = np.unique(mapper(record)["sem_seg"].numpy())
        assert values.tolist() == [0, 1, 2, 255], record["dataset_name"]  # the model's IGNORE_VALUE
    with pytest.raises(ValueError, match=r"value\(s\) 200, outside the train ids 0\.\.2 of its dataset's 3 "
                                         "classes and the ignore label 255"):
        mapper({**two_ignore_labels["toy_ignore200_train"][0], "dataset_name": "toy_ignore255_train"})
    with pytest.raises(ConfigError, match="comes from dataset None, not one of the mapper's datasets"):
        mapper(two_ignore_labels["toy_ignore200_train"][0])  # two datasets: a record must say which


def test_stuff_colors_of_the_wrong_shape_are_refused(two_ignore_labels):
    MetadataCatalog.get("toy_ignore255_train").set(stuff_colors=[[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ConfigError, match="'toy_ignore255_train'.*one RGB triple of 0..255 per class \\(3\\)"):
        DatasetClasses.of("toy_ignore255_train")
