"""Layer-by-layer comparison of two runs, naming the first node where they diverge.

``compare(a, b)`` runs A (the reference) and B on the same inputs and compares every
intermediate float tensor, matched by name or through value-preserving ops (Cast, Q/DQ pairs;
see :mod:`slipway.compare.match`). Three uses:

* two models on one backend: FP32 vs optimized vs QDQ-quantized vs FP16
  (``compare("fp32.onnx", "int8.onnx")``);
* one model on two backends (``compare("m.onnx", backend_b="openvino")``);
* one model under two option sets
  (``compare("m.onnx", options_a=Options(settings={"graph_optimization_level": "disabled"}),
  options_b=Options(settings={"graph_optimization_level": "all"}))``).

To see intermediates, each model runs as a copy whose graph outputs include every matched
tensor; each model also runs as it is, for its final outputs. A tensor is past tolerance when
``max_abs > atol + rtol * max|ref|`` (as in :mod:`slipway.verify`); the first node of A
in topological order with an output past tolerance is ``first_divergent_node``.

``bisect(model, passes)`` applies graph passes one by one and returns the first whose result
diverges from the original model, with the layer report of the model before vs after it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from slipway.backends import Options
from slipway.compare.bisect import run_bisect
from slipway.compare.layers import compare
from slipway.compare.types import BisectReport, BisectStep, CompareReport, Divergence, TensorDiff

__all__ = ["compare", "bisect", "CompareReport", "TensorDiff", "Divergence", "BisectReport", "BisectStep"]


def bisect(
    model: object,
    passes: list,
    *,
    backend: str = "ort",
    options: Options | None = None,
    feeds: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    batch: int = 1,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> BisectReport:
    """Apply ``passes`` (Pass objects or pass names) one by one to a copy of ``model``.

    After each pass that reports a change, the final outputs are compared with the original
    model's; the first pass whose result is past tolerance (or that raises, or whose result does
    not run) is the culprit, and its report compares the model before that pass with the model
    after it, layer by layer. The model given is not changed.
    """
    return run_bisect(model, passes, backend=backend, options=options, feeds=feeds, atol=atol, rtol=rtol,
                      batch=batch, seed=seed, dims=dims, shapes=shapes)
