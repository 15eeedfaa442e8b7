"""The engine interface: ``load(model, options) -> Session``; ``Session.run(feeds) -> outputs``.

Every engine (onnxruntime CPU, OpenVINO CPU, the GPU ones) is a :class:`Backend` behind the
lazy table in :mod:`slipway.backends`, so a GPU library is imported only when chosen.

* ``Options`` holds what all engines understand (threads, precision) plus ``settings``: the
  engine's own knobs by name (for onnxruntime ``graph_optimization_level``, ``execution_mode``,
  ``io_binding``, ``arena``; for OpenVINO ``hint``, ``streams``...). Unknown settings are a
  one-line :class:`UserError`, never silently ignored (:func:`check_options`).
* ``Backend.load(model, options, instances=N)`` returns N sessions that share one copy of the
  weights (onnxruntime: one ``InferenceSession`` whose ``Run`` is thread-safe; OpenVINO: one
  compiled model with several infer requests).
* ``Session.run`` checks names, dtypes, ranks and static dims of the feeds (:class:`FeedCheck`)
  and raises a one-line UserError naming the input; it returns materialized numpy arrays keyed
  by output name. A session is driven by one thread at a time; concurrency comes from instances.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx
import onnx_ir as ir

from slipway.errors import UserError, one_line
from slipway.model import save

__all__ = [
    "TensorInfo", "Options", "Session", "Backend", "PRECISIONS",
    "FeedCheck", "check_options", "check_outputs", "onnx_source", "one_line",
]

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a model: as an engine session reports it, or as the model file declares
    it (an engine's ``io`` reader, :mod:`slipway.backends.declared`)."""

    name: str
    shape: tuple[int | str | None, ...] | None  # None or a name for a dynamic dim; None: rank unknown (files)
    dtype: np.dtype | None  # None: the file's type has no numpy dtype (files; a session has object)
    type: str = ""  # the file's own type name, for messages: "ONNX type FLOAT", "OpenVINO type f32"; UNTYPED: a
    # file that names its tensors but gives them no type (a pipeline file): the config declares the type


UNTYPED = "untyped"


@dataclass
class Options:
    threads: int = 0  # intra-op threads; 0 = the engine's default (all cores)
    precision: str = "fp32"  # fp32 | fp16 | bf16 | int8 (what the engine should run in)
    settings: dict[str, Any] = field(default_factory=dict)  # engine-specific, validated by the backend

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "precision": self.precision, "settings": dict(self.settings)}


@runtime_checkable
class Session(Protocol):
    backend: str  # the table name, e.g. "ort", "openvino"

    @property
    def inputs(self) -> list[TensorInfo]: ...

    @property
    def outputs(self) -> list[TensorInfo]: ...

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str  # table name
    precisions: tuple[str, ...]  # precisions this engine can run
    settings: Mapping[str, Sequence[Any]]  # tunable settings and the values worth trying

    def available(self) -> str | None:
        """None when usable here, else one line saying why not (missing package, no GPU)."""
        ...

    def load(self, model: Any, options: Options | None = None, *, instances: int = 1) -> list[Session]: ...


# ---------------------------------------------------------------------------------------------
# Options


def check_options(
    backend: str, options: Options | None, precisions: Sequence[str], settings: Mapping[str, Sequence[Any]],
    instances: int = 1,
) -> Options:
    """``options`` (or the defaults) after checking threads, precision and every setting.

    A setting's value must be one of its candidates, except that a setting with integer
    candidates takes any integer from its smallest integer candidate up (threads, streams).
    """
    opts = options if options is not None else Options()
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise UserError(f"{backend}: instances must be an integer >= 1, got {instances!r}")
    if isinstance(opts.threads, bool) or not isinstance(opts.threads, int) or opts.threads < 0:
        raise UserError(f"{backend}: threads must be an integer >= 0 (0 = engine default), got {opts.threads!r}")
    if opts.precision not in precisions:
        supported = ", ".join(precisions) or "none"
        raise UserError(f"{backend}: precision {opts.precision!r} is not supported here (supported: {supported})")
    for name, value in opts.settings.items():
        if name not in settings:
            raise UserError(f"{backend}: unknown setting {name!r} (settings: {', '.join(settings)})")
        if not _allowed(value, settings[name]):
            choices = ", ".join(map(repr, settings[name]))
            raise UserError(f"{backend}: setting {name}={value!r} is not valid (choose from {choices})")
    return opts


def _allowed(value: Any, candidates: Sequence[Any]) -> bool:
    ints = [c for c in candidates if isinstance(c, int) and not isinstance(c, bool)]
    if ints and isinstance(value, int) and not isinstance(value, bool):
        return value >= min(ints)
    return any(value == c and type(value) is type(c) for c in candidates)


# ---------------------------------------------------------------------------------------------
# Model source: what an engine can read (serialized bytes or a file path)

# Protobuf cannot serialize one message over 2 GiB: above this, weights go to a temporary side file.
_BYTES_LIMIT = 1_800_000_000


@contextmanager
def onnx_source(model: Any) -> Iterator[bytes | str]:
    """``model`` (path, bytes, ``onnx.ModelProto`` or ``onnx_ir.Model``) as bytes or a file path.

    Paths are passed through (the engine resolves their external data). A model too big for one
    protobuf, or one whose weights live in side files, is written to a temporary directory with
    its weights as external data; the directory is removed when the context exits (engines have
    read or mapped the weights by then).
    """
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        yield str(path)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        yield bytes(model)
    elif isinstance(model, onnx.ModelProto):
        if model.ByteSize() < _BYTES_LIMIT and not _has_external_proto(model):
            yield model.SerializeToString()
        else:
            with _temp_file(ir.serde.deserialize_model(model)) as path:
                yield path
    elif isinstance(model, ir.Model):
        if _ir_bytes(model) < _BYTES_LIMIT and not _has_external_ir(model):
            yield ir.serde.serialize_model(model).SerializeToString()
        else:
            with _temp_file(model) as path:
                yield path
    else:
        raise UserError(f"cannot load a model from {type(model).__name__}: pass a path, bytes, onnx.ModelProto or onnx_ir.Model")


def _has_external_proto(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _has_external_ir(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def _ir_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


@contextmanager
def _temp_file(model: ir.Model) -> Iterator[str]:
    """``model`` saved with its weights as external data in a temporary directory (THE > 2 GB path of
    every engine session), removed when the context exits."""
    with tempfile.TemporaryDirectory(prefix="slipway-model-") as tmp:
        yield str(save(model, Path(tmp) / "model.onnx", external_data=True))


# ---------------------------------------------------------------------------------------------
# Feed checks: cheap on the happy path, a precise one-line error otherwise


class FeedCheck:
    """Checks feeds against the model's inputs: names, dtypes, ranks and static dims.

    ``ok(feeds)`` is the fast path (a few hundred nanoseconds for one input); when it says no,
    ``error(feeds)`` works out what is wrong and returns the UserError to raise. An input whose
    dtype is ``object`` (strings, types without a numpy dtype) or whose rank is unknown is only
    checked for presence; the engine checks the rest.
    """

    def __init__(self, inputs: Sequence[TensorInfo], ranked: Sequence[bool] | None = None) -> None:
        self.inputs = list(inputs)
        self.names = [t.name for t in inputs]
        self.count = len(self.names)
        ranked = ranked if ranked is not None else [True] * self.count
        specs = []
        for info, has_rank in zip(inputs, ranked, strict=True):
            if info.dtype == np.dtype(object):
                continue
            ndim = len(info.shape) if has_rank else -1
            fixed = tuple((i, d) for i, d in enumerate(info.shape) if isinstance(d, int) and has_rank)
            specs.append((info.name, info.dtype, ndim, fixed))
        self.specs = tuple(specs)
        self.partial = len(self.specs) != self.count  # some inputs are only checked for presence

    def ok(self, feeds: Mapping[str, Any]) -> bool:
        try:
            if len(feeds) != self.count:
                return False
            for name, dtype, ndim, fixed in self.specs:
                a = feeds[name]
                if a.dtype != dtype:
                    return False
                if ndim >= 0 and a.ndim != ndim:
                    return False
                if fixed:
                    shape = a.shape
                    for i, d in fixed:
                        if shape[i] != d:
                            return False
            return not (self.partial and any(n not in feeds for n in self.names))
        except (KeyError, AttributeError, TypeError):
            return False

    def error(self, feeds: Any) -> UserError:
        """The one-line error describing what is wrong with ``feeds``."""
        if not isinstance(feeds, Mapping):
            return UserError(f"feeds must be a mapping of input name to numpy array, got {type(feeds).__name__}")
        takes = ", ".join(self.names) or "no inputs"
        for name in feeds:
            if name not in self.names:
                return UserError(f"unknown input {name!r} (the model takes: {takes})")
        for name in self.names:
            if name not in feeds:
                return UserError(f"missing input {name!r} (the model takes: {takes})")
        by_name = {t.name: t for t in self.inputs}
        for name, dtype, ndim, fixed in self.specs:
            a = feeds[name]
            if not isinstance(a, (np.ndarray, np.generic)):
                return UserError(f"input {name!r} must be a numpy array, got {type(a).__name__}")
            want = _shape_text(by_name[name].shape)
            if a.dtype != dtype:
                return UserError(f"input {name!r}: expected dtype {dtype}, got {a.dtype}")
            if ndim >= 0 and a.ndim != ndim:
                return UserError(f"input {name!r}: expected rank {ndim} (shape {want}), got shape {tuple(a.shape)}")
            for i, d in fixed:
                if a.shape[i] != d:
                    return UserError(f"input {name!r}: dim {i} must be {d} (shape {want}), got shape {tuple(a.shape)}")
        return UserError(f"invalid feeds for inputs {takes}")


class SessionBase:
    """What every engine's session shares: its tensor descriptions and the checks before a run.

    Subclasses set ``backend``, ``_inputs``, ``_outputs``, ``_check`` (a :class:`FeedCheck`) and
    ``_names`` (the output names) and start ``run`` with :meth:`_requested`.
    """

    backend: str
    _inputs: list[TensorInfo]
    _outputs: list[TensorInfo]
    _check: FeedCheck
    _names: list[str]

    @property
    def inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def _requested(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> list[str]:
        """Check the feeds (one-line UserError naming the input) and return the outputs to fetch."""
        if not self._check.ok(feeds):
            raise self._check.error(feeds)
        return self._names if outputs is None else check_outputs(outputs, self._names)


class FileBackend:
    """What the engines that serve a file of their own (python's model.py, a pipeline.yaml) share: one
    precision, no settings, always available, a file path as the model; their tensors are declared by
    the server's config.pbtxt, so their sessions (:class:`ConfigDeclared`) report none."""

    name: str
    file: str  # what the model is, for the message when it is not a path: "a model.py file"
    precisions: tuple[str, ...] = ("fp32",)
    settings: dict[str, tuple[Any, ...]] = {}

    def available(self) -> str | None:
        return None

    def _options(self, model: Any, options: Options | None, instances: int) -> Options:
        """The checked options; a one-line UserError when ``model`` is not a file path."""
        opts = check_options(self.name, options, self.precisions, self.settings, instances)
        if not isinstance(model, (str, Path)):
            raise UserError(f"the {self.name} engine loads {self.file}, not a {type(model).__name__}")
        return opts


class ConfigDeclared:
    """A session whose inputs and outputs the server's config declares, not its file."""

    @property
    def inputs(self) -> list[TensorInfo]:
        return []

    @property
    def outputs(self) -> list[TensorInfo]:
        return []


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_outputs(requested: Sequence[str], known: Sequence[str]) -> list[str]:
    """``requested`` as a list, after checking that every name is an output of the model."""
    names = list(requested)
    for name in names:
        if name not in known:
            raise UserError(f"unknown output {name!r} (the model gives: {', '.join(known)})")
    return names


