"""optimize(): the whole pipeline - passes, verification, never-slower decision, metadata, errors."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from onnx import helper

from slipway import optimize as opt_module
from slipway.cli import main
from slipway.errors import UserError
from slipway.optimize import optimize
from slipway.perf.ab import latency_ratio
from tests.passes.util import make, op_types, run, tensor


def _conv_bn_model(batch: int | str = "batch"):
    """x -> Identity -> Conv -> BatchNormalization -> Dropout -> Relu -> y"""
    rng = np.random.default_rng(0)
    inits = {
        "W": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "B": rng.standard_normal(8).astype(np.float32),
        "s": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "b": rng.standard_normal(8).astype(np.float32),
        "m": rng.standard_normal(8).astype(np.float32),
        "v": rng.uniform(0.5, 1.5, 8).astype(np.float32),
    }
    nodes = [
        helper.make_node("Identity", ["x"], ["x1"], name="id"),
        helper.make_node("Conv", ["x1", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
        helper.make_node("Dropout", ["n"], ["d"], name="drop"),
        helper.make_node("Relu", ["d"], ["y"], name="relu"),
    ]
    return make(nodes, [tensor("x", [batch, 3, 16, 16])], [tensor("y", [batch, 8, 16, 16])], inits)


def test_pipeline_fuses_verifies_and_records(tmp_path):
    out = tmp_path / "o.onnx"
    result = optimize(_conv_bn_model(), out, speed_check=False)
    assert op_types(result.model) == ["Conv", "Relu"]
    assert result.nodes_before == 5 and result.nodes_after == 2
    assert result.verification.ok and result.verification.batch_sizes == [1, 3]
    totals = result.to_dict()["passes"]
    assert totals["fuse-batchnorm"] == 1 and totals["fold-constants"] + totals["eliminate"] >= 2  # Identity, Dropout
    saved = onnx.load(str(out))
    meta = {p.key: p.value for p in saved.metadata_props}
    assert meta["slipway.optimize.ok"] == "true"
    assert float(meta["slipway.optimize.y.max_abs"]) < 1e-4
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run(result.model, {"x": x})[0], run(_conv_bn_model(), {"x": x})[0], atol=1e-4)


def test_never_slower_keeps_the_input_when_the_result_is_slower(monkeypatch, tmp_path):
    monkeypatch.setattr(opt_module, "latency_compare", lambda a, b, *args: opt_module.Speed(1.0, 2.0, 1.0, 9))
    result = optimize(_conv_bn_model(), tmp_path / "o.onnx")
    assert result.decision.startswith("input kept")
    assert op_types(result.model) == ["Identity", "Conv", "BatchNormalization", "Dropout", "Relu"]
    assert result.latency_after_ms == result.latency_before_ms == 1.0


def test_never_slower_keeps_a_faster_result(monkeypatch):
    monkeypatch.setattr(opt_module, "latency_compare", lambda a, b, *args: opt_module.Speed(2.0, 1.0, 0.0, 9))
    result = optimize(_conv_bn_model(), None)
    assert result.decision == "optimized model kept" and result.nodes_after == 2


def test_noise_alone_does_not_throw_an_optimization_away(monkeypatch):
    # 5% slower by the median but slower in only half the paired blocks: machine noise, kept
    monkeypatch.setattr(opt_module, "latency_compare", lambda a, b, *args: opt_module.Speed(1.0, 1.05, 0.5, 9))
    result = optimize(_conv_bn_model(), None)
    assert result.decision == "optimized model kept" and result.nodes_after == 2


def test_latency_ratio_tells_a_slower_function_apart():
    speed = latency_ratio(lambda: time.sleep(0.001), lambda: time.sleep(0.003), budget_s=0.3)
    assert speed.b_ms > 2 * speed.a_ms and speed.b_slower_share == 1.0 and speed.blocks >= 7


def test_real_timing_on_ort_never_reports_slower():
    result = optimize(_conv_bn_model(), None)
    assert result.latency_before_ms > 0 and result.latency_after_ms > 0 and result.verification.ok
    assert result.decision == "optimized model kept" or result.decision.startswith("input kept")


def test_skip_and_passes_choose_what_runs():
    result = optimize(_conv_bn_model(), None, skip=["fuse-batchnorm"], speed_check=False)
    assert "BatchNormalization" in op_types(result.model)
    result = optimize(_conv_bn_model(), None, passes=["fuse-batchnorm"], speed_check=False)
    assert op_types(result.model) == ["Identity", "Conv", "Dropout", "Relu"]


def test_bad_input_writes_nothing(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    out = tmp_path / "o.onnx"
    with pytest.raises(UserError):
        optimize(bad, out)
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    with pytest.raises(UserError, match="unknown --target"):
        optimize(_conv_bn_model(), None, target="tpu")


def test_cli_json(tmp_path, capsys):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(
        __import__("onnx_ir").serde.serialize_model(_conv_bn_model())), str(src))
    with pytest.raises(SystemExit) as e:
        main(["optimize", str(src), "-o", str(out), "--json", "--no-speed-check"])
    assert e.value.code == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("nodes_before", "nodes_after", "verification", "latency_before_ms", "latency_after_ms", "passes"):
        assert key in data
    assert data["nodes_before"] == 5 and data["nodes_after"] == 2
    assert data["verification"]["ok"] is True and data["verification"]["max_abs"] < 1e-4
    assert out.exists()


def test_cli_needs_an_output(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["optimize", str(tmp_path / "x.onnx")])
    assert e.value.code == 1
    assert "-o OUT" in capsys.readouterr().err


@pytest.mark.slow
def test_model_over_2gb_with_external_weights(tmp_path):
    """2.3 GB of weights in a side file: passes run, verification and timing go through files, and the
    result is written with external data."""
    import onnx_ir as ir

    import slipway

    n = 24_000
    big = ir.Tensor(np.full((n, n), 1e-4, np.float32), name="W")
    proto = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["x1"]), helper.make_node("MatMul", ["x1", "W"], ["m"]),
         helper.make_node("Dropout", ["m"], ["y"])],
        "big", [tensor("x", ["batch", n])], [tensor("y", ["batch", n])]),
        opset_imports=[helper.make_operatorsetid("", 17)])
    proto.ir_version = 8
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(1, np.float32), "W"))  # placeholder
    model = ir.serde.deserialize_model(proto)
    model.graph.initializers.pop("W")
    model.graph.register_initializer(ir.Value(name="W", const_value=big, shape=big.shape,
                                              type=ir.TensorType(ir.DataType.FLOAT)))
    src = slipway.save(model, tmp_path / "big.onnx")
    del model, big
    out = tmp_path / "big.opt.onnx"
    result = optimize(src, out)
    assert op_types(result.model) == ["MatMul"] and result.verification.ok
    assert (tmp_path / "big.opt.onnx.data").stat().st_size >= n * n * 4
    assert out.stat().st_size < 10_000_000
    back = slipway.load(out)
    assert [nd.op_type for nd in back.graph] == ["MatMul"]
