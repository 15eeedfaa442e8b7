"""verify.inputs: input specs (dynamic dims named), size plans, THE random feed generator, user data."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from slipway.errors import UserError
from slipway.verify.inputs import (
    SMALL,
    Distribution,
    InputSpec,
    at_batch,
    batch_data,
    batch_dim,
    check_data,
    describe,
    input_specs,
    load_inputs,
    plan_sizes,
    random_array,
    random_feeds,
)


def _model(inputs, inits=()) -> ir.Model:
    nodes = [helper.make_node("Identity", [i.name], [i.name + "_out"]) for i in inputs]
    outputs = [helper.make_tensor_value_info(i.name + "_out", i.type.tensor_type.elem_type, None) for i in inputs]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_unnamed_question_mark_and_minus_one_dims_are_named_input_dot_axis():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "?", -1])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 128])
    m = _model([x, state])
    m.graph.inputs[0].shape = ir.Shape(["N", 3, "?", ir.SymbolicDim(None)])
    specs = input_specs(m)
    assert [s.name for s in specs] == ["x", "state"]
    assert specs[0].dims == ["N", 3, "x.2", "x.3"] and specs[0].anonymous == (2, 3)
    assert specs[1].dims == [2, "state.1", 128] and specs[1].anonymous == (1,)
    assert specs[0].dtype == np.float32


def test_initializers_listed_as_inputs_are_not_inputs_and_examples_attach():
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])
    m = _model([x, w], [helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])])
    example = np.arange(4)
    specs = input_specs(m, {"x": example})
    assert [s.name for s in specs] == ["x"] and specs[0].example is example


def test_an_input_without_shape_is_one_line_error():
    m = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])
    with pytest.raises(UserError, match="input 'x' has no shape"):
        input_specs(m)


def test_size_plans_batch_dim_other_dims_examples_and_ranges():
    specs = [InputSpec("x", ["N", 3, "T"], np.dtype(np.float32), np.zeros((1, 3, 10), np.float32))]
    assert plan_sizes(specs, (1, 3)) == [{"N": 1, "T": 10}, {"N": 3, "T": 20}]
    assert plan_sizes(specs, (1, 3), {"T": [5, 6, 7]}) == [{"N": 1, "T": 5}, {"N": 3, "T": 6}, {"N": 1, "T": 7}]
    assert plan_sizes(specs, (1, 3), ranges={"T": (None, 12)}) == [{"N": 1, "T": 10}, {"N": 3, "T": 12}]
    assert plan_sizes(specs, (2, 8), ranges={"N": (1, 4)}) == [{"N": 2, "T": 10}, {"N": 4, "T": 20}]
    static = [InputSpec("x", [1, 3], np.dtype(np.float32))]
    assert plan_sizes(static, (1, 3)) == [{}, {}]  # two runs even with nothing to vary
    with pytest.raises(UserError, match="no example size"):
        plan_sizes([InputSpec("x", ["N", "T"], np.dtype(np.float32))], (1, 3))
    with pytest.raises(UserError, match="must be positive"):
        plan_sizes(specs, (1, 3), {"T": [0]})


def test_at_batch_moves_the_batch_and_tied_state_dims():
    specs = [InputSpec("x", ["N", "T"], np.dtype(np.float32)),
             InputSpec("state", [2, "state.1"], np.dtype(np.float32), anonymous=(1,))]
    assert batch_dim(specs) == "N"
    assert at_batch(specs, {"N": 1, "T": 16, "state.1": 1}, 4) == {"N": 4, "T": 16, "state.1": 4}
    assert at_batch([InputSpec("x", [1, 3], np.dtype(np.float32))], {}, 4) == {}


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.int8])
def test_random_integers_stay_in_range(dtype):
    rng = np.random.default_rng(0)
    a = random_array((1000,), dtype, rng)
    assert a.dtype == dtype and a.min() >= 0 and a.max() <= 9 and len(np.unique(a)) == 10
    hinted = random_array((1000,), dtype, rng, example=np.array([2, 5]))
    assert set(np.unique(hinted)) == {2, 3, 4, 5}
    small = random_array((1000,), dtype, rng, dist=SMALL)
    assert set(np.unique(small)) == {0, 1, 2, 3}
    assert set(np.unique(random_array((100,), dtype, rng, dist=Distribution(ints=(7, 7))))) == {7}


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_random_floats_follow_the_distribution(dtype):
    rng = np.random.default_rng(0)
    a = random_array((20000,), dtype, rng)
    assert a.dtype == dtype
    a = a.astype(np.float64)  # float16 sums overflow
    assert abs(a.mean()) < 0.05 and 0.95 < a.std() < 1.05
    example = np.array([10.0, 14.0])  # mean 12, std 2
    b = random_array((20000,), dtype, rng, example=example).astype(np.float64)
    assert abs(b.mean() - 12) < 0.1 and 1.9 < b.std() < 2.1
    u = random_array((20000,), dtype, rng, dist=SMALL).astype(np.float64)
    assert u.min() >= -1 and u.max() <= 1 and abs(u.mean()) < 0.05
    constant = random_array((100,), dtype, rng, example=np.full(3, 5.0)).astype(np.float64)  # std 0: unit spread
    assert abs(constant.mean() - 5) < 0.5


def test_random_bools_and_unsupported_dtypes():
    rng = np.random.default_rng(0)
    b = random_array((1000,), np.bool_, rng)
    assert b.dtype == np.bool_ and 400 < int(b.sum()) < 600
    with pytest.raises(UserError, match="cannot make random inputs of dtype"):
        random_array((2,), np.dtype(object), rng)


def test_random_feeds_use_the_sizes_and_the_same_seed_gives_the_same_feeds():
    specs = [InputSpec("x", ["N", 3], np.dtype(np.float32)), InputSpec("ids", ["N"], np.dtype(np.int64))]
    a = random_feeds(specs, {"N": 5}, np.random.default_rng(1))
    b = random_feeds(specs, {"N": 5}, np.random.default_rng(1))
    assert a["x"].shape == (5, 3) and a["ids"].shape == (5,)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert describe(a) == "x[5,3] ids[5]"


def test_user_data_is_checked_and_tiled(tmp_path):
    specs = [InputSpec("x", ["N", 3], np.dtype(np.float32)),
             InputSpec("state", [2, "state.1"], np.dtype(np.float32), anonymous=(1,))]
    data = {"x": np.ones((1, 3), np.float32), "state": np.zeros((2, 1), np.float32)}
    check_data(specs, data, "inputs")
    tiled = batch_data(specs, data, 4)
    assert tiled["x"].shape == (4, 3) and tiled["state"].shape == (2, 4)
    with pytest.raises(UserError, match="input 'x' is float64"):
        check_data(specs, {**data, "x": np.ones((1, 3))}, "inputs")
    with pytest.raises(UserError, match="dim 1 is 4, the model fixes it at 3"):
        check_data(specs, {**data, "x": np.ones((1, 4), np.float32)}, "inputs")
    with pytest.raises(UserError, match="'y' is not a model input"):
        check_data(specs, {**data, "y": np.ones(1)}, "inputs")
    path = tmp_path / "d.npz"
    np.savez(path, **data)
    arrays, label = load_inputs(path)
    assert label == "d.npz" and sorted(arrays) == ["state", "x"]
    with pytest.raises(UserError, match="input data file not found"):
        load_inputs(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_inputs(tmp_path / "bad.npz")
