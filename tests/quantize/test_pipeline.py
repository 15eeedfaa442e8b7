"""``quantize()`` end to end on a CNN trained on sklearn digits: accuracy, the budget loop, FP16, bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slipway.errors import UserError, VerificationError
from slipway.quantize import quantize
from tests.quantize.digits_cnn import cached_cnn, digits

FAST = {"speed_budget_s": 0.05}
# CPUs whose int8 kernels differ, as /proc/cpuinfo names their features (+ platform.machine()).
# quantize() picks its Q/DQ formats and its speed-guard verdict from them: a test that depends on
# those forces a CPU with ``as_cpu`` instead of taking whatever the host has.
X86 = {"avx2": True, "fma": True}
AVX512 = {**X86, "avx512f": True, "avx512bw": True}
CPUS = {
    "avx2": (X86, "x86_64"),
    "avx512_vnni": ({**AVX512, "avx512_vnni": True}, "x86_64"),
    "amx": ({**AVX512, "avx512_vnni": True, "avx512_bf16": True, "amx_tile": True, "amx_int8": True,
             "amx_bf16": True}, "x86_64"),
    "arm_sdot": ({"asimd": True, "asimddp": True}, "aarch64"),
}
# what int8_defaults picks: (symmetric activations, activation type, 7-bit weights), int8 ISA, native int8
EXPECTED = {
    "avx2": ((False, "uint8", True), "AVX2 (no int8 dot-product instruction)", False),
    "avx512_vnni": ((False, "uint8", False), "AVX512-VNNI", True),
    "amx": ((False, "uint8", False), "AMX-INT8", True),
    "arm_sdot": ((True, "int8", False), "ARM SDOT", True),
}
# the distinct formats (avx512_vnni's are amx's): the pipeline tests that depend on the format run each
FORMAT_CPUS = ["avx2", "amx", "arm_sdot"]


def as_cpu(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make quantize() see the CPU ``name``: its int8 format defaults and the speed guard's features."""
    from slipway.quantize import speed

    features, machine = CPUS[name]
    original = speed.int8_defaults
    monkeypatch.setattr(speed, "int8_defaults", lambda *_: original(features, machine))
    monkeypatch.setattr(speed, "cpu_features", lambda *_: dict(features))


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


def _error_metric(reference: np.ndarray):
    def error(outputs, labels):  # minus the mean absolute logit error: 0 for FP32, < 0 once quantized
        return -float(np.mean(np.abs(outputs[0] - reference)))

    return error


def _no_qdq(model) -> bool:
    return not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph)


# Logits of up to ~30: the FP32 model prepared for quantization (BN folded into the conv weights)
# differs from the source by float32 rounding, a few ulps of 30 (~1e-5); a quantized layer costs >= 1e-2.
FLOAT_NOISE = 1e-4


def exact_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluate as an int8 engine that never saturates (VNNI, AMX, ARM SDOT) computes, on any host:
    the Q/DQ graph run node by node in float (the same values up to float32 rounding), instead of
    onnxruntime's fused kernels, whose AVX2 u8 x s8 path saturates with full-range weights."""
    from slipway.quantize import evaluate
    from slipway.verify import ort_runner

    def run_outputs(model, data, target="ort"):
        run = ort_runner(model)
        runs = [run(feeds) for feeds in data.batches]
        return [np.concatenate([r[v.name] for r in runs], axis=0) for v in model.graph.outputs]

    monkeypatch.setattr(evaluate, "run_outputs", run_outputs)


@pytest.mark.parametrize("engine", ["host", "exact"])
@pytest.mark.parametrize("cpu", FORMAT_CPUS)
def test_budget_reverts_the_most_sensitive_layers(cnn, data, tmp_path, monkeypatch, cpu, engine):
    """Per int8 format, on this host's int8 kernels and on exact (non-saturating) ones. The budget comes
    from the search's own steps, not a fixed fraction of the full drop: what each layer costs depends
    on the format and the kernels. (A third of the full drop, the old budget, needs every layer back in
    float with the VNNI/AMX format on exact kernels: the least sensitive Gemm alone costs 38% of the
    error there, while on AVX2 saturation makes the first conv dominate.)"""
    as_cpu(monkeypatch, cpu)
    if engine == "exact":
        exact_int8(monkeypatch)
    x_tr, _, x_te, _ = data
    reference = _run(cnn, x_te[:200])
    evalset = [({"x": x_te[i:i + 20]}, np.zeros(20)) for i in range(0, 200, 20)]
    kw = {"calib": x_tr[:128], "eval_data": evalset, "metric": _error_metric(reference), "method": "minmax",
          "speed_check": False}
    # a budget only FP32 meets: every layer goes back, and the model is the FP32 model again
    every = quantize(cnn, None, max_drop=FLOAT_NOISE, **kw)
    layers = len(every.sensitivity)
    assert layers >= 4 and len(every.float_layers) == layers and _no_qdq(every.model)
    assert any("the result is not quantized" in w for w in every.warnings)
    out = ort.InferenceSession(ir.serde.serialize_model(every.model).SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x_te[:200]})[0]
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5 * float(np.abs(reference).max()))
    # the doubling steps (1, 2, 4 ... layers float): take the best partial one's drop as the budget
    steps = {s.layers: s.drop for s in every.steps}
    full = steps[0]
    partial = {n: d for n, d in steps.items() if 0 < n < layers}
    best = min(partial, key=partial.__getitem__)
    assert full > FLOAT_NOISE and partial[best] < full, steps  # reverting the most sensitive layers helps
    budget = partial[best] * (1 + 1e-6)
    out = tmp_path / "budget.onnx"
    r = quantize(cnn, out, max_drop=budget, **kw)
    d = r.to_dict()
    assert 0 < len(r.float_layers) <= best < layers
    assert r.score.drop <= budget and not any("not quantized" in w for w in r.warnings)
    ranking = [s["node"] for s in d["sensitivity"]]
    assert [f["node"] for f in d["float_layers"]] == ranking[:len(d["float_layers"])]
    assert all(f["precision"] == "fp32" and "local SNR" in f["why"] for f in d["float_layers"])
    # the search: the first step is the fully quantized model, the last kept one meets the budget
    # (the steps unrounded: to_dict() rounds the drops to 4 digits)
    assert d["budget_steps"][0]["float_layers"] == 0 and r.steps[0].drop > budget
    fewer = [s for s in r.steps if s.layers == len(r.float_layers) - 1]
    assert fewer and all(s.drop > budget for s in fewer)
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


def test_budget_reverts_nodes_the_ranking_leaves_out(tmp_path):
    """A Concat quantizes its inputs and output on its own, but sensitivity ranks compute layers only:
    with every ranked layer float its Q/DQ stayed, and no budget below its error could be met."""
    from slipway.quantize import qdq
    from tests.passes.util import make, tensor

    r = np.random.default_rng(0)
    nodes = [onnx.helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             onnx.helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             onnx.helper.make_node("Concat", ["r1", "x"], ["cat"], name="concat", axis=1),
             onnx.helper.make_node("Conv", ["cat", "W2"], ["y"], name="conv2")]
    model = make(nodes, [tensor("x", ["n", 2, 6, 6])], [tensor("y", ["n", 3, 6, 6])],
                 {"W1": r.standard_normal((4, 2, 3, 3)).astype(np.float32),
                  "W2": r.standard_normal((3, 6, 1, 1)).astype(np.float32)})
    calib = r.standard_normal((32, 2, 6, 6)).astype(np.float32)
    quant, report = qdq.quantize_qdq(model, {"x": (-3, 3), "r1": (0, 9), "cat": (-3, 9), "y": (-20, 20)},
                                     exclude_nodes=["conv1", "conv2"])
    assert report.quantized == {"concat": "Concat"} and not _no_qdq(quant)  # what the budget must also revert
    reference = _run_ir(model, calib)
    res = quantize(model, tmp_path / "c.onnx", calib=calib, eval_data=[({"x": calib}, np.zeros(32))],
                   metric=_error_metric(reference), max_drop=FLOAT_NOISE, speed_check=False)
    assert {f.node for f in res.float_layers} == {"conv1", "conv2"} and "concat" not in res.quant.quantized
    assert _no_qdq(res.model) and _no_qdq(ir.load(tmp_path / "c.onnx"))
    np.testing.assert_allclose(_run_ir(res.model, calib), reference, rtol=1e-5, atol=1e-5)


def _run_ir(model, x: np.ndarray) -> np.ndarray:
    proto = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("cpu", FORMAT_CPUS)
def test_budget_fp16_fallback(cnn, data, tmp_path, monkeypatch, cpu):
    as_cpu(monkeypatch, cpu)
    x_tr, _, x_te, _ = data
    reference = _run(cnn, x_te[:100])
    r = quantize(cnn, tmp_path / "f16.onnx", calib=x_tr[:64], eval_data=[({"x": x_te[:100]}, np.zeros(100))],
                 metric=_error_metric(reference), method="minmax", max_drop=0.01, fallback="fp16", speed_check=False)
    # int8 logits are 0.03 to 0.5 off on average (by format and int8 kernels), fp16 ones ~0.002: layers
    # must go back, and fp16 is enough
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
    with pytest.raises(VerificationError, match="cannot meet max_drop") as info:
        quantize(cnn, out, calib=data[0][:32], metric=never, max_drop=0.5, speed_check=False)
    # every layer was reverted, so the error says the metric, not quantization, is at fault
    assert "no Q/DQ left" in str(info.value) and "is it deterministic" in str(info.value)
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


@pytest.mark.parametrize("cpu", list(CPUS))
def test_int8_defaults_and_isa_check_per_cpu(cpu):
    from slipway.quantize.speed import int8_defaults, isa_check

    features, machine = CPUS[cpu]
    formats, isa, native = EXPECTED[cpu]
    c = int8_defaults(features, machine)
    assert (c.symmetric, c.activation_type, c.reduce_range) == formats
    report = isa_check("int8", "ort", features)
    assert (report.isa, report.native_int8) == (isa, native)
    assert any("no int8 dot-product" in w for w in report.warnings) == (not native)
    bf16 = isa_check("bf16", "openvino", features).warnings
    assert any("no BF16 instructions" in w for w in bf16) == (cpu != "amx")
    # the architecture alone decides ARM vs x86, whatever feature flags are present
    assert int8_defaults({}, "arm64").symmetric and not int8_defaults({}, "x86_64").symmetric


@pytest.mark.parametrize("cpu", list(CPUS))
def test_formats_follow_the_cpu(cnn, data, monkeypatch, cpu):
    as_cpu(monkeypatch, cpu)
    (symmetric, activation_type, reduce_range), isa, native = EXPECTED[cpu]
    r = quantize(cnn, None, calib=data[0][:32], speed_check=False)
    assert r.formats == {"symmetric_activations": symmetric, "activation_type": activation_type,
                         "reduce_range": reduce_range, "per_channel": True}
    assert any(n.startswith("formats for this CPU: ") for n in r.notes)
    assert (r.speed.isa, r.speed.native_int8) == (isa, native)
    assert any("no int8 dot-product" in w for w in r.all_warnings()) == (not native)
    qs = [n for n in r.model.graph if n.op_type == "QuantizeLinear"]
    assert qs and {q.inputs[2].const_value.numpy().dtype for q in qs} == {np.dtype(activation_type)}
    if symmetric:
        assert all(not np.any(q.inputs[2].const_value.numpy()) for q in qs)
    weights = [dq.inputs[0].const_value.numpy() for dq in r.model.graph if dq.op_type == "DequantizeLinear"
               and dq.inputs[0].const_value is not None and dq.inputs[0].const_value.dtype == ir.DataType.INT8]
    assert weights and max(int(np.abs(w.astype(int)).max()) for w in weights) == (63 if reduce_range else 127)


def test_explicit_formats_override_the_cpu(cnn, data, monkeypatch):
    as_cpu(monkeypatch, "avx2")
    r = quantize(cnn, None, calib=data[0][:32], symmetric=True, reduce_range=False, per_channel=False,
                 speed_check=False)
    assert r.to_dict()["formats"] == {"symmetric_activations": True, "activation_type": "int8", "reduce_range": False,
                                      "per_channel": False}
    assert not any(n.startswith("formats for this CPU") for n in r.notes)
    zero_points = [n for n in r.model.graph if n.op_type == "QuantizeLinear"]
    assert all(not np.any(q.inputs[2].const_value.numpy()) for q in zero_points)  # symmetric: zero point 0


def test_auto_method_keeps_entropy_unless_it_loses(cnn, data, monkeypatch):
    from slipway.quantize import calibrate

    fine = quantize(cnn, None, calib=data[0][:64], eval_data=data[2][:64], speed_check=False)
    assert fine.method == "entropy" and not any("method auto" in n for n in fine.notes)  # one placement
    real = calibrate.ranges

    def broken_entropy(cal, method, **kw):  # entropy ranges clipped to 1%: what PP-OCRv4 rec's look like
        out = real(cal, method, **kw)
        return {k: (lo * 0.01, hi * 0.01) for k, (lo, hi) in out.items()} if method == "entropy" else out

    monkeypatch.setattr(calibrate, "ranges", broken_entropy)
    r = quantize(cnn, None, calib=data[0][:64], eval_data=data[2][:64], speed_check=False)
    assert r.method != "entropy" and r.score.drop < 1.0
    note = next(n for n in r.notes if n.startswith("calibration method auto: entropy drops "))
    assert f"{r.method} kept" in note
    with pytest.raises(VerificationError, match="int8 model is broken"):  # an explicit method is kept as asked
        quantize(cnn, None, calib=data[0][:64], eval_data=data[2][:64], method="entropy", speed_check=False)


@pytest.mark.parametrize("cpu", ["avx2", "amx"])
def test_full_range_weights_warn_where_the_kernels_saturate(cnn, data, monkeypatch, cpu):
    as_cpu(monkeypatch, cpu)
    r = quantize(cnn, None, calib=data[0][:32], reduce_range=False, speed_check=False)
    assert any("saturate" in w for w in r.warnings) == (cpu == "avx2")


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
