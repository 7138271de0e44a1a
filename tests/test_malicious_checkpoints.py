"""Every command that reads weights refuses files that would run code, and runs none of it.

Each file would create a marker when read by `torch.load(weights_only=False)` or `pickle.load`
(checked after each run, so the payloads are known to be live); each command gets files as a
user would give them, in its own process. Every command gets a `.pth` (torch.save) and a
`.pkl` (pickle.dump), which take different branches of the checkpointer; the payloads rotate
over the commands so that each (payload, format) pair meets several commands. Every payload
in every format and pickle protocol is refused by the reader itself in test_restricted_pickle.py
(one process per command and file costs about 10 s of CPU: the full 5 x 6 matrix took 6 CPU
minutes).
"""
import pickle
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from payloads import Eval, Shell
from test_train_net import CONFIG, REPO, TINY


def direct_shell(marker, weights):
    return {"model": Shell(marker)}


def direct_eval(marker, weights):
    return Eval(marker)


def nested_in_meta(marker, weights):
    """An otherwise valid checkpoint whose metadata hides the payload."""
    return {"model": {"sem_seg_head.predictor.class_embed.bias": weights}, "__author__": "someone",
            "matching_heuristics": True, "meta": {"hooks": [{"after_load": Shell(marker)}]}}


PAYLOADS = {"os.system": (direct_shell, r"(os|posix)\.system"), "builtins.eval": (direct_eval, r"builtins\.eval"),
            "nested": (nested_in_meta, r"(os|posix)\.system")}


def write_malicious_file(tmp_path, payload, suffix):
    """(file, marker) for the payload, saved by torch.save (.pth) or pickle.dump (.pkl)."""
    make, _ = PAYLOADS[payload]
    marker = tmp_path / f"ran_{payload}{suffix}"
    path = tmp_path / f"{payload}{suffix}"
    if suffix == ".pth":
        torch.save(make(marker, torch.zeros(20)), path)
    else:
        with open(path, "wb") as f:
            pickle.dump(make(marker, np.zeros(20, np.float32)), f)
    return path, marker


def entry_point(name, weights, out):
    image = out / "street.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 127, np.uint8))
    return {
        "train_net MODEL.WEIGHTS": [REPO / "train_net.py", "--config-file", CONFIG, "--eval-only", *TINY,
                                    "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out],
        "train_net MODEL.VIT.WEIGHTS": [REPO / "train_net.py", "--config-file", CONFIG, "--eval-only", *TINY,
                                        "MODEL.VIT.WEIGHTS", weights, "OUTPUT_DIR", out],
        "convert_rein_checkpoint": [REPO / "tools/convert_rein_checkpoint.py", weights, out / "converted.pth",
                                    "--config-file", CONFIG, "--opts", *TINY],
        "convert_vfm_weights": [REPO / "tools/convert_vfm_weights.py", weights, out / "vfm.safetensors",
                                "--timm-name", "vit_small_patch14_dinov2", "--patch-size", "16", "--img-size", "64",
                                "--embed-dim", "32", "--depth", "4", "--num-heads", "2"],
        "demo": [REPO / "demo/demo.py", "--config-file", CONFIG, "--input", image, "--output", out / "seg",
                 "--opts", *TINY, "MODEL.WEIGHTS", weights],
    }[name]


COMMANDS = ["train_net MODEL.WEIGHTS", "train_net MODEL.VIT.WEIGHTS", "convert_rein_checkpoint",
            "convert_vfm_weights", "demo"]
CASES = [(command, payload, suffix) for i, command in enumerate(COMMANDS)
         for payload, suffix in ((sorted(PAYLOADS)[i % 3], ".pth"), (sorted(PAYLOADS)[(i + 1) % 3], ".pkl"))]


@pytest.mark.parametrize("command, payload, suffix", CASES)
def test_each_command_refuses_malicious_files_and_runs_nothing(tmp_path, command, payload, suffix):
    path, marker = write_malicious_file(tmp_path, payload, suffix)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, *map(str, entry_point(command, path, out))], cwd=out,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, f"{command} accepted {path}"
    refusal = f"{re.escape(str(path))} is refused: reading it would call {PAYLOADS[payload][1]}"
    assert re.search(refusal, result.stderr), result.stderr[-3000:]
    assert not marker.exists(), f"{command} ran the payload of {path}"
    with open(path, "rb") as f:  # the payload is live: the standard loaders run it
        torch.load(f, weights_only=False) if suffix == ".pth" else pickle.load(f)
    assert marker.exists(), f"{path} did not run its payload; the test would prove nothing"


def test_the_cases_cover_every_command_and_every_payload_in_each_format():
    assert {c for c, _, _ in CASES} == set(COMMANDS)
    assert {(p, s) for _, p, s in CASES} == {(p, s) for p in PAYLOADS for s in (".pth", ".pkl")}
    assert all({s for c2, _, s in CASES if c2 == c} == {".pth", ".pkl"} for c in COMMANDS)
