"""``slipway convert``: round trips from files, JSON output, one-line errors with no output file."""

from __future__ import annotations

import json
import subprocess
import sys

import joblib
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")
pytest.importorskip("skl2onnx")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import slipway  # noqa: E402
from slipway.cli import main  # noqa: E402
from tests.convert.test_torch import SmallCNN  # noqa: E402


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``slipway convert ARGS`` in this process; returns (exit code, stdout, stderr)."""
    try:
        main(["convert", *[str(a) for a in args]])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def _cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    model = _cnn()
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("b")}})
    torch.export.save(ep, d / "cnn.pt2")
    torch.jit.save(torch.jit.trace(model, (x,)), d / "cnn.pt")
    torch.save(model.state_dict(), d / "weights.pt")
    torch.save(model, d / "whole.pt")
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, y)
    joblib.dump(pipe, d / "digits.joblib")
    np.save(d / "rows.npy", X[:50].astype(np.float32))
    graph = helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    (d / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    (d / "noise.bin").write_bytes(bytes(range(7, 200)))
    return {"dir": d, "model": model, "pipe": pipe, "X": X.astype(np.float32)}


def test_exported_program_round_trip(tmp_path, capsys, files):
    out = tmp_path / "cnn.onnx"
    code, stdout, stderr = run_cli(capsys, files["dir"] / "cnn.pt2", "-o", out)
    assert code == 0, stderr
    assert "yes" in stdout and "max abs" in stdout and "ExportedProgram cnn.pt2" in stdout
    meta = slipway.load(out).metadata_props
    assert float(meta["slipway.verify.output.max_abs"]) < 1e-4
    assert meta["slipway.verify.batch_sizes"] == "1,2,3"
    x = torch.randn(6, 3, 32, 32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, files["model"](x).numpy(), atol=1e-4)


def test_torchscript_round_trip_json(tmp_path, capsys, files):
    out = tmp_path / "ts.onnx"
    code, stdout, stderr = run_cli(capsys, files["dir"] / "cnn.pt", "-o", out, "--shape", "x=2,3,32,32",
                                   "--dynamic", "x:2=h,x:3=w", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)  # nothing but JSON on stdout
    assert data["format"] == "torchscript" and data["output"] == str(out)
    assert data["inputs"] == [{"name": "x", "dtype": "float", "shape": ["batch", 3, "h", "w"]}]
    v = data["verification"]
    assert v["ok"] and v["batch_sizes"] == [1, 2, 3] and "x[3,3,64,64]" in v["runs"]
    assert v["outputs"][0]["max_abs"] < 1e-4
    x = torch.randn(1, 3, 48, 40)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, files["model"](x).numpy(), atol=1e-4)


def test_sklearn_round_trip_with_sample(tmp_path, capsys, files):
    out = tmp_path / "digits.onnx"
    code, stdout, stderr = run_cli(capsys, files["dir"] / "digits.joblib", "-o", out, "--sample",
                                   files["dir"] / "rows.npy", "--json", "--trust-pickle")
    assert code == 0, stderr
    assert "Traceback" not in stderr
    v = json.loads(stdout)["verification"]
    assert [o["name"] for o in v["outputs"]] == ["label", "probabilities"]
    assert v["batch_sizes"] == [1, 3, 50] and v["outputs"][1]["max_abs"] < 1e-5
    X = files["X"][100:110]
    label, proba = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"X": X})
    np.testing.assert_array_equal(label, files["pipe"].predict(X))
    np.testing.assert_allclose(proba, files["pipe"].predict_proba(X), atol=1e-5)


def test_verification_failure_exits_1_without_output(tmp_path, capsys, files):
    out = tmp_path / "strict.onnx"
    code, stdout, stderr = run_cli(capsys, files["dir"] / "digits.joblib", "-o", out, "--atol", "0", "--rtol", "0",
                                   "--trust-pickle")
    assert code == 1 and stdout == ""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "output 'probabilities'" in lines[0]
    assert "Traceback" not in stderr and not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case, extra, message", [
    ("missing.pt2", [], "model file not found"),
    ("weights.pt", [], "a state dict has no graph"),
    ("whole.pt", [], "pickled Python object"),
    ("model.onnx", [], "already an ONNX model"),
    ("noise.bin", [], "not a model slipway can convert"),
    ("cnn.pt", [], "give the shape of input 'x'"),
    ("cnn.pt", ["--shape", "y=1,3,32,32"], "no model input named 'y'"),
    ("cnn.pt", ["--shape", "x=1,3,32,32", "--dynamic", "x0=batch"], "bad --dynamic"),
    ("cnn.pt2", ["--batch-sizes", "0"], "bad --batch-sizes"),
    ("cnn.pt2", ["--sample", "rows.npy"], "scikit-learn models only"),
    ("digits.joblib", ["--dynamic", "X:1=f"], "do not apply to scikit-learn"),
    ("digits.joblib", [], "would run code from the file; if you trust where it comes from, pass --trust-pickle"),
])
def test_errors_are_one_line_and_leave_nothing(tmp_path, capsys, files, case, extra, message):
    out = tmp_path / "out.onnx"
    code, stdout, stderr = run_cli(capsys, files["dir"] / case, "-o", out, *extra)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in stderr and not out.exists()


def test_refuses_to_overwrite_the_input(capsys, files):
    src = files["dir"] / "cnn.pt2"
    before = src.read_bytes()
    code, _, stderr = run_cli(capsys, src, "-o", src)
    assert code == 1 and "refusing to overwrite the input" in stderr
    assert src.read_bytes() == before


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slipway", "convert", str(tmp_path / "nope.pt2"), "-o",
                           str(tmp_path / "o.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: model file not found: {tmp_path / 'nope.pt2'}"
