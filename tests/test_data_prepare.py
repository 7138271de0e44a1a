"""Each prepare script on a tiny tree in its dataset's real layout.

Known raw ids must become known train ids; a second run must skip everything; bad
inputs must be reported with the file and the value; nothing half-written may remain.
"""
from __future__ import annotations

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from rein_d2.data import register_dg_datasets
from rein_d2.data.prepare_utils import PrepareError, write_image
from test_data_layouts import (H, W, acdc_name, load_script, make_acdc, make_bdd, make_cityscapes,
                               make_gtav, make_mapillary, make_synthia, make_urbansyn, read,
                               stripes, write_ids, write_rgb)


def run(script: str, *argv) -> int:
    """The script's exit code (a user error exits with 2)."""
    try:
        return load_script(script).main([str(a) for a in argv] + ["--workers", "1"])
    except SystemExit as exit_:
        return exit_.code


def stripe_values(labels: np.ndarray, count: int) -> list[int]:
    """The value at the centre of each of the `count` vertical stripes, left to right."""
    width = labels.shape[1]
    return [int(v) for v in labels[0, (2 * np.arange(count) + 1) * width // (2 * count)]]


def test_gtav_ids_to_train_ids_fixes_size_mismatch_and_is_idempotent(tmp_path, capsys):
    gta = make_gtav(tmp_path, raw_ids=(7, 8, 26, 0, 34))
    write_rgb(gta / "images" / "00002.png", W + 6, H + 2)  # a GTAV image larger than its label
    # Two workers: the multiprocessing path
    assert load_script("prepare_gtav").main(["--root", str(gta), "--workers", "2"]) == 0
    first = read(gta / "labels" / "00001_labelTrainIds.png")
    assert first.dtype == np.uint8 and first.shape == (H, W)
    assert stripe_values(first, 5) == [0, 1, 13, 255, 255]  # road, sidewalk, car, unlabeled, plate
    resized = read(gta / "labels" / "00002_labelTrainIds.png")
    assert resized.shape == (H + 2, W + 6) and set(np.unique(resized)) == {0, 1, 13, 255}
    assert "1 written, resized to its image" in capsys.readouterr().out

    mtime = (gta / "labels" / "00001_labelTrainIds.png").stat().st_mtime_ns
    assert run("prepare_gtav", "--root", gta) == 0
    assert "prepare_gtav: 2 skipped" in capsys.readouterr().out
    assert (gta / "labels" / "00001_labelTrainIds.png").stat().st_mtime_ns == mtime
    assert run("prepare_gtav", "--root", gta, "--force") == 0
    assert "2 skipped" not in capsys.readouterr().out


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    citys = make_cityscapes(tmp_path, raw_ids=(7, 8, 26, 24, 33, 0))
    assert run("prepare_cityscapes", "--root", citys) == 0
    out = citys / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png"
    assert stripe_values(read(out), 6) == [0, 1, 13, 11, 18, 255]
    assert len(list(citys.rglob("*_gtFine_labelTrainIds.png"))) == 4


def test_synthia_16bit_red_channel_to_train_ids(tmp_path):
    synthia = make_synthia(tmp_path, class_ids=(3, 10, 21, 8, 22, 0))
    assert run("prepare_synthia", "--root", synthia) == 0
    labels = read(synthia / "GT" / "LABELS" / "0000000_labelTrainIds.png")
    # road, person, wall, car, lane marking (ignored), void
    assert stripe_values(labels, 6) == [0, 11, 3, 13, 255, 255]


def test_urbansyn_keeps_train_ids_and_ignores_unlabeled(tmp_path):
    urbansyn = make_urbansyn(tmp_path, values=(0, 13, 18, 19))
    assert run("prepare_urbansyn", "--root", urbansyn) == 0
    assert stripe_values(read(urbansyn / "ss" / "ss_0002_labelTrainIds.png"), 4) == [0, 13, 18, 255]


def test_mapillary_66_classes_to_19_and_half_resolution_val(tmp_path):
    mapillary = make_mapillary(tmp_path, raw_ids=(13, 2, 24, 45, 49, 58, 20, 65, 0),
                               val_size=(66, 34))
    assert run("prepare_mapillary", "--root", mapillary) == 0
    # road, curb->sidewalk, lane marking->road, pole, sign back->sign, on rails->train,
    # bicyclist->rider, unlabeled, bird
    expected = [0, 1, 0, 5, 7, 16, 12, 255, 255]
    train = read(mapillary / "cityscapes_trainIdLabel" / "train" / "label" / "-0aBcD1eFgH2.png")
    assert stripe_values(train, 9) == expected and train.shape == (H, W)
    full = read(mapillary / "cityscapes_trainIdLabel" / "val" / "label" / "_1zYxW3vUt4S.png")
    assert stripe_values(full, 9) == expected and full.shape == (34, 66)
    half = read(mapillary / "half" / "val_label" / "_1zYxW3vUt4S.png")
    assert half.shape == (17, 33) and set(np.unique(half)) == set(expected)
    with Image.open(mapillary / "half" / "val_img" / "_1zYxW3vUt4S.jpg") as image:
        assert image.size == (33, 17) and image.format == "JPEG"

    register_dg_datasets(tmp_path)
    try:
        records = DatasetCatalog.get("dg_mapillary_val")
        assert len(records) == 2 and all(r["file_name"].endswith(".jpg") for r in records)
    finally:
        register_dg_datasets()


def test_mapillary_v2_label_is_rejected_with_its_file(tmp_path, capsys):
    mapillary = make_mapillary(tmp_path)
    write_ids(mapillary / "training" / "v1.2" / "labels" / "-0aBcD1eFgH2.png",
              stripes((13, 100)), palette=True)
    assert run("prepare_mapillary", "--root", mapillary) == 1
    err = capsys.readouterr().err
    assert "-0aBcD1eFgH2.png has ids up to 100" in err and "v1.2" in err


def test_acdc_checks_train_ids_converts_label_ids_and_reports_bad_values(tmp_path, capsys):
    acdc = make_acdc(tmp_path, conditions=("night", "fog"))
    fog_train = acdc / "gt" / acdc_name("fog", "train", "_gt_labelTrainIds.png")
    fog_train.unlink()
    write_ids(fog_train.with_name(fog_train.name.replace("TrainIds", "Ids")), stripes((7, 26, 3)))
    assert run("prepare_acdc", "--root", acdc, "--conditions", "night", "fog") == 0
    out = capsys.readouterr().out
    assert "3 checked" in out and "1 written" in out and "night test: 1 images" in out
    assert stripe_values(read(fog_train), 3) == [0, 13, 255]

    write_ids(acdc / "gt" / acdc_name("night", "val", "_gt_labelTrainIds.png"), stripes((0, 19)))
    assert run("prepare_acdc", "--root", acdc, "--conditions", "night") == 1
    err = capsys.readouterr().err
    assert "GOPR0475_frame_000041_gt_labelTrainIds.png contains value(s) 19" in err


def test_bdd_masks_are_checked(tmp_path, capsys):
    bdd = make_bdd(tmp_path)
    assert run("prepare_bdd", "--root", bdd) == 0
    assert "4 checked" in capsys.readouterr().out
    bad = bdd / "labels" / "sem_seg" / "masks" / "val" / "7d2f7975-e0c1c5a7.png"
    write_ids(bad, stripes((0, 42), 80, 45))
    small = bdd / "labels" / "sem_seg" / "masks" / "train" / "7d4a9094-0455564b.png"
    write_ids(small, stripes((0,), 40, 20))
    assert run("prepare_bdd", "--root", bdd) == 1
    err = capsys.readouterr().err
    assert f"{bad} contains value(s) 42" in err
    assert f"{small} is 40x20 but its image is 80x45" in err


def test_cityscapes_c_is_generated_deterministic_and_loadable(tmp_path, capsys):
    make_cityscapes(tmp_path, splits=("val",))
    assert run("prepare_cityscapes", "--root", tmp_path / "cityscapes", "--splits", "val") == 0
    argv = ["--root", tmp_path / "cityscapes-c", "--cityscapes", tmp_path / "cityscapes",
            "--corruptions", "gaussian_noise", "brightness", "--severities", "1", "5"]
    assert run("prepare_cityscapes_c", *argv) == 0
    rel = "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    clean = read(tmp_path / "cityscapes" / rel)
    outputs = {(c, s): tmp_path / "cityscapes-c" / c / str(s) / rel
               for c in ("gaussian_noise", "brightness") for s in (1, 5)}
    images = {key: read(path) for key, path in outputs.items()}
    for image in images.values():
        assert image.shape == clean.shape and image.dtype == np.uint8
        assert not np.array_equal(image, clean)
    noise_gap = {s: np.abs(images["gaussian_noise", s].astype(int) - clean).mean() for s in (1, 5)}
    assert noise_gap[5] > noise_gap[1]  # severity 5 is stronger

    assert run("prepare_cityscapes_c", *argv) == 0
    assert "4 skipped" in capsys.readouterr().out
    assert run("prepare_cityscapes_c", *argv, "--force") == 0
    for key, path in outputs.items():
        assert np.array_equal(read(path), images[key])  # fixed seeds: same images again

    register_dg_datasets(tmp_path)
    try:
        records = DatasetCatalog.get("dg_cityscapes_c_gaussian_noise_5")
        assert len(records) == 2
        assert records[0]["sem_seg_file_name"].endswith(
            "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png")
    finally:
        register_dg_datasets()


def test_missing_folder_exits_with_its_path(tmp_path, capsys):
    assert run("prepare_gtav", "--root", tmp_path / "gta") == 2
    err = capsys.readouterr().err
    assert f"GTAV label folder not found: {(tmp_path / 'gta' / 'labels').resolve()}" in err


def test_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "labels" / "00001_labelTrainIds.png"
    write_image(target, np.zeros((H, W), np.uint8))
    before = target.read_bytes()

    def interrupted(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(target, np.ones((H, W), np.uint8))
    assert target.read_bytes() == before  # the old complete file is untouched
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left


def test_write_image_refuses_a_file_that_reads_back_differently(tmp_path, monkeypatch):
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: real_open(fp).crop((0, 0, 2, 2)))
    with pytest.raises(PrepareError, match="read back differs"):
        write_image(tmp_path / "x.png", np.zeros((H, W), np.uint8))
    assert not any(tmp_path.iterdir())
