"""The candidate's engine in verification: onnxruntime on CPU with its graph optimizations off."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from slipway.backends.ort import ort_session
from slipway.errors import UserError
from slipway.verify.inputs import Feeds

__all__ = ["Runner", "ort_runner", "engine_name"]

Runner = Callable[[Feeds], dict[str, np.ndarray]]


def ort_runner(model: ir.Model, *, optimization: str = "disabled", threads: int = 0) -> Runner:
    """Run ``model`` in onnxruntime on CPU; returns a function feeds -> {output name: array}.

    ``optimization`` is ``"disabled"`` (the default for verification: the graph runs node by
    node as written, so the measured error belongs to the model and not to onnxruntime's
    fusions, which change accumulation order), ``"basic"``, ``"extended"`` or ``"all"``.
    """
    sess = ort_session(model, optimization=optimization, threads=threads)
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]

    def run(feeds: Feeds) -> dict[str, np.ndarray]:
        missing = [n for n in in_names if n not in feeds]
        if missing:
            raise UserError(f"no value for model input(s) {missing}")
        outs = sess.run(out_names, {n: feeds[n] for n in in_names})
        return dict(zip(out_names, outs, strict=True))

    return run


def engine_name(optimization: str = "disabled") -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} CPUExecutionProvider, graph optimizations {optimization}"
