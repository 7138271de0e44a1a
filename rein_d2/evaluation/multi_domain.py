"""Glue for a trainer: evaluate one model on every test domain and report them together.

    class Trainer(DefaultTrainer):
        @classmethod
        def test(cls, cfg, model, evaluators=None):
            return evaluate_on_domains(cfg, model)
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence

from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from torch import nn
from torch.utils.data import DataLoader

from rein_d2.data.records import dataset_records
from rein_d2.modeling.meta_arch.tta import SemanticSegmentorWithTTA
from rein_d2.data.test_mapper import DGTestDatasetMapper

from .dg_evaluator import MultiDomainSemSegEvaluator

logger = logging.getLogger(__name__)


def build_dg_test_loader(cfg, dataset_names: str | Sequence[str]) -> DataLoader:
    """One loader over the datasets (any registered ones), each image resized by its own dataset's test rule."""
    return build_detection_test_loader(dataset_records(dataset_names), mapper=DGTestDatasetMapper(cfg),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)


def build_dg_evaluator(cfg, dataset_names: str | Sequence[str], output_dir: str | None = None,
                       mean_over: Sequence[str] | None = None) -> MultiDomainSemSegEvaluator:
    """The evaluator for these datasets, writing its report to OUTPUT_DIR/inference; the mean is
    over `mean_over`, else over those of TEST.MEAN_OVER that are evaluated, else over all."""
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    output_dir = output_dir or os.path.join(cfg.OUTPUT_DIR, "inference")
    if mean_over is None:
        mean_over = [name for name in cfg.TEST.MEAN_OVER if name in names] or None
    return MultiDomainSemSegEvaluator(names, mean_over=mean_over, output_dir=output_dir)


def evaluate_on_domains(cfg, model: nn.Module, dataset_names: Sequence[str] | None = None, *,
                        mean_over: Sequence[str] | None = None,
                        output_dir: str | None = None) -> OrderedDict:
    """Run `model` once over all test datasets (default cfg.DATASETS.TEST) and score each.

    Returns {dataset: {"sem_seg": {...}}, ..., "mean": {"sem_seg": {...}}} on the main
    process ({} on the others), and writes dg_results.{json,md,png}. With no dataset to
    evaluate it logs so and returns {}.
    """
    names = list(dataset_names or cfg.DATASETS.TEST)
    if not names:
        logger.info("no evaluation: DATASETS.TEST is empty")
        return OrderedDict()
    evaluator = build_dg_evaluator(cfg, names, output_dir, mean_over)
    return inference_on_dataset(model, build_dg_test_loader(cfg, names), evaluator)


def evaluate_with_tta(cfg, model: nn.Module) -> OrderedDict:
    """Mask2Former's test_with_TTA: every test domain scored with TEST.AUG's augmentations
    (SemanticSegmentorWithTTA), written under OUTPUT_DIR/inference_TTA, keys suffixed `_TTA`."""
    tta = SemanticSegmentorWithTTA.from_config(cfg, model)
    results = evaluate_on_domains(cfg, tta, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
    return OrderedDict((f"{name}_TTA", value) for name, value in results.items())
