"""The main job (`make demo`) in a reduced form: a few iterations and images, every step."""
import json
import sys
from pathlib import Path

import cv2

from rein_d2.data import register_synthetic_dg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import quickstart  # noqa: E402


def test_quickstart_produces_the_table_overlays_and_video(tmp_path, capsys):
    out = tmp_path / "quickstart"
    try:
        quickstart.main(["--output-dir", str(out), "--full-iters", "3", "--iters", "2", "--train-images", "4",
                         "--val-images", "1", "--video-frames", "4"])
    finally:
        register_synthetic_dg()
    table = json.loads((out / "results.json").read_text())
    assert table["headers"] == ["domain", "Freeze", "Rein", "Full"]
    domains = [row[0] for row in table["rows"]]
    assert domains[0] == "source" and "night" in domains and domains[-1] == "mean (targets)"
    assert all(0.0 <= value <= 100.0 for row in table["rows"] for value in row[1:])
    assert (out / "results.md").read_text().startswith("# mIoU per domain")
    for mode in ("freeze", "rein", "full"):
        assert (out / mode / "model_final.pth").is_file()
        assert (out / mode / "inference" / "dg_results.json").is_file()
    overlays = sorted((out / "demo").glob("*_seg.png"))
    assert len(overlays) == 4
    video = cv2.VideoCapture(str(out / "demo" / "night_drive_seg.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    printed = capsys.readouterr().out
    assert "mean (targets)" in printed and str(out) in printed
