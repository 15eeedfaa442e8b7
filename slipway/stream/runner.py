"""``run_stream``: sources -> decode -> pre-process -> infer (batched across frames and streams) -> post-process +
track -> sinks, each stage on its own thread, joined by bounded queues (slipway.stream.stages).

Threads: one decoder per source, then one thread per stage (pre, infer, post). Each stream's frames keep their
order through every stage (each stage is one FIFO thread), so results come out in each stream's frame order.
The overload policy acts where frames enter (the decoders' queues): ``block`` (files), ``drop-oldest``,
``skip-to-live`` (live sources); after that every queue blocks, so drops happen in one place and are counted.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from slipway.errors import UserError, one_line
from slipway.stream.frames import FrameResult
from slipway.stream.queues import POLICIES, TICK
from slipway.stream.stages import DONE, Plan, Stages, quiet, spec_of, split_pipeline

__all__ = ["POLICIES", "StreamRun", "run_stream"]

MAX_DEFAULT_BATCH = 8  # the default batch is one frame per stream, at most this many
JOIN_LIMIT_S = 10.0  # after an abort, the longest the consumer waits for the stage threads


def run_stream(
    sources: Sequence[Any] | Any,
    *,
    pipeline: Any = None,
    every: int = 1,
    policy: str | None = None,
    tracker: str | Callable[[], Any] | None = "bytetrack",
    per_class: bool = False,
    tracker_params: dict[str, Any] | None = None,
    batch: int | None = None,
    max_wait_ms: float = 10.0,
    queue: int = 8,
    sinks: Iterable[Any] = (),
    max_frames: int | None = None,
    stride: int = 1,
    retries: int = 3,
    backoff: float = 0.5,
    keep_images: bool = False,
    status: Callable[[dict[str, Any]], None] | None = None,
    status_interval: float = 0.5,
    opencv_threads: int | None = 1,
) -> StreamRun:
    """Start a stream run over ``sources`` and return it (already running).

    ``sources``: specs (video files, URLs, cameras, image folders, MOTChallenge detections ``.txt``; opened with
    :func:`slipway.stream.source.open_source` with ``stride`` / ``retries`` / ``backoff``) or Source objects (the
    run closes them). ``pipeline``: a detector :class:`~slipway.pipeline.Pipeline` (image -> boxes, scores,
    class_ids), cut around its model step so that frames of all streams are batched into one engine call
    (``batch`` frames at most, waiting ``max_wait_ms`` for a batch to fill). Default batch: with several streams
    and a free batch dim, one frame per stream (at most 8), kept only if the first engine calls, timed batched and
    frame by frame in turn, show batching is faster per frame (``stats()["batching"]``); else 1. A pipeline with
    no model step or several runs whole per frame;
    None when every source gives detections. ``every``: the detector runs on every N-th frame of each stream,
    the tracker predicts in between. ``policy``: ``block`` / ``drop-oldest`` / ``skip-to-live`` for all sources
    (default: skip-to-live for live sources, block for files). ``tracker``: "bytetrack", "sort", None (no
    tracking) or a factory of objects with ``update(Detections)`` / ``predict()``. ``queue``: the bound of each
    stream's decode queue and of the output queue (stage queues hold ``max(queue, 2 * batch)``). ``sinks``: objects
    with ``write(FrameResult)`` / ``close()`` (slipway.stream.sink), written on the post thread and closed at the
    end. ``status``: called with :meth:`StreamRun.stats` about every ``status_interval`` s by the consuming thread.
    ``opencv_threads``: OpenCV's thread count while any run is going (process-wide; restored when the last run
    ends; None leaves it): the stages already run in parallel, and OpenCV's own pool on top of them oversubscribes
    the cores (on 2 cores, 1 thread made 1080p letterboxing ~1.5x faster inside a run).

    Iterate the run for its :class:`FrameResult` s (each stream in frame order) or call :meth:`StreamRun.wait`;
    one of the two must consume it (the output queue is bounded: an unconsumed run waits).
    """
    if isinstance(sources, (str, os.PathLike)) or hasattr(sources, "close"):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise UserError("stream: give at least one source")
    _check_int("every", every)
    _check_int("queue", queue)
    if batch is not None:
        _check_int("batch", batch)
    if max_frames is not None:
        _check_int("max_frames", max_frames)
    if not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
        raise UserError(f"stream: max_wait_ms must be a non-negative number, got {max_wait_ms!r}")
    if policy is not None and policy not in POLICIES:
        raise UserError(f"stream: policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    make_tracker = _tracker_factory(tracker, per_class, tracker_params or {})
    if make_tracker is None and every > 1:
        raise UserError("stream: --every N needs a tracker (it predicts the frames between detections)")
    plan = split_pipeline(pipeline) if pipeline is not None else None
    opened: list[Any] = []
    try:
        trackers = [make_tracker() if make_tracker else None for _ in sources]
        for i, spec in enumerate(sources):
            opened.append(_open(spec, i, stride, retries, backoff))
    except BaseException:
        for src in opened:
            quiet(src.close)
        if plan is not None:
            plan.close()
        raise
    auto = batch is None and plan is not None and plan.dynamic_batch and len(opened) > 1
    if batch is None:
        batch = min(MAX_DEFAULT_BATCH, len(opened)) if auto else 1
    policies = [policy or ("skip-to-live" if getattr(s, "live", False) else "block") for s in opened]
    return StreamRun(opened, plan, policies=policies, trackers=trackers, sinks=list(sinks), every=every,
                     batch=batch, auto_batch=auto, max_wait=max_wait_ms / 1e3, queue=queue, max_frames=max_frames,
                     keep_images=keep_images, status=status, status_interval=status_interval,
                     opencv_threads=opencv_threads)


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"stream: {name} must be a positive integer, got {value!r}")


def _open(spec: Any, stream: int, stride: int, retries: int, backoff: float) -> Any:
    if hasattr(spec, "close") and hasattr(spec, "__iter__") and not isinstance(spec, (str, os.PathLike)):
        return spec
    from slipway.stream.source import open_source

    return open_source(spec, stream, stride=stride, retries=retries, backoff=backoff)


def _tracker_factory(tracker: Any, per_class: bool, params: dict[str, Any]) -> Callable[[], Any] | None:
    if tracker is None or tracker == "none":
        return None
    if callable(tracker):
        return tracker
    if tracker not in ("bytetrack", "sort"):
        raise UserError(f"stream: tracker must be 'bytetrack', 'sort' or 'none', got {tracker!r}")
    from slipway.stream.track import StreamTracker

    return lambda: StreamTracker(tracker, per_class=per_class, **params)


class StreamRun(Stages):
    """A running stream job: iterate it for FrameResults, or ``wait()``; ``stop()`` ends it cleanly (stop
    reading, finish the frames in flight, close the sinks); ``stats()`` at any time. A context manager: leaving
    the block stops the run (aborting it when the block raised)."""

    def __init__(self, sources: list[Any], plan: Plan | None, *, status: Callable[[dict[str, Any]], None] | None,
                 status_interval: float, opencv_threads: int | None = None, **options: Any) -> None:
        super().__init__(sources, plan, **options)
        self._status, self._status_interval, self._status_at = status, status_interval, 0.0
        self._consumed = self._done = self._finished = False
        self._opencv = opencv_threads is not None and _opencv_threads(+1, opencv_threads)
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ consumer side

    def __iter__(self) -> Iterator[FrameResult]:
        if self._consumed:
            raise UserError("stream: a run is consumed once (iterate it or wait() for it)")
        self._consumed = True
        try:
            while True:
                item = self._next()
                if item is None:
                    break
                yield item
        finally:
            self._finish()

    def wait(self) -> dict[str, Any]:
        """Consume the run to its end (results discarded; sinks have them), clean up, return :meth:`stats`.
        A stage's error is raised here as one line naming the stage and the stream."""
        if not self._consumed:
            self._consumed = True
            while self._next() is not None:
                pass
        self._finish()
        return self.stats()

    join = wait

    def stop(self, *, drain: bool = True) -> None:
        """End the run: stop reading the sources; ``drain``: the frames already read still go through every stage
        and the sinks (then closed); else abandon them. Returns at once (safe in a signal handler); the consumer's
        iteration or :meth:`wait` ends soon after."""
        if drain:
            self._stopping.set()
        else:
            self._abort.set()
        for src in self.sources:
            quiet(src.close)

    def stats(self) -> dict[str, Any]:
        """Counters as plain (JSON-ready) data: frames in / processed / detected, dropped by reason (overflow,
        stale, corrupt), live and overall FPS, latency percentiles, per-stage mean time (ms per call) and queue
        depth, per-stream details."""
        n = len(self.sources)
        depths = {f"ingress[{i}]": self._ingress.depth(i) for i in range(n)}
        depths |= {"pre": len(self._pre_q), "infer": len(self._infer_q), "out": len(self._out)}
        maxes = {f"ingress[{i}]": self._ingress.max_depth[i] for i in range(n)}
        maxes |= {"pre": self._pre_q.max_depth, "infer": self._infer_q.max_depth, "out": self._out.max_depth}
        counters = []
        for src in self.sources:
            c = getattr(src, "counters", None)
            counters.append({k: int(v) for k, v in dataclasses.asdict(c).items()} if dataclasses.is_dataclass(c)
                            else {})
        snap = self._counters.snapshot(depths, maxes, counters)
        for st, pol in zip(snap["streams"], self.policies, strict=True):
            st["policy"] = pol
        snap.update(batch=self.batch, batching=self._batching_report(), every=self.every,
                    queue_bound={"ingress": self._ingress.bound, "stage": self._pre_q.bound})
        snap["running"] = sum(t.is_alive() for t in self._threads)
        return snap

    def __enter__(self) -> StreamRun:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.stop(drain=exc_type is None)
        if exc_type is None:
            self.wait()
        else:
            quiet(self.wait)

    def _next(self) -> FrameResult | None:
        """The next result; None at the end (or on abort)."""
        while not self._done:
            self._tick()
            if self._abort.is_set():
                return None
            item = self._out.get(timeout=0.1)
            if item is DONE:
                self._done = True
            elif item is not None:
                return item
        return None

    def _tick(self) -> None:
        if self._status is not None and time.perf_counter() >= self._status_at:
            self._status_at = time.perf_counter() + self._status_interval
            self._status(self.stats())

    def _finish(self) -> None:
        if self._finished:
            return
        if not self._done and not self._abort.is_set():  # left before the end: stop, finish what is in flight
            self.stop()
            while self._next() is not None:
                pass
        deadline = time.perf_counter() + JOIN_LIMIT_S
        for t in self._threads:
            while t.is_alive() and time.perf_counter() < deadline:
                if not self._done:
                    self._abort.set()
                t.join(TICK)
        self._finished = True
        for src in self.sources:
            quiet(src.close)
        try:
            self._close_sinks(failed=self._error is not None)
        except Exception as e:  # noqa: BLE001 - named like a stage's failure
            self._error = self._error or ("sink", -1, e)
        if self.plan is not None:
            quiet(self.plan.close)
        if self._opencv:
            _opencv_threads(-1)
        if self._status is not None:
            quiet(lambda: self._status(self.stats()))
        if self._error is not None:
            stage, stream, exc = self._error
            raise UserError(self._message(stage, stream, exc)) from exc

    def _message(self, stage: str, stream: int, exc: BaseException) -> str:
        """``stream S (SPEC): STAGE failed: WHY`` on one line (a source's own "stream S (SPEC): " not repeated)."""
        why = one_line(exc, typed=not isinstance(exc, UserError))
        if not 0 <= stream < len(self.sources):
            return f"stream: {stage} failed: {why}"
        where = f"stream {stream} ({spec_of(self.sources[stream])})"
        return f"{where}: {stage} failed: {why.removeprefix(where + ': ')}"


_OPENCV: dict[str, int] = {"runs": 0, "saved": -1}
_OPENCV_LOCK = threading.Lock()


def _opencv_threads(delta: int, threads: int = 1) -> bool:
    """Count a run in (+1: the first sets OpenCV's threads, remembering the old count) or out (-1: the last
    restores it). False when OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return False
    with _OPENCV_LOCK:
        if delta > 0 and _OPENCV["runs"] == 0:
            _OPENCV["saved"] = cv2.getNumThreads()
            cv2.setNumThreads(int(threads))
        _OPENCV["runs"] += delta
        if delta < 0 and _OPENCV["runs"] == 0:
            cv2.setNumThreads(_OPENCV["saved"])
    return True
