"""fuse-gelu: torch (legacy exporter) and hand-built GELU graphs, structure and numbers vs onnxruntime."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, version_converter

from slipway.passes.gelu import FuseGelu
from tests.passes.util import assert_same, copy, make, op_types, tensor

RNG = np.random.default_rng(0)
SQRT2 = math.sqrt(2.0)
K = math.sqrt(2.0 / math.pi)


def feeds(*batches: int) -> list[dict[str, np.ndarray]]:
    return [{"x": (RNG.standard_normal((b, 3, 8)) * 3).astype(np.float32)} for b in batches]


def fuse(model: ir.Model, feeds_list: list[dict[str, np.ndarray]]):
    before = copy(model)
    result = FuseGelu()(model)
    for f in feeds_list:
        assert_same(before, model, f)
    assert [v.name for v in model.graph.outputs] == [v.name for v in before.graph.outputs]
    assert not FuseGelu()(model).modified
    return result


def export(module, opset: int, convert_to: int | None = None) -> ir.Model:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 8),), buf, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    if convert_to is not None:
        proto = version_converter.convert_version(proto, convert_to)
    return ir.serde.deserialize_model(proto)


def torch_modules():
    import torch

    class Gelu(torch.nn.Module):
        def __init__(self, approximate: str) -> None:
            super().__init__()
            self.approximate = approximate

        def forward(self, x):
            return torch.nn.functional.gelu(x, approximate=self.approximate)

    class ErfFormula(torch.nn.Module):
        def forward(self, x):
            return x * 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))

    class TanhFormula(torch.nn.Module):
        def forward(self, x):
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))

    return Gelu, ErfFormula, TanhFormula


def test_torch_gelu_at_opset_17_is_left_and_explained():
    gelu, _, _ = torch_modules()
    model = export(gelu("none"), 17)
    before = op_types(model)
    assert not FuseGelu()(model).modified
    assert op_types(model) == before
    assert any("opset 17 < 20" in line for line in FuseGelu().explain(model))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_torch_gelu_converted_to_opset_20_fuses(approximate):
    gelu, _, _ = torch_modules()
    model = export(gelu(approximate), 17, convert_to=20)
    result = fuse(model, feeds(1, 4))
    assert result.changes == {"Gelu" if approximate == "none" else "Gelu-tanh": 1}
    assert op_types(model) == ["Gelu"]
    attr = model.graph.node(0).attributes.get("approximate")
    assert (attr.as_string() if attr else "none") == approximate


@pytest.mark.parametrize("which", [1, 2])
def test_torch_explicit_formulas_at_opset_20(which):
    module = torch_modules()[which]()
    model = export(module, 20)
    assert "Gelu" not in op_types(model)
    fuse(model, feeds(1, 3))
    assert op_types(model) == ["Gelu"]


def _erf_graph(structure: str, inner: str, half: str = "0.5", sqrt2: float = SQRT2, half_rank: int = 2):
    """A hand-built erf GELU: ``structure`` is how x, a = 1 + erf and 0.5 are multiplied."""
    nodes = [helper.make_node("Div", ["x", "s2"], ["u"]) if inner == "div" else
             helper.make_node("Mul", ["is2", "x"], ["u"]),
             helper.make_node("Erf", ["u"], ["e"], name="erf"), helper.make_node("Add", ["one", "e"], ["a"])]
    tail = {
        "(x*a)*h": [("Mul", ["x", "a"], "m"), ("Mul", ["m", "h"], "y")],
        "(h*x)*a": [("Mul", ["h", "x"], "m"), ("Mul", ["a", "m"], "y")],
        "x*(a*h)": [("Mul", ["a", "h"], "m"), ("Mul", ["x", "m"], "y")],
        "(a*x)/2": [("Mul", ["a", "x"], "m"), ("Div", ["m", "two"], "y")],
    }[structure]
    nodes += [helper.make_node(op, ins, [out]) for op, ins, out in tail]
    inits = {"s2": np.array([sqrt2], np.float32), "is2": np.array(1 / sqrt2, np.float32),
             "one": np.array(1.0, np.float32), "h": np.full((1,) * half_rank, float(half), np.float32),
             "two": np.array(2.0, np.float32)}
    used = {i for n in nodes for i in n.input}
    out = tensor("y", ["N", 3, 8] if half_rank <= 3 else [1, "N", 3, 8])
    return make(nodes, [tensor("x", ["N", 3, 8])], [out], {k: v for k, v in inits.items() if k in used}, opset=20)


@pytest.mark.parametrize("structure", ["(x*a)*h", "(h*x)*a", "x*(a*h)", "(a*x)/2"])
@pytest.mark.parametrize("inner", ["div", "mul"])
def test_hand_built_erf_variants(structure, inner):
    model = _erf_graph(structure, inner, sqrt2=1.41421)  # a rounded constant is within tolerance
    result = fuse(model, feeds(1, 2))
    assert result.changes == {"Gelu": 1}
    assert op_types(model) == ["Gelu"]
    assert not model.graph.initializers  # the constants went with the pattern


def test_wrong_constant_is_not_fused_and_explained():
    model = _erf_graph("(x*a)*h", "div", half="0.6")
    assert not FuseGelu()(model).modified
    assert any("not multiplied by x and 0.5" in line for line in FuseGelu().explain(model))


def test_constant_that_raises_the_rank_is_not_fused():
    model = _erf_graph("(x*a)*h", "div", half_rank=4)  # [1,1,1,1] * [N,3,8] -> [1,N,3,8]
    assert not fuse(model, feeds(2)).modified
    assert any("more dims" in line for line in FuseGelu().explain(model))


def test_intermediate_used_elsewhere_is_not_fused():
    nodes = [helper.make_node("Div", ["x", "s2"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "h"], ["y"])]
    inits = {"s2": np.array(SQRT2, np.float32), "one": np.array(1.0, np.float32), "h": np.array(0.5, np.float32)}
    model = make(nodes, [tensor("x", ["N", 3, 8])], [tensor("y", ["N", 3, 8]), tensor("e", ["N", 3, 8])],
                 inits, opset=20)
    assert not fuse(model, feeds(1)).modified
    assert "Erf" in op_types(model)


@pytest.mark.parametrize("cube", ["pow", "x*(x*x)", "(x*x)*x"])
def test_hand_built_tanh_variants(cube):
    nodes = {
        "pow": [helper.make_node("Pow", ["x", "three"], ["c"])],
        "x*(x*x)": [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["x", "sq"], ["c"])],
        "(x*x)*x": [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["sq", "x"], ["c"])],
    }[cube]
    nodes += [helper.make_node("Mul", ["c", "k3"], ["t"]), helper.make_node("Add", ["t", "x"], ["s"]),
              helper.make_node("Mul", ["s", "k"], ["u"]), helper.make_node("Tanh", ["u"], ["th"]),
              helper.make_node("Add", ["th", "one"], ["a"]), helper.make_node("Mul", ["x", "h"], ["xh"]),
              helper.make_node("Mul", ["xh", "a"], ["y"])]
    inits = {"three": np.array(3.0, np.float32), "k3": np.array(0.044715, np.float32),
             "k": np.array(K, np.float32), "one": np.array(1.0, np.float32), "h": np.array(0.5, np.float32)}
    used = {i for n in nodes for i in n.input}
    model = make(nodes, [tensor("x", ["N", 3, 8])], [tensor("y", ["N", 3, 8])],
                 {k: v for k, v in inits.items() if k in used}, opset=20)
    result = fuse(model, feeds(1, 3))
    assert result.changes == {"Gelu-tanh": 1}
    assert op_types(model) == ["Gelu"]


def test_plain_tanh_is_not_a_candidate():
    model = make([helper.make_node("Tanh", ["x"], ["y"])], [tensor("x", [2])], [tensor("y", [2])], opset=20)
    assert not FuseGelu()(model).modified
    assert FuseGelu().explain(model) == []


def test_walks_if_branches():
    body = [helper.make_node("Div", ["x", "s2"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
            helper.make_node("Mul", ["m", "h"], ["out"])]
    consts = [helper.make_node("Constant", [], [n], value=helper.make_tensor(n, TensorProto.FLOAT, [], [v]))
              for n, v in (("s2", SQRT2), ("one", 1.0), ("h", 0.5))]
    then = helper.make_graph(consts + body, "then", [], [tensor("out", ["N", 3, 8])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["o2"])], "else", [], [tensor("o2", ["N", 3, 8])])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    model = make(nodes, [tensor("cond", [], TensorProto.BOOL), tensor("x", ["N", 3, 8])], [tensor("y", ["N", 3, 8])],
                 opset=20)
    fs = [{"cond": np.array(c), **f} for c, f in zip((True, False), feeds(2, 3), strict=True)]
    assert fuse(model, fs).changes == {"Gelu": 1}
    branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in branch] == ["Gelu"]
