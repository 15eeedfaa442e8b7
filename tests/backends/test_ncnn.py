"""The ncnn engine: numerics against onnxruntime (a zoo model at batch 1 and 3, dynamic height and width), threads,
precision and settings, one sample at a time (a batch runs sample by sample), the verified conversion cache,
one-line errors (the op and node it cannot take, integer inputs), and a config.pbtxt ``backend: "ncnn"`` served."""

from __future__ import annotations

import pytest

from slipway.backends import Options, get, load
from slipway.errors import UserError
from tests.backends.test_mnn import (  # noqa: F401  (engine_cache: the autouse conversion cache fixture)
    RNG,
    cache_is_keyed_and_stale_entries_rebuilt,
    close,
    conv_net,
    engine_cache,
    images,
    layers_match,
    pipeline_step,
    served_infer,
    unconvertible_is_one_line,
    zoo_matches,
)
from tests.backends.test_ort import mlp, reference, two_io, x

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

import slipway.backends.ncnn as ncnnb  # noqa: E402


def test_zoo_model_matches_onnxruntime_at_two_batches_and_thread_counts():
    zoo_matches("ncnn")  # batch 3: three samples run one after another, stacked


def test_compare_layer_by_layer_against_onnxruntime():
    layers_match("ncnn")


def test_dynamic_height_and_width_run_at_each_request_shape():
    model = conv_net()
    session = load(model, "ncnn")
    for shape in ((1, 16, 16), (2, 24, 40), (1, 7, 5)):
        feeds = images(*shape)
        close(session.run(feeds)["y"], reference(model, feeds)[0])


@pytest.mark.parametrize("settings", [{"packing": False}, {"winograd": False}, {"sgemm": False}], ids=str)
def test_settings(settings):
    model = conv_net(dynamic_hw=False)
    (session,) = get("ncnn").load(model, Options(threads=1, settings=settings))
    feeds = images(2)
    close(session.run(feeds)["y"], reference(model, feeds)[0])


def test_fp16_follows_the_cpu():
    model = conv_net(dynamic_hw=False)
    backend = get("ncnn")
    if "fp16" not in backend.precisions:
        with pytest.raises(UserError, match="precision 'fp16' is not supported here"):
            backend.load(model, Options(precision="fp16"))
        return
    (session,) = backend.load(model, Options(precision="fp16"))
    feeds = images(1)
    # FP16 storage (and FP16 arithmetic on ARMv8.2) keeps 11 significant bits: a 3x3x3 conv, a 1x1x8 conv
    # and a sigmoid in [0, 1] stay within a few 1e-3 of FP32
    close(session.run(feeds)["y"], reference(model, feeds)[0], rtol=1e-2)


def test_mlp_runs_sample_by_sample():
    model = mlp()
    session = load(model, "ncnn")
    feeds = x(5)
    out = session.run(feeds)["y"]
    assert out.shape == (5, 4)
    close(out, reference(model, feeds)[0])


def test_integer_inputs_are_refused_before_converting():
    with pytest.raises(UserError, match="ncnn computes in float only: input 'i' is int64"):
        load(two_io(), "ncnn")


def test_unconvertible_op_names_engine_op_and_node():
    unconvertible_is_one_line("ncnn")


def test_cache_is_keyed_and_stale_entries_are_rebuilt(monkeypatch):
    cache_is_keyed_and_stale_entries_rebuilt("ncnn", ncnnb, monkeypatch)


@pytest.mark.parametrize("exported", [False, True], ids=["model.onnx", "exported"])
def test_served_config_backend_ncnn_answers_an_infer(tmp_path, exported):
    served_infer("ncnn", tmp_path, exported)


@pytest.mark.parametrize(("options", "message"), [
    (Options(settings={"packing": "yes"}), "packing='yes' is not valid"),
    (Options(precision="int4"), "precision 'int4' is not supported"),
])
def test_bad_options(options, message):
    with pytest.raises(UserError, match=message):
        get("ncnn").load(mlp(), options)


def test_pipeline_model_step_on_ncnn(tmp_path):
    pipeline_step("ncnn", tmp_path)
