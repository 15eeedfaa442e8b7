"""Helpers for pass tests: build a small graph by hand, run it before and after in onnxruntime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper, numpy_helper

from slipway.graph import copy_model


def make(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
         outputs: Sequence[onnx.ValueInfoProto], initializers: Mapping[str, np.ndarray] = {},
         opset: int = 17) -> ir.Model:
    """An ir.Model from onnx.helper pieces (checked by the onnx checker)."""
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs),
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def tensor(name: str, shape: Sequence[int | str | None], dtype=onnx.TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def copy(model: ir.Model) -> ir.Model:
    return copy_model(model)


def run(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def assert_same(before: ir.Model, after: ir.Model, feeds: Mapping[str, np.ndarray], atol: float = 1e-5) -> None:
    """Both models give the same outputs (after must also pass the onnx checker)."""
    onnx.checker.check_model(ir.serde.serialize_model(after), full_check=True)
    for a, b in zip(run(before, feeds), run(after, feeds), strict=True):
        np.testing.assert_allclose(b, a, atol=atol, rtol=1e-4)
