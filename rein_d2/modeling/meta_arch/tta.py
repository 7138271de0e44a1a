"""Test-time augmentation for semantic segmentation, as Mask2Former's SemanticSegmentorWithTTA.

Every test image is predicted at each short side of TEST.AUG.MIN_SIZES (the long side capped
at TEST.AUG.MAX_SIZE), and mirrored if TEST.AUG.FLIP; each prediction is the model's own
(its sliding window included) at the label's resolution, mirrored back, and the class scores
are averaged. The image the test mapper made (at the dataset's test scale) is resized
bilinearly, so the sizes are absolute, as Mask2Former's.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ...errors import ConfigError


def augmented_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Detectron2's ResizeShortestEdge target: short side `min_size`, long side at most `max_size`."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class SemanticSegmentorWithTTA(nn.Module):
    """Wraps a semantic segmentor: same inputs and outputs, scores averaged over the augmentations."""

    def __init__(self, model: nn.Module, min_sizes: Sequence[int], max_size: int, flip: bool) -> None:
        super().__init__()
        if not min_sizes:
            raise ConfigError("TEST.AUG.MIN_SIZES is empty: give at least one short-side size")
        # DDP's wrapper would synchronise a forward that only some processes run.
        self.model = model.module if isinstance(model, DistributedDataParallel) else model
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.flips = (False, True) if flip else (False,)

    @classmethod
    def from_config(cls, cfg: CfgNode, model: nn.Module) -> SemanticSegmentorWithTTA:
        aug = cfg.TEST.AUG
        return cls(model, aug.MIN_SIZES, aug.MAX_SIZE, aug.FLIP)

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        return [{"sem_seg": self._averaged_scores(record)} for record in batched_inputs]

    def _averaged_scores(self, record: dict) -> Tensor:
        image = record["image"]
        height, width = image.shape[-2:]
        total, count = None, 0
        for min_size in self.min_sizes:
            size = augmented_size(height, width, min_size, self.max_size)
            resized = image if size == (height, width) else F.interpolate(
                image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            for flip in self.flips:
                scores = self.model([{**record, "image": resized.flip(-1) if flip else resized}])[0]["sem_seg"]
                scores = scores.flip(-1) if flip else scores
                total = scores.float() if total is None else total + scores
                count += 1
        return total / count
