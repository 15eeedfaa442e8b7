"""slipway: take trained neural networks to production.

Public API, grouped by stage.
"""

from __future__ import annotations

import importlib
from typing import Any

from slipway.errors import MissingDependencyError, ServeError, SlipwayError, UserError, VerificationError
from slipway.model import load, save, summary

__version__ = "0.1.0"

__all__ = [
    # errors
    "SlipwayError",
    "UserError",
    "VerificationError",
    "ServeError",
    "MissingDependencyError",
    # model I/O
    "load",
    "save",
    "summary",
    # applications
    "load_bundle",
]

# Stage subpackages load on first use (`slipway.convert.from_torch(...)`), so that
# `import slipway` stays light and optional extras (torch, openvino) are imported lazily.
_SUBPACKAGES = ("analyze", "convert", "ops", "zoo")


def load_bundle(path: Any, *, backend: str = "ort", self_test: bool = True, allow_python: bool = False) -> Any:
    """The pipeline of a bundle folder or .zip, its hashes checked and its golden self-test run
    (:func:`slipway.pipeline.bundle.load_bundle`)."""
    from slipway.pipeline.bundle import load_bundle as _load_bundle

    return _load_bundle(path, backend=backend, self_test=self_test, allow_python=allow_python)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"slipway.{name}")
    raise AttributeError(f"module 'slipway' has no attribute {name!r}")
