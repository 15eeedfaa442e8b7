"""``slipway analyze MODEL``: static costs per node, optionally measured per-node time and an HTML report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from slipway.analyze.types import Analysis
from slipway.cli.common import DATA_OPTION, SHAPE_OPTION, console, err_console, human, parse_shapes, print_json
from slipway.errors import UserError


def analyze(
    model: Path = typer.Argument(..., help="ONNX model file"),
    shape: list[str] = SHAPE_OPTION,
    data: Path | None = DATA_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the analysis as JSON (nothing else on stdout)"),
    profile: bool = typer.Option(False, "--profile", help="measure per-node time in onnxruntime and the roofline"),
    runs: int = typer.Option(20, "--runs", help="profiled runs (after warm-up)"),
    warmup: int = typer.Option(3, "--warmup", help="warm-up runs not counted"),
    threads: int | None = typer.Option(None, "--threads", help="intra-op threads (default: physical cores)"),
    report: Path | None = typer.Option(None, "--report", help="write a self-contained HTML report here"),
    top: int = typer.Option(15, "--top", help="nodes shown in the table (by time when profiled, else by FLOPs)"),
) -> None:
    """Per-node MACs, FLOPs, parameters, bytes and intensity; with --profile, measured time and roofline."""
    from slipway.analyze import analyze as run_analysis
    from slipway.model import check_output

    shapes = parse_shapes(shape)
    if data is not None:
        from slipway.verify.inputs import load_inputs

        if shapes:
            raise UserError("give either --data or --shape, not both (the data has its shapes)")
        shapes = {k: list(a.shape) for k, a in load_inputs(data)[0].items()}
    _check_options(runs, warmup, threads, top, report)
    check_output(report, model, what="--report")
    with err_console.status("analyzing..."):
        result = run_analysis(model, shapes=shapes or None)
    if profile:
        from slipway.analyze.machine import peaks
        from slipway.analyze.profile import profile as run_profile

        with err_console.status("measuring machine peaks (cached after the first run)..."):
            machine = peaks(threads=threads)
        with err_console.status(f"profiling {runs} runs in onnxruntime..."):
            result = run_profile(model, result, runs=runs, warmup=warmup, threads=threads, machine=machine)
    if report is not None:
        from slipway.analyze.report import write_report

        write_report(result, report)
        err_console.print(f"report written to {report}")
    if as_json:
        print_json(result.to_dict())
        return
    print_analysis(result, top)


def _check_options(runs: int, warmup: int, threads: int | None, top: int, report: Path | None) -> None:
    if runs < 1:
        raise UserError(f"--runs must be at least 1, got {runs}")
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if top < 0:
        raise UserError(f"--top must be 0 or more, got {top}")
    if report is not None and report.is_dir():
        raise UserError(f"--report must be a file path, got a directory: {report}")


def print_analysis(a: Analysis, top: int) -> None:
    t = a.totals
    shapes = ", ".join(f"{k}={v}" for k, v in a.input_shapes.items())
    console.print(f"[bold]{a.model_path or 'model'}[/]  inputs: {shapes}")
    key = (lambda n: n.time_ms or 0.0) if a.profiled else (lambda n: n.flops or 0)
    nodes = sorted(a.nodes, key=key, reverse=True)[:top]
    by = "time" if a.profiled else "FLOPs"
    table = Table(title=f"top {len(nodes)} of {len(a.nodes)} nodes by {by}", title_justify="left")
    table.add_column("node", overflow="fold")
    table.add_column("op", overflow="fold")
    cols = ("FLOPs", "FLOP/B", "ms", "%time", "bound", "%roof") if a.profiled else (
        "MACs", "FLOPs", "params", "bytes", "FLOP/B")
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True)
    total_ms = sum(n.time_ms or 0.0 for n in a.nodes + a.engine_nodes) or 1.0
    for n in nodes:
        per = "×?" if n.trip_count_unknown else ""  # one iteration of a loop whose trip count is unknown
        flops = _c(n.flops) + per if n.counted else "n/c"
        intensity = "-" if n.intensity is None else f"{n.intensity:.3g}"
        if a.profiled:
            frac = n.roofline_fraction
            row = [flops, intensity, f"{n.time_ms or 0.0:.3f}", f"{100 * (n.time_ms or 0.0) / total_ms:.1f}",
                   n.bound or "-", "-" if frac is None else f"{100 * frac:.0f}"]
        else:
            row = [_c(n.macs) + per if n.counted else "n/c", flops, _c(n.params), _c(n.bytes_read + n.bytes_written, "B"),
                   intensity]
        table.add_row(n.name, n.op_type, *row)
    console.print(table)
    console.print(f"MACs: {human(t['macs'])} ({t['macs']:,})   FLOPs: {human(t['flops'])} ({t['flops']:,})   "
                  f"params: {t['params']:,}")
    if t["trip_count_unknown"]:
        console.print(f"[yellow]lower bound:[/] trip count unknown in {', '.join(t['trip_count_unknown'])}: "
                      "one iteration of each such loop is counted (marked ×?)")
    console.print("[dim]n/c = not counted (no cost formula); bytes = read + written; FLOP/B = arithmetic intensity"
                  + ("; %roof = achieved / attainable (over 100: data stayed in cache)" if a.profiled else "") + "[/]")
    console.print(f"bytes read: {human(t['bytes_read'], 'B')}   written: {human(t['bytes_written'], 'B')}   "
                  f"peak activation memory: {human(t['peak_activation_bytes'], 'B')}")
    console.print("not counted: " + (", ".join(t["not_counted"]) or "none"))
    if a.profiled and a.machine is not None:
        m = a.machine
        engine_ms = sum(n.time_ms or 0.0 for n in a.engine_nodes)
        console.print(f"measured latency: {a.total_time_ms:.3f} ms   engine-added nodes: {engine_ms:.3f} ms   "
                      f"achieved: {human(t['flops'] / (a.total_time_ms * 1e-3), 'FLOP/s')}")
        console.print(f"machine: {m.fp32_gflops:,.1f} GFLOP/s FP32, "
                      f"{(str(round(m.int8_gops, 1)) + ' GOP/s INT8') if m.int8_gops else 'no INT8'}, "
                      f"{m.mem_bandwidth_gbs:,.1f} GB/s, ridge {m.ridge_point:.1f} FLOP/B ({m.threads} threads)")


def _c(n: float | int | None, unit: str = "") -> str:
    """Compact number: 589824 -> '590K'."""
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:g}{unit}"


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
