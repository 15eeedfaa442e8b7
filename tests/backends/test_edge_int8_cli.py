"""INT8 of the edge engines through the commands: ``slipway bench --precision int8 --calib``, ``slipway export
--precision int8 --calib`` (files, manifest, loading them back) and ``slipway serve`` with a config that asks for
precision int8 and names its calibration data (a path confined to the model's folder).

The model and calibration data are tests/backends/test_edge_int8.py's (the trained digits CNN, 256 training
images), in the same session-wide engine cache; the INT8 entries are built once here and reused by every test.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from slipway.backends import Options, get
from slipway.errors import ServeError, UserError

pytest.importorskip("MNN")
pytest.importorskip("ncnn")
pytest.importorskip("sklearn")

from slipway.backends import edge, edge_int8  # noqa: E402
from tests.backends.test_edge_int8 import engine_cache, entries, int8  # noqa: E402, F401
from tests.prune.digits import data  # noqa: E402

ENGINES = ("mnn", "ncnn")
FAST = ("--time", "0.05", "--max-time", "0.3", "--warmup", "1", "--min-runs", "3", "--threads", "1")
WEIGHTS = {"mnn": ["model.mnn"], "ncnn": ["model.ncnn.bin", "model.ncnn.param", "model.ncnn.table"]}
FILE = {"mnn": "model.mnn", "ncnn": "model.ncnn.param"}


def app(module) -> typer.Typer:
    a = typer.Typer()
    a.callback()(lambda: None)
    module.register(a)
    return a


def bench(*args: object):
    from slipway.cli import bench as cli_bench

    return CliRunner().invoke(app(cli_bench), ["bench", *map(str, args)])


def export_cli(*args: object):
    from slipway.cli import export as cli_export

    return CliRunner().invoke(app(cli_export), ["export", *map(str, args)])


# ---------------------------------------------------------------------------------------------
# slipway bench


def test_bench_int8_next_to_fp32(digits, calib):
    r = bench(digits, "--backend", "mnn,ncnn", "--precision", "fp32,int8", "--calib", calib, "--json",
              "--no-isolate", *FAST)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(d["backend"], d["precision"]) for d in rows] == [("mnn", "fp32"), ("mnn", "int8"), ("ncnn", "fp32"),
                                                             ("ncnn", "int8")]
    assert all(d["runs"] >= 3 and d["p50_ms"] > 0 for d in rows)
    for engine in ENGINES:  # the INT8 files were built from this calibration data
        shas = [json.loads((e / "manifest.json").read_text())["options"]["calibration_sha256"]
                for e in entries(f"{engine}-int8")]
        assert edge.digest(str(calib)) in shas


def test_bench_int8_in_a_fresh_process_uses_the_cached_files(digits, calib, monkeypatch):
    get("mnn").load(digits, int8(calib))  # the entry (built by the test above when run together)

    def no_child(*args, **kwargs):
        raise AssertionError("the cached INT8 entry was rebuilt")

    monkeypatch.setattr(edge_int8, "_child", no_child)
    r = bench(digits, "--backend", "mnn", "--precision", "int8", "--calib", calib, "--json", *FAST)
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    assert row["precision"] == "int8" and row["rss_mb"] > 0  # isolated: the worker's own peak


def test_bench_table_shows_the_precision(digits, calib, monkeypatch):
    from slipway.cli import common

    monkeypatch.setattr(common.console, "width", 140)
    r = bench(digits, "--backend", "ncnn", "--precision", "int8", "--calib", calib, "--no-isolate", *FAST)
    assert r.exit_code == 0, r.output
    assert "precision" in r.stdout and "int8" in r.stdout


def test_bench_int8_on_ort_keeps_its_meaning(digits, calib):
    """onnxruntime's int8 is a QDQ model run as it is: a float model is skipped with a warning, not timed as
    INT8; alone it is an error."""
    r = bench(digits, "--backend", "ort,mnn", "--precision", "int8", "--calib", calib, "--json", "--no-isolate",
              *FAST)
    assert r.exit_code == 0, r.output
    assert [(d["backend"], d["precision"]) for d in json.loads(r.stdout)] == [("mnn", "int8")]
    assert "skipping ort int8: ort runs an already quantized (Q/DQ) model" in r.stderr
    r = bench(digits, "--backend", "ort", "--precision", "int8", "--no-isolate", *FAST)
    assert isinstance(r.exception, UserError)
    assert str(r.exception).startswith("no requested backend runs the requested precision here: ort int8")


@pytest.mark.parametrize("args, message", [
    (("--backend", "mnn", "--precision", "int8"), "--precision int8 on mnn needs calibration data: give --calib DATA"),
    (("--backend", "ort,ncnn", "--precision", "fp32,int8"), "--precision int8 on ncnn needs calibration data"),
    (("--backend", "mnn", "--calib", "CALIB"), "--calib is calibration data for --precision int8 on mnn / ncnn"),
    (("--backend", "mnn", "--precision", "int4"), "unknown precision 'int4'"),
    (("--backend", "mnn", "--precision", ","), "--precision needs at least one precision name"),
])
def test_bench_precision_errors_are_one_line(digits, calib, args, message):
    r = bench(digits, *[calib if a == "CALIB" else a for a in args], "--no-isolate", *FAST)
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception).startswith(message) and "\n" not in str(r.exception)


# ---------------------------------------------------------------------------------------------
# slipway export


@pytest.mark.parametrize("engine", ENGINES)
def test_export_int8_files_manifest_and_load(digits, calib, tmp_path, monkeypatch, engine):
    from slipway.cli import common

    monkeypatch.setattr(common.console, "width", 300)  # the verification line on one line
    out = tmp_path / "out"
    r = export_cli(digits, "--engine", engine, "--precision", "int8", "--calib", calib, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.stdout)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == f"{engine}-int8" and manifest["precision"] == "int8"
    assert manifest["source_sha256"] == edge.digest(digits)
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *manifest["files"]])
    assert set(WEIGHTS[engine]) <= set(manifest["files"])
    for name, info in manifest["files"].items():
        assert edge.digest(str(out / name)) == info["sha256"] and (out / name).stat().st_size == info["bytes"]
    v = manifest["verification"]
    assert v["ok"] and v["calibration_sha256"] == edge.digest(str(calib))
    (o,) = v["outputs"]
    assert o["name"] == "logits" and o["snr_db"] >= edge_int8.MIN_SNR_DB and o["cosine"] > 0.98
    # the exported files run as the INT8 files the engine loads from the ONNX model and the calibration data
    _, (x_test, y_test) = data()
    (direct,) = get(engine).load(digits, int8(calib))
    want = direct.run({"x": x_test[:64]})["logits"]
    for options in (Options(threads=1), Options(threads=1, precision="int8")):
        (session,) = get(engine).load(str(out / FILE[engine]), options)
        got = session.run({"x": x_test[:64]})["logits"]
        np.testing.assert_array_equal(got, want)
        assert (got.argmax(1) == y_test[:64]).mean() >= 0.95
    # the table says what was verified
    r = export_cli(digits, "--engine", engine, "--precision", "int8", "--calib", calib, "-o", tmp_path / "again")
    assert r.exit_code == 0, r.output
    assert "SNR" in r.stdout and "calibration data sha256" in r.stdout


def test_export_int8_errors_write_nothing(digits, calib, tmp_path):
    from slipway.backends.export import export

    cases = [
        (dict(engine="mnn", precision="int8"), "--precision int8 on mnn needs calibration data: give --calib DATA"),
        (dict(engine="openvino", precision="int8", calib=calib), "--precision int8 exports the INT8 files of mnn"),
        (dict(engine="ncnn", calib=calib), "--calib, --calib-method and --calib-samples apply to --precision int8"),
        (dict(engine="ncnn", precision="fp16"), "export writes fp32 or int8 files, not 'fp16'"),
        (dict(engine="mnn", precision="int8", calib=calib, calib_method="minmax"),
         "mnn: setting calib_method='minmax' is not valid"),
        (dict(engine="mnn", precision="int8", calib=tmp_path / "missing.npz"), "calibration data not found"),
    ]
    for kwargs, message in cases:
        engine = kwargs.pop("engine")
        with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(".", r"\.")) as e:
            export(digits, engine, tmp_path / "out", **kwargs)
        assert "\n" not in str(e.value)
        assert not (tmp_path / "out").exists()


def test_exported_files_and_int8_options(digits, calib, tmp_path):
    from slipway.backends.export import export

    fp32 = export(digits, "mnn", tmp_path / "fp32")
    with pytest.raises(UserError, match="holds FP32 files: export them with --precision int8 --calib DATA"):
        get("mnn").load(str(fp32 / "model.mnn"), Options(precision="int8"))
    q = export(digits, "mnn", tmp_path / "int8", precision="int8", calib=calib)
    with pytest.raises(UserError, match="setting calib quantizes the ONNX model: give the .onnx file"):
        get("mnn").load(str(q / "model.mnn"), int8(calib))
    with pytest.raises(UserError, match="is not a ncnn export"):
        get("ncnn").load(str(q / "model.mnn"))


# ---------------------------------------------------------------------------------------------
# slipway serve


def _config(name: str, engine: str, params: dict[str, str]) -> str:
    text = "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items())
    return f'name: "{name}"\nbackend: "{engine}"\nmax_batch_size: 8\n{text}'


def _parse(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(text, mc.ModelConfig())


def test_serve_calib_path_is_confined_to_the_model_folder(tmp_path, calib):
    from slipway.serve.model import engine_options

    model = tmp_path / "repo" / "digits"
    (model / "1").mkdir(parents=True)
    (model / "data").mkdir()
    (model / "data" / "digits.npz").write_bytes(calib.read_bytes())
    (tmp_path / "outside.npz").write_bytes(calib.read_bytes())
    (model / "link.npz").symlink_to(tmp_path / "outside.npz")
    file = model / "1" / "model.onnx"
    backend, options = engine_options(_parse(_config("digits", "mnn", {"precision": "int8",
                                                                       "slipway.calib": "data/digits.npz"})), file)
    assert backend == "mnn" and options.precision == "int8"
    assert options.settings["calib"] == str((model / "data" / "digits.npz").resolve())
    for bad, why in [("../../outside.npz", "without '..'"), (str(tmp_path / "outside.npz"), "relative to the model"),
                     ("link.npz", "leads outside the model's folder"), (".hidden.npz", "without '..' or hidden"),
                     ("data/nothing.npz", "no such file or folder"), ("1/../../x", "without '..'")]:
        with pytest.raises(ServeError, match=why) as e:
            engine_options(_parse(_config("digits", "mnn", {"precision": "int8", "slipway.calib": bad})), file)
        assert e.value.status == 400 and "\n" not in str(e.value)


def test_served_int8_from_the_onnx_model_and_from_an_export(tmp_path, digits, calib):
    """Two models on one server: the ONNX file with precision int8 + slipway.calib (data in the model's
    folder), and the files slipway export --precision int8 wrote; both answer as the INT8 engine does."""
    from slipway.backends.export import export
    from slipway.serve import Server

    repo = tmp_path / "repo"
    (repo / "onnx_int8" / "1").mkdir(parents=True)
    (repo / "onnx_int8" / "1" / "model.onnx").write_bytes(Path(digits).read_bytes())
    (repo / "onnx_int8" / "calib.npz").write_bytes(calib.read_bytes())  # same bytes: the same cache entry
    (repo / "onnx_int8" / "config.pbtxt").write_text(
        _config("onnx_int8", "mnn", {"precision": "int8", "slipway.calib": "calib.npz"}))
    export(digits, "ncnn", repo / "exported_int8" / "1", precision="int8", calib=calib)
    (repo / "exported_int8" / "config.pbtxt").write_text(_config("exported_int8", "ncnn", {"precision": "int8"}))
    _, (x_test, _) = data()
    x = x_test[:4]
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    server = Server(repo, http_port=0, grpc_port=0, metrics_port=0, threads=1).start_in_thread()
    try:
        answers = {}
        for name in ("onnx_int8", "exported_int8"):
            request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/models/{name}/infer", body,
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request) as r:
                (out,) = json.loads(r.read())["outputs"]
            answers[name] = np.array(out["data"], np.float32).reshape(out["shape"])
    finally:
        server.stop_thread()
    for name, engine in (("onnx_int8", "mnn"), ("exported_int8", "ncnn")):
        (session,) = get(engine).load(digits, int8(calib))
        np.testing.assert_allclose(answers[name], session.run({"x": x})["logits"], rtol=1e-5, atol=1e-5)
