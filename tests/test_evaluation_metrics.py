"""Confusion matrix and scores against hand-computed values, and the label checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rein_d2.data import LabelError
from rein_d2.evaluation import MultiDomainSemSegEvaluator, SegScores, confusion_matrix
from test_data_layouts import stripes, write_ids


def test_confusion_matrix_and_scores_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    conf = confusion_matrix(gt, pred, num_classes=3, ignore_label=255)
    # rows = label, columns = prediction; the 255 pixel is dropped
    assert conf.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    scores = SegScores.from_confusion(conf)
    # IoU = tp / (label + pred - tp): 1/(2+2-1), 3/(3+4-3), 1/(2+1-1)
    assert np.allclose(scores.iou, [100 / 3, 75, 50])
    assert math.isclose(scores.miou, (100 / 3 + 75 + 50) / 3)  # 52.78
    assert np.allclose(scores.acc, [50, 100, 50]) and math.isclose(scores.macc, 200 / 3)
    assert math.isclose(scores.aacc, 100 * 5 / 7)


def test_absent_classes_follow_the_official_convention():
    # class 2 only predicted (IoU 0, counted), class 3 nowhere (NaN, not counted)
    conf = np.array([[3, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    scores = SegScores.from_confusion(conf)
    assert scores.iou[2] == 0 and math.isnan(scores.iou[3]) and math.isnan(scores.acc[2])
    assert math.isclose(scores.miou, (75 + 100 + 0) / 3)
    assert math.isclose(scores.macc, (75 + 100) / 2)
    results = scores.as_results(["a", "b", "c", "d"])
    assert list(results)[:4] == ["mIoU", "mAcc", "aAcc", "IoU-a"] and math.isnan(results["IoU-d"])


def test_bincount_matches_an_independent_count():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 20, (50, 70))
    gt[gt == 19] = 255
    pred = rng.integers(0, 19, (50, 70))
    expected = np.zeros((19, 19), dtype=np.int64)
    keep = gt != 255
    np.add.at(expected, (gt[keep], pred[keep]), 1)
    assert np.array_equal(confusion_matrix(gt, pred, 19, 255), expected)


def one_hot(pred: np.ndarray, num_classes: int = 19) -> torch.Tensor:
    """[C, H, W] scores whose argmax is `pred`."""
    hot = torch.nn.functional.one_hot(torch.as_tensor(pred, dtype=torch.long), num_classes)
    return hot.permute(2, 0, 1).float()


def test_bad_label_values_and_sizes_are_named(tmp_path):
    evaluator = MultiDomainSemSegEvaluator(["dg_cityscapes_val"], distributed=False)
    bad = write_ids(tmp_path / "bad_gtFine_labelTrainIds.png", stripes((0, 19, 34)))
    with pytest.raises(LabelError, match=rf"{bad} contains value\(s\) 19, 34"):
        evaluator.process([{"file_name": "x.png", "sem_seg_file_name": str(bad)}],
                          [{"sem_seg": one_hot(np.zeros((32, 64)))}])
    good = write_ids(tmp_path / "good.png", stripes((0, 255)))
    with pytest.raises(ValueError, match=r"x\.png is 32x16 but its label .*good\.png is 64x32"):
        evaluator.process([{"file_name": "x.png", "sem_seg_file_name": str(good)}],
                          [{"sem_seg": one_hot(np.zeros((16, 32)))}])
    with pytest.raises(ValueError, match="'dg_acdc_fog_test' has no labels"):
        MultiDomainSemSegEvaluator(["dg_acdc_fog_test"], distributed=False).process(
            [{"file_name": "y.png", "dataset_name": "dg_acdc_fog_test"}],
            [{"sem_seg": one_hot(np.zeros((16, 32)))}])
