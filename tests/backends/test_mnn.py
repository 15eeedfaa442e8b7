"""The MNN engine: numerics against onnxruntime (a zoo model, dynamic dims, int64 inputs), threads and settings,
the verified conversion cache (keyed, rebuilt when stale, nothing written on failure), one-line errors naming
the op and node, and a config.pbtxt ``backend: "mnn"`` served over KServe v2.

The helpers here serve tests/backends/test_ncnn.py too (the same checks on the other edge engine).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from slipway.backends import Options, get, load
from slipway.errors import UserError, VerificationError
from tests.backends.test_ort import mlp, reference, two_io, x

pytest.importorskip("MNN")

import slipway.backends.mnn as mnnb  # noqa: E402
from slipway.backends import edge  # noqa: E402

RNG = np.random.default_rng(3)


def close(actual: np.ndarray, want: np.ndarray, rtol: float = 1e-3) -> None:
    """Within verify's bar (atol 1e-4 + rtol x max|ref|): the engines fold BatchNorm into Conv, pack weights and
    pick their own conv algorithms (Winograd, im2col + GEMM), so FP32 sums are reordered: errors of 1e-6 to 1e-5
    relative to the output's scale, far below this bar, which a wrong layout or a dropped op misses by orders."""
    assert actual.shape == want.shape and actual.dtype == want.dtype
    allowed = 1e-4 + rtol * float(np.abs(want).max())
    assert float(np.abs(actual.astype(np.float64) - want).max()) <= allowed


@pytest.fixture(autouse=True)
def engine_cache(tmp_path_factory, monkeypatch) -> None:
    """One conversion cache for the session's tests (conversions are the slow part), never the user's."""
    monkeypatch.setenv("SLIPWAY_CACHE", str(tmp_path_factory.getbasetemp() / "engine-cache"))


def conv_net(dynamic_hw: bool = True, seed: int = 0) -> ir.Model:
    """Conv 3x3 -> BatchNorm -> Relu -> Conv 1x1 -> sigmoid, [batch, 3, H, W] -> [batch, 4, H, W]: a detector's
    head in miniature, with H and W dynamic (an OCR model's input). Seeded: the tests share its conversion."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3
    bn = [np.abs(rng.standard_normal(8)).astype(np.float32) + 0.5, rng.standard_normal(8).astype(np.float32) * 0.1,
          rng.standard_normal(8).astype(np.float32) * 0.1, np.abs(rng.standard_normal(8)).astype(np.float32) + 0.5]
    inits = [numpy_helper.from_array(a, n) for a, n in zip([w1, w2, *bn], ["w1", "w2", "s", "b", "m", "v"],
                                                            strict=True)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn1"),
             helper.make_node("Relu", ["n"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "w2"], ["d"], name="conv2"),
             helper.make_node("Sigmoid", ["d"], ["y"], name="sigmoid")]
    h, w = ("h", "w") if dynamic_hw else (16, 16)
    graph = helper.make_graph(nodes, "conv_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["batch", 3, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, h, w])], inits)
    return _ir(graph)


def unconvertible() -> ir.Model:
    """Relu -> Hardmax: neither MNN's converter nor ncnn has Hardmax."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node("Hardmax", ["r"], ["y"], name="my_hardmax")]
    graph = helper.make_graph(nodes, "hm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])])
    return _ir(graph)


def _ir(graph: onnx.GraphProto) -> ir.Model:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return ir.serde.deserialize_model(model)


def images(batch: int, h: int = 16, w: int = 16) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((batch, 3, h, w)).astype(np.float32)}


def entries(engine: str) -> list[Path]:
    root = edge.cache_root() / engine
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


# --------------------------------------------------------------------------------------------- numerics


def zoo_matches(engine: str) -> None:
    """The zoo's MobileNetV2 at batch 1 and 3, on 1 and 2 threads, matches onnxruntime."""
    from tests.zoo import export

    path = str(export("mobilenetv2"))
    for threads in (1, 2):
        (session,) = get(engine).load(path, Options(threads=threads))
        assert session.backend == engine and [t.name for t in session.inputs] == ["x"]
        for batch in (1, 3):
            feeds = {"x": RNG.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
            close(session.run(feeds)["y"], reference(path, feeds)[0])


def test_zoo_model_matches_onnxruntime_at_two_batches_and_thread_counts():
    zoo_matches("mnn")


def layers_match(engine: str) -> None:
    """`slipway compare` layer by layer, onnxruntime vs ``engine``: every intermediate of the zoo's MobileNetV2
    (exposed as outputs before the conversion) is matched and within the default tolerance; with a tolerance
    below float32 rounding, the first divergent layer is named (a node of the ONNX graph)."""
    from slipway.compare import compare
    from tests.zoo import export

    path = export("mobilenetv2")
    report = compare(path, backend_a="ort", backend_b=engine)
    assert report.first_divergent_node is None and len(report.layers) > 60
    assert all(d.ok for d in report.layers)
    tight = compare(path, backend_a="ort", backend_b=engine, atol=0.0, rtol=1e-9)
    first = tight.first_divergent_node
    assert first is not None and first.name in {d.node for d in report.layers} and first.tensor


def test_compare_layer_by_layer_against_onnxruntime():
    layers_match("mnn")


def test_dynamic_height_and_width_run_at_each_request_shape():
    model = conv_net()
    session = load(model, "mnn")
    for shape in ((1, 16, 16), (2, 24, 40), (1, 7, 5)):
        feeds = images(*shape)
        close(session.run(feeds)["y"], reference(model, feeds)[0])


def test_int64_inputs_and_output_order_and_dtypes():
    model = two_io()
    session = load(model, "mnn")
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32), "i": np.arange(6, dtype=np.int64).reshape(2, 3)}
    out = session.run(feeds)
    assert list(out) == ["z", "y", "h"]
    for got, want in zip(out.values(), reference(model, feeds), strict=True):
        close(got, want)
    assert list(session.run(feeds, outputs=["h", "z"])) == ["h", "z"]


@pytest.mark.parametrize("settings", [{"precision_mode": "high"}, {"power": "high"}], ids=str)
def test_settings(settings):
    model = mlp()
    (session,) = get("mnn").load(model, Options(threads=1, settings=settings))
    feeds = x(4)
    close(session.run(feeds)["y"], reference(model, feeds)[0])


def test_fp16_follows_the_cpu():
    model = conv_net(dynamic_hw=False)
    backend = get("mnn")
    if not edge.cpu_has_fp16():  # x86: MNN's "low" precision would run FP32, so FP16 is not offered
        with pytest.raises(UserError, match="precision 'fp16' is not supported here"):
            backend.load(model, Options(precision="fp16"))
        return
    (session,) = backend.load(model, Options(precision="fp16"))
    feeds = images(1)
    # ARMv8.2 FP16 arithmetic keeps 11 significant bits: a 3x3x3 conv, a 1x1x8 conv and a sigmoid in [0, 1]
    # stay within a few 1e-3 of FP32
    close(session.run(feeds)["y"], reference(model, feeds)[0], rtol=1e-2)


def test_instances_run_on_their_own_threads():
    from concurrent.futures import ThreadPoolExecutor

    model = mlp()
    sessions = get("mnn").load(model, Options(threads=1), instances=2)
    feeds = [x(b) for b in (1, 2, 3, 4)]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda i: sessions[i % 2].run(feeds[i])["y"], range(4)))
    for f, got in zip(feeds, outs, strict=True):
        close(got, reference(model, f)[0])


def test_outputs_are_copies():
    session = load(mlp(), "mnn")
    first = session.run(x(2))["y"]
    kept = first.copy()
    session.run(x(2))
    np.testing.assert_array_equal(first, kept)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("options", "message"), [
    (Options(settings={"nope": 1}), "unknown setting 'nope'"),
    (Options(settings={"precision_mode": "fastest"}), "precision_mode='fastest' is not valid"),
    (Options(threads=-1), "threads must be an integer >= 0"),
    (Options(precision="int4"), "precision 'int4' is not supported"),
])
def test_bad_options(options, message):
    with pytest.raises(UserError, match=message):
        get("mnn").load(mlp(), options)


def test_bad_feeds_are_one_line_errors():
    session = load(mlp(), "mnn")
    with pytest.raises(UserError, match="missing input 'x'"):
        session.run({})
    with pytest.raises(UserError, match="expected dtype float32"):
        session.run({"x": np.zeros((1, 16), np.float64)})


def unconvertible_is_one_line(engine: str) -> None:
    with pytest.raises(UserError) as info:
        get(engine).load(unconvertible())
    message = str(info.value)
    assert message.startswith(f"{engine} cannot convert op Hardmax (node 'my_hardmax')"), message
    assert "\n" not in message
    assert entries(engine) == [] or all((p / edge.MANIFEST).is_file() for p in entries(engine))


def test_unconvertible_op_names_engine_op_and_node():
    unconvertible_is_one_line("mnn")


def test_wrong_conversion_is_a_verification_error_and_caches_nothing(monkeypatch):
    before = entries("mnn")
    # the engine's outputs off by one, as a wrong conversion gives them (the child runs in its own process:
    # its outputs file is changed once it is done)
    monkeypatch.setattr(edge, "_child", _child_then(_corrupt_outputs))
    with pytest.raises(VerificationError, match="mnn: the converted model disagrees with onnxruntime"):
        get("mnn").load(conv_net(dynamic_hw=False, seed=2))
    assert entries("mnn") == before


def _child_then(after):
    real = edge._child

    def child(converter, m, out, work):
        real(converter, m, out, work)
        after(work)

    return child


def _corrupt_outputs(work: Path) -> None:
    got = dict(np.load(work / "outputs.npz"))
    np.savez(work / "outputs.npz", **{k: v + 1 for k, v in got.items()})


# --------------------------------------------------------------------------------------------- cache


def cache_is_keyed_and_stale_entries_rebuilt(engine: str, module, monkeypatch) -> None:
    model = conv_net(dynamic_hw=False)
    first = module.converted(model)
    manifest = first.manifest
    assert manifest["engine"] == engine and manifest["verification"]["ok"]
    assert len(manifest["verification"]["runs"]) >= 2 and manifest["verification"]["batch_sizes"] == [1, 2]
    assert manifest["source_sha256"] == edge.digest(ir.serde.serialize_model(model).SerializeToString())
    for name, info in manifest["files"].items():
        assert edge.digest(str(first.file(name))) == info["sha256"]
    assert [t.name for t in first.inputs] == ["x"] and [t.name for t in first.outputs] == ["y"]
    calls = []
    real = edge._child
    monkeypatch.setattr(edge, "_child", lambda *a: calls.append(1) or real(*a))
    assert module.converted(model).path == first.path and not calls  # cached: no conversion

    # a file of the entry damaged: rebuilt in place
    victim = next(first.path / n for n in manifest["files"])
    victim.write_bytes(victim.read_bytes()[:100])
    again = module.converted(model)
    assert again.path == first.path and len(calls) == 1
    assert victim.stat().st_size == manifest["files"][victim.name]["bytes"]

    # the engine upgraded: another key, converted afresh
    monkeypatch.setattr(module.CONVERTER, "version", lambda: "99.0")
    upgraded = module.converted(model)
    assert upgraded.path != first.path and upgraded.manifest["engine_version"] == "99.0" and len(calls) == 2

    # the model changed: another key
    changed = conv_net(dynamic_hw=False, seed=1)
    assert module.converted(changed).path not in (first.path, upgraded.path) and len(calls) == 3
    assert not [p for p in (edge.cache_root() / engine).iterdir() if p.name.startswith((".build-", ".stale-"))]


def test_cache_is_keyed_and_stale_entries_are_rebuilt(monkeypatch):
    cache_is_keyed_and_stale_entries_rebuilt("mnn", mnnb, monkeypatch)


# --------------------------------------------------------------------------------------------- serving


def served_infer(engine: str, tmp_path: Path, exported: bool = False) -> None:
    """config.pbtxt ``backend: "<engine>"`` with two instances over model.onnx (or over the files ``slipway
    export`` wrote) answers a KServe v2 infer."""
    from slipway.backends.export import export
    from slipway.serve import Server

    model = conv_net(dynamic_hw=False)
    version = tmp_path / "repo" / "head" / "1"
    if exported:
        export(model, engine, version)
    else:
        version.mkdir(parents=True)
        ir.save(model, version / "model.onnx")
    (version.parent / "config.pbtxt").write_text(
        f'name: "head"\nbackend: "{engine}"\nmax_batch_size: 4\ninstance_group [ {{ count: 2 kind: KIND_CPU }} ]\n')
    feeds = images(2)
    body = {"inputs": [{"name": "x", "shape": [2, 3, 16, 16], "datatype": "FP32",
                        "data": feeds["x"].ravel().tolist()}]}
    server = Server(tmp_path / "repo", http_port=0, grpc_port=0, metrics_port=0, threads=1).start_in_thread()
    try:
        base = f"http://127.0.0.1:{server.http_port}/v2/models/head"
        with urllib.request.urlopen(base + "/config") as r:
            config = json.loads(r.read())
        assert config["backend"] == engine
        request = urllib.request.Request(base + "/infer", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as r:
            answer = json.loads(r.read())
    finally:
        server.stop_thread()
    (out,) = answer["outputs"]
    assert out["name"] == "y" and out["shape"] == [2, 4, 16, 16]
    close(np.array(out["data"], np.float32).reshape(out["shape"]), reference(model, feeds)[0])


@pytest.mark.parametrize("exported", [False, True], ids=["model.onnx", "exported"])
def test_served_config_backend_mnn_answers_an_infer(tmp_path, exported):
    served_infer("mnn", tmp_path, exported)


def test_registered_and_offered_to_every_command():
    from slipway.backends import BACKENDS, ENGINES, available, served_by

    assert BACKENDS["mnn"] == "slipway.backends.mnn:CPU" and served_by("mnn") is ENGINES["mnn"]
    assert available()["mnn"] is None
    assert "fp32" in get("mnn").precisions
    assert ("fp16" in get("mnn").precisions) == edge.cpu_has_fp16()


def pipeline_step(engine: str, tmp_path: Path) -> None:
    """A pipeline's model step with ``backend: <engine>`` runs through the engine, as onnxruntime's would."""
    from slipway.pipeline.core import Pipeline, Step

    model = conv_net(dynamic_hw=False)
    ir.save(model, tmp_path / "head.onnx")
    steps = [Step.model("head", tmp_path / "head.onnx", {"x": "image"}, {"y": "scores"}, backend=engine, threads=1)]
    feeds = images(1)
    got = Pipeline(steps, ["image"], ["scores"]).run({"image": feeds["x"]}).outputs["scores"]
    close(got, reference(model, feeds)[0])


def test_pipeline_model_step_on_mnn(tmp_path):
    pipeline_step("mnn", tmp_path)
