"""The queues and counters of a stream run (slipway.stream.runner): bounded FIFOs between the stages, the
decoders' per-stream queues where the overload policy acts, and the counters ``StreamRun.stats`` reports.

Every blocking wait here is a short timed wait in a loop that checks the run's ``abort`` event, so no thread
can hang on a queue; every queue has a bound, so nothing buffers without limit.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

POLICIES = ("block", "drop-oldest", "skip-to-live")
TICK = 0.05  # seconds: the longest any thread waits before it looks at the abort event again


@dataclass
class End:
    """End of one stream, sent down the stages after its last frame (never dropped): a stage that sees it
    flushes what it holds of that stream."""

    stream: int
    arrived: float = 0.0


def _wait(cond: threading.Condition, abort: threading.Event, deadline: float | None) -> bool:
    """One step of a consumer's wait on ``cond`` (held): at most ``TICK`` seconds; False when ``abort`` is set or
    the ``deadline`` (``time.perf_counter()``) has passed, so the caller gives up."""
    if abort.is_set():
        return False
    wait = TICK if deadline is None else min(TICK, deadline - time.perf_counter())
    if wait <= 0:
        return False
    cond.wait(wait)
    return True


class Channel:
    """A bounded FIFO between two stages. ``put`` waits for room and ``get`` for an item, both in ``TICK`` steps
    until ``abort`` is set; ``max_depth`` is the deepest it has been."""

    def __init__(self, name: str, bound: int, abort: threading.Event) -> None:
        self.name = name
        self.bound = max(1, int(bound))
        self._abort = abort
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self.max_depth = 0

    def put(self, item: Any) -> bool:
        """Append ``item`` once there is room; False when the run was aborted first."""
        with self._cond:
            while len(self._items) >= self.bound:
                if self._abort.is_set():
                    return False
                self._cond.wait(TICK)
            self._items.append(item)
            self.max_depth = max(self.max_depth, len(self._items))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item; None when ``timeout`` seconds pass first or the run is aborted."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while not self._items:
                if not _wait(self._cond, self._abort, deadline):
                    return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        return len(self._items)


class Ingress:
    """The decoders' output: one bounded queue per stream (``bound`` frames each) under one lock, read oldest
    frame first across all streams. The overload policy is applied here, per stream, when a frame is put:

    - ``block``: the decoder waits for room (files: nothing is lost, decoding slows to the pipeline's pace);
    - ``drop-oldest``: a full queue drops its oldest frame to take the new one (counted ``overflow``);
    - ``skip-to-live``: frames still queued when a newer one arrives are stale and dropped (counted ``stale``),
      so the pipeline always takes the newest frame (live sources).
    """

    def __init__(self, streams: int, bound: int, abort: threading.Event) -> None:
        self.bound = max(1, int(bound))
        self._abort = abort
        self._queues: list[deque[Any]] = [deque() for _ in range(streams)]
        self._cond = threading.Condition()
        self.max_depth = [0] * streams

    def put(self, stream: int, item: Any, policy: str) -> tuple[bool, int]:
        """Queue ``item`` of ``stream`` under ``policy``: (False when aborted, frames dropped to make room)."""
        q = self._queues[stream]
        dropped = 0
        with self._cond:
            if isinstance(item, End) or policy == "block":
                while len(q) >= self.bound:
                    if self._abort.is_set():
                        return False, 0
                    self._cond.wait(TICK)
            elif policy == "drop-oldest":
                while len(q) >= self.bound:
                    q.popleft()
                    dropped += 1
            else:  # skip-to-live
                dropped = len(q)
                q.clear()
            q.append(item)
            self.max_depth[stream] = max(self.max_depth[stream], len(q))
            self._cond.notify_all()
            return True, dropped

    def get(self, timeout: float | None = None) -> Any:
        """The oldest head across the streams (by ``arrived``); None on timeout or abort."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while True:
                heads = [(q[0].arrived, i) for i, q in enumerate(self._queues) if q]
                if heads:
                    item = self._queues[min(heads)[1]].popleft()
                    self._cond.notify_all()
                    return item
                if not _wait(self._cond, self._abort, deadline):
                    return None

    def depth(self, stream: int) -> int:
        return len(self._queues[stream])


# ---------------------------------------------------------------------------------------------- counters


class Counters:
    """Everything a run counts, updated by the stage threads under one lock; ``snapshot`` gives plain data."""

    STAGES = ("decode", "pre", "infer", "post", "track", "sink")

    def __init__(self, specs: Sequence[str], latencies: int = 4096) -> None:
        n = len(specs)
        self.specs = list(specs)
        self._lock = threading.Lock()
        self.start = time.perf_counter()
        self.last = self.start
        self.frames_in = [0] * n
        self.processed = [0] * n
        self.detected = [0] * n
        self.dropped = [{"overflow": 0, "stale": 0} for _ in range(n)]
        self.ended = [False] * n
        self.latency: list[deque[float]] = [deque(maxlen=latencies) for _ in range(n)]
        self.recent: deque[float] = deque(maxlen=100_000)  # completion times within the last second
        self.time = {s: 0.0 for s in self.STAGES}
        self.calls = {s: 0 for s in self.STAGES}
        self.batches = 0
        self.batched_frames = 0

    def add_time(self, stage: str, seconds: float, calls: int = 1) -> None:
        with self._lock:
            self.time[stage] += seconds
            self.calls[stage] += calls

    def frame_in(self, stream: int) -> None:
        with self._lock:
            self.frames_in[stream] += 1

    def drop(self, stream: int, frames: int, reason: str) -> None:
        with self._lock:
            self.dropped[stream][reason] += frames

    def batch(self, frames: int) -> None:
        with self._lock:
            self.batches += 1
            self.batched_frames += frames

    def done(self, stream: int, latency: float, detected: bool) -> None:
        now = time.perf_counter()
        with self._lock:
            self.processed[stream] += 1
            self.detected[stream] += int(detected)
            self.latency[stream].append(latency)
            self.recent.append(now)
            self.last = now

    def snapshot(self, depths: dict[str, int], max_depths: dict[str, int],
                 sources: Sequence[dict[str, int]]) -> dict[str, Any]:
        now = time.perf_counter()
        with self._lock:
            while self.recent and self.recent[0] < now - 1.0:
                self.recent.popleft()
            live = len(self.recent) / min(1.0, max(now - self.start, 1e-3))
            elapsed = max(self.last - self.start, 1e-9)
            streams = []
            for i, spec in enumerate(self.specs):
                lat = np.array(self.latency[i]) * 1e3
                src = sources[i] if i < len(sources) else {}
                streams.append({
                    "stream": i, "source": spec, "frames_in": self.frames_in[i], "processed": self.processed[i],
                    "detected": self.detected[i],
                    "dropped": {**self.dropped[i], "corrupt": int(src.get("corrupt", 0))},
                    "queue": depths.get(f"ingress[{i}]", 0), "max_queue": max_depths.get(f"ingress[{i}]", 0),
                    "ended": self.ended[i],
                    "latency_ms": _percentiles(lat), "source_counters": dict(src),
                })
            stages = {}
            for s in self.STAGES:
                if self.calls[s]:
                    stages[s] = {"ms": round(self.time[s] / self.calls[s] * 1e3, 3), "calls": self.calls[s],
                                 "busy_s": round(self.time[s], 3)}
            for name, d in depths.items():
                stages.setdefault(_stage_of(name), {}).setdefault("queue", 0)
                stages[_stage_of(name)]["queue"] += d
                stages[_stage_of(name)]["max_queue"] = max(stages[_stage_of(name)].get("max_queue", 0),
                                                           max_depths.get(name, 0))
            processed = sum(self.processed)
            dropped = {k: sum(d[k] for d in self.dropped) for k in ("overflow", "stale")}
            dropped["corrupt"] = sum(st["dropped"]["corrupt"] for st in streams)
            return {
                "frames_in": sum(self.frames_in), "processed": processed, "detected": sum(self.detected),
                "dropped": dropped, "fps": round(live, 2),
                "fps_overall": round(processed / elapsed, 2) if processed else 0.0,
                "elapsed_s": round(now - self.start, 3),
                "batches": self.batches,
                "mean_batch": round(self.batched_frames / self.batches, 3) if self.batches else 0.0,
                "latency_ms": _percentiles(np.concatenate([np.array(q) for q in self.latency]) * 1e3
                                           if self.specs else np.zeros(0)),
                "stages": stages, "streams": streams,
            }


def _stage_of(queue_name: str) -> str:
    """The stage that reads a queue: ingress -> pre, pre -> infer, infer -> post, out -> the consumer."""
    return {"ingress": "pre", "pre": "infer", "infer": "post", "out": "out"}[queue_name.split("[")[0]]


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    if not len(ms):
        return {"p50": 0.0, "p99": 0.0, "mean": 0.0}
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3),
            "mean": round(float(ms.mean()), 3)}
