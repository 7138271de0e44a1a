"""Official Rein (MMSegmentation) checkpoints -> rein-d2: every key mapped, same outputs.

Releases are made as the official ones were: MMEngine's own objects and save function
(as its CheckpointHook saves), then MMSeg's tools/misc/publish_model.py step (drop the optimizer).
"""
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import mmengine
import pytest
import timm
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper, PolyLR
from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
from safetensors.torch import save_file

from rein_d2 import add_rein_config
from rein_d2.checkpoint.compact import CompactCheckpointer, IncompatibleCheckpointError
from rein_d2.checkpoint.official_rein import UnmappedKeysError, convert_official_rein
from rein_d2.data.classes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS
from rein_d2.modeling.backbone import create_timm_vfm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import convert_rein_checkpoint  # noqa: E402

CONFIG = str(REPO / "configs/dinov2/rein_dinov2_large_gta_512.yaml")
TINY = ["MODEL.VIT.TIMM_NAME", "vit_small_patch14_dinov2", "MODEL.VIT.EMBED_DIM", "32", "MODEL.VIT.DEPTH", "4",
        "MODEL.VIT.NUM_HEADS", "2", "MODEL.VIT.OUT_INDICES", "[0, 1, 2, 3]", "MODEL.VIT.IMG_SIZE", "64",
        "MODEL.REIN.TOKEN_LENGTH", "8", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
        "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
        "MODEL.MASK_FORMER.DEC_LAYERS", "4", "MODEL.MASK_FORMER.NHEADS", "2", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
        "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "2",
        "TEST.SLIDE.ENABLED", "False"]

# MMDetection's names, written from its Mask2FormerHead / MSDeformAttnPixelDecoder sources, keyed by ours.
DECODER_LAYER = {"transformer_self_attention_layers": {"self_attn": "self_attn.attn", "norm": "norms.1"},
                 "transformer_cross_attention_layers": {"multihead_attn": "cross_attn.attn", "norm": "norms.0"},
                 "transformer_ffn_layers": {"linear1": "ffn.layers.0.0", "linear2": "ffn.layers.1", "norm": "norms.2"}}
ENCODER_LAYER = {"self_attn": "self_attn", "linear1": "ffn.layers.0.0", "linear2": "ffn.layers.1",
                 "norm1": "norms.0", "norm2": "norms.1"}
PIXEL = {"input_proj": None, "transformer.level_embed": "level_encoding.weight", "adapter_1.norm": "lateral_convs.0.gn",
         "adapter_1": "lateral_convs.0.conv", "layer_1.norm": "output_convs.0.gn", "layer_1": "output_convs.0.conv",
         "mask_features": "mask_feature"}
PRED = {"decoder_norm": "transformer_decoder.post_norm", "class_embed": "cls_embed", "mask_embed.layers.0": "mask_embed.0",
        "mask_embed.layers.1": "mask_embed.2", "mask_embed.layers.2": "mask_embed.4"}


def official_name(key):
    if key.startswith("backbone.reins."):
        return key
    if key.startswith("sem_seg_head.pixel_decoder.transformer.encoder.layers."):
        index, module, rest = key.split(".")[5], key.split(".")[6], ".".join(key.split(".")[7:])
        return f"decode_head.pixel_decoder.encoder.layers.{index}.{ENCODER_LAYER[module]}.{rest}"
    if key.startswith("sem_seg_head.pixel_decoder.input_proj."):
        _, _, _, index, part, param = key.split(".")
        return f"decode_head.pixel_decoder.input_convs.{index}.{'conv' if part == '0' else 'gn'}.{param}"
    if key.startswith("sem_seg_head.pixel_decoder."):
        rest = key[len("sem_seg_head.pixel_decoder."):]
        for ours, theirs in PIXEL.items():
            if rest.startswith(ours):
                return "decode_head.pixel_decoder." + theirs + rest[len(ours):]
    rest = key[len("sem_seg_head.predictor."):]
    kind = rest.split(".")[0]
    if kind in DECODER_LAYER:
        index, module, tail = rest.split(".")[1], rest.split(".")[2], ".".join(rest.split(".")[3:])
        return f"decode_head.transformer_decoder.layers.{index}.{DECODER_LAYER[kind][module]}.{tail}"
    for ours, theirs in PRED.items():
        if rest.startswith(ours):
            return "decode_head." + theirs + rest[len(ours):]
    return "decode_head." + rest  # query_feat, query_embed, level_embed, querys2feat


def tiny_model(vfm, link=True):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + ["MODEL.VIT.WEIGHTS", str(vfm), "MODEL.DEVICE", "cpu",
                                "MODEL.REIN.LINK_TOKEN_TO_QUERY", str(link)])
    return build_model(cfg).eval()


@pytest.fixture()
def vfm(tmp_path):
    path = tmp_path / "vfm.safetensors"
    save_file(create_timm_vfm("vit_small_patch14_dinov2", 16, 64, embed_dim=32, depth=4, num_heads=2).state_dict(),
              str(path))
    return path


def release_of(model):
    """(our tensors, the same tensors as the official code saves them: Rein and head only)."""
    torch.manual_seed(5)
    ours = {k: torch.randn_like(v) for k, v in model.state_dict().items()
            if not k.startswith("backbone.vit.") and k != "criterion.empty_weight"}
    return ours, {official_name(k): v for k, v in ours.items()}


def official_release(model):
    return release_of(model)[1]


def test_conversion_maps_every_tensor_and_reproduces_the_outputs(tmp_path, vfm):
    reference = tiny_model(vfm)
    ours, release = release_of(reference)
    assert "decode_head.transformer_decoder.layers.0.cross_attn.attn.in_proj_weight" in release
    assert "decode_head.pixel_decoder.encoder.layers.1.ffn.layers.0.0.weight" in release
    converted_state = convert_official_rein(release)
    assert converted_state.keys() == ours.keys()
    assert all(torch.equal(converted_state[k], v) for k, v in ours.items())

    reference.load_state_dict(ours, strict=False)
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": release}, tmp_path / "official.pth")
    out = tmp_path / "converted.pth"
    convert_rein_checkpoint.main([str(tmp_path / "official.pth"), str(out), "--config-file", CONFIG, "--opts", *TINY])
    converted = tiny_model(vfm)
    CompactCheckpointer(converted).load(str(out))
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}]
    with torch.no_grad():
        assert torch.equal(converted(batch)[0]["sem_seg"], reference(batch)[0]["sem_seg"])


def test_every_official_key_has_a_rule_and_nothing_is_dropped(vfm):
    release = official_release(tiny_model(vfm))
    converted = convert_official_rein(release)
    assert len(converted) == len(release)
    release["decode_head.conv_seg.weight"] = torch.zeros(1)
    with pytest.raises(UnmappedKeysError, match="decode_head.conv_seg.weight"):
        convert_official_rein(release)


def test_frozen_dinov2_weights_in_a_checkpoint_go_to_the_vit(vfm):
    release = official_release(tiny_model(vfm))
    release.update({"backbone.blocks.0.norm1.weight": torch.ones(32), "backbone.mask_token": torch.zeros(1, 32)})
    converted = convert_official_rein(release)
    assert torch.equal(converted["backbone.vit.blocks.0.norm1.weight"], torch.ones(32))
    assert not any("mask_token" in k for k in converted)


def test_a_release_for_another_config_lists_what_does_not_fit(tmp_path, vfm):
    release = official_release(tiny_model(vfm))
    torch.save(release, tmp_path / "official.pth")
    wider = [*TINY, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7"]
    with pytest.raises(IncompatibleCheckpointError, match=r"cls_embed|class_embed.weight: checkpoint \(20, 32\)"):
        convert_rein_checkpoint.main([str(tmp_path / "official.pth"), str(tmp_path / "x.pth"), "--config-file",
                                      CONFIG, "--opts", *wider])
    assert not (tmp_path / "x.pth").exists()


def mmengine_release(state, path, tmp_path):
    """`state` (official names) written as MMEngine's CheckpointHook writes it, then published as MMSeg does."""
    hub = MessageHub.get_instance(f"release-{path.stem}")
    for it in range(3):
        hub.update_scalar("train/loss", 2.0 / (it + 1))
        hub.update_scalar("train/lr", 1e-4)
    hub.update_info("iter", 3)
    hub.update_info("dataset_meta", {"classes": CITYSCAPES_CLASSES, "palette": [list(c) for c in CITYSCAPES_COLORS]})
    trainable = [torch.nn.Parameter(v.clone()) for v in state.values()]
    optim_wrapper = OptimWrapper(torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05))
    optim_wrapper.update_params(sum(p.square().sum() for p in trainable))
    scheduler = PolyLR(optim_wrapper.optimizer, eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)
    state_dict = OrderedDict(state)
    state_dict._metadata = OrderedDict({"backbone": {"version": 1}})
    checkpoint = {
        "meta": {"epoch": 0, "iter": 3, "cfg": "model = dict(type='EncoderDecoder')", "seed": 0,
                 "experiment_name": path.stem, "time": time.strftime("%Y%m%d_%H%M%S"),
                 "mmengine_version": mmengine.__version__, "dataset_meta": {"classes": CITYSCAPES_CLASSES}},
        "state_dict": weights_to_cpu(state_dict),
        "message_hub": hub.state_dict(),
        "optimizer": optim_wrapper.state_dict(),
        "param_schedulers": [scheduler.state_dict()],
    }
    trained = tmp_path / f"iter_3_{path.stem}.pth"
    save_checkpoint(checkpoint, str(trained))
    published = torch.load(trained, map_location="cpu", weights_only=False)  # written just above by this test
    del published["optimizer"]
    torch.save(published, path)
    return path


def convert_cli(release, out, link):
    return subprocess.run([sys.executable, str(REPO / "tools/convert_rein_checkpoint.py"), str(release), str(out),
                           "--config-file", CONFIG, "--opts", *TINY, "MODEL.REIN.LINK_TOKEN_TO_QUERY", str(link)],
                          capture_output=True, text=True, timeout=600)


def outputs(model):
    torch.manual_seed(11)
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}]
    with torch.no_grad():
        return model(batch)[0]["sem_seg"]


def test_an_mmengine_release_converts_through_the_tool_and_reproduces_the_outputs(tmp_path, vfm):
    source = tiny_model(vfm)
    ours, official = release_of(source)
    source.load_state_dict(ours, strict=False)
    release = mmengine_release(official, tmp_path / "rein_dinov2_mask2former.pth", tmp_path)
    published = torch.load(release, weights_only=False)
    assert set(published) == {"meta", "state_dict", "message_hub", "param_schedulers"}
    assert type(published["message_hub"]["log_scalars"]["train/loss"]).__name__ == "HistoryBuffer"
    with pytest.raises(Exception, match="HistoryBuffer"):
        torch.load(release, weights_only=True)  # why the official releases could not be read before

    result = convert_cli(release, tmp_path / "converted.pth", link=True)
    assert result.returncode == 0, result.stderr
    assert "mmengine.logging.history_buffer.HistoryBuffer" in result.stdout + result.stderr  # what was kept inert
    converted = tiny_model(vfm)
    assert not torch.equal(outputs(converted), outputs(source))
    CompactCheckpointer(converted).load(str(tmp_path / "converted.pth"))
    assert torch.equal(outputs(converted), outputs(source))


def test_a_release_without_the_query_link_drops_its_unused_query_layers_with_a_note(tmp_path, vfm):
    source = tiny_model(vfm, link=False)
    ours, official = release_of(source)
    source.load_state_dict(ours, strict=False)
    query_layers = {k: torch.randn_like(v) for k, v in tiny_model(vfm).state_dict().items()
                    if k.startswith(("backbone.reins.transform.", "backbone.reins.merge."))}
    assert len(query_layers) == 4 and not query_layers.keys() & official.keys()
    release = mmengine_release({**official, **query_layers}, tmp_path / "rein_nolink.pth", tmp_path)

    result = convert_cli(release, tmp_path / "converted.pth", link=False)
    assert result.returncode == 0, result.stderr
    assert "note: left out 4 tensors (backbone.reins.merge.bias" in result.stdout
    assert "Rein's query layers" in result.stdout
    saved = torch.load(tmp_path / "converted.pth", weights_only=True)["model"]
    assert not any(k.startswith(("backbone.reins.transform.", "backbone.reins.merge.")) for k in saved)
    converted = tiny_model(vfm, link=False)
    CompactCheckpointer(converted).load(str(tmp_path / "converted.pth"))
    assert torch.equal(outputs(converted), outputs(source))


def test_a_release_with_the_frozen_dinov2_converts_without_its_final_norm(tmp_path, vfm):
    """Official DINOv2 keys of the frozen VFM go to backbone.vit; its final norm, which the
    backbone never runs (and rein-d2 prunes), is left out with a note."""
    source = tiny_model(vfm)
    _, official = release_of(source)
    frozen = {f"backbone.{k}": v for k, v in source.backbone.vit.state_dict().items()}
    frozen.update({"backbone.norm.weight": torch.ones(32), "backbone.norm.bias": torch.zeros(32),
                   "backbone.mask_token": torch.zeros(1, 32)})
    torch.save({"state_dict": {**official, **frozen}}, tmp_path / "with_backbone.pth")
    result = convert_cli(tmp_path / "with_backbone.pth", tmp_path / "converted.pth", link=True)
    assert result.returncode == 0, result.stderr
    assert "note: left out 2 tensors (backbone.vit.norm.bias, backbone.vit.norm.weight)" in result.stdout
    saved = torch.load(tmp_path / "converted.pth", weights_only=True)["model"]
    assert "backbone.vit.blocks.0.attn.qkv.weight" in saved and "backbone.vit.norm.weight" not in saved


CNN_CONFIG = str(REPO / "configs/cnns/rein_convnext_large_gta_512.yaml")
CNN_TINY = [o for pair in zip(TINY[::2], TINY[1::2]) if not pair[0].startswith("MODEL.VIT.") for o in pair] + [
    "MODEL.CNN.WEIGHTS", ""]


def tiny_cnn_model():
    """Table 8's ConvNeXt config at tiny width (timm's architecture arguments), seeded: the same
    frozen CNN every time."""
    real = timm.create_model
    torch.manual_seed(3)
    with mock.patch("timm.create_model", lambda *a, **k: real(*a, **k, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))):
        cfg = get_cfg()
        add_rein_config(cfg)
        cfg.merge_from_file(CNN_CONFIG)
        cfg.merge_from_list(CNN_TINY + ["MODEL.DEVICE", "cpu"])
        return build_model(cfg).eval()


def test_a_cnn_release_converts_and_reproduces_the_outputs(tmp_path):
    """The official ReinsConvNeXt releases hold `backbone.reins.<stage>.*` and the head."""
    reference = tiny_cnn_model()
    torch.manual_seed(5)
    ours = {k: torch.randn_like(v) for k, v in reference.state_dict().items()
            if k.startswith(("backbone.reins.", "sem_seg_head."))}
    release = {official_name(k): v for k, v in ours.items()}
    assert "backbone.reins.3.learnable_tokens_a" in release
    assert convert_official_rein(release).keys() == ours.keys()
    reference.load_state_dict(ours, strict=False)
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": release}, tmp_path / "official.pth")
    out = tmp_path / "converted.pth"
    real = timm.create_model
    with mock.patch("timm.create_model", lambda *a, **k: real(*a, **k, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))):
        convert_rein_checkpoint.main([str(tmp_path / "official.pth"), str(out), "--config-file", CNN_CONFIG,
                                      "--opts", *CNN_TINY])
    converted = tiny_cnn_model()
    CompactCheckpointer(converted).load(str(out))
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}]
    with torch.no_grad():
        assert torch.equal(converted(batch)[0]["sem_seg"], reference(batch)[0]["sem_seg"])
