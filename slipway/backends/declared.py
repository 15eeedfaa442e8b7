"""What a model file declares as its inputs and outputs, read without loading an engine.

Each engine registers the reader of its model files as ``Engine.io`` ("module:function", imported
on use, see :mod:`slipway.backends`); ``slipway serve`` completes and checks a model's config with
it. A reader is ``read(path, label) -> (inputs, outputs)`` of
:class:`~slipway.backends.base.TensorInfo` (``type`` set, ``shape`` None where the rank is unknown,
``dtype`` None where numpy has none), and raises a
one-line :class:`~slipway.errors.UserError` naming the file as ``label`` when it cannot read it.
This module holds the ONNX reader (onnx only, no engine): every ONNX engine uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from slipway.backends.base import TensorInfo
from slipway.errors import UserError, one_line

__all__ = ["Reader", "onnx_io"]


Reader = Callable[[Path, str], tuple[list[TensorInfo], list[TensorInfo]]]


def onnx_io(path: Path, label: str) -> tuple[list[TensorInfo], list[TensorInfo]]:
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


def _onnx_tensor(kind: str, value) -> TensorInfo:
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
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                      for d in tensor_type.shape.dim)
    return TensorInfo(value.name, shape, dtype, f"ONNX type {type_name}")
