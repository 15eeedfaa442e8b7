"""MAC and parameter counts on every zoo model against two independent oracles and published numbers.

Oracles:
* onnx-tool (test-only), per node. Its "MACs" are an instruction-cost model, so they are
  compared where the conventions coincide: Conv/Gemm/MatMul MACs (onnx-tool adds one per
  output element for a bias; that is subtracted) and the FLOPs of Relu/Add/Sub/Mul (1 per
  element) and Clip (2). onnx-tool's ConvTranspose formula is wrong — it uses
  output elements x W[1:], a Conv-style gather — so there we assert our value (input
  elements x C_out/group x kernel) and that onnx-tool's differs. Its parameter count includes
  int64 initializers (Reshape shapes, ReduceMean axes); those are subtracted.
* PyTorch's own ``torch.utils.flop_counter`` on the eager module: its total FLOPs
  (convolutions incl. transposed, addmm, bmm; 2 per MAC) must equal 2 x our total MACs.
"""

from __future__ import annotations

import math
import time

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from slipway.analyze import analyze
from tests.zoo import NAMES, build, export

onnx_tool = pytest.importorskip("onnx_tool")
torch = pytest.importorskip("torch")

MAC_OPS = {"Conv", "Gemm", "MatMul"}
SAME_CONVENTION = {"Relu", "Add", "Sub", "Mul", "Clip"}  # our FLOPs == onnx-tool's count
WEIGHT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


def shapes_for(name: str) -> dict[str, list[int]]:
    _, x = build(name)
    return {"x": list(x.shape)}


def for_onnx_tool(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Shape(start, end) (opset 15), which onnx-tool 1.0 ignores, as Slice(Shape(x)).

    The rewrite is exact and only touches zero-cost shape arithmetic.
    """
    nodes = []
    for n in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type != "Shape" or not attrs:
            nodes.append(n)
            continue
        full, start, end = (f"{n.output[0]}__{s}" for s in ("full", "start", "end"))
        for tname, val in ((start, attrs.get("start", 0)), (end, attrs.get("end", 2**62))):
            proto.graph.initializer.append(numpy_helper.from_array(np.array([val], np.int64), tname))
        nodes += [helper.make_node("Shape", list(n.input), [full], name=n.name),
                  helper.make_node("Slice", [full, start, end], list(n.output), name=n.name + "__slice")]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def onnx_tool_graph(path, shapes: dict[str, list[int]]):
    """onnx-tool's profiled graph, and the elements of the initializers it counts that are not
    parameters (int64 shapes and axes, including those :func:`for_onnx_tool` adds)."""
    proto = for_onnx_tool(onnx.load(str(path)))
    non_weight = sum(math.prod(i.dims) for i in proto.graph.initializer if i.data_type not in WEIGHT_TYPES and i.dims)
    g = onnx_tool.Model(proto, {"verbose": False}).graph
    g.graph_reorder_nodes()
    g.shape_infer({k: np.zeros(v, np.float32) for k, v in shapes.items()})
    g.profile()
    return g, non_weight


@pytest.mark.parametrize("name", NAMES)
def test_matches_onnx_tool(name):
    path, shapes = export(name), shapes_for(name)
    ours = {n.name: n for n in analyze(path, shapes).nodes}
    g, non_weight = onnx_tool_graph(path, shapes)
    checked = 0
    for node_name, node in g.nodemap.items():
        if node_name.endswith("__slice"):
            continue
        mine, theirs = ours[node_name], int(node.macs[0])
        assert mine.counted, node_name
        if node.op_type in MAC_OPS:
            bias = math.prod(node.outshape) if len(node.input) == 3 else 0
            assert mine.macs == theirs - bias, node_name
            checked += 1
        elif node.op_type == "ConvTranspose":
            x = g.tensormap[node.input[0]].get_shape()
            wshape = g.tensormap[node.input[1]].get_shape()
            assert mine.macs == math.prod(x) * math.prod(wshape[1:]), node_name  # N*C_in*H*W*(C_out/g)*k
            assert theirs - math.prod(node.outshape) * (len(node.input) == 3) != mine.macs  # onnx-tool is wrong
            checked += 1
        elif node.op_type in SAME_CONVENTION:
            assert mine.flops == theirs, node_name
    assert checked > 0
    assert sum(n.params for n in ours.values()) == int(g.params) - non_weight


@pytest.mark.parametrize("name", NAMES)
def test_total_macs_match_pytorch_flop_counter(name):
    from torch.utils.flop_counter import FlopCounterMode

    module, x = build(name)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    assert 2 * analyze(export(name), shapes_for(name)).totals["macs"] == counter.get_total_flops()


def folded_param_count(module) -> int:
    """Parameters the ONNX export must hold after folding every BatchNorm into its conv.

    BN's gamma and beta (2 x C) vanish and the bias-free conv before it gains a bias (C).
    """
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return sum(p.numel() for p in module.parameters()) - sum(m.num_features for m in bns)


def ops_of(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_resnet18_published_counts():
    module, _ = build("resnet18")
    path = export("resnet18")
    a = analyze(path, {"x": [1, 3, 224, 224]})
    assert sum(p.numel() for p in module.parameters()) == 11_689_512  # torchvision's published count
    assert "BatchNormalization" not in ops_of(path)  # the exporter folded all 20 BNs
    assert a.totals["params"] == folded_param_count(module) == 11_689_512 - 4_800
    assert a.totals["macs"] == pytest.approx(1.82e9, rel=0.01)
    assert a.totals["macs"] == 1_814_073_344
    assert a.totals["flops"] > 2 * a.totals["macs"]  # bias adds, ReLU, pooling, residual adds
    # Peak: while the stem's ReLU runs, the 64x112x112 conv output and the ReLU output are both live.
    assert a.peak_activation_bytes == 2 * 64 * 112 * 112 * 4


def test_mobilenetv2_published_counts():
    module, _ = build("mobilenetv2")
    path = export("mobilenetv2")
    a = analyze(path, {"x": [1, 3, 224, 224]})
    assert sum(p.numel() for p in module.parameters()) == 3_504_872
    assert "BatchNormalization" not in ops_of(path)
    # ReLU6 exports as Clip(x, 0, 6) whose bounds are two rank-0 float initializers: op constants,
    # not parameters (PyTorch and onnx-tool do not count them either), so the counts agree exactly.
    assert a.totals["params"] == folded_param_count(module) == 3_504_872 - 17_056
    assert a.totals["macs"] == pytest.approx(0.30e9, rel=0.03)


def test_batch_scales_zoo_costs():
    one = analyze(export("transformer"), {"x": [1, 16, 32]}).totals
    three = analyze(export("transformer"), {"x": [3, 16, 32]}).totals
    assert three["macs"] == 3 * one["macs"] and three["flops"] == 3 * one["flops"]
    assert three["params"] == one["params"]


def test_resnet18_analysis_is_fast():
    path = export("resnet18")
    analyze(path)  # warm the file cache
    best = min(_timed(analyze, path) for _ in range(3))
    assert best < 1.0, f"analyze(resnet18) took {best:.2f} s"


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t
