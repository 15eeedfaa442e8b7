"""The OpenVINO CPU backend: numerics against onnxruntime, dynamic shapes, settings, precisions, errors."""

from __future__ import annotations

import sys

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from slipway.backends import Options, get, load
from slipway.errors import MissingDependencyError, UserError
from tests.backends.test_ort import BAD_FEEDS, mlp, reference, two_io, x
from tests.passes.util import make, tensor

pytest.importorskip("openvino")

import slipway.backends.openvino as ovb  # noqa: E402

RNG = np.random.default_rng(1)
ATOL = 1e-4


@pytest.mark.parametrize("settings", [
    {}, {"hint": "latency"}, {"hint": "throughput"}, {"streams": "auto"}, {"streams": 1}, {"streams": 3},
    {"hint": "throughput", "streams": 2},
], ids=str)
def test_mlp_matches_onnxruntime(settings):
    model = mlp()
    (session,) = get("openvino").load(model, Options(threads=1, settings=settings))
    assert session.backend == "openvino"
    for batch in (1, 5):  # the batch dim stays dynamic
        feeds = x(batch)
        out = session.run(feeds)
        assert list(out) == ["y"] and out["y"].shape == (batch, 4)
        np.testing.assert_allclose(out["y"], reference(model, feeds)[0], rtol=1e-4, atol=ATOL)


def test_inputs_outputs_keyed_by_onnx_names():
    model = two_io()
    session = load(model, "openvino")
    assert [(t.name, t.shape, t.dtype) for t in session.inputs] == [
        ("x", (None, 3), np.dtype(np.float32)), ("i", (None, 3), np.dtype(np.int64))]
    assert [t.name for t in session.outputs] == ["z", "y", "h"]
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32), "i": np.arange(6, dtype=np.int64).reshape(2, 3)}
    want = dict(zip(["z", "y", "h"], reference(model, feeds), strict=True))
    out = session.run(feeds)
    assert list(out) == ["z", "y", "h"]
    for k in want:
        np.testing.assert_allclose(out[k], want[k], atol=1e-6)
    assert list(session.run(feeds, outputs=["h", "z"])) == ["h", "z"]
    with pytest.raises(UserError, match="unknown output 'q'"):
        session.run(feeds, outputs=["q"])


def test_outputs_are_copies_not_views_of_openvino_memory():
    session = load(mlp(), "openvino")
    first = session.run(x(2))["y"]
    kept = first.copy()
    for _ in range(3):
        session.run(x(2))
    np.testing.assert_array_equal(first, kept)
    assert first.flags.owndata


def test_non_contiguous_feeds():
    model = mlp()
    wide = RNG.standard_normal((3, 32)).astype(np.float32)
    feeds = {"x": wide[:, ::2]}
    assert not feeds["x"].flags.c_contiguous
    out = load(model, "openvino").run(feeds)["y"]
    np.testing.assert_allclose(out, reference(model, {"x": np.ascontiguousarray(feeds["x"])})[0], atol=ATOL)


@pytest.mark.parametrize(("feeds", "message"), BAD_FEEDS)
def test_bad_feeds_give_one_line_user_errors(feeds, message):
    session = load(mlp(), "openvino")
    with pytest.raises(UserError) as info:
        session.run(feeds)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("options", "message"), [
    (Options(settings={"nope": 1}), "unknown setting 'nope'"),
    (Options(settings={"hint": "fastest"}), "hint='fastest' is not valid"),
    (Options(settings={"streams": 0}), "streams=0 is not valid"),
    (Options(settings={"streams": "many"}), "streams='many' is not valid"),
    (Options(threads=-1), "threads must be an integer >= 0"),
    (Options(precision="fp64"), "precision 'fp64' is not supported"),
])
def test_bad_options_give_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        get("openvino").load(mlp(), options)


def test_precisions_follow_the_cpu_capabilities():
    caps = ovb.core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    backend = get("openvino")
    assert "fp32" in backend.precisions
    assert ("bf16" in backend.precisions) == ("BF16" in caps)
    assert ("fp16" in backend.precisions) == ("FP16" in caps)
    model = mlp()
    for precision in ("fp16", "bf16"):
        if precision in backend.precisions:
            (session,) = backend.load(model, Options(precision=precision))
            feeds = x(3)
            np.testing.assert_allclose(session.run(feeds)["y"], reference(model, feeds)[0], rtol=0.05, atol=0.1)
        else:
            with pytest.raises(UserError, match=f"precision '{precision}' is not supported here"):
                backend.load(model, Options(precision=precision))


# OPTIMIZATION_CAPABILITIES as OpenVINO's CPU plugin reports them: BF16 with AVX512-BF16 / AMX, FP16
# with AVX512-FP16 / AMX-FP16 or on ARM; the precisions offered must follow them on every CPU
CPU_CAPABILITIES = {
    "avx2": (["FP32", "INT8", "BIN", "EXPORT_IMPORT"], ("fp32", "int8")),
    "avx512_vnni": (["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"], ("fp32", "int8")),
    "amx": (["BF16", "WINOGRAD", "FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT"], ("fp32", "bf16", "fp16", "int8")),
    "arm_sdot": (["FP32", "FP16", "INT8", "EXPORT_IMPORT"], ("fp32", "fp16", "int8")),
}


@pytest.mark.parametrize("cpu", list(CPU_CAPABILITIES))
def test_precisions_per_cpu_variant(monkeypatch, cpu):
    caps, expected = CPU_CAPABILITIES[cpu]

    class FakeCore:  # what the device reports, forced; nothing is compiled
        available_devices = ["CPU"]

        def get_property(self, device, name):
            assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return caps

        def read_model(self, source):
            raise RuntimeError("not compiled in this test")

    monkeypatch.setattr(ovb, "core", FakeCore)
    backend = get("openvino")
    assert backend.precisions == expected
    for precision in ("bf16", "fp16"):
        if precision not in expected:
            with pytest.raises(UserError, match=f"precision '{precision}' is not supported here"):
                backend.load(mlp(), Options(precision=precision))


def test_config_reaches_the_compiled_model():
    (session,) = get("openvino").load(mlp(), Options(threads=2, settings={"hint": "throughput", "streams": 2}))
    compiled = session._compiled
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert compiled.get_property("NUM_STREAMS") == 2
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert str(compiled.get_property("PERFORMANCE_HINT")) .endswith("THROUGHPUT")


def test_instances_are_requests_on_one_compiled_model():
    model = mlp()
    sessions = get("openvino").load(model, instances=3)
    assert len({id(s._compiled) for s in sessions}) == 1
    assert len({id(s._request) for s in sessions}) == 3
    feeds = x(2)
    for s in sessions:
        np.testing.assert_allclose(s.run(feeds)["y"], reference(model, feeds)[0], rtol=1e-4, atol=ATOL)
    sessions[0].close()
    with pytest.raises(UserError, match="closed"):
        sessions[0].run(feeds)
    assert sessions[1].run(feeds)["y"].shape == (2, 4)


def test_errors_while_running_are_user_errors():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
    model = make(nodes, [tensor("x", ["n"])], [tensor("y", [2, None])], {"s": np.array([2, -1], np.int64)})
    session = load(model, "openvino")
    np.testing.assert_array_equal(session.run({"x": np.arange(4, dtype=np.float32)})["y"], [[0, 1], [2, 3]])
    with pytest.raises(UserError, match="openvino could not run the model") as info:
        session.run({"x": np.arange(3, dtype=np.float32)})
    assert "\n" not in str(info.value)


def test_bad_models_give_user_errors(tmp_path):
    with pytest.raises(UserError, match="model file not found"):
        load(tmp_path / "missing.onnx", "openvino")
    with pytest.raises(UserError, match="openvino cannot load the model") as info:
        load(b"\x08\x07garbage", "openvino")
    assert "\n" not in str(info.value)


def test_model_forms(tmp_path):
    from slipway.model import save

    model = mlp()
    feeds = x(2)
    want = reference(model, feeds)[0]
    path = save(model, tmp_path / "ext.onnx", external_data=True)
    for form in (model, ir.serde.serialize_model(model), str(path), ir.load(path)):
        np.testing.assert_allclose(load(form, "openvino").run(feeds)["y"], want, rtol=1e-4, atol=ATOL)


def test_missing_openvino_is_a_clear_error(monkeypatch):
    ovb.core.cache_clear()
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    try:
        why = get("openvino").available()
        assert why and "pip install 'slipway[openvino]'" in why
        assert get("openvino").precisions == ()
        with pytest.raises(UserError, match="openvino is not installed"):
            ovb.OpenVINOSession("openvino", object())
        with pytest.raises(UserError, match="not available: openvino is not installed"):
            load(mlp(), "openvino")
        assert isinstance(MissingDependencyError("openvino", "openvino"), UserError)
    finally:
        ovb.core.cache_clear()


@pytest.mark.parametrize("name", ["repvgg", "transformer"])
def test_zoo_models_match_onnxruntime(name):
    from tests.zoo import export

    path = str(export(name))
    session = load(path, "openvino", Options(threads=2))
    shape = (2, 3, 64, 64) if name == "repvgg" else (2, 7, 32)
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    want = reference(path, feeds)[0]
    got = session.run(feeds)["y"]
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=ATOL * scale)
