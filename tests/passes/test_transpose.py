"""sink-transposes: structure and numbers (onnxruntime) on hand-built graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from slipway.passes.transpose import SinkTransposes
from tests.passes.util import assert_same, copy, make, op_types, tensor


def all_ops(model) -> list[str]:
    return [n.op_type for n in model.graph.all_nodes()]

RNG = np.random.default_rng(0)


def T(src: str, dst: str, perm: list[int] | None, name: str = "") -> onnx.NodeProto:
    kwargs = {"perm": perm} if perm is not None else {}
    return helper.make_node("Transpose", [src], [dst], name=name or f"T_{dst}", **kwargs)


def node(op: str, inputs: list[str], out: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [out], name=f"{op}_{out}", **attrs)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def check(model, feeds_list: list[dict[str, np.ndarray]]):
    """Run the pass; numbers agree at every feed; a second run changes nothing; nodes went down."""
    before = copy(model)
    result = SinkTransposes()(model)
    for feeds in feeds_list:
        assert_same(before, model, feeds)
    if result.modified:
        assert len(all_ops(model)) < len(all_ops(before))
        assert all_ops(model).count("Transpose") < all_ops(before).count("Transpose")
    assert [v.name for v in model.graph.outputs] == [v.name for v in before.graph.outputs]
    assert not SinkTransposes()(model).modified
    return result


def test_pair_cancels_through_unary_ops_dynamic_batch():
    nodes = [T("x", "t", [0, 2, 1]), node("Relu", ["t"], "r"), node("Sqrt", ["r"], "s"),
             T("s", "u", [0, 2, 1]), node("Sigmoid", ["u"], "y")]
    model = make(nodes, [tensor("x", ["N", 3, 4])], [tensor("y", ["N", 3, 4])])
    result = check(model, [{"x": rand(1, 3, 4)}, {"x": rand(5, 3, 4)}])
    assert result.changes == {"cancel": 1}
    assert op_types(model) == ["Relu", "Sqrt", "Sigmoid"]


def test_cancel_into_graph_output_keeps_its_name():
    nodes = [T("x", "t", [1, 0]), node("Neg", ["t"], "n"), T("n", "y", [1, 0])]
    model = make(nodes, [tensor("x", [3, 4])], [tensor("y", [3, 4])])
    check(model, [{"x": rand(3, 4)}])
    assert op_types(model) == ["Neg"]
    assert model.graph.outputs[0].name == "y"


def test_input_to_output_pair_becomes_identity():
    model = make([T("x", "t", None), T("t", "y", None)], [tensor("x", [3, 4])], [tensor("y", [3, 4])])
    check(model, [{"x": rand(3, 4)}])
    assert op_types(model) == ["Identity"]


def test_two_perms_compose_into_one():
    nodes = [T("x", "t", [0, 2, 3, 1]), node("Exp", ["t"], "e"), T("e", "u", [0, 2, 1, 3]), node("Relu", ["u"], "y")]
    model = make(nodes, [tensor("x", [2, 3, 4, 5])], [tensor("y", [2, 5, 4, 3])])
    result = check(model, [{"x": rand(2, 3, 4, 5)}])
    assert result.changes == {"compose": 1}
    assert op_types(model) == ["Exp", "Transpose", "Relu"]
    perm = next(n for n in model.graph if n.op_type == "Transpose").attributes["perm"].as_ints()
    assert list(perm) == [0, 3, 2, 1]


def test_binary_ops_with_constants_are_permuted_with_broadcasting():
    nodes = [T("x", "t", [0, 2, 1]), node("Add", ["t", "c1"], "a"), node("Sub", ["c2", "a"], "s"),
             node("Mul", ["s", "c3"], "m"), T("m", "y", [0, 2, 1])]
    inits = {"c1": rand(3), "c2": rand(4, 1), "c3": np.array(2.0, np.float32)}
    model = make(nodes, [tensor("x", ["N", 3, 4])], [tensor("y", ["N", 3, 4])], inits)
    check(model, [{"x": rand(1, 3, 4)}, {"x": rand(3, 3, 4)}])
    assert op_types(model) == ["Add", "Sub", "Mul"]
    assert "c3" in model.graph.initializers  # a scalar is used as it is


def test_same_perm_transposes_merge_into_one():
    nodes = [T("a", "ta", [0, 2, 1]), T("b", "tb", [0, 2, 1]), node("Add", ["ta", "tb"], "s"), node("Relu", ["s"], "y")]
    model = make(nodes, [tensor("a", [2, 3, 4]), tensor("b", [2, 3, 4])], [tensor("y", [2, 4, 3])])
    result = check(model, [{"a": rand(2, 3, 4), "b": rand(2, 3, 4)}])
    assert result.changes == {"merge": 1}
    assert op_types(model) == ["Add", "Transpose", "Relu"]


def test_clip_cast_leakyrelu_with_parameter_inputs():
    nodes = [T("x", "t", [1, 0]), node("Clip", ["t", "lo", "hi"], "c"), node("Cast", ["c"], "d", to=TensorProto.DOUBLE),
             node("LeakyRelu", ["d"], "l", alpha=0.2), node("Add", ["l", "l"], "s"), T("s", "y", [1, 0])]
    inits = {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}
    model = make(nodes, [tensor("x", [3, 4])], [tensor("y", [3, 4], TensorProto.DOUBLE)], inits)
    check(model, [{"x": rand(3, 4)}])
    assert op_types(model) == ["Clip", "Cast", "LeakyRelu", "Add"]


@pytest.mark.parametrize("case", ["matmul", "two-users", "graph-input-operand", "other-perm"])
def test_no_cancellation_in_sight_leaves_the_graph_alone(case):
    inputs, inits = [tensor("x", [3, 4])], {}
    if case == "matmul":
        nodes = [T("x", "t", [1, 0]), node("Relu", ["t"], "r"), node("MatMul", ["r", "w"], "y")]
        inits, out = {"w": rand(3, 2)}, tensor("y", [4, 2])
    elif case == "two-users":
        nodes = [T("x", "t", [1, 0]), node("Relu", ["t"], "r"), node("Neg", ["t"], "n"),
                 node("Add", ["r", "n"], "s"), T("s", "y", [1, 0])]
        out = tensor("y", [3, 4])
    elif case == "graph-input-operand":
        nodes = [T("x", "t", [1, 0]), node("Add", ["t", "z"], "s"), T("s", "y", [1, 0])]
        inputs, out = [tensor("x", [3, 4]), tensor("z", [4, 3])], tensor("y", [3, 4])
    else:
        nodes = [T("x", "t", [0, 2, 1]), T("z", "tz", [1, 0, 2]), node("Add", ["t", "tz"], "y")]
        inputs, out = [tensor("x", [2, 3, 3]), tensor("z", [3, 2, 3])], tensor("y", [2, 3, 3])
    model = make(nodes, inputs, [out], inits)
    before = op_types(model)
    feeds = {v.name: rand(*[d for d in v.shape]) for v in model.graph.inputs}
    result = check(model, [feeds])
    assert not result.modified and op_types(model) == before
    if case in ("matmul", "graph-input-operand"):
        assert any("not sunk" in line for line in SinkTransposes().explain(model))


def test_walks_if_branches():
    body = [T("x", "t", [1, 0]), node("Tanh", ["t"], "h"), node("Mul", ["h", "c"], "m"), T("m", "out", [1, 0])]
    then = helper.make_graph(body, "then", [], [tensor("out", [3, 4])])
    other = helper.make_graph([node("Neg", ["x"], "out2")], "else", [], [tensor("out2", [3, 4])])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="if")]
    model = make(nodes, [tensor("cond", [], TensorProto.BOOL), tensor("x", [3, 4])], [tensor("y", [3, 4])],
                 {"c": rand(3)})
    check(model, [{"cond": np.array(True), "x": rand(3, 4)}, {"cond": np.array(False), "x": rand(3, 4)}])
    branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in branch] == ["Tanh", "Mul"]
    assert list(branch.initializers) == ["c_untransposed"]  # [3] on the last axis -> [3, 1]
    assert branch.outputs[0].name == "out"
