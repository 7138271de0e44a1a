"""ONNX export of MaskFormer's network on one crop, checked against PyTorch in onnxruntime.

What is exported is `MaskFormer.crop_outputs`: a batch of normalised crops [B, 3, H, W] ->
the final class logits [B, Q, K+1] and mask logits [B, Q, H/4, W/4], with the VFM, Rein (its
weights-only tensors folded once, as in eager inference, and stored as constants), the pixel
decoder (pure-PyTorch deformable attention: GridSample) and the transformer decoder. The
logits, not per-pixel scores, leave the graph: the semantic inference after them (softmax x
sigmoid, upsampling a chunk of queries at a time, the average over overlapping windows) is
MaskFormer's own Python code around the session (rein_d2.export.onnx_runtime), so both
backends post-process alike, and the masks leave at a quarter of the crop's resolution (100
queries' masks at 1/16 of the pixels are 3x smaller than 19 classes' scores at full size).

The crop size is fixed (TEST.SLIDE.CROP_SIZE, padded as MaskFormer pads it), the batch
dimension dynamic. The exporter is torch.onnx's TorchScript one (see `export_onnx_file`).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, ReinD2Error
from ..utils.atomic import atomic_output

# GridSample entered the default domain in opset 16, LayerNormalization in 17.
OPSET = 17
INPUT_NAME = "crops"
OUTPUT_NAMES = ("class_logits", "mask_logits")
BATCH_AXIS = "batch"
# Largest difference between onnxruntime and eager PyTorch, fp32, accepted at export.
TOLERANCE = 1e-3
# Batch sizes checked at export: one, and more than one (the dynamic batch dimension).
CHECK_BATCHES = (1, 2)
# protobuf's limit on one file; larger models would need ONNX's external data files.
MAX_FILE_BYTES = 2**31 - 1
# Custom metadata of the exported file; the onnxruntime backend checks it against its config.
META_CROP_SIZE = "rein_d2.crop_size"
META_SIZE_DIVISIBILITY = "rein_d2.size_divisibility"
META_NUM_CLASSES = "rein_d2.num_classes"
META_PIXEL_MEAN = "rein_d2.pixel_mean"
META_PIXEL_STD = "rein_d2.pixel_std"


class OnnxMismatchError(ReinD2Error, RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


def onnx_dependencies() -> tuple:
    """(onnx, onnxruntime), or one message saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ConfigError(f"ONNX export and the onnxruntime backend need the packages onnx and onnxruntime "
                          f"({err}); install them with: pip install 'rein-d2[onnx]' (or pip install onnx "
                          "onnxruntime)") from err
    return onnx, onnxruntime


def network_input_size(crop_size: tuple[int, int], size_divisibility: int) -> tuple[int, int]:
    """The size the network sees for a crop: MaskFormer pads every batch to a multiple of its divisor."""
    divisor = max(size_divisibility, 1)
    return tuple(math.ceil(side / divisor) * divisor for side in crop_size)


class CropNetworkModule(nn.Module):
    """`model.crop_outputs` as a module with tensor outputs only, what torch.onnx exports."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.crop_outputs(crops)


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how closely onnxruntime reproduced PyTorch."""

    path: Path
    input_size: tuple[int, int]
    max_abs_diff: dict[str, float]  # per output, over the CHECK_BATCHES random batches
    export_seconds: float
    check_seconds: float
    file_bytes: int


def random_crops(batch: int, size: tuple[int, int], seed: int) -> Tensor:
    """Normalised crops, as the sliding window hands them to the network: about zero mean, unit spread."""
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def export_onnx_file(module: nn.Module, example: Tensor, path: Path) -> None:
    """torch.onnx's TorchScript exporter, batch dimension dynamic.

    It traces the eager forward with real tensors: Rein's cache of folded tensors (keyed by the
    parameters' data pointers and versions) is used as in eager inference and its tensors become
    constants, with no change to the model. The dynamo exporter (`dynamo=True`, torch.export)
    traces with fake tensors, which have no data pointer, so it fails on that cache key; with the
    key held fixed it exports a file that matches as well, but took 9x as long on the tiny model.
    """
    with warnings.catch_warnings():
        # Shapes turned into constants by the trace are the fixed crop size: intended.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: {0: BATCH_AXIS} for name in (INPUT_NAME, *OUTPUT_NAMES)})


def write_metadata(path: Path, metadata: dict[str, str]) -> None:
    onnx, _ = onnx_dependencies()
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def max_abs_differences(session, module: nn.Module, input_size: tuple[int, int]) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| per output, over random crop batches of CHECK_BATCHES sizes."""
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for seed, batch in enumerate(CHECK_BATCHES):
        crops = random_crops(batch, input_size, seed)
        with torch.no_grad():
            expected = module(crops)
        actual = session.run(list(OUTPUT_NAMES), {INPUT_NAME: crops.numpy()})
        for name, ref, got in zip(OUTPUT_NAMES, expected, actual):
            if got.shape != tuple(ref.shape):
                raise OnnxMismatchError(f"onnxruntime returned {name} of shape {got.shape} for a batch of {batch}, "
                                        f"PyTorch {tuple(ref.shape)}: the export did not keep the batch dynamic")
            worst[name] = max(worst[name], float(np.abs(got - ref.numpy()).max()))
    return worst


def export_crop_network(model: nn.Module, crop_size: tuple[int, int], path: str | Path,
                        pixel_mean: list[float], pixel_std: list[float], tolerance: float = TOLERANCE) -> ExportReport:
    """Export `model`'s (a MaskFormer in eval mode, on the CPU) network on crops of `crop_size` to
    `path`, check it in onnxruntime, and only then put the file in place (atomically).

    pixel_mean, pixel_std: the normalisation the crops had (MODEL.PIXEL_MEAN/STD), stored with the
    file so that the onnxruntime backend can refuse a config that normalises otherwise.
    """
    _, onnxruntime = onnx_dependencies()
    path = Path(path)
    if not callable(getattr(model, "crop_outputs", None)):
        raise ConfigError(f"ONNX export takes the MaskFormer meta-architecture (class and mask logits of a crop); "
                          f"this config builds {type(model).__name__}: set MODEL.META_ARCHITECTURE MaskFormer")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if weight_bytes > MAX_FILE_BYTES:
        raise ConfigError(f"the model's weights are {weight_bytes / 2**30:.1f} GiB, over the 2 GiB that one ONNX file "
                          "can hold (protobuf's limit); exporting such models (e.g. ViT-G) is not supported")
    model.eval().requires_grad_(False)  # inference paths: Rein folded, no recomputation
    module = CropNetworkModule(model).eval()
    input_size = network_input_size(tuple(crop_size), model.size_divisibility)
    metadata = {META_CROP_SIZE: json.dumps(list(crop_size)),
                META_SIZE_DIVISIBILITY: str(model.size_divisibility),
                META_NUM_CLASSES: str(model.sem_seg_head.num_classes),
                META_PIXEL_MEAN: json.dumps(list(pixel_mean)), META_PIXEL_STD: json.dumps(list(pixel_std))}
    with atomic_output(path) as tmp:
        start = time.perf_counter()
        example = random_crops(max(CHECK_BATCHES), input_size, seed=0)
        with torch.no_grad():
            module(example)  # Rein folds its weights-only tensors now, so the trace sees them as constants
            export_onnx_file(module, example, tmp)
        write_metadata(tmp, metadata)
        export_seconds = time.perf_counter() - start
        start = time.perf_counter()
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        differences = max_abs_differences(session, module, input_size)
        check_seconds = time.perf_counter() - start
        del session
        if max(differences.values()) > tolerance:
            found = ", ".join(f"{name} {value:.3g}" for name, value in differences.items())
            raise OnnxMismatchError(f"the ONNX export of the network differs from PyTorch in onnxruntime by more than "
                                    f"{tolerance:g} (max abs difference: {found}); {path} was not written. Report "
                                    "this with the config: an operator is exported with other numerics")
        file_bytes = tmp.stat().st_size
    return ExportReport(path, input_size, differences, export_seconds, check_seconds, file_bytes)
