"""slipway.compare.compare: layer-by-layer differences and the first divergent node."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper

from slipway.backends import Options
from slipway.compare import compare
from slipway.errors import UserError
from tests.compare import util
from tests.passes.util import make, tensor

X = np.random.default_rng(5).standard_normal(util.SHAPE).astype(np.float32)


def ort_values(model: ir.Model, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The named tensors of ``model`` computed by onnxruntime directly (outputs added by hand)."""
    proto = ir.to_proto(model)
    del proto.graph.output[:]
    proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feeds), strict=True))


def by_name(report) -> dict:
    return {d.name: d for d in report.layers}


def test_identical_models_do_not_diverge():
    r = compare(util.chain(), util.chain(), feeds={"x": X})
    assert r.first_divergent_node is None and not r.diverged
    assert [d.name for d in r.layers] == ["c1", "r1", "c2", "r2", "y"]
    assert all(d.snr_db == math.inf and d.max_abs == 0.0 and d.cosine == pytest.approx(1.0) for d in r.layers)
    assert r.unmatched_a == [] and r.unmatched_b == []
    assert [o.name for o in r.outputs] == ["y"] and r.outputs[0].ok


def test_a_perturbed_conv_is_the_first_divergent_node():
    a, b = util.chain(), util.perturbed("W2")
    r = compare(a, b, feeds={"x": X})
    first = r.first_divergent_node
    assert (first.name, first.op_type, first.tensor) == ("conv2", "Conv", "c2")
    layers = by_name(r)
    assert layers["c1"].ok and layers["r1"].ok and layers["c1"].max_abs == 0.0
    assert not layers["c2"].ok and not r.outputs[0].ok and r.diverged
    # The numbers are those of onnxruntime run directly on both models.
    ref, act = ort_values(a, ["c2", "r2"], {"x": X}), ort_values(b, ["c2", "r2"], {"x": X})
    for name in ("c2", "r2"):
        d = layers[name]
        r64, a64 = ref[name].astype(np.float64).ravel(), act[name].astype(np.float64).ravel()
        assert d.max_abs == pytest.approx(np.abs(r64 - a64).max(), rel=1e-5)
        assert d.max_rel == pytest.approx(d.max_abs / np.abs(r64).max(), rel=1e-6)
        cos = r64 @ a64 / np.linalg.norm(r64) / np.linalg.norm(a64)
        assert d.cosine == pytest.approx(cos, abs=1e-6)
        assert d.snr_db == pytest.approx(10 * np.log10((r64**2).sum() / ((r64 - a64) ** 2).sum()), abs=1e-4)
    # Flipping W2's sign makes c2 exactly -c2.
    assert layers["c2"].cosine == pytest.approx(-1.0)


def test_tolerance_is_atol_plus_rtol_times_max_ref():
    a, b = util.chain(), util.perturbed("W3", 1.001)  # y scaled by 1.001: max_abs = 0.001 max|y|
    loose = compare(a, b, feeds={"x": X}, atol=0.0, rtol=2e-3)
    tight = compare(a, b, feeds={"x": X}, atol=0.0, rtol=5e-4)
    assert loose.first_divergent_node is None
    assert tight.first_divergent_node.name == "conv3"
    d = by_name(tight)["y"]
    assert d.max_rel == pytest.approx(1e-3, rel=1e-3) and d.allowed == pytest.approx(5e-4 * d.max_abs / d.max_rel)


def test_fp16_model_matches_through_casts(tmp_path):
    r = compare(util.save(util.chain(), tmp_path / "a.onnx"), util.fp16(tmp_path / "h.onnx"), feeds={"x": X},
                atol=1e-2)
    layers = by_name(r)
    assert r.unmatched_a == [] and set(layers) == {"x", "c1", "r1", "c2", "r2", "y"}
    x = layers["x"]  # the graph input, compared with its FP16 copy made by the converter's Cast
    assert x.op_type == "(input)" and x.via == "Cast" and x.b_name == "graph_input_cast_0"
    assert 0 < x.max_abs < 1e-2 and x.dtype_b == "float16"
    assert layers["c2"].dtype_b == "float16" and layers["c2"].dtype_a == "float32"
    assert all(d.cosine > 0.9999 and 40 < d.snr_db < math.inf for d in r.layers)
    assert r.first_divergent_node is None


def test_qdq_model_matches_through_quantize_dequantize(tmp_path):
    r = compare(util.save(util.chain(), tmp_path / "a.onnx"), util.qdq(tmp_path), feeds={"x": X})
    layers = by_name(r)
    # The quantizer folds each ReLU into the Q/DQ pair after its Conv: A's Conv outputs c1, c2 have
    # no counterpart, and the ReLU outputs r1, r2 match the dequantized values B's next Conv reads.
    assert {"c1", "c2"} <= set(r.unmatched_a)
    for name in ("x", "r1", "r2"):
        assert layers[name].via == "Q/DQ" and layers[name].b_name == f"{name}_DequantizeLinear_Output"
    assert len(r.layers) >= 4 and all(d.cosine > 0.99 for d in r.layers)
    assert r.first_divergent_node is not None  # int8 is far from FP32 at the default atol 1e-4


def test_unmatched_tensors_are_listed_not_errors():
    a = util.chain()
    w = util.weights()
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["fused"], name="conv2_relu", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["fused"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["y"], name="conv3"),
    ]
    b = make(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])], w)
    r = compare(a, b, feeds={"x": X})
    assert r.unmatched_a == ["c2"] and r.unmatched_b == ["fused"]
    assert r.first_divergent_node is None and [d.name for d in r.layers] == ["c1", "r1", "r2", "y"]


def test_shape_mismatch_is_reported():
    a = util.chain()
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2"),  # no padding: 6x6
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["y"], name="conv3"),
    ]
    b = make(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 6, 6])], util.weights())
    r = compare(a, b, feeds={"x": X})
    c2 = by_name(r)["c2"]
    assert c2.shape_mismatch and not c2.ok and c2.shape_a == [1, 8, 8, 8] and c2.shape_b == [1, 8, 6, 6]
    assert r.first_divergent_node.name == "conv2"
    assert r.outputs[0].shape_mismatch and any("different shapes" in n for n in r.notes)


def test_random_inputs_follow_batch_and_seed():
    r1 = compare(util.chain(), util.perturbed(), batch=3, seed=1)
    r2 = compare(util.chain(), util.perturbed(), batch=3, seed=1)
    assert r1.inputs == {"x": [3, 3, 8, 8]} and by_name(r1)["y"].shape_a == [3, 4, 8, 8]
    assert by_name(r1)["c2"].max_abs == by_name(r2)["c2"].max_abs


def test_npz_inputs_give_the_same_report_as_a_dict(tmp_path):
    np.savez(tmp_path / "in.npz", x=X)
    r_file = compare(util.chain(), util.perturbed(), feeds=tmp_path / "in.npz")
    r_dict = compare(util.chain(), util.perturbed(), feeds={"x": X.astype(np.float64)})  # cast to float32
    assert [d.max_abs for d in r_file.layers] == [d.max_abs for d in r_dict.layers]


def test_one_model_under_two_option_sets():
    opts = {level: Options(settings={"graph_optimization_level": level}) for level in ("disabled", "all")}
    r = compare(util.chain(), options_a=opts["disabled"], options_b=opts["all"], feeds={"x": X})
    assert r.first_divergent_node is None and len(r.layers) == 5
    assert "graph_optimization_level=all" in r.b and "disabled" in r.a


@pytest.mark.parametrize("call, message", [
    (lambda t: compare(t / "missing.onnx", util.chain()), "not found"),
    (lambda t: compare(util.chain()), "nothing to compare"),
    (lambda t: compare(util.chain(), util.chain(), atol=-1), "tolerances"),
    (lambda t: compare(util.chain(), util.chain(), feeds={"x": X, "z": X}), "no input named 'z'"),
    (lambda t: compare(util.chain(), util.chain(), feeds={"y": X}), "no value for input 'x'"),
    (lambda t: compare(util.chain(), util.chain(), feeds={"x": X[0]}), "rank 3"),
    (lambda t: compare(util.chain(), util.chain(), feeds={"x": np.zeros((1, 4, 8, 8), np.float32)}),
     "dim 1 must be 3"),
    (lambda t: compare(util.chain(), util.chain(), feeds={"x": X.astype(np.int64)}), "dtype int64"),
    (lambda t: compare(util.chain(), util.chain(), feeds=t / "none.npz"), "inputs file not found"),
    (lambda t: compare(util.chain(), util.chain(), dims={"seq": 4}), "no dynamic dim named 'seq'"),
    (lambda t: compare(util.chain(), util.chain(), batch=0), "batch must be"),
    (lambda t: compare(util.chain(), util.chain(), backend_b="nope"), "unknown backend"),
])
def test_bad_input_is_a_one_line_user_error(tmp_path, call, message):
    with pytest.raises(UserError, match=message) as e:
        call(tmp_path)
    assert "\n" not in str(e.value)


def test_models_with_different_inputs_are_refused():
    nodes = [helper.make_node("Relu", ["image"], ["y"], name="relu")]
    b = make(nodes, [tensor("image", [1, 3, 8, 8])], [tensor("y", [1, 3, 8, 8])])
    with pytest.raises(UserError, match="different inputs"):
        compare(util.chain(), b)


def test_an_npz_with_wrong_keys_or_not_npz(tmp_path):
    np.savez(tmp_path / "wrong.npz", image=X)
    with pytest.raises(UserError, match="no value for input 'x'"):
        compare(util.chain(), util.chain(), feeds=tmp_path / "wrong.npz")
    np.save(tmp_path / "plain.npy", X)
    with pytest.raises(UserError, match="not an .npz file"):
        compare(util.chain(), util.chain(), feeds=tmp_path / "plain.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(UserError, match="cannot read inputs"):
        compare(util.chain(), util.chain(), feeds=tmp_path / "text.npz")


def test_ort_and_openvino_agree_on_resnet18():
    from slipway.backends import available

    why = available().get("openvino")
    if why:
        pytest.skip(f"openvino backend: {why}")
    from tests.zoo import export

    r = compare(export("resnet18"), backend_b="openvino", atol=1e-3, rtol=1e-3)
    assert r.first_divergent_node is None, r.first_divergent_node
    assert len(r.layers) > 40 and all(d.cosine > 0.9999 for d in r.layers)
    assert all(o.ok for o in r.outputs)


def test_input_model_is_not_changed():
    a = util.chain()
    before = onnx.helper.printable_graph(ir.to_proto(a).graph)
    compare(a, util.perturbed(), feeds={"x": X})
    assert onnx.helper.printable_graph(ir.to_proto(a).graph) == before and len(a.graph.outputs) == 1
