"""The official Rein training recipe, sample for sample: what the model sees, its optimizer groups,
its learning rate at every iteration, its seed.

The reference sample is the official pipeline of configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py
(github.com/w1oves/Rein) written out here with the cv2 / numpy / torch calls MMCV 2.x and MMSeg 1.x
make (LoadImageFromFile, LoadAnnotations, RandomChoiceResize over ResizeShortestEdge and
Resize(keep_ratio=True), RandomCrop(cat_max_ratio=0.75), RandomFlip(prob=0.5),
PhotoMetricDistortion, PackSegInputs, SegDataPreProcessor), drawing from numpy's global
generator as they do. The learning rates are MMEngine's own schedulers (installed for the tests).
"""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from mmengine.optim import LinearLR, PolyLR
from PIL import Image
from test_configs import CONFIG_DIR, load, shrink
from test_convert_rein_checkpoint import official_name
from test_solver import settings_by_name
from torch import nn

from rein_d2.data.train_mapper import SemanticTrainMapper
from rein_d2.solver import build_lr_scheduler, build_optimizer

R512 = CONFIG_DIR / "dinov2/rein_dinov2_large_gta_512.yaml"
R1024 = CONFIG_DIR / "dinov2/rein_dinov2_large_citys2acdc_1024.yaml"
FREEZE = CONFIG_DIR / "baselines/freeze_dinov2_large_gta_512.yaml"
FULL = CONFIG_DIR / "baselines/full_dinov2_large_gta_512.yaml"
PAPER_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if "quickstart" not in p.parts)

# From the official configs: dataset / model files of configs/_base_ and the train_pipeline.
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
IGNORE = 255


def mmseg_training_sample(image_path, label_path, scales, max_size, crop, cat_max_ratio=0.75):
    """(normalised padded image [3, crop, crop], label [crop, crop], the random decisions) as the
    official pipeline makes them, written from the MMCV / MMSeg sources."""
    seen = {}
    # LoadImageFromFile: cv2 decode, BGR; LoadAnnotations: pillow, unchanged, uint8.
    img = cv2.imdecode(np.frombuffer(open(image_path, "rb").read(), np.uint8), cv2.IMREAD_COLOR)
    seg = np.array(Image.open(label_path)).squeeze().astype(np.uint8)
    # RandomChoiceResize._random_select, then ResizeShortestEdge._get_output_shape -> (w, h) ...
    short = scales[np.random.randint(len(scales))]
    h, w = img.shape[:2]
    size = short * 1.0
    s = size / min(h, w)
    new_h, new_w = (size, s * w) if h < w else (s * h, size)
    seen.update(capped=max(new_h, new_w) > max_size)
    if max(new_h, new_w) > max_size:
        s = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    scale = (int(new_w + 0.5), int(new_h + 0.5))
    # ... then Resize(keep_ratio=True): mmcv.imrescale -> rescale_size -> imresize (cv2).
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    new_size = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
    img = cv2.resize(img, new_size, interpolation=cv2.INTER_LINEAR)
    seg = cv2.resize(seg, new_size, interpolation=cv2.INTER_NEAREST)
    seen.update(shrunk=new_size[1] < h, enlarged=new_size[1] > h, padded=min(img.shape[:2]) < crop)

    # RandomCrop.crop_bbox
    def generate_crop_bbox():
        margin_h, margin_w = max(img.shape[0] - crop, 0), max(img.shape[1] - crop, 0)
        offset_h = np.random.randint(0, margin_h + 1)
        offset_w = np.random.randint(0, margin_w + 1)
        return offset_h, offset_h + crop, offset_w, offset_w + crop

    bbox, draws = generate_crop_bbox(), 1
    for _ in range(10):
        labels, cnt = np.unique(seg[bbox[0]:bbox[1], bbox[2]:bbox[3]], return_counts=True)
        cnt = cnt[labels != IGNORE]
        if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
            break
        bbox, draws = generate_crop_bbox(), draws + 1
    seen.update(crop_draws=draws)
    img, seg = img[bbox[0]:bbox[1], bbox[2]:bbox[3], ...], seg[bbox[0]:bbox[1], bbox[2]:bbox[3], ...]
    # RandomFlip._choose_direction
    direction = np.random.choice(["horizontal", None], p=[0.5, 0.5])
    if direction is not None:
        img, seg = np.flip(img, axis=1), np.flip(seg, axis=1)
    seen.update(flipped=direction is not None)

    # PhotoMetricDistortion on the BGR image
    def convert(x, alpha=1, beta=0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def contrast(x):
        if np.random.randint(2):
            seen["contrast"] = True
            return convert(x, alpha=np.random.uniform(0.5, 1.5))
        return x

    if np.random.randint(2):
        img = convert(img, beta=np.random.uniform(-32, 32))
        seen["brightness"] = True
    mode = np.random.randint(2)
    seen["contrast_first"] = mode == 1
    if mode == 1:
        img = contrast(img)
    if np.random.randint(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=np.random.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        seen["saturation"] = True
    if np.random.randint(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + np.random.randint(-18, 18)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        seen["hue"] = True
    if mode == 0:
        img = contrast(img)
    # PackSegInputs, then SegDataPreProcessor(bgr_to_rgb=True, size=crop, pad_val=0, seg_pad_val=255)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[[2, 1, 0], ...].float()
    x = (x - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)
    y = torch.from_numpy(seg[None, ...].astype(np.int64))
    padding = (0, max(crop - x.shape[-1], 0), 0, max(crop - x.shape[-2], 0))
    return F.pad(x, padding, value=0), F.pad(y, padding, value=IGNORE)[0], seen


def write_scene(directory, name, h, w, seed):
    """A street-like PNG pair as GTAV stores them: a noisy colour image (so that resize filters show)
    and a train-id label dominated by 'road' (so that crops get rejected), sky partly ignored."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], -1) + rng.integers(-40, 41, (h, w, 3))
    label = np.zeros((h, w), np.uint8)  # road
    label[: h // 6] = IGNORE
    for cls in rng.choice(np.arange(1, 19), 6, replace=False):
        y0, x0 = rng.integers(h // 6, h), rng.integers(0, w)
        label[y0:y0 + h // 4, x0:x0 + w // 6] = cls
    image_path, label_path = directory / f"{name}.png", directory / f"{name}_labelTrainIds.png"
    cv2.imwrite(str(image_path), np.clip(image, 0, 255).astype(np.uint8))
    cv2.imwrite(str(label_path), label)
    return {"file_name": str(image_path), "sem_seg_file_name": str(label_path), "height": h, "width": w}


def model_inputs(model, batch):
    """The normalised, padded image batch the backbone receives in a training step, and the labels."""
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    model.train()
    model(batch)
    hook.remove()
    return seen[0], torch.stack([x["sem_seg"] for x in batch])


def check_samples_equal_the_official(cfg, records, seeds):
    scales, crop = list(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.CROP.SIZE[0]
    mapper = SemanticTrainMapper(cfg)
    torch.manual_seed(0)
    model = build_model(shrink(cfg))
    batch, expected, seen = [], [], []
    for record in records:
        for seed in seeds:
            np.random.seed(seed)
            batch.append(mapper(dict(record)))
            np.random.seed(seed)
            *sample, decisions = mmseg_training_sample(record["file_name"], record["sem_seg_file_name"], scales,
                                                       cfg.INPUT.MAX_SIZE_TRAIN, crop)
            expected.append(sample)
            seen.append(decisions)
    images, labels = model_inputs(model, batch)
    assert images.shape == (len(batch), 3, crop, crop)
    for i, (image, label) in enumerate(expected):
        assert torch.equal(images[i], image), f"sample {i}: {(images[i] - image).abs().max()} off"
        assert torch.equal(labels[i], label), f"sample {i}"
    return seen


def test_training_samples_equal_the_official_pipeline_element_for_element(tmp_path):
    """Small scenes through the paper's pipeline scaled to 64 crops: every branch taken somewhere."""
    cfg = load(R512)
    cfg.INPUT.MIN_SIZE_TRAIN = [int(64 * x * 0.1) for x in range(5, 21)]  # as the official list, for 64
    cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.CROP.SIZE, cfg.INPUT.SIZE_DIVISIBILITY = 256, (64, 64), 64
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    # 80x170 capped at 256 is where the keep-ratio rescale and the shortest-edge target differ by a pixel
    records = [write_scene(tmp_path, "wide", 105, 191, seed=1), write_scene(tmp_path, "tall", 150, 90, seed=2),
               write_scene(tmp_path, "panorama", 80, 170, seed=4)]
    seen = check_samples_equal_the_official(cfg, records, seeds=range(14))
    for what in ("shrunk", "enlarged", "capped", "padded", "flipped", "contrast_first", "brightness", "contrast",
                 "saturation", "hue"):
        assert {bool(s.get(what)) for s in seen} == {True, False}, what
    draws = {s["crop_draws"] for s in seen}
    assert 1 in draws and 11 in draws and len(draws) > 2  # accepted at once, after retries, never


def test_a_gtav_frame_at_the_paper_settings_equals_the_official_sample(tmp_path):
    cfg = load(R512)
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    record = write_scene(tmp_path, "00001", 1052, 1914, seed=3)  # GTAV's frame size
    seen = check_samples_equal_the_official(cfg, [record], seeds=(0, 5, 7))
    assert {s["padded"] for s in seen} == {True, False}


# Official custom_keys (decay_mult 0) and norm_decay_mult=0 of each setting's optim_wrapper; no lr_mult.
OFFICIAL_NO_DECAY_KEYS = {
    R512: ("norm", "query_embed", "level_embed", "learnable_tokens", "reins.scale"),  # rein_dinov2_mask2former_512x512_bs1x4.py
    FREEZE: ("query_embed", "query_feat", "level_embed", "norm"),  # frozen_vfms/dinov2-L_mask2former.py
    FULL: ("norm", "query_embed", "level_embed", "learnable_tokens", "reins.scale"),  # dinov2_mask2former_512x512_bs1x4.py
}


def official_parameter_name(name):
    """The MMSeg name of one of our tensors: head and Rein as the checkpoint tests map them, the DINOv2
    backbone (official DinoVisionTransformer, the same names as timm's) directly under `backbone`."""
    return "backbone." + name[len("backbone.vit."):] if name.startswith("backbone.vit.") else official_name(name)


@pytest.mark.parametrize("path", list(OFFICIAL_NO_DECAY_KEYS), ids=["rein", "freeze", "full"])
def test_optimizer_groups_are_the_official_decay_split(path):
    cfg = shrink(load(path))
    torch.manual_seed(0)
    model = build_model(cfg)
    got = settings_by_name(model, build_optimizer(cfg, model))
    modules = dict(model.named_modules())
    expected = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = isinstance(modules[name.rsplit(".", 1)[0]], (nn.GroupNorm, nn.LayerNorm))
        custom = any(key in official_parameter_name(name) for key in OFFICIAL_NO_DECAY_KEYS[path])
        expected[name] = (1e-4, 0.0 if is_norm or custom else 0.05)
    assert got == expected
    decayed_embedding = "sem_seg_head.pixel_decoder.transformer.level_embed"  # MMDet's level_encoding
    assert got[decayed_embedding] == (1e-4, 0.05)
    assert got["sem_seg_head.predictor.level_embed.weight"] == (1e-4, 0.0)
    if path == FREEZE:
        assert got["sem_seg_head.predictor.query_feat.weight"] == (1e-4, 0.0)
    if path == FULL:
        assert got["sem_seg_head.predictor.query_feat.weight"] == (1e-4, 0.05)
        assert got["backbone.vit.pos_embed"] == got["backbone.vit.blocks.0.ls1.gamma"] == (1e-4, 0.05)
        assert got["backbone.vit.blocks.0.norm1.weight"] == (1e-4, 0.0)


def official_schedulers(path, optimizer):
    """The param_scheduler lists of the official 512 and 1024 configs."""
    if path == R512:
        return [PolyLR(optimizer, eta_min=0, power=0.9, begin=0, end=40000, by_epoch=False)]
    return [LinearLR(optimizer, start_factor=1e-6, by_epoch=False, begin=0, end=10000),
            PolyLR(optimizer, eta_min=0.0, power=0.9, begin=10000, end=40000, by_epoch=False)]


@pytest.mark.parametrize("path", [R512, R1024], ids=["512", "1024"])
def test_learning_rate_at_every_iteration_is_mmengines(path):
    cfg = load(path)
    ours = build_optimizer(cfg, nn.Linear(2, 2))
    scheduler = build_lr_scheduler(cfg, ours)
    theirs = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=cfg.SOLVER.BASE_LR)
    schedulers = official_schedulers(path, theirs)
    got, want = [], []
    for _ in range(cfg.SOLVER.MAX_ITER):
        got.append(ours.param_groups[0]["lr"])
        want.append(theirs.param_groups[0]["lr"])
        ours.step()
        scheduler.step()
        theirs.step()
        for s in schedulers:
            s.step()
    assert len(got) == 40000
    assert np.allclose(got, want, rtol=1e-9, atol=0)
    assert want[0] == pytest.approx(cfg.SOLVER.BASE_LR * (1e-6 if path == R1024 else 1.0))


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_paper_configs_seed_and_benchmark_as_the_official_runtime(path):
    cfg = load(path)
    assert (cfg.SEED, cfg.CUDNN_BENCHMARK) == (42, True)
