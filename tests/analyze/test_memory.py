"""Peak activation memory with buffer reuse, on graphs with hand-computed answers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from slipway.analyze import analyze
from slipway.analyze.memory import peak_activation_memory, topological_order
from slipway.errors import UserError

F = TensorProto.FLOAT


def make(nodes, inputs, outputs, inits=None):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, None) for n in outputs],
        initializer=[numpy_helper.from_array(a, name) for name, a in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def branchy():
    """x(400 B) -> a = Relu(x), b = Concat(x, x), c = Concat(a, b), y = Relu(c), z = Sigmoid(y).

    Live bytes while each node runs (freeing after the last consumer; y and z are outputs):
      n1: x + a           = 400 + 400               =  800
      n2: x + a + b       = 400 + 400 + 800         = 1600, then x is freed
      n3: a + b + c       = 400 + 800 + 1200        = 2400, then a and b are freed
      n4: c + y           = 1200 + 1200             = 2400, then c is freed
      n5: y + z           = 1200 + 1200             = 2400 (outputs are never freed)
    Without reuse every buffer would stay: 400 + 400 + 800 + 1200 + 1200 + 1200 = 5200.
    """
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="n1"),
        helper.make_node("Concat", ["x", "x"], ["b"], name="n2", axis=0),
        helper.make_node("Concat", ["a", "b"], ["c"], name="n3", axis=0),
        helper.make_node("Relu", ["c"], ["y"], name="n4"),
        helper.make_node("Sigmoid", ["y"], ["z"], name="n5"),
    ]
    return make(nodes, [("x", [100])], ["y", "z"])


def test_branchy_graph_peak_with_buffer_reuse():
    a = analyze(branchy())
    assert a.peak_activation_bytes == 2400
    assert a.summary["peak_activation_node"] == "n3"
    no_reuse = 400 + sum(n.bytes_written for n in a.nodes)
    assert no_reuse == 5200 and a.peak_activation_bytes < no_reuse


def test_live_bytes_per_node():
    m = ir.serde.deserialize_model(branchy())
    sizes = {"x": 400, "a": 400, "b": 800, "c": 1200, "y": 1200, "z": 1200}
    plan = peak_activation_memory(m.graph, topological_order(m.graph), sizes)
    assert plan.live_bytes == [800, 1600, 2400, 2400, 2400]
    assert plan.peak_bytes == 2400 and plan.unknown == []


def test_weights_do_not_count_and_dead_outputs_are_freed():
    # A 4 MB weight must not appear; Split's unused second half is freed right after Split.
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),  # h: [1, 1000] = 4000 B
        helper.make_node("Split", ["h", "parts"], ["h1", "unused"], name="split", axis=1),  # 2000 + 2000
        helper.make_node("Relu", ["h1"], ["y"], name="relu"),  # 2000
    ]
    inits = {"W": np.zeros((1000, 1000), np.float32), "parts": np.array([500, 500], np.int64)}
    a = analyze(make(nodes, [("x", [1, 1000])], ["y"], inits))
    # mm: x + h = 8000; split: h + h1 + unused = 8000; relu: h1 + y = 4000 (unused was freed)
    assert a.peak_activation_bytes == 8000
    m = ir.serde.deserialize_model(make(nodes, [("x", [1, 1000])], ["y"], inits))
    sizes = {"x": 4000, "h": 4000, "h1": 2000, "unused": 2000, "y": 2000}
    assert peak_activation_memory(m.graph, topological_order(m.graph), sizes).live_bytes == [8000, 8000, 4000]


def test_order_is_topological_even_when_stored_out_of_order():
    x = ir.Value(name="x", shape=ir.Shape([4]), type=ir.TensorType(ir.DataType.FLOAT))
    first = ir.Node("", "Relu", [x], name="first")
    second = ir.Node("", "Neg", [first.outputs[0]], name="second")
    side = ir.Node("", "Abs", [x], name="side")
    graph = ir.Graph([x], [second.outputs[0], side.outputs[0]], nodes=[second, side, first], name="g")
    assert [n.name for n in topological_order(graph)] == ["side", "first", "second"]


def test_cycle_is_a_user_error():
    x = ir.Value(name="x", shape=ir.Shape([4]), type=ir.TensorType(ir.DataType.FLOAT))
    a = ir.Node("", "Add", [x, x], name="a")
    b = ir.Node("", "Relu", [a.outputs[0]], name="b")
    a.replace_input_with(1, b.outputs[0])
    graph = ir.Graph([x], [b.outputs[0]], nodes=[a, b], name="g")
    with pytest.raises(UserError, match="cycle"):
        topological_order(graph)


def test_peak_scales_with_batch():
    model = make([helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", 10])], ["y"])
    assert analyze(model).peak_activation_bytes == 2 * 40
    assert analyze(model, {"x": [8, 10]}).peak_activation_bytes == 8 * 2 * 40
