"""The gRPC adapter against unmodified tritonclient (sync + asyncio) and raw protobuf stubs.

``GrpcServer`` runs ``make_server`` on 127.0.0.1 in a background thread with its own event loop;
it takes a plane factory so the fake plane below can be swapped for the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from slipway.errors import ServeError
from slipway.serve.grpc import make_server
from slipway.serve.limits import Limits
from slipway.serve.stats import ModelStats
from slipway.serve.tensors import config_type
from slipway.serve.types import InferRequest, InferResponse, InferTensor


class GrpcServer:
    """``make_server(make_plane(), **options)`` on 127.0.0.1:<free port>, in a thread with its own loop."""

    def __init__(self, make_plane: Callable[[], Any], **options: Any) -> None:
        self._make_plane, self._options = make_plane, options
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.loop = asyncio.new_event_loop()
        self.plane: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> GrpcServer:
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc
        self._ready.set()
        if self._error is None:
            self.loop.run_forever()
        self.loop.close()

    async def _start(self) -> None:
        self.plane = self._make_plane()
        self._server = make_server(self.plane, **self._options)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()


# ---------------------------------------------------------------------------------------------
# a small fake DataPlane


@dataclass
class FakeModel:
    inputs: list[tuple[str, str, list[int]]]  # name, datatype, dims without the batch dim
    outputs: list[tuple[str, str, list[int]]]
    run: Callable[..., Any]  # async (feeds, request) -> outputs


async def _add_sub(feeds, request):
    a, b = feeds["INPUT0"], feeds["INPUT1"]
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}


async def _identity(feeds, request):
    return {"OUTPUT0": feeds["INPUT0"]}


class FakePlane:
    IDENTITY = ("FP16", "BF16", "FP32", "FP64", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BYTES")

    def __init__(self) -> None:
        self.models = {
            "add_sub": FakeModel([("INPUT0", "FP32", [16]), ("INPUT1", "FP32", [16])],
                                 [("OUTPUT0", "FP32", [16]), ("OUTPUT1", "FP32", [16])], _add_sub),
            "slow": FakeModel([("INPUT0", "FP32", [1])], [("OUTPUT0", "FP32", [1])], self._slow),
            "fail": FakeModel([("INPUT0", "FP32", [1])], [("OUTPUT0", "FP32", [1])], self._fail),
            "spare": FakeModel([("INPUT0", "FP32", [1])], [("OUTPUT0", "FP32", [1])], _identity),
        }
        for dt in self.IDENTITY:
            self.models[f"identity_{dt}"] = FakeModel([("INPUT0", dt, [-1])], [("OUTPUT0", dt, [-1])], _identity)
        self.unloaded: set[str] = set()
        self.loads: list[tuple[str, dict]] = []
        self.last: InferRequest | None = None
        self.cancelled = 0

    async def _slow(self, feeds, request):
        try:
            await asyncio.sleep(request.parameters.get("delay_ms", 0) / 1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return {"OUTPUT0": feeds["INPUT0"]}

    async def _fail(self, feeds, request):
        status = request.parameters.get("status", 0)
        if status:
            raise ServeError(f"fail was asked for status {status}", status)
        raise RuntimeError("boom\nsecond line")

    def _model(self, name: str, version: str = "") -> FakeModel:
        if name not in self.models:
            raise ServeError(f"unknown model {name!r}", 404)
        if version not in ("", "1"):
            raise ServeError(f"model {name!r} has no version {version!r}", 404)
        return self.models[name]

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    def metadata(self) -> dict:
        return {"name": "slipway", "version": "0.test", "extensions": ["model_repository", "statistics"]}

    def model_ready(self, name: str, version: str = "") -> bool:
        return name in self.models and name not in self.unloaded and version in ("", "1")

    def model_metadata(self, name: str, version: str = "") -> dict:
        m = self._model(name, version)

        def meta(items):
            return [{"name": n, "datatype": dt, "shape": [-1, *dims]} for n, dt, dims in items]

        return {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": meta(m.inputs), "outputs": meta(m.outputs)}

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        m = self._model(name, version)

        def dtype(dt):
            return mc.DataType.Value(config_type(dt))

        return mc.ModelConfig(
            name=name, platform="onnxruntime_onnx", max_batch_size=8,
            input=[mc.ModelInput(name=n, data_type=dtype(dt), dims=d) for n, dt, d in m.inputs],
            output=[mc.ModelOutput(name=n, data_type=dtype(dt), dims=d) for n, dt, d in m.outputs],
        )

    def model_statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        names = [name] if name else sorted(self.models)
        for n in names:
            self._model(n, version)
        return pb.ModelStatisticsResponse(model_stats=[ModelStats(n, "1").to_proto() for n in names])

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        rows = [{"name": n, "version": "1", "state": "UNAVAILABLE" if n in self.unloaded else "READY", "reason": ""}
                for n in sorted(self.models)]
        return [r for r in rows if r["state"] == "READY" or not ready_only]

    async def load_model(self, name: str, parameters: dict | None = None) -> None:
        self._model(name)
        try:
            json.loads((parameters or {}).get("config", "{}"))
        except ValueError:
            raise ServeError(f"model {name!r}: the config override is not JSON", 400) from None
        self.loads.append((name, dict(parameters or {})))
        self.unloaded.discard(name)

    async def unload_model(self, name: str, parameters: dict | None = None) -> None:
        self._model(name)
        self.unloaded.add(name)

    async def infer(self, request: InferRequest) -> InferResponse:
        m = self._model(request.model, request.version)
        if request.model in self.unloaded:
            raise ServeError(f"model {request.model!r} is not loaded", 503)
        self.last = request
        wanted = {(n, dt) for n, dt, _ in m.inputs}
        given = {(t.name, t.datatype) for t in request.inputs}
        if given != wanted:
            raise ServeError(f"model {request.model!r} takes {sorted(wanted)}, got {sorted(given)}", 400)
        outputs = await m.run({t.name: t.data for t in request.inputs}, request)
        names = [o.name for o in request.outputs] or [n for n, _, _ in m.outputs]
        types = {n: dt for n, dt, _ in m.outputs}
        tensors = [InferTensor(n, types[n], list(outputs[n].shape), outputs[n]) for n in names]
        return InferResponse(request.model, "1", request.id, tensors, {"fake": True})


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def server():
    with GrpcServer(FakePlane) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.url)
    yield c
    c.close()


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def _add_sub_inputs(rows: int = 2) -> tuple[np.ndarray, np.ndarray, list[grpcclient.InferInput]]:
    a = np.arange(rows * 16, dtype=np.float32).reshape(rows, 16)
    b = np.full((rows, 16), 0.5, dtype=np.float32)
    return a, b, [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")]


def _slow_inputs(value: float) -> list[grpcclient.InferInput]:
    return [_input("INPUT0", np.array([[value]], dtype=np.float32), "FP32")]


def _code(exc: InferenceServerException) -> str:
    return exc.status().replace("StatusCode.", "")


def _raw_call(server: GrpcServer, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    with grpc.insecure_channel(server.url) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)


def _raw_code(server: GrpcServer, request: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(server, request)
    return info.value.code(), info.value.details()


# ---------------------------------------------------------------------------------------------
# health, metadata, repository


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert (meta.name, meta.version, list(meta.extensions)) == ("slipway", "0.test", ["model_repository", "statistics"])
    assert client.is_model_ready("add_sub") and not client.is_model_ready("nope")
    model = client.get_model_metadata("add_sub", as_json=True)
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "16"]}
    config = client.get_model_config("add_sub").config
    assert (config.name, config.max_batch_size, list(config.input[1].dims)) == ("add_sub", 8, [16])
    assert config.input[0].data_type == mc.TYPE_FP32
    stats = client.get_inference_statistics("add_sub")
    assert [(s.name, s.version) for s in stats.model_stats] == [("add_sub", "1")]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert _code(info.value) == "NOT_FOUND" and "unknown model 'nope'" in info.value.message()


def test_repository_load_unload(server, client):
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index["spare"] == "READY" and index["add_sub"] == "READY"
    client.unload_model("spare")
    assert not client.is_model_ready("spare")
    assert "spare" not in {m.name for m in client.get_model_repository_index(as_json=False).models if m.state == "READY"}
    client.load_model("spare", config='{"max_batch_size": 4}')
    assert client.is_model_ready("spare")
    assert server.plane.loads[-1] == ("spare", {"config": '{"max_batch_size": 4}'})
    with pytest.raises(InferenceServerException) as info:
        client.load_model("spare", config="{not json")
    assert _code(info.value) == "INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as info:
        client.load_model("nope")
    assert _code(info.value) == "NOT_FOUND"


def test_unimplemented(client):
    with pytest.raises(InferenceServerException) as info:
        client.get_system_shared_memory_status()
    assert _code(info.value) == "UNIMPLEMENTED"
    assert info.value.message() == "SystemSharedMemoryStatus is not implemented by slipway serve"


# ---------------------------------------------------------------------------------------------
# inference


def test_infer_add_sub(server, client):
    a, b, inputs = _add_sub_inputs(3)
    result = client.infer("add_sub", inputs, request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r-1", "add_sub", "1")
    assert len(response.raw_output_contents) == 2 and response.parameters["fake"].bool_param
    only = client.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert only.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)
    assert [o.name for o in server.plane.last.outputs] == ["OUTPUT1"]


@pytest.mark.parametrize(
    "datatype, array",
    [
        ("FP16", np.array([[1.5, -2.25, 65504.0]], dtype=np.float16)),
        ("BF16", np.array([[1.5, -2.0, 3.0e38]], dtype=ml_dtypes.bfloat16)),
        ("FP64", np.array([[1e300, -0.1]], dtype=np.float64)),
        ("INT8", np.array([[-128, 127]], dtype=np.int8)),
        ("INT64", np.array([[2**62, -(2**62), 7]], dtype=np.int64)),
        ("UINT64", np.array([[2**64 - 1, 0]], dtype=np.uint64)),
        ("BOOL", np.array([[True, False, True]])),
        ("BYTES", np.array([[b"abc", b"", "h\u00e9llo".encode(), b"\x00\xff"]], dtype=object)),
    ],
)
def test_infer_datatypes(server, client, datatype, array):
    result = client.infer(f"identity_{datatype}", [_input("INPUT0", array, datatype)])
    out = result.as_numpy("OUTPUT0")
    assert out.shape == array.shape and result.get_output("OUTPUT0").datatype == datatype
    if datatype == "BYTES":
        assert out.tolist() == array.tolist()
    else:
        assert out.dtype == array.dtype
        np.testing.assert_array_equal(out, array)
    received = server.plane.last.inputs[0]
    assert (received.datatype, received.shape) == (datatype, list(array.shape))


def test_parameters_reach_plane(server, client):
    _, _, inputs = _add_sub_inputs(1)
    client.infer("add_sub", inputs, priority=3, timeout=1500, parameters={"s": "x", "flag": True, "n": -5, "f": 0.5})
    last = server.plane.last
    assert (last.parameters["priority"], last.parameters["timeout"]) == (3, 1500)
    assert {k: last.parameters[k] for k in ("s", "flag", "n", "f")} == {"s": "x", "flag": True, "n": -5, "f": 0.5}


def test_aio_client(server):
    async def main():
        async with aioclient.InferenceServerClient(server.url) as c:
            assert await c.is_server_live() and await c.is_model_ready("add_sub")
            meta = await c.get_model_metadata("add_sub")
            assert [t.name for t in meta.outputs] == ["OUTPUT0", "OUTPUT1"]
            a, b, inputs = _add_sub_inputs(2)
            result = await c.infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)

            async def requests():
                for i in range(4):
                    yield {"model_name": "slow", "inputs": _slow_inputs(i), "request_id": f"s{i}",
                           "parameters": {"delay_ms": 40 - 10 * i}}
                yield {"model_name": "nope", "inputs": _slow_inputs(9), "request_id": "bad"}

            got = {}
            async for res, err in c.stream_infer(requests()):
                if err is not None:
                    got["error"] = err.message()
                else:
                    got[res.get_response().id] = float(res.as_numpy("OUTPUT0")[0, 0])
                if len(got) == 5:
                    break
            return got

    got = asyncio.run(main())
    assert got == {"s0": 0.0, "s1": 1.0, "s2": 2.0, "s3": 3.0, "error": "unknown model 'nope'"}


def test_stream_sync_concurrent_and_survives_errors(client):
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("slow", _slow_inputs(1.0), request_id="late", parameters={"delay_ms": 300})
        client.async_stream_infer("slow", _slow_inputs(2.0), request_id="early")
        client.async_stream_infer("nope", _slow_inputs(3.0), request_id="bad")
        _, _, inputs = _add_sub_inputs(1)
        client.async_stream_infer("add_sub", inputs, request_id="after-error")
        got = [results.get(timeout=10) for _ in range(4)]
    finally:
        client.stop_stream()
    ids = [r.get_response().id if r is not None else "error" for r, _ in got]
    assert ids[-1] == "late"  # the slow request did not hold the others back
    assert sorted(ids) == ["after-error", "early", "error", "late"]
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and errors[0].message() == "unknown model 'nope'"
    by_id = {r.get_response().id: r for r, _ in got if r is not None}
    assert by_id["late"].as_numpy("OUTPUT0")[0, 0] == 1.0 and by_id["early"].as_numpy("OUTPUT0")[0, 0] == 2.0


# ---------------------------------------------------------------------------------------------
# raw protobuf: typed contents, malformed requests


def _tensor(name: str, datatype: str, shape: list[int], **contents: Any) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents) if contents else None
    )


def test_typed_contents(server):
    a, b = [float(i) for i in range(16)], [2.0] * 16
    request = pb.ModelInferRequest(model_name="add_sub", id="c", inputs=[
        _tensor("INPUT0", "FP32", [1, 16], fp32_contents=a), _tensor("INPUT1", "FP32", [1, 16], fp32_contents=b)])
    response = _raw_call(server, request)
    assert response.id == "c" and [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert list(response.outputs[0].shape) == [1, 16] and not response.outputs[0].HasField("contents")
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), np.add(a, b))
    cases = {
        "INT64": dict(int64_contents=[-(2**63), 5]),
        "INT8": dict(int_contents=[-128, 127]),
        "UINT8": dict(uint_contents=[0, 255]),
        "BOOL": dict(bool_contents=[True, False]),
        "BYTES": dict(bytes_contents=[b"x", b"yz"]),
    }
    for datatype, contents in cases.items():
        request = pb.ModelInferRequest(model_name=f"identity_{datatype}", inputs=[
            _tensor("INPUT0", datatype, [1, 2], **contents)])
        _raw_call(server, request)
        sent = next(iter(contents.values()))
        assert server.plane.last.inputs[0].data.reshape(-1).tolist() == sent


@pytest.mark.parametrize(
    "request_, message",
    [
        (pb.ModelInferRequest(model_name="add_sub", inputs=[
            _tensor("INPUT0", "FP32", [1, 16], fp32_contents=[1.0] * 15),
            _tensor("INPUT1", "FP32", [1, 16], fp32_contents=[1.0] * 16)]),
         "input 'INPUT0': 15 elements, expected 16 for FP32 [1, 16]"),
        (pb.ModelInferRequest(model_name="identity_INT8", inputs=[_tensor("INPUT0", "INT8", [1], int_contents=[300])]),
         "input 'INPUT0': a value in int_contents is out of range for INT8"),
        (pb.ModelInferRequest(model_name="identity_FP16", inputs=[_tensor("INPUT0", "FP16", [1], fp32_contents=[1])]),
         "input 'INPUT0': FP16 data must be sent in raw_input_contents"),
        (pb.ModelInferRequest(model_name="add_sub", inputs=[_tensor("INPUT0", "FP32", [1, 16]),
                                                            _tensor("INPUT1", "FP32", [1, 16])],
                              raw_input_contents=[b"\0" * 64]),
         "raw_input_contents has 1 entries but the request has 2 inputs"),
        (pb.ModelInferRequest(model_name="identity_FP32", inputs=[_tensor("INPUT0", "FP32", [1, 4])],
                              raw_input_contents=[b"\0" * 12]),
         "input 'INPUT0': 12 bytes of data, expected 16 for FP32 [1, 4]"),
        (pb.ModelInferRequest(model_name="identity_FP32", inputs=[_tensor("INPUT0", "FP32", [1], fp32_contents=[1])],
                              raw_input_contents=[b"\0" * 4]),
         "input 'INPUT0': contents must be empty when raw_input_contents is used"),
        (pb.ModelInferRequest(model_name="identity_FP32", inputs=[_tensor("INPUT0", "FP9", [1])],
                              raw_input_contents=[b"\0"]),
         "unknown datatype 'FP9'"),
        (pb.ModelInferRequest(model_name="identity_BYTES", inputs=[_tensor("INPUT0", "BYTES", [2])],
                              raw_input_contents=[b"\x01\0\0\0a"]),
         "input 'INPUT0': BYTES data ends after 1 of 2 elements"),
    ],
)
def test_bad_requests(server, client, request_, message):
    code, details = _raw_code(server, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(message)
    assert client.is_server_live()


def test_unknown_model(client):
    _, _, inputs = _add_sub_inputs(1)
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", inputs)
    assert _code(info.value) == "NOT_FOUND"
    assert client.infer("add_sub", inputs).as_numpy("OUTPUT0").shape == (1, 16)


@pytest.mark.parametrize(
    "status, code",
    [(400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (404, "NOT_FOUND"), (409, "FAILED_PRECONDITION"),
     (413, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED"), (500, "INTERNAL")],
)
def test_error_codes(client, status, code):
    with pytest.raises(InferenceServerException) as info:
        client.infer("fail", _slow_inputs(0), parameters={"status": status})
    assert _code(info.value) == code and info.value.message() == f"fail was asked for status {status}"


def test_unexpected_error_is_internal_and_logged(client, caplog):
    with caplog.at_level(logging.ERROR, logger="slipway.serve"):
        with pytest.raises(InferenceServerException) as info:
            client.infer("fail", _slow_inputs(0))
    assert _code(info.value) == "INTERNAL" and info.value.message() == "internal error: RuntimeError: boom"
    assert any(r.exc_info and "ModelInfer" in r.getMessage() for r in caplog.records)
    assert client.is_server_ready()


def test_client_cancellation_reaches_plane(server, client):
    before = server.plane.cancelled
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", _slow_inputs(0), parameters={"delay_ms": 5000}, client_timeout=0.2)
    assert _code(info.value) == "DEADLINE_EXCEEDED"
    for _ in range(100):
        if server.plane.cancelled > before:
            break
        threading.Event().wait(0.02)
    assert server.plane.cancelled == before + 1


# ---------------------------------------------------------------------------------------------
# options: auth, message size


def test_auth():
    with GrpcServer(FakePlane, token="s3cret") as s, grpcclient.InferenceServerClient(s.url) as c:
        assert c.is_server_live() and c.is_server_ready()
        good = {"authorization": "Bearer s3cret"}
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            with pytest.raises(InferenceServerException) as info:
                c.is_model_ready("add_sub", headers=headers)
            assert _code(info.value) == "UNAUTHENTICATED"
        assert c.is_model_ready("add_sub", headers=good)
        a, b, inputs = _add_sub_inputs(1)
        with pytest.raises(InferenceServerException) as info:
            c.infer("add_sub", inputs)
        assert _code(info.value) == "UNAUTHENTICATED"
        np.testing.assert_array_equal(c.infer("add_sub", inputs, headers=good).as_numpy("OUTPUT0"), a + b)
        results: queue.Queue = queue.Queue()
        c.start_stream(callback=lambda result, error: results.put((result, error)))
        with contextlib.suppress(InferenceServerException):  # the stream may already be closed by the server
            c.async_stream_infer("add_sub", inputs)
        result, error = results.get(timeout=10)
        c.stop_stream()
        assert result is None and "UNAUTHENTICATED" in error.status()


def test_message_size_limit():
    with GrpcServer(FakePlane, limits=Limits(body_bytes=4096)) as s, grpcclient.InferenceServerClient(s.url) as c:
        small = np.zeros((1, 16), np.float32)
        assert c.infer("identity_FP32", [_input("INPUT0", small, "FP32")]).as_numpy("OUTPUT0").shape == (1, 16)
        with pytest.raises(InferenceServerException) as info:
            c.infer("identity_FP32", [_input("INPUT0", np.zeros((1, 2048), np.float32), "FP32")])
        assert _code(info.value) == "RESOURCE_EXHAUSTED"
        assert c.is_server_live()


def test_stream_errors_carry_request_id(server):
    good = pb.ModelInferRequest(model_name="identity_FP32", id="ok", inputs=[_tensor("INPUT0", "FP32", [1, 1])],
                                raw_input_contents=[np.float32(4.0).tobytes()])
    bad = pb.ModelInferRequest(model_name="identity_FP32", id="short", inputs=[_tensor("INPUT0", "FP32", [1, 2])],
                               raw_input_contents=[b"\0" * 4])
    with grpc.insecure_channel(server.url) as channel:
        responses = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([bad, good]), timeout=10))
    by_id = {r.infer_response.id: r for r in responses}
    assert sorted(by_id) == ["ok", "short"]
    assert by_id["short"].error_message == "input 'INPUT0': 4 bytes of data, expected 8 for FP32 [1, 2]"
    assert by_id["ok"].error_message == "" and by_id["ok"].infer_response.raw_output_contents[0] == b"\0\0\x80@"
