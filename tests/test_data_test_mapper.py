"""The test-time resize rules and the test mapper's output contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from rein_d2.config import add_rein_config
from rein_d2.data import DGTestDatasetMapper, ImageReadError, fit_in
from rein_d2.errors import ConfigError
from test_data_layouts import H, W, make_prepared_tree, read


@pytest.mark.parametrize("size, scale, expected", [
    ((1024, 2048), (1024, 512), (512, 1024)),    # Cityscapes 2048x1024 -> 1024x512
    ((1024, 2048), (2048, 1024), (1024, 2048)),  # ... 1024-crop configs keep it
    ((720, 1280), (1280, 720), (720, 1280)),     # BDD as is
    ((1080, 1920), (960, 540), (540, 960)),      # ACDC, 512-crop configs
    ((1080, 1920), (1920, 1080), (1080, 1920)),  # ACDC, 1024-crop configs
    ((1224, 1632), (1024, 512), (512, 683)),     # Mapillary half (3264x2448), landscape
    ((1000, 750), (1024, 512), (683, 512)),      # Mapillary half, portrait: long side <= 1024
    ((1052, 1914), (1280, 720), (704, 1280)),    # GTAV 1914x1052
    ((32, 64), (1024, 512), (512, 1024)),        # small images are enlarged, as in MMSeg
])
def test_fit_in_keeps_ratio_inside_the_box(size, scale, expected):
    assert fit_in(*size, scale) == expected


def test_scale_multiplier_follows_the_sliding_crop():
    cfg = get_cfg()
    assert DGTestDatasetMapper(cfg).scale_multiplier == 1.0  # no TEST.SLIDE: the 512 protocol
    add_rein_config(cfg)
    cfg.TEST.SLIDE.CROP_SIZE = [1024, 1024]
    mapper = DGTestDatasetMapper(cfg)
    assert mapper.scale_multiplier == 2.0 and mapper.image_format == "BGR"
    assert mapper.target_size("dg_acdc_night_val", 1080, 1920) == (1080, 1920)
    assert mapper.target_size("dg_cityscapes_val", 1024, 2048) == (1024, 2048)
    assert mapper.target_size("dg_synthia_train", 760, 1280) == (760, 1280)  # no rule: as is


def test_mapper_resizes_image_and_keeps_label_size(dg_root):
    make_prepared_tree(dg_root)
    record = DatasetCatalog.get("dg_cityscapes_val")[0]
    rgb = DGTestDatasetMapper(image_format="RGB")(record)
    assert rgb["image"].dtype == torch.uint8 and tuple(rgb["image"].shape) == (3, 512, 1024)
    assert (rgb["height"], rgb["width"]) == (H, W)  # the label's size, for scoring
    assert rgb["file_name"] == record["file_name"]
    assert rgb["sem_seg_file_name"] == record["sem_seg_file_name"]
    assert rgb["dataset_name"] == "dg_cityscapes_val"
    bgr = DGTestDatasetMapper(image_format="BGR")(record)
    assert torch.equal(bgr["image"], rgb["image"].flip(0))

    bdd = DGTestDatasetMapper(image_format="RGB")(DatasetCatalog.get("dg_bdd_val")[0])
    assert tuple(bdd["image"].shape) == (3, 720, 1280) and (bdd["height"], bdd["width"]) == (45, 80)
    pixels = read(DatasetCatalog.get("dg_bdd_val")[0]["file_name"])
    small = DGTestDatasetMapper(image_format="RGB", scale_multiplier=80 / 1280)(
        DatasetCatalog.get("dg_bdd_val")[0])
    assert np.array_equal(small["image"].permute(1, 2, 0).numpy(), pixels)  # no-op resize

    test = DGTestDatasetMapper(image_format="RGB")(DatasetCatalog.get("dg_acdc_fog_test")[0])
    assert (test["height"], test["width"]) == (H, W) and "sem_seg_file_name" not in test


def test_unreadable_image_names_the_file(dg_root):
    make_prepared_tree(dg_root)
    record = DatasetCatalog.get("dg_gtav_train")[0]
    with open(record["file_name"], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageReadError, match=f"cannot read image {record['file_name']}"):
        DGTestDatasetMapper(image_format="RGB")(record)
    with pytest.raises(ConfigError, match="has no 'dataset_name'"):
        DGTestDatasetMapper(image_format="RGB")({"file_name": record["file_name"]})
