"""Shared verification: comparisons, size planning, random inputs, ONNX-vs-ONNX checks, commit."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import slipway
from slipway.errors import UserError, VerificationError
from slipway.verify import (
    InputSpec,
    commit,
    compare,
    input_specs,
    merge,
    ort_runner,
    plan_sizes,
    random_feeds,
    verify,
    verify_onnx,
)

RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 4)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)


def linear_model(bias: np.ndarray, *, argmax: bool = True) -> ir.Model:
    """y = x @ W + bias with a dynamic batch dim, plus k = argmax(y) (int64)."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])]
    if argmax:
        nodes.append(helper.make_node("ArgMax", ["y"], ["k"], axis=1, keepdims=0))
        outputs.append(helper.make_tensor_value_info("k", TensorProto.INT64, ["batch"]))
    graph = helper.make_graph(
        nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])], outputs,
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def test_compare_float_definitions():
    ref = np.array([1.0, -2.0, 0.0], np.float32)
    act = np.array([1.0, -2.001, 1e-5], np.float32)
    c = compare("y", ref, act, atol=1e-4, rtol=1e-3)
    assert c.max_abs == pytest.approx(0.001, rel=1e-3)
    assert c.ref_scale == 2.0
    assert c.max_rel == pytest.approx(0.0005, rel=1e-3)  # relative to max |ref|, not per element
    assert c.allowed == pytest.approx(1e-4 + 2e-3)
    assert c.ok and c.mismatches == 0 and not c.exact
    tight = compare("y", ref, act, atol=1e-4, rtol=1e-4)  # allowed 3e-4 < 1e-3
    assert not tight.ok and tight.mismatches == 1
    assert "'y'" in tight.note and "max_abs 0.001" in tight.note


def test_compare_zeros_nan_and_inf():
    zeros = np.zeros(4, np.float32)
    c = compare("z", zeros, np.full(4, 5e-5, np.float32), atol=1e-4, rtol=1e-3)
    assert c.ok and c.ref_scale == 0.0
    assert c.max_rel == pytest.approx(5e-5 / 1e-12, rel=1e-3)  # floored scale: large but finite
    same_nan = compare("n", np.array([np.nan, np.inf, 1.0]), np.array([np.nan, np.inf, 1.0]), atol=0, rtol=0)
    assert same_nan.ok and same_nan.max_abs == 0.0
    new_nan = compare("n", np.array([1.0, 2.0]), np.array([np.nan, 2.0]), atol=1, rtol=1)
    assert not new_nan.ok and new_nan.max_abs == np.inf


def test_compare_integers_exactly_and_shapes():
    ok = compare("k", np.array([1, 2, 3]), np.array([1, 2, 3]), atol=10, rtol=10)
    assert ok.ok and ok.exact and ok.allowed == 0
    bad = compare("k", np.array([1, 2, 3]), np.array([1, 2, 4]), atol=10, rtol=10)  # tolerance ignored
    assert not bad.ok and bad.mismatches == 1 and bad.max_abs == 1.0
    assert "1 of 3 values differ" in bad.note
    labels = compare("s", np.array(["a", "b"]), np.array(["a", "c"], dtype=object), atol=0, rtol=0)
    assert not labels.ok and labels.mismatches == 1
    shape = compare("y", np.zeros((2, 3)), np.zeros((2, 4)), atol=1, rtol=1)
    assert not shape.ok and "shape [2, 4]" in shape.note


def test_merge_keeps_worst_and_first_failure():
    a = compare("y", np.ones(3), np.ones(3) + 1e-6, atol=1e-4, rtol=0, where="batch 1")
    b = compare("y", np.ones(3), np.ones(3) + 1e-3, atol=1e-4, rtol=0, where="batch 3")
    m = merge([a, b])
    assert not m.ok and m.where == "batch 3" and m.max_abs == pytest.approx(1e-3)
    assert m.size == 6 and m.mismatches == 3


def test_plan_sizes_batch_named_dims_and_ranges():
    specs = [InputSpec("x", ["batch", "seq", 8], np.dtype("float32"), np.zeros((2, 5, 8), np.float32))]
    plan = plan_sizes(specs, batch_sizes=(1, 3, 4))
    assert plan == [{"batch": 1, "seq": 5}, {"batch": 3, "seq": 10}, {"batch": 4, "seq": 5}]
    clipped = plan_sizes(specs, batch_sizes=(1, 3), ranges={"batch": (2, None), "seq": (None, 6)})
    assert [p["batch"] for p in clipped] == [2, 3] and {p["seq"] for p in clipped} == {5, 6}
    given = plan_sizes(specs, dim_sizes={"seq": [7, 9, 11]})
    assert [p["seq"] for p in given] == [7, 9, 11]
    with pytest.raises(UserError, match="'seq'"):
        plan_sizes([InputSpec("x", ["batch", "seq"], np.dtype("float32"))])


def test_random_feeds_follow_examples():
    rng = np.random.default_rng(1)
    ids = np.array([[3, 7, 5]], np.int64)
    specs = [InputSpec("ids", ["batch", 3], np.dtype("int64"), ids),
             InputSpec("x", ["batch", 2], np.dtype("float32"), np.full((1, 2), 10.0, np.float32)),
             InputSpec("m", ["batch"], np.dtype("bool"))]
    feeds = random_feeds(specs, {"batch": 500}, rng)
    assert feeds["ids"].shape == (500, 3) and feeds["ids"].dtype == np.int64
    assert feeds["ids"].min() == 3 and feeds["ids"].max() == 7
    assert feeds["x"].dtype == np.float32 and abs(float(feeds["x"].mean()) - 10.0) < 0.2
    assert feeds["m"].dtype == np.bool_ and 0.3 < feeds["m"].mean() < 0.7


def test_input_specs_from_model():
    specs = input_specs(linear_model(B))
    assert [(s.name, s.dims, s.dtype) for s in specs] == [("x", ["batch", 6], np.dtype("float32"))]


def test_ort_runner_matches_numpy():
    x = RNG.standard_normal((5, 6)).astype(np.float32)
    out = ort_runner(linear_model(B))({"x": x})
    np.testing.assert_allclose(out["y"], x @ W + B, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["k"], np.argmax(x @ W + B, axis=1))


def test_verify_onnx_identical_and_perturbed():
    same = verify_onnx(linear_model(B), linear_model(B.copy()), batch_sizes=(1, 3, 7))
    assert same.ok and same.batch_sizes == [1, 3, 7]
    assert all(o.max_abs == 0 for o in same.outputs)
    # Adding 0.05 to one bias element changes y by exactly that much (up to float32 rounding).
    bumped = B.copy()
    bumped[2] += 0.05
    report = verify_onnx(linear_model(B, argmax=False), linear_model(bumped, argmax=False))
    y = report.outputs[0]
    assert not report.ok and y.name == "y"
    assert y.max_abs == pytest.approx(0.05, abs=1e-5)
    assert "output 'y'" in report.failure and "batch" in report.failure
    with pytest.raises(VerificationError, match="output 'y'") as info:
        report.raise_if_failed()
    assert info.value.report is report


def test_commit_records_metadata_and_writes(tmp_path):
    bumped = B.copy()
    bumped[0] += 3e-5
    model = linear_model(bumped)
    report = verify_onnx(linear_model(B), model)
    out = tmp_path / "m.onnx"
    result = commit(model, report, out, metadata={"slipway.converted_from": "test"})
    assert result.path == out and out.exists()
    meta = slipway.load(out).metadata_props
    assert float(meta["slipway.verify.y.max_abs"]) == pytest.approx(3e-5, rel=0.05)
    assert float(meta["slipway.verify.k.max_abs"]) == 0.0
    assert meta["slipway.verify.batch_sizes"] == "1,3"
    assert meta["slipway.verify.tolerance"] == "atol=0.0001 rtol=0.001"
    assert meta["slipway.verify.ok"] == "true" and meta["slipway.converted_from"] == "test"
    assert "disabled" in meta["slipway.verify.engine"]
    assert onnx.load(str(out)).graph.output[0].name == "y"


def test_commit_failure_writes_nothing(tmp_path):
    bumped = B.copy()
    bumped[1] += 1.0
    model = linear_model(bumped)
    report = verify_onnx(linear_model(B), model)
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match="output 'y'"):
        commit(model, report, out)
    assert list(tmp_path.iterdir()) == []
    assert "slipway.verify.ok" not in model.metadata_props


def test_missing_output_fails():
    def reference(feeds):
        return {"y": feeds["x"] @ W + B, "extra": np.zeros(1, np.float32)}

    report = verify(reference, linear_model(B, argmax=False), input_specs(linear_model(B)))
    assert not report.ok and "no output 'extra'" in report.failure
    assert report.outputs[0].name == "y" and report.outputs[0].max_abs < 1e-5


def test_negative_tolerance_is_user_error():
    with pytest.raises(UserError, match="tolerances"):
        verify_onnx(linear_model(B), linear_model(B), atol=-1)
