"""Per-layer sensitivity: the local error equals the layer's error when it is the only one quantized,
the accumulated error is the layer's output in the fully quantized model, and a badly quantized
layer ranks first."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from slipway.compare.metrics import snr_db
from slipway.compare.run import typed_copy
from slipway.quantize import calibrate, qdq
from slipway.quantize import sensitivity as sens
from tests.passes.util import make, tensor

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 4, 8, 8)).astype(np.float32)


def chain(outlier: float = 0.0) -> ir.Model:
    """conv1 -> relu -> conv2 -> relu -> maxpool -> reshape -> gemm; conv2's weight may carry one outlier."""
    w1 = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3
    w2 = RNG.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    w2[0, 0, 0, 0] += outlier
    wg = RNG.standard_normal((10, 8 * 4 * 4)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = {"w1": w1, "b1": np.full(8, 0.1, np.float32), "w2": w2, "b2": np.zeros(8, np.float32),
             "shape": np.array([-1, 128], np.int64), "wg": wg, "bg": np.zeros(10, np.float32)}
    model = make(nodes, [tensor("x", ["batch", 4, 8, 8])], [tensor("y", ["batch", 10])], inits, opset=17)
    return typed_copy(model)  # value types, as quantize() gets them after its shape inference


def quantized(model: ir.Model, per_channel: bool = True, exclude: tuple[str, ...] = ()) -> ir.Model:
    ranges = calibrate.ranges(calibrate.collect(model, X), "minmax")
    return qdq.quantize_qdq(model, ranges, per_channel=per_channel, exclude_nodes=exclude)[0]


def batches() -> list[dict[str, np.ndarray]]:
    return [{"x": X[:8]}, {"x": X[8:]}]


def test_quantized_layers_are_the_compute_nodes():
    model = chain()
    layers = sens.quantized_layers(model, quantized(model))
    assert layers == ["conv1", "conv2", "fc"]
    everything = sens.quantized_layers(model, quantized(model), compute_only=False)
    assert {"pool", "flatten"} <= set(everything)


def test_local_error_is_the_error_of_the_layer_quantized_alone():
    model = chain()
    full = quantized(model)
    rows = {s.node: s for s in sens.analyze(model, full, batches())}
    assert set(rows) == {"conv1", "conv2", "fc"}
    for name in rows:
        others = tuple(n for n in rows if n != name)
        alone = quantized(model, exclude=others)
        # In a model where only this layer is quantized, its accumulated error is its local error.
        only = sens.analyze(model, alone, batches(), layers=[name])
        assert len(only) == 1
        assert only[0].snr_db == pytest.approx(rows[name].local_snr_db, abs=0.05)
        assert only[0].cosine == pytest.approx(rows[name].local_cosine, abs=1e-6)
    # The first layer sees the exact input, so its local and accumulated errors are the same.
    assert rows["conv1"].snr_db == pytest.approx(rows["conv1"].local_snr_db, abs=1e-6)
    assert all(10 < r.local_snr_db < 80 and 0.99 < r.local_cosine <= 1 for r in rows.values())


def test_accumulated_error_matches_a_direct_comparison():
    model = chain()
    full = quantized(model)
    rows = {s.node: s for s in sens.analyze(model, full, batches())}
    # fc's output is the model output y in both models (nothing quantizes the final Gemm output here)
    ref = _run(model, X)
    out = _run(full, X)
    assert rows["fc"].snr_db == pytest.approx(snr_db(ref.astype(np.float64), out.astype(np.float64)), abs=0.05)


def test_a_layer_with_an_outlier_weight_ranks_first():
    model = chain(outlier=40.0)  # per-tensor weights: the outlier crushes conv2's other weights to 0
    rows = sens.analyze(model, quantized(model, per_channel=False), batches())
    assert rows[0].node == "conv2" and rows[0].rank == 1
    assert [r.rank for r in rows] == [1, 2, 3]
    assert rows[0].local_snr_db < min(r.local_snr_db for r in rows[1:]) - 6
    table = sens.table(rows, limit=2)
    assert len(table) == 2 and table[0][:3] == ["1", "conv2", "Conv"]


def test_nothing_quantized_gives_no_rows():
    model = chain()
    assert sens.analyze(model, model, batches()) == []


def test_unmatched_layer_falls_back_to_accumulated():
    model = chain()
    full = quantized(model)
    # a chain of renamed copies longer than the shadow walks, before the Q of conv2's input
    q = next(n for n in full.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name == "r1")
    value = q.inputs[0]
    for i in range(sens.MAX_DEPTH + 1):
        step = ir.node("Identity", [value], name=f"copy{i}")
        step.outputs[0].name = f"renamed{i}"
        step.outputs[0].type, step.outputs[0].shape = value.type, value.shape
        full.graph.insert_before(q, step)
        value = step.outputs[0]
    q.replace_input_with(0, value)
    rows = {s.node: s for s in sens.analyze(model, full, batches())}
    assert math.isfinite(rows["conv2"].local_snr_db)
    assert rows["conv2"].local_snr_db == rows["conv2"].snr_db


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
