"""``infer-shapes``: annotate every value with its inferred dtype and shape (symbolic dims kept).

Reuses what :func:`slipway.model.load` does on load (onnx_ir's ``ShapeInferencePass`` over
``onnx.shape_inference``, non-strict so custom-domain ops are skipped rather than fatal). Two
things are added: a dim the model already knew (a number or a named symbol such as ``batch``)
is never replaced by an anonymous one, and a model whose graph would not fit in one protobuf
(Constant nodes over ~1.8 GB; big initializers are left out by onnx_ir) is skipped with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from slipway.graph import is_known_dim
from slipway.passes.base import Pass, PassResult, register

# onnx_ir leaves initializers larger than this out of the proto it hands to onnx.
_INLINE_INITIALIZER_BYTES = 1000
_PROTO_LIMIT = 1_800_000_000

Signature = tuple[object, tuple[object, ...] | None]


def values(model: ir.Model) -> Iterator[ir.Value]:
    """Every value of the model: graph inputs, initializers and node outputs, subgraphs included."""
    for graph in model.graphs():
        yield from graph.inputs
        yield from graph.initializers.values()
        for node in graph:
            yield from node.outputs


def _dim_key(d: object) -> object:
    return d if isinstance(d, int) else ("sym", getattr(d, "value", None))


def _signature(value: ir.Value) -> Signature:
    shape = None if value.shape is None else tuple(_dim_key(d) for d in value.shape)
    return (value.dtype, shape)


def _keep_known_dims(value: ir.Value, old: ir.Shape | None) -> None:
    """Where inference made a known dim anonymous, put the known one back."""
    new = value.shape
    if old is None:
        return
    if new is None:
        value.shape = old
        return
    if len(new) != len(old):
        return
    if any(is_known_dim(o) and not is_known_dim(n) for o, n in zip(old, new, strict=True)):
        value.shape = ir.Shape([o if is_known_dim(o) and not is_known_dim(n) else n for o, n in zip(old, new, strict=True)])


def inline_bytes(model: ir.Model) -> int:
    """Bytes of tensor data that serializing the graph for onnx's C++ API would carry."""
    total = 0
    for graph in model.graphs():
        for v in graph.initializers.values():
            t = v.const_value
            if t is not None and t.nbytes <= _INLINE_INITIALIZER_BYTES:
                total += t.nbytes
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR and not attr.is_ref():
                    total += attr.value.nbytes
    return total


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({str(record.exc_info[1]).strip().splitlines()[0][:200]})"
        self.messages.append(text)


def infer(model: ir.Model, *, limit: int = _PROTO_LIMIT) -> tuple[int, list[str]]:
    """Infer shapes in place; returns (number of values whose dtype or shape changed, warnings)."""
    size = inline_bytes(model)
    if size > limit:
        return 0, [f"infer-shapes: skipped: the graph carries {size / 1e9:.2f} GB of inline tensors, "
                   "too big for onnx shape inference"]
    before = {id(v): (_signature(v), v.shape) for v in values(model)}
    capture = _Capture()
    logger = logging.getLogger("onnx_ir.passes.common.shape_inference")
    logger.addHandler(capture)
    try:
        ShapeInferencePass(strict_mode=False)(model)
    except Exception as e:  # a pass must not fail on what onnx cannot infer
        capture.messages.append(f"shape inference failed: {str(e).strip().splitlines()[0][:200]}")
    finally:
        logger.removeHandler(capture)
    changed = 0
    for v in values(model):
        old = before.get(id(v))
        if old is None:
            continue
        _keep_known_dims(v, old[1])
        if _signature(v) != old[0]:
            changed += 1
    warnings = [f"infer-shapes: {m}" for m in capture.messages if "not found in inferred graph" not in m]
    return changed, warnings


@register
class InferShapes(Pass):
    """value : T -> value : T[d0, d1, ...] (onnx shape inference; symbolic dims and known dims kept).

    Custom-domain ops are skipped (their outputs keep what the model says); a graph with more
    inline tensor data than one protobuf can hold is left unchanged with a warning.
    """

    name = "infer-shapes"

    def __init__(self, *, limit_bytes: int = _PROTO_LIMIT) -> None:
        self.limit_bytes = limit_bytes

    def run(self, model: ir.Model) -> PassResult:
        changed, warnings = infer(model, limit=self.limit_bytes)
        return PassResult(model, bool(changed), {"value": changed}, warnings)
