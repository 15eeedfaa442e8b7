"""Conversion side by side: plain ``torch.onnx.export`` vs slipway ``from_torch``, and what converting buys.

For resnet18, mobilenetv2, yolo, unet and transformer, in one run:

* conversion wall time: ``torch.onnx.export(dynamo=True)`` + save, against slipway
  ``from_torch`` (the same export, then verification against PyTorch in onnxruntime at batch 1
  and 3 plus the example input, then an atomic save); the overhead ratio; the max abs error
  the verification recorded;
* inference latency at batch 1: PyTorch eager (``torch.set_num_threads(2)``, inference mode)
  against onnxruntime on the converted model (default graph optimizations, 2 intra-op
  threads), median of ``--runs`` runs after warm-up, and the speedup.

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.convert``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.common import (
    alternating_blocks,
    fmt,
    machine,
    publish,
    versions,
)
from slipway.convert import from_torch
from slipway.convert.torch import quiet
from slipway.zoo import ZOO, build

MODELS = ["resnet18", "mobilenetv2", "yolo", "unet", "transformer"]
THREADS = 2
WARMUP = 5


def dims_for(name: str) -> dict[int, str]:
    """The dynamic dims of a zoo model's input: batch, plus the model's named ones (transformer: seq)."""
    return {0: "batch", **ZOO[name].dynamic}


def plain_export(module: Any, x: Any, dims: dict[int, str], path: Path) -> None:
    """What a user writes without slipway: the dynamo exporter, then save."""
    import torch

    with quiet():
        program = torch.onnx.export(module, (x,), input_names=["x"], output_names=["y"],
                                    dynamic_shapes=(dims,), dynamo=True, verbose=False)
        program.save(str(path))


def slipway_export(module: Any, x: Any, dims: dict[int, str], path: Path) -> Any:
    """slipway's conversion: the same export, verified at 2 batch sizes, written atomically."""
    return from_torch(module, (x,), path, input_names=["x"], output_names=["y"], dynamic_dims={"x": dims})


def warm_up(tmp: Path) -> None:
    """Run both conversions once on a tiny model so that one-time import costs land on no zoo model."""
    import torch

    tiny = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
    x = torch.randn(1, 4)
    plain_export(tiny, x, {0: "batch"}, tmp / "warm-plain.onnx")
    slipway_export(tiny, x, {0: "batch"}, tmp / "warm-slipway.onnx")


def conversion(name: str, tmp: Path, repeats: int) -> tuple[dict[str, Any], Path]:
    """Median conversion times (plain and slipway alternated), the verification report, the model path."""
    module, x = build(name)
    dims = dims_for(name)
    plain, ours, report = [], [], None
    out = tmp / f"{name}-slipway.onnx"
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain_export(module, x, dims, tmp / f"{name}-plain.onnx")
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = slipway_export(module, x, dims, out).report
        ours.append(time.perf_counter() - t0)
    result = {
        "plain_export_s": statistics.median(plain),
        "from_torch_s": statistics.median(ours),
        "repeats": repeats,
        "verified_runs": report.runs,
        "verify_ok": report.ok,
        "max_abs": max(o.max_abs for o in report.outputs),
        "max_rel": max(o.max_rel for o in report.outputs),
    }
    result["overhead"] = result["from_torch_s"] / result["plain_export_s"]
    return result, out


def latency(name: str, path: Path, runs: int) -> dict[str, Any]:
    """Batch-1 latency of PyTorch eager and of onnxruntime on the converted model (medians, ms)."""
    import torch

    module, x = build(name)
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: x.numpy()}
    with torch.inference_mode():
        expected = module(x).numpy()
        t = alternating_blocks({"torch": lambda: module(x), "ort": lambda: sess.run(None, feeds)}, runs, WARMUP)
    got = sess.run(None, feeds)[0]
    return {
        "torch_ms": t["torch"].median * 1e3,
        "ort_ms": t["ort"].median * 1e3,
        "speedup": t["torch"].median / t["ort"].median,
        "torch_best_ms": t["torch"].best * 1e3,
        "ort_best_ms": t["ort"].best * 1e3,
        "runs": runs,
        "ort_optimized_max_abs": float(np.max(np.abs(got - expected))),
    }


def tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The two tables (title, headers, rows): conversion cost and inference latency."""
    conv = [[r["model"], fmt(r["convert"]["plain_export_s"]), fmt(r["convert"]["from_torch_s"]),
             f"{r['convert']['overhead']:.2f}x", f"{r['convert']['max_abs']:.2e}",
             "ok" if r["convert"]["verify_ok"] else "FAILED"] for r in rows]
    lat = [[r["model"], fmt(r["latency"]["torch_ms"]), fmt(r["latency"]["ort_ms"]),
            f"{r['latency']['speedup']:.2f}x", fmt(r["latency"]["torch_best_ms"]), fmt(r["latency"]["ort_best_ms"]),
            f"{r['latency']['torch_best_ms'] / r['latency']['ort_best_ms']:.2f}x",
            f"{r['latency']['ort_optimized_max_abs']:.2e}"] for r in rows]
    return [
        ("Conversion wall time (s)",
         ["model", "torch.onnx.export (dynamo) + save", "slipway from_torch", "overhead",
          "verified max abs error", "verification"], conv),
        (f"Batch-1 latency (ms), {THREADS} threads",
         ["model", "PyTorch eager (median)", "onnxruntime (median)", "speedup", "PyTorch eager (best)",
          "onnxruntime (best)", "speedup (best)", "ORT (optimized) vs torch max abs"], lat),
    ]


NOTES = """
Notes:
- Conversion: median of {repeats} run(s) per model after one warm-up conversion of a tiny model
  (so one-time imports are charged to neither column); plain export and from_torch alternate.
  from_torch verifies on the example input and on random inputs at batch 1 and 3 (transformer:
  seq 16 and 32 as well), with onnxruntime's graph optimizations off so the error is the model's
  own; "verified max abs error" is the worst over outputs and runs.
- Latency: PyTorch eager under `torch.inference_mode()` with `torch.set_num_threads({threads})`;
  onnxruntime CPU with its default graph optimizations (ORT_ENABLE_ALL) and {threads} intra-op
  threads on the model from_torch wrote; median of {runs} runs after {warmup} warm-up runs each,
  timed in 2 alternating blocks per engine, each after its own warm-up (so both see the same
  background load and neither pays for the other's spinning threads), seeded batch-1 example
  input. On a busy machine PyTorch's OpenMP threads suffer far more than onnxruntime's pool (a
  parallel region waits for its slowest thread), so the medians can overstate the speedup; the
  best-of-runs columns are steadier. The last column compares the optimized onnxruntime output
  with PyTorch's on that input.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=list(ZOO))
    parser.add_argument("--repeats", type=int, default=1, help="conversions per model and tool (median)")
    parser.add_argument("--runs", type=int, default=20, help="timed inference runs (median); at least 20")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(THREADS)
    runs, repeats = max(20, args.runs), max(1, args.repeats)
    host, found = machine(), versions()
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        warm_up(Path(tmp))
        for name in args.models:
            conv, path = conversion(name, Path(tmp), repeats)
            rows.append({"model": name, "convert": conv, "latency": latency(name, path, runs)})
            print(f"{name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    data = {"machine": host, "versions": found, "threads": THREADS, "models": rows}
    publish("convert", "Conversion: torch.onnx.export vs slipway from_torch; PyTorch eager vs onnxruntime", host, found, tables(rows),
            NOTES.format(repeats=repeats, threads=THREADS, runs=runs, warmup=WARMUP),
            time.perf_counter() - start, data)


if __name__ == "__main__":
    main()
