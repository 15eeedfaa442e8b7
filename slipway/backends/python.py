"""The "python" engine: a ``model.py`` that defines ``infer(inputs: dict) -> dict`` (served only).

It runs user code, so the server loads it only with ``--allow-python-models``; its inputs and
outputs come from config.pbtxt (there is no graph to read them from), and BYTES inputs reach it
as ``bytes``. Every instance calls the one imported function.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slipway.backends.base import ConfigDeclared, FileBackend, Options
from slipway.errors import UserError

__all__ = ["PythonBackend", "PythonSession", "PYTHON"]


class PythonBackend(FileBackend):
    name = "python"
    file = "a model.py file"

    def load(self, model: Any, options: Options | None = None, *, instances: int = 1) -> list[PythonSession]:
        """``instances`` sessions calling the ``infer`` function of the file ``model``."""
        opts = self._options(model, options, instances)
        fn = _import(Path(model))
        return [PythonSession(fn, opts) for _ in range(instances)]


def _import(path: Path) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    spec = importlib.util.spec_from_file_location(f"slipway_python_model_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import python model {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # user code: report it on one line
        raise UserError(f"python model {path} failed to import: {type(e).__name__}: {e}") from None
    fn = getattr(module, "infer", None)
    if not callable(fn):
        raise UserError(f"python model {path} must define infer(inputs: dict) -> dict")
    return fn


class PythonSession(ConfigDeclared):
    backend = "python"

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], options: Options) -> None:
        self._fn = fn
        self.options = options

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        result = self._fn(dict(feeds))
        return result if outputs is None else {name: result[name] for name in outputs}

    def close(self) -> None:
        pass


PYTHON = PythonBackend()
