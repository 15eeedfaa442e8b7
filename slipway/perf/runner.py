"""Latency and throughput of a model over a sweep of engines, batch sizes, threads and concurrency.

For each configuration: ``concurrency`` sessions that share one copy of the weights are loaded
with one ``Backend.load`` call, each is warmed up (``warmup`` runs, cut short after half the
minimum time), then every session runs in its own thread (the engines release the GIL) on the
same inputs until :class:`~slipway.perf.stats.Budget` says stop. Latency is per request
(``Session.run`` as a caller sees it: input checks, engine, output arrays); throughput is
``batch x requests / wall clock`` from the common start to the last request's end.

Peak memory (``rss_mb``) is honest in one of two ways:

* ``isolate=True`` (the CLI's default): each configuration runs in a fresh Python process and
  ``rss_mb`` is that process's kernel high-water mark (``VmHWM``): interpreter, engine, model,
  buffers — exact, and nothing from another configuration. Starting the process (about 1.5 s
  of imports) is not timed. It also keeps one engine's thread pools out of the next's way.
* ``isolate=False``: the configurations run here and ``rss_mb`` is the peak ``VmRSS`` sampled
  every 5 ms while the configuration loaded and ran. It includes what this process already
  held (the interpreter, libraries, memory earlier configurations did not give back).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slipway import backends as engines
from slipway.errors import SlipwayError, UserError
from slipway.model import ModelLike, as_model, save
from slipway.perf.feeds import make_feeds
from slipway.perf.stats import Budget, RssSampler, peak_rss_mb, summarize
from slipway.verify.inputs import Feeds, InputsLike

__all__ = ["BenchResult", "Config", "benchmark", "run_config", "measure", "usable_backends"]

Progress = Callable[[int, int, str], None]  # (configurations done, total, what runs next)


@dataclass(frozen=True)
class Config:
    backend: str
    batch: int
    threads: int
    concurrency: int

    @property
    def label(self) -> str:
        """``b8 t2 c1`` (batch, threads, concurrency); no ``t`` part for the engine's default threads."""
        return f"b{self.batch}{f' t{self.threads}' if self.threads else ''} c{self.concurrency}"


@dataclass
class BenchResult:
    backend: str
    batch: int
    threads: int  # Options.threads given to the engine (intra-op threads); 0 = the engine's default
    concurrency: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # inferences (samples) per second: batch x requests / wall clock
    rss_mb: float | None
    runs: int  # timed requests, all instances together
    stable: bool  # the median settled before the time limit
    min_ms: float = 0.0
    max_ms: float = 0.0
    wall_s: float = 0.0

    @property
    def config(self) -> Config:
        return Config(self.backend, self.batch, self.threads, self.concurrency)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Measurement:
    latencies_ms: list[float]
    wall_s: float
    stable: bool


def measure(sessions: Sequence[engines.Session], feeds: Feeds, budget: Budget) -> Measurement:
    """Warm up, then run every session in its own thread until the budget says stop."""
    n = len(sessions)
    samples: list[list[float]] = [[] for _ in range(n)]
    spans = [[0.0, 0.0] for _ in range(n)]
    stop = threading.Event()
    barrier = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        session, out, clock = sessions[i], samples[i], time.perf_counter
        try:
            deadline = clock() + budget.warmup_limit_s
            for _ in range(budget.warmup):
                session.run(feeds)
                if clock() >= deadline:  # a slow model: one or two runs warm it up as well as five
                    break
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            stop.set()
        barrier.wait()
        if errors:
            return
        spans[i][0] = spans[i][1] = clock()
        try:
            while True:  # at least one timed request per instance
                t0 = clock()
                session.run(feeds)
                t1 = clock()
                out.append((t1 - t0) * 1e3)
                spans[i][1] = t1
                if stop.is_set():
                    break
        except BaseException as e:
            errors.append(e)
            stop.set()

    workers = [threading.Thread(target=worker, args=(i,), name=f"slipway-bench-{i}", daemon=True) for i in range(n)]
    for w in workers:
        w.start()
    barrier.wait()
    _watch(samples, budget, stop, time.perf_counter())
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    latencies = [v for s in samples for v in s]
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return Measurement(latencies, wall, budget.stable(samples))


def _watch(samples: list[list[float]], budget: Budget, stop: threading.Event, start: float) -> None:
    """Check the budget now and then: checks get rarer as they get costlier (kept under ~2% of the
    time, at most every 0.25 s), and never sleep past the time limit."""
    interval = min(max(budget.min_time_s / 20, 0.005), 0.1)
    limit = budget.time_limit_s
    while not stop.wait(max(min(interval, limit - (time.perf_counter() - start)), 0.0005)):
        t0 = time.perf_counter()
        if budget.done(t0 - start, samples):
            stop.set()
        interval = min(max(interval, 50 * (time.perf_counter() - t0)), 0.25)


def run_config(model: Any, config: Config, feeds: Feeds, budget: Budget,
               settings: Mapping[str, Any] | None = None, *, peak: str = "sampled",
               precision: str = "fp32") -> BenchResult:
    """Load ``config.concurrency`` weight-sharing sessions, measure them, close them.

    ``peak="sampled"``: rss_mb is the sampled VmRSS peak during this call; ``"process"``: the
    process's high-water mark (for a process that runs this configuration only).
    """
    engine = engines.get(config.backend)
    options = engines.Options(threads=config.threads, precision=precision, settings=dict(settings or {}))
    with RssSampler() as rss:
        sessions = engine.load(model, options, instances=config.concurrency)
        try:
            m = measure(sessions, feeds, budget)
        except MemoryError:
            raise UserError(f"batch {config.batch} is too large for memory on {config.backend}: "
                            "use a smaller batch") from None
        finally:
            for s in sessions:
                s.close()
    s = summarize(m.latencies_ms)
    throughput = config.batch * s.runs / m.wall_s if m.wall_s > 0 else 0.0
    rss_mb = peak_rss_mb() if peak == "process" else rss.peak_mb
    return BenchResult(config.backend, config.batch, config.threads, config.concurrency, s.p50_ms, s.p90_ms,
                       s.p99_ms, s.mean_ms, throughput, rss_mb, s.runs, m.stable, s.min_ms, s.max_ms, m.wall_s)


def usable_backends(names: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The requested backends that run here, and why each other one does not."""
    usable, skipped = [], {}
    for name in names:
        if name not in engines.BACKENDS:
            engines.get(name)  # the one-line "unknown backend" error
        try:
            why = engines.get(name).available()
        except ImportError as e:
            why = str(e)
        if why:
            skipped[name] = why
        else:
            usable.append(name)
    return usable, skipped


def backend_settings(settings: Mapping[str, Any] | None, backend: str) -> dict[str, Any]:
    """Settings for one backend: plain keys apply to every backend, ``"name:key"`` to that one only."""
    out: dict[str, Any] = {}
    for key, value in (settings or {}).items():
        owner, sep, name = key.rpartition(":")
        if not sep:
            out[key] = value
        elif owner == backend:
            out[name] = value
        elif owner not in engines.BACKENDS:
            raise UserError(f"setting {key!r} names unknown backend {owner!r} (choose from {', '.join(engines.BACKENDS)})")
    return out


def _unique(values: Iterable[int], what: str, low: int) -> list[int]:
    out: list[int] = []
    for v in values:
        if int(v) != v or v < low:
            raise UserError(f"{what} must be whole numbers of at least {low}, got {v}")
        if int(v) not in out:
            out.append(int(v))
    if not out:
        raise UserError(f"give at least one {what} value")
    return out


def benchmark(
    model: ModelLike,
    *,
    backends: Sequence[str] = ("ort",),
    batches: Sequence[int] | None = None,
    threads: Sequence[int] = (0,),
    concurrency: Sequence[int] = (1,),
    inputs: InputsLike | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    warmup: int = 5,
    min_time_s: float = 2.0,
    max_time_s: float | None = None,
    min_runs: int = 10,
    max_runs: int | None = None,
    settings: Mapping[str, Any] | None = None,
    isolate: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Measure every (backend, batch, threads, concurrency) combination; see the module docstring.

    ``batches`` defaults to the data's batch, else 1 (or the model's static batch). ``inputs`` is a dict of arrays or an
    ``.npz`` path (see :mod:`slipway.perf.feeds`); without it inputs are random, and ``shapes``
    sizes the dynamic dims other than the batch. Backends not available here are skipped with
    a warning (``warn``, default :func:`warnings.warn`); if none is left it is a UserError.
    """
    budget = Budget(warmup, min_time_s, max_time_s, min_runs, max_runs)
    thread_list = _unique(threads, "threads", 0)
    conc_list = _unique(concurrency, "concurrency", 1)
    names = _pick_backends(backends, settings, warn or _warn)
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        source, feeds = _prepare(model, batches, inputs, shapes, seed, Path(tmp) if isolate else None)
        configs = [Config(*c) for c in itertools.product(names, feeds, thread_list, conc_list)]
        runner = _Isolated(source, feeds, budget, settings, Path(tmp)) if isolate else None
        results = []
        for k, c in enumerate(configs):
            if progress:
                progress(k, len(configs), f"{c.backend} {c.label}")
            if runner is not None:
                results.append(runner(c))
            else:
                results.append(run_config(source, c, feeds[c.batch], budget, backend_settings(settings, c.backend)))
        if progress:
            progress(len(configs), len(configs), "done")
    return results


def _pick_backends(requested: Sequence[str], settings: Mapping[str, Any] | None,
                   warn: Callable[[str], None]) -> list[str]:
    names, skipped = usable_backends(dict.fromkeys(requested))
    for name in names:
        backend_settings(settings, name)
    if not names:
        raise UserError("no requested backend is available here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    for name, why in skipped.items():
        warn(f"skipping backend {name!r}: {why}")
    return names


def _prepare(model: ModelLike, batches: Sequence[int] | None, inputs: InputsLike | None,
             shapes: Mapping[str, Sequence[int]] | None, seed: int, tmp: Path | None) -> tuple[Any, dict[int, Feeds]]:
    """What the engines load and the feeds per batch, every input error raised before anything runs.

    A model given as a path is passed on as the path, so the graph loaded here for the input
    specs is freed before measuring (it would otherwise count in the in-process peak memory).
    ``tmp`` (isolated runs): where an in-memory model is saved for the fresh processes.
    """
    m = as_model(model)
    feeds = make_feeds(m, None if batches is None else _unique(batches, "batch sizes", 1), inputs, shapes, seed)
    if isinstance(model, (str, os.PathLike)):
        return str(Path(model).resolve()), feeds
    return (str(save(m, tmp / "model.onnx")) if tmp is not None else m), feeds


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


class _Isolated:
    """Runs each configuration in a fresh process (``python -m slipway.perf._worker``)."""

    def __init__(self, source: str, feeds: dict[int, Feeds], budget: Budget, settings: Mapping[str, Any] | None,
                 tmp: Path) -> None:
        self.source, self.budget, self.settings, self.tmp = source, budget, settings, tmp
        self.feed_files: dict[int, str] = {}
        self.names = list(next(iter(feeds.values()), {}))
        for b, f in feeds.items():
            path = tmp / f"feeds_b{b}.npz"
            np.savez(path, *f.values())  # positional: an input may be called "file"
            self.feed_files[b] = str(path)

    def __call__(self, c: Config) -> BenchResult:
        spec_path, result_path = self.tmp / "spec.json", self.tmp / "result.json"
        result_path.unlink(missing_ok=True)
        spec = {"model": self.source, "config": asdict(c), "feeds": self.feed_files[c.batch], "names": self.names,
                "budget": asdict(self.budget), "settings": backend_settings(self.settings, c.backend),
                "result": str(result_path)}
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, "-m", "slipway.perf._worker", str(spec_path)],
                              capture_output=True, text=True, env=os.environ.copy())
        if not result_path.exists():
            tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise SlipwayError(f"benchmark process for {c.backend} {c.label} failed: {tail}")
        out = json.loads(result_path.read_text())
        if "error" in out:
            raise UserError(out["error"])
        return BenchResult(**out)
