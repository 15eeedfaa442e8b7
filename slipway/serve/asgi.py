"""KServe v2 over HTTP/REST as a plain ASGI 3 application: for Ray Serve's HTTP proxy
(``@serve.ingress(lambda: app)``), uvicorn, or any ASGI server.

The same REST API as the aiohttp adapter (:mod:`slipway.serve.http`), because both only carry
:mod:`slipway.serve.rest`: the same routes (versioned paths, repository, shared memory, infer,
``/metrics`` when given, ``/v2/openapi.json``), JSON and Triton's binary tensor extension both ways,
gzip / deflate bodies, compressed answers, the same ``{"error": ...}`` answers with the same statuses,
the same bearer-token rule and the same log lines. No web framework: this module only turns ASGI
messages into a :class:`rest.Call` and a :class:`rest.Reply` into ASGI messages.

Use::

    from slipway.serve.asgi import make_asgi_app, plane_hooks
    from slipway.serve.dataplane import DataPlane
    from slipway.serve.repository import Repository

    plane = DataPlane(Repository("models/"))
    startup, shutdown = plane_hooks(plane)          # load the models / drain them
    app = make_asgi_app(plane, on_startup=startup, on_shutdown=shutdown)
    # uvicorn.run(app, lifespan="on")   or   @serve.ingress(lambda: app) on a Ray Serve deployment

The event loop: the data plane (its batchers, locks, futures) belongs to the loop that starts it,
and every request must come on that loop. So start it in the ASGI ``lifespan`` startup, which the
server runs on the loop that then serves the requests: that is what ``on_startup`` is for
(:func:`plane_hooks` gives the pair for a :class:`~slipway.serve.dataplane.DataPlane`; a failed
start fails the startup, so the server does not serve). Run the server with lifespan on (uvicorn's
``lifespan="on"``; Ray Serve runs an ingress app's lifespan itself). A plane that needs no start
(one already started on the serving loop, a test's fake) needs no hooks.

``metrics``: a callable returning (Prometheus text, content type) serves ``GET /metrics``, e.g.
``reg = slipway.serve.metrics.registry(plane)`` and ``lambda: slipway.serve.metrics.render(reg)``.

Limits (:class:`Limits`): ``body_bytes`` (413), ``body_seconds`` (408), the tensor, element and JSON
depth limits are enforced here as in http.py: the body is read from the ``http.request`` messages as
they come, never more than ``body_bytes`` kept, gzip / deflate decompressed within it; a large infer
body is decoded in a worker thread. ``header_seconds`` and ``connections`` belong to the server that
owns the sockets (uvicorn: ``timeout_keep_alive``, ``limit_concurrency``). ``websocket`` scopes are
refused (closed before the handshake); other scope types are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import slipway.serve.rest as rest
from slipway.errors import one_line
from slipway.serve.limits import Limits, LogLimiter
from slipway.serve.types import Plane

if TYPE_CHECKING:
    from slipway.serve.dataplane import DataPlane

__all__ = ["make_asgi_app", "plane_hooks", "AsgiApp"]

log = logging.getLogger("slipway.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Hook = Callable[[], Awaitable[Any]]


def make_asgi_app(plane: Plane, *, limits: Limits | None = None, token: str | None = None,
                  metrics: Callable[[], tuple[bytes, str]] | None = None,
                  on_startup: Hook | None = None, on_shutdown: Hook | None = None) -> AsgiApp:
    """The ASGI 3 application serving ``plane`` (the same REST API as ``http.make_app``).

    ``on_startup`` / ``on_shutdown``: awaited on the ASGI ``lifespan`` startup / shutdown, on the
    loop that serves the requests (start the data plane there: :func:`plane_hooks`); an exception
    fails that lifespan step with its one-line message.
    """
    return AsgiApp(plane, limits or Limits(), token, metrics, on_startup, on_shutdown)


def plane_hooks(plane: DataPlane, *, exit_on_error: bool = True,
                drain_seconds: float = 30.0) -> tuple[Hook, Hook]:
    """(on_startup, on_shutdown) for a :class:`~slipway.serve.dataplane.DataPlane`, as ``Server`` runs one:
    startup loads the models (a model that fails to load fails the startup unless ``exit_on_error`` is
    False) and polls the repository in ``poll`` mode; shutdown stops admitting, finishes in-flight
    requests (up to ``drain_seconds``) and unloads."""
    async def startup() -> None:
        await plane.open(exit_on_error)
        plane.poll_in_background()

    async def shutdown() -> None:
        await plane.close(True, drain_seconds)

    return startup, shutdown


class _Headers:
    """An ASGI header list as :class:`rest.Headers` (names in any case)."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.items = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]

    def get(self, key: str, default: Any = None) -> Any:
        key = key.lower()
        return next((v for k, v in self.items if k == key), default)

    def getall(self, key: str, default: Any = ()) -> list[str]:
        key = key.lower()
        return [v for k, v in self.items if k == key] or list(default)


def _compile(pattern: str) -> re.Pattern[str]:
    """A rest route pattern as a regex over the raw (still percent-encoded) path; ``{name}`` is one
    segment, as aiohttp's router matches it."""
    parts = re.split(r"\{(\w+)\}", pattern)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^{{}}/]+)" for i, p in enumerate(parts))
    return re.compile(regex + r"\Z")


class AsgiApp:
    """The ASGI 3 callable :func:`make_asgi_app` returns (``plane``, ``limits``: what it serves)."""

    def __init__(self, plane: Plane, limits: Limits, token: str | None,
                 metrics: Callable[[], tuple[bytes, str]] | None, on_startup: Hook | None,
                 on_shutdown: Hook | None) -> None:
        self.plane, self.limits = plane, limits
        self._token = token.encode() if token else None
        self._routes = [(_compile(path), methods) for path, methods in rest.routes(metrics=metrics)]
        self._hooks = {"startup": on_startup, "shutdown": on_shutdown}
        self._log = LogLimiter(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":  # no websocket API: refused before the handshake (the server answers 403)
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    # -- lifespan -------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            step = message["type"].rpartition(".")[2]  # lifespan.startup / lifespan.shutdown
            hook = self._hooks.get(step)
            try:
                if hook is not None:
                    await hook()
            except Exception as e:
                log.error("ASGI lifespan %s failed: %s", step, one_line(e))
                await send({"type": f"lifespan.{step}.failed", "message": one_line(e)})
                return
            await send({"type": f"lifespan.{step}.complete"})
            if step == "shutdown":
                return

    # -- http -----------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, raw_path = _route_path(scope)
        more = True

        async def read_chunk() -> bytes:
            nonlocal more
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    more = False
                    raise ConnectionError("the client went away")
                more = bool(message.get("more_body", False))
                if chunk := message.get("body", b""):
                    return chunk
            return b""

        method = scope["method"]
        call = rest.Call(self.plane, self.limits, method, path, _Headers(scope["headers"]), read_chunk)
        try:
            if self._token is not None:
                rest.authorize(call, self._token, self.limits.metrics_auth)
            reply = await self._route(call, raw_path)(call)
        except Exception as e:
            reply = rest.failure(call, e, self._log)
        await self._send(send, reply, head_only=method == "HEAD")

    def _route(self, call: rest.Call, raw_path: str) -> rest.Handler:
        """The handler of the first route whose path and method match (``call.params`` set), as aiohttp's router."""
        method = "GET" if call.method == "HEAD" else call.method
        path_matched = False
        for regex, methods in self._routes:
            match = regex.match(raw_path)
            if match is None:
                continue
            handler = methods.get(method)
            if handler is not None:
                call.params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
                return handler
            path_matched = True
        raise rest.no_route(call.method, call.path, path_matched)

    async def _send(self, send: Send, reply: rest.Reply, head_only: bool) -> None:
        body = bytes(reply.body)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
        if reply.coding is not None:
            if len(body) > rest.OFFLOAD_BYTES:
                body = await asyncio.get_running_loop().run_in_executor(None, _compress, body, reply.coding)
            else:
                body = _compress(body, reply.coding)
            headers.append((b"content-encoding", reply.coding.encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        if reply.close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head_only else body})


def _route_path(scope: Scope) -> tuple[str, str]:
    """(decoded path, raw path) below the app's ``root_path`` (a Ray Serve route prefix, a mount)."""
    path = scope["path"]
    raw = scope.get("raw_path")
    raw_path = raw.decode("latin-1").partition("?")[0] if raw else urllib.parse.quote(path)
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
        quoted_root = urllib.parse.quote(root)
        if raw_path.startswith(quoted_root):
            raw_path = raw_path[len(quoted_root):] or "/"
    return path, raw_path


def _compress(body: bytes, coding: str) -> bytes:
    """gzip, or deflate as RFC 9110 has it (zlib-wrapped), as aiohttp's ``enable_compression`` writes them."""
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()
