"""slipway serve --ray on a multi-node cluster on this machine (a head and two one-CPU workers): replicas land on
both workers, tritonclient answers equal onnxruntime's, and a worker removed under load loses no request beyond
the counted fast failures."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.rayserve.conftest import GEMM_CONFIG, Load
from tests.serve.conftest import B, W, _save, gemm_model

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def test_replicas_spread_over_workers_and_a_lost_worker_costs_only_counted_failures(tmp_path):
    import ray
    import tritonclient.grpc as g
    import tritonclient.http as h
    from ray.cluster_utils import Cluster

    from slipway.rayserve import RayServing, Scale
    from slipway.rayserve.registry import NAMESPACE, REGISTRY
    from slipway.serve import free_port

    _save(gemm_model(), tmp_path / "repo" / "gemm" / "1" / "model.onnx")
    (tmp_path / "repo" / "gemm" / "config.pbtxt").write_text(GEMM_CONFIG)  # two replicas
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # controller, proxies, ingress: 0 CPU
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    serving = RayServing(tmp_path / "repo", address=cluster.address, http_port=free_port(), grpc_port=free_port(),
                         scale=Scale(cpus=1))  # one replica fits a worker
    try:
        serving.deploy()
        registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
        live = [r for r in ray.get(registry.table.remote()).values() if r["live"]]
        assert len(live) == 2 and len({r["node"] for r in live}) == 2  # one replica on each worker
        assert {r["node"] for r in live} == {w.node_id for w in workers}
        x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
        for mod, port in ((h, serving.http_port), (g, serving.grpc_port)):
            client = mod.InferenceServerClient(f"127.0.0.1:{port}")
            inp = mod.InferInput("x", [4, 16], "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_allclose(client.infer("gemm", [inp]).as_numpy("y"), x @ W + B, rtol=1e-5, atol=1e-5)
        with Load(f"127.0.0.1:{serving.grpc_port}", [lambda v: v @ W + B]) as load:
            time.sleep(2.0)
            cluster.remove_node(workers[0])
            time.sleep(8.0)
        assert load.outcomes["ok"] > 50 and load.outcomes["wrong"] == 0
        assert set(load.outcomes) <= {"ok", "unavailable"}, load.outcomes  # failures, if any, are fast 503s
        assert load.slowest < 30
        counted = ray.get(registry.table.remote())
        assert any(r["live"] for r in counted.values())  # the other worker's replica kept serving
    finally:
        serving.shutdown()
        cluster.shutdown()


def test_autoscaling_adds_a_replica_under_load(tmp_path):
    """--autoscale 1:2 with a low target: sustained load brings the second replica, which then serves."""
    import ray
    import tritonclient.grpc as g

    from slipway.rayserve import RayServing, Scale
    from slipway.rayserve.registry import NAMESPACE, REGISTRY
    from slipway.serve import free_port

    _save(gemm_model(), tmp_path / "repo" / "gemm" / "1" / "model.onnx")
    (tmp_path / "repo" / "gemm" / "config.pbtxt").write_text("max_batch_size: 8\ndynamic_batching {}\n")
    serving = RayServing(tmp_path / "repo", http_port=free_port(), grpc_port=free_port(), init={"num_cpus": 2},
                         scale=Scale(autoscale=(1, 2), target_ongoing_requests=1, cpus=0.5, upscale_delay_s=1))
    try:
        serving.deploy()
        registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)

        def live() -> list[dict]:
            return [r for r in ray.get(registry.table.remote()).values() if r["live"]]

        assert len(live()) == 1
        with Load(f"127.0.0.1:{serving.grpc_port}", [lambda v: v @ W + B], clients=8) as load:
            deadline = time.monotonic() + 60
            while len(live()) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert len(live()) == 2, "no second replica within 60 s of load"
            time.sleep(3.0)
        assert set(load.outcomes) == {"ok"}, load.outcomes
        time.sleep(1.0)
        counts = [next(s.inference_count for model, _, s, _ in r["stats"] if model == "gemm") for r in live()]
        assert all(c > 0 for c in counts), counts  # both replicas served requests
        client = g.InferenceServerClient(f"127.0.0.1:{serving.grpc_port}")
        assert client.get_inference_statistics("gemm").model_stats[0].inference_count >= sum(counts)
    finally:
        serving.shutdown()
