"""Resolve dynamic dims to static ones and infer every intermediate shape.

The graph inputs get the shapes the user gives (``--shape x=1,3,224,224``); a remaining
symbolic dim on axis 0 (the batch) becomes 1; any other symbolic dim must be given.
Then ONNX shape inference with data propagation runs on a light copy of the model (large
initializers are replaced by typed graph inputs, so multi-GB models stay cheap) and every
value gets a static shape where inference can tell it. The model itself is not changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir

from slipway.errors import UserError

# Initializers above this size are detached before serializing the model for inference.
_BIG_TENSOR_BYTES = 1024


@dataclass(frozen=True)
class TensorInfo:
    """Static shape (None when unknown) and element type of one value."""

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
        n = self.numel
        if n is None or self.dtype is None:
            return None
        try:
            bits = self.dtype.bitwidth
        except TypeError:  # strings and other types without a fixed width
            return None
        return (n * bits + 7) // 8


def graph_inputs(model: ir.Model) -> list[ir.Value]:
    """The model's real inputs (initializers listed as inputs by old exporters excluded)."""
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def resolve_input_shapes(model: ir.Model, shapes: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """Static shape of every graph input: from ``shapes``, else the model's, batch dim defaulting to 1.

    Raises :class:`UserError` for a name that is not an input, a wrong rank, a dim that
    contradicts a fixed one in the model, or a dynamic non-batch dim left unset.
    """
    shapes = dict(shapes or {})
    inputs = graph_inputs(model)
    names = [v.name for v in inputs]
    for name in shapes:
        if name not in names:
            raise UserError(f"--shape names unknown input {name!r}; the model's inputs are: {', '.join(names)}")
    return {v.name: _resolve_one(v, shapes.get(v.name)) for v in inputs}


def _resolve_one(value: ir.Value, given: list[int] | None) -> list[int]:
    declared = list(value.shape) if value.shape is not None else None
    if given is not None:
        given = [int(d) for d in given]
        if any(d <= 0 for d in given):
            raise UserError(f"--shape for input {value.name!r} must have positive dims, got {given}")
        if declared is None:
            return given
        if len(given) != len(declared):
            raise UserError(
                f"--shape for input {value.name!r} has rank {len(given)}, the model's input has rank "
                f"{len(declared)} ({_dims_text(declared)})"
            )
        for axis, (g, d) in enumerate(zip(given, declared, strict=True)):
            if isinstance(d, int) and d != g:
                raise UserError(
                    f"--shape for input {value.name!r} sets axis {axis} to {g}, but the model fixes it at {d}"
                )
        return given
    if declared is None:
        raise UserError(f"input {value.name!r} has no declared shape; give one with --shape {value.name}=D0,D1,...")
    out = []
    for axis, d in enumerate(declared):
        if isinstance(d, int):
            out.append(d)
        elif axis == 0:
            out.append(1)
        else:
            raise UserError(
                f"input {value.name!r} has dynamic dim {getattr(d, 'value', None) or '?'!s} at axis {axis}; "
                f"give its size with --shape {value.name}=D0,D1,..."
            )
    return out


def _dims_text(dims: list) -> str:
    return "x".join(str(d if isinstance(d, int) else (d.value or "?")) for d in dims)


def infer_static_shapes(model: ir.Model, input_shapes: dict[str, list[int]]) -> dict[str, TensorInfo]:
    """Run ONNX shape inference (with data propagation) at ``input_shapes``.

    Returns a map from value name to :class:`TensorInfo` for every value of the main graph
    (inputs, initializers, node outputs). Values that inference cannot reach (outputs of ops
    from other domains) take the shape the model declares for them, when it is static at
    these inputs, and inference runs again from there. The model is left unchanged. Raises
    :class:`UserError` when the shapes are inconsistent with the model.
    """
    proto = _light_proto(model)
    for vi in proto.graph.input:
        if vi.name in input_shapes:
            _set_dims(vi, input_shapes[vi.name])
    # Stale declared shapes (symbolic batch, or a batch fixed at export) must not survive.
    del proto.graph.value_info[:]
    for vi in proto.graph.output:
        vi.type.tensor_type.ClearField("shape")
    shown = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in input_shapes.items())
    table = _infer(proto, shown)
    declared = _declared_shapes(model, input_shapes)
    missing = {n: info for n, info in declared.items() if n not in table or table[n].shape is None}
    if missing:
        for name, info in missing.items():
            elem = int(info.dtype) if info.dtype is not None else 0
            proto.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, list(info.shape or ())))
        table = _infer(proto, shown)
        for name, info in missing.items():
            if name not in table or table[name].shape is None:
                table[name] = info
    for init in model.graph.initializers.values():
        t = init.const_value
        if t is not None:
            table[init.name] = TensorInfo(tuple(int(d) for d in t.shape.numpy()), t.dtype)
    return table


def _infer(proto: onnx.ModelProto, shown: str) -> dict[str, TensorInfo]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"shape inference failed at input shapes {shown}: {first}") from None
    table: dict[str, TensorInfo] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if any(d < 0 for d in dims):
            raise UserError(
                f"at input shapes {shown} value {vi.name!r} would get a negative dim {dims}: the input is too "
                "small for the model"
            )
        table[vi.name] = _info_from_proto(vi)
    return table


def _declared_shapes(model: ir.Model, input_shapes: dict[str, list[int]]) -> dict[str, TensorInfo]:
    """Shapes the model itself declares for node outputs, with input dim names substituted.

    The fallback for values ONNX inference cannot reach (outputs of ops from other domains,
    such as com.microsoft fused ops). A symbolic dim is used only if it names an input dim;
    a value with any other symbolic dim stays unknown.
    """
    names: dict[str, int] = {}
    for v in graph_inputs(model):
        for d, size in zip(v.shape or [], input_shapes[v.name], strict=False):
            if not isinstance(d, int) and d.value:
                names[d.value] = size
    out: dict[str, TensorInfo] = {}
    for node in model.graph:
        for v in node.outputs:
            if v.shape is None:
                continue
            dims = [d if isinstance(d, int) else names.get(d.value or "") for d in v.shape]
            if all(isinstance(d, int) for d in dims):
                out[v.name] = TensorInfo(tuple(dims), v.dtype)
    return out


def _set_dims(vi: onnx.ValueInfoProto, dims: list[int]) -> None:
    shape = vi.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        shape.dim.add().dim_value = int(d)


def _info_from_proto(vi: onnx.ValueInfoProto) -> TensorInfo:
    t = vi.type.tensor_type
    dtype = ir.DataType(t.elem_type) if t.elem_type else None
    if not t.HasField("shape"):
        return TensorInfo(None, dtype)
    dims = []
    for d in t.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return TensorInfo(None, dtype)
        dims.append(int(d.dim_value))
    return TensorInfo(tuple(dims), dtype)


def _light_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize ``model`` with its large initializers turned into typed graph inputs.

    The initializers are detached only for the serialization and restored afterwards.
    """
    graph = model.graph
    order = list(graph.initializers.values())
    detached = [v for v in order if v.const_value is None or v.const_value.nbytes > _BIG_TENSOR_BYTES]
    n_inputs = len(graph.inputs)
    saved = {v.name: (v.const_value, v.shape, v.dtype) for v in detached}
    try:
        for v in detached:
            if v.const_value is not None:
                v.shape = v.shape or ir.Shape(v.const_value.shape)
                v.dtype = v.dtype or v.const_value.dtype
            graph.initializers.pop(v.name)
            if v not in graph.inputs:
                graph.inputs.append(v)
        return ir.serde.serialize_model(model)
    finally:
        keep = list(graph.inputs[:n_inputs])
        graph.inputs.clear()
        graph.inputs.extend(keep)
        for v in detached:
            v.const_value, v.shape, v.dtype = saved[v.name]
        for v in list(graph.initializers.values()):
            graph.initializers.pop(v.name)
        for v in order:  # restore the original order too
            graph.initializers.add(v)
