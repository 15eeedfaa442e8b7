"""tune(): the search, the accuracy budget, the settings file and its application."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from slipway import backends
from slipway.errors import UserError
from slipway.tune import pareto, read_settings, settings_path, tune


def _mlp(path, batch="batch"):
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((128, 10)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 10])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


FAST = {"time_per_config_s": 0.03, "backends": ["ort"]}


def test_latency_search_writes_a_settings_file_that_load_applies(tmp_path):
    path = _mlp(tmp_path / "m.onnx")
    result = tune(path, objective="latency", **FAST)
    w = result.winner
    assert w.backend == "ort" and w.batch == 1 and w.p50_ms > 0 and w.feasible
    stages = {c.stage for c in result.candidates}
    assert {"coarse", "fine", "final"} <= stages
    assert result.path == settings_path(path) == tmp_path / "m.tune.json"
    data = read_settings(path)
    assert data["backend"] == "ort" and data["options"]["threads"] == w.threads
    session = backends.load(path, backend=None)  # no backend named: the tuned one, with its options
    assert session.backend == "ort" and session.options.threads == w.threads
    x = np.ones((1, 64), np.float32)
    assert session.run({"x": x})["y"].shape == (1, 10)


def test_a_changed_model_ignores_stale_settings(tmp_path):
    path = _mlp(tmp_path / "m.onnx")
    tune(path, **FAST)
    assert read_settings(path) is not None
    _mlp(path, batch=4)  # a different model under the same name
    assert read_settings(path) is None


def test_throughput_prefers_bigger_batches_and_pareto_is_not_dominated(tmp_path):
    path = _mlp(tmp_path / "m.onnx")
    result = tune(path, objective="throughput", max_batch=16, write=False, **FAST)
    assert result.path is None and not settings_path(path).exists()
    assert {c.batch for c in result.candidates if c.stage == "coarse"} == {1, 2, 4, 8, 16}
    assert result.winner.batch > 1  # per-call overhead dominates a tiny MLP
    front = pareto(result.candidates)
    assert front
    for c in front:
        assert not any(o.p50_ms < c.p50_ms and o.throughput > c.throughput for o in result.candidates
                       if o.feasible and o.p50_ms is not None)


def test_max_latency_makes_slow_configs_infeasible(tmp_path):
    path = _mlp(tmp_path / "m.onnx")
    with pytest.raises(UserError, match=r"no configuration meets the limits: the lowest p90 latency measured is"):
        tune(path, objective="throughput", max_latency_ms=1e-6, **FAST)
    assert not settings_path(path).exists()


def test_accuracy_budget_and_metric_errors(tmp_path):
    path = _mlp(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="within the accuracy budget"):
        tune(path, metric=lambda out, ref: 1.0, max_drop=0.5, **FAST)
    with pytest.raises(UserError, match="the metric raised ZeroDivisionError"):
        tune(path, metric=lambda out, ref: 1 / 0, **FAST)
    with pytest.raises(UserError, match="unknown objective"):
        tune(path, objective="speed", **FAST)
    result = tune(path, metric=lambda out, ref: float(np.abs(out["y"] - ref["y"]).max()), max_drop=1e-3,
                  write=False, **FAST)
    assert result.accuracy["ort/fp32"] < 1e-3


def test_openvino_joins_the_search_when_installed(tmp_path):
    if backends.get("openvino").available():
        pytest.skip("openvino not available")
    path = _mlp(tmp_path / "m.onnx")
    result = tune(path, backends=["ort", "openvino"], time_per_config_s=0.03, write=False)
    assert {"ort", "openvino"} <= {c.backend for c in result.candidates}
    assert result.accuracy["openvino/fp32"] < 1e-4
    assert json.dumps(result.to_dict())


def test_slipway_load_carries_the_settings_to_backends_load(tmp_path):
    import slipway

    path = _mlp(tmp_path / "m.onnx")
    tune(path, **FAST)
    model = slipway.load(path)
    session = backends.load(model, backend=None)
    assert session.options.threads == read_settings(path)["options"]["threads"]
    settings_path(path).write_text("{not json")
    assert read_settings(path) is None and "slipway.tune" not in slipway.load(path).meta
    assert backends.load(path, backend=None).backend == "ort"  # no usable settings: the default engine


def test_precisions_follow_the_model(tmp_path):
    path = _mlp(tmp_path / "m.onnx")
    result = tune(path, backends=["ort", "openvino"], write=False, time_per_config_s=0.03)
    assert "int8" not in {c.precision for c in result.candidates}  # a float model is never "int8"
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]), helper.make_node("Relu", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 8])],
                              [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                               numpy_helper.from_array(np.array(0, np.int8), "z")])
    qdq = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    qdq.ir_version = 8
    onnx.save(qdq, str(tmp_path / "q.onnx"))
    result = tune(tmp_path / "q.onnx", write=False, **FAST)
    assert {c.precision for c in result.candidates} == {"int8"}
