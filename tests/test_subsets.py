"""The 1/16 Cityscapes subset of the semi-supervised setting: a fixed, checkable draw."""
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from rein_d2.config import load_config
from rein_d2.data import DatasetLayoutError, register_dg_datasets
from rein_d2.data.subsets import SPLITS_DIR, draw_fraction, read_ids

REPO = Path(__file__).resolve().parents[1]
FULL = SPLITS_DIR / "cityscapes_train.txt"
ONE_16 = SPLITS_DIR / "cityscapes_train_1_16.txt"


def test_the_shipped_subset_is_the_documented_draw_from_the_full_list():
    full = read_ids(FULL)
    assert len(full) == len(set(full)) == 2975  # Cityscapes' fine train split
    assert len({i.split("/")[0] for i in full}) == 18  # cities
    subset = read_ids(ONE_16)
    assert len(subset) == 186 == round(2975 / 16) and set(subset) <= set(full)
    assert subset == draw_fraction(full, 16)  # same seed, same file list: same draw, every run
    assert subset != draw_fraction(full, 16, seed=1)


def write_cityscapes_train(root: Path, ids: list[str]) -> None:
    pixels = np.zeros((4, 8, 3), np.uint8)
    labels = np.zeros((4, 8), np.uint8)
    for i in ids:
        city, stem = i.split("/")
        image = root / "cityscapes" / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png"
        label = root / "cityscapes" / "gtFine" / "train" / city / f"{stem}_gtFine_labelTrainIds.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(image)
        Image.fromarray(labels).save(label)


def test_the_subset_is_registered_from_a_cityscapes_tree(tmp_path):
    subset = read_ids(ONE_16)
    others = [i for i in read_ids(FULL) if i not in subset][:20]
    write_cityscapes_train(tmp_path, subset + others)
    register_dg_datasets(tmp_path)
    try:
        records = DatasetCatalog.get("dg_cityscapes_train_1_16")
        assert [Path(r["file_name"]).name.removesuffix("_leftImg8bit.png") for r in records] == \
            [i.split("/")[1] for i in subset]
        assert all(Path(r["sem_seg_file_name"]).is_file() and r["height"] == 4 for r in records)
        meta = MetadataCatalog.get("dg_cityscapes_train_1_16")
        assert meta.stuff_classes == MetadataCatalog.get("dg_cityscapes_train").stuff_classes
        city, stem = subset[5].split("/")
        (tmp_path / "cityscapes" / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png").unlink()
        with pytest.raises(DatasetLayoutError, match=r"1 of the 186 images listed in .*cityscapes_train_1_16.txt"):
            DatasetCatalog.get("dg_cityscapes_train_1_16")
    finally:
        register_dg_datasets()


def test_the_semi_supervised_config_trains_on_the_subset_from_a_synthetic_checkpoint():
    cfg = load_config(str(REPO / "configs" / "dinov2" / "rein_dinov2_large_citys-1-16_512.yaml"))
    assert cfg.DATASETS.TRAIN == ("dg_cityscapes_train_1_16",) and cfg.DATASETS.TEST == ("dg_cityscapes_val",)
    assert cfg.SOLVER.MAX_ITER == 4000 and "urbansyn" in cfg.MODEL.WEIGHTS
