"""The GPU backends (ORT CUDA / TensorRT, OpenVINO GPU): numerics against ORT CPU where a GPU is present.

Tests marked ``gpu`` skip when the backend's ``available()`` gives a reason; the unmarked ones
check that an absent GPU backend says why, in one line, instead of failing obscurely.
"""

from __future__ import annotations

import numpy as np
import pytest

from slipway.backends import Options, available, get, load
from slipway.errors import UserError
from tests.backends.test_ort import mlp, reference, x

GPU_BACKENDS = ["ort-cuda", "ort-tensorrt", "openvino-gpu"]


def need(name: str):
    why = available()[name]
    if why:
        pytest.skip(f"{name}: {why}")
    return get(name)


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_absent_backends_say_why(name):
    why = available()[name]
    if why is None:
        pytest.skip(f"{name} is available here")
    assert isinstance(why, str) and why and "\n" not in why
    with pytest.raises(UserError, match=f"backend '{name}' is not available"):
        load(mlp(), name)


def test_gpu_backends_declare_settings_and_precisions():
    for name in ("ort-cuda", "ort-tensorrt"):
        backend = get(name)  # importing the table entry needs no GPU
        assert {"graph_optimization_level", "io_binding"} <= set(backend.settings)
        assert "fp16" in backend.precisions
    assert "conv_algo_search" in get("ort-cuda").settings
    assert "engine_cache" in get("ort-tensorrt").settings


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
@pytest.mark.parametrize("io_binding", [False, True])
def test_mlp_matches_ort_cpu(name, io_binding):
    backend = need(name)
    settings = {"io_binding": io_binding} if name.startswith("ort") else {}
    model = mlp()
    (session,) = backend.load(model, Options(settings=settings))
    for batch in (1, 4):
        feeds = x(batch)
        out = session.run(feeds)["y"]
        assert isinstance(out, np.ndarray)
        np.testing.assert_allclose(out, reference(model, feeds)[0], rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_tensorrt_fp16():
    backend = need("ort-tensorrt")
    model = mlp()
    (session,) = backend.load(model, Options(precision="fp16"))
    feeds = x(2)
    np.testing.assert_allclose(session.run(feeds)["y"], reference(model, feeds)[0], rtol=0.02, atol=0.05)


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_zoo_model_matches_ort_cpu(name):
    from tests.zoo import export

    backend = need(name)
    path = str(export("repvgg"))
    sessions = backend.load(path, instances=2)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    want = reference(path, feeds)[0]
    scale = max(1.0, float(np.abs(want).max()))
    for session in sessions:
        np.testing.assert_allclose(session.run(feeds)["y"], want, rtol=1e-3, atol=1e-3 * scale)
