"""``slipway tune --server REPO/MODEL``: what Triton's Model Analyzer does, on CPU.

Searches model instances x intra-op threads x max batch x queue delay for the most inferences/s whose p99
latency stays under a limit, each point measured with ``slipway perf`` (:mod:`slipway.loadgen`) against a real
``slipway serve`` (:mod:`slipway.servertune.server`), every candidate loaded into the one server with the load
API's config override. A quick search, not the full product:

1. the model's own config (the baseline);
2. instances x threads: the splits of the usable CPUs (1 x N, 2 x N/2, ..., N x 1), batching as in the baseline;
3. max batch (the batcher's ``preferred_batch_size``; ``max_batch_size`` stays): no dynamic batching, then 2, 4,
   8, ... up to the model's limit and the client concurrency, stopping after two points that do not beat the best;
4. queue delay at the best max batch: 100, 500, 2000 µs (same stopping rule);
5. the best three and the baseline measured again with windows twice as long; the winner must beat the
   baseline by more than the noise (2 %), else the baseline stays.

Writes the winner as ``config.pbtxt`` (the old one kept as ``config.pbtxt.bak``) and an HTML report.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from slipway.cpus import usable_cpus
from slipway.errors import UserError, one_line
from slipway.loadgen import Settings, profile

__all__ = ["Point", "ServerTune", "tune_server"]

MARGIN = 0.02  # a candidate must beat the baseline by this much to replace it (run-to-run noise)
DELAYS_US = (100, 500, 2000)


@dataclass
class Point:
    """One measured configuration. ``max_batch`` 0: no dynamic batching."""

    instances: int
    threads: int
    max_batch: int
    delay_us: int
    stage: str
    throughput: float | None = None  # inferences / s
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    stable: bool = False
    feasible: bool = False
    note: str = ""

    @property
    def key(self) -> tuple[int, int, int, int]:
        return self.instances, self.threads, self.max_batch, self.delay_us

    def describe(self) -> str:
        batching = f"max batch {self.max_batch}, delay {self.delay_us} µs" if self.max_batch else "no batching"
        return f"{self.instances} instance(s) x {self.threads or 'auto'} thread(s), {batching}"


@dataclass
class ServerTune:
    model: str
    protocol: str
    concurrency: int
    max_p99_ms: float | None
    cpus: int
    baseline: Point
    winner: Point
    points: list[Point] = field(default_factory=list)
    config_text: str = ""
    path: Path | None = None
    report: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "protocol": self.protocol, "concurrency": self.concurrency,
                "max_p99_ms": self.max_p99_ms, "cpus": self.cpus, "baseline": asdict(self.baseline),
                "winner": asdict(self.winner), "points": [asdict(p) for p in self.points],
                "path": str(self.path) if self.path else None, "report": str(self.report) if self.report else None}


def _model_dir(path: str | os.PathLike) -> tuple[Path, str]:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{p}: not a model folder of a repository (expected REPO/MODEL with config.pbtxt and "
                        f"version folders)")
    if not (p / "config.pbtxt").is_file() and not any(c.is_dir() and c.name.isdigit() for c in p.iterdir()):
        raise UserError(f"{p}: has neither config.pbtxt nor a version folder (REPO/MODEL/1/model.onnx)")
    return p.resolve().parent, p.resolve().name


def candidate(base: dict[str, Any], p: Point) -> dict[str, Any]:
    """The config JSON of ``p``: ``base`` (the completed config) with its instance group, thread parameter and
    dynamic batching replaced. The batch the batcher forms is capped by ``preferred_batch_size``, so
    ``max_batch_size``, the largest batch a client may send, stays as the model has it."""
    cfg = copy.deepcopy(base)
    cfg["instance_group"] = [{"count": p.instances, "kind": "KIND_CPU"}]
    params = {k: v for k, v in (cfg.get("parameters") or {}).items() if k not in ("threads", "intra_op_thread_count")}
    cfg["parameters"] = params | {"intra_op_thread_count": {"string_value": str(p.threads)}}
    if p.max_batch:  # the batcher's largest batch; max_batch_size (what a client may send) stays the model's
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": p.delay_us, "preferred_batch_size": [p.max_batch]}
    else:
        cfg.pop("dynamic_batching", None)
    return cfg


def _splits(cpus: int) -> list[tuple[int, int]]:
    return [(i, cpus // i) for i in range(1, cpus + 1) if cpus % i == 0]


def _batches(limit: int) -> list[int]:
    out, b = [0], 2
    while b <= limit:
        out.append(b)
        b *= 2
    if limit > 1 and out[-1] != limit:
        out.append(limit)
    return out


class _Search:
    def __init__(self, server: Any, base: dict[str, Any], protocol: str, concurrency: int, max_p99_ms: float | None,
                 settings: Settings, progress: Callable[[int, str], None] | None) -> None:
        self.server, self.base, self.protocol = server, base, protocol
        self.concurrency, self.max_p99_ms, self.settings = concurrency, max_p99_ms, settings
        self.progress = progress
        self.points: list[Point] = []
        self.seen: dict[tuple[int, int, int, int], Point] = {}

    def measure(self, p: Point, config: dict[str, Any] | None = None, settings: Settings | None = None) -> Point:
        if settings is None and p.key in self.seen:
            return self.seen[p.key]
        if self.progress:
            self.progress(len(self.points), f"{p.stage}: {p.describe()}")
        p.throughput = p.p50_ms = p.p99_ms = None
        p.errors, p.stable, p.note = 0, False, ""
        try:
            self.server.load(config if config is not None else candidate(self.base, p))
            run = profile(self.server.url(self.protocol), self.server.name, protocol=self.protocol,
                          concurrency=[self.concurrency], settings=settings or self.settings)
            row = run.rows[0]
            p.throughput = row.get("inferences_per_s")
            p.p50_ms = row["p50_us"] / 1e3 if row.get("p50_us") is not None else None
            p.p99_ms = row["p99_us"] / 1e3 if row.get("p99_us") is not None else None
            p.errors, p.stable = int(row.get("errors", 0)), bool(row.get("stable"))
        except UserError as e:
            p.note = one_line(e)
        p.feasible = (p.throughput is not None and p.errors == 0
                      and (self.max_p99_ms is None or (p.p99_ms is not None and p.p99_ms <= self.max_p99_ms)))
        if p.errors and not p.note:
            p.note = f"{p.errors} failed requests"
        elif p.throughput is not None and not p.feasible:
            p.note = f"p99 {p.p99_ms:.3g} ms over the limit"
        self.points.append(p)
        self.seen.setdefault(p.key, p)
        return p

    def best(self, points: Sequence[Point]) -> Point | None:
        ok = [p for p in points if p.feasible]
        return max(ok, key=lambda p: p.throughput or 0.0) if ok else None

    def walk(self, points: Sequence[Point], best: Point | None) -> Point | None:
        """Measure ``points`` in order; stop after two in a row that do not beat the best so far."""
        misses = 0
        for p in points:
            m = self.measure(p)
            if best is None or (m.feasible and (m.throughput or 0) > (best.throughput or 0)):
                best, misses = (m if m.feasible else best), 0
            else:
                misses += 1
                if misses == 2:
                    break
        return best


def tune_server(model_dir: str | os.PathLike, *, protocol: str = "grpc", concurrency: int | None = None,
                max_p99_ms: float | None = None, instances: Sequence[int] | None = None,
                threads: Sequence[int] | None = None, max_batch: Sequence[int] | None = None,
                delays_us: Sequence[int] | None = None, batch_limit: int | None = None, settings: Settings | None = None, write: bool = True,
                report: str | os.PathLike | None = None,
                progress: Callable[[int, str], None] | None = None) -> ServerTune:
    """Search the serving configuration of the model folder ``model_dir`` (see the module docstring)."""
    from slipway.servertune.server import Server

    if protocol not in ("http", "grpc"):
        raise UserError(f"unknown protocol {protocol!r}: expected http or grpc")
    if max_p99_ms is not None and not max_p99_ms > 0:
        raise UserError(f"--max-p99-ms must be more than 0, got {max_p99_ms}")
    for label, values in (("instances", instances), ("threads", threads)):
        if values is not None and (not values or min(values) < 1):
            raise UserError(f"--{label} values must be at least 1, got {list(values)}")
    if max_batch is not None and (not max_batch or min(max_batch) < 0):
        raise UserError(f"--max-batch values must be 0 (no batching) or more, got {list(max_batch)}")
    if batch_limit is not None and batch_limit < 1:
        raise UserError(f"--max-batch must be at least 1, got {batch_limit}")
    if delays_us is not None and min(delays_us, default=0) < 0:
        raise UserError(f"--delay-us values must be 0 or more, got {list(delays_us)}")
    repository, name = _model_dir(model_dir)
    cpus = usable_cpus()
    concurrency = concurrency or max(8, 4 * cpus)
    if concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {concurrency}")
    settings = settings or Settings(window_s=1.0, stability=0.1, max_trials=6, warmup_s=0.3)
    with Server(repository, name) as server:
        base = server.config()
        if base.get("platform") == "ensemble":
            raise UserError(f"{name}: an ensemble has no engine settings of its own; tune its composing models")
        limit = int(base.get("max_batch_size") or 0)
        s = _Search(server, base, protocol, concurrency, max_p99_ms, settings, progress)
        group = (base.get("instance_group") or [{}])[0]
        own_threads = next((int(v.get("string_value", 0)) for k, v in (base.get("parameters") or {}).items()
                            if k in ("threads", "intra_op_thread_count")), 0)
        own_batch = (max((base["dynamic_batching"].get("preferred_batch_size") or [limit]), default=limit)
                     if "dynamic_batching" in base else 0)
        own_delay = int((base.get("dynamic_batching") or {}).get("max_queue_delay_microseconds", 0))
        baseline = s.measure(Point(int(group.get("count", 1)), own_threads, own_batch, own_delay, "baseline"),
                             config=base)
        pairs = ([(i, t) for i in instances or [1] for t in threads or [1]] if instances or threads
                 else _splits(cpus))
        if instances and not threads:
            pairs = [(i, max(1, cpus // i)) for i in instances]
        if threads and not instances:
            pairs = [(max(1, cpus // t), t) for t in threads]
        start_batch = own_batch if own_batch else (min(limit, concurrency) if limit else 0)
        best = s.best([s.measure(Point(i, t, start_batch, own_delay if own_batch else 0, "instances"))
                       for i, t in pairs])
        if best is not None and limit:
            cap = min(limit, concurrency, batch_limit or limit)
            sizes = [b for b in (max_batch if max_batch is not None else _batches(cap)) if b <= limit]
            best = s.walk([Point(best.instances, best.threads, b, 0, "batch") for b in sizes], best)
        if best is not None and best.max_batch:
            delays = [d for d in (delays_us if delays_us is not None else DELAYS_US) if d != best.delay_us]
            best = s.walk([Point(best.instances, best.threads, best.max_batch, d, "delay") for d in delays],
                          best)
        finalists = sorted((p for p in s.points if p.feasible and p is not baseline),
                           key=lambda p: -(p.throughput or 0))
        finalists = list({p.key: p for p in finalists[:3]}.values())
        longer = replace(settings, window_s=settings.window_s * 2)
        confirmed_base = s.measure(replace(baseline, stage="confirm"), config=base, settings=longer)
        confirmed = [s.measure(replace(p, stage="confirm"), settings=longer) for p in finalists]
        top = s.best(confirmed)
        if top is not None and (not confirmed_base.feasible
                                or (top.throughput or 0) > (confirmed_base.throughput or 0) * (1 + MARGIN)):
            winner, config = top, candidate(base, top)
        else:
            winner, config = confirmed_base, base
            if not confirmed_base.feasible and top is None:
                raise UserError(f"{name}: no configuration met the limit (p99 <= {max_p99_ms} ms at concurrency "
                                f"{concurrency}); best p99 seen "
                                f"{min((p.p99_ms for p in s.points if p.p99_ms), default=float('nan')):.3g} ms")
        # leave the server's reply as it is: the completed config (inputs, outputs, batching) is what it serves
        result = ServerTune(name, protocol, concurrency, max_p99_ms, cpus, confirmed_base, winner, s.points,
                            _config_text(config))
    if write and winner is not confirmed_base:
        result.path = _write_config(repository / name, result.config_text)
    if report is not None:
        from slipway.servertune.report import write_report

        result.report = Path(write_report(result, report))
    return result


def _config_text(config: dict[str, Any]) -> str:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    message = mc.ModelConfig()
    json_format.ParseDict(config, message, ignore_unknown_fields=True)
    return text_format.MessageToString(message)


def _write_config(folder: Path, text: str) -> Path:
    from slipway.model import atomic_write_text

    path = folder / "config.pbtxt"
    if path.is_file():
        atomic_write_text(folder / "config.pbtxt.bak", path.read_text(encoding="utf-8"))
    atomic_write_text(path, text)
    return path
