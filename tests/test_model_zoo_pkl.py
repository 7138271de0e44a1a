"""Detectron2 / Mask2Former model-zoo .pkl files through MODEL.WEIGHTS, as train_net.py loads them.

The file is made as Detectron2's model zoo publishes weights (its convert-*-to-d2.py scripts):
`pickle.dump({"model": {name: numpy array}, "__author__": ..., "matching_heuristics": True})`.
"""
import pickle
import sys

import numpy as np
import torch

from test_convert_rein_checkpoint import REPO, outputs, tiny_model, vfm  # noqa: F401  (vfm: fixture)

sys.path.insert(0, str(REPO))
import train_net  # noqa: E402


def test_mask2former_head_weights_from_a_model_zoo_pkl_give_the_same_outputs(tmp_path, vfm):  # noqa: F811
    torch.manual_seed(0)
    source = tiny_model(vfm, link=False)
    head = {k: torch.randn_like(v) for k, v in source.state_dict().items() if k.startswith("sem_seg_head.")}
    source.load_state_dict(head, strict=False)
    zoo = {k: v.numpy() for k, v in head.items()}
    zoo["backbone.stem.conv1.weight"] = np.zeros((64, 3, 7, 7), np.float32)  # the zoo model's own backbone
    with open(tmp_path / "model_final_mask2former.pkl", "wb") as f:
        pickle.dump({"model": zoo, "__author__": "Mask2Former", "matching_heuristics": True}, f)

    torch.manual_seed(0)
    model = tiny_model(vfm, link=False)  # same Rein initialisation, the head not loaded yet
    assert not torch.equal(outputs(model), outputs(source))
    train_net.CompactCheckpointer(model, save_dir=str(tmp_path)).resume_or_load(
        str(tmp_path / "model_final_mask2former.pkl"), resume=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in head.items())
    assert torch.equal(outputs(model), outputs(source))
