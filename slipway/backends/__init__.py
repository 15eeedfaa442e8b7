"""Engines behind one small interface (see :mod:`slipway.backends.base`), and THE engine registry.

Adding an engine is one :func:`register` call below: its name, the ``module:attribute`` of its
:class:`Backend` object (imported only when the engine is chosen, so OpenVINO, CUDA or TensorRT
load only when used) and how it is served. ``slipway bench``, ``compare``, ``tune`` and
``optimize`` see every engine that runs ONNX models (:data:`BACKENDS`); ``slipway serve`` maps a
config.pbtxt ``backend:`` / ``platform:`` to an engine with :func:`served_by`, picks its GPU
variant for ``KIND_GPU`` instances, looks for its model files, reads their inputs and outputs
(``Engine.io``, see :mod:`slipway.backends.declared`) and converts Triton's config parameters with
the registration, so the server names no engine itself.

Tuned settings (``MODEL.tune.json``, written by ``slipway tune``) are applied here, explicitly and
by one rule: :func:`choose`, used by :func:`load` and by the server.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

from slipway.backends.base import Backend, Options, Session, TensorInfo
from slipway.errors import UserError
from slipway.model import SOURCE_KEY
from slipway.settings import read_settings

__all__ = [
    "Backend", "Options", "Session", "TensorInfo", "Engine", "ENGINES", "BACKENDS", "register",
    "registration", "served_by", "get", "load", "available", "tuned_settings", "Choice", "choose",
]


@dataclass(frozen=True)
class Engine:
    """One registered engine: what every command needs to know to offer it, and the server to serve it."""

    name: str  # table name: --backend, MODEL.tune.json, config parameter "backend"
    target: str  # "module:attribute" of the Backend object, imported on first use
    family: str = ""  # engines of one family run one config.pbtxt backend (ort, ort-cuda, ort-tensorrt)
    device: str = "cpu"  # cpu | gpu: which instance_group kind it serves (KIND_CPU / KIND_GPU)
    triton: tuple[str, str] | None = None  # (config.pbtxt backend, platform) the family's CPU engine serves
    files: tuple[str, ...] = ("model.onnx",)  # model file names in a version directory, preferred first
    onnx: bool = True  # runs ONNX models: bench, tune, compare and optimize offer it
    runs_code: bool = False  # loading runs user code: the server needs --allow-python-models
    # "module:function" reading a model file's declared inputs/outputs (slipway.backends.declared), imported
    # on use; "" = nothing to read them from: config.pbtxt must declare them
    io: str = "slipway.backends.declared:onnx_io"
    bytes_as_text: bool = True  # BYTES inputs reach it as str (ONNX strings), else as bytes
    # Triton backend parameter -> (Options setting, converter), understood in config.pbtxt parameters
    parameters: Mapping[str, tuple[str, Callable[[str], Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.name.split("-")[0])

    def read_io(self, path: Path, label: str) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """(inputs, outputs) the model file ``path`` declares, by the engine's ``io`` reader; a one-line
        UserError naming the file as ``label`` when it cannot be read."""
        if not self.io:
            raise UserError(f"the {self.name} engine reads no inputs or outputs from {label}")
        return _resolve(self.io)(Path(path), label)


ENGINES: dict[str, Engine] = {}
BACKENDS: dict[str, str] = {}  # engines that run ONNX models: name -> "module:attribute" (bench, tune, compare)


def register(engine: Engine) -> Engine:
    """Add ``engine`` to the registry (every command sees it: see the module docstring)."""
    if engine.name in ENGINES:
        raise ValueError(f"engine {engine.name!r} is registered twice")
    ENGINES[engine.name] = engine
    if engine.onnx:
        BACKENDS[engine.name] = engine.target
    return engine


def _flag(value: str) -> bool:
    return str(value).lower() in ("1", "true")


_ORT_PARAMETERS: dict[str, tuple[str, Callable[[str], Any]]] = {  # Triton's onnxruntime backend parameters
    "inter_op_thread_count": ("inter_op_threads", int),
    "execution_mode": ("execution_mode", lambda v: "parallel" if str(v) == "1" else "sequential"),
    "enable_mem_arena": ("arena", _flag),
    "enable_mem_pattern": ("mem_pattern", _flag),
}

register(Engine("ort", "slipway.backends.ort:CPU", triton=("onnxruntime", "onnxruntime_onnx"),
                parameters=_ORT_PARAMETERS))
register(Engine("ort-cuda", "slipway.backends.ort:CUDA", device="gpu", parameters=_ORT_PARAMETERS))
register(Engine("ort-tensorrt", "slipway.backends.ort:TENSORRT", device="gpu", parameters=_ORT_PARAMETERS))
register(Engine("openvino", "slipway.backends.openvino:CPU", triton=("openvino", "openvino"),
                files=("model.onnx", "model.xml"), io="slipway.backends.openvino:read_io"))
register(Engine("openvino-gpu", "slipway.backends.openvino:GPU", device="gpu", files=("model.onnx", "model.xml"),
                io="slipway.backends.openvino:read_io"))
# model.onnx converted (verified, cached) on load, or the files `slipway export` wrote (manifest.json beside them)
register(Engine("mnn", "slipway.backends.mnn:CPU", triton=("mnn", ""), files=("model.onnx", "model.mnn"),
                io="slipway.backends.export:read_io"))
register(Engine("ncnn", "slipway.backends.ncnn:CPU", triton=("ncnn", ""), files=("model.onnx", "model.ncnn.param"),
                io="slipway.backends.export:read_io"))
register(Engine("python", "slipway.backends.python:PYTHON", triton=("python", ""), files=("model.py",), onnx=False,
                runs_code=True, io="", bytes_as_text=False))
register(Engine("pipeline", "slipway.backends.pipeline:PIPELINE", triton=("slipway_pipeline", ""),
                files=("pipeline.yaml",), onnx=False, io="slipway.backends.pipeline:pipeline_io",
                bytes_as_text=False))  # python steps refused


def registration(name: str) -> Engine:
    engine = ENGINES.get(name)
    if engine is None:
        raise UserError(f"unknown backend {name!r} (choose from {', '.join(ENGINES)})")
    return engine


def served_by(triton_backend: str, device: str = "cpu") -> Engine | None:
    """The engine serving a config.pbtxt ``backend:`` on ``device`` (the family's first such engine)."""
    family = next((e.family for e in ENGINES.values() if e.triton and e.triton[0] == triton_backend), None)
    if family is None:
        return None
    return next((e for e in ENGINES.values() if e.family == family and e.device == device), None)


def get(name: str) -> Backend:
    """The backend called ``name`` (a key of :data:`ENGINES`)."""
    return _resolve(registration(name).target)


def _resolve(target: str) -> Any:
    """The object a "module:attribute" target names (the module imported now)."""
    module, attr = target.split(":")
    return getattr(import_module(module), attr)


# ---------------------------------------------------------------------------------------------
# tuned settings + explicit choices: one rule


@dataclass
class Choice:
    backend: str
    options: Options
    tuned: bool  # options come from MODEL.tune.json


def choose(model: Any, backend: str | None = None, options: Options | None = None, *,
           family: str | None = None, device: str | None = None, tuned: bool = True) -> Choice:
    """The engine and options to run ``model`` with: THE rule merging tuned settings with explicit choices.

    The settings ``slipway tune`` wrote beside the model (:func:`tuned_settings`) apply when
    ``tuned`` and they name an engine the caller accepts: ``backend`` itself when given, else one of
    ``family`` on ``device`` when given (the server: config.pbtxt's backend and instance kind), else
    any. Their engine is used when ``backend`` is None, their options when ``options`` is None.
    Without usable settings: ``backend``, else the family's engine on ``device``, else "ort".
    """
    settings = tuned_settings(model) if tuned and (backend is None or options is None) else None
    if settings is not None and not _accepts(settings["backend"], backend, family, device):
        settings = None
    if settings is not None:
        return Choice(backend or settings["backend"],
                      options if options is not None else Options(**settings["options"]), options is None)
    if backend is None and family is not None:
        backend = next((e.name for e in ENGINES.values() if e.family == family and e.device == (device or "cpu")),
                       None)
    return Choice(backend or "ort", options if options is not None else Options(), False)


def _accepts(tuned: str, backend: str | None, family: str | None, device: str | None) -> bool:
    engine = ENGINES.get(tuned)
    if engine is None:
        return False
    if backend is not None:
        return tuned == backend
    return (family is None or engine.family == family) and (device is None or engine.device == device)


def load(model, backend: str | None = "ort", options: Options | None = None) -> Session:
    """One session of ``model`` on ``backend``; raises a one-line UserError if it cannot run here.

    With ``backend=None`` the settings ``slipway tune`` wrote beside the model (``MODEL.tune.json``,
    found from a path or from the file a model returned by :func:`slipway.load` was read from)
    choose the backend and, unless ``options`` is given, its options (:func:`choose`); without such
    a file it is onnxruntime on CPU.
    """
    choice = choose(model, backend, options)
    b = get(choice.backend)
    why = b.available()
    if why:
        raise UserError(f"backend {choice.backend!r} is not available: {why}")
    session = b.load(model, options if options is not None else (choice.options if choice.tuned else None))[0]
    session.options = choice.options
    return session


def tuned_settings(model) -> dict | None:
    """The tuned settings for ``model``: ``MODEL.tune.json`` beside a path, or beside the file a model
    returned by :func:`slipway.load` came from; None when there are none (or they are stale)."""
    if isinstance(model, (str, os.PathLike)):
        path = model
    else:
        meta = getattr(model, "meta", None)
        path = meta.get(SOURCE_KEY) if meta is not None else None
    return read_settings(path) if path else None


def available() -> dict[str, str | None]:
    """Every engine that runs ONNX models -> None if usable here, else why not."""
    out: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            out[name] = get(name).available()
        except (ImportError, UserError) as e:
            out[name] = str(e)
    return out
