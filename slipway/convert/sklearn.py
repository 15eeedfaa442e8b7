"""scikit-learn estimators and pipelines -> ONNX through skl2onnx, verified against scikit-learn.

The ONNX model takes one float32 input ``X`` of shape ``[batch, n_features]``. Its outputs
follow skl2onnx: classifiers give ``label`` and ``probabilities`` (``predict_proba``, as a
tensor: the ``zipmap`` option is turned off) or decision scores; regressors and transformers
give ``variable``; clusterers give ``label`` and ``scores`` (``transform``).

Verification runs scikit-learn and onnxruntime on ``X_sample`` and on random rows (normal with
the sample's mean and spread) at each of ``batch_sizes``. Scores, probabilities, predictions
and transforms are compared numerically (:mod:`slipway.verify`). Labels are compared
exactly. One exception, for random rows only: a classifier whose two best classes score within
tolerance of each other is at a tie, and which of them wins depends on float rounding
(onnxruntime sums in float32, scikit-learn in float64), so there the ONNX label is accepted
when it is one of the tied classes; the report counts these ties. On ``X_sample`` there is no
such allowance: every label must match.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway.errors import MissingDependencyError, UserError
from slipway.model import check, check_output
from slipway.verify import DEFAULT_BATCH_SIZES, Feeds, Runner, VerifiedModel, commit, input_specs, verify

CONVERTED_FROM = "slipway.converted_from"


def require_sklearn() -> tuple[Any, Any]:
    """Import scikit-learn and skl2onnx, or raise ``MissingDependencyError``."""
    try:
        import sklearn
    except ImportError:
        raise MissingDependencyError("scikit-learn", "sklearn") from None
    try:
        import skl2onnx
    except ImportError:
        raise MissingDependencyError("skl2onnx", "sklearn") from None
    return sklearn, skl2onnx


def from_sklearn(
    estimator: Any,
    X_sample: Any,
    output_path: str | os.PathLike | None = None,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    options: Mapping[str, Any] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    opset: int | None = None,
    input_name: str = "X",
    seed: int = 0,
    source: str | None = None,
) -> VerifiedModel:
    """Convert a fitted estimator or pipeline to ONNX, verify it, then (optionally) write it.

    ``X_sample`` is a 2-D array of typical rows (its column count is the feature count).
    ``options`` go to skl2onnx's ``convert_sklearn`` (merged over ``{"zipmap": False}`` for
    estimators with ``predict_proba``). Past tolerance a ``VerificationError`` names the output
    and nothing is written. Returns a ``VerifiedModel``.
    """
    check_output(output_path, create_dirs=True)
    sklearn, skl2onnx = require_sklearn()
    X = _sample(X_sample, estimator)
    model = _convert(estimator, X.shape[1], options, opset, input_name)
    check(model, where="converted model")
    _name_batch_dim(model)
    names = [v.name for v in model.graph.outputs]
    ranks = {v.name: (len(v.shape) if v.shape is not None else None) for v in model.graph.outputs}
    sample_feeds = {input_name: X}
    ties: list[int] = []
    adjust = _tie_rule(estimator, names, sample_feeds, atol, rtol, ties, sklearn)
    report = verify(_runner(estimator, input_name, names, ranks), model, input_specs(model, sample_feeds),
                    atol=atol, rtol=rtol, batch_sizes=batch_sizes, extra_feeds=[sample_feeds], seed=seed,
                    reference_name=f"scikit-learn {sklearn.__version__}", adjust=adjust)
    if sum(ties):
        report.notes.append(f"{sum(ties)} label(s) on random rows were at a tie between classes; "
                            "the ONNX choice was accepted")
    label = source or describe(estimator)
    meta = {CONVERTED_FROM: f"scikit-learn {sklearn.__version__} {label} (skl2onnx {skl2onnx.__version__})"}
    return commit(model, report, output_path, metadata=meta)


def describe(estimator: Any) -> str:
    """``Pipeline(StandardScaler, LogisticRegression)`` or the class name."""
    steps = getattr(estimator, "steps", None)
    if steps:
        return f"{type(estimator).__name__}({', '.join(describe(s) for _, s in steps)})"
    return type(estimator).__name__


def _sample(X_sample: Any, estimator: Any) -> np.ndarray:
    try:
        X = np.asarray(X_sample, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise UserError(f"X_sample must be a numeric 2-D array: {e}") from None
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise UserError(f"X_sample must be a non-empty 2-D array (rows x features), got shape {list(X.shape)}")
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and expected != X.shape[1]:
        raise UserError(f"the estimator expects {expected} features, X_sample has {X.shape[1]}")
    return X


def _convert(estimator: Any, n_features: int, options: Mapping[str, Any] | None, opset: int | None,
             input_name: str) -> ir.Model:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise UserError(f"{describe(estimator)} is not fitted; fit it before converting") from None
    except TypeError as e:
        raise UserError(f"not a scikit-learn estimator: {e}") from None
    opts = {"zipmap": False} if hasattr(estimator, "predict_proba") else {}
    opts.update(options or {})
    try:
        proto = convert_sklearn(estimator, initial_types=[(input_name, FloatTensorType([None, n_features]))],
                                options=opts or None, target_opset=opset)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"skl2onnx cannot convert {describe(estimator)}: {type(e).__name__}: {first}") from None
    return ir.serde.deserialize_model(proto)


def _name_batch_dim(model: ir.Model) -> None:
    """skl2onnx leaves the batch dim unnamed; name it ``batch`` on the input and the outputs."""
    for v in list(model.graph.inputs) + list(model.graph.outputs):
        if v.shape is not None and len(v.shape) and not isinstance(v.shape[0], int) and not v.shape[0].value:
            v.shape = ir.Shape(["batch", *list(v.shape)[1:]])


def _runner(estimator: Any, input_name: str, names: list[str], ranks: Mapping[str, int | None]) -> Runner:
    """scikit-learn outputs under the ONNX output names, shaped like the ONNX outputs."""

    def run(feeds: Feeds) -> dict[str, np.ndarray]:
        X = feeds[input_name].astype(np.float64)  # float32 values, exactly; some estimators need float64
        methods = _methods(estimator, len(names))
        out = {}
        for name, method in zip(names, methods, strict=True):
            try:
                value = np.asarray(getattr(estimator, method)(X))
            except Exception as e:
                raise UserError(f"scikit-learn {method} failed: {type(e).__name__}: {e}") from None
            rank = ranks.get(name)
            if rank == 2 and value.ndim == 1:
                value = value.reshape(len(X), -1)
            out[name] = value
        return out

    return run


def _methods(estimator: Any, n_outputs: int) -> list[str]:
    """The scikit-learn method behind each ONNX output, in order."""
    if n_outputs == 1:
        return ["predict" if hasattr(estimator, "predict") else "transform"]
    for second in ("predict_proba", "decision_function", "transform"):
        if n_outputs == 2 and hasattr(estimator, second):
            return ["predict", second]
    raise UserError(f"cannot tell which scikit-learn method gives the outputs of {describe(estimator)}")


def _tie_rule(estimator: Any, names: list[str], sample_feeds: Feeds, atol: float, rtol: float,
              ties: list[int], sklearn: Any) -> Any:
    """For classifiers: accept the ONNX label on random rows where the reference scores tie."""
    if not sklearn.base.is_classifier(estimator) or len(names) < 2:
        return None
    label, scores_name = names[0], names[1]
    index = {c: i for i, c in enumerate(getattr(estimator, "classes_", []))}

    def adjust(feeds: Feeds, ref: dict[str, np.ndarray], act: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if feeds is sample_feeds or label not in act or ref[label].shape != act[label].shape:
            return ref
        scores = ref[scores_name].astype(np.float64)
        tol = atol + rtol * float(np.abs(scores).max(initial=0.0))
        fixed = ref[label].copy()
        for row in np.flatnonzero(ref[label] != act[label]):
            chosen = index.get(act[label][row].item() if hasattr(act[label][row], "item") else act[label][row])
            if chosen is None:
                continue
            s = scores[row]
            tied = abs(s[0]) <= tol if s.size == 1 else s.max() - s[chosen] <= tol
            if tied:
                fixed[row] = act[label][row]
                ties.append(1)
        return {**ref, label: fixed}

    return adjust
