"""``slipway analyze`` and ``slipway machine`` as a user runs them (a subprocess per command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slipway.analyze.machine import cache_key, default_threads
from slipway.analyze.types import MachinePeaks
from tests.analyze.test_profile import conv_relu_model
from tests.analyze.test_real_models import packaged

PEAKS = MachinePeaks(cpu="cached cpu", cores=2, threads=default_threads(), features={"avx2": True},
                     fp32_gflops=123.0, int8_gops=None, mem_bandwidth_gbs=12.0, methods={"fp32": "from the test"})
NODE_KEYS = {"name", "op_type", "macs", "flops", "params", "bytes_read", "bytes_written", "intensity"}


@pytest.fixture
def env(tmp_path):
    """Environment with the machine cache in tmp, pre-filled so that no test measures peaks."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "machine.json").write_text(json.dumps({cache_key(default_threads()): PEAKS.to_dict()}))
    return {**os.environ, "SLIPWAY_CACHE": str(cache), "COLUMNS": "120"}


def slipway(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slipway", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture
def model(tmp_path) -> Path:
    return conv_relu_model(tmp_path / "convs.onnx")


def test_json_has_the_required_keys(env, model):
    r = slipway(env, "analyze", model, "--shape", "x=2,3,32,32", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)  # nothing but JSON on stdout
    assert {"macs", "flops", "params", "bytes_read", "bytes_written"} <= set(d["totals"])
    assert len(d["nodes"]) == 8 and all(NODE_KEYS <= set(n) for n in d["nodes"])
    assert d["totals"]["macs"] == sum(n["macs"] for n in d["nodes"])
    assert d["totals"]["flops"] == 2 * d["totals"]["macs"] + sum(n["flops"] - 2 * n["macs"] for n in d["nodes"])
    conv1 = next(n for n in d["nodes"] if n["name"] == "conv1")
    assert conv1["macs"] == 32 * 16 * 9 * 32 * 32 * 2  # Cout * Cin * k * k * H * W * N
    assert d["input_shapes"] == {"x": [2, 3, 32, 32]}


def test_profile_json_and_report(env, model, tmp_path):
    out = tmp_path / "report.html"
    r = slipway(env, "analyze", model, "--shape", "x=1,3,32,32", "--json", "--profile", "--runs", "5",
                "--report", out)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert all({"time_ms", "bound", "roofline_fraction"} <= set(n) for n in d["nodes"])
    assert all(n["time_ms"] > 0 and n["bound"] in ("memory", "compute") for n in d["nodes"])
    assert d["machine"]["fp32_gflops"] == 123.0 and d["machine"]["cpu"] == "cached cpu"  # the cache, not measured
    assert d["total_time_ms"] > 0
    text = out.read_text()
    plotted = [n for n in d["nodes"] if n["flops"] and n["time_ms"] > 0]  # all but the Flatten
    assert len(plotted) == 7 and text.count('<circle class="pt"') == 7 and "report written to" in r.stderr


def test_table_output_and_static_report(env, model, tmp_path):
    r = slipway(env, "analyze", model, "--shape", "x=1,3,32,32", "--top", "3", "--report", tmp_path / "s.html")
    assert r.returncode == 0, r.stderr
    assert "top 3 of 8 nodes by FLOPs" in r.stdout and "conv2" in r.stdout
    assert "MACs:" in r.stdout and "FLOPs:" in r.stdout and "not counted: none" in r.stdout
    text = (tmp_path / "s.html").read_text()
    assert "Static analysis only" in text and text.count('<circle class="pt"') == 7


@pytest.mark.parametrize("args, message", [
    (["--shape", "x=1,a,32,32"], "bad --shape 'x=1,a,32,32'"),
    (["--shape", "nope"], "bad --shape 'nope'"),
    (["--runs", "0", "--profile"], "--runs must be at least 1"),
])
def test_bad_options_exit_1_with_one_line(env, model, args, message):
    r = slipway(env, "analyze", model, *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert r.stdout == ""


def test_missing_and_non_onnx_models_exit_1(env, tmp_path):
    r = slipway(env, "analyze", tmp_path / "missing.onnx", "--json")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"error: model file not found: {tmp_path / 'missing.onnx'}"]
    text = tmp_path / "notes.onnx"
    text.write_text("{\"not\": \"a model\"}")
    r = slipway(env, "analyze", text, "--profile")
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "is not an ONNX model" in r.stderr


def test_silero_with_several_inputs_in_one_shape_option(env):
    silero = packaged("silero_vad", "data", "silero_vad.onnx")
    r = slipway(env, "analyze", silero, "--shape", "input=1,512,state=2,1,128", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["input_shapes"] == {"input": [1, 512], "state": [2, 1, 128], "sr": []}
    assert d["totals"]["macs"] == 563_968 > 0  # the network inside the If on sr (test_real_models.py)
    assert d["totals"]["trip_count_unknown"] == [] and d["totals"]["not_counted"] == []
    top = next(n for n in d["nodes"] if n["op_type"] == "If")
    assert top["macs"] == 563_968 and "branch unknown" in top["note"]
    r = slipway(env, "analyze", silero, "--shape", "input=1,512,state=2,1,128")
    assert r.returncode == 0, r.stderr
    assert "(563,968)" in r.stdout and "params: 545,282" in r.stdout


def test_unknown_trip_count_is_flagged_in_table_and_json(env, tmp_path):
    import onnx
    from onnx import TensorProto

    from tests.analyze.test_control_flow import loop_model

    path = tmp_path / "loop.onnx"
    onnx.save(loop_model([], extra_inputs=[("M", TensorProto.INT64, [])]), path)  # M comes with the data
    r = slipway(env, "analyze", path, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["totals"]["macs"] == 64 and d["totals"]["trip_count_unknown"] == ["loop"]
    loop = next(n for n in d["nodes"] if n["name"] == "loop")
    assert loop["trip_count_unknown"] is True and loop["trip_count"] is None and loop["macs"] == 64
    r = slipway(env, "analyze", path)
    assert r.returncode == 0, r.stderr
    assert "64×?" in r.stdout and "lower bound: trip count unknown in loop" in r.stdout


def test_unknown_domain_exits_1_like_info(env, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Magic", ["x"], ["y"], domain="com.example.unknown")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                       helper.make_opsetid("com.example.unknown", 1)]), path)
    info = slipway(env, "info", path)
    analyzed = slipway(env, "analyze", path, "--json")
    assert info.returncode == analyzed.returncode == 1 and analyzed.stdout == ""
    lines = analyzed.stderr.strip().splitlines()
    assert lines == info.stderr.strip().splitlines() and len(lines) == 1
    assert "unknown domain 'com.example.unknown'" in lines[0]


def test_machine_reads_the_cache(env):
    r = slipway(env, "machine", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["fp32_gflops"] == 123.0 and d["ridge_point"] == pytest.approx(123.0 / 12.0)
    r = slipway(env, "machine")
    assert r.returncode == 0 and "123.0 GFLOP/s" in r.stdout and "cached cpu" in r.stdout
    r = slipway(env, "machine", "--seconds", "0")
    assert r.returncode == 1 and "--seconds must be positive" in r.stderr
