"""demo/demo.py and demo/predictor.py, run on a tiny fake model (tests/fake_segmenter.py)."""
import hashlib
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

import fake_segmenter  # registers the TinyFakeSegmenter meta-architecture
from rein_d2 import add_rein_config
from rein_d2.data.catalog import DGSS_CLASSES
from rein_d2.data.synthetic import make_synthetic_video
from rein_d2.utils.video import VideoCodecError, VideoSink

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "demo"
sys.path.insert(0, str(DEMO_DIR))  # demo.py imports its sibling predictor.py, as a script does
_spec = importlib.util.spec_from_file_location("rein_d2_demo_script", DEMO_DIR / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)
predictor = sys.modules["predictor"]

CONFIG = """\
MODEL:
  META_ARCHITECTURE: TinyFakeSegmenter
  DEVICE: cpu
  SEM_SEG_HEAD:
    NUM_CLASSES: 19
DATASETS:
  TEST: ("dg_cityscapes_val",)
INPUT:
  FORMAT: RGB
  MIN_SIZE_TEST: 0
"""


@pytest.fixture
def config(tmp_path) -> str:
    path = tmp_path / "tiny_fake.yaml"
    path.write_text(CONFIG)
    return str(path)


def run(config, *args) -> int:
    """demo.py's exit code for these command-line arguments (usage errors exit with 2)."""
    try:
        return demo.main(["--config-file", config, *map(str, args)])
    except SystemExit as exit_:
        return exit_.code


def make_cfg(config, *opts):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    return cfg


def scene(height=48, width=80, seed=0) -> np.ndarray:
    """A BGR image with red, green and blue regions (classes 0, 1 and 2 of the fake model)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    image[:, : width // 3, 2] = 250
    image[:, width // 3: 2 * width // 3, 1] = 250
    image[:, 2 * width // 3:, 0] = 250
    return image


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_folder_with_a_corrupt_file_skips_it_and_writes_the_others(config, tmp_path, caplog):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i, suffix in enumerate((".png", ".jpg", ".png")):
        cv2.imwrite(str(folder / f"img{i}{suffix}"), scene(40 + 8 * i, 64, seed=i))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not really a jpeg")
    with caplog.at_level(logging.WARNING):
        assert run(config, "--input", folder, "--output", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0_seg.png", "img1_seg.png", "img2_seg.png"]
    for i in range(3):
        assert cv2.imread(str(out / f"img{i}_seg.png")).shape == (40 + 8 * i, 64, 3)
    assert any(str(folder / "broken.jpg") in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


def test_nothing_readable_exits_non_zero(config, tmp_path, caplog):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("hello")
    assert run(config, "--input", folder, tmp_path / "missing.jpg", "--output", out) == 1
    assert not out.exists() or not any(out.iterdir())
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(folder / "a.png") in warned and str(tmp_path / "missing.jpg") in warned


def test_inputs_are_never_overwritten(config, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(folder / name), scene())
    before = {p.name: digest(p) for p in folder.iterdir()}
    assert run(config, "--input", folder, "--output", folder) == 0
    assert run(config, "--input", folder, "--output", folder) == 0  # earlier results not re-read
    assert {p.name: digest(p) for p in folder.iterdir() if p.name in before} == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_seg.png", "b.jpg", "b_seg.png"]
    assert run(config, "--input", folder / "a.png", "--output", folder / "a.png") == 2
    assert digest(folder / "a.png") == before["a.png"]
    earlier_result = digest(folder / "a_seg.png")
    # a.png's result would replace the input a_seg.png:
    assert run(config, "--input", folder / "a.png", folder / "a_seg.png", "--output", folder) == 2
    assert digest(folder / "a_seg.png") == earlier_result


def test_same_names_in_two_folders_get_distinct_outputs(config, tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "frame.png"), scene())
    out = tmp_path / "out"
    assert run(config, "--input", tmp_path / "x", tmp_path / "y", "--output", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frame-2_seg.png", "frame_seg.png"]


def test_glob_and_single_file_output(config, tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"shot{i}.png"), scene())
    assert run(config, "--input", tmp_path / "shot*.png", "--output", tmp_path / "res") == 0
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["shot0_seg.png",
                                                                     "shot1_seg.png"]
    assert run(config, "--input", tmp_path / "shot0.png", "--output", tmp_path / "one.jpg") == 0
    assert cv2.imread(str(tmp_path / "one.jpg")).shape == (48, 80, 3)
    assert run(config, "--input", tmp_path / "shot*.png", "--output", tmp_path / "two.png") == 2


def test_side_by_side_doubles_the_width(config, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), scene(48, 80))
    out = tmp_path / "out"
    assert run(config, "--input", tmp_path / "a.png", "--output", out, "--side-by-side") == 0
    result = cv2.imread(str(out / "a_seg.png"))
    assert result.shape == (48, 160, 3)
    np.testing.assert_array_equal(result[:, :80], cv2.imread(str(tmp_path / "a.png")))


def test_video_round_trip_keeps_frame_count_size_and_rate(config, tmp_path):
    source = make_synthetic_video(tmp_path / "drive.mp4", "rain", frames=10, fps=7.0,
                                  height=64, width=96)
    out = tmp_path / "out"
    assert run(config, "--video-input", source, "--output", out, "--batch-size", 3) == 0
    assert [p.name for p in out.iterdir()] == ["drive_seg.mp4"]  # no temporary file left behind
    capture = cv2.VideoCapture(str(out / "drive_seg.mp4"))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    assert len(frames) == 10
    assert frames[0].shape == (64, 96, 3)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(7.0)
    assert run(config, "--video-input", source, "--output", source) == 2
    assert run(config, "--video-input", tmp_path / "none.mp4", "--output", out) == 1


def test_predictor_converts_the_format_and_returns_the_original_size(config):
    red = np.zeros((30, 50, 3), np.uint8)
    red[..., 2] = 200  # BGR
    rgb_model = predictor.SemanticPredictor(make_cfg(config))
    assert (rgb_model(red) == 0).all()  # the model sees red in channel 0
    bgr_model = predictor.SemanticPredictor(make_cfg(config, "INPUT.FORMAT", "BGR"))
    assert (bgr_model(red) == 2).all()
    resizing = predictor.SemanticPredictor(make_cfg(config, "INPUT.MIN_SIZE_TEST", "20",
                                                    "INPUT.MAX_SIZE_TEST", "1000"))
    labels = resizing(scene(30, 50))
    assert labels.shape == (30, 50) and labels.dtype == np.uint8
    assert resizing.model.seen_sizes == [(20, 33)]
    batch = resizing.predict_batch([scene(30, 50), red])
    np.testing.assert_array_equal(batch[0], labels)
    assert (batch[1] == 0).all()


def test_weights_given_with_opts_are_loaded(config, tmp_path):
    model = fake_segmenter.TinyFakeSegmenter(None)
    with torch.no_grad():
        model.classifier.bias[13] = 100.0  # "car" everywhere
    torch.save({"model": model.state_dict()}, tmp_path / "car.pth")
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((64, 96, 3), np.uint8))
    out = tmp_path / "out"
    args = ("--input", tmp_path / "black.png", "--output", out, "--opts", "MODEL.WEIGHTS")
    assert run(config, *args, tmp_path / "car.pth") == 0
    corner = cv2.imread(str(out / "black_seg.png"))[-1, -1]  # outside the legend
    car_bgr = np.array(DGSS_CLASSES.colors[13][::-1])
    np.testing.assert_allclose(corner, 0.6 * car_bgr, atol=1)
    assert run(config, *args, tmp_path / "missing.pth") == 2


def test_visualisation_colours_and_legend():
    legend = predictor.Legend.of_dataset("dg_cityscapes_val")
    labels = np.array([[0, 13], [13, 255]], np.uint8)
    colours = legend.colorize(labels)
    assert tuple(colours[0, 0]) == (128, 64, 128)[::-1]  # Cityscapes road, RGB -> BGR
    assert tuple(colours[0, 1]) == (0, 0, 142)[::-1]  # car
    assert tuple(colours[1, 1]) == (0, 0, 0)
    assert legend.entries(labels) == [(0, "road"), (13, "car")]
    big = np.kron(labels, np.ones((100, 100), np.uint8))
    plain = legend.colorize(big)
    shown = predictor.draw_legend(plain, big, legend)
    assert (shown[:20, :20] != plain[:20, :20]).any()
    assert (shown[150:, 150:] == plain[150:, 150:]).all()
    assert predictor.visualize(np.full((200, 200, 3), 90, np.uint8), big, legend).shape == (200, 200, 3)


def test_video_sink_falls_back_and_fails_clearly(tmp_path):
    frame = np.zeros((32, 48, 3), np.uint8)
    with VideoSink(tmp_path / "a.mp4", 5.0, (48, 32), codecs=("XXXX", "mp4v")) as sink:
        sink.write(frame)
        with pytest.raises(ValueError, match=r"\(32, 48, 3\)"):
            sink.write(np.zeros((32, 40, 3), np.uint8))
    assert sink.codec == "mp4v" and sink.frames == 1
    with pytest.raises(VideoCodecError, match="no_video.xyz"):
        VideoSink(tmp_path / "no_video.xyz", 5.0, (48, 32))
    with pytest.raises(RuntimeError, match="interrupted"):
        with VideoSink(tmp_path / "b.mp4", 5.0, (48, 32)) as sink:
            sink.write(frame)
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_webcam_fails_clearly_without_display_or_camera(config, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert run(config, "--webcam") == 2
    assert "error: no display" in capsys.readouterr().err
    assert run(config, "--webcam", "--output", "x") == 2
    unopened = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda *source: unopened())  # no camera connected
    monkeypatch.setenv("DISPLAY", ":0")
    assert run(config, "--webcam") == 2
    assert "error: cannot open camera 0" in capsys.readouterr().err


def test_argument_errors_exit_with_usage(config):
    completed = subprocess.run([sys.executable, str(DEMO_DIR / "demo.py"), "--config-file", config,
                                "--input", "a.png", "--video-input", "b.mp4"],
                               capture_output=True, text=True, cwd=REPO, timeout=120)
    assert completed.returncode == 2
    assert "not allowed with argument" in completed.stderr and "usage:" in completed.stderr
