"""Mask2Former on the real ReinViT backbone (a tiny random timm DINOv2): Rein's queries drive the decoder."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from rein_d2 import add_rein_config


def tiny_reinvit_cfg(finetune="rein", link=True):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "MaskFormer"
    cfg.MODEL.BACKBONE.NAME = "ReinViT"
    vit = cfg.MODEL.VIT
    vit.TIMM_NAME, vit.PATCH_SIZE, vit.IMG_SIZE = "vit_small_patch14_dinov2", 16, 64
    vit.EMBED_DIM, vit.DEPTH, vit.NUM_HEADS, vit.OUT_INDICES = 32, 4, 2, [0, 1, 2, 3]
    vit.FINETUNE = finetune
    cfg.MODEL.REIN.NAME, cfg.MODEL.REIN.LORA_DIM, cfg.MODEL.REIN.TOKEN_LENGTH = "LoRAReins", 4, 6
    cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY = link
    head = cfg.MODEL.SEM_SEG_HEAD
    head.NAME, head.PIXEL_DECODER_NAME, head.NUM_CLASSES, head.IGNORE_VALUE = (
        "MaskFormerHead", "MSDeformAttnPixelDecoder", 3, 255)
    head.CONVS_DIM, head.MASK_DIM, head.NORM, head.COMMON_STRIDE = 64, 32, "GN", 4
    head.IN_FEATURES, head.TRANSFORMER_ENC_LAYERS = ["res2", "res3", "res4", "res5"], 1
    mf = cfg.MODEL.MASK_FORMER
    mf.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    mf.HIDDEN_DIM, mf.NUM_OBJECT_QUERIES, mf.NHEADS, mf.DIM_FEEDFORWARD, mf.DEC_LAYERS = 32, 6, 4, 64, 3
    mf.TRAIN_NUM_POINTS = 256
    cfg.TEST.SLIDE.ENABLED = True
    cfg.TEST.SLIDE.CROP_SIZE, cfg.TEST.SLIDE.STRIDE = [64, 64], [43, 43]
    return cfg


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    sem = torch.randint(0, 3, (64, 80), generator=g)
    return [{"image": torch.randint(0, 256, (3, 64, 80), generator=g, dtype=torch.uint8), "sem_seg": sem,
             "height": 64, "width": 80}]


def test_rein_trains_through_the_linked_queries_and_slides_at_inference():
    torch.manual_seed(0)
    model = build_model(tiny_reinvit_cfg())
    assert model.size_divisibility == 32
    model.train()
    losses = model(batch())
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is None for p in model.backbone.vit.parameters())  # frozen VFM
    reins = model.backbone.reins
    for param in (reins.transform.weight, reins.merge.weight, reins.learnable_tokens_a):  # the query path
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert model.sem_seg_head.predictor.querys2feat.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        sem_seg = model([{k: v for k, v in x.items() if k != "sem_seg"} for x in batch()])[0]["sem_seg"]
    assert sem_seg.shape == (3, 64, 80) and torch.isfinite(sem_seg).all()


def test_frozen_backbone_without_rein_needs_learned_queries():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="LINK_TOKEN_TO_QUERY False"):
        model = build_model(tiny_reinvit_cfg(finetune="freeze", link=True))
        model.eval()
        with torch.no_grad():
            model(batch())
    model = build_model(tiny_reinvit_cfg(finetune="freeze", link=False))
    model.train()
    assert all(torch.isfinite(v) for v in model(batch()).values())


@pytest.mark.parametrize("finetune, link", [("rein", True), ("rein", False), ("freeze", False), ("full", False)])
def test_every_trainable_parameter_of_the_whole_model_gets_a_gradient(finetune, link):
    """What DDP without find_unused_parameters needs of every fine-tune mode: one backward of the
    Mask2Former losses reaches every trainable tensor, backbone and head alike."""
    torch.manual_seed(0)
    model = build_model(tiny_reinvit_cfg(finetune=finetune, link=link)).train()
    sum(model(batch()).values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("backbone.") for n, _ in trainable) == (finetune != "freeze")
    assert [n for n, p in trainable if p.grad is None] == []
