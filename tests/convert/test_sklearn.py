"""scikit-learn -> ONNX with verification (slipway.convert.from_sklearn), trained on load_digits."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("skl2onnx")
import sklearn  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.dummy import DummyClassifier  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import slipway  # noqa: E402
from slipway.convert import from_sklearn  # noqa: E402
from slipway.convert.sklearn import _tie_rule  # noqa: E402
from slipway.errors import UserError, VerificationError  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def logreg(digits):
    X, y = digits
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X[:1200], y[:1200])


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_pipeline_converted_verified_and_recorded(tmp_path, digits, logreg):
    X, _ = digits
    out = tmp_path / "logreg.onnx"
    result = from_sklearn(logreg, X[1200:1400], out)
    checks = {o.name: o for o in result.report.outputs}
    assert list(checks) == ["label", "probabilities"]
    assert checks["label"].exact and checks["label"].mismatches == 0
    assert 0 < checks["probabilities"].max_abs < 1e-5  # float32 ONNX vs float64 scikit-learn
    meta = slipway.load(out).metadata_props
    assert float(meta["slipway.verify.probabilities.max_abs"]) == pytest.approx(checks["probabilities"].max_abs,
                                                                                  rel=1e-5)
    assert meta["slipway.verify.label.max_abs"] == "0"
    assert meta["slipway.verify.batch_sizes"] == "1,3,200"
    assert "Pipeline(StandardScaler, LogisticRegression)" in meta["slipway.converted_from"]
    assert slipway.summary(out)["inputs"][0]["shape"] == ["batch", 64]
    # The saved model at another batch size agrees with scikit-learn.
    rows = X[1400:1407]
    label, proba = _session(out).run(None, {"X": rows})
    np.testing.assert_array_equal(label, logreg.predict(rows))
    np.testing.assert_allclose(proba, logreg.predict_proba(rows), atol=1e-5)


def test_random_forest_on_digits(tmp_path, digits):
    X, y = digits
    forest = RandomForestClassifier(n_estimators=15, max_depth=8, random_state=0).fit(X[:1200], y[:1200])
    result = from_sklearn(forest, X[1200:1300], tmp_path / "rf.onnx")
    proba = next(o for o in result.report.outputs if o.name == "probabilities")
    assert result.report.ok and proba.max_abs < 1e-5
    label, onnx_proba = _session(result.path).run(None, {"X": X[1300:1350]})
    np.testing.assert_array_equal(label, forest.predict(X[1300:1350]))
    np.testing.assert_allclose(onnx_proba, forest.predict_proba(X[1300:1350]), atol=1e-5)
    assert (label == y[1300:1350]).mean() > 0.8  # a real classifier, not a constant


def test_regressor(tmp_path, digits):
    X, y = digits
    ridge = Ridge(alpha=1.0).fit(X, y.astype(np.float64))
    result = from_sklearn(ridge, X[:100], tmp_path / "ridge.onnx")
    (check,) = result.report.outputs
    assert check.name == "variable" and check.ok and check.max_rel < 1e-5
    (pred,) = _session(result.path).run(None, {"X": X[100:109]})
    assert pred.shape == (9, 1)
    np.testing.assert_allclose(pred[:, 0], ridge.predict(X[100:109]), rtol=1e-4, atol=1e-4)


def test_zero_tolerance_fails_naming_the_output_and_writes_nothing(tmp_path, digits, logreg):
    X, _ = digits
    out = tmp_path / "strict.onnx"
    with pytest.raises(VerificationError, match="output 'probabilities'") as info:
        from_sklearn(logreg, X[1200:1300], out, atol=0.0, rtol=0.0)
    assert "atol 0 + rtol 0" in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_inputs_are_user_errors(digits, logreg):
    X, y = digits
    with pytest.raises(UserError, match="not fitted"):
        from_sklearn(LogisticRegression(), X[:10])
    with pytest.raises(UserError, match="expects 64 features, X_sample has 10"):
        from_sklearn(logreg, X[:5, :10])
    with pytest.raises(UserError, match="2-D"):
        from_sklearn(logreg, X[0])


def test_tie_rule_accepts_only_tied_labels_on_random_rows(digits):
    X, y = digits
    clf = DummyClassifier().fit(X[:30], y[:30] % 3)  # classes 0, 1, 2
    sample = {"X": X[:2]}
    ties: list[int] = []
    adjust = _tie_rule(clf, ["label", "probabilities"], sample, 1e-4, 1e-3, ties, sklearn)
    ref = {"label": np.array([0, 2, 1]), "probabilities": np.array([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])}
    act = {"label": np.array([1, 1, 1]), "probabilities": ref["probabilities"]}
    fixed = adjust({"X": X[:3]}, ref, act)
    # Row 0 is a tie (0.4 vs 0.4): the ONNX label 1 is accepted; row 1 is not a tie (0.7 vs 0.2).
    np.testing.assert_array_equal(fixed["label"], [1, 2, 1])
    assert sum(ties) == 1
    assert adjust(sample, ref, act) is ref  # on the user's sample, labels stay exact
