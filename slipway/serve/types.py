"""Transport-free request and response objects: the HTTP and gRPC adapters decode into these and
encode from them; the data plane and the batcher never see a transport."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InferTensor", "RequestedOutput", "InferRequest", "InferResponse"]


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
    parameters: dict[str, Any] = field(default_factory=dict)  # priority, timeout (µs), binary_data_output ...

    @property
    def priority(self) -> int:
        """Triton's ``priority`` parameter (0 = the model's default level)."""
        return int(self.parameters.get("priority", 0) or 0)

    @property
    def timeout_us(self) -> int:
        """Triton's ``timeout`` parameter in microseconds (0 = the queue policy's default)."""
        return int(self.parameters.get("timeout", 0) or 0)


@dataclass
class InferResponse:
    model: str
    version: str
    id: str = ""
    outputs: list[InferTensor] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
