"""The rein-d2 trainer: Detectron2's DefaultTrainer with the official Rein recipe.

What differs from DefaultTrainer: a check that the model and its datasets agree on the
classes, the PEFT optimiser groups and warmup-then-poly schedule, the semantic training
mapper over the records of any registered dataset, multi-domain evaluation of every test dataset,
compact atomic checkpoints, mixed precision on CUDA or CPU, DDP on GPU or CPU processes
(unused-parameter search from config), AdvStyle training (MODEL.ADVSTYLE), and a non-finite loss
that names the last good checkpoint.
"""
from __future__ import annotations

import logging
import weakref
from collections import OrderedDict

from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from ..checkpoint.compact import CompactCheckpointer
from ..data.class_check import check_run_classes
from ..data.records import dataset_records
from ..data.train_mapper import SemanticTrainMapper
from ..errors import ReinD2Error
from ..evaluation import build_dg_evaluator, build_dg_test_loader, evaluate_on_domains
from ..solver import build_lr_scheduler, build_optimizer
from .advstyle import AdversarialStyle
from .amp import MixedPrecisionTrainer
from .distributed import process_device_ids


class NonFiniteLossError(ReinD2Error, FloatingPointError):
    """Training diverged; the message names the iteration and the checkpoint to resume from."""


class ReinTrainer(DefaultTrainer):
    def __init__(self, cfg: CfgNode) -> None:
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        device_ids = process_device_ids(cfg.MODEL.DEVICE)  # refuses an unworkable device before reading data
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, device_ids=device_ids, broadcast_buffers=False,
                                 find_unused_parameters=cfg.SOLVER.FIND_UNUSED_PARAMETERS)
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer = MixedPrecisionTrainer(model, data_loader, optimizer, cfg.SOLVER.AMP.PRECISION)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        if cfg.MODEL.ADVSTYLE.ENABLED:
            AdversarialStyle.from_config(cfg).attach(model, getattr(self._trainer, "grad_scaler", None))
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = CompactCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        """The model, once its class count and the datasets' class lists are known to agree
        (training and --eval-only both build it here)."""
        check_run_classes(cfg)
        return super().build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(cfg, mapper=SemanticTrainMapper(cfg),
                                            dataset=dataset_records(cfg.DATASETS.TRAIN))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_dg_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str):
        return build_dg_evaluator(cfg, dataset_name)

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module, evaluators=None) -> OrderedDict:
        """All of DATASETS.TEST in one multi-domain report (per-domain scores and their mean)."""
        return evaluate_on_domains(cfg, model)

    def run_step(self) -> None:
        try:
            super().run_step()
        except FloatingPointError as err:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            resume = (f"the last good checkpoint is {last}; resume from it with --resume after lowering "
                      "SOLVER.BASE_LR or enabling SOLVER.CLIP_GRADIENTS") if last else "no checkpoint was written yet"
            raise NonFiniteLossError(f"training stopped at iteration {self.iter}: the loss is not finite; "
                                     f"{resume}.\n{err}") from err
