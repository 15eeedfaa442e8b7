"""``convert-opset``: move a model to another default-domain opset with onnx's version converter.

onnx's C++ converter is used rather than onnxscript's: it converts both up and down from any
opset and fails loudly when an op has no adapter, where onnxscript's only targets opsets 18-25
and skips a node it cannot convert while still stamping the new opset on the model. The
converter sees the graph without its weights (initializers over 1 kB travel as inputs and are
put back afterwards), so external and > 2 GB weights are neither copied nor loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import onnx
import onnx.inliner
import onnx.version_converter
import onnx_ir as ir

from slipway.errors import UserError, one_line
from slipway.graph import default_opset
from slipway.model import MIN_OPSET, max_opset
from slipway.passes.base import Pass, PassResult, register

_INLINE_BYTES = 1000
_OP_IN_MESSAGE = (re.compile(r"No Adapter (?:From|To) Version \$?\d+ for (\w+)"),
                  re.compile(r"No Previous Version of (\w+)"), re.compile(r"for (\w+)"))


@contextmanager
def weights_as_inputs(model: ir.Model) -> Iterator[dict[str, tuple[ir.TensorProtocol, bool]]]:
    """Temporarily turn the main graph's big or external initializers into graph inputs (data set aside).

    Yields {name: (tensor, whether it was a graph input already)}.
    """
    graph = model.graph
    n_inputs = len(graph.inputs)
    moved: dict[str, tuple[ir.Value, ir.TensorProtocol]] = {}
    for v in list(graph.initializers.values()):
        t = v.const_value
        if t is None or (t.nbytes <= _INLINE_BYTES and not isinstance(t, ir.ExternalTensor)):
            continue
        if v.shape is None:
            v.shape = t.shape
        if v.dtype is None:
            v.dtype = t.dtype
        graph.initializers.pop(v.name)
        v.const_value = None
        if v not in graph.inputs:
            graph.inputs.append(v)
        moved[v.name] = (v, t)
    try:
        yield {name: (t, v in graph.inputs[:n_inputs]) for name, (v, t) in moved.items()}
    finally:
        inputs = list(graph.inputs[:n_inputs])
        graph.inputs.clear()
        graph.inputs.extend(inputs)
        for v, t in moved.values():
            v.const_value = t
            graph.register_initializer(v)


def _culprit(message: str, proto: onnx.ModelProto) -> str:
    for pattern in _OP_IN_MESSAGE:
        m = pattern.search(message)
        if m:
            names = [n.name for n in proto.graph.node if n.op_type == m.group(1) and n.name]
            return f"op {m.group(1)}" + (f" (node {names[0]!r})" if names else "")
    return "the model"


def convert(model: ir.Model, target: int) -> None:
    """Convert in place; raises :class:`UserError` naming the op when onnx cannot."""
    current = default_opset(model)
    with weights_as_inputs(model) as moved:
        proto = ir.serde.serialize_model(model)
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    try:
        out = onnx.version_converter.convert_version(proto, target)
        needed = onnx.helper.find_min_ir_version_for(list(out.opset_import), ignore_unknown=True)
        out.ir_version = max(out.ir_version, needed)
        onnx.checker.check_model(out, full_check=True)
    except Exception as e:
        message = one_line(e)
        raise UserError(f"cannot convert opset {current} to {target}: {_culprit(message, proto)}: {message}") from None
    converted = ir.serde.deserialize_model(out)
    graph = converted.graph
    for v in list(graph.inputs):
        if v.name in moved:
            tensor, was_input = moved[v.name]
            if not was_input:
                graph.inputs.remove(v)
            v.const_value = tensor
            graph.register_initializer(v)
    model.graph = graph
    model.ir_version = converted.ir_version
    model.functions.clear()


@register
class ConvertOpset(Pass):
    """model @ opset a -> model @ opset target_opset (onnx version converter; nothing when target_opset is None)."""

    name = "convert-opset"

    def __init__(self, *, target_opset: int | None = None) -> None:
        if target_opset is not None:
            top = max_opset()
            if isinstance(target_opset, bool) or not isinstance(target_opset, int):
                raise UserError(f"target opset must be an integer, got {target_opset!r}")
            if not MIN_OPSET <= target_opset <= top:
                raise UserError(f"target opset {target_opset} is out of range (this onnx converts {MIN_OPSET}..{top})")
        self.target_opset = target_opset

    def run(self, model: ir.Model) -> PassResult:
        current = default_opset(model)
        if self.target_opset is None or current == self.target_opset:
            return PassResult(model, False)
        convert(model, self.target_opset)
        return PassResult(model, True, {f"opset {current}->{self.target_opset}": 1})


__all__ = ["ConvertOpset", "convert", "weights_as_inputs"]
