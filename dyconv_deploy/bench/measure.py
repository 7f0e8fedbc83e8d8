"""Timing: runners interleaved in one process, latency percentiles, throughput, memory.

Every iteration runs each runner once, in an order rotated by one per iteration, so slow
drifts (thermal, other processes) hit the dynamic graphs and their static twin alike.
The clock is wall time, or the process's CPU time (``cpu``: what a run computed, whatever
else shares the cores; meaningful as latency with one inference thread only).
"""

import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Latency percentiles (ms) and throughput (samples/s) of ``iterations`` runs at ``batch``.

    ``peak_memory_mb``: what the backend reports (torch CUDA: ``max_memory_allocated``), or
    the growth of the process's resident memory that bench attributes to the graph (CPU
    backends report nothing; see ``BenchResult.settings["memory"]``: approximate, since
    allocators keep freed memory); None when nothing was measured.
    """

    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    iterations: int
    peak_memory_mb: Optional[float] = None


def summarize(seconds: list[float], batch: int, peak_memory_mb: Optional[float] = None) -> Stats:
    """Stats of per-run wall times in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return Stats(batch, float(p50), float(p90), float(p99), float(ms.mean()), float(batch * 1e3 / p50), len(ms),
                 peak_memory_mb)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(runners: dict[str, Callable[[], object]], warmup: int, iterations: int,
                clock: str = "wall") -> dict[str, list[float]]:
    """Run every runner ``warmup`` untimed then ``iterations`` timed times, interleaved; seconds per run
    on ``clock`` (a key of :data:`CLOCKS`)."""
    now = CLOCKS[clock]
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iterations):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = now()
            runners[name]()
            times[name].append(now() - start)
    return times


def rss_mb() -> float:
    """The process's resident set size now, in MB (``/proc/self/statm``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
