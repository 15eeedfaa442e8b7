"""``slipway machine``: measure (or show the cached) FP32/INT8 matmul peaks and memory bandwidth."""

from __future__ import annotations

import typer
from rich.table import Table

from slipway.cli.common import console, err_console, print_json
from slipway.errors import UserError


def machine(
    refresh: bool = typer.Option(False, "--refresh", help="measure again even when a cached result exists"),
    as_json: bool = typer.Option(False, "--json", help="print the peaks as JSON"),
    seconds: float = typer.Option(3.0, "--seconds", help="time budget of the measurement"),
    threads: int | None = typer.Option(None, "--threads", help="intra-op threads (default: physical cores)"),
) -> None:
    """Measure this host's achievable FP32/INT8 matmul throughput and memory bandwidth (cached)."""
    from slipway.analyze.machine import cache_path, peaks

    if seconds <= 0:
        raise UserError(f"--seconds must be positive, got {seconds}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    with err_console.status("measuring machine peaks (cached after the first run)..."):
        p = peaks(refresh=refresh, threads=threads, seconds=seconds)
    if as_json:
        print_json(p.to_dict())
        return
    t = Table("", "", show_header=False, title=f"{p.cpu}  ({p.threads} threads of {p.cores})", title_justify="left")
    t.add_row("FP32 matmul", f"{p.fp32_gflops:,.1f} GFLOP/s")
    t.add_row("INT8 matmul", f"{p.int8_gops:,.1f} GOP/s" if p.int8_gops else "not measurable")
    t.add_row("memory bandwidth", f"{p.mem_bandwidth_gbs:,.1f} GB/s")
    t.add_row("ridge point", f"{p.ridge_point:.1f} FLOP/byte")
    t.add_row("features", ", ".join(k for k, v in p.features.items() if v) or "none detected")
    console.print(t)
    for k, v in p.methods.items():
        console.print(f"  [dim]{k}: {v}[/]")
    console.print(f"  [dim]measured {p.measured_at}; cached in {cache_path()}[/]")


def register(app: typer.Typer) -> None:
    app.command("machine")(machine)
