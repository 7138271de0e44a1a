"""Peak memory of a piece of work, measured honestly on CUDA and on the CPU.

CUDA: torch.cuda.max_memory_allocated, every tensor the work allocates on the device
(weights, gradients, optimizer state, activations), after resetting the peak.

CPU: torch keeps no allocator statistics for the CPU, and tracemalloc does not see its
allocations (they bypass Python's allocator). The work therefore runs in a fresh process
(rein_d2.benchmark.training), whose peak resident set size is reset when the work starts
(Linux: /proc/self/clear_refs) and read when it ends (VmHWM), minus the resident size at
the start. The process runs with LIVE_MEMORY_ENV: glibc then maps every allocation of 64 KiB
or more on its own and unmaps it when freed, so the resident set follows the live tensors
instead of what the allocator keeps cached (which otherwise varies by hundreds of MB from run
to run). Without /proc (macOS), the peak before the work (getrusage) is the baseline, which
overstates it when importing the libraries peaked higher than the work.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"  # clear_refs command that resets VmHWM to the current RSS
# Environment of a measuring process: a fixed glibc mmap threshold (it also stops glibc from
# raising the threshold, which would let freed blocks stay resident); other C libraries ignore it.
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def _status_bytes(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(f"{field} not in {STATUS}")


def _getrusage_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


class PeakMemory:
    """Brackets the work: `start()` before it, `peak_bytes()` after it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._baseline = 0
        self._proc = False

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats"
        if self._proc:
            return "peak RSS (VmHWM, reset by /proc/self/clear_refs) of a fresh process minus its RSS at the start"
        return "peak RSS (getrusage) of a fresh process minus its peak before the work"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            return
        try:
            CLEAR_REFS.write_text(RESET_PEAK_RSS)
            self._baseline = _status_bytes("VmRSS")
            self._proc = True
        except OSError:
            self._baseline = _getrusage_peak_bytes()

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._baseline
        peak = _status_bytes("VmHWM") if self._proc else _getrusage_peak_bytes()
        return peak - self._baseline
