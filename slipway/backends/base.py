"""The engine interface: ``load(model, options) -> Session``; ``Session.run(feeds) -> outputs``.

Every engine (onnxruntime CPU, OpenVINO CPU, the GPU ones) is a :class:`Backend` behind the
lazy table in :mod:`slipway.backends`, so a GPU library is imported only when chosen.

* ``Options`` holds what all engines understand (threads, precision) plus ``settings``: the
  engine's own knobs by name (for onnxruntime ``graph_optimization_level``, ``execution_mode``,
  ``io_binding``, ``arena``; for OpenVINO ``hint``, ``streams``, ``device``...). Unknown
  settings are a one-line :class:`UserError`, never silently ignored.
* ``Backend.load(model, options, instances=N)`` returns N sessions that share one copy of the
  weights (onnxruntime shared initializers / prepacked weights; OpenVINO one compiled model with
  several infer requests).
* ``Session.run`` checks names, dtypes and ranks of the feeds and raises a one-line UserError
  naming the input; it returns materialized numpy arrays keyed by output name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["TensorInfo", "Options", "Session", "Backend"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...]  # None or a name for a dynamic dim
    dtype: np.dtype


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
