"""KServe v2 / Open Inference Protocol over HTTP/REST (Triton's paths and error shape), on aiohttp.

A thin adapter: each route decodes the request, calls the :class:`DataPlane` and encodes its
answer. Errors are mapped in one middleware: :class:`ServeError` becomes its status with
``{"error": "..."}`` (Triton's shape); anything else becomes a 500 and a server-side traceback.

Infer bodies are JSON or Triton's binary tensor data extension (``Inference-Header-Content-Length``:
JSON header, then the inputs' raw bytes in input order). Binary inputs are numpy views of the
request body (no copy); the response is one ``bytes`` join of the JSON header and the outputs'
raw bytes. Infer responses are compressed when ``Accept-Encoding`` asks for gzip or deflate (as
Triton does) and the body is worth it. Triton's system shared-memory extension: the
``/v2/systemsharedmemory`` routes call the data plane's registry; an input whose parameters name a
region carries no data here (the data plane reads it: :mod:`slipway.serve.shm`), an output written
into a region goes back with its parameters and no data. CUDA shared memory: nothing registered.

What a client sends decides how much the server spends only up to :class:`Limits`: the body is read
in the chunks that arrive (a declared ``Content-Length`` reserves nothing) and decompressed here
(gzip / deflate; another ``Content-Encoding`` is a 415, a cut-off stream a 400), up to
``body_bytes`` (413) within ``body_seconds`` (408); the request line and headers must come within
``header_seconds`` (aiohttp's keep-alive timer, which closes a connection that has not sent a
whole request head in that time; an idle keep-alive connection is closed after as long); JSON
nesting past ``json_depth`` is a 400 found before parsing; bodies over ``OFFLOAD_BYTES`` are
decoded in a worker thread, in steps that let the event loop run (health checks stay fast);
:func:`start_site` answers connections past ``connections`` with a 503 and closes them. Client
errors are logged without a traceback and rate-limited (:class:`LogLimiter`).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import numpy as np
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
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


def _dumps(obj: Any) -> bytes:
    return _json.dumps(obj, default=_plain, **_DUMPS_OPTIONS).encode()


__all__ = ["make_app", "make_metrics_app", "start_site", "OFFLOAD_BYTES"]

log = logging.getLogger("slipway.serve")

HEADER_LENGTH = "Inference-Header-Content-Length"
MIN_COMPRESS_BYTES = 1024  # smaller infer responses are sent as they are even when gzip is acceptable
OFFLOAD_BYTES = 1 << 20  # larger infer bodies are decoded in a worker thread, off the event loop
_CODINGS = ("gzip", "x-gzip", "deflate")
_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
_PLANE = web.AppKey("plane", Plane)
_LIMITS = web.AppKey("limits", Limits)
_LOG = web.AppKey("log", LogLimiter)
_REQUEST_ID = web.RequestKey("request_id", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _application(limits: Limits, token: str | None) -> web.Application:
    middlewares: list = [_errors]
    if token:
        middlewares.append(_auth_middleware(token, limits.metrics_auth))
    # the app's own protocol settings, whatever runner serves it: keep-alive timer = header timeout,
    # bodies decompressed by _read_body (limits, errors), not by the parser
    handler_args = {"keepalive_timeout": limits.header_seconds, "auto_decompress": False}
    app = web.Application(client_max_size=limits.body_bytes, middlewares=middlewares, handler_args=handler_args)
    app[_LIMITS] = limits
    app[_LOG] = LogLimiter(log)
    return app


def make_app(plane: Plane, *, limits: Limits | None = None, token: str | None = None,
             metrics: Callable[[], tuple[bytes, str]] | None = None) -> web.Application:
    """The aiohttp application serving ``plane``; the caller runs it (:func:`start_site`, or AppRunner + TCPSite)."""
    app = _application(limits or Limits(), token)
    app[_PLANE] = plane
    m, v = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    app.router.add_get("/v2/health/live", _live)
    app.router.add_get("/v2/health/ready", _ready)
    app.router.add_get("/v2", _server_metadata)
    app.router.add_get("/v2/models/stats", _stats)
    app.router.add_post("/v2/repository/index", _repository_index)
    app.router.add_post("/v2/repository/models/{model}/load", _load)
    app.router.add_post("/v2/repository/models/{model}/unload", _unload)
    for kind in ("system", "cuda"):  # Triton's shared-memory extensions (CUDA's: refused, see serve/shm.py)
        for base in (f"/v2/{kind}sharedmemory", f"/v2/{kind}sharedmemory/region/{{name}}"):
            app.router.add_get(base + "/status", _shm_status)
            app.router.add_post(base + "/unregister", _shm_unregister)
        app.router.add_post(f"/v2/{kind}sharedmemory/region/{{name}}/register", _shm_register)
    for base in (m, v):
        app.router.add_get(base, _model_metadata)
        app.router.add_get(base + "/ready", _model_ready)
        app.router.add_get(base + "/config", _model_config)
        app.router.add_get(base + "/stats", _stats)
        app.router.add_post(base + "/infer", _infer)
    if metrics is not None:
        app.router.add_get("/metrics", metrics_handler(metrics))
    app.router.add_get("/v2/openapi.json", _openapi)
    return app


_OPENAPI: bytes | None = None


def openapi_document() -> bytes:
    """The OpenAPI 3 document of this REST API (``openapi.json`` beside this module), read once."""
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = resources.files("slipway.serve").joinpath("openapi.json").read_bytes()
    return _OPENAPI


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_document(), content_type="application/json")


def make_metrics_app(metrics: Callable[[], tuple[bytes, str]], *, limits: Limits | None = None,
                     token: str | None = None) -> web.Application:
    """The metrics port's application: GET /metrics only (behind the token when ``limits.metrics_auth``)."""
    app = _application(limits or Limits(), token)
    app.router.add_get("/metrics", metrics_handler(metrics))
    return app


async def start_site(app: web.Application, host: str, port: int, *, connections: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on host:port with at most ``connections`` open client connections (a connection
    past that gets a 503 and is closed at once). Returns (runner, bound port); ``runner.cleanup()`` stops it."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = _LimitedSite(runner, host, port, connections=connections, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[-1][1])


class _LimitedSite(web.TCPSite):
    def __init__(self, runner: web.AppRunner, host: str, port: int, *, connections: int, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.limit = connections

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        limit = self.limit

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= limit:
                return _Refused(limit)
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address)
        self._bound_port = self._server.sockets[0].getsockname()[1]


_CONNECTION_LOG = LogLimiter(log)


class _Refused(asyncio.Protocol):
    """A connection past --max-connections: a 503 (the client may not have sent its request yet) and close."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        message = f"too many open connections: the server takes {self.limit} (--max-connections)"
        body = _dumps({"error": message})
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        transport.write(head + body)  # type: ignore[attr-defined]
        transport.close()
        _CONNECTION_LOG.log(logging.WARNING, "connections", "refused a connection: %s", message)


# ---------------------------------------------------------------------------------------------
# errors and auth


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServeError as e:
        status = e.status if 400 <= e.status <= 599 else 500
        return _failed(request, status, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.status == 404:
            message = f"unknown path {request.path}"
        elif e.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        else:
            message = e.reason
        return _failed(request, e.status, message)
    except RecursionError:
        return _failed(request, 400, "the request is nested too deeply")
    except Exception as e:
        return _failed(request, 500, f"internal error: {one_line(e, typed=True)}", exc=e)


def _failed(request: web.Request, status: int, message: str, exc: BaseException | None = None) -> web.Response:
    """The JSON error answer, and a log line: client errors without a traceback, one line per kind of
    message per interval (the count of repeats on the next; at most LogLimiter.at_most lines per
    interval in all); unexpected errors with one traceback per
    kind (type and raising line) per interval."""
    message = public_message(message)
    level = logging.ERROR if status == 500 else logging.WARNING if status > 500 else logging.INFO
    rid = request.get(_REQUEST_ID) or request.headers.get("X-Request-ID", "")
    kind = error_kind(exc) if exc is not None else (status, request.path, message)
    request.app[_LOG].log(level, kind, "request failed: method=%s path=%s status=%d id=%r error=%r",
                          request.method, request.path, status, rid, message, exc_info=exc)
    response = _json_response({"error": message}, status)
    if status == 401:
        response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
    if status in (408, 413, 415):  # the rest of the body is not wanted: no keep-alive after it
        response.force_close()
    return response


def _auth_middleware(token: str, metrics_auth: bool) -> Callable:
    expected = token.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not (path.startswith("/v2/health/") or (path == "/metrics" and not metrics_auth)):
            if not bearer_matches(request.headers.getall(hdrs.AUTHORIZATION, ()), expected):
                raise ServeError("missing or wrong bearer token", 401)
        return await handler(request)

    return auth


# ---------------------------------------------------------------------------------------------
# small routes


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(obj), status=status, content_type="application/json")


def _plain(x: Any) -> Any:
    """JSON fallback for numpy scalars and arrays."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def _bool_status(ok: bool, what: str) -> web.Response:
    return web.Response(status=200) if ok else _json_response({"error": f"{what} is not ready"}, 400)


def _version(request: web.Request) -> str:
    return request.match_info.get("version", "")


async def _live(request: web.Request) -> web.Response:
    ok = request.app[_PLANE].live()
    return web.Response(status=200) if ok else _json_response({"error": "server is not live"}, 400)


async def _ready(request: web.Request) -> web.Response:
    return _bool_status(request.app[_PLANE].ready(), "server")


async def _server_metadata(request: web.Request) -> web.Response:
    return _json_response(request.app[_PLANE].metadata())


async def _model_ready(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    return _bool_status(request.app[_PLANE].model_ready(name, _version(request)), f"model {name!r}")


async def _model_metadata(request: web.Request) -> web.Response:
    return _json_response(request.app[_PLANE].model_metadata(request.match_info["model"], _version(request)))


async def _model_config(request: web.Request) -> web.Response:
    config = request.app[_PLANE].model_config(request.match_info["model"], _version(request))
    return _json_response(proto_to_json(config))


async def _stats(request: web.Request) -> web.Response:
    stats = request.app[_PLANE].model_statistics(request.match_info.get("model", ""), _version(request))
    return _json_response(proto_to_json(stats))


def proto_to_json(message: Any) -> dict:
    """A protobuf message as Triton's HTTP JSON: proto field names, every field, 64-bit ints as numbers."""
    d = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _fix_ints(message.DESCRIPTOR, d)


def _fix_ints(desc: Any, d: dict) -> dict:
    """json_format writes int64/uint64 as strings; Triton writes numbers."""
    for key, value in d.items():
        field = desc.fields_by_name.get(key)
        if field is None:
            continue
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:  # ModelConfig / stats maps hold strings or messages
            vf = sub.fields_by_name["value"]
            if vf.message_type is not None:
                for item in value.values():
                    _fix_ints(vf.message_type, item)
        elif sub is not None:
            for item in value if isinstance(value, list) else [value]:
                _fix_ints(sub, item)
        elif field.cpp_type in _INT64:
            d[key] = [int(x) for x in value] if isinstance(value, list) else int(value)
    return d


async def _repository_index(request: web.Request) -> web.Response:
    body = await _json_body(request)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise ServeError(f"'ready' must be true or false, got {ready!r}", 400)
    return _json_response(request.app[_PLANE].repository_index(ready_only=ready))


async def _load(request: web.Request) -> web.Response:
    parameters = _parameters(await _json_body(request), "load request")
    config = parameters.get("config")
    if config is not None and not isinstance(config, str):
        raise ServeError("load parameter 'config' must be a string holding the model config as JSON", 400)
    await request.app[_PLANE].load_model(request.match_info["model"], parameters or None)
    return web.Response(status=200)


async def _unload(request: web.Request) -> web.Response:
    parameters = _parameters(await _json_body(request), "unload request")
    await request.app[_PLANE].unload_model(request.match_info["model"], parameters or None)
    return web.Response(status=200)


def _cuda(request: web.Request) -> bool:
    return request.path.startswith("/v2/cuda")


async def _shm_status(request: web.Request) -> web.Response:
    if _cuda(request):  # nothing is ever registered there
        if "name" in request.match_info:
            raise ServeError(f"CUDA shared memory region {request.match_info['name']!r} is not registered", 400)
        return _json_response([])
    return _json_response(request.app[_PLANE].shm_status(request.match_info.get("name", "")))


async def _shm_register(request: web.Request) -> web.Response:
    body = await _json_body(request)
    plane, name = request.app[_PLANE], request.match_info["name"]
    if _cuda(request):
        plane.cuda_shm_register(name)
    plane.shm_register(name, body.get("key"), body.get("offset", 0), body.get("byte_size"))
    return web.Response(status=200)


async def _shm_unregister(request: web.Request) -> web.Response:
    await _read_body(request)  # an empty body (anything else is ignored, as Triton)
    if not _cuda(request):
        request.app[_PLANE].shm_unregister(request.match_info.get("name", ""))
    return web.Response(status=200)


def metrics_handler(metrics: Callable[[], tuple[bytes, str]]) -> Handler:
    """GET /metrics: Prometheus text from ``metrics()`` (also the metrics port's only route)."""

    async def handler(request: web.Request) -> web.Response:
        body, content_type = metrics()
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})

    return handler


# ---------------------------------------------------------------------------------------------
# request bodies


async def _read_body(request: web.Request) -> bytes | bytearray:
    """The whole (decompressed) body: at most ``body_bytes`` (413), within ``body_seconds`` (408).

    Memory grows with the bytes that arrive, never with what ``Content-Length`` declares.
    """
    limits = request.app[_LIMITS]
    limit = limits.body_bytes
    n = request.content_length
    if n is not None and n > limit:
        raise ServeError(f"request body of {n} bytes exceeds the limit of {limit} bytes (--max-body-mb)", 413)
    coding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if coding not in ("", "identity", *_CODINGS):
        raise ServeError(f"Content-Encoding {coding!r} is not supported (gzip, deflate or identity)", 415)
    try:
        async with asyncio.timeout(limits.body_seconds):
            if coding in _CODINGS:
                return await _read_compressed(request, coding, limit)
            return await _read_plain(request, limit)
    except TimeoutError:
        raise ServeError(f"the request body did not arrive within {limits.body_seconds:g} s (--body-timeout)",
                         408) from None
    except (HttpProcessingError, RequestPayloadError) as e:
        cause = e if isinstance(e, HttpProcessingError) else e.__cause__
        message = cause.message if isinstance(cause, HttpProcessingError) else one_line(e, typed=True)
        raise ServeError(f"could not read the request body: {message}", 400) from None
    except ConnectionError:
        raise ServeError("the client closed the connection before the body was complete", 400) from None


async def _read_plain(request: web.Request, limit: int) -> bytes | bytearray:
    content = request.content
    first = await content.readany()
    if content.at_eof():
        return first  # the usual case for small bodies: no copy at all
    body = bytearray(first)
    while len(body) <= limit and (chunk := await content.readany()):
        body += chunk
    if len(body) > limit:
        raise ServeError(f"request body of at least {len(body)} bytes exceeds the limit of {limit} bytes "
                         "(--max-body-mb)", 413)
    return body


async def _read_compressed(request: web.Request, coding: str, limit: int) -> bytearray:
    body = bytearray()
    inflate = None
    content = request.content
    try:
        while chunk := await content.readany():
            if inflate is None:  # deflate is zlib-wrapped by the RFC; raw deflate streams are common too
                raw = coding == "deflate" and (chunk[0] & 0x0F) != 8
                inflate = zlib.decompressobj(-zlib.MAX_WBITS if raw else 16 + zlib.MAX_WBITS if coding != "deflate"
                                             else zlib.MAX_WBITS)
            if inflate.eof:
                raise ServeError(f"could not read the request body: data after the end of the {coding} stream", 400)
            room = limit - len(body)
            body += inflate.decompress(chunk, room + 1)
            if len(body) > limit:
                raise ServeError(f"request body of at least {len(body)} bytes (decompressed) exceeds the limit of "
                                 f"{limit} bytes (--max-body-mb)", 413)
    except zlib.error as e:
        raise ServeError(f"could not read the request body: not valid {coding} data ({e})", 400) from None
    if inflate is not None and not inflate.eof:
        raise ServeError(f"could not read the request body: the {coding} stream is cut off before its end", 400)
    return body


async def _json_body(request: web.Request) -> dict:
    """An optional JSON object body (empty -> {})."""
    body = await _read_body(request)
    if not body.strip():
        return {}
    obj = _parse_json(body, request.app[_LIMITS].json_depth)
    if not isinstance(obj, dict):
        raise ServeError("request body must be a JSON object", 400)
    return obj


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


def _parameters(obj: dict, what: str) -> dict:
    p = obj.get("parameters", {})
    if not isinstance(p, dict):
        raise ServeError(f"{what}: 'parameters' must be a JSON object", 400)
    return p


# ---------------------------------------------------------------------------------------------
# infer


async def _infer(request: web.Request) -> web.Response:
    body = await _read_body(request)
    args = (request.match_info["model"], _version(request), body, request.headers.get(HEADER_LENGTH),
            request.headers.get("X-Request-ID", ""), request.app[_LIMITS])
    if len(body) > OFFLOAD_BYTES:  # parsing megabytes would stall every other connection
        req, binary = await asyncio.get_running_loop().run_in_executor(None, decode_infer, *args)
    else:
        req, binary = decode_infer(*args)
    if req.id:
        request[_REQUEST_ID] = req.id
    result = await request.app[_PLANE].infer(req)
    payload, header_length = encode_infer(result, binary)
    if header_length is None:
        response = web.Response(body=payload, content_type="application/json")
    else:
        response = web.Response(body=payload, content_type="application/octet-stream")
        response.headers[HEADER_LENGTH] = str(header_length)
    accept = request.headers.get(hdrs.ACCEPT_ENCODING)
    if accept and len(payload) >= MIN_COMPRESS_BYTES:
        coding = _response_coding(accept)
        if coding is not None:
            response.enable_compression(coding)
    return response


def _response_coding(accept: str) -> web.ContentCoding | None:
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
    return None if best is None else web.ContentCoding(best)


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
    header = _dumps(head)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _raw(array: np.ndarray, datatype: str) -> bytes | memoryview:
    if datatype == "BYTES":
        return tensors.to_raw(array)
    flat = np.ascontiguousarray(array).reshape(-1)
    return memoryview(flat.view(np.uint8))
