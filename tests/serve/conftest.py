"""A real server on a temporary Triton-layout repository, shared by the serve tests.

Models (built in code with onnx.helper):
* ``add_sub``: INPUT0, INPUT1 FP32 [-1, 16] -> OUTPUT0 = a + b, OUTPUT1 = a - b; config.pbtxt with
  max_batch_size 8 and dynamic batching (Triton's own example model).
* ``gemm``: x FP32 [batch, 16] -> y = x @ W + b; no config.pbtxt (completed from the ONNX model).
* ``strings``: BYTES identity (ONNX string tensors), max_batch_size 0.
* ``half``: FP16 [batch, 4] -> x * 2 (FP16), no config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ADD_SUB_CONFIG = """
name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

W = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
B = np.random.default_rng(1).standard_normal(16).astype(np.float32)


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    model.opset_import[0].version = 17
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def add_sub_model() -> onnx.ModelProto:
    a = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])
    b = helper.make_tensor_value_info("INPUT1", TensorProto.FLOAT, ["batch", 16])
    o0 = helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])
    o1 = helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", 16])
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    return helper.make_model(helper.make_graph(nodes, "add_sub", [a, b], [o0, o1]))


def gemm_model(w: np.ndarray = W, b: np.ndarray = B) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])
    inits = [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(b, "B")]
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "gemm", [x], [y], inits))


def strings_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("text", TensorProto.STRING, [3])
    y = helper.make_tensor_value_info("same", TensorProto.STRING, [3])
    return helper.make_model(helper.make_graph([helper.make_node("Identity", ["text"], ["same"])], "s", [x], [y]))


def half_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 4])
    two = onnx.numpy_helper.from_array(np.array(2, np.float16), "two")
    return helper.make_model(helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "h", [x], [y], [two]))


def build_repository(root: Path) -> Path:
    _save(add_sub_model(), root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    _save(gemm_model(), root / "gemm" / "1" / "model.onnx")
    _save(strings_model(), root / "strings" / "1" / "model.onnx")
    _save(half_model(), root / "half" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repo):
    """A running server (HTTP, gRPC, metrics on free ports) over :func:`build_repository`."""
    from slipway.serve import Server

    s = Server(repo, http_port=0, grpc_port=0, metrics_port=0, threads=1).start_in_thread()
    yield s
    s.stop_thread()


@pytest.fixture(scope="module")
def http_url(server) -> str:
    return f"127.0.0.1:{server.http_port}"


@pytest.fixture(scope="module")
def grpc_url(server) -> str:
    return f"127.0.0.1:{server.grpc_port}"


def grpc_call(url: str, request: Any) -> tuple[Any, str]:
    """One ModelInfer over a fresh channel: (status code, details), (OK, "") when it answered."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(url) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
        except grpc.RpcError as e:
            return e.code(), e.details()
    return grpc.StatusCode.OK, ""
