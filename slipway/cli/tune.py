"""``slipway tune MODEL``: search engine configurations, write the winner beside the model."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slipway.cli.common import DATA_OPTION, SHAPE_OPTION, console, err_console, parse_shapes, print_json
from slipway.errors import UserError


def _load_metric(spec: str | None):
    if not spec:
        return None
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise UserError(f"bad --metric {spec!r}: expected MODULE:FUNCTION (for example mymetrics:top1_drop)")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot load --metric {spec!r}: {e}") from None
    if not callable(fn):
        raise UserError(f"--metric {spec!r} is not a function")
    return fn


def _ints(text: str | None, option: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {option} {text!r}: expected comma-separated integers") from None


def tune(
    model: Path = typer.Argument(..., help="ONNX model file (the winner is written beside it as MODEL.tune.json); "
                                           "with --server, a model folder REPO/MODEL of a serving repository"),
    objective: str = typer.Option("latency", "--objective", help="latency | throughput"),
    backend: str | None = typer.Option(None, "--backend", help="comma-separated backends (default: all available)"),
    precision: str | None = typer.Option(None, "--precision", help="comma-separated precisions (default: all)"),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms", help="p90 latency limit per request"),
    max_error: float = typer.Option(1e-2, "--max-error", help="accuracy budget: max relative output error vs FP32"),
    metric: str | None = typer.Option(None, "--metric", help="MODULE:FUNCTION(outputs, reference) -> drop"),
    max_drop: float | None = typer.Option(None, "--max-drop", help="budget for --metric's drop"),
    max_batch: int = typer.Option(32, "--max-batch", help="largest batch tried for --objective throughput"),
    data: Path | None = DATA_OPTION,
    inputs: Path | None = typer.Option(None, "--inputs", hidden=True, help="the old name of --data"),
    shape: list[str] = SHAPE_OPTION,
    seconds: float = typer.Option(0.4, "--time", help="seconds per configuration (finalists get 3x)"),
    no_write: bool = typer.Option(False, "--no-write", help="do not write MODEL.tune.json"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    server: bool = typer.Option(False, "--server", help="tune how `slipway serve` serves REPO/MODEL: instances x "
                                "threads x max batch x queue delay, measured with `slipway perf`; writes config.pbtxt"),
    protocol: str = typer.Option("grpc", "--protocol", "-i", help="--server: http | grpc"),
    concurrency: int | None = typer.Option(None, "--concurrency", help="--server: client concurrency (default 4 per "
                                           "CPU, at least 8)"),
    max_p99_ms: float | None = typer.Option(None, "--max-p99-ms", help="--server: p99 latency limit"),
    instances: str | None = typer.Option(None, "--instances", help="--server: instance counts to try, e.g. 1,2,4"),
    threads: str | None = typer.Option(None, "--threads", help="--server: intra-op threads to try, e.g. 1,2"),
    delays: str | None = typer.Option(None, "--delays-us", help="--server: queue delays to try (µs), e.g. 0,500"),
    report: Path | None = typer.Option(None, "--report", help="--server: write an HTML report"),
) -> None:
    """Search backend x precision x threads x batch x engine settings, coarse to fine, within an accuracy budget;
    with --server, search the serving configuration of a repository's model against a real server."""
    if server:
        _tune_server(model, protocol, concurrency, max_p99_ms, _ints(instances, "--instances"),
                     _ints(threads, "--threads"), max_batch, _ints(delays, "--delays-us"), seconds, not no_write,
                     report, as_json)
        return
    from slipway.tune import tune as run_tune

    names = [s.strip() for s in (backend or "").split(",") if s.strip()] or None
    precs = [s.strip() for s in (precision or "").split(",") if s.strip()] or None
    if seconds <= 0:
        raise UserError(f"--time must be positive, got {seconds}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} configs"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("tuning", total=None)
        result = run_tune(model, objective=objective, backends=names, precisions=precs, max_latency_ms=max_latency_ms,
                          max_error=max_error, metric=_load_metric(metric), max_drop=max_drop, max_batch=max_batch,
                          inputs=data if data is not None else inputs, shapes=parse_shapes(shape) or None,
                          time_per_config_s=seconds, write=not no_write,
                          progress=lambda done, _total, what: bar.update(task, completed=done,
                                                                         description=f"tuning: {what}"))
    if as_json:
        print_json(result.to_dict())
        return
    _print(result)


def _tune_server(model, protocol, concurrency, max_p99_ms, instances, threads, max_batch, delays, seconds, write,
                 report, as_json) -> None:
    from slipway.loadgen import Settings
    from slipway.servertune import tune_server

    if seconds <= 0:
        raise UserError(f"--time must be positive, got {seconds}")
    with Progress(TextColumn("{task.description}"), TextColumn("{task.completed} measured"), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("starting slipway serve", total=None)
        result = tune_server(model, protocol=protocol, concurrency=concurrency, max_p99_ms=max_p99_ms,
                             instances=instances, threads=threads, batch_limit=max_batch, delays_us=delays,
                             settings=Settings(window_s=max(seconds, 0.2) * 2.5, stability=0.1, max_trials=6,
                                               warmup_s=0.3),
                             write=write, report=report,
                             progress=lambda done, what: bar.update(task, completed=done, description=what))
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"{result.model}: configurations measured with slipway perf ({result.protocol}, concurrency "
                        f"{result.concurrency})", title_justify="left")
    for col in ("stage", "inst", "threads", "batch", "delay µs", "infer/s", "p50 ms", "p99 ms", "note"):
        table.add_column(col, justify="left" if col in ("stage", "note") else "right", no_wrap=col != "note")
    for p in result.points:
        style = "bold green" if p.key == result.winner.key and p.stage == "confirm" else ("" if p.feasible else "dim")
        table.add_row(p.stage, str(p.instances), str(p.threads or "auto"), str(p.max_batch or "off"),
                      str(p.delay_us) if p.max_batch else "-", _f(p.throughput, 0, ",."), _f(p.p50_ms),
                      _f(p.p99_ms), p.note, style=style)
    console.print(table)
    w, b = result.winner, result.baseline
    gain = f" ({w.throughput / b.throughput:.2f}x the model's own config)" if w.throughput and b.throughput else ""
    console.print(f"[bold]winner[/]: {w.describe()} - {_f(w.throughput, 0, ',.')} inferences/s, p99 "
                  f"{_f(w.p99_ms)} ms{gain}")
    if result.path:
        console.print(f"written to {result.path} (the old one kept as config.pbtxt.bak)")
    elif w is b:
        console.print("the model's own config stays: nothing beat it by more than 2 %")
    if result.report:
        console.print(f"report: {result.report}")


def _print(result) -> None:
    front = {id(c) for c in result.pareto()}
    table = Table(title="measured configurations (* = Pareto-optimal: latency vs throughput)", title_justify="left")
    for col in ("", "backend", "prec", "batch", "threads", "conc", "settings", "p50 ms", "p90 ms", "inf/s",
                "error", "stage"):
        table.add_column(col, justify="right" if col in ("batch", "threads", "conc", "p50 ms", "p90 ms", "inf/s")
                         else "left", overflow="fold")
    for c in sorted(result.candidates, key=lambda c: (c.p50_ms is None, c.p50_ms or 0)):
        mark = "*" if id(c) in front else ""
        style = "bold green" if c is result.winner else ("dim" if not c.feasible else "")
        table.add_row(mark, c.backend, c.precision, str(c.batch), str(c.threads or "auto"), str(c.concurrency),
                      ", ".join(f"{k}={v}" for k, v in c.settings.items()) or "-",
                      _f(c.p50_ms), _f(c.p90_ms), _f(c.throughput, 0, ",."), _f(c.error, 1, "e"),
                      c.stage + (f" ({c.note})" if c.note else ""), style=style)
    console.print(table)
    for key, why in result.skipped.items():
        err_console.print(f"[yellow]skipped {key}:[/] {why}")
    w = result.winner
    console.print(f"[bold]winner[/]: {w.key} - p50 {_f(w.p50_ms)} ms, p90 {_f(w.p90_ms)} ms, "
                  f"{_f(w.throughput, 0, ',.')} inferences/s")
    if result.path:
        console.print(f"settings written to {result.path} (applied by slipway.backends.load and the server)")


def _f(x: float | None, digits: int = 3, kind: str = "g") -> str:
    """``kind`` "g", "e", or ",." for thousands-separated fixed point."""
    if x is None:
        return "-"
    return f"{x:,.{digits}f}" if kind == ",." else f"{x:.{digits}{kind}}"


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)
