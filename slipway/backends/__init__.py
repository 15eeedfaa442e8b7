"""Engines behind one small interface (see :mod:`slipway.backends.base`).

``get("ort")`` returns a backend object; the table maps names to ``module:attribute`` strings so
an engine's library (OpenVINO, CUDA, TensorRT) is imported only when that engine is chosen.
"""

from __future__ import annotations

from importlib import import_module

from slipway.backends.base import Backend, Options, Session, TensorInfo
from slipway.errors import UserError

__all__ = ["Backend", "Options", "Session", "TensorInfo", "BACKENDS", "get", "load", "available", "tuned_settings"]

BACKENDS: dict[str, str] = {
    "ort": "slipway.backends.ort:CPU",
    "ort-cuda": "slipway.backends.ort:CUDA",
    "ort-tensorrt": "slipway.backends.ort:TENSORRT",
    "openvino": "slipway.backends.openvino:CPU",
    "openvino-gpu": "slipway.backends.openvino:GPU",
}


def get(name: str) -> Backend:
    """The backend called ``name`` (a key of :data:`BACKENDS`)."""
    target = BACKENDS.get(name)
    if target is None:
        raise UserError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    module, attr = target.split(":")
    return getattr(import_module(module), attr)


def load(model, backend: str | None = "ort", options: Options | None = None) -> Session:
    """One session of ``model`` on ``backend``; raises a one-line UserError if it cannot run here.

    With ``backend=None`` the settings ``slipway tune`` wrote beside the model (``MODEL.tune.json``,
    found from a path or from a model returned by :func:`slipway.load`) choose the backend and,
    unless ``options`` is given, its options; without such a file it is onnxruntime on CPU.
    """
    if backend is None or options is None:
        tuned = tuned_settings(model)
        if tuned is not None and backend in (None, tuned["backend"]):
            backend = tuned["backend"]
            if options is None:
                options = Options(**tuned["options"])
    backend = backend or "ort"
    b = get(backend)
    why = b.available()
    if why:
        raise UserError(f"backend {backend!r} is not available: {why}")
    session = b.load(model, options)[0]
    session.options = options or Options()
    return session


def tuned_settings(model) -> dict | None:
    """The tuned settings for ``model``: from ``MODEL.tune.json`` beside a path, or attached by
    :func:`slipway.load` to a loaded model; None when there are none (or they are stale)."""
    import os

    from slipway.settings import META_KEY, read_settings

    if isinstance(model, (str, os.PathLike)):
        return read_settings(model)
    meta = getattr(model, "meta", None)
    return meta.get(META_KEY) if meta is not None else None


def available() -> dict[str, str | None]:
    """Every backend name -> None if usable here, else why not."""
    out: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            out[name] = get(name).available()
        except (ImportError, UserError) as e:
            out[name] = str(e)
    return out
