"""The built-in synthetic DG benchmark: determinism, shared labels, styles, cache, registration."""
import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from rein_d2.data.register import EVALUATOR_TYPE
from rein_d2.data import register as dg_register
from rein_d2.data.classes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS
from rein_d2.data.synthetic import (SOURCE_DOMAIN, SYNTHETIC_CLASSES, SYNTHETIC_IGNORE_LABEL, TARGET_DOMAINS,
                                    SplitSpec, ensure_split, ensure_splits, make_synthetic_video,
                                    register_synthetic_dg, render_sample)
from rein_d2.data.synthetic.classes import benchmark_labels
from rein_d2.data.synthetic.generate import render_street, scene_rng
from rein_d2.data.synthetic.scenes import render_scene

SIZE = dict(height=64, width=128)


def spec(domain="source", scenes="val", count=3, seed=0):
    return SplitSpec(domain, scenes, count, seed=seed, **SIZE)


def read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_same_seed_gives_identical_bytes(tmp_path):
    first = ensure_split(spec("fog"), tmp_path / "a")
    second = ensure_split(spec("fog"), tmp_path / "b")
    for one, two in zip(first, second):
        for key in ("file_name", "sem_seg_file_name"):
            assert open(one[key], "rb").read() == open(two[key], "rb").read()
    other_seed = ensure_split(spec("fog", seed=1), tmp_path / "c")
    assert (read(other_seed[0]["sem_seg_file_name"]) != read(first[0]["sem_seg_file_name"])).any()


def test_labels_are_identical_across_domains_and_images_differ():
    for index in range(2):
        source_image, source_labels = render_sample(spec(SOURCE_DOMAIN), index)
        for domain in TARGET_DOMAINS:
            image, labels = render_sample(spec(domain), index)
            np.testing.assert_array_equal(labels, source_labels, err_msg=domain)
            assert image.shape == (64, 128, 3) and image.dtype == np.uint8
            assert np.abs(image.astype(int) - source_image).mean() > 3, domain
    _, train_labels = render_sample(spec(SOURCE_DOMAIN, "train"), 0)
    assert (train_labels != render_sample(spec(SOURCE_DOMAIN, "val"), 0)[1]).any()


# The Cityscapes categories (cityscapesscripts' labels.py), flat split into road and sidewalk; the
# object and human categories are drawn but not scored (ignore label).
CATEGORY_OF = {"road": "road", "sidewalk": "sidewalk", "building": "construction", "wall": "construction",
               "fence": "construction", "pole": None, "traffic light": None, "traffic sign": None,
               "vegetation": "nature", "terrain": "nature", "sky": "sky", "person": None, "rider": None,
               "car": "vehicle", "truck": "vehicle", "bus": "vehicle", "train": "vehicle",
               "motorcycle": "vehicle", "bicycle": "vehicle"}


def test_labels_are_the_cityscapes_categories_of_what_is_drawn():
    rendered = render_scene(scene_rng(0, "train", 3), 64, 128)
    labels = benchmark_labels(rendered.labels)
    for train_id, name in enumerate(CITYSCAPES_CLASSES):
        drawn = rendered.labels == train_id
        category = CATEGORY_OF[name]
        expected = 255 if category is None else SYNTHETIC_CLASSES.index(category)
        assert (labels[drawn] == expected).all(), name
    assert (labels == 255).any() and len(SYNTHETIC_CLASSES) == 6


def test_only_benchmark_ids_and_most_classes_per_image():
    seen = set()
    for index in range(20):
        _, labels = render_sample(spec(scenes="train"), index)
        values = set(np.unique(labels).tolist())
        assert values <= set(range(len(SYNTHETIC_CLASSES))) | {SYNTHETIC_IGNORE_LABEL}, sorted(values)
        assert len(values - {SYNTHETIC_IGNORE_LABEL}) >= 5, (index, sorted(values))
        seen |= values
    assert seen == set(range(len(SYNTHETIC_CLASSES))) | {SYNTHETIC_IGNORE_LABEL}


def test_splits_of_one_street_set_render_each_street_once_with_the_same_bytes(tmp_path, monkeypatch):
    specs = [spec(domain, count=2) for domain in ("source", "fog", "jpeg")]
    alone = [ensure_split(s, tmp_path / "alone") for s in specs]
    calls = []
    monkeypatch.setattr("rein_d2.data.synthetic.generate.render_street",
                        lambda s, i: calls.append(i) or render_street(s, i))
    together = ensure_splits(specs, tmp_path / "together")
    assert sorted(calls) == [0, 1]
    in_parallel = ensure_splits(specs, tmp_path / "parallel", workers=2)
    for one, two, three in zip(alone, together, in_parallel):
        for a, b, c in zip(one, two, three):
            for key in ("file_name", "sem_seg_file_name"):
                assert open(a[key], "rb").read() == open(b[key], "rb").read() == open(c[key], "rb").read()


def _statistics(domain, count=4):
    images = [render_sample(spec(domain, count=count), i)[0] for i in range(count)]
    grey = [cv2.cvtColor(im, cv2.COLOR_BGR2GRAY).astype(np.float32) for im in images]
    detail = np.mean([np.abs(np.diff(g, axis=1)).mean() for g in grey])  # gradient energy
    return np.mean([g.mean() for g in grey]), np.mean([g.std() for g in grey]), detail


def test_domains_shift_appearance_as_named():
    mean, std, detail = _statistics("source")
    night, fog, snow = _statistics("night"), _statistics("fog"), _statistics("snow")
    assert night[0] < 0.4 * mean
    assert fog[0] > mean and fog[1] < std
    assert snow[0] > mean
    assert _statistics("noise")[2] > 2 * detail
    assert _statistics("blur")[2] < 0.7 * detail
    assert _statistics("texture")[2] > 1.2 * detail


def test_generation_is_idempotent_and_repairs_partial_splits(tmp_path):
    split = spec("night", count=3)
    records = ensure_split(split, tmp_path)
    folder = tmp_path / "night_val"
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    reference = {p: p.read_bytes() for p in stamps}
    assert ensure_split(split, tmp_path) == records
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten

    (folder / "manifest.json").unlink()  # as if interrupted before the end
    (folder / "images/00001.png").unlink()
    (folder / "images/00002.png").write_bytes(b"half-written")
    ensure_split(split, tmp_path)
    assert {p: p.read_bytes() for p in stamps} == reference
    assert not [p for p in folder.rglob(".*") if p.is_file()]  # no temporary files left

    (folder / "labels/00000_labelTrainIds.png").unlink()  # a file lost after completion
    ensure_split(split, tmp_path)
    assert (folder / "labels/00000_labelTrainIds.png").read_bytes() == reference[
        folder / "labels/00000_labelTrainIds.png"]

    bigger = ensure_split(spec("night", count=4), tmp_path)  # other parameters: regenerated
    assert len(bigger) == 4 and json.loads((folder / "manifest.json").read_text())["count"] == 4


def test_registration_round_trip(tmp_path):
    sizes = dict(train_count=2, val_count=2, domains=("night", "jpeg"), **SIZE)
    names = register_synthetic_dg(tmp_path, **sizes)
    assert names == ["synthetic_dg_source_train", "synthetic_dg_source_val",
                     "synthetic_dg_night_val", "synthetic_dg_jpeg_val"]
    assert not any(tmp_path.iterdir())  # lazy: nothing generated at registration
    assert register_synthetic_dg(tmp_path, **sizes) == names  # registering again is fine
    source_labels = None
    for name in names:
        records = DatasetCatalog.get(name)
        assert len(records) == 2
        for record in records:
            assert os.path.isfile(record["file_name"])
            assert os.path.isfile(record["sem_seg_file_name"])
            assert (record["height"], record["width"]) == (64, 128)
            assert read(record["file_name"]).shape == (64, 128, 3)
            assert record["dataset_name"] == name
        metadata = MetadataCatalog.get(name)
        assert metadata.stuff_classes == ["road", "sidewalk", "construction", "nature", "sky", "vehicle"]
        # each class in the official Cityscapes colour of one of its members
        assert metadata.stuff_colors == [list(CITYSCAPES_COLORS[CITYSCAPES_CLASSES.index(n)]) for n in (
            "road", "sidewalk", "building", "vegetation", "sky", "car")]
        assert metadata.ignore_label == SYNTHETIC_IGNORE_LABEL == 255
        assert metadata.evaluator_type == EVALUATOR_TYPE
        if name.endswith("_val"):
            labels = read(records[1]["sem_seg_file_name"])
            source_labels = labels if source_labels is None else source_labels
            np.testing.assert_array_equal(labels, source_labels)


def test_foreign_dataset_name_is_not_replaced(tmp_path, monkeypatch):
    name = "synthetic_dg_snow_val"
    monkeypatch.setattr(dg_register, "_REGISTERED", set())  # as if rein-d2 had not registered it
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    try:
        with pytest.raises(ValueError, match="already registered by another package"):
            register_synthetic_dg(tmp_path, domains=("snow",))
    finally:
        DatasetCatalog.remove(name)
        monkeypatch.undo()
        register_synthetic_dg()


def test_bad_parameters_fail_clearly():
    with pytest.raises(ValueError, match="unknown synthetic domain 'mist'"):
        spec("mist")
    with pytest.raises(ValueError, match="at least 1 image"):
        spec(count=0)


def test_video_is_coherent_and_keeps_its_frame_rate(tmp_path):
    path = make_synthetic_video(tmp_path / "street.mp4", "source", frames=12, fps=6.0, **SIZE)
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1].astype(np.float32))
    assert len(frames) == 12 and frames[0].shape == (64, 128, 3)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(6.0)
    step = np.mean([np.abs(a - b).mean() for a, b in zip(frames, frames[1:])])
    assert step < 0.5 * np.abs(frames[0] - frames[-1]).mean()  # the camera moves smoothly
    assert [p.name for p in tmp_path.iterdir()] == ["street.mp4"]
