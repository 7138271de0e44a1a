"""MaskFormer end to end on a tiny conv backbone: training, overfitting, whole-image and sliding-window
inference, the Rein query link, and the errors for bad configs and inputs."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec, build_model
from detectron2.structures import Instances
from torch import nn

from rein_d2 import add_rein_config
from rein_d2.errors import ConfigError
from rein_d2.modeling.meta_arch import SlideWindow, padding_divisor, semantic_inference
from rein_d2.modeling.meta_arch.mask_former_model import upsampled_semantic_inference
from rein_d2.modeling.rein import REIN_QUERIES_KEY

NUM_CLASSES = 4


class TinyM2FTestBackbone(Backbone):
    """Strided convs to res2..res5 (strides 4..32); Rein-like learnable queries when linked."""

    def __init__(self, cfg, input_shape=None):
        super().__init__()
        widths = [3, 8, 16, 16, 24]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 4 if i == 0 else 2, 4 if i == 0 else 2), nn.ReLU())
            for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])))
        self.widths = widths[1:]
        self.queries = None
        if cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY:
            mf = cfg.MODEL.MASK_FORMER
            self.queries = nn.Parameter(torch.randn(mf.NUM_OBJECT_QUERIES, mf.HIDDEN_DIM))

    @property
    def size_divisibility(self):
        return 8

    def forward(self, x):
        features = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features[f"res{i + 2}"] = x
        if self.queries is not None:
            features[REIN_QUERIES_KEY] = self.queries
        return features

    def output_shape(self):
        return {f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2**i) for i, c in enumerate(self.widths)}


if "TinyM2FTestBackbone" not in BACKBONE_REGISTRY:
    BACKBONE_REGISTRY.register(TinyM2FTestBackbone)


def tiny_cfg(link=False, slide=False):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "MaskFormer"
    cfg.MODEL.BACKBONE.NAME = "TinyM2FTestBackbone"
    cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY = link
    head = cfg.MODEL.SEM_SEG_HEAD
    head.NAME = "MaskFormerHead"
    head.NUM_CLASSES = NUM_CLASSES
    head.IGNORE_VALUE = 255
    head.CONVS_DIM = 64  # GroupNorm(32) needs 2 channels per group on a 1x1 res5 map
    head.MASK_DIM = 32
    head.NORM = "GN"
    head.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    head.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    head.COMMON_STRIDE = 4
    head.TRANSFORMER_ENC_LAYERS = 1
    mf = cfg.MODEL.MASK_FORMER
    mf.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    mf.HIDDEN_DIM = 32
    mf.NUM_OBJECT_QUERIES = 6
    mf.NHEADS = 4
    mf.DIM_FEEDFORWARD = 64
    mf.DEC_LAYERS = 3
    mf.DROPOUT = 0.0
    mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT = 2.0, 5.0, 5.0
    mf.TRAIN_NUM_POINTS = 256
    cfg.TEST.SLIDE.ENABLED = slide
    cfg.TEST.SLIDE.CROP_SIZE = [32, 32]
    cfg.TEST.SLIDE.STRIDE = [21, 21]
    return cfg


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**kw))


def label_map(h, w, seed=0):
    """Blocky classes (learnable from a coarse feature map) with an ignored band."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, NUM_CLASSES, (h // 8 + 1, w // 8 + 1), generator=g)
    sem = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)[:h, :w].clone()
    sem[:2] = 255
    return sem


def image_for(sem, seed=0):
    """An image whose colour encodes the class, plus noise."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], dtype=torch.float32)
    img = palette[sem.clamp(max=NUM_CLASSES - 1)].permute(2, 0, 1) + torch.randn(3, *sem.shape, generator=g) * 10
    return img.clamp(0, 255).to(torch.uint8)


def test_end_to_end_training_and_inference_from_detectron2_dicts():
    model = tiny_model()
    sems = [label_map(40, 56, seed=0), label_map(32, 48, seed=1)]
    batch = [{"image": image_for(s), "sem_seg": s, "height": s.shape[0], "width": s.shape[1]} for s in sems]
    model.train()
    losses = model(batch)
    assert set(losses) == {f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.sem_seg_head.predictor.query_feat.weight.grad.abs().sum() > 0
    encoder_layer = model.sem_seg_head.pixel_decoder.transformer.encoder.layers[0]
    assert encoder_layer.self_attn.sampling_offsets.weight.grad.abs().sum() > 0

    model.eval()
    batch[1]["height"], batch[1]["width"] = 64, 96  # predictions are resized to the requested size
    with torch.no_grad():
        results = model([{k: v for k, v in x.items() if k != "sem_seg"} for x in batch])
    assert results[0]["sem_seg"].shape == (NUM_CLASSES, 40, 56)
    assert results[1]["sem_seg"].shape == (NUM_CLASSES, 64, 96)
    assert all(torch.isfinite(r["sem_seg"]).all() and r["sem_seg"].min() >= 0 for r in results)


def test_overfitting_one_image_lowers_the_loss():
    model = tiny_model(seed=1)
    model.train()
    sem = label_map(32, 32, seed=3)
    batch = [{"image": image_for(sem), "sem_seg": sem}]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5, history


def test_instances_give_the_same_targets_as_the_label_map():
    """The official semantic mapper's "instances" (one mask per present class) equal our conversion."""
    model = tiny_model()
    model.train()
    sem = label_map(40, 56)
    classes = torch.unique(sem[sem != 255])
    instances = Instances(tuple(sem.shape), gt_classes=classes, gt_masks=sem[None] == classes[:, None, None])
    torch.manual_seed(5)
    from_sem_seg = model([{"image": image_for(sem), "sem_seg": sem}])
    torch.manual_seed(5)
    from_instances = model([{"image": image_for(sem), "instances": instances}])
    for k, v in from_sem_seg.items():
        torch.testing.assert_close(from_instances[k], v)
    with pytest.raises(ValueError, match="'sem_seg'.*'instances'"):
        model([{"image": image_for(sem)}])


def test_all_ignored_labels_train_without_error():
    model = tiny_model()
    model.train()
    sem = torch.full((32, 32), 255)
    losses = model([{"image": image_for(label_map(32, 32)), "sem_seg": sem}])
    assert all(torch.isfinite(v) for v in losses.values())


def test_labels_outside_the_classes_are_reported():
    model = tiny_model()
    model.train()
    sem = label_map(32, 32)
    sem[5, 5] = NUM_CLASSES + 3
    with pytest.raises(ValueError, match=rf"\[{NUM_CLASSES + 3}\].*NUM_CLASSES"):
        model([{"image": image_for(sem), "sem_seg": sem}])


def test_training_losses_are_float32_under_autocast():
    model = tiny_model()
    model.train()
    sem = label_map(32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([{"image": image_for(sem), "sem_seg": sem}])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def predict(model, images, **kw):
    model.eval()
    with torch.no_grad():
        return [r["sem_seg"] for r in model([{"image": img, **kw} for img in images])]


def test_slide_equals_whole_image_when_one_crop_covers_it():
    whole, slide = tiny_model(slide=False), tiny_model(slide=True)
    slide.load_state_dict(whole.state_dict())
    img = image_for(label_map(32, 32))
    torch.testing.assert_close(predict(slide, [img])[0], predict(whole, [img])[0], rtol=1e-5, atol=1e-6)


def test_batched_crops_equal_crops_run_one_by_one():
    model = tiny_model(slide=True)
    images = [image_for(label_map(56, 80, seed=0)), image_for(label_map(40, 32, seed=1))]
    assert len(model.slide_window.boxes(56, 80)) == 3 * 4
    model.slide_window = SlideWindow((32, 32), (21, 21), batch_size=1)
    one_by_one = predict(model, images)
    model.slide_window = SlideWindow((32, 32), (21, 21), batch_size=64)
    batched = predict(model, images)
    for a, b in zip(batched, one_by_one):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_overlapping_windows_are_averaged():
    """Where windows overlap the prediction is their mean, so it differs from any single window's."""
    model = tiny_model(slide=True)
    img = image_for(label_map(32, 53))
    full = predict(model, [img])[0]
    left, right = predict(model, [img[:, :, :32], img[:, :, 21:]])
    torch.testing.assert_close(full[:, :, :21], left[:, :, :21], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full[:, :, 32:], right[:, :, 11:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full[:, :, 21:32], (left[:, :, 21:] + right[:, :, :11]) / 2, rtol=1e-5, atol=1e-6)


def test_crop_larger_than_the_image_is_padded():
    """A 20x27 image under a 64x64 crop: same as whole-image inference on the image padded to 64x64
    with the mean colour (zero after normalisation), not merely to the size divisibility (32)."""
    whole, slide = tiny_model(slide=False), tiny_model(slide=True)
    slide.load_state_dict(whole.state_dict())
    slide.slide_window = SlideWindow((64, 64), (43, 43))
    img = image_for(label_map(20, 27)).float()
    out = predict(slide, [img])[0]
    assert out.shape == (NUM_CLASSES, 20, 27)
    padded = whole.pixel_mean.expand(3, 64, 64).clone()
    padded[:, :20, :27] = img
    torch.testing.assert_close(out, predict(whole, [padded])[0][:, :20, :27], rtol=1e-5, atol=1e-6)


def test_window_grid_follows_mmsegmentation():
    window = SlideWindow((512, 512), (341, 341))
    assert window.boxes(512, 1024) == [(0, 512, 0, 512), (0, 512, 341, 853), (0, 512, 512, 1024)]
    boxes = SlideWindow((1024, 1024), (683, 683)).boxes(1080, 1920)
    assert len(boxes) == 2 * 3 and boxes[-1] == (56, 1080, 896, 1920)
    assert window.boxes(300, 400) == [(0, 300, 0, 400)]
    with pytest.raises(ValueError, match="STRIDE"):
        SlideWindow((32, 32), (40, 16))


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_upsampled_inference_equals_upsampling_every_mask_first(chunk):
    """Peak memory is one chunk of upsampled masks; the scores are those of the whole stack."""
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 7, 5), torch.randn(2, 7, 6, 10)
    whole = semantic_inference(logits, torch.nn.functional.interpolate(masks, size=(24, 40), mode="bilinear",
                                                                       align_corners=False))
    chunked = upsampled_semantic_inference(logits, masks, (24, 40), queries_per_chunk=chunk)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_padding_divisor_is_the_lcm_of_positive_values():
    assert padding_divisor(32, 16) == 32
    assert padding_divisor(32, 14) == 224
    assert padding_divisor(-1, 16) == 16
    assert padding_divisor(0, 0) == 1
    assert tiny_model().size_divisibility == 32


def test_rein_queries_are_query_positions_and_project_to_query_features():
    """Linked decoder == unlinked decoder whose query_embed is the queries and query_feat querys2feat(queries)."""
    linked, learned = tiny_model(link=True), tiny_model(link=False)
    predictor = linked.sem_seg_head.predictor
    assert hasattr(predictor, "querys2feat") and not hasattr(predictor, "query_feat")
    assert not hasattr(learned.sem_seg_head.predictor, "querys2feat")
    queries = linked.backbone.queries
    with torch.no_grad():
        state = {k: v for k, v in linked.state_dict().items() if "querys2feat" not in k and k != "backbone.queries"}
        state["sem_seg_head.predictor.query_embed.weight"] = queries.clone()
        state["sem_seg_head.predictor.query_feat.weight"] = predictor.querys2feat(queries)
    learned.load_state_dict(state, strict=True)
    img = image_for(label_map(32, 32))
    torch.testing.assert_close(predict(linked, [img])[0], predict(learned, [img])[0], rtol=1e-5, atol=1e-6)

    with torch.no_grad():
        queries.mul_(-1)
    assert not torch.allclose(predict(linked, [img])[0], predict(learned, [img])[0], atol=1e-4)


def test_rein_queries_receive_gradients():
    model = tiny_model(link=True)
    model.train()
    sem = label_map(32, 32)
    sum(model([{"image": image_for(sem), "sem_seg": sem}]).values()).backward()
    assert model.backbone.queries.grad.abs().sum() > 0
    assert model.sem_seg_head.predictor.querys2feat.weight.grad.abs().sum() > 0


def test_link_and_backbone_must_agree():
    model = tiny_model(link=True)
    model.backbone.queries = None
    with pytest.raises(ValueError, match="LINK_TOKEN_TO_QUERY False"):
        predict(model, [image_for(label_map(32, 32))])
    model = tiny_model(link=False)
    model.backbone.queries = nn.Parameter(torch.randn(6, 32))
    with pytest.raises(ValueError, match="LINK_TOKEN_TO_QUERY"):
        predict(model, [image_for(label_map(32, 32))])
    model = tiny_model(link=True)
    model.backbone.queries = nn.Parameter(torch.randn(5, 32))
    with pytest.raises(ValueError, match="TOKEN_LENGTH"):
        predict(model, [image_for(label_map(32, 32))])


def test_unknown_decoder_names_list_the_registered_ones():
    cfg = tiny_cfg()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "NoSuchDecoder"
    with pytest.raises(KeyError, match="NoSuchDecoder.*registered: MultiScaleMaskedTransformerDecoder"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    with pytest.raises(KeyError, match="BasePixelDecoder.*registered: MSDeformAttnPixelDecoder"):
        build_model(cfg)


def test_unsupported_options_are_reported():
    cfg = tiny_cfg()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    with pytest.raises(ValueError, match="multi_scale_pixel_decoder"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = True
    with pytest.raises(ConfigError, match="PANOPTIC_ON"):
        build_model(cfg)
    with pytest.raises(ValueError, match="C=3"):
        predict(tiny_model(), [torch.zeros(1, 32, 32, dtype=torch.uint8)])
