"""Training mapper and photometric distortion."""
import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg

from rein_d2 import add_rein_config
from rein_d2.data.label_io import LabelError
from rein_d2.errors import ConfigError
from rein_d2.data.photometric import PhotometricDistortion, PhotometricParams, PhotometricTransform
from rein_d2.data.train_mapper import SemanticTrainMapper


def write_pair(tmp_path, h=60, w=100, bad_value=None):
    """An image whose red channel encodes its label, so geometry can be checked after mapping."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, size=(h // 10, w // 10)).repeat(10, 0).repeat(10, 1).astype(np.uint8)
    label[:10, :10] = 255
    if bad_value is not None:
        label[-1, -1] = bad_value
    image = np.stack([label * 10 % 256, np.full_like(label, 50), np.full_like(label, 90)], -1).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "img.png"), image[..., ::-1])  # stored BGR, read back as RGB
    cv2.imwrite(str(tmp_path / "lbl.png"), label)
    return {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "lbl.png"),
            "height": h, "width": w}


def mapper_cfg(crop=48, color=False, max_area=1.0):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (30, 60, 90)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 400
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (crop, crop)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = max_area
    cfg.INPUT.COLOR_AUG_SSD = color
    cfg.INPUT.SIZE_DIVISIBILITY = crop
    cfg.INPUT.FORMAT = "RGB"
    cfg.DATASETS.TRAIN = ("dg_cityscapes_train",)  # whose classes (19, ignore 255) check the labels
    return cfg


def test_image_and_label_stay_aligned_through_resize_crop_flip_and_padding(tmp_path):
    record = write_pair(tmp_path)
    mapper = SemanticTrainMapper(mapper_cfg())
    np.random.seed(0)
    sizes = set()
    for _ in range(12):
        out = mapper(dict(record))
        image, label = out["image"].numpy(), out["sem_seg"].numpy()
        assert image.shape[1:] == label.shape == (48, 48)
        sizes.add(tuple(np.argwhere(label != 255).max(0)))
        # nearest-neighbour labels vs bilinear image: compare away from label edges
        lab8, kernel = label.astype(np.uint8), np.ones((5, 5), np.uint8)
        interior = (label < 19) & (cv2.dilate(lab8, kernel) == cv2.erode(lab8, kernel))
        red = image[0][interior].astype(int)
        assert interior.sum() > 100
        assert np.array_equal(red, label[interior] * 10 % 256)
        assert set(np.unique(label)) <= set(range(19)) | {255}
    assert len(sizes) > 1  # random scales and crops happen


def test_crops_respect_the_single_category_area_limit(tmp_path):
    h, w = 64, 64
    label = np.zeros((h, w), np.uint8)
    label[:, 56:] = 1  # class 0 dominates almost everywhere
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((h, w, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "lbl.png"), label)
    record = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "lbl.png")}
    cfg = mapper_cfg(crop=16, max_area=0.75)
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    mapper = SemanticTrainMapper(cfg)
    np.random.seed(1)
    mixed = 0
    for _ in range(20):
        lab = mapper(dict(record))["sem_seg"].numpy()
        counts = np.bincount(lab[lab != 255].ravel(), minlength=2)
        mixed += counts.max() < 0.75 * counts.sum()
    assert mixed >= 10  # without the constraint about 1 crop in 6 would mix classes


def test_invalid_labels_and_mismatched_sizes_are_named(tmp_path):
    with pytest.raises(LabelError, match="lbl.png.*value\\(s\\) 40"):
        SemanticTrainMapper(mapper_cfg())(write_pair(tmp_path, bad_value=40))
    record = write_pair(tmp_path)
    cv2.imwrite(record["sem_seg_file_name"], np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="re-run the dataset's prepare script"):
        SemanticTrainMapper(mapper_cfg())(record)


@pytest.mark.parametrize("flip, mirrored_axis", [("horizontal", 1), ("vertical", 0), ("none", None)])
def test_random_flip_follows_the_config(tmp_path, flip, mirrored_axis):
    """A label whose left/top half is 1 and right/bottom half 2 shows which flips happened."""
    label = np.ones((32, 32), np.uint8)
    label[16:, :] += 1
    label[:, 16:] += 2  # quadrants: 1 2+1 / 1+1 2+2 -> values 1, 3, 2, 4
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((32, 32, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "lbl.png"), label)
    cfg = mapper_cfg(crop=32)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.CROP.ENABLED, cfg.INPUT.RANDOM_FLIP = (32,), False, flip
    mapper = SemanticTrainMapper(cfg)
    np.random.seed(0)
    seen = {tuple(mapper({"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "lbl.png")})
                  ["sem_seg"][[0, 0, 31, 31], [0, 31, 0, 31]].tolist()) for _ in range(16)}
    expected = {(1, 3, 2, 4)}
    if mirrored_axis == 1:
        expected.add((3, 1, 4, 2))
    elif mirrored_axis == 0:
        expected.add((2, 4, 1, 3))
    assert seen == expected


def test_unknown_flip_is_refused():
    cfg = mapper_cfg()
    cfg.INPUT.RANDOM_FLIP = "diagonal"
    with pytest.raises(ConfigError, match="INPUT.RANDOM_FLIP='diagonal'"):
        SemanticTrainMapper(cfg)


def test_records_without_sizes_get_them_from_the_image(tmp_path):
    record = write_pair(tmp_path)
    del record["height"], record["width"]
    out = SemanticTrainMapper(mapper_cfg())(dict(record))
    assert (out["height"], out["width"]) == (60, 100)
    record.update(height=61, width=100)
    with pytest.raises(ValueError, match="img.png"):
        SemanticTrainMapper(mapper_cfg())(record)


def test_photometric_steps_follow_mmseg():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    nothing = PhotometricParams(None, None, True, None, None)
    assert np.array_equal(PhotometricTransform(nothing, rgb=True).apply_image(image), image)
    bright = PhotometricParams(20.5, None, True, None, None)
    expected = np.clip(image.astype(np.float32) + 20.5, 0, 255).astype(np.uint8)
    assert np.array_equal(PhotometricTransform(bright, rgb=True).apply_image(image), expected)
    contrast = PhotometricParams(None, 1.4, False, None, None)
    expected = np.clip(image.astype(np.float32) * 1.4, 0, 255).astype(np.uint8)
    assert np.array_equal(PhotometricTransform(contrast, rgb=True).apply_image(image), expected)
    hue = PhotometricParams(None, None, True, None, 17)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 17) % 180
    assert np.array_equal(PhotometricTransform(hue, rgb=True).apply_image(image), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    both = PhotometricParams(-10.0, 0.7, False, 1.3, -5)
    rgb_out = PhotometricTransform(both, rgb=True).apply_image(image)
    bgr_out = PhotometricTransform(both, rgb=False).apply_image(image[..., ::-1].copy())
    assert np.array_equal(rgb_out, bgr_out[..., ::-1])
    label = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(PhotometricTransform(both, rgb=True).apply_segmentation(label), label)


def test_photometric_sampling_ranges():
    aug = PhotometricDistortion("RGB")
    np.random.seed(0)
    params = [aug.get_transform(None).params for _ in range(400)]
    brightness = [p.brightness for p in params if p.brightness is not None]
    assert 150 < len(brightness) < 250 and max(map(abs, brightness)) <= 32
    assert all(0.5 <= p.contrast <= 1.5 for p in params if p.contrast is not None)
    assert all(-18 <= p.hue <= 18 for p in params if p.hue is not None)
    assert {p.contrast_first for p in params} == {True, False}
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        PhotometricDistortion("YUV-BT.601")


def test_range_sampling_draws_short_edges_in_bounds_and_bad_settings_are_named(tmp_path):
    record = write_pair(tmp_path)  # 60x100: the short edge is the height
    cfg = mapper_cfg()
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.SIZE_DIVISIBILITY = False, -1
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = (40, 44), "range"
    mapper = SemanticTrainMapper(cfg)
    np.random.seed(0)
    heights = {mapper(dict(record))["sem_seg"].shape[0] for _ in range(40)}
    assert heights == set(range(40, 45))
    cfg.INPUT.MIN_SIZE_TRAIN = (40, 44, 48)
    with pytest.raises(ConfigError, match="INPUT.MIN_SIZE_TRAIN=\\[40, 44, 48\\] must be \\[min, max\\]"):
        SemanticTrainMapper(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "uniform"
    with pytest.raises(ConfigError, match="INPUT.MIN_SIZE_TRAIN_SAMPLING='uniform'"):
        SemanticTrainMapper(cfg)
