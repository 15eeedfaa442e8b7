"""The onnxruntime CPU backend: numerics against a plain InferenceSession, feeds, settings, model forms."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import slipway.backends.base as base
from slipway.backends import BACKENDS, Options, Session, available, get, load
from slipway.backends.ort import SETTINGS
from slipway.errors import UserError
from slipway.model import save
from tests.passes.util import make, tensor

RNG = np.random.default_rng(0)


def mlp(width: int = 32) -> ir.Model:
    """Gemm -> Relu -> Gemm with a dynamic batch dim: x [batch, 16] -> y [batch, 4]."""
    w = {"w1": (16, width), "b1": (width,), "w2": (width, 4), "b2": (4,)}
    inits = {k: RNG.standard_normal(s).astype(np.float32) for k, s in w.items()}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    return make(nodes, [tensor("x", ["batch", 16])], [tensor("y", ["batch", 4])], inits)


def two_io() -> ir.Model:
    """float and int64 inputs; three outputs in the order z, y, h (h is also an intermediate)."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Identity", ["h"], ["y"]),
             helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT), helper.make_node("Add", ["h", "f"], ["z"])]
    inputs = [tensor("x", ["n", 3]), tensor("i", ["n", 3], TensorProto.INT64)]
    outputs = [tensor("z", ["n", 3]), tensor("y", ["n", 3]), tensor("h", ["n", 3])]
    return make(nodes, inputs, outputs)


def reference(model: ir.Model | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A plain onnxruntime session, default options but one intra-op thread: the reference must not
    depend on the host's core count (how a kernel splits its work between threads)."""
    source = model if isinstance(model, str) else ir.serde.serialize_model(model).SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def x(batch: int) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((batch, 16)).astype(np.float32)}


SETTING_VALUES = [(k, v) for k, values in SETTINGS.items() for v in values] + [("inter_op_threads", 3)]


@pytest.mark.parametrize(("name", "value"), SETTING_VALUES, ids=lambda v: str(v))
def test_each_setting_matches_plain_onnxruntime(name, value):
    model = mlp()
    settings = {name: value}
    if name == "inter_op_threads":
        settings["execution_mode"] = "parallel"
    (session,) = get("ort").load(model, Options(threads=1, settings=settings))
    assert isinstance(session, Session) and session.backend == "ort"
    for batch in (1, 3):
        feeds = x(batch)
        out = session.run(feeds)
        assert list(out) == ["y"] and out["y"].shape == (batch, 4)
        np.testing.assert_allclose(out["y"], reference(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_all_settings_together():
    settings = {"graph_optimization_level": "extended", "execution_mode": "parallel", "inter_op_threads": 2,
                "io_binding": True, "arena": False, "mem_pattern": False, "spin": False}
    model = mlp()
    session = load(model, "ort", Options(threads=2, settings=settings))
    feeds = x(5)
    np.testing.assert_allclose(session.run(feeds)["y"], reference(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("io_binding", [False, True])
def test_inputs_outputs_and_output_subsets(io_binding):
    model = two_io()
    session = load(model, "ort", Options(settings={"io_binding": io_binding}))
    assert [(t.name, t.shape, t.dtype) for t in session.inputs] == [
        ("x", ("n", 3), np.dtype(np.float32)), ("i", ("n", 3), np.dtype(np.int64))]
    assert [t.name for t in session.outputs] == ["z", "y", "h"]
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32), "i": np.arange(6, dtype=np.int64).reshape(2, 3)}
    want = dict(zip(["z", "y", "h"], reference(model, feeds), strict=True))
    out = session.run(feeds)
    assert list(out) == ["z", "y", "h"]
    for k in want:
        np.testing.assert_array_equal(out[k], want[k])
    sub = session.run(feeds, outputs=["h", "z"])
    assert list(sub) == ["h", "z"]
    np.testing.assert_array_equal(sub["z"], want["z"])
    with pytest.raises(UserError, match="unknown output 'q'"):
        session.run(feeds, outputs=["q"])


@pytest.mark.parametrize("io_binding", [False, True])
def test_outputs_are_materialized(io_binding):
    session = load(mlp(), "ort", Options(settings={"io_binding": io_binding}))
    first = session.run(x(2))["y"]
    kept = first.copy()
    for _ in range(3):
        session.run(x(2))
    np.testing.assert_array_equal(first, kept)
    assert first.flags.writeable


BAD_FEEDS = [
    ({"x": np.ones((1, 16))}, "input 'x': expected dtype float32, got float64"),
    ({"x": np.ones((16,), np.float32)}, "input 'x': expected rank 2"),
    ({"x": np.ones((1, 8), np.float32)}, "input 'x': dim 1 must be 16"),
    ({"x": np.ones((1, 16), np.float32), "z": np.ones(1)}, "unknown input 'z'"),
    ({"z": np.ones((1, 16), np.float32)}, "unknown input 'z'"),
    ({}, "missing input 'x'"),
    ({"x": [[1.0] * 16]}, "input 'x' must be a numpy array, got list"),
]


@pytest.mark.parametrize(("feeds", "message"), BAD_FEEDS)
@pytest.mark.parametrize("io_binding", [False, True])
def test_bad_feeds_give_one_line_user_errors(feeds, message, io_binding):
    session = load(mlp(), "ort", Options(settings={"io_binding": io_binding}))
    with pytest.raises(UserError) as info:
        session.run(feeds)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_feeds_must_be_a_mapping():
    session = load(mlp(), "ort")
    with pytest.raises(UserError, match="feeds must be a mapping"):
        session.run([np.ones((1, 16), np.float32)])


def test_errors_while_running_are_user_errors():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
    model = make(nodes, [tensor("x", ["n"])], [tensor("y", [2, None])], {"s": np.array([2, -1], np.int64)})
    session = load(model, "ort")
    np.testing.assert_array_equal(session.run({"x": np.arange(4, dtype=np.float32)})["y"], [[0, 1], [2, 3]])
    with pytest.raises(UserError, match="onnxruntime could not run the model"):
        session.run({"x": np.arange(3, dtype=np.float32)})


@pytest.mark.parametrize(("options", "message"), [
    (Options(settings={"nope": 1}), "unknown setting 'nope'"),
    (Options(settings={"graph_optimization_level": "max"}), "graph_optimization_level='max' is not valid"),
    (Options(settings={"io_binding": "yes"}), "io_binding='yes' is not valid"),
    (Options(settings={"inter_op_threads": -1}), "inter_op_threads=-1 is not valid"),
    (Options(settings={"spin": 1}), "spin=1 is not valid"),
    (Options(threads=-2), "threads must be an integer >= 0"),
    (Options(precision="fp16"), "not supported on ORT CPU"),
    (Options(precision="fp64"), "not supported on ORT CPU"),
])
def test_bad_options_give_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        get("ort").load(mlp(), options)


def test_instances_must_be_positive():
    with pytest.raises(UserError, match="instances must be an integer >= 1"):
        get("ort").load(mlp(), instances=0)


def test_table_and_lookup():
    assert set(BACKENDS) >= {"ort", "ort-cuda", "ort-tensorrt", "openvino", "openvino-gpu"}
    with pytest.raises(UserError, match="unknown backend 'nope'"):
        get("nope")
    with pytest.raises(UserError, match="unknown backend"):
        load(mlp(), "nope")
    status = available()
    assert status["ort"] is None
    assert all(v is None or (isinstance(v, str) and v) for v in status.values())
    ort_cpu = get("ort")
    assert ort_cpu.name == "ort" and ort_cpu.precisions == ("fp32", "int8")
    assert set(ort_cpu.settings) == set(SETTINGS)


def test_model_forms_give_the_same_numbers(tmp_path):
    model = mlp()
    feeds = x(2)
    want = reference(model, feeds)[0]
    proto = ir.serde.serialize_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    for form in (model, proto, proto.SerializeToString(), str(path), path):
        np.testing.assert_allclose(load(form, "ort").run(feeds)["y"], want, rtol=1e-5, atol=1e-6)


def test_external_data_and_big_models_go_through_a_temporary_file(tmp_path, monkeypatch):
    model = mlp(width=512)
    feeds = x(2)
    want = reference(model, feeds)[0]
    path = save(model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    loaded = ir.load(path)  # its weights are ExternalTensors pointing at ext.onnx.data
    np.testing.assert_allclose(load(loaded, "ort").run(feeds)["y"], want, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(base, "_BYTES_LIMIT", 1000)  # as if the model were over protobuf's 2 GB
    for form in (model, ir.serde.serialize_model(model)):
        np.testing.assert_allclose(load(form, "ort").run(feeds)["y"], want, rtol=1e-5, atol=1e-5)


def test_bad_model_sources(tmp_path):
    with pytest.raises(UserError, match="model file not found"):
        load(tmp_path / "missing.onnx", "ort")
    with pytest.raises(UserError, match="onnxruntime cannot load the model"):
        load(b"\x08\x07garbage", "ort")
    with pytest.raises(UserError, match="cannot load a model from int"):
        load(42, "ort")


def test_qdq_int8_model_runs_as_held():
    scale, zero = np.float32(0.05), np.int8(0)
    w = np.clip(np.round(RNG.standard_normal((16, 8)) / 0.02), -127, 127).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "z"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    inits = {"s": np.array(scale), "z": np.array(zero), "w": w, "ws": np.array(np.float32(0.02))}
    model = make(nodes, [tensor("x", ["batch", 16])], [tensor("y", ["batch", 8])], inits)
    feeds = x(3)
    out = get("ort").load(model, Options(precision="int8"))[0].run(feeds)["y"]
    np.testing.assert_allclose(out, reference(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_instances_share_one_session_and_run_concurrently():
    model = mlp()
    sessions = get("ort").load(model, Options(threads=1), instances=3)
    assert len({id(s._sess) for s in sessions}) == 1
    feeds = [x(4) for _ in sessions]
    want = [reference(model, f)[0] for f in feeds]
    results: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        results[i] = [sessions[i].run(feeds[i])["y"] for _ in range(200)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        for out in outs:
            np.testing.assert_allclose(out, want[i], rtol=1e-5, atol=1e-5)
    sessions[0].close()
    sessions[0].close()  # closing twice is harmless
    with pytest.raises(UserError, match="closed"):
        sessions[0].run(feeds[0])
    np.testing.assert_allclose(sessions[1].run(feeds[1])["y"], want[1], rtol=1e-5, atol=1e-5)


def test_zoo_model_matches_plain_onnxruntime():
    from tests.zoo import export

    path = str(export("repvgg"))
    session = load(path, "ort", Options(threads=2, settings={"io_binding": True}))
    (info,) = session.inputs
    assert info.shape[0] == "batch" and info.shape[1:] == (3, 64, 64)
    feeds = {"x": RNG.standard_normal((2, 3, 64, 64)).astype(np.float32)}
    np.testing.assert_allclose(session.run(feeds)["y"], reference(path, feeds)[0], rtol=1e-4, atol=1e-4)
