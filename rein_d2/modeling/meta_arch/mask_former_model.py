"""MaskFormer meta-architecture (Mask2Former), semantic segmentation.

Same config keys and module names as the official `MaskFormer` (`backbone`,
`sem_seg_head`, `criterion`), so official checkpoints load. Trains from Detectron2-style
dicts with "image" and "sem_seg" (or "instances"); predicts "sem_seg" [K, height, width]
by whole-image or sliding-window inference.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import ConfigError
from ...utils.precision import inference_autocast_dtype
from ..criterion import SetCriterion
from .sliding_window import SlideWindow, slide_inference
from .targets import instance_targets, semantic_targets


def padding_divisor(*divisors: int) -> int:
    """Least common multiple of the positive divisors (1 if none): pads for backbone and config alike."""
    return math.lcm(*(d for d in divisors if d > 0))


# Queries whose masks are upsampled at a time at inference: 4 crops of 1024^2 keep about
# 0.7 GB of float32 masks alive instead of 3.4 GB (x2 with their sigmoid) for 100 queries.
QUERIES_PER_CHUNK = 20


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor) -> Tensor:
    """[B, Q, K+1] class logits and [B, Q, H, W] mask logits -> [B, K, H, W] class scores:
    each query's class probabilities (without "no object") weighted by its mask probability."""
    return torch.einsum("bqc,bqhw->bchw", mask_cls.softmax(-1)[..., :-1], mask_pred.sigmoid())


def upsampled_semantic_inference(mask_cls: Tensor, mask_pred: Tensor, size: tuple[int, int],
                                 queries_per_chunk: int = QUERIES_PER_CHUNK) -> Tensor:
    """`semantic_inference` of the mask logits bilinearly upsampled to `size`, in float32.

    The sum over queries is taken a chunk of queries at a time, so that peak memory is the
    [B, K, H, W] class map plus one chunk of upsampled masks, not all Q of them.
    """
    class_probs = mask_cls.softmax(-1)[..., :-1]
    total = None
    for start in range(0, mask_pred.shape[1], queries_per_chunk):
        stop = start + queries_per_chunk
        masks = F.interpolate(mask_pred[:, start:stop], size=size, mode="bilinear", align_corners=False)
        part = torch.einsum("bqc,bqhw->bchw", class_probs[:, start:stop], masks.sigmoid_()).float()
        total = part if total is None else total.add_(part)
    return total


# The network of one padded batch [B, C, H, W] -> (class logits [B, Q, K+1], mask logits [B, Q, h, w]):
# MaskFormer's backbone and head, or an onnxruntime session of their export (rein_d2.export).
CropNetwork = Callable[[Tensor], tuple[Tensor, Tensor]]


def normalize_image(image: Tensor, pixel_mean: Tensor, pixel_std: Tensor) -> Tensor:
    """An input dict's [C, H, W] "image" in the network's input space, on the device of `pixel_mean`."""
    if image.dim() != 3 or image.shape[0] != pixel_mean.shape[0]:
        raise ValueError(f"'image' must be [C, H, W] with C={pixel_mean.shape[0]} channels "
                         f"(MODEL.PIXEL_MEAN), got shape {tuple(image.shape)}")
    return (image.to(pixel_mean.device) - pixel_mean) / pixel_std


def semantic_scores(images: list[Tensor], network: CropNetwork, num_classes: int, size_divisibility: int,
                    slide_window: SlideWindow | None, queries_per_chunk: int = QUERIES_PER_CHUNK) -> list[Tensor]:
    """Per normalised image [K, H, W] class scores: `network` on the padded whole images, or on the
    sliding window's crops, each batch's masks upsampled to its padded size and cropped back."""

    def padded_batch_scores(batch: list[Tensor]) -> list[Tensor]:
        image_list = ImageList.from_tensors(batch, size_divisibility)
        mask_cls, mask_pred = network(image_list.tensor)
        probs = upsampled_semantic_inference(mask_cls, mask_pred, tuple(image_list.tensor.shape[-2:]),
                                             queries_per_chunk)
        return [p[:, :h, :w] for p, (h, w) in zip(probs, image_list.image_sizes)]

    if slide_window is None:
        return padded_batch_scores(images)
    return slide_inference(images, padded_batch_scores, slide_window, num_classes)


def scores_at_input_sizes(scores: list[Tensor], batched_inputs: list[dict]) -> list[dict]:
    """{"sem_seg": [K, height, width]} per input: resized to its "height"/"width" (default: as is)."""
    results = []
    for p, x in zip(scores, batched_inputs):
        height, width = x.get("height", p.shape[-2]), x.get("width", p.shape[-1])
        results.append({"sem_seg": sem_seg_postprocess(p, p.shape[-2:], height, width)})
    return results


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Backbone -> MaskFormerHead; Hungarian set loss in training, per-pixel class scores at test time."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: SetCriterion,
        num_queries: int,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        slide_window: SlideWindow | None = None,
        inference_dtype: torch.dtype | None = None,
        queries_per_chunk: int = QUERIES_PER_CHUNK,
    ) -> None:
        """size_divisibility: inputs are zero-padded (after normalisation) to a multiple of it.
        slide_window: None for whole-image inference.
        inference_dtype: run inference under torch.autocast in this dtype; None for full precision.
        queries_per_chunk: queries whose masks are upsampled at a time at inference (memory only)."""
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ConfigError(f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} "
                             "differ in length")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.size_divisibility = size_divisibility
        self.slide_window = slide_window
        self.inference_dtype = inference_dtype
        self.queries_per_chunk = queries_per_chunk
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        mf = cfg.MODEL.MASK_FORMER
        switches = {k: mf.TEST[k] for k in ("SEMANTIC_ON", "INSTANCE_ON", "PANOPTIC_ON",
                                             "SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE")}
        if switches != {"SEMANTIC_ON": True, "INSTANCE_ON": False, "PANOPTIC_ON": False,
                        "SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False}:
            raise ConfigError(
                f"rein-d2's MaskFormer does semantic segmentation only, got MODEL.MASK_FORMER.TEST {switches}: set "
                "SEMANTIC_ON True and INSTANCE_ON, PANOPTIC_ON, SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE False")
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        slide = cfg.TEST.SLIDE
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": SetCriterion(cfg, sem_seg_head.num_classes),
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "size_divisibility": padding_divisor(mf.SIZE_DIVISIBILITY, backbone.size_divisibility),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "slide_window": SlideWindow.from_config(slide) if slide.ENABLED else None,
            "inference_dtype": inference_autocast_dtype(cfg),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict]) -> list[dict] | dict[str, Tensor]:
        """Training: weighted losses. Inference: per input {"sem_seg": [K, height, width]} class scores,
        at the input's "height"/"width" (default: the image's size)."""
        images = [self._normalize(x["image"]) for x in batched_inputs]
        if self.training:
            return self._losses(images, batched_inputs)
        with self._inference_autocast():
            probs = semantic_scores(images, self.crop_outputs, self.sem_seg_head.num_classes,
                                    self.size_divisibility, self.slide_window, self.queries_per_chunk)
        return scores_at_input_sizes(probs, batched_inputs)

    def _inference_autocast(self) -> contextlib.AbstractContextManager:
        if self.inference_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.inference_dtype)

    def _normalize(self, image: Tensor) -> Tensor:
        return normalize_image(image, self.pixel_mean, self.pixel_std)

    def crop_outputs(self, padded: Tensor) -> tuple[Tensor, Tensor]:
        """Final class and mask logits of a padded batch: the network of inference (a `CropNetwork`),
        what tools/export_onnx.py exports."""
        outputs = self.sem_seg_head(self.backbone(padded))
        return outputs["pred_logits"], outputs["pred_masks"]

    def _losses(self, images: list[Tensor], batched_inputs: list[dict]) -> dict[str, Tensor]:
        image_list = ImageList.from_tensors(images, self.size_divisibility)
        outputs = self.sem_seg_head(self.backbone(image_list.tensor))
        padded_size = tuple(image_list.tensor.shape[-2:])
        targets = [self._targets(x, padded_size) for x in batched_inputs]
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        return {k: v * weights[k] for k, v in losses.items() if k in weights}

    def _targets(self, x: dict, padded_size: tuple[int, int]) -> dict[str, Tensor]:
        """Per-image targets from "instances" (gt_classes, gt_masks) if given, else from "sem_seg"."""
        if "instances" in x:
            instances = x["instances"].to(self.device)
            masks = getattr(instances.gt_masks, "tensor", instances.gt_masks)
            return instance_targets(instances.gt_classes, masks, padded_size)
        if "sem_seg" in x:
            return semantic_targets(x["sem_seg"].to(self.device), self.sem_seg_head.num_classes,
                                    self.sem_seg_head.ignore_value, padded_size)
        raise ValueError("MaskFormer training needs 'sem_seg' (an [H, W] label map) or 'instances' in every "
                         f"input dict; got keys {sorted(x)}")
