"""The engine registry (one registration per engine) and THE tuned-settings rule (backends.choose)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import slipway
from slipway import backends
from slipway.backends import BACKENDS, ENGINES, Options, choose, served_by
from slipway.errors import UserError
from slipway.settings import digest, settings_path


def _model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_every_engine_reads_its_model_files_or_needs_them_declared(tmp_path):
    """Engine.io: "module:function" read on use; "" (python) means config.pbtxt declares the tensors; the
    pipeline engine reads a pipeline file's names, untyped (the config types them)."""
    path = _model(tmp_path / "m.onnx")
    for engine in ENGINES.values():
        if not engine.io:
            assert engine.name == "python"
            with pytest.raises(UserError, match="reads no inputs or outputs"):
                engine.read_io(path, "m.onnx")
            continue
        if engine.name == "pipeline":
            with pytest.raises(UserError, match="^m.onnx: "):
                engine.read_io(path, "m.onnx")
            continue
        inputs, outputs = engine.read_io(path, "m.onnx")
        f32 = np.dtype(np.float32)
        assert [(t.name, t.dtype, t.shape, t.type) for t in inputs + outputs] == [
            ("x", f32, ("n", 4), "ONNX type FLOAT"), ("y", f32, ("n", 4), "ONNX type FLOAT")]
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="^shown/bad.onnx is not a readable ONNX model: "):
        ENGINES["ort"].read_io(tmp_path / "bad.onnx", "shown/bad.onnx")


def _tune(path, backend="ort", threads=1):
    settings_path(path).write_text(json.dumps({
        "backend": backend, "options": {"threads": threads, "precision": "fp32", "settings": {}},
        "batch": 1, "concurrency": 1, "model_sha256": digest(path)}))


def test_one_registration_feeds_every_table():
    assert list(BACKENDS) == [n for n, e in ENGINES.items() if e.onnx]
    assert "python" in ENGINES and "python" not in BACKENDS  # served only: bench/tune/compare don't offer it
    assert set(backends.available()) == set(BACKENDS)
    assert served_by("onnxruntime").name == "ort" and served_by("onnxruntime", "gpu").name == "ort-cuda"
    assert served_by("openvino", "gpu").name == "openvino-gpu" and served_by("python").name == "python"
    assert served_by("pytorch") is None
    with pytest.raises(ValueError, match="registered twice"):
        backends.register(ENGINES["ort"])
    with pytest.raises(UserError, match="unknown backend 'nope'"):
        backends.get("nope")


def test_choose_applies_tuned_settings_by_one_rule(tmp_path):
    path = _model(tmp_path / "m.onnx")
    assert choose(path) == backends.Choice("ort", Options(), False)
    _tune(path, threads=3)
    tuned = choose(path)
    assert (tuned.backend, tuned.options.threads, tuned.tuned) == ("ort", 3, True)
    assert choose(path, "ort", Options(threads=2)).options.threads == 2  # explicit options win
    assert not choose(path, "openvino").tuned  # tuned for another engine than the one asked for
    assert choose(path, tuned=False) == backends.Choice("ort", Options(), False)
    assert choose(path, family="ort", device="cpu").tuned
    gpu = choose(path, family="ort", device="gpu")  # a KIND_GPU config: CPU-tuned settings don't apply
    assert (gpu.backend, gpu.tuned) == ("ort-cuda", False)
    assert choose(path, family="openvino", device="cpu").backend == "openvino"


def test_slipway_load_reads_no_settings_but_backends_load_finds_them(tmp_path):
    path = _model(tmp_path / "m.onnx")
    _tune(path, threads=1)
    model = slipway.load(path)
    assert not any("tune" in key for key in model.meta)  # the lowest layer knows nothing of tune
    assert backends.tuned_settings(model)["options"]["threads"] == 1
    session = backends.load(model, backend=None)
    assert session.options.threads == 1
    np.testing.assert_array_equal(session.run({"x": -np.ones((2, 4), np.float32)})["y"], np.zeros((2, 4)))


def test_python_engine(tmp_path):
    py = tmp_path / "model.py"
    py.write_text("def infer(inputs):\n    return {'y': inputs['x'] * 2, 'z': inputs['x']}\n")
    engine = backends.get("python")
    assert engine.available() is None
    a, b = engine.load(str(py), instances=2)
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(a.run({"x": x}, ["y"])["y"], x * 2)
    assert list(b.run({"x": x})) == ["y", "z"] and a.inputs == []
    (tmp_path / "bad.py").write_text("raise RuntimeError('nope')\n")
    with pytest.raises(UserError, match="failed to import: RuntimeError: nope"):
        engine.load(str(tmp_path / "bad.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(UserError, match="must define infer"):
        engine.load(str(tmp_path / "empty.py"))
