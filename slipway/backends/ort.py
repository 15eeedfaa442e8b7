"""onnxruntime engines: ``CPU`` ("ort"), ``CUDA`` ("ort-cuda") and ``TENSORRT`` ("ort-tensorrt").

All three share the session code; they differ in the execution providers they ask for.

Settings (``Options.settings``), each with the values a tuner should try:

* ``graph_optimization_level``: all | extended | layout | basic | disabled
* ``execution_mode``: sequential | parallel (run independent branches concurrently)
* ``inter_op_threads``: threads for ``parallel`` mode (0 = onnxruntime's default)
* ``io_binding``: run through an ``IOBinding`` with the outputs bound to CPU memory
* ``arena``: onnxruntime's CPU memory arena (``enable_cpu_mem_arena``)
* ``mem_pattern``: pre-planned activation memory per input shape (``enable_mem_pattern``)
* ``spin``: let idle pool threads spin (``allow_spinning``): lower latency, busier cores

``Options.threads`` sets ``intra_op_num_threads``. ORT CPU runs the model's own precision:
"fp32", or "int8" for a QDQ (quantized) model; converting precision is the tuner's job.

Instances share the weights: the N sessions of ``load(..., instances=N)`` wrap one
``InferenceSession`` (its ``Run`` is thread-safe; each instance runs on its caller's thread plus
the session's pool). onnxruntime's Python API has no prepacked-weights container, and N
sessions given the same initializers through ``add_initializer`` still keep N prepacked copies
of every MatMul/Conv weight (or run unpacked, slower, with ``session.disable_prepacking``), so
one session is the only way to hold a single copy of the weights with prepacking on.

:func:`ort_session` is THE place an ``onnxruntime.InferenceSession`` is made: the engines here,
verification (optimizations off), calibration, profiling and the machine probes all go through
it, so every session reads its model the same way (:func:`slipway.backends.base.onnx_source`,
> 2 GB models through one temporary file that lives as long as the session) and keeps
onnxruntime's own log off the terminal (errors come back as exceptions).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slipway.backends.base import (
    FeedCheck,
    Options,
    SessionBase,
    TensorInfo,
    check_options,
    one_line,
    onnx_source,
)
from slipway.errors import UserError

__all__ = ["OrtBackend", "OrtSession", "CPU", "CUDA", "TENSORRT", "ort_session", "LEVELS"]

SETTINGS: dict[str, tuple[Any, ...]] = {
    "graph_optimization_level": ("all", "extended", "layout", "basic", "disabled"),
    "execution_mode": ("sequential", "parallel"),
    "inter_op_threads": (0, 1, 2),
    "io_binding": (False, True),
    "arena": (True, False),
    "mem_pattern": (True, False),
    "spin": (True, False),
}
LEVELS = {  # graph optimization level names -> onnxruntime's GraphOptimizationLevel members
    "disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL",
}
_DTYPES = {
    "float": np.float32, "double": np.float64, "float16": np.float16, "bool": np.bool_,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
}


class OrtBackend:
    """One onnxruntime execution provider (plus the CPU provider for nodes it cannot take)."""

    def __init__(self, name: str, provider: str, precisions: tuple[str, ...],
                 extra_settings: Mapping[str, tuple[Any, ...]] | None = None) -> None:
        self.name = name
        self.provider = provider
        self.precisions = precisions
        self.settings: dict[str, tuple[Any, ...]] = {**SETTINGS, **(extra_settings or {})}

    def __repr__(self) -> str:
        return f"OrtBackend({self.name!r})"

    def available(self) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        providers = ort.get_available_providers()
        if self.provider not in providers:
            return f"onnxruntime has no {self.provider} here (it has: {', '.join(providers)})"
        return None

    def load(self, model: Any, options: Options | None = None, *, instances: int = 1) -> list[OrtSession]:
        """``instances`` sessions of ``model`` sharing one ``InferenceSession`` (one copy of the weights)."""
        if options is not None and options.precision not in self.precisions and self.name == "ort":
            raise UserError(
                f"ort: precision {options.precision!r} is not supported on ORT CPU, which runs the model's own "
                "precision (fp32, or int8 for a QDQ model); convert the model first or use another backend"
            )
        opts = check_options(self.name, options, self.precisions, self.settings, instances)
        why = self.available()
        if why:
            raise UserError(f"backend {self.name!r} is not available: {why}")
        import onnxruntime as ort

        sess = ort_session(model, session_options=_session_options(ort, opts), providers=self._providers(opts))
        shared = _Shared(sess, instances)
        io_binding = bool(opts.settings.get("io_binding", False))
        return [OrtSession(self.name, shared, io_binding) for _ in range(instances)]

    def _providers(self, opts: Options) -> list[Any]:
        if self.provider == "CPUExecutionProvider":
            return ["CPUExecutionProvider"]
        if self.provider == "CUDAExecutionProvider":
            cuda = {"cudnn_conv_algo_search": opts.settings.get("conv_algo_search", "EXHAUSTIVE")}
            return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        trt = {
            "trt_fp16_enable": opts.precision == "fp16",
            "trt_int8_enable": opts.precision == "int8",
            "trt_engine_cache_enable": bool(opts.settings.get("engine_cache", True)),
            "trt_engine_cache_path": str(trt_cache_dir()),
        }
        return [(self.provider, trt), "CUDAExecutionProvider", "CPUExecutionProvider"]


def ort_session(
    model: Any,
    *,
    optimization: str = "all",
    threads: int = 0,
    inter_threads: int | None = None,
    profile_prefix: str | os.PathLike | None = None,
    optimized_path: str | os.PathLike | None = None,
    config: Mapping[str, str] | None = None,
    session_options: Any = None,
    providers: Sequence[Any] = ("CPUExecutionProvider",),
    raw_errors: bool = False,
) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``model`` (a path, bytes, ``ModelProto`` or ``onnx_ir.Model``).

    ``optimization`` is a graph optimization level (:data:`LEVELS`: ``"disabled"`` runs the graph
    node by node as written, as verification needs; ``"all"`` as a user deploys it), ``threads``
    the intra-op threads (0: onnxruntime's default), ``inter_threads`` the inter-op ones.
    ``profile_prefix`` turns profiling on (the trace file's prefix), ``optimized_path`` saves the
    graph onnxruntime executes, ``config`` adds session config entries. ``session_options``
    (prebuilt by an engine) replaces all of these. onnxruntime's log is always off (severity 4).

    A model that cannot be loaded raises a one-line ``UserError`` (``raw_errors``: onnxruntime's own
    exception, for callers with their own message). A model too big for one protobuf goes through a
    temporary file (:func:`~slipway.backends.base.onnx_source`) removed when the session is freed.
    """
    import onnxruntime as ort

    so = session_options if session_options is not None else ort.SessionOptions()
    if session_options is None:
        level = getattr(ort.GraphOptimizationLevel, LEVELS.get(optimization, ""), None)
        if level is None:
            raise UserError(f"onnxruntime {ort.__version__} has no graph_optimization_level {optimization!r}")
        so.graph_optimization_level = level
        so.intra_op_num_threads = threads
        if inter_threads is not None:
            so.inter_op_num_threads = inter_threads
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = str(profile_prefix)
        if optimized_path is not None:
            so.optimized_model_filepath = str(optimized_path)
        for key, value in (config or {}).items():
            so.add_session_config_entry(key, value)
    so.log_severity_level = 4  # errors come back as exceptions (one line); ORT's own log stays off the terminal
    source = contextlib.ExitStack()
    try:
        sess = ort.InferenceSession(source.enter_context(onnx_source(model)), so, providers=list(providers))
    except _load_errors(ort) as e:  # bad protobuf, unsupported op, invalid graph, missing weights file
        source.close()
        if raw_errors:
            raise
        raise UserError(f"onnxruntime cannot load the model: {one_line(e)}") from None
    except BaseException:
        source.close()
        raise
    weakref.finalize(sess, source.close)  # a temporary model file lives as long as the session
    return sess


def trt_cache_dir() -> Path:
    """Where TensorRT engines are cached: ``$SLIPWAY_CACHE/trt`` or ``~/.cache/slipway/trt``."""
    root = Path(os.environ.get("SLIPWAY_CACHE", Path.home() / ".cache" / "slipway"))
    path = root / "trt"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _session_options(ort: Any, opts: Options) -> Any:
    s = opts.settings
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads
    so.inter_op_num_threads = int(s.get("inter_op_threads", 0))
    level = s.get("graph_optimization_level", "all")
    optimization = getattr(ort.GraphOptimizationLevel, LEVELS[level], None)
    if optimization is None:
        raise UserError(f"onnxruntime {ort.__version__} has no graph_optimization_level {level!r}")
    so.graph_optimization_level = optimization
    parallel = s.get("execution_mode", "sequential") == "parallel"
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = bool(s.get("arena", True))
    so.enable_mem_pattern = bool(s.get("mem_pattern", True))
    if "spin" in s:
        spin = "1" if s["spin"] else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return so


class _Shared:
    """One InferenceSession shared by several instances; released when the last one closes."""

    def __init__(self, sess: Any, users: int) -> None:
        self.sess = sess
        self.users = users
        self.lock = threading.Lock()

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self.sess = None


def _closed(*args: Any) -> Any:
    raise UserError("this session is closed")


class OrtSession(SessionBase):
    """One instance: ``run(feeds)`` checks the feeds, runs, and returns ``{output name: array}``."""

    def __init__(self, backend: str, shared: _Shared, io_binding: bool) -> None:
        import onnxruntime as ort

        sess = shared.sess
        self.backend = backend
        self._shared = shared
        self._inputs = [_info(a) for a in sess.get_inputs()]
        self._outputs = [_info(a) for a in sess.get_outputs()]
        self._check = FeedCheck(self._inputs, [bool(a.shape) for a in sess.get_inputs()])
        self._names = [t.name for t in self._outputs]
        self._errors = _run_errors(ort)
        # The C++ session's run skips onnxruntime's Python-side feed checks, which self._check replaces.
        self._call = getattr(sess, "_sess", sess).run
        self._binding = None
        if io_binding:
            self._binding = sess.io_binding()
        self._sess = sess

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = self._requested(feeds, outputs)
        if type(feeds) is not dict:
            feeds = dict(feeds)
        try:
            if self._binding is None:
                values = self._call(names, feeds, None)
            else:
                values = self._run_bound(names, feeds)
        except self._errors as e:
            raise UserError(f"onnxruntime could not run the model: {one_line(e)}") from None
        return dict(zip(names, values, strict=True))

    def _run_bound(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self._binding
        for name in self._check.names:
            binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        # Bound afresh each run: a bound output keeps its first shape, which a dynamic dim changes.
        binding.clear_binding_outputs()
        for name in names:
            binding.bind_output(name, "cpu")
        self._sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def close(self) -> None:
        if self._sess is None:
            return
        if self._binding is not None:
            self._binding.clear_binding_inputs()
            self._binding.clear_binding_outputs()
        self._binding = None
        self._sess = None
        self._call = _closed
        self._shared.release()

    def __repr__(self) -> str:
        return f"OrtSession({self.backend!r}, inputs={[t.name for t in self._inputs]})"


def _info(arg: Any) -> TensorInfo:
    kind = arg.type
    if kind.startswith("tensor(") and kind[7:-1] in _DTYPES:
        dtype = np.dtype(_DTYPES[kind[7:-1]])
    else:  # strings, bfloat16/float8 (no numpy dtype), sequences, maps: checked by onnxruntime
        dtype = np.dtype(object)
    shape = arg.shape if isinstance(arg.shape, list) else []
    return TensorInfo(arg.name, tuple(shape), dtype)


def _load_errors(ort: Any) -> tuple[type[BaseException], ...]:
    state = ort.capi.onnxruntime_pybind11_state
    found = [getattr(state, n) for n in dir(state) if n[:1].isupper()]
    errors = [e for e in found if isinstance(e, type) and issubclass(e, Exception)]
    return (*errors, RuntimeError, ValueError)


def _run_errors(ort: Any) -> tuple[type[BaseException], ...]:
    state = ort.capi.onnxruntime_pybind11_state
    found = tuple(getattr(state, n) for n in ("InvalidArgument", "RuntimeException", "Fail") if hasattr(state, n))
    return (*found, RuntimeError)  # run_with_iobinding re-raises failures as RuntimeError


CPU = OrtBackend("ort", "CPUExecutionProvider", ("fp32", "int8"))
CUDA = OrtBackend("ort-cuda", "CUDAExecutionProvider", ("fp32", "fp16", "int8"),
                  {"conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")})
TENSORRT = OrtBackend("ort-tensorrt", "TensorrtExecutionProvider", ("fp32", "fp16", "int8"),
                      {"engine_cache": (True, False)})
