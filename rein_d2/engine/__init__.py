"""Training: the Rein trainer and its mixed-precision step."""
from .amp import MixedPrecisionTrainer
from .trainer import NonFiniteLossError, ReinTrainer

__all__ = ["MixedPrecisionTrainer", "NonFiniteLossError", "ReinTrainer"]
