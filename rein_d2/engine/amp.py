"""Mixed-precision training step on CUDA or the CPU: fp16 with loss scaling, or bf16.

Detectron2's AMPTrainer is CUDA-only and fp16-centred; this one follows the model's device
and SOLVER.AMP.PRECISION, and scales losses only where fp16 needs it. A checkpoint resumed
with another precision than it was written with (none -> fp16, bf16 -> fp16) has no loss
scale to restore: the scale starts afresh, as in a new run, and the log says so.
"""
from __future__ import annotations

import logging
import time

import torch
from detectron2.engine import SimpleTrainer

from ..utils.precision import autocast_dtype

logger = logging.getLogger(__name__)


class MixedPrecisionTrainer(SimpleTrainer):
    """SimpleTrainer whose forward runs under torch.autocast."""

    def __init__(self, model: torch.nn.Module, data_loader, optimizer: torch.optim.Optimizer,
                 precision: str = "float16") -> None:
        super().__init__(model, data_loader, optimizer)
        self.dtype = autocast_dtype(precision, "SOLVER.AMP.PRECISION")
        self.device_type = next(model.parameters()).device.type
        self.grad_scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)

    def run_step(self) -> None:
        assert self.model.training, "MixedPrecisionTrainer: the model was switched to eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "grad_scaler": self.grad_scaler.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        scaler = state_dict.get("grad_scaler") or {}  # {} is what a disabled (bf16) scaler saves
        if self.grad_scaler.is_enabled() and not scaler:
            logger.info("the checkpoint holds no float16 loss scale (it was trained without float16 autocast): "
                        "the loss scale starts afresh at %g", self.grad_scaler.get_scale())
            return
        self.grad_scaler.load_state_dict(scaler)
