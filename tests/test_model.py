"""Model I/O: load, validate, summarize, save atomically, external data, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import slipway
from slipway import model as model_mod
from slipway.errors import UserError
from tests.zoo import export


def tiny_model(opset: int = 17, domain: str = "", op: str = "Relu", weight: np.ndarray | None = None) -> onnx.ModelProto:
    w = weight if weight is not None else np.arange(12, dtype=np.float32).reshape(3, 4)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node(op, ["h"], ["y"], name="act", domain=domain),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def write(tmp_path: Path, proto: onnx.ModelProto, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    p.write_bytes(proto.SerializeToString())
    return p


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_summary_of_zoo_model_keeps_symbolic_batch() -> None:
    s = slipway.summary(slipway.load(export("resnet18")))
    assert s["inputs"] == [{"name": "x", "dtype": "float", "shape": ["batch", 3, 224, 224]}]
    assert s["outputs"][0]["shape"] == ["batch", 1000]
    assert s["op_histogram"]["Conv"] == 20
    assert s["op_histogram"]["Gemm"] == 1
    assert s["nodes"] == sum(s["op_histogram"].values())
    assert s["opsets"]["ai.onnx"] >= 17
    # The exporter folds BN into Conv: torch's 11,689,512 params lose BN's gamma and beta
    # (2 x 4,800 BN channels) and gain one conv bias per BN channel (4,800).
    assert s["params"] == 11_689_512 - 2 * 4_800 + 4_800
    assert s["param_bytes"] == 4 * s["params"]
    assert s["file_bytes"] == export("resnet18").stat().st_size


def test_shape_inference_fills_intermediate_shapes() -> None:
    m = slipway.load(export("mobilenetv2"))
    shapes = [v.shape for n in m.graph for v in n.outputs]
    assert all(s is not None for s in shapes)
    assert any(s is not None and len(s) == 4 and str(s[0]) == "batch" for s in shapes)


def test_save_roundtrip_and_never_overwrites_input(tmp_path: Path) -> None:
    src = write(tmp_path, tiny_model())
    m = slipway.load(src)
    with pytest.raises(UserError, match="refusing to overwrite the input"):
        slipway.save(m, src)
    out = slipway.save(m, tmp_path / "sub" / "out.onnx")
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(out, x), run(src, x))
    slipway.save(m, src, overwrite=True)
    assert slipway.load(src) is not None


def test_external_data_roundtrip(tmp_path: Path) -> None:
    w = np.random.default_rng(1).standard_normal((30, 40)).astype(np.float32)
    m = slipway.load(write(tmp_path, tiny_model(weight=w)))
    out = slipway.save(m, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size >= w.nbytes
    assert out.stat().st_size < w.nbytes
    back = slipway.load(out)
    np.testing.assert_array_equal(back.graph.initializers["w"].const_value.numpy(), w)
    x = np.ones((2, 30), np.float32)
    np.testing.assert_allclose(run(out, x), np.maximum(x @ w, 0), rtol=1e-6)
    assert slipway.summary(back)["file_bytes"] > w.nbytes


def test_external_model_saved_inline_elsewhere_is_self_contained(tmp_path: Path) -> None:
    w = np.random.default_rng(2).standard_normal((30, 40)).astype(np.float32)
    (tmp_path / "a").mkdir()
    ext = slipway.save(slipway.load(write(tmp_path / "a", tiny_model(weight=w))), tmp_path / "a" / "ext.onnx",
                       external_data=True)
    inline = slipway.save(slipway.load(ext), tmp_path / "b" / "inline.onnx", external_data=False)
    (tmp_path / "a" / "ext.onnx.data").unlink()
    assert not (tmp_path / "b" / "inline.onnx.data").exists()
    np.testing.assert_array_equal(slipway.load(inline).graph.initializers["w"].const_value.numpy(), w)


def test_big_weights_go_external_automatically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod, "EXTERNAL_THRESHOLD", 16)
    m = slipway.load(write(tmp_path, tiny_model(weight=np.ones((32, 32), np.float32))))
    slipway.save(m, tmp_path / "auto.onnx")
    assert (tmp_path / "auto.onnx.data").exists()


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = slipway.load(write(tmp_path, tiny_model()))
    target = tmp_path / "out"
    target.mkdir()

    def boom(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ir, "save", boom)
    with pytest.raises(OSError):
        slipway.save(m, target / "x.onnx", external_data=True)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.onnx", "model file not found"),
        (lambda d: _bytes(d, export("repvgg").read_bytes()[:5000]), "truncated or corrupt"),
        (lambda d: _bytes(d, b"\x89PNG\r\n\x1a\n" + bytes(100)), "looks like a PNG image"),
        (lambda d: _bytes(d, b"import torch\nprint('not a model')\n"), "not an ONNX model"),
        (lambda d: _bytes(d, b""), "is empty"),
        (lambda d: write(d, tiny_model(domain="my.custom", op="Fancy")), "unknown domain 'my.custom'"),
        (lambda d: write(d, tiny_model(op="NoSuchOp")), "invalid ONNX model"),
        (lambda d: write(d, tiny_model(opset=onnx.defs.onnx_opset_version() + 5)), "not supported"),
        (lambda d: write(d, tiny_model(opset=5)), "too old"),
    ],
    ids=["missing", "truncated", "png", "text", "empty", "unknown-domain", "unknown-op", "opset-new", "opset-old"],
)
def test_bad_models_give_one_line_errors(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(UserError, match=message) as e:
        slipway.load(path)
    assert "\n" not in str(e.value)


def _bytes(d: Path, data: bytes) -> Path:
    p = d / "bad.onnx"
    p.write_bytes(data)
    return p


def test_cli_info_error_exit_code_and_no_traceback(tmp_path: Path) -> None:
    bad = _bytes(tmp_path, export("repvgg").read_bytes()[:3000])
    r = subprocess.run([sys.executable, "-m", "slipway", "info", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "truncated or corrupt" in r.stderr


def test_cli_info_json(tmp_path: Path) -> None:
    import json

    r = subprocess.run([sys.executable, "-m", "slipway", "info", str(export("unet")), "--json"],
                       capture_output=True, text=True, check=True)
    s = json.loads(r.stdout)
    assert s["op_histogram"]["ConvTranspose"] == 2
    assert s["inputs"][0]["shape"] == ["batch", 3, 64, 64]


@pytest.mark.slow
def test_model_over_2gb_saves_external_and_runs(tmp_path: Path) -> None:
    # 2.1 GB of weights: one protobuf cannot hold them, so save() must move them to a side file.
    w = np.zeros((3, 4), np.float32)
    big = np.ones((550_000_000,), np.float32)  # 2.2 GB
    proto = tiny_model(weight=w)
    proto.graph.initializer.append(numpy_helper.from_array(big[:1], "tmp"))
    m = ir.serde.deserialize_model(proto)
    m.graph.initializers.pop("tmp")
    big_t = ir.Tensor(big, name="big")
    v = ir.Value(name="big", const_value=big_t, shape=big_t.shape, type=ir.TensorType(ir.DataType.FLOAT))
    m.graph.register_initializer(v)
    out = slipway.save(m, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size >= big.nbytes
    assert (tmp_path / "big.onnx").stat().st_size < 10_000_000
    back = slipway.load(out)
    assert slipway.summary(back)["params"] == 12 + big.size
    np.testing.assert_array_equal(run(out, np.ones((1, 3), np.float32)), np.zeros((1, 4), np.float32))
