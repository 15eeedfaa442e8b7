"""``slipway export MODEL --engine mnn|ncnn|openvino -o DIR``: the engine's files plus a manifest, verified before
they are written; a model the engine cannot take fails first and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import typer
from onnx import TensorProto, helper
from typer.testing import CliRunner

from slipway.backends import Options, get
from slipway.backends.edge import digest
from slipway.backends.export import export
from slipway.errors import UserError
from tests.backends.test_mnn import (  # noqa: F401  (engine_cache: the autouse conversion cache fixture)
    close,
    conv_net,
    engine_cache,
    images,
)
from tests.backends.test_ort import reference

pytest.importorskip("MNN")
pytest.importorskip("ncnn")
pytest.importorskip("openvino")

FILES = {"mnn": ["manifest.json", "model.mnn"], "ncnn": ["manifest.json", "model.ncnn.bin", "model.ncnn.param"],
         "openvino": ["manifest.json", "model.bin", "model.xml"]}


@pytest.mark.parametrize("engine", ["mnn", "ncnn", "openvino"])
def test_export_writes_verified_files_and_a_manifest(engine, tmp_path):
    model = conv_net(dynamic_hw=False)
    path = tmp_path / "head.onnx"
    ir.save(model, path)
    out = export(path, engine, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == FILES[engine]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == engine and manifest["source_sha256"] == digest(str(path))
    assert manifest["verification"]["ok"] and len(manifest["verification"]["runs"]) >= 2
    assert [t["name"] for t in manifest["inputs"]] == ["x"] and [t["name"] for t in manifest["outputs"]] == ["y"]
    for name, info in manifest["files"].items():
        assert digest(str(out / name)) == info["sha256"] and (out / name).stat().st_size == info["bytes"]


def test_exported_openvino_ir_runs_as_the_onnx_model(tmp_path):
    model = conv_net(dynamic_hw=False)
    out = export(model, "openvino", tmp_path / "ov")
    (session,) = get("openvino").load(str(out / "model.xml"), Options(threads=1))
    feeds = images(2)
    close(session.run(feeds)["y"], reference(model, feeds)[0])


def det_model() -> ir.Model:
    """Relu -> Reshape -> Det: OpenVINO has no conversion rule for Det."""
    shape = onnx.numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "s")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node("Reshape", ["r", "s"], ["q"], name="reshape0"),
             helper.make_node("Det", ["q"], ["y"], name="the_det")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], [shape])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return ir.serde.deserialize_model(m)


def test_a_model_the_engine_cannot_take_writes_nothing(tmp_path):
    with pytest.raises(UserError) as info:
        export(det_model(), "openvino", tmp_path / "out")
    assert str(info.value) == "openvino cannot convert op Det (node 'the_det')"
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_directory_and_an_unknown_engine(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not an empty directory"):
        export(conv_net(dynamic_hw=False), "mnn", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="cannot export to 'tflite'"):
        export(conv_net(dynamic_hw=False), "tflite", tmp_path / "other")


def test_cli(tmp_path):
    from slipway.cli import export as cli_export

    path = tmp_path / "head.onnx"
    ir.save(conv_net(dynamic_hw=False), path)
    app = typer.Typer()
    app.callback()(lambda: None)
    cli_export.register(app)
    result = CliRunner().invoke(app, ["export", str(path), "--engine", "mnn", "-o", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["engine"] == "mnn"
    bad = CliRunner().invoke(app, ["export", str(path), "--engine", "mnn", "-o", str(tmp_path / "o")])
    assert bad.exit_code != 0 and "exists and is not an empty directory" in str(bad.exception)


def test_exported_files_load_and_a_stale_export_is_refused(tmp_path):
    model = conv_net(dynamic_hw=False)
    out = export(model, "mnn", tmp_path / "m")
    (session,) = get("mnn").load(str(out / "model.mnn"), Options(threads=1))
    feeds = images(1)
    close(session.run(feeds)["y"], reference(model, feeds)[0])
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "engine_version": "0.1"}))
    with pytest.raises(UserError, match=r"was exported with mnn 0.1, this is .*: export the ONNX model again"):
        get("mnn").load(str(out / "model.mnn"))
    with pytest.raises(UserError, match="is not a ncnn export"):
        get("ncnn").load(str(out / "model.mnn"))
