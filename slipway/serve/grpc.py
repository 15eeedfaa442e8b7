"""gRPC adapter: Triton's ``inference.GRPCInferenceService`` over the transport-free data plane.

The servicer uses the messages and the service registration that ship with ``tritonclient``
(``service_pb2`` / ``service_pb2_grpc``), so ``tritonclient.grpc`` works unmodified. Requests are
decoded into :class:`InferRequest` (raw bytes without copies, or the typed ``contents`` fields with
exact element counts); every output goes back in ``raw_output_contents``, the only place
``tritonclient`` decodes numeric outputs from (an output written into shared memory: an empty entry,
as Triton; inputs in shared memory take no ``raw_input_contents`` entry and are read by the data plane). :func:`status_code` is the one map from
:class:`ServeError` statuses to gRPC codes; anything unexpected becomes ``INTERNAL`` with a
one-line message and a logged traceback (one per kind of error per interval).

The same :class:`Limits` as HTTP: ``body_bytes`` is the largest message, ``connections`` grpc
core's ``max_allowed_incoming_connections``, ``header_seconds`` its handshake timeout; tensor and
element counts are checked against ``inputs`` / ``elements`` and the bytes sent before anything is
allocated; messages carrying over ``OFFLOAD_ELEMENTS`` values are decoded in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from slipway.errors import ServeError, one_line
from slipway.serve.limits import Limits, LogLimiter, error_kind, too_many_tensors
from slipway.serve.tensors import (
    NO_LIMIT,
    check_elements,
    check_shape,
    count_error,
    data_and_shared_memory,
    element_count,
    from_raw,
    numpy_dtype,
    shared_memory_input,
    to_raw,
    type_error,
)
from slipway.serve.types import (
    InferRequest,
    InferResponse,
    InferTensor,
    Plane,
    RequestedOutput,
    bearer_matches,
    public_message,
)

__all__ = ["make_server", "status_code", "decode_request", "encode_response", "InferenceServicer"]

log = logging.getLogger("slipway.serve")

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# datatype -> the InferTensorContents field that carries it (FP16 / BF16 travel only as raw bytes)
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_STREAM_INFLIGHT = 1024  # requests of one stream in flight before the stream stops reading (backpressure)
_INT64_MAX = (1 << 63) - 1
_WIDE = {"bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int64), "int64_contents": np.dtype(np.int64),
         "uint_contents": np.dtype(np.uint64), "uint64_contents": np.dtype(np.uint64),
         "fp32_contents": np.dtype(np.float32), "fp64_contents": np.dtype(np.float64)}
OFFLOAD_ELEMENTS = 1 << 18  # requests carrying more values (or raw bytes / 4) are decoded in a worker thread
_STEP = 1 << 18  # typed contents are converted this many values at a time (the GIL is let go between steps)
_LOG = LogLimiter(log)


def status_code(status: int) -> grpc.StatusCode:
    """The gRPC code of a :class:`ServeError` status (500 and anything unknown: INTERNAL)."""
    return _CODES.get(status, grpc.StatusCode.INTERNAL)


def make_server(plane: Plane, *, limits: Limits | None = None, token: str | None = None) -> grpc.aio.Server:
    """A ``grpc.aio`` server serving ``plane``; the caller adds the port and starts it (inside its event loop)."""
    limits = limits or Limits()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limits.body_bytes),
            ("grpc.max_send_message_length", limits.body_bytes),
            ("grpc.max_allowed_incoming_connections", limits.connections),
            ("grpc.server_handshake_timeout_ms", max(1, int(limits.header_seconds * 1000))),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane, token=token, limits=limits), server)
    return server


# ---------------------------------------------------------------------------------------------
# request / response codecs


def _values(request: pb.ModelInferRequest) -> int:
    """About how many values a request carries (raw bytes count as 4-byte values): what decoding costs."""
    n = sum(len(r) for r in request.raw_input_contents) // 4
    for tensor in request.inputs:
        for _, values in tensor.contents.ListFields():
            n += len(values)
    return n


async def decode(request: pb.ModelInferRequest, limits: Limits) -> InferRequest:
    """:func:`decode_request`, in a worker thread when the request is large (the event loop keeps running)."""
    if len(request.inputs) + len(request.outputs) > limits.inputs:
        raise too_many_tensors(len(request.inputs) + len(request.outputs), limits.inputs)
    if _values(request) > OFFLOAD_ELEMENTS:
        return await asyncio.get_running_loop().run_in_executor(None, decode_request, request, limits)
    return decode_request(request, limits)


def decode_request(request: pb.ModelInferRequest, limits: Limits | None = None) -> InferRequest:
    """A ``ModelInferRequest`` as an :class:`InferRequest`; ServeError 400 for malformed tensors, 413 past a limit."""
    max_elements = limits.elements if limits is not None else NO_LIMIT
    if limits is not None and len(request.inputs) + len(request.outputs) > limits.inputs:
        raise too_many_tensors(len(request.inputs) + len(request.outputs), limits.inputs)
    raw = request.raw_input_contents
    params_of = [_params(t.parameters) if t.parameters else {} for t in request.inputs]
    in_shm = [shared_memory_input(p) for p in params_of]  # their data: read from shared memory by the data plane
    sent = len(request.inputs) - sum(in_shm)
    if raw and len(raw) != sent:
        if len(raw) == len(request.inputs):  # data for the inputs in shared memory too
            raise data_and_shared_memory(next(t.name for t, shm in zip(request.inputs, in_shm, strict=True) if shm))
        where = " not in shared memory" if sent != len(request.inputs) else ""
        raise ServeError(f"raw_input_contents has {len(raw)} entries but the request has {sent} inputs{where}", 400)
    inputs = []
    i = 0
    for tensor, params, shm in zip(request.inputs, params_of, in_shm, strict=True):
        shape = list(tensor.shape)
        if shape and min(shape) < 0:
            check_shape(tensor.name, shape)  # raises, naming the tensor
        if shm:
            if tensor.HasField("contents"):
                raise data_and_shared_memory(tensor.name)
            data = None
        elif raw:
            if tensor.HasField("contents"):
                raise ServeError(f"input {tensor.name!r}: contents must be empty when raw_input_contents is used", 400)
            data = from_raw(tensor.name, raw[i], tensor.datatype, shape, max_elements)
            i += 1
        else:
            data = _from_contents(tensor.name, tensor.contents, tensor.datatype, shape, max_elements)
        inputs.append(InferTensor(tensor.name, tensor.datatype, shape, data, params))
    outputs = [RequestedOutput(o.name, _params(o.parameters)) for o in request.outputs]
    params = _params(request.parameters) if request.parameters else {}
    return InferRequest(request.model_name, request.model_version, request.id, inputs, outputs, params)


def _from_contents(name: str, contents: pb.InferTensorContents, datatype: str, shape: list[int],
                   max_elements: int = NO_LIMIT) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    field = _CONTENTS.get(datatype)
    if field is None:
        raise ServeError(f"input {name!r}: {datatype} data must be sent in raw_input_contents", 400)
    if any(f.name != field for f, _ in contents.ListFields()):  # e.g. int_contents for FP32
        raise type_error(name, datatype)
    values = getattr(contents, field)
    count = element_count(shape)
    if count > max_elements:
        check_elements(name, shape, datatype, len(values), 0, max_elements)
    if len(values) != count:
        raise count_error(name, len(values), datatype, shape)
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    wide = _array(values, _WIDE[field]) if count else np.empty(0)
    if dtype.kind in "iu" and dtype.itemsize < 4 and count:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise ServeError(f"input {name!r}: a value in {field} is out of range for {datatype}", 400)
    return wide.astype(dtype, copy=False).reshape(shape)


def _array(values: Any, dtype: np.dtype) -> np.ndarray:
    """A repeated scalar field as an array, ``_STEP`` values at a time: one C call over millions of
    values would hold the GIL (and stall the event loop) for the whole conversion."""
    if len(values) <= _STEP:
        return np.array(values, dtype=dtype)
    out = np.empty(len(values), dtype=dtype)
    for i in range(0, len(values), _STEP):
        out[i : i + _STEP] = values[i : i + _STEP]
    return out


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    """An :class:`InferResponse` as a ``ModelInferResponse``; every output's data in ``raw_output_contents``."""
    message = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id)
    raws = []
    for tensor in response.outputs:
        out = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=[int(d) for d in tensor.shape])
        if tensor.parameters:
            _set_params(out.parameters, tensor.parameters)
        # an output written into shared memory keeps its place with an empty entry (as Triton)
        raws.append(b"" if tensor.data is None else to_raw(tensor.data))
    message.raw_output_contents.extend(raws)
    if response.parameters:
        _set_params(message.parameters, response.parameters)
    return message


def _params(parameters: Any) -> dict[str, Any]:
    """A protobuf map of InferParameter / ModelRepositoryParameter as plain python values."""
    out = {}
    for key, param in parameters.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(param, which)
    return out


def _set_params(target: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        param = target[key]
        if isinstance(value, (bool, np.bool_)):
            param.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)):
            if value > _INT64_MAX:
                param.uint64_param = int(value)
            else:
                param.int64_param = int(value)
        elif isinstance(value, (float, np.floating)):
            param.double_param = float(value)
        else:
            param.string_param = str(value)


# ---------------------------------------------------------------------------------------------
# servicer

Handler = Callable[..., Awaitable[Any]]


def _internal(exc: BaseException, what: str) -> str:
    _LOG.log(logging.ERROR, error_kind(exc), "gRPC %s failed", what, exc_info=exc)
    return public_message(f"internal error: {one_line(exc, typed=True)}")


def _rpc(auth: bool = True) -> Callable[[Handler], Handler]:
    """Wrap a unary handler: bearer-token check, then ServeError / unexpected errors -> gRPC status."""

    def wrap(method: Handler) -> Handler:
        name = method.__name__

        @functools.wraps(method)
        async def handler(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            if auth and self._token is not None:
                await self._authorize(context)
            try:
                return await method(self, request, context)
            except ServeError as exc:
                code, message = status_code(exc.status), public_message(one_line(exc))
            except Exception as exc:  # noqa: BLE001 - any bug becomes INTERNAL; CancelledError propagates
                code, message = grpc.StatusCode.INTERNAL, _internal(exc, name)
            await context.abort(code, message)

        return handler

    return wrap


def _unimplemented(name: str) -> Handler:
    async def handler(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by slipway serve")

    handler.__name__ = name
    return handler


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over a DataPlane (see slipway/serve/dataplane.py)."""

    def __init__(self, plane: Plane, *, token: str | None = None, limits: Limits | None = None) -> None:
        self._plane: Plane = plane
        self._token = None if token is None else token.encode()
        self._limits = limits or Limits()

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        assert self._token is not None
        given = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
        if bearer_matches(given, self._token):  # every entry looked at, each in constant time
            return
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization metadata)")

    # health and metadata

    @_rpc(auth=False)
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self._plane.live())

    @_rpc(auth=False)
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._plane.ready())

    @_rpc()
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    @_rpc()
    async def ServerMetadata(self, request, context):
        meta = self._plane.metadata()
        return pb.ServerMetadataResponse(
            name=meta.get("name", ""), version=meta.get("version", ""), extensions=meta.get("extensions", [])
        )

    @_rpc()
    async def ModelMetadata(self, request, context):
        meta = self._plane.model_metadata(request.name, request.version)

        def tensors(items: list[dict]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in items
            ]

        return pb.ModelMetadataResponse(
            name=meta["name"], versions=[str(v) for v in meta.get("versions", [])], platform=meta.get("platform", ""),
            inputs=tensors(meta.get("inputs", [])), outputs=tensors(meta.get("outputs", [])),
        )

    @_rpc()
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=self._plane.model_config(request.name, request.version))

    @_rpc()
    async def ModelStatistics(self, request, context):
        return self._plane.model_statistics(request.name, request.version)

    # repository

    @_rpc()
    async def RepositoryIndex(self, request, context):
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=str(m.get("name", "")), version=str(m.get("version", "")), state=str(m.get("state", "")),
                reason=str(m.get("reason", "")),
            )
            for m in self._plane.repository_index(ready_only=request.ready)
        ]
        return pb.RepositoryIndexResponse(models=models)

    @_rpc()
    async def RepositoryModelLoad(self, request, context):
        await self._plane.load_model(request.model_name, _params(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_rpc()
    async def RepositoryModelUnload(self, request, context):
        await self._plane.unload_model(request.model_name, _params(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    # inference

    @_rpc()
    async def ModelInfer(self, request, context):
        return encode_response(await self._plane.infer(await decode(request, self._limits)))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently as they arrive; each answer (result or error_message) carries its id.
        Requests with a ``sequence_id`` reach the data plane in the order they came (a large one decoded in
        a worker thread does not let the next overtake it), which is their order in their sequence."""
        if self._token is not None:
            await self._authorize(context)
        responses: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(_STREAM_INFLIGHT)  # a slot is held from read until its answer is written
        reader = asyncio.create_task(self._read_stream(request_iterator, responses, slots))
        try:
            while True:
                item = await responses.get()
                if item is None:
                    break
                yield item
                slots.release()
            await reader  # re-raises a broken request stream
        finally:
            reader.cancel()

    async def _read_stream(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], responses: asyncio.Queue, slots: asyncio.Semaphore
    ) -> None:
        tasks: set[asyncio.Task] = set()
        last: asyncio.Future | None = None  # the previous sequence request reached the data plane

        async def one(request: pb.ModelInferRequest, order: tuple | None) -> None:
            responses.put_nowait(await self._stream_one(request, order))

        try:
            async for request in request_iterator:
                await slots.acquire()
                order = None
                if "sequence_id" in request.parameters:
                    order = (last, asyncio.get_running_loop().create_future())
                    last = order[1]
                task = asyncio.create_task(one(request, order))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(set(tasks))
        finally:
            for task in tasks:
                task.cancel()
            responses.put_nowait(None)

    async def _stream_one(self, request: pb.ModelInferRequest,
                          order: tuple[asyncio.Future | None, asyncio.Future] | None = None
                          ) -> pb.ModelStreamInferResponse:
        try:
            decoded = await decode(request, self._limits)
            if order is not None:  # enter the plane after the sequence request before this one
                before, entered = order
                if before is not None:
                    await before
                entered.set_result(None)  # the next one wakes after this one has taken its place (sync)
            response = await self._plane.infer(decoded)
            return pb.ModelStreamInferResponse(infer_response=encode_response(response))
        except ServeError as exc:
            message = public_message(one_line(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in one request must not end the stream
            message = _internal(exc, "ModelStreamInfer")
        finally:
            if order is not None and not order[1].done():
                order[1].set_result(None)
        echo = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
        return pb.ModelStreamInferResponse(error_message=message, infer_response=echo)

    # shared memory (slipway/serve/shm.py; CUDA's: nothing registered, registering refused)

    async def _shm(self, context: grpc.aio.ServicerContext, name: str) -> None:
        if not hasattr(self._plane, "shm_register"):  # a plane without the extension: as before it existed
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by slipway serve")

    @_rpc()
    async def SystemSharedMemoryStatus(self, request, context):
        await self._shm(context, "SystemSharedMemoryStatus")
        answer = pb.SystemSharedMemoryStatusResponse()
        for r in self._plane.shm_status(request.name):
            answer.regions[r["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**r))
        return answer

    @_rpc()
    async def SystemSharedMemoryRegister(self, request, context):
        await self._shm(context, "SystemSharedMemoryRegister")
        self._plane.shm_register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc()
    async def SystemSharedMemoryUnregister(self, request, context):
        await self._shm(context, "SystemSharedMemoryUnregister")
        self._plane.shm_unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc()
    async def CudaSharedMemoryStatus(self, request, context):
        if request.name:
            raise ServeError(f"CUDA shared memory region {request.name!r} is not registered", 400)
        return pb.CudaSharedMemoryStatusResponse()

    @_rpc()
    async def CudaSharedMemoryRegister(self, request, context):
        self._plane.cuda_shm_register(request.name)
        return pb.CudaSharedMemoryRegisterResponse()

    @_rpc()
    async def CudaSharedMemoryUnregister(self, request, context):
        return pb.CudaSharedMemoryUnregisterResponse()

    # not offered: tracing, log settings
    TraceSetting = _unimplemented("TraceSetting")
    LogSettings = _unimplemented("LogSettings")
