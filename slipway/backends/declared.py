"""What a model file declares as its inputs and outputs, read without loading an engine.

Each engine registers the reader of its model files as ``Engine.io`` ("module:function", imported
on use, see :mod:`slipway.backends`); ``slipway serve`` completes and checks a model's config with
it. A reader is ``read(path, label) -> (inputs, outputs)`` of :class:`Declared`, and raises a
one-line :class:`~slipway.errors.UserError` naming the file as ``label`` when it cannot read it.
This module holds the type and the ONNX reader (onnx only, no engine): every ONNX engine uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slipway.errors import UserError, one_line

__all__ = ["Declared", "Reader", "onnx_io"]


@dataclass(frozen=True)
class Declared:
    """One input or output as the model file declares it."""

    name: str
    dtype: np.dtype | None  # None: a type numpy has no dtype for
    shape: list[int] | None  # -1: a dynamic dim; None: the rank is not known
    type: str  # the file's own type, for messages: "ONNX type FLOAT", "OpenVINO type f32"


Reader = Callable[[Path, str], tuple[list[Declared], list[Declared]]]


def onnx_io(path: Path, label: str) -> tuple[list[Declared], list[Declared]]:
    """The graph inputs (initializers left out) and outputs of an ONNX file, its weights not loaded."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as e:
        raise UserError(f"{label} is not a readable ONNX model: {one_line(e)}") from None
    graph = model.graph
    weights = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    inputs = [_onnx_tensor("input", v) for v in graph.input if v.name not in weights]
    return inputs, [_onnx_tensor("output", v) for v in graph.output]


def _onnx_tensor(kind: str, value) -> Declared:
    import onnx

    which = value.type.WhichOneof("value")
    if which != "tensor_type":
        raise UserError(f"{kind} {value.name!r} is a {which or 'untyped value'}, not a tensor")
    tensor_type = value.type.tensor_type
    elem = tensor_type.elem_type
    type_name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, ValueError, TypeError):
        dtype = None
    shape = None
    if tensor_type.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim]
    return Declared(value.name, dtype, shape, f"ONNX type {type_name}")
