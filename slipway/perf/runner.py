"""Latency and throughput of a model over a sweep of engines, batch sizes, threads and concurrency.

For each configuration: ``concurrency`` sessions that share one copy of the weights are loaded
with one ``Backend.load`` call, each is warmed up (``warmup`` runs, cut short after half the
minimum time), then every session runs in its own thread (the engines release the GIL) on the
same inputs until :class:`~slipway.perf.stats.Budget` says stop. Latency is per request
(``Session.run`` as a caller sees it: input checks, engine, output arrays); throughput is
``batch x requests / wall clock`` from the common start to the last request's end.

Precision is an axis too (``precisions``): "fp32" by default; "fp16" / "bf16" where the engine converts
itself; "int8" keeps each engine's meaning: onnxruntime and OpenVINO run an already quantized (Q/DQ) model
as it is (a float model is skipped with a warning: ``slipway quantize`` makes the QDQ model), while the
engines that quantize their own files (mnn, ncnn: :mod:`slipway.backends.edge_int8`) need ``calib``, the
calibration data (anything ``slipway quantize --calib`` reads). Their INT8 files are built and verified (or
found in the conversion cache) before any configuration is measured, so neither the quantization's time nor
its memory is charged to a configuration.

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
from slipway.backends.base import PRECISIONS
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
    precision: str = "fp32"

    @property
    def label(self) -> str:
        """``b8 t2 c1`` (batch, threads, concurrency); no ``t`` part for the engine's default threads; the
        precision last when it is not fp32 (``b1 c1 int8``)."""
        return (f"b{self.batch}{f' t{self.threads}' if self.threads else ''} c{self.concurrency}"
                f"{f' {self.precision}' if self.precision != 'fp32' else ''}")


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
    precision: str = "fp32"  # Options.precision the engine ran in

    @property
    def config(self) -> Config:
        return Config(self.backend, self.batch, self.threads, self.concurrency, self.precision)

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
               precision: str | None = None) -> BenchResult:
    """Load ``config.concurrency`` weight-sharing sessions, measure them, close them.

    ``peak="sampled"``: rss_mb is the sampled VmRSS peak during this call; ``"process"``: the
    process's high-water mark (for a process that runs this configuration only). ``precision``
    (default: ``config.precision``) is the engine's ``Options.precision``.
    """
    engine = engines.get(config.backend)
    precision = precision or config.precision
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
                       s.p99_ms, s.mean_ms, throughput, rss_mb, s.runs, m.stable, s.min_ms, s.max_ms, m.wall_s,
                       precision)


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
    precisions: Sequence[str] = ("fp32",),
    calib: str | os.PathLike | None = None,
) -> list[BenchResult]:
    """Measure every (backend, precision, batch, threads, concurrency) combination; see the module docstring.

    ``batches`` defaults to the data's batch, else 1 (or the model's static batch). ``inputs`` is a dict of arrays or an
    ``.npz`` path (see :mod:`slipway.perf.feeds`); without it inputs are random, and ``shapes``
    sizes the dynamic dims other than the batch. Backends not available here are skipped with
    a warning (``warn``, default :func:`warnings.warn`); if none is left it is a UserError.
    A (backend, precision) pair the backend does not run is skipped the same way; ``calib`` is the
    calibration data of precision int8 on the engines that quantize their own files (mnn, ncnn).
    """
    budget = Budget(warmup, min_time_s, max_time_s, min_runs, max_runs)
    thread_list = _unique(threads, "threads", 0)
    conc_list = _unique(concurrency, "concurrency", 1)
    say = warn or _warn
    names = _pick_backends(backends, settings, say)
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        source, feeds = _prepare(model, batches, inputs, shapes, seed, Path(tmp) if isolate else None)
        pairs = _pick_precisions(source, names, precisions, calib, settings, say)
        config_settings = {bp: _settings(settings, *bp, calib) for bp in pairs}
        _build_int8(source, pairs, config_settings, progress)
        configs = [Config(b, batch, t, c, p) for (b, p), batch, t, c in
                   itertools.product(pairs, feeds, thread_list, conc_list)]
        runner = _Isolated(source, feeds, budget, config_settings, Path(tmp)) if isolate else None
        results = []
        for k, c in enumerate(configs):
            if progress:
                progress(k, len(configs), f"{c.backend} {c.label}")
            if runner is not None:
                results.append(runner(c))
            else:
                results.append(run_config(source, c, feeds[c.batch], budget,
                                          config_settings[(c.backend, c.precision)]))
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


def _quantizes_itself(backend: str) -> bool:
    """Does this engine make its own INT8 files from calibration data (mnn, ncnn: edge_int8.Int8Backend)?"""
    return getattr(engines.get(backend), "quantizer", None) is not None


def _has_qdq(source: Any) -> bool:
    import onnx_ir as ir

    from slipway.tune import QUANTIZED_OPS

    m = as_model(source)
    return any(n.op_type in QUANTIZED_OPS for n in ir.traversal.RecursiveGraphIterator(m.graph))


def _pick_precisions(source: Any, names: Sequence[str], precisions: Sequence[str], calib: str | os.PathLike | None,
                     settings: Mapping[str, Any] | None, warn: Callable[[str], None]) -> list[tuple[str, str]]:
    """The (backend, precision) pairs to measure, in order; pairs a backend does not run are skipped with a
    warning, int8 without calibration data on an engine that needs it is an error."""
    wanted = list(dict.fromkeys(precisions))
    if not wanted:
        raise UserError("give at least one precision")
    for p in wanted:
        if p not in PRECISIONS:
            raise UserError(f"unknown precision {p!r} (choose from {', '.join(PRECISIONS)})")
    qdq = _has_qdq(source) if "int8" in wanted and not all(_quantizes_itself(b) for b in names) else False
    pairs, skipped = [], []
    for b in names:
        offered = engines.get(b).precisions
        for p in wanted:
            if p not in offered:
                skipped.append(f"{b} {p}: {b} runs {', '.join(offered)} here")
            elif p == "int8" and _quantizes_itself(b):
                if calib is None and "calib" not in backend_settings(settings, b):
                    raise UserError(f"--precision int8 on {b} needs calibration data: give --calib DATA (an .npz of "
                                    f"the inputs by name, a .npy, or a folder of them or of images, as slipway "
                                    f"quantize --calib takes)")
                pairs.append((b, p))
            elif p == "int8" and not qdq:
                skipped.append(f"{b} int8: {b} runs an already quantized (Q/DQ) model in int8 and this model has "
                               f"no Q/DQ nodes (make one with slipway quantize)")
            else:
                pairs.append((b, p))
    if calib is not None and not any(p == "int8" and _quantizes_itself(b) for b, p in pairs):
        raise UserError("--calib is calibration data for --precision int8 on mnn / ncnn; no such configuration "
                        "is measured")
    if not pairs:
        raise UserError("no requested backend runs the requested precision here: " + "; ".join(skipped))
    for why in skipped:
        warn(f"skipping {why}")
    return pairs


def _settings(settings: Mapping[str, Any] | None, backend: str, precision: str,
              calib: str | os.PathLike | None) -> dict[str, Any]:
    """One (backend, precision)'s engine settings: the INT8 settings (calib, calib_method, calib_samples)
    only where an engine quantizes itself to int8, calib from ``calib``."""
    from slipway.backends.edge_int8 import INT8_SETTINGS

    out = backend_settings(settings, backend)
    if precision == "int8" and _quantizes_itself(backend):
        if calib is not None:
            out["calib"] = str(Path(calib).resolve())
    else:
        for key in INT8_SETTINGS:
            out.pop(key, None)
    return out


def _build_int8(source: Any, pairs: Sequence[tuple[str, str]], settings: Mapping[tuple[str, str], dict[str, Any]],
                progress: Progress | None) -> None:
    """Build (or find in the cache) and verify the INT8 files of the engines that quantize themselves,
    before anything is measured: every error first, no quantization inside a timed or RSS-sampled run."""
    for b, p in pairs:
        if p == "int8" and _quantizes_itself(b):
            if progress:
                progress(0, 0, f"{b} int8: quantizing (once, cached)")
            for s in engines.get(b).load(source, engines.Options(threads=1, precision=p, settings=settings[(b, p)])):
                s.close()


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

    def __init__(self, source: str, feeds: dict[int, Feeds], budget: Budget,
                 settings: Mapping[tuple[str, str], dict[str, Any]], tmp: Path) -> None:
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
                "budget": asdict(self.budget), "settings": self.settings[(c.backend, c.precision)],
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
