"""What one client may make the server spend (slipway/serve/limits.py), over HTTP and gRPC alike.

Every server here binds 127.0.0.1; every abusive client is a few sockets on loopback that the test
closes itself within a few seconds.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import socket
import threading
import time
from typing import Any

import grpc
import numpy as np
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

import slipway.serve.http as http_adapter
from slipway.errors import ServeError
from slipway.serve import Server
from slipway.serve.limits import Limits, LogLimiter
from slipway.serve.types import bearer_matches, public_message
from tests.serve.conftest import grpc_call
from tests.serve.test_grpc import FakePlane as GrpcPlane
from tests.serve.test_grpc import GrpcServer
from tests.serve.test_http import FakePlane, add_sub_inputs, raw, serving


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``s`` within ``seconds`` (whatever it sent before)."""
    s.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


# ---------------------------------------------------------------------------------------------
# memory: declared sizes reserve nothing


def test_declared_content_length_reserves_nothing() -> None:
    with serving(FakePlane(), limits=Limits(body_bytes=64 << 20)) as server:
        before = _rss_mb()
        socks = []
        try:
            for _ in range(6):
                s = _connect(server.port)
                s.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{"
                          % ((64 << 20) - 1))
                socks.append(s)
            time.sleep(1.0)
            grown = _rss_mb() - before
        finally:
            for s in socks:
                s.close()
    assert grown < 100, f"RSS grew {grown:.0f} MB for 6 bodies of one byte (each declaring 64 MiB)"


def test_bytes_shape_is_checked_against_the_bytes_sent_http_and_grpc() -> None:
    plane = FakePlane()
    with serving(plane, limits=Limits(elements=1 << 30)) as server, GrpcServer(GrpcPlane) as g:
        for shape, status, message in (([2**28, 1], 400, "BYTES data ends after 2 of 268435456 elements"),
                                       ([2**40, 1], 413, "over the limit of 1073741824 (--max-elements)")):
            head = json.dumps({"inputs": [{"name": "IN_BYTES", "datatype": "BYTES", "shape": shape,
                                           "parameters": {"binary_data_size": 8}}]}).encode()
            got, _, body = raw(server, "POST", "/v2/models/identity/infer", head + b"\0" * 8,
                               {"Inference-Header-Content-Length": str(len(head))})
            assert got == status and message.split(" (")[0] in json.loads(body)["error"]
        request = pb.ModelInferRequest(model_name="identity_BYTES", raw_input_contents=[b"\0" * 8])
        request.inputs.add(name="INPUT0", datatype="BYTES", shape=[2**40, 1])
        code, details = grpc_call(g.url, request)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-elements" in details
        request = pb.ModelInferRequest(model_name="identity_FP32")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[2**40, 1]).contents.fp32_contents.extend([1.0])
        code, details = grpc_call(g.url, request)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-elements" in details


def test_json_element_count_is_checked_before_anything_is_built() -> None:
    with serving(FakePlane()) as server:
        body = json.dumps({"inputs": [{"name": "IN_BYTES", "datatype": "BYTES", "shape": [2**40],
                                       "data": ["a"]}]}).encode()
        status, _, answer = raw(server, "POST", "/v2/models/identity/infer", body)
        assert status == 413 and "--max-elements" in json.loads(answer)["error"]
        body = json.dumps({"inputs": [{"name": "IN_INT64", "datatype": "INT64", "shape": [10**6],
                                       "data": [1]}]}).encode()
        status, _, answer = raw(server, "POST", "/v2/models/identity/infer", body)
        assert status == 400 and "cannot hold the 1000000 elements" in json.loads(answer)["error"]


# ---------------------------------------------------------------------------------------------
# time: header and body timeouts, decoding off the event loop


def test_slow_headers_are_closed() -> None:
    with serving(FakePlane(), limits=Limits(header_seconds=0.5)) as server:
        s = _connect(server.port)
        try:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            assert _closed_within(s, 5.0)
        finally:
            s.close()
        assert raw(server, "GET", "/v2/health/live")[0] == 200


def test_slow_body_is_408() -> None:
    with serving(FakePlane(), limits=Limits(body_seconds=0.5)) as server:
        s = _connect(server.port)
        try:
            s.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            t0 = time.monotonic()
            s.settimeout(5)
            answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer
            assert time.monotonic() - t0 < 4
        finally:
            s.close()


def test_large_bodies_are_decoded_off_the_event_loop(monkeypatch) -> None:
    seen: list[str] = []
    decode = http_adapter.decode_infer

    def spy(*args: Any) -> Any:
        seen.append(threading.current_thread().name)
        return decode(*args)

    monkeypatch.setattr(http_adapter, "decode_infer", spy)
    with serving(FakePlane()) as server:
        c = httpclient.InferenceServerClient(server.url)
        try:
            for rows in (1, 2 * http_adapter.OFFLOAD_BYTES // 64 + 1):
                inputs, a, b = add_sub_inputs(rows)
                np.testing.assert_array_equal(c.infer("add_sub", inputs).as_numpy("OUTPUT0"), a + b)
        finally:
            c.close()
    assert seen[0] == "http-test-server" and seen[1] != "http-test-server"


def test_json_nesting_is_a_400_not_a_500() -> None:
    with serving(FakePlane(), limits=Limits(json_depth=32)) as server:
        for depth in (40, 10_000, 100_000):
            body = b'{"inputs": [{"name": "IN_INT64", "datatype": "INT64", "shape": [1], "data": ' + \
                b"[" * depth + b"1" + b"]" * depth + b"}]}"
            status, _, answer = raw(server, "POST", "/v2/models/identity/infer", body)
            assert status == 400 and "--max-json-depth" in json.loads(answer)["error"]
        status, _, _ = raw(server, "POST", "/v2/repository/index", b"[" * 50_000 + b"]" * 50_000)
        assert status == 400
        nested = {"inputs": [{"name": "IN_INT64", "datatype": "INT64", "shape": [1, 1, 1], "data": [[[7]]]}],
                  "outputs": [{"name": "OUT_INT64", "parameters": {"binary_data": False}}]}
        status, _, answer = raw(server, "POST", "/v2/models/identity/infer", json.dumps(nested).encode())
        assert status == 200, answer


def test_too_many_tensors_http_and_grpc() -> None:
    with serving(FakePlane(), limits=Limits(inputs=8)) as server, GrpcServer(GrpcPlane, limits=Limits(inputs=8)) as g:
        body = {"inputs": [{"name": f"x{i}", "datatype": "FP32", "shape": [1], "data": [1]} for i in range(9)]}
        status, _, answer = raw(server, "POST", "/v2/models/add_sub/infer", json.dumps(body).encode())
        message = "the request names 9 input and output tensors, over the limit of 8 (--max-inputs)"
        assert (status, json.loads(answer)["error"]) == (413, message)
        request = pb.ModelInferRequest(model_name="add_sub")
        for i in range(9):
            request.inputs.add(name=f"x{i}", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
        assert grpc_call(g.url, request) == (grpc.StatusCode.RESOURCE_EXHAUSTED, message)


# ---------------------------------------------------------------------------------------------
# connections


def test_connections_past_the_limit_are_closed_at_once(tmp_path) -> None:
    from tests.serve.conftest import _save, gemm_model

    _save(gemm_model(), tmp_path / "gemm" / "1" / "model.onnx")
    limits = Limits(connections=3)
    with Server(tmp_path, http_port=0, grpc_port=None, metrics_port=None, threads=1, limits=limits) as server:
        held = [_connect(server.http_port) for _ in range(3)]
        try:
            time.sleep(0.2)
            extra = _connect(server.http_port)
            extra.settimeout(5)
            try:
                answer = extra.recv(65536)
            except ConnectionResetError:
                answer = b""
            extra.close()
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
            assert b"--max-connections" in answer or answer == b""
        finally:
            for s in held:
                s.close()
        time.sleep(0.3)
        assert raw_status(server.http_port, "/v2/health/ready") == 200


def raw_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# protocol details


def test_content_encodings() -> None:
    with serving(FakePlane()) as server:
        body, length = httpclient.InferenceServerClient.generate_request_body(add_sub_inputs(1)[0])
        headers = {"Inference-Header-Content-Length": str(length)}
        status, _, answer = raw(server, "POST", "/v2/models/add_sub/infer", body, {**headers, "Content-Encoding": "br"})
        assert status == 415 and "'br' is not supported" in json.loads(answer)["error"]
        cut = gzip.compress(body)[:-8]  # no CRC / length trailer
        status, _, answer = raw(server, "POST", "/v2/models/add_sub/infer", cut, {**headers, "Content-Encoding": "gzip"})
        assert status == 400 and "cut off" in json.loads(answer)["error"]
        status, _, _ = raw(server, "POST", "/v2/models/add_sub/infer", gzip.compress(body),
                           {**headers, "Content-Encoding": "GZIP"})
        assert status == 200


def _strict_json(data: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=refuse)


def test_non_finite_numbers_in_and_valid_json_out() -> None:
    with serving(FakePlane()) as server:
        c = httpclient.InferenceServerClient(server.url)
        try:
            x = np.array([np.nan, np.inf, -np.inf, 1.5], np.float16)
            inp = httpclient.InferInput("IN_FP16", [4], "FP16")
            inp.set_data_from_numpy(x, binary_data=False)  # tritonclient writes bare NaN / Infinity
            out = httpclient.InferRequestedOutput("OUT_FP16", binary_data=False)
            result = c.infer("identity", [inp], outputs=[out])
            np.testing.assert_array_equal(result.as_numpy("OUT_FP16"), x)  # tritonclient reads the strings back
        finally:
            c.close()
        body = b'{"inputs": [{"name": "IN_FP16", "datatype": "FP16", "shape": [2], "data": [NaN, -Infinity]}], ' \
               b'"outputs": [{"name": "OUT_FP16", "parameters": {"binary_data": false}}]}'
        status, _, answer = raw(server, "POST", "/v2/models/identity/infer", body)
        assert status == 200 and _strict_json(answer)["outputs"][0]["data"] == ["NaN", "-Infinity"]


def test_bearer_scheme_any_case_metrics_auth_and_no_token_in_logs(caplog) -> None:
    metrics = (b"nv_inference_count 1\n", "text/plain; version=0.0.4; charset=utf-8")
    with caplog.at_level(logging.DEBUG):
        with serving(FakePlane(), token="s3cret", limits=Limits(metrics_auth=True), metrics=lambda: metrics) as server:
            for value, want in (("bearer s3cret", 200), ("BEARER s3cret", 200), ("Bearer s3cre", 401),
                                ("s3cret", 401), ("Basic s3cret", 401)):
                assert raw(server, "GET", "/v2", headers={"Authorization": value})[0] == want, value
            assert raw(server, "GET", "/metrics")[0] == 401
            assert raw(server, "GET", "/metrics", headers={"Authorization": "Bearer s3cret"})[0] == 200
            assert raw(server, "GET", "/v2/health/live")[0] == 200
    assert not any("s3cret" in r.getMessage() or "s3cre" in r.getMessage() for r in caplog.records)


def test_bearer_matches_compares_every_value_in_constant_time(monkeypatch) -> None:
    import slipway.serve.types as types

    calls: list[tuple[bytes, bytes]] = []
    real = types.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(types.hmac, "compare_digest", spy)
    assert bearer_matches(["Bearer right", "Bearer wrong"], b"right")
    assert len(calls) == 2  # no early exit on a match either
    assert not bearer_matches([], b"right") and not bearer_matches(["Bearer"], b"right")


def test_grpc_looks_at_every_authorization_entry() -> None:
    with GrpcServer(GrpcPlane, token="s3cret") as g, grpc.insecure_channel(g.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelReadyRequest(name="add_sub")
        for metadata, ok in (([("authorization", "Bearer wrong"), ("authorization", "bearer s3cret")], True),
                             ([("authorization", "Bearer wrong")], False), ([], False)):
            try:
                assert stub.ModelReady(request, metadata=metadata, timeout=10).ready and ok
            except grpc.RpcError as e:
                assert not ok and e.code() == grpc.StatusCode.UNAUTHENTICATED


def test_no_server_paths_in_errors() -> None:
    class Leaky(FakePlane):
        def model_metadata(self, name: str, version: str = "") -> dict:
            raise FileNotFoundError(2, "No such file or directory", "/srv/secret/models/x/1/model.onnx")

        def model_config(self, name: str, version: str = ""):
            raise ServeError("cannot read /srv/secret/models/x/config.pbtxt: bad", 400)

    with serving(Leaky()) as server:
        for path in ("/v2/models/x", "/v2/models/x/config"):
            status, _, answer = raw(server, "GET", path)
            error = json.loads(answer)["error"]
            assert status in (400, 500) and "/srv/" not in error and "secret" not in error, error
    assert public_message("unknown path /v2/no/such") == "unknown path /v2/no/such"


def test_warns_when_serving_beyond_loopback_without_a_token(tmp_path, monkeypatch, caplog) -> None:
    import slipway.serve.server as server_module
    from tests.serve.conftest import _save, gemm_model

    assert server_module._loopback("127.0.0.1") and server_module._loopback("::1")
    assert not server_module._loopback("0.0.0.0") and not server_module._loopback("10.1.2.3")
    _save(gemm_model(), tmp_path / "gemm" / "1" / "model.onnx")
    monkeypatch.setattr(server_module, "_loopback", lambda host: False)  # still binds 127.0.0.1
    with caplog.at_level(logging.WARNING, logger="slipway.serve"):
        with Server(tmp_path, http_port=0, grpc_port=None, metrics_port=None, threads=1):
            pass
    assert any("without a token" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# logs


def test_client_errors_log_no_traceback_and_repeats_are_counted(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="slipway.serve"), serving(FakePlane()) as server:
        for _ in range(30):
            assert raw(server, "POST", "/v2/models/add_sub/infer", b"{oops")[0] == 400
        for _ in range(5):
            x = httpclient.InferInput("X", [2], "FP32")
            x.set_data_from_numpy(np.ones(2, np.float32))
            body, length = httpclient.InferenceServerClient.generate_request_body([x])
            assert raw(server, "POST", "/v2/models/boom/infer", body,
                       {"Inference-Header-Content-Length": str(length)})[0] == 500
    lines = [r for r in caplog.records if r.name == "slipway.serve"]
    bad = [r for r in lines if "status=400" in r.getMessage()]
    assert len(bad) == 1 and bad[0].exc_info is None
    tracebacks = [r for r in lines if r.exc_info]
    assert len(tracebacks) == 1


def test_log_limiter_counts_repeats() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test_log_limiter_counts_repeats")  # not under "slipway", whose level tests set
    logger.addHandler(Collect())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    limiter = LogLimiter(logger, interval=0.2, at_most=3)
    for _ in range(10):
        limiter.log(logging.WARNING, "a", "same %s", "thing")
    for kind in "bcdef":
        limiter.log(logging.WARNING, kind, "kind %s", kind)
    time.sleep(0.25)
    limiter.log(logging.WARNING, "a", "same %s", "thing")
    assert records[0] == "same thing" and records[1:3] == ["kind b", "kind c"]
    assert any("3 more log lines left out" in r for r in records)
    assert records[-1] == "same thing (and 9 like it in the last 0 s)"


def test_grpc_silent_connections_are_closed_after_the_header_time(tmp_path) -> None:
    """A client that connects to the gRPC port and never sends the HTTP/2 preface is dropped (the handshake timeout)."""
    from tests.serve.conftest import _save, gemm_model

    _save(gemm_model(), tmp_path / "gemm" / "1" / "model.onnx")
    limits = Limits(header_seconds=0.5)
    with Server(tmp_path, http_port=None, grpc_port=0, metrics_port=None, threads=1, limits=limits) as server:
        s = _connect(server.grpc_port)
        try:
            assert _closed_within(s, 8.0)
        finally:
            s.close()
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            live = pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
        assert live.live


def test_grpc_connections_past_the_limit_are_refused(tmp_path) -> None:
    """With 2 connections held open, a third gRPC client cannot get a call through; once they close it can."""
    from tests.serve.conftest import _save, gemm_model

    _save(gemm_model(), tmp_path / "gemm" / "1" / "model.onnx")
    limits = Limits(connections=2)
    with Server(tmp_path, http_port=None, grpc_port=0, metrics_port=None, threads=1, limits=limits) as server:
        url = f"127.0.0.1:{server.grpc_port}"
        held = [grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(2)]
        try:
            for channel in held:  # each channel is one HTTP/2 connection once a call went through
                assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10).live
            with grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1)]) as extra:
                try:
                    pb_grpc.GRPCInferenceServiceStub(extra).ServerLive(pb.ServerLiveRequest(), timeout=2)
                    refused = False
                except grpc.RpcError as e:
                    refused = e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert refused
        finally:
            for channel in held:
                channel.close()
        time.sleep(0.5)
        with grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10).live
