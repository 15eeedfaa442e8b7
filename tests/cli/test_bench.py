"""``slipway bench`` as a user runs it (a subprocess per command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from slipway.cli import bench
from slipway.errors import UserError
from tests.perf.models import matmul, save

# Registers the command if slipway.cli does not list it yet, then runs the real entry point.
MAIN = """
import sys
import slipway.cli as cli
from slipway.cli import bench
register_all = cli._register
def _register():
    register_all()
    if not any(c.name == "bench" for c in cli.app.registered_commands):
        bench.register(cli.app)
cli._register = _register
cli.main(sys.argv[1:])
"""
FAST = ("--time", "0.05", "--max-time", "0.5", "--warmup", "1", "--no-isolate")
KEYS = {"backend", "batch", "threads", "concurrency", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput",
        "rss_mb", "runs", "stable"}


def slipway(*args: object) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess."""
    return subprocess.run([sys.executable, "-c", MAIN, "bench", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "160"})


def invoke(*args: object):
    """The command in this process (faster): a UserError comes back as ``result.exception``."""
    app = typer.Typer()
    app.callback()(lambda: None)
    bench.register(app)
    return CliRunner().invoke(app, ["bench", *map(str, args)])


@pytest.fixture
def model(tmp_path):
    return save(matmul(), tmp_path / "m.onnx")


def test_json_sweep(model):
    r = invoke(model, "--batch", "1,4", "--threads", "1", "--concurrency", "1,2", "--json", *FAST)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)  # nothing but JSON on stdout
    assert [(d["batch"], d["concurrency"]) for d in rows] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    for d in rows:
        assert KEYS <= set(d) and d["backend"] == "ort" and d["threads"] == 1
        assert d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"] and d["runs"] >= 10 and d["throughput"] > 0


def test_table_report_and_skipped_backend(model, tmp_path, monkeypatch):
    from slipway.cli import common

    # the shared console may have been sized by whatever ran earlier in this worker
    monkeypatch.setattr(common.console, "width", 120)
    out = tmp_path / "bench.html"
    r = invoke(model, "--backend", "ort,ort-tensorrt", "--report", out, "--time", "0.05", "--max-time", "0.5")
    assert r.exit_code == 0, r.output
    for col in ("backend", "batch", "threads", "conc", "p50", "p90", "p99", "mean", "inf/s", "rss", "runs"):
        assert col in r.stdout
    assert "warning: skipping backend 'ort-tensorrt'" in r.stderr
    page = out.read_text()
    assert '<svg id="latency-throughput-chart"' in page and "fresh process" in page  # isolated by default


def test_npz_inputs_tiled_to_the_batch(model, tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.ones((1, 256), np.float32))
    r = invoke(model, "--inputs", data, "--batch", "8", "--json", *FAST)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["batch"] == 8


def test_user_errors_print_one_line_and_exit_1(tmp_path):
    static = save(matmul(batch=1), tmp_path / "static.onnx")
    r = slipway(static, "--batch", "1,8", *FAST)
    assert r.returncode == 1
    assert r.stderr.strip() == ("error: cannot run batch 8: input 'x' has a static batch of 1; "
                                "export the model with a dynamic batch dim")


@pytest.mark.parametrize("args, message", [
    (("--batch", "1,x"), "bad --batch '1,x'"),
    (("--concurrency", "0"), "bad --concurrency '0': values must be at least 1"),
    (("--threads", "-1"), "bad --threads '-1': values must be at least 0"),
    (("--backend", "ort-tensorrt"), "no requested backend is available here"),
    (("--backend", ","), "--backend needs at least one backend name"),
    (("--setting", "nonsense"), "bad --setting 'nonsense'"),
    (("--setting", "bogus=1"), "ort: unknown setting 'bogus'"),
    (("--shape", "x=1,2,3"), "--shape x: got 3 dims, the input has rank 2"),
    (("--time", "0"), "--time must be more than 0 seconds"),
])
def test_bad_options_are_user_errors(model, args, message):
    r = invoke(model, *FAST, *args)
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception).startswith(message) and "\n" not in str(r.exception)
