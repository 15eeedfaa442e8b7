"""``slipway serve REPO``: KServe v2 over HTTP and gRPC, Prometheus metrics, Triton-layout repository."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import typer

from slipway.errors import UserError


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ request_id, model when given as extras)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for key in ("request_id", "model"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _port(value: int) -> int | None:
    if value < -1 or value > 65535:
        raise UserError(f"port {value} is outside 0..65535 (-1 turns the endpoint off)")
    return None if value == -1 else value


def serve(
    repository: Path = typer.Argument(..., help="model repository in Triton's layout: REPO/MODEL/[config.pbtxt, 1/model.onnx]"),
    http_port: int = typer.Option(8000, "--http-port", help="KServe v2 REST port (0 = any free port, -1 = off)"),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="KServe v2 gRPC port (0 = any free port, -1 = off)"),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="Prometheus /metrics port (-1 = off; /metrics is "
                                     "also on the HTTP port)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; 0.0.0.0 exposes the server to the network"),
    control: str = typer.Option("none", "--model-control-mode", help="none | poll (hot reload) | explicit"),
    load: list[str] = typer.Option([], "--load-model", help="explicit mode: model to load at start ('*' = all)"),
    poll_seconds: float = typer.Option(2.0, "--poll-seconds", help="poll mode: seconds between repository scans"),
    threads: int = typer.Option(0, "--threads", help="engine threads per model (0 = engine default / tuned)"),
    max_pending: int = typer.Option(1024, "--max-pending", help="queued requests per model before 503"),
    max_body_mb: float = typer.Option(64, "--max-body-mb", help="largest request body (decompressed) / gRPC message "
                                      "in MiB (413 / RESOURCE_EXHAUSTED past it)"),
    max_inputs: int = typer.Option(256, "--max-inputs", help="input + requested-output tensors in one request"),
    max_elements: int = typer.Option(1 << 26, "--max-elements", help="elements of one tensor (checked, with the "
                                     "bytes actually sent, before anything that size is allocated)"),
    max_json_depth: int = typer.Option(32, "--max-json-depth", help="nesting of a JSON request body"),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="seconds a client has to send a request's "
                                         "headers (also how long an idle keep-alive connection stays open; gRPC: "
                                         "the connection handshake)"),
    body_timeout: float = typer.Option(60.0, "--body-timeout", help="seconds a client has to send a request body "
                                       "once its headers are in (408 past it)"),
    max_connections: int = typer.Option(1000, "--max-connections", help="open client connections per port (more "
                                        "are closed at once; HTTP answers them 503)"),
    metrics_auth: bool = typer.Option(False, "--metrics-auth/--no-metrics-auth", help="with --auth-token-env: "
                                      "/metrics asks for the token too"),
    token_env: str | None = typer.Option(None, "--auth-token-env", help="require 'Authorization: Bearer <token>' "
                                         "with the token read from this environment variable"),
    allow_python: bool = typer.Option(False, "--allow-python-models", help="allow model.py / pickles in the "
                                      "repository (they run code)"),
    exit_on_error: bool = typer.Option(True, "--exit-on-error/--no-exit-on-error",
                                       help="exit if a model fails to load at start"),
    log_format: str = typer.Option("json", "--log-format", help="json | text"),
    print_config: bool = typer.Option(False, "--print-config", help="print each model's completed config and exit"),
    ray: bool = typer.Option(False, "--ray", help="serve on Ray Serve: a deployment per model, replicas across the "
                             "cluster, the same KServe v2 HTTP + gRPC endpoints (Ray's proxies)"),
    address: str | None = typer.Option(None, "--address", help="--ray: a running cluster ('auto' or ray://HOST:PORT); "
                                       "default: start a local one"),
    replicas: int = typer.Option(1, "--replicas", help="--ray: replicas of each model (a config's "
                                 "slipway.ray.replicas wins)"),
    autoscale: str | None = typer.Option(None, "--autoscale", help="--ray: MIN:MAX replicas of each model, scaled on "
                                         "the requests each replica has queued or running"),
    target_ongoing: float = typer.Option(8.0, "--target-ongoing-requests", help="--ray --autoscale: the requests "
                                         "per replica autoscaling aims at"),
    replica_cpus: float = typer.Option(1.0, "--replica-cpus", help="--ray: CPUs each model replica reserves"),
    request_timeout: float = typer.Option(60.0, "--request-timeout", help="--ray: seconds a request may wait for a "
                                          "replica before it fails with 503"),
) -> None:
    """Serve a model repository over KServe v2 HTTP + gRPC (tritonclient works unmodified)."""
    from slipway.serve import Server
    from slipway.serve.limits import Limits

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("slipway.serve")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise UserError(f"--auth-token-env {token_env}: that environment variable is empty or not set")
    limits = Limits(body_bytes=int(max_body_mb * (1 << 20)), inputs=max_inputs, elements=max_elements,
                    json_depth=max_json_depth, header_seconds=header_timeout, body_seconds=body_timeout,
                    connections=max_connections, metrics_auth=metrics_auth)
    if print_config:
        _print_configs(repository, allow_python)
        return
    if ray:
        _serve_on_ray(repository, address=address, replicas=replicas, autoscale=autoscale, target=target_ongoing,
                      cpus=replica_cpus, timeout=request_timeout, host=host, http_port=http_port, grpc_port=grpc_port,
                      control=control, poll_seconds=poll_seconds, threads=threads, max_pending=max_pending,
                      limits=limits, token=token, allow_python=allow_python)
        return
    server = Server(repository, host=host, http_port=_port(http_port), grpc_port=_port(grpc_port),
                    metrics_port=_port(metrics_port), control=control, models=load or None, poll_seconds=poll_seconds,
                    threads=threads, max_pending=max_pending, limits=limits, token=token,
                    allow_python_models=allow_python, exit_on_error=exit_on_error)
    server.run()


def _serve_on_ray(repository: Path, *, address: str | None, replicas: int, autoscale: str | None, target: float,
                  cpus: float, timeout: float, host: str, http_port: int, grpc_port: int, control: str,
                  poll_seconds: float, threads: int, max_pending: int, limits, token: str | None,
                  allow_python: bool) -> None:
    from dataclasses import asdict

    from slipway.rayserve import IngressSettings, RayServing, Scale, Settings

    if control == "explicit":
        raise UserError("--ray serves every model of the repository: use --model-control-mode none, or poll to roll "
                        "changes out")
    if http_port <= 0 or grpc_port <= 0:
        raise UserError("--ray needs fixed --http-port and --grpc-port (Ray's proxies listen on them)")
    bounds = None
    if autoscale is not None:
        low, sep, high = autoscale.partition(":")
        try:
            bounds = (int(low), int(high))
        except ValueError:
            raise UserError(f"--autoscale {autoscale!r}: expected MIN:MAX, e.g. 1:4") from None
        if not sep:
            raise UserError(f"--autoscale {autoscale!r}: expected MIN:MAX, e.g. 1:4")
    serving = RayServing(repository, address=address, host=host, http_port=http_port, grpc_port=grpc_port,
                         scale=Scale(replicas=replicas, autoscale=bounds, target_ongoing_requests=target, cpus=cpus),
                         settings=Settings(threads=threads, max_pending=max_pending,
                                           allow_python_models=allow_python),
                         ingress=IngressSettings(limits=asdict(limits), token=token, request_timeout_s=timeout))
    serving.run(poll_seconds=poll_seconds if control == "poll" else None)


def _print_configs(repository: Path, allow_python: bool) -> None:
    from slipway.serve.repository import Repository, completed_text

    repo = Repository(repository, allow_python_models=allow_python)
    for name in repo.names():
        typer.echo(f"# {name}")
        typer.echo(completed_text(repo.config(name)))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
