"""Direct tests of the transport-free layers, without a network: tensors.py (codecs), request.py
(THE request check), model.py (one version: check, run, outputs, engine options) and dataplane.py
(load, metadata, infer, unload) over a repository of python and ONNX models."""

from __future__ import annotations

import asyncio
import inspect

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from slipway.errors import ServeError
from slipway.serve import tensors
from slipway.serve.dataplane import DataPlane
from slipway.serve.model import ModelVersion, load_version
from slipway.serve.repository import Repository
from slipway.serve.request import RequestError, Signature, check, check_parameters
from slipway.serve.types import InferRequest, InferTensor, Plane, RequestedOutput
from tests.serve.conftest import B, W, _save, gemm_model

# ---------------------------------------------------------------------------------------------
# tensors.py


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "BF16", "INT8", "UINT64", "BOOL"])
def test_raw_round_trip(datatype):
    a = (np.arange(6) % 2).astype(tensors.DATATYPES[datatype]).reshape(2, 3)
    back = tensors.from_raw("x", tensors.to_raw(a), datatype, [2, 3])
    assert back.dtype == a.dtype and back.shape == (2, 3)
    np.testing.assert_array_equal(back.astype(np.float64), a.astype(np.float64))


def test_bytes_raw_and_json():
    a = np.array([b"ab", "c\u00e9", b""], dtype=object)
    raw = tensors.to_raw(a)
    assert raw == b"\x02\0\0\0ab\x03\0\0\0c\xc3\xa9\0\0\0\0"
    assert list(tensors.from_raw("t", raw, "BYTES", [3])) == [b"ab", "c\u00e9".encode(), b""]
    assert tensors.to_json(a) == ["ab", "c\u00e9", ""]
    with pytest.raises(ServeError, match="BYTES data ends after 1 of 2 elements"):
        tensors.from_raw("t", b"\x01\0\0\0a", "BYTES", [2])
    with pytest.raises(ServeError, match="1 bytes left over"):
        tensors.from_raw("t", b"\x01\0\0\0ab", "BYTES", [1])


def test_json_decoding_checks():
    assert tensors.from_json("x", [[1, 2], [3, 4]], "INT32", [2, 2]).dtype == np.int32
    assert tensors.from_json("x", [1.5, 2], "BF16", [2]).dtype == ml_dtypes.bfloat16
    big = tensors.from_json("x", [1, True, 2.5, 2**70], "FP32", [4])  # JSON ints, bools, big ints are numbers
    assert big.dtype == np.float32 and big.tolist() == [1.0, 1.0, 2.5, float(2**70)]
    for data, datatype, message in [
        ([1, 2, 3], "FP32", "3 elements, expected 4"),
        ([1.5, 2, 3, 4], "INT64", "INT64 data must be integers"),
        ([300, 1, 2, 3], "UINT8", "out of range for UINT8"),
        ([2, 0, 1, 1], "BOOL", "BOOL data must be true/false"),
        (["a", "b", "c", "d"], "FP32", "input 'x': data must hold FP32 numbers"),
        (["1", "2", "3", "4"], "FP32", "input 'x': data must hold FP32 numbers"),
        ([[1, 2], [3]], "FP32", "not a regular list of numbers"),
        ([1, 2, 3], "BYTES", "input 'x': 3 elements, expected 4 for BYTES \\[2, 2\\]"),
        (["a", "b", "c", 4], "BYTES", "input 'x': data must hold BYTES strings"),
            (["a", "b", "c", "d"], "INT32", "must hold INT32 numbers"),
    ]:
        with pytest.raises(ServeError, match=message) as e:
            tensors.from_json("x", data, datatype, [2, 2])
        assert e.value.status == 400


def test_small_codec_helpers():
    assert tensors.to_json(np.array([1.5], np.float16)) == [1.5]
    assert tensors.datatype_of(np.dtype("<U3")) == "BYTES" and tensors.datatype_of(np.float32) == "FP32"
    assert tensors.datatype_from_config("TYPE_STRING") == "BYTES" and tensors.config_type("BYTES") == "TYPE_STRING"
    assert tensors.check_shape("x", (2, 3)) == [2, 3]
    for shape, message in [([-1], "negative dimension"), (["1"], "list of integers"), ([True], "list of integers")]:
        with pytest.raises(ServeError, match=message):
            tensors.check_shape("x", shape)
    with pytest.raises(ServeError, match="12 bytes of data, expected 16 for FP32 \\[4\\]"):
        tensors.from_raw("x", b"\0" * 12, "FP32", [4])


# ---------------------------------------------------------------------------------------------
# request.py


def _config(max_batch_size: int = 4, levels: int = 0, reshape: bool = False) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name="m", max_batch_size=max_batch_size,
        input=[mc.ModelInput(name="x", data_type=mc.TYPE_FP32, dims=[4]),
               mc.ModelInput(name="s", data_type=mc.TYPE_STRING, dims=[1], optional=True)],
        output=[mc.ModelOutput(name="y", data_type=mc.TYPE_FP32, dims=[4]),
                mc.ModelOutput(name="z", data_type=mc.TYPE_FP64, dims=[2, 2])],
    )
    if reshape:
        config.input[0].reshape.shape.extend([2, 2])
        config.output[1].reshape.shape.extend([4])
    if levels:
        config.dynamic_batching.priority_levels = levels
        config.dynamic_batching.default_priority_level = levels
    return config


def _request(rows: int = 2, **kw) -> InferRequest:
    x = np.ones((rows, 4), np.float32)
    return InferRequest("m", inputs=[InferTensor("x", "FP32", list(x.shape), x)], **kw)


def test_check_gives_feeds_rows_level_and_outputs():
    sig = Signature.of("m", _config(levels=3, reshape=True))
    checked = check(_request(parameters={"priority": 1, "timeout": 5}, outputs=[RequestedOutput("z", {"a": 1})]),
                    sig)
    assert checked.feeds["x"].shape == (2, 2, 2) and checked.rows == 2
    assert (checked.level, checked.timeout_us) == (0, 5)
    assert [(s.name, p) for s, p in checked.outputs] == [("z", {"a": 1})]
    assert check(_request(), sig).level == 2  # priority 0: the default level (3 -> 0-based 2)
    assert [s.name for s, _ in check(_request(), sig).outputs] == ["y", "z"]


def test_bytes_reach_onnx_engines_as_text_and_python_as_bytes():
    s = np.array([[b"hi"], [b"yo"]], dtype=object)
    req = _request()
    req.inputs.append(InferTensor("s", "BYTES", [2, 1], s))
    assert check(req, Signature.of("m", _config())).feeds["s"][0, 0] == "hi"
    assert check(req, Signature.of("m", _config(), bytes_as_text=False)).feeds["s"][0, 0] == b"hi"
    req.inputs[1] = InferTensor("s", "BYTES", [2, 1], np.array([[b"\xff"], [b"a"]], dtype=object))
    with pytest.raises(RequestError, match="BYTES element 0 is not UTF-8"):
        check(req, Signature.of("m", _config()))


@pytest.mark.parametrize("request_, message", [
    (_request(rows=5), "batch size 5 of the request to model m is outside 1..4"),
    (_request(parameters={"priority": 3}), "priority 3 of the request to model m is outside 1..2"),
    (_request(parameters={"priority": "1"}), "'priority' must be a non-negative integer, got '1'"),
    (_request(parameters={"timeout": 1.5}), "'timeout' must be a non-negative integer, got 1.5"),
    (_request(parameters={"tag": [1]}), "'tag' must be a bool, number or string"),
    (_request(outputs=[RequestedOutput("q")]), "no output 'q' (outputs: y, z)"),
    (InferRequest("m", inputs=[InferTensor("x", "FP32", [4], np.ones(4, np.float32))]), "shape [4] does not match"),
    (InferRequest("m"), "input 'x' is missing"),
])
def test_check_refuses(request_, message):
    with pytest.raises(RequestError) as e:
        check(request_, Signature.of("m", _config(levels=2)))
    assert message in str(e.value) and e.value.status == 400


def test_check_parameters_is_model_free():
    assert check_parameters(_request(parameters={"priority": 7, "binary_data_output": True})) == {
        "priority": 7, "binary_data_output": True}
    with pytest.raises(RequestError, match="binary_data_output"):
        check_parameters(_request(parameters={"binary_data_output": 1}))


# ---------------------------------------------------------------------------------------------
# model.py


def _version(run, config: mc.ModelConfig | None = None, **kw) -> ModelVersion:
    return ModelVersion("m", 1, config or _config(reshape=True), "onnxruntime_onnx", run, 1, **kw)


def test_model_version_runs_a_checked_request_and_shapes_its_outputs():
    seen = []

    def run(i, feeds):
        seen.append(feeds["x"].shape)
        n = feeds["x"].shape[0]
        return {"y": feeds["x"].reshape(n, 4) * 2, "z": np.zeros((n, 4), np.float32)}

    async def main():
        mv = _version(run)
        out = await mv.infer(_request(id="r1"))
        await mv.close()
        return mv, out

    mv, out = asyncio.run(main())
    assert seen == [(2, 2, 2)]  # the config's reshape on the way in
    assert out.id == "r1" and [t.name for t in out.outputs] == ["y", "z"]
    z = out.outputs[1]
    assert (z.datatype, z.shape, z.data.dtype) == ("FP64", [2, 2, 2], np.float64)  # reshaped back, cast to the config
    assert mv.metadata()["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    assert mv.stats.inference_count == 2


def test_model_version_counts_a_refused_request():
    async def main():
        mv = _version(lambda i, feeds: {})
        with pytest.raises(RequestError):
            await mv.infer(_request(rows=9))
        await mv.close()
        return mv

    assert asyncio.run(main()).stats.to_proto().inference_stats.fail.count == 1


def test_python_engine_through_load_version(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("def infer(inputs):\n    return {'y': inputs['x'] + 1, 'z': inputs['x'][:, :2].repeat(2, 1)}\n")
    config = _config()
    config.backend = "python"

    async def main():
        mv = await load_version("m", 1, config, path)
        req = _request()
        req.inputs.append(InferTensor("s", "BYTES", [2, 1], np.array([[b"a"], [b"b"]], dtype=object)))
        out = await mv.infer(req)
        await mv.close()
        return mv, out

    mv, out = asyncio.run(main())
    assert mv.platform == "python" and not mv.signature.bytes_as_text
    np.testing.assert_array_equal(out.outputs[0].data, np.full((2, 4), 2, np.float32))


# ---------------------------------------------------------------------------------------------
# dataplane.py


def test_dataplane_without_a_network(tmp_path):
    _save(gemm_model(), tmp_path / "gemm" / "1" / "model.onnx")
    _save(gemm_model(), tmp_path / "gemm" / "2" / "model.onnx")
    (tmp_path / "gemm" / "config.pbtxt").write_text("version_policy { all { } }\n")

    async def main():
        plane = DataPlane(Repository(tmp_path), control="explicit", models=["*"], threads=1)  # unload: explicit mode
        assert not plane.ready() and await plane.start() == [] and plane.ready()
        meta = plane.model_metadata("gemm")
        assert meta["versions"] == ["1", "2"] and meta["inputs"][0]["shape"] == [-1, 16]
        x = np.ones((3, 16), np.float32)
        out = await plane.infer(InferRequest("gemm", "1", "a", [InferTensor("x", "FP32", [3, 16], x)]))
        np.testing.assert_allclose(out.outputs[0].data, x @ W + B, rtol=1e-5, atol=1e-5)
        assert (out.version, out.id) == ("1", "a")
        errors = {}
        for label, req in {
            "model": InferRequest("nope"),
            "version": InferRequest("gemm", "7"),
            "priority": InferRequest("gemm", inputs=[InferTensor("x", "FP32", [3, 16], x)],
                                     parameters={"priority": "high"}),
        }.items():
            with pytest.raises(ServeError) as e:
                await plane.infer(req)
            errors[label] = (e.value.status, str(e.value))
        stats = plane.model_statistics("gemm", "2").model_stats[0]
        await plane.unload_model("gemm")
        with pytest.raises(ServeError) as e:
            await plane.infer(InferRequest("gemm", inputs=[InferTensor("x", "FP32", [3, 16], x)]))
        unloaded = e.value.status
        await plane.shutdown()
        return errors, stats, unloaded, plane.ready()

    errors, stats, unloaded, ready = asyncio.run(main())
    assert errors == {"model": (404, "unknown model 'nope'"),
                      "version": (404, "model 'gemm' has no version 7 loaded (loaded: 1, 2)"),
                      "priority": (400, "request parameter 'priority' must be a non-negative integer, got 'high'")}
    assert stats.version == "2" and unloaded == 503 and not ready


def test_dataplane_is_the_plane_the_adapters_type():
    for name, member in inspect.getmembers(Plane, inspect.isfunction):
        if name.startswith("_"):
            continue
        mine = getattr(DataPlane, name)
        assert list(inspect.signature(mine).parameters) == list(inspect.signature(member).parameters), name
        assert inspect.iscoroutinefunction(mine) == inspect.iscoroutinefunction(member), name


@pytest.mark.parametrize(("datatype", "value", "ok"), [
    ("FP16", 70000.0, False), ("FP16", 65504.0, True), ("FP16", -65504.0, True), ("BF16", 1e39, False),
    ("FP32", 1e39, False), ("FP32", 3.0e38, True), ("FP64", 1e300, True), ("FP16", float("inf"), True),
    ("FP16", float("nan"), True),
])
def test_json_floats_past_the_datatype_are_refused_not_made_infinite(datatype, value, ok):
    """A finite JSON number the datatype cannot hold would become inf silently; non-finite ones are what was sent."""
    if ok:
        got = tensors.from_json("x", [value], datatype, [1])
        assert got.dtype == tensors.numpy_dtype(datatype)
        np.testing.assert_array_equal(got.astype(np.float64), np.asarray([value]).astype(got.dtype).astype(np.float64))
    else:
        with pytest.raises(ServeError, match=f"^input 'x': a value is out of range for {datatype}$"):
            tensors.from_json("x", [value], datatype, [1])
