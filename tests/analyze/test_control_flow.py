"""Costs inside If / Loop / Scan, weights held by Constant nodes, recurrent layers and domain checks.

Micro-graphs built with onnx.helper, each with hand-computed numbers; every one also runs in
onnxruntime (through ``run``) so that the shapes the analysis inferred are the real ones.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import slipway
from slipway.analyze import analyze
from slipway.errors import UserError
from tests.analyze.test_cost import F, conv_model, make, node, run, w

I64 = TensorProto.INT64
BOOL = TensorProto.BOOL


def const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def graph(nodes, outputs, inputs=(), inits=()) -> onnx.GraphProto:
    """A subgraph; ``outputs`` / ``inputs`` are (name, elem type, shape) triples."""
    return helper.make_graph(nodes, "sub", [helper.make_tensor_value_info(*i) for i in inputs],
                             [helper.make_tensor_value_info(*o) for o in outputs], initializer=list(inits))


def model(nodes, inputs, outputs, inits=None) -> onnx.ModelProto:
    """A model whose inputs may be of any type: (name, elem type, shape) triples; outputs are float names."""
    m = make(nodes, [], outputs, inits)
    m.graph.input.extend(helper.make_tensor_value_info(*i) for i in inputs)
    return m


# ------------------------------------------------------------------ If


def two_branches(cond_nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    """then: x @ W (W an initializer of the branch); else: x * x + b (b held by a Constant node)."""
    then = graph([helper.make_node("MatMul", ["x", "W"], ["t"])], [("t", F, None)],
                 inits=[numpy_helper.from_array(w(8, 8), "W")])
    other = graph([const("b", w(8)), helper.make_node("Mul", ["x", "x"], ["sq"]),
                   helper.make_node("Add", ["sq", "b"], ["e"])], [("e", F, None)])
    nodes = [*cond_nodes, helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    return make(nodes, [("x", [2, 8])], ["y"])


def test_if_with_unknown_condition_counts_the_larger_branch():
    # The condition depends on the data of x: either branch may run.
    a = run(two_branches([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                          const("zero", np.float32(0)), helper.make_node("Greater", ["s", "zero"], ["c"])]))
    if_node = node(a, "If")
    assert if_node.counted and if_node.macs == 2 * 8 * 8 == 128  # then: MatMul [2,8] x [8,8]
    assert if_node.flops == 2 * 128  # the larger branch; else would be 16 + 16 = 32
    assert "branch unknown" in if_node.note and "then_branch" in if_node.note
    assert if_node.params == 64 + 8  # the weights of both branches exist
    assert if_node.bytes_read == 4 * (16 + 64) and if_node.bytes_written == 4 * 16  # the counted branch's
    assert not if_node.trip_count_unknown and if_node.trip_count is None
    assert a.totals["macs"] == 128 and a.totals["params"] == 72 and a.totals["not_counted"] == []


def test_if_with_constant_condition_counts_the_branch_that_runs():
    a = run(two_branches([const("c", np.array(False))]))
    if_node = node(a, "If")
    assert if_node.macs == 0 and if_node.flops == 2 * 16  # else: Mul and Add over 2x8
    assert "condition is a constant: else_branch" in if_node.note
    # A condition computed from shapes is a constant as well: Shape(x)[0] == 2 at x 2x8.
    shaped = two_branches([helper.make_node("Shape", ["x"], ["shp"]), const("zero", np.int64(0)),
                           helper.make_node("Gather", ["shp", "zero"], ["n"]), const("two", np.int64(2)),
                           helper.make_node("Equal", ["n", "two"], ["c"])])
    assert node(run(shaped), "If").macs == 128 and "then_branch runs" in node(run(shaped), "If").note


@pytest.mark.parametrize(("batch", "taken", "width"), [(2, "then_branch", 16), (3, "else_branch", 8)])
def test_shapes_flow_on_after_an_if_on_a_shape(batch, taken, width):
    # then: x concatenated with itself (N x 16); else: x (N x 8). Only the walk can tell which;
    # the Relu after the If gets its shape from it.
    then = graph([helper.make_node("Concat", ["x", "x"], ["t"], axis=1)], [("t", F, None)])
    other = graph([helper.make_node("Identity", ["x"], ["e"])], [("e", F, None)])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), const("z", np.int64(0)), helper.make_node("Gather", ["s", "z"], ["n"]),
             const("two", np.int64(2)), helper.make_node("Equal", ["n", "two"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Relu", ["y"], ["r"])]
    a = run(make(nodes, [("x", ["N", 8])], ["y", "r"]), {"x": [batch, 8]})
    assert f"{taken} runs" in node(a, "If").note
    assert a.summary["outputs"] == {"y": [batch, width], "r": [batch, width]}
    assert node(a, "Relu").flops == batch * width and a.totals["not_counted"] == []


def test_if_reading_outer_values_keeps_them_live():
    def branch(op):
        out = helper.make_tensor_value_info(f"{op}_out", F, None)
        return helper.make_graph([helper.make_node(op, ["x", "x"], [f"{op}_out"])], op, [], [out])

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=branch("Add"), else_branch=branch("Mul")),
    ]
    a = analyze(make(nodes, [("x", [4])], ["y"], {"zero": np.array(0, np.float32)}))
    assert node(a, "If").flops == 4 and node(a, "If").counted
    assert a.summary["outputs"]["y"] == [4]  # typed by the branches, which agree
    # The branches read x from the outer scope, so x (16 B) stays live until If runs:
    # If: x 16 + c 1 (bool) + y 16 = 33; freeing x after ReduceSum would give 20.
    assert a.peak_activation_bytes == 33


# ------------------------------------------------------------------ Loop


def loop_model(trip_nodes: list[onnx.NodeProto], extra_inputs=()) -> onnx.ModelProto:
    """h <- h @ W for M iterations (W from the outer scope), each iteration's Relu(h) stacked as a scan output."""
    body = graph(
        [helper.make_node("MatMul", ["h_in", "W"], ["h_out"]), helper.make_node("Relu", ["h_out"], ["r"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        [("cond_out", BOOL, []), ("h_out", F, [1, 8]), ("r", F, [1, 8])],
        [("i", I64, []), ("cond_in", BOOL, []), ("h_in", F, [1, 8])],
    )
    nodes = [*trip_nodes, const("true", np.array(True)),
             helper.make_node("Loop", ["M", "true", "h0"], ["h", "rs"], body=body, name="loop")]
    return model(nodes, [("h0", F, [1, 8]), *extra_inputs], ["h", "rs"], {"W": w(8, 8)})


def test_loop_with_constant_trip_count_costs_trip_times_body():
    a = run(loop_model([const("M", np.int64(5))]))
    loop = node(a, "Loop")
    assert loop.trip_count == 5 and not loop.trip_count_unknown
    assert loop.macs == 5 * 8 * 8 == 320  # 5 x MatMul [1,8] x [8,8]
    assert loop.flops == 5 * (2 * 64 + 8)  # + the Relu over 8 elements, each iteration
    assert loop.params == 64  # W, read from the outer scope by the body, counted once
    assert a.summary["outputs"] == {"h": [1, 8], "rs": [5, 1, 8]}  # the scan output stacks 5 rows
    assert a.totals["macs"] == 320 and a.totals["trip_count_unknown"] == []


def test_loop_trip_count_computed_from_a_shape_is_known():
    # M = Shape(h0)[1] = 8: a constant once the input shape is fixed.
    a = run(loop_model([helper.make_node("Shape", ["h0"], ["s"]), const("one", np.int64(1)),
                        helper.make_node("Gather", ["s", "one"], ["M"])]))
    assert node(a, "Loop").trip_count == 8 and node(a, "Loop").macs == 8 * 64


@pytest.mark.parametrize("trip", ["input", "while"])
def test_loop_with_unknown_trip_count_keeps_one_iteration_and_says_so(trip):
    if trip == "input":  # the count comes with the data
        m = loop_model([], extra_inputs=[("M", I64, [])])
    else:  # exporters write INT64_MAX for a while loop
        m = loop_model([const("M", np.int64(2**63 - 1))])
    a = analyze(m)
    loop = node(a, "Loop")
    assert loop.counted and loop.trip_count_unknown and loop.trip_count is None
    assert loop.macs == 64 and loop.flops == 2 * 64 + 8  # one iteration, never 0
    assert "trip count unknown" in loop.note
    assert a.totals["macs"] == 64 and a.totals["trip_count_unknown"] == ["loop"]
    d = a.to_dict()
    assert d["totals"]["trip_count_unknown"] == ["loop"]
    assert next(n for n in d["nodes"] if n["name"] == "loop")["trip_count_unknown"] is True


def test_unknown_trip_count_propagates_through_an_if():
    inner = loop_model([], extra_inputs=[("M", I64, [])])
    loop = next(n for n in inner.graph.node if n.op_type == "Loop")
    then = graph([const("true", np.array(True)), loop], [("h", F, None)])
    other = graph([helper.make_node("Identity", ["h0"], ["e"])], [("e", F, None)])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    a = analyze(model(nodes, [("h0", F, [1, 8]), ("M", I64, []), ("c", BOOL, [])], ["y"], {"W": w(8, 8)}))
    if_node = node(a, "If")
    assert if_node.macs == 64 and if_node.trip_count_unknown
    assert a.totals["trip_count_unknown"] == [if_node.name]


# ------------------------------------------------------------------ Scan


def test_scan_costs_sequence_length_times_body():
    body = graph([helper.make_node("MatMul", ["x_t", "W"], ["y_t"]), helper.make_node("Add", ["s_in", "y_t"], ["s_out"])],
                 [("s_out", F, [1, 8]), ("y_t", F, [1, 8])], [("s_in", F, [1, 8]), ("x_t", F, [1, 8])])
    nodes = [helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1)]
    a = run(make(nodes, [("s0", [1, 8]), ("xs", [6, 1, 8])], ["s", "ys"], {"W": w(8, 8)}))
    scan = node(a, "Scan")
    assert scan.trip_count == 6 and scan.macs == 6 * 64 and scan.flops == 6 * (2 * 64 + 8)
    assert a.summary["outputs"] == {"s": [1, 8], "ys": [6, 1, 8]}


# ------------------------------------------------------------------ main-graph shapes inference cannot reach


def test_pads_computed_from_constants_give_static_shapes_downstream():
    # As silero's STFT padding: pads = Concat([0, 1], ConstantOfShape([2])) = [0, 1, 0, 0];
    # ONNX inference does not propagate ConstantOfShape's value, so the Pad and all after it
    # would be unknown; the walk computes the pads and types them.
    nodes = [const("two", np.array([2], np.int64)), helper.make_node("ConstantOfShape", ["two"], ["zeros"],
             value=numpy_helper.from_array(np.array([0], np.int64))), const("head", np.array([0, 1], np.int64)),
             helper.make_node("Concat", ["head", "zeros"], ["pads"], axis=0), helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("MatMul", ["p", "W"], ["y"])]
    a = run(make(nodes, [("x", ["N", 8])], ["y"], {"W": w(9, 4)}), {"x": [2, 8]})
    assert a.summary["outputs"] == {"y": [2, 4]} and a.totals["not_counted"] == []
    assert node(a, "MatMul").macs == 2 * 9 * 4


# ------------------------------------------------------------------ weights in Constant nodes


def test_conv_weights_in_constant_nodes_are_parameters():
    # As paddle2onnx exports: the weights are Constant nodes, not initializers.
    nodes = [const("W", w(16, 2, 3, 3)), const("B", w(16)), const("eps", np.float32(0.5)),
             helper.make_node("Conv", ["x", "W", "B"], ["c"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "eps"], ["y"])]
    m = make(nodes, [("x", [1, 8, 10, 10])], ["y"])
    a = run(m)
    conv = node(a, "Conv")
    assert conv.params == 16 * 2 * 9 + 16  # a rank-0 constant (eps) is not a parameter
    assert a.totals["params"] == 304 == slipway.summary(m)["params"]  # what `slipway info` counts
    assert conv.bytes_read == 4 * (8 * 100 + 16 * 2 * 9 + 16)  # the weights are read like initializers
    same = run(conv_model([1, 8, 10, 10], [16, 2, 3, 3], group=4, pads=[1, 1, 1, 1]))
    assert (conv.macs, conv.flops, conv.bytes_read) == (node(same, "Conv").macs, node(same, "Conv").flops,
                                                        node(same, "Conv").bytes_read)


# ------------------------------------------------------------------ recurrent layers


def test_lstm_and_gru_costs():
    seq, batch, inp, hidden = 3, 2, 4, 5
    lstm = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=hidden)
    a = run(make([lstm], [("x", [seq, batch, inp])], ["y"],
                 {"W": w(1, 4 * hidden, inp), "R": w(1, 4 * hidden, hidden), "B": w(1, 8 * hidden)}))
    steps = seq * batch
    assert node(a, "LSTM").macs == steps * 4 * hidden * (inp + hidden) == 1080
    assert node(a, "LSTM").flops == 2 * 1080 + steps * hidden * (22 + 8)
    assert node(a, "LSTM").params == 4 * 5 * 4 + 4 * 5 * 5 + 8 * 5
    gru = helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=hidden, direction="bidirectional")
    a = run(make([gru], [("x", [seq, batch, inp])], ["y"], {"W": w(2, 3 * hidden, inp), "R": w(2, 3 * hidden, hidden)}))
    assert node(a, "GRU").macs == 2 * steps * 3 * hidden * (inp + hidden)
    assert node(a, "GRU").flops == 2 * node(a, "GRU").macs + 2 * steps * hidden * 16


# ------------------------------------------------------------------ validation


def test_unknown_domain_is_rejected_like_load_does(tmp_path):
    m = make([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Magic", ["r"], ["y"], domain="com.example.unknown")],
             [("x", [2, 3])], ["y"])
    m.opset_import.append(helper.make_opsetid("com.example.unknown", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(m, path)
    with pytest.raises(UserError) as loaded:
        slipway.load(path)
    with pytest.raises(UserError) as analyzed:
        analyze(path)
    assert str(analyzed.value) == str(loaded.value) and "unknown domain 'com.example.unknown'" in str(loaded.value)
    with pytest.raises(UserError, match="unknown domain 'com.example.unknown'"):
        analyze(m)  # an in-memory model is checked too
