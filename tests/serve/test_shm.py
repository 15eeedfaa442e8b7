"""Triton's system shared-memory extension (slipway/serve/shm.py) with tritonclient's own clients and
``tritonclient.utils.shared_memory``, exactly as users do: inputs read from and outputs written into
the client's regions over HTTP and gRPC, status / unregister, every mistake the same 400 /
INVALID_ARGUMENT over both transports (the parity pattern of test_parity.py), regions unregistered
while requests use them, dynamic batching over shared-memory tensors."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from tests.serve.conftest import build_repository, gemm_model, grpc_call
from tests.serve.test_parity import GRPC_CODE, Case, _post, _set, grpc_infer, http_infer
from tests.serve.test_parity import urls as parity_urls  # noqa: F401 - its server, for the two cases below

SLEEPY = """
backend: "python"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }]
dynamic_batching { }
"""
SLEEPY_PY = "import time\n\ndef infer(inputs):\n    time.sleep(0.15)\n    return {'y': inputs['x']}\n"
MODULES = {"http": httpclient, "grpc": grpcclient}
PROTOCOLS = list(MODULES)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from slipway.serve import Server

    repo = build_repository(tmp_path_factory.mktemp("repo"))
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "1" / "model.py").write_text(SLEEPY_PY)
    (repo / "sleepy" / "config.pbtxt").write_text(SLEEPY)
    s = Server(repo, http_port=0, grpc_port=0, metrics_port=None, threads=1, allow_python_models=True)
    s = s.start_in_thread()
    yield s
    s.stop_thread()


def _url(server, protocol: str) -> str:
    return f"127.0.0.1:{server.http_port if protocol == 'http' else server.grpc_port}"


def _client(server, protocol: str):
    return MODULES[protocol].InferenceServerClient(_url(server, protocol))


class Regions:
    """Regions made with tritonclient.utils.shared_memory; destroyed (and unregistered) at the end."""

    def __init__(self, server) -> None:
        self.server, self.handles = server, []
        self.prefix = f"slipway_test_{os.getpid()}_{id(self) & 0xFFFF:x}"

    def make(self, name: str, size: int, register: str | None = None):
        handle = shm.create_shared_memory_region(name, self.key(name), size)
        self.handles.append(handle)
        if register is not None:
            _client(self.server, register).register_system_shared_memory(name, self.key(name), size)
        return handle

    def key(self, name: str) -> str:
        return f"/{self.prefix}_{name}"

    def close(self) -> None:
        _client(self.server, "http").unregister_system_shared_memory()
        for h in self.handles:
            shm.destroy_shared_memory_region(h)


@pytest.fixture
def regions(server):
    r = Regions(server)
    yield r
    r.close()


def _ort(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(gemm_model().SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inputs_and_outputs_in_shared_memory(server, regions, protocol) -> None:
    """gemm's input at offset 64 of one region, its output at offset 32 of another: onnxruntime's bits."""
    mod, client = MODULES[protocol], _client(server, protocol)
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    inp, out = regions.make("in", 64 + x.nbytes, register=protocol), regions.make("out", 32 + x.nbytes,
                                                                                  register=protocol)
    shm.set_shared_memory_region(inp, [x], offset=64)
    i = mod.InferInput("x", [3, 16], "FP32").set_shared_memory("in", x.nbytes, offset=64)
    o = mod.InferRequestedOutput("y")
    o.set_shared_memory("out", x.nbytes, offset=32)
    result = client.infer("gemm", [i], outputs=[o])
    got = shm.get_contents_as_numpy(out, np.float32, [3, 16], offset=32)
    assert np.array_equal(got, _ort(x))
    entry = result.get_output("y")
    params = entry["parameters"] if protocol == "http" else {k: v.WhichOneof("parameter_choice") and
                                                             getattr(v, v.WhichOneof("parameter_choice"))
                                                             for k, v in entry.parameters.items()}
    assert params == {"shared_memory_region": "out", "shared_memory_byte_size": x.nbytes,
                      "shared_memory_offset": 32}
    assert list(entry["shape"] if protocol == "http" else entry.shape) == [3, 16]
    if protocol == "http":
        assert "data" not in entry and result.get_response().get("parameters") is None  # nothing in the body


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mixed_body_and_shared_memory(server, regions, protocol) -> None:
    """INPUT0 in shared memory, INPUT1 in the body; OUTPUT0 into shared memory, OUTPUT1 in the body."""
    mod, client = MODULES[protocol], _client(server, protocol)
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 0.25, np.float32)
    inp, out = regions.make("in", a.nbytes, register=protocol), regions.make("out", a.nbytes, register=protocol)
    shm.set_shared_memory_region(inp, [a])
    i0 = mod.InferInput("INPUT0", [2, 16], "FP32").set_shared_memory("in", a.nbytes)
    i1 = mod.InferInput("INPUT1", [2, 16], "FP32")
    i1.set_data_from_numpy(b)
    o0, o1 = mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")
    o0.set_shared_memory("out", a.nbytes)
    result = client.infer("add_sub", [i1, i0], outputs=[o0, o1])  # the shared-memory input second
    assert np.array_equal(shm.get_contents_as_numpy(out, np.float32, [2, 16]), a + b)
    assert np.array_equal(result.as_numpy("OUTPUT1"), a - b)
    # the same request with every output in the body: inputs from shared memory only
    result = client.infer("add_sub", [i1, i0])
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bytes_in_shared_memory(server, regions, protocol) -> None:
    """BYTES tensors in Triton's serialized form (4-byte length + bytes per element), both ways."""
    mod, client = MODULES[protocol], _client(server, protocol)
    words = np.array([b"one", b"zwei", "trois \u00e9".encode()], dtype=object)
    serialized = serialize_byte_tensor(words)
    size = serialized_byte_size(serialized)
    inp, out = regions.make("in", size, register=protocol), regions.make("out", 64, register=protocol)
    shm.set_shared_memory_region(inp, [serialized])
    i = mod.InferInput("text", [3], "BYTES").set_shared_memory("in", size)
    o = mod.InferRequestedOutput("same")
    o.set_shared_memory("out", 64)
    client.infer("strings", [i], outputs=[o])
    assert shm.get_contents_as_numpy(out, np.object_, [3]).tolist() == words.tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_status_and_unregister(server, regions, protocol) -> None:
    client = _client(server, protocol)
    regions.make("a", 64, register=protocol)
    regions.make("b", 128)
    client.register_system_shared_memory("b", regions.key("b"), 100, offset=16)
    want = {"a": {"name": "a", "key": regions.key("a"), "offset": 0, "byte_size": 64},
            "b": {"name": "b", "key": regions.key("b"), "offset": 16, "byte_size": 100}}

    def status(name: str = "") -> dict[str, dict[str, Any]]:
        if protocol == "http":
            rows = client.get_system_shared_memory_status(name)
        else:
            rows = [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                    for r in client.get_system_shared_memory_status(name).regions.values()]
        return {r["name"]: r for r in rows}

    assert status() == want
    assert status("b") == {"b": want["b"]}
    client.unregister_system_shared_memory("a")
    client.unregister_system_shared_memory("a")  # an unknown name is no error (as Triton)
    assert status() == {"b": want["b"]}
    with pytest.raises(InferenceServerException, match="shared memory region 'a' is not registered"):
        status("a")
    client.unregister_system_shared_memory()
    assert status() == {}
    # CUDA shared memory: nothing registered, nothing to unregister, registering refused
    cuda = client.get_cuda_shared_memory_status()
    assert (cuda if protocol == "http" else list(cuda.regions)) == []
    client.unregister_cuda_shared_memory()


# ---------------------------------------------------------------------------------------------
# every mistake: the same status and text over both transports, and the server keeps answering

def _http_register(url: str, name: str, body: dict[str, Any], kind: str = "system") -> tuple[int, str]:
    status, answer = _post(f"http://{url}/v2/{kind}sharedmemory/region/{name}/register", json.dumps(body).encode(),
                           {"Content-Type": "application/json"})
    return status, answer.get("error", "")


def _grpc_register(url: str, name: str, body: dict[str, Any], kind: str = "system") -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            if kind == "cuda":
                stub.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest(name=name, raw_handle=b"x",
                                                                                 byte_size=body["byte_size"]))
            else:
                stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name=name, **body), timeout=20)
        except grpc.RpcError as e:
            return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def _register_cases(r: Regions) -> dict[str, tuple[str, dict[str, Any], str, str]]:
    """name: (region name, body, kind, message); region "taken" is registered, its object is 256 bytes."""
    key = r.key("obj")
    return {
        "key not found": ("n", {"key": "/slipway_no_such_key", "offset": 0, "byte_size": 8}, "system",
                          "shared memory region 'n': cannot open the shared memory object with key "
                          "'/slipway_no_such_key' (no such file or directory)"),
        "past the end": ("n", {"key": key, "offset": 200, "byte_size": 64}, "system",
                         f"shared memory region 'n': offset 200 + byte_size 64 is past the end of the shared memory "
                         f"object '{key}' (256 bytes)"),
        "registered twice": ("taken", {"key": key, "offset": 0, "byte_size": 8}, "system",
                             "shared memory region 'taken' already in manager"),
        "key is a path": ("n", {"key": "../passwd", "offset": 0, "byte_size": 8}, "system",
                          "shared memory region 'n': key '../passwd' is not a shared memory key (a name, '/' only "
                          "in front)"),
        "empty region": ("n", {"key": key, "offset": 0, "byte_size": 0}, "system",
                         "shared memory region 'n': byte_size must be more than 0"),
        "CUDA": ("c", {"byte_size": 8}, "cuda", "CUDA shared memory is not supported by slipway serve (it serves "
                                                  "from CPU memory); use system shared memory"),
    }


def _infer_http(url: str, model: str, inputs: list[dict], outputs: list[dict] | None = None) -> tuple[int, str]:
    body: dict[str, Any] = {"inputs": inputs}
    if outputs is not None:
        body["outputs"] = outputs
    status, answer = _post(f"http://{url}/v2/models/{model}/infer", json.dumps(body).encode(), {})
    return status, answer.get("error", "")


def _infer_grpc(url: str, model: str, inputs: list[dict], outputs: list[dict] | None = None):
    request = pb.ModelInferRequest(model_name=model)
    for i in inputs:
        t = request.inputs.add(name=i["name"], datatype=i["datatype"], shape=i["shape"])
        _set(t.parameters, i.get("parameters", {}))
        if "data" in i:
            t.contents.fp32_contents.extend(i["data"])
    for o in outputs or []:
        _set(request.outputs.add(name=o["name"]).parameters, o.get("parameters", {}))
    return grpc_call(url, request)


def _x(**params: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": [1, 16], "parameters": params}


IN = {"shared_memory_region": "r", "shared_memory_byte_size": 64}
INFER_CASES: dict[str, tuple[list[dict], list[dict] | None, str]] = {
    "unknown region": ([_x(shared_memory_region="nope", shared_memory_byte_size=64)], None,
                       "input 'x': shared memory region 'nope' is not registered"),
    "past the region's end": ([_x(**IN, shared_memory_offset=200)], None,
                              "input 'x': offset 200 + byte size 64 is past the end of shared memory region 'r' "
                              "(256 bytes)"),
    "larger than the region": ([_x(shared_memory_region="r", shared_memory_byte_size=1 << 40)], None,
                               "input 'x': offset 0 + byte size 1099511627776 is past the end of shared memory "
                               "region 'r' (256 bytes)"),
    "size is not the shape's": ([_x(shared_memory_region="r", shared_memory_byte_size=60)], None,
                                "input 'x': shared memory byte size 60, expected 64 for FP32 [1, 16]"),
    "no byte size": ([_x(shared_memory_region="r")], None,
                     "input 'x': shared_memory_byte_size is required with shared_memory_region"),
    "region not a string": ([_x(shared_memory_region=5, shared_memory_byte_size=64)], None,
                            "input 'x': shared_memory_region must be a non-empty string, got 5"),
    "negative offset": ([_x(**IN, shared_memory_offset=-1)], None,
                        "input 'x': shared_memory_offset must be a non-negative integer, got -1"),
    "offset without region": ([_x(shared_memory_offset=0)], None,
                              "input 'x': shared_memory_offset / shared_memory_byte_size without shared_memory_region"),
    "data and shared memory": ([{**_x(**IN), "data": [1.0] * 16}], None,
                               "input 'x' has data in the request and in shared memory; give one of them"),
    "unknown output region": ([_x(**IN)], [{"name": "y", "parameters": {**IN, "shared_memory_region": "nope"}}],
                              "output 'y': shared memory region 'nope' is not registered"),
    "output region too small": ([_x(**IN)], [{"name": "y", "parameters": {**IN, "shared_memory_byte_size": 8}}],
                                "output 'y': shared memory byte size 8 is too small for FP32 [1, 16] (64 bytes)"),
    "output past the end": ([_x(**IN)], [{"name": "y", "parameters": {**IN, "shared_memory_offset": 250}}],
                            "output 'y': offset 250 + byte size 64 is past the end of shared memory region 'r' "
                            "(256 bytes)"),
}


def test_every_mistake_same_answer_over_both(server, regions) -> None:
    http_url, grpc_url = _url(server, "http"), _url(server, "grpc")
    obj = regions.make("obj", 256)
    shm.set_shared_memory_region(obj, [np.ones((1, 16), np.float32)])
    client = _client(server, "http")
    client.register_system_shared_memory("taken", regions.key("obj"), 8)
    client.register_system_shared_memory("r", regions.key("obj"), 256)
    failures = []
    for name, (region, body, kind, message) in _register_cases(regions).items():
        got = (_http_register(http_url, region, body, kind), _grpc_register(grpc_url, region, body, kind))
        if got != ((400, message), (GRPC_CODE[400], message)):
            failures.append((name, got))
    for name, (inputs, outputs, message) in INFER_CASES.items():
        got = (_infer_http(http_url, "gemm", inputs, outputs), _infer_grpc(grpc_url, "gemm", inputs, outputs))
        if got != ((400, message), (GRPC_CODE[400], message)):
            failures.append((name, got))
    assert not failures, "\n".join(map(repr, failures))
    # nothing was registered by a refused call, and a good request still works over both
    assert sorted(r["name"] for r in client.get_system_shared_memory_status()) == ["r", "taken"]
    out = [{"name": "y", "parameters": {**IN, "shared_memory_offset": 64}}]
    assert _infer_http(http_url, "gemm", [_x(**IN)], out) == (200, "")
    assert _infer_grpc(grpc_url, "gemm", [_x(**IN)], out) == (grpc.StatusCode.OK, "")
    y = shm.get_contents_as_numpy(obj, np.float32, [1, 16], offset=64)
    assert np.array_equal(y, _ort(np.ones((1, 16), np.float32)))


@pytest.mark.parametrize("case, message", [
    (Case(outputs=[("y", {"shared_memory_region": "r"})]),
     "output 'y': shared_memory_byte_size is required with shared_memory_region"),
    (Case(input_parameters={"shared_memory_region": "r"}),  # and its data in the body (binary / raw_input_contents)
     "input 'x' has data in the request and in shared memory; give one of them"),
])
def test_parity_helpers_cases(parity_urls, case, message) -> None:  # noqa: F811
    """test_parity.py's own requests with shared-memory parameters (they were refused as unsupported before)."""
    http_url, grpc_url = parity_urls
    assert http_infer(http_url, case) == (400, message)
    assert grpc_infer(grpc_url, case) == (GRPC_CODE[400], message)


def test_an_object_that_shrank_is_refused(server, regions) -> None:
    """A client that truncates its object after registering gets a 400, not a server killed by SIGBUS."""
    handle = regions.make("shrinks", 4096, register="http")
    shm.set_shared_memory_region(handle, [np.ones((1, 16), np.float32)])
    os.truncate(f"/dev/shm/{regions.key('shrinks').lstrip('/')}", 16)
    status, message = _infer_http(_url(server, "http"), "gemm",
                                  [_x(shared_memory_region="shrinks", shared_memory_byte_size=64)])
    assert (status, message) == (400, "input 'x': shared memory region 'shrinks' is smaller than when it was "
                                      "registered; register it again")


# ---------------------------------------------------------------------------------------------
# in flight: unregistering, dynamic batching

def _sleepy(server, protocol: str, slot: int, in_name: str, out_name: str | None, x: np.ndarray):
    mod = MODULES[protocol]
    i = mod.InferInput("x", [1, 4], "FP32").set_shared_memory(in_name, 16, offset=16 * slot)
    outputs = None
    if out_name is not None:
        o = mod.InferRequestedOutput("y")
        o.set_shared_memory(out_name, 16, offset=16 * slot)
        outputs = [o]
    return _client(server, protocol).infer("sleepy", [i], outputs=outputs)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dynamic_batching_over_shared_memory(server, regions, protocol) -> None:
    """8 requests at once to a model that batches up to 4: inputs concatenated from 8 places of one
    region, each request's rows written back to its own place of another."""
    n = 8
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    inp, out = regions.make("in", x.nbytes, register=protocol), regions.make("out", x.nbytes, register=protocol)
    shm.set_shared_memory_region(inp, [x])
    before = _sleepy_counts(server)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda k: _sleepy(server, protocol, k, "in", "out", x), range(n)))
    assert np.array_equal(shm.get_contents_as_numpy(out, np.float32, [n, 4]), x)
    inferences, executions = (a - b for a, b in zip(_sleepy_counts(server), before, strict=True))
    assert inferences == n and executions < n  # batched


def _sleepy_counts(server) -> tuple[int, int]:
    stats = _client(server, "http").get_inference_statistics("sleepy")["model_stats"][0]
    return stats["inference_count"], stats["execution_count"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unregister_while_requests_use_the_regions(server, regions, protocol) -> None:
    """Unregister every region while requests read and write them: those already in get their answer
    (outputs in shared memory and in the body, which here aliases the input's region), a request that
    comes after is refused by name, and the server keeps answering."""
    n = 6
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + 1
    inp, out = regions.make("in", x.nbytes, register=protocol), regions.make("out", x.nbytes, register=protocol)
    shm.set_shared_memory_region(inp, [x])
    results: dict[int, Any] = {}

    def one(k: int) -> None:
        try:
            results[k] = _sleepy(server, protocol, k, "in", "out" if k % 2 else None, x)
        except InferenceServerException as e:
            results[k] = e

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.08)  # the first batch is running, the others queued: all hold the regions
    _client(server, protocol).unregister_system_shared_memory()
    for t in threads:
        t.join(30)
    assert _client(server, "http").get_system_shared_memory_status() == []
    for k, r in results.items():
        if isinstance(r, InferenceServerException):  # only a request that arrived after the unregister
            assert "shared memory region 'in' is not registered" in r.message()
        elif k % 2:
            assert np.array_equal(shm.get_contents_as_numpy(out, np.float32, [1, 4], offset=16 * k), x[k : k + 1])
        else:
            assert np.array_equal(r.as_numpy("y"), x[k : k + 1])
    assert sum(not isinstance(r, Exception) for r in results.values()) >= 1
    with pytest.raises(InferenceServerException, match="shared memory region 'in' is not registered"):
        _sleepy(server, protocol, 0, "in", None, x)
    regions.make("again", x.nbytes, register=protocol)  # the server maps and serves new regions
    shm.set_shared_memory_region(regions.handles[-1], [x])
    assert np.array_equal(_sleepy(server, protocol, 2, "again", None, x).as_numpy("y"), x[2:3])


def test_metadata_names_the_extension(server) -> None:
    with urllib.request.urlopen(f"http://{_url(server, 'http')}/v2", timeout=10) as r:
        assert "system_shared_memory" in json.loads(r.read())["extensions"]
