"""``quantize()`` end to end on a CNN trained on sklearn digits: accuracy, the budget loop, FP16, bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from slipway.errors import UserError, VerificationError
from slipway.quantize import quantize
from tests.quantize.digits_cnn import cached_cnn, digits

FAST = {"speed_budget_s": 0.05}


@pytest.fixture(scope="module")
def cnn() -> Path:
    return cached_cnn()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return digits()


@pytest.fixture
def eval_npz(tmp_path, data) -> Path:
    path = tmp_path / "eval.npz"
    np.savez(path, x=data[2], labels=data[3])
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _fp32_accuracy(cnn: Path, x: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float(np.mean(_run(cnn, x).argmax(1) == y))


def test_int8_within_half_a_point_with_labels(cnn, data, eval_npz, tmp_path):
    x_tr, _, x_te, y_te = data
    out = tmp_path / "int8.onnx"
    r = quantize(cnn, out, calib=x_tr[:256], eval_data=eval_npz, method="minmax", **FAST)
    d = r.to_dict()
    # the numbers the result reports are those of the written model, run independently here
    acc = 100.0 * float(np.mean(_run(out, x_te).argmax(1) == y_te))
    assert d["accuracy"]["quantized"] == pytest.approx(acc, abs=1e-3)
    assert d["accuracy"]["fp32"] == pytest.approx(_fp32_accuracy(cnn, x_te, y_te), abs=1e-3)
    assert d["accuracy"]["drop"] <= 0.5
    assert d["agreement"] >= 99.0 and d["snr_db"] > 10
    assert d["nodes_quantized"] >= 5 and d["float_layers"] == []
    assert d["latency_fp32_ms"] > 0 and d["latency_quant_ms"] > 0
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("QuantizeLinear") >= 5 and "DequantizeLinear" in ops
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["slipway.quantize.method"] == "minmax" and meta["slipway.quantize.ok"] == "true"
    assert meta["slipway.quantize.float_layers"] == "none"
    assert [s["rank"] for s in d["sensitivity"]] == list(range(1, len(d["sensitivity"]) + 1))


def test_without_labels_agreement_is_the_metric(cnn, data, tmp_path):
    x_tr = data[0]
    r = quantize(cnn, None, calib=x_tr[:64], method="mse", speed_check=False)
    d = r.to_dict()
    assert d["accuracy"] is None and d["metric"] == "top-1 agreement with FP32"
    assert d["drop"] == pytest.approx(100.0 - d["agreement"], abs=1e-3)
    assert d["eval_samples"] == 64 and any("calibration samples" in n for n in d["notes"])
    assert r.path is None


def test_budget_reverts_the_most_sensitive_layers(cnn, data, tmp_path):
    x_tr, _, x_te, _ = data
    reference = _run(cnn, x_te[:200])

    def error(outputs, labels):  # minus the mean absolute logit error: 0 for FP32, < 0 once quantized
        return -float(np.mean(np.abs(outputs[0] - reference)))

    evalset = [({"x": x_te[i:i + 20]}, np.zeros(20)) for i in range(0, 200, 20)]
    full = quantize(cnn, None, calib=x_tr[:128], eval_data=evalset, metric=error, method="minmax",
                    speed_check=False)
    assert full.score.drop > 0 and full.float_layers == []
    out = tmp_path / "budget.onnx"
    budget = full.score.drop / 3
    r = quantize(cnn, out, calib=x_tr[:128], eval_data=evalset, metric=error, method="minmax", max_drop=budget,
                 speed_check=False)
    d = r.to_dict()
    assert 0 < len(r.float_layers) < len(r.sensitivity)
    assert d["drop"] <= budget
    ranking = [s["node"] for s in d["sensitivity"]]
    assert [f["node"] for f in d["float_layers"]] == ranking[:len(d["float_layers"])]
    assert all(f["precision"] == "fp32" and "local SNR" in f["why"] for f in d["float_layers"])
    # the search: the first step is the fully quantized model, the last kept one meets the budget
    assert d["budget_steps"][0]["float_layers"] == 0 and d["budget_steps"][0]["drop"] > budget
    fewer = [s for s in d["budget_steps"] if s["float_layers"] == len(r.float_layers) - 1]
    assert all(s["drop"] > budget for s in fewer)
    # the float layers read float inputs in the written model; the others still read dequantized ones
    graph = onnx.load(out).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    for node in graph.node:
        from_dq = any(producers.get(i) == "DequantizeLinear" for i in node.input)
        if node.name in {f.node for f in r.float_layers}:
            assert not from_dq, node.name
        elif node.name in ranking:
            assert from_dq, node.name
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert r.float_layers[0].node in meta["slipway.quantize.float_layers"]


def test_budget_fp16_fallback(cnn, data, tmp_path):
    x_tr, _, x_te, _ = data
    reference = _run(cnn, x_te[:100])

    def error(outputs, labels):
        return -float(np.mean(np.abs(outputs[0] - reference)))

    r = quantize(cnn, tmp_path / "f16.onnx", calib=x_tr[:64], eval_data=[({"x": x_te[:100]}, np.zeros(100))],
                 metric=error, method="minmax", max_drop=0.01, fallback="fp16", speed_check=False)
    # int8 logits are ~0.3 off on average, fp16 ones ~0.002: layers must go back, and fp16 is enough
    assert r.float_layers and all(f.precision == "fp16" for f in r.float_layers)
    graph = onnx.load(tmp_path / "f16.onnx").graph
    f16 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert f16, "the reverted layers' weights are float16"
    assert r.score.drop <= 0.01


def test_unreachable_budget_writes_nothing(cnn, data, tmp_path):
    calls = itertools.count()

    def never(outputs, labels):  # FP32 scores 1, anything after it 0
        return 1.0 if next(calls) == 0 else 0.0

    out = tmp_path / "never.onnx"
    with pytest.raises(VerificationError, match="cannot meet max_drop"):
        quantize(cnn, out, calib=data[0][:32], metric=never, max_drop=0.5, speed_check=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_fp16(cnn, data, eval_npz, tmp_path):
    out = tmp_path / "fp16.onnx"
    r = quantize(cnn, out, precision="fp16", eval_data=eval_npz, **FAST)
    d = r.to_dict()
    assert d["precision"] == "fp16" and d["method"] is None
    assert d["accuracy"]["drop"] <= 0.2 and d["snr_db"] > 40
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(out).graph.initializer)
    assert d["latency_quant_ms"] > 0


@pytest.mark.parametrize("calib, message", [
    (np.zeros((0, 1, 8, 8), np.float32), "empty"),
    (np.zeros((4, 1, 9, 9), np.float32), "x"),
    (np.zeros((4, 3, 8, 8), np.float32), "x"),
    (None, "calibration data"),
])
def test_bad_calibration_data(cnn, tmp_path, calib, message):
    out = tmp_path / "bad.onnx"
    with pytest.raises(UserError, match=message):
        quantize(cnn, out, calib=calib, speed_check=False)
    assert list(tmp_path.iterdir()) == []


def test_metric_that_raises(cnn, data, tmp_path):
    def broken(outputs, labels):
        raise ValueError("no labels here")

    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="metric 'broken' raised ValueError: no labels here"):
        quantize(cnn, out, calib=data[0][:16], metric=broken, speed_check=False)
    assert list(tmp_path.iterdir()) == []


def test_model_without_float_tensors(tmp_path):
    from tests.passes.util import make, tensor

    node = onnx.helper.make_node("Add", ["a", "b"], ["c"], name="add")
    model = make([node], [tensor("a", [2], onnx.TensorProto.INT64), tensor("b", [2], onnx.TensorProto.INT64)],
                 [tensor("c", [2], onnx.TensorProto.INT64)])
    with pytest.raises(UserError, match="no float32 tensors"):
        quantize(model, tmp_path / "i.onnx", calib=[{"a": np.ones(2, np.int64), "b": np.ones(2, np.int64)}])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "kl"}, "unknown calibration method"),
    ({"precision": "int4"}, "unknown precision"),
    ({"fallback": "int16"}, "unknown fallback"),
    ({"target": "tensorrt"}, "unknown target"),
    ({"max_drop": -1}, "max_drop"),
    ({"metric": "top5"}, "unknown metric"),
])
def test_bad_options(cnn, data, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        quantize(cnn, tmp_path / "o.onnx", calib=data[0][:16], speed_check=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_labels_count_must_match(cnn, data, tmp_path):
    path = tmp_path / "e.npz"
    np.savez(path, x=data[2][:10], labels=data[3][:9])
    with pytest.raises(UserError, match="9 labels for 10 samples"):
        quantize(cnn, tmp_path / "o.onnx", calib=data[0][:16], eval_data=path, speed_check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz"]


def test_formats_follow_the_cpu_unless_given(cnn, data):
    from slipway.quantize.speed import int8_defaults, isa_check

    def choice(features, machine):
        c = int8_defaults(features, machine)
        return c.symmetric, c.activation_type, c.reduce_range

    assert choice({"avx2": True}, "x86_64") == (False, "uint8", True)
    assert choice({"avx512_vnni": True}, "x86_64") == (False, "uint8", False)
    assert choice({"asimd": True}, "aarch64") == (True, "int8", False)
    assert any("no int8 dot-product" in w for w in isa_check("int8", "ort", {"avx2": True}).warnings)
    assert isa_check("int8", "ort", {"avx512_vnni": True}).warnings == []
    r = quantize(cnn, None, calib=data[0][:32], symmetric=True, reduce_range=False, per_channel=False,
                 speed_check=False)
    assert r.to_dict()["formats"] == {"symmetric_activations": True, "activation_type": "int8", "reduce_range": False,
                                      "per_channel": False}
    zero_points = [n for n in r.model.graph if n.op_type == "QuantizeLinear"]
    assert all(not np.any(q.inputs[2].const_value.numpy()) for q in zero_points)  # symmetric: zero point 0


def test_one_shot_calibration_iterator(cnn, data, tmp_path):
    x_tr = data[0]
    r = quantize(cnn, None, calib=(x_tr[i:i + 8] for i in range(0, 64, 8)), speed_check=False)
    assert r.calib_samples == 64 and any("one-shot" in w for w in r.warnings)
    with pytest.raises(UserError, match="give eval_data"):
        quantize(cnn, tmp_path / "o.onnx", calib=(x_tr[i:i + 8] for i in range(0, 64, 8)), max_drop=1.0,
                 speed_check=False)
    assert list(tmp_path.iterdir()) == []


def test_metrics():
    from slipway.quantize import evaluate as E

    ref = [np.eye(4, dtype=np.float32) * 5]
    out = [ref[0].copy()]
    out[0][0] = [0, 9, 0, 0]  # sample 0 now predicts class 1
    labels = np.arange(4)
    top1 = E.resolve_metric("top1", labels, ref)
    s = E.score(top1, out, ref, labels)
    assert (top1.kind, s.fp32, s.value, s.drop, s.agreement) == ("top1", 100.0, 75.0, 25.0, 75.0)
    assert E.score(top1, out, ref, np.eye(4)).value == 75.0  # one-hot labels
    agree = E.resolve_metric("top1", None, ref)  # no labels: agreement with FP32
    assert agree.kind == "agreement" and E.score(agree, out, ref, None).drop == 25.0
    maps = [np.ones((2, 3, 4, 4), np.float32)]
    cos = E.resolve_metric(None, None, maps)
    assert cos.kind == "cosine" and E.score(cos, [maps[0] * 2], maps, None).drop == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(UserError, match="classifier output"):
        E.resolve_metric("top1", labels, maps)
    with pytest.raises(UserError, match="3 labels for 4 outputs"):
        E.score(top1, out, ref, np.arange(3))


def test_verification_failure_writes_nothing(cnn, data, tmp_path, monkeypatch):
    import slipway.quantize as q

    monkeypatch.setitem(q.TOLERANCE, "int8", (0.0, 1e-9))  # no int8 model is that close to FP32
    out = tmp_path / "v.onnx"
    with pytest.raises(VerificationError, match="the int8 model is broken"):
        quantize(cnn, out, calib=data[0][:16], speed_check=False)
    assert list(tmp_path.iterdir()) == []
