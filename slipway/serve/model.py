"""One loaded model version: its engine sessions (instances that share weights), its batcher, and
the checks of every request against its config.

The config is Triton's ``ModelConfig`` (already completed and checked by the repository). The
engine is chosen from platform/backend and instance kind (``onnxruntime_onnx`` -> "ort" or
"ort-cuda" on ``KIND_GPU``; ``openvino`` -> "openvino" / "openvino-gpu"); the settings ``slipway
tune`` wrote beside the model file choose its options unless the config's ``parameters`` say
otherwise. Triton's onnxruntime parameter names are understood (``intra_op_thread_count``,
``inter_op_thread_count``, ``execution_mode``, ``enable_mem_arena``, ``enable_mem_pattern``) and
slipway's own (``threads``, ``precision``, ``backend``, and any engine setting by name).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slipway.errors import ServeError, UserError, one_line
from slipway.serve import tensors
from slipway.serve.batcher import Batcher, BatchPolicy, QueuePolicy
from slipway.serve.stats import ModelStats
from slipway.serve.types import InferRequest, InferResponse, InferTensor

__all__ = ["TensorSpec", "ModelVersion", "load_version", "engine_options"]

log = logging.getLogger("slipway.serve")

_TRITON_PARAMS = {  # Triton onnxruntime-backend parameter -> (slipway setting, converter)
    "inter_op_thread_count": ("inter_op_threads", int),
    "execution_mode": ("execution_mode", lambda v: "parallel" if str(v) == "1" else "sequential"),
    "enable_mem_arena": ("arena", lambda v: str(v).lower() in ("1", "true")),
    "enable_mem_pattern": ("mem_pattern", lambda v: str(v).lower() in ("1", "true")),
}


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


def _specs(entries) -> list[TensorSpec]:
    out = []
    for e in entries:
        reshape = tuple(e.reshape.shape) if e.HasField("reshape") else None
        name = _type_name(e.data_type)
        out.append(TensorSpec(e.name, tensors.datatype_from_config(name), tuple(e.dims), reshape,
                              bool(getattr(e, "optional", False))))
    return out


def _type_name(value: int) -> str:
    from tritonclient.grpc import model_config_pb2 as mc

    return mc.DataType.Name(value)


class ModelVersion:
    """A ready version: ``await infer(request)``; ``await close()`` drains it."""

    def __init__(self, name: str, version: int, config, platform: str, run, instances: int,
                 closer=None, *, max_pending: int = 1024) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.platform = platform
        self.max_batch_size = int(config.max_batch_size)
        self.inputs = _specs(config.input)
        self.outputs = _specs(config.output)
        self._in = {t.name: t for t in self.inputs}
        self._out = {t.name: t for t in self.outputs}
        self.stats = ModelStats(name, str(version))
        self.batcher = Batcher(run, instances, batch_policy(config), self.stats, max_pending=max_pending, name=name)
        self._closer = closer
        self.closing = False

    # -- requests -------------------------------------------------------------------------------

    def feeds(self, request: InferRequest) -> tuple[dict[str, np.ndarray], int]:
        """The engine feeds of ``request`` and its batch rows, after checking it against the config."""
        given = {t.name: t for t in request.inputs}
        if len(given) != len(request.inputs):
            raise ServeError(f"model {self.name!r}: an input name is given twice", 400)
        unknown = [n for n in given if n not in self._in]
        if unknown:
            raise ServeError(f"model {self.name!r} has no input {unknown[0]!r} (inputs: {', '.join(self._in)})", 400)
        feeds: dict[str, np.ndarray] = {}
        rows = 1
        batched = self.max_batch_size > 0
        for spec in self.inputs:
            t = given.get(spec.name)
            if t is None:
                if spec.optional:
                    continue
                raise ServeError(f"model {self.name!r}: input {spec.name!r} is missing", 400)
            if t.datatype != spec.datatype:
                raise ServeError(
                    f"input {spec.name!r}: datatype {t.datatype} does not match the model's {spec.datatype}", 400)
            shape = list(t.shape)
            if batched:
                if not shape:
                    raise ServeError(f"input {spec.name!r}: shape [] has no batch dimension", 400)
                n = shape[0]
                if n < 1 or n > self.max_batch_size:
                    raise ServeError(
                        f"input {spec.name!r}: batch size {n} is outside 1..{self.max_batch_size}", 400)
                if feeds and n != rows:
                    raise ServeError(f"input {spec.name!r}: batch size {n} differs from the other inputs' {rows}", 400)
                rows = n
                body = shape[1:]
            else:
                body = shape
            if not _dims_match(body, spec.dims):
                want = ([-1] if batched else []) + list(spec.dims)
                raise ServeError(f"input {spec.name!r}: shape {shape} does not match the model's {want}", 400)
            data = t.data
            if spec.datatype == "BYTES" and self.platform != "python":
                data = _text(spec.name, data)
            if spec.reshape is not None:
                data = data.reshape(([rows] if batched else []) + list(spec.reshape))
            feeds[spec.name] = data
        return feeds, rows

    async def infer(self, request: InferRequest) -> InferResponse:
        start = time.monotonic_ns()
        try:
            feeds, rows = self.feeds(request)
            wanted = self._wanted(request)
        except ServeError:
            self.stats.request_done(False, time.monotonic_ns() - start, reason="OTHER")
            raise
        results = await self.batcher.infer(feeds, priority=request.priority, timeout_us=request.timeout_us)
        outputs = []
        for spec, params in wanted:
            arr = results.get(spec.name)
            if arr is None:
                raise ServeError(f"model {self.name!r} did not produce output {spec.name!r}", 500)
            if spec.reshape is not None:
                arr = arr.reshape(([rows] if self.max_batch_size > 0 else []) + list(spec.dims))
            if arr.dtype != object and tensors.DATATYPES[spec.datatype] != arr.dtype:
                arr = arr.astype(tensors.DATATYPES[spec.datatype])
            outputs.append(InferTensor(spec.name, spec.datatype, list(arr.shape), np.ascontiguousarray(arr), params))
        return InferResponse(self.name, str(self.version), request.id, outputs)

    def _wanted(self, request: InferRequest) -> list[tuple[TensorSpec, dict]]:
        if not request.outputs:
            return [(s, {}) for s in self.outputs]
        out = []
        for r in request.outputs:
            spec = self._out.get(r.name)
            if spec is None:
                raise ServeError(
                    f"model {self.name!r} has no output {r.name!r} (outputs: {', '.join(self._out)})", 400)
            out.append((spec, r.parameters))
        return out

    # -- life cycle -----------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        batched = self.max_batch_size > 0
        return {
            "inputs": [s.metadata(batched) for s in self.inputs],
            "outputs": [s.metadata(batched) for s in self.outputs],
        }

    async def close(self, drain: bool = True) -> None:
        self.closing = True
        await self.batcher.close(drain=drain)
        if self._closer is not None:
            self._closer()
            self._closer = None


def _text(name: str, data: np.ndarray) -> np.ndarray:
    """BYTES elements as str: engines hold ONNX strings as text (bytes would arrive as "b'...'")."""
    out = np.empty(data.shape, dtype=object)
    flat, dst = data.reshape(-1), out.reshape(-1)
    try:
        for i, x in enumerate(flat):
            dst[i] = x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)
    except UnicodeDecodeError:
        raise ServeError(f"input {name!r}: BYTES element {i} is not UTF-8 text, which ONNX strings must be", 400) \
            from None
    return out


def _dims_match(shape: list[int], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def batch_policy(config) -> BatchPolicy:
    """The batcher's policy from the config's ``max_batch_size`` and ``dynamic_batching``."""
    dyn = config.dynamic_batching if config.HasField("dynamic_batching") else None
    if dyn is None:
        return BatchPolicy(max_batch_size=int(config.max_batch_size), dynamic=False)
    return BatchPolicy(
        max_batch_size=int(config.max_batch_size),
        dynamic=True,
        preferred_batch_sizes=[int(x) for x in dyn.preferred_batch_size],
        max_queue_delay_us=int(dyn.max_queue_delay_microseconds),
        priority_levels=int(dyn.priority_levels),
        default_priority=int(dyn.default_priority_level),
        default_queue_policy=_queue_policy(dyn.default_queue_policy) if dyn.HasField("default_queue_policy")
        else QueuePolicy(),
        priority_queue_policy={int(k): _queue_policy(v) for k, v in dyn.priority_queue_policy.items()},
    )


def _queue_policy(p) -> QueuePolicy:
    from tritonclient.grpc import model_config_pb2 as mc

    return QueuePolicy(
        timeout_us=int(p.default_timeout_microseconds),
        allow_timeout_override=bool(p.allow_timeout_override),
        max_queue_size=int(p.max_queue_size),
        timeout_action=mc.ModelQueuePolicy.TimeoutAction.Name(p.timeout_action),
    )


# ---------------------------------------------------------------------------------------------
# loading


def engine_options(config, model_file: Path, threads: int = 0) -> tuple[str, Any]:
    """(backend name, Options) for a version: tuned settings, then the config's parameters.

    Without a thread count from either, N > 1 instances split the cores between them (each gets
    ``cores // N`` intra-op threads): on CPU, two single-threaded instances of a conv net outrun
    one instance with two threads, and N instances with every core each oversubscribe the CPU.
    """
    from slipway.backends import Options
    from slipway.settings import read_settings

    platform = (config.backend or config.platform or "onnxruntime").lower()
    kinds = {g.kind for g in config.instance_group}
    gpu = any(_kind_name(k) == "KIND_GPU" for k in kinds)
    family = "openvino" if "openvino" in platform else "ort"
    backend = {("ort", False): "ort", ("ort", True): "ort-cuda", ("openvino", False): "openvino",
               ("openvino", True): "openvino-gpu"}[(family, gpu)]
    options = Options(threads=threads)
    tuned = read_settings(model_file) if model_file.suffix == ".onnx" else None
    if tuned is not None and tuned["backend"].split("-")[0] == backend.split("-")[0]:
        backend = tuned["backend"] if not gpu or "gpu" in tuned["backend"] or "cuda" in tuned["backend"] else backend
        options = Options(**tuned["options"])
    instances = _instances(config)
    if options.threads == 0 and instances > 1:
        # N instances each with every core would oversubscribe the CPU: split the cores between them
        options.threads = max(1, (os.cpu_count() or 1) // instances)
    params = {k: v.string_value for k, v in config.parameters.items()}
    if "backend" in params:
        backend = params.pop("backend")
    for key, value in params.items():
        if key in ("intra_op_thread_count", "threads"):
            options.threads = _int_param(key, value)
        elif key == "precision":
            options.precision = value
        elif key in _TRITON_PARAMS and backend.startswith("ort"):
            setting, conv = _TRITON_PARAMS[key]
            options.settings[setting] = conv(value)
        elif key.startswith("slipway."):
            options.settings[key[len("slipway."):]] = _setting_value(value)
    return backend, options


def _kind_name(kind: int) -> str:
    from tritonclient.grpc import model_config_pb2 as mc

    return mc.ModelInstanceGroup.Kind.Name(kind)


def _int_param(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ServeError(f"config parameter {key}={value!r} must be an integer", 400) from None


def _setting_value(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(value)
    except ValueError:
        return value


def _instances(config) -> int:
    return max(1, sum(int(g.count) or 1 for g in config.instance_group)) if config.instance_group else 1


def _engine(name: str, version: int, config, model_file: Path, threads: int):
    """Load the engine (blocking: called in a thread) -> (platform, run, closer, instances)."""
    instances = _instances(config)
    if (config.backend or "").lower() == "python":
        fn = _python_model(model_file)
        run = lambda i, feeds: fn(feeds)  # noqa: E731
        warmup(config, run, instances)
        return "python", run, None, instances
    from slipway.backends import get

    backend, options = engine_options(config, model_file, threads)
    b = get(backend)
    why = b.available()
    if why:
        raise ServeError(f"model {name!r} version {version}: backend {backend!r} is not available: {why}", 400)
    try:
        sessions = b.load(str(model_file), options, instances=instances)
    except UserError as e:
        raise ServeError(f"model {name!r} version {version}: {e}", 400) from None

    def run(i: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return sessions[i].run(feeds)

    def closer() -> None:
        for s in sessions:
            s.close()

    try:
        warmup(config, run, instances)
    except Exception as e:
        closer()
        raise ServeError(f"model {name!r} version {version}: warmup failed: {one_line(e)}", 400) from None
    log.info("loaded %s version %d on %s (%d instance%s, %s)", name, version, backend, instances,
             "s" if instances > 1 else "", options.to_dict())
    return config.platform or config.backend or "onnxruntime_onnx", run, closer, instances


def _python_model(path: Path):
    spec = importlib.util.spec_from_file_location(f"slipway_python_model_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ServeError(f"cannot import python model {path}", 400)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # user code: report it on one line
        raise ServeError(f"python model {path} failed to import: {type(e).__name__}: {e}", 400) from None
    fn = getattr(module, "infer", None)
    if not callable(fn):
        raise ServeError(f"python model {path} must define infer(inputs: dict) -> dict", 400)
    return fn


def warmup(config, run, instances: int) -> None:
    """Run the config's ``model_warmup`` samples (or one zero sample at batch 1) on every instance."""
    samples = list(config.model_warmup)
    batched = int(config.max_batch_size) > 0
    if samples:
        for s in samples:
            feeds = {}
            rows = max(1, int(s.batch_size))
            for name, w in s.inputs.items():
                dtype = tensors.DATATYPES[tensors.datatype_from_config(_type_name(w.data_type))]
                shape = ([rows] if batched else []) + list(w.dims)
                if w.HasField("random_data") and w.random_data and dtype.kind == "f":
                    feeds[name] = np.random.default_rng(0).standard_normal(shape).astype(dtype)
                else:
                    feeds[name] = np.zeros(shape, dtype=dtype)
            for _ in range(max(1, int(s.count))):
                for i in range(instances):
                    run(i, feeds)
        return
    inputs = _specs(config.input)
    if any(-1 in s.dims or s.datatype == "BYTES" for s in inputs):
        return  # no safe default sample
    feeds = {}
    for s in inputs:
        shape = ([1] if batched else []) + list(s.reshape if s.reshape is not None else s.dims)
        feeds[s.name] = np.zeros(shape, dtype=tensors.DATATYPES[s.datatype])
    for i in range(instances):
        run(i, feeds)


async def load_version(name: str, version: int, config, model_file: Path, *, threads: int = 0,
                       max_pending: int = 1024) -> ModelVersion:
    """Load a version off the event loop (engines take seconds to compile)."""
    loop = asyncio.get_running_loop()
    platform, run, closer, instances = await loop.run_in_executor(
        None, _engine, name, version, config, model_file, threads)
    return ModelVersion(name, version, config, platform, run, instances, closer, max_pending=max_pending)
