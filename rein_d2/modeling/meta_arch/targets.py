"""Training targets of the mask-classification loss: one binary mask per class present in an image."""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError


def semantic_targets(sem_seg: Tensor, num_classes: int, ignore_value: int,
                     padded_size: tuple[int, int]) -> dict[str, Tensor]:
    """A label map [H, W] -> {"labels" [T], "masks" [T, *padded_size] bool}, like the official semantic
    mapper: ignored pixels and the padding belong to no mask."""
    if sem_seg.dim() != 2:
        raise ValueError(f"'sem_seg' must be an [H, W] label map, got shape {tuple(sem_seg.shape)}")
    labels = torch.unique(sem_seg)
    labels = labels[labels != ignore_value]
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ConfigError(f"'sem_seg' holds labels {bad.tolist()} outside [0, {num_classes - 1}] and not the ignore "
                         f"value {ignore_value}: check the dataset's label ids against "
                         "MODEL.SEM_SEG_HEAD.NUM_CLASSES and MODEL.SEM_SEG_HEAD.IGNORE_VALUE")
    h, w = sem_seg.shape
    masks = torch.zeros((len(labels), *padded_size), dtype=torch.bool, device=sem_seg.device)
    masks[:, :h, :w] = sem_seg[None] == labels[:, None, None]
    return {"labels": labels.long(), "masks": masks}


def instance_targets(gt_classes: Tensor, gt_masks: Tensor, padded_size: tuple[int, int]) -> dict[str, Tensor]:
    """Detectron2 Instances fields (classes [T], masks [T, H, W]) -> targets padded to `padded_size`."""
    h, w = gt_masks.shape[-2:]
    masks = gt_masks.new_zeros((gt_masks.shape[0], *padded_size))
    masks[:, :h, :w] = gt_masks
    return {"labels": gt_classes.long(), "masks": masks}
