"""The same mistake over HTTP and over gRPC gets the same answer from the real server: 400 and
INVALID_ARGUMENT (404 and NOT_FOUND for a model or version that is not there) with the same
message, because both adapters only decode and the data plane checks (slipway/serve/request.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.serve.conftest import B, W, _save, gemm_model, grpc_call

CONFIG = """
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [ 16 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 16 ] }]
dynamic_batching { priority_levels: 2 default_priority_level: 2 }
"""

ROW = np.ones((1, 16), np.float32)


@dataclass
class Case:
    model: str = "prio"
    version: str = ""
    inputs: list[tuple[str, str, list[int], bytes]] = field(
        default_factory=lambda: [("x", "FP32", [1, 16], ROW.tobytes())])
    parameters: dict[str, Any] = field(default_factory=dict)
    input_parameters: dict[str, Any] = field(default_factory=dict)  # on every input
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


CASES: dict[str, tuple[Case, int, str]] = {
    "unknown model": (Case(model="nope"), 404, "unknown model 'nope'"),
    "unknown version": (Case(version="9"), 404, "model 'prio' has no version 9 loaded (loaded: 1)"),
    "version not a number": (Case(version="x"), 400, "model version 'x' is not an integer"),
    "wrong datatype": (Case(inputs=[("x", "FP64", [1, 16], np.ones((1, 16)).tobytes())]), 400,
                       "input 'x': datatype FP64 does not match the model's FP32"),
    "unknown datatype": (Case(inputs=[("x", "FP9", [1, 16], b"\0" * 16)]), 400,
                         "unknown datatype 'FP9' (one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, "
                         "INT64, FP16, FP32, FP64, BF16, BYTES)"),
    "wrong shape": (Case(inputs=[("x", "FP32", [1, 15], b"\0" * 60)]), 400,
                    "input 'x': shape [1, 15] does not match the model's [-1, 16]"),
    "no batch dim": (Case(inputs=[("x", "FP32", [], b"\0" * 4)]), 400, "input 'x': shape [] has no batch dimension"),
    "batch too large": (Case(inputs=[("x", "FP32", [5, 16], b"\0" * 320)]), 400,
                        "input 'x': batch size 5 of the request to model prio is outside 1..4 (max_batch_size)"),
    "unknown input": (Case(inputs=[("z", "FP32", [1, 16], ROW.tobytes())]), 400,
                      "model 'prio' has no input 'z' (inputs: x)"),
    "input twice": (Case(inputs=[("x", "FP32", [1, 16], ROW.tobytes())] * 2), 400,
                    "model 'prio': an input name is given twice"),
    "missing input": (Case(inputs=[]), 400, "model 'prio': input 'x' is missing"),
    "binary size": (Case(inputs=[("x", "FP32", [1, 16], b"\0" * 60)]), 400,
                    "input 'x': 60 bytes of data, expected 64 for FP32 [1, 16]"),
    "priority string": (Case(parameters={"priority": "high"}), 400,
                        "request parameter 'priority' must be a non-negative integer, got 'high'"),
    "priority negative": (Case(parameters={"priority": -3}), 400,
                          "request parameter 'priority' must be a non-negative integer, got -3"),
    "priority bool": (Case(parameters={"priority": True}), 400,
                      "request parameter 'priority' must be a non-negative integer, got True"),
    "priority too high": (Case(parameters={"priority": 3}), 400,
                          "priority 3 of the request to model prio is outside 1..2"),
    "timeout string": (Case(parameters={"timeout": "soon"}), 400,
                       "request parameter 'timeout' must be a non-negative integer, got 'soon'"),
    "timeout negative": (Case(parameters={"timeout": -1}), 400,
                         "request parameter 'timeout' must be a non-negative integer, got -1"),
    "timeout NaN": (Case(parameters={"timeout": float("nan")}), 400,
                    "request parameter 'timeout' must be a non-negative integer, got nan"),
    "timeout infinite": (Case(parameters={"timeout": float("inf")}), 400,
                         "request parameter 'timeout' must be a non-negative integer, got inf"),
    "timeout fractional": (Case(parameters={"timeout": 1.5}), 400,
                           "request parameter 'timeout' must be a non-negative integer, got 1.5"),
    "priority minus one": (Case(parameters={"priority": -1}), 400,
                           "request parameter 'priority' must be a non-negative integer, got -1"),
    "too many tensors": (Case(outputs=[("y", {})] * 300), 413,
                         "the request names 301 input and output tensors, over the limit of 256 (--max-inputs)"),
    "binary_data_output": (Case(parameters={"binary_data_output": "yes"}), 400,
                           "request parameter 'binary_data_output' must be true or false"),
    "unknown output": (Case(outputs=[("z", {})]), 400, "model 'prio' has no output 'z' (outputs: y)"),
    "output binary_data": (Case(outputs=[("y", {"binary_data": "yes"})]), 400,
                           "output 'y': binary_data must be true or false"),
    "classification": (Case(outputs=[("y", {"classification": 2})]), 400,
                       "the classification extension is not supported"),
    "output shared memory": (Case(outputs=[("y", {"shared_memory_region": "r"})]), 400,
                             "output 'y': shared_memory_byte_size is required with shared_memory_region"),
    "input shared memory": (Case(input_parameters={"shared_memory_region": "r"}), 400,
                            "input 'x' has data in the request and in shared memory; give one of them"),
}


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    from slipway.serve import Server

    repo = tmp_path_factory.mktemp("parity")
    _save(gemm_model(), repo / "prio" / "1" / "model.onnx")
    (repo / "prio" / "config.pbtxt").write_text(CONFIG)
    server = Server(repo, http_port=0, grpc_port=0, metrics_port=None, threads=1).start_in_thread()
    yield f"127.0.0.1:{server.http_port}", f"127.0.0.1:{server.grpc_port}"
    server.stop_thread()


def _path(case: Case) -> str:
    version = f"/versions/{case.version}" if case.version else ""
    return f"/v2/models/{case.model}{version}/infer"


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def http_infer(url: str, case: Case) -> tuple[int, str]:
    """The case as a binary-tensor HTTP request: (status, error message)."""
    inputs = [{"name": n, "datatype": dt, "shape": shape,
               "parameters": {**case.input_parameters, "binary_data_size": len(raw)}}
              for n, dt, shape, raw in case.inputs]
    header: dict[str, Any] = {"inputs": inputs}
    if case.parameters:
        header["parameters"] = case.parameters
    if case.outputs:
        header["outputs"] = [{"name": n, "parameters": p} for n, p in case.outputs]
    head = json.dumps(header).encode()
    body = head + b"".join(raw for *_, raw in case.inputs)
    status, answer = _post(f"http://{url}{_path(case)}", body, {"Inference-Header-Content-Length": str(len(head))})
    return status, answer.get("error", "")


def _set(target: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


def grpc_infer(url: str, case: Case) -> tuple[grpc.StatusCode, str]:
    """The case as a ModelInferRequest with raw_input_contents: (code, details)."""
    request = pb.ModelInferRequest(model_name=case.model, model_version=case.version)
    for n, dt, shape, raw in case.inputs:
        tensor = request.inputs.add(name=n, datatype=dt, shape=shape)
        _set(tensor.parameters, case.input_parameters)
        request.raw_input_contents.append(raw)
    _set(request.parameters, case.parameters)
    for n, p in case.outputs:
        _set(request.outputs.add(name=n).parameters, p)
    return grpc_call(url, request)


GRPC_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
             413: grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.mark.parametrize("name", list(CASES))
def test_same_mistake_same_answer(urls, name) -> None:
    http_url, grpc_url = urls
    case, status, message = CASES[name]
    got_status, http_message = http_infer(http_url, case)
    code, grpc_message = grpc_infer(grpc_url, case)
    assert (got_status, http_message) == (status, message)
    assert (code, grpc_message) == (GRPC_CODE[status], message)


def test_good_request_and_its_priority_over_both(urls) -> None:
    http_url, grpc_url = urls
    case = Case(parameters={"priority": 1, "timeout": 10_000_000})
    assert http_infer(http_url, case) == (200, "")
    assert grpc_infer(grpc_url, case) == (grpc.StatusCode.OK, "")


def test_http_only_mistakes_are_400(urls) -> None:
    """Mistakes gRPC cannot make (its messages are typed): malformed JSON, non-scalar parameters."""
    http_url, _ = urls
    url = f"http://{http_url}/v2/models/prio/infer"
    status, answer = _post(url, b'{"inputs": [', {})
    assert status == 400 and answer["error"].startswith("malformed JSON in the request")
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}],
            "parameters": {"priority": [1]}}
    status, answer = _post(url, json.dumps(body).encode(), {})
    assert (status, answer["error"]) == (400, "request parameter 'priority' must be a bool, number or string, got [1]")
    body["parameters"] = {}
    status, answer = _post(url, json.dumps(body).encode(), {})
    assert status == 200
    np.testing.assert_allclose(answer["outputs"][0]["data"], (ROW @ W + B).ravel(), rtol=1e-5, atol=1e-5)


# typed data: JSON "data" over HTTP, the InferTensorContents fields over gRPC (each decoded by its adapter,
# each message worded by slipway.serve.tensors: count_error, type_error)
TYPED: dict[str, tuple[str, list[int], list[Any], str, list[Any], str]] = {
    # name: (datatype, shape, JSON data, contents field, contents values, message)
    "too few elements": ("FP32", [1, 16], [1.0] * 15, "fp32_contents", [1.0] * 15,
                         "input 'x': 15 elements, expected 16 for FP32 [1, 16]"),
    "too many elements": ("FP32", [1, 16], [1.0] * 17, "fp32_contents", [1.0] * 17,
                          "input 'x': 17 elements, expected 16 for FP32 [1, 16]"),
    "no elements": ("FP32", [1, 16], [], "fp32_contents", [], "input 'x': 0 elements, expected 16 for FP32 [1, 16]"),
    "INT32 count": ("INT32", [2, 2], [1, 2, 3], "int_contents", [1, 2, 3],
                    "input 'x': 3 elements, expected 4 for INT32 [2, 2]"),
    "BYTES count": ("BYTES", [1, 2], ["a"], "bytes_contents", [b"a"],
                    "input 'x': 1 elements, expected 2 for BYTES [1, 2]"),
    "FP32 as text / in int_contents": ("FP32", [1, 16], ["a"] * 16, "int_contents", [1] * 16,
                                       "input 'x': data must hold FP32 numbers"),
    "FP32 as numeric text / in bytes_contents": ("FP32", [1, 16], ["1"] * 16, "bytes_contents", [b"1"] * 16,
                                                 "input 'x': data must hold FP32 numbers"),
    "BOOL as text / in int_contents": ("BOOL", [1, 2], ["true", "false"], "int_contents", [1, 0],
                                       "input 'x': data must hold BOOL booleans"),
    "BYTES as numbers / in int_contents": ("BYTES", [1, 2], [1, 2], "int_contents", [1, 2],
                                           "input 'x': data must hold BYTES strings"),
}


@pytest.mark.parametrize("name", list(TYPED))
def test_same_typed_data_mistake_same_answer(urls, name) -> None:
    http_url, grpc_url = urls
    datatype, shape, data, field_name, values, message = TYPED[name]
    body = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}
    status, answer = _post(f"http://{http_url}/v2/models/prio/infer", json.dumps(body).encode(), {})
    assert (status, answer.get("error")) == (400, message)
    request = pb.ModelInferRequest(model_name="prio")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(tensor.contents, field_name).extend(values)
    with grpc.insecure_channel(grpc_url) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
