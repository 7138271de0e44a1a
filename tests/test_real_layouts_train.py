"""train_net.py as a user runs it, on dataset trees in their real layouts.

The trees are written as the datasets are downloaded (GTAV palette labels of Cityscapes ids,
SYNTHIA 16-bit labels, Cityscapes labelIds), converted by datasets/prepare_*.py, and read by
train_net.py with Detectron2's default loader options (aspect-ratio grouping, the config's
worker processes): the records must carry what those options read.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_data_layouts import make_cityscapes, make_gtav, make_synthia
from test_train_net import CONFIG, TINY

REPO = Path(__file__).resolve().parent.parent
# The tiny model of test_train_net, with Detectron2's default DATALOADER options and the 19 classes
# of these datasets (TINY's are the synthetic benchmark's).
TINY_DEFAULT_LOADER = [item for pair in zip(TINY[::2], TINY[1::2])
                       if not pair[0].startswith(("DATALOADER.", "DATASETS.", "MODEL.SEM_SEG_HEAD.NUM_CLASSES"))
                       for item in pair]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """GTAV, SYNTHIA and Cityscapes as downloaded, then prepared by their scripts."""
    root = tmp_path_factory.mktemp("datasets")
    make_gtav(root)
    make_synthia(root)
    make_cityscapes(root)
    env = {**os.environ, "DETECTRON2_DATASETS": str(root)}
    for script in ("prepare_gtav", "prepare_synthia", "prepare_cityscapes"):
        done = subprocess.run([sys.executable, str(REPO / "datasets" / f"{script}.py")], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    return env


def train_net(env, out, *opts, flags=(), expect=0):
    done = subprocess.run([sys.executable, str(REPO / "train_net.py"), "--config-file", CONFIG, *flags,
                           *TINY_DEFAULT_LOADER, "OUTPUT_DIR", str(out), *opts],
                          env=env, capture_output=True, text=True, cwd=out.parent)
    assert done.returncode == expect, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.parametrize("train", [("dg_gtav_train",), ("dg_gtav_train", "dg_synthia_train")],
                         ids=["gtav", "gtav+synthia"])
def test_trains_with_default_loader_options_then_prints_the_table(prepared, tmp_path, train):
    out = tmp_path / "run"
    console = train_net(prepared, out, "DATASETS.TRAIN", str(train), "DATASETS.TEST", "('dg_cityscapes_val',)",
                        "SOLVER.MAX_ITER", "2")
    assert "Starting training from iteration 0" in console
    assert (out / "model_final.pth").is_file()
    for text in (console, (out / "log.txt").read_text()):
        assert "Semantic segmentation per domain" in text
        table = text[text.index("Semantic segmentation per domain"):]
        assert "| dg_cityscapes_val" in table and "| mean of 1" in table and "mIoU" in table


def test_training_without_test_datasets_ends_without_evaluation(prepared, tmp_path):
    console = train_net(prepared, tmp_path / "run", "DATASETS.TRAIN", "('dg_gtav_train',)", "DATASETS.TEST", "()",
                        "SOLVER.MAX_ITER", "1")
    assert "no evaluation: DATASETS.TEST is empty" in console
    assert (tmp_path / "run" / "model_final.pth").is_file()


def test_eval_only_without_test_datasets_is_refused(prepared, tmp_path):
    console = train_net(prepared, tmp_path / "run", "DATASETS.TEST", "()", flags=["--eval-only"], expect=2)
    assert "error: --eval-only needs at least one dataset in DATASETS.TEST" in console
    assert "Traceback" not in console


def test_missing_dataset_is_one_message_with_the_prepare_command(prepared, tmp_path):
    console = train_net(prepared, tmp_path / "run", "DATASETS.TRAIN", "('dg_urbansyn_train',)", expect=2)
    assert "error: dataset 'dg_urbansyn_train'" in console and "python datasets/prepare_urbansyn.py" in console
    assert "Traceback" not in console
