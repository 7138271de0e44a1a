"""tools/benchmark.py end to end on a tiny config, and its measuring parts. No timing is asserted."""
import json
import sys
from pathlib import Path

import torch
from test_mask2former_reinvit import tiny_reinvit_cfg

from rein_d2.benchmark.deform_attn import gather_ms_deform_attn, official_ms_deform_attn, per_point_ms_deform_attn
from rein_d2.benchmark.flops import count_flops
from rein_d2.benchmark.memory import PeakMemory
from rein_d2.benchmark.official_rein import OfficialStyleRein
from rein_d2.benchmark.training import peak_memory_in_subprocesses
from rein_d2.modeling.pixel_decoder.ms_deform_attn import ms_deform_attn
from rein_d2.modeling.rein import LoRAReins

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import benchmark  # noqa: E402


def test_benchmark_runs_every_section_and_writes_json(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_reinvit_cfg().dump())
    output = tmp_path / "out" / "bench.json"
    benchmark.main(["--config-file", str(config), "--size", "64", "64", "--runs", "1", "--warmup", "0",
                    "--matmul-size", "64", "--device", "cpu", "--output", str(output),
                    "--opts", "MODEL.VIT.WEIGHTS", "", "TEST.SLIDE.BATCH_SIZE", "2"])
    result = json.loads(output.read_text())
    assert [p.name for p in output.parent.iterdir()] == ["bench.json"]  # written atomically, nothing left over
    assert result["environment"]["device"] == "cpu" and result["size"] == [64, 64]
    assert result["matmul"]["flops_per_second"] > 0
    backbone = result["backbone"]
    for key in ("freeze_seconds", "rein_seconds", "official_rein_seconds", "rein_explicit_attention_seconds",
                "rein_overhead_percent", "refinement_seconds", "refinement_speedup_vs_official",
                "rein_flops_per_second", "rein_fraction_of_matmul"):
        assert isinstance(backbone[key], float), key
    assert backbone["rein_flops"] > backbone["freeze_flops"] > 0
    assert "aten::scaled_dot_product_attention" not in backbone["uncounted_ops"]
    crop = result["crop"]
    assert crop["crop_size"] == [64, 64]
    for name in ("backbone", "pixel_decoder", "transformer_decoder", "post_processing", "whole"):
        assert crop["rein_d2"][name] > 0 and crop["official"][name] > 0 and crop["speedup_vs_official"][name] > 0
    assert crop["max_abs_diff_scores_vs_official"] < 1e-4  # the official head restated computes the same scores
    assert crop["deform_attn_compiled"]["pixel_decoder"] > 0
    assert result["inference"]["whole"]["flops"] > backbone["rein_flops"]
    slide = result["inference"]["slide"]
    assert slide["size"] == [64, 128] and slide["crops"] == 3
    assert slide["peak_memory_bytes"] > 0 and slide["peak_memory_bytes_all_queries_at_once"] > 0
    training = result["training"]
    assert training["rein"]["trainable_parameters"] < training["full"]["trainable_parameters"]
    assert training["freeze"]["trainable_parameters"] < training["rein"]["trainable_parameters"]
    for name in ("rein", "freeze", "full"):
        assert training[name]["peak_memory_bytes"] > 0 and training[name]["step_seconds"] > 0
        assert "VmHWM" in training[name]["memory_method"]
    assert training["rein_to_full_memory"] > 0 and training["full_to_rein_step_time"] > 0
    assert 0 < result["checkpoint"]["compact_bytes"] < result["checkpoint"]["full_bytes"]
    deform = result["deform_attn"]
    assert deform["levels"] == [[2, 2], [4, 4], [8, 8]] and deform["queries"] == 84
    assert deform["speedup_vs_gather"] > 0 and deform["speedup_vs_per_point"] > 0 and deform["speedup_vs_official"] > 0


def test_variants_switch_fine_tuning_and_the_query_link():
    cfg = tiny_reinvit_cfg()
    cfg.freeze()
    assert benchmark.variant(cfg, "rein").MODEL.REIN.LINK_TOKEN_TO_QUERY
    for name in ("freeze", "full"):
        assert benchmark.variant(cfg, name).MODEL.VIT.FINETUNE == name
        assert not benchmark.variant(cfg, name).MODEL.REIN.LINK_TOKEN_TO_QUERY


class SelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        qk = x + 1  # positions on queries and keys, as in Mask2Former
        return self.attn(qk, qk, x, need_weights=False)[0]


class InPlaceProduct(torch.nn.Module):
    def forward(self, acc, a, b):
        return acc.clone().addmm_(a, b)


def test_flop_count_includes_fused_attention_and_in_place_products():
    """fvcore knows neither scaled_dot_product_attention nor addmm_; rein_d2 counts both."""
    flops = count_flops(SelfAttention().eval(), (torch.randn(1, 5, 8),))
    projections = 4 * 5 * 8 * 8  # q, k, v and output, multiply-adds
    attention = 2 * 5 * 5 * 4 * 2  # q k^T and attn v, 2 heads of 4 channels
    assert flops["flops"] == 2 * (projections + attention)
    assert "aten::scaled_dot_product_attention" not in flops["uncounted_ops"]
    product = count_flops(InPlaceProduct(), (torch.zeros(3, 4), torch.randn(3, 6), torch.randn(6, 4)))
    assert product["flops"] == 2 * 3 * 6 * 4


def test_official_style_rein_matches_rein_d2():
    torch.manual_seed(0)
    rein = LoRAReins(num_layers=2, embed_dims=16, patch_size=16, query_dims=8, token_length=5, lora_dim=4)
    official = OfficialStyleRein(rein)
    feats = torch.randn(2, 1 + 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(official(feats, 1, num_prefix_tokens=1), rein(feats, 1, num_prefix_tokens=1))
        torch.testing.assert_close(official.queries(), rein.queries())


def test_references_equal_the_per_point_definition_and_the_fast_op():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 5), (3, 2), (1, 3)]
    value = torch.randn(2, 29, 2, 3, generator=g, dtype=torch.float64)
    locations = torch.rand(2, 3, 2, 3, 2, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(2, 3, 2, 3, 2, generator=g, dtype=torch.float64)
    gathered = gather_ms_deform_attn(value, shapes, locations, weights)
    torch.testing.assert_close(gathered, per_point_ms_deform_attn(value, shapes, locations, weights))
    torch.testing.assert_close(gathered, ms_deform_attn(value, shapes, locations, weights))
    torch.testing.assert_close(gathered, official_ms_deform_attn(value, shapes, locations, weights))


def test_peak_memory_sees_a_large_cpu_allocation():
    memory = PeakMemory(torch.device("cpu"))
    memory.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del block
    assert memory.peak_bytes() >= 60 * 2**20


def test_inference_peak_memory_follows_the_query_chunk(tmp_path):
    """64 queries' masks upsampled to 512x512 in float32 are 64 MiB at once, 1 MiB one query at a
    time. Measured here: 97 MiB against 75 MiB, whose peak is then elsewhere in the forward pass."""
    cfg = tiny_reinvit_cfg()
    cfg.MODEL.VIT.WEIGHTS, cfg.TEST.SLIDE.ENABLED = "", False
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = cfg.MODEL.REIN.TOKEN_LENGTH = 64
    peaks = peak_memory_in_subprocesses({"one": cfg, "all": cfg}, tmp_path, (512, 512), 1, {
        "one": ["--inference", "--queries-per-chunk", "1"], "all": ["--inference", "--queries-per-chunk", "64"]})
    assert peaks["one"]["queries_per_chunk"] == 1 and peaks["all"]["queries_per_chunk"] == 64
    assert peaks["all"]["peak_memory_bytes"] > 64 * 2**20
    assert peaks["all"]["peak_memory_bytes"] - peaks["one"]["peak_memory_bytes"] > 16 * 2**20
