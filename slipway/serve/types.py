"""Transport-free request and response objects: the HTTP and gRPC adapters decode into these and
encode from them; the data plane and the batcher never see a transport. Plus the two rules both
adapters apply alike: the bearer-token check and the scrubbing of server paths from error text."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2, service_pb2

__all__ = ["InferTensor", "RequestedOutput", "InferRequest", "InferResponse", "Plane", "bearer_matches",
           "public_message"]


@dataclass
class InferTensor:
    name: str
    datatype: str  # protocol name: FP32, INT64, BYTES, BF16 ...
    shape: list[int]
    # decoded, already in ``shape``; may be read-only (a view of the request body or of a shared-memory
    # region); None for an input whose data is in shared memory until the data plane reads it, and for an
    # output written into shared memory (its parameters name the region)
    data: np.ndarray | None
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

    def served_statistics(self) -> list[tuple[str, str, Any, int]]:
        """(model, version, its ``ModelStats``, requests pending) per served version (the metrics)."""
        ...

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """One row per model (version): name, version, state, reason."""
        ...

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None: ...

    async def unload_model(self, name: str, parameters: dict[str, Any] | None = None) -> None: ...

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check ``request`` (:mod:`slipway.serve.request`), run it, answer it."""
        ...

    # system shared memory (slipway/serve/shm.py); RequestError for every mistake

    def shm_register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None: ...

    def shm_unregister(self, name: str = "") -> None:
        """Unregister ``name`` (every region when empty); unknown names are no error."""
        ...

    def shm_status(self, name: str = "") -> list[dict[str, Any]]:
        """One {name, key, offset, byte_size} per region (just ``name``'s when given)."""
        ...

    def cuda_shm_register(self, name: str) -> None:
        """Always refused: no CUDA shared memory."""
        ...


# ---------------------------------------------------------------------------------------------
# what both adapters do alike with what a client sends and what it is told


def bearer_matches(values: Iterable[str | bytes], token: bytes) -> bool:
    """Whether any ``Authorization`` value is ``Bearer <token>`` (scheme in any case, RFC 9110).

    Every value is compared, each in constant time (``hmac.compare_digest``), so neither the number
    of values tried nor the position of the first wrong byte changes how long the answer takes.
    """
    ok = False
    for value in values:
        raw = value.encode("utf-8", "replace") if isinstance(value, str) else bytes(value)
        scheme, _, given = raw.strip().partition(b" ")
        match = hmac.compare_digest(given.strip(), token)
        ok = (scheme.lower() == b"bearer" and match) or ok
    return ok


_ABSOLUTE = re.compile(r"(?<![\w.:/])/(?!v2/)(?:[^\s/'\"]+/)+(?=[^\s/'\"]*)")


def public_message(message: str) -> str:
    """An error message with the server's absolute file paths cut to their last part (clients get
    the file's name, never where the server keeps it); request paths (/v2/...) stay."""
    return _ABSOLUTE.sub(".../", message)
