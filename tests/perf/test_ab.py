"""perf.ab: the one A/B timing engine (optimize's never-slower check, quantize's speed guard)."""

from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

import slipway.backends.base as base
from slipway.backends.ort import ort_session
from slipway.perf.ab import SIGN_TEST_SHARE, Speed, latency, latency_compare
from slipway.quantize import speed as qspeed
from slipway.verify import ort_runner


def _mlp(width: int = 64) -> ir.Model:
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [width, width], rng.standard_normal((width, width)).ravel())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], [w])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_slower_is_a_median_tolerance_and_an_optional_sign_test():
    assert Speed(1.0, 1.05, 0.5, 9).slower(0.01) and not Speed(1.0, 1.05, 0.5, 9).slower(0.01, SIGN_TEST_SHARE)
    assert Speed(1.0, 1.05, 0.8, 9).slower(0.01, SIGN_TEST_SHARE)
    assert not Speed(1.0, 1.01, 1.0, 9).slower(0.02)  # quantize's 2% guard
    assert not Speed(2.0, 1.0, 0.0, 9).slower(0.0)


def test_real_pair_and_single_latency_on_ort():
    m = _mlp()
    s = latency_compare(m, m, "ort", budget_s=0.1)
    assert s.a_ms > 0 and s.b_ms > 0 and s.blocks >= 7 and 0 <= s.b_slower_share <= 1
    assert latency(m, "ort", budget_s=0.05) > 0


def test_quantize_speed_guard_times_through_the_engine(monkeypatch):
    monkeypatch.setattr(qspeed, "latency_compare", lambda a, b, *args: Speed(1.0, 1.5, 1.0, 9))
    report = qspeed.measure(qspeed.SpeedReport("ort", "cpu", "AVX2", False), _mlp(), _mlp())
    assert (report.latency_fp32_ms, report.latency_quant_ms) == (1.0, 1.5)
    assert any("slower than FP32" in w for w in report.warnings)


def test_one_session_factory_and_one_temporary_file_for_big_models(monkeypatch):
    m = _mlp(32)
    x = np.ones((2, 32), np.float32)
    want = ort_runner(m)({"x": x})["y"]
    monkeypatch.setattr(base, "_BYTES_LIMIT", 1000)  # as if the model were over protobuf's 2 GB
    made: list[str] = []
    real = base._temp_file

    def spy(model):
        made.append("file")
        return real(model)

    monkeypatch.setattr(base, "_temp_file", spy)
    sess = ort_session(m, optimization="disabled")
    files = [f for f in os.listdir(os.path.dirname(sess._model_path)) if f.startswith("model.onnx")]
    assert len(files) == 2 and made == ["file"]  # model.onnx + its external weights
    folder = os.path.dirname(sess._model_path)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-6)
    np.testing.assert_allclose(ort_runner(m)({"x": x})["y"], want, rtol=1e-6)
    del sess
    import gc

    gc.collect()
    assert not os.path.exists(folder)  # the temporary file lives as long as the session
