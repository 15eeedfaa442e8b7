"""The CLI is both the `slipway` console script and `python -m slipway`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ("info", "convert", "analyze", "optimize", "quantize", "bench", "tune", "compare", "serve", "machine", "demo")


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
