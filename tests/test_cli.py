"""The CLI is both the `slipway` console script and `python -m slipway`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ("info", "convert", "analyze", "optimize", "quantize", "bench", "tune", "compare", "serve", "machine", "demo",
            "pipeline", "run", "bundle", "perf")


def test_python_m_lists_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "slipway", "--help"], capture_output=True, text=True, check=True)
    for cmd in COMMANDS:
        assert cmd in r.stdout


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "slipway"
    path = str(exe) if exe.exists() else shutil.which("slipway")
    if path is None:
        pytest.skip("slipway console script not on PATH (package not installed)")
    r = subprocess.run([path, "info", "/nonexistent/model.onnx"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == "error: model file not found: /nonexistent/model.onnx"


# `slipway demo --model resnet18` (the zoo demo; `slipway demo` alone is the OCR application, tests/cli/
# test_demo_ocr.py) judges INT8 accuracy on a trained digits CNN (held-out images, true labels), not on
# the random-weight ResNet-18 whose top-1 answers are noise.
DEMO_INT8_LINE = re.compile(r"INT8 \(digits CNN, (\d+) held-out images, true labels\): top-1 ([\d.]+)% vs FP32 "
                            r"([\d.]+)% \((no change|[+-][\d.]+ points)\)")


def test_demo_int8_accuracy_is_real_held_out_top1(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from slipway.cli.demo import digits_line, quantize_digits

    d = quantize_digits(tmp_path)
    assert d.test_images == 360 and d.train_images == 1797 - 360
    assert d.torch_top1 >= 95.0 and d.fp32_top1 >= 95.0
    assert d.int8_top1 >= 90.0 and d.fp32_top1 - d.int8_top1 <= 3.0
    assert d.int8_path.is_file() and d.fp32_path.is_file()
    match = DEMO_INT8_LINE.search(digits_line(d))
    assert match is not None
    images, int8, fp32 = int(match[1]), float(match[2]), float(match[3])
    assert images == 360 and abs(int8 - d.int8_top1) < 0.1 and abs(fp32 - d.fp32_top1) < 0.1


@pytest.mark.slow
def test_demo_end_to_end_prints_held_out_int8_top1(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    r = subprocess.run([sys.executable, "-m", "slipway", "demo", "--model", "resnet18", "--out", str(tmp_path)],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    match = DEMO_INT8_LINE.search(r.stdout)
    assert match is not None, r.stdout[-4000:]
    assert float(match[2]) >= 90.0 and float(match[3]) - float(match[2]) <= 3.0
    assert "top-1 agreement" not in r.stdout  # no random-weight agreement passed off as accuracy
    assert (tmp_path / "digits_cnn.int8.onnx").is_file()
