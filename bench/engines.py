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

A third table puts the four CPU engines side by side at batch 1, 1 and 2 threads, FP32, INT8 and FP16 where the
engine has it: onnxruntime, OpenVINO, MNN and ncnn (slipway's ``mnn`` / ``ncnn`` engines: converted, verified and
cached on first use), on ResNet-18 and MobileNetV2 (``slipway.zoo``) and PP-OCRv4 det / rec (shipped in the
rapidocr-onnxruntime wheel). Latency and peak RSS come from ``slipway.perf.runner.benchmark`` with each
configuration in a fresh process (peak RSS = that process's VmHWM); first-load time is the conversion into an
empty cache (convert + verify against onnxruntime), for INT8 the quantization; SNR is each engine's output
against onnxruntime FP32 on held-out inputs. INT8: one calibration set per model (random normal inputs for the
zoo models, rendered pages / line crops through the OCR pipeline's pre-processing for PP-OCRv4): onnxruntime and
OpenVINO run slipway quantize's QDQ model made from it, MNN and ncnn quantize their own files from it
(``Options(precision="int8", settings={"calib": ...})``). A fourth table says where each engine stands per model
and what ``slipway.tune.tune(objective="latency")`` picks among the four engines.

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.engines`` (``--edge-only`` for the third
table alone; ``--edge-models`` / ``--edge-engines`` / ``--edge-precisions`` re-measure only those rows of it, e.g.
``--edge-models ppocr_det,ppocr_rec --edge-engines mnn,ncnn --edge-precisions int8``: the other rows, tune's picks
and the GPU table stay as the last run wrote them, and the notes say which rows were measured when).
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

from bench.common import alternating_blocks, fmt, machine, publish, versions
from slipway import backends
from slipway.analyze.machine import default_threads
from slipway.convert.torch import quiet
from slipway.tune import tune
from slipway.zoo import build

MODELS = ["resnet18", "mobilenetv2"]
BATCHES = [1, 8]
EDGE_ENGINES = ["ort", "openvino", "mnn", "ncnn"]
EDGE_SHAPES = {"ppocr_det": (1, 3, 480, 480), "ppocr_rec": (1, 3, 48, 320)}  # RapidOCR's det side, one text line
CALIB_SAMPLES = 16  # calibration samples per model (one .npz: slipway quantize, MNN and ncnn all read it)
EVAL_SAMPLES = 8  # held-out inputs the SNR is measured on
# Samples each INT8 engine calibrates on (of CALIB_SAMPLES): MNN's admm searches every tensor's scale on one
# forward pass of all of them (about 10 s per MobileNetV2 sample on one x86 core; PP-OCRv4 rec took over 6 min
# for 8 samples), so it gets one or two; 0 = not run. PP-OCRv4 on MNN runs ema instead (INT8_METHODS: 5 s for
# rec, 16 s for det with all 16 samples; admm on det at 480 x 480 would take the bench's whole budget).
INT8_SAMPLES = {"mnn": {"resnet18": 2, "mobilenetv2": 2, "ppocr_det": 16, "ppocr_rec": 16},
                "ncnn": {"resnet18": 16, "mobilenetv2": 16, "ppocr_det": 16, "ppocr_rec": 16}}
# The calibration method per engine and model where it is not the engine's default (mnn: admm; ncnn: auto, the
# best of its four methods, then the accuracy budget keeps the layers most responsible for the error in FP32).
INT8_METHODS = {"mnn": {"ppocr_det": "ema", "ppocr_rec": "ema"}, "ncnn": {}}


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


def edge_models(d: Path, names: Sequence[str] = (*MODELS, *EDGE_SHAPES)) -> dict[str, Path]:
    from tests.corpus import model

    out = {}
    for name in names:
        if name in EDGE_SHAPES:
            out[name] = model(name)
        else:
            out[name] = Path(d) / f"{name}.onnx"
            export(name, out[name])
    return out


def snr_db(got: np.ndarray, ref: np.ndarray) -> float:
    noise = float(np.sum((got.astype(np.float64) - ref) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def samples(name: str, n: int, seed: int) -> np.ndarray:
    """``n`` inputs of model ``name`` [n, 3, H, W], deterministic: random normal ones for the zoo models (what
    slipway's benches feed them everywhere: no real images here); for PP-OCRv4 det, rendered text pages
    (:func:`slipway.pipeline.pages.render_lines`, 480 x 480) pre-processed by the OCR pipeline's
    ``ocr.det_preprocess`` (side 480, mean / std 0.5); for rec, rendered line crops
    (:func:`slipway.pipeline.pages.line_crops`) pre-processed by its ``crop_tensor`` (48 x 320, zero-padded)."""
    from slipway.pipeline.ocr import crop_tensor, det_preprocess
    from slipway.pipeline.pages import line_crops, render_lines, text_lines

    if name == "ppocr_det":
        rng = np.random.default_rng(seed)
        pages = [render_lines(text_lines(5, seed=seed + i), [int(v) for v in rng.integers(16, 25, 5)],
                              size=(480, 480), seed=seed + i).image for i in range(n)]
        return np.concatenate([det_preprocess(p, limit_side_len=480, limit_type="max")["tensor"] for p in pages])
    if name == "ppocr_rec":
        return crop_tensor(line_crops(n, seed=seed)[0], EDGE_SHAPES[name][1:])
    shape = EDGE_SHAPES.get(name, (1, 3, 224, 224))
    return np.random.default_rng(seed).standard_normal((n, *shape[1:])).astype(np.float32)


GPU_ENGINES = ("ort-cuda", "ort-tensorrt", "openvino-gpu")
NO_GPU = ("\nGPU engines: no NVIDIA (or OpenVINO) GPU on this machine, so no GPU row was measured; "
          "tests/backends/test_gpu.py (marked gpu) skipped.\n")
GPU_MODELS = ("resnet18", "mobilenetv2")


def gpu(models: dict[str, Path], int8: dict[str, dict[str, Any]], seconds: float) -> tuple[list[list[str]], str]:
    """ResNet-18 and MobileNetV2 at batch 1 on the GPU engines present, FP32 / FP16 / INT8 (the QDQ model), through
    slipway.perf.runner; without any: one row per engine saying why (the gpu-marked tests skip the same way)."""
    from slipway import backends
    from slipway.perf.runner import benchmark

    why = {name: reason for name, reason in backends.available().items() if name in GPU_ENGINES}
    present = [name for name, reason in why.items() if reason is None]
    if not present:
        return [[name, "-", "-", "-", f"not available: {reason}"] for name, reason in why.items()], NO_GPU
    rows = []
    for name in GPU_MODELS:
        for engine in present:
            for precision in ("fp32", "fp16", "int8"):
                path = int8[name].get("qdq") if precision == "int8" else models[name]
                if path is None:
                    continue
                try:
                    r = benchmark(path, backends=[engine], batches=[1], precisions=[precision], min_time_s=seconds,
                                  warn=lambda _m: None)
                    rows.append([name, engine, precision, f"{r[0].p50_ms:.3g}", ""] if r else
                                [name, engine, precision, "-", "skipped: the engine does not run this precision"])
                except Exception as e:  # one line into the table
                    rows.append([name, engine, precision, "-", str(e)[:160]])
    return rows, "\nGPU engines: " + ", ".join(present) + " measured (p50 ms at batch 1).\n"


def int8_models(models: dict[str, Path], d: Path, qdq: bool = True) -> dict[str, dict[str, Any]]:
    """Per model: the calibration .npz (:data:`CALIB_SAMPLES` samples) and slipway quantize's QDQ model made
    from it (what onnxruntime and OpenVINO run as INT8; not made when ``qdq`` is false), with the seconds it took."""
    from slipway.quantize import quantize

    out: dict[str, dict[str, Any]] = {}
    for name, path in models.items():
        calib = d / f"{name}.calib.npz"
        np.savez(calib, x=samples(name, CALIB_SAMPLES, seed=100))
        if not qdq:
            out[name] = {"calib": calib, "qdq": None, "error": "not made"}
            continue
        qdq = d / f"{name}.int8.onnx"
        print(f"{name}: slipway quantize (QDQ)...", flush=True)
        t0 = time.perf_counter()
        try:
            quantize(path, qdq, calib=str(calib), metric=None, speed_check=False)
            out[name] = {"calib": calib, "qdq": qdq, "quantize_s": time.perf_counter() - t0}
        except Exception as e:  # its one line goes into the table
            out[name] = {"calib": calib, "qdq": None, "error": f"slipway quantize: {str(e)[:140]}"}
    return out


def _variants(name: str, engine: str, path: Path, int8: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """(precision, model, settings) rows of one engine: FP32, its reduced float where it has one, INT8."""
    offered = backends.get(engine).precisions
    out: list[tuple[str, Any, dict[str, Any]]] = [("fp32", path, {})]
    out += [("fp16", path, {}) for p in ("fp16",) if p in offered]
    if engine in ("mnn", "ncnn"):
        n = INT8_SAMPLES[engine][name]
        method = INT8_METHODS[engine].get(name)
        out.append(("int8", path if n else None, {"calib": str(int8["calib"]), "calib_samples": n,
                                                  **({"calib_method": method} if method else {})}))
    else:
        out.append(("int8", int8.get("qdq"), {}))
    return out


def edge(models: dict[str, Path], int8: dict[str, dict[str, Any]], threads: Sequence[int],
         seconds: float, engines: Sequence[str] = EDGE_ENGINES,
         precisions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Latency, peak RSS, SNR vs onnxruntime FP32 and first-load time per (model, engine, precision, threads),
    batch 1 (only ``engines`` and ``precisions``, all when None)."""
    from slipway.perf.runner import benchmark

    rows = []
    for name, path in models.items():
        held_out = samples(name, EVAL_SAMPLES, seed=0)  # never calibrated on
        ref_session = backends.load(str(path), "ort", backends.Options(threads=1))
        refs = [ref_session.run({"x": held_out[i:i + 1]}) for i in range(len(held_out))]
        out = next(iter(refs[0]))
        ref = np.concatenate([r[out].ravel() for r in refs])
        x = held_out[:1]
        for engine in engines:
            for precision, source, settings in _variants(name, engine, path, int8[name]):
                if precisions is not None and precision not in precisions:
                    continue
                base = {"model": name, "engine": engine, "precision": precision}
                if source is None:
                    why = (f"not run: {engine}'s admm calibration at this size would take the bench's whole time budget"
                           if engine in ("mnn", "ncnn") else int8[name].get("error", "no model"))
                    rows.append({**base, "error": why})
                    continue
                print(f"{name} {engine} {precision}...", flush=True)
                t0 = time.perf_counter()
                try:
                    session = backends.load(str(source), engine,
                                            backends.Options(threads=1, precision=precision, settings=settings))
                except Exception as e:  # an engine that cannot take the model: its one line in the table
                    rows.append({**base, "error": str(e)[:200]})
                    continue
                load_s = time.perf_counter() - t0
                if precision == "int8" and engine in ("mnn", "ncnn"):
                    base.update(_int8_record(engine))
                if precision == "int8" and engine in ("ort", "openvino"):
                    load_s += int8[name]["quantize_s"]  # the QDQ model's making, shared by both
                got = np.concatenate([session.run({"x": held_out[i:i + 1]})[out].ravel() for i in range(len(held_out))])
                snr = snr_db(got, ref)
                session.close()
                try:  # fresh processes: latency and the process's own peak RSS
                    measured = {r.threads: (r.p50_ms, r.rss_mb) for r in benchmark(
                        str(source), backends=[engine], precisions=[precision], batches=[1], threads=list(threads),
                        isolate=True, inputs={"x": x}, min_time_s=seconds, max_time_s=3 * seconds,
                        calib=settings.get("calib"), settings={f"{engine}:{k}": v for k, v in settings.items()
                                                               if k != "calib"}, warn=lambda m: None)}
                except Exception as e:
                    rows.append({**base, "error": f"bench: {str(e)[:180]}"})
                    continue
                for t in threads:
                    p50, rss = measured.get(t, (None, None))
                    rows.append({**base, "threads": t, "p50_ms": p50, "rss_mb": rss, "snr_db": snr, "load_s": load_s,
                                 **({"calib_samples": settings["calib_samples"]} if "calib_samples" in settings
                                    else {})})
    return rows


def _int8_record(engine: str) -> dict[str, Any]:
    """The method, quantization time and accuracy budget of the INT8 entry just built (the newest in the cache)."""
    import json

    from slipway.backends import edge as edge_cache

    root = edge_cache.cache_root() / f"{engine}-int8"
    entries = sorted((p for p in root.iterdir() if (p / "manifest.json").is_file()), key=lambda p: p.stat().st_mtime)
    if not entries:
        return {}
    m = json.loads((entries[-1] / "manifest.json").read_text())
    budget = m.get("accuracy_budget") or {}
    return {"int8_method": budget.get("method", m["options"]["method"]), "quantization_s": m.get("quantization_s"),
            **({"fp32_layers": budget["fp32_layers"], "int8_layers": budget["int8_layers"],
                "snr_db_all_int8": budget["snr_db_all_int8"]} if budget else {})}


def tuned(models: dict[str, Path], seconds: float) -> list[dict[str, Any]]:
    """What ``slipway tune --objective latency`` picks per model among the four engines (batch 1, the held-out
    input; its own search of precisions, threads and engine settings; nothing written beside the model)."""
    out = []
    for name, path in models.items():
        print(f"{name}: tune...", flush=True)
        t0 = time.perf_counter()
        try:
            r = tune(path, objective="latency", backends=EDGE_ENGINES, batches=[1],
                     inputs={"x": samples(name, 1, seed=0)}, time_per_config_s=seconds, write=False)
        except Exception as e:
            out.append({"model": name, "error": str(e)[:200]})
            continue
        w = r.winner
        out.append({"model": name, "backend": w.backend, "precision": w.precision, "threads": w.threads,
                    "settings": w.settings, "p50_ms": w.p50_ms, "configs": len(r.candidates),
                    "tune_s": time.perf_counter() - t0, "skipped": r.skipped})
    return out


def edge_table(rows: list[dict[str, Any]]):
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["model"], r["engine"], r["precision"], "-", "-", "-", "-", "-", r["error"]])
            continue
        body.append([r["model"], r["engine"], r["precision"], str(r["threads"]), fmt(r["p50_ms"]) if r["p50_ms"]
                     else "-", f"{r['rss_mb']:.0f}" if r["rss_mb"] else "-", f"{r['snr_db']:.1f}",
                     f"{r['load_s']:.1f}", _int8_note(r)])
    return ("Edge engines at batch 1 (median ms per request; RSS = the fresh process's peak, MB; SNR dB vs "
            f"onnxruntime FP32 over {EVAL_SAMPLES} held-out inputs; first load s = convert + verify into an empty "
            "cache for mnn / ncnn FP32; for their INT8 the engine's quantization + verification (FP32 files "
            "cached); for ort / openvino INT8 slipway quantize's time (one QDQ model for both) + session creation; "
            "session creation otherwise)",
            ["model", "engine", "precision", "threads", "p50 ms", "peak RSS MB", "SNR dB", "first load s",
             "note / error"], body)


def _int8_note(r: dict[str, Any]) -> str:
    """An INT8 row of mnn / ncnn measured since the accuracy budget: its method and the layers kept FP32."""
    if "int8_method" not in r:
        return ""
    note = f"{r['int8_method']}"
    if "fp32_layers" in r:
        n = len(r["fp32_layers"])
        note += (f"; all-int8 {r['snr_db_all_int8']:.1f} dB, {n} of {n + r['int8_layers']} layers kept FP32"
                 + (f" ({', '.join(r['fp32_layers'][:8])}{', ...' if n > 8 else ''})" if n else ""))
    return note


def _best(rows: list[dict[str, Any]], pred) -> dict[str, Any] | None:
    found = [r for r in rows if pred(r)]
    return min(found, key=lambda r: r["p50_ms"]) if found else None


def standings(rows: list[dict[str, Any]], picks: list[dict[str, Any]]):
    """Per model: the fastest engine per precision (at its better thread count), MNN's and ncnn's best against
    onnxruntime's FP32, and tune's pick."""
    body = []
    for name in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == name and "error" not in r and r.get("p50_ms")]
        ort32 = _best(ok, lambda r: r["engine"] == "ort" and r["precision"] == "fp32")
        cells = [name]
        for prec in ("fp32", "int8"):
            b = _best(ok, lambda r, p=prec: r["precision"] == p)
            cells.append(f"{b['engine']} t{b['threads']} {fmt(b['p50_ms'])} ms" if b else "-")
        for engine in ("mnn", "ncnn"):
            b = _best(ok, lambda r, e=engine: r["engine"] == e)
            cells.append(f"{ort32['p50_ms'] / b['p50_ms']:.2f}x ({b['precision']} t{b['threads']}, "
                         f"{b['snr_db']:.0f} dB)" if b and ort32 else "-")
        pick = next((p for p in picks if p["model"] == name), None)
        if pick is None or "error" in pick:
            cells.append(pick["error"] if pick else "-")
        else:
            cells.append(f"{pick['backend']} {pick['precision']} t{pick['threads'] or 'auto'} "
                         + " ".join(f"{k}={v}" for k, v in pick["settings"].items())
                         + f" ({fmt(pick['p50_ms'])} ms; {pick['configs']} configs, {pick['tune_s']:.0f} s)")
        body.append(cells)
    return ("Where each engine stands per model (fastest row of the table above per precision; MNN / ncnn: their "
            "fastest row of any precision as a speed-up over onnxruntime FP32's fastest, with its SNR), and what "
            "`slipway tune --objective latency --backend ort,openvino,mnn,ncnn` picks",
            ["model", "fastest FP32", "fastest INT8", "MNN best vs ort FP32", "ncnn best vs ort FP32",
             "slipway tune picks"], body)


def edge_notes(rows: list[dict[str, Any]], picks: list[dict[str, Any]]) -> str:
    """How the INT8 rows were made, and where MNN and ncnn stand (ratios computed from the table)."""
    ok = [r for r in rows if "error" not in r and r.get("p50_ms")]
    lines = [
        "\nINT8 (issue 17): every engine calibrates on the same data: for ResNet-18 and MobileNetV2 "
        f"{CALIB_SAMPLES} deterministic random normal inputs (seed 100; no real images are available here, and "
        "random normal inputs are what slipway's benches feed these random-weight zoo models everywhere), for "
        f"PP-OCRv4 det {CALIB_SAMPLES} rendered text pages (slipway.pipeline.pages.render_lines, 480 x 480) through "
        f"the OCR pipeline's ocr.det_preprocess, for rec {CALIB_SAMPLES} rendered line crops (pages.line_crops) "
        "through its crop_tensor (48 x 320). onnxruntime INT8 = slipway quantize's QDQ model made from that .npz "
        "(defaults: method auto, per-channel weights; no speed check); OpenVINO INT8 = the same QDQ model on "
        "OpenVINO; MNN INT8 = MNN's own quantization tool (admm unless said: "
        + ", ".join(f"{n} {INT8_METHODS['mnn'].get(n, 'admm')}" for n in INT8_SAMPLES["mnn"])
        + ") on the first "
        + ", ".join(f"{n} {k}" for n, k in INT8_SAMPLES["mnn"].items())
        + " samples (admm costs ~10 s per MobileNetV2 sample on one x86 core and took over 6 min for 8 PP-OCRv4 rec "
        "samples, so it gets few; 0 = not run); ncnn INT8 = "
        "slipway's ncnn calibration table + ncnn2int8's rewrite on "
        + ", ".join(f"{n} {k}" for n, k in INT8_SAMPLES["ncnn"].items())
        + " samples (method auto: the best of entropy / minmax / percentile / mse by the all-int8 model's SNR, then "
        "the accuracy budget keeps the layers most responsible for the error in FP32 until the SNR on the "
        "calibration samples is 3 dB above the bar; rows measured before it existed ran entropy, all-int8). "
        "MNN on PP-OCRv4 (measured on the same 16 samples, 2026-12-07): rec ema 12.3 dB in 5 s, kl 0.7 dB in 15 s, "
        "admm 6.1 dB on 1 sample; det ema 0.0 dB in 16 s, kl 0.0 dB in 21 s (outputs near zero), admm not run "
        "(minutes); none reaches the bar, so MNN's PP-OCR INT8 rows are refusals. "
        "Each INT8 model of MNN / ncnn is verified at load (output SNR >= 15 dB against onnxruntime "
        f"FP32 on calibration samples) or refused. SNR in the table: {EVAL_SAMPLES} held-out inputs (seed 0 / "
        "other pages and crops), the first output. ncnn FP16 = FP16 storage (x86 with F16C has no FP16 "
        "arithmetic); MNN offers no FP16 on x86; OpenVINO's reduced precision on this CPU is bf16 (not measured "
        "here).\n"]
    ort32 = {m: min(r["p50_ms"] for r in ok if r["model"] == m and r["engine"] == "ort" and r["precision"] == "fp32")
             for m in dict.fromkeys(r["model"] for r in ok if r["engine"] == "ort" and r["precision"] == "fp32")}
    for engine in ("mnn", "ncnn", "openvino"):
        for prec in ("fp32", "int8"):
            ratios = [ort32[m] / min(r["p50_ms"] for r in ok if r["model"] == m and r["engine"] == engine
                                     and r["precision"] == prec)
                      for m in ort32 if any(r["model"] == m and r["engine"] == engine and r["precision"] == prec
                                            for r in ok)]
            if ratios:
                lines.append(f"- {engine} {prec.upper()} (its better thread count) vs onnxruntime FP32: "
                             f"{min(ratios):.2f}x to {max(ratios):.2f}x the speed over {len(ratios)} models.")
    wins = [p for p in picks if "error" not in p]
    if wins:
        lines.append("- slipway tune (latency, batch 1, ort / openvino / mnn / ncnn; it searches FP32 and the "
                     "engines' own reduced float precisions within 1% max relative error - INT8 needs a quantized "
                     "model or calibration data, outside its search) picks: "
                     + "; ".join(f"{p['model']} -> {p['backend']} {p['precision']}" for p in wins) + ".")
    return "\n".join(lines) + "\n"


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]], old_date: str) -> list[dict[str, Any]]:
    """``old`` edge rows with those of every (model, engine, precision) in ``new`` replaced by the new ones, in
    place (new groups not in ``old`` go last); old rows without a date get ``old_date``."""
    key = lambda r: (r["model"], r["engine"], r["precision"])  # noqa: E731
    fresh: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in new:
        fresh.setdefault(key(r), []).append(r)
    out, done = [], set()
    for r in old:
        k = key(r)
        if k not in fresh:
            out.append({"measured": old_date, **r})
        elif k not in done:
            out += fresh[k]
            done.add(k)
    return out + [r for k, rs in fresh.items() if k not in done for r in rs]


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
    parser.add_argument("--edge-tune-time", type=float, default=0.15,
                        help="seconds per configuration of the edge table's tune runs")
    parser.add_argument("--edge-models", help="re-measure only these models' edge rows (comma-separated; implies "
                        "--edge-only; the other rows, tune's picks and the GPU table stay as last written)")
    parser.add_argument("--edge-engines", help="re-measure only these engines' edge rows (as --edge-models)")
    parser.add_argument("--edge-precisions", help="re-measure only these precisions' edge rows (as --edge-models)")
    args = parser.parse_args()
    partial = bool(args.edge_models or args.edge_engines or args.edge_precisions)
    args.edge_only = args.edge_only or partial
    edge_names = args.edge_models.split(",") if args.edge_models else [*MODELS, *EDGE_SHAPES]
    engines = args.edge_engines.split(",") if args.edge_engines else EDGE_ENGINES
    precisions = args.edge_precisions.split(",") if args.edge_precisions else None
    for given, known in ((edge_names, [*MODELS, *EDGE_SHAPES]), (engines, EDGE_ENGINES),
                         (precisions or [], ["fp32", "fp16", "int8"])):
        if set(given) - set(known):
            parser.error(f"unknown {', '.join(sorted(set(given) - set(known)))} (choose from {', '.join(known)})")
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
        models = edge_models(Path(d), edge_names)
        qdq = any(e in engines for e in ("ort", "openvino")) and (precisions is None or "int8" in precisions)
        int8 = int8_models(models, Path(d), qdq=qdq or not partial)
        edge_rows = edge(models, int8, (1, 2), args.edge_time, engines, precisions)
        for r in edge_rows:
            r["measured"] = host["date"]
        previous = _previous()
        if partial:  # the rows not re-measured, tune's picks and the GPU table: as the last run wrote them
            edge_rows = merge_rows(previous.get("edge", []), edge_rows,
                                   previous.get("edge_date") or previous.get("machine", {}).get("date", "?"))
            picks, gpu_rows = previous.get("tune", []), previous.get("gpu", [])
            gpu_note = previous.get("gpu_note", NO_GPU if all(r[3] == "-" for r in gpu_rows) else "\n")
        else:
            picks = tuned(models, args.edge_tune_time)
            gpu_rows, gpu_note = gpu(models, int8, args.edge_time)
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
             "one sample at a time (batch 1 here).\n" + edge_notes(edge_rows, picks) + gpu_note)
    if partial:
        dates = sorted({r.get("measured", "?") for r in edge_rows})
        notes += ("\nEdge table rows by date measured (this run re-measured "
                  f"{', '.join(edge_names)} x {', '.join(engines)} x {', '.join(precisions or ['every precision'])}"
                  "; tune's picks and the GPU table are from the last run that measured them): "
                  + "; ".join(f"{d}: " + ", ".join(dict.fromkeys(f"{r['model']} {r['engine']} {r['precision']}"
                                                                for r in edge_rows if r.get("measured", "?") == d))
                              if d == host["date"] else f"{d}: the other rows" for d in dates) + ".\n")
    full_run = host["date"]
    if args.edge_only:  # the first two tables as the last full run measured them
        rows, ovh = previous.get("rows", []), previous.get("overhead", {})
        full_run = previous.get("full_run_date") or previous.get("machine", {}).get("date", "?")
        if rows:
            notes += (f"\nThe first two tables are from the last full run ({full_run}, same kind of machine); "
                      + ("this run re-measured the edge rows dated above.\n" if partial else
                         "this run (--edge-only) measured the edge table.\n"))
    tabs = (tables(rows, ovh) if rows and ovh else []) + [edge_table(edge_rows), standings(edge_rows, picks),
                                                            ("GPU engines (issue 17), batch 1",
                                                             ["model", "engine", "precision", "p50 ms", "note"],
                                                             gpu_rows)]
    publish("engines", "Engines: PyTorch eager vs onnxruntime vs OpenVINO vs MNN vs ncnn vs slipway tuned", host,
            found, tabs, notes, time.perf_counter() - t0,
            {"machine": host, "versions": found, "rows": rows, "overhead": ovh, "full_run_date": full_run,
             "edge": edge_rows, "tune": picks, "gpu": gpu_rows, "gpu_note": gpu_note,
             "int8": {"calib_samples": CALIB_SAMPLES, "engine_samples": INT8_SAMPLES, "eval_samples": EVAL_SAMPLES}})


if __name__ == "__main__":
    main()
