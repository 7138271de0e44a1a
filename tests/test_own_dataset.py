"""A user's own dataset without Python: a dataset file, datasets/prepare_custom.py, DATASETS.FILES.

The dataset is laid out as a user would have it: JPEG photos in sub-folders, colour-coded
PNG labels (RGB, and one palette PNG) saved by Pillow, five classes, one stray colour that is
in no palette. It is prepared by the script as a user runs it, then trained and evaluated by
train_net.py (one process, and two processes that each register the file themselves) and
segmented by demo/demo.py, all through DATASETS.FILES.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from rein_d2.config import load_config
from rein_d2.data.dataset_file import DatasetFileError, read_dataset_file
from rein_d2.data.loader import DatasetLayoutError
from rein_d2.data.sem_seg_folder import register_dataset_file, register_sem_seg_folder
from test_data_layouts import load_script, read
from test_train_net import CONFIG, REPO, TINY

CLASSES = ["background", "road", "building", "vegetation", "car"]
COLORS = [[0, 0, 0], [128, 64, 128], [70, 70, 70], [107, 142, 35], [0, 0, 142]]
STRAY = [250, 0, 250]  # a colour in no palette: the ignore label, reported
W, H = 96, 64
TRAIN = {"scene_a/0001": 0, "scene_a/0002": 1, "scene_b/0003": 2, "scene_b/0004": 3}  # id -> stripe shift
VAL = {"0101": 0, "0102": 2}
# The tiny model of test_train_net for 5 classes, images tested at their size (the user's splits have
# no test_scale: INPUT.MIN_SIZE_TEST would resize them), with DATASETS.* given by each test.
TINY_OWN = [v for pair in zip(TINY[::2], TINY[1::2]) if not pair[0].startswith("DATASETS.") for v in pair] + [
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "INPUT.MIN_SIZE_TEST", "0"]
FILES = ["DATASETS.FILES", "('my_data/my_dataset.yaml',)"]


def stripe_ids(shift: int) -> np.ndarray:
    """Train ids by hand: five vertical stripes 0..4, rolled by `shift`."""
    columns = (np.arange(W) * 5 // W + shift) % 5
    return np.repeat(columns[None, :], H, axis=0).astype(np.uint8)


def write_photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, quality=90)


def write_color_label(path: Path, ids: np.ndarray, as_palette_png: bool = False, stray: bool = False) -> None:
    """A colour-coded label as datasets ship them: an RGB PNG, or a palette PNG of the class colours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_palette_png:
        image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
        image.putpalette([v for color in COLORS for v in color])
    else:
        rgb = np.asarray(COLORS, dtype=np.uint8)[ids]
        if stray:
            rgb[:2, :3] = STRAY
        image = Image.fromarray(rgb, "RGB")
    image.save(path)


def make_user_dataset(root: Path) -> Path:
    """my_data/images/{train/<scene>,val}/<id>.jpg + annotations/.../<id>.png + my_dataset.yaml."""
    data = root / "my_data"
    for split, ids in (("train", TRAIN), ("val", VAL)):
        for i, (name, shift) in enumerate(ids.items()):
            write_photo(data / "images" / split / f"{name}.jpg", seed=i)
            write_color_label(data / "annotations" / split / f"{name}.png", stripe_ids(shift),
                              as_palette_png=name == "scene_b/0004", stray=name == "scene_a/0001")
    (data / "my_dataset.yaml").write_text(
        "# my five-class dataset: colour-coded PNG labels\n"
        f"classes: {json.dumps(CLASSES)}\n"
        f"colors: {json.dumps(COLORS)}\n"
        "label_format: rgb\n"
        "image_suffix: .jpg\n"
        "label_suffix: .png\n"
        "splits:\n"
        "  - {name: my_train, image_dir: images/train, label_dir: annotations/train}\n"
        "  - {name: my_val, image_dir: images/val, label_dir: annotations/val}\n")
    return data


def prepare(dataset_file: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "datasets" / "prepare_custom.py"), "--dataset-file",
                           str(dataset_file), *args], capture_output=True, text=True, cwd=cwd)


def prepare_here(capsys, dataset_file: Path, *args: str) -> tuple[int, str, str]:
    """prepare_custom.py's main in this process, one worker: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = load_script("prepare_custom").main(["--dataset-file", str(dataset_file), "--workers", "1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def train_net(cwd: Path, out: str, *opts: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "train_net.py"), "--config-file", CONFIG, *flags, *TINY_OWN,
                           "OUTPUT_DIR", out, *opts], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The user's dataset after `python datasets/prepare_custom.py --dataset-file my_data/my_dataset.yaml`."""
    root = tmp_path_factory.mktemp("user")
    make_user_dataset(root)
    done = prepare(Path("my_data/my_dataset.yaml"), "--workers", "2", cwd=root)
    assert done.returncode == 0, done.stderr
    return root, done.stdout


def test_prepare_converts_colours_and_reports_the_stray_colour(prepared):
    root, console = prepared
    assert "prepare_custom my_train: 4 written" in console and "prepare_custom my_val: 2 written" in console
    assert f"my_train: 6 pixels have colours outside the palette and became the ignore label 255: {STRAY}" in console
    out = root / "my_data" / "annotations"
    for split, ids in (("train", TRAIN), ("val", VAL)):
        for name, shift in ids.items():
            labels = read(out / f"{split}_trainIds" / f"{name}.png")
            expected = stripe_ids(shift)
            if name == "scene_a/0001":
                expected[:2, :3] = 255
            assert labels.dtype == np.uint8 and np.array_equal(labels, expected), name
    assert sorted(p.name for p in (out / "train").rglob("*")) == ["0001.png", "0002.png", "0003.png", "0004.png",
                                                                 "scene_a", "scene_b"]  # raw labels untouched


def test_train_evaluate_and_demo_through_dataset_files(prepared):
    root, _ = prepared
    done = train_net(root, "run", *FILES, "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)",
                     "SOLVER.MAX_ITER", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((root / "run" / "inference" / "dg_results.json").read_text())
    assert report["classes"] == CLASSES
    ious = report["datasets"]["my_val"]["IoU"]
    assert list(ious) == CLASSES and all(isinstance(v, float) for v in ious.values())  # every class is in my_val
    assert report["datasets"]["my_val"]["mIoU"] == pytest.approx(np.mean(list(ious.values())), abs=1e-3)
    console = done.stdout + done.stderr
    table = console[console.index("Semantic segmentation per domain"):]
    assert all(f"| {name}" in table for name in CLASSES)

    demo = subprocess.run([sys.executable, str(REPO / "demo" / "demo.py"), "--config-file", CONFIG, "--input",
                           "my_data/images/val", "--output", "demo_out", "--dataset", "my_val", "--opts", *TINY_OWN,
                           *FILES, "MODEL.WEIGHTS", "run/model_final.pth"], capture_output=True, text=True, cwd=root)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "class names and colours of dataset 'my_val' (5 classes)" in demo.stdout + demo.stderr
    assert sorted(p.name for p in (root / "demo_out").iterdir()) == ["0101_seg.png", "0102_seg.png"]


def test_every_process_of_a_two_process_run_registers_the_files(prepared):
    root, _ = prepared
    done = train_net(root, "run2", *FILES, "DATASETS.TRAIN", "('my_train',)",
                     "DATASETS.TEST", "('my_val',)", "SOLVER.MAX_ITER", "1", "TEST.SLIDE.ENABLED", "False",
                     flags=("--num-gpus", "2", "--dist-url", "auto"))
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Rank of current process: 1. World size: 2" in (root / "run2" / "log.txt.rank1").read_text()
    assert list(json.loads((root / "run2" / "inference" / "dg_results.json").read_text())["datasets"]) == ["my_val"]


def test_a_dataset_file_train_net_cannot_read_is_one_message(prepared):
    root, _ = prepared
    (root / "bad.yaml").write_text("name: bad_train\nimage_dir: images\nclasses: [a, b, a]\n")
    done = train_net(root, "run_bad", "DATASETS.FILES", "('bad.yaml',)", "DATASETS.TRAIN", "('bad_train',)")
    assert done.returncode != 0
    assert "error: dataset file bad.yaml, split 'bad_train', field 'classes': 'a' is listed twice" in done.stderr
    assert "Traceback" not in done.stderr


def test_prepare_skips_complete_outputs_and_redoes_them_when_the_palette_changes(tmp_path, capsys):
    data = make_user_dataset(tmp_path)
    dataset_file = data / "my_dataset.yaml"
    assert prepare_here(capsys, dataset_file)[0] == 0
    outputs = sorted((data / "annotations").glob("*_trainIds/**/*.png"))
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    code, out, _ = prepare_here(capsys, dataset_file)
    assert code == 0 and "my_train: 4 skipped" in out and "my_val: 2 skipped" in out
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes

    code, out, _ = prepare_here(capsys, dataset_file, "--split", "my_val", "--force")
    assert code == 0 and "my_val: 2 written" in out and "my_train" not in out

    swapped = COLORS[:3] + [COLORS[4], COLORS[3]]  # vegetation and car swap colours: every output is stale
    dataset_file.write_text(dataset_file.read_text().replace(json.dumps(COLORS), json.dumps(swapped)))
    code, out, _ = prepare_here(capsys, dataset_file)
    assert code == 0 and "my_train: 4 written" in out
    expected = stripe_ids(VAL["0101"])
    expected[expected >= 3] = 7 - expected[expected >= 3]
    assert np.array_equal(read(data / "annotations" / "val_trainIds" / "0101.png"), expected)


def test_an_interrupted_prepare_leaves_no_partial_file_and_resumes(tmp_path, monkeypatch, capsys):
    data = make_user_dataset(tmp_path)
    script = load_script("prepare_custom")
    real_save, saved = Image.Image.save, []

    def interrupted_on_third_save(self, fp, *args, **kwargs):
        if len(saved) == 2:
            with open(fp, "wb") as f:
                f.write(b"\x89PNG half")
            raise KeyboardInterrupt
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", interrupted_on_third_save)
    with pytest.raises(KeyboardInterrupt):
        script.main(["--dataset-file", str(data / "my_dataset.yaml"), "--workers", "1"])
    monkeypatch.setattr(Image.Image, "save", real_save)
    out = data / "annotations" / "train_trainIds"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "scene_a/0001.png", "scene_a/0002.png"]  # the third is not there, not even as a hidden temporary
    code, out, _ = prepare_here(capsys, data / "my_dataset.yaml")
    assert code == 0 and "my_train: 2 skipped, 2 written" in out


def test_json_dataset_file_reads_and_registers_the_same(prepared, tmp_path):
    root, _ = prepared
    data = root / "my_data"
    from_yaml = read_dataset_file(data / "my_dataset.yaml")
    entries = [{"name": f"json_{s.name}", "image_dir": f"images/{split}", "label_dir": f"annotations/{split}",
                "classes": CLASSES, "colors": COLORS, "label_format": "rgb", "image_suffix": ".jpg"}
               for s, split in zip(from_yaml, ("train", "val"))]
    (data / "my_dataset.json").write_text(json.dumps(entries))
    from_json = read_dataset_file(data / "my_dataset.json")
    assert [replace(j, name=y.name) for j, y in zip(from_json, from_yaml)] == list(from_yaml)
    load_config(CONFIG, ["DATASETS.FILES", str((str(data / "my_dataset.json"),))])
    records = DatasetCatalog.get("json_my_val")
    assert [Path(r["sem_seg_file_name"]).relative_to(data).as_posix() for r in records] == [
        "annotations/val_trainIds/0101.png", "annotations/val_trainIds/0102.png"]
    assert {(r["width"], r["height"], r["dataset_name"]) for r in records} == {(W, H, "json_my_val")}
    meta = MetadataCatalog.get("json_my_val")
    assert (meta.stuff_classes, meta.stuff_colors, meta.ignore_label, meta.evaluator_type) == (
        CLASSES, COLORS, 255, "sem_seg")


def test_id_map_in_json_and_yaml_and_its_preparation(tmp_path, capsys):
    """Raw ids 10..50 -> train ids by class name or number; ids not listed -> the ignore label 7."""
    raw = np.repeat(np.array([10, 20, 30, 40, 50, 0], np.uint8)[np.arange(W) * 6 // W][None], H, axis=0)
    write_photo(tmp_path / "img" / "a.jpg", 0)
    (tmp_path / "raw").mkdir()
    Image.fromarray(raw, "L").save(tmp_path / "raw" / "a_gt.png")
    fields = {"name": "ids_train", "image_dir": "img", "label_dir": "raw", "label_suffix": "_gt.png",
              "prepared_label_dir": "prepared", "classes": CLASSES, "ignore_label": 7}
    (tmp_path / "ids.yaml").write_text(yaml.safe_dump({**fields, "id_map": {10: "car", 20: 0, 30: 1, 40: 2, 50: 3}}))
    (tmp_path / "ids.json").write_text(json.dumps({**fields, "id_map": {"10": "car", "20": 0, "30": 1, "40": 2,
                                                                       "50": 3}}))
    assert read_dataset_file(tmp_path / "ids.yaml") == read_dataset_file(tmp_path / "ids.json")
    code, out, err = prepare_here(capsys, tmp_path / "ids.json")
    assert code == 0 and "ids_train: 1 written" in out, err
    assert [int(v) for v in read(tmp_path / "prepared" / "a.png")[0, 8::16]] == [4, 0, 1, 2, 3, 7]


def test_train_id_labels_are_checked_in_place_and_bad_values_named(tmp_path, capsys):
    write_photo(tmp_path / "img" / "a.jpg", 0)
    write_photo(tmp_path / "img" / "b.jpg", 1)
    (tmp_path / "gt").mkdir()
    Image.fromarray(stripe_ids(0), "L").save(tmp_path / "gt" / "a.png")
    Image.fromarray(np.where(stripe_ids(1) == 4, 9, stripe_ids(1)).astype(np.uint8), "L").save(tmp_path / "gt" / "b.png")
    (tmp_path / "ids.yaml").write_text(yaml.safe_dump({"name": "ready", "image_dir": "img", "label_dir": "gt",
                                                       "classes": CLASSES}))
    code, out, err = prepare_here(capsys, tmp_path / "ids.yaml")
    assert code == 1 and "ready: 1 checked, 1 failed" in out
    assert f"{tmp_path / 'gt' / 'b.png'} contains value(s) 9, outside the train ids 0..4" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "ids.yaml", "img"]  # nothing written
    (split,) = read_dataset_file(tmp_path / "ids.yaml")
    assert split.train_id_labels == (tmp_path / "gt", ".png") and not split.needs_preparation


def test_register_sem_seg_folder_in_one_call(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("x", "y"):
        write_photo(tmp_path / "photos" / "sub" / f"{name}.png", 0)
        Image.fromarray(stripe_ids(0), "L").save(tmp_path / "photos" / "sub" / f"{name}_labelTrainIds.png")
    split = register_sem_seg_folder("folder_call_train", "photos", "photos", CLASSES, image_suffix=".png",
                                    label_suffix="_labelTrainIds.png")
    records = DatasetCatalog.get("folder_call_train")
    assert [(Path(r["file_name"]).name, Path(r["sem_seg_file_name"]).name) for r in records] == [
        ("x.png", "x_labelTrainIds.png"), ("y.png", "y_labelTrainIds.png")]  # label files are not images
    assert MetadataCatalog.get("folder_call_train").stuff_classes == CLASSES
    assert not MetadataCatalog.get("folder_call_train").get("stuff_colors")
    assert split.image_dir == tmp_path / "photos"
    (tmp_path / "nested" / "gt").mkdir(parents=True)
    for name in ("x", "y"):
        write_photo(tmp_path / "nested" / f"{name}.png", 0)
        Image.fromarray(stripe_ids(0), "L").save(tmp_path / "nested" / "gt" / f"{name}.png")
    register_sem_seg_folder("folder_call_nested", "nested", "nested/gt", CLASSES, image_suffix=".png")
    assert [(Path(r["file_name"]).relative_to(tmp_path).as_posix(), Path(r["sem_seg_file_name"]).relative_to(
        tmp_path).as_posix()) for r in DatasetCatalog.get("folder_call_nested")] == [
        ("nested/x.png", "nested/gt/x.png"), ("nested/y.png", "nested/gt/y.png")]  # gt/*.png are not images
    with pytest.raises(DatasetFileError, match=r"register_sem_seg_folder\('z'\), field 'colors': 2 colours for 5"):
        register_sem_seg_folder("z", "photos", None, CLASSES, colors=COLORS[:2])


# ---- bad input: one message naming the file, the split and the field -----------------------

GOOD = {"name": "bad_case", "image_dir": "images", "label_dir": "labels", "classes": CLASSES, "colors": COLORS,
        "label_format": "rgb"}
BAD_CASES = {
    "missing key": ({"classes": None}, "field 'classes': missing"),
    "unknown key": ({"colours": COLORS}, "unknown field 'colours'; did you mean 'colors'?"),
    "duplicate class": ({"classes": ["a", "b", "a", "c", "d"]}, "field 'classes': 'a' is listed twice"),
    "colour count": ({"colors": COLORS[:4]}, "field 'colors': 4 colours for 5 classes"),
    "colour shape": ({"colors": COLORS[:4] + [[0, 0]]}, "field 'colors': the colour of 'car' is [0, 0]: expected [R, G, B]"),
    "colour range": ({"colors": COLORS[:4] + [[0, 0, 300]]}, "the colour of 'car' is [0, 0, 300]"),
    "id_map outside classes": ({"label_format": "ids", "colors": None, "id_map": {7: 5}},
                               "field 'id_map': raw value 7 maps to 5, which is neither a class name nor a train id 0..4"),
    "id_map unknown class": ({"label_format": "ids", "id_map": {7: "sky"}}, "raw value 7 maps to 'sky'"),
    "palette colour twice": ({"palette": {"road": [[1, 2, 3]], "car": [[9, 9, 9], [1, 2, 3]]}},
                             "field 'palette': colour [1, 2, 3] is used twice (class 'road' and class 'car')"),
    "colors as palette twice": ({"colors": COLORS[:4] + [COLORS[1]]}, "field 'colors': colour [128, 64, 128] is used twice"),
    "ignore colour in palette": ({"ignore_colors": [COLORS[2]]}, "(class 'building' and ignore_colors)"),
    "palette unknown class": ({"palette": {"rod": [1, 2, 3]}}, "field 'palette': 'rod' is not one of the classes; did you mean 'road'?"),
    "ignore label is a train id": ({"ignore_label": 3}, "field 'ignore_label': 3 is not an integer in 5..255"),
    "label format": ({"label_format": "color"}, "field 'label_format': 'color': choose 'ids'"),
    "rgb without colours": ({"colors": None}, "field 'label_format': 'rgb' needs 'palette'"),
    "id_map with rgb": ({"id_map": {1: 0}}, "field 'id_map': applies to label_format 'ids'"),
    "jpeg labels": ({"label_suffix": ".jpg"}, "field 'label_suffix': '.jpg': JPEG labels are lossy"),
    "yaml boolean class": ({"classes": ["yes", "no", "a", "b", "c"]}, "entry 0 is True: expected a class name (YAML"),
    "prepared inside labels": ({"prepared_label_dir": "labels/out"}, "must be separate folders"),
    "prepared without conversion": ({"label_format": "ids", "prepared_label_dir": "out"},
                                    "field 'prepared_label_dir': only labelled splits whose labels need converting"),
}


@pytest.mark.parametrize("change, message", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_bad_dataset_file_names_file_split_and_field(tmp_path, change, message):
    fields = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    text = yaml.safe_dump(fields, sort_keys=False).replace("'yes'", "yes").replace("'no'", "no")  # as a user would type them
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(DatasetFileError) as error:
        read_dataset_file(path)
    assert f"dataset file {path}, split 'bad_case'" in str(error.value)
    assert message in str(error.value)


FILE_CASES = {
    "yaml syntax": ("my.yaml", "name: x\nclasses: [a, b\n", "is not valid YAML"),
    "suffix": ("my.txt", "name: x\n", "the name must end with .yaml, .yml or .json"),
    "json syntax": ("my.json", '{"name": "x",}', "is not valid JSON"),
    "not a split": ("my.yaml", "- just a string\n", "split #1: expected a mapping of fields"),
    "same name twice": ("my.yaml", "classes: [a]\nsplits:\n- {name: x, image_dir: i}\n- {name: x, image_dir: j}\n",
                        "two splits are named 'x'"),
    "per-split field shared": ("my.yaml", "classes: [a]\nimage_dir: i\nsplits:\n- {name: x}\n",
                               "'image_dir' is a per-split field"),
    "empty": ("my.yaml", "", "expected one split"),
}


@pytest.mark.parametrize("name, text, message", FILE_CASES.values(), ids=FILE_CASES.keys())
def test_bad_dataset_file_structure_names_the_file(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetFileError, match="dataset file") as error:
        read_dataset_file(tmp_path / name)
    assert str(tmp_path / name) in str(error.value) and message in str(error.value)


def test_missing_folder_empty_split_and_unprepared_labels_are_named_at_load(tmp_path):
    path = tmp_path / "my.yaml"
    fields = {**GOOD, "image_suffix": ".jpg"}
    path.write_text(yaml.safe_dump([{**fields, "name": "load_a"}]))
    register_dataset_file(path)  # registration reads nothing: the folders do not exist yet
    with pytest.raises(DatasetLayoutError, match=f"dataset file {path}, split 'load_a', field 'image_dir': folder "
                                                 f"not found: {tmp_path / 'images'}"):
        DatasetCatalog.get("load_a")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_photo(tmp_path / "images" / "a.png", 0)  # not .jpg
    with pytest.raises(DatasetLayoutError, match=r"split 'load_a': its labels are not prepared yet .*prepare_custom"):
        DatasetCatalog.get("load_a")
    (tmp_path / "labels_trainIds").mkdir()
    with pytest.raises(DatasetLayoutError, match=f"the split is empty: no file named <id>.jpg in {tmp_path / 'images'} "
                                                 r"or its sub-folders \(to pair with labels <id>.png in .*labels_trainIds"):
        DatasetCatalog.get("load_a")
    write_photo(tmp_path / "images" / "a.jpg", 0)
    with pytest.raises(DatasetLayoutError, match=r"1 of 1 images have no label <id>.png in .*labels_trainIds.*"
                                                 r"python datasets/prepare_custom.py --dataset-file"):
        DatasetCatalog.get("load_a")


def test_registering_twice_is_harmless_and_a_conflict_or_taken_name_is_an_error(tmp_path):
    first, second, taken = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    first.write_text(yaml.safe_dump({**GOOD, "name": "twice"}))
    assert register_dataset_file(first) == ("twice",)
    assert register_dataset_file(first) == ("twice",)
    second.write_text(yaml.safe_dump({**GOOD, "name": "twice", "ignore_label": 254}))
    with pytest.raises(DatasetFileError, match=f"dataset 'twice' is already registered \\(dataset file {first}, "
                                               "split 'twice'\\) with another ignore_label"):
        register_dataset_file(second)
    taken.write_text(yaml.safe_dump({**GOOD, "name": "ade20k_sem_seg_train"}))
    with pytest.raises(DatasetFileError, match="the dataset name 'ade20k_sem_seg_train' is already registered"):
        register_dataset_file(taken)


def test_prepare_refuses_a_bad_file_or_split_with_one_message(prepared, tmp_path):
    root, _ = prepared
    done = prepare(Path("my_data/my_dataset.yaml"), "--split", "my_tain", cwd=root)
    assert done.returncode != 0 and "--split my_tain: my_data/my_dataset.yaml has no such split; did you mean " \
                                    "'my_train'?" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**GOOD, "colors": COLORS[:3]}))
    done = prepare(tmp_path / "bad.yaml")
    assert done.returncode != 0 and "field 'colors': 3 colours for 5 classes" in done.stderr


def test_labels_that_are_mostly_not_palette_colours_fail_by_name(tmp_path, capsys):
    data = make_user_dataset(tmp_path)
    photo_as_label = data / "annotations" / "val" / "0102.png"
    Image.open(data / "images" / "val" / "0102.jpg").save(photo_as_label)  # a photo where its label should be
    code, out, err = prepare_here(capsys, data / "my_dataset.yaml", "--split", "my_val")
    assert code == 1 and "my_val: 1 failed, 1 written" in out
    assert f"label {photo_as_label}: 100% of its pixels have colours outside the palette" in err
    assert not (data / "annotations" / "val_trainIds" / "0102.png").exists()
