"""Weight loading and conversion."""
from .vfm_weights import IncompatibleWeightsError, load_vfm_weights, read_state_dict

__all__ = ["IncompatibleWeightsError", "load_vfm_weights", "read_state_dict"]
