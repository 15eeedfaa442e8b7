"""``slipway export MODEL --engine mnn|ncnn|openvino -o DIR``: the engine's files plus a manifest, verified."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from slipway.cli.common import console, err_console, human, print_json


def export(
    model: Path = typer.Argument(..., help="ONNX model file"),
    engine: str = typer.Option(..., "--engine", "-e", help="mnn, ncnn or openvino"),
    out: Path = typer.Option(..., "--out", "-o", help="directory to create (must not exist, or be empty)"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Convert MODEL to ENGINE's own files, verify them against onnxruntime, and write them with a manifest."""
    from slipway.backends.export import export as run_export

    with err_console.status(f"converting and verifying for {engine}..."):
        path = run_export(model, engine, out)
    manifest = json.loads((path / "manifest.json").read_text())
    if as_json:
        print_json(manifest)
        return
    files = Table("file", "size", "sha256", title=f"{path} ({engine} {manifest['engine_version']})",
                  title_justify="left")
    for name, info in manifest["files"].items():
        files.add_row(name, human(info["bytes"], "B"), info["sha256"][:16])
    console.print(files)
    v = manifest["verification"]
    worst = ", ".join(f"{o['name']} max_abs {o['max_abs']:.3g}" for o in v["outputs"])
    console.print(f"verified against onnxruntime at {len(v['runs'])} shapes ({'; '.join(v['runs'])}): {worst}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
