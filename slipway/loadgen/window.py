"""One measurement window and what it is made of: client latencies, errors, server counters.

A :class:`Window` collects every request that *finished* inside it (latency from the request's
intended send time; in a closed loop that is when it was sent), the failures with their first
messages (replies that failed validation counted apart as ``wrong``), the reply decode times of a
validating run ("Client Recv"), the schedule lag of an open loop, the client's CPU time, and snapshots of the server's
statistics (and process CPU / RSS) at both ends, diffed into per-request server times.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Window", "totals", "server_times", "PHASES"]

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
_MESSAGES = 3  # distinct error messages kept per window


def totals(stats: Mapping[str, Any]) -> dict[str, int]:
    """The statistics extension's answer for one model, summed over its versions: success / fail
    counts, inference / execution counts and the ns of each phase."""
    out = Counter()
    for v in stats.get("model_stats", []):
        s = v.get("inference_stats", {})
        out["success"] += int(s.get("success", {}).get("count", 0))
        out["fail"] += int(s.get("fail", {}).get("count", 0))
        out["inference_count"] += int(v.get("inference_count", 0))
        out["execution_count"] += int(v.get("execution_count", 0))
        for phase in PHASES:
            out[phase] += int(s.get(phase, {}).get("ns", 0))
    return dict(out)


def server_times(before: Mapping[str, int], after: Mapping[str, int], requests: int | None = None
                 ) -> dict[str, float]:
    """Mean µs per request of each phase between two :func:`totals`, over ``requests`` (default the
    successes the server counted); plus the counts themselves."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    n = requests if requests is not None else d.get("success", 0)
    out = {f"{p}_us": d.get(p, 0) / n / 1e3 if n else 0.0 for p in PHASES}
    out.update(success=d.get("success", 0), fail=d.get("fail", 0), inference_count=d.get("inference_count", 0),
               execution_count=d.get("execution_count", 0))
    return out


@dataclass
class Window:
    start: float = field(default_factory=time.perf_counter)
    end: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    lags: list[float] = field(default_factory=list)  # open loop: actual send - intended send, seconds
    errors: int = 0  # failed requests and wrong replies
    wrong: int = 0  # replies that failed validation (also in errors)
    recvs: list[float] = field(default_factory=list)  # seconds decoding each successful reply (--validate)
    messages: Counter = field(default_factory=Counter)
    cpu0: float = field(default_factory=lambda: _cpu())
    cpu1: float = 0.0
    stats0: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> totals at the start
    stats1: dict[str, dict[str, int]] = field(default_factory=dict)
    server0: dict[str, float] = field(default_factory=dict)  # process cpu / rss at the start
    server1: dict[str, float] = field(default_factory=dict)

    def done(self, intended: float, sent: float, finished: float, error: str | None,
             recv: float | None = None) -> None:
        if error is None:
            self.latencies.append(finished - intended)
            if recv is not None:
                self.recvs.append(recv)
        else:
            self.errors += 1
            self.wrong += error.startswith("wrong output: ")
            if error in self.messages or len(self.messages) < _MESSAGES:
                self.messages[error] += 1
        if sent > intended:
            self.lags.append(sent - intended)

    @property
    def finished(self) -> int:
        return len(self.latencies) + self.errors

    def close(self) -> None:
        self.end = time.perf_counter()
        self.cpu1 = _cpu()

    @property
    def seconds(self) -> float:
        return max(1e-9, self.end - self.start)

    def latency_metric(self, percentile: int | None) -> float:
        """What stability is judged on: the mean latency, or the given percentile."""
        if not self.latencies:
            return 0.0
        a = np.asarray(self.latencies)
        return float(np.percentile(a, percentile)) if percentile else float(a.mean())


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def process_sample(pid: int) -> dict[str, float]:
    """CPU seconds and resident bytes of a local process from /proc (empty where unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return {}
    ticks = os.sysconf("SC_CLK_TCK")
    return {"process_cpu_seconds_total": (int(fields[11]) + int(fields[12])) / ticks,
            "process_resident_memory_bytes": float(rss_pages * os.sysconf("SC_PAGE_SIZE"))}
