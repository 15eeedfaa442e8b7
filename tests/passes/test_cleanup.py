from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from slipway.passes import PASSES
from slipway.passes.cleanup import CommonSubexpressions, DedupInitializers, RemoveDead
from slipway.passes.opset import ConvertOpset
from slipway.zoo import NAMES, ZOO
from tests.passes.util import assert_same, copy, make, op_types, run, tensor
from tests.zoo import export

rng = np.random.default_rng(0)


def feeds(*shape) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal(shape).astype(np.float32)}


def apply(pass_, model, *batches, width=4):
    before = copy(model)
    result = pass_(model)
    for b in batches:
        assert_same(before, model, feeds(b, width))
    again = pass_(model)
    assert not again.modified, again.changes
    return result


@pytest.mark.parametrize("cls", [RemoveDead, DedupInitializers, CommonSubexpressions])
def test_registered_and_documented(cls):
    assert PASSES[cls.name] is cls
    assert "->" in cls().summary


def test_remove_dead_nodes_initializers_functions_opsets():
    body = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                [helper.make_operatorsetid("", 17)])
    nodes = [helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("Neg", ["x"], ["dead1"]), helper.make_node("Exp", ["dead1"], ["dead2"]),
             helper.make_node("Twice", ["x"], ["dead3"], domain="local")]
    graph = helper.make_graph(nodes, "g", [tensor("x", ["b", 4]), tensor("unused_input", [2])], [tensor("y", ["b", 4])],
                              [helper.make_tensor("unused", TensorProto.FLOAT, [2], [1, 2])])
    proto = helper.make_model(graph, functions=[body], opset_imports=[helper.make_operatorsetid("", 17),
                                                                       helper.make_operatorsetid("local", 1),
                                                                       helper.make_operatorsetid("other", 1)])
    proto.ir_version = 8
    model = ir.serde.deserialize_model(proto)
    before = copy(model)
    result = RemoveDead()(model)
    assert result.changes == {"node": 3, "initializer": 1, "function": 1, "opset": 2}
    assert op_types(model) == ["Relu"]
    assert [v.name for v in model.graph.inputs] == ["x", "unused_input"]  # the signature is kept
    assert not model.functions and set(model.opset_imports) == {""}
    feed = {**feeds(3, 4), "unused_input": np.zeros(2, np.float32)}
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    np.testing.assert_array_equal(run(model, feed)[0], run(before, feed)[0])
    assert not RemoveDead()(model).modified


def test_remove_dead_inside_if_branches():
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Neg", ["x"], ["dead"])],
                               "then", [], [tensor("t", ["b", 4])])
    else_g = helper.make_graph([helper.make_node("Abs", ["x"], ["e"])], "else", [], [tensor("e", ["b", 4])],
                               [helper.make_tensor("unused", TensorProto.FLOAT, [1], [1])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    model = make(nodes, [tensor("x", ["b", 4])], [tensor("y", ["b", 4])], {"zero": np.array(0, np.float32)})
    result = apply(RemoveDead(), model, 1, 3)
    assert result.changes == {"node": 1, "initializer": 1}
    branches = model.graph.node(2).attributes
    assert [n.op_type for n in branches["then_branch"].as_graph()] == ["Relu"]
    assert not branches["else_branch"].as_graph().initializers


def test_dedup_merges_equal_initializers_only():
    w = rng.standard_normal((4, 4)).astype(np.float32)
    inits = {"w1": w, "w2": w.copy(), "w3": w + 1, "w4": w.astype(np.float64).astype(np.float32).reshape(2, 8)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("MatMul", ["x", "w3"], ["c"]), helper.make_node("Sum", ["a", "b", "c"], ["s"]),
             helper.make_node("Reshape", ["w4", "shape"], ["w4r"]), helper.make_node("Add", ["s", "w4r"], ["y"])]
    model = make(nodes, [tensor("x", ["b", 4])], [tensor("y", [4, 4])], {**inits, "shape": np.array([4, 4])})
    result = apply(DedupInitializers(), model, 4)
    assert result.changes == {"initializer": 1}
    assert sorted(model.graph.initializers) == ["shape", "w1", "w3", "w4"]  # same bytes, other shape: kept
    assert model.graph.node(1).inputs[1].name == "w1"


def test_dedup_keeps_overridable_inputs_and_reads_external_data_lazily(tmp_path):
    w = rng.standard_normal((64, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    model = make(nodes, [tensor("x", ["b", 64])], [tensor("y", ["b", 4])], {"w1": w, "w2": w.copy()})
    ir.save(model, tmp_path / "m.onnx", external_data="m.data")
    lazy = ir.load(tmp_path / "m.onnx")
    assert DedupInitializers()(lazy).changes == {"initializer": 1}
    assert isinstance(lazy.graph.initializers["w1"].const_value, ir.ExternalTensor)
    # an initializer that is also a graph input can be fed another value: never merged
    model.graph.inputs.append(model.graph.initializers["w2"])
    assert not DedupInitializers()(model).modified


def test_cse_merges_repeated_work_and_keeps_output_names():
    nodes = [helper.make_node("Relu", ["x"], ["r1"]), helper.make_node("Relu", ["x"], ["r2"]),
             helper.make_node("Add", ["r1", "r2"], ["y1"]), helper.make_node("Add", ["r1", "r2"], ["y2"]),
             helper.make_node("Transpose", ["x"], ["t1"], perm=[1, 0]),
             helper.make_node("Transpose", ["x"], ["t2"], perm=[1, 0]),
             helper.make_node("Transpose", ["x"], ["t3"], perm=[0, 1]),
             helper.make_node("RandomNormalLike", ["x"], ["n1"]), helper.make_node("RandomNormalLike", ["x"], ["n2"]),
             helper.make_node("Sub", ["n1", "n2"], ["z"]), helper.make_node("Mul", ["z", "zero"], ["z0"]),
             helper.make_node("MatMul", ["t1", "t2"], ["m"]), helper.make_node("Add", ["m", "z0"], ["y3"]),
             helper.make_node("Add", ["t3", "x"], ["y4"])]
    outs = [tensor("y1", ["b", "b"]), tensor("y2", ["b", "b"]), tensor("y3", ["b", "b"]), tensor("y4", ["b", "b"])]
    model = make(nodes, [tensor("x", ["b", "b"])], outs, {"zero": np.array(0, np.float32)})
    result = apply(CommonSubexpressions(), model, 3, width=3)
    assert result.changes == {"node": 3}  # Relu, Add (now an Identity to keep y2) and Transpose
    assert [v.name for v in model.graph.outputs] == ["y1", "y2", "y3", "y4"]
    assert op_types(model).count("RandomNormalLike") == 2 and op_types(model).count("Identity") == 1


def test_cse_inside_a_loop_body():
    body = helper.make_graph(
        [helper.make_node("Exp", ["v_in"], ["e1"]), helper.make_node("Exp", ["v_in"], ["e2"]),
         helper.make_node("Add", ["e1", "e2"], ["s"]), helper.make_node("Mul", ["s", "half"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [tensor("i", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL), tensor("v_in", ["b", 4])],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("v_out", ["b", 4])])
    nodes = [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)]
    model = make(nodes, [tensor("x", ["b", 4])], [tensor("y", ["b", 4])],
                 {"n": np.array(3), "half": np.array(0.5, np.float32)})
    result = apply(CommonSubexpressions(), model, 1, 3)
    assert result.changes == {"node": 1}
    assert [n.op_type for n in model.graph.node(0).attributes["body"].as_graph()] == ["Exp", "Add", "Mul", "Identity"]


def session(model: ir.Model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


ZOO_PASSES = ["infer-shapes", "fold-constants", "eliminate", "fold-shape-subgraphs", "cse", "dedup-initializers",
              "remove-dead"]


BIG = ("resnet18", "mobilenetv2")  # ~45 MB and ~14 MB of weights: seconds to load and run, so in the slow run


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in NAMES])
def test_zoo_models_keep_their_outputs(name):
    """Every pass of this issue on every zoo model: valid, same numbers at two batch sizes, then a fixed point."""
    reference = ir.load(export(name))
    model = copy(reference)
    for p in [ConvertOpset(target_opset=21), *(PASSES[n]() for n in ZOO_PASSES)]:
        result = p(model)
        assert not [w for w in result.warnings if "not folded" not in w], (p.name, result.warnings)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    shape = ZOO[name].input_shape
    want_session, got_session = session(reference), session(model)
    for batch in (1, 2):
        x = np.random.default_rng(batch).standard_normal((batch, *shape[1:])).astype(np.float32)
        for want, got in zip(want_session.run(None, {"x": x}), got_session.run(None, {"x": x}), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    again = {n: PASSES[n]()(model).changes for n in ZOO_PASSES}
    assert not any(again.values()), again
