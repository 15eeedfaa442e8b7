"""Measured per-node time: run a model in onnxruntime with profiling and join it with static costs.

onnxruntime runs the model as a user deploys it (all graph optimizations on), so the nodes it
executes are often fused (Conv+Relu as one FusedConv, NCHWc convolutions with reorders around
them, MatMul+Add as a Gemm). Each executed node is mapped back to the original ONNX nodes it
covers by tensor names: the original nodes on the paths between the tensors it reads and the
tensors it writes. Its measured time is split among them in proportion to their FLOPs (bytes
moved when some FLOPs are not counted): a Relu fused into a Conv costs almost nothing, and gets
almost none of the time. On the roofline the fused nodes are one point, the kernel's (see
:mod:`slipway.analyze.roofline`). Nodes onnxruntime added (ReorderInput/ReorderOutput, reshapes
around a fused Gemm) are reported as engine nodes with their time, not dropped.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import json
import re
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from slipway.analyze import roofline
from slipway.analyze.machine import default_threads, peaks
from slipway.analyze.types import Analysis, MachinePeaks, NodeCost
from slipway.backends.ort import ort_session
from slipway.errors import UserError
from slipway.model import ModelLike, as_model
from slipway.verify.inputs import SMALL, InputSpec, random_array
from slipway.verify.probe import with_value_hints

# Ops that only move or relabel data. When onnxruntime adds one (a name not in the original
# model), its output stands for the same original tensor as its input.
LAYOUT_OPS = {"ReorderInput", "ReorderOutput", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Transpose"}
REMOVED_NOTE = "not executed: removed by onnxruntime graph optimizations (constant-folded or eliminated)"
ENGINE_NOTE = "added by onnxruntime (not in the original model)"


@dataclass
class ExecutedNode:
    """A node of the graph onnxruntime executes (after its optimizations)."""

    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]

    @property
    def qualified_op(self) -> str:
        """The op with a short domain: "Conv", "FusedConv" (com.microsoft), "nchwc::Conv"."""
        domain = self.domain
        for prefix in ("ai.onnx", "com.microsoft"):
            if domain.startswith(prefix):
                domain = domain[len(prefix):].lstrip(".")
        return f"{domain}::{self.op_type}" if domain else self.op_type


def profile(
    model: ModelLike,
    analysis: Analysis,
    *,
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    machine: MachinePeaks | None = None,
) -> Analysis:
    """Profile ``model`` in onnxruntime and return a copy of ``analysis`` with measured times.

    Fills ``NodeCost.time_ms`` (median over ``runs`` after ``warmup`` runs), ``bound`` and
    ``roofline_fraction`` (against ``machine``, measured or cached when None), and
    ``Analysis.profiled``, ``total_time_ms`` (median end-to-end latency), ``machine`` and
    ``engine_nodes``. Inputs are random, at the shapes the analysis resolved.
    """
    if runs < 1:
        raise UserError(f"--runs must be at least 1, got {runs}")
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    threads = threads or default_threads()
    machine = machine or peaks(threads=threads)
    m = as_model(model)
    result = copy.deepcopy(analysis)
    with tempfile.TemporaryDirectory(prefix="slipway-profile-") as tmp:
        feeds = random_feeds(m, result.input_shapes)
        with _named(m, result):
            trace, optimized = _run_profiled(m, feeds, runs + warmup, threads, Path(tmp))
        events = json.loads(Path(trace).read_text())
        opt = onnx.load(str(optimized), load_external_data=False)
    executed = [ExecutedNode(n.name, n.op_type, n.domain, list(n.input), list(n.output)) for n in opt.graph.node]
    sources = {t.name for t in opt.graph.initializer} | {v.name for v in opt.graph.input}
    kernel_ms, run_ms = parse_trace(events, warmup)
    attribute(result, executed, kernel_ms, sources)
    result.profiled = True
    result.total_time_ms = statistics.median(run_ms) if run_ms else sum(kernel_ms.values())
    roofline.apply(result, machine)
    return result


@contextlib.contextmanager
def _named(m: ir.Model, analysis: Analysis) -> Iterator[ir.Model]:
    """``m`` with every top-level node named as in the analysis (unique, never empty) while the
    context lasts; the original names are put back after."""
    by_output = {_first(n.outputs): n.name for n in analysis.nodes if _first(n.outputs)}
    original: list[tuple[ir.Node, str | None]] = []
    used: set[str] = set()
    for i, node in enumerate(m.graph):
        out = next((v.name for v in node.outputs if v.name), None)
        want = by_output.get(out) or node.name or f"{node.op_type}_{i}"
        if want in used:
            want = f"{want}__{i}"
        used.add(want)
        original.append((node, node.name))
        node.name = want
    try:
        yield m
    finally:
        for node, name in original:
            node.name = name


def _first(names: list[str]) -> str | None:
    return next((t for t in names if t), None)


def random_feeds(m: ir.Model, shapes: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs at ``shapes`` (or the model's static dims), drawn by
    :func:`slipway.verify.inputs.random_array` with its :data:`~slipway.verify.inputs.SMALL`
    distribution: floats in [-1, 1), ints in [0, 4) (in range of the table an input indexes through
    ``Gather``, or the constant the graph compares it with), bools."""
    rng = np.random.default_rng(seed)
    hints = {s.name: s.example for s in with_value_hints(m, _specs(m))}
    feeds = {}
    for v in m.graph.inputs:
        if v.name in m.graph.initializers:
            continue
        shape = shapes.get(v.name)
        if shape is None:
            dims = [d if isinstance(d, int) else None for d in (v.shape or [])]
            if v.shape is None or None in dims:
                raise UserError(f"input {v.name!r} has a dynamic shape; give it with --shape {v.name}=D0,D1,...")
            shape = dims
        if v.dtype is None or v.dtype == ir.DataType.STRING:
            raise UserError(f"input {v.name!r} has dtype {v.dtype}; profiling needs numeric inputs")
        feeds[v.name] = random_array(shape, v.dtype.numpy(), rng, hints.get(v.name), SMALL)
    return feeds


def _specs(m: ir.Model) -> list[InputSpec]:
    """The integer inputs' specs (what value hints apply to); inputs without a dtype are skipped."""
    return [InputSpec(v.name, [], np.dtype(v.dtype.numpy()))
            for v in m.graph.inputs if v.name not in m.graph.initializers and v.dtype is not None
            and v.dtype != ir.DataType.STRING and np.issubdtype(v.dtype.numpy(), np.integer)]


def _run_profiled(m: ir.Model, feeds: dict, total_runs: int, threads: int, tmp: Path) -> tuple[str, Path]:
    """Run ``total_runs`` times with profiling and ORT_ENABLE_ALL; return the trace and optimized model paths."""
    try:
        sess = ort_session(m, optimization="all", threads=threads, profile_prefix=tmp / "trace",
                           optimized_path=tmp / "optimized.onnx", raw_errors=True,
                           config={"session.optimized_model_external_initializers_file_name": "optimized.data"})
        for _ in range(total_runs):
            sess.run(None, feeds)
    except (ort.capi.onnxruntime_pybind11_state.Fail, RuntimeError, ValueError) as e:
        raise UserError(f"onnxruntime cannot run the model: {str(e).strip().splitlines()[0][:300]}") from None
    return sess.end_profiling(), tmp / "optimized.onnx"


def parse_trace(events: list[dict], warmup: int) -> tuple[dict[str, float], list[float]]:
    """Median kernel time per executed node (ms) over the runs after ``warmup``, and each run's latency (ms).

    Uses the ``cat == "Node"`` events whose name ends in ``_kernel_time`` and assigns them to
    runs by the ``model_run`` session events that enclose them. Medians, not means: one run
    stalled by another process must not inflate a node's time.
    """
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    kept = runs[warmup:] or [(float("-inf"), float("inf"))]
    per_run: list[dict[str, float]] = [{} for _ in kept]
    starts = [start for start, _ in kept]
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i < 0 or e["ts"] > kept[i][1]:
            continue
        key = name[: -len("_kernel_time")]
        per_run[i][key] = per_run[i].get(key, 0.0) + e["dur"] / 1000.0
    names = {k for run in per_run for k in run}
    kernel_ms = {k: statistics.median(run.get(k, 0.0) for run in per_run) for k in names}
    return kernel_ms, [(end - start) / 1000.0 for start, end in kept if end != float("inf")]


def attribute(analysis: Analysis, executed: list[ExecutedNode], kernel_ms: dict[str, float],
              sources: set[str] = frozenset()) -> None:
    """Split each executed node's time among the original nodes it covers; fill ``ran_as`` and engine nodes."""
    coverage = map_executed(analysis.nodes, executed, sources)
    index = {n.name: i for i, n in enumerate(analysis.nodes)}
    times = [0.0] * len(analysis.nodes)
    ran_as: list[list[ExecutedNode]] = [[] for _ in analysis.nodes]
    analysis.engine_nodes = []
    for ex in executed:
        if ex.name not in kernel_ms:
            continue
        covered = [index[name] for name in coverage.get(ex.name, [])]
        if not covered:
            analysis.engine_nodes.append(NodeCost(
                name=ex.name, op_type=ex.op_type, inputs=ex.inputs, outputs=ex.outputs, macs=None,
                flops=None, counted=False, note=f"{ENGINE_NOTE}: {ex.qualified_op}", time_ms=kernel_ms[ex.name]))
            continue
        weights = split_weights([analysis.nodes[i] for i in covered])
        for i, w in zip(covered, weights, strict=True):
            times[i] += kernel_ms[ex.name] * w / sum(weights)
            ran_as[i].append(ex)
    for node, t, kernels in zip(analysis.nodes, times, ran_as, strict=True):
        node.time_ms = t
        node.ran_as = [e.name for e in kernels]
        extra = ("ran as " + ", ".join(f"{e.name} ({e.qualified_op})" for e in kernels)) if kernels else REMOVED_NOTE
        node.note = f"{node.note}; {extra}" if node.note else extra


def split_weights(nodes: list[NodeCost]) -> list[float]:
    """How a kernel's time is shared among the nodes it ran: by FLOPs, else by bytes moved, else evenly."""
    flops = [n.flops for n in nodes]
    if all(f is not None for f in flops) and sum(flops) > 0:
        return [float(f) for f in flops]
    moved = [float(n.bytes_read + n.bytes_written) for n in nodes]
    if sum(moved) > 0:
        return moved
    return [1.0] * len(nodes)


def map_executed(original: list[NodeCost], executed: list[ExecutedNode],
                 sources: set[str] = frozenset()) -> dict[str, list[str]]:
    """Which original nodes each executed node covers, by name.

    An executed tensor stands for an original tensor when it has the same name, when an added
    layout node (ReorderOutput, a reshape around a fused Gemm) links it to one, or when the
    node's name says so (``relu_1_nchwc`` wrote what ``relu_1`` held; ``MatMul_3/MatMulAddFusion``
    what node ``MatMul_3`` wrote), extended forward over the elementwise ops it fused (a
    convolution's ``Sum`` input and activation). An executed node covers the original nodes
    found walking back from its outputs until a tensor another executed node wrote, an
    initializer or an input.
    """
    g = _Graph(original)
    image = {t: t for ex in executed for t in ex.inputs + ex.outputs if t in g.known}
    layout = [ex for ex in executed if ex.op_type in LAYOUT_OPS and ex.name not in g.names]
    is_layout = {id(ex) for ex in layout}
    _propagate(image, layout)
    hints = {}
    for k, ex in enumerate(executed):
        if ex.outputs and ex.outputs[0] not in image and id(ex) not in is_layout:
            hint = _hint(ex.name, g)
            if hint:
                hints[k] = hint
    claimed = {g.names[ex.name] for ex in executed if ex.name in g.names}
    claimed |= {g.producer[image[t]] for ex in executed for t in ex.outputs if image.get(t) in g.producer}
    claimed |= {g.producer[h] for h in hints.values()}
    for k, ex in enumerate(executed):  # topological order: a fused Sum input is resolved before its reader
        if k in hints:
            reads = {image[t] for t in ex.inputs if t in image}
            image[ex.outputs[0]] = _extend(hints[k], reads, claimed, g)
            _propagate(image, layout)
    boundary = {image[t] for ex in executed for t in ex.outputs if t in image}
    boundary |= {image.get(t, t) for t in sources}
    coverage: dict[str, list[str]] = {}
    for ex in executed:
        if id(ex) in is_layout:
            coverage[ex.name] = []
            continue
        reads = {image[t] for t in ex.inputs if t in image}
        starts = [image[t] for t in ex.outputs if t in image and image[t] not in reads]
        found = _walk_back(starts, boundary | reads, g)
        if not found and ex.name in g.names:
            found = [g.names[ex.name]]
        coverage[ex.name] = [original[i].name for i in sorted(found)]
    return coverage


# Ops an engine folds into the node before them (a convolution's Sum input, its activation).
FUSABLE_OPS = {
    "Add", "Sum", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid",
    "HardSwish", "Gelu", "Elu", "Selu", "Softplus", "PRelu", "BatchNormalization", "Identity",
}


class _Graph:
    """Producer/consumer index of the original nodes."""

    def __init__(self, original: list[NodeCost]) -> None:
        self.nodes = original
        self.producer = {t: i for i, n in enumerate(original) for t in n.outputs if t}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(original):
            for t in dict.fromkeys(t for t in n.inputs if t):
                self.consumers.setdefault(t, []).append(i)
        self.known = set(self.producer) | set(self.consumers)
        self.names = {n.name: i for i, n in enumerate(original)}


def _extend(tensor: str, reads: set[str], claimed: set[int], g: _Graph) -> str:
    """Follow ``tensor`` forward through single-consumer elementwise ops whose other inputs the node read."""
    while True:
        users = g.consumers.get(tensor, [])
        if len(users) != 1 or users[0] in claimed:
            return tensor
        q = g.nodes[users[0]]
        if q.op_type not in FUSABLE_OPS:
            return tensor
        others = [t for t in q.inputs if t and t != tensor]
        out = _first(q.outputs)
        if out is None or any(t in g.producer and t not in reads for t in others):
            return tensor
        tensor = out


def _propagate(image: dict[str, str], layout: list[ExecutedNode]) -> None:
    """Layout nodes added by the engine: output and data input stand for the same original tensor."""
    changed = True
    while changed:
        changed = False
        for ex in layout:
            if not ex.inputs or not ex.outputs:
                continue
            src, dst = ex.inputs[0], ex.outputs[0]
            if src in image and dst not in image:
                image[dst] = image[src]
                changed = True
            elif dst in image and src not in image:
                image[src] = image[dst]
                changed = True


def _hint(name: str, g: _Graph) -> str | None:
    """The original tensor an executed node's first output stands for, read from its name.

    Tries the name, its part before "/", then the name with trailing "_word" parts dropped one
    at a time (``getitem_12_bn_nchwc`` -> ``getitem_12_bn`` -> ``getitem_12``).
    """
    base = re.sub(r"(_token_\d+)+$", "", name)
    parts = base.split("_")
    candidates = [base, base.split("/")[0]] + ["_".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]
    for cand in candidates:
        if cand in g.producer:
            return cand
        if cand in g.names:
            return _first(g.nodes[g.names[cand]].outputs)
    return None


def _walk_back(starts: list[str], stop: set[str], g: _Graph) -> list[int]:
    """Original nodes reached walking back from ``starts``, not crossing tensors in ``stop``."""
    found: set[int] = set()
    todo = [g.producer[t] for t in starts if t in g.producer]
    while todo:
        i = todo.pop()
        if i in found:
            continue
        found.add(i)
        for t in g.nodes[i].inputs:
            if t and t in g.producer and t not in stop:
                todo.append(g.producer[t])
    return list(found)
