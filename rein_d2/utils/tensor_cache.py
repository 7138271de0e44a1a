"""A small LRU cache for constant tensors that depend on sizes only (grids, position codes)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def size_cache(maxsize: int = 8) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Memoise a function of hashable arguments (sizes, device, dtype) that builds constant tensors.

    At most `maxsize` entries, least recently used dropped first, so that a stream of new input
    sizes cannot grow it. The inference-mode state is part of the key: a tensor made under
    `torch.inference_mode` cannot enter autograd later. Callers must never modify the returned
    tensors in place: every later call with the same key gets the same objects.
    """

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.lru_cache(maxsize=maxsize)
        def cached(inference_mode: bool, *args: object) -> T:
            return fn(*args)

        @functools.wraps(fn)
        def wrapper(*args: object) -> T:
            return cached(torch.is_inference_mode_enabled(), *args)

        wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        wrapper.cache_info = cached.cache_info  # type: ignore[attr-defined]
        return wrapper

    return decorate
