"""The server: one event loop with the HTTP, gRPC and metrics endpoints over one data plane.

Python API::

    from slipway.serve import Server
    with Server("models/", http_port=0, grpc_port=0) as server:   # a background thread
        print(server.http_port, server.grpc_port)

``Server.run()`` blocks (the CLI); SIGINT/SIGTERM stop it gracefully: readiness turns false, new
requests get 503, queued and running requests finish, then the ports close.

``limits`` (:class:`Limits`) bound what one client may make the server spend, alike on every port;
binding an address other than loopback without a token logs a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slipway.errors import ServeError, UserError
from slipway.serve.dataplane import DataPlane
from slipway.serve.limits import Limits
from slipway.serve.repository import Repository

__all__ = ["Server", "new_event_loop"]

log = logging.getLogger("slipway.serve")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (faster sockets), else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    def __init__(
        self, repository: str | Path, *, host: str = "127.0.0.1", http_port: int | None = 8000,
        grpc_port: int | None = 8001, metrics_port: int | None = 8002, control: str = "none",
        models: list[str] | None = None, poll_seconds: float = 2.0, threads: int = 0, max_pending: int = 1024,
        limits: Limits | None = None, token: str | None = None, allow_python_models: bool = False,
        exit_on_error: bool = True, drain_seconds: float = 30.0,
    ) -> None:
        root = Path(repository)
        if not root.is_dir():
            raise UserError(f"model repository {root} is not a directory")
        self.repository = Repository(root, allow_python_models=allow_python_models)
        self.plane = DataPlane(self.repository, control=control, models=models, threads=threads,
                               max_pending=max_pending, poll_seconds=poll_seconds)
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.limits = limits or Limits()
        self.token = token
        self.exit_on_error = exit_on_error
        self.drain_seconds = drain_seconds
        self.errors: list[str] = []
        self._runners: list[Any] = []
        self._grpc = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    # -- async API ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the models, then open the ports (0 = any free port; the chosen one is stored)."""
        # aiohttp and prometheus_client (~90 ms) load when a server starts
        import slipway.serve.http as http
        import slipway.serve.metrics as metrics

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.errors = await self.plane.open(self.exit_on_error)
        reg = metrics.registry(self.plane)

        def render() -> tuple[bytes, str]:
            return metrics.render(reg)

        try:
            if self.http_port is not None:
                app = http.make_app(self.plane, limits=self.limits, token=self.token, metrics=render)
                self.http_port = await self._site(app, self.http_port)
            if self.metrics_port is not None:
                mapp = http.make_metrics_app(render, limits=self.limits, token=self.token)
                self.metrics_port = await self._site(mapp, self.metrics_port)
            if self.grpc_port is not None:
                import slipway.serve.grpc as grpc_adapter  # grpc.aio and the service stubs: when a port asks

                self._grpc = grpc_adapter.make_server(self.plane, limits=self.limits, token=self.token)
                port = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
                if port == 0:
                    raise UserError(f"cannot bind gRPC to {self.host}:{self.grpc_port}")
                self.grpc_port = port
                await self._grpc.start()
        except OSError as e:
            await self.stop(drain=False)
            raise UserError(f"cannot open a port on {self.host}: {e.strerror or e}") from None
        self.plane.poll_in_background()
        log.info("serving %s: http %s, grpc %s, metrics %s", self.repository.root, self.http_port, self.grpc_port,
                 self.metrics_port)
        if not self.token and not _loopback(self.host):
            log.warning("serving on %s without a token: anyone who can reach it can run, load and unload models "
                        "(--auth-token-env)", self.host)

    async def _site(self, app, port: int) -> int:
        import slipway.serve.http as http

        runner, bound = await http.start_site(app, self.host, port, connections=self.limits.connections)
        self._runners.append(runner)
        return bound

    async def wait(self) -> None:
        """Until :meth:`request_stop` (or a signal) is called."""
        assert self._stop is not None
        await self._stop.wait()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def stop(self, drain: bool = True) -> None:
        """Graceful: stop admitting, finish in-flight requests (up to ``drain_seconds``), close ports."""
        await self.plane.close(drain, self.drain_seconds)
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
            self._grpc = None
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    # -- blocking API ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then shut down gracefully (the CLI)."""
        loop = new_event_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            await self.start()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.request_stop)
            await self.wait()
            log.info("shutting down: draining in-flight requests")
            await self.stop(drain=True)

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def start_in_thread(self, timeout: float = 120.0) -> Server:
        """Start in a daemon thread with its own loop; returns once serving (raises what start raised)."""
        started = threading.Event()
        failure: list[BaseException] = []

        def target() -> None:
            loop = new_event_loop()
            asyncio.set_event_loop(loop)

            async def main() -> None:
                try:
                    await self.start()
                except BaseException as e:
                    failure.append(e)
                    started.set()
                    return
                started.set()
                await self.wait()
                await self.stop(drain=True)

            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=target, name="slipway-serve", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise ServeError(f"server did not start within {timeout:.0f} s", 503)
        if failure:
            self._thread.join(5)
            raise failure[0]
        return self

    def stop_thread(self, timeout: float = 60.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self.request_stop)
            self._thread.join(timeout)
            self._thread = None

    def call(self, coro, timeout: float = 120.0):
        """Run a coroutine on the server's loop from another thread (tests, embedding)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> Server:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it): for a server started elsewhere, such as
    ``slipway serve`` in a subprocess, that cannot report the port it bound."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout_s: float = 120.0,
               log: Path | None = None, what: str = "slipway serve") -> None:
    """Poll ``ready()`` until it is true, for a server started as the subprocess ``proc`` (an exception from
    ``ready()`` counts as not yet: nothing listens yet). A one-line UserError when ``proc`` exits first (with
    the last line of ``log``, where its output goes) or when ``timeout_s`` passes."""
    where = f" (log: {log})" if log is not None else ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines() if log is not None and log.is_file() else []
            raise UserError(f"{what} exited with code {proc.returncode}: {lines[-1] if lines else 'no output'}{where}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.1)
    raise UserError(f"{what} was not ready within {timeout_s:.0f} s{where}")
