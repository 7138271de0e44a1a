"""Mask2Former's set loss: Hungarian matching, then class CE and point-sampled mask BCE + dice.

Mask losses are computed on points sampled where the prediction is most uncertain
(PointRend), never on full-resolution masks. Everything is computed in float32, also
under autocast. Losses are returned unweighted; `weight_dict` says how to weigh them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from detectron2.config import CfgNode, configurable
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import Tensor, nn
from torch.nn import functional as F

from .matcher import HungarianMatcher


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean BCE over points [n, P], summed over masks, divided by the batch's mask count."""
    return F.binary_cross_entropy_with_logits(inputs, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask dice loss (+1 smoothed) over points [n, P], summed, divided by the batch's mask count."""
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def calculate_uncertainty(logits: Tensor) -> Tensor:
    """Points whose logit is closest to 0 are the most uncertain."""
    return -logits.abs()


class SetCriterion(nn.Module):
    """Losses of the final prediction and, with deep supervision, of every earlier decoder layer."""

    @configurable
    def __init__(
        self,
        num_classes: int,
        *,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        # Class weights of the CE; the last one down-weights "no object". Persistent, as official
        # checkpoints carry it (criterion.empty_weight).
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    @classmethod
    def from_config(cls, cfg: CfgNode, num_classes: int) -> dict:
        mf = cfg.MODEL.MASK_FORMER
        final = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        weight_dict = dict(final)
        if mf.DEEP_SUPERVISION:
            weight_dict.update({f"{k}_{i}": w for i in range(mf.DEC_LAYERS - 1) for k, w in final.items()})
        return {
            "num_classes": num_classes,
            "matcher": HungarianMatcher(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.TRAIN_NUM_POINTS),
            "weight_dict": weight_dict,
            "eos_coef": mf.NO_OBJECT_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
            "deep_supervision": mf.DEEP_SUPERVISION,
        }

    def loss_labels(self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]]) -> dict:
        """CE over all queries: matched ones against their target's class, the others against "no object"."""
        logits = outputs["pred_logits"].float()
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx, query_idx = self._matched_queries(indices)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(logits.device)
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}

    def loss_masks(self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
                   num_masks: float) -> dict:
        """BCE and dice of matched masks, on points sampled around uncertain predictions.

        Target masks must cover the same (padded) extent as the predictions, as point
        coordinates are normalised.
        """
        pred_masks = outputs["pred_masks"]
        batch_idx, query_idx = self._matched_queries(indices)
        if len(query_idx) == 0:
            # Zero, yet connected to the masks so that every mask parameter gets a (zero) gradient;
            # one element in float32: a float16 sum of all of them can overflow to inf, and inf * 0 is NaN.
            zero = pred_masks[..., :1, :1].float().sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        src = pred_masks[batch_idx.to(pred_masks.device), query_idx.to(pred_masks.device)][:, None].float()
        tgt = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)])[:, None].to(src)
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src, calculate_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
            point_labels = point_sample(tgt, coords, align_corners=False)[:, 0]
        point_logits = point_sample(src, coords, align_corners=False)[:, 0]
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    @staticmethod
    def _matched_queries(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        return batch_idx, torch.cat([src for src, _ in indices])

    def _losses(self, outputs: dict, targets: list[dict], num_masks: float) -> dict:
        indices = self.matcher(outputs, targets)
        return {**self.loss_labels(outputs, targets, indices),
                **self.loss_masks(outputs, targets, indices, num_masks)}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """outputs: the decoder's dict; targets: per image "labels" [T] and "masks" [T, H, W]."""
        device = outputs["pred_logits"].device
        with torch.autocast(device_type=device.type, enabled=False):
            num_masks = self._average_num_masks(targets, device)
            losses = self._losses(outputs, targets, num_masks)
            if self.deep_supervision:
                for i, aux in enumerate(outputs.get("aux_outputs", [])):
                    losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_masks).items()})
        return losses

    @staticmethod
    def _average_num_masks(targets: list[dict], device: torch.device) -> float:
        """Target masks per GPU, averaged over all GPUs, at least 1: the normaliser of the mask losses."""
        num = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num)
        return torch.clamp(num / comm.get_world_size(), min=1).item()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, num_points={self.num_points}, "
                f"oversample_ratio={self.oversample_ratio}, importance_sample_ratio={self.importance_sample_ratio}, "
                f"deep_supervision={self.deep_supervision}")
