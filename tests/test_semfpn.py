"""The SemFPN head of the paper's Table 14: Detectron2's SemanticSegmentor and SemSegFPNHead on its
FPN over ReinViT, trained and evaluated as the Mask2Former configs are (configs/semfpn)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor, build_model
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from safetensors.torch import save_file
from test_train_net import REPO, TINY, synthetic  # noqa: F401  (synthetic: the fixture)

from rein_d2.config import load_config
from rein_d2.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_IGNORE_LABEL, ensure_splits, synthetic_splits
from rein_d2.engine import ReinTrainer
from rein_d2.errors import ConfigError
from rein_d2.modeling.backbone import ReinViT, create_timm_vfm

SEMFPN = REPO / "configs" / "semfpn"
MODES = ("freeze", "rein", "full")
# TINY of test_train_net (a 4-block ViT of width 32 on the synthetic benchmark's 6 classes) with a
# 32-channel FPN and a 16-channel head.
TINY_SEMFPN = TINY + ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16"]
NUM_CLASSES = len(SYNTHETIC_CLASSES)


def config(mode: str, *opts: str, vfm: str = "dinov2_large"):
    return load_config(str(SEMFPN / f"{mode}_{vfm}_gta_512.yaml"), [*TINY_SEMFPN, *opts])


def tiny_model(mode: str = "rein", *opts: str) -> SemanticSegmentor:
    torch.manual_seed(0)
    return build_model(config(mode, *opts))


def test_the_model_is_detectron2s_semantic_fpn_over_rein_vit():
    model = tiny_model()
    assert isinstance(model, SemanticSegmentor) and isinstance(model.sem_seg_head, SemSegFPNHead)
    assert isinstance(model.backbone, FPN) and isinstance(model.backbone.bottom_up, ReinViT)
    assert model.backbone.in_features == ("res2", "res3", "res4", "res5")
    assert {k: (v.channels, v.stride) for k, v in model.backbone.output_shape().items()} == {
        "p2": (32, 4), "p3": (32, 8), "p4": (32, 16), "p5": (32, 32)}
    assert (model.sem_seg_head.common_stride, model.sem_seg_head.ignore_value) == (4, 255)
    assert model.sem_seg_head.predictor.out_channels == NUM_CLASSES


def trainable_groups(model) -> dict[str, bool]:
    """Whether any parameter of each part of the model trains."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    parts = {"vit": "backbone.bottom_up.vit.", "rein": "backbone.bottom_up.reins.", "fpn": "backbone.fpn_",
             "head": "sem_seg_head."}
    return {part: any(n.startswith(prefix) for n in names) for part, prefix in parts.items()}


@pytest.mark.parametrize("mode", MODES)
def test_one_training_step_changes_only_the_modes_parameters(synthetic, mode):  # noqa: F811
    cfg = config(mode, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()", "SOLVER.BACKBONE_MULTIPLIER", "0.1",
                 "OUTPUT_DIR", str(synthetic / mode))
    trainer = ReinTrainer(cfg)
    model = trainer.model
    assert trainable_groups(model) == {"vit": mode == "full", "rein": mode == "rein", "fpn": True, "head": True}
    lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    vit_lrs = {lrs[id(p)] for n, p in model.named_parameters()
               if n.startswith("backbone.bottom_up.vit.") and p.requires_grad}
    assert vit_lrs == ({1e-4 * 0.1} if mode == "full" else set())  # SOLVER.BACKBONE_MULTIPLIER on the ViT only
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != param.requires_grad, name


def hand_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore: int) -> torch.Tensor:
    """Mean over the labelled pixels of -log softmax(logits)[label], written out."""
    log_probs = logits - logits.logsumexp(dim=1, keepdim=True)
    labelled = labels != ignore
    picked = log_probs.gather(1, torch.where(labelled, labels, 0)[:, None])[:, 0]
    return -(picked * labelled).sum() / labelled.sum()


def test_loss_is_the_cross_entropy_of_the_heads_upsampled_logits_times_its_weight():
    torch.manual_seed(1)
    sizes = [(64, 64), (64, 96)]
    batch = []
    for h, w in sizes:
        labels = torch.randint(0, NUM_CLASSES, (h, w))
        labels[:8] = 255  # an unlabelled band
        batch.append({"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8), "sem_seg": labels})
    losses = {}
    for weight in ("1.0", "2.5"):
        model = tiny_model("rein", "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", weight).train()
        losses[weight] = model(batch)["loss_sem_seg"]
    # By hand: normalise, pad the batch to 64x96 with zeros (images) and 255 (labels), take the
    # head's stride-4 logits, upsample them 4x bilinearly, cross-entropy over labelled pixels.
    images = torch.zeros(2, 3, 64, 96)
    labels = torch.full((2, 64, 96), 255)
    for i, x in enumerate(batch):
        h, w = x["sem_seg"].shape
        images[i, :, :h, :w] = (x["image"].float() - model.pixel_mean) / model.pixel_std
        labels[i, :h, :w] = x["sem_seg"]
    logits = model.sem_seg_head.layers(model.backbone(images)).detach()  # with autograd on, as in training
    assert logits.shape == (2, NUM_CLASSES, 16, 24)
    expected = hand_cross_entropy(F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False),
                                  labels, 255)
    torch.testing.assert_close(losses["1.0"].detach(), expected)
    torch.testing.assert_close(losses["2.5"].detach(), 2.5 * expected)


def predict(model, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model([{"image": image}])[0]["sem_seg"]


def test_sliding_window_equals_whole_image_inference_when_one_window_covers_the_image():
    model = tiny_model().eval()
    assert model.slide_window is not None and model.slide_window.crop_size == (64, 64)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    slid = predict(model, image)
    model.slide_window = None  # Detectron2's SemanticSegmentor.forward
    whole = predict(model, image)
    assert slid.shape == (NUM_CLASSES, 64, 64) and slid.dtype == torch.float32
    torch.testing.assert_close(slid, whole, rtol=0, atol=1e-6)


def test_sliding_window_averages_the_logits_of_its_windows():
    """64x128 image, 64x64 windows every 43 pixels: columns 0-64, 43-107, 64-128 (the last moved back)."""
    model = tiny_model().eval()
    image = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)
    slid = predict(model, image)
    window = model.slide_window
    model.slide_window = None
    total, count = torch.zeros(NUM_CLASSES, 64, 128), torch.zeros(1, 64, 128)
    for x1 in (0, 43, 64):
        total[:, :, x1:x1 + 64] += predict(model, image[:, :, x1:x1 + 64])
        count[:, :, x1:x1 + 64] += 1
    model.slide_window = window
    torch.testing.assert_close(slid, total / count, rtol=0, atol=1e-5)


def test_inference_under_test_amp_returns_float32_logits_close_to_full_precision():
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    full = predict(tiny_model().eval(), image)
    amp = predict(tiny_model("rein", "TEST.AMP.ENABLED", "True").eval(), image)
    assert amp.dtype == torch.float32 and not torch.equal(amp, full)  # bfloat16 ran
    assert (amp - full).abs().max() <= 0.02 * full.abs().max()  # bfloat16 keeps about 3 significant digits
    assert (amp.argmax(0) == full.argmax(0)).float().mean() >= 0.95


def test_the_fpn_backbone_refuses_rein_queries_and_other_patch_sizes():
    with pytest.raises(ConfigError, match="MODEL.REIN.LINK_TOKEN_TO_QUERY False"):
        tiny_model("rein", "MODEL.REIN.LINK_TOKEN_TO_QUERY", "True")
    with pytest.raises(ConfigError, match="MODEL.VIT.PATCH_SIZE=14: the FPN backbone needs patch 16"):
        tiny_model("rein", "MODEL.VIT.PATCH_SIZE", "14")
    with pytest.raises(ConfigError, match=r"MODEL.FPN.IN_FEATURES=\['res3', 'res9'\] must name ReinViT features"):
        tiny_model("rein", "MODEL.FPN.IN_FEATURES", "['res3', 'res9']")


def test_fpn_keys_are_refused_where_no_fpn_reads_them():
    with pytest.raises(ConfigError, match=r"MODEL\.FPN\.OUT_CHANNELS = 128 .*read only by the FPN backbones"):
        load_config(str(REPO / "configs/dinov2/rein_dinov2_large_gta_512.yaml"), ["MODEL.FPN.OUT_CHANNELS", "128"])


def test_mask2former_keys_are_refused_where_semfpn_does_not_read_them():
    with pytest.raises(ConfigError, match=r"DEFORM_ATTN_COMPILE = 'inductor' .*read only by Mask2Former's pixel decoder"):
        load_config(str(REPO / "configs/semfpn/rein_dinov2_large_gta_512.yaml"),
                    ["MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE", "inductor"])
    cfg = load_config(str(REPO / "configs/dinov2/rein_dinov2_large_gta_512.yaml"),
                      ["MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE", "inductor"])
    assert cfg.MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE == "inductor"


def test_the_class_check_reads_the_semfpn_heads_class_count(synthetic):  # noqa: F811
    with pytest.raises(ConfigError, match="MODEL.SEM_SEG_HEAD.NUM_CLASSES is 19 but training dataset "
                                          "'synthetic_dg_source_train' has 6 classes"):
        ReinTrainer.build_model(config("rein", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19"))


# Trainable parameters of the DINOv2-L configs, by hand.
# Rein (r=16, m=100, 24 layers of 1024, no link): tokens 24*100*16 + 24*16*1024, mlp_token2feat and
# mlp_delta_f 2 * (1024*1024 + 1024), scale 1.
REIN = 24 * 100 * 16 + 24 * 16 * 1024 + 2 * (1024 * 1024 + 1024) + 1
# FPN 1024 -> 256 at 4 levels: 1x1 laterals and 3x3 outputs, with biases (no norm).
FPN_PARAMS = 4 * (1024 * 256 + 256) + 4 * (256 * 256 * 9 + 256)
# SemSegFPNHead, 128 channels: 1, 1, 2 and 3 convs of 3x3 for p2..p5 (the first from 256 channels),
# no bias under BatchNorm (weight and bias of 128 each), then a 1x1 predictor of 19 classes.
HEAD = 4 * 256 * 128 * 9 + 3 * 128 * 128 * 9 + 7 * 2 * 128 + 128 * 19 + 19
# DINOv2-L at patch 16 / 512 px without its final norm: patch embedding, class token, 1 + 32*32
# positions, 24 blocks of (2 norms, qkv, proj, 2 layer scales, fc1, fc2).
BLOCK = (2 * 2 * 1024 + (1024 * 3072 + 3072) + (1024 * 1024 + 1024) + 2 * 1024
         + (1024 * 4096 + 4096) + (4096 * 1024 + 1024))
VIT_L = 3 * 16 * 16 * 1024 + 1024 + 1024 + (1 + 32 * 32) * 1024 + 24 * BLOCK
EXPECTED = {"freeze": (0, FPN_PARAMS + HEAD), "rein": (REIN, FPN_PARAMS + HEAD), "full": (VIT_L, FPN_PARAMS + HEAD)}


@pytest.mark.parametrize("mode", MODES)
def test_dinov2_large_trainable_parameters_at_full_size(mode):
    cfg = load_config(str(SEMFPN / f"{mode}_dinov2_large_gta_512.yaml"), ["MODEL.VIT.WEIGHTS", ""])
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    counts = {"bottom_up": 0, "rest": 0}
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts["bottom_up" if name.startswith("backbone.bottom_up.") else "rest"] += param.numel()
    assert (counts["bottom_up"], counts["rest"]) == EXPECTED[mode]
    assert (f"{REIN / 1e6:.2f}M", REIN) == ("2.53M", 2_530_817)


@pytest.mark.parametrize("mode", MODES)
def test_eva02_configs_use_the_vfms_eva02_backbone(mode):
    eva = load_config(str(REPO / "configs/vfms/rein_eva02_large_gta_512.yaml")).MODEL.VIT
    ours = load_config(str(SEMFPN / f"{mode}_eva02_large_gta_512.yaml")).MODEL.VIT
    assert {**ours, "FINETUNE": "rein"} == dict(eva) and ours.FINETUNE == mode


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory):
    """The synthetic benchmark rendered in a folder, described by a dataset file (as a user's own data)."""
    root = tmp_path_factory.mktemp("semfpn_data")
    specs = synthetic_splits(height=64, width=128, train_count=4, val_count=2, domains=("night", "fog"))
    ensure_splits(specs, root / "synthetic")
    splits = [{"name": f"semfpn_{s.folder}", "image_dir": f"synthetic/{s.folder}/images",
               "label_dir": f"synthetic/{s.folder}/labels"} for s in specs]
    (root / "synthetic.yaml").write_text(yaml.safe_dump({
        "classes": list(SYNTHETIC_CLASSES), "ignore_label": SYNTHETIC_IGNORE_LABEL, "label_format": "ids",
        "image_suffix": ".png", "label_suffix": "_labelTrainIds.png", "splits": splits}))
    save_file(create_timm_vfm("vit_small_patch14_dinov2", 16, 64, embed_dim=32, depth=4, num_heads=2).state_dict(),
              str(root / "vfm.safetensors"))
    return root


def train_net(cwd: Path, output_dir: str, *opts: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """train_net.py on the synthetic dataset file, as a user runs it; its console in `stdout`."""
    tiny = [v for pair in zip(TINY_SEMFPN[::2], TINY_SEMFPN[1::2]) if not pair[0].startswith("DATASETS.") for v in pair]
    data = ["DATASETS.FILES", "('synthetic.yaml',)", "DATASETS.TRAIN", "('semfpn_source_train',)",
            "DATASETS.TEST", "('semfpn_night_val', 'semfpn_fog_val')", "INPUT.MIN_SIZE_TEST", "0",
            "MODEL.VIT.WEIGHTS", "vfm.safetensors", "SOLVER.MAX_ITER", "2"]
    config_file = str(SEMFPN / "rein_dinov2_large_gta_512.yaml")
    command = [sys.executable, str(REPO / "train_net.py"), "--config-file", config_file, *flags, *tiny, *data,
               "OUTPUT_DIR", output_dir, *opts]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def scores(report: Path) -> dict:
    data = json.loads(report.read_text())
    return {name: entry["mIoU"] for name, entry in data["datasets"].items()} | {"mean": data["mean"]["mIoU"]}


def test_train_net_trains_then_evaluates_semfpn_on_every_domain(synthetic_files):
    console = train_net(synthetic_files, "run").stdout
    assert "SlidingSemanticSegmentor(" in console and "total_loss" in console
    assert "Semantic segmentation per domain" in console and "mean of 2" in console
    after_training = scores(synthetic_files / "run" / "inference" / "dg_results.json")
    assert set(after_training) == {"semfpn_night_val", "semfpn_fog_val", "mean"}
    assert all(0.0 <= v <= 100.0 for v in after_training.values())

    console = train_net(synthetic_files, "eval", "MODEL.WEIGHTS", "run/model_final.pth", flags=("--eval-only",)).stdout
    assert "other frozen backbone weights" not in console
    assert scores(synthetic_files / "eval" / "inference" / "dg_results.json") == after_training
