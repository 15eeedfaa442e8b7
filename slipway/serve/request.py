"""THE check of an inference request, whatever transport it came over.

The adapters only decode (``http.decode_infer``, ``grpc.decode_request``: syntax, tensor sizes);
everything the protocol and the model decide is checked here, once, by the data plane:

* the request parameters: ``priority`` (an integer in the model's priority levels), ``timeout``
  (a non-negative integer, µs), ``binary_data_output`` (true/false), the sequence parameters
  (``sequence_id``: an unsigned 64-bit integer or a string; ``sequence_start`` / ``sequence_end``:
  true/false; typed for every model as Triton's frontends do, used only by a model with
  ``sequence_batching``, :mod:`slipway.serve.sequence`), every other value a scalar;
* the inputs against the model's :class:`Signature`: names, datatypes, shapes, reshape, the batch
  size (``1..max_batch_size``, the same in every input), BYTES as text for engines that want it;
* the requested outputs: known names, no classification parameters.

Shared-memory parameters are resolved before this check by the data plane (:mod:`slipway.serve.shm`:
regions, offsets and sizes, with RequestErrors of its own); any left here met a plane without the
extension and are refused, never ignored (an output would silently not reach its region).

Every problem raises :class:`RequestError` (a 400 :class:`ServeError`) with one line of text that
both adapters send unchanged: HTTP as ``400 {"error": ...}``, gRPC as ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slipway.errors import ServeError
from slipway.serve.tensors import datatype_from_config
from slipway.serve.types import InferRequest, InferResponse

__all__ = [
    "RequestError", "TensorSpec", "Signature", "Checked", "check", "check_parameters", "specs",
    "priority_level", "batch_rows", "Checking", "SequenceFlags", "sequence_flags",
]

UINT64_MAX = (1 << 64) - 1


class RequestError(ServeError):
    """A request the server refuses as malformed: HTTP 400, gRPC INVALID_ARGUMENT, same message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 400)


@dataclass(frozen=True)
class TensorSpec:
    """One config input/output: protocol datatype, dims without the batch dim, optional reshape."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    optional: bool = False

    def metadata(self, batched: bool) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": ([-1] if batched else []) + list(self.dims)}


def specs(entries: Any) -> list[TensorSpec]:
    """The :class:`TensorSpec` of each ``ModelInput`` / ``ModelOutput`` of a model config."""
    from tritonclient.grpc import model_config_pb2 as mc

    out = []
    for e in entries:
        reshape = tuple(e.reshape.shape) if e.HasField("reshape") else None
        datatype = datatype_from_config(mc.DataType.Name(e.data_type))
        out.append(TensorSpec(e.name, datatype, tuple(e.dims), reshape, bool(getattr(e, "optional", False))))
    return out


@dataclass(frozen=True)
class Signature:
    """What a request to one model version is checked against (from its completed config)."""

    model: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0  # 0: no batch dim
    priority_levels: int = 0  # 0: one level
    default_level: int = 0  # 0-based queue level of priority 0
    bytes_as_text: bool = True  # BYTES inputs reach the engine as str (ONNX strings), else as bytes
    by_input: Mapping[str, TensorSpec] = field(default_factory=dict, compare=False, repr=False)
    by_output: Mapping[str, TensorSpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_input", {t.name: t for t in self.inputs})
        object.__setattr__(self, "by_output", {t.name: t for t in self.outputs})

    @classmethod
    def of(cls, name: str, config: Any, *, bytes_as_text: bool = True) -> Signature:
        """The signature of a completed ``ModelConfig`` (priority levels from its dynamic_batching)."""
        levels = default = 0
        if config.HasField("dynamic_batching"):
            levels = int(config.dynamic_batching.priority_levels)
            default = int(config.dynamic_batching.default_priority_level) or levels
        return cls(name, tuple(specs(config.input)), tuple(specs(config.output)), int(config.max_batch_size),
                   levels, max(default - 1, 0), bytes_as_text)


@dataclass(frozen=True)
class SequenceFlags:
    """A request's sequence parameters (Triton's correlation ID and flags), types checked."""

    id: int | str | None  # None: not sent; 0 and "" are kept as sent (a sequence model refuses them)
    start: bool = False
    end: bool = False


@dataclass
class Checked:
    """A request that passed :func:`check`: engine feeds and what the batcher and the response need."""

    feeds: dict[str, np.ndarray]
    rows: int  # batch rows (1 without a batch dim)
    level: int  # 0-based queue level
    timeout_us: int  # the request's own timeout (0: the queue policy's)
    outputs: list[tuple[TensorSpec, dict[str, Any]]]  # (output, its request parameters), in answer order
    sequence: SequenceFlags | None = None  # the sequence parameters, when any was sent


class Checking:
    """What every served version (a model's, an ensemble's) does alike with a request: check it against
    its ``signature`` (a bad one counted as a failure in its ``stats``), then ``run`` it."""

    signature: Signature
    stats: Any  # slipway.serve.stats.ModelStats
    max_batch_size: int

    def check(self, request: InferRequest) -> Checked:
        """``request`` checked against this version (RequestError 400); counted as a failure if bad."""
        start = time.monotonic_ns()
        try:
            return check(request, self.signature)
        except ServeError:
            self.stats.request_done(False, time.monotonic_ns() - start, reason="OTHER")
            raise

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self.run(self.check(request), request.id)

    async def run(self, checked: Checked, request_id: str = "") -> InferResponse:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        batched = self.max_batch_size > 0
        return {"inputs": [s.metadata(batched) for s in self.signature.inputs],
                "outputs": [s.metadata(batched) for s in self.signature.outputs]}


# ---------------------------------------------------------------------------------------------
# the checks


def check(request: InferRequest, sig: Signature) -> Checked:
    """``request`` checked against ``sig``; RequestError (400) naming what is wrong."""
    params = check_parameters(request)
    level = priority_level(params.get("priority", 0), sig.priority_levels, sig.default_level, sig.model)
    feeds, rows = _feeds(request, sig)
    return Checked(feeds, rows, level, params.get("timeout", 0), _outputs(request, sig), sequence_flags(params))


def check_parameters(request: InferRequest) -> dict[str, Any]:
    """The model-independent part: request, input and output parameters. Returns the request's."""
    p = request.parameters
    for key, value in p.items():
        if not isinstance(value, (bool, int, float, str)):
            raise RequestError(f"request parameter {key!r} must be a bool, number or string, got {value!r}")
    for key in ("priority", "timeout"):
        value = p.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RequestError(f"request parameter {key!r} must be a non-negative integer, got {value!r}")
    if not isinstance(p.get("binary_data_output", False), bool):
        raise RequestError("request parameter 'binary_data_output' must be true or false")
    sequence_flags(p)
    for t in request.inputs:
        if "shared_memory_region" in t.parameters:
            raise RequestError(f"input {t.name!r}: the shared memory extension is not supported")
    for o in request.outputs:
        if o.parameters.get("classification"):
            raise RequestError("the classification extension is not supported")
        if "shared_memory_region" in o.parameters:
            raise RequestError(f"output {o.name!r}: the shared memory extension is not supported")
        if not isinstance(o.parameters.get("binary_data", False), bool):
            raise RequestError(f"output {o.name!r}: binary_data must be true or false")
    return p


def sequence_flags(p: Mapping[str, Any]) -> SequenceFlags | None:
    """The sequence parameters of request parameters ``p`` (None when none is sent); RequestError for a
    ``sequence_id`` that is no unsigned 64-bit integer or string, or flags that are not true / false."""
    if "sequence_id" not in p and "sequence_start" not in p and "sequence_end" not in p:
        return None
    sid = p.get("sequence_id")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, (int, str))
                            or (isinstance(sid, int) and not 0 <= sid <= UINT64_MAX)):
        raise RequestError(f"request parameter 'sequence_id' must be an unsigned integer or a string, got {sid!r}")
    flags = []
    for key in ("sequence_start", "sequence_end"):
        value = p.get(key, False)
        if not isinstance(value, bool):
            raise RequestError(f"request parameter {key!r} must be true or false, got {value!r}")
        flags.append(value)
    return SequenceFlags(sid, *flags)


def priority_level(priority: int, levels: int, default_level: int, model: str) -> int:
    """0-based queue level of a request's ``priority`` (0 = the model's default level)."""
    if levels == 0:
        return 0
    if priority == 0:
        return default_level
    if not 1 <= priority <= levels:
        raise RequestError(f"priority {priority} of the request to model {model} is outside 1..{levels}")
    return priority - 1


def batch_rows(name: str, rows: int, max_batch_size: int, model: str) -> None:
    """Refuse a batch of ``rows`` outside ``1..max_batch_size`` (``name``: the input that says so)."""
    if rows < 1 or rows > max_batch_size:
        raise RequestError(f"input {name!r}: batch size {rows} of the request to model {model} is outside "
                           f"1..{max_batch_size} (max_batch_size)")


def _feeds(request: InferRequest, sig: Signature) -> tuple[dict[str, np.ndarray], int]:
    model = sig.model
    given = {t.name: t for t in request.inputs}
    if len(given) != len(request.inputs):
        raise RequestError(f"model {model!r}: an input name is given twice")
    for n in given:
        if n not in sig.by_input:
            raise RequestError(f"model {model!r} has no input {n!r} (inputs: {', '.join(sig.by_input)})")
    feeds: dict[str, np.ndarray] = {}
    rows = 1
    batched = sig.max_batch_size > 0
    for spec in sig.inputs:
        t = given.get(spec.name)
        if t is None:
            if spec.optional:
                continue
            raise RequestError(f"model {model!r}: input {spec.name!r} is missing")
        if t.datatype != spec.datatype:
            raise RequestError(f"input {spec.name!r}: datatype {t.datatype} does not match the model's {spec.datatype}")
        shape = list(t.shape)
        if batched:
            if not shape:
                raise RequestError(f"input {spec.name!r}: shape [] has no batch dimension")
            n = shape[0]
            batch_rows(spec.name, n, sig.max_batch_size, model)
            if feeds and n != rows:
                raise RequestError(f"input {spec.name!r}: batch size {n} differs from the other inputs' {rows}")
            rows = n
            body = shape[1:]
        else:
            body = shape
        if not _dims_match(body, spec.dims):
            want = ([-1] if batched else []) + list(spec.dims)
            raise RequestError(f"input {spec.name!r}: shape {shape} does not match the model's {want}")
        data = t.data
        if spec.datatype == "BYTES" and sig.bytes_as_text:
            data = _text(spec.name, data)
        if spec.reshape is not None:
            data = data.reshape(([rows] if batched else []) + list(spec.reshape))
        feeds[spec.name] = data
    return feeds, rows


def _outputs(request: InferRequest, sig: Signature) -> list[tuple[TensorSpec, dict[str, Any]]]:
    if not request.outputs:
        return [(s, {}) for s in sig.outputs]
    out = []
    for r in request.outputs:
        spec = sig.by_output.get(r.name)
        if spec is None:
            raise RequestError(f"model {sig.model!r} has no output {r.name!r} (outputs: {', '.join(sig.by_output)})")
        out.append((spec, r.parameters))
    return out


def _text(name: str, data: np.ndarray) -> np.ndarray:
    """BYTES elements as str: engines hold ONNX strings as text (bytes would arrive as "b'...'")."""
    out = np.empty(data.shape, dtype=object)
    flat, dst = data.reshape(-1), out.reshape(-1)
    i = 0
    try:
        for i, x in enumerate(flat):
            dst[i] = x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)
    except UnicodeDecodeError:
        raise RequestError(f"input {name!r}: BYTES element {i} is not UTF-8 text, which ONNX strings must be") \
            from None
    return out


def _dims_match(shape: list[int], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))
