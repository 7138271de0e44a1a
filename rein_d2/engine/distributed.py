"""DistributedDataParallel on the model's device: one GPU per process (NCCL) or CPU processes (gloo).

Detectron2's `launch` picks the backend from the machine, not from the config: NCCL
whenever a GPU is visible, gloo otherwise. DDP takes `device_ids` only for a module on
one GPU, and NCCL cannot reduce CPU tensors, so a CPU model in NCCL processes is refused
before any data is read.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from detectron2.utils import comm

from ..errors import ReinD2Error


class DistributedDeviceError(ReinD2Error, RuntimeError):
    """The model's device cannot work with the processes' communication backend."""


def ddp_device_ids(device_type: str, backend: str | None, local_rank: int) -> list[int] | None:
    """DDP's `device_ids`: this process's GPU for a CUDA model, none for a CPU model.

    backend: the process group's backend ("nccl", "gloo"), None in a single process.
    """
    if device_type == "cuda":
        return [local_rank]
    if backend == dist.Backend.NCCL:
        raise DistributedDeviceError(
            f"MODEL.DEVICE {device_type} with several processes on a machine with GPUs: Detectron2's launch "
            "chose NCCL there, which cannot communicate CPU tensors (DDP's gradients, the loss's mask count). "
            "Train on the GPUs with MODEL.DEVICE cuda, or hide them so that CPU processes use gloo: "
            "CUDA_VISIBLE_DEVICES= python train_net.py --num-gpus N ... MODEL.DEVICE cpu")
    return None


def process_device_ids(device: str) -> list[int] | None:
    """`ddp_device_ids` for a model on `device` (a MODEL.DEVICE value) in the current process group."""
    backend = dist.get_backend() if comm.get_world_size() > 1 else None
    return ddp_device_ids(torch.device(device).type, backend, comm.get_local_rank())

