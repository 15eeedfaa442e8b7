"""`slipway serve` as users run it: a subprocess, tritonclient calls, SIGTERM drains and exits 0;
plus config features end to end (versions, warm-up, python models, engine parameters)."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.http as httpclient

from slipway.serve import Server, free_port, wait_ready
from tests.serve.conftest import B, W, _save, gemm_model


def test_cli_serves_and_stops_on_sigterm(tmp_path) -> None:
    repo = tmp_path / "repo"
    _save(gemm_model(), repo / "gemm" / "1" / "model.onnx")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "slipway", "serve", str(repo), "--http-port", str(port),
                             "--grpc-port", "0", "--metrics-port", "-1"], stderr=subprocess.PIPE, text=True)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        wait_ready(proc, client.is_server_ready, timeout_s=60)
        inp = httpclient.InferInput("x", [2, 16], "FP32")
        x = np.ones((2, 16), np.float32)
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("gemm", [inp]).as_numpy("y"), x @ W + B, rtol=1e-5, atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert '"msg": "serving' in err and "draining" in err  # structured JSON log lines


def test_cli_bad_repository_is_one_line(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "slipway", "serve", str(tmp_path / "missing")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_print_config(tmp_path) -> None:
    repo = tmp_path / "repo"
    _save(gemm_model(), repo / "gemm" / "1" / "model.onnx")
    r = subprocess.run([sys.executable, "-m", "slipway", "serve", str(repo), "--print-config"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "max_batch_size: 32" in r.stdout and "dynamic_batching" in r.stdout and 'name: "x"' in r.stdout


def test_all_versions_warmup_and_parameters(tmp_path) -> None:
    repo = tmp_path / "repo"
    _save(gemm_model(), repo / "gemm" / "1" / "model.onnx")
    _save(gemm_model(W * 3, B), repo / "gemm" / "2" / "model.onnx")
    (repo / "gemm" / "config.pbtxt").write_text("""
max_batch_size: 4
version_policy: { all { } }
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 100 }
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "execution_mode" value { string_value: "0" } }
model_warmup [{ name: "zeros" batch_size: 4 count: 2
                inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } } }]
""")
    with Server(repo, http_port=0, grpc_port=None, metrics_port=None) as server:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        assert c.get_model_metadata("gemm")["versions"] == ["1", "2"]
        x = np.ones((1, 16), np.float32)
        inp = httpclient.InferInput("x", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(c.infer("gemm", [inp], model_version="1").as_numpy("y"), x @ W + B, rtol=1e-5)
        np.testing.assert_allclose(c.infer("gemm", [inp]).as_numpy("y"), x @ (W * 3) + B, rtol=1e-5)  # newest
        mv = server.plane._version("gemm", "2")
        assert mv.config.model_warmup[0].count == 2


def test_engine_options_from_triton_parameters(tmp_path) -> None:
    from slipway.serve.model import engine_options
    from slipway.serve.repository import Repository

    repo = tmp_path / "repo"
    _save(gemm_model(), repo / "gemm" / "1" / "model.onnx")
    (repo / "gemm" / "config.pbtxt").write_text("""
backend: "onnxruntime"
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "execution_mode" value { string_value: "1" } }
parameters { key: "enable_mem_arena" value { string_value: "0" } }
parameters { key: "slipway.spin" value { string_value: "false" } }
""")
    backend, opts = engine_options(Repository(repo).config("gemm"), repo / "gemm" / "1" / "model.onnx")
    assert backend == "ort" and opts.threads == 1
    assert opts.settings == {"execution_mode": "parallel", "arena": False, "spin": False}


def test_python_model_needs_the_flag(tmp_path) -> None:
    from slipway.errors import UserError

    repo = tmp_path / "repo"
    (repo / "double" / "1").mkdir(parents=True)
    (repo / "double" / "1" / "model.py").write_text(
        "def infer(inputs):\n    return {'y': inputs['x'] * 2}\n")
    (repo / "double" / "config.pbtxt").write_text("""
backend: "python"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }]
""")
    with pytest.raises(UserError, match="allow-python-models"):
        Server(repo, http_port=0, grpc_port=None, metrics_port=None).start_in_thread()
    with Server(repo, http_port=0, grpc_port=None, metrics_port=None, allow_python_models=True) as server:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        inp = httpclient.InferInput("x", [2, 3], "FP32")
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(c.infer("double", [inp]).as_numpy("y"), x * 2)


def test_instances_split_the_cores(tmp_path) -> None:
    from slipway.cpus import usable_cpus
    from slipway.serve.model import engine_options
    from slipway.serve.repository import Repository

    repo = tmp_path / "repo"
    _save(gemm_model(), repo / "gemm" / "1" / "model.onnx")
    (repo / "gemm" / "config.pbtxt").write_text('instance_group [{ count: 2 kind: KIND_CPU }]\n')
    _, opts = engine_options(Repository(repo).config("gemm"), repo / "gemm" / "1" / "model.onnx")
    assert opts.threads == max(1, usable_cpus() // 2)  # the affinity mask and CPU quota, as the server


def test_help_lists_the_limits() -> None:
    r = subprocess.run([sys.executable, "-m", "slipway", "serve", "--help"], capture_output=True, text=True,
                       timeout=60, env={**__import__("os").environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    for option in ("--max-body-mb", "--max-inputs", "--max-elements", "--max-json-depth", "--header-timeout",
                   "--body-timeout", "--max-connections", "--metrics-auth"):
        assert option in r.stdout, option
