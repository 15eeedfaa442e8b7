"""Engines side by side: PyTorch eager vs plain onnxruntime vs plain OpenVINO vs slipway's tuned choice.

For the ResNet-ish and MobileNetV2-ish zoo models at batch 1 and 8, in one run:

* PyTorch eager (``torch.set_num_threads(cores)``, inference mode);
* a plain ``onnxruntime.InferenceSession`` with default options (what a user writes first);
* plain OpenVINO: ``Core().compile_model(path, "CPU")`` with default properties;
* slipway: ``tune(model, objective="latency", batches=[B])`` searches backend x threads x engine
  settings; the winner is loaded with ``slipway.backends.load(path, backend=None)`` (which reads
  the settings file tune wrote) and run through slipway's ``Session.run``.

All four are timed in alternating blocks (median of ``--repeats`` calls); ratios are against the
fastest baseline and against PyTorch eager. A second table measures what slipway's ``Session``
wrapper costs over a raw ``InferenceSession.run`` on a tiny MLP at batch 1.

A third table puts the four CPU engines side by side at batch 1, FP32, 1 and 2 threads: onnxruntime,
OpenVINO, MNN and ncnn (slipway's ``mnn`` / ``ncnn`` engines: converted, verified and cached on first use),
on ResNet-18 and MobileNetV2 (``slipway.zoo``) and PP-OCRv4 det / rec (shipped in the rapidocr-onnxruntime
wheel). Latency and peak RSS come from ``slipway.perf.runner.benchmark`` with each configuration in a fresh
process (peak RSS = that process's VmHWM); conversion time is the first load into an empty cache
(convert + verify against onnxruntime); SNR is each engine's output against onnxruntime FP32 on the same
input (FP16 rows: ncnn's FP16 storage, where the CPU has F16C / ARM).

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.engines`` (``--edge-only`` for the third
table alone).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from bench.common import alternating_blocks, fmt, machine, median_time, publish, versions
from slipway import backends
from slipway.analyze.machine import default_threads
from slipway.convert.torch import quiet
from slipway.tune import tune
from slipway.zoo import build

MODELS = ["resnet18", "mobilenetv2"]
BATCHES = [1, 8]
EDGE_ENGINES = ["ort", "openvino", "mnn", "ncnn"]
EDGE_SHAPES = {"ppocr_det": (1, 3, 480, 480), "ppocr_rec": (1, 3, 48, 320)}  # RapidOCR's det side, one text line


def export(name: str, path: Path) -> None:
    import torch

    module, x = build(name)
    with quiet():
        program = torch.onnx.export(module, (x[:1],), input_names=["x"], output_names=["y"],
                                    dynamic_shapes=({0: "batch"},), dynamo=True, verbose=False)
        program.save(str(path))


def one(name: str, batch: int, path: Path, repeats: int, tune_s: float) -> dict[str, Any]:
    import openvino as ov
    import torch

    module, x = build(name)
    x = x[:1].repeat(batch, *([1] * (x.dim() - 1)))
    xn = x.numpy()
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(str(path), "CPU")
    request = compiled.create_infer_request()
    t0 = time.perf_counter()
    tuned = tune(path, objective="latency", batches=[batch], time_per_config_s=tune_s)
    tune_seconds = time.perf_counter() - t0
    session = backends.load(path, backend=None)
    feeds = {"x": xn}
    with torch.inference_mode():
        expected = module(x).numpy()
        fns = {
            "torch": lambda: module(x),
            "ort": lambda: plain.run(None, feeds),
            "openvino": lambda: request.infer({0: xn}),
            "slipway": lambda: session.run(feeds),
        }
        t = alternating_blocks(fns, repeats, warmup=5, rounds=4)
    got = session.run(feeds)["y"]
    ms = {k: v.median * 1e3 for k, v in t.items()}
    best_baseline = min(ms["ort"], ms["openvino"], ms["torch"])
    w = tuned.winner
    return {
        "model": name, "batch": batch, "ms": ms, "tune_s": tune_seconds,
        "winner": {"backend": w.backend, "threads": w.threads, "settings": w.settings, "concurrency": w.concurrency},
        "vs_fastest_baseline": best_baseline / ms["slipway"],
        "vs_torch": ms["torch"] / ms["slipway"],
        "max_abs_vs_torch": float(np.max(np.abs(got - expected))),
        "configs_measured": len(tuned.candidates),
    }


def tiny_mlp(path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def overhead(path: Path, repeats: int) -> dict[str, Any]:
    """Raw InferenceSession.run vs slipway Session.run, same options (1 thread), batch 1."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    raw = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ours = backends.load(path, "ort", backends.Options(threads=1))
    feeds = {"x": np.ones((1, 32), np.float32)}
    t = alternating_blocks({"raw": lambda: raw.run(None, feeds), "slipway": lambda: ours.run(feeds)},
                           repeats, warmup=200, rounds=10)
    return {"raw_us": t["raw"].median * 1e6, "slipway_us": t["slipway"].median * 1e6,
            "raw_best_us": t["raw"].best * 1e6, "slipway_best_us": t["slipway"].best * 1e6,
            "overhead": t["slipway"].median / t["raw"].median - 1}


def tables(rows: list[dict[str, Any]], ovh: dict[str, Any]):
    main = [[r["model"], str(r["batch"]), fmt(r["ms"]["torch"]), fmt(r["ms"]["ort"]), fmt(r["ms"]["openvino"]),
             fmt(r["ms"]["slipway"]), f"{r['vs_fastest_baseline']:.2f}x", f"{r['vs_torch']:.2f}x",
             f"{r['winner']['backend']} t{r['winner']['threads'] or 'auto'} "
             + " ".join(f"{k}={v}" for k, v in r["winner"]["settings"].items()),
             f"{r['tune_s']:.0f} s / {r['configs_measured']}", f"{r['max_abs_vs_torch']:.1e}"] for r in rows]
    small = [[fmt(ovh["raw_us"]), fmt(ovh["slipway_us"]), f"{100 * ovh['overhead']:+.1f}%",
              fmt(ovh["raw_best_us"]), fmt(ovh["slipway_best_us"])]]
    return [
        ("Latency per batch (ms, median)",
         ["model", "batch", "PyTorch eager", "onnxruntime (plain)", "OpenVINO (plain)", "slipway tuned",
          "vs fastest baseline", "vs PyTorch", "tuned choice", "tune time / configs", "max abs vs torch"], main),
        ("Session wrapper overhead on a tiny MLP, batch 1, 1 thread (us per call)",
         ["raw InferenceSession.run median", "slipway Session.run median", "overhead", "raw best", "slipway best"],
         small),
    ]


def edge_models(d: Path) -> dict[str, Path]:
    from tests.corpus import model

    out = {}
    for name in MODELS:
        out[name] = Path(d) / f"{name}.onnx"
        export(name, out[name])
    for name in EDGE_SHAPES:
        out[name] = model(name)
    return out


def snr_db(got: np.ndarray, ref: np.ndarray) -> float:
    noise = float(np.sum((got.astype(np.float64) - ref) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def edge(models: dict[str, Path], threads: Sequence[int], seconds: float) -> list[dict[str, Any]]:
    """Latency, peak RSS, SNR vs onnxruntime FP32 and conversion time per (model, engine, threads), batch 1."""
    from slipway.perf.runner import benchmark

    rows = []
    for name, path in models.items():
        shape = EDGE_SHAPES.get(name, (1, 3, 224, 224))
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        ref = backends.load(str(path), "ort", backends.Options(threads=1)).run({"x": x})
        out = next(iter(ref))
        for engine in EDGE_ENGINES:
            for precision in ("fp32", "fp16") if engine == "ncnn" else ("fp32",):
                if precision not in backends.get(engine).precisions:
                    continue
                print(f"{name} {engine} {precision}...", flush=True)
                t0 = time.perf_counter()
                try:
                    session = backends.load(str(path), engine, backends.Options(threads=1, precision=precision))
                except Exception as e:  # an engine that cannot take the model: its one line in the table
                    rows.append({"model": name, "engine": engine, "precision": precision, "error": str(e)[:160]})
                    continue
                load_s = time.perf_counter() - t0
                snr = snr_db(session.run({"x": x})[out], ref[out])
                session.close()
                if precision == "fp32":  # fresh processes: latency and the process's own peak RSS
                    measured = {r.threads: (r.p50_ms, r.rss_mb) for r in benchmark(
                        str(path), backends=[engine], batches=[1], threads=list(threads), isolate=True,
                        inputs={"x": x}, min_time_s=seconds, max_time_s=3 * seconds, warn=lambda m: None)}
                else:  # the runner has no precision axis: latency measured here, no RSS of its own
                    measured = {t: (_in_process_ms(path, engine, precision, t, x, seconds), None) for t in threads}
                for t in threads:
                    p50, rss = measured.get(t, (None, None))
                    rows.append({"model": name, "engine": engine, "precision": precision, "threads": t,
                                 "p50_ms": p50, "rss_mb": rss, "snr_db": snr, "load_s": load_s})
    return rows


def _in_process_ms(path: Path, engine: str, precision: str, threads: int, x: np.ndarray, seconds: float) -> float:
    session = backends.load(str(path), engine, backends.Options(threads=threads, precision=precision))
    once = median_time(lambda: session.run({"x": x}), repeats=1, warmup=3)
    repeats = max(5, int(seconds / max(once.median, 1e-3)))
    ms = median_time(lambda: session.run({"x": x}), repeats=repeats, warmup=0).median * 1e3
    session.close()
    return ms


def edge_table(rows: list[dict[str, Any]]):
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["model"], r["engine"], r["precision"], "-", "-", "-", "-", "-", r["error"]])
            continue
        body.append([r["model"], r["engine"], r["precision"], str(r["threads"]), fmt(r["p50_ms"]),
                     f"{r['rss_mb']:.0f}" if r["rss_mb"] else "-", f"{r['snr_db']:.1f}",
                     f"{r['load_s']:.1f}", ""])
    return ("Edge engines at batch 1 (median ms per request; RSS = the fresh process's peak, MB; SNR dB vs "
            "onnxruntime FP32 on one random input; first load s = convert + verify into an empty cache for mnn / "
            "ncnn, session creation for ort / openvino; FP16 rows: latency measured in the bench's own process, "
            "after the FP32 rows' cache filled, so no RSS and no conversion)",
            ["model", "engine", "precision", "threads", "p50 ms", "peak RSS MB", "SNR dB", "first load s", "error"],
            body)


def _previous() -> dict[str, Any]:
    import json

    from bench.common import RESULTS

    try:
        return json.loads((RESULTS / "engines.json").read_text())
    except (OSError, ValueError):
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=80)
    parser.add_argument("--tune-time", type=float, default=0.4, help="seconds per configuration while tuning")
    parser.add_argument("--edge-only", action="store_true", help="only the onnxruntime / OpenVINO / MNN / ncnn table")
    parser.add_argument("--edge-time", type=float, default=3.0, help="seconds per edge configuration")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(default_threads())
    host, found = machine(), versions()
    from importlib import metadata
    found["openvino"] = metadata.version("openvino")
    for package in ("MNN", "ncnn", "pnnx"):
        found[package] = metadata.version(package)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ovh: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        if not args.edge_only:
            for name in args.models.split(","):
                path = Path(d) / f"{name}.onnx"
                export(name, path)
                for batch in BATCHES:
                    print(f"{name} batch {batch}...", flush=True)
                    rows.append(one(name, batch, path, args.repeats, args.tune_time))
            tiny = Path(d) / "tiny.onnx"
            tiny_mlp(tiny)
            ovh = overhead(tiny, 20000)
        os.environ["SLIPWAY_CACHE"] = str(Path(d) / "cache")  # an empty conversion cache: first loads convert
        edge_rows = edge(edge_models(Path(d)), (1, 2), args.edge_time)
    notes = (f"\nPyTorch runs with {default_threads()} threads; the plain sessions use their engines' defaults. "
             "slipway's tuned choice is what `slipway tune --objective latency` picked for that batch, loaded "
             "through the settings file it wrote. Targets (issue 4): tuned >= 1.0x the fastest baseline; >= 4x "
             "PyTorch eager at batch 1 on resnet18; Session overhead <= 2%.\n\n"
             "Edge engines (issue 17): x86 is not MNN's or ncnn's home (their kernels are tuned for ARM NEON; on "
             "x86 ncnn has no FP16 arithmetic, only FP16 storage, and MNN's low precision runs FP32), so these "
             "numbers say what they cost on an x86 server, not what they do on a phone. The machine is shared "
             "(2 cores, other jobs running): latencies are noisy, compare within one row group only; a 2-thread row "
             "slower than its 1-thread row is a second thread waiting for a busy core (worst for ncnn, whose "
             "OpenMP threads spin), not the engine's scaling. ncnn runs "
             "one sample at a time (batch 1 here). INT8 (MNN's quantization tool, ncnn's calibration table) is "
             "not measured yet.\n")
    full_run = host["date"]
    if args.edge_only:  # the first two tables as the last full run measured them
        previous = _previous()
        rows, ovh = previous.get("rows", []), previous.get("overhead", {})
        full_run = previous.get("full_run_date") or previous.get("machine", {}).get("date", "?")
        if rows:
            notes += (f"\nThe first two tables are from the last full run ({full_run}, same kind of machine); "
                      "this run (--edge-only) measured the edge table.\n")
    tabs = (tables(rows, ovh) if rows and ovh else []) + [edge_table(edge_rows)]
    publish("engines", "Engines: PyTorch eager vs onnxruntime vs OpenVINO vs MNN vs ncnn vs slipway tuned", host,
            found, tabs, notes, time.perf_counter() - t0,
            {"machine": host, "versions": found, "rows": rows, "overhead": ovh, "full_run_date": full_run,
             "edge": edge_rows})


if __name__ == "__main__":
    main()
