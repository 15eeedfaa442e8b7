"""Channel groups on hand-built graphs: what is coupled, what is blocked and why, and exact surgery.

The exactness check: channels whose producers have all-zero filters and biases are exactly zero after
the activation, so removing them must leave the model's outputs unchanged; L1 ranks them last, so
pruning that many channels removes exactly those. Outputs are compared at 1e-5 (float32 sums of the
same non-zero terms in another order: a few ulps on any CPU).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slipway.model import as_model
from slipway.prune import criteria
from slipway.prune.groups import discover
from slipway.prune.surgery import apply
from slipway.verify import ort_runner

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32) * 0.3


class G:
    """A tiny graph builder: ``conv`` / ``node`` append nodes, ``model`` finishes it."""

    def __init__(self, shape: tuple[int, ...] = (1, 4, 8, 8)) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shape = shape
        self.n = 0

    def const(self, array: np.ndarray) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, zero: tuple[int, ...] = ()) -> str:
        w = _w(cout, cin // group, k, k)
        b = _w(cout)
        w[list(zero)] = 0.0
        b[list(zero)] = 0.0
        return self.node("Conv", [x, self.const(w), self.const(b)], pads=[k // 2] * 4, group=group)

    def model(self, out: str, out_shape: list[object] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *self.shape[1:]])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return onnx.shape_inference.infer_shapes(m)


def _plan(proto: onnx.ModelProto):
    model = as_model(proto)
    return model, discover(model)


def _prune_l1(model, plan, ratio: float):
    keep = criteria.select(criteria.scores(model, plan, "l1"), ratio)
    return apply(model, plan, keep), keep


def _same_outputs(a, b, shape=(2, 4, 8, 8)) -> None:
    x = RNG.standard_normal(shape).astype(np.float32)
    ya, yb = ort_runner(a)({"x": x}), ort_runner(b)({"x": x})
    for k in ya:
        np.testing.assert_allclose(yb[k], ya[k], rtol=1e-5, atol=1e-5)


def _residual() -> onnx.ModelProto:
    g = G()
    a = g.node("Relu", [g.conv("x", 4, 8)])
    b = g.conv(a, 8, 6, zero=(1, 4))  # residual stream: both producers zero channels 1 and 4
    c = g.conv("x", 4, 6, k=1, zero=(1, 4))
    s = g.node("Relu", [g.node("Add", [b, c])])
    return g.model(g.conv(s, 6, 3))


def test_residual_add_couples_its_inputs_and_the_output_conv_is_blocked() -> None:
    model, plan = _plan(_residual())
    sizes = sorted((g.size, len(g.producers), bool(g.blocked)) for g in plan.groups.values())
    assert sizes == [(3, 1, True), (6, 2, False), (8, 1, False)]
    (out,) = [g for g in plan.groups.values() if g.blocked]
    assert "graph output" in out.blocked[0]


def test_pruning_zero_channels_of_a_residual_stream_leaves_outputs_unchanged() -> None:
    model, plan = _plan(_residual())
    stream = next(g for g in plan.groups.values() if g.size == 6)
    keep = criteria.select({stream.gid: criteria.scores(model, plan, "l1")[stream.gid]}, 2 / 6)
    assert keep[stream.gid].tolist() == [0, 2, 3, 5]
    pruned = apply(model, plan, keep)
    _same_outputs(model, pruned)
    onnx.checker.check_model(__import__("onnx_ir").serde.serialize_model(pruned), full_check=True)


def test_concat_offsets_depthwise_and_flatten_gemm() -> None:
    g = G()
    a = g.node("Relu", [g.conv("x", 4, 4, zero=(2,))])
    b = g.node("Relu", [g.conv("x", 4, 6, zero=(0, 5))])
    cat = g.node("Concat", [a, b], axis=1)  # 10 channels: a's at 0..3, b's at 4..9
    dw = g.node("Relu", [g.conv(cat, 10, 10, group=10, zero=(2, 4, 9))])  # depthwise: shrinks with its input
    pooled = g.node("MaxPool", [dw], kernel_shape=[2, 2], strides=[2, 2])
    flat = g.node("Flatten", [pooled], axis=1)  # [N, 10 * 16]: each channel 16 features of the Gemm
    y = g.node("Gemm", [flat, g.const(_w(5, 160)), g.const(_w(5))], transB=1)
    model, plan = _plan(g.model(y))
    assert sorted(gr.size for gr in plan.prunable()) == [4, 6]
    pruned, keep = _prune_l1(model, plan, 0.3)  # 4 -> 3, 6 -> 4: exactly the zero channels
    assert sorted(k.size for k in keep.values()) == [3, 4]
    nodes = {n.name: n for n in pruned.graph}
    dw_node = next(n for n in nodes.values() if n.op_type == "Conv" and n.attributes["group"].as_int() > 1)
    assert dw_node.attributes["group"].as_int() == 7
    gemm = next(n for n in nodes.values() if n.op_type == "Gemm")
    assert gemm.inputs[1].shape.dims == (5, 7 * 16)
    _same_outputs(model, pruned)


def test_squeeze_excitation_couples_the_excite_conv_with_the_block() -> None:
    g = G()
    x = g.node("Relu", [g.conv("x", 4, 8, zero=(3,))])
    se = g.node("GlobalAveragePool", [x])
    se = g.node("Relu", [g.conv(se, 8, 4, k=1, zero=(0,))])
    se = g.node("Sigmoid", [g.conv(se, 4, 8, k=1)])
    y = g.conv(g.node("Mul", [x, se]), 8, 3)
    model, plan = _plan(g.model(y))
    sizes = sorted((gr.size, len(gr.producers)) for gr in plan.prunable())
    assert sizes == [(4, 1), (8, 2)]  # the squeeze conv alone; the block's conv with the excite conv
    # channel 3 of the block is zero after Relu whatever the excite conv says; the squeeze's channel 0 is
    # zero after its Relu: pruning one of each removes exactly those
    keep = criteria.select({gr.gid: criteria.scores(model, plan, "l1")[gr.gid] for gr in plan.prunable()}, 0.2)
    assert sorted(k.size for k in keep.values()) == [3, 6]  # round(4 * 0.8) = 3, round(8 * 0.8) = 6
    keep = {gid: k for gid, k in keep.items() if k.size == 3}  # the squeeze group only: exact
    _same_outputs(model, apply(model, plan, keep))


@pytest.mark.parametrize(("build", "why"), [
    (lambda g: g.node("Reshape", [g.conv("x", 4, 6), g.const(np.array([0, 3, 2, 64]))]), "across the channel axis"),
    (lambda g: g.conv(g.node("Concat", [g.conv("x", 4, 3), g.conv("x", 4, 3)], axis=1), 6, 6, group=2),
     "through a concatenation"),
    (lambda g: g.node("Add", [g.conv("x", 4, 4), "x"]), "not prunable"),
    (lambda g: g.node("Softmax", [g.conv("x", 4, 6)], axis=1), "normalized over"),
    (lambda g: g.node("DepthToSpace", [g.conv("x", 4, 8)], blocksize=2), "cannot follow"),
])
def test_blocked_groups_say_why(build, why: str) -> None:
    g = G()
    out = build(g)
    model, plan = _plan(g.model(out))
    first = min(plan.groups.values(), key=lambda gr: gr.gid)
    assert first.blocked and any(why in b for b in first.blocked), first.blocked


def test_matmul_and_gemm_hidden_units_prune() -> None:
    g = G(shape=(1, 16))
    h = g.node("Relu", [g.node("Add", [g.node("MatMul", ["x", g.const(_w(16, 12))]), g.const(_w(12))])])
    y = g.node("Gemm", [h, g.const(_w(12, 3))])
    model, plan = _plan(g.model(y))
    (grp,) = plan.prunable()
    assert grp.size == 12
    pruned, keep = _prune_l1(model, plan, 0.5)
    assert keep[grp.gid].size == 6
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    assert ort_runner(pruned)({"x": x})[y].shape == (2, 3)


def test_split_between_groups_follows_them_and_inside_a_group_blocks() -> None:
    g = G()
    a = g.node("Relu", [g.conv("x", 4, 4, zero=(1,))])
    b = g.node("Relu", [g.conv("x", 4, 6, zero=(2, 3))])
    cat = g.node("Concat", [a, b], axis=1)
    g.n += 1
    left, right = f"s{g.n}a", f"s{g.n}b"
    g.nodes.append(helper.make_node("Split", [cat, g.const(np.array([4, 6]))], [left, right], axis=1))
    y = g.node("Add", [g.conv(left, 4, 3), g.conv(right, 6, 3)])
    model, plan = _plan(g.model(y))
    assert sorted(gr.size for gr in plan.prunable()) == [4, 6]
    pruned, keep = _prune_l1(model, plan, 0.3)  # 4 -> 3, 6 -> 4: the zero channels
    split = next(n for n in pruned.graph if n.op_type == "Split")
    assert split.inputs[1].const_value.numpy().tolist() == [3, 4]
    _same_outputs(model, pruned)

    g = G()
    g.n += 1
    g.nodes.append(helper.make_node("Split", [g.conv("x", 4, 6), g.const(np.array([2, 4]))], ["p", "q"], axis=1))
    model, plan = _plan(g.model(g.node("Add", [g.conv("p", 2, 3), g.conv("q", 4, 3)])))
    first = min(plan.groups.values(), key=lambda gr: gr.gid)
    assert "inside a group" in first.blocked[0]


def test_bn_scale_reads_the_batchnorm_gammas_of_each_group() -> None:
    g = G()
    gamma = np.array([1.0, 0.1, 2.0, 0.5, 3.0, 0.2], np.float32)
    ones, zeros = np.ones(6, np.float32), np.zeros(6, np.float32)
    bn = g.node("BatchNormalization", [g.conv("x", 4, 6), g.const(gamma), g.const(zeros), g.const(zeros),
                                       g.const(ones)])
    model, plan = _plan(g.model(g.conv(g.node("Relu", [bn]), 6, 3)))
    (grp,) = plan.prunable()
    score = criteria.scores(model, plan, "bn-scale")[grp.gid]
    np.testing.assert_allclose(score, gamma / gamma.mean(), rtol=1e-6)
    pruned, keep = _prune_l1(model, plan, 0.5)
    bn_node = next(n for n in pruned.graph if n.op_type == "BatchNormalization")
    assert all(v.const_value.shape == (3,) for v in bn_node.inputs[1:])
    assert criteria.select({grp.gid: score}, 0.5)[grp.gid].tolist() == [0, 2, 4]


def test_grouped_conv_keeps_as_many_channels_in_each_block() -> None:
    g = G()
    a = g.node("Relu", [g.conv("x", 4, 8, zero=(1, 6))])  # block 0: channels 0-3, block 1: 4-7
    b = g.node("Relu", [g.conv(a, 8, 8, group=2, zero=(0, 5))])  # its own outputs: blocks of 4 as well
    model, plan = _plan(g.model(g.conv(b, 8, 3)))
    groups = sorted(plan.prunable(), key=lambda gr: gr.gid)
    assert [(gr.size, gr.blocks) for gr in groups] == [(8, 2), (8, 2)]
    score = criteria.scores(model, plan, "l1")
    keep = criteria.select(score, 0.25, blocks={gr.gid: gr.blocks for gr in groups})
    assert [k.tolist() for k in keep.values()] == [[0, 2, 3, 4, 5, 7], [1, 2, 3, 4, 6, 7]]
    pruned = apply(model, plan, keep)
    conv = next(n for n in pruned.graph if n.op_type == "Conv" and n.attributes["group"].as_int() == 2)
    assert conv.inputs[1].shape.dims == (6, 3, 3, 3)
    _same_outputs(model, pruned)
