"""KServe v2 REST without a web framework: the routes, bodies, codecs and error answers that the HTTP
adapters share.

:mod:`slipway.serve.http` (aiohttp) and :mod:`slipway.serve.asgi` (any ASGI 3 server: uvicorn, Ray
Serve's proxy) each only turn their framework's request into a :class:`Call` and a :class:`Reply`
into their framework's response; everything a client can see is decided here, once: the route
table (:func:`routes`), each route's handler, the infer body codecs (:func:`decode_infer`,
:func:`encode_infer`: JSON and Triton's binary tensor extension), the request body reader (chunks as
they arrive, gzip / deflate decompressed, ``body_bytes`` and ``body_seconds`` enforced while
reading: :func:`read_body`), the bearer-token rule (:func:`authorize`), the response coding
(:func:`response_coding`, :data:`MIN_COMPRESS_BYTES`) and THE error answer (:func:`failure`:
``{"error": ...}``, the status, the rate-limited log line, ``WWW-Authenticate`` on a 401, no
keep-alive after a 408 / 413 / 415). See http.py's docstring for the protocol itself.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict

import slipway.serve.tensors as tensors
from slipway.errors import ServeError, one_line
from slipway.serve.limits import Limits, LogLimiter, error_kind, too_many_tensors
from slipway.serve.types import (
    InferRequest,
    InferResponse,
    InferTensor,
    Plane,
    RequestedOutput,
    bearer_matches,
    public_message,
)

try:  # python-rapidjson comes with tritonclient; about twice as fast as json on small documents
    import rapidjson as _json

    _DUMPS_OPTIONS: dict[str, Any] = {}
except ImportError:  # pragma: no cover
    import json as _json

    _DUMPS_OPTIONS = {"separators": (",", ":")}

__all__ = [
    "Call", "Reply", "Handler", "Headers", "routes", "authorize", "no_route", "failure", "read_body",
    "response_coding", "decode_infer", "encode_infer", "proto_to_json", "json_depth", "openapi_document",
    "dumps", "json_reply", "HEADER_LENGTH", "MIN_COMPRESS_BYTES", "OFFLOAD_BYTES",
]

log = logging.getLogger("slipway.serve")

HEADER_LENGTH = "Inference-Header-Content-Length"
MIN_COMPRESS_BYTES = 1024  # smaller infer responses are sent as they are even when gzip is acceptable
OFFLOAD_BYTES = 1 << 20  # larger infer bodies are decoded in a worker thread, off the event loop
_CODINGS = ("gzip", "x-gzip", "deflate")
_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


# ---------------------------------------------------------------------------------------------
# what an adapter hands the handlers, and what it gets back


class Headers(Protocol):
    """Request headers, names in any case (aiohttp's CIMultiDictProxy is one)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def getall(self, key: str, default: Any = ...) -> list[str]: ...


@dataclass
class Call:
    """One REST request as the handlers see it, whatever carried it."""

    plane: Plane
    limits: Limits
    method: str
    path: str  # decoded, as the client's request line has it (error messages name it)
    headers: Headers
    read_chunk: Callable[[], Awaitable[bytes]]  # the next chunk of the raw body as it arrives; b"" at its end
    params: Mapping[str, str] = field(default_factory=dict)  # the route's {model}, {version}, {name}
    request_id: str = ""  # the infer request's id once decoded (the error log names it)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    coding: str | None = None  # gzip / deflate: the adapter compresses the body
    close: bool = False  # no keep-alive after it: the rest of the request body is not wanted


Handler = Callable[[Call], Awaitable[Reply]]
Decode = Callable[..., tuple[InferRequest, tuple[bool, dict[str, bool]]]]


def routes(*, metrics: Callable[[], tuple[bytes, str]] | None = None, decode: Decode | None = None,
           ) -> list[tuple[str, dict[str, Handler]]]:
    """THE REST API: (path pattern, {method: handler}) in the order they match (a ``{name}`` part
    matches one path segment, as aiohttp's router has it; every GET also answers HEAD). ``metrics``
    adds GET /metrics; ``decode`` replaces :func:`decode_infer` (the adapter's own name for it)."""
    decode = decode or decode_infer

    async def infer_route(call: Call) -> Reply:
        return await infer(call, decode)

    table: list[tuple[str, dict[str, Handler]]] = [
        ("/v2/health/live", {"GET": live}),
        ("/v2/health/ready", {"GET": ready}),
        ("/v2", {"GET": server_metadata}),
        ("/v2/models/stats", {"GET": stats}),
        ("/v2/repository/index", {"POST": repository_index}),
        ("/v2/repository/models/{model}/load", {"POST": load}),
        ("/v2/repository/models/{model}/unload", {"POST": unload}),
    ]
    for kind in ("system", "cuda"):  # Triton's shared-memory extensions (CUDA's: refused, see serve/shm.py)
        for base in (f"/v2/{kind}sharedmemory", f"/v2/{kind}sharedmemory/region/{{name}}"):
            table += [(base + "/status", {"GET": shm_status}), (base + "/unregister", {"POST": shm_unregister})]
        table.append((f"/v2/{kind}sharedmemory/region/{{name}}/register", {"POST": shm_register}))
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        table += [(base, {"GET": model_metadata}), (base + "/ready", {"GET": model_ready}),
                  (base + "/config", {"GET": model_config}), (base + "/stats", {"GET": stats}),
                  (base + "/infer", {"POST": infer_route})]
    if metrics is not None:
        table.append(("/metrics", {"GET": metrics_route(metrics)}))
    table.append(("/v2/openapi.json", {"GET": openapi}))
    return table


# ---------------------------------------------------------------------------------------------
# errors and auth


def authorize(call: Call, token: bytes, metrics_auth: bool) -> None:
    """401 unless the call carries ``Bearer <token>`` (health, and /metrics unless ``metrics_auth``, are open)."""
    path = call.path
    if not (path.startswith("/v2/health/") or (path == "/metrics" and not metrics_auth)):
        if not bearer_matches(call.headers.getall("Authorization", ()), token):
            raise ServeError("missing or wrong bearer token", 401)


def no_route(method: str, path: str, path_matched: bool) -> ServeError:
    """THE answer to a path no route has (404), or a method its routes do not take (405)."""
    if path_matched:
        return ServeError(f"method {method} is not allowed on {path}", 405)
    return ServeError(f"unknown path {path}", 404)


def failure(call: Call, exc: Exception, limiter: LogLimiter) -> Reply:
    """THE error answer to ``exc`` raised while serving ``call``, and its log line: client errors
    without a traceback, one line per kind of message per interval (the count of repeats on the
    next; at most LogLimiter.at_most lines per interval in all); unexpected errors with one
    traceback per kind (type and raising line) per interval."""
    internal: BaseException | None = None
    if isinstance(exc, ServeError):
        status, message = (exc.status if 400 <= exc.status <= 599 else 500), str(exc)
    elif isinstance(exc, RecursionError):
        status, message = 400, "the request is nested too deeply"
    else:
        status, message, internal = 500, f"internal error: {one_line(exc, typed=True)}", exc
    message = public_message(message)
    level = logging.ERROR if status == 500 else logging.WARNING if status > 500 else logging.INFO
    rid = call.request_id or call.headers.get("X-Request-ID", "")
    kind = error_kind(internal) if internal is not None else (status, call.path, message)
    limiter.log(level, kind, "request failed: method=%s path=%s status=%d id=%r error=%r",
                call.method, call.path, status, rid, message, exc_info=internal)
    reply = json_reply({"error": message}, status)
    if status == 401:
        reply.headers["WWW-Authenticate"] = "Bearer"
    reply.close = status in (408, 413, 415)  # the rest of the body is not wanted: no keep-alive after it
    return reply


# ---------------------------------------------------------------------------------------------
# JSON


class _Chunks:
    """A large JSON text handed to ``load`` in steps: each ``read`` is Python code, where the
    parsing thread lets the GIL go, so the event loop thread runs between the steps."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.view, self.pos = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n < 0 else self.pos + n
        out = bytes(self.view[self.pos : end])
        self.pos += len(out)
        return out


_LOAD_STEP = 1 << 20


def _loads(data: bytes | bytearray) -> Any:
    if len(data) > _LOAD_STEP and _json.__name__ == "rapidjson":
        return _json.load(_Chunks(data), chunk_size=_LOAD_STEP)
    return _json.loads(data)


def dumps(obj: Any) -> bytes:
    return _json.dumps(obj, default=_plain, **_DUMPS_OPTIONS).encode()


def _plain(x: Any) -> Any:
    """JSON fallback for numpy scalars and arrays."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def json_reply(obj: Any, status: int = 200) -> Reply:
    return Reply(status, dumps(obj), {"Content-Type": "application/json"})


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def json_depth(data: bytes | bytearray) -> int:
    """How deeply the arrays and objects of a JSON text nest, found without parsing it (strings skipped)."""
    if b"\\" in data:  # escaped backslashes, then escaped quotes, cannot end a string
        data = bytes(data).replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = np.frombuffer(data.translate(None, _NOT_STRUCTURE), np.uint8)
    outside = (np.cumsum(marks == ord('"'), dtype=np.int32) & 1) == 0
    step = ((marks == ord("[")) | (marks == ord("{"))).astype(np.int8) - ((marks == ord("]")) | (marks == ord("}")))
    step *= outside
    return int(np.cumsum(step, dtype=np.int32).max()) if step.size else 0


def _parse_json(data: bytes | bytearray, max_depth: int) -> Any:
    if data.count(b"[") + data.count(b"{") > max_depth and json_depth(data) > max_depth:
        raise ServeError(f"the JSON in the request nests deeper than {max_depth} levels (--max-json-depth)", 400)
    try:
        return _loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ServeError(f"malformed JSON in the request: {one_line(e, typed=True)}", 400) from None


def proto_to_json(message: Any) -> dict:
    """A protobuf message as Triton's HTTP JSON: proto field names, every field, 64-bit ints as numbers."""
    d = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _fix_ints(message.DESCRIPTOR, d)


def _fix_ints(desc: Any, d: dict) -> dict:
    """json_format writes int64/uint64 as strings; Triton writes numbers."""
    for key, value in d.items():
        field_ = desc.fields_by_name.get(key)
        if field_ is None:
            continue
        sub = field_.message_type
        if sub is not None and sub.GetOptions().map_entry:  # ModelConfig / stats maps hold strings or messages
            vf = sub.fields_by_name["value"]
            if vf.message_type is not None:
                for item in value.values():
                    _fix_ints(vf.message_type, item)
        elif sub is not None:
            for item in value if isinstance(value, list) else [value]:
                _fix_ints(sub, item)
        elif field_.cpp_type in _INT64:
            d[key] = [int(x) for x in value] if isinstance(value, list) else int(value)
    return d


_OPENAPI: bytes | None = None


def openapi_document() -> bytes:
    """The OpenAPI 3 document of this REST API (``openapi.json`` beside this module), read once."""
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = resources.files("slipway.serve").joinpath("openapi.json").read_bytes()
    return _OPENAPI


# ---------------------------------------------------------------------------------------------
# request bodies


def _content_length(headers: Headers) -> int | None:
    text = (headers.get("Content-Length") or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None


async def read_body(call: Call) -> bytes | bytearray:
    """The whole (decompressed) body: at most ``body_bytes`` (413), within ``body_seconds`` (408).

    Memory grows with the bytes that arrive, never with what ``Content-Length`` declares, and never
    past ``body_bytes`` (a chunk that would take it there is refused before it is kept).
    """
    limits = call.limits
    limit = limits.body_bytes
    n = _content_length(call.headers)
    if n is not None and n > limit:
        raise ServeError(f"request body of {n} bytes exceeds the limit of {limit} bytes (--max-body-mb)", 413)
    coding = (call.headers.get("Content-Encoding") or "").strip().lower()
    if coding not in ("", "identity", *_CODINGS):
        raise ServeError(f"Content-Encoding {coding!r} is not supported (gzip, deflate or identity)", 415)
    try:
        async with asyncio.timeout(limits.body_seconds):
            if coding in _CODINGS:
                return await _read_compressed(call.read_chunk, coding, limit)
            return await _read_plain(call.read_chunk, limit)
    except TimeoutError:
        raise ServeError(f"the request body did not arrive within {limits.body_seconds:g} s (--body-timeout)",
                         408) from None
    except ConnectionError:
        raise ServeError("the client closed the connection before the body was complete", 400) from None


def _too_large(n: int, limit: int, what: str = "") -> ServeError:
    return ServeError(f"request body of at least {n} bytes{what} exceeds the limit of {limit} bytes (--max-body-mb)",
                      413)


async def _read_plain(read: Callable[[], Awaitable[bytes]], limit: int) -> bytes | bytearray:
    first = await read()
    if len(first) > limit:
        raise _too_large(len(first), limit)
    chunk = await read()
    if not chunk:
        return first  # the usual case for small bodies: no copy at all
    body = bytearray(first)
    while chunk:
        if len(body) + len(chunk) > limit:
            raise _too_large(len(body) + len(chunk), limit)
        body += chunk
        chunk = await read()
    return body


async def _read_compressed(read: Callable[[], Awaitable[bytes]], coding: str, limit: int) -> bytearray:
    body = bytearray()
    inflate = None
    try:
        while chunk := await read():
            if inflate is None:  # deflate is zlib-wrapped by the RFC; raw deflate streams are common too
                raw = coding == "deflate" and (chunk[0] & 0x0F) != 8
                inflate = zlib.decompressobj(-zlib.MAX_WBITS if raw else 16 + zlib.MAX_WBITS if coding != "deflate"
                                             else zlib.MAX_WBITS)
            if inflate.eof:
                raise ServeError(f"could not read the request body: data after the end of the {coding} stream", 400)
            room = limit - len(body)
            body += inflate.decompress(chunk, room + 1)
            if len(body) > limit:
                raise _too_large(len(body), limit, " (decompressed)")
    except zlib.error as e:
        raise ServeError(f"could not read the request body: not valid {coding} data ({e})", 400) from None
    if inflate is not None and not inflate.eof:
        raise ServeError(f"could not read the request body: the {coding} stream is cut off before its end", 400)
    return body


async def _json_body(call: Call) -> dict:
    """An optional JSON object body (empty -> {})."""
    body = await read_body(call)
    if not body.strip():
        return {}
    obj = _parse_json(body, call.limits.json_depth)
    if not isinstance(obj, dict):
        raise ServeError("request body must be a JSON object", 400)
    return obj


def _parameters(obj: dict, what: str) -> dict:
    p = obj.get("parameters", {})
    if not isinstance(p, dict):
        raise ServeError(f"{what}: 'parameters' must be a JSON object", 400)
    return p


# ---------------------------------------------------------------------------------------------
# small routes


def _bool_status(ok: bool, what: str) -> Reply:
    return Reply() if ok else json_reply({"error": f"{what} is not ready"}, 400)


def _version(call: Call) -> str:
    return call.params.get("version", "")


async def live(call: Call) -> Reply:
    return Reply() if call.plane.live() else json_reply({"error": "server is not live"}, 400)


async def ready(call: Call) -> Reply:
    return _bool_status(call.plane.ready(), "server")


async def server_metadata(call: Call) -> Reply:
    return json_reply(call.plane.metadata())


async def model_ready(call: Call) -> Reply:
    name = call.params["model"]
    return _bool_status(call.plane.model_ready(name, _version(call)), f"model {name!r}")


async def model_metadata(call: Call) -> Reply:
    return json_reply(call.plane.model_metadata(call.params["model"], _version(call)))


async def model_config(call: Call) -> Reply:
    return json_reply(proto_to_json(call.plane.model_config(call.params["model"], _version(call))))


async def stats(call: Call) -> Reply:
    return json_reply(proto_to_json(call.plane.model_statistics(call.params.get("model", ""), _version(call))))


async def openapi(call: Call) -> Reply:
    return Reply(body=openapi_document(), headers={"Content-Type": "application/json"})


def metrics_route(metrics: Callable[[], tuple[bytes, str]]) -> Handler:
    """GET /metrics: Prometheus text from ``metrics()`` (also the metrics port's only route)."""

    async def handler(call: Call) -> Reply:
        body, content_type = metrics()
        return Reply(body=body, headers={"Content-Type": content_type})

    return handler


async def repository_index(call: Call) -> Reply:
    body = await _json_body(call)
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise ServeError(f"'ready' must be true or false, got {ready_only!r}", 400)
    return json_reply(call.plane.repository_index(ready_only=ready_only))


async def load(call: Call) -> Reply:
    parameters = _parameters(await _json_body(call), "load request")
    config = parameters.get("config")
    if config is not None and not isinstance(config, str):
        raise ServeError("load parameter 'config' must be a string holding the model config as JSON", 400)
    await call.plane.load_model(call.params["model"], parameters or None)
    return Reply()


async def unload(call: Call) -> Reply:
    parameters = _parameters(await _json_body(call), "unload request")
    await call.plane.unload_model(call.params["model"], parameters or None)
    return Reply()


def _cuda(call: Call) -> bool:
    return call.path.startswith("/v2/cuda")


async def shm_status(call: Call) -> Reply:
    if _cuda(call):  # nothing is ever registered there
        if "name" in call.params:
            raise ServeError(f"CUDA shared memory region {call.params['name']!r} is not registered", 400)
        return json_reply([])
    return json_reply(call.plane.shm_status(call.params.get("name", "")))


async def shm_register(call: Call) -> Reply:
    body = await _json_body(call)
    plane, name = call.plane, call.params["name"]
    if _cuda(call):
        plane.cuda_shm_register(name)
    plane.shm_register(name, body.get("key"), body.get("offset", 0), body.get("byte_size"))
    return Reply()


async def shm_unregister(call: Call) -> Reply:
    await read_body(call)  # an empty body (anything else is ignored, as Triton)
    if not _cuda(call):
        call.plane.shm_unregister(call.params.get("name", ""))
    return Reply()


# ---------------------------------------------------------------------------------------------
# infer


async def infer(call: Call, decode: Decode) -> Reply:
    body = await read_body(call)
    args = (call.params["model"], _version(call), body, call.headers.get(HEADER_LENGTH),
            call.headers.get("X-Request-ID", ""), call.limits)
    if len(body) > OFFLOAD_BYTES:  # parsing megabytes would stall every other connection
        req, binary = await asyncio.get_running_loop().run_in_executor(None, decode, *args)
    else:
        req, binary = decode(*args)
    if req.id:
        call.request_id = req.id
    result = await call.plane.infer(req)
    payload, header_length = encode_infer(result, binary)
    if header_length is None:
        reply = Reply(body=payload, headers={"Content-Type": "application/json"})
    else:
        reply = Reply(body=payload, headers={"Content-Type": "application/octet-stream",
                                             HEADER_LENGTH: str(header_length)})
    accept = call.headers.get("Accept-Encoding")
    if accept and len(payload) >= MIN_COMPRESS_BYTES:
        reply.coding = response_coding(accept)
    return reply


def response_coding(accept: str) -> str | None:
    """gzip or deflate, whichever ``Accept-Encoding`` weighs highest (first on a tie); else None."""
    best, best_q = None, 0.0
    for item in accept.lower().split(","):
        name, _, rest = item.partition(";")
        name = name.strip()
        if name not in ("gzip", "deflate"):
            continue
        q = 1.0
        rest = rest.strip()
        if rest.startswith("q="):
            try:
                q = float(rest[2:])
            except ValueError:
                q = 0.0
        if q > best_q:
            best, best_q = name, q
    return best


def decode_infer(model: str, version: str, body: bytes | bytearray, header_length: str | None,
                 request_id: str = "", limits: Limits | None = None,
                 ) -> tuple[InferRequest, tuple[bool, dict[str, bool]]]:
    """An infer body -> (InferRequest, (binary by default, binary per requested output)).

    Only the body's syntax and the limits are checked here (JSON, binary sizes, tensor data, tensor
    and element counts); what the request asks for is checked by the data plane
    (:mod:`slipway.serve.request`), the same for gRPC.
    """
    limits = limits or Limits()
    total = len(body)
    if header_length is None:
        n = total
        header = _parse_json(body, limits.json_depth)
    else:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit()):  # int() would also take "+1", "1_0" and non-ASCII digits
            raise ServeError(f"{HEADER_LENGTH} must be an integer (decimal digits), got {header_length!r}", 400)
        n = int(text)
        if n < 0 or n > total:
            raise ServeError(f"{HEADER_LENGTH} is {n} but the request body has {total} bytes", 400)
        header = _parse_json(bytes(memoryview(body)[:n]) if n < total else body, limits.json_depth)
    if not isinstance(header, dict):
        raise ServeError("inference request must be a JSON object", 400)
    rid = header.get("id", "")
    if not isinstance(rid, str):
        raise ServeError(f"'id' must be a string, got {rid!r}", 400)
    parameters = _request_parameters(header.get("parameters"))
    items, wanted = header.get("inputs"), header.get("outputs")
    count = (len(items) if isinstance(items, list) else 0) + (len(wanted) if isinstance(wanted, list) else 0)
    if count > limits.inputs:
        raise too_many_tensors(count, limits.inputs)
    inputs = _decode_inputs(items, body, n, limits.elements)
    outputs, per_output = _decode_outputs(header.get("outputs"))
    request = InferRequest(model=model, version=version, id=rid or request_id, inputs=inputs, outputs=outputs,
                           parameters=parameters)
    return request, (parameters.get("binary_data_output", False), per_output)


def _request_parameters(p: Any) -> dict[str, Any]:
    """The JSON form of the request parameters; their values are checked by the data plane."""
    if p is None:
        return {}
    if not isinstance(p, dict):
        raise ServeError("request 'parameters' must be a JSON object", 400)
    return p


def _decode_inputs(items: Any, body: bytes | bytearray, pos: int, max_elements: int) -> list[InferTensor]:
    if not isinstance(items, list):
        raise ServeError("'inputs' must be a list of tensors", 400)
    view = memoryview(body)
    total = len(body)
    start = pos
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ServeError(f"each input must be a JSON object, got {item!r:.80}", 400)
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str):
            raise ServeError(f"input name must be a string, got {name!r:.80}", 400)
        if not isinstance(datatype, str):
            raise ServeError(f"input {name!r}: 'datatype' must be a string, got {datatype!r:.80}", 400)
        shape = tensors.check_shape(name, item.get("shape"))
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise ServeError(f"input {name!r}: 'parameters' must be a JSON object", 400)
        size = params.get("binary_data_size")
        if tensors.shared_memory_input(params):  # read from its region by the data plane
            if size is not None or "data" in item:
                raise tensors.data_and_shared_memory(name)
            data = None
        elif size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ServeError(f"input {name!r}: binary_data_size must be a non-negative integer", 400)
            if "data" in item:
                raise ServeError(f"input {name!r} has both 'data' and binary_data_size", 400)
            if pos + size > total:
                raise ServeError(f"input {name!r}: binary_data_size {size} runs past the end of the request body "
                                 f"({total - pos} bytes left)", 400)
            data = tensors.from_raw(name, view[pos : pos + size], datatype, shape, max_elements)
            pos += size
            params = {k: v for k, v in params.items() if k != "binary_data_size"}
        elif "data" in item:
            data = tensors.from_json(name, item["data"], datatype, shape, max_elements, start)
        else:
            raise ServeError(f"input {name!r} has neither 'data' nor binary_data_size", 400)
        out.append(InferTensor(name, datatype, shape, data, params))
    if pos != total:
        raise ServeError(f"the request body has {total - pos} bytes after the JSON header that no input claims "
                         f"(inputs' binary_data_size add up to {pos - start})", 400)
    return out


def _decode_outputs(items: Any) -> tuple[list[RequestedOutput], dict[str, bool]]:
    if items is None:
        return [], {}
    if not isinstance(items, list):
        raise ServeError("'outputs' must be a list", 400)
    outputs, binary = [], {}
    for item in items:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise ServeError(f"each requested output needs a string 'name', got {item!r:.80}", 400)
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise ServeError(f"output {name!r}: 'parameters' must be a JSON object", 400)
        if "binary_data" in params:
            binary[name] = params["binary_data"]  # true/false: checked by the data plane
        outputs.append(RequestedOutput(name, params))
    return outputs, binary


def encode_infer(result: InferResponse, binary: tuple[bool, dict[str, bool]]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is all JSON)."""
    default, per_output = binary
    entries, blobs = [], []
    for t in result.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
        params = dict(t.parameters) if t.parameters else {}
        if t.data is None:  # written into shared memory: its parameters say where
            pass
        elif per_output.get(t.name, default):
            raw = _raw(t.data, t.datatype)
            params["binary_data_size"] = len(raw)
            blobs.append(raw)
        else:
            entry["data"] = tensors.to_json(t.data)
        if params:
            entry["parameters"] = params
        entries.append(entry)
    head: dict[str, Any] = {"model_name": result.model, "model_version": result.version}
    if result.id:
        head["id"] = result.id
    if result.parameters:
        head["parameters"] = result.parameters
    head["outputs"] = entries
    header = dumps(head)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _raw(array: np.ndarray, datatype: str) -> bytes | memoryview:
    if datatype == "BYTES":
        return tensors.to_raw(array)
    flat = np.ascontiguousarray(array).reshape(-1)
    return memoryview(flat.view(np.uint8))
