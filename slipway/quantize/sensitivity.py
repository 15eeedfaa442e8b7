"""Per-layer quantization error, ranked: which layers the accuracy budget should keep in float.

For every *quantized layer* - a node of the QDQ model that computes on dequantized inputs
(Conv, Gemm, MatMul, Add, pooling ...) and has a node of the same name in the FP32 model - two
errors are measured over the evaluation set, each as an SNR in dB
(``10 log10(sum ref^2 / sum (ref - x)^2)``) and a cosine similarity against FP32:

* **local** - the layer quantized *alone*: a shadow copy of the layer, with its own input
  Q/DQ and quantized weights from the QDQ model, is added to the FP32 model and fed the exact
  FP32 activations; its output is compared with the float layer's. This is the error the layer
  itself adds, free of what the layers before it did; the ranking uses it.
* **accumulated** - the layer's output in the fully quantized model against FP32: the error
  that reaches it through the whole network (what :mod:`slipway.compare` shows layer by layer).

Both runs are plain onnxruntime runs (graph optimizations off, so the simulated quantization is
what is measured); statistics are summed batch by batch, never keeping the activations, so
the batches may differ in shape (samples of several sizes, each batch of one).
When a layer's inputs cannot be traced back to FP32 tensors (renamed by the quantizer), its
local error falls back to the accumulated one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from slipway.compare.run import typed_copy
from slipway.graph import add_initializer, default_opset
from slipway.passes.opset import convert
from slipway.quantize.qdq import MIN_OPSET
from slipway.verify import ort_runner
from slipway.verify.inputs import Feeds

__all__ = ["LayerSensitivity", "quantized_layers", "analyze", "table"]

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MOVEMENT_OPS = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "GlobalMaxPool", "Concat", "Slice",
    "Gather", "Split", "Pad", "Identity", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Relu", "Clip",
})
MAX_DEPTH = 8  # longest producer chain copied for a shadow layer's input (DQ <- Q <- Cast ...)
SHADOW = "slipway.shadow/"


@dataclass
class LayerSensitivity:
    node: str
    op_type: str
    tensor: str  # the FP32 output compared
    local_snr_db: float
    local_cosine: float
    snr_db: float  # accumulated, in the fully quantized model
    cosine: float
    rank: int = 0  # 1 = most sensitive

    def to_dict(self) -> dict:
        return {"rank": self.rank, "node": self.node, "op_type": self.op_type, "tensor": self.tensor,
                "local_snr_db": _r(self.local_snr_db), "local_cosine": _r(self.local_cosine, 6),
                "snr_db": _r(self.snr_db), "cosine": _r(self.cosine, 6)}


def _r(x: float, digits: int = 3) -> float | str:
    return round(float(x), digits) if math.isfinite(x) else str(x)


class _Acc:
    """Running sums for SNR and cosine of one tensor pair."""

    def __init__(self) -> None:
        self.ref2 = self.act2 = self.dot = self.noise = 0.0

    def add(self, ref: np.ndarray, act: np.ndarray) -> None:
        if ref.shape != act.shape:
            self.noise = math.inf
            return
        r = ref.astype(np.float64).ravel()
        a = act.astype(np.float64).ravel()
        ref2, act2 = float(np.sum(r * r)), float(np.sum(a * a))
        r -= a  # in place: r is a fresh copy
        noise = float(np.sum(r * r))
        self.ref2 += ref2
        self.act2 += act2
        self.noise += noise
        self.dot += (ref2 + act2 - noise) / 2  # r.a from |r - a|^2 = |r|^2 + |a|^2 - 2 r.a

    def snr_db(self) -> float:
        if not math.isfinite(self.noise):
            return -math.inf
        if self.noise == 0.0:
            return math.inf
        return 10.0 * math.log10(self.ref2 / self.noise) if self.ref2 > 0 else -math.inf

    def cosine(self) -> float:
        if self.ref2 == 0.0 or self.act2 == 0.0:
            return 1.0 if self.ref2 == self.act2 else 0.0
        return self.dot / math.sqrt(self.ref2 * self.act2)


def quantized_layers(fp32: ir.Model, quant: ir.Model, *, compute_only: bool = True) -> list[str]:
    """Names of the nodes of ``quant`` (in its order) that take a dequantized input and exist in ``fp32``.

    With ``compute_only``, ops that only move or select the quantized values (Reshape, MaxPool,
    Concat ...: their error is their input's quantization, owned by the layer that consumes it) are
    left out.
    """
    names = {n.name for n in fp32.graph if n.name}
    out = []
    for node in quant.graph:
        if node.op_type in QDQ_OPS or not node.name or node.name not in names:
            continue
        if compute_only and node.op_type in MOVEMENT_OPS:
            continue
        if any(v is not None and v.producer() is not None and v.producer().op_type == "DequantizeLinear"
               for v in node.inputs):
            out.append(node.name)
    return out


def _first_float(node: ir.Node) -> ir.Value | None:
    return next((v for v in node.outputs if v.name and v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16,
                                                                  ir.DataType.BFLOAT16, ir.DataType.DOUBLE)), None)


class _NoShadow(Exception):
    pass


class _Shadow:
    """Copies quantized layers of B (with their input Q/DQ chains) into a copy of A."""

    def __init__(self, fp32: ir.Model) -> None:
        self.model = typed_copy(fp32)
        if (default_opset(self.model) or MIN_OPSET) < MIN_OPSET:  # as quantize_qdq: per-axis DQ needs opset 13
            convert(self.model, MIN_OPSET)
        g = self.model.graph
        self.values: dict[str, ir.Value] = {v.name: v for v in g.inputs}
        self.values.update(g.initializers)
        self.values.update({v.name: v for n in g for v in n.outputs if v.name})
        self.memo: dict[int, ir.Value] = {}

    def layer(self, node: ir.Node, output: int) -> ir.Value:
        """The shadow copy of ``node`` (from B) fed from A's tensors; returns its ``output``-th output."""
        copy = self._copy(node, [self.bring(v, 0) for v in node.inputs], remember=False)
        return copy.outputs[output]

    def bring(self, v: ir.Value | None, depth: int) -> ir.Value | None:
        if v is None:
            return None
        same = self.values.get(v.name)
        if same is not None and (v.dtype is None or same.dtype == v.dtype) and not v.is_initializer():
            return same
        if id(v) in self.memo:
            return self.memo[id(v)]
        if v.const_value is not None and v.producer() is None:
            new = add_initializer(self.model.graph, SHADOW + v.name, v.const_value)
            self.memo[id(v)] = new
            return new
        producer = v.producer()
        if producer is None or depth >= MAX_DEPTH or producer.attributes.get("then_branch") is not None:
            raise _NoShadow(v.name)
        self._copy(producer, [self.bring(i, depth + 1) for i in producer.inputs])
        return self.memo[id(v)]

    def _copy(self, node: ir.Node, inputs: Sequence[ir.Value | None], remember: bool = True) -> ir.Node:
        outputs = [ir.Value(name=SHADOW + (o.name or f"{node.name}:{i}"), shape=o.shape, type=o.type)
                   for i, o in enumerate(node.outputs)]
        copy = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()), overload=node.overload,
                       outputs=outputs, version=node.version, name=SHADOW + (node.name or node.op_type))
        self.model.graph.append(copy)
        if remember:  # a shadow layer's own outputs are never reused: later layers take A's exact tensors
            for old, new in zip(node.outputs, copy.outputs, strict=True):
                self.memo[id(old)] = new
        return copy


def _expose(model: ir.Model, values: Iterable[ir.Value]) -> None:
    present = {v.name for v in model.graph.outputs}
    for v in values:
        if v.name not in present:
            model.graph.outputs.append(v)
            present.add(v.name)


def _accumulate(runner: Callable[[Feeds], dict[str, np.ndarray]], batches: Sequence[Feeds],
                pairs: dict[str, tuple[str, str]], ref_runner: Callable[[Feeds], dict[str, np.ndarray]] | None
                ) -> dict[str, _Acc]:
    """For each layer, sums over the batches of (ref tensor, other tensor) from one run (or two runners)."""
    accs = {name: _Acc() for name in pairs}
    for feeds in batches:
        out = runner(feeds)
        ref = ref_runner(feeds) if ref_runner is not None else out
        for name, (r, a) in pairs.items():
            accs[name].add(ref[r], out[a])
    return accs


def analyze(fp32: ir.Model, quant: ir.Model, batches: Sequence[Feeds], layers: Sequence[str] | None = None,
            progress: Callable[[str], None] | None = None) -> list[LayerSensitivity]:
    """Local and accumulated error of each quantized layer, most sensitive (lowest local SNR) first."""
    layers = list(layers) if layers is not None else quantized_layers(fp32, quant)
    a_nodes = {n.name: n for n in fp32.graph if n.name}
    b_nodes = {n.name: n for n in quant.graph if n.name}
    chosen = [n for n in layers if n in a_nodes and n in b_nodes and _first_float(a_nodes[n]) is not None]
    if not chosen:
        return []
    if progress:
        progress("sensitivity: accumulated error per layer")
    accumulated = _accumulated(fp32, quant, batches, chosen)
    if progress:
        progress("sensitivity: each layer quantized alone")
    local = _local(fp32, quant, batches, chosen)
    rows = []
    for name in chosen:
        acc = accumulated.get(name)
        loc = local.get(name, acc)
        rows.append(LayerSensitivity(
            name, a_nodes[name].op_type, _first_float(a_nodes[name]).name,
            loc.snr_db() if loc else math.nan, loc.cosine() if loc else math.nan,
            acc.snr_db() if acc else math.nan, acc.cosine() if acc else math.nan))
    rows.sort(key=lambda s: (_key(s.local_snr_db), _key(s.snr_db)))
    for i, s in enumerate(rows, start=1):
        s.rank = i
    return rows


def _key(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _accumulated(fp32: ir.Model, quant: ir.Model, batches: Sequence[Feeds], layers: Sequence[str]
                 ) -> dict[str, _Acc]:
    """Each layer's output in B vs A, the nodes paired by name (a quantizer may rename the tensors)."""
    a, b = typed_copy(fp32), typed_copy(quant)
    a_nodes = {n.name: n for n in a.graph if n.name}
    b_nodes = {n.name: n for n in b.graph if n.name}
    pairs: dict[str, tuple[str, str]] = {}
    exposed_a, exposed_b = [], []
    for name in layers:
        ref = _first_float(a_nodes[name])
        index = list(a_nodes[name].outputs).index(ref)
        if len(b_nodes[name].outputs) <= index or not b_nodes[name].outputs[index].name:
            continue
        other = b_nodes[name].outputs[index]
        pairs[name] = (ref.name, other.name)
        exposed_a.append(ref)
        exposed_b.append(other)
    _expose(a, exposed_a)
    _expose(b, exposed_b)
    return _accumulate(ort_runner(b), batches, pairs, ort_runner(a))


def _local(fp32: ir.Model, quant: ir.Model, batches: Sequence[Feeds], layers: Sequence[str]) -> dict[str, _Acc]:
    shadow = _Shadow(fp32)
    a_nodes = {n.name: n for n in shadow.model.graph if n.name}
    b_nodes = {n.name: n for n in typed_copy(quant).graph if n.name}
    pairs: dict[str, tuple[str, str]] = {}
    exposed: list[ir.Value] = []
    for name in layers:
        ref = _first_float(a_nodes[name])
        node = b_nodes[name]
        if ref is None or len(node.outputs) != len(a_nodes[name].outputs):
            continue
        try:
            out = shadow.layer(node, list(a_nodes[name].outputs).index(ref))
        except _NoShadow:
            continue
        pairs[name] = (ref.name, out.name)
        exposed += [ref, out]
    if not pairs:
        return {}
    _expose(shadow.model, exposed)
    return _accumulate(ort_runner(shadow.model), batches, pairs, None)


def table(rows: Sequence[LayerSensitivity], limit: int | None = None) -> list[list[str]]:
    """Rows for a printed table: rank, node, op, local SNR/cosine, accumulated SNR/cosine."""
    out = []
    for s in rows[:limit] if limit else rows:
        out.append([str(s.rank), s.node, s.op_type, f"{s.local_snr_db:.1f}", f"{s.local_cosine:.5f}",
                    f"{s.snr_db:.1f}", f"{s.cosine:.5f}"])
    return out
