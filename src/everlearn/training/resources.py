"""What a phase costs: peak memory (resident set size on CPU, allocator peak on CUDA) and the
time inside strategy hooks.

The process-wide ``ru_maxrss`` never decreases, so it cannot tell stages apart; sampling the
current RSS at every step can.
"""

from __future__ import annotations

import os
import resource
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class PeakMemory:
    """Track the largest memory use seen by ``sample()`` since construction."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device
        self._peak = current_rss_mb() if not self.cuda else 0.0

    def sample(self) -> None:
        if not self.cuda:
            self._peak = max(self._peak, current_rss_mb())

    @property
    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        self.sample()
        return self._peak


class Stopwatch:
    """Accumulates the time spent inside ``with`` blocks (strategy hooks)."""

    def __init__(self) -> None:
        self.total = 0.0

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.total += time.perf_counter() - self._start
