"""What Ray Serve's gRPC proxy loads: the ``inference.GRPCInferenceService`` registration, importable by name.

The proxy pickles each decoded request to the replica and the answer back. ``tritonclient`` generates its
messages into modules named ``grpc_service_pb2`` and ``model_config_pb2`` (their classes' ``__module__``),
which are not importable under those names; importing this module makes them so, in the proxy (which imports
it to register the servicer) and in every ingress replica (:mod:`slipway.rayserve.ingress` imports it).
"""

from __future__ import annotations

import os
import sys

from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.grpc.service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

sys.modules.setdefault(service_pb2.ModelInferRequest.__module__, service_pb2)
sys.modules.setdefault(model_config_pb2.ModelConfig.__module__, model_config_pb2)

SERVICER = f"{__name__}.add_servicer"  # what gRPCOptions.grpc_servicer_functions names
GRPC_HOST = "SLIPWAY_RAY_GRPC_HOST"

__all__ = ["add_servicer", "bind_host", "SERVICER", "GRPC_HOST"]


def add_servicer(servicer, server) -> None:
    add_GRPCInferenceServiceServicer_to_server(servicer, server)


def bind_host() -> None:
    """Ray's gRPC proxy listens on every interface (``[::]:PORT``); on a cluster this process started, every
    worker runs this first (``worker_process_setup_hook``) so that it listens on ``slipway serve --host``'s
    address instead, as the HTTP proxy does."""
    host = os.environ.get(GRPC_HOST)
    if not host:
        return
    from ray.serve._private import default_impl

    add = default_impl.add_grpc_address

    def add_on_host(server, address: str) -> None:
        add(server, address.replace("[::]:", f"{host}:" if ":" not in host else f"[{host}]:", 1))

    default_impl.add_grpc_address = add_on_host
