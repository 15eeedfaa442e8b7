"""fuse-layernorm: torch (legacy exporter) and hand-built LayerNorm graphs, structure and numbers vs onnxruntime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, version_converter

from slipway.passes.layernorm import FuseLayerNorm
from tests.passes.util import assert_same, copy, make, op_types, tensor

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def fuse(model: ir.Model, feeds_list: list[dict[str, np.ndarray]]):
    """Run the pass; numbers agree at every feed; outputs keep their names; a second run changes nothing."""
    before = copy(model)
    result = FuseLayerNorm()(model)
    for feeds in feeds_list:
        assert_same(before, model, feeds)
    assert [v.name for v in model.graph.outputs] == [v.name for v in before.graph.outputs]
    assert not FuseLayerNorm()(model).modified
    return result


def ln_node(model: ir.Model) -> ir.Node:
    (node,) = [n for n in model.graph if n.op_type == "LayerNormalization"]
    return node


def const_of(value: ir.Value) -> np.ndarray:
    return value.const_value.numpy()


def export(module, opset: int, convert_to: int | None = None) -> ir.Model:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 5, 8),), buf, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    if convert_to is not None:
        proto = version_converter.convert_version(proto, convert_to)
    return ir.serde.deserialize_model(proto)


def hand_written_ln():
    import torch

    class LayerNorm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = torch.nn.Parameter(torch.rand(8) + 0.5)
            self.b = torch.nn.Parameter(torch.randn(8))

        def forward(self, x):
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + 1e-5) * self.g + self.b

    return LayerNorm()


BATCHES = [{"x": rand(1, 5, 8)}, {"x": rand(4, 5, 8)}]


@pytest.mark.parametrize("opset", [17, 18])  # 17: axes attribute, 18: axes input
def test_torch_hand_written_layernorm_fuses(opset):
    model = export(hand_written_ln(), opset)
    result = fuse(model, BATCHES)
    assert result.changes == {"LayerNormalization": 1, "scale": 1, "bias": 1}
    assert op_types(model) == ["LayerNormalization"]
    node = ln_node(model)
    assert node.attributes["axis"].as_int() == -1
    assert node.attributes["epsilon"].as_float() == pytest.approx(1e-5)
    assert [v.name for v in node.inputs[1:]] == ["g", "b"]
    assert sorted(model.graph.initializers) == ["b", "g"]  # nothing left behind


def test_torch_nn_layernorm_from_opset_14_converted_to_18():
    import torch

    model = export(torch.nn.LayerNorm(8), 14, convert_to=18)
    assert "LayerNormalization" not in op_types(model)
    fuse(model, BATCHES)
    assert op_types(model) == ["LayerNormalization"]


def test_opset_14_is_left_and_explained():
    model = export(hand_written_ln(), 14)
    before = op_types(model)
    assert not FuseLayerNorm()(model).modified
    assert op_types(model) == before
    assert any("opset 14 < 17" in line for line in FuseLayerNorm().explain(model))


def _core(axes: list[int], square: str = "pow", divide: str = "div", axes_input: bool = False,
          keepdims: int | None = None) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Nodes computing ``n`` = the normalized x over ``axes``."""
    extra = {} if keepdims is None else {"keepdims": keepdims}
    reduce_args = (["axes"], {}) if axes_input else ([], {"axes": axes})

    def mean(src: str, dst: str) -> onnx.NodeProto:
        return helper.make_node("ReduceMean", [src, *reduce_args[0]], [dst], **reduce_args[1], **extra)

    nodes = [mean("x", "mu"), helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "pow" else
             helper.make_node("Mul", ["d", "d"], ["sq"]),
             mean("sq", "var"), helper.make_node("Add", ["eps", "var"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"])]
    if divide == "div":
        nodes.append(helper.make_node("Div", ["d", "std"], ["n"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["std"], ["r"]), helper.make_node("Mul", ["r", "d"], ["n"])]
    inits = {"eps": np.array([1e-3], np.float32), "two": np.array(2, np.int64),
             "axes": np.array(axes, np.int64)}
    used = {i for n in nodes for i in n.input}
    return nodes, {k: v for k, v in inits.items() if k in used}


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("divide", ["div", "reciprocal"])
def test_hand_built_variants_without_gamma_beta_over_two_axes(square, divide):
    nodes, inits = _core([-2, -1], square, divide)
    nodes[-1].output[0] = "y"
    model = make(nodes, [tensor("x", ["N", 3, 4])], [tensor("y", ["N", 3, 4])], inits)
    result = fuse(model, [{"x": rand(1, 3, 4)}, {"x": rand(6, 3, 4)}])
    assert result.changes == {"LayerNormalization": 1}
    node = ln_node(model)
    assert node.attributes["axis"].as_int() == -2
    assert node.attributes["epsilon"].as_float() == pytest.approx(1e-3)
    assert len(node.inputs) == 2 and np.array_equal(const_of(node.inputs[1]), np.ones((3, 4), np.float32))


def test_positive_axes_as_input_gamma_broadcast_and_beta_first():
    nodes, inits = _core([2], axes_input=True)
    nodes += [helper.make_node("Mul", ["n", "gamma"], ["m"]), helper.make_node("Add", ["beta", "m"], ["y"])]
    inits |= {"gamma": rand(1, 1, 8), "beta": rand(8)}
    model = make(nodes, [tensor("x", ["N", 5, 8])], [tensor("y", ["N", 5, 8])], inits, opset=18)
    result = fuse(model, BATCHES)
    assert result.changes == {"LayerNormalization": 1, "scale": 1, "bias": 1}
    assert op_types(model) == ["LayerNormalization"]
    node = ln_node(model)
    assert const_of(node.inputs[1]).shape == (8,) and node.inputs[2].name == "beta"
    assert "gamma" not in model.graph.initializers and "axes" not in model.graph.initializers


def test_input_without_a_recorded_shape_gets_one_from_inference():
    nodes, inits = _core([-1], square="mul")
    nodes = [helper.make_node("Relu", ["x0"], ["x"]), *nodes]
    nodes[-1].output[0] = "y"
    model = make(nodes, [tensor("x0", ["N", 5, 8])], [tensor("y", ["N", 5, 8])], inits)
    assert next(iter(model.graph)).outputs[0].shape is None
    fuse(model, [{"x0": b["x"]} for b in BATCHES])
    assert op_types(model) == ["Relu", "LayerNormalization"]


def test_gamma_and_beta_behind_identity_nodes_fold_and_the_identities_go():
    nodes, inits = _core([-1])
    nodes += [helper.make_node("Identity", ["g0"], ["gamma"]), helper.make_node("Identity", ["b0"], ["beta"]),
              helper.make_node("Mul", ["gamma", "n"], ["m"]), helper.make_node("Add", ["m", "beta"], ["y"])]
    inits |= {"g0": rand(8), "b0": rand(8)}
    model = make(nodes, [tensor("x", ["N", 5, 8])], [tensor("y", ["N", 5, 8])], inits)
    fuse(model, BATCHES)
    assert op_types(model) == ["LayerNormalization"]
    assert [v.name for v in ln_node(model).inputs[1:]] == ["g0", "b0"]


def test_gamma_that_is_a_graph_input_stays_a_mul():
    nodes, inits = _core([-1])
    nodes.append(helper.make_node("Mul", ["n", "gamma"], ["y"]))
    model = make(nodes, [tensor("x", ["N", 5, 8]), tensor("gamma", [8])], [tensor("y", ["N", 5, 8])], inits)
    g = rand(8)
    fuse(model, [{**b, "gamma": g} for b in BATCHES])
    assert op_types(model) == ["LayerNormalization", "Mul"]


def test_gamma_varying_along_the_batch_is_not_folded():
    nodes, inits = _core([-1])
    nodes.append(helper.make_node("Mul", ["n", "gamma"], ["y"]))
    inits["gamma"] = rand(5, 1)
    model = make(nodes, [tensor("x", ["N", 5, 8])], [tensor("y", ["N", 5, 8])], inits)
    fuse(model, BATCHES)
    assert op_types(model) == ["LayerNormalization", "Mul"]
    assert any("varies along axes that are not normalized" in line for line in FuseLayerNorm().explain(model))


@pytest.mark.parametrize("case", ["middle-axis", "keepdims-0", "dynamic-dim"])
def test_not_fusable_is_left_and_explained(case):
    shape = {"middle-axis": ["N", 5, 8], "keepdims-0": [5, 5], "dynamic-dim": ["N", 5, "d"]}[case]
    nodes, inits = _core([1] if case == "middle-axis" else [-1], keepdims=0 if case == "keepdims-0" else None)
    nodes[-1].output[0] = "y"
    model = make(nodes, [tensor("x", shape)], [tensor("y", shape)], inits)
    before = op_types(model)
    assert not fuse(model, [{"x": rand(*[d if isinstance(d, int) else 2 for d in shape])}]).modified
    assert op_types(model) == before
    expected = {"middle-axis": "not the trailing axes", "keepdims-0": "keepdims=0", "dynamic-dim": "not static"}[case]
    assert any(expected in line for line in FuseLayerNorm().explain(model))


def test_existing_layernormalization_takes_a_following_bias():
    nodes = [helper.make_node("LayerNormalization", ["x", "s"], ["l"], axis=-1, epsilon=1e-5),
             helper.make_node("Add", ["l", "c"], ["y"])]
    model = make(nodes, [tensor("x", ["N", 5, 8])], [tensor("y", ["N", 5, 8])], {"s": rand(8), "c": rand(1, 8)})
    assert fuse(model, BATCHES).changes == {"bias": 1}
    assert op_types(model) == ["LayerNormalization"]


def test_walks_if_branches():
    nodes, inits = _core([-1])
    nodes[-1].output[0] = "out"
    consts = [helper.make_node("Constant", [], [k], value=helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel()))
              for k, v in inits.items()]
    then = helper.make_graph(consts + nodes, "then", [], [tensor("out", ["N", 5, 8])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["o2"])], "else", [], [tensor("o2", ["N", 5, 8])])
    model = make([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
                 [tensor("cond", [], TensorProto.BOOL), tensor("x", ["N", 5, 8])], [tensor("y", ["N", 5, 8])])
    fuse(model, [{"cond": np.array(c), **b} for c, b in zip((True, False), BATCHES, strict=True)])
    branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in branch] == ["LayerNormalization"]
