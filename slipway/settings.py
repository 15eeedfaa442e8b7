"""The tuned-settings file ``MODEL.tune.json`` that ``slipway tune`` writes beside a model.

It names the backend, its options (threads, precision, engine settings), the batch size and
concurrency that won, and the SHA-256 of the model file it was measured on: settings written for
another version of the model are ignored, so stale settings never apply. They are applied in one
place, explicitly, by the engine loader: :func:`slipway.backends.choose` (used by
:func:`slipway.backends.load` and by the server) reads them beside a model path, or beside the
file a model returned by :func:`slipway.load` was read from; ``slipway.load`` itself never reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["SUFFIX", "settings_path", "digest", "read_settings"]

SUFFIX = ".tune.json"


def settings_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_suffix(SUFFIX) if p.suffix == ".onnx" else p.with_name(p.name + SUFFIX)


def digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_settings(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The settings beside ``model_path``; None when absent, unreadable or written for another model."""
    p = settings_path(model_path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
        if not isinstance(data, dict) or data.get("model_sha256") != digest(model_path):
            return None
        if not isinstance(data.get("backend"), str) or not isinstance(data.get("options"), dict):
            return None
        return data
    except (OSError, ValueError):
        return None
