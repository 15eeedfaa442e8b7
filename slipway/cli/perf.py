"""``slipway perf -m MODEL -u HOST:PORT``: perf_analyzer-style load against any KServe v2 server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from slipway.cli.common import console, err_console, print_json
from slipway.errors import UserError


def perf(
    model: str = typer.Option(..., "-m", "--model-name", help="the model to load"),
    url: str = typer.Option("127.0.0.1:8000", "-u", "--url", help="HOST:PORT of the server's HTTP or gRPC endpoint"),
    protocol: str = typer.Option("http", "-i", "--protocol", help="http or grpc"),
    concurrency_range: str = typer.Option(None, "--concurrency-range", help="closed loop START[:END[:STEP]] (default 1)"),
    request_rate_range: str = typer.Option(None, "--request-rate-range", help="open loop START[:END[:STEP]] requests/s"),
    distribution: str = typer.Option("constant", "--request-distribution", help="open loop: constant or poisson"),
    batch: int = typer.Option(1, "-b", "--batch-size", help="rows per request (batching models)"),
    shape: list[str] = typer.Option(None, "--shape", help="NAME:D0,D1,... dims after the batch dim (repeatable)"),
    input_data: Path | None = typer.Option(None, "--input-data", help=".npz, perf_analyzer JSON, an image or a folder of images"),
    string_length: int = typer.Option(16, "--string-length", help="random BYTES element length"),
    interval_ms: float = typer.Option(5000, "-p", "--measurement-interval", help="time window, ms"),
    mode: str = typer.Option("time_windows", "--measurement-mode", help="time_windows or count_windows"),
    request_count: int = typer.Option(50, "--measurement-request-count", help="requests per count window"),
    stability: float = typer.Option(10, "-s", "--stability-percentage", help="last 3 windows agree within this %"),
    max_trials: int = typer.Option(10, "-r", "--max-trials", help="windows per level at most"),
    warmup: float = typer.Option(0.5, "--warmup", help="unmeasured seconds of load before each level (closed loop: and until every client had a reply)"),
    percentile: int | None = typer.Option(None, "--percentile", help="judge stability and report this latency percentile"),
    max_inflight: int = typer.Option(512, "--max-inflight", help="open loop: outstanding requests at most"),
    json_tensors: bool = typer.Option(False, "--json-tensors", help="HTTP JSON tensors instead of binary (MLServer)"),
    shared_memory: str = typer.Option("none", "--shared-memory", help="none or system: inputs and outputs in system shared memory (a server on this machine)"),
    output_shm_size: int = typer.Option(102400, "--output-shared-memory-size", help="bytes per output region when the output's size is not fixed (BYTES, dynamic dims)"),
    header: list[str] = typer.Option(None, "-H", "--header", help="NAME:VALUE sent with every call (HTTP header, "
                                     "gRPC metadata), e.g. an access token (repeatable)"),
    validate: bool = typer.Option(False, "--validate", help="decode every reply and check it against the expected "
                                  "outputs in --input-data (.npz out:NAME arrays, JSON validation_data); a mismatch "
                                  "is a 'wrong output' error; the decode time is Client Recv"),
    rtol: float = typer.Option(1e-3, "--rtol", help="--validate: relative tolerance"),
    atol: float = typer.Option(1e-4, "--atol", help="--validate: absolute tolerance (|got - want| <= atol + rtol*|want|)"),
    latencies_file: Path | None = typer.Option(None, "--latencies-file", help="write every latency (s) of each level's "
                                               "reported windows to this .npz (one array per level, e.g. concurrency=16)"),
    metrics_url: str | None = typer.Option(None, "--metrics-url", help="HOST:PORT of the server's Prometheus metrics (server CPU / RSS)"),
    server_pid: int | None = typer.Option(None, "--server-pid", help="a local server's pid (server CPU / RSS from /proc)"),
    csv_file: Path | None = typer.Option(None, "-f", help="write perf_analyzer's CSV here"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON (nothing else on stdout)"),
    report: Path | None = typer.Option(None, "--report", help="write an HTML report here (curve and breakdown)"),
) -> None:
    """Closed- or open-loop load, measured in windows until stable, with the server's own breakdown."""
    from slipway.loadgen import Settings, parse_range, parse_shape, profile, to_csv

    if concurrency_range and request_rate_range:
        raise UserError("give --concurrency-range or --request-rate-range, not both")
    if mode not in ("time_windows", "count_windows"):
        raise UserError(f"unknown --measurement-mode {mode!r}: expected time_windows or count_windows")
    settings = Settings(window_s=interval_ms / 1000, window_requests=request_count if mode == "count_windows" else 0,
                        stability=stability / 100, max_trials=max_trials, warmup_s=warmup, percentile=percentile,
                        distribution=distribution, max_inflight=max_inflight)
    levels: dict[str, Any] = {"rates": parse_range(request_rate_range, "--request-rate-range", False)} if \
        request_rate_range else {"concurrency": [int(v) for v in parse_range(concurrency_range or "1",
                                                                                "--concurrency-range", True)]}

    def on_window(kind: str, value: float, w: Any) -> None:
        if not as_json:
            err_console.print(f"[dim]{kind} {value:g}: window of {w.seconds:.2f} s, {len(w.latencies)} ok, "
                              f"{w.errors} failed[/]", highlight=False)

    result = profile(url, model, protocol=protocol, settings=settings, batch=batch, shapes=parse_shape(shape or []),
                     data=input_data, binary=not json_tensors, string_length=string_length, metrics_url=metrics_url,
                     server_pid=server_pid, on_window=on_window, shared_memory=shared_memory,
                     output_shm_size=output_shm_size, headers=_headers(header or []), validate=validate, rtol=rtol,
                     atol=atol, **levels)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    if result.probe_error:
        err_console.print(f"[red]the first reply failed validation:[/] {result.probe_error}", highlight=False)
    written = []
    if latencies_file is not None:
        written.append(_save_latencies(latencies_file, result))
    if csv_file is not None:
        from slipway.model import atomic_write_text

        written.append(atomic_write_text(csv_file, to_csv(result.rows)))
    if report is not None:
        from slipway.loadgen.report import write_report

        written.append(write_report(result, report))
    if written:
        err_console.print(f"written: {', '.join(map(str, written))}", highlight=False)
    if as_json:
        print_json(result.to_dict())
        return
    print_table(result)


def _save_latencies(path: Path, result: Any) -> Path:
    import io

    import numpy as np

    from slipway.model import atomic_write_bytes

    arrays = {f"{lv.mode}={lv.value:g}": np.concatenate([np.asarray(w.latencies, dtype=np.float64)
                                                          for w in lv.windows[-3:]] or [np.zeros(0)])
              for lv in result.levels}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def _headers(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, value = spec.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise UserError(f"bad -H {spec!r}: expected NAME:VALUE")
        out[name.strip()] = value.strip()
    return out


def print_table(result: Any) -> None:
    rows = result.rows
    open_loop = bool(rows) and rows[0]["mode"] == "request_rate"
    cols = ["rate" if open_loop else "conc", "infer/s", "p50", "p90", "p99", "avg", "queue", "infer", "errors"]
    cols += ["lag", "late"] if open_loop else []
    server = any(r.get("server_cpu") is not None for r in rows)  # known from --metrics-url / --server-pid
    cols += ["client cpu", "server cpu", "rss MB"] if server else ["client cpu"]
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, caption_justify="left",
                  caption=f"{result.model.name} over {result.protocol} at {result.url}, batch {result.batch}; "
                          "latencies ms (from the intended send time); queue / infer: server ms per request"
                          + ("; every reply validated" if result.validated else ""))
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        cells = [f"{r['value']:g}", f"{r.get('inferences_per_s', 0):,.1f}"]
        cells += [_ms(r.get(k)) for k in ("p50_us", "p90_us", "p99_us", "avg_us", "server_queue_us",
                                          "server_compute_infer_us")]
        wrong = f" ({r['wrong']} wrong)" if r.get("wrong") else ""
        cells.append(f"[red]{r['errors']}{wrong}[/]" if r["errors"] else "0")
        if open_loop:
            cells += [f"{r.get('lag_mean_ms', 0):.2f}", f"{100 * r.get('late_share', 0):.0f}%"]
        cells.append(_share(r.get("client_cpu")))
        if server:
            cells += [_share(r.get("server_cpu")), "-" if r.get("server_rss_mb") is None else f"{r['server_rss_mb']:.0f}"]
        table.add_row(*cells, style=None if r["stable"] else "yellow")
    if console.is_terminal:
        console.print(table)
    else:  # a pipe or a file: wide enough that no column is squeezed
        from rich.console import Console

        Console(width=max(console.width, 130)).print(table)
    for r in rows:
        if not r["stable"]:
            console.print(f"[yellow]{r['mode']} {r['value']:g}: not stable after {r['windows']} windows[/]")
        for message, n in r.get("error_messages", {}).items():
            console.print(f"[red]{r['mode']} {r['value']:g}: {n} x {message}[/]", highlight=False)
        if (r.get("client_cpu") or 0) > 0.9:
            console.print(f"[yellow]{r['mode']} {r['value']:g}: the client used {r['client_cpu']:.0%} of a core; "
                          "it may be the bottleneck[/]")
        for name, part in r.get("composing", {}).items():
            console.print(f"  {name}: {part['success']} requests, queue {_ms(part['queue_us'])} ms, infer "
                          f"{_ms(part['compute_infer_us'])} ms", highlight=False)


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1e3:.3g}" if us < 1e5 else f"{us / 1e3:.0f}"


def _share(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def register(app: typer.Typer) -> None:
    app.command("perf")(perf)
