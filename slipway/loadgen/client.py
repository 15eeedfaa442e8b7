"""THE wire for ``slipway perf``: one KServe v2 endpoint over HTTP (aiohttp) or gRPC (grpc.aio).

Control calls (metadata, config, statistics) answer plain dicts in the v2 JSON form whichever
protocol carries them. Requests are encoded once (:meth:`Endpoint.encode`) and sent as prebuilt
bytes: HTTP bodies with the binary tensor extension (or JSON tensors, ``binary=False``, for servers
that speak only JSON), gRPC ``ModelInferRequest`` messages serialized once and passed through
grpc.aio untouched, replies read but not decoded. So a request costs the client one socket write
and one read, and the client stays far from being the bottleneck (its CPU is measured anyway).
Only ``--validate`` decodes replies (:meth:`Endpoint.decode`: HTTP binary or JSON tensors, gRPC
``raw_output_contents`` or typed contents, outputs in shared memory read from their regions).

With system shared memory (:class:`ShmSlots`, ``--shared-memory system``), each concurrent slot gets
one input region (its inputs written once, back to back) and one output region (every output at its
own offset), created here in ``/dev/shm`` and registered with the server (Triton's extension); its
requests carry only the tensors' region, offset and byte size. The regions are unregistered and
unlinked when the run ends, also when it fails.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from slipway.errors import UserError, one_line

__all__ = ["absent", "Endpoint", "RequestFailed", "ShmSlots", "scrape_metrics"]

_SERVICE = "/inference.GRPCInferenceService/"
_MAX_MESSAGE = 2**31 - 1


class RequestFailed(Exception):
    """One inference request the server refused or failed (the message is the server's, one line)."""


def _int_fields(obj: Any) -> Any:
    """gRPC's JSON form writes 64-bit integers as strings; turn the digit strings of count / ns / dims
    / shape fields back into ints so both protocols answer alike."""
    if isinstance(obj, dict):
        return {k: _int_fields(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_int_fields(v) for v in obj]
    if isinstance(obj, str) and re.fullmatch(r"-?\d+", obj):
        return int(obj)
    return obj


class Endpoint:
    """One server at ``url`` (HOST:PORT) over ``protocol`` ("http" or "grpc"); use inside a running loop."""

    def __init__(self, url: str, protocol: str = "http", *, binary: bool = True, connections: int = 0,
                 timeout_s: float = 600.0, headers: Mapping[str, str] | None = None) -> None:
        if protocol not in ("http", "grpc"):
            raise UserError(f"unknown protocol {protocol!r}: expected http or grpc")
        if not re.fullmatch(r"[^\s/:]+:\d{1,5}", url.removeprefix("http://")):
            raise UserError(f"bad server address {url!r}: expected HOST:PORT (for example 127.0.0.1:8000)")
        self.url, self.protocol, self.binary = url.removeprefix("http://"), protocol, binary
        self.connections, self.timeout_s = connections, timeout_s
        self.headers = dict(headers or {})  # sent with every call: HTTP headers / gRPC metadata (perf_analyzer's -H)
        self._metadata = tuple((k.lower(), v) for k, v in self.headers.items()) or None
        self._session: Any = None
        self._channel: Any = None
        self._infer: Any = None

    async def open(self) -> Endpoint:
        if self.protocol == "http":
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections + 8 if self.connections else 0),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",), headers=self.headers)
        else:
            import grpc

            opts = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)]
            self._channel = grpc.aio.insecure_channel(self.url, options=opts)
            self._infer = self._channel.unary_unary(_SERVICE + "ModelInfer")  # bytes in, bytes out
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> Endpoint:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- control ------------------------------------------------------------------------------

    async def metadata(self, model: str) -> dict[str, Any]:
        return await self._control(model, "", "ModelMetadata")

    async def config(self, model: str) -> dict[str, Any] | None:
        """The model's config (Triton's model configuration extension); None where the server has no such
        extension or refuses it (MLServer; a Triton that restricts it): perf works without it."""
        try:
            answer = await self._control(model, "/config", "ModelConfig")
        except (RequestFailed, UserError) as e:
            if absent(e):
                return None
            raise
        return answer.get("config", answer)  # gRPC wraps it in ModelConfigResponse

    async def stats(self, model: str) -> dict[str, Any]:
        return await self._control(model, "/stats", "ModelStatistics")

    async def _control(self, model: str, path: str, method: str) -> dict[str, Any]:
        try:
            if self.protocol == "http":
                return await self._http_get(f"/v2/models/{model}{path}", model)
            return await self._grpc_call(method, model)
        except (UserError, RequestFailed):
            raise
        except Exception as e:  # connection refused, DNS, TLS, timeouts: one line
            raise UserError(f"cannot reach the server at {self.url} over {self.protocol}: {one_line(e)}") from None

    async def _http_get(self, path: str, model: str) -> dict[str, Any]:
        async with self._session.get(f"http://{self.url}{path}") as r:
            text = await r.text()
            if r.status == 404 and path != f"/v2/models/{model}":  # the model is there (its metadata answered)
                raise RequestFailed(f"HTTP 404: {_message(text)}")
            if r.status == 404:
                raise UserError(f"the server at {self.url} has no model {model!r} ({_message(text)})")
            if r.status != 200:
                raise RequestFailed(f"HTTP {r.status}: {_message(text)}")
            return json.loads(text)

    async def _grpc_call(self, method: str, model: str) -> dict[str, Any]:
        import grpc
        from google.protobuf.json_format import MessageToDict
        from tritonclient.grpc import service_pb2 as pb

        request_type = {"ModelMetadata": pb.ModelMetadataRequest, "ModelConfig": pb.ModelConfigRequest,
                        "ModelStatistics": pb.ModelStatisticsRequest}[method]
        reply_type = getattr(pb, method + "Response")
        call = self._channel.unary_unary(_SERVICE + method, request_serializer=request_type.SerializeToString,
                                         response_deserializer=reply_type.FromString)
        try:
            reply = await call(request_type(name=model), timeout=min(self.timeout_s, 30.0), metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise UserError(f"cannot reach the server at {self.url} over grpc: {one_line(e.details() or e)}"
                                ) from None
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise UserError(f"the server at {self.url} has no model {model!r} ({e.details()})") from None
            raise RequestFailed(f"{e.code().name}: {e.details()}") from None
        return _int_fields(MessageToDict(reply, preserving_proto_field_name=True))

    # -- system shared memory (Triton's extension) ---------------------------------------------

    async def shm_register(self, name: str, key: str, byte_size: int) -> None:
        await self._shm("register", name, key=key, offset=0, byte_size=byte_size)

    async def shm_unregister(self, name: str) -> None:
        await self._shm("unregister", name)

    async def _shm(self, action: str, name: str, **body: Any) -> None:
        if self.protocol == "http":
            async with self._session.post(f"http://{self.url}/v2/systemsharedmemory/region/{name}/{action}",
                                          data=json.dumps(body) if body else b"") as r:
                if r.status != 200:
                    raise RequestFailed(f"shared memory {action} {name!r}: HTTP {r.status}: "
                                        f"{_message(await r.text())}")
            return
        import grpc
        from tritonclient.grpc import service_pb2 as pb

        method = "SystemSharedMemory" + action.capitalize()
        request_type, reply_type = getattr(pb, method + "Request"), getattr(pb, method + "Response")
        call = self._channel.unary_unary(_SERVICE + method, request_serializer=request_type.SerializeToString,
                                         response_deserializer=reply_type.FromString)
        try:
            await call(request_type(name=name, **body), timeout=min(self.timeout_s, 30.0), metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            raise RequestFailed(f"shared memory {action} {name!r}: {e.code().name}: {e.details()}") from None

    # -- inference ----------------------------------------------------------------------------

    def encode_shm(self, model: str, tensors: Sequence[tuple[str, str, Sequence[int], str, int, int]],
                   outputs: Sequence[tuple[str, str, int, int]]) -> Any:
        """One request whose inputs are read from shared memory and whose outputs are written there:
        ``tensors`` are (name, datatype, shape, region, offset, byte size), ``outputs`` (name, region,
        offset, byte size)."""
        def params(region: str, offset: int, size: int) -> dict[str, Any]:
            return {"shared_memory_region": region, "shared_memory_offset": offset, "shared_memory_byte_size": size}

        if self.protocol == "grpc":
            from tritonclient.grpc import service_pb2 as pb

            r = pb.ModelInferRequest(model_name=model)
            for name, datatype, shape, *where in tensors:
                _set_params(r.inputs.add(name=name, datatype=datatype, shape=list(shape)).parameters, params(*where))
            for name, *where in outputs:
                _set_params(r.outputs.add(name=name).parameters, params(*where))
            return r.SerializeToString()
        header = {"inputs": [{"name": n, "shape": list(shape), "datatype": dt, "parameters": params(*where)}
                             for n, dt, shape, *where in tensors],
                  "outputs": [{"name": n, "parameters": params(*where)} for n, *where in outputs]}
        body = json.dumps(header, separators=(",", ":")).encode()
        return f"/v2/models/{model}/infer", body, {"Content-Type": "application/json", "Accept-Encoding": "identity"}

    def encode(self, model: str, tensors: list[tuple[str, str, np.ndarray]], outputs: list[str]) -> Any:
        """One request, ready to send: ``tensors`` are (name, v2 datatype, array)."""
        if self.protocol == "grpc":
            return _grpc_request(model, tensors, outputs)
        return _http_request(model, tensors, outputs, self.binary)

    async def infer(self, request: Any, reply: bool = False) -> Any:
        """Send one encoded request; the reply's size in bytes (``reply``: the reply itself, for :meth:`decode`),
        or :class:`RequestFailed`."""
        if self.protocol == "grpc":
            import grpc

            try:
                data = await self._infer(request, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.aio.AioRpcError as e:
                raise RequestFailed(f"{e.code().name}: {one_line(e.details() or e)}") from None
            return data if reply else len(data)
        path, body, headers = request
        try:
            async with self._session.post(f"http://{self.url}{path}", data=body, headers=headers) as r:
                data = await r.read()
                if r.status != 200:
                    raise RequestFailed(f"HTTP {r.status}: {_message(data.decode(errors='replace'))}")
                return (data, r.headers.get("Inference-Header-Content-Length")) if reply else len(data)
        except RequestFailed:
            raise
        except Exception as e:  # the connection broke, the server went away, a timeout
            raise RequestFailed(f"{type(e).__name__}: {one_line(e)}") from None

    def decode(self, reply: Any, shm: Mapping[str, tuple[Any, int, int]] | None = None) -> dict[str, np.ndarray]:
        """A reply from :meth:`infer` (``reply=True``) as arrays by output name: HTTP binary tensors or JSON
        ``data``, gRPC ``raw_output_contents`` or typed ``contents``; with ``shm`` (output name -> (shared
        memory buffer, offset, byte size)) the named outputs are read from their regions, copied."""
        out = {}
        if self.protocol == "grpc":
            from tritonclient.grpc import service_pb2 as pb

            r = pb.ModelInferResponse.FromString(reply)
            raw = r.raw_output_contents
            for i, o in enumerate(r.outputs):
                shape = tuple(o.shape)
                if shm and o.name in shm:
                    out[o.name] = _from_region(o.datatype, shape, *shm[o.name])
                elif i < len(raw):
                    out[o.name] = _from_bytes(o.datatype, shape, raw[i])
                else:
                    out[o.name] = _from_contents(o.datatype, shape, o.contents)
            return out
        data, header_length = reply
        size = int(header_length) if header_length else len(data)
        header, pos = json.loads(data[:size]), size
        for o in header.get("outputs", []):
            name, datatype, shape = o["name"], o["datatype"], tuple(int(d) for d in o.get("shape", []))
            blob = (o.get("parameters") or {}).get("binary_data_size")
            if blob is not None:
                out[name] = _from_bytes(datatype, shape, data[pos : pos + int(blob)])
                pos += int(blob)
            elif "data" in o:
                values = o["data"]
                if datatype == "BYTES":
                    a = np.array([v.encode() if isinstance(v, str) else v for v in np.ravel(values)], dtype=object)
                else:
                    a = np.asarray(values, dtype=_np_dtype(datatype))
                out[name] = a.reshape(shape)
            elif shm and name in shm:
                out[name] = _from_region(datatype, shape, *shm[name])
        return out


def _np_dtype(datatype: str) -> np.dtype:
    from tritonclient.utils import triton_to_np_dtype

    dtype = triton_to_np_dtype(datatype)
    if dtype is None:
        raise ValueError(f"cannot decode datatype {datatype}")
    return np.dtype(dtype)


def _from_bytes(datatype: str, shape: tuple[int, ...], blob: bytes | memoryview) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_elements(blob, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    return np.frombuffer(blob, dtype=_np_dtype(datatype)).reshape(shape)


def _from_region(datatype: str, shape: tuple[int, ...], buf: Any, offset: int, size: int) -> np.ndarray:
    view = memoryview(buf)[offset : offset + size]
    try:
        if datatype == "BYTES":
            return _bytes_elements(view, int(np.prod(shape, dtype=np.int64))).reshape(shape)
        n = int(np.prod(shape, dtype=np.int64)) * _np_dtype(datatype).itemsize
        if n > size:
            raise ValueError(f"an output of shape {list(shape)} does not fit its {size}-byte region")
        return np.frombuffer(view[:n], dtype=_np_dtype(datatype)).reshape(shape).copy()
    finally:
        view.release()


def _bytes_elements(blob: bytes | memoryview, count: int) -> np.ndarray:
    """Triton's BYTES serialization (a 4-byte little-endian length before each element), ``count`` elements."""
    out, pos = [], 0
    for _ in range(count):
        n = int.from_bytes(blob[pos : pos + 4], "little")
        out.append(bytes(blob[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    if pos > len(blob):
        raise ValueError("a BYTES output is shorter than its elements' lengths say")
    return np.array(out, dtype=object)


_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _from_contents(datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    if datatype not in _CONTENTS:
        raise ValueError(f"cannot decode datatype {datatype} from gRPC contents")
    values = getattr(contents, _CONTENTS[datatype])
    if datatype == "BYTES":
        return np.array(list(values), dtype=object).reshape(shape)
    return np.asarray(values, dtype=_np_dtype(datatype)).reshape(shape)


def absent(e: Exception) -> bool:
    """A control call the server does not offer or refuses (no extension, restricted, unimplemented)."""
    text = str(e)
    return any(mark in text for mark in ("HTTP 404", "HTTP 403", "HTTP 401", "HTTP 405", "UNIMPLEMENTED",
                                         "PERMISSION_DENIED", "UNAUTHENTICATED", "restricted"))


def _message(text: str) -> str:
    try:
        return one_line(Exception(json.loads(text)["error"]))
    except (ValueError, KeyError, TypeError):
        return one_line(Exception(text)) if text.strip() else "no message"


def _raw(datatype: str, a: np.ndarray) -> bytes:
    if datatype == "BYTES":
        from tritonclient.utils import serialize_byte_tensor

        s = serialize_byte_tensor(a)
        return s.item() if s.size else b""
    return np.ascontiguousarray(a).tobytes()


def _http_request(model: str, tensors: list[tuple[str, str, np.ndarray]], outputs: list[str], binary: bool):
    inputs, blobs = [], []
    for name, datatype, a in tensors:
        entry: dict[str, Any] = {"name": name, "shape": list(a.shape), "datatype": datatype}
        if binary:
            blob = _raw(datatype, a)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in a.ravel()]
        else:
            entry["data"] = a.ravel().tolist()
        inputs.append(entry)
    wanted = [{"name": n, "parameters": {"binary_data": True}} if binary else {"name": n} for n in outputs]
    header = json.dumps({"inputs": inputs, "outputs": wanted}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json",
               "Accept-Encoding": "identity"}
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(header))
    return f"/v2/models/{model}/infer", header + b"".join(blobs), headers


def _grpc_request(model: str, tensors: list[tuple[str, str, np.ndarray]], outputs: list[str]) -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    r = pb.ModelInferRequest(model_name=model)
    for name, datatype, a in tensors:
        r.inputs.add(name=name, datatype=datatype, shape=list(a.shape))
        r.raw_input_contents.append(_raw(datatype, a))
    for n in outputs:
        r.outputs.add(name=n)
    return r.SerializeToString()


def _set_params(target: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, int):
            target[key].int64_param = value
        else:
            target[key].string_param = value


class ShmSlots:
    """System shared-memory regions for ``slots`` concurrent requests: per slot one input region (the
    inputs of one pool entry, back to back) and one output region (each output at its own offset,
    ``output_sizes`` bytes: exact for fixed shapes, else ``--output-shared-memory-size``).

    ``async with ShmSlots(...) as shm:`` creates and registers them; ``shm.requests`` holds one encoded
    request per slot. Leaving the block unregisters every region and unlinks its object, errors or not.
    """

    def __init__(self, endpoint: Endpoint, model: str, pool: Sequence[list[tuple[str, str, np.ndarray]]],
                 outputs: Sequence[str], output_sizes: Sequence[int], slots: int) -> None:
        self.endpoint, self.model, self.pool = endpoint, model, pool
        self.outputs, self.output_sizes, self.slots = list(outputs), list(output_sizes), max(1, slots)
        self.prefix = f"slipway_perf_{os.getpid()}_{id(self) & 0xFFFF:x}"
        self._memory: list[Any] = []  # multiprocessing.shared_memory.SharedMemory objects
        self._registered: list[str] = []
        self.requests: list[Any] = []
        self.outputs_at: list[dict[str, tuple[Any, int, int]]] = []  # per slot: output -> (buffer, offset, size)

    async def __aenter__(self) -> ShmSlots:
        try:
            for slot in range(self.slots):
                self.requests.append(await self._slot(slot, self.pool[slot % len(self.pool)]))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _slot(self, slot: int, tensors: list[tuple[str, str, np.ndarray]]) -> Any:
        blobs = [_raw(datatype, a) for _, datatype, a in tensors]
        name_in, name_out = f"{self.prefix}_{slot}_in", f"{self.prefix}_{slot}_out"
        sizes = {name_in: max(1, sum(len(b) for b in blobs)), name_out: max(1, sum(self.output_sizes))}
        memory = self._create(name_in, sizes[name_in])
        inputs, pos = [], 0
        for (name, datatype, a), blob in zip(tensors, blobs, strict=True):
            memory.buf[pos : pos + len(blob)] = blob
            inputs.append((name, datatype, list(a.shape), name_in, pos, len(blob)))
            pos += len(blob)
        region = self._create(name_out, sizes[name_out])
        outputs, pos, at = [], 0, {}
        for name, size in zip(self.outputs, self.output_sizes, strict=True):
            outputs.append((name, name_out, pos, size))
            at[name] = (region.buf, pos, size)
            pos += size
        self.outputs_at.append(at)
        for name in (name_in, name_out):
            await self.endpoint.shm_register(name, "/" + name, sizes[name])
            self._registered.append(name)
        return self.endpoint.encode_shm(self.model, inputs, outputs)

    def _create(self, name: str, size: int) -> Any:
        from multiprocessing import shared_memory

        memory = shared_memory.SharedMemory(name=name, create=True, size=size)
        self._memory.append(memory)
        return memory

    async def close(self) -> None:
        """Unregister (best effort: the server may be gone) and unlink every region."""
        for name in self._registered:
            try:
                await self.endpoint.shm_unregister(name)
            except Exception:  # noqa: BLE001 - the objects are unlinked below whatever the server says
                pass
        self._registered.clear()
        self.outputs_at.clear()
        for memory in self._memory:
            memory.close()
            memory.unlink()
        self._memory.clear()


async def scrape_metrics(session: Any, url: str) -> dict[str, float]:
    """The ``process_*`` CPU seconds and resident bytes from a Prometheus endpoint (HOST:PORT[/path])."""
    target = url if "/" in url.removeprefix("http://") else url + "/metrics"
    target = target if target.startswith("http") else "http://" + target
    async with session.get(target) as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        for key in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
            if line.startswith(key + " "):
                out[key] = float(line.split()[1])
    return out
