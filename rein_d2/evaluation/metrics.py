"""Confusion matrices and the MMSeg-style scores the DGSS papers report.

IoU of a class is NaN only when it is neither in the labels nor in the predictions
(MMSeg's convention, used by the official Rein numbers); mIoU and mAcc average the
classes that are not NaN. All scores are percentages.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                     ignore_label: int) -> np.ndarray:
    """[C, C] pixel counts, rows = label, columns = prediction; ignored pixels dropped.

    `gt` must hold only 0..C-1 and `ignore_label`, `pred` only 0..C-1.
    """
    valid = gt != ignore_label
    index = gt[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


@dataclass(frozen=True)
class SegScores:
    """Per-class IoU and accuracy plus their means and the overall pixel accuracy."""

    iou: np.ndarray
    acc: np.ndarray
    miou: float
    macc: float
    aacc: float

    @classmethod
    def from_confusion(cls, conf: np.ndarray) -> "SegScores":
        conf = conf.astype(np.float64)
        tp = np.diag(conf)
        labelled, predicted = conf.sum(axis=1), conf.sum(axis=0)
        union = labelled + predicted - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, 100 * tp / union, np.nan)
            acc = np.where(labelled > 0, 100 * tp / labelled, np.nan)
            aacc = float(100 * tp.sum() / labelled.sum()) if labelled.sum() else float("nan")
        return cls(iou, acc, _nanmean(iou), _nanmean(acc), aacc)

    def as_results(self, class_names: Sequence[str]) -> OrderedDict:
        """Detectron2-style flat dict: mIoU, mAcc, aAcc, IoU-<class>, Acc-<class>."""
        results = OrderedDict(mIoU=self.miou, mAcc=self.macc, aAcc=self.aacc)
        results.update((f"IoU-{name}", float(v)) for name, v in zip(class_names, self.iou))
        results.update((f"Acc-{name}", float(v)) for name, v in zip(class_names, self.acc))
        return results
