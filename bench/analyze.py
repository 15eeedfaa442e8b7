"""Static analysis side by side: slipway ``analyze()`` vs onnx-tool vs PyTorch's flop counter.

For every zoo model, in one run:

* wall time of a static analysis from the ONNX file (slipway ``analyze(path, shapes)``,
  load included; onnx-tool load + shape inference + profile at the same shapes) and of
  ``torch.utils.flop_counter.FlopCounterMode`` around one eager forward of the torch module;
  median of ``--repeats`` runs after one warm-up run each;
* agreement: our MACs vs onnx-tool's and vs the torch counter's FLOPs / 2, our parameter count
  vs onnx-tool's, with the difference split into its known causes (see
  tests/analyze/test_zoo_costs.py, whose onnx-tool driver this bench reuses);
* measured: ``slipway.analyze.profile.profile`` per-node coverage (sum of the per-node times,
  engine nodes included, over the end-to-end latency) and the latency itself.

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.analyze``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from bench.common import alternating_blocks, fmt, machine, publish, versions
from slipway.analyze import Analysis, analyze
from slipway.analyze.machine import peaks
from slipway.analyze.profile import profile
from slipway.zoo import NAMES, ZOO, build
from tests.analyze.test_zoo_costs import onnx_tool_graph
from tests.zoo import export

MAC_OPS = {"Conv", "Gemm", "MatMul"}
THREADS = 2


def shapes_for(name: str) -> dict[str, list[int]]:
    """Input shapes for a zoo model: its example input shape (transformer: x [1, 16, 32])."""
    return {"x": list(ZOO[name].input_shape)}


def torch_flops(module: Any, x: Any) -> int:
    """Total FLOPs PyTorch's flop counter records for one eager forward (2 per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())


def mac_breakdown(ours: Analysis, graph: Any) -> dict[str, int]:
    """onnx-tool's total MACs minus ours, split into its known causes (per node, by name).

    ``bias``: onnx-tool adds one MAC per output element for a Conv/Gemm/MatMul bias;
    ``conv_transpose``: its ConvTranspose formula (output elements x W[1:]) against ours
    (input elements x C_out/group x kernel); ``other_ops``: it counts elementwise, pooling and
    normalization ops as MACs where we count them as FLOPs only; ``unexplained``: the rest.
    """
    by_name = {n.name: n for n in ours.nodes}
    parts = {"bias": 0, "conv_transpose": 0, "other_ops": 0, "unexplained": 0}
    for name, node in graph.nodemap.items():
        theirs = int(node.macs[0])
        mine = (by_name[name].macs or 0) if name in by_name else 0
        if node.op_type in MAC_OPS:
            bias = math.prod(node.outshape) if len(node.input) == 3 else 0
            parts["bias"] += bias
            parts["unexplained"] += theirs - bias - mine
        elif node.op_type == "ConvTranspose":
            parts["conv_transpose"] += theirs - mine
        else:
            parts["other_ops"] += theirs - mine
    return parts


def count(n: int) -> str:
    """A signed count for a sentence: millions above 100k, exact below."""
    return f"{n / 1e6:+.2f}M" if abs(n) >= 100_000 else f"{n:+,}"


def why(parts: dict[str, int], param_diff: int, non_weight: int, torch_diff: int) -> str:
    """One line naming where and why the counts differ."""
    reasons = []
    if parts["bias"]:
        reasons.append(f"onnx-tool {count(parts['bias'])} bias MACs (1 per output element)")
    if parts["conv_transpose"]:
        reasons.append(f"onnx-tool ConvTranspose formula {count(parts['conv_transpose'])} (output x W[1:])")
    if parts["other_ops"]:
        reasons.append(f"onnx-tool {count(parts['other_ops'])} MACs on elementwise/pool/norm ops")
    if parts["unexplained"]:
        reasons.append(f"UNEXPLAINED MAC difference {parts['unexplained']:+,}")
    if non_weight:
        reasons.append(f"onnx-tool params {non_weight:+,} int64 shape/axes initializer elements")
    if param_diff != non_weight:
        reasons.append(f"UNEXPLAINED param difference {param_diff - non_weight:+,}")
    if torch_diff:
        reasons.append(f"torch counter differs by {torch_diff:+,} MACs")
    return "; ".join(reasons) or "identical"


def coverage(name: str, path: Any, ours: Analysis, runs: int) -> dict[str, Any]:
    """Profile in onnxruntime (2 threads) and report how much of the latency the nodes account for."""
    result = profile(path, ours, runs=runs, warmup=3, threads=THREADS, machine=peaks(threads=THREADS))
    node_ms = sum(n.time_ms or 0.0 for n in result.nodes)
    engine_ms = sum(n.time_ms or 0.0 for n in result.engine_nodes)
    total = result.total_time_ms or 0.0
    return {
        "latency_ms": total,
        "node_ms": node_ms,
        "engine_node_ms": engine_ms,
        "coverage": (node_ms + engine_ms) / total if total else None,
        "runs": runs,
    }


def bench_model(name: str, repeats: int, profile_runs: int) -> dict[str, Any]:
    """Timings, agreement and profile coverage of one zoo model."""
    path, shapes = export(name), shapes_for(name)
    module, x = build(name)
    ours = analyze(path, shapes)
    graph, non_weight = onnx_tool_graph(path, shapes)
    t_flops = torch_flops(module, x)
    times = alternating_blocks({
        "slipway": lambda: analyze(path, shapes),
        "onnx_tool": lambda: onnx_tool_graph(path, shapes),
        "torch_flop_counter": lambda: torch_flops(module, x),
    }, repeats, warmup=1)
    parts = mac_breakdown(ours, graph)
    totals = ours.totals
    their_params = int(graph.params)
    return {
        "model": name,
        "shapes": shapes,
        "nodes": totals["nodes"],
        "times_s": {k: v.to_dict() for k, v in times.items()},
        "macs": {"slipway": totals["macs"], "onnx_tool": int(graph.macs[0]), "torch_flops_div2": t_flops // 2},
        "mac_difference": parts,
        "params": {"slipway": totals["params"], "onnx_tool": their_params, "onnx_tool_int64_elements": non_weight},
        "why": why(parts, their_params - totals["params"], non_weight, t_flops // 2 - totals["macs"]),
        "profile": coverage(name, path, ours, profile_runs),
    }


def tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The three tables (title, headers, rows): wall time, agreement, profile coverage."""
    def ms(r: dict, k: str) -> float:
        return r["times_s"][k]["median"] * 1e3

    timing = [[r["model"], str(r["nodes"]), fmt(ms(r, "slipway")), fmt(ms(r, "onnx_tool")),
               fmt(ms(r, "torch_flop_counter")), f"{ms(r, 'onnx_tool') / ms(r, 'slipway'):.2f}x",
               f"{ms(r, 'torch_flop_counter') / ms(r, 'slipway'):.2f}x"] for r in rows]
    agree = [[r["model"], f"{r['macs']['slipway']:,}", f"{r['macs']['onnx_tool']:,}",
              f"{r['macs']['torch_flops_div2']:,}", f"{r['params']['slipway']:,}",
              f"{r['params']['onnx_tool']:,}", r["why"]] for r in rows]
    prof = [[r["model"], fmt(r["profile"]["latency_ms"]), fmt(r["profile"]["node_ms"]),
             fmt(r["profile"]["engine_node_ms"]), f"{100 * (r['profile']['coverage'] or 0):.1f}%"] for r in rows]
    return [
        ("Static analysis wall time (ms, median)",
         ["model", "nodes", "slipway analyze", "onnx-tool", "torch FlopCounterMode",
          "onnx-tool / slipway", "torch / slipway"], timing),
        ("Agreement",
         ["model", "slipway MACs", "onnx-tool MACs", "torch FLOPs/2", "slipway params", "onnx-tool params",
          "where and why they differ"], agree),
        (f"Measured: slipway profile() in onnxruntime, {THREADS} threads",
         ["model", "end-to-end latency (ms)", "sum of node times (ms)", "engine-added nodes (ms)", "coverage"],
         prof),
    ]


NOTES = """
Notes:
- Timings are medians of {repeats} runs, timed in 2 alternating blocks per tool, each after one
  warm-up call, so that all see the same background load. slipway and onnx-tool start from the
  ONNX file (load, shape inference, per-node costs); onnx-tool's input is first rewritten so that
  Shape(start, end) (opset 15), which onnx-tool 1.0 ignores, becomes Shape + Slice (its params
  then include the 2 int64 elements per rewritten Shape). The torch counter runs one eager forward
  of the module under `FlopCounterMode` ({threads} intra-op threads), so its time includes the
  model's own compute.
- onnx-tool's "MACs" are an instruction-cost model: it adds one MAC per bias element and counts
  elementwise, pooling and normalization ops as MACs; slipway counts MACs only for the ops that
  reduce products (Conv, ConvTranspose, Gemm, MatMul) and reports the rest as FLOPs. onnx-tool's
  ConvTranspose formula (output elements x W[1:]) is wrong; slipway uses input elements x
  C_out/group x kernel, which PyTorch's counter confirms. Its parameter count includes int64
  initializers (Reshape shapes, reduction axes).
- Coverage is the sum of the per-node times (each node's median; original nodes plus nodes
  onnxruntime adds) over the median end-to-end latency of the same profiled runs ({profile_runs}
  runs after 3 warm-up).
  Every kernel's time goes to an original node or an engine-added node, so the gap under 100% is
  time onnxruntime spends between kernels (dispatch, allocation, input/output copies): large for
  models of many tiny nodes (transformer), small for models dominated by convolutions. On a busy
  machine it also holds the time a run waited for a core, so coverage drops there.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=NAMES, choices=NAMES)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tool (median); at least 5")
    parser.add_argument("--profile-runs", type=int, default=20, help="profiled onnxruntime runs per model")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(THREADS)
    host, found = machine(), versions()
    start = time.perf_counter()
    rows = []
    for name in args.models:
        rows.append(bench_model(name, max(5, args.repeats), args.profile_runs))
        print(f"{name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    data = {"machine": host, "versions": found, "threads": THREADS, "models": rows}
    publish("analyze", "Static analysis: slipway vs onnx-tool vs PyTorch flop counter", host, found, tables(rows),
            NOTES.format(repeats=rows[0]["times_s"]["slipway"]["runs"], threads=THREADS,
                         profile_runs=args.profile_runs),
            time.perf_counter() - start, data)


if __name__ == "__main__":
    main()
