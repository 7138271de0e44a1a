"""tools/export_onnx.py and `demo/demo.py --backend onnxruntime` on the tiny model, run as a user runs them.

The reference is eager PyTorch on the same weights; the exported file is read back by
onnxruntime's own InferenceSession (not through rein-d2's wrapper) where the test checks it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from onnx import numpy_helper
from test_train_net import CONFIG, TINY

from rein_d2.checkpoint.trained_model import build_trained_model
from rein_d2.config import load_config
from rein_d2.data.synthetic import make_synthetic_video
from rein_d2.export.onnx_export import OnnxMismatchError, export_crop_network

REPO = Path(__file__).resolve().parents[1]
# TINY plus a test resize that the demo applies before the sliding window (64 crops, stride 43).
OPTS = [*TINY, "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "192"]
CROP = 64
TOLERANCE = 1e-3


def run_tool(*args) -> subprocess.CompletedProcess:
    """A rein-d2 command line, as a user runs it from the repository."""
    return subprocess.run([sys.executable, *map(str, args)], check=False, cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model's config file and a checkpoint of its (random) weights, saved by Detectron2's checkpointer."""
    root = tmp_path_factory.mktemp("onnx")
    cfg = load_config(CONFIG, OPTS)
    torch.manual_seed(0)
    model = build_trained_model(cfg)
    DetectionCheckpointer(model, save_dir=str(root)).save("tiny")
    config = root / "tiny.yaml"
    config.write_text(cfg.dump())
    return config, root / "tiny.pth"


@pytest.fixture(scope="module")
def exported(trained):
    config, weights = trained
    onnx_path = weights.with_name("tiny.onnx")
    result = run_tool("tools/export_onnx.py", "--config-file", config, "--output", onnx_path,
                      "--opts", "MODEL.WEIGHTS", weights)
    assert result.returncode == 0, result.stderr
    assert "max abs difference" in result.stderr + result.stdout
    return onnx_path


def eager_model(config: Path, weights: Path) -> torch.nn.Module:
    return build_trained_model(load_config(str(config), ["MODEL.WEIGHTS", str(weights)]))


@pytest.mark.parametrize("batch", [1, 2])
def test_export_matches_eager_pytorch_in_onnxruntime(trained, exported, batch):
    config, weights = trained
    model = eager_model(config, weights)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (crops_input,) = session.get_inputs()
    assert crops_input.shape[1:] == [3, CROP, CROP] and isinstance(crops_input.shape[0], str)  # dynamic batch
    crops = torch.randn(batch, 3, CROP, CROP, generator=torch.Generator().manual_seed(100 + batch))
    with torch.no_grad():
        expected = model.sem_seg_head(model.backbone(crops))
    class_logits, mask_logits = session.run(["class_logits", "mask_logits"], {"crops": crops.numpy()})
    assert class_logits.shape == (batch, 8, 7) and mask_logits.shape == (batch, 8, CROP // 4, CROP // 4)
    assert np.abs(class_logits - expected["pred_logits"].numpy()).max() <= TOLERANCE
    assert np.abs(mask_logits - expected["pred_masks"].numpy()).max() <= TOLERANCE
    assert np.abs(mask_logits).max() > 0.1  # the comparison is not between near-zero outputs


def test_rein_is_exported_with_its_weights_only_tensors_folded(trained, exported):
    """Eager inference folds each layer's values once (scale x mlp_delta_f applied to mlp_token2feat of the
    tokens, see Reins._weights_only_tensors); the file holds those per-layer constants, not the tokens."""
    reins = eager_model(*trained).backbone.reins
    with torch.no_grad():
        folded_values = reins._weights_only_tensors()["values"].numpy()  # [layers, m, c]
    graph = onnx.load(str(exported)).graph
    # Tensors the file stores: initializers and the values of Constant nodes.
    arrays = [numpy_helper.to_array(t) for t in graph.initializer] + [
        numpy_helper.to_array(attribute.t) for node in graph.node if node.op_type == "Constant"
        for attribute in node.attribute if attribute.name == "value"]
    for layer_values in folded_values:
        assert any(a.shape == layer_values.shape and np.allclose(a, layer_values, atol=1e-7) for a in arrays)
    token_shapes = {tuple(reins.learnable_tokens_a.shape[1:]), tuple(reins.learnable_tokens_b.shape[1:]),
                    tuple(reins.learnable_tokens_a.shape), tuple(reins.learnable_tokens_b.shape)}
    assert not any(a.shape in token_shapes for a in arrays)


def video_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    return frames


def differing_pixels(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int((a != b).any(axis=-1).sum())


def test_demo_with_onnxruntime_segments_an_image_and_a_video_as_the_eager_demo(trained, exported, tmp_path):
    config, weights = trained
    video = make_synthetic_video(tmp_path / "drive.mp4", frames=3, height=72, width=120)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), video_frames(video)[0])
    backends = {"eager": ["--opts", "MODEL.WEIGHTS", weights],
                "onnx": ["--backend", "onnxruntime", "--onnx", exported]}
    for name, backend in backends.items():
        for source in (["--input", image], ["--video-input", video]):
            result = run_tool("demo/demo.py", "--config-file", config, *source, "--output", tmp_path / name, *backend)
            assert result.returncode == 0, result.stderr
    eager_png, onnx_png = (cv2.imread(str(tmp_path / name / "frame_seg.png")) for name in backends)
    assert eager_png.shape == (72, 120, 3)
    # The backends' scores agree to ~1e-6, so a label can differ only where two classes tie that closely
    # (none did here, on this machine): a lossless PNG differs exactly where a label does.
    pixels = 72 * 120
    assert differing_pixels(eager_png, onnx_png) <= pixels // 1000
    frames = {name: video_frames(tmp_path / name / "drive_seg.mp4") for name in backends}
    assert len(frames["eager"]) == len(frames["onnx"]) == 3
    for eager_frame, onnx_frame in zip(frames["eager"], frames["onnx"]):
        # Same frames give the same encoded video; a differing label would spread over its codec block.
        assert differing_pixels(eager_frame, onnx_frame) <= pixels // 100


def test_demo_refuses_a_missing_file_a_non_onnx_file_and_another_crop_size(trained, exported, tmp_path):
    config, _ = trained
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((40, 50, 3), np.uint8))
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not a protobuf")
    cases = {
        tmp_path / "missing.onnx": ([], "no such file"),
        garbage: ([], "cannot load it as an ONNX model"),
        exported: (["--opts", "TEST.SLIDE.CROP_SIZE", "[32, 32]", "TEST.SLIDE.STRIDE", "[21, 21]"],
                   "exported with TEST.SLIDE.CROP_SIZE [64, 64], but the config has [32, 32]"),
    }
    for onnx_path, (opts, message) in cases.items():
        result = run_tool("demo/demo.py", "--config-file", config, "--input", image, "--output", tmp_path / "out",
                          "--backend", "onnxruntime", "--onnx", onnx_path, *opts)
        assert result.returncode != 0
        assert message in result.stderr and str(onnx_path) in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    result = run_tool("demo/demo.py", "--config-file", config, "--input", image, "--backend", "onnxruntime")
    assert result.returncode != 0 and "--onnx" in result.stderr


def test_an_export_that_does_not_match_is_refused_and_leaves_no_file(trained, tmp_path):
    config, weights = trained
    cfg = load_config(str(config), ["MODEL.WEIGHTS", str(weights)])
    target = tmp_path / "model.onnx"
    with pytest.raises(OnnxMismatchError, match=r"differs from PyTorch in onnxruntime by more than -1 .*class_logits"):
        export_crop_network(build_trained_model(cfg), (CROP, CROP), target, cfg.MODEL.PIXEL_MEAN,
                            cfg.MODEL.PIXEL_STD, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_benchmark_reports_onnxruntime_against_eager(trained, tmp_path):
    config, _ = trained
    output = tmp_path / "bench.json"
    result = run_tool("tools/benchmark.py", "--config-file", config, "--only", "onnx", "--runs", "1", "--warmup", "0",
                      "--device", "cpu", "--output", output)
    assert result.returncode == 0, result.stderr
    section = json.loads(output.read_text())["onnx"]
    assert section["input_size"] == [CROP, CROP] and section["batch"] == 1
    assert section["eager_seconds"] > 0 and section["onnxruntime_seconds"] > 0
    assert section["onnxruntime_speedup_vs_eager"] > 0
    assert max(section["max_abs_diff"].values()) <= TOLERANCE and section["file_bytes"] > 0
