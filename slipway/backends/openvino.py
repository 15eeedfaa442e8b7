"""OpenVINO engines: ``CPU`` ("openvino") and ``GPU`` ("openvino-gpu").

``openvino.Core().read_model`` reads the ONNX model (bytes or a path, external data included),
``compile_model(model, device, config)`` compiles it with dynamic dims kept dynamic.

Settings (``Options.settings``), each with the values a tuner should try:

* ``hint``: latency | throughput (``PERFORMANCE_HINT``)
* ``streams``: "auto" or a number of streams >= 1 (``NUM_STREAMS``): requests that run at once

``Options.threads`` sets ``INFERENCE_NUM_THREADS``; ``Options.precision`` sets
``INFERENCE_PRECISION_HINT`` (fp32 -> f32, bf16, fp16 -> f16; int8 runs a QDQ model's quantized
parts in int8 and the rest in f32). ``precisions`` lists what the device reports in
``OPTIMIZATION_CAPABILITIES``, so bf16 appears only on CPUs with bf16 instructions.

Instances share the weights: ``load(..., instances=N)`` compiles once and gives N sessions,
each with its own infer request on the one compiled model.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slipway.backends.base import FeedCheck, Options, SessionBase, TensorInfo, check_options, onnx_source
from slipway.backends.declared import onnx_io
from slipway.errors import MissingDependencyError, UserError, one_line

__all__ = ["OpenVINOBackend", "OpenVINOSession", "CPU", "GPU", "read_io"]

SETTINGS: dict[str, tuple[Any, ...]] = {
    "hint": ("latency", "throughput"),
    "streams": ("auto", 1, 2),
}
_CAPABILITIES = {"FP32": "fp32", "BF16": "bf16", "FP16": "fp16", "INT8": "int8"}
_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("openvino", "openvino") from None
    return openvino


@functools.lru_cache(maxsize=1)
def core() -> Any:
    """The process-wide ``openvino.Core`` (it caches plugins; one is enough)."""
    return _openvino().Core()


class OpenVINOBackend:
    """One OpenVINO device ("CPU", "GPU")."""

    def __init__(self, name: str, device: str) -> None:
        self.name = name
        self.device = device
        self.settings: dict[str, tuple[Any, ...]] = dict(SETTINGS)

    def __repr__(self) -> str:
        return f"OpenVINOBackend({self.name!r})"

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions the device reports it can compute in (empty when the device is not here)."""
        if self.available():
            return ()
        caps = core().get_property(self.device, "OPTIMIZATION_CAPABILITIES")
        return tuple(p for cap, p in _CAPABILITIES.items() if cap in caps)

    def available(self) -> str | None:
        try:
            devices = core().available_devices
        except MissingDependencyError as e:
            return str(e)
        if not any(d == self.device or d.startswith(self.device + ".") for d in devices):
            return f"openvino sees no {self.device} device (devices: {', '.join(devices) or 'none'})"
        return None

    def load(self, model: Any, options: Options | None = None, *, instances: int = 1) -> list[OpenVINOSession]:
        """``instances`` sessions (infer requests) on one compiled model."""
        why = self.available()
        if why:
            raise UserError(f"backend {self.name!r} is not available: {why}")
        opts = check_options(self.name, options, self.precisions, self.settings, instances)
        with onnx_source(model) as source:
            try:
                compiled = core().compile_model(core().read_model(source), self.device, _config(opts))
            except RuntimeError as e:
                raise UserError(f"openvino cannot load the model: {_ov_message(e)}") from None
        return [OpenVINOSession(self.name, compiled) for _ in range(instances)]


def _config(opts: Options) -> dict[str, Any]:
    s = opts.settings
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _PRECISION_HINT[opts.precision]}
    if "hint" in s:
        config["PERFORMANCE_HINT"] = s["hint"].upper()
    if "streams" in s:
        config["NUM_STREAMS"] = "AUTO" if s["streams"] == "auto" else int(s["streams"])
    if opts.threads:
        config["INFERENCE_NUM_THREADS"] = opts.threads
    return config


def _ov_message(e: BaseException) -> str:
    """The informative line of an OpenVINO error (its first lines are source locations)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '")) and "src/" not in ln]
    text = useful[0] if useful else (lines[0] if lines else type(e).__name__)
    return text[:300]


class OpenVINOSession(SessionBase):
    """One infer request: ``run(feeds)`` checks the feeds, infers, and copies the outputs out."""

    def __init__(self, backend: str, compiled: Any) -> None:
        ov = _openvino()
        self.backend = backend
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._inputs = [_info(port) for port in compiled.inputs]
        self._outputs = [_info(port) for port in compiled.outputs]
        ranked = [port.get_partial_shape().rank.is_static for port in compiled.inputs]
        self._check = FeedCheck(self._inputs, ranked)
        self._in = list(enumerate(t.name for t in self._inputs))
        self._names = [t.name for t in self._outputs]
        self._index = {name: i for i, name in enumerate(self._names)}
        self._tensor = ov.Tensor

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = self._requested(feeds, outputs)
        request = self._request
        if request is None:
            raise UserError("this session is closed")
        tensor = self._tensor
        try:
            for i, name in self._in:
                request.set_input_tensor(i, tensor(np.ascontiguousarray(feeds[name]), shared_memory=True))
            request.infer()
        except RuntimeError as e:
            raise UserError(f"openvino could not run the model: {_ov_message(e)}") from None
        index = self._index
        # .data is a view of the request's output memory, reused by the next run: copy it out.
        return {name: request.get_output_tensor(index[name]).data.copy() for name in names}

    def close(self) -> None:
        self._request = None
        self._compiled = None

    def __repr__(self) -> str:
        return f"OpenVINOSession({self.backend!r}, inputs={[t.name for t in self._inputs]})"


def _info(port: Any, *, file: bool = False) -> TensorInfo:
    """A port as a session reports it, or (``file``) as the model file declares it (unknown rank: None,
    a type numpy lacks: None, the file's type name kept for messages)."""
    shape = port.get_partial_shape()
    dims: tuple[int | str | None, ...] | None = None if file else ()
    if shape.rank.is_static:
        dims = tuple(d.get_length() if d.is_static else None for d in shape)
    try:
        dtype: np.dtype | None = np.dtype(port.get_element_type().to_dtype())
    except Exception:  # types without a numpy dtype: checked by OpenVINO
        dtype = None
    if dtype is not None and dtype.kind in "SUO":
        dtype = np.dtype(object)
    names = sorted(port.get_names())
    name = port.get_any_name() if len(names) <= 1 else names[0]
    if file:
        return TensorInfo(name, dims, dtype, f"OpenVINO type {port.get_element_type()}")
    return TensorInfo(name, dims, dtype if dtype is not None else np.dtype(object))


def read_io(path: Path, label: str) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The inputs and outputs a model file declares (the engine's ``io`` reader): an OpenVINO IR
    (``.xml``) through ``read_model`` without compiling it, any other file as ONNX."""
    if Path(path).suffix != ".xml":
        return onnx_io(path, label)
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise UserError(f"{label} needs openvino; install it with: pip install 'slipway[openvino]'") from None
    try:
        model = core().read_model(str(path))
    except RuntimeError as e:
        raise UserError(f"{label} is not a readable OpenVINO model: {one_line(e)}") from None
    return [_info(p, file=True) for p in model.inputs], [_info(p, file=True) for p in model.outputs]


CPU = OpenVINOBackend("openvino", "CPU")
GPU = OpenVINOBackend("openvino-gpu", "GPU")
