"""Graph optimization side by side: slipway ``optimize`` vs onnxsim vs onnxslim, on every zoo model.

For each zoo model, exported three ways (dynamo exporter with a dynamic batch dim; dynamo exporter
fully static at batch 1; the TorchScript exporter at opset 17 with a dynamic batch, whose graphs
carry the BatchNorms, shape subgraphs and decomposed ops that the dynamo exporter's own
optimizer removes), in one run:

* the optimized model of each tool: node count, file size, optimize wall time;
* onnxruntime latency at batch 1 with its own graph optimizations on (``ORT_ENABLE_EXTENDED``)
  and off (``ORT_DISABLE_ALL``), 2 intra-op threads, every variant timed in alternating blocks
  (median); the ratio to the input model's latency;
* the max abs difference of each output from the input model's (onnxruntime, optimizations
  off) on random inputs at batch 1 and 3 (dynamic) or 1 (static).

Targets (issue 3): node count <= the better of onnxsim and onnxslim on every model; extended-level
latency <= 1.00x the input's; zero numerical failures; RepVGG blocks all merged and >= 1.25x faster
than the input and than both peers.

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.optimize`` (``make bench`` installs
the pinned peers).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from bench.common import alternating_blocks, fmt, machine, publish, versions
from slipway.convert.torch import quiet
from slipway.zoo import NAMES, ZOO, build

THREADS = 2
SECONDS_PER_TOOL = 2.0  # timed calls per tool and optimization level, in seconds
TOOLS = ("input", "slipway", "onnxsim", "onnxslim")
PEERS = ("onnxsim", "onnxslim")


VARIANTS = {"dynamic": "dynamo exporter, dynamic batch", "static": "dynamo exporter, static batch 1",
            "legacy": "TorchScript exporter (opset 17, no onnxscript optimizer), dynamic batch"}


def export(name: str, variant: str, path: Path) -> None:
    import torch

    module, x = build(name)
    x = x[:1]
    if variant == "legacy":
        axes = {0: "batch", **ZOO[name].dynamic}
        with quiet():
            torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                              dynamic_axes={"x": axes}, dynamo=False)
        return
    dynamic = variant == "dynamic"
    shapes = ({"x": {0: "batch", **ZOO[name].dynamic}},) if dynamic else None
    with quiet():
        program = torch.onnx.export(module, (x,), input_names=["x"], output_names=["y"],
                                    dynamic_shapes=shapes[0] if shapes else None, dynamo=True, verbose=False)
        program.save(str(path))


def run_slipway(src: Path, dst: Path) -> dict[str, Any]:
    from slipway.optimize import optimize

    result = optimize(src, dst, target="ort")
    return {"decision": result.decision, "dropped": result.dropped,
            "passes": {k: v for k, v in result.to_dict()["passes"].items() if v}}


def run_onnxsim(src: Path, dst: Path) -> dict[str, Any]:
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(str(src)))
    onnx.save(model, str(dst))
    return {"check": bool(ok)}


def run_onnxslim(src: Path, dst: Path) -> dict[str, Any]:
    import onnxslim

    onnx.save(onnxslim.slim(onnx.load(str(src))), str(dst))
    return {}


RUNNERS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "slipway": run_slipway, "onnxsim": run_onnxsim, "onnxslim": run_onnxslim}


def session(path: Path, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = THREADS
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds_for(sess: ort.InferenceSession, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for i in sess.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in i.shape]
        shape = [d if d is not None else 16 for d in shape]
        out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def max_diff(ref: Path, cand: Path, batches: list[int]) -> float:
    a, b = session(ref, ort.GraphOptimizationLevel.ORT_DISABLE_ALL), session(cand, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    worst = 0.0
    for batch in batches:
        feeds = feeds_for(a, batch, np.random.default_rng(batch))
        for x, y in zip(a.run(None, feeds), b.run(None, feeds), strict=True):
            if x.shape != y.shape:
                return float("inf")
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0)
    return worst


def latencies(paths: dict[str, Path], level: ort.GraphOptimizationLevel, repeats: int) -> dict[str, float]:
    sessions = {tool: session(p, level) for tool, p in paths.items()}
    feeds = feeds_for(sessions["input"], 1, np.random.default_rng(0))
    fns = {tool: (lambda s=s: s.run(None, feeds)) for tool, s in sessions.items()}
    once = min(alternating_blocks(fns, 3, warmup=2, rounds=1).values(), key=lambda t: t.median).median
    # at least `repeats` calls, and about `SECONDS_PER_TOOL` of them, spread over 10 rotating rounds
    calls = max(repeats, min(20_000, int(SECONDS_PER_TOOL / max(once, 1e-6))))
    timed = alternating_blocks(fns, calls, warmup=10, rounds=10, rotate=True)
    return {tool: t.median * 1e3 for tool, t in timed.items()}


def one(name: str, variant: str, tmp: Path, repeats: int) -> dict[str, Any]:
    src = tmp / f"{name}-{variant}.onnx"
    export(name, variant, src)
    dynamic = variant != "static"
    paths, row = {"input": src}, {"model": name, "batch": variant, "tools": {}}
    row["tools"]["input"] = {"nodes": len(onnx.load(str(src), load_external_data=False).graph.node),
                             "bytes": src.stat().st_size, "seconds": 0.0, "max_abs": 0.0}
    for tool, runner in RUNNERS.items():
        dst = tmp / f"{src.stem}-{tool}.onnx"
        t0 = time.perf_counter()
        try:
            extra = runner(src, dst)
        except Exception as e:  # a peer failing on a model is a result, not a crash
            row["tools"][tool] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
            continue
        seconds = time.perf_counter() - t0
        paths[tool] = dst
        row["tools"][tool] = {"nodes": len(onnx.load(str(dst), load_external_data=False).graph.node),
                              "bytes": dst.stat().st_size, "seconds": seconds,
                              "max_abs": max_diff(src, dst, [1, 3] if dynamic else [1]), **extra}
    for key, level in (("ext_ms", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
                       ("off_ms", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
        for tool, ms in latencies(paths, level, repeats).items():
            row["tools"][tool][key] = ms
    return row


def tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    nodes, lat, err = [], [], []
    for r in rows:
        t = r["tools"]
        label = [r["model"], r["batch"]]
        nodes.append(label + [fmt(t[k].get("nodes")) if "error" not in t[k] else "fail" for k in TOOLS]
                     + [_best_peer_ok(t), f"{t['input']['bytes'] / 1e6:.2f}",
                        f"{t['slipway'].get('bytes', 0) / 1e6:.2f}", fmt(t["slipway"].get("seconds")),
                        fmt(t["onnxsim"].get("seconds")), fmt(t["onnxslim"].get("seconds"))])
        base = t["input"]["ext_ms"]
        lat.append(label + [fmt(t[k].get("ext_ms")) for k in TOOLS]
                   + [f"{base / t[k]['ext_ms']:.2f}x" if "ext_ms" in t[k] else "-" for k in TOOLS[1:]]
                   + [fmt(t[k].get("off_ms")) for k in TOOLS])
        err.append(label + [f"{t[k]['max_abs']:.1e}" if "max_abs" in t[k] else t[k].get("error", "-")
                            for k in TOOLS[1:]] + [t["slipway"].get("decision", "-")])
    return [
        ("Node count, file size (MB), optimize time (s)",
         ["model", "export", *TOOLS, "slipway <= best peer", "input MB", "slipway MB", "slipway s", "onnxsim s",
          "onnxslim s"], nodes),
        (f"onnxruntime latency at batch 1 (ms, median, {THREADS} threads): ORT_ENABLE_EXTENDED, speedup vs input, "
         "then ORT_DISABLE_ALL",
         ["model", "export", *[f"{k} ext" for k in TOOLS], *[f"{k} speedup" for k in TOOLS[1:]],
          *[f"{k} off" for k in TOOLS]], lat),
        ("Max abs difference from the input model (onnxruntime, optimizations off)",
         ["model", "export", *TOOLS[1:], "slipway never-slower decision"], err),
    ]


def _best_peer_ok(t: dict[str, Any]) -> str:
    peers = [t[p]["nodes"] for p in PEERS if "nodes" in t[p]]
    if "nodes" not in t["slipway"]:
        return "FAIL"
    return "yes" if not peers or t["slipway"]["nodes"] <= min(peers) else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(NAMES))
    parser.add_argument("--repeats", type=int, default=40, help="minimum timed calls per tool and level")
    args = parser.parse_args()
    host, found = machine(), versions()
    for extra in ("onnxsim", "onnxslim", "onnxscript"):
        from importlib import metadata
        try:
            found[extra] = metadata.version(extra)
        except metadata.PackageNotFoundError:
            found[extra] = "-"
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            for variant in VARIANTS:
                print(f"{name} ({VARIANTS[variant]})...", flush=True)
                rows.append(one(name, variant, Path(d), args.repeats))
    notes = ("\nVariants: " + "; ".join(f"{k} = {v}" for k, v in VARIANTS.items()) + ".\n"
             "\nslipway runs with `target=ort` (its never-slower check times the result against the input with "
             "onnxruntime's default optimizations and keeps the input, or drops risky passes, when slower). "
             "Peers run with default settings. Latencies are medians over alternating blocks; on this 2-core "
             "machine they are noisy to a few percent.\n")
    publish("optimize", "Graph optimization: slipway vs onnxsim vs onnxslim", host, found, tables(rows), notes,
            time.perf_counter() - t0, {"machine": host, "versions": found, "rows": rows})


if __name__ == "__main__":
    main()
