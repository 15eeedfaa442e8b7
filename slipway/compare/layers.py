"""``compare(a, b)``: two runs on the same inputs, every matched intermediate tensor compared.

See :mod:`slipway.compare` for the uses; :mod:`slipway.compare.bisect` calls :func:`compare` on
the models before and after the culprit pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from slipway.backends import Options
from slipway.compare.match import Matching, match
from slipway.compare.metrics import tensor_diff
from slipway.compare.run import describe_run, load_model, make_feeds, run_model, typed_copy
from slipway.compare.types import CompareReport, Divergence, TensorDiff
from slipway.errors import UserError

__all__ = ["compare"]


def compare(
    a: object,
    b: object = None,
    *,
    backend_a: str = "ort",
    backend_b: str | None = None,
    options_a: Options | None = None,
    options_b: Options | None = None,
    feeds: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    batch: int = 1,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> CompareReport:
    """Compare model ``a`` on ``backend_a`` with ``b`` (default: ``a`` again) on ``backend_b``.

    ``backend_b`` defaults to ``backend_a`` and ``options_b`` to ``options_a``. ``feeds`` is a
    dict or an ``.npz`` path keyed by input name; without it, random inputs are drawn (``seed``)
    at ``shapes`` (``{input: dims}``), else with the batch dim set to ``batch`` and other dynamic
    dims to ``dims[name]`` (default: sizes the model runs on, derived by probing it).
    """
    if atol < 0 or rtol < 0:
        raise UserError(f"tolerances must be >= 0, got atol={atol} rtol={rtol}")
    model_a = typed_copy(load_model(a, "A"))
    model_b = model_a if b is None else typed_copy(load_model(b, "B"))
    if b is None and backend_b in (None, backend_a) and options_b is None:
        raise UserError("nothing to compare: give a model B, another backend for B or other backend options for B")
    backend_b = backend_b or backend_a
    options_b = options_b if options_b is not None else options_a
    inputs = make_feeds(model_a, model_b, feeds, batch=batch, seed=seed, dims=dims, shapes=shapes)
    matching = match(model_a, model_b)

    final_a = run_model(model_a, inputs, backend=backend_a, options=options_a)
    final_b = run_model(model_b, inputs, backend=backend_b, options=options_b)
    inner = [m for m in matching.matches if m.op_type != "(input)"]
    exposed_a = run_model(model_a, inputs, backend=backend_a, options=options_a, expose=[m.a for m in inner])
    exposed_b = run_model(model_b, inputs, backend=backend_b, options=options_b,
                          expose=[m.b for m in matching.matches])

    layers = _layer_diffs(matching, inputs, exposed_a, exposed_b, atol, rtol)
    outputs = _output_diffs(model_a, model_b, final_a, final_b, atol, rtol)
    first = next((d for d in layers if d.op_type != "(input)" and not d.ok), None)
    divergence = Divergence(first.node, first.op_type, first.name, first) if first else None
    report = CompareReport(
        a=describe_run(a, backend_a, options_a), b=describe_run(a if b is None else b, backend_b, options_b),
        atol=atol, rtol=rtol, inputs={k: [int(d) for d in v.shape] for k, v in inputs.items()},
        layers=layers, outputs=outputs, unmatched_a=matching.unmatched_a, unmatched_b=matching.unmatched_b,
        first_divergent_node=divergence,
    )
    report.notes = _notes(report, model_a, model_b)
    return report


def _layer_diffs(matching: Matching, inputs: dict[str, np.ndarray], ra: dict[str, np.ndarray],
                 rb: dict[str, np.ndarray], atol: float, rtol: float) -> list[TensorDiff]:
    diffs = []
    for m in matching.matches:
        ref = inputs[m.a] if m.op_type == "(input)" else ra[m.a]
        diffs.append(tensor_diff(m.a, ref, rb[m.b], atol=atol, rtol=rtol, node=m.node, op_type=m.op_type,
                                 b_name=m.b, via=m.via))
    return diffs


def _output_diffs(model_a, model_b, ra: dict[str, np.ndarray], rb: dict[str, np.ndarray],
                  atol: float, rtol: float) -> list[TensorDiff]:
    """Final outputs paired by name, or by position when the names differ but the counts agree."""
    names_a = [v.name for v in model_a.graph.outputs]
    names_b = [v.name for v in model_b.graph.outputs]
    if set(names_a) <= set(names_b):
        pairs = [(n, n) for n in names_a]
    elif len(names_a) == len(names_b):
        pairs = list(zip(names_a, names_b, strict=True))
    else:
        pairs = [(n, n) for n in names_a if n in names_b]
    producers = {v.name: v.producer() for v in model_a.graph.outputs}
    diffs = []
    for na, nb in pairs:
        node = producers.get(na)
        diffs.append(tensor_diff(na, ra[na], rb[nb], atol=atol, rtol=rtol, node=(node.name or "") if node else "",
                                 op_type=node.op_type if node else "(input)", b_name=nb))
    return diffs


def _notes(report: CompareReport, model_a, model_b) -> list[str]:
    notes = []
    if not report.layers:
        notes.append("no intermediate tensor of B matches one of A (compared final outputs only)")
    if any(not o.ok for o in report.outputs) and report.first_divergent_node is None:
        notes.append("the final outputs differ but no exposed intermediate does: the difference comes from what "
                     "the engine does only when intermediates are not outputs (fusions, layout changes)")
    bad = [o.name for o in report.outputs if o.shape_mismatch]
    if bad:
        notes.append(f"final output(s) {bad} have different shapes in A and B")
    for label, m in (("A", model_a), ("B", model_b)):
        err = m.meta.get("slipway.compare.inference_error")
        if err:
            notes.append(f"shape inference failed on model {label} ({err}); only typed tensors were compared")
    return notes
