"""``slipway export MODEL --engine mnn|ncnn|openvino -o DIR``: the engine's files plus a manifest, verified.

``--precision int8 --calib DATA`` (mnn, ncnn): the engine's INT8 files, quantized from the calibration data and
verified against onnxruntime FP32 (output SNR in the manifest)."""

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
    precision: str = typer.Option("fp32", "--precision", help="fp32, or int8 (mnn, ncnn: needs --calib)"),
    calib: Path | None = typer.Option(None, "--calib", help="calibration data for --precision int8 (as slipway "
                                      "quantize --calib: .npz / .npy / a folder of them or of images)"),
    calib_method: str | None = typer.Option(None, "--calib-method", help="the engine's calibration method "
                                            "(mnn: admm, kl, ema; ncnn: auto, entropy, minmax, percentile, mse)"),
    calib_samples: int | None = typer.Option(None, "--calib-samples", help="use at most this many calibration "
                                             "samples (default: the method's)"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Convert MODEL to ENGINE's own files, verify them against onnxruntime, and write them with a manifest."""
    from slipway.backends.export import export as run_export

    what = "quantizing (int8) and verifying" if precision == "int8" else "converting and verifying"
    with err_console.status(f"{what} for {engine}..."):
        path = run_export(model, engine, out, precision=precision, calib=calib, calib_method=calib_method,
                          calib_samples=calib_samples)
    manifest = json.loads((path / "manifest.json").read_text())
    if as_json:
        print_json(manifest)
        return
    files = Table("file", "size", "sha256", title=f"{path} ({manifest['engine']} {manifest['engine_version']})",
                  title_justify="left")
    for name, info in manifest["files"].items():
        files.add_row(name, human(info["bytes"], "B"), info["sha256"][:16])
    console.print(files)
    v = manifest["verification"]
    if "runs" in v:
        worst = ", ".join(f"{o['name']} max_abs {o['max_abs']:.3g}" for o in v["outputs"])
        console.print(f"verified against onnxruntime at {len(v['runs'])} shapes ({'; '.join(v['runs'])}): {worst}")
    else:  # INT8: signal to noise against onnxruntime FP32 on calibration samples
        snr = ", ".join(f"{o['name']} SNR {o['snr_db']:.1f} dB (cosine {o['cosine']:.4f})" for o in v["outputs"])
        console.print(f"verified against {v['reference']} on {v['data']}: {snr} (at least {v['min_snr_db']:g} dB); "
                      f"calibration data sha256 {v['calibration_sha256'][:16]}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
