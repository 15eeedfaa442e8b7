"""The ASGI adapter (slipway/serve/asgi.py): the REST API of the aiohttp adapter as a plain ASGI 3 app.

A real DataPlane over a small repository (conftest's models plus test_parity's ``prio``) is served by
uvicorn (lifespan on: the plane starts on uvicorn's loop through ``plane_hooks``) and by the aiohttp
Server beside it; tritonclient and raw HTTP drive both, and the same requests must get the same
statuses and the same JSON. The body reader, the lifespan protocol and the other scope types are
also driven directly with hand-made ASGI messages (no sockets).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import uvicorn

import slipway.serve.metrics as metrics
import slipway.serve.rest as rest
from slipway.serve import Server, free_port
from slipway.serve.asgi import make_asgi_app, plane_hooks
from slipway.serve.dataplane import DataPlane
from slipway.serve.limits import Limits
from slipway.serve.repository import Repository
from tests.serve.conftest import _save, build_repository, gemm_model
from tests.serve.test_http import FakePlane, add_sub_inputs, raw, serving
from tests.serve.test_parity import CASES, CONFIG, http_infer

LIMIT = 1 << 20
LIMITS = Limits(body_bytes=LIMIT)
METRICS = (b"# HELP nv_inference_count x\nnv_inference_count 1\n", "text/plain; version=0.0.4; charset=utf-8")


class AsgiServer:
    """uvicorn serving an ASGI app on 127.0.0.1 in a thread with its own loop (lifespan on)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="asgi-test-server", daemon=True)

    def __enter__(self) -> AsgiServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def request(url: str, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """test_http's raw request, to host:port."""
    return raw(SimpleNamespace(port=int(url.rpartition(":")[2])), method, path, body, headers)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Any:
    root = build_repository(tmp_path_factory.mktemp("asgi"))
    _save(gemm_model(), root / "prio" / "1" / "model.onnx")
    (root / "prio" / "config.pbtxt").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def urls(repository) -> Iterator[tuple[str, str]]:
    """(aiohttp Server, uvicorn + ASGI app): two data planes over one repository, the same limits."""
    plane = DataPlane(Repository(repository), threads=1)
    startup, shutdown = plane_hooks(plane)
    registry = metrics.registry(plane)
    app = make_asgi_app(plane, limits=LIMITS, metrics=lambda: metrics.render(registry), on_startup=startup,
                        on_shutdown=shutdown)
    server = Server(repository, http_port=0, grpc_port=None, metrics_port=None, threads=1, limits=LIMITS)
    with server, AsgiServer(app) as asgi:
        yield f"127.0.0.1:{server.http_port}", asgi.url
    assert plane.stopping  # the lifespan shutdown reached the plane


# ---------------------------------------------------------------------------------------------
# tritonclient against the ASGI app: the answers of onnxruntime and of the aiohttp server


def test_infer_binary_and_json_match_onnxruntime_and_aiohttp(urls, repository) -> None:
    aio_url, asgi_url = urls
    x = np.random.default_rng(3).standard_normal((3, 16), dtype=np.float32)
    want = ort.InferenceSession(str(repository / "gemm" / "1" / "model.onnx")).run(None, {"x": x})[0]
    answers = []
    for url in (asgi_url, aio_url):
        c = httpclient.InferenceServerClient(url)
        try:
            for binary_in in (True, False):
                for binary_out in (True, False):
                    i = httpclient.InferInput("x", [3, 16], "FP32")
                    i.set_data_from_numpy(x, binary_data=binary_in)
                    out = httpclient.InferRequestedOutput("y", binary_data=binary_out)
                    result = c.infer("gemm", [i], outputs=[out], request_id="r-7")
                    assert result.get_response()["id"] == "r-7"
                    assert ("binary_data_size" in result.get_output("y").get("parameters", {})) == binary_out
                    np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-6, atol=1e-6)
                    answers.append(result.as_numpy("y"))
            inputs, a, b = add_sub_inputs(4)
            result = c.infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        finally:
            c.close()
    np.testing.assert_array_equal(answers[0], answers[4])  # the same engine behind both adapters


def test_bytes_and_fp16_models(urls) -> None:
    _, asgi_url = urls
    c = httpclient.InferenceServerClient(asgi_url)
    try:
        for binary in (True, False):
            text = np.array([b"a", "wörld".encode(), b""], dtype=object)
            i = httpclient.InferInput("text", [3], "BYTES")
            i.set_data_from_numpy(text, binary_data=binary)
            out = httpclient.InferRequestedOutput("same", binary_data=binary)
            got = c.infer("strings", [i], outputs=[out]).as_numpy("same")
            assert [v if binary else v.encode() for v in got] == list(text)
            h = np.array([[1.5, -2.0, 0.25, 65504 / 4]], np.float16)
            i = httpclient.InferInput("x", [1, 4], "FP16")
            i.set_data_from_numpy(h, binary_data=binary)
            got = c.infer("half", [i], outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
            np.testing.assert_array_equal(got.as_numpy("y"), h * 2)
    finally:
        c.close()


def test_metadata_routes_equal_aiohttp(urls) -> None:
    clients = [httpclient.InferenceServerClient(url) for url in urls]
    try:
        for c in clients:
            assert c.is_server_live() and c.is_server_ready()
            assert c.is_model_ready("gemm") and c.is_model_ready("gemm", "1") and not c.is_model_ready("gemm", "2")
        aio, asgi = clients
        assert asgi.get_server_metadata() == aio.get_server_metadata()
        for name in ("add_sub", "gemm", "prio", "strings"):
            assert asgi.get_model_metadata(name) == aio.get_model_metadata(name)
            assert asgi.get_model_config(name, "1") == aio.get_model_config(name, "1")
        assert asgi.get_model_repository_index() == aio.get_model_repository_index()
        stats = asgi.get_inference_statistics("gemm", "1")["model_stats"][0]
        assert stats["name"] == "gemm" and isinstance(stats["inference_count"], int)
        assert stats.keys() == aio.get_inference_statistics("gemm")["model_stats"][0].keys()
    finally:
        for c in clients:
            c.close()


def test_compressed_bodies_both_ways(urls) -> None:
    _, asgi_url = urls
    c = httpclient.InferenceServerClient(asgi_url)
    try:
        inputs, a, b = add_sub_inputs(8)
        for request_alg in ("gzip", "deflate"):
            for response_alg in ("gzip", "deflate"):
                result = c.infer("add_sub", inputs, request_compression_algorithm=request_alg,
                                 response_compression_algorithm=response_alg)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        c.close()
    body, length = httpclient.InferenceServerClient.generate_request_body(inputs)
    for coding, decompress in (("gzip", gzip.decompress), ("deflate", zlib.decompress)):
        status, headers, payload = request(asgi_url, "POST", "/v2/models/add_sub/infer", zlib.compress(body), {
            "Content-Encoding": "deflate", "Accept-Encoding": f"br;q=1, {coding};q=0.9",
            "Inference-Header-Content-Length": str(length)})
        assert status == 200 and headers["content-encoding"] == coding
        result = httpclient.InferenceServerClient.parse_response_body(
            decompress(payload), header_length=int(headers["inference-header-content-length"]))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    small, length = httpclient.InferenceServerClient.generate_request_body(add_sub_inputs(1)[0])
    status, headers, _ = request(asgi_url, "POST", "/v2/models/add_sub/infer", small,
                                 {"Accept-Encoding": "gzip", "Inference-Header-Content-Length": str(length)})
    assert status == 200 and "content-encoding" not in headers  # under MIN_COMPRESS_BYTES


# ---------------------------------------------------------------------------------------------
# parity: the same requests, the same statuses and JSON from both adapters


@pytest.mark.parametrize("name", list(CASES))
def test_infer_mistakes_answer_as_aiohttp(urls, name) -> None:
    case, status, message = CASES[name]
    aio_url, asgi_url = urls
    assert http_infer(asgi_url, case) == http_infer(aio_url, case) == (status, message)


_HEAD = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                "parameters": {"binary_data_size": 64}}]}).encode()
GOOD_AND_BAD: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("GET", "/v2/health/live", b"", {}),
    ("GET", "/v2/health/ready", b"", {}),
    ("HEAD", "/v2", b"", {}),
    ("GET", "/v2/models/gemm/versions/1/ready", b"", {}),
    ("GET", "/v2/models/nope/ready", b"", {}),
    ("GET", "/v2/models/nope", b"", {}),
    ("GET", "/v2/models/gemm/versions/7", b"", {}),
    ("GET", "/v2/models/a%2Fb/config", b"", {}),
    ("GET", "/v2/models/nope/versions/1/stats", b"", {}),
    ("GET", "/v2/nothing/here", b"", {}),
    ("GET", "/v2/", b"", {}),
    ("POST", "/v2/models/stats", b"", {}),
    ("PUT", "/v2/health/live", b"", {}),
    ("GET", "/v2/models/gemm/infer", b"", {}),
    ("DELETE", "/v2/repository/index", b"", {}),
    ("GET", "/metrics", b"", {}),
    ("POST", "/v2/repository/index", b"", {}),
    ("POST", "/v2/repository/index", b'{"ready": true}', {}),
    ("POST", "/v2/repository/index", b'{"ready": "yes"}', {}),
    ("POST", "/v2/repository/index", b"[1, 2]", {}),
    ("POST", "/v2/repository/index", b"{nope", {}),
    ("POST", "/v2/repository/index", b"[" * 100 + b"]" * 100, {}),
    ("POST", "/v2/repository/models/gemm/load", b"{}", {}),
    ("POST", "/v2/repository/models/gemm/unload", b'{"parameters": 3}', {}),
    ("GET", "/v2/systemsharedmemory/status", b"", {}),
    ("GET", "/v2/systemsharedmemory/region/r/status", b"", {}),
    ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "/nope", "byte_size": 64}', {}),
    ("POST", "/v2/systemsharedmemory/unregister", b"", {}),
    ("GET", "/v2/cudasharedmemory/status", b"", {}),
    ("GET", "/v2/cudasharedmemory/region/r/status", b"", {}),
    ("POST", "/v2/cudasharedmemory/region/r/register", b"{}", {}),
    ("POST", "/v2/models/prio/infer", _HEAD + b"\0" * 64, {"Inference-Header-Content-Length": str(len(_HEAD))}),
    ("POST", "/v2/models/prio/infer", _HEAD + b"\0" * 60, {"Inference-Header-Content-Length": str(len(_HEAD))}),
    ("POST", "/v2/models/prio/infer", _HEAD, {"Inference-Header-Content-Length": "ten"}),
    ("POST", "/v2/models/prio/infer", b'{"inputs": [', {}),
    ("POST", "/v2/models/prio/infer", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], '
     b'"data": [1]}]}', {}),
    ("POST", "/v2/models/prio/infer", b"not gzip", {"Content-Encoding": "gzip"}),
    ("POST", "/v2/models/prio/infer", gzip.compress(b"{}")[:-4], {"Content-Encoding": "gzip"}),
    ("POST", "/v2/models/prio/infer", b"{}", {"Content-Encoding": "br"}),
    ("POST", "/v2/models/prio/infer", b" " * (LIMIT + 1), {}),
    ("POST", "/v2/models/prio/infer", gzip.compress(b" " * (2 * LIMIT)), {"Content-Encoding": "gzip"}),
    ("GET", "/v2/openapi.json", b"", {}),
]


@pytest.mark.parametrize("method, path, body, headers", GOOD_AND_BAD,
                         ids=[f"{m} {p} {len(b)}" for m, p, b, _ in GOOD_AND_BAD])
def test_requests_answer_as_aiohttp(urls, method, path, body, headers) -> None:
    aio_url, asgi_url = urls
    got = [request(url, method, path, body, headers) for url in (aio_url, asgi_url)]
    (status, aio_headers, aio_body), (asgi_status, asgi_headers, asgi_body) = got
    assert asgi_status == status
    assert asgi_headers.get("content-type") == aio_headers.get("content-type")
    assert asgi_headers.get("connection") == aio_headers.get("connection")
    if path == "/metrics":  # Prometheus text: the same metric names, counts of each plane's own
        assert b"nv_inference_count{" in asgi_body and b"nv_inference_count{" in aio_body
        return
    if status >= 400:
        assert "error" in json.loads(aio_body)
    assert (json.loads(asgi_body) if asgi_body else None) == (json.loads(aio_body) if aio_body else None)


def test_token_and_metrics_answer_as_aiohttp() -> None:
    kwargs: dict[str, Any] = {"token": "s3cret", "metrics": lambda: METRICS}
    with serving(FakePlane(), **kwargs) as aio, AsgiServer(make_asgi_app(FakePlane(), **kwargs)) as asgi:
        urls = (aio.url, asgi.url)
        for path, headers in (("/v2", {}), ("/v2/nothing/here", {}), ("/v2", {"Authorization": "Bearer wrong"}),
                              ("/v2", {"Authorization": "bearer s3cret"}), ("/v2/health/ready", {}),
                              ("/metrics", {})):
            (s1, h1, b1), (s2, h2, b2) = (request(url, "GET", path, headers=headers) for url in urls)
            assert (s2, h2.get("www-authenticate"), b2) == (s1, h1.get("www-authenticate"), b1)
        assert request(asgi.url, "GET", "/v2")[:2][0] == 401
        assert request(asgi.url, "GET", "/metrics")[2] == METRICS[0]
        c = httpclient.InferenceServerClient(asgi.url)
        try:
            inputs, a, b = add_sub_inputs(2)
            result = c.infer("add_sub", inputs, headers={"Authorization": "Bearer s3cret"})
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        finally:
            c.close()
    with AsgiServer(make_asgi_app(FakePlane(), token="s3cret", limits=Limits(metrics_auth=True),
                                  metrics=lambda: METRICS)) as asgi:
        assert request(asgi.url, "GET", "/metrics")[0] == 401


# ---------------------------------------------------------------------------------------------
# limits, off-loop decoding


def test_large_bodies_are_decoded_off_the_event_loop(monkeypatch) -> None:
    """Past OFFLOAD_BYTES the infer body is decoded in a worker thread (the loop keeps serving)."""
    threads: list[str] = []
    decode = rest.decode_infer

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return decode(*args)

    monkeypatch.setattr(rest, "decode_infer", spy)
    app = make_asgi_app(FakePlane())  # its routes take rest.decode_infer as it is now
    for rows in (1, rest.OFFLOAD_BYTES // 128 + 1):
        inputs, a, b = add_sub_inputs(rows)
        body, length = httpclient.InferenceServerClient.generate_request_body(inputs)
        scope = _http_scope("POST", "/v2/models/add_sub/infer", {"Inference-Header-Content-Length": str(length)})
        sent, _ = asyncio.run(_drive(app, scope, [{"type": "http.request", "body": body}]))
        status, headers, payload = _answer(sent)
        result = httpclient.InferenceServerClient.parse_response_body(
            payload, header_length=int(headers["inference-header-content-length"]))
        assert status == 200 and (len(body) > rest.OFFLOAD_BYTES) == (rows > 1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert threads[0] == threading.current_thread().name != threads[1]


def test_slow_body_is_408_over_a_socket() -> None:
    with AsgiServer(make_asgi_app(FakePlane(), limits=Limits(body_seconds=0.5))) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            t0 = time.monotonic()
            answer = b""
            while chunk := s.recv(65536):  # until the server closes the connection
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer
            assert b"connection: close" in answer.lower() and time.monotonic() - t0 < 4


async def _drive(app: Any, scope: dict[str, Any], messages: list[dict[str, Any]] | Any,
                 timeout: float = 10) -> tuple[list[dict[str, Any]], int]:
    """Run ``app`` on one scope; ``messages`` are what it receives (then it waits forever). Returns
    (what it sent, how many messages it received)."""
    sent: list[dict[str, Any]] = []
    queue = list(messages)
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not queue:
            await asyncio.Event().wait()
        received += 1
        return queue.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout)
    return sent, received


def _http_scope(method: str, path: str, headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "query_string": b"", "headers": raw, **extra}


def _answer(sent: list[dict[str, Any]]) -> tuple[int, dict[str, str], bytes]:
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body["body"]


def test_body_limit_is_enforced_while_reading() -> None:
    """A chunked body past body_bytes: refused at the chunk that would pass the limit, the rest never read."""
    limit, chunk = 1000, b"x" * 300
    app = make_asgi_app(FakePlane(), limits=Limits(body_bytes=limit))
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for _ in range(100)]
    sent, received = asyncio.run(_drive(app, _http_scope("POST", "/v2/models/add_sub/infer"), messages))
    status, headers, body = _answer(sent)
    assert (status, received) == (413, 4) and headers["connection"] == "close"
    assert json.loads(body) == {"error": "request body of at least 1200 bytes exceeds the limit of 1000 bytes "
                                         "(--max-body-mb)"}
    # a gzip bomb: inflated only up to the limit
    bomb = gzip.compress(b" " * (100 * limit))
    messages = [{"type": "http.request", "body": bomb[i : i + 100], "more_body": True} for i in range(0, len(bomb), 100)]
    sent, received = asyncio.run(_drive(app, _http_scope("POST", "/v2/models/add_sub/infer",
                                                         {"Content-Encoding": "gzip"}), messages))
    assert _answer(sent)[0] == 413 and received < len(messages)
    # a declared Content-Length past the limit: refused before any body message
    sent, received = asyncio.run(_drive(app, _http_scope("POST", "/v2/models/add_sub/infer",
                                                         {"Content-Length": str(limit + 1)}), messages))
    assert (_answer(sent)[0], received) == (413, 0)


def test_body_timeout_and_disconnect() -> None:
    app = make_asgi_app(FakePlane(), limits=Limits(body_seconds=0.2))
    scope = _http_scope("POST", "/v2/models/add_sub/infer")
    sent, _ = asyncio.run(_drive(app, scope, [{"type": "http.request", "body": b"{", "more_body": True}]))
    status, headers, body = _answer(sent)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body) == {"error": "the request body did not arrive within 0.2 s (--body-timeout)"}
    sent, _ = asyncio.run(_drive(app, scope, [{"type": "http.request", "body": b"{", "more_body": True},
                                              {"type": "http.disconnect"}]))
    assert _answer(sent)[:1] == (400,)
    assert "closed the connection" in json.loads(_answer(sent)[2])["error"]


def test_chunked_infer_body_and_root_path() -> None:
    app = make_asgi_app(FakePlane())
    body, length = httpclient.InferenceServerClient.generate_request_body(add_sub_inputs(3)[0])
    messages = [{"type": "http.request", "body": body[i : i + 7], "more_body": i + 7 < len(body)}
                for i in range(0, len(body), 7)]
    scope = _http_scope("POST", "/triton/v2/models/add_sub/versions/1/infer",
                        {"Inference-Header-Content-Length": str(length)}, root_path="/triton")
    status, headers, payload = _answer(asyncio.run(_drive(app, scope, messages))[0])
    assert status == 200
    result = httpclient.InferenceServerClient.parse_response_body(
        payload, header_length=int(headers["inference-header-content-length"]))
    _, a, b = add_sub_inputs(3)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    status, _, payload = _answer(asyncio.run(_drive(app, _http_scope("HEAD", "/v2"), []))[0])
    assert (status, payload) == (200, b"")


# ---------------------------------------------------------------------------------------------
# lifespan and other scopes


def test_lifespan_runs_the_hooks_and_reports_failure() -> None:
    calls: list[str] = []

    async def startup() -> None:
        calls.append("startup")

    async def shutdown() -> None:
        calls.append("shutdown")

    app = make_asgi_app(FakePlane(), on_startup=startup, on_shutdown=shutdown)
    lifespan = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent, _ = asyncio.run(_drive(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert calls == ["startup", "shutdown"]
    sent, _ = asyncio.run(_drive(make_asgi_app(FakePlane()), {"type": "lifespan"}, lifespan))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    async def broken() -> None:
        raise RuntimeError("no models today\nsecond line")

    sent, _ = asyncio.run(_drive(make_asgi_app(FakePlane(), on_startup=broken), {"type": "lifespan"}, lifespan))
    assert sent == [{"type": "lifespan.startup.failed", "message": "no models today"}]


def test_a_model_that_fails_to_load_fails_the_startup(tmp_path) -> None:
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    plane = DataPlane(Repository(tmp_path), threads=1)
    startup, shutdown = plane_hooks(plane)
    app = make_asgi_app(plane, on_startup=startup, on_shutdown=shutdown)
    sent, _ = asyncio.run(_drive(app, {"type": "lifespan"}, [{"type": "lifespan.startup"}]))
    assert len(sent) == 1 and sent[0]["type"] == "lifespan.startup.failed"
    assert sent[0]["message"].startswith("1 model(s) failed to load; first:") and "bad" in sent[0]["message"]
    assert plane.stopping


def test_other_scopes_are_ignored_safely() -> None:
    app = make_asgi_app(FakePlane())
    sent, _ = asyncio.run(_drive(app, {"type": "websocket", "path": "/v2"}, [{"type": "websocket.connect"}]))
    assert [m["type"] for m in sent] == ["websocket.close"]
    sent, received = asyncio.run(_drive(app, {"type": "something.else"}, []))
    assert (sent, received) == ([], 0)

