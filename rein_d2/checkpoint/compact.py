"""Checkpoints that hold what training changes, written atomically, read without running code.

A Rein checkpoint of DINOv2-L keeps the Rein and head tensors (about 0.1 GB with the
optimizer state) instead of the 1.2 GB frozen backbone, which comes from MODEL.VIT.WEIGHTS
at build time. A fingerprint of those frozen weights is stored alongside, so that loading
onto another backbone says so instead of silently producing a different model.

Every file (MODEL.WEIGHTS, --resume, the demo) is read by the restricted reader
(restricted_pickle.py), Detectron2 model-zoo .pkl files included; Detectron2 then converts
their numpy arrays and matches their names by its heuristics, as it does for its own files.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys
from torch import nn

from ..errors import ReinD2Error
from ..utils.atomic import atomic_output, atomic_write_bytes
from .remote import local_weights_path
from .restricted_pickle import read_checkpoint

FINGERPRINT_KEY = "frozen_fingerprint"


class IncompatibleCheckpointError(ReinD2Error, ValueError):
    """A checkpoint's tensors do not fit the model."""


def frozen_parameter_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def fingerprint(model: nn.Module, names: set[str]) -> str:
    """sha256 over the names, shapes, dtypes and bytes of the frozen parameters."""
    digest = hashlib.sha256()
    params = dict(model.named_parameters())
    for name in sorted(names):
        tensor = params[name].detach()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class CompactCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that leaves frozen parameters out and never runs code from a file."""

    def __init__(self, model: nn.Module, save_dir: str = "", **kwargs: Any) -> None:
        super().__init__(model, save_dir, **kwargs)
        self._frozen = frozen_parameter_names(self.model)
        self._fingerprint: str | None = None

    def frozen_fingerprint(self) -> str:
        """Computed once: frozen weights do not change during training."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.model, self._frozen)
        return self._fingerprint

    def compact_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if k not in self._frozen}

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.compact_state_dict(), FINGERPRINT_KEY: self.frozen_fingerprint()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s (%.1f MB of trainable tensors)", path,
                         sum(t.numel() * t.element_size() for t in data["model"].values()) / 2**20)
        with atomic_output(path) as tmp:
            torch.save(data, tmp)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename.encode())

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Detectron2's load, with a URL first downloaded (and checksummed, see remote.py)."""
        return super().load(local_weights_path(path, "MODEL.WEIGHTS") if path else path, *args, **kwargs)

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            data = read_checkpoint(filename)
            if not (isinstance(data, dict) and "model" in data and "__author__" in data):
                raise IncompatibleCheckpointError(
                    f"{filename} is not in the Detectron2 model-zoo format (a dict with 'model' and '__author__'), "
                    "the only .pkl layout rein-d2 loads; save the weights as torch.save({'model': state_dict}, path)")
            self.logger.info("%s: Detectron2 model-zoo weights by %s", filename, data["__author__"])
            return data
        if filename.endswith(".pyth"):
            raise IncompatibleCheckpointError(f"{filename}: pycls .pyth files are not supported; save the weights "
                                              "as torch.save({'model': state_dict}, path)")
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> dict[str, Any]:
        loaded = read_checkpoint(f)
        if isinstance(loaded, dict) and "state_dict" in loaded and "meta" in loaded and "model" not in loaded:
            raise IncompatibleCheckpointError(
                f"{f} is an MMEngine checkpoint (e.g. an official Rein release), whose names are MMSegmentation's: "
                "convert it first with tools/convert_rein_checkpoint.py and load the converted file")
        return loaded

    def _check_with_modules(self, state: dict[str, torch.Tensor]) -> None:
        """Let modules that know what a mismatch means (e.g. a class count) explain it first."""
        for name, module in self.model.named_modules():
            check = getattr(module, "check_checkpoint", None)
            if check is not None:
                check(state, f"{name}." if name else "")

    def _load_model(self, checkpoint: dict[str, Any]) -> _IncompatibleKeys:
        self._check_with_modules(checkpoint["model"])
        saved = checkpoint.pop(FINGERPRINT_KEY, None)
        if saved is not None and self._frozen and saved != self.frozen_fingerprint():
            self.logger.warning(
                "This checkpoint was trained on other frozen backbone weights than the ones loaded now "
                "(fingerprint %s... vs %s...): its Rein and head will not reproduce its results. "
                "Set MODEL.VIT.WEIGHTS to the backbone it was trained with.", saved[:12], self.frozen_fingerprint()[:12])
        incompatible = super()._load_model(checkpoint)
        if incompatible.incorrect_shapes:
            lines = "\n".join(f"  {k}: checkpoint {c} vs model {m}" for k, c, m in incompatible.incorrect_shapes)
            raise IncompatibleCheckpointError(f"checkpoint does not fit this model; {len(incompatible.incorrect_shapes)}"
                                              f" tensors differ in shape:\n{lines}")
        if saved is not None:  # a compact checkpoint: frozen tensors are expected to be absent
            incompatible = incompatible._replace(
                missing_keys=[k for k in incompatible.missing_keys if k not in self._frozen])
        return incompatible
