"""The load and its windows: closed loop (N clients, each sends when its last reply came) and
open loop (requests at a constant or Poisson rate, latency from the *intended* send time).

One load level runs continuously while windows follow one another (by time, or by a count of
finished requests) until the last three agree — throughput and latency (mean, or ``percentile``)
each within ``stability`` of their mean — or ``max_trials`` windows have passed. The first window
opens after ``warmup_s`` of unmeasured load and, in a closed loop, once every client has had a
reply (a slow model's first replies are not a start-up transient in the measurement). The server's
statistics (and process CPU / RSS) are snapshotted at every window boundary. An open loop keeps at
most ``max_inflight`` requests outstanding; when the server cannot keep up, sends fall behind the
schedule, and that lag is both reported and counted in the latency (no coordinated omission).

With validation (a :class:`Validator` per request), each reply is decoded (the time taken is the
request's "Client Recv", and part of its latency) and checked against its expected outputs; a
reply that does not match is an error of kind "wrong output", never a latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slipway.errors import UserError, one_line
from slipway.loadgen.client import Endpoint, RequestFailed, absent, scrape_metrics
from slipway.loadgen.window import Window, process_sample, totals

__all__ = ["Settings", "Level", "Probe", "Validator", "run_level", "WRONG"]

WARM_LIMIT_S = 120.0
WRONG = "wrong output: "  # the start of a validation failure's message


@dataclass(frozen=True)
class Settings:
    window_s: float = 5.0  # time windows (perf_analyzer's --measurement-interval, 5000 ms)
    window_requests: int = 0  # > 0: count windows of this many finished requests instead
    stability: float = 0.10
    max_trials: int = 10
    warmup_s: float = 0.5  # unmeasured load before each level's first window (closed loop: and until every
    # client had a reply, at most WARM_LIMIT_S more, so that the first window is not a start-up transient)
    percentile: int | None = None  # judge stability (and report latency) on this percentile, else the mean
    distribution: str = "constant"  # open loop: constant | poisson
    max_inflight: int = 512  # open loop: outstanding requests at most
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise UserError(f"the measurement interval must be more than 0, got {self.window_s} s")
        if self.window_requests < 0:
            raise UserError(f"the measurement request count must be 0 or more, got {self.window_requests}")
        if not 0 < self.stability < 1:
            raise UserError(f"the stability percentage must be in (0, 100), got {100 * self.stability:g}")
        if self.max_trials < 3:
            raise UserError(f"max trials must be at least 3 (stability compares the last three), got {self.max_trials}")
        if self.percentile is not None and not 0 < self.percentile < 100:
            raise UserError(f"--percentile must be in (0, 100), got {self.percentile}")
        if self.distribution not in ("constant", "poisson"):
            raise UserError(f"unknown request distribution {self.distribution!r}: expected constant or poisson")
        if self.max_inflight < 1:
            raise UserError(f"max in-flight requests must be at least 1, got {self.max_inflight}")


@dataclass
class Probe:
    """Where the server's counters are read: the model (and an ensemble's composing models), and the
    server process's CPU / RSS from a metrics endpoint or a local pid."""

    endpoint: Endpoint
    models: Sequence[str]
    metrics_url: str | None = None
    pid: int | None = None
    session: Any = None  # aiohttp session for the metrics endpoint
    unavailable: str | None = None  # why the server's statistics cannot be read (no extension, restricted)

    async def stats(self) -> dict[str, dict[str, int]]:
        """The models' statistics totals; {} when the server has no statistics extension or refuses it (the
        first refusal is kept in ``unavailable`` and the statistics are not asked for again)."""
        if self.unavailable is not None:
            return {}
        try:
            answers = await asyncio.gather(*(self.endpoint.stats(m) for m in self.models))
        except (RequestFailed, UserError) as e:
            if not absent(e):
                raise
            self.unavailable = one_line(e)
            return {}
        return {m: totals(a) for m, a in zip(self.models, answers, strict=True)}

    async def server(self) -> dict[str, float]:
        if self.pid is not None:
            return process_sample(self.pid)
        if self.metrics_url and self.session is not None:
            try:
                return await scrape_metrics(self.session, self.metrics_url)
            except Exception:  # a metrics endpoint that went away must not stop the measurement
                return {}
        return {}


@dataclass(frozen=True)
class Validator:
    """How one request's reply is checked: its expected outputs, and where its outputs lie in shared memory."""

    expected: Any  # slipway.loadgen.inputs.Expected
    shm: Mapping[str, tuple[Any, int, int]] | None = None  # output -> (buffer, offset, byte size)

    def __call__(self, endpoint: Endpoint, reply: Any) -> tuple[str | None, float]:
        """(None, or the "wrong output" message; seconds spent decoding)."""
        t0 = time.perf_counter()
        try:
            outputs = endpoint.decode(reply, self.shm)
        except Exception as e:  # noqa: BLE001 - a reply that cannot be read is a wrong one
            return f"{WRONG}the reply cannot be decoded: {one_line(e)}", time.perf_counter() - t0
        recv = time.perf_counter() - t0
        problem = self.expected.check(outputs)
        return (WRONG + problem if problem else None), recv


@dataclass
class Level:
    mode: str  # "concurrency" | "request_rate"
    value: float
    windows: list[Window]
    stable: bool
    sent: int = 0  # requests sent during the level (warm-up included)


def _agree(values: Sequence[float], tolerance: float) -> bool:
    mean = sum(values) / len(values)
    return mean > 0 and all(abs(v - mean) <= tolerance * mean for v in values)


def stable(windows: Sequence[Window], settings: Settings) -> bool:
    last = windows[-3:]
    if len(last) < 3 or any(not w.latencies for w in last):
        return False
    return (_agree([len(w.latencies) / w.seconds for w in last], settings.stability)
            and _agree([w.latency_metric(settings.percentile) for w in last], settings.stability))


class _Run:
    """The windows of one level, switched while requests keep finishing."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: Window | None = None  # None during warm-up
        self.full = asyncio.Event()
        self.stop = asyncio.Event()
        self.sent = 0
        self.replied: set[int] = set()  # closed loop: the clients that had a reply (or an error)

    def done(self, intended: float, sent: float, error: str | None, finished: float | None = None,
             recv: float | None = None) -> None:
        w = self.current
        if w is None:
            return
        w.done(intended, sent, time.perf_counter() if finished is None else finished, error, recv)
        if self.settings.window_requests and w.finished >= self.settings.window_requests:
            self.full.set()

    async def send(self, endpoint: Endpoint, request: Any, intended: float, validator: Validator | None = None
                   ) -> None:
        self.sent += 1
        sent = time.perf_counter()
        if validator is None:
            try:
                await endpoint.infer(request)
                error = None
            except RequestFailed as e:
                error = str(e)
            self.done(intended, sent, error)
            return
        try:
            reply = await endpoint.infer(request, reply=True)
        except RequestFailed as e:
            self.done(intended, sent, str(e))
            return
        finished = time.perf_counter()
        error, recv = validator(endpoint, reply)
        self.done(intended, sent, error, finished + recv, recv)


async def _closed(run: _Run, endpoint: Endpoint, requests: Sequence[Any], concurrency: int,
                  validators: Sequence[Validator] | None) -> None:
    async def client(me: int) -> None:
        k = me
        while not run.stop.is_set():
            i = k % len(requests)
            k += concurrency
            await run.send(endpoint, requests[i], time.perf_counter(), validators[i] if validators else None)
            run.replied.add(me)

    await asyncio.gather(*(client(c) for c in range(concurrency)))


async def _open(run: _Run, endpoint: Endpoint, requests: Sequence[Any], rate: float, settings: Settings,
                validators: Sequence[Validator] | None) -> None:
    rng = np.random.default_rng(settings.seed)
    slots = asyncio.Semaphore(settings.max_inflight)
    tasks: set[asyncio.Task] = set()

    async def one(i: int, intended: float) -> None:
        try:
            await run.send(endpoint, requests[i], intended, validators[i] if validators else None)
        finally:
            slots.release()

    intended, k = time.perf_counter(), 0
    while not run.stop.is_set():
        intended += rng.exponential(1 / rate) if settings.distribution == "poisson" else 1 / rate
        delay = intended - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        await slots.acquire()  # at max_inflight: the send waits, and its lag counts
        if run.stop.is_set():
            slots.release()
            break
        task = asyncio.create_task(one(k % len(requests), intended))
        k += 1
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_level(endpoint: Endpoint, requests: Sequence[Any], probe: Probe, settings: Settings, mode: str,
                    value: float, on_window: Callable[[Window], None] | None = None,
                    validators: Sequence[Validator] | None = None) -> Level:
    """Load at one level (a concurrency or a request rate) until stable or ``max_trials`` windows;
    ``validators``: one per request (the same order), to decode and check every reply."""
    run = _Run(settings)
    if mode == "concurrency":
        load = asyncio.create_task(_closed(run, endpoint, requests, int(value), validators))
    else:
        load = asyncio.create_task(_open(run, endpoint, requests, float(value), settings, validators))
    windows: list[Window] = []
    try:
        await _wait(load, settings.warmup_s)
        deadline = time.perf_counter() + WARM_LIMIT_S
        while mode == "concurrency" and len(run.replied) < int(value) and time.perf_counter() < deadline \
                and not load.done():
            await _wait(load, 0.01)
        stats, server = await probe.stats(), await probe.server()
        while len(windows) < settings.max_trials and not load.done():
            w = run.current = Window()
            w.stats0, w.server0 = stats, server
            run.full.clear()
            if settings.window_requests:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(run.full.wait(), max(60.0, settings.window_s))
            else:
                await _wait(load, settings.window_s)
            w.close()
            stats, server = await probe.stats(), await probe.server()
            w.stats1, w.server1 = stats, server
            windows.append(w)
            if on_window is not None:
                on_window(w)
            if stable(windows, settings) or (w.errors and not w.latencies):
                break  # settled, or every request now fails: nothing more to learn at this level
    finally:
        run.current = None
        run.stop.set()
        try:
            await asyncio.wait_for(load, 60.0)
        except asyncio.TimeoutError:
            load.cancel()
    if load.done() and not load.cancelled() and load.exception() is not None:
        raise load.exception()
    return Level(mode, value, windows, stable(windows, settings), run.sent)


async def _wait(load: asyncio.Task, seconds: float) -> None:
    """Sleep ``seconds``, or less if the load stopped (a bug in it surfaces at once)."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(load), seconds)
