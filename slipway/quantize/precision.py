"""FP16 / BF16 conversion: weights and activations in half precision, what needs FP32 kept there.

:func:`convert_precision` (and its shorthands :func:`to_fp16`, :func:`to_bf16`) works on a copy:

1. Each main-graph node runs *low* (fp16/bf16) or stays *float* (FP32) for a reason: its op is in
   ``block_ops`` (:data:`BLOCK_REASONS` says why each default entry is there), its name is in
   ``block_nodes``, it is outside the default domain, it holds subgraphs (If/Loop/Scan: the node
   and its bodies stay FP32), the ONNX schema at the model's opset has no fp16/bf16 type for it,
   or it only computes on integer-derived rank <= 1 values (shape arithmetic such as
   ``Cast(Shape(x)) * 2 -> Floor -> Cast(int64)``, where fp16 is exact only up to 2048).
2. In a low node, the inputs and outputs bound to a type variable that holds float32 switch to
   the low type, except slots whose schema type is fixed (Resize ``scales`` is ``tensor(float)``)
   or listed in :data:`KEEP_FP32_INPUTS` (Resize ``roi``). Float attributes (epsilon, alpha) are
   float32 in ONNX whatever the tensor type, so they lose nothing.
3. Each float32 value is produced in one type and wanted in one or more; one Cast per (value,
   type) bridges them, shared by every consumer that wants that type. Constants (initializers,
   Constant, ConstantOfShape) and the model's own Casts are produced directly in the type their
   consumers want, and Cast / Shape / Size read any type, so no Cast is ever fed by another Cast
   inserted here; a Cast left converting a type to itself is removed.
4. Converted constants: finite magnitudes above ``max_finite`` are clamped to it, non-zero
   magnitudes below ``min_positive`` are raised to it (an epsilon must not become 0); both counted.

With ``keep_io_types`` the float32 inputs and outputs stay float32 (Casts at entry and exit);
without, they become fp16/bf16. BF16 needs opset 22 for Conv, ConvTranspose and the pools, so
:func:`to_bf16` moves an older model to opset 22 first. onnxruntime's CPU engine has no bf16
kernels at all (not even Add); a bf16 model runs in OpenVINO, which :func:`verify_precision`
picks for it. On x86, onnxruntime's CPU engine runs an fp16 model by casting around the ops it
has no fp16 kernel for (with its optimizations on, back to fp32 weights): half the file size,
no speed-up.
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from slipway import backends
from slipway.backends.base import Options
from slipway.errors import UserError
from slipway.graph import Names, add_initializer, copy_model, default_opset
from slipway.model import ModelLike, as_model
from slipway.passes.opset import convert
from slipway.verify import VerifyReport, compare_runs, describe, engine_name, ort_runner, plan_sizes, random_feeds
from slipway.verify.probe import hinted_specs

__all__ = ["BLOCK_REASONS", "DEFAULT_BLOCK", "KEEP_FP32_INPUTS", "PrecisionReport", "convert_precision",
           "to_fp16", "to_bf16", "verify_precision"]

F32 = ir.DataType.FLOAT
LOW = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
_TYPE_STR = {"fp16": "tensor(float16)", "bf16": "tensor(bfloat16)"}
_NP = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}
_SUFFIX = {ir.DataType.FLOAT: "fp32", ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}
BF16_OPSET = 22

_RANDOM = "random generators keep the dtype their attributes declare"
BLOCK_REASONS: dict[str, str] = {
    "NonMaxSuppression": "box coordinates and IoU thresholds (its boxes/scores are float-only in ONNX)",
    "TopK": "fp16 rounding creates ties that reorder the returned indices",
    "Range": "start/limit/delta in fp16 give a wrong element count past 2048",
    "CumSum": "running sums lose precision and overflow in fp16",
    "RoiAlign": "ROI coordinates need more than fp16's 11-bit mantissa on large images",
    "Upsample": "deprecated op with float-only scales",
    "ReduceSumSquare": "squares overflow fp16 above |x| = 256",
    "ReduceL2": "squares overflow fp16 above |x| = 256",
    "LpNormalization": "squares overflow fp16 above |x| = 256",
    "QuantizeLinear": "quantization scales stay float32",
    "DequantizeLinear": "quantization scales stay float32",
    "DynamicQuantizeLinear": "quantization scales stay float32",
    "RandomNormal": _RANDOM, "RandomUniform": _RANDOM, "RandomNormalLike": _RANDOM,
    "RandomUniformLike": _RANDOM, "Multinomial": _RANDOM, "Bernoulli": _RANDOM,
}
DEFAULT_BLOCK = frozenset(BLOCK_REASONS)
# Inputs that stay float32 when their node runs in low precision: Resize's roi (coordinates) and
# scales (float-only in the spec anyway).
KEEP_FP32_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2})}
# Inputs read in whatever type they come: only their shape or their conversion matters.
_ANY_INPUT = {"Cast": 0, "CastLike": 0, "Shape": 0, "Size": 0}
_INT_TYPES = {ir.DataType.BOOL, ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64,
              ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32, ir.DataType.UINT64}


@dataclass
class PrecisionReport:
    """What a conversion did: node counts, why nodes stayed FP32, Casts added, constants adjusted."""

    precision: str
    low_nodes: int = 0
    float_nodes: dict[str, str] = field(default_factory=dict)  # node name -> why it stayed FP32
    casts: int = 0  # Cast nodes added
    clamped: int = 0  # constant values clamped to +-max_finite
    raised: int = 0  # non-zero constant values raised to +-min_positive
    notes: list[str] = field(default_factory=list)

    def metadata(self, prefix: str = "slipway.precision") -> dict[str, str]:
        return {prefix: self.precision, f"{prefix}.low_nodes": str(self.low_nodes),
                f"{prefix}.float_nodes": str(len(self.float_nodes)), f"{prefix}.casts": str(self.casts),
                f"{prefix}.clamped": str(self.clamped), f"{prefix}.raised": str(self.raised)}


@dataclass
class _Slots:
    inputs: set[int]
    outputs: set[int]


class _Ctx:
    """The model being converted and what the conversion needs to remember."""

    def __init__(self, model: ir.Model, precision: str, min_positive: float, max_finite: float) -> None:
        self.model, self.graph, self.precision = model, model.graph, precision
        self.low = LOW[precision]
        self.min_positive, self.max_finite = min_positive, max_finite
        self.report = PrecisionReport(precision)
        self.low_nodes: dict[ir.Node, _Slots] = {}
        self.float_set: set[ir.Node] = set()
        self.casts: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
        self.fresh = Names(model)

    def place(self, node: ir.Node, after: ir.Node | None) -> None:
        if after is not None and after.graph is self.graph:
            self.graph.insert_after(after, node)
        elif len(self.graph):
            self.graph.insert_before(self.graph.node(0), node)
        else:
            self.graph.append(node)

    def cast(self, v: ir.Value, to: ir.DataType, source: ir.Value | None = None) -> ir.Value:
        """The one Cast of ``v`` (read from ``source``, default ``v``) to ``to``, made on first request."""
        key = (v, to)
        if key not in self.casts:
            src = source or v
            out = ir.Value(name=self.fresh(f"{v.name}_{_SUFFIX[to]}"), shape=_shape(v), type=ir.TensorType(to))
            node = ir.Node("", "Cast", [src], [ir.AttrInt64("to", int(to))], outputs=[out],
                           name=self.fresh(f"Cast_{out.name}"))
            self.place(node, src.producer())
            self.casts[key] = out
            self.report.casts += 1
        return self.casts[key]

    def tensor(self, array: np.ndarray, name: str) -> ir.Tensor:
        """float32 data as a low-precision tensor, clamped and with tiny magnitudes raised (counted)."""
        x = np.asarray(array, dtype=np.float32)
        mag = np.abs(x)
        big = np.isfinite(x) & (mag > self.max_finite)
        tiny = (mag > 0) & (mag < self.min_positive)
        self.report.clamped += int(big.sum())
        self.report.raised += int(tiny.sum())
        if big.any() or tiny.any():
            x = np.where(big, np.sign(x) * self.max_finite, np.where(tiny, np.sign(x) * self.min_positive, x))
        return ir.Tensor(x.astype(_NP[self.precision]), name=name)


def convert_precision(
    model: ModelLike,
    precision: str,
    *,
    keep_io_types: bool = True,
    block_ops: Iterable[str] = DEFAULT_BLOCK,
    block_nodes: Iterable[str] = (),
    min_positive: float | None = None,
    max_finite: float | None = None,
    upgrade_opset: bool = True,
) -> tuple[ir.Model, PrecisionReport]:
    """A copy of ``model`` computing in ``precision`` ("fp16" | "bf16"), and what was done.

    ``min_positive`` defaults to the smallest subnormal of the type and ``max_finite`` to its
    largest finite value. ``upgrade_opset`` (bf16 only) moves a model below opset 22 to 22 so
    that Conv and the pools accept bfloat16.
    """
    if precision not in LOW:
        raise UserError(f"precision must be one of {', '.join(LOW)}, got {precision!r}")
    lo, hi = _bounds(precision, min_positive, max_finite)
    m = copy_model(as_model(model))
    blocked_ops, blocked_nodes = _names("block_ops", block_ops), _names("block_nodes", block_nodes)
    missing = sorted(blocked_nodes - {n.name for n in m.graph.all_nodes() if n.name})
    if missing:
        raise UserError(f"block_nodes: no node named {missing[0]!r} in the model")
    notes: list[str] = []
    _prepare(m, precision, upgrade_opset, notes)
    ctx = _Ctx(m, precision, lo, hi)
    ctx.report.notes.extend(notes)
    _classify(ctx, blocked_ops, blocked_nodes)
    values = _float_values(ctx)
    if not values and not ctx.low_nodes:
        raise UserError(f"the model has no float32 tensors to convert to {precision}")
    for v in values:
        _realize(ctx, v, keep_io_types)
    _drop_noop_casts(ctx)
    m.graph.sort()
    ctx.report.low_nodes = len(ctx.low_nodes)
    m.metadata_props.update(ctx.report.metadata())
    return m, ctx.report


def to_fp16(model: ModelLike, *, keep_io_types: bool = True, block_ops: Iterable[str] = DEFAULT_BLOCK,
            block_nodes: Iterable[str] = (), min_positive: float | None = None,
            max_finite: float | None = None) -> ir.Model:
    """A float16 copy of ``model`` (see :func:`convert_precision`); the counts go to metadata_props."""
    return convert_precision(model, "fp16", keep_io_types=keep_io_types, block_ops=block_ops,
                             block_nodes=block_nodes, min_positive=min_positive, max_finite=max_finite)[0]


def to_bf16(model: ModelLike, *, keep_io_types: bool = True, block_ops: Iterable[str] = DEFAULT_BLOCK,
            block_nodes: Iterable[str] = (), min_positive: float | None = None,
            max_finite: float | None = None, upgrade_opset: bool = True) -> ir.Model:
    """A bfloat16 copy of ``model`` (see :func:`convert_precision`); runs in OpenVINO, not in ORT CPU."""
    return convert_precision(model, "bf16", keep_io_types=keep_io_types, block_ops=block_ops,
                             block_nodes=block_nodes, min_positive=min_positive, max_finite=max_finite,
                             upgrade_opset=upgrade_opset)[0]


def _bounds(precision: str, min_positive: float | None, max_finite: float | None) -> tuple[float, float]:
    info = ml_dtypes.finfo(_NP[precision])
    lo = float(info.smallest_subnormal) if min_positive is None else min_positive
    hi = float(info.max) if max_finite is None else max_finite
    if not (_number(lo) and float(info.smallest_subnormal) <= lo < float(info.max)):
        raise UserError(f"min_positive must be a number in [{float(info.smallest_subnormal):g}, "
                        f"{float(info.max):g}) for {precision}, got {min_positive!r}")
    if not (_number(hi) and lo < hi <= float(info.max)):
        raise UserError(f"max_finite must be a number in ({lo:g}, {float(info.max):g}] for {precision}, "
                        f"got {max_finite!r}")
    return float(lo), float(hi)


def _number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _names(what: str, names: Iterable[str]) -> set[str]:
    if isinstance(names, str):
        raise UserError(f"{what} must be a list of names, got the string {names!r}")
    out = set(names)
    bad = [n for n in out if not isinstance(n, str)]
    if bad:
        raise UserError(f"{what} must hold names (strings), got {bad[0]!r}")
    return out


def _prepare(m: ir.Model, precision: str, upgrade_opset: bool, notes: list[str]) -> None:
    opset = default_opset(m) or 1
    if precision == "bf16" and upgrade_opset and opset < BF16_OPSET:
        try:
            convert(m, BF16_OPSET)
            notes.append(f"opset {opset} -> {BF16_OPSET}: Conv, ConvTranspose and the pools take bfloat16 from 22")
        except UserError as e:
            notes.append(f"kept opset {opset} ({e}); ops without a bf16 type there stay FP32")
    if any(v.dtype is None for n in m.graph for v in n.outputs if v.name):
        ShapeInferencePass(strict_mode=False)(m)
    try:
        m.graph.sort()
    except ValueError:
        raise UserError("the model's graph has a cycle") from None


def _shape(v: ir.Value) -> ir.Shape | None:
    return v.shape.copy() if v.shape is not None else None


def _label(node: ir.Node) -> str:
    return node.name or f"{node.op_type}@{node.graph.index(node) if node.graph is not None else '?'}"


def _is_const(v: ir.Value) -> bool:
    """An initializer (not overridable), or the output of a Constant / ConstantOfShape whose data we can read."""
    p = v.producer()
    if p is None:
        return v.is_initializer() and not v.is_graph_input() and v.const_value is not None
    if p.op_type == "Constant":
        return any(k in p.attributes for k in ("value", "value_float", "value_floats"))
    return p.op_type == "ConstantOfShape"


def _small(v: ir.Value | None) -> bool:
    """Rank 0 or 1: what shape arithmetic works on (images, masks and token ids have higher rank)."""
    return v is not None and v.shape is not None and len(v.shape) <= 1


def _classify(ctx: _Ctx, blocked_ops: set[str], blocked_nodes: set[str]) -> None:
    opset = default_opset(ctx.model) or 1
    int_derived: set[ir.Value] = set()
    for node in ctx.graph:
        reason = _fixed_reason(node, blocked_ops, blocked_nodes)
        if reason is None and node.op_type == "Cast":
            src = node.inputs[0]
            if src is not None and (src.dtype in _INT_TYPES or src in int_derived) and _small(node.outputs[0]):
                int_derived.add(node.outputs[0])
            continue
        if reason is None and node.op_type in ("Constant", "ConstantOfShape"):
            continue
        slots = None
        if reason is None:
            slots, reason = _slots(node, opset, ctx.precision)
        if slots is not None:
            floats = [node.inputs[i] for i in slots.inputs if not _is_const(node.inputs[i])]
            if floats and all(v in int_derived for v in floats) and all(_small(o) for o in node.outputs):
                slots, reason = None, "computes on integer-derived values (shape arithmetic)"
                int_derived.update(node.outputs)
        if slots is not None:
            ctx.low_nodes[node] = slots
        elif reason:
            ctx.float_set.add(node)
            if any(v is not None and v.dtype == F32 for v in (*node.inputs, *node.outputs)):
                ctx.report.float_nodes[_label(node)] = reason


def _fixed_reason(node: ir.Node, blocked_ops: set[str], blocked_nodes: set[str]) -> str | None:
    if node.name and node.name in blocked_nodes:
        return "named in block_nodes"
    if node.op_type in blocked_ops:
        return BLOCK_REASONS.get(node.op_type, "op in block_ops")
    if node.domain != "":
        return f"op of domain {node.domain!r}"
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
        return "holds subgraphs (the node and its bodies stay FP32)"
    return None


def _slots(node: ir.Node, opset: int, precision: str) -> tuple[_Slots | None, str]:
    """The input/output indices that switch to the low type if ``node`` runs low; else why not."""
    try:
        schema = onnx.defs.get_schema(node.op_type, node.version or opset, "")
    except onnx.defs.SchemaError:
        return None, f"no ONNX schema for {node.op_type} at opset {opset}"
    if "dtype" in node.attributes:
        return None, "output type set by its dtype attribute"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    binds: dict[str, list[tuple[bool, int, ir.Value]]] = defaultdict(list)
    for is_input, values, params in ((True, node.inputs, schema.inputs), (False, node.outputs, schema.outputs)):
        for i, v in enumerate(values):
            p = params[i] if i < len(params) else (params[-1] if params and params[-1].option
                                                   == onnx.defs.OpSchema.FormalParameterOption.Variadic else None)
            if p is not None and v is not None and p.type_str in allowed:
                binds[p.type_str].append((is_input, i, v))
    keep = KEEP_FP32_INPUTS.get(node.op_type, frozenset()) | {_ANY_INPUT.get(node.op_type, -1)}
    slots, lacking = _Slots(set(), set()), False
    for var, bound in binds.items():
        if not any(v.dtype == F32 for _, _, v in bound) or any(inp and i in keep for inp, i, _ in bound):
            continue
        if _TYPE_STR[precision] not in allowed[var]:
            lacking = True
            continue
        for is_input, i, _ in bound:
            (slots.inputs if is_input else slots.outputs).add(i)
    if slots.inputs or slots.outputs:
        return slots, ""
    why = f"ONNX {node.op_type}-{schema.since_version} has no {precision} type" if lacking else ""
    return None, why


def _float_values(ctx: _Ctx) -> list[ir.Value]:
    """Every main-graph value that is float32 now (or must be: it sits in a low slot), in graph order."""
    seen: dict[ir.Value, None] = {}
    for v in (*ctx.graph.inputs, *ctx.graph.initializers.values()):
        if v.dtype == F32:
            seen[v] = None
    for node in ctx.graph:
        slots = ctx.low_nodes.get(node)
        for i, v in enumerate(node.inputs):
            if v is not None and (v.dtype == F32 or (slots and i in slots.inputs)):
                seen[v] = None
        for i, v in enumerate(node.outputs):
            if v.dtype == F32 or (slots and i in slots.outputs):
                seen[v] = None
    for v in seen:
        if v.dtype is None:
            v.type = ir.TensorType(F32)
    return [v for v in seen if v.dtype == F32]


def _demands(ctx: _Ctx, v: ir.Value, keep_io_types: bool) -> tuple[dict[ir.DataType, list], ir.DataType | None]:
    """Uses of ``v`` grouped by the type each wants; and the type its graph output must have."""
    wants: dict[ir.DataType, list[tuple[ir.Node, int]]] = defaultdict(list)
    for node, i in v.uses():
        slots = ctx.low_nodes.get(node) if node.graph is ctx.graph else None
        if slots is not None and i in slots.inputs:
            wants[ctx.low].append((node, i))
        elif not (node.graph is ctx.graph and _ANY_INPUT.get(node.op_type) == i):
            wants[F32].append((node, i))
    out = (F32 if keep_io_types else ctx.low) if v.is_graph_output() else None
    return wants, out


def _realize(ctx: _Ctx, v: ir.Value, keep_io_types: bool) -> None:
    wants, out = _demands(ctx, v, keep_io_types)
    producer = v.producer()
    if _is_const(v) or (producer is not None and producer.op_type == "Cast" and producer not in ctx.float_set):
        _realize_flexible(ctx, v, wants, out)
        return
    slots = ctx.low_nodes.get(producer) if producer is not None else None
    low = (slots is not None and v.index() in slots.outputs) or (v.is_graph_input() and not keep_io_types)
    made = ctx.low if low else F32
    if low:
        v.type = ir.TensorType(ctx.low)  # types are shared with the input model: replace, never mutate
        if v.const_value is not None:  # an initializer that is also a graph input
            v.const_value = ctx.tensor(v.const_value.numpy(), v.name)
    if out is not None and out != made:
        _retarget_output(ctx, v, out)
    for to, uses in wants.items():
        if to != made:
            c = ctx.cast(v, to)
            for node, i in uses:
                node.replace_input_with(i, c)


def _retarget_output(ctx: _Ctx, v: ir.Value, to: ir.DataType) -> None:
    """Give graph output ``v``'s name to a Cast of it to ``to``, which takes its place among the outputs."""
    name = v.name
    v.name = ctx.fresh(f"{name}_{_SUFFIX[v.dtype]}")
    c = ctx.cast(v, to)
    c.name = name
    c.producer().name = ctx.fresh(f"Cast_{name}")
    for k, o in enumerate(ctx.graph.outputs):
        if o is v:
            ctx.graph.outputs[k] = c


def _realize_flexible(ctx: _Ctx, v: ir.Value, wants: dict[ir.DataType, list], out: ir.DataType | None) -> None:
    """A constant or a Cast: produced directly in the type its consumers want (a copy for a second type)."""
    types = set(wants) | ({out} if out else set())
    if ctx.low not in types:
        return
    main = out or ctx.low
    first = _retype(ctx, v, main)
    for to in types - {main}:
        alt = _copy(ctx, v, to, first)
        for node, i in wants[to]:
            node.replace_input_with(i, alt)


def _const_array(v: ir.Value) -> np.ndarray:
    p = v.producer()
    if p is None:
        return v.const_value.numpy()
    attrs = p.attributes
    if p.op_type == "ConstantOfShape":
        return attrs["value"].value.numpy() if "value" in attrs else np.zeros(1, np.float32)
    if "value" in attrs:
        return attrs["value"].value.numpy()
    if "value_float" in attrs:
        return np.array(attrs["value_float"].value, np.float32)
    return np.array(attrs["value_floats"].value, np.float32)


def _retype(ctx: _Ctx, v: ir.Value, to: ir.DataType) -> np.ndarray | None:
    """Make ``v`` itself of type ``to`` (data converted, or a Cast retargeted); returns its float32 data."""
    if to == F32:
        return None
    p = v.producer()
    if p is not None and p.op_type == "Cast":
        p.attributes["to"] = ir.AttrInt64("to", int(to))
    else:
        data = _const_array(v)
        t = ctx.tensor(data, v.name)
        if p is None:
            v.const_value = t
        else:
            for key in ("value", "value_float", "value_floats"):
                p.attributes.pop(key, None)
            p.attributes["value"] = ir.AttrTensor("value", t)
        v.type = ir.TensorType(to)
        return data
    v.type = ir.TensorType(to)
    return None


def _copy(ctx: _Ctx, v: ir.Value, to: ir.DataType, data: np.ndarray | None) -> ir.Value:
    """A second producer of ``v``'s data in type ``to``."""
    p = v.producer()
    if p is not None and p.op_type == "Cast":
        return ctx.cast(v, to, source=p.inputs[0])
    if p is not None and p.op_type == "ConstantOfShape":
        return ctx.cast(v, to)
    data = _const_array(v) if data is None else data
    name = ctx.fresh(f"{v.name}_{_SUFFIX[to]}")
    t = ir.Tensor(np.asarray(data, np.float32), name=name) if to == F32 else ctx.tensor(data, name)
    if p is None:
        return add_initializer(ctx.graph, name, t)
    new = ir.Value(name=name, shape=_shape(v), type=ir.TensorType(to))
    ctx.place(ir.Node("", "Constant", [], [ir.AttrTensor("value", t)], outputs=[new],
                      name=ctx.fresh(f"Constant_{name}")), p)
    return new


def _drop_noop_casts(ctx: _Ctx) -> None:
    """Remove Casts that now convert a type to itself (the model's own float casts after retyping)."""
    for node in list(ctx.graph):
        if node.op_type != "Cast" or node in ctx.float_set:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if src is None or src.dtype is None or src.dtype != node.attributes["to"].value or dst.is_graph_output():
            continue
        dst.replace_all_uses_with(src)
        ctx.graph.remove(node, safe=True)


def verify_precision(original: ModelLike, converted: ModelLike, *, atol: float = 1e-4, rtol: float = 1e-2,
                     backend: str | None = None, batch_sizes: Sequence[int] = (1, 3),
                     dim_sizes: Mapping[str, Sequence[int]] | None = None, seed: int = 0) -> VerifyReport:
    """Compare ``converted`` with ``original`` (float32, onnxruntime) on the same random inputs.

    The converted model runs on ``backend``: "ort" (onnxruntime CPU, graph optimizations off, as
    every verification here) by default, "openvino" by default for a bf16 model, which
    onnxruntime's CPU engine cannot run. Half-precision inputs are fed their float32 values
    rounded; outputs are compared as float32, ``max_rel`` relative to each output's largest
    reference magnitude. Returns the report; it does not raise.
    """
    ref_model, cand = as_model(original), as_model(converted)
    has_bf16 = any(x.dtype == ir.DataType.BFLOAT16 for n in cand.graph for x in n.outputs)
    backend = backend or ("openvino" if has_bf16 else "ort")
    specs = hinted_specs(ref_model)
    rng = np.random.default_rng(seed)
    feeds_list = [random_feeds(specs, sizes, rng) for sizes in plan_sizes(specs, batch_sizes, dim_sizes, None)]
    runner, engine = _runner(cand, backend)
    checks, failure = compare_runs(ort_runner(ref_model), runner, feeds_list, atol=atol, rtol=rtol)
    batches = sorted({int(f[specs[0].name].shape[0]) for f in feeds_list if specs and specs[0].dims})
    return VerifyReport(checks, atol, rtol, batches, [describe(f) for f in feeds_list],
                        "the float32 model in " + engine_name(), engine, failure)


def _runner(model: ir.Model, backend: str) -> tuple[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], str]:
    """feeds (float32) -> outputs (float32) of ``model`` on ``backend``, cast at the boundary; and the engine's name."""
    if backend == "ort":
        inner, engine = ort_runner(model), engine_name()
    else:
        session = backends.load(model, backend, Options(precision="fp32"))
        inner, engine = session.run, f"{backend} (precision hint fp32)"
    types = {x.name: x.dtype.numpy() for x in model.graph.inputs if x.dtype is not None}

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = inner({k: (a.astype(types[k]) if k in types else a) for k, a in feeds.items()})
        return {k: (a.astype(np.float32) if a.dtype in (np.float16, ml_dtypes.bfloat16) else a)
                for k, a in outs.items()}

    return run, engine
