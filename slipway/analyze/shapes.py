"""Resolve dynamic dims to static ones and infer every intermediate shape.

The graph inputs get the shapes the user gives (``--shape x=1,3,224,224``); a remaining
symbolic dim on axis 0 (the batch) becomes 1; any other symbolic dim must be given.
Then ONNX shape inference with data propagation runs on a light copy of the model (large
initializers are replaced by typed graph inputs, so multi-GB models stay cheap) and every
value gets a static shape where inference can tell it. The model itself is not changed.
The functions here read the model through a :class:`slipway.analyze._proto.ModelView`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx
import onnx_ir as ir

from slipway.errors import UserError

if TYPE_CHECKING:
    from slipway.analyze._proto import ModelView

_DTYPES: dict[int, ir.DataType] = {}
_BITS: dict[ir.DataType, int | None] = {}


def dtype_of(code: int) -> ir.DataType:
    """The ``onnx_ir`` data type of an ONNX element type code (ValueError for an unknown one)."""
    dtype = _DTYPES.get(code)
    if dtype is None:
        dtype = _DTYPES[code] = ir.DataType(code)
    return dtype


def _bits(dtype: ir.DataType) -> int | None:
    try:
        return _BITS[dtype]
    except KeyError:
        pass
    try:
        bits = dtype.bitwidth
    except TypeError:  # strings and other types without a fixed width
        bits = None
    _BITS[dtype] = bits
    return bits


@dataclass(frozen=True)
class ValueInfo:
    """Static shape (None when unknown) and element type of one value, as the analysis infers them."""

    shape: tuple[int, ...] | None
    dtype: ir.DataType | None

    @property
    def numel(self) -> int | None:
        if self.shape is None:
            return None
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int | None:
        """Bytes the tensor occupies (sub-byte types rounded up); None if unknown."""
        if self.shape is None or self.dtype is None:
            return None
        bits = _bits(self.dtype)
        if bits is None:
            return None
        n = 1
        for d in self.shape:
            n *= d
        return (n * bits + 7) // 8


def graph_inputs(model: ir.Model) -> list[ir.Value]:
    """The model's real inputs (initializers listed as inputs by old exporters excluded)."""
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def resolve_input_shapes(view: ModelView, shapes: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """Static shape of every graph input: from ``shapes``, else the model's, batch dim defaulting to 1.

    Raises :class:`UserError` for a name that is not an input, a wrong rank, a dim that
    contradicts a fixed one in the model, or a dynamic non-batch dim left unset.
    """
    shapes = dict(shapes or {})
    names = [name for name, _ in view.inputs]
    for name in shapes:
        if name not in names:
            raise UserError(f"--shape names unknown input {name!r}; the model's inputs are: {', '.join(names)}")
    return {name: _resolve_one(name, shape, shapes.get(name)) for name, shape in view.inputs}


def _resolve_one(name: str, shape: ir.Shape | None, given: list[int] | None) -> list[int]:
    declared = list(shape) if shape is not None else None
    if given is not None:
        given = [int(d) for d in given]
        if any(d <= 0 for d in given):
            raise UserError(f"--shape for input {name!r} must have positive dims, got {given}")
        if declared is None:
            return given
        if len(given) != len(declared):
            raise UserError(
                f"--shape for input {name!r} has rank {len(given)}, the model's input has rank "
                f"{len(declared)} ({_dims_text(declared)})"
            )
        for axis, (g, d) in enumerate(zip(given, declared, strict=True)):
            if _fixed(d) and d != g:
                raise UserError(
                    f"--shape for input {name!r} sets axis {axis} to {g}, but the model fixes it at {d}"
                )
        return given
    if declared is None:
        raise UserError(f"input {name!r} has no declared shape; give one with --shape {name}=D0,D1,...")
    out = []
    for axis, d in enumerate(declared):
        if _fixed(d):
            out.append(d)
        elif axis == 0:
            out.append(1)
        else:
            raise UserError(
                f"input {name!r} has dynamic dim {getattr(d, 'value', None) or '?'!s} at axis {axis}; "
                f"give its size with --shape {name}=D0,D1,..."
            )
    return out


def _fixed(d: object) -> bool:
    """A declared dim of fixed size; a symbolic one or a negative size (paddle2onnx writes -1) is dynamic."""
    return isinstance(d, int) and d >= 0


def _dims_text(dims: list) -> str:
    return "x".join(str(d if isinstance(d, int) else (d.value or "?")) for d in dims)


def infer_static_shapes(view: ModelView, input_shapes: dict[str, list[int]]) -> dict[str, ValueInfo]:
    """Run ONNX shape inference (with data propagation) at ``input_shapes``.

    Returns a map from value name to :class:`ValueInfo` for every value of the main graph
    (inputs, initializers, node outputs). Values that inference cannot reach (outputs of ops
    from other domains) take the shape the model declares for them, when it is static at
    these inputs, and inference runs again from there. What it still cannot type is left to
    :mod:`slipway.analyze.scopes`. The model is left unchanged. Raises :class:`UserError` when
    the shapes are inconsistent with the model.
    """
    proto = view.light
    for vi in proto.graph.input:
        if vi.name in input_shapes:
            _set_dims(vi, input_shapes[vi.name])
    # Stale declared shapes (symbolic batch, or a batch fixed at export) must not survive.
    del proto.graph.value_info[:]
    for vi in proto.graph.output:
        vi.type.tensor_type.ClearField("shape")
    shown = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in input_shapes.items())
    # Initializers get their own dims below: skip reading what inference says of them.
    known = {n for n, info in view.weights.items() if info is not None and all(d >= 0 for d in info.shape)}
    table = _infer(proto, shown, known)
    missing = _declared_shapes(view, input_shapes, table)
    if missing:
        _declare(proto, missing)
        table = _infer(proto, shown, known)
    for name, info in missing.items():
        if name not in table or table[name].shape is None:
            table[name] = info
    for name, info in view.weights.items():
        if info is not None:
            table[name] = info
    return table


def _declare(proto: onnx.ModelProto, infos: dict[str, ValueInfo]) -> None:
    """Declare these static shapes for inference to start from: on the graph output, else in value_info."""
    outputs = {vi.name: vi for vi in proto.graph.output}
    for name, info in infos.items():
        elem = int(info.dtype) if info.dtype is not None else 0
        if name in outputs:  # inference types a graph output from its own entry, not from value_info
            if elem and not outputs[name].type.tensor_type.elem_type:
                outputs[name].type.tensor_type.elem_type = elem
            _set_dims(outputs[name], list(info.shape or ()))
        else:
            proto.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, list(info.shape or ())))


def _infer(proto: onnx.ModelProto, shown: str, skip: set[str]) -> dict[str, ValueInfo]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"shape inference failed at input shapes {shown}: {first}") from None
    table: dict[str, ValueInfo] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        name = vi.name
        if name not in skip:
            table[name] = _info_from_proto(vi, shown)
    return table


def _declared_shapes(
    view: ModelView, input_shapes: dict[str, list[int]], table: dict[str, ValueInfo]
) -> dict[str, ValueInfo]:
    """Shapes the model itself declares for node outputs inference left unknown, input dim names substituted.

    The fallback for values ONNX inference cannot reach (outputs of ops from other domains,
    such as com.microsoft fused ops). A symbolic dim is used only if it names an input dim;
    a value with any other symbolic dim stays unknown.
    """
    unknown = [o for node in view.nodes for o in node.outputs if o and (o not in table or table[o].shape is None)]
    if not unknown:
        return {}
    names: dict[str, int] = {}
    for name, shape in view.inputs:
        for d, size in zip(shape or [], input_shapes[name], strict=False):
            if not isinstance(d, int) and d.value:
                names[d.value] = size
    out: dict[str, ValueInfo] = {}
    for name, (shape, dtype) in view.declared(unknown).items():
        if shape is None:
            continue
        dims = [d if _fixed(d) else names.get(getattr(d, "value", None) or "") for d in shape]
        if all(isinstance(d, int) for d in dims):
            out[name] = ValueInfo(tuple(dims), dtype)
    return out


def _set_dims(vi: onnx.ValueInfoProto, dims: list[int]) -> None:
    shape = vi.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        shape.dim.add().dim_value = int(d)


def _info_from_proto(vi: onnx.ValueInfoProto, shown: str) -> ValueInfo:
    """Static info of an inferred value; raises UserError for a negative dim."""
    t = vi.type.tensor_type
    dtype = dtype_of(t.elem_type) if t.elem_type else None
    if not t.HasField("shape"):
        return ValueInfo(None, dtype)
    dim_protos = t.shape.dim
    values = [d.dim_value for d in dim_protos]
    if all(v > 0 for v in values):  # the common case: every dim a known size (an unset one reads 0)
        return ValueInfo(tuple(values), dtype)
    dims = [d.dim_value for d in dim_protos if d.HasField("dim_value")]
    if any(d < 0 for d in dims):
        raise UserError(
            f"at input shapes {shown} value {vi.name!r} would get a negative dim {dims}: the input is too "
            "small for the model"
        )
    return ValueInfo(tuple(dims) if len(dims) == len(values) else None, dtype)
