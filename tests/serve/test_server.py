"""The whole server through tritonclient: batching, overload, hot reload, metrics, shutdown, memory."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from slipway.serve import Server
from tests.serve.conftest import B, W, _save, build_repository, gemm_model


def _gemm_input(lib, x: np.ndarray):
    inp = lib.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def _stats(client, model: str) -> dict:
    return client.get_inference_statistics(model, as_json=True)["model_stats"][0]


def _batch_sizes(stats: dict) -> dict[int, int]:
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def test_completed_config_and_metadata(grpc_url) -> None:
    c = grpcclient.InferenceServerClient(grpc_url)
    cfg = c.get_model_config("gemm", as_json=True)["config"]
    assert cfg["platform"] == "onnxruntime_onnx"
    assert int(cfg["max_batch_size"]) == 32 and "dynamic_batching" in cfg
    meta = c.get_model_metadata("gemm", as_json=True)
    assert meta["inputs"][0]["shape"] == ["-1", "16"] and meta["inputs"][0]["datatype"] == "FP32"


def test_dynamic_batching_merges_and_results_match(grpc_url) -> None:
    """add_sub waits up to 2 ms for more rows (max_batch_size 8): concurrent requests share batches."""
    rng = np.random.default_rng(5)
    pairs = [(rng.standard_normal((1 + i % 2, 16)).astype(np.float32),
              rng.standard_normal((1 + i % 2, 16)).astype(np.float32)) for i in range(64)]
    client = grpcclient.InferenceServerClient(grpc_url)
    before = _batch_sizes(_stats(client, "add_sub"))

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = pairs[i]
        inputs = [grpcclient.InferInput("INPUT0", list(a.shape), "FP32"), grpcclient.InferInput("INPUT1", list(b.shape),
                                                                                               "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        r = grpcclient.InferenceServerClient(grpc_url).infer("add_sub", inputs)
        return r.as_numpy("OUTPUT0"), r.as_numpy("OUTPUT1")

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(len(pairs))))
    for (a, b), (s, d) in zip(pairs, got, strict=True):
        np.testing.assert_array_equal(s, a + b)  # each request gets exactly its own rows back
        np.testing.assert_array_equal(d, a - b)
    after = _batch_sizes(_stats(client, "add_sub"))
    merged = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert sum(k * n for k, n in merged.items()) == sum(a.shape[0] for a, _ in pairs)  # rows, not requests
    assert max(k for k, n in merged.items() if n) > 2, merged  # some batch held more than one request
    assert sum(merged.values()) < len(pairs)


def test_http_and_grpc_agree(http_url, grpc_url) -> None:
    x = np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)
    h = httpclient.InferenceServerClient(http_url).infer("gemm", [_gemm_input(httpclient, x)]).as_numpy("y")
    g = grpcclient.InferenceServerClient(grpc_url).infer("gemm", [_gemm_input(grpcclient, x)]).as_numpy("y")
    np.testing.assert_array_equal(h, g)
    np.testing.assert_allclose(h, x @ W + B, rtol=1e-5, atol=1e-5)


def test_metrics_use_triton_names(server, grpc_url) -> None:
    import urllib.request

    x = np.ones((2, 16), np.float32)
    grpcclient.InferenceServerClient(grpc_url).infer("gemm", [_gemm_input(grpcclient, x)])
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_pending_request_count", "nv_inference_request_duration_us",
                 "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
                 "nv_cpu_memory_used_bytes", "slipway_batch_size_bucket"):
        assert f"\n{name}{{" in text or f"\n{name} " in text, name
    line = next(s for s in text.splitlines() if s.startswith('nv_inference_count{model="gemm",version="1"}'))
    assert float(line.split()[-1]) >= 2
    assert 'nv_inference_request_failure{model="gemm",reason="REJECTED",version="1"}' in text
    also = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    assert "nv_inference_exec_count" in also


def _slow_model_repo(root: Path, delay_config: str = "") -> Path:
    """A model that takes ~100 ms per run (60 MatMuls of [128, 512] x [512, 512]) with a tiny queue."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 128, 512])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 128, 512])
    w = onnx.numpy_helper.from_array(np.eye(512, dtype=np.float32), "w")
    nodes, prev = [], "x"
    for i in range(60):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    _save(helper.make_model(helper.make_graph(nodes, "slow", [x], [y], [w])), root / "slow" / "1" / "model.onnx")
    (root / "slow" / "config.pbtxt").write_text(
        'max_batch_size: 1\ninstance_group [{ count: 1 kind: KIND_CPU }]\n'
        "dynamic_batching { default_queue_policy { max_queue_size: 2 } " + delay_config + "}\n")
    return root


def test_overload_answers_503_fast(tmp_path) -> None:
    repo = _slow_model_repo(tmp_path)
    with Server(repo, http_port=0, grpc_port=None, metrics_port=None, threads=1) as server:
        url = f"127.0.0.1:{server.http_port}"
        x = np.ones((1, 128, 512), np.float32)
        codes: list[str] = []
        fast: list[float] = []

        def one(_: int) -> None:
            c = httpclient.InferenceServerClient(url, network_timeout=60)
            t = time.perf_counter()
            try:
                c.infer("slow", [_gemm_input(httpclient, x)])
                codes.append("ok")
            except InferenceServerException as e:
                codes.append(str(e.status()))
                fast.append(time.perf_counter() - t)
                assert "queue full" in e.message()

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(one, range(12)))
        assert "ok" in codes and "503" in codes, codes
        assert min(fast) < 0.05
        stats = httpclient.InferenceServerClient(url).get_inference_statistics("slow")["model_stats"][0]
        assert stats["inference_stats"]["fail"]["count"] == codes.count("503")
        # and it still serves
        httpclient.InferenceServerClient(url).infer("slow", [_gemm_input(httpclient, x)])


def test_hot_reload_under_load_has_no_failed_requests(tmp_path) -> None:
    repo = tmp_path / "repo"
    _save(gemm_model(), repo / "gemm" / "1" / "model.onnx")
    with Server(repo, http_port=None, grpc_port=0, metrics_port=None, control="poll", poll_seconds=0.2,
                threads=1) as server:
        url = f"127.0.0.1:{server.grpc_port}"
        stop = threading.Event()
        seen: set[str] = set()
        failures: list[str] = []
        count = [0]

        def load() -> None:
            c = grpcclient.InferenceServerClient(url)
            x = np.ones((1, 16), np.float32)
            while not stop.is_set():
                try:
                    r = c.infer("gemm", [_gemm_input(grpcclient, x)])
                    seen.add(r.get_response().model_version)
                    count[0] += 1
                except InferenceServerException as e:
                    failures.append(str(e))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        _save(gemm_model(W * 2, B), repo / "gemm" / "2" / "model.onnx")  # a new version appears
        deadline = time.time() + 20
        while "2" not in seen and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert not failures, failures[:3]
        assert seen == {"1", "2"} and count[0] > 20
        y = grpcclient.InferenceServerClient(url).infer("gemm", [_gemm_input(grpcclient, np.ones((1, 16),
                                                                                              np.float32))])
        np.testing.assert_allclose(y.as_numpy("y"), np.ones((1, 16)) @ (W * 2) + B, rtol=1e-5)


def test_explicit_mode_load_and_unload(tmp_path) -> None:
    repo = build_repository(tmp_path / "repo")
    with Server(repo, http_port=0, grpc_port=None, metrics_port=None, control="explicit") as server:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        assert not c.is_model_ready("gemm")
        assert c.is_server_ready()
        c.load_model("gemm")
        assert c.is_model_ready("gemm")
        index = {r["name"]: r for r in c.get_model_repository_index()}
        assert index["gemm"]["state"] == "READY" and index["add_sub"]["state"] == "UNAVAILABLE"
        c.unload_model("gemm")
        assert not c.is_model_ready("gemm")
        with pytest.raises(InferenceServerException) as e:
            c.load_model("../etc")
        assert str(e.value.status()) in ("400", "404")  # the path never reaches outside the repository


def test_graceful_shutdown_finishes_in_flight_requests(tmp_path) -> None:
    repo = _slow_model_repo(tmp_path, "max_queue_delay_microseconds: 0")
    server = Server(repo, http_port=0, grpc_port=None, metrics_port=None, threads=1).start_in_thread()
    url = f"127.0.0.1:{server.http_port}"
    results: list[str] = []

    def one() -> None:
        try:
            httpclient.InferenceServerClient(url, network_timeout=60).infer(
                "slow", [_gemm_input(httpclient, np.ones((1, 128, 512), np.float32))])
            results.append("ok")
        except Exception as e:  # noqa: BLE001
            results.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.15)
    server.stop_thread()
    for t in threads:
        t.join()
    assert results == ["ok", "ok"], results


def test_failed_model_at_start_is_one_line(tmp_path) -> None:
    from slipway.errors import UserError

    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="broken"):
        Server(repo, http_port=0, grpc_port=None, metrics_port=None).start_in_thread()
    server = Server(repo, http_port=0, grpc_port=None, metrics_port=None, exit_on_error=False).start_in_thread()
    try:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        assert c.is_server_live() and not c.is_server_ready()
        row = c.get_model_repository_index()[0]
        assert row["state"] == "UNAVAILABLE" and "broken" in row["reason"]
    finally:
        server.stop_thread()


def test_tuned_settings_are_applied(tmp_path) -> None:
    import json

    from slipway.serve.model import engine_options
    from slipway.settings import digest, settings_path

    repo = tmp_path / "repo"
    path = repo / "gemm" / "1" / "model.onnx"
    _save(gemm_model(), path)
    settings_path(path).write_text(json.dumps({
        "backend": "ort", "options": {"threads": 1, "precision": "fp32", "settings": {"execution_mode": "parallel"}},
        "batch": 8, "concurrency": 2, "model_sha256": digest(path)}))
    from slipway.serve.repository import Repository

    r = Repository(repo)
    backend, options = engine_options(r.config("gemm"), path)
    assert backend == "ort" and options.threads == 1 and options.settings == {"execution_mode": "parallel"}


def test_rss_stays_flat(grpc_url, server) -> None:
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    c = grpcclient.InferenceServerClient(grpc_url)
    x = np.ones((2, 16), np.float32)
    inp = [_gemm_input(grpcclient, x)]
    for _ in range(500):  # warm up allocators and caches
        c.infer("gemm", inp)
    before = rss()
    for _ in range(3000):
        c.infer("gemm", inp)
    grown = rss() - before
    assert grown < 8 << 20, f"RSS grew {grown / 2**20:.1f} MiB over 3000 requests"



def test_client_that_goes_away_is_cancelled(tmp_path) -> None:
    """A request queued behind a 0.6 s run whose client gives up after 0.15 s never runs."""
    repo = tmp_path / "repo"
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "1" / "model.py").write_text(
        "import time\n\ndef infer(inputs):\n    time.sleep(0.6)\n    return {'y': inputs['x']}\n")
    (repo / "sleepy" / "config.pbtxt").write_text("""
backend: "python"
max_batch_size: 1
dynamic_batching { }
input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }]
""")
    with Server(repo, http_port=None, grpc_port=0, metrics_port=None, allow_python_models=True) as server:
        url = f"127.0.0.1:{server.grpc_port}"
        x = np.ones((1, 4), np.float32)
        busy = threading.Thread(target=lambda: grpcclient.InferenceServerClient(url).infer(
            "sleepy", [_gemm_input(grpcclient, x)]))
        busy.start()
        mv = server.plane._version("sleepy")
        deadline = time.time() + 10
        while mv.batcher.pending < 1 and time.time() < deadline:
            time.sleep(0.01)
        c = grpcclient.InferenceServerClient(url)
        with pytest.raises(InferenceServerException, match="Deadline"):
            c.infer("sleepy", [_gemm_input(grpcclient, x)], client_timeout=0.15)  # gives up while queued
        busy.join()
        deadline = time.time() + 5
        while mv.stats.failures["CANCELED"] < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert mv.stats.failures["CANCELED"] == 1
        assert mv.stats.inference_count == 1 and mv.stats.execution_count == 1  # the abandoned one never ran


def test_bearer_token_and_default_host(tmp_path) -> None:
    repo = tmp_path / "repo"
    _save(gemm_model(), repo / "gemm" / "1" / "model.onnx")
    server = Server(repo, http_port=0, grpc_port=None, metrics_port=None, token="s3cret")
    assert server.host == "127.0.0.1"
    with server:
        url = f"127.0.0.1:{server.http_port}"
        x = np.ones((1, 16), np.float32)
        with pytest.raises(InferenceServerException) as e:
            httpclient.InferenceServerClient(url).infer("gemm", [_gemm_input(httpclient, x)])
        assert str(e.value.status()) == "401"
        ok = httpclient.InferenceServerClient(url).infer("gemm", [_gemm_input(httpclient, x)],
                                                          headers={"Authorization": "Bearer s3cret"})
        np.testing.assert_allclose(ok.as_numpy("y"), x @ W + B, rtol=1e-5, atol=1e-5)
