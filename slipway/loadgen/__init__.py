"""``slipway perf``: load against any KServe v2 server (slipway, Triton, MLServer), perf_analyzer-style.

    from slipway.loadgen import profile, Settings
    result = profile("127.0.0.1:8000", "resnet", concurrency=[1, 2, 4], settings=Settings(window_s=2))

Before any load: the model's metadata and config are read (an unreachable server, an unknown
model, a ``--shape`` that does not fit is one line) and one request is sent as a probe (a shape
or input the model refuses is one line). Then each level (a concurrency, or a request rate) runs
its windows (:mod:`slipway.loadgen.measure`) and is summarized from the last three
(:mod:`slipway.loadgen.results`).

With ``shared_memory="system"`` the inputs are written once into system shared-memory regions (one
input and one output region per concurrent slot, :class:`~slipway.loadgen.client.ShmSlots`) and the
requests only name them, as perf_analyzer's ``--shared-memory system``.

With ``validate=True`` every reply is decoded and checked against the expected outputs given with the
input data (an .npz's ``out:NAME`` arrays, perf_analyzer JSON's ``validation_data``; see
:func:`~slipway.loadgen.inputs.expected_outputs`), the probe's included: a mismatch is an error of kind
"wrong output" (the level's ``wrong`` count), and the decode time is reported as "Client Recv". With
shared memory the outputs are read from the slot's output region.

* :mod:`slipway.loadgen.client`   the wire: prebuilt HTTP / gRPC requests, control calls as dicts
* :mod:`slipway.loadgen.inputs`   model info from the server, input pools (random, .npz, JSON, images)
* :mod:`slipway.loadgen.window`   one window: latencies, errors, lag, server counters diffed
* :mod:`slipway.loadgen.measure`  closed / open loop, windows until stable
* :mod:`slipway.loadgen.results`  summaries, perf_analyzer's CSV
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slipway.errors import UserError
from slipway.loadgen.client import Endpoint, RequestFailed, ShmSlots
from slipway.loadgen.inputs import ModelInfo, expected_outputs, make_pool, parse_shape
from slipway.loadgen.measure import Level, Probe, Settings, Validator, run_level
from slipway.loadgen.results import summarize, to_csv

__all__ = ["profile", "Profile", "Settings", "parse_shape", "parse_range", "to_csv", "SHARED_MEMORY",
           "OUTPUT_SHM_SIZE"]

SHARED_MEMORY = ("none", "system")
OUTPUT_SHM_SIZE = 100 * 1024  # perf_analyzer's default --output-shared-memory-size
UNKNOWN_BATCH_LIMIT = 2**31 - 1  # a batching model whose limit the server does not tell (no config extension)


@dataclass
class Profile:
    model: ModelInfo
    url: str
    protocol: str
    batch: int
    levels: list[Level] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    client_sent: int = 0  # every request sent (probe, warm-up and windows included)
    server_counted: int | None = None  # the server's success + fail count over the same span
    notes: list[str] = field(default_factory=list)  # what the server did not offer (config, statistics)
    validated: bool = False  # every reply decoded and checked against the expected outputs
    probe_error: str | None = None  # the probe's reply failed validation: its message

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.name, "platform": self.model.platform, "url": self.url,
                "protocol": self.protocol, "batch": self.batch, "composing_models": list(self.model.steps),
                "client_sent": self.client_sent, "server_counted": self.server_counted, "notes": self.notes,
                "validated": self.validated, "probe_error": self.probe_error, "levels": self.rows}


def parse_range(text: str, option: str, integer: bool) -> list[float]:
    """perf_analyzer's ``START[:END[:STEP]]`` -> the values (END inclusive, STEP default 1)."""
    parts = text.split(":")
    try:
        nums = [int(p) if integer else float(p) for p in parts]
    except ValueError:
        nums = []
    if not 1 <= len(nums) <= 3 or len(nums) != len(parts):
        raise UserError(f"bad {option} {text!r}: expected START[:END[:STEP]]")
    start, end, step = nums[0], nums[1] if len(nums) > 1 else nums[0], nums[2] if len(nums) > 2 else 1
    if start <= 0 or end < start or step <= 0:
        raise UserError(f"bad {option} {text!r}: START must be more than 0, END at least START, STEP more than 0")
    values, v = [], start
    while v <= end + 1e-9 and len(values) < 1000:
        values.append(v)
        v += step
    return values


def profile(url: str, model: str, *, protocol: str = "http", concurrency: Sequence[int] | None = None,
            rates: Sequence[float] | None = None, settings: Settings | None = None, batch: int = 1,
            shapes: Mapping[str, Sequence[int]] | None = None, data: str | Path | None = None,
            binary: bool = True, string_length: int = 16, metrics_url: str | None = None,
            server_pid: int | None = None, on_window: Callable[[str, float, Any], None] | None = None,
            shared_memory: str = "none", output_shm_size: int = OUTPUT_SHM_SIZE,
            headers: Mapping[str, str] | None = None, validate: bool = False, rtol: float = 1e-3,
            atol: float = 1e-4) -> Profile:
    """Measure ``model`` at ``url`` at each concurrency (closed loop) or request rate (open loop).

    ``shared_memory="system"``: inputs and outputs in system shared memory (the server must offer
    Triton's extension and run on this machine); ``output_shm_size``: the bytes of each output's
    region when its size cannot be known from the model's metadata (BYTES, dynamic dims). ``headers``: sent
    with every call (HTTP headers, gRPC metadata), e.g. an access token. ``validate``: check every reply
    against the expected outputs in ``data`` within ``atol + rtol * |expected|``.
    """
    if (concurrency is None) == (rates is None):
        raise UserError("give either concurrency levels or request rates")
    if shared_memory not in SHARED_MEMORY:
        raise UserError(f"unknown shared memory kind {shared_memory!r}: expected none or system "
                        "(cuda is not supported)")
    if output_shm_size < 1:
        raise UserError(f"the output shared memory size must be at least 1 byte, got {output_shm_size}")
    settings = settings or Settings()
    coro = _profile(url, model, protocol, list(concurrency or []), list(rates or []), settings, batch, shapes,
                    data, binary, string_length, metrics_url, server_pid, on_window, shared_memory, output_shm_size,
                    headers, (rtol, atol) if validate else None)
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def _profile(url, model, protocol, concurrency, rates, settings, batch, shapes, data, binary, string_length,
                   metrics_url, server_pid, on_window, shared_memory="none", output_shm_size=OUTPUT_SHM_SIZE,
                   headers=None, tolerance=None) -> Profile:
    inflight = max(concurrency) if concurrency else settings.max_inflight
    async with Endpoint(url, protocol, binary=binary, connections=inflight, headers=headers) as endpoint, \
            contextlib.AsyncExitStack() as stack:
        metadata = await endpoint.metadata(model)
        config = await endpoint.config(model)
        info = ModelInfo.from_server(model, metadata, config if config is not None else _guess_config(metadata))
        pool = make_pool(info, batch=batch, shapes=shapes or {}, data=data, string_length=string_length,
                         seed=settings.seed)
        expected = expected_outputs(info, data, batch=batch, rtol=tolerance[0], atol=tolerance[1]) \
            if tolerance is not None else None
        if expected is not None and len(expected) != len(pool):
            raise UserError(f"input data {Path(data).name}: {len(expected)} expected output sets for {len(pool)} "
                            "input sets")
        validators = None
        if shared_memory == "system":
            sizes = [_output_bytes(t, info.max_batch_size, batch, output_shm_size) for t in metadata.get("outputs", [])]
            # one slot per concurrent request (open loop: up to 64 slots, shared round-robin beyond; when validating,
            # one per request that may be in flight, so that no reply is read from a region another one overwrote)
            slots = max(concurrency) if concurrency else \
                settings.max_inflight if expected is not None else min(settings.max_inflight, 64)
            try:
                shm = await stack.enter_async_context(
                    ShmSlots(endpoint, model, pool, list(info.outputs), sizes, slots))
            except RequestFailed as e:
                raise UserError(f"cannot use system shared memory with the server at {url} (it must offer Triton's "
                                f"system shared memory extension and run on this machine): {e}") from None
            requests = shm.requests
            if expected is not None:  # slot s holds pool entry s % len(pool)
                validators = [Validator(expected[s % len(pool)], at) for s, at in enumerate(shm.outputs_at)]
        else:
            requests = [endpoint.encode(model, tensors, list(info.outputs)) for tensors in pool]
            if expected is not None:
                validators = [Validator(e) for e in expected]
        probe = Probe(endpoint, [model, *info.steps], metrics_url=metrics_url, pid=server_pid)
        before = await probe.stats()
        try:
            reply = await endpoint.infer(requests[0], reply=validators is not None)
        except RequestFailed as e:
            raise UserError(f"{model!r} refused the first request ({_describe(pool[0])}): {e}") from None
        result = Profile(info, url, protocol, batch, client_sent=1, validated=validators is not None)
        if validators is not None:
            result.probe_error = validators[0](endpoint, reply)[0]
        if metrics_url:
            import aiohttp

            probe.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            for mode, values in (("concurrency", concurrency), ("request_rate", rates)):
                for value in values:
                    def report(w, mode=mode, value=value):
                        if on_window is not None:
                            on_window(mode, value, w)

                    level = await run_level(endpoint, requests, probe, settings, mode, value, report, validators)
                    result.levels.append(level)
                    result.client_sent += level.sent
                    result.rows.append(summarize(level, model, info.steps, batch))
        finally:
            if probe.session is not None:
                await probe.session.close()
        after = await probe.stats()
        if model in after and model in before:
            result.server_counted = sum(after[model].get(k, 0) - before[model].get(k, 0) for k in ("success", "fail"))
        result.notes += [f"no model config from the server ({'batching assumed' if info.max_batch_size else 'no batching assumed'}"
                         f" from the metadata's shapes)"] if config is None else []
        result.notes += [f"no server statistics (no server-side breakdown): {probe.unavailable}"] if probe.unavailable else []
        return result


def _guess_config(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A server without Triton's model configuration extension (MLServer): every input with a leading -1 dim
    is taken as a batching model (its batch limit unknown), else as a model without batching."""
    shapes = [t.get("shape", []) for t in metadata.get("inputs", [])]
    batching = bool(shapes) and all(s and int(s[0]) == -1 for s in shapes)
    return {"max_batch_size": UNKNOWN_BATCH_LIMIT if batching else 0}


def _output_bytes(t: Mapping[str, Any], max_batch_size: int, batch: int, default: int) -> int:
    """An output's exact size from its metadata (datatype, shape), else ``default`` (BYTES, dynamic dims)."""
    itemsize = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2, "INT32": 4,
                "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8}.get(str(t.get("datatype")))
    dims = [int(d) for d in t.get("shape", [])]
    if max_batch_size > 0 and dims:
        dims[0] = batch
    if itemsize is None or any(d < 0 for d in dims):
        return default
    n = itemsize
    for d in dims:
        n *= d
    return max(n, 1)


def _describe(tensors: list) -> str:
    return ", ".join(f"{name} {datatype}{list(a.shape)}" for name, datatype, a in tensors)
