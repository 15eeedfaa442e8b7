"""FP16/BF16 conversion: structure of hand-built graphs, numbers in onnxruntime / OpenVINO, zoo models."""

from __future__ import annotations

from collections import Counter

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as TP
from onnx import helper

from slipway.errors import UserError
from slipway.quantize.precision import convert_precision, to_bf16, to_fp16, verify_precision
from tests.passes.util import make, run, tensor

RNG = np.random.default_rng(0)
F16, BF16, F32 = ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.FLOAT


def w(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def check_clean(m: ir.Model) -> None:
    """Valid ONNX, topologically sorted, no cancelling or duplicate Casts."""
    onnx.checker.check_model(ir.to_proto(m), full_check=True)
    seen: set[ir.Value] = set(m.graph.inputs) | set(m.graph.initializers.values())
    casts: Counter = Counter()
    for node in m.graph:
        assert all(v is None or v in seen or not v.name for v in node.inputs), f"{node.name} is out of order"
        seen.update(node.outputs)
        if node.op_type == "Cast":
            to = node.attributes["to"].value
            src = node.inputs[0]
            assert src.dtype != to, f"no-op Cast {node.name}"
            p = src.producer()
            assert not (p is not None and p.op_type == "Cast" and p.inputs[0].dtype == to), f"Cast pair at {node.name}"
            casts[(src.name, to)] += 1
    assert all(n == 1 for n in casts.values()), casts


def by_op(m: ir.Model, op: str) -> list[ir.Node]:
    return [n for n in m.graph if n.op_type == op]


def close(a: list[np.ndarray], b: list[np.ndarray], rel: float = 1e-2) -> None:
    for x, y in zip(a, b, strict=True):
        scale = max(float(np.abs(x).max()), 1e-6)
        assert float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) <= rel * scale


def conv_resize() -> ir.Model:
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Resize", ["r", "roi", "scales"], ["y"], mode="linear", name="resize")]
    inits = {"W": w(4, 3, 3, 3), "B": w(4), "roi": np.zeros(0, np.float32),
             "scales": np.array([1, 1, 2, 2], np.float32)}
    return make(nodes, [tensor("x", ["n", 3, 8, 8])], [tensor("y", ["n", 4, 16, 16])], inits)


def test_conv_resize_scales_stay_float32_and_two_casts() -> None:
    src = conv_resize()
    before = ir.to_proto(src).SerializeToString()
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    assert ir.to_proto(src).SerializeToString() == before  # the input model is untouched
    resize = by_op(m, "Resize")[0]
    assert resize.inputs[0].dtype == F16 and resize.outputs[0].dtype == F16
    assert resize.inputs[1].dtype == F32 and resize.inputs[2].dtype == F32  # roi and scales
    assert m.graph.initializers["W"].const_value.dtype == F16
    assert report.casts == 2 and len(by_op(m, "Cast")) == 2 and report.low_nodes == 3
    assert m.graph.inputs[0].dtype == F32 and m.graph.outputs[0].dtype == F32 and m.graph.outputs[0].name == "y"
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    close(run(src, {"x": x}), run(m, {"x": x}))
    assert m.metadata_props["slipway.precision"] == "fp16"


def test_keep_io_types_false_makes_io_half() -> None:
    src = conv_resize()
    m = to_fp16(src, keep_io_types=False)
    check_clean(m)
    assert m.graph.inputs[0].dtype == F16 and m.graph.outputs[0].dtype == F16
    assert not by_op(m, "Cast")
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = run(m, {"x": x.astype(np.float16)})[0]
    assert out.dtype == np.float16
    close(run(src, {"x": x}), [out.astype(np.float32)])
    assert verify_precision(src, m).ok  # fed float16 inputs, compared as float32


def test_topk_stays_float32_behind_one_cast() -> None:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["s"], name="mm"),
             helper.make_node("TopK", ["s", "k"], ["v", "i"], axis=-1, name="topk"),
             helper.make_node("Mul", ["v", "s2"], ["y"], name="mul")]
    src = make(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 3]), tensor("i", [2, 3], TP.INT64)],
               {"W": w(8, 32), "k": np.array([3], np.int64), "s2": np.array([2.0], np.float32)})
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    topk = by_op(m, "TopK")[0]
    assert topk.inputs[0].dtype == F32 and topk.outputs[0].dtype == F32
    assert "topk" in report.float_nodes and "ties" in report.float_nodes["topk"]
    assert by_op(m, "Mul")[0].inputs[0].dtype == F16
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    (y0, i0), (y1, i1) = run(src, {"x": x}), run(m, {"x": x})
    close([y0], [y1])
    np.testing.assert_array_equal(i0, i1)


def test_nms_stays_float32() -> None:
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [100, 100, 120, 130]]], np.float32)
    nodes = [helper.make_node("MatMul", ["f", "W"], ["logit"], name="head"),
             helper.make_node("Sigmoid", ["logit"], ["p"], name="sig"),
             helper.make_node("Transpose", ["p"], ["scores"], perm=[0, 2, 1], name="tr"),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou", "thr"], ["sel"], name="nms")]
    src = make(nodes, [tensor("f", [1, 4, 6])], [tensor("sel", [None, 3], TP.INT64)],
               {"W": w(6, 2, scale=1.0), "boxes": boxes, "max": np.array([10], np.int64),
                "iou": np.array([0.5], np.float32), "thr": np.array([0.1], np.float32)})
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    nms = by_op(m, "NonMaxSuppression")[0]
    assert all(v.dtype in (F32, ir.DataType.INT64) for v in nms.inputs)
    assert m.graph.initializers["boxes"].const_value.dtype == F32  # only NMS reads it: no conversion
    assert "nms" in report.float_nodes and report.casts == 2  # f -> fp16, scores -> fp32
    f = RNG.standard_normal((1, 4, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(src, {"f": f})[0], run(m, {"f": f})[0])


def test_out_of_range_constants_clamped_and_tiny_raised() -> None:
    nodes = [helper.make_node("Min", ["x", "big"], ["a"]), helper.make_node("Abs", ["a"], ["abs"]),
             helper.make_node("Add", ["abs", "eps"], ["b"]), helper.make_node("Sqrt", ["b"], ["y"])]
    src = make(nodes, [tensor("x", [4])], [tensor("y", [4])],
               {"big": np.array([1e6, -1e6, 3.0, 70000.0], np.float32), "eps": np.array([1e-12], np.float32)})
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    np.testing.assert_array_equal(m.graph.initializers["big"].const_value.numpy(), [65504, -65504, 3, 65504])
    eps = m.graph.initializers["eps"].const_value.numpy()
    assert eps.dtype == np.float16 and eps[0] == np.float16(2.0**-24)  # not flushed to 0
    assert report.clamped == 3 and report.raised == 1
    assert m.metadata_props["slipway.precision.clamped"] == "3"
    y = run(m, {"x": np.zeros(4, np.float32)})[0]
    assert np.isfinite(y).all() and (y > 0).all()  # sqrt(0 + eps) with eps not flushed to 0
    m2, report2 = convert_precision(src, "fp16", max_finite=1000.0, min_positive=1e-4)
    assert m2.graph.initializers["big"].const_value.numpy()[0] == 1000 and report2.clamped == 3


def test_bf16_clamps_float32_max_instead_of_inf() -> None:
    nodes = [helper.make_node("Add", ["x", "mask"], ["y"])]
    src = make(nodes, [tensor("x", [3])], [tensor("y", [3])],
               {"mask": np.array([0, np.finfo(np.float32).min, np.finfo(np.float32).max], np.float32)})
    m, report = convert_precision(src, "bf16")
    got = m.graph.initializers["mask"].const_value.numpy()
    assert got.dtype == ml_dtypes.bfloat16 and np.isfinite(got.astype(np.float32)).all() and report.clamped == 2


def test_block_nodes_keep_named_conv_float32_and_split_shared_weight() -> None:
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Conv", ["b", "W"], ["y"], pads=[1, 1, 1, 1], name="second")]
    src = make(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", [1, 3, 6, 6])], {"W": w(3, 3, 3, 3)})
    m, report = convert_precision(src, "fp16", block_nodes=["second"])
    check_clean(m)
    second = next(n for n in m.graph if n.name == "second")
    assert second.inputs[0].dtype == F32 and second.inputs[1].dtype == F32 and second.outputs[0].dtype == F32
    assert report.float_nodes == {"second": "named in block_nodes"}
    # the shared weight is stored twice (fp16 and fp32) rather than cast at run time
    assert sorted(str(v.const_value.dtype) for v in m.graph.initializers.values()) == ["FLOAT", "FLOAT16"]
    assert report.casts == 2  # x -> fp16, relu output -> fp32; the output needs none
    x = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    close(run(src, {"x": x}), run(m, {"x": x}))
    with pytest.raises(UserError, match="no node named 'nope'"):
        to_fp16(src, block_nodes=["nope"])


def test_block_ops_option() -> None:
    m, report = convert_precision(conv_resize(), "fp16", block_ops=["Relu"])
    check_clean(m)
    assert by_op(m, "Relu")[0].inputs[0].dtype == F32 and report.float_nodes == {"relu": "op in block_ops"}


def test_shape_arithmetic_and_own_casts() -> None:
    """Shape math in float stays float32; the model's int->float Cast is retargeted, never chained."""
    nodes = [helper.make_node("Shape", ["x"], ["shp"]),
             helper.make_node("Cast", ["shp"], ["shpf"], to=TP.FLOAT),
             helper.make_node("Mul", ["shpf", "two"], ["big"], name="shape_mul"),
             helper.make_node("Cast", ["big"], ["size"], to=TP.INT64),
             helper.make_node("Resize", ["x", "", "", "size"], ["up"], mode="nearest"),
             helper.make_node("Cast", ["m"], ["mf"], to=TP.FLOAT, name="mask_cast"),
             helper.make_node("Mul", ["up", "mf"], ["y"], name="apply")]
    src = make(nodes, [tensor("x", [1, 2, 3, 3]), tensor("m", [1, 1, 6, 6], TP.INT64)],
               [tensor("y", [1, 2, 6, 6])], {"two": np.array([1, 1, 2, 2], np.float32)})
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    assert "shape_mul" in report.float_nodes and "integer" in report.float_nodes["shape_mul"]
    mask_cast = next(n for n in m.graph if n.name == "mask_cast")
    assert mask_cast.attributes["to"].value == F16
    assert report.casts == 2  # x -> fp16 and y -> fp32 only
    feeds = {"x": RNG.standard_normal((1, 2, 3, 3)).astype(np.float32),
             "m": RNG.integers(0, 2, (1, 1, 6, 6)).astype(np.int64)}
    close(run(src, feeds), run(m, feeds))


def test_model_casts_read_half_values_directly() -> None:
    """An exporter's float->float Cast becomes a no-op and goes; a float->int Cast reads fp16 as is."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Cast", ["h"], ["h2"], to=TP.FLOAT, name="noop"),
             helper.make_node("Relu", ["h2"], ["y"]),
             helper.make_node("Cast", ["y"], ["yi"], to=TP.INT64, name="to_int")]
    src = make(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 4]), tensor("yi", [2, 4], TP.INT64)], {"W": w(3, 4, scale=3)})
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    assert report.casts == 2 and "noop" not in [n.name for n in m.graph]
    assert m.graph.node("to_int").inputs[0].dtype == F16
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    close(run(src, {"x": x})[:1], run(m, {"x": x})[:1])


def test_uint8_image_input_is_not_shape_arithmetic() -> None:
    """A uint8 image cast to float feeds the network: only rank <= 1 values count as shape arithmetic."""
    nodes = [helper.make_node("Cast", ["img"], ["f"], to=TP.FLOAT, name="to_float"),
             helper.make_node("Div", ["f", "k"], ["n"], name="scale"),
             helper.make_node("Conv", ["n", "W"], ["y"], name="conv")]
    src = make(nodes, [tensor("img", [1, 3, 5, 5], TP.UINT8)], [tensor("y", [1, 2, 3, 3])],
               {"k": np.array(255.0, np.float32), "W": w(2, 3, 3, 3)})
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    assert not report.float_nodes and report.low_nodes == 2 and report.casts == 1  # only y -> fp32
    assert m.graph.node("to_float").attributes["to"].value == F16  # uint8 -> fp16 directly
    img = RNG.integers(0, 256, (1, 3, 5, 5)).astype(np.uint8)
    close(run(src, {"img": img}), run(m, {"img": img}))


def test_constant_nodes_and_value_float() -> None:
    nodes = [helper.make_node("Constant", [], ["c"], value_float=1e5),
             helper.make_node("Constant", [], ["d"], value=helper.make_tensor("d", TP.FLOAT, [1], [0.5])),
             helper.make_node("Min", ["x", "c"], ["a"]), helper.make_node("Mul", ["a", "d"], ["y"])]
    src = make(nodes, [tensor("x", [3])], [tensor("y", [3])])
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    consts = by_op(m, "Constant")
    assert all(n.outputs[0].dtype == F16 and "value" in n.attributes for n in consts) and report.clamped == 1
    x = np.array([1.0, -2.0, 3.0], np.float32)
    close(run(src, {"x": x}), run(m, {"x": x}))


def test_if_subgraph_stays_float32() -> None:
    then = helper.make_graph([helper.make_node("Mul", ["h", "h"], ["t"])], "then", [], [tensor("t", [2, 4])])
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [], [tensor("e", [2, 4])])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other, name="branch"),
             helper.make_node("Add", ["z", "h"], ["y"], name="add")]
    src = make(nodes, [tensor("x", [2, 3]), tensor("cond", [], TP.BOOL)], [tensor("y", [2, 4])], {"W": w(3, 4)})
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    assert "subgraphs" in report.float_nodes["branch"]
    inner = m.graph.node("branch").attributes["then_branch"].value.node(0)
    assert inner.inputs[0].dtype == F32 and by_op(m, "MatMul")[0].outputs[0].dtype == F16
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        close(run(src, feeds), run(m, feeds))


def test_bad_input() -> None:
    src = conv_resize()
    with pytest.raises(UserError, match="precision must be"):
        convert_precision(src, "int4")
    with pytest.raises(UserError, match="max_finite"):
        to_fp16(src, max_finite=1e6)
    with pytest.raises(UserError, match="min_positive"):
        to_fp16(src, min_positive=0.0)
    with pytest.raises(UserError, match="list of names"):
        to_fp16(src, block_nodes="conv")
    ints = make([helper.make_node("Add", ["i", "i"], ["o"])], [tensor("i", [2], TP.INT64)], [tensor("o", [2], TP.INT64)])
    with pytest.raises(UserError, match="no float32 tensors"):
        to_fp16(ints)


def test_bf16_upgrades_opset_and_runs_in_openvino() -> None:
    src = conv_resize()
    m, report = convert_precision(src, "bf16")
    check_clean(m)
    assert m.opset_imports[""] == 22 and by_op(m, "Conv")[0].outputs[0].dtype == BF16 and not report.float_nodes
    result = verify_precision(src, m, rtol=3e-2)
    assert result.engine.startswith("openvino") and result.ok, result.failure
    assert 0 < result.outputs[0].max_rel < 3e-2
    old, old_report = convert_precision(src, "bf16", upgrade_opset=False)  # Conv-11 has no bf16 type
    check_clean(old)
    assert old.opset_imports[""] == 17 and "no bf16 type" in old_report.float_nodes["conv"]


SLOW = pytest.mark.slow  # resnet18 at 224x224 takes seconds per run in onnxruntime with optimizations off
ZOO_FP16 = [pytest.param("resnet18", marks=SLOW), "mobilenetv2", "transformer", "yolo", "unet"]


@pytest.mark.parametrize("name", ZOO_FP16)
def test_zoo_fp16_in_onnxruntime(name: str) -> None:
    from tests.zoo import export

    src = ir.load(export(name))
    m, report = convert_precision(src, "fp16")
    check_clean(m)
    assert report.casts == 2 and report.low_nodes > 10
    result = verify_precision(src, m, dim_sizes={"seq": [16, 24]})
    assert result.ok and result.engine.startswith("onnxruntime"), result.failure
    assert result.outputs[0].max_rel <= 1e-2


@pytest.mark.parametrize("name", [pytest.param("resnet18", marks=SLOW), "mobilenetv2"])
def test_zoo_top1_agrees(name: str) -> None:
    from tests.zoo import export

    src = ir.load(export(name))
    m = to_fp16(src)
    x = np.random.default_rng(1).standard_normal((8, 3, 224, 224)).astype(np.float32)
    a, b = run(src, {"x": x})[0], run(m, {"x": x})[0]
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("name", [pytest.param("resnet18", marks=SLOW), "yolo"])
def test_zoo_bf16_in_openvino(name: str) -> None:
    """onnxruntime's CPU engine has no bf16 kernels; the bf16 model is checked in OpenVINO."""
    from tests.zoo import export

    src = ir.load(export(name))
    m = to_bf16(src)
    check_clean(m)
    assert m.metadata_props["slipway.precision.float_nodes"] == "0"
    result = verify_precision(src, m, rtol=3e-2)
    assert result.ok and result.engine.startswith("openvino"), result.failure
