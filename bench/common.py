"""Shared bench helpers: machine and versions header, a median-of-repeats timer, result writing.

Every bench writes ``bench/results/NAME.md`` (a header naming the machine and the versions,
then its tables) and ``bench/results/NAME.json`` (the same numbers, machine-readable), each
atomically, and prints its tables to stdout.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from slipway.analyze.machine import cpu_model, default_threads
from slipway.cpus import usable_cpus
from slipway.model import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("numpy", "onnx", "onnx-ir", "onnxruntime", "torch", "onnx-tool", "slipway")


@dataclass
class Timing:
    """Wall times of repeated calls, in seconds."""

    median: float
    best: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> Timing:
    """Median and best wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), len(times))


def alternating_blocks(fns: dict[str, Callable[[], Any]], repeats: int = 20, warmup: int = 5,
                       rounds: int = 2, rotate: bool = False) -> dict[str, Timing]:
    """Median and best wall time of each function, timed in alternating blocks.

    Each of ``rounds`` rounds runs every function in turn: ``warmup`` untimed calls, then its
    share of the ``repeats`` timed calls (at least ``repeats`` in all). Spreading every function
    over the same stretch of time exposes them to the same background load, and the warm-up at
    the start of each block keeps one engine's spinning worker threads (onnxruntime's and
    OpenMP's keep busy-waiting after a call) from being charged to the next; calling two engines
    alternately call by call does charge them (2x or more on two cores). ``rotate`` starts each
    round with the next function, so no function always follows the same one.
    """
    per_round = -(-max(1, repeats) // max(1, rounds))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(max(1, rounds)):
        order = names[r % len(names):] + names[:r % len(names)] if rotate else names
        for name in order:
            fn = fns[name]
            for _ in range(warmup):
                fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: Timing(statistics.median(t), min(t), len(t)) for name, t in times.items()}


def versions() -> dict[str, str]:
    """Python and the versions of the packages the benches compare ("-" when not installed)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def machine() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), logical CPUs, physical cores and the load when the bench started."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu": cpu_model(),
        "logical_cpus": usable_cpus(),
        "physical_cores": default_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_1_5_15m": load,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def header(title: str, host: dict[str, Any], found: dict[str, str]) -> str:
    """The markdown header of a result file: title, machine line, versions line."""
    load = ", ".join(str(x) for x in host["load_average_1_5_15m"]) or "unknown"
    vers = ", ".join(f"{k} {v}" for k, v in found.items())
    return (
        f"# {title}\n\n"
        f"Machine: {host['cpu']}, {host['physical_cores']} cores / {host['logical_cpus']} logical CPUs, "
        f"{host['os']}; load average at start {load}; {host['date']}.\n\n"
        f"Versions: {vers}.\n"
    )


def fmt(x: float | int | None, digits: int = 3) -> str:
    """A number for a table: "-" for None, ints with thousands separators, floats to ``digits`` significant."""
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table to stdout (rich when installed, plain markdown otherwise)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"\n{title}\n{markdown_table(headers, rows)}")
        return
    table = Table(title=title, show_lines=False)
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console(width=max(160, len(headers) * 14)).print(table)


def write_results(name: str, markdown: str, data: dict[str, Any], out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``out_dir/NAME.md`` and ``out_dir/NAME.json`` atomically; returns both paths."""
    md = atomic_write_text(out_dir / f"{name}.md", markdown)
    js = atomic_write_text(out_dir / f"{name}.json", json.dumps(data, indent=2, default=str) + "\n")
    return md, js


def publish(name: str, title: str, host: dict[str, Any], found: dict[str, str],
            sections: Iterable[tuple[str, Sequence[str], Sequence[Sequence[str]]]], notes: str,
            elapsed_s: float, data: dict[str, Any]) -> None:
    """Print each (title, headers, rows) table, and write them with the header and notes to
    ``results/NAME.md`` (+ ``NAME.json`` from ``data``)."""
    md = header(title, host, found)
    for section, heads, body in sections:
        print_table(section, heads, body)
        md += f"\n## {section}\n\n" + markdown_table(heads, body)
    md += notes + f"\nTotal bench time: {elapsed_s:.0f} s.\n"
    for p in write_results(name, md, data):
        print(f"wrote {p}")
