"""AdvStyle (Zhong et al., NeurIPS 2022): adversarial style augmentation inside the training step.

An image's style is taken to be the channel-wise mean and standard deviation of the
normalised image. AdvStyle makes them learnable, initialised from the image itself,
moves them by gradient ascent on the segmentation loss (STEPS steps of size LR), restyles
the image with them, and trains the model on the clean and the restyled copy of every
image of the batch. Only the image region is restyled: the padding of the training mapper
(its "unpadded_size") stays at normalised zero.

It needs the model's gradient, so it runs in the training forward: `attach` installs a
forward pre-hook that, in training mode, turns every batch into batch + adversarial copies.
The style step leaves the model as it is:
- gradients are taken with torch.autograd.grad with respect to the style alone, so no
  parameter's .grad is written and no optimizer sees the step;
- under DDP the extra forward runs inside `no_sync()`, so DDP expects no backward for it and
  all-reduces no gradient of it; each process restyles its own images. The forward makes the
  collective calls of any forward (the criterion averages its mask count over the processes),
  which match because every process runs the style step in every iteration;
- under autocast (SOLVER.AMP) the extra forward runs in the training precision; with float16
  the loss is scaled by the trainer's current loss scale and the gradient unscaled, as for the
  parameters, and a non-finite style gradient leaves that copy at its last finite style.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError

logger = logging.getLogger(__name__)

STD_EPS = 1e-6  # added to the variance before the square root: flat channels keep a finite style


def channel_style(image: Tensor) -> tuple[Tensor, Tensor]:
    """[C, 1, 1] mean and standard deviation of each channel of a [C, H, W] image."""
    mean = image.mean(dim=(1, 2), keepdim=True)
    var = image.var(dim=(1, 2), keepdim=True, unbiased=False)
    return mean, (var + STD_EPS).sqrt()


class AdversarialStyle:
    """MODEL.ADVSTYLE: adversarially restyled copies of training batches (see the module doc)."""

    def __init__(self, lr: float, steps: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
        if lr <= 0 or steps < 1:
            raise ConfigError(f"MODEL.ADVSTYLE: LR ({lr}) must be > 0 and STEPS ({steps}) >= 1")
        self.lr = lr
        self.steps = steps
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1)
        self._restyling = False

    @classmethod
    def from_config(cls, cfg: CfgNode) -> AdversarialStyle:
        return cls(cfg.MODEL.ADVSTYLE.LR, cfg.MODEL.ADVSTYLE.STEPS, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)

    def attach(self, model: nn.Module, grad_scaler: torch.amp.GradScaler | None = None) -> RemovableHandle:
        """Every training-mode forward of `model` (a Detectron2 model taking a list of dicts, DDP-wrapped
        or not) then trains on the batch plus its restyled copies; `grad_scaler`: the float16 loss scale."""
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if not module.training or self._restyling:
                return None
            batch = list(args[0])
            scale = grad_scaler.get_scale() if grad_scaler is not None and grad_scaler.is_enabled() else 1.0
            return (batch + self.restyle(module, batch, scale), *args[1:])

        return model.register_forward_pre_hook(hook)

    def restyle(self, model: nn.Module, batched_inputs: list[dict], loss_scale: float = 1.0) -> list[dict]:
        """Copies of the inputs whose images have the adversarial style; the model is not changed."""
        device = next(model.parameters()).device
        mean, std = self.pixel_mean.to(device), self.pixel_std.to(device)
        normalised = [(x["image"].to(device).float() - mean) / std for x in batched_inputs]
        sizes = [tuple(x.get("unpadded_size", image.shape[-2:])) for x, image in zip(batched_inputs, normalised)]
        content, means, stds = [], [], []
        for image, (h, w) in zip(normalised, sizes):
            style_mean, style_std = channel_style(image[:, :h, :w])
            content.append((image[:, :h, :w] - style_mean) / style_std)
            means.append(style_mean.clone().requires_grad_(True))
            stds.append(style_std.clone().requires_grad_(True))
        styles = means + stds

        def restyled() -> list[dict]:
            images = []
            for image, part, style_mean, style_std in zip(normalised, content, means, stds):
                h, w = part.shape[-2:]
                styled = image.clone()
                styled[:, :h, :w] = part * style_std + style_mean
                images.append(styled * std + mean)
            return [dict(x, image=image) for x, image in zip(batched_inputs, images)]

        no_sync = getattr(model, "no_sync", contextlib.nullcontext)
        self._restyling = True
        try:
            with torch.enable_grad(), no_sync():
                for _ in range(self.steps):
                    loss = sum(model(restyled()).values())
                    grads = torch.autograd.grad(loss * loss_scale, styles)
                    if not all(torch.isfinite(g).all() for g in grads):
                        logger.info("AdvStyle: non-finite style gradient (loss scale %g); the copies keep "
                                    "their last finite style", loss_scale)
                        break
                    with torch.no_grad():
                        for style, grad in zip(styles, grads):
                            style.add_(grad, alpha=self.lr / loss_scale)
        finally:
            self._restyling = False
        with torch.no_grad():
            return restyled()
