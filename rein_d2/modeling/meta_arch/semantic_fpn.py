"""Detectron2's SemanticSegmentor evaluated as rein-d2 evaluates: sliding window and TEST.AMP.

The SemFPN rows of the paper's Table 14 are Detectron2's own `SemanticSegmentor` with its
`SemSegFPNHead` (MODEL.SEM_SEG_HEAD.NAME) on the FPN backbone (backbone/fpn.py). Training is
Detectron2's, unchanged: the head's pixel-wise cross-entropy against the mapper's "sem_seg",
ignoring MODEL.SEM_SEG_HEAD.IGNORE_VALUE, times LOSS_WEIGHT. Only inference differs: it runs
under TEST.AMP's autocast, and with TEST.SLIDE the head's logits are averaged over the windows,
as MMSeg's slide inference averages a decode head's logits. Whole-image inference is
Detectron2's forward itself.
"""
from __future__ import annotations

import contextlib

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import Tensor

from ...utils.precision import inference_autocast_dtype
from .sliding_window import SlideWindow, slide_inference


@META_ARCH_REGISTRY.register()
class SlidingSemanticSegmentor(SemanticSegmentor):
    """SemanticSegmentor whose inference may slide a window (TEST.SLIDE) and run under autocast (TEST.AMP)."""

    @configurable
    def __init__(self, *, num_classes: int, slide_window: SlideWindow | None = None,
                 inference_dtype: torch.dtype | None = None, **kwargs) -> None:
        """num_classes: channels of the head's logits (MODEL.SEM_SEG_HEAD.NUM_CLASSES).
        slide_window: None for whole-image inference.
        inference_dtype: run inference under torch.autocast in this dtype; None for full precision.
        kwargs: SemanticSegmentor's (backbone, sem_seg_head, pixel_mean, pixel_std)."""
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.slide_window = slide_window
        self.inference_dtype = inference_dtype

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        slide = cfg.TEST.SLIDE
        return {
            **super().from_config(cfg),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "slide_window": SlideWindow.from_config(slide) if slide.ENABLED else None,
            "inference_dtype": inference_autocast_dtype(cfg),
        }

    def forward(self, batched_inputs: list[dict]) -> list[dict] | dict[str, Tensor]:
        """Training: SemanticSegmentor's losses. Inference: per input {"sem_seg": [K, height, width]}
        float32 logits at the input's "height"/"width" (default: the image's size)."""
        if self.training:
            return super().forward(batched_inputs)
        autocast = (contextlib.nullcontext() if self.inference_dtype is None
                    else torch.autocast(self.device.type, dtype=self.inference_dtype))
        with autocast:
            results = super().forward(batched_inputs) if self.slide_window is None else self._slide(batched_inputs)
        return [{"sem_seg": r["sem_seg"].float()} for r in results]

    def _slide(self, batched_inputs: list[dict]) -> list[dict]:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        logits = slide_inference(images, self._window_logits, self.slide_window, self.num_classes)
        return [{"sem_seg": sem_seg_postprocess(lg, lg.shape[-2:], x.get("height", lg.shape[-2]),
                                                x.get("width", lg.shape[-1]))}
                for lg, x in zip(logits, batched_inputs)]

    def _window_logits(self, crops: list[Tensor]) -> list[Tensor]:
        """Normalised crops -> the head's [K, h, w] logits of each, padded as SemanticSegmentor pads."""
        batch = ImageList.from_tensors(crops, self.backbone.size_divisibility,
                                       padding_constraints=self.backbone.padding_constraints)
        logits, _ = self.sem_seg_head(self.backbone(batch.tensor))
        return [lg[:, :h, :w] for lg, (h, w) in zip(logits, batch.image_sizes)]
