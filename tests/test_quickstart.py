"""The main job (`make demo`, tools/quickstart.py) in a reduced form: every step, as a user runs it."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import cv2
from safetensors import safe_open

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "tools" / "quickstart.py"
SHIPPED = REPO / "models" / "tiny_foundation_vit.safetensors"
REDUCED = ["--iters", "2", "--train-images", "4", "--val-images", "1", "--video-frames", "4"]


def quickstart(out, *extra):
    run = subprocess.run([sys.executable, str(QUICKSTART), "--output-dir", str(out), *REDUCED, *extra],
                         capture_output=True, text=True, cwd=out.parent, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def png_size(path):
    """(width, height) from the PNG signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_quickstart_runs_every_step_from_the_shipped_model(tmp_path):
    out = tmp_path / "quickstart"
    stale = out / "data" / "source_train" / "stale.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier run")
    printed = quickstart(out).stdout

    table = json.loads((out / "results.json").read_text())
    assert table["headers"] == ["domain", "Freeze", "Rein", "Full"]
    domains = [row[0] for row in table["rows"]]
    assert domains == ["source", "night", "fog", "rain", "snow", "color", "texture", "noise", "blur", "jpeg",
                       "mean (targets)"]
    assert all(0.0 <= value <= 100.0 for row in table["rows"] for value in row[1:])
    modes = table["modes"]
    assert modes["full"]["trainable_parameters"] > modes["rein"]["trainable_parameters"] > modes["freeze"][
        "trainable_parameters"] > 0
    assert all(m["train_cpu_seconds"] > 0 for m in modes.values())
    source = dict(zip(table["headers"][1:], table["rows"][0][1:]))
    assert table["best"] == max(source, key=source.get).lower()
    assert table["foundation"] == str(SHIPPED)
    width, height = png_size(out / "results.png")
    assert (width, height) == (1100, 420) and (out / "results.png").stat().st_size > 10_000

    assert not stale.exists()  # nothing of an earlier run is reused
    assert (out / "results.md").read_text().startswith("# mIoU per domain")
    for mode in ("freeze", "rein", "full"):
        assert (out / mode / "model_final.pth").is_file()
        assert (out / mode / "inference" / "dg_results.json").is_file()
    assert sorted(p.name for p in (out / "demo").glob("*_seg.png")) == [
        "fog_seg.png", "night_seg.png", "rain_seg.png", "snow_seg.png"]
    video = cv2.VideoCapture(str(out / "demo" / "night_drive_seg.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert "mean (targets)" in printed and "trainable parameters" in printed and str(out) in printed
    assert "pretrained without labels by `python tools/pretrain_foundation.py" in printed

    again = tmp_path / "again"  # seeded as train_net.py: the same command gives the same table
    quickstart(again)
    assert json.loads((again / "results.json").read_text())["rows"] == table["rows"]


def test_quickstart_pretrains_a_new_foundation_model_on_request(tmp_path):
    out = tmp_path / "quickstart"
    printed = quickstart(out, "--pretrain", "--pretrain-steps", "2", "--pretrain-streets", "2", "--iters", "1").stdout
    made = out / "foundation_vit.safetensors"
    with safe_open(str(made), framework="pt") as weights:
        assert weights.metadata()["steps"] == "2"
    assert json.loads((out / "results.json").read_text())["foundation"] == str(made)
    assert f"{made}\n  pretrained without labels" in printed
