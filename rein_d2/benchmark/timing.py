"""Wall-clock timing that is fair between variants and correct on CUDA."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch


def synchronize(device: torch.device) -> None:
    """CUDA runs asynchronously: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fns: Mapping[str, Callable[[], object]], runs: int, warmup: int,
                   device: torch.device) -> dict[str, float]:
    """Median wall time of each function over `runs` calls after `warmup` calls.

    The functions take turns, run by run, so that a machine whose load drifts (another
    process, thermal throttling) slows every variant alike and their ratios stay fair.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs={runs} must be >= 1 and warmup={warmup} >= 0")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_flops_per_second(device: torch.device, size: int, runs: int, warmup: int) -> dict[str, float]:
    """The device's own fp32 matrix-multiply speed: a size x size x size torch.matmul, 2 size^3 FLOPs."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator)
    b = torch.randn(size, size, device=device, generator=generator)
    seconds = median_seconds({"matmul": lambda: torch.matmul(a, b)}, runs, max(warmup, 1), device)["matmul"]
    return {"size": size, "seconds": seconds, "flops_per_second": 2.0 * size**3 / seconds}
