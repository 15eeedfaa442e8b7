"""The HTTP adapter against unmodified tritonclient.http (sync + asyncio) and raw requests.

Until the real server exists the app serves ``FakePlane``: a small DataPlane with an ``add_sub``
model (OUTPUT0 = a + b, OUTPUT1 = a - b), an ``identity`` model (FP16/BF16/INT64/BOOL/BYTES echo)
and a ``boom`` model whose engine raises. ``start_server`` runs any aiohttp app on 127.0.0.1 in a
background thread with its own event loop; it does not care which plane the app serves.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from aiohttp import web
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from slipway.errors import ServeError
from slipway.serve.http import make_app
from slipway.serve.limits import Limits
from slipway.serve.request import check_parameters
from slipway.serve.stats import ModelStats
from slipway.serve.types import InferRequest, InferResponse, InferTensor

# ---------------------------------------------------------------------------------------------
# a fake data plane with the DataPlane interface

IDENTITY = ["FP16", "BF16", "INT64", "BOOL", "BYTES"]
MODELS: dict[str, dict[str, list[tuple[str, str, list[int]]]]] = {
    "add_sub": {
        "inputs": [("INPUT0", "FP32", [-1, 16]), ("INPUT1", "FP32", [-1, 16])],
        "outputs": [("OUTPUT0", "FP32", [-1, 16]), ("OUTPUT1", "FP32", [-1, 16])],
    },
    "identity": {
        "inputs": [(f"IN_{t}", t, [-1]) for t in IDENTITY],
        "outputs": [(f"OUT_{t}", t, [-1]) for t in IDENTITY],
    },
    "boom": {"inputs": [("X", "FP32", [-1])], "outputs": [("Y", "FP32", [-1])]},
}


class FakePlane:
    def __init__(self) -> None:
        self.is_ready = True
        self.loaded = dict.fromkeys(MODELS, True)
        self.stats = {name: ModelStats(name, "1") for name in MODELS}
        self.last: InferRequest | None = None
        self.load_parameters: dict | None = None

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.is_ready

    def metadata(self) -> dict:
        return {"name": "slipway", "version": "0-test",
                "extensions": ["binary_tensor_data", "model_repository", "statistics", "model_configuration"]}

    def _check(self, name: str, version: str = "") -> dict:
        if name not in MODELS or not self.loaded[name]:
            raise ServeError(f"unknown model {name!r}", 404)
        if version not in ("", "1"):
            raise ServeError(f"model {name!r} has no version {version!r}", 404)
        return MODELS[name]

    def model_ready(self, name: str, version: str = "") -> bool:
        return name in MODELS and self.loaded[name] and version in ("", "1")

    def model_metadata(self, name: str, version: str = "") -> dict:
        m = self._check(name, version)
        tensors = {k: [{"name": n, "datatype": t, "shape": s} for n, t, s in m[k]] for k in ("inputs", "outputs")}
        return {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx", **tensors}

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        m = self._check(name, version)

        def dt(t: str) -> int:
            return mc.DataType.Value("TYPE_STRING" if t == "BYTES" else f"TYPE_{t}")

        return mc.ModelConfig(
            name=name, platform="onnxruntime_onnx", max_batch_size=8,
            input=[mc.ModelInput(name=n, data_type=dt(t), dims=s[1:]) for n, t, s in m["inputs"]],
            output=[mc.ModelOutput(name=n, data_type=dt(t), dims=s[1:]) for n, t, s in m["outputs"]],
            dynamic_batching=mc.ModelDynamicBatching(
                max_queue_delay_microseconds=100, preferred_batch_size=[4], priority_levels=2,
                priority_queue_policy={1: mc.ModelQueuePolicy(default_timeout_microseconds=5000)}),
        )

    def model_statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        names = [name] if name else sorted(MODELS)
        for n in names:
            self._check(n, version)
        return pb.ModelStatisticsResponse(model_stats=[self.stats[n].to_proto() for n in names])

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        rows = [{"name": n, "version": "1", "state": "READY" if ok else "UNAVAILABLE", "reason": ""}
                for n, ok in sorted(self.loaded.items())]
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    async def load_model(self, name: str, parameters: dict | None = None) -> None:
        if name not in MODELS:
            raise ServeError(f"no model {name!r} in the repository", 404)
        self.loaded[name] = True
        self.load_parameters = parameters

    async def unload_model(self, name: str, parameters: dict | None = None) -> None:
        self._check(name)
        self.loaded[name] = False

    async def infer(self, request: InferRequest) -> InferResponse:
        check_parameters(request)  # the data plane's model-independent request check, as DataPlane does
        self.last = request
        start = time.perf_counter_ns()
        m = self._check(request.model, request.version)
        declared = {n: t for n, t, _ in m["inputs"]}
        feeds = {}
        for t in request.inputs:
            if declared.get(t.name) != t.datatype:
                raise ServeError(f"input {t.name!r}: expected one of {declared}, got {t.datatype}", 400)
            feeds[t.name] = t.data
        outputs = self._run(request.model, feeds)
        wanted = [o.name for o in request.outputs] or list(outputs)
        rows = next(iter(feeds.values())).shape[0] if feeds else 1
        self.stats[request.model].execution_done(rows, 1, 2, 3)
        self.stats[request.model].request_done(True, time.perf_counter_ns() - start, rows=rows)
        return InferResponse(request.model, "1", request.id, [
            InferTensor(n, "BYTES" if outputs[n].dtype == object else _datatype(outputs[n]), list(outputs[n].shape),
                        outputs[n]) for n in wanted
        ])

    @staticmethod
    def _run(model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model == "add_sub":
            a, b = feeds["INPUT0"], feeds["INPUT1"]
            return {"OUTPUT0": a + b, "OUTPUT1": a - b}
        if model == "identity":
            return {"OUT_" + k[3:]: v.copy() for k, v in feeds.items()}
        raise RuntimeError("engine exploded\nsecond line of the traceback")


def _datatype(a: np.ndarray) -> str:
    from slipway.serve.tensors import datatype_of

    return datatype_of(a.dtype)


# ---------------------------------------------------------------------------------------------
# running an app in a background thread (reusable with any plane)


@dataclass
class RunningServer:
    url: str  # host:port, as tritonclient wants it
    port: int
    loop: asyncio.AbstractEventLoop
    runner: web.AppRunner
    thread: threading.Thread

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(factory: Callable[[], web.Application],
                 new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> RunningServer:
    """Serve the app that ``factory`` builds (inside the server's loop) on 127.0.0.1, a free port."""
    loop = new_loop()
    started: dict[str, Any] = {}
    done = threading.Event()

    async def setup() -> None:
        runner = web.AppRunner(factory(), handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        started["runner"] = runner
        started["port"] = runner.addresses[0][1]

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(setup())
        except BaseException as e:  # reported to the caller below
            started["error"] = e
            done.set()
            return
        done.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=main, name="http-test-server", daemon=True)
    thread.start()
    done.wait(30)
    if "error" in started:
        raise started["error"]
    port = started["port"]
    return RunningServer(f"127.0.0.1:{port}", port, loop, started["runner"], thread)


@contextmanager
def serving(plane: Any, **kwargs: Any) -> Iterator[RunningServer]:
    server = start_server(lambda: make_app(plane, **kwargs))
    try:
        yield server
    finally:
        server.stop()


LIMIT = 1 << 20


@pytest.fixture(scope="module")
def plane() -> FakePlane:
    return FakePlane()


@pytest.fixture(scope="module")
def server(plane: FakePlane) -> Iterator[RunningServer]:
    with serving(plane, limits=Limits(body_bytes=LIMIT)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


def raw(server: RunningServer, method: str, path: str, body: bytes = b"",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def add_sub_inputs(rows: int = 1, binary: bool = True) -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, 16), dtype=np.float32)
    b = rng.standard_normal((rows, 16), dtype=np.float32)
    inputs = []
    for name, x in (("INPUT0", a), ("INPUT1", b)):
        i = httpclient.InferInput(name, list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        inputs.append(i)
    return inputs, a, b


# ---------------------------------------------------------------------------------------------
# metadata routes through tritonclient


def test_health_and_metadata(client: httpclient.InferenceServerClient, plane: FakePlane) -> None:
    assert client.is_server_live() and client.is_server_ready()
    plane.is_ready = False
    try:
        assert not client.is_server_ready()
    finally:
        plane.is_ready = True
    meta = client.get_server_metadata()
    assert meta["name"] == "slipway" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("add_sub") and client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("add_sub", "7")
    md = client.get_model_metadata("add_sub")
    assert md["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}
    assert client.get_model_metadata("add_sub", "1")["versions"] == ["1"]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "404"


def test_model_config_is_triton_json(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("add_sub")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [16] and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100  # uint64: a number, not "100"
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    assert config["dynamic_batching"]["priority_queue_policy"]["1"]["default_timeout_microseconds"] == 5000
    assert config["backend"] == ""  # defaults are printed, as Triton does
    assert client.get_model_config("add_sub", "1")["name"] == "add_sub"


def test_statistics_are_numbers(client: httpclient.InferenceServerClient) -> None:
    inputs, _, _ = add_sub_inputs(3)
    client.infer("add_sub", inputs)
    stats = client.get_inference_statistics("add_sub")["model_stats"]
    assert [s["name"] for s in stats] == ["add_sub"]
    s = stats[0]
    assert isinstance(s["inference_count"], int) and s["inference_count"] >= 3
    assert isinstance(s["inference_stats"]["success"]["count"], int) and s["inference_stats"]["success"]["count"] >= 1
    assert s["batch_stats"][0]["batch_size"] == 3 and s["batch_stats"][0]["compute_infer"]["ns"] >= 2
    assert isinstance(s["last_inference"], int)
    everything = client.get_inference_statistics()["model_stats"]
    assert sorted(x["name"] for x in everything) == sorted(MODELS)
    assert client.get_inference_statistics("add_sub", "1")["model_stats"][0]["version"] == "1"


def test_repository_load_unload(server: RunningServer, client: httpclient.InferenceServerClient,
                                plane: FakePlane) -> None:
    index = client.get_model_repository_index()
    assert {r["name"] for r in index} == set(MODELS) and all(r["state"] == "READY" for r in index)
    client.unload_model("identity")
    try:
        assert not client.is_model_ready("identity")
        status, _, body = raw(server, "POST", "/v2/repository/index", json.dumps({"ready": True}).encode())
        assert status == 200 and "identity" not in {r["name"] for r in json.loads(body)}
        config = json.dumps({"max_batch_size": 4})
        client.load_model("identity", config=config)
        assert client.is_model_ready("identity")
        assert plane.load_parameters == {"config": config}
    finally:
        plane.loaded["identity"] = True
    with pytest.raises(InferenceServerException, match="no model 'ghost'"):
        client.load_model("ghost")
    status, _, body = raw(server, "POST", "/v2/repository/models/add_sub/load", b'{"parameters": {"config": 3}}')
    assert status == 400 and b"'config' must be a string" in body


# ---------------------------------------------------------------------------------------------
# infer through tritonclient


def test_infer_binary_default(client: httpclient.InferenceServerClient, plane: FakePlane) -> None:
    inputs, a, b = add_sub_inputs(4)
    result = client.infer("add_sub", inputs, request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == "add_sub" and response["model_version"] == "1"
    assert response["outputs"][0]["parameters"] == {"binary_data_size": 4 * 16 * 4}
    assert plane.last is not None and plane.last.parameters == {"binary_data_output": True}


def test_infer_json_both_ways(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = add_sub_inputs(2, binary=False)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=False),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=True)]
    result = client.infer("add_sub", inputs, outputs=outputs)
    out0 = result.get_output("OUTPUT0")
    assert "data" in out0 and "parameters" not in out0
    assert result.get_output("OUTPUT1")["parameters"]["binary_data_size"] == 2 * 16 * 4
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_output_parameter_wins_and_all_json(server: RunningServer) -> None:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    req = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": a.ravel().tolist()}
                      for n in ("INPUT0", "INPUT1")],
           "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
           "parameters": {"binary_data_output": True}}
    status, headers, body = raw(server, "POST", "/v2/models/add_sub/infer", json.dumps(req).encode(),
                                {"Content-Type": "application/json"})
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert "inference-header-content-length" not in headers
    out = json.loads(body)["outputs"]
    assert [o["name"] for o in out] == ["OUTPUT0"] and out[0]["data"] == (2 * a).ravel().tolist()


def test_requested_output_subset(client: httpclient.InferenceServerClient, plane: FakePlane) -> None:
    inputs, a, b = add_sub_inputs(1)
    result = client.infer("add_sub", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert plane.last is not None and [o.name for o in plane.last.outputs] == ["OUTPUT1"]
    assert plane.last.outputs[0].parameters == {"binary_data": True}


def _identity_inputs(binary: bool) -> tuple[list[httpclient.InferInput], dict[str, np.ndarray]]:
    arrays = {
        "FP16": np.array([1.5, -2.25, 65504.0], dtype=np.float16),
        "BF16": np.array([1.0, -3.5, 0.0078125], dtype=ml_dtypes.bfloat16),
        "INT64": np.array([2**62, -5, 0], dtype=np.int64),
        "BOOL": np.array([True, False, True]),
        "BYTES": np.array([b"hello", "wörld".encode(), b""], dtype=object),
    }
    inputs = []
    for t, x in arrays.items():
        i = httpclient.InferInput(f"IN_{t}", [3], t)
        i.set_data_from_numpy(x, binary_data=binary or t == "BF16")  # tritonclient sends BF16 binary only
        inputs.append(i)
    return inputs, arrays


@pytest.mark.parametrize("binary", [True, False])
def test_infer_datatypes(client: httpclient.InferenceServerClient, binary: bool) -> None:
    inputs, arrays = _identity_inputs(binary)
    outputs = [httpclient.InferRequestedOutput(f"OUT_{t}", binary_data=binary) for t in arrays]
    result = client.infer("identity", inputs, outputs=outputs)
    for t, x in arrays.items():
        got = result.as_numpy(f"OUT_{t}")
        assert result.get_output(f"OUT_{t}")["datatype"] == t
        if t == "BYTES":
            assert [bytes(v) if binary else v.encode() for v in got] == list(x)
        else:
            assert got.dtype == x.dtype, t
            np.testing.assert_array_equal(got, x)


def test_compression(server: RunningServer, client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = add_sub_inputs(16)
    for request_alg in ("gzip", "deflate"):
        for response_alg in ("gzip", "deflate"):
            result = client.infer("add_sub", inputs, request_compression_algorithm=request_alg,
                                  response_compression_algorithm=response_alg)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    body, length = httpclient.InferenceServerClient.generate_request_body(inputs)
    status, headers, payload = raw(server, "POST", "/v2/models/add_sub/infer", gzip.compress(body), {
        "Content-Encoding": "gzip", "Accept-Encoding": "br;q=1, deflate;q=0.5, gzip;q=0.9",
        "Inference-Header-Content-Length": str(length)})
    assert status == 200 and headers["content-encoding"] == "gzip"
    header_length = int(headers["inference-header-content-length"])
    result = httpclient.InferenceServerClient.parse_response_body(gzip.decompress(payload), header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    # tiny responses are not worth compressing; tritonclient copes with either
    small, _, _ = add_sub_inputs(1)
    body, length = httpclient.InferenceServerClient.generate_request_body(small)
    _, headers, _ = raw(server, "POST", "/v2/models/add_sub/infer", body, {
        "Accept-Encoding": "gzip", "Inference-Header-Content-Length": str(length)})
    assert "content-encoding" not in headers


def test_parameters_reach_the_plane(client: httpclient.InferenceServerClient, plane: FakePlane) -> None:
    inputs, _, _ = add_sub_inputs(1)
    client.infer("add_sub", inputs, priority=2, timeout=1500, parameters={"tag": "abc", "level": 3})
    assert plane.last is not None
    assert plane.last.parameters["priority"] == 2 and plane.last.parameters["timeout"] == 1500
    assert plane.last.parameters["tag"] == "abc" and plane.last.parameters["level"] == 3


def test_request_id_header(server: RunningServer, plane: FakePlane) -> None:
    body, length = httpclient.InferenceServerClient.generate_request_body(add_sub_inputs(1)[0])
    status, _, _ = raw(server, "POST", "/v2/models/add_sub/versions/1/infer", body,
                       {"Inference-Header-Content-Length": str(length), "X-Request-ID": "hdr-7"})
    assert status == 200 and plane.last is not None and plane.last.id == "hdr-7" and plane.last.version == "1"


def test_async_client(server: RunningServer, plane: FakePlane) -> None:
    async def main() -> None:
        async with aioclient.InferenceServerClient(server.url) as c:
            assert await c.is_server_live() and await c.is_server_ready()
            assert (await c.get_server_metadata())["name"] == "slipway"
            assert await c.is_model_ready("add_sub")
            assert (await c.get_model_metadata("add_sub"))["outputs"][1]["name"] == "OUTPUT1"
            assert (await c.get_model_config("add_sub"))["max_batch_size"] == 8
            assert (await c.get_inference_statistics("add_sub"))["model_stats"][0]["name"] == "add_sub"
            assert len(await c.get_model_repository_index()) == len(MODELS)
            await c.unload_model("add_sub")
            assert not await c.is_model_ready("add_sub")
            await c.load_model("add_sub")
            # the aio client sends Accept-Encoding: gzip, deflate; a 16-row answer comes back compressed
            for rows, binary in ((1, True), (16, True), (2, False)):
                inputs, a, b = add_sub_inputs(rows, binary)
                outputs = None if binary else [aioclient.InferRequestedOutput("OUTPUT0", binary_data=False)]
                result = await c.infer("add_sub", inputs, outputs=outputs, priority=1)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            results = await asyncio.gather(*(c.infer("add_sub", add_sub_inputs(3)[0]) for _ in range(8)))
            assert all(r.as_numpy("OUTPUT1").shape == (3, 16) for r in results)
            with pytest.raises(InferenceServerException, match="unknown model"):
                await c.infer("nope", inputs)

    try:
        asyncio.run(main())
    finally:
        plane.loaded["add_sub"] = True


# ---------------------------------------------------------------------------------------------
# bad requests: 4xx JSON errors, and the server keeps answering


def _binary_request(sizes: tuple[int, int] = (64, 64), data: bytes = b"\0" * 128, extra: dict | None = None) -> bytes:
    header = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": s}}
                         for n, s in zip(("INPUT0", "INPUT1"), sizes, strict=True)], **(extra or {})}
    return json.dumps(header).encode(), data


def _case(sizes=(64, 64), data=b"\0" * 128, extra=None, length_delta=0) -> tuple[bytes, dict[str, str]]:
    head, data = _binary_request(sizes, data, extra)
    return head + data, {"Inference-Header-Content-Length": str(len(head) + length_delta)}


BAD = {
    "truncated binary": (*_case(data=b"\0" * 100), 400, "runs past the end of the request body"),
    "bytes left over": (*_case(data=b"\0" * 130), 400, "2 bytes after the JSON header that no input claims"),
    "header length past body": (*_case(length_delta=500), 400, "Inference-Header-Content-Length is"),
    "header length not a number": (b"{}", {"Inference-Header-Content-Length": "ten"}, 400, "must be an integer"),
    "negative binary size": (*_case(sizes=(-1, 64)), 400, "binary_data_size must be a non-negative integer"),
    "wrong payload size": (*_case(sizes=(60, 68)), 400, "60 bytes of data, expected 64"),
    "malformed JSON": (b'{"inputs": [', {}, 400, "malformed JSON"),
    "not an object": (b"[1, 2]", {}, 400, "must be a JSON object"),
    "inputs not a list": (b'{"inputs": {"name": "INPUT0"}}', {}, 400, "'inputs' must be a list"),
    "shape not ints": (b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": ["1"], "data": [1]}]}', {},
                       400, "shape must be a list of integers"),
    "unknown datatype": (b'{"inputs": [{"name": "INPUT0", "datatype": "FLOAT32", "shape": [1], "data": [1]}]}', {},
                         400, "unknown datatype 'FLOAT32'"),
    "no data": (b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1]}]}', {}, 400,
                "has neither 'data' nor binary_data_size"),
    "json data count": (b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1]}]}', {}, 400,
                        "1 elements, expected 2"),
    "classification": (*_case(extra={"outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}]}), 400,
                       "classification extension is not supported"),
    "bad priority": (*_case(extra={"parameters": {"priority": "high"}}), 400, "'priority' must be a non-negative"),
    "shared memory": (*_case(extra={"outputs": [{"name": "OUTPUT0", "parameters": {"shared_memory_region": "r"}}]}),
                      400, "shared memory extension is not supported"),
    "bad id": (*_case(extra={"id": 5}), 400, "'id' must be a string"),
    "bad gzip": (b"definitely not gzip", {"Content-Encoding": "gzip"}, 400, "could not read the request body"),
    "too large": (b"\0" * (LIMIT + 1), {}, 413, f"request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes"),
    "too large decompressed": (gzip.compress(b" " * (2 * LIMIT)), {"Content-Encoding": "gzip"}, 413,
                               f"exceeds the limit of {LIMIT} bytes"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_infer_requests(server: RunningServer, client: httpclient.InferenceServerClient, name: str) -> None:
    body, headers, want_status, want_message = BAD[name]
    status, got_headers, payload = raw(server, "POST", "/v2/models/add_sub/infer", body, headers)
    assert status == want_status, payload
    assert got_headers["content-type"].startswith("application/json")
    assert want_message in json.loads(payload)["error"]
    assert client.is_server_live()
    inputs, a, b = add_sub_inputs(1)
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a + b)


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v2/models/nope/infer", b'{"inputs": []}', 404, "unknown model 'nope'"),
    ("POST", "/v2/models/add_sub/versions/9/infer", b'{"inputs": []}', 404, "has no version '9'"),
    ("GET", "/v2/no/such/path", b"", 404, "unknown path /v2/no/such/path"),
    ("GET", "/v2/models/add_sub/infer", b"", 405, "method GET is not allowed"),
    ("POST", "/v2/repository/index", b'{"ready": "yes"}', 400, "'ready' must be true or false"),
    ("POST", "/v2/repository/index", b"{nope", 400, "malformed JSON"),
    ("GET", "/metrics", b"", 404, "unknown path /metrics"),
])
def test_error_routes(server: RunningServer, method: str, path: str, body: bytes, status: int, message: str) -> None:
    got, headers, payload = raw(server, method, path, body)
    assert got == status and headers["content-type"].startswith("application/json")
    assert message in json.loads(payload)["error"]


def test_internal_error_is_500_and_logged(server: RunningServer, client: httpclient.InferenceServerClient,
                                          caplog: pytest.LogCaptureFixture) -> None:
    x = httpclient.InferInput("X", [2], "FP32")
    x.set_data_from_numpy(np.ones(2, np.float32))
    with caplog.at_level(logging.INFO, logger="slipway.serve"):
        with pytest.raises(InferenceServerException) as e:
            client.infer("boom", [x])
        assert e.value.status() == "500"
        assert e.value.message() == "internal error: RuntimeError: engine exploded"
        status, _, _ = raw(server, "POST", "/v2/models/add_sub/infer", b"{oops", {"X-Request-ID": "bad-1"})
        assert status == 400
    records = [r for r in caplog.records if r.name == "slipway.serve"]
    assert any(r.exc_info and "engine exploded" in str(r.exc_info[1]) for r in records)
    assert any("status=400" in r.getMessage() and "'bad-1'" in r.getMessage() for r in records)
    assert client.is_server_ready()


# ---------------------------------------------------------------------------------------------
# auth and metrics


def test_bearer_token_and_metrics() -> None:
    plane = FakePlane()
    metrics = (b"# HELP nv_inference_count x\nnv_inference_count 1\n", "text/plain; version=0.0.4; charset=utf-8")
    with serving(plane, token="s3cret", metrics=lambda: metrics) as server:
        for path in ("/v2", "/v2/models/add_sub", "/v2/nothing/here"):
            status, headers, payload = raw(server, "GET", path)
            assert status == 401 and json.loads(payload) == {"error": "missing or wrong bearer token"}
            assert headers["www-authenticate"] == "Bearer"
        status, _, _ = raw(server, "GET", "/v2", headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, headers, payload = raw(server, "GET", "/metrics")
        assert status == 200 and payload == metrics[0] and headers["content-type"] == metrics[1]
        c = httpclient.InferenceServerClient(server.url)
        try:
            assert c.is_server_live() and c.is_server_ready()
            with pytest.raises(InferenceServerException, match="bearer token"):
                c.get_server_metadata()
            auth = {"Authorization": "Bearer s3cret"}
            assert c.get_server_metadata(headers=auth)["name"] == "slipway"
            inputs, a, b = add_sub_inputs(2)
            np.testing.assert_array_equal(c.infer("add_sub", inputs, headers=auth).as_numpy("OUTPUT1"), a - b)
        finally:
            c.close()


def test_deflate_request_body(server: RunningServer) -> None:
    body, length = httpclient.InferenceServerClient.generate_request_body(add_sub_inputs(1)[0])
    status, _, payload = raw(server, "POST", "/v2/models/add_sub/infer", zlib.compress(body),
                             {"Content-Encoding": "deflate", "Inference-Header-Content-Length": str(length)})
    assert status == 200, payload


def test_large_and_chunked_bodies(server: RunningServer, client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = add_sub_inputs(7000)  # ~900 KB: arrives in many socket reads, under the 1 MiB limit
    result = client.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    body, length = httpclient.InferenceServerClient.generate_request_body(add_sub_inputs(3)[0])
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:  # no Content-Length: Transfer-Encoding chunked
        conn.request("POST", "/v2/models/add_sub/infer", body=iter([body[:50], body[50:]]), encode_chunked=True,
                     headers={"Inference-Header-Content-Length": str(length)})
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Inference-Header-Content-Length") is not None
        r.read()
    finally:
        conn.close()
