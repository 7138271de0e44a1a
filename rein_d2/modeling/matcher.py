"""Hungarian matching of predicted masks to ground-truth masks, on randomly sampled points.

Per image, the cost of pairing query q with target t is
    cost_class * (-p_q(label_t)) + cost_mask * BCE(mask_q, mask_t) + cost_dice * dice(mask_q, mask_t)
with both mask terms averaged over the same random points for every pair, and
scipy's linear_sum_assignment picks the cheapest one-to-one assignment.
"""
from __future__ import annotations

import torch
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError


def batch_sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of every prediction [Q, P] (logits) against every target [T, P]: [Q, T]."""
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / inputs.shape[1]


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss (+1 smoothed) of every prediction [Q, P] (logits) against every target [T, P]: [Q, T]."""
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to queries; unmatched queries learn "no object"."""

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0,
                 num_points: int = 12544) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ConfigError("HungarianMatcher: all costs are 0; set MODEL.MASK_FORMER.{CLASS,MASK,DICE}_WEIGHT")
        if num_points <= 0:
            raise ConfigError(f"HungarianMatcher: num_points={num_points} (MODEL.MASK_FORMER.TRAIN_NUM_POINTS) "
                             "must be positive")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, masks: Tensor, labels: Tensor, target_masks: Tensor,
                    point_coords: Tensor) -> Tensor:
        """[Q, T] matching cost of one image, in float32 whatever the autocast state.

        logits [Q, K+1], masks [Q, h, w] (logits), labels [T], target_masks [T, H, W],
        point_coords [P, 2] in [0, 1] shared by all pairs.
        """
        with torch.autocast(device_type=logits.device.type, enabled=False):
            coords = point_coords.float()
            out = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1),
                               align_corners=False)[:, 0]
            tgt = point_sample(target_masks[:, None].float(), coords.expand(target_masks.shape[0], -1, -1),
                               align_corners=False)[:, 0]
            cost = (self.cost_mask * batch_sigmoid_ce_cost(out, tgt)
                    - self.cost_class * logits.float().softmax(-1)[:, labels]
                    + self.cost_dice * batch_dice_cost(out, tgt))
        if not torch.isfinite(cost).all():
            raise FloatingPointError("HungarianMatcher: non-finite matching cost; the predictions contain NaN or "
                                     "inf (training diverged: lower SOLVER.BASE_LR or enable gradient clipping)")
        return cost

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """outputs: "pred_logits" [B, Q, K+1], "pred_masks" [B, Q, h, w]; targets: per image "labels" [T]
        and "masks" [T, H, W]. Returns per image (query indices, target indices), int64, on the CPU."""
        indices = []
        for logits, masks, target in zip(outputs["pred_logits"], outputs["pred_masks"], targets):
            if len(target["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            coords = torch.rand(self.num_points, 2, device=masks.device)
            cost = self.cost_matrix(logits, masks, target["labels"], target["masks"], coords)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
                f"num_points={self.num_points}")
