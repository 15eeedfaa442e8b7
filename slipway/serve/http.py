"""KServe v2 / Open Inference Protocol over HTTP/REST (Triton's paths and error shape), on aiohttp.

A thin adapter: the routes, their handlers, the body codecs and the error answers are
:mod:`slipway.serve.rest`'s (shared with the ASGI adapter, :mod:`slipway.serve.asgi`); this module
turns an aiohttp request into a :class:`rest.Call` and a :class:`rest.Reply` into an aiohttp
response. Errors are mapped in one middleware: :class:`ServeError` becomes its status with
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
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

import slipway.serve.rest as rest
from slipway.errors import ServeError, one_line
from slipway.serve.limits import Limits, LogLimiter
from slipway.serve.rest import OFFLOAD_BYTES, decode_infer
from slipway.serve.types import Plane

__all__ = ["make_app", "make_metrics_app", "start_site", "OFFLOAD_BYTES", "decode_infer"]

log = logging.getLogger("slipway.serve")

_PLANE = web.AppKey("plane", Plane)
_LIMITS = web.AppKey("limits", Limits)
_LOG = web.AppKey("log", LogLimiter)
_CALL = web.RequestKey("call", rest.Call)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _application(limits: Limits, token: str | None) -> web.Application:
    middlewares: list = [_errors]
    if token:
        middlewares.append(_auth_middleware(token, limits.metrics_auth))
    # the app's own protocol settings, whatever runner serves it: keep-alive timer = header timeout,
    # bodies decompressed by rest.read_body (limits, errors), not by the parser
    handler_args = {"keepalive_timeout": limits.header_seconds, "auto_decompress": False}
    app = web.Application(client_max_size=limits.body_bytes, middlewares=middlewares, handler_args=handler_args)
    app[_LIMITS] = limits
    app[_LOG] = LogLimiter(log)
    return app


def _add_routes(app: web.Application, table: list[tuple[str, dict[str, rest.Handler]]]) -> None:
    for path, methods in table:
        for method, handler in methods.items():
            app.router.add_route(method, path, _handler(handler))
            if method == "GET":  # as add_get: HEAD too
                app.router.add_route("HEAD", path, _handler(handler))


def make_app(plane: Plane, *, limits: Limits | None = None, token: str | None = None,
             metrics: Callable[[], tuple[bytes, str]] | None = None) -> web.Application:
    """The aiohttp application serving ``plane``; the caller runs it (:func:`start_site`, or AppRunner + TCPSite)."""
    app = _application(limits or Limits(), token)
    app[_PLANE] = plane
    _add_routes(app, rest.routes(metrics=metrics, decode=decode_infer))
    return app


def make_metrics_app(metrics: Callable[[], tuple[bytes, str]], *, limits: Limits | None = None,
                     token: str | None = None) -> web.Application:
    """The metrics port's application: GET /metrics only (behind the token when ``limits.metrics_auth``)."""
    app = _application(limits or Limits(), token)
    _add_routes(app, [("/metrics", {"GET": rest.metrics_route(metrics)})])
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
        body = rest.dumps({"error": message})
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        transport.write(head + body)  # type: ignore[attr-defined]
        transport.close()
        _CONNECTION_LOG.log(logging.WARNING, "connections", "refused a connection: %s", message)


# ---------------------------------------------------------------------------------------------
# aiohttp <-> rest


def _call(request: web.Request) -> rest.Call:
    async def read_chunk() -> bytes:
        content = request.content
        if content.at_eof():  # the whole body is in (the usual case after the first chunk): no wait for EOF
            return b""
        try:
            return await content.readany()
        except (HttpProcessingError, RequestPayloadError) as e:
            cause = e if isinstance(e, HttpProcessingError) else e.__cause__
            message = cause.message if isinstance(cause, HttpProcessingError) else one_line(e, typed=True)
            raise ServeError(f"could not read the request body: {message}", 400) from None

    return rest.Call(cast(Plane, request.app.get(_PLANE)), request.app[_LIMITS], request.method, request.path,
                     request.headers, read_chunk, request.match_info)


def _response(reply: rest.Reply) -> web.Response:
    response = web.Response(body=reply.body or None, status=reply.status, headers=reply.headers)
    if reply.coding is not None:
        response.enable_compression(web.ContentCoding(reply.coding))
    if reply.close:
        response.force_close()
    return response


def _handler(handler: rest.Handler) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        return _response(await handler(request[_CALL]))

    return serve


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    call = request[_CALL] = _call(request)
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        error = (rest.no_route(request.method, request.path, e.status == 405) if e.status in (404, 405)
                 else ServeError(e.reason, e.status))
        return _response(rest.failure(call, error, request.app[_LOG]))
    except Exception as e:
        return _response(rest.failure(call, e, request.app[_LOG]))
    finally:  # request -> call -> its read_chunk -> request: a cycle only the cyclic GC would free, per request
        del request[_CALL]


def _auth_middleware(token: str, metrics_auth: bool) -> Callable:
    expected = token.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        rest.authorize(request[_CALL], expected, metrics_auth)
        return await handler(request)

    return auth
