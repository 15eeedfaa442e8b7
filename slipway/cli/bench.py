"""``slipway bench MODEL``: latency and throughput over engines, batch sizes, threads and concurrency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slipway.cli.common import DATA_OPTION, SHAPE_OPTION, console, err_console, parse_shapes, print_json
from slipway.errors import UserError


def bench(
    model: Path = typer.Argument(..., help="ONNX model file"),
    backend: str = typer.Option("ort", "--backend", help="engines to compare, comma-separated (ort,openvino,...)"),
    batch: str = typer.Option(None, "--batch", help="batch sizes, comma-separated (default: the --inputs batch, else 1 or the model's static batch)"),
    threads: str = typer.Option("0", "--threads", help="intra-op threads (Options.threads), comma-separated; 0 = engine default"),
    concurrency: str = typer.Option("1", "--concurrency", help="concurrent instances (weights shared), comma-separated"),
    data: Path | None = DATA_OPTION,
    inputs: Path | None = typer.Option(None, "--inputs", hidden=True, help="the old name of --data"),
    shape: list[str] = SHAPE_OPTION,
    min_time: float = typer.Option(2.0, "--time", help="seconds to measure each configuration at least"),
    max_time: float | None = typer.Option(None, "--max-time", help="stop a configuration here even if unstable (default: 3 x --time, at least --time + 1)"),
    warmup: int = typer.Option(5, "--warmup", help="warm-up runs per instance, not timed"),
    min_runs: int = typer.Option(10, "--min-runs", help="timed requests per configuration at least"),
    setting: list[str] = typer.Option(None, "--setting", help="engine setting KEY=VALUE or BACKEND:KEY=VALUE (repeatable)"),
    precision: str = typer.Option("fp32", "--precision", help="precisions, comma-separated (fp32,fp16,bf16,int8); int8: a QDQ model as it is on ort / openvino, the engine's own INT8 from --calib on mnn / ncnn"),
    calib: Path | None = typer.Option(None, "--calib", help="calibration data for --precision int8 on mnn / ncnn (as slipway quantize --calib: .npz / .npy / a folder of them or of images)"),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="run each configuration in a fresh process (exact peak memory)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON (nothing else on stdout)"),
    report: Path | None = typer.Option(None, "--report", help="write a self-contained HTML report here"),
) -> None:
    """Measure p50/p90/p99 latency, throughput and peak memory for every combination of the options."""
    from slipway.model import check_output
    from slipway.perf import benchmark

    check_output(report, model, what="--report")
    if not min_time > 0:
        raise UserError(f"--time must be more than 0 seconds, got {min_time}")
    options = dict(
        backends=parse_names(backend),
        batches=None if batch is None else parse_ints(batch, "--batch", 1),
        threads=parse_ints(threads, "--threads", 0),
        concurrency=parse_ints(concurrency, "--concurrency", 1),
        inputs=data if data is not None else inputs, shapes=parse_shapes(shape) or None, warmup=warmup, min_time_s=min_time,
        max_time_s=max_time, min_runs=min_runs, settings=parse_settings(setting), isolate=isolate,
        precisions=parse_names(precision, "--precision"), calib=calib,
    )
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("loading", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=f"bench {what}")

        def warn(message: str) -> None:
            err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)

        results = benchmark(model, progress=progress, warn=warn, **options)
    if report is not None:
        from slipway.perf.report import environment, write_report

        notes = {**run_notes(options, inputs), **environment()}
        write_report(results, report, model_name=model.name, notes=notes)
        err_console.print(f"report written to {report}")
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    print_results(results)


def parse_names(text: str, option: str = "--backend") -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"{option} needs at least one {option[2:]} name")
    return names


def parse_ints(text: str, option: str, low: int) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``; every value a whole number of at least ``low``."""
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = int(part)
        except ValueError:
            raise UserError(f"bad {option} {text!r}: expected whole numbers separated by commas") from None
        if v < low:
            raise UserError(f"bad {option} {text!r}: values must be at least {low}")
        out.append(v)
    return out


def parse_settings(specs: list[str] | None) -> dict[str, Any]:
    """``--setting graph_optimization_level=all`` -> ``{"graph_optimization_level": "all"}``; numbers and
    true/false are parsed as JSON, anything else stays a string."""
    out: dict[str, Any] = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad --setting {spec!r}: expected KEY=VALUE or BACKEND:KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def run_notes(options: dict[str, Any], inputs: Path | None) -> dict[str, str]:
    from slipway.perf.stats import Budget

    b = Budget(options["warmup"], options["min_time_s"], options["max_time_s"], options["min_runs"])
    memory = ("peak RSS of a fresh process per configuration (kernel high-water mark)" if options["isolate"]
              else "peak RSS of this process sampled every 5 ms while the configuration ran")
    return {
        "Inputs": str(inputs) if inputs else "random: floats N(0, 1), integers in [0, 9], booleans a fair coin",
        "Budget": (f"{b.warmup} warm-up runs per instance (at most {b.warmup_limit_s:g} s); then at least {b.min_time_s:g} s and {b.min_runs} "
                   f"requests, until the median of the last half is within {100 * b.tolerance:g}% of the whole's; "
                   f"at most {b.time_limit_s:g} s"),
        "Memory": memory,
        **({"Calibration": f"{options['calib']} (INT8 of mnn / ncnn, built and verified before timing)"}
           if options.get("calib") else {}),
    }


def print_results(results: list) -> None:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, caption="ms per request; inf/s = batch x requests / s; "
                  "rss = peak resident MB", caption_justify="left")
    precisions = any(r.precision != "fp32" for r in results)
    for col in ("backend", "precision" if precisions else "", "batch", "threads", "conc", "p50", "p90", "p99", "mean",
                "inf/s", "rss", "runs"):
        if col:
            table.add_column(col, justify="left" if col in ("backend", "precision") else "right", min_width=len(col))
    for r in results:
        table.add_row(r.backend, *([r.precision] if precisions else []), str(r.batch), str(r.threads or "auto"), str(r.concurrency), _ms(r.p50_ms),
                      _ms(r.p90_ms), _ms(r.p99_ms), _ms(r.mean_ms), f"{r.throughput:,.0f}" if r.throughput >= 100
                      else f"{r.throughput:.3g}", "-" if r.rss_mb is None else f"{r.rss_mb:.0f}",
                      f"{r.runs}{'' if r.stable else '*'}")
    console.print(table)
    if any(not r.stable for r in results):
        console.print("[dim]* the median was still moving at the time limit: give more --time or --max-time[/]")


def _ms(v: float) -> str:
    """Milliseconds at a readable precision: 0.0281, 1.95, 12.34, 123.4, 12345."""
    if v < 1:
        return f"{v:.3g}"
    return f"{v:.2f}" if v < 100 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
