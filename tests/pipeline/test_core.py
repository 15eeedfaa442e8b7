"""slipway.pipeline core: wiring checks, run, trace / timings, YAML files, the classification task."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from slipway.errors import UserError
from slipway.ops.image import letterbox, normalize
from slipway.pipeline import OPS, Pipeline, PipelineError, PipelineResult, Step, classify_pipeline, register_op
from slipway.pipeline import ops as pops


def tiny_classifier(path: Path, classes: int = 10, seed: int = 0) -> Path:
    """x [N,3,H,W] -> Conv 3x3 (8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y [N, classes]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w")
    g = numpy_helper.from_array(rng.normal(0, 0.5, (classes, 8)).astype(np.float32), "g")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "g", "b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [w, g, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def by_hand(model: Path, img: np.ndarray, size, mean, std, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The classification steps without the pipeline: letterbox, BGR->RGB, normalize, NCHW, ORT, softmax, top-k."""
    boxed, _ = letterbox(img, size)
    x = normalize(boxed[..., ::-1], mean, std, 1 / 255).transpose(2, 0, 1)[None].copy()
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(p, idx, -1), idx


def add_one(x):
    return {"y": x + 1}


def times(x, factor=2):
    return {"y": x * factor}


def boom(x):
    raise ValueError("boom\nsecond line")


def passthrough(x):
    return {"y": x}


def chain(*steps: Step, inputs=("a",), outputs=("c",)) -> Pipeline:
    return Pipeline(list(steps), list(inputs), list(outputs))


def err(fn) -> str:
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------- registry


def test_generic_ops_registered_with_declared_io():
    for name in ("letterbox", "normalize", "preprocess", "softmax", "topk", "nms", "resize", "to_nchw"):
        assert name in OPS, name
    assert OPS["topk"].inputs == ("x",) and OPS["topk"].outputs == ("values", "indices")
    assert OPS["nms"].inputs == ("boxes", "scores") and OPS["nms"].outputs == ("indices",)
    assert OPS["preprocess"].outputs == ("blob", "transform")
    assert pops.OPS is OPS and pops.register_op is register_op


def test_register_op_refuses_a_second_function_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_op("softmax", ("x",), ("y",))(lambda x: {"y": x})


def test_generic_ops_match_slipway_ops(image):
    from slipway.ops.classify import softmax, topk
    from slipway.ops.detect import nms

    x = np.random.default_rng(0).normal(size=(2, 7)).astype(np.float32)
    np.testing.assert_array_equal(OPS["softmax"].fn(x=x)["y"], softmax(x))
    v, i = topk(x, 3)
    got = OPS["topk"].fn(x=x, k=3)
    np.testing.assert_array_equal(got["values"], v)
    np.testing.assert_array_equal(got["indices"], i)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    np.testing.assert_array_equal(OPS["nms"].fn(boxes=boxes, scores=scores, iou_threshold=0.5)["indices"],
                                  nms(boxes, scores, 0.5))
    lb = OPS["letterbox"].fn(image=image, size=[32, 32])  # a YAML list works as a size
    assert lb["image"].shape == (32, 32, 3)
    blob = OPS["to_nchw"].fn(image=OPS["normalize"].fn(image=lb["image"], scale=1 / 255)["image"])["blob"]
    assert blob.shape == (1, 3, 32, 32) and blob.dtype == np.float32


# ---------------------------------------------------------------------------------- wiring errors


def test_cycle():
    msg = err(lambda: chain(
        Step.python("s1", add_one, {"x": "a"}, {"y": "b"}),
        Step.python("s2", passthrough, {"x": "c"}, {"y": "d"}),
        Step.python("s3", add_one, {"x": "d"}, {"y": "c"}),
        outputs=("b",),
    ))
    assert msg == "cycle between steps: 's2' -> 's3' -> 's2'"


def test_unknown_op():
    msg = err(lambda: chain(Step.op("s", "softmaxx", {"x": "a"}, {"y": "c"})))
    assert msg == "step 's': unknown op 'softmaxx' (did you mean op 'softmax'?)"


def test_unknown_tensor():
    msg = err(lambda: chain(Step.op("s", "softmax", {"x": "aa"}, {"y": "c"}), inputs=("a",)))
    assert msg == "step 's' input 'x': unknown tensor 'aa' (did you mean 'a'?)"


def test_tensor_produced_twice():
    msg = err(lambda: chain(
        Step.op("s1", "softmax", {"x": "a"}, {"y": "c"}),
        Step.op("s2", "sigmoid", {"x": "a"}, {"y": "c"}),
    ))
    assert msg == "step 's2' output 'y': tensor 'c' is already produced by step 's1'"
    msg = err(lambda: chain(Step.op("s1", "softmax", {"x": "a"}, {"y": "a"}), outputs=("a",)))
    assert msg == "step 's1' output 'y': tensor 'a' is already produced by a pipeline input"


def test_duplicate_step_name():
    msg = err(lambda: chain(
        Step.op("s", "softmax", {"x": "a"}, {"y": "b"}),
        Step.op("s", "sigmoid", {"x": "b"}, {"y": "c"}),
    ))
    assert msg == "duplicate step name 's'"


def test_output_produced_by_no_step():
    msg = err(lambda: chain(Step.op("s", "softmax", {"x": "a"}, {"y": "b"}), outputs=("c",)))
    assert msg == "pipeline output 'c' is produced by no step"


def test_op_io_names_checked():
    msg = err(lambda: chain(Step.op("s", "topk", {"x": "a"}, {"vals": "c"}, k=1)))
    assert msg == "step 's' outputs: op 'topk' has no output 'vals' (outputs: values, indices)"
    msg = err(lambda: chain(Step.op("s", "nms", {"boxes": "a"}, {"indices": "c"})))
    assert msg == "step 's' inputs: op 'nms' input 'scores' is not connected"
    msg = err(lambda: chain(Step.op("s", "topk", {"x": "a"}, {"values": "c"}, k=1, kk=2)))
    assert msg == "step 's' params: unexpected keyword 'kk' (accepted: axis, k, largest, x)"
    msg = err(lambda: chain(Step.op("s", "topk", {"x": "a"}, {"values": "c"})))
    assert msg == "step 's': argument 'k' is neither an input nor a param"


def test_model_step_checked_against_the_file(tiny, tmp_path):
    msg = err(lambda: chain(Step.model("m", tiny, {"input": "a"}, {"y": "c"})))
    assert msg == "step 'm' inputs: model has no input 'input' (inputs: x)"
    msg = err(lambda: chain(Step.model("m", tiny, {"x": "a"}, {"out": "c"})))
    assert msg == "step 'm' outputs: model has no output 'out' (outputs: y)"
    msg = err(lambda: chain(Step.model("m", tmp_path / "none.onnx", {"x": "a"}, {"y": "c"})))
    assert msg == f"step 'm': model file not found: {tmp_path / 'none.onnx'}"
    msg = err(lambda: chain(Step.model("m", tiny, {"x": "a"}, {"y": "c"}, device="gpu")))
    assert msg == "step 'm' params: unknown model parameter 'device' (known: backend, threads)"


# ---------------------------------------------------------------------------------- run


def test_missing_and_unknown_pipeline_input():
    p = chain(Step.python("s", add_one, {"x": "a"}, {"y": "c"}))
    assert err(lambda: p.run({})) == "missing pipeline input 'a' (inputs: a)"
    assert err(lambda: p.run({"a": 1, "b": 2})) == "unknown pipeline input 'b' (inputs: a)"


def test_step_raising_names_the_step():
    p = chain(Step.python("bad", boom, {"x": "a"}, {"y": "c"}))
    assert err(lambda: p.run({"a": 1})) == (
        f"step 'bad' (python {__name__}:boom) failed: ValueError: boom"
    )
    p = chain(Step.op("k", "topk", {"x": "a"}, {"values": "c"}, k=-1))
    assert err(lambda: p.run({"a": np.zeros(3)})) == (
        "step 'k' (op topk) failed: k: expected a non-negative int, got -1"
    )
    p = chain(Step.python("p", lambda x: {"z": x}, {"x": "a"}, {"y": "c"}))
    assert err(lambda: p.run({"a": 1})) == (
        f"step 'p' (python {__name__}:test_step_raising_names_the_step.<locals>.<lambda>) failed: "
        "returned keys ['z'], expected ['y']"
    )


def test_model_step_failure_names_the_step(tiny):
    p = chain(Step.model("net", tiny, {"x": "a"}, {"y": "c"}))
    msg = err(lambda: p.run({"a": np.zeros((1, 3, 8, 8), np.float64)}))
    assert msg.startswith(f"step 'net' (model {tiny}) failed: ")


def test_topological_order_not_list_order_and_values_pass_as_they_are():
    p = Pipeline(
        [
            Step.python("third", times, {"x": "b"}, {"y": "c"}, factor=10),
            Step.python("first", passthrough, {"x": "a"}, {"y": "a2"}),
            Step.python("second", add_one, {"x": "a2"}, {"y": "b"}),
            Step.python("side", passthrough, {"x": "a"}, {"y": "same"}),
        ],
        ["a"],
        ["c", "same"],
    )
    assert p.order == ["first", "side", "second", "third"]
    x = np.arange(3)
    res = p.run({"a": x})
    assert isinstance(res, PipelineResult)
    np.testing.assert_array_equal(res.outputs["c"], (x + 1) * 10)
    assert res.outputs["same"] is x  # no copies
    assert res.trace is None


def test_trace_and_timings(tiny, image):
    p = classify_pipeline(tiny, size=(32, 32), top_k=3)
    res = p.run({"image": image}, trace=True)
    assert set(res.trace) == {"image", "blob", "logits", "probs", "scores", "labels"}
    assert res.trace["image"] is image
    assert res.trace["blob"].shape == (1, 3, 32, 32)
    np.testing.assert_allclose(res.trace["probs"].sum(-1), 1.0, rtol=1e-6)
    assert set(res.timings_ms) == {"preprocess", "model", "softmax", "topk", "total"}
    assert all(v >= 0 for v in res.timings_ms.values())
    assert res.timings_ms["total"] >= max(v for k, v in res.timings_ms.items() if k != "total")


def test_model_session_created_once_and_reused(tiny, image):
    p = classify_pipeline(tiny, size=(32, 32))
    assert p._sessions == {}  # lazily
    p.run({"image": image})
    s = p.session("model")
    p.run({"image": image})
    assert p.session("model") is s and len(p._sessions) == 1
    p.close()
    assert p._sessions == {}


# ---------------------------------------------------------------------------------- classification


def test_classify_tiny_equals_by_hand(tiny, image):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    p = classify_pipeline(tiny, size=(40, 40), mean=mean, std=std, top_k=4)
    got = p.run({"image": image}).outputs
    scores, labels = by_hand(tiny, image, (40, 40), mean, std, 4)
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_allclose(got["scores"], scores, rtol=1e-5, atol=1e-6)


def test_classify_resnet18_equals_by_hand():
    zoo = pytest.importorskip("tests.zoo")
    pytest.importorskip("torch")
    model = zoo.export("resnet18")
    img = np.random.default_rng(2).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    p = classify_pipeline(model, top_k=5)
    got = p.run({"image": img}).outputs
    scores, labels = by_hand(model, img, (224, 224), pops.IMAGENET_MEAN, pops.IMAGENET_STD, 5)
    assert got["labels"].shape == (1, 5)
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_allclose(got["scores"], scores, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------- files


def test_yaml_round_trip_with_relative_model_path(tmp_path, image):
    model = tiny_classifier(tmp_path / "app" / "models" / "net.onnx", seed=3)
    p = classify_pipeline(model, size=(24, 24), top_k=2)
    expected = p.run({"image": image}).outputs
    file = p.to_file(tmp_path / "app" / "classify.yaml")
    text = file.read_text()
    assert "model: models/net.onnx" in text and str(tmp_path) not in text
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "app", moved)
    shutil.rmtree(tmp_path / "app")
    q = Pipeline.from_file(moved / "classify.yaml")
    assert (q.name, q.inputs, q.outputs, q.order) == ("classify", p.inputs, p.outputs, p.order)
    assert q.steps[0].params["size"] == [24, 24]
    got = q.run({"image": image}).outputs
    for k in ("scores", "labels"):
        np.testing.assert_array_equal(got[k], expected[k])
    assert q.to_dict(moved) == p.to_dict(tmp_path / "app")


def test_python_steps_in_files_need_allow_python(tmp_path):
    p = chain(Step.python("s", times, {"x": "a"}, {"y": "c"}, factor=3))
    file = p.to_file(tmp_path / "p.yaml")
    assert f"python: {__name__}:times" in file.read_text()
    msg = err(lambda: Pipeline.from_file(file))
    assert msg == (f"{file} steps[0] ('s'): python steps import code; "
                   "read the file with allow_python=True to run them")
    q = Pipeline.from_file(file, allow_python=True)
    assert q.run({"a": 2}).outputs == {"c": 6}
    local = chain(Step.python("s", lambda x: {"y": x}, {"x": "a"}, {"y": "c"}))
    assert err(lambda: local.to_file(tmp_path / "q.yaml")) == (
        "step 's': python target 'test_python_steps_in_files_need_allow_python.<locals>.<lambda>' "
        "cannot be written to a file (use a module-level function)"
    )
    assert not (tmp_path / "q.yaml").exists()


def test_bad_pipeline_files(tmp_path):
    f = tmp_path / "p.yaml"
    assert err(lambda: Pipeline.from_file(tmp_path / "no.yaml")) == f"pipeline file not found: {tmp_path / 'no.yaml'}"
    f.write_text("inputs: [a]\noutputs: [c]\nsteps:\n  - {name: s, op: softmax, inputs: {x: a}, outputs: {y: c}, x: 1}\n")
    assert err(lambda: Pipeline.from_file(f)) == (
        f"{f} steps[0]: unknown key 'x' (known: inputs, name, op, outputs, params)"
    )
    f.write_text("inputs: [a]\nsteps: []\n")
    assert err(lambda: Pipeline.from_file(f)) == f"{f}: missing key 'outputs'"
    f.write_text("inputs: [a\n")
    assert err(lambda: Pipeline.from_file(f)).startswith(f"{f}: not valid YAML: ")
    f.write_text("inputs: [a]\noutputs: [c]\nsteps:\n  - {name: s, op: softmax, inputs: {x: a}, outputs: {y: c}}\n")
    assert Pipeline.from_file(f).run({"a": np.zeros(2)}).outputs["c"].tolist() == [0.5, 0.5]


def test_pipeline_error_is_a_user_error():
    assert issubclass(PipelineError, UserError)


def test_map_runs_many_inputs_in_order_on_shared_sessions(tiny):
    """Pipeline.map: one result per input, in order, the same with several workers (threads sharing the
    pipeline's sessions); a failure names the input."""
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (40 + 7 * i, 50 + 3 * i, 3), dtype=np.uint8) for i in range(9)]
    pipe = classify_pipeline(tiny, size=(32, 32), top_k=3, threads=1)
    one_by_one = [pipe.run({"image": im}).outputs for im in images]
    for workers in (1, 3):
        got = pipe.map([{"image": im} for im in images], workers=workers)
        assert [r.outputs["labels"].tolist() for r in got] == [o["labels"].tolist() for o in one_by_one]
        for r, o in zip(got, one_by_one, strict=True):
            np.testing.assert_array_equal(r.outputs["scores"], o["scores"])  # the same session, the same floats
    bad = [{"image": images[0]}, {"image": np.zeros((4, 4), np.float32)}]
    with pytest.raises(PipelineError, match=r"^input 1: step 'preprocess'"):
        pipe.map(bad, workers=2)
    with pytest.raises(PipelineError, match="workers: expected a positive integer"):
        pipe.map([], workers=0)
