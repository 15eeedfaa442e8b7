"""``slipway quantize``: JSON keys, the printed tables, a user metric from a file, one-line errors and no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from typer.testing import CliRunner

from slipway.cli.quantize import load_metric, register
from slipway.errors import UserError
from tests.quantize.digits_cnn import cached_cnn, digits

# Runs the real entry point, registering the command first if cli/__init__ does not yet.
BOOT = (
    "import sys, slipway.cli as c\n"
    "from slipway.cli import quantize as m\n"
    "orig = c._register\n"
    "def reg():\n"
    "    orig()\n"
    "    if not any(i.name == 'quantize' for i in c.app.registered_commands):\n"
    "        m.register(c.app)\n"
    "c._register = reg\n"
    "c.main(sys.argv[1:])\n"
)
KEYS = {"accuracy", "agreement", "latency_fp32_ms", "latency_quant_ms", "float_layers", "method", "precision",
        "nodes_quantized", "warnings", "sensitivity", "snr_db"}


def slipway(*args: object):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    register(app)
    return CliRunner(env={"COLUMNS": "160"}).invoke(app, ["quantize", *map(str, args)])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("q")
    x_tr, _, x_te, y_te = digits()
    np.save(d / "calib.npy", x_tr[:128])
    np.savez(d / "eval.npz", x=x_te[:300], labels=y_te[:300])
    return {"model": cached_cnn(), "calib": d / "calib.npy", "eval": d / "eval.npz"}


def test_json_has_the_documented_keys(files, tmp_path):
    out = tmp_path / "q.onnx"
    r = slipway(files["model"], "-o", out, "--calib", files["calib"], "--method", "minmax", "--eval", files["eval"],
                "--max-drop", "0.5", "--json", "--speed-budget", "0.05")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert KEYS <= set(d)
    assert d["precision"] == "int8" and d["method"] == "minmax"
    assert d["accuracy"]["metric"] == "top1" and d["accuracy"]["drop"] <= 0.5
    assert d["latency_fp32_ms"] > 0 and d["latency_quant_ms"] > 0
    assert isinstance(d["float_layers"], list) and d["nodes_quantized"] >= 5
    assert d["output"] == str(out) and out.exists()
    onnx.checker.check_model(onnx.load(out))


def test_tables_and_sensitivity_ranking(files, tmp_path, monkeypatch):
    from slipway.cli import common

    monkeypatch.setattr(common.console, "width", 200)  # the shared console may be narrow in this worker
    r = slipway(files["model"], "-o", tmp_path / "q.onnx", "--calib", files["calib"], "--method", "percentile",
                "--no-speed-check")
    assert r.exit_code == 0, r.output
    assert "top-1 agreement with FP32" in r.stdout and "percentile calibration" in r.stdout
    assert "sensitivity" in r.stdout and "local SNR" in r.stdout and "node_linear" in r.stdout
    assert f"written to {tmp_path / 'q.onnx'}" in r.stdout


def test_user_metric_from_a_file(files, tmp_path):
    metric = tmp_path / "my_metric.py"
    metric.write_text("import numpy as np\n"
                      "def accuracy(outputs, labels):\n"
                      "    return float(np.mean(outputs[0].argmax(1) == labels)) * 100\n")
    r = slipway(files["model"], "-o", tmp_path / "q.onnx", "--calib", files["calib"], "--eval", files["eval"],
                "--metric", f"{metric}:accuracy", "--json", "--no-speed-check", "--method", "mse")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["accuracy"]["metric"] == "accuracy" and d["accuracy"]["fp32"] > 90


def test_fp16(files, tmp_path):
    r = slipway(files["model"], "-o", tmp_path / "h.onnx", "--precision", "fp16", "--eval", files["eval"], "--json",
                "--no-speed-check")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["precision"] == "fp16" and d["accuracy"]["drop"] <= 0.5 and d["nodes_quantized"] == 0


def test_bad_metric_spec():
    with pytest.raises(UserError, match="MODULE:FUNC"):
        load_metric("nonsense")
    with pytest.raises(UserError, match="cannot import module"):
        load_metric("no_such_module_xyz:f")
    with pytest.raises(UserError, match="has no function"):
        load_metric("math:no_such_function")
    assert load_metric("none") is None and load_metric("top1") == "top1"


def _subprocess(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-c", BOOT, "quantize", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=180, cwd=Path(__file__).resolve().parents[2])


def test_empty_calibration_set_is_one_line_and_writes_nothing(files, tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    out = tmp_path / "q.onnx"
    r = _subprocess(files["model"], "-o", out, "--calib", tmp_path / "empty.npy")
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error:") and "empty" in lines[-1]
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_image_folder_calibration(files, tmp_path):
    import cv2

    x_tr = digits()[0]
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(24):
        cv2.imwrite(str(folder / f"{i:02d}.png"), (x_tr[i, 0] * 255).round().astype(np.uint8))
    r = slipway(files["model"], "-o", tmp_path / "q.onnx", "--calib", folder, "--mean", "0", "--std", "1",
                "--eval", files["eval"], "--json", "--no-speed-check", "--method", "minmax")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["calib_samples"] == 24 and d["accuracy"]["drop"] <= 1.0


def test_bad_image_options(files, tmp_path):
    r = slipway(files["model"], "-o", tmp_path / "q.onnx", "--calib", files["calib"], "--size", "8")
    assert r.exit_code != 0 and isinstance(r.exception, UserError) and "--size" in str(r.exception)
    assert not (tmp_path / "q.onnx").exists()
