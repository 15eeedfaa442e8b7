"""The ingress deployment: KServe v2 over HTTP (ASGI, behind Ray Serve's HTTP proxy) and gRPC (Ray Serve's gRPC
proxy), over a :class:`~slipway.rayserve.plane.RayPlane`.

The protocol code is ``slipway serve``'s own: the ASGI adapter (:mod:`slipway.serve.asgi`) and the gRPC
servicer (:class:`slipway.serve.grpc.InferenceServicer`) over the Ray plane, so ``tritonclient.http`` and
``tritonclient.grpc`` work unchanged, binary tensors included, with the same messages for the same mistakes.
Ray's gRPC proxy calls a deployment method named as the RPC with the decoded request and a
``grpc_context``; every unary RPC of the service gets one here, which runs the servicer's method with a
context that turns its ``abort`` into the status Ray sends back; ``ModelStreamInfer`` (bidirectional) gets the
client's messages as an async iterator from Ray's proxy and yields the answers.

Prometheus: ``/metrics`` on the HTTP port serves the Triton-named metrics of the whole repository (summed over
replicas) and the Ray path's own counters (``slipway_ray_requests_retried_total``, ``..._unavailable_total``,
``..._timed_out_total``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily
from tritonclient.grpc import service_pb2 as pb

import slipway.rayserve.protos  # noqa: F401 - the pickling names of tritonclient's messages, before any arrive
from slipway.rayserve.plane import RayPlane
from slipway.rayserve.registry import NAMESPACE, REGISTRY
from slipway.serve.limits import Limits

__all__ = ["Ingress", "IngressSettings", "asgi_app"]


@dataclass(frozen=True)
class IngressSettings:
    limits: dict[str, Any] = field(default_factory=dict)  # Limits(**limits)
    token: str | None = None
    request_timeout_s: float = 60.0


class _Late:
    """The ASGI app Ray's proxy is given when the class is decorated; it serves the replica's real app, made in
    ``Ingress.__init__`` (each replica is its own process: one per process)."""

    app: Any = None

    async def __call__(self, scope, receive, send) -> None:
        if self.app is None:
            if scope["type"] == "lifespan":
                return
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error": "the ingress is starting"}'})
            return
        await self.app(scope, receive, send)


asgi_app = _Late()


class _Aborted(Exception):
    pass


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the servicer uses, over Ray's ``RayServegRPCContext``."""

    def __init__(self, ray_context: Any) -> None:
        self._ray = ray_context

    def invocation_metadata(self):
        return self._ray.invocation_metadata()

    async def abort(self, code, details: str = "") -> None:
        self._ray.set_code(code)
        self._ray.set_details(details)
        raise _Aborted(details)


class Ingress:
    """The class of the ingress deployment (decorated in :mod:`slipway.rayserve.deploy`)."""

    async def __init__(self, handles: dict[str, Any], settings: IngressSettings) -> None:
        import ray

        from slipway.serve.asgi import make_asgi_app
        from slipway.serve.grpc import InferenceServicer
        from slipway.serve.metrics import registry, render

        limits = Limits(**settings.limits)
        self.plane = RayPlane(handles, ray.get_actor(REGISTRY, namespace=NAMESPACE),
                              request_timeout_s=settings.request_timeout_s)
        await self.plane.refresh()
        self._follow = asyncio.create_task(self.plane.follow())
        self._servicer = InferenceServicer(self.plane, token=settings.token, limits=limits)
        reg = registry(self.plane)
        reg.register(_RayCounters(self.plane))
        asgi_app.app = make_asgi_app(self.plane, limits=limits, token=settings.token, metrics=lambda: render(reg))

    async def _grpc(self, name: str, request: Any, grpc_context: Any, empty: type) -> Any:
        try:
            return await getattr(self._servicer, name)(request, _Context(grpc_context))
        except _Aborted:
            return empty()  # the proxy answers with the code and details set on grpc_context


class _RayCounters:
    def __init__(self, plane: RayPlane) -> None:
        self._plane = plane

    def collect(self):
        for what, doc in (("retried", "requests retried on another replica after theirs failed"),
                          ("unavailable", "requests failed fast with 503 / UNAVAILABLE: no replica could answer"),
                          ("timed_out", "requests failed with 503 after the request timeout")):
            family = CounterMetricFamily(f"slipway_ray_requests_{what}", doc)
            family.add_metric([], self._plane.counters[what])
            yield family


def _unary(name: str, empty: type):
    async def method(self: Ingress, request: Any, grpc_context: Any) -> Any:
        return await self._grpc(name, request, grpc_context, empty)

    method.__name__ = method.__qualname__ = name
    return method


for _m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if not (_m.client_streaming or _m.server_streaming):
        setattr(Ingress, _m.name, _unary(_m.name, getattr(pb, _m.output_type.name)))


async def _stream(self: Ingress, requests: Any, grpc_context: Any):
    """``ModelStreamInfer``: Ray's proxy hands the client's messages over as an async iterator."""
    try:
        async for response in self._servicer.ModelStreamInfer(requests, _Context(grpc_context)):
            yield response
    except _Aborted:
        return


_stream.__name__ = _stream.__qualname__ = "ModelStreamInfer"
Ingress.ModelStreamInfer = _stream


def build_asgi() -> _Late:
    """What ``serve.ingress`` is given: Ray calls it in each ingress replica for the app it serves."""
    return asgi_app
