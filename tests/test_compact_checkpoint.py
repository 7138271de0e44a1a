"""Compact checkpoints: no frozen tensor, identical outputs after loading, clear refusals."""
import logging
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from rein_d2.checkpoint.compact import CompactCheckpointer, IncompatibleCheckpointError
from rein_d2.checkpoint.restricted_pickle import UnsafePickleError


class Tiny(nn.Module):
    def __init__(self, classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8)).requires_grad_(False)
        self.head = nn.Linear(8, classes)
        self.register_buffer("pixel_mean", torch.zeros(6), persistent=True)

    def forward(self, x):
        return self.head(self.backbone(x))


def trained(tmp_path, **kw):
    model = Tiny(**kw)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    optimizer = torch.optim.AdamW(model.head.parameters())
    model(torch.randn(2, 6)).sum().backward()
    optimizer.step()
    ckpt = CompactCheckpointer(model, str(tmp_path), optimizer=optimizer)
    ckpt.save("model_final", iteration=7)
    return model, tmp_path / "model_final.pth"


def test_checkpoint_holds_no_frozen_tensor_and_restores_outputs(tmp_path):
    model, path = trained(tmp_path)
    saved = torch.load(path, weights_only=True)
    assert set(saved["model"]) == {"head.weight", "head.bias", "pixel_mean"}
    assert saved["iteration"] == 7 and "optimizer" in saved
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(tmp_path.glob(".*tmp*"))
    fresh = Tiny()
    CompactCheckpointer(fresh).load(str(path))
    x = torch.randn(4, 6)
    assert torch.equal(fresh(x), model(x))


def test_resume_restores_the_optimizer_and_iteration(tmp_path):
    _, path = trained(tmp_path)
    fresh = Tiny()
    optimizer = torch.optim.AdamW(fresh.head.parameters())
    extra = CompactCheckpointer(fresh, str(tmp_path), optimizer=optimizer).resume_or_load("", resume=True)
    assert extra["iteration"] == 7
    saved = torch.load(path, weights_only=True)["optimizer"]["state"]
    assert optimizer.state_dict()["state"].keys() == saved.keys()
    assert all(torch.equal(optimizer.state_dict()["state"][k]["exp_avg"], v["exp_avg"]) for k, v in saved.items())


def test_another_frozen_backbone_is_warned_about(tmp_path, caplog):
    _, path = trained(tmp_path)
    other = Tiny(seed=1)
    with caplog.at_level(logging.WARNING):
        CompactCheckpointer(other).load(str(path))
    assert "other frozen backbone weights" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        CompactCheckpointer(Tiny()).load(str(path))
    assert "other frozen backbone" not in caplog.text
    assert "not found in the checkpoint" not in caplog.text  # frozen keys are expected to be absent


def test_a_checkpoint_of_another_model_lists_what_does_not_fit(tmp_path):
    _, path = trained(tmp_path)
    with pytest.raises(IncompatibleCheckpointError, match=r"head\.weight: checkpoint \(3, 8\) vs model \(5, 8\)"):
        CompactCheckpointer(Tiny(classes=5)).load(str(path))


def test_files_that_are_not_rein_d2_checkpoints_are_refused_with_the_fix(tmp_path):
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump({"conv1_w": np.zeros(3)}, f)  # Caffe2 / Detectron1 layout, not Detectron2's model zoo
    with pytest.raises(IncompatibleCheckpointError, match="not in the Detectron2 model-zoo format"):
        CompactCheckpointer(Tiny()).load(str(tmp_path / "model.pkl"))
    torch.save({"model": {"head.weight": torch.zeros(3, 8)}, "obj": logging.getLogger("x")}, tmp_path / "obj.pth")
    with pytest.raises(UnsafePickleError, match=r"obj\.pth is refused: reading it would call logging\.getLogger"):
        CompactCheckpointer(Tiny()).load(str(tmp_path / "obj.pth"))
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": {"decode_head.cls_embed.weight": torch.zeros(4, 8)}},
               tmp_path / "release.pth")
    with pytest.raises(IncompatibleCheckpointError, match="MMEngine checkpoint.*tools/convert_rein_checkpoint.py"):
        CompactCheckpointer(Tiny()).load(str(tmp_path / "release.pth"))
