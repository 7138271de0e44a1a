"""Training: the Rein trainer, its mixed-precision step and its DDP device choice."""
from .amp import MixedPrecisionTrainer
from .distributed import DistributedDeviceError
from .trainer import NonFiniteLossError, ReinTrainer

__all__ = ["DistributedDeviceError", "MixedPrecisionTrainer", "NonFiniteLossError", "ReinTrainer"]
