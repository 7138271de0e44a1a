"""MaskFormer's inference with an onnxruntime session (tools/export_onnx.py's file) as its network.

Everything around the network is MaskFormer's own code (rein_d2.modeling.meta_arch): the
normalisation, the sliding window, the semantic inference and the resize to the input's size.
The exported network has a fixed crop size, so inference always runs the sliding window of
TEST.SLIDE (also under TEST.SLIDE.ENABLED False, where the eager model would run whole images).
The session runs in float32 on the CPU; TEST.AMP does not apply.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from torch import Tensor

from ..errors import ConfigError
from ..modeling.meta_arch.mask_former_model import normalize_image, scores_at_input_sizes, semantic_scores
from ..modeling.meta_arch.sliding_window import SlideWindow
from .onnx_export import (
    INPUT_NAME,
    META_CROP_SIZE,
    META_NUM_CLASSES,
    META_PIXEL_MEAN,
    META_PIXEL_STD,
    META_SIZE_DIVISIBILITY,
    OUTPUT_NAMES,
    network_input_size,
    onnx_dependencies,
)

logger = logging.getLogger(__name__)

EXPORT_HINT = "export it with tools/export_onnx.py --config-file CONFIG --output FILE --opts MODEL.WEIGHTS ..."


def open_session(path: str | Path, threads: int = 0):
    """A CPU onnxruntime session of `path`, or one message naming the file and what to do.

    threads: onnxruntime's intra-op threads, 0 for its default (one per physical core)."""
    _, onnxruntime = onnx_dependencies()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--onnx {path}: no such file (absolute: {path.resolve()}); {EXPORT_HINT}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # onnxruntime's errors derive from Exception directly, one class per status code.
    state = onnxruntime.capi.onnxruntime_pybind11_state
    load_errors = (state.Fail, state.InvalidArgument, state.InvalidProtobuf, state.InvalidGraph, state.NoSuchFile,
                   state.NotImplemented, state.RuntimeException)
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except load_errors as err:
        raise ConfigError(f"--onnx {path}: onnxruntime cannot load it as an ONNX model ({str(err).strip()}); "
                          f"{EXPORT_HINT}") from err


class OnnxSemanticSegmentor:
    """Detectron2 inference inputs -> [{"sem_seg": [K, height, width]}], as MaskFormer in eval mode."""

    def __init__(self, session, slide_window: SlideWindow, pixel_mean: list[float], pixel_std: list[float],
                 num_classes: int, size_divisibility: int) -> None:
        self.session = session
        self.slide_window = slide_window
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1)
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg: CfgNode, onnx_path: str | Path) -> OnnxSemanticSegmentor:
        """The session of `onnx_path`, refused unless it was exported for this config's crop size,
        classes and normalisation."""
        session = open_session(onnx_path)
        metadata = session.get_modelmeta().custom_metadata_map
        if META_CROP_SIZE not in metadata:
            raise ConfigError(f"--onnx {onnx_path} has no rein-d2 metadata ({META_CROP_SIZE}): it was not written by "
                              f"tools/export_onnx.py; {EXPORT_HINT}")
        slide = cfg.TEST.SLIDE
        exported = {"TEST.SLIDE.CROP_SIZE": json.loads(metadata[META_CROP_SIZE]),
                    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": int(metadata[META_NUM_CLASSES]),
                    "MODEL.PIXEL_MEAN": json.loads(metadata[META_PIXEL_MEAN]),
                    "MODEL.PIXEL_STD": json.loads(metadata[META_PIXEL_STD])}
        configured = {"TEST.SLIDE.CROP_SIZE": list(slide.CROP_SIZE),
                      "MODEL.SEM_SEG_HEAD.NUM_CLASSES": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                      "MODEL.PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN), "MODEL.PIXEL_STD": list(cfg.MODEL.PIXEL_STD)}
        for key, value in exported.items():
            if np.shape(value) != np.shape(configured[key]) or not np.allclose(value, configured[key]):
                raise ConfigError(f"--onnx {onnx_path} was exported with {key} {value}, but the config has "
                                  f"{configured[key]}: export it again with this config, or set {key} to {value}")
        size_divisibility = int(metadata[META_SIZE_DIVISIBILITY])
        expected_input = [3, *network_input_size(tuple(slide.CROP_SIZE), size_divisibility)]
        if list(session.get_inputs()[0].shape[1:]) != expected_input:
            raise ConfigError(f"--onnx {onnx_path} takes inputs {session.get_inputs()[0].shape}, not crops of "
                              f"[batch, {', '.join(map(str, expected_input))}] as its metadata says; {EXPORT_HINT}")
        if not slide.ENABLED:
            logger.warning("TEST.SLIDE.ENABLED is False, but the ONNX network takes crops of %s only: running the "
                           "sliding window of TEST.SLIDE", list(slide.CROP_SIZE))
        window = SlideWindow.from_config(slide)
        return cls(session, window, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, exported[
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES"], size_divisibility)

    def network(self, padded: Tensor) -> tuple[Tensor, Tensor]:
        """The session as MaskFormer's `CropNetwork`: class and mask logits of a batch of crops."""
        crops = np.ascontiguousarray(padded.detach().cpu().numpy(), dtype=np.float32)
        class_logits, mask_logits = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: crops})
        return torch.from_numpy(class_logits), torch.from_numpy(mask_logits)

    def __call__(self, batched_inputs: list[dict]) -> list[dict]:
        images = [normalize_image(x["image"], self.pixel_mean, self.pixel_std) for x in batched_inputs]
        scores = semantic_scores(images, self.network, self.num_classes, self.size_divisibility, self.slide_window)
        return scores_at_input_sizes(scores, batched_inputs)
