"""THE wire for ``slipway perf``: one KServe v2 endpoint over HTTP (aiohttp) or gRPC (grpc.aio).

Control calls (metadata, config, statistics) answer plain dicts in the v2 JSON form whichever
protocol carries them. Requests are encoded once (:meth:`Endpoint.encode`) and sent as prebuilt
bytes: HTTP bodies with the binary tensor extension (or JSON tensors, ``binary=False``, for servers
that speak only JSON), gRPC ``ModelInferRequest`` messages serialized once and passed through
grpc.aio untouched, replies read but not decoded. So a request costs the client one socket write
and one read, and the client stays far from being the bottleneck (its CPU is measured anyway).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from slipway.errors import UserError, one_line

__all__ = ["Endpoint", "RequestFailed", "scrape_metrics"]

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
                 timeout_s: float = 600.0) -> None:
        if protocol not in ("http", "grpc"):
            raise UserError(f"unknown protocol {protocol!r}: expected http or grpc")
        if not re.fullmatch(r"[^\s/:]+:\d{1,5}", url.removeprefix("http://")):
            raise UserError(f"bad server address {url!r}: expected HOST:PORT (for example 127.0.0.1:8000)")
        self.url, self.protocol, self.binary = url.removeprefix("http://"), protocol, binary
        self.connections, self.timeout_s = connections, timeout_s
        self._session: Any = None
        self._channel: Any = None
        self._infer: Any = None

    async def open(self) -> Endpoint:
        if self.protocol == "http":
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections + 8 if self.connections else 0),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",))
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

    async def config(self, model: str) -> dict[str, Any]:
        answer = await self._control(model, "/config", "ModelConfig")
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
            reply = await call(request_type(name=model), timeout=min(self.timeout_s, 30.0))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise UserError(f"cannot reach the server at {self.url} over grpc: {one_line(e.details() or e)}"
                                ) from None
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise UserError(f"the server at {self.url} has no model {model!r} ({e.details()})") from None
            raise RequestFailed(f"{e.code().name}: {e.details()}") from None
        return _int_fields(MessageToDict(reply, preserving_proto_field_name=True))

    # -- inference ----------------------------------------------------------------------------

    def encode(self, model: str, tensors: list[tuple[str, str, np.ndarray]], outputs: list[str]) -> Any:
        """One request, ready to send: ``tensors`` are (name, v2 datatype, array)."""
        if self.protocol == "grpc":
            return _grpc_request(model, tensors, outputs)
        return _http_request(model, tensors, outputs, self.binary)

    async def infer(self, request: Any) -> int:
        """Send one encoded request; the reply's size in bytes, or :class:`RequestFailed`."""
        if self.protocol == "grpc":
            import grpc

            try:
                return len(await self._infer(request, timeout=self.timeout_s))
            except grpc.aio.AioRpcError as e:
                raise RequestFailed(f"{e.code().name}: {one_line(e.details() or e)}") from None
        path, body, headers = request
        try:
            async with self._session.post(f"http://{self.url}{path}", data=body, headers=headers) as r:
                data = await r.read()
                if r.status != 200:
                    raise RequestFailed(f"HTTP {r.status}: {_message(data.decode(errors='replace'))}")
                return len(data)
        except RequestFailed:
            raise
        except Exception as e:  # the connection broke, the server went away, a timeout
            raise RequestFailed(f"{type(e).__name__}: {one_line(e)}") from None


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
