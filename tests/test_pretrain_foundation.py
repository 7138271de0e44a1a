"""tools/pretrain_foundation.py and its parts: determinism from the seed, the file ReinViT loads, MAE pieces."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rein_d2.checkpoint.vfm_weights import load_vfm_weights
from rein_d2.config import load_config
from rein_d2.data.synthetic.appearance import randomise_appearance
from rein_d2.data.synthetic.generate import scene_rng
from rein_d2.data.synthetic.pretraining import pretraining_batch, render_street_pool
from rein_d2.data.synthetic.scenes import render_scene
from rein_d2.modeling.backbone import create_timm_vfm
from rein_d2.modeling.mae import MaskedAutoencoder, patchify, sincos_positions

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "pretrain_foundation.py"
QUICKSTART_CONFIG = REPO / "configs" / "quickstart" / "tiny_synthetic_rein.yaml"
SHIPPED = REPO / "models" / "tiny_foundation_vit.safetensors"
TINY_RUN = ["--steps", "2", "--streets", "3", "--batch-size", "4", "--log-period", "1"]


def pretrain(tmp_path, name, *extra):
    output = tmp_path / f"{name}.safetensors"
    run = subprocess.run([sys.executable, str(SCRIPT), *TINY_RUN, "--output", str(output), *extra],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    with safe_open(str(output), framework="pt") as weights:
        metadata = weights.metadata()
    return load_file(str(output)), metadata, run.stdout


def test_same_seed_same_losses_and_weights_whichever_process_renders(tmp_path):
    first, meta, log = pretrain(tmp_path, "a", "--seed", "3", "--workers", "0")
    again, meta_again, _ = pretrain(tmp_path, "b", "--seed", "3", "--workers", "1")
    other, meta_other, _ = pretrain(tmp_path, "c", "--seed", "4", "--workers", "0")
    assert f"step 1/2  loss {float(meta['first_loss']):.6f}" in log  # the logged first-step loss is recorded
    assert meta["first_loss"] == meta_again["first_loss"]
    assert meta["last_loss_mean_50"] == meta_again["last_loss_mean_50"]
    assert first.keys() == again.keys() == load_file(str(SHIPPED)).keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert meta_other["first_loss"] != meta["first_loss"]
    assert not torch.equal(other["blocks.0.attn.qkv.weight"], first["blocks.0.attn.qkv.weight"])
    assert meta["seed"] == "3" and meta["steps"] == "2" and "--seed 3" in meta["command"]
    assert math.isfinite(float(meta["first_loss"])) and float(meta["seconds"]) >= 0


def test_the_shipped_file_is_what_the_quickstart_backbone_loads():
    assert SHIPPED.stat().st_size <= 10 * 2**20
    v = load_config(str(QUICKSTART_CONFIG), []).MODEL.VIT
    vit = create_timm_vfm(v.TIMM_NAME, v.PATCH_SIZE, v.IMG_SIZE, 0.0, v.DYNAMIC_IMG_SIZE,
                          embed_dim=v.EMBED_DIM, depth=v.DEPTH, num_heads=v.NUM_HEADS)
    missing, unexpected = load_vfm_weights(vit, SHIPPED)
    assert (missing, unexpected) == ([], [])
    shipped = load_file(str(SHIPPED))
    assert all(torch.equal(vit.state_dict()[k], shipped[k]) for k in shipped)
    with safe_open(str(SHIPPED), framework="pt") as weights:
        meta = weights.metadata()
    assert meta["command"] == "python tools/pretrain_foundation.py" and meta["seed"] == "0"  # the defaults


def test_refused_arguments_exit_with_a_message(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--steps", "10", "--warmup-fraction", "1", "--output",
                          str(tmp_path / "x.safetensors")], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0 and "--warmup-fraction 1.0 must lie in [0, 1)" in run.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_views_come_from_their_own_streets_in_random_appearances():
    pool = render_street_pool(2, seed=0, height=64, width=128)
    assert np.array_equal(pool.materials, render_street_pool(2, seed=0, workers=2, height=64, width=128).materials)
    for scenes in ("train", "val"):  # none is a benchmark street of the same seed and index
        assert not np.array_equal(pool.materials[0], render_scene(scene_rng(0, scenes, 0), 64, 128).labels)
    batch = pretraining_batch(pool, 64, 3, seed=5, step=7)
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch, pretraining_batch(pool, 64, 3, seed=5, step=7))
    assert not np.array_equal(batch, pretraining_batch(pool, 64, 3, seed=5, step=8))
    image = pool.images[0].astype(np.float32) / 255
    looks = [randomise_appearance(image, pool.materials[0], np.random.default_rng(i)) for i in range(8)]
    means = np.array([look.reshape(-1, 3).mean(0) for look in looks])
    assert means.std(axis=0).min() > 10  # brightness and colour vary widely between appearances


def test_patchify_and_positions_by_hand():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = patchify(images, 2)
    assert patches.shape == (2, 4, 12)
    # patch 1 (top right) of image 0: rows 0-1, columns 2-3, each pixel's 3 channels in turn
    expected = [images[0, c, r, col].item() for r in (0, 1) for col in (2, 3) for c in range(3)]
    assert patches[0, 1].tolist() == expected
    positions = sincos_positions((1, 2), 4)  # dim 4: one frequency (1) per axis, sin then cos
    assert positions.flatten().tolist() == pytest.approx([0, 1, 0, 1, 0, 1, math.sin(1), math.cos(1)])


def test_mae_scores_only_the_hidden_patches():
    torch.manual_seed(0)
    vit = create_timm_vfm("vit_small_patch14_dinov2", 8, 32, embed_dim=32, depth=2, num_heads=2)
    mae = MaskedAutoencoder(vit, decoder_dim=16, decoder_depth=1, decoder_heads=2).eval()
    images = torch.randn(2, 3, 32, 32)
    loss = mae(images, generator=torch.Generator().manual_seed(1))
    order = torch.rand(2, 16, generator=torch.Generator().manual_seed(1)).argsort(dim=1)
    visible = order[:, :4]
    prediction = mae.decode(mae.encode_visible(images, visible), visible)
    target = patchify(images, 8)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    hidden = [[i for i in range(16) if i not in visible[b].tolist()] for b in range(2)]
    by_hand = torch.stack([((prediction[b, hidden[b]] - target[b, hidden[b]]) ** 2).mean() for b in range(2)]).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
