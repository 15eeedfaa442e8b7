from __future__ import annotations

import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

from slipway.backends import get
from slipway.errors import UserError
from slipway.perf import benchmark
from slipway.perf.feeds import make_feeds
from slipway.perf.runner import measure
from slipway.perf.stats import Budget
from tests.passes.util import run
from tests.perf.models import matmul, mixed, save

FAST = dict(warmup=2, min_time_s=0.05, max_time_s=0.5, min_runs=10)
KEYS = {"backend", "batch", "threads", "concurrency", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput",
        "rss_mb", "runs", "stable"}


def test_results_have_the_keys_and_sane_values():
    (r,) = benchmark(matmul(k=384), threads=[1], **FAST)
    d = r.to_dict()
    assert KEYS <= set(d)
    assert (d["backend"], d["batch"], d["threads"], d["concurrency"]) == ("ort", 1, 1, 1)
    assert 0 < d["min_ms"] <= d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"] <= d["max_ms"]
    assert d["runs"] >= 10 and d["rss_mb"] > 10
    # one instance: throughput is requests over the wall clock, close to 1000 / mean latency
    assert 0.7 < d["throughput"] / (1000 / d["mean_ms"]) <= 1.05
    assert d["throughput"] == pytest.approx(d["runs"] / d["wall_s"])


def test_batch_sweep_on_a_dynamic_batch_model():
    results = benchmark(matmul(), batches=[1, 4, 16], threads=[1], **FAST)
    assert [r.batch for r in results] == [1, 4, 16]
    for r in results:
        assert r.throughput == pytest.approx(r.batch * r.runs / r.wall_s)
    # 16 rows per run cost far less than 16 runs of one row
    assert results[2].p50_ms < 16 * results[0].p50_ms


def test_threads_and_concurrency_sweep_in_order():
    results = benchmark(matmul(), threads=[1, 2], concurrency=[1, 2], **FAST)
    assert [(r.threads, r.concurrency) for r in results] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r.runs >= 10 for r in results)


def test_static_batch_model_fails_before_running():
    with pytest.raises(UserError, match="cannot run batch 8: input 'x' has a static batch of 1") as e:
        benchmark(matmul(batch=1), batches=[1, 8], **FAST)
    assert "\n" not in str(e.value)
    (r,) = benchmark(matmul(batch=1), **FAST)  # default batch: the model's own
    assert r.batch == 1


def test_npz_inputs_are_used(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((1, 3, 8), np.float32), ids=np.zeros((1, 3), np.int64), mask=np.ones((1, 3, 8), bool))
    results = benchmark(mixed(), batches=[1, 4], inputs=path, **FAST)
    assert [r.batch for r in results] == [1, 4]
    with pytest.raises(UserError, match="input 'ids' is missing"):
        np.savez(path, x=np.ones((1, 3, 8), np.float32), mask=np.ones((1, 3, 8), bool))
        benchmark(mixed(), inputs=path, **FAST)


def test_random_inputs_run_the_model_like_onnxruntime():
    feeds = make_feeds(mixed(), [4], shapes={"x": [1, 6, 8]})[4]
    (session,) = get("ort").load(mixed())
    got = session.run(feeds)["y"]
    np.testing.assert_allclose(got, run(mixed(), feeds)[0], rtol=1e-6)
    assert got.shape == (4, 6, 8)


class Recording:
    """A real session that records which thread ran each request, and when."""

    def __init__(self, session, log: list) -> None:
        self.session, self.log = session, log

    def run(self, feeds):
        t0 = time.perf_counter()
        out = self.session.run(feeds)
        self.log.append((id(self), threading.get_ident(), t0, time.perf_counter()))
        return out


def test_concurrent_instances_run_in_their_own_threads_at_once():
    sessions = get("ort").load(matmul(k=512), instances=2)
    log: list = []
    recorded = [Recording(s, log) for s in sessions]
    feeds = make_feeds(matmul(k=512), [8])[8]
    m = measure(recorded, feeds, Budget(warmup=1, min_time_s=0.1, max_time_s=0.5))
    assert len(m.latencies_ms) == len(log) - 2  # warm-up runs are not timed
    threads = [{t for s, t, _, _ in log if s == id(r)} for r in recorded]
    assert all(len(t) == 1 for t in threads) and threads[0] != threads[1]  # one thread per instance
    spans = sorted((a, b) for _, _, a, b in log)
    assert any(b0 > a1 for (_, b0), (a1, _) in zip(spans, spans[1:], strict=False))  # some requests overlapped
    for s in sessions:
        s.close()


def test_concurrency_two_works_and_counts_both_instances():
    one, two = benchmark(matmul(), concurrency=[1, 2], threads=[1], **FAST)
    assert two.concurrency == 2 and two.runs >= 10
    assert two.throughput == pytest.approx(two.runs / two.wall_s)


def test_time_limit_stops_an_unsettled_configuration():
    start = time.perf_counter()
    (r,) = benchmark(matmul(), warmup=1, min_time_s=0.05, max_time_s=0.2, min_runs=10**9)
    assert not r.stable and r.runs > 0
    assert r.wall_s < 0.5 and time.perf_counter() - start < 5


def test_unavailable_backends_are_skipped_with_a_warning():
    warnings: list[str] = []
    results = benchmark(matmul(), backends=["ort", "ort-tensorrt"], warn=warnings.append, **FAST)
    assert [r.backend for r in results] == ["ort"]
    assert len(warnings) == 1 and warnings[0].startswith("skipping backend 'ort-tensorrt':")
    with pytest.raises(UserError, match="no requested backend is available here: ort-tensorrt"):
        benchmark(matmul(), backends=["ort-tensorrt"], **FAST)
    with pytest.raises(UserError, match="unknown backend 'nope'"):
        benchmark(matmul(), backends=["nope"], **FAST)


def test_settings_reach_the_engine():
    with pytest.raises(UserError, match="unknown setting 'bogus'"):
        benchmark(matmul(), settings={"bogus": 1}, **FAST)
    (r,) = benchmark(matmul(), settings={"ort:graph_optimization_level": "disabled", "openvino:hint": "x"}, **FAST)
    assert r.runs >= 10


def test_isolated_run_in_a_fresh_process():
    (r,) = benchmark(matmul(k=64), isolate=True, **FAST)  # an in-memory model goes through a temp file
    assert r.runs >= 10 and r.p50_ms <= r.p99_ms
    assert 20 < r.rss_mb < 2000  # the child's high-water mark: interpreter, onnxruntime, model


@pytest.mark.slow
def test_isolated_peak_is_each_fresh_process_own(tmp_path):
    big = save(matmul(k=2048), tmp_path / "big.onnx")  # 16 MiB of weights
    (s,) = benchmark(save(matmul(k=64), tmp_path / "small.onnx"), isolate=True, **FAST)
    (b,) = benchmark(big, isolate=True, **FAST)
    assert s.rss_mb < b.rss_mb - 14  # the big model's weights show, and nothing else differs


def test_in_process_peak_is_sampled_per_configuration():
    (s,) = benchmark(matmul(k=64), **FAST)
    (b,) = benchmark(matmul(k=2048), **FAST)
    assert s.rss_mb < b.rss_mb - 14


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="needs a host without CUDA")
def test_gpu_backend_is_not_available_on_cpu_hosts():
    with pytest.raises(UserError, match="ort-cuda"):
        benchmark(matmul(), backends=["ort-cuda"], **FAST)


@pytest.mark.skipif(get("openvino").available() is not None, reason="openvino is not installed")
def test_two_backends_and_openvino_outputs_are_copies():
    results = benchmark(matmul(), backends=["ort", "openvino"], batches=[1, 4], **FAST)
    assert [(r.backend, r.batch) for r in results] == [("ort", 1), ("ort", 4), ("openvino", 1), ("openvino", 4)]
    (session,) = get("openvino").load(matmul())
    feeds = make_feeds(matmul(), [2])[2]
    first = session.run(feeds)["z"]
    kept = first.copy()
    session.run({"x": -feeds["x"]})  # the next request must not write into the first one's result
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_allclose(first, run(matmul(), feeds)[0], rtol=1e-4, atol=1e-4)
