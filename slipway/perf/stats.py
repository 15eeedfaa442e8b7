"""Numbers of a benchmark: the stopping rule, latency percentiles and peak resident memory.

Stopping rule (:class:`Budget`): measure until at least ``min_time_s`` and ``min_runs`` have
passed AND the median is stable — the median of the most recent half of the runs is within
``tolerance`` (relative) of the median of all runs — or until ``max_time_s`` / ``max_runs``,
whichever comes first. A configuration stopped by ``max_time_s`` before its median settled is
reported with ``stable=False``.

Peak memory: :class:`RssSampler` samples this process's resident set size (``VmRSS``) in a
background thread, because the kernel's own high-water mark (``VmHWM``) cannot be reset
between configurations; :func:`peak_rss_mb` reads ``VmHWM``, exact for a process that ran
one configuration only (the isolated mode of :mod:`slipway.perf.runner`).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slipway.errors import UserError

MB = 1024 * 1024
CHECK_SAMPLES = 5_000  # at most this many latencies (a strided subsample) per stability check


def median(values: Sequence[float] | np.ndarray) -> float:
    """The median of ``values`` (the mean of the middle two for an even count): the statistic every
    timing here reports (bench's p50, a stable-median check, A/B blocks in :mod:`slipway.perf.ab`)."""
    return float(np.median(np.asarray(values, dtype=np.float64)))


@dataclass(frozen=True)
class Budget:
    """How long to warm up and measure one configuration."""

    warmup: int = 5  # runs per instance before timing starts (cut short after min_time_s / 2)
    min_time_s: float = 2.0
    max_time_s: float | None = None  # None: 3 x min_time_s, at least min_time_s + 1 s
    min_runs: int = 10  # requests, all instances together
    max_runs: int | None = None
    tolerance: float = 0.05  # relative: |median(last half) - median(all)| / median(all)

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise UserError(f"warmup must be 0 or more, got {self.warmup}")
        if not self.min_time_s >= 0:
            raise UserError(f"min time must be 0 s or more, got {self.min_time_s}")
        if self.max_time_s is not None and not self.max_time_s >= self.min_time_s:
            raise UserError(f"max time ({self.max_time_s} s) must be at least the min time ({self.min_time_s} s)")
        if self.min_runs < 1:
            raise UserError(f"min runs must be at least 1, got {self.min_runs}")
        if self.max_runs is not None and self.max_runs < self.min_runs:
            raise UserError(f"max runs ({self.max_runs}) must be at least the min runs ({self.min_runs})")
        if not 0 < self.tolerance < 1:
            raise UserError(f"stability tolerance must be in (0, 1), got {self.tolerance}")

    @property
    def warmup_limit_s(self) -> float:
        """Warm-up stops after ``warmup`` runs or this long (at least one run), whichever is first."""
        return self.min_time_s / 2

    @property
    def time_limit_s(self) -> float:
        if self.max_time_s is not None:
            return self.max_time_s
        return max(3 * self.min_time_s, self.min_time_s + 1.0)

    def done(self, elapsed_s: float, samples: Sequence[Sequence[float]]) -> bool:
        """True when measuring can stop: budget met and stable, or a maximum reached."""
        runs = sum(len(s) for s in samples)
        if elapsed_s >= self.time_limit_s or (self.max_runs is not None and runs >= self.max_runs):
            return True
        return elapsed_s >= self.min_time_s and runs >= self.min_runs and self.stable(samples)

    def stable(self, samples: Sequence[Sequence[float]]) -> bool:
        """The median of the most recent half of each instance's runs is within tolerance of the overall one."""
        runs = sum(len(s) for s in samples)
        if runs < max(self.min_runs, 2):
            return False
        step = max(1, runs // CHECK_SAMPLES)  # a strided subsample keeps a check cheap on fast models
        whole = median(np.concatenate([np.asarray(s[::step], dtype=np.float64) for s in samples if len(s)]))
        recent = [np.asarray(s[len(s) // 2::step], dtype=np.float64) for s in samples if len(s) > 1]
        late = median(np.concatenate(recent)) if recent else whole
        return whole > 0 and abs(late - whole) <= self.tolerance * whole


@dataclass(frozen=True)
class Summary:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    runs: int


def summarize(latencies_ms: Sequence[float]) -> Summary:
    """Percentiles (linear interpolation), mean, min and max of per-request latencies in ms."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latencies to summarize")
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return Summary(p50, p90, p99, float(a.mean()), float(a.min()), float(a.max()), int(a.size))


def current_rss_bytes() -> int | None:
    """This process's resident set size now (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """The process's lifetime peak resident set size in MiB (``VmHWM``; ``ru_maxrss`` off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


class RssSampler:
    """Peak resident memory while a block runs, sampled every ``interval_s`` in a daemon thread.

    A transient allocation freed within one interval can be missed; engines keep their buffers
    (arenas, infer requests) between runs, so the steady state is what this catches.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = current_rss_bytes()
        if rss is not None and rss > self.peak_bytes:
            self.peak_bytes = rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="slipway-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float | None:
        return self.peak_bytes / MB if self.peak_bytes else None  # None where RSS cannot be read
