"""Transport-free request and response objects: the HTTP and gRPC adapters decode into these and
encode from them; the data plane and the batcher never see a transport."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2, service_pb2

__all__ = ["InferTensor", "RequestedOutput", "InferRequest", "InferResponse", "Plane"]


@dataclass
class InferTensor:
    name: str
    datatype: str  # protocol name: FP32, INT64, BYTES, BF16 ...
    shape: list[int]
    data: np.ndarray  # decoded, already in ``shape``; may be read-only (a view of the request body)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)  # e.g. binary_data (HTTP)


@dataclass
class InferRequest:
    model: str
    version: str = ""  # "" = the policy's newest ready version
    id: str = ""
    inputs: list[InferTensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty = every output
    # priority, timeout (µs), binary_data_output ...: as sent; checked and read by serve.request.check
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    model: str
    version: str
    id: str = ""
    outputs: list[InferTensor] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)


class Plane(Protocol):
    """What the HTTP and gRPC adapters call: :class:`slipway.serve.dataplane.DataPlane` implements it.

    Errors are :class:`~slipway.errors.ServeError` (status -> HTTP code / gRPC code); a request
    that fails its check is a :class:`~slipway.serve.request.RequestError` (400 / INVALID_ARGUMENT).
    """

    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def metadata(self) -> dict[str, Any]:
        """Server metadata: name, version, extensions."""
        ...

    def model_ready(self, name: str, version: str = "") -> bool: ...

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        """name, versions, platform, inputs and outputs (each: name, datatype, shape)."""
        ...

    def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig: ...

    def model_statistics(self, name: str = "", version: str = "") -> service_pb2.ModelStatisticsResponse: ...

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """One row per model (version): name, version, state, reason."""
        ...

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None: ...

    async def unload_model(self, name: str, parameters: dict[str, Any] | None = None) -> None: ...

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check ``request`` (:mod:`slipway.serve.request`), run it, answer it."""
        ...
