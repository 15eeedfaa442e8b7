"""tritonclient, unmodified and with default arguments, against the real server (not a fake plane):
HTTP and gRPC, sync and asyncio, binary and JSON, FP32/FP16/BYTES; bad requests get 4xx and the
server keeps serving."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from tests.serve.conftest import B, W

LIBS = {"http": httpclient, "grpc": grpcclient}


def _client(kind: str, http_url: str, grpc_url: str):
    return httpclient.InferenceServerClient(http_url) if kind == "http" else grpcclient.InferenceServerClient(grpc_url)


def _input(lib, name: str, x: np.ndarray, datatype: str, binary: bool = True):
    inp = lib.InferInput(name, list(x.shape), datatype)
    if lib is httpclient:
        inp.set_data_from_numpy(x, binary_data=binary)
    else:
        inp.set_data_from_numpy(x)
    return inp


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_health_metadata_config_stats_index(kind, http_url, grpc_url) -> None:
    c = _client(kind, http_url, grpc_url)
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata() if kind == "http" else c.get_server_metadata(as_json=True)
    for ext in ("binary_tensor_data", "statistics", "model_repository", "schedule_policy"):
        assert ext in meta["extensions"]
    assert c.is_model_ready("add_sub") and c.is_model_ready("add_sub", "1") and not c.is_model_ready("nope")
    cfg = c.get_model_config("add_sub") if kind == "http" else c.get_model_config("add_sub", as_json=True)["config"]
    assert int(cfg["max_batch_size"]) == 8 and [i["name"] for i in cfg["input"]] == ["INPUT0", "INPUT1"]
    stats = c.get_inference_statistics() if kind == "http" else c.get_inference_statistics(as_json=True)
    assert {s["name"] for s in stats["model_stats"]} >= {"add_sub", "gemm", "strings", "half"}
    index = c.get_model_repository_index()
    names = {r["name"] for r in (index if kind == "http" else index.models)} if kind == "http" else {
        m.name for m in index.models}
    assert names == {"add_sub", "gemm", "strings", "half"}


@pytest.mark.parametrize("kind", ["http", "grpc"])
@pytest.mark.parametrize("binary", [True, False])
def test_add_sub_binary_and_json(kind, binary, http_url, grpc_url) -> None:
    if kind == "grpc" and not binary:
        pytest.skip("gRPC has no JSON form")
    lib = LIBS[kind]
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), np.float32)
    outputs = [lib.InferRequestedOutput("OUTPUT0", binary_data=binary) if kind == "http"
               else lib.InferRequestedOutput("OUTPUT0")]
    r = _client(kind, http_url, grpc_url).infer(
        "add_sub", [_input(lib, "INPUT0", a, "FP32", binary), _input(lib, "INPUT1", b, "FP32", binary)],
        outputs=outputs, request_id="req-7")
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    assert r.as_numpy("OUTPUT1") is None  # only the requested output comes back
    assert r.get_response()["id"] == "req-7" if kind == "http" else r.get_response().id == "req-7"


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_fp16_and_bytes(kind, http_url, grpc_url) -> None:
    lib = LIBS[kind]
    c = _client(kind, http_url, grpc_url)
    x = np.array([[1.5, -2.0, 0.25, 3.0]], np.float16)
    y = c.infer("half", [_input(lib, "x", x, "FP16")]).as_numpy("y")
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x * 2)
    text = np.array([b"hello", "w\u00f6rld".encode(), b""], dtype=object)
    got = c.infer("strings", [_input(lib, "text", text, "BYTES")]).as_numpy("same")
    assert list(got) == list(text)


def test_asyncio_clients(http_url, grpc_url) -> None:
    async def main() -> None:
        x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
        for lib, url in ((httpaio, http_url), (grpcaio, grpc_url)):
            async with lib.InferenceServerClient(url) as c:
                assert await c.is_server_ready()
                inp = lib.InferInput("x", [3, 16], "FP32")
                inp.set_data_from_numpy(x)
                results = await asyncio.gather(*(c.infer("gemm", [inp]) for _ in range(8)))
                for r in results:
                    np.testing.assert_allclose(r.as_numpy("y"), x @ W + B, rtol=1e-5, atol=1e-5)

    asyncio.run(main())


def test_grpc_stream(grpc_url) -> None:
    import queue

    c = grpcclient.InferenceServerClient(grpc_url)
    answers: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    x = np.ones((1, 16), np.float32)
    for i in range(5):
        c.async_stream_infer("gemm", [_input(grpcclient, "x", x * i, "FP32")], request_id=str(i))
    c.async_stream_infer("gemm", [_input(grpcclient, "x", np.ones((1, 15), np.float32), "FP32")], request_id="bad")
    got = [answers.get(timeout=20) for _ in range(6)]
    c.stop_stream()
    ok = {r.get_response().id: r.as_numpy("y") for r, e in got if e is None}
    assert sorted(ok) == ["0", "1", "2", "3", "4"]
    np.testing.assert_allclose(ok["3"], (x * 3) @ W + B, rtol=1e-5, atol=1e-5)
    assert sum(e is not None for _, e in got) == 1


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_bad_requests_are_4xx_and_the_server_keeps_serving(kind, http_url, grpc_url) -> None:
    lib = LIBS[kind]
    c = _client(kind, http_url, grpc_url)
    x = np.ones((1, 16), np.float32)
    cases = [
        ("gemm", [_input(lib, "x", x.astype(np.float64), "FP64")], "datatype FP64"),
        ("gemm", [_input(lib, "x", np.ones((1, 15), np.float32), "FP32")], "shape [1, 15]"),
        ("gemm", [_input(lib, "x", np.ones((33, 16), np.float32), "FP32")], "batch size 33"),
        ("gemm", [_input(lib, "z", x, "FP32")], "no input 'z'"),
        ("nope", [_input(lib, "x", x, "FP32")], "unknown model"),
    ]
    for model, inputs, words in cases:
        with pytest.raises(InferenceServerException) as e:
            c.infer(model, inputs)
        assert words in e.value.message(), e.value.message()
        status = str(e.value.status())
        assert status in ("400", "404", "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), status
    np.testing.assert_allclose(c.infer("gemm", [_input(lib, "x", x, "FP32")]).as_numpy("y"), x @ W + B,
                               rtol=1e-5, atol=1e-5)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_raw_http_bad_bodies(http_url) -> None:
    url = f"http://{http_url}/v2/models/gemm/infer"
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64}}]}).encode()
    truncated = header + b"\0" * 60
    code, body = _post(url, truncated, {"Inference-Header-Content-Length": str(len(header))})
    assert code == 400 and "64" in body["error"]
    code, body = _post(url, b"{not json", {"Content-Type": "application/json"})
    assert code == 400 and "error" in body
    code, body = _post(url, b"x" * (65 << 20), {"Content-Type": "application/json"})
    assert code == 413
    ok = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}).encode()
    code, body = _post(url, ok, {"Content-Type": "application/json"})
    assert code == 200
    np.testing.assert_allclose(body["outputs"][0]["data"], (np.ones((1, 16)) @ W + B).ravel(), rtol=1e-5)
