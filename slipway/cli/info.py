"""``slipway info MODEL``: validate a model and print its summary."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from slipway.cli.common import console, human, print_json


def info(
    model: Path = typer.Argument(..., help="ONNX model file"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Validate MODEL (checker + shape inference) and summarize it."""
    import slipway

    s = slipway.summary(slipway.load(model))
    if as_json:
        print_json(s)
        return
    console.print(f"[bold]{model}[/]  ir_version {s['ir_version']}  producer {s['producer'] or '-'}")
    console.print("opsets: " + ", ".join(f"{k} {v}" for k, v in s["opsets"].items()))
    io = Table("", "name", "dtype", "shape", title="inputs / outputs", title_justify="left")
    for kind in ("inputs", "outputs"):
        for v in s[kind]:
            io.add_row(kind[:-1], v["name"], v["dtype"], str(v["shape"]))
    console.print(io)
    ops = Table("op", "count", title=f"{s['nodes']} nodes", title_justify="left")
    for op, n in s["op_histogram"].items():
        ops.add_row(op, str(n))
    console.print(ops)
    console.print(
        f"parameters: {s['params']:,} ({human(s['param_bytes'], 'B')})   file: {human(s['file_bytes'], 'B')}"
    )
    for k, v in s["metadata"].items():
        console.print(f"  {k} = {v}")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
