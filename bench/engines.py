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

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.engines``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from bench.common import alternating_blocks, fmt, machine, publish, versions
from slipway import backends
from slipway.analyze.machine import default_threads
from slipway.convert.torch import quiet
from slipway.tune import tune
from slipway.zoo import build

MODELS = ["resnet18", "mobilenetv2"]
BATCHES = [1, 8]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=80)
    parser.add_argument("--tune-time", type=float, default=0.4, help="seconds per configuration while tuning")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(default_threads())
    host, found = machine(), versions()
    from importlib import metadata
    found["openvino"] = metadata.version("openvino")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            path = Path(d) / f"{name}.onnx"
            export(name, path)
            for batch in BATCHES:
                print(f"{name} batch {batch}...", flush=True)
                rows.append(one(name, batch, path, args.repeats, args.tune_time))
        tiny = Path(d) / "tiny.onnx"
        tiny_mlp(tiny)
        ovh = overhead(tiny, 20000)
    notes = (f"\nPyTorch runs with {default_threads()} threads; the plain sessions use their engines' defaults. "
             "slipway's tuned choice is what `slipway tune --objective latency` picked for that batch, loaded "
             "through the settings file it wrote. Targets (issue 4): tuned >= 1.0x the fastest baseline; >= 4x "
             "PyTorch eager at batch 1 on resnet18; Session overhead <= 2%.\n")
    publish("engines", "Engines: PyTorch eager vs onnxruntime vs OpenVINO vs slipway tuned", host, found,
            tables(rows, ovh), notes, time.perf_counter() - t0, {"machine": host, "versions": found, "rows": rows,
                                                                  "overhead": ovh})


if __name__ == "__main__":
    main()
