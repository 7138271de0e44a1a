"""Speed and memory of a rein-d2 config on this machine: what Rein costs and what it saves.

For one config (random weights are fine: timing does not depend on values) and input size,
on the current device, medians of --runs calls after --warmup calls, variants taking turns:

- matmul: the device's own fp32 matrix-multiply FLOP/s (a large torch.matmul), the yardstick;
- backbone: forward without Rein (Freeze), with rein-d2's Rein, with the official Rein
  forward restated on the same weights, and with Rein but explicit attention instead of
  scaled_dot_product_attention; Rein's overhead in time and in FLOPs, and the achieved FLOP/s
  against the matmul's; Rein alone (all layers on block-shaped tokens), rein-d2's and official;
- crop: one crop of TEST.SLIDE.CROP_SIZE through the whole model, split into backbone / pixel
  decoder / transformer decoder / post-processing, each and whole against the official computation
  restated on the same weights (official Rein forward with explicit attention, official
  Mask2Former head: rein_d2.benchmark.official_head) and the largest difference of their class
  scores; and the pixel decoder with its sampling compiled (MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE);
- inference: the whole model, whole image (--size) and sliding window (--slide-size), latency
  and throughput, FLOPs of the whole-image call;
- training: Rein, Freeze and Full (MODEL.VIT.FINETUNE switched, and MODEL.REIN.LINK_TOKEN_TO_QUERY
  off without Rein) with the trainer train_net uses: step time, peak memory, trainable parameters;
- checkpoint: a compact checkpoint (CompactCheckpointer.compact_state_dict) against the full
  state dict, serialised bytes;
- deform_attn: the pixel decoder's deformable attention at this size against three references:
  the official PyTorch core (grid_sample per level), a per-corner gather vectorised over points,
  and the per-point definition in Python loops
  (timed on a few queries and scaled to all of them, as running it whole would take hours).
- onnx: the network on --batch crops of TEST.SLIDE.CROP_SIZE (backbone with Rein, pixel decoder,
  transformer decoder: what tools/export_onnx.py exports), eager PyTorch against its ONNX export
  in onnxruntime, both on the CPU with the same thread count; the export's time, file size and
  max abs difference. Needs the onnx extra (pip install 'rein-d2[onnx]').

FLOPs are fvcore's counts (rein_d2.benchmark.flops), 2 per multiply-add; element-wise
operators are not counted. Peak memory covers everything training allocates (model,
gradients, optimizer state, activations): torch.cuda.max_memory_allocated on CUDA; on the
CPU, where torch keeps no allocator statistics and tracemalloc does not see torch's memory,
the peak resident set size of a fresh process per variant, reset when the work starts, minus
its resident size then, with glibc made to return freed memory at once so that the resident
set follows the live tensors (rein_d2.benchmark.memory). Those processes run side by side on the
CPU (memory does not depend on speed), one after the other on CUDA. Timings are sensitive to
other processes on the machine: run it on an otherwise idle one.

    python tools/benchmark.py --config-file configs/dinov2/rein_dinov2_base_gta_512.yaml \\
        --size 512 512 --output benchmark.json --opts MODEL.VIT.WEIGHTS ""
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage
from tabulate import tabulate
from torch import nn

from rein_d2.benchmark.deform_attn import gather_ms_deform_attn, official_ms_deform_attn, per_point_ms_deform_attn
from rein_d2.benchmark.flops import count_flops
from rein_d2.benchmark.official_head import (official_pixel_decoder, official_semantic_scores,
                                             official_transformer_decoder)
from rein_d2.benchmark.official_rein import OfficialStyleRein
from rein_d2.benchmark.timing import matmul_flops_per_second, median_seconds
from rein_d2.benchmark.training import build_training_step, parameter_counts, peak_memory_in_subprocesses
from rein_d2.checkpoint.compact import CompactCheckpointer
from rein_d2.config import load_config
from rein_d2.export.onnx_export import INPUT_NAME, export_crop_network, network_input_size, random_crops
from rein_d2.export.onnx_runtime import open_session
from rein_d2.modeling.meta_arch import SlideWindow
from rein_d2.modeling.meta_arch.mask_former_model import upsampled_semantic_inference
from rein_d2.modeling.rein import REIN_QUERIES_KEY
from rein_d2.modeling.pixel_decoder.ms_deform_attn import MSDeformAttn, compiled_taps, ms_deform_attn
from rein_d2.utils.atomic import atomic_output
from rein_d2.utils.cli import user_errors

SECTIONS = ("matmul", "backbone", "crop", "inference", "checkpoint", "training", "deform_attn", "onnx")
# The stages of one crop's inference, in order.
CROP_STAGES = ("backbone", "pixel_decoder", "transformer_decoder", "post_processing")
# Variants: (MODEL.VIT.FINETUNE, keep the config's LINK_TOKEN_TO_QUERY); without Rein there are no queries.
VARIANTS = {"rein": ("rein", True), "freeze": ("freeze", False), "full": ("full", False)}
# The deformable attention's levels: the pixel decoder's encoder inputs res5, res4, res3.
DEFORM_STRIDES = (32, 16, 8)
# The torch.compile backend the crop section tries on the deformable attention's sampling.
DEFORM_ATTN_BACKEND = "inductor"
# Queries the per-point Python reference is timed on before scaling to all of them.
PER_POINT_QUERIES = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="input size of the backbone, whole-image inference and training")
    parser.add_argument("--slide-size", type=int, nargs=2, metavar=("H", "W"),
                        help="image size of the sliding-window inference (default: H x 2W), crops from TEST.SLIDE")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--output", type=Path, help="JSON file to write (atomically)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides, last")
    return parser.parse_args(argv)


def benchmark_config(args: argparse.Namespace) -> CfgNode:
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    return cfg


def variant(cfg: CfgNode, name: str) -> CfgNode:
    """The same config in fine-tune mode `name`: everything else, weights included, stays equal."""
    finetune, keep_link = VARIANTS[name]
    out = cfg.clone()
    out.defrost()
    out.MODEL.VIT.FINETUNE = finetune
    out.MODEL.REIN.LINK_TOKEN_TO_QUERY = out.MODEL.REIN.LINK_TOKEN_TO_QUERY and keep_link
    out.freeze()
    return out


@contextlib.contextmanager
def refinement(backbone: nn.Module, module: nn.Module) -> Iterator[None]:
    """Run the backbone's hooks with another refinement module in place of its Rein."""
    original = backbone.reins
    backbone.reins = module
    try:
        yield
    finally:
        backbone.reins = original


@contextlib.contextmanager
def explicit_attention(backbone: nn.Module) -> Iterator[None]:
    """Run timm's attention as explicit q k^T, softmax, attn v instead of scaled_dot_product_attention."""
    attns = [block.attn for block in backbone.vit.blocks if getattr(block.attn, "fused_attn", False)]
    for attn in attns:
        attn.fused_attn = False
    try:
        yield
    finally:
        for attn in attns:
            attn.fused_attn = True


@contextlib.contextmanager
def deform_attn_compiled(decoder: nn.Module, backend: str) -> Iterator[None]:
    """Run the pixel decoder's deformable attention with its sampling compiled (MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE)."""
    attns = [m for m in decoder.modules() if isinstance(m, MSDeformAttn)]
    previous = [attn.compile_backend for attn in attns]
    for attn in attns:
        attn.compile_backend = backend
    try:
        yield
    finally:
        for attn, value in zip(attns, previous):
            attn.compile_backend = value


class FeatureMaps(nn.Module):
    """The backbone's feature maps only: Rein's cached queries depend on weights alone, so the
    tracer that counts FLOPs would refuse them as an output (and they cost nothing per image)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(x)
        return tuple(features[name] for name in self.backbone.output_shape())


def fraction(a: float, b: float) -> float:
    return a / b if b else math.nan


class Benchmark:
    def __init__(self, cfg: CfgNode, args: argparse.Namespace) -> None:
        self.cfg = cfg
        self.args = args
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.size = tuple(args.size)
        self.slide_size = tuple(args.slide_size) if args.slide_size else (self.size[0], 2 * self.size[1])
        self.results: dict[str, Any] = {}
        self._rein_model: nn.Module | None = None

    def rein_model(self) -> nn.Module:
        """The whole Rein model, built once for the inference and checkpoint sections."""
        if self._rein_model is None:
            self._rein_model = build_model(variant(self.cfg, "rein")).eval()
        return self._rein_model

    def time(self, fns: dict, runs: int | None = None) -> dict[str, float]:
        return median_seconds(fns, runs or self.args.runs, self.args.warmup, self.device)

    def images(self, size: tuple[int, int]) -> list[dict]:
        generator = torch.Generator().manual_seed(0)
        return [{"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)}
                for _ in range(self.args.batch)]

    def matmul(self) -> dict:
        return matmul_flops_per_second(self.device, self.args.matmul_size, self.args.runs, self.args.warmup)

    def backbone(self) -> dict:
        rein = build_backbone(variant(self.cfg, "rein")).to(self.device).eval()
        freeze = build_backbone(variant(self.cfg, "freeze")).to(self.device).eval()
        freeze.vit.load_state_dict(rein.vit.state_dict())
        official = OfficialStyleRein(rein.reins)
        x = torch.randn(self.args.batch, 3, *self.size, device=self.device)
        # Rein alone, every layer on tokens shaped like a block's output (prefix tokens first).
        grid = (self.size[0] // rein.patch_size) * (self.size[1] // rein.patch_size)
        tokens = torch.randn(self.args.batch, rein.num_prefix_tokens + grid, rein.embed_dim, device=self.device)

        def refine_all_layers(module: nn.Module) -> None:
            for layer in range(len(rein.vit.blocks)):
                module(tokens, layer, num_prefix_tokens=rein.num_prefix_tokens)

        def official_forward() -> None:
            with refinement(rein, official):
                rein(x)

        def explicit_attention_forward() -> None:
            with explicit_attention(rein):
                rein(x)

        with torch.no_grad():
            seconds = self.time({"freeze": lambda: freeze(x), "rein": lambda: rein(x), "official": official_forward,
                                 "explicit_attention": explicit_attention_forward,
                                 "refinement": lambda: refine_all_layers(rein.reins),
                                 "official_refinement": lambda: refine_all_layers(official)})
            flops = {"freeze": count_flops(FeatureMaps(freeze), (x,)), "rein": count_flops(FeatureMaps(rein), (x,))}
        out = {
            "freeze_seconds": seconds["freeze"],
            "rein_seconds": seconds["rein"],
            "official_rein_seconds": seconds["official"],
            "rein_overhead_percent": 100 * (fraction(seconds["rein"], seconds["freeze"]) - 1),
            "official_rein_overhead_percent": 100 * (fraction(seconds["official"], seconds["freeze"]) - 1),
            "rein_explicit_attention_seconds": seconds["explicit_attention"],
            "refinement_seconds": seconds["refinement"],
            "official_refinement_seconds": seconds["official_refinement"],
            "refinement_speedup_vs_official": fraction(seconds["official_refinement"], seconds["refinement"]),
            "freeze_flops": flops["freeze"]["flops"],
            "rein_flops": flops["rein"]["flops"],
            "rein_flops_overhead_percent": 100 * (fraction(flops["rein"]["flops"], flops["freeze"]["flops"]) - 1),
            "uncounted_ops": flops["rein"]["uncounted_ops"],
            "rein_flops_per_second": flops["rein"]["flops"] / seconds["rein"],
            "freeze_flops_per_second": flops["freeze"]["flops"] / seconds["freeze"],
        }
        if "matmul" in self.results:
            peak = self.results["matmul"]["flops_per_second"]
            out["rein_fraction_of_matmul"] = out["rein_flops_per_second"] / peak
            out["freeze_fraction_of_matmul"] = out["freeze_flops_per_second"] / peak
        return out

    def crop(self) -> dict:
        """One crop of TEST.SLIDE.CROP_SIZE (--batch of them), stage by stage and whole, rein-d2 against
        the official computation restated on the same weights: the official Rein forward with
        explicit attention (DINOv2's code without xformers) and the official Mask2Former head."""
        model = self.rein_model()
        backbone, head = model.backbone, model.sem_seg_head
        size = network_input_size(tuple(self.cfg.TEST.SLIDE.CROP_SIZE), model.size_divisibility)
        crops = random_crops(self.args.batch, size, seed=0).to(self.device)

        def compiled_pixel_decoder() -> Any:
            with deform_attn_compiled(head.pixel_decoder, DEFORM_ATTN_BACKEND):
                return head.pixel_decoder.forward_features(features)

        def official_backbone() -> dict:
            with refinement(backbone, OfficialStyleRein(backbone.reins)), explicit_attention(backbone):
                return backbone(crops)

        def rein_d2_whole() -> Any:
            return upsampled_semantic_inference(*model.crop_outputs(crops), size, model.queries_per_chunk)

        def official_whole() -> Any:
            features = official_backbone()
            mask_features, _, scales = official_pixel_decoder(head.pixel_decoder, features)
            logits = official_transformer_decoder(head.predictor, scales, mask_features, features.get(REIN_QUERIES_KEY))
            return official_semantic_scores(*logits, size)

        with torch.no_grad():
            features = backbone(crops)
            mask_features, _, scales = head.pixel_decoder.forward_features(features)
            outputs = head.predictor(scales, mask_features, features.get(REIN_QUERIES_KEY))
            logits = outputs["pred_logits"], outputs["pred_masks"]
            stages = {
                "backbone": lambda: backbone(crops),
                "pixel_decoder": lambda: head.pixel_decoder.forward_features(features),
                "transformer_decoder": lambda: head.predictor(scales, mask_features, features.get(REIN_QUERIES_KEY)),
                "post_processing": lambda: upsampled_semantic_inference(*logits, size, model.queries_per_chunk),
                "whole": rein_d2_whole,
                "pixel_decoder_compiled": compiled_pixel_decoder,
                "official_backbone": official_backbone,
                "official_pixel_decoder": lambda: official_pixel_decoder(head.pixel_decoder, features),
                "official_transformer_decoder": lambda: official_transformer_decoder(
                    head.predictor, scales, mask_features, features.get(REIN_QUERIES_KEY)),
                "official_post_processing": lambda: official_semantic_scores(*logits, size),
                "official_whole": official_whole,
            }
            seconds = self.time(stages)
            max_abs_diff = (rein_d2_whole() - official_whole()).abs().max().item()
        out = {"crop_size": list(size), "batch": self.args.batch,
               "rein_d2": {name: seconds[name] for name in (*CROP_STAGES, "whole")},
               "official": {name: seconds[f"official_{name}"] for name in (*CROP_STAGES, "whole")}}
        out["pixel_decoder_to_backbone"] = fraction(seconds["pixel_decoder"], seconds["backbone"])
        out["official_pixel_decoder_to_backbone"] = fraction(seconds["official_pixel_decoder"],
                                                             seconds["official_backbone"])
        out["speedup_vs_official"] = {name: fraction(seconds[f"official_{name}"], seconds[name])
                                      for name in (*CROP_STAGES, "whole")}
        out["max_abs_diff_scores_vs_official"] = max_abs_diff
        verdicts = compiled_taps(DEFORM_ATTN_BACKEND).verdicts
        out["deform_attn_compiled"] = {"backend": DEFORM_ATTN_BACKEND, "pixel_decoder": seconds["pixel_decoder_compiled"],
                                       "used": bool(verdicts) and all(verdicts.values()),
                                       "speedup_vs_eager": fraction(seconds["pixel_decoder"],
                                                                    seconds["pixel_decoder_compiled"])}
        return out

    def inference(self) -> dict:
        cfg = variant(self.cfg, "rein")
        model = self.rein_model()
        slide = cfg.TEST.SLIDE
        window = SlideWindow.from_config(slide)
        whole_inputs, slide_inputs = self.images(self.size), self.images(self.slide_size)

        def run(window_or_none: SlideWindow | None, inputs: list[dict]) -> None:
            model.slide_window = window_or_none
            model(inputs)

        with torch.no_grad():
            seconds = self.time({"whole": lambda: run(None, whole_inputs), "slide": lambda: run(window, slide_inputs)})
            model.slide_window = None
            flops = count_flops(model, (whole_inputs,))
        crops = len(window.boxes(*self.slide_size)) * self.args.batch
        queries = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
        with tempfile.TemporaryDirectory(prefix="rein-d2-benchmark-") as work_dir:
            memory = peak_memory_in_subprocesses(
                {"chunked": cfg, "all_queries": cfg}, Path(work_dir), self.slide_size, self.args.batch,
                {"chunked": ["--inference"], "all_queries": ["--inference", "--queries-per-chunk", str(queries)]})
        out = {
            "whole": {"size": list(self.size), "seconds": seconds["whole"],
                      "images_per_second": self.args.batch / seconds["whole"], "flops": flops["flops"],
                      "flops_per_second": flops["flops"] / seconds["whole"], "uncounted_ops": flops["uncounted_ops"]},
            "slide": {"size": list(self.slide_size), "crop_size": list(window.crop_size), "stride": list(window.stride),
                      "crops": crops, "seconds": seconds["slide"],
                      "images_per_second": self.args.batch / seconds["slide"],
                      "crops_per_second": crops / seconds["slide"],
                      "peak_memory_bytes": memory["chunked"]["peak_memory_bytes"],
                      "queries_per_chunk": memory["chunked"]["queries_per_chunk"],
                      "peak_memory_bytes_all_queries_at_once": memory["all_queries"]["peak_memory_bytes"],
                      "memory_method": memory["chunked"]["memory_method"]},
            "amp": cfg.TEST.AMP.PRECISION if cfg.TEST.AMP.ENABLED else None,
        }
        return out

    def checkpoint(self) -> dict:
        model = self.rein_model()

        def serialised_bytes(state: dict) -> int:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            return buffer.getbuffer().nbytes

        compact = serialised_bytes(CompactCheckpointer(model).compact_state_dict())
        full = serialised_bytes(model.state_dict())
        return {"compact_bytes": compact, "full_bytes": full, "compact_to_full": compact / full}

    def training(self) -> dict:
        self._rein_model = None  # the three training models need the memory
        cfgs = {name: variant(self.cfg, name) for name in VARIANTS}
        with tempfile.TemporaryDirectory(prefix="rein-d2-benchmark-") as work_dir:
            memory = peak_memory_in_subprocesses(cfgs, Path(work_dir), self.size, self.args.batch)
        counts = {}
        if self.device.type == "cuda":  # one variant on the device at a time
            seconds = {}
            for name, cfg in cfgs.items():
                model, step = build_training_step(cfg, self.size, self.args.batch)
                counts[name] = parameter_counts(model)
                with EventStorage():
                    seconds.update(self.time({name: step}))
                del model, step
                release_memory(self.device)
        else:  # variants take turns, so that a drifting load slows them alike
            steps = {}
            for name, cfg in cfgs.items():
                model, steps[name] = build_training_step(cfg, self.size, self.args.batch)
                counts[name] = parameter_counts(model)
            with EventStorage():
                seconds = self.time(steps)
        out = {name: {"step_seconds": seconds[name], "images_per_second": self.args.batch / seconds[name],
                      **memory[name], **counts[name]} for name in cfgs}
        out["rein_to_full_memory"] = fraction(memory["rein"]["peak_memory_bytes"], memory["full"]["peak_memory_bytes"])
        out["full_to_rein_step_time"] = fraction(seconds["full"], seconds["rein"])
        return out

    def deform_attn(self) -> dict:
        head = self.cfg.MODEL.SEM_SEG_HEAD
        heads = self.cfg.MODEL.MASK_FORMER.NHEADS
        points = head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS
        shapes = [(math.ceil(self.size[0] / s), math.ceil(self.size[1] / s)) for s in DEFORM_STRIDES]
        queries = sum(h * w for h, w in shapes)  # the encoder: every position is a query
        generator = torch.Generator().manual_seed(0)
        value = torch.randn(self.args.batch, queries, heads, head.CONVS_DIM // heads, generator=generator)
        locations = torch.rand(self.args.batch, queries, heads, len(shapes), points, 2, generator=generator)
        weights = torch.rand(self.args.batch, queries, heads, len(shapes), points, generator=generator).softmax(-1)
        value, locations, weights = (t.to(self.device) for t in (value, locations, weights))
        few = slice(0, PER_POINT_QUERIES)
        with torch.no_grad():
            seconds = self.time({"fast": lambda: ms_deform_attn(value, shapes, locations, weights),
                                 "official": lambda: official_ms_deform_attn(value, shapes, locations, weights),
                                 "gather": lambda: gather_ms_deform_attn(value, shapes, locations, weights)})
            per_point = self.time({"per_point": lambda: per_point_ms_deform_attn(
                value, shapes, locations[:, few], weights[:, few])}, runs=1)["per_point"]
        per_point_all = per_point * queries / min(PER_POINT_QUERIES, queries)
        return {"levels": [list(s) for s in shapes], "queries": queries, "heads": heads, "points": points,
                "fast_seconds": seconds["fast"], "official_seconds": seconds["official"],
                "gather_seconds": seconds["gather"], "speedup_vs_official": seconds["official"] / seconds["fast"],
                "per_point_seconds_scaled": per_point_all,
                "speedup_vs_gather": seconds["gather"] / seconds["fast"],
                "speedup_vs_per_point": per_point_all / seconds["fast"]}

    def onnx(self) -> dict:
        cfg = variant(self.cfg, "rein")
        cpu = torch.device("cpu")
        # A copy: the export switches gradients off, which would change the checkpoint section's frozen set.
        model = copy.deepcopy(self.rein_model()).to(cpu)
        crop_size = tuple(cfg.TEST.SLIDE.CROP_SIZE)
        with tempfile.TemporaryDirectory(prefix="rein-d2-benchmark-") as work_dir:
            report = export_crop_network(model, crop_size, Path(work_dir) / "model.onnx", cfg.MODEL.PIXEL_MEAN,
                                         cfg.MODEL.PIXEL_STD)
            session = open_session(report.path, threads=torch.get_num_threads())
            crops = random_crops(self.args.batch, report.input_size, seed=0)
            feed = {INPUT_NAME: crops.numpy()}
            with torch.no_grad():
                seconds = median_seconds({"eager": lambda: model.crop_outputs(crops),
                                          "onnxruntime": lambda: session.run(None, feed)},
                                         self.args.runs, self.args.warmup, cpu)
        return {"crop_size": list(crop_size), "input_size": list(report.input_size), "batch": self.args.batch,
                "eager_seconds": seconds["eager"], "onnxruntime_seconds": seconds["onnxruntime"],
                "onnxruntime_speedup_vs_eager": fraction(seconds["eager"], seconds["onnxruntime"]),
                "crops_per_second_eager": self.args.batch / seconds["eager"],
                "crops_per_second_onnxruntime": self.args.batch / seconds["onnxruntime"],
                "max_abs_diff": report.max_abs_diff, "export_seconds": report.export_seconds,
                "file_bytes": report.file_bytes}

    def run(self) -> dict:
        self.results = {"environment": environment(self.device), "config": self.args.config_file,
                        "opts": list(self.args.opts), "size": list(self.size), "batch": self.args.batch,
                        "runs": self.args.runs, "warmup": self.args.warmup}
        for section in SECTIONS:
            if section in self.args.only:
                print(f"[benchmark] {section} ...", flush=True)
                self.results[section] = getattr(self, section)()
                release_memory(self.device)
        self.results["environment"]["load_average_end"] = load_average()
        return self.results


def release_memory(device: torch.device) -> None:
    """Free what the previous variant or section left (its tensors and, on CUDA, the cached
    blocks), so that the next one is measured on its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average_start": load_average()}


def load_average() -> list[float] | None:
    """The system's 1, 5 and 15 minute load: above the thread count, other work shared the CPU."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def table(results: dict) -> str:
    """The JSON's numbers as rows: section, measure, value."""
    rows = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        elif isinstance(node, float):
            rows.append([prefix, f"{node:.4g}"])
        elif isinstance(node, (int, str)) and not isinstance(node, bool):
            rows.append([prefix, f"{node:,}" if isinstance(node, int) else node])

    for section in SECTIONS:
        if section in results:
            walk(section, results[section])
    return tabulate(rows, headers=["measure", "value"])


@user_errors
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = Benchmark(benchmark_config(args), args).run()
    print(table(results))
    if args.output:
        with atomic_output(args.output) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written {args.output}")
    return results


if __name__ == "__main__":
    main()
