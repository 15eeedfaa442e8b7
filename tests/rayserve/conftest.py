"""A repository served on a local Ray cluster: the gemm model of the serve tests (two replicas) and PP-OCR's
angle classifier (a real paddle2onnx export, one replica)."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.corpus import model as corpus_model
from tests.serve.conftest import _save, gemm_model

pytest.importorskip("ray.serve")

GEMM_CONFIG = ('max_batch_size: 8\ndynamic_batching {}\ninstance_group [{ count: 1 kind: KIND_CPU }]\n'
               'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
               'parameters { key: "slipway.ray.replicas" value: { string_value: "2" } }\n')
CLS_CONFIG = ('max_batch_size: 4\ninstance_group [{ count: 1 kind: KIND_CPU }]\n'
              'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n')


def build_ray_repository(root: Path, w_scale: float = 1.0) -> Path:
    from tests.serve.conftest import B, W

    _save(gemm_model(W * w_scale, B), root / "gemm" / "1" / "model.onnx")
    (root / "gemm" / "config.pbtxt").write_text(GEMM_CONFIG)
    (root / "cls" / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(corpus_model("ppocr_cls"), root / "cls" / "1" / "model.onnx")
    (root / "cls" / "config.pbtxt").write_text(CLS_CONFIG)
    return root


@pytest.fixture(scope="package")
def ray_repo(tmp_path_factory) -> Path:
    return build_ray_repository(tmp_path_factory.mktemp("rayrepo"))


@pytest.fixture(scope="package")
def serving(ray_repo):
    """The repository deployed on a fresh local Ray (2 CPUs; replicas reserve 0.5 each)."""
    from slipway.rayserve import RayServing, Scale
    from slipway.serve import free_port

    s = RayServing(ray_repo, http_port=free_port(), grpc_port=free_port(), scale=Scale(cpus=0.5),
                   init={"num_cpus": 2})
    s.deploy()
    yield s
    s.shutdown()


class Load:
    """Clients sending gemm requests in a loop from threads until stopped: outcomes counted, every answer checked,
    the slowest request timed (none may hang)."""

    def __init__(self, url: str, expected, clients: int = 4) -> None:
        import tritonclient.grpc as g

        self.outcomes: Counter = Counter()
        self.slowest = 0.0
        self._stop = threading.Event()
        self._expected = expected
        self._threads = [threading.Thread(target=self._run, args=(g.InferenceServerClient(url), i), daemon=True)
                         for i in range(clients)]

    def _run(self, client, seed: int) -> None:
        import tritonclient.grpc as g

        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            x = rng.standard_normal((1, 16)).astype(np.float32)
            inp = g.InferInput("x", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            t = time.monotonic()
            try:
                y = client.infer("gemm", [inp], client_timeout=30).as_numpy("y")
                ok = any(np.allclose(y, f(x), rtol=1e-4, atol=1e-5) for f in self._expected)
                self.outcomes["ok" if ok else "wrong"] += 1
            except Exception as e:  # noqa: BLE001 - counted by kind
                self.outcomes["unavailable" if "UNAVAILABLE" in str(e) else f"other: {str(e)[:200]}"] += 1
            self.slowest = max(self.slowest, time.monotonic() - t)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
