"""Names of the autocast precisions that config keys (SOLVER.AMP.PRECISION, TEST.AMP.PRECISION) accept."""
from __future__ import annotations

import torch

from ..errors import ConfigError

PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def inference_autocast_dtype(cfg) -> torch.dtype | None:
    """The dtype inference runs under by TEST.AMP, None for full precision."""
    amp = cfg.TEST.AMP
    return autocast_dtype(amp.PRECISION, "TEST.AMP.PRECISION") if amp.ENABLED else None


def autocast_dtype(precision: str, config_key: str) -> torch.dtype:
    """The dtype named by `precision`, or an error naming the config key and the choices."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{config_key}={precision!r}; choose one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]
