"""The DGSS augmentation baselines of the paper's Table 4: PASTA, AdvStyle and GTR-LTR.

PASTA is checked against its formula worked out by hand; AdvStyle on a smooth deterministic
model (its copy must raise the loss and leave the model untouched), in ReinTrainer and in
two DDP processes; GTR-LTR on a folder of PNG textures; the shipped Table 4 configs train
through train_net.py's command line at tiny size.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.engine import SimpleTrainer, launch
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from safetensors.torch import load_file, save_file
from test_train_net import CONFIG, REPO, TINY, args_for, synthetic, train_net  # noqa: F401  (synthetic: fixture)
from torch import nn

from rein_d2.config import add_rein_config, load_config
from rein_d2.data import register_synthetic_dg
from rein_d2.data.official_augmentations import RandomShortestEdge
from rein_d2.data.pasta import PASTA, pasta_noise_std, sample_amplitude_gains, scale_amplitude_spectrum
from rein_d2.data.texture_randomization import TextureRandomization
from rein_d2.data.train_mapper import build_train_augmentations
from rein_d2.engine import ReinTrainer
from rein_d2.engine.advstyle import AdversarialStyle
from rein_d2.errors import ConfigError

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
BASELINES = REPO / "configs" / "baselines"
# The default-size synthetic source val split (50 images): generated once here, read by the processes.
SOURCE = ["DATASETS.TRAIN", "('synthetic_dg_source_val',)", "DATASETS.TEST", "()"]


def by_hand_std(m: int, n: int, h: int, w: int, alpha: float = 3.0, beta: float = 0.25, k: float = 2.0) -> float:
    """The paper's sigma at integer frequency (m, n) of an h x w image."""
    return (2 * alpha * math.sqrt(m * m + n * n) / math.sqrt(h * h + w * w)) ** k + beta


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- PASTA

def test_pasta_noise_std_is_the_papers_formula():
    std = pasta_noise_std(4, 6, 3.0, 0.25, 2.0)  # np.fft order: rows 0 1 -2 -1, columns 0 1 2 -3 -2 -1
    assert std.shape == (4, 6)
    assert std[0, 0] == pytest.approx(0.25)  # the mean colour: beta alone
    assert std[1, 0] == pytest.approx(36 / 52 + 0.25)  # (2 * 3 * 1 / sqrt(52))^2 + 0.25
    assert std[3, 5] == pytest.approx(72 / 52 + 0.25)  # m = n = -1
    assert std[2, 3] == pytest.approx(9.25)  # m = -2, n = -3, the highest frequency: alpha^k + beta
    assert std[1, 1] == std[3, 5]  # a frequency and its mirror get the same spread


def test_pasta_keeps_the_phase():
    image = random_image(32, 48).astype(np.float64)
    std = pasta_noise_std(32, 48, alpha=0.3, beta=0.02, k=2.0)  # every gain > 0
    gains = sample_amplitude_gains(std, 3, np.random.default_rng(1))
    before = np.fft.fft2(image, axes=(0, 1))
    after = np.fft.fft2(scale_amplitude_spectrum(image, gains), axes=(0, 1))
    nonzero = np.abs(before) > 1e-3 * np.abs(before).max()
    assert nonzero.mean() > 0.99
    assert np.abs(np.angle(after[nonzero] * np.conj(before[nonzero]))).max() < 1e-4  # phase difference, wrapped
    assert np.abs(np.abs(after) / np.abs(before) - 1)[nonzero].max() > 0.05  # the amplitude did change


def test_pasta_scales_each_amplitude_by_its_noise_as_worked_out_by_hand():
    """N(1, s^2) drawn by numpy is 1 + s z with z its standard normals; the real part of the inverse
    transform averages a frequency's gain with its mirror's (-m, -n), as in the official code."""
    h, w = 8, 10
    image = random_image(h, w, seed=2).astype(np.float64)
    gains = sample_amplitude_gains(pasta_noise_std(h, w, 3.0, 0.25, 2.0), 3, np.random.default_rng(3))
    z = np.random.default_rng(3).standard_normal((h, w, 3), dtype=np.float32)  # the same standard normals
    ratio = np.fft.fft2(scale_amplitude_spectrum(image, gains), axes=(0, 1)) / np.fft.fft2(image, axes=(0, 1))
    for m, n in [(0, 0), (1, 2), (-3, 4), (4, -5)]:  # (0, 0) and the corner (4, -5) are their own mirrors
        sigma = by_hand_std(m, n, h, w)
        for c in range(3):
            gain, mirror = 1 + sigma * z[m % h, n % w, c], 1 + sigma * z[-m % h, -n % w, c]
            assert ratio[m % h, n % w, c] == pytest.approx((gain + mirror) / 2, rel=1e-4, abs=1e-4)
    assert by_hand_std(4, -5, h, w) == pytest.approx(9.25)


def test_pasta_image_is_the_official_full_complex_transform():
    """The official code: amplitude times noise, phase kept, full complex inverse FFT, real part."""
    image = random_image(30, 44, seed=4).astype(np.float64)
    gains = sample_amplitude_gains(pasta_noise_std(30, 44, 3.0, 0.25, 2.0), 3, np.random.default_rng(5))
    spectrum = np.fft.fft2(image, axes=(0, 1))
    official = np.fft.ifft2(np.abs(spectrum) * gains * np.exp(1j * np.angle(spectrum)), axes=(0, 1)).real
    assert np.abs(scale_amplitude_spectrum(image, gains) - official).max() < 1e-3  # float32, pixel units


def test_pasta_augmentation_returns_a_uint8_image_and_keeps_the_labels():
    image, label = random_image(40, 60), np.random.default_rng(1).integers(0, 5, (40, 60), dtype=np.uint8)
    sample = T.AugInput(image.copy(), sem_seg=label.copy())
    np.random.seed(0)
    T.AugmentationList([PASTA()])(sample)
    assert sample.image.dtype == np.uint8 and sample.image.shape == image.shape
    assert (sample.image != image).mean() > 0.5
    assert np.array_equal(sample.sem_seg, label)
    untouched = T.AugInput(image.copy(), sem_seg=label.copy())
    T.AugmentationList([PASTA(prob=0.0)])(untouched)
    assert np.array_equal(untouched.image, image)
    with pytest.raises(ConfigError, match="INPUT.PASTA"):
        PASTA(alpha=-1.0)


# ------------------------------------------------------------------------------------------- GTR-LTR

@pytest.fixture
def textures(tmp_path) -> Path:
    folder = tmp_path / "textures"
    (folder / "oil").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i, size in enumerate([(30, 50), (80, 60), (64, 64)]):
        stripes = (np.arange(size[1]) * (i + 2) % 255).astype(np.uint8)
        painting = np.dstack([np.tile(stripes, (size[0], 1)), rng.integers(0, 256, size, dtype=np.uint8),
                              np.full(size, 40 * i, dtype=np.uint8)])
        assert cv2.imwrite(str(folder / ("oil" if i else "") / f"texture_{i}.png"), painting)
    return folder


def texture_cfg(**gtr):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.INPUT.GTR_LTR.ENABLED = True
    for key, value in gtr.items():
        cfg.INPUT.GTR_LTR[key] = value
    return cfg


def test_global_texture_randomisation_changes_the_whole_image(textures):
    image, label = random_image(48, 72), np.zeros((48, 72), dtype=np.uint8)
    sample = T.AugInput(image.copy(), sem_seg=label.copy())
    np.random.seed(0)
    T.AugmentationList([TextureRandomization(str(textures), global_prob=1.0, local_prob=0.0)])(sample)
    assert sample.image.dtype == np.uint8 and sample.image.shape == image.shape
    assert (sample.image != image).any(axis=2).mean() > 0.9
    assert np.array_equal(sample.sem_seg, label)


def test_local_texture_randomisation_changes_random_regions_only(textures):
    image = random_image(96, 128)
    sample = T.AugInput(image.copy())
    np.random.seed(1)
    T.AugmentationList([TextureRandomization(str(textures), global_prob=0.0, local_prob=1.0,
                                             local_area=(0.3, 0.3))])(sample)
    changed = (sample.image != image).any(axis=2).mean()
    assert 0.2 < changed < 0.35  # about 30% of the image (a few blended pixels round back to themselves)


def test_texture_folder_must_hold_images(tmp_path, textures):
    build = {"TEXTURE_DIR": str(textures)}
    augs = build_train_augmentations(texture_cfg(**build))
    assert isinstance(augs[0], TextureRandomization) and len(augs[0].files) == 3  # sub-folders too
    assert isinstance(augs[1], RandomShortestEdge)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"TEXTURE_DIR .*empty holds no images"):
        build_train_augmentations(texture_cfg(TEXTURE_DIR=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="is not a folder"):
        build_train_augmentations(texture_cfg(TEXTURE_DIR=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="TEXTURE_DIR is empty"):
        build_train_augmentations(texture_cfg())


def test_pasta_and_textures_come_before_the_official_pipeline(textures):
    cfg = texture_cfg(TEXTURE_DIR=str(textures))
    cfg.INPUT.PASTA.ENABLED = True
    kinds = [type(a) for a in build_train_augmentations(cfg)]
    assert kinds[:3] == [TextureRandomization, PASTA, RandomShortestEdge]


# ------------------------------------------------------------------------------------------ AdvStyle

class PixelClassifier(nn.Module):
    """Normalises as MaskFormer does, then a small conv net and the cross-entropy: a smooth, deterministic loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 4, 1))
        self.register_buffer("mean", torch.tensor(MEAN).view(-1, 1, 1), False)
        self.register_buffer("std", torch.tensor(STD).view(-1, 1, 1), False)

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        images = torch.stack([(x["image"] - self.mean) / self.std for x in batched_inputs])
        labels = torch.stack([x["sem_seg"] for x in batched_inputs])
        return {"loss_ce": F.cross_entropy(self.net(images), labels, ignore_index=255)}


def style_batch() -> list[dict]:
    """Two mapped samples; the second is padded at the bottom as the training mapper pads."""
    generator = torch.Generator().manual_seed(4)
    batch = []
    for rows in (16, 12):
        image = torch.tensor(MEAN).view(-1, 1, 1).repeat(1, 16, 16)
        image[:, :rows] = torch.randint(0, 256, (3, rows, 16), generator=generator).float()
        sem_seg = torch.full((16, 16), 255, dtype=torch.long)
        sem_seg[:rows] = torch.randint(0, 4, (rows, 16), generator=generator)
        batch.append({"image": image, "sem_seg": sem_seg, "unpadded_size": (rows, 16)})
    return batch


def test_advstyle_raises_the_loss_and_leaves_the_model_unchanged():
    model, batch = PixelClassifier().train(), style_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    restyled = AdversarialStyle(lr=20.0, steps=1, pixel_mean=MEAN, pixel_std=STD).restyle(model, batch)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for clean, copy in zip(batch, restyled):
        assert copy["sem_seg"] is clean["sem_seg"]
        assert not torch.allclose(copy["image"], clean["image"])
    assert torch.equal(restyled[1]["image"][:, 12:], batch[1]["image"][:, 12:])  # the padding stays
    with torch.no_grad():
        clean_loss, adversarial_loss = model(batch)["loss_ce"], model(restyled)["loss_ce"]
    assert adversarial_loss > clean_loss + 1e-3  # one ascent step: about +0.02 here, a descent step -0.02


def test_advstyle_restyles_the_channel_statistics_only():
    """Per channel, the copy is an affine map of the clean image over its region (new mean and std)."""
    batch = style_batch()
    restyled = AdversarialStyle(lr=0.5, steps=2, pixel_mean=MEAN, pixel_std=STD).restyle(PixelClassifier(), batch)
    clean, copy = batch[1]["image"][:, :12].reshape(3, -1), restyled[1]["image"][:, :12].reshape(3, -1)
    for c in range(3):
        slope, offset = np.polyfit(clean[c].numpy(), copy[c].numpy(), 1)
        assert np.allclose(slope * clean[c].numpy() + offset, copy[c].numpy(), atol=1e-3)
        assert abs(slope - 1) + abs(offset) > 1e-3


def test_advstyle_doubles_the_training_batch_only_in_training():
    model, batch = PixelClassifier(), style_batch()
    AdversarialStyle(lr=0.5, steps=1, pixel_mean=MEAN, pixel_std=STD).attach(model)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    model.train()(batch)
    assert seen == [2, 4]  # the style step's forward on the 2 copies, then clean + copies
    with torch.no_grad():
        model.eval()(batch)
    assert seen[2:] == [2]


def test_reintrainer_trains_a_step_with_advstyle(synthetic):  # noqa: F811  (the fixture)
    cfg = train_net.setup(args_for(synthetic / "run", "MODEL.ADVSTYLE.ENABLED", "True", "SOLVER.MAX_ITER", "1",
                                   "DATASETS.TEST", "()"))
    trainer = ReinTrainer(cfg)
    seen = []
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    reins = {k: v.clone() for k, v in trainer.model.state_dict().items() if "reins." in k}
    trainer.train()
    assert seen == [2, 4]  # IMS_PER_BATCH 2: the copies' forward, then the doubled batch
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in reins.items())  # the optimizer stepped


# One AdvStyle training step in each DDP process (Detectron2's launch, gloo on CPU).
def ddp_advstyle_steps(datasets: str, out: str) -> None:
    register_synthetic_dg(Path(datasets) / "synthetic_dg")  # the trainer builds its (unused) loader
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([*TINY, *SOURCE, "MODEL.ADVSTYLE.ENABLED", "True", "OUTPUT_DIR", out])
    torch.manual_seed(0)
    trainer = ReinTrainer(cfg)
    rank = comm.get_rank()
    generator = torch.Generator().manual_seed(10 + rank)  # each process restyles its own images
    share = [{"image": torch.randint(0, 256, (3, 64, 64), generator=generator).float(),
              "sem_seg": torch.randint(0, 6, (64, 64), generator=generator)} for _ in range(2)]
    step = SimpleTrainer(trainer.model, [share, share], trainer.optimizer)
    with EventStorage(0):
        for _ in range(2):  # a second step: DDP would refuse it if the style step had left a reduction open
            step.run_step()
    trained = {k: v.detach().contiguous() for k, v in trainer.model.module.state_dict().items() if "reins." in k}
    save_file(trained, str(Path(out) / f"rank{rank}.safetensors"))


def test_advstyle_under_ddp_keeps_the_processes_in_step(synthetic_source_root, tmp_path):
    launch(ddp_advstyle_steps, 2, dist_url="auto", args=(str(synthetic_source_root), str(tmp_path)))
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # gradients all-reduced, same update


# ----------------------------------------------------------------------------- Table 4 configs, CLI

@pytest.mark.parametrize("opts, message", [
    (["INPUT.PASTA.ALPHA", "4.0"], r"INPUT\.PASTA\.ALPHA = 4\.0 .*PASTA is off"),
    (["INPUT.GTR_LTR.TEXTURE_DIR", "textures"], r"TEXTURE_DIR = 'textures' .*texture randomisation is off"),
    (["MODEL.ADVSTYLE.LR", "2.0"], r"MODEL\.ADVSTYLE\.LR = 2\.0 .*AdvStyle is off"),
])
def test_settings_of_a_disabled_augmentation_are_refused(opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, opts)


@pytest.mark.parametrize("config, extra", [
    ("full_pasta_dinov2_large_gta_512.yaml", []),
    ("freeze_advstyle_dinov2_large_gta_512.yaml", ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float16"]),
    ("full_gtr_ltr_dinov2_large_gta_512.yaml", ["INPUT.GTR_LTR.TEXTURE_DIR", "TEXTURES"]),
])
def test_table4_config_trains_through_the_command_line(synthetic_source_root, textures, tmp_path, config, extra):
    out = tmp_path / "run"
    extra = [str(textures) if x == "TEXTURES" else x for x in extra]
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(BASELINES / config), *TINY, *SOURCE,
           "SOLVER.MAX_ITER", "2", *extra, "OUTPUT_DIR", str(out)]
    done = subprocess.run(cmd, env=dict(os.environ, DETECTRON2_DATASETS=str(synthetic_source_root), OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (out / "model_final.pth").is_file()
    assert "total_loss" in (out / "metrics.json").read_text()


def test_command_line_refuses_an_empty_texture_folder(tmp_path):
    (tmp_path / "textures").mkdir()
    config = BASELINES / "full_gtr_ltr_dinov2_large_gta_512.yaml"
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(config), *TINY, "INPUT.GTR_LTR.TEXTURE_DIR", str(tmp_path / "textures"), "OUTPUT_DIR", str(tmp_path / "run")]
    done = subprocess.run(cmd, env=dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "data")),
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "INPUT.GTR_LTR.TEXTURE_DIR" in done.stderr and "holds no images" in done.stderr
