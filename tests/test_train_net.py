"""train_net.py end to end on the synthetic benchmark: train, checkpoint, resume, evaluate."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.engine import HookBase
from safetensors.torch import save_file

from rein_d2.data import register_synthetic_dg
from rein_d2.data.synthetic import SYNTHETIC_CLASSES
from rein_d2.modeling.backbone import create_timm_vfm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import train_net  # noqa: E402

TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.VIT.WEIGHTS", "", "MODEL.VIT.TIMM_NAME", "vit_small_patch14_dinov2",
    "MODEL.VIT.EMBED_DIM", "32", "MODEL.VIT.DEPTH", "4", "MODEL.VIT.NUM_HEADS", "2",
    "MODEL.VIT.OUT_INDICES", "[0, 1, 2, 3]", "MODEL.VIT.IMG_SIZE", "64",
    "MODEL.REIN.TOKEN_LENGTH", "8", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "3", "MODEL.MASK_FORMER.NHEADS", "2",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(len(SYNTHETIC_CLASSES)),
    "DATASETS.TRAIN", "('synthetic_dg_source_train',)",
    "DATASETS.TEST", "('synthetic_dg_night_val', 'synthetic_dg_fog_val')",
    "INPUT.MIN_SIZE_TRAIN", "(64, 96)", "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.SIZE_DIVISIBILITY", "64", "TEST.SLIDE.CROP_SIZE", "[64, 64]", "TEST.SLIDE.STRIDE", "[43, 43]",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2",
    "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0",
]
CONFIG = str(REPO / "configs/dinov2/rein_dinov2_large_gta_512.yaml")


@pytest.fixture()
def synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    register_synthetic_dg(tmp_path / "data" / "synthetic_dg", height=64, width=128, train_count=4, val_count=2)
    yield tmp_path
    monkeypatch.undo()  # the default registration reads DETECTRON2_DATASETS: restore it first
    register_synthetic_dg()


def args_for(out, *extra, eval_only=False, resume=False):
    argv = ["--config-file", CONFIG] + (["--eval-only"] if eval_only else []) + (["--resume"] if resume else [])
    return train_net.default_argument_parser().parse_args(argv + TINY + ["OUTPUT_DIR", str(out), *extra])


class StopAt(HookBase):
    """Simulates a kill right after iteration `at`."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt


def test_train_checkpoint_resume_and_evaluate(synthetic):
    out = synthetic / "run"
    cfg = train_net.setup(args_for(out))
    trainer = train_net.ReinTrainer(cfg)
    trainer.register_hooks([StopAt(3)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    saved = torch.load(out / "model_0000003.pth", weights_only=True)
    assert not any(k.startswith("backbone.vit.") for k in saved["model"])
    assert any(k.startswith("backbone.reins.") for k in saved["model"]) and saved["iteration"] == 3

    resumed = train_net.ReinTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    assert resumed.scheduler.last_epoch == 4
    expected_lr = 1e-4 * (1 - 4 / (6 - 1)) ** 0.9  # MMEngine's PolyLR spans MAX_ITER - 1 steps
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr)
    resumed.train()
    assert (out / "model_final.pth").is_file()
    assert resumed.iter == 6  # ran iterations 4 and 5, then stopped at MAX_ITER
    logged = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in entry for entry in logged)

    results = train_net.main(args_for(synthetic / "eval", "MODEL.WEIGHTS", str(out / "model_final.pth"),
                                      eval_only=True))
    assert set(results) == {"synthetic_dg_night_val", "synthetic_dg_fog_val", "mean"}
    for name in ("dg_results.json", "dg_results.md", "dg_results.png"):
        assert (synthetic / "eval" / "inference" / name).is_file()


def test_checkpoint_restores_identical_outputs(synthetic, caplog):
    """The checkpoint holds Rein and head; the frozen ViT comes from MODEL.VIT.WEIGHTS in both runs."""
    vfm = synthetic / "vfm.safetensors"
    save_file(create_timm_vfm("vit_small_patch14_dinov2", 16, 64, embed_dim=32, depth=4, num_heads=2).state_dict(),
              str(vfm))
    cfg = train_net.setup(args_for(synthetic / "run", "SOLVER.MAX_ITER", "2", "MODEL.VIT.WEIGHTS", str(vfm)))
    trainer = train_net.ReinTrainer(cfg)
    trainer.train()
    model = trainer.model.eval()
    fresh = train_net.ReinTrainer.build_model(cfg).eval()
    train_net.CompactCheckpointer(fresh).load(str(synthetic / "run" / "model_final.pth"))
    batch = [{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}]
    with torch.no_grad():
        assert torch.equal(model(batch)[0]["sem_seg"], fresh(batch)[0]["sem_seg"])
    assert "other frozen backbone weights" not in caplog.text


def test_command_line_errors_name_the_key_and_file(synthetic):
    run = [sys.executable, str(REPO / "train_net.py"), "--config-file", CONFIG]
    bad = subprocess.run(run + ["MODEL.REIN.TOKEN_LENGHT", "1"], capture_output=True, text=True, cwd=synthetic)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == ("error: command-line override: unknown config key MODEL.REIN.TOKEN_LENGHT; "
                                  "did you mean MODEL.REIN.TOKEN_LENGTH?")
    bad_file = synthetic / "bad.yaml"
    bad_file.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  VIT:\n    TYPO: 1\n')
    bad = subprocess.run(run[:-1] + [str(bad_file)], capture_output=True, text=True, cwd=synthetic)
    assert bad.returncode == 2 and "bad.yaml" in bad.stderr and "MODEL.VIT.TYPO" in bad.stderr
    shown = subprocess.run(run[:-1] + [str(bad_file)], capture_output=True, text=True, cwd=synthetic,
                           env={**os.environ, "REIN_D2_TRACEBACK": "1"})
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "ConfigError" in shown.stderr


def test_non_finite_loss_names_iteration_and_last_checkpoint(synthetic):
    cfg = train_net.setup(args_for(synthetic / "run", "SOLVER.BASE_LR", "1e30", "SOLVER.CHECKPOINT_PERIOD", "1"))
    trainer = train_net.ReinTrainer(cfg)
    with pytest.raises(train_net.NonFiniteLossError, match=r"iteration 1: .*model_0000000\.pth"):
        trainer.train()


def test_eval_only_over_real_dataset_layouts_reports_each_domain_and_the_mean(dg_root, tmp_path):
    """Issue 4's end to end: DETECTRON2_DATASETS trees in the real layouts, one --eval-only run."""
    from test_data_layouts import make_prepared_tree

    make_prepared_tree(dg_root)
    targets = ("dg_cityscapes_val", "dg_bdd_val", "dg_mapillary_val")
    args = args_for(tmp_path / "eval", "DATASETS.TRAIN", "('dg_gtav_train',)", "DATASETS.TEST", str(targets),
                    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19", eval_only=True)
    results = train_net.main(args)
    assert set(results) == {*targets, "mean"}
    mean = sum(results[t]["sem_seg"]["mIoU"] for t in targets) / 3
    assert results["mean"]["sem_seg"]["mIoU"] == pytest.approx(mean)
    report = (tmp_path / "eval" / "inference" / "dg_results.json").read_text()
    assert all(t in report for t in targets)


@pytest.mark.parametrize("first, then", [("off", "float16"), ("bfloat16", "float16"), ("float16", "float16"),
                                         ("float16", "off")])
def test_resume_across_precision_settings(synthetic, first, then):
    """A checkpoint written with one precision resumes with another: the float16 loss scale is
    restored when the checkpoint has one, starts afresh (and says so) when it has none."""
    def amp(precision):
        return ["SOLVER.AMP.ENABLED", "False"] if precision == "off" else [
            "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", precision]

    out = synthetic / "run"
    train_net.main(args_for(out, "SOLVER.MAX_ITER", "2", *amp(first)))
    resumed = train_net.ReinTrainer(train_net.setup(args_for(out, "SOLVER.MAX_ITER", "4", *amp(then))))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    scaler = getattr(resumed._trainer, "grad_scaler", None)
    log = (out / "log.txt").read_text()
    if then == "float16" and first != "float16":
        assert "the loss scale starts afresh" in log
    if then == "float16" and first == "float16":
        saved = torch.load(out / "model_final.pth", weights_only=True)["trainer"]["_trainer"]["grad_scaler"]
        assert scaler.get_scale() == saved["scale"] and "starts afresh" not in log
    resumed.train()
    assert resumed.iter == 4


def test_mean_over_chooses_the_datasets_of_the_reported_mean(synthetic):
    out = synthetic / "eval"
    results = train_net.main(args_for(out, "TEST.MEAN_OVER", "['synthetic_dg_fog_val']", eval_only=True))
    assert results["mean"]["sem_seg"]["mIoU"] == results["synthetic_dg_fog_val"]["sem_seg"]["mIoU"]
    report = json.loads((out / "inference" / "dg_results.json").read_text())
    assert report["mean"]["over"] == ["synthetic_dg_fog_val"] and len(report["datasets"]) == 2
    with pytest.raises(SystemExit):  # a name outside DATASETS.TEST is refused before anything runs
        train_net.main(args_for(out, "TEST.MEAN_OVER", "['dg_bdd_val']", eval_only=True))
