"""slipway serve --ray on a one-node Ray cluster: tritonclient over Ray's HTTP and gRPC proxies gets onnxruntime's
answers and slipway serve's messages; statistics add up over replicas; a killed replica and a rolled-out change
lose no request beyond the counted fast failures."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.corpus import model as corpus_model
from tests.corpus import ort_session
from tests.rayserve.conftest import Load, build_ray_repository
from tests.serve.conftest import B, W

pytestmark = pytest.mark.xdist_group("ray")  # one local Ray cluster, on one worker (make test: --dist loadgroup)


def _http(serving, path: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{serving.http_port}{path}", data=body,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def _plain_server(repo, tmp_path):
    """``slipway serve`` on the same repository, in its own process (grpc.aio serves one event loop per process,
    and Ray's driver has its own here)."""
    import tritonclient.http as h

    from slipway.serve import free_port, wait_ready

    http, grpc = free_port(), free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "slipway", "serve", str(repo), "--http-port", str(http),
                                 "--grpc-port", str(grpc), "--metrics-port", "-1"], stdout=out, stderr=out)
    try:
        wait_ready(proc, lambda: h.InferenceServerClient(f"127.0.0.1:{http}").is_server_ready(), log=log)
        yield types.SimpleNamespace(http_port=http, grpc_port=grpc)
    finally:
        proc.terminate()
        proc.wait(30)


def test_tritonclient_http_and_grpc_get_onnxruntimes_answers(serving):
    import tritonclient.grpc as g
    import tritonclient.http as h

    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    page = np.random.default_rng(1).random((2, 3, 48, 192)).astype(np.float32)
    cls = ort_session(corpus_model("ppocr_cls"))
    want_cls = cls.run(None, {cls.get_inputs()[0].name: page})[0]
    for mod, port in ((h, serving.http_port), (g, serving.grpc_port)):
        client = mod.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("gemm")
        inp = mod.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)  # binary tensors over HTTP, raw contents over gRPC
        np.testing.assert_allclose(client.infer("gemm", [inp]).as_numpy("y"), x @ W + B, rtol=1e-5, atol=1e-5)
        name = cls.get_inputs()[0].name
        inp = mod.InferInput(name, list(page.shape), "FP32")
        inp.set_data_from_numpy(page)
        got = client.infer("cls", [inp]).as_numpy(cls.get_outputs()[0].name)
        np.testing.assert_allclose(got, want_cls, rtol=1e-4, atol=1e-5)


def test_metadata_config_and_mistakes_are_slipway_serves(serving, ray_repo, tmp_path):
    import tritonclient.grpc as g

    with _plain_server(ray_repo, tmp_path) as plain:
        for path in ("/v2/models/gemm", "/v2/models/cls/config", "/v2/models/nope", "/v2/models/gemm/versions/7",
                     "/v2/models/gemm/versions/x/ready"):
            assert _http(serving, path) == _http(plain, path), path
        bad = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
        code, body = _http(serving, "/v2/models/gemm/infer", bad.encode())
        assert (code, body) == _http(plain, "/v2/models/gemm/infer", bad.encode()) and code == 400
        grpc_errors = []
        for url in (f"127.0.0.1:{serving.grpc_port}", f"127.0.0.1:{plain.grpc_port}"):
            client = g.InferenceServerClient(url)
            inp = g.InferInput("x", [1, 3], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
            for model in ("gemm", "nope"):
                with pytest.raises(g.InferenceServerException) as e:
                    client.infer(model, [inp])
                grpc_errors.append((e.value.status(), e.value.message()))
        assert grpc_errors[:2] == grpc_errors[2:]
        assert grpc_errors[0][0] == "StatusCode.INVALID_ARGUMENT" and body["error"] in grpc_errors[0][1]
    code, body = _http(serving, "/v2/systemsharedmemory/region/r/register", b'{"key": "/k", "byte_size": 4}')
    assert code == 400 and "not available when the repository is served on Ray" in body["error"]
    code, body = _http(serving, "/v2/repository/models/gemm/unload", b"{}")
    assert code == 503 and "served on Ray" in body["error"]


def test_statistics_and_metrics_add_up_over_replicas(serving):
    import ray
    import tritonclient.grpc as g

    from slipway.rayserve.registry import NAMESPACE, REGISTRY

    client = g.InferenceServerClient(f"127.0.0.1:{serving.grpc_port}")
    time.sleep(1.2)  # statistics lag by up to a report interval and a refresh: let the earlier tests' arrive
    before = client.get_inference_statistics("gemm").model_stats[0].inference_count
    inp = g.InferInput("x", [2, 16], "FP32")
    inp.set_data_from_numpy(np.ones((2, 16), np.float32))
    for _ in range(40):
        client.infer("gemm", [inp])
    time.sleep(1.2)  # two report intervals
    stats = client.get_inference_statistics("gemm").model_stats[0]
    assert stats.inference_count - before == 80
    table = ray.get(ray.get_actor(REGISTRY, namespace=NAMESPACE).table.remote())
    live = [r for r in table.values() if r["deployment"] == "gemm" and r["live"]]
    assert len(live) == 2  # slipway.ray.replicas: 2
    per_replica = [next(s.inference_count for model, _, s, _ in r["stats"] if model == "gemm")
                   for r in table.values() if r["deployment"] == "gemm"]
    assert sum(per_replica) == stats.inference_count
    with urllib.request.urlopen(f"http://127.0.0.1:{serving.http_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    line = next(x for x in text.splitlines() if x.startswith('nv_inference_count{model="gemm"'))
    assert float(line.split()[-1]) == stats.inference_count
    assert "slipway_ray_requests_unavailable_total" in text


def test_a_killed_replica_is_replaced_and_no_request_hangs(serving):
    import ray

    from slipway.rayserve.registry import NAMESPACE, REGISTRY

    registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
    victim = next(r for r, v in ray.get(registry.table.remote()).items() if v["deployment"] == "gemm" and v["live"])
    actor = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                 if "model-gemm" in a["name"] and victim in a["name"])
    with Load(f"127.0.0.1:{serving.grpc_port}", [lambda x: x @ W + B]) as load:
        time.sleep(1.0)
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        time.sleep(4.0)
    assert load.outcomes["ok"] > 20 and load.outcomes["wrong"] == 0
    assert set(load.outcomes) <= {"ok", "unavailable"}, load.outcomes  # failures, if any, are fast 503s
    assert load.slowest < 20
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # Ray starts a new replica in its place
        table = ray.get(registry.table.remote())
        if sum(v["deployment"] == "gemm" and v["live"] and r != victim for r, v in table.items()) == 2:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the killed replica was not replaced within 60 s")


def test_a_changed_model_rolls_out_without_failed_requests(serving, ray_repo):
    build_ray_repository(ray_repo, w_scale=2.0)  # the gemm model changes: y = x @ 2W + B
    with Load(f"127.0.0.1:{serving.grpc_port}", [lambda x: x @ W + B, lambda x: x @ (2 * W) + B]) as load:
        time.sleep(0.5)
        serving.deploy()
        time.sleep(0.5)
    assert load.outcomes["ok"] > 20 and set(load.outcomes) == {"ok"}, load.outcomes
    import tritonclient.grpc as g

    client = g.InferenceServerClient(f"127.0.0.1:{serving.grpc_port}")
    inp = g.InferInput("x", [1, 16], "FP32")
    x = np.ones((1, 16), np.float32)
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("gemm", [inp]).as_numpy("y"), x @ (2 * W) + B, rtol=1e-5)
