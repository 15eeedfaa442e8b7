"""Fuzzing the REST API: schemathesis drives the served OpenAPI document against a real server.

* ``test_openapi_fuzz``: cases generated from ``GET /v2/openapi.json`` (schemathesis, positive and
  negative data, every operation, plus infer cases aimed at the real models) sent to a real server on
  127.0.0.1. Any 5xx fails; so does an answer the document does not describe (status code, content type,
  body schema), and a server that is no longer live afterwards. A fixed number of cases, derandomized
  (same cases every run); ``test_openapi_fuzz_long`` (``slow``) runs many more, randomly.
* ``test_malformed_binary``: a hand-made corpus of broken binary-extension bodies (header length past the
  body, negative, not a number; truncated bodies; bad BYTES length prefixes; JSON headers that are not
  objects ...), each sent on a raw socket; every one must get a 4xx with ``{"error": "..."}`` and the
  server must stay live.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve.conftest import build_repository  # noqa: E402

DOCUMENT = Path(__file__).resolve().parents[2] / "slipway" / "serve" / "openapi.json"
MODELS = ("gemm", "strings", "add_sub", "half")  # the conftest repository's models
CASES = 40  # per strategy (18 schemathesis strategies, plus 5x as many near-valid infer requests): ~45 s
LONG_CASES = 300  # the same, randomized: ~7,000 cases, ~5 min
REQUEST_TIMEOUT = 10.0  # seconds for one request; a server that takes longer is as good as dead
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """A real server of its own (explicit model control, every model loaded), HTTP only, on 127.0.0.1."""
    from slipway.serve import Server

    repo = build_repository(tmp_path_factory.mktemp("fuzz_repo"))
    s = Server(repo, http_port=0, grpc_port=None, metrics_port=None, threads=1, control="explicit",
               models=["*"]).start_in_thread()
    yield s
    s.stop_thread()


@pytest.fixture(scope="module")
def base_url(fuzz_server) -> str:
    return f"http://127.0.0.1:{fuzz_server.http_port}"


# ---------------------------------------------------------------------------------------------
# the document


def test_document_is_served_and_covers_every_route(base_url) -> None:
    import requests

    r = requests.get(f"{base_url}/v2/openapi.json", timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc == json.loads(DOCUMENT.read_text())
    assert doc["openapi"].startswith("3.")
    paths = set(doc["paths"])
    for route in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/stats", "/v2/repository/index",
                  "/v2/repository/models/{model}/load", "/v2/repository/models/{model}/unload", "/metrics",
                  "/v2/openapi.json"):
        assert route in paths
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        for tail in ("", "/ready", "/config", "/stats", "/infer"):
            assert base + tail in paths
    infer = doc["paths"]["/v2/models/{model}/infer"]["post"]
    assert {"application/json", "application/octet-stream"} <= set(infer["requestBody"]["content"])
    assert "Inference-Header-Content-Length" in {p["name"] for p in infer["parameters"]}
    # every route the server has is in the document, and nothing else
    from slipway.serve.http import make_app

    app = make_app(_NoPlane(), metrics=lambda: (b"", "text/plain"))  # type: ignore[arg-type]
    served = {r.resource.canonical for r in app.router.routes() if r.method != "HEAD"}
    assert served == paths


class _NoPlane:
    """make_app only stores the plane."""


# ---------------------------------------------------------------------------------------------
# schemathesis


@dataclass
class Findings:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    nonconforming: list[str] = field(default_factory=list)


def _strategies(schema) -> list:
    """Every operation, positive and negative, plus infer cases on the real models (random model names
    almost never name one, so the decoders and the request check would see few cases otherwise)."""
    from schemathesis import GenerationMode

    out = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        out.append(schema.as_strategy(generation_mode=mode))
        for path in ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
            op = schema[path]["POST"]
            for model in MODELS:
                fixed = {"model": model} if "version" not in path else {"model": model, "version": "1"}
                out.append(op.as_strategy(generation_mode=mode, path_parameters=fixed))
    return out


# the real models' inputs: name -> (datatype, row shape, max batch); see tests/serve/conftest.py
SIGNATURES = {
    "gemm": {"x": ("FP32", [16], 32)},
    "add_sub": {"INPUT0": ("FP32", [16], 8), "INPUT1": ("FP32", [16], 8)},
    "half": {"x": ("FP16", [4], 32)},
    "strings": {"text": ("BYTES", [3], 0)},
}
NUMBERS = st.one_of(st.floats(width=32), st.floats(), st.integers(-(1 << 70), 1 << 70), st.booleans(),
                    st.sampled_from([0.0, -0.0, 1e308, 65504.0, 70000.0]))


BENDS = ("batch", "count", "shape", "datatype", "name", "binary_size", "outputs", "parameters", "id")


@st.composite
def near_valid_infer(draw) -> tuple[str, dict | bytes, dict[str, str]]:
    """An infer request for a real model that is valid but for at most one bent thing (the batch past the
    maximum, an element count, the shape, the datatype, a name, a binary size, the requested outputs, the
    request parameters, the id); its numbers include NaN, infinities and values out of the type's range,
    its data comes flat or nested, as JSON or binary. Returns (model, body, headers)."""
    model = draw(st.sampled_from(sorted(SIGNATURES)))
    bend = draw(st.sampled_from((None, None, None, *BENDS)))
    signature = SIGNATURES[model]
    bent_input = draw(st.sampled_from(sorted(signature)))
    max_batch = max(b for _, _, b in signature.values())
    batch = draw(st.integers(max_batch + 1, 1 << 20) if bend == "batch" else st.integers(1, max(1, min(max_batch, 4))))
    binary = draw(st.booleans())
    inputs, blobs = [], []
    for name, (datatype, row, mb) in signature.items():
        mine = name == bent_input
        shape = ([batch] if mb else []) + row
        if mine and bend == "shape":
            shape = draw(st.lists(st.integers(-2, 1 << 40), max_size=4))
        n = math.prod(shape[:1] if mine and bend == "batch" else shape) if all(d >= 0 for d in shape) else 0
        n = min(n, 512)
        if mine and bend == "count":
            n = draw(st.sampled_from([max(n - 1, 0), n + 1, 0, 2 * n]))
        dt = draw(st.sampled_from(["FP32", "FP16", "INT64", "BYTES", "BOOL", "BF16", "FP64", "x", ""])) \
            if mine and bend == "datatype" else datatype
        entry: dict = {"name": draw(st.sampled_from(["", "nope", name.upper() + "_"])) if mine and bend == "name"
                       else name, "datatype": dt, "shape": shape}
        if binary:
            if dt == "BYTES":
                items = draw(st.lists(st.binary(max_size=8), min_size=n, max_size=n))
                blob = b"".join(len(x).to_bytes(4, "little") + x for x in items)
            else:
                blob = draw(st.binary(min_size=n * tensors_width(dt), max_size=n * tensors_width(dt)))
            size = len(blob)
            if mine and bend == "binary_size":
                size = draw(st.sampled_from([size + 1, max(size - 1, 0), 0, size + (1 << 32)]))
            entry["parameters"] = {"binary_data_size": size}
            blobs.append(blob)
        else:
            items = st.one_of(st.text(max_size=8), NUMBERS) if dt == "BYTES" else NUMBERS
            flat = draw(st.lists(items, min_size=n, max_size=n))
            nested = len(row) == 1 and draw(st.booleans()) and len(flat) % row[0] == 0
            entry["data"] = [flat[i:i + row[0]] for i in range(0, len(flat), row[0])] if nested else flat
        inputs.append(entry)
    header: dict = {"inputs": inputs}
    if bend == "id":
        header["id"] = draw(st.one_of(st.text(max_size=12), st.integers(), st.none()))
    if bend == "parameters":
        header["parameters"] = draw(st.dictionaries(
            st.sampled_from(["priority", "timeout", "binary_data_output", "other"]),
            st.one_of(st.integers(-2, 1 << 64), st.booleans(), st.text(max_size=4), st.floats()), max_size=3))
    if bend == "outputs" or draw(st.booleans()):
        names = ["y", "OUTPUT0", "OUTPUT1", "same", "nope"] if bend == "outputs" else MODEL_OUTPUTS[model]
        header["outputs"] = [{"name": draw(st.sampled_from(names)),
                              "parameters": {"binary_data": draw(st.booleans() if bend != "outputs"
                                                                 else st.one_of(st.booleans(), st.integers(0, 2)))}}]
    if not binary:
        return model, header, {}
    head = json.dumps(header, allow_nan=True).encode()
    return model, head + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                            "Inference-Header-Content-Length": str(len(head))}


MODEL_OUTPUTS = {"gemm": ["y"], "add_sub": ["OUTPUT0", "OUTPUT1"], "half": ["y"], "strings": ["same"]}
WIDTHS = {"FP32": 4, "FP16": 2, "BF16": 2, "INT64": 8, "FP64": 8, "BOOL": 1}


def tensors_width(datatype: str) -> int:
    return WIDTHS.get(datatype, 4)


def _describe(case, response) -> str:
    body = response.content[:300]
    return (f"{case.method} {case.formatted_path} headers={dict(case.headers or {})!r} "
            f"media_type={case.media_type!r} body={case.body!r:.300} -> {response.status_code} {body!r}")


def _fuzz(base_url: str, cases: int, derandomize: bool) -> Findings:
    import requests

    schema = schemathesis.openapi.from_url(f"{base_url}/v2/openapi.json")
    found = Findings()
    session = requests.Session()

    def fuzz(strategy) -> None:
        @settings(max_examples=cases, deadline=None, database=None, derandomize=derandomize,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def run(case) -> None:
            try:
                response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT)
            except requests.RequestException as e:  # the server closed or stalled: as bad as a 5xx
                found.server_errors.append(f"{case.method} {case.formatted_path}: {type(e).__name__}: {e}")
                return
            found.cases += 1
            found.statuses[response.status_code] = found.statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                found.server_errors.append(_describe(case, response))
                return
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as e:  # schemathesis' FailureGroup: the answer is not what the document says
                found.nonconforming.append(f"{_describe(case, response)}\n  {str(e).strip()[:400]}")

        given(case=strategy)(run)()

    for strategy in _strategies(schema):
        fuzz(strategy)

    infer_op = schema["/v2/models/{model}/infer"]["POST"]

    @settings(max_examples=cases * 5, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(request=near_valid_infer())
    def near(request) -> None:
        model, body, headers = request
        url = f"{base_url}/v2/models/{model}/infer"
        try:
            if isinstance(body, dict):
                response = session.post(url, data=json.dumps(body, allow_nan=True), timeout=REQUEST_TIMEOUT,
                                        headers={"Content-Type": "application/json"})
            else:
                response = session.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT)
        except requests.RequestException as e:
            found.server_errors.append(f"POST {url}: {type(e).__name__}: {e}")
            return
        found.cases += 1
        found.statuses[response.status_code] = found.statuses.get(response.status_code, 0) + 1
        line = f"POST /v2/models/{model}/infer headers={headers!r} body={body!r:.400} -> {response.status_code} " \
               f"{response.content[:300]!r}"
        if response.status_code >= 500:
            found.server_errors.append(line)
        elif response.status_code != 200 or "json" in response.headers.get("Content-Type", ""):
            case = infer_op.Case(path_parameters={"model": model}, body=body if isinstance(body, dict) else None,
                                 media_type="application/json")
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as e:
                found.nonconforming.append(f"{line}\n  {str(e).strip()[:400]}")

    near()
    return found


def _check(base_url: str, found: Findings) -> None:
    import requests

    live = requests.get(f"{base_url}/v2/health/live", timeout=REQUEST_TIMEOUT)
    print(f"fuzz: {found.cases} cases, statuses {dict(sorted(found.statuses.items()))}")
    assert not found.server_errors, f"{len(found.server_errors)} server errors:\n" + "\n".join(found.server_errors[:20])
    assert not found.nonconforming, (f"{len(found.nonconforming)} answers not as documented:\n"
                                     + "\n".join(found.nonconforming[:10]))
    assert live.status_code == 200, "the server is no longer live after the fuzzing"
    assert found.cases > 0


def test_openapi_fuzz(base_url) -> None:
    _check(base_url, _fuzz(base_url, CASES, derandomize=True))


@pytest.mark.slow
def test_openapi_fuzz_long(base_url) -> None:
    _check(base_url, _fuzz(base_url, LONG_CASES, derandomize=False))


# ---------------------------------------------------------------------------------------------
# malformed binary bodies, on a raw socket


def _raw(port: int, path: str, body: bytes, headers: dict[str, str], declared: int | None = None,
         half_close: bool = False) -> tuple[int | None, bytes]:
    """POST ``body`` with exactly these headers (Content-Length = ``declared``, default len(body));
    ``half_close`` shuts the sending side after the body. Returns (status, response body)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             f"Content-Length: {len(body) if declared is None else declared}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    if not data and half_close:
        return None, b""  # the server closed without an answer: fine for a client that gave up
    assert head.startswith(b"HTTP/1.1 "), f"no HTTP answer: {data[:200]!r}"
    return int(head.split(b" ", 2)[1]), payload


def _binary(header: object, *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return h + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                 "Inference-Header-Content-Length": str(len(h))}


def _fp32(n: int, shape: list | None = None, size: int | None = None) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape or [n // 16, 16],
                        "parameters": {"binary_data_size": 4 * n if size is None else size}}]}


def _bytes_input(size: int, shape: list | None = None) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape or [3],
                        "parameters": {"binary_data_size": size}}]}


def _elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


X16 = bytes(64)  # one row of 16 FP32 zeros
GOOD_BYTES = _elements(b"a", b"bc", b"")


def _corpus() -> list[tuple[str, str, bytes, dict[str, str], dict]]:
    """(id, model, body, headers, socket options) of bodies every one of which must get a 4xx."""
    out = []

    def add(cid: str, model: str, body_headers: tuple[bytes, dict[str, str]], **opts) -> None:
        body, headers = body_headers
        out.append((cid, model, body, headers, opts))

    def with_length(value: str, header: object, *blobs: bytes) -> tuple[bytes, dict[str, str]]:
        body, headers = _binary(header, *blobs)
        return body, {**headers, "Inference-Header-Content-Length": value}

    good = json.dumps(_fp32(16)).encode()
    # Inference-Header-Content-Length
    add("length-past-body", "gemm", with_length(str(len(good) + 64 + 1), good, X16))
    add("length-far-past-body", "gemm", with_length(str(1 << 40), good, X16))
    add("length-negative", "gemm", with_length("-1", good, X16))
    add("length-negative-large", "gemm", with_length(str(-(1 << 62)), good, X16))
    for value in ("abc", "1.5", "0x10", "", "1e3", str(len(good)) + "_0", str(10 ** 30), f"{len(good)} {len(good)}"):
        add(f"length-not-a-number[{value!r}]", "gemm", with_length(value, good, X16))
    add("length-zero", "gemm", with_length("0", good, X16))
    add("length-cuts-the-json", "gemm", with_length(str(len(good) // 2), good, X16))
    add("length-takes-binary-too", "gemm", with_length(str(len(good) + 10), good, X16))
    # the JSON header
    for cid, header in [("header-list", b"[]"), ("header-string", b'"inputs"'), ("header-number", b"42"),
                        ("header-null", b"null"), ("header-true", b"true"), ("header-not-json", b"{inputs"),
                        ("header-not-utf8", b'{"inputs": "\xff\xfe"}'), ("header-empty-object", b"{}"),
                        ("header-nul-bytes", b"\x00" * 16), ("header-bom", b"\xef\xbb\xbf" + good)]:
        add(cid, "gemm", _binary(header, X16))
    add("inputs-not-a-list", "gemm", _binary({"inputs": {"x": 1}}, X16))
    add("input-not-an-object", "gemm", _binary({"inputs": [1]}, X16))
    # binary_data_size
    add("truncated-binary", "gemm", _binary(_fp32(16), X16[:40]))
    add("binary-size-past-body", "gemm", _binary(_fp32(16, size=1 << 40), X16))
    add("binary-size-negative", "gemm", _binary(_fp32(16, size=-64), X16))
    add("binary-size-string", "gemm", _binary({"inputs": [{**_fp32(16)["inputs"][0], "parameters": {"binary_data_size": "64"}}]}, X16))
    add("binary-size-float", "gemm", _binary({"inputs": [{**_fp32(16)["inputs"][0], "parameters": {"binary_data_size": 64.0}}]}, X16))
    add("binary-size-bool", "gemm", _binary({"inputs": [{**_fp32(16)["inputs"][0], "parameters": {"binary_data_size": True}}]}, X16))
    add("binary-size-not-multiple-of-4", "gemm", _binary(_fp32(16, size=63), X16[:63]))
    add("binary-size-too-small-for-shape", "gemm", _binary(_fp32(16, shape=[2, 16]), X16))
    add("binary-trailing-bytes", "gemm", _binary(_fp32(16), X16, b"\x00" * 8))
    add("binary-and-data", "gemm", _binary({"inputs": [{**_fp32(16)["inputs"][0], "data": [0.0] * 16}]}, X16))
    add("binary-no-data", "gemm", _binary({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16]}]}, X16))
    add("binary-huge-shape", "gemm", _binary(_fp32(16, shape=[1 << 28, 16]), X16))
    add("binary-overflowing-shape", "gemm", _binary(_fp32(16, shape=[1 << 40, 1 << 40, 1 << 40]), X16))
    add("binary-negative-shape", "gemm", _binary(_fp32(16, shape=[-1, 16]), X16))
    add("binary-shape-not-a-list", "gemm", _binary(_fp32(16, shape="1,16"), X16))  # type: ignore[arg-type]
    add("binary-unknown-datatype", "gemm", _binary({"inputs": [{**_fp32(16)["inputs"][0], "datatype": "FP128"}]}, X16))
    add("binary-wrong-datatype", "gemm", _binary({"inputs": [{**_fp32(16)["inputs"][0], "datatype": "INT32"}]}, X16))
    add("binary-unknown-input", "gemm", _binary({"inputs": [{**_fp32(16)["inputs"][0], "name": "nope"}]}, X16))
    add("binary-second-input-past-body", "add_sub", _binary(
        {"inputs": [{"name": f"INPUT{i}", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}
                    for i in range(2)]}, X16))
    # BYTES elements: 4-byte little-endian length, then the bytes
    add("bytes-length-past-body", "strings", _binary(_bytes_input(len(GOOD_BYTES) + 3), GOOD_BYTES + struct.pack("<I", 1000)))
    add("bytes-length-ffffffff", "strings", _binary(_bytes_input(4 + 1 + 4 + 2 + 4), _elements(b"a", b"bc") + b"\xff\xff\xff\xff"))
    add("bytes-prefix-truncated", "strings", _binary(_bytes_input(len(GOOD_BYTES) - 4 + 3), GOOD_BYTES[:-4] + b"\x00\x00\x00"))
    add("bytes-element-truncated", "strings", _binary(_bytes_input(4 + 1 + 4 + 2 + 4 + 1), _elements(b"a", b"bc") + struct.pack("<I", 5) + b"x"))
    add("bytes-too-many-elements", "strings", _binary(_bytes_input(len(GOOD_BYTES) + 5), GOOD_BYTES + _elements(b"d")))
    add("bytes-too-few-elements", "strings", _binary(_bytes_input(8), _elements(b"a", b"")))
    add("bytes-huge-shape", "strings", _binary(_bytes_input(len(GOOD_BYTES), shape=[1 << 28, 1]), GOOD_BYTES))
    add("bytes-zero-size-for-3", "strings", _binary(_bytes_input(0), b""))
    add("bytes-size-past-body", "strings", _binary(_bytes_input(1 << 33), GOOD_BYTES))
    # bodies shorter than their Content-Length (the client gives up half-way)
    body, headers = _binary(_fp32(16), X16)
    out.append(("truncated-body-half-closed", "gemm", body[: len(body) // 2], headers,
                {"declared": len(body), "half_close": True}))
    out.append(("truncated-header-half-closed", "gemm", body[:5], headers, {"declared": len(body), "half_close": True}))
    # compressed binary bodies that do not decompress
    body, headers = _binary(_fp32(16), X16)
    add("gzip-garbage", "gemm", (body, {**headers, "Content-Encoding": "gzip"}))
    add("deflate-garbage", "gemm", (body, {**headers, "Content-Encoding": "deflate"}))
    return out


CORPUS = _corpus()


def _loose() -> list[tuple[str, str]]:
    """Header lengths that are not plain ASCII decimals but that Python's int() reads (sign, Unicode
    digits, underscores): refused like any other malformed length."""
    n = str(len(json.dumps(_fp32(16)).encode()))
    return [("plus-sign", "+" + n), ("arabic-indic-digits", "".join(chr(0x660 + int(d)) for d in n)),
            ("underscore", n[:-1] + "_" + n[-1])]


LOOSE = _loose()


@pytest.mark.parametrize("cid,value", LOOSE, ids=[c[0] for c in LOOSE])
def test_loose_header_length_is_refused(fuzz_server, cid, value) -> None:
    body, headers = _binary(_fp32(16), X16)
    status, payload = _raw(fuzz_server.http_port, "/v2/models/gemm/infer", body,
                           {**headers, "Inference-Header-Content-Length": value})
    assert status == 400, f"{cid}: {status} {payload[:300]!r}"
    assert "must be an integer (decimal digits)" in json.loads(payload)["error"]


def test_good_binary_bodies_pass(fuzz_server) -> None:
    """The corpus' baseline: the same bodies, well formed, get a 200 (so each refusal below is about its flaw)."""
    port = fuzz_server.http_port
    status, payload = _raw(port, "/v2/models/gemm/infer", *_binary(_fp32(16), X16))
    assert status == 200, payload
    status, payload = _raw(port, "/v2/models/strings/infer", *_binary(_bytes_input(len(GOOD_BYTES)), GOOD_BYTES))
    assert status == 200, payload
    assert json.loads(payload)["outputs"][0]["data"] == ["a", "bc", ""]


@pytest.mark.parametrize("cid,model,body,headers,opts", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_binary(fuzz_server, cid, model, body, headers, opts) -> None:
    port = fuzz_server.http_port
    t0 = time.monotonic()
    status, payload = _raw(port, f"/v2/models/{model}/infer", body, headers, **opts)
    if status is not None or not opts.get("half_close"):
        assert status is not None and 400 <= status < 500, f"{cid}: {status} {payload[:300]!r}"
        error = json.loads(payload)["error"]
        assert isinstance(error, str) and error and "\n" not in error
    assert time.monotonic() - t0 < REQUEST_TIMEOUT
    status, _ = _raw_get(port, "/v2/health/live")
    assert status == 200


def _raw_get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()
