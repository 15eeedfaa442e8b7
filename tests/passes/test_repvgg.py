from __future__ import annotations

import time
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from slipway.passes import PASSES
from slipway.passes.repvgg import MergeRepVGG
from tests.passes.util import assert_same, copy, make, op_types, run, tensor

rng = np.random.default_rng(4)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def bn(x: str, y: str, c: int, prefix: str) -> tuple[onnx.NodeProto, dict[str, np.ndarray]]:
    names = [f"{prefix}.{p}" for p in ("s", "t", "m", "v")]
    params = [rng.random(c) + 0.5, rng.standard_normal(c), rng.standard_normal(c), rng.random(c) + 0.1]
    node = helper.make_node("BatchNormalization", [x, *names], [y], name=prefix, epsilon=1e-3)
    return node, {n: p.astype(np.float32) for n, p in zip(names, params, strict=True)}


def merge(model):
    before = copy(model)
    return before, MergeRepVGG()(model)


def test_registered():
    assert PASSES["merge-repvgg"] is MergeRepVGG


@pytest.mark.parametrize("group", [1, 2])
def test_three_branches_with_bn_any_association(group):
    c = 4
    bn1, p1 = bn("c1", "b1", c, "bn1")
    bni, pi = bn("x", "id", c, "bnid")
    nodes = [helper.make_node("Conv", ["x", "W3", "B3"], ["c3"], name="c3", pads=[1, 1, 1, 1], group=group),
             helper.make_node("Conv", ["x", "W1"], ["c1"], name="c1", group=group), bn1, bni,
             helper.make_node("Add", ["id", "c3"], ["s1"]), helper.make_node("Add", ["b1", "s1"], ["s2"]),
             helper.make_node("Relu", ["s2"], ["y"])]
    model = make(nodes, [tensor("x", [2, c, 6, 6])], [tensor("y", [2, c, 6, 6])],
                 {"W3": f32(c, c // group, 3, 3), "B3": f32(c), "W1": f32(c, c // group, 1, 1), **p1, **pi})
    before, result = merge(model)
    assert result.changes == {"3-branch block": 1} and op_types(model) == ["Conv", "Relu"]
    conv = model.graph.node(0)
    assert list(conv.attributes["pads"].as_ints()) == [1, 1, 1, 1] and conv.attributes["group"].as_int() == group
    assert sorted(model.graph.initializers) == ["B3", "W3"]
    assert_same(before, model, {"x": f32(2, c, 6, 6)})
    assert not MergeRepVGG()(model).modified


def test_two_branches_stride2_and_bare_identity():
    nodes = [helper.make_node("Conv", ["x", "W3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], strides=[2, 2]),
             helper.make_node("Add", ["c3", "c1"], ["y"])]
    model = make(nodes, [tensor("x", [1, 3, 7, 7])], [tensor("y", [1, 5, 4, 4])],
                 {"W3": f32(5, 3, 3, 3), "W1": f32(5, 3, 1, 1), "B1": f32(5)})
    before, result = merge(model)
    assert result.changes == {"2-branch block": 1} and op_types(model) == ["Conv"]
    assert_same(before, model, {"x": f32(1, 3, 7, 7)})

    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["x", "c"], ["y"])]
    model = make(nodes, [tensor("x", [1, 3, 5, 5])], [tensor("y", [1, 3, 5, 5])], {"W": f32(3, 3, 3, 3)})
    before, result = merge(model)
    assert op_types(model) == ["Conv"]
    assert_same(before, model, {"x": f32(1, 3, 5, 5)})


def test_acnet_asymmetric_kernels():
    nodes = [helper.make_node("Conv", ["x", "Wa"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "Wb"], ["b"], pads=[0, 1, 0, 1]),
             helper.make_node("Conv", ["x", "Wc"], ["c"], pads=[1, 0, 1, 0]),
             helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Add", ["s", "c"], ["y"])]
    model = make(nodes, [tensor("x", [1, 2, 5, 5])], [tensor("y", [1, 3, 5, 5])],
                 {"Wa": f32(3, 2, 3, 3), "Wb": f32(3, 2, 1, 3), "Wc": f32(3, 2, 3, 1)})
    before, result = merge(model)
    assert op_types(model) == ["Conv"]
    assert_same(before, model, {"x": f32(1, 2, 5, 5)})


def test_other_terms_and_shared_branches_stay_in_the_sum():
    nodes = [helper.make_node("Conv", ["x", "W3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "W1"], ["c1"], name="c1"), helper.make_node("Conv", ["x", "W5"], ["c5"],
                                                                                       pads=[2, 2, 2, 2]),
             helper.make_node("Add", ["c3", "c1"], ["s1"]), helper.make_node("Add", ["s1", "z"], ["s2"]),
             helper.make_node("Add", ["s2", "c5"], ["y"]), helper.make_node("Relu", ["c1"], ["r"])]
    model = make(nodes, [tensor("x", [1, 3, 6, 6]), tensor("z", [1, 4, 6, 6])],
                 [tensor("y", [1, 4, 6, 6]), tensor("r", [1, 4, 6, 6])],
                 {"W3": f32(4, 3, 3, 3), "W1": f32(4, 3, 1, 1), "W5": f32(4, 3, 5, 5)})
    before, result = merge(model)
    # c3 and c5 merge into a 5x5; c1 (also read by the Relu) and z stay as terms
    assert result.changes == {"2-branch block": 1}
    assert Counter(op_types(model)) == Counter({"Conv": 2, "Add": 2, "Relu": 1})
    kernels = [n.attributes.get_ints("kernel_shape") for n in model.graph if n.op_type == "Conv"]
    assert (5, 5) in kernels
    assert_same(before, model, {"x": f32(1, 3, 6, 6), "z": f32(1, 4, 6, 6)})


def test_mismatched_branches_warn_and_leave_the_block():
    for group, dilation, reason in ((2, 1, "groups differ (1 vs 2)"), (1, 2, "dilations [2, 2]")):
        conv3 = helper.make_node("Conv", ["x", "W3"], ["c3"], name="c3", pads=[dilation] * 4, dilations=[dilation] * 2)
        nodes = [conv3,
                 helper.make_node("Conv", ["x", "W1"], ["c1"], group=group),
                 helper.make_node("Add", ["c3", "c1"], ["y"], name="sum")]
        model = make(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 4, 5, 5])],
                     {"W3": f32(4, 4, 3, 3), "W1": f32(4, 4 // group, 1, 1)})
        explained = MergeRepVGG().explain(model)
        assert len(explained) == 1 and reason in explained[0], explained
        _, result = merge(model)
        assert not result.modified and result.warnings == explained


def test_float16_branches():
    bni, pi = bn("x", "id", 4, "bnid")
    nodes = [helper.make_node("Conv", ["x", "W3", "B3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "W1"], ["c1"]), bni,
             helper.make_node("Add", ["c3", "c1"], ["s"]), helper.make_node("Add", ["s", "id"], ["y"])]
    model = make(nodes, [tensor("x", [1, 4, 5, 5], TensorProto.FLOAT16)],
                 [tensor("y", [1, 4, 5, 5], TensorProto.FLOAT16)],
                 {"W3": f32(4, 4, 3, 3).astype(np.float16), "B3": f32(4).astype(np.float16),
                  "W1": f32(4, 4, 1, 1).astype(np.float16), **pi}, opset=15)
    before, result = merge(model)
    assert op_types(model) == ["Conv"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    x = f32(1, 4, 5, 5).astype(np.float16)
    np.testing.assert_allclose(run(model, {"x": x})[0].astype(np.float32),
                               run(before, {"x": x})[0].astype(np.float32), atol=5e-2, rtol=2e-2)


def zoo_repvgg():
    from tests.zoo import export

    return ir.load(export("repvgg"))


def session(model: ir.Model, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.intra_op_num_threads = threads
    return ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def test_zoo_repvgg_every_block_merges():
    model = zoo_repvgg()
    before = copy(model)
    result = MergeRepVGG()(model)
    assert result.changes == {"3-branch block": 3, "2-branch block": 3} and not result.warnings
    ops = Counter(op_types(model))
    assert "BatchNormalization" not in ops and "Add" not in ops and ops["Conv"] == 6
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    for batch in (1, 3):
        x = f32(batch, 3, 64, 64)
        np.testing.assert_allclose(session(model).run(None, {"x": x})[0], session(before).run(None, {"x": x})[0],
                                   atol=1e-4, rtol=1e-4)
    assert not MergeRepVGG()(model).modified


@pytest.mark.slow
def test_zoo_repvgg_is_faster():
    model = zoo_repvgg()
    before = copy(model)
    MergeRepVGG()(model)
    x = f32(4, 3, 64, 64)
    runs = {"before": session(before, threads=1), "after": session(model, threads=1)}  # 1 thread: less noise
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(7):  # alternate blocks so that machine noise hits both alike
        for key, sess in runs.items():
            for _ in range(20):
                sess.run(None, {"x": x})
            start = time.process_time()  # CPU time of one thread: robust to other processes
            for _ in range(50):
                sess.run(None, {"x": x})
            times[key].append(time.process_time() - start)
    # measured 1.14-1.31x (batch 1-8, ORT_ENABLE_EXTENDED, 2-core host); a regression guard
    assert np.median(times["before"]) / np.median(times["after"]) >= 1.1


def test_unmergeable_conv_next_to_identity_warns():
    nodes = [helper.make_node("Conv", ["x", "W3"], ["c3"], name="c3", pads=[2] * 4, dilations=[2, 2]),
             helper.make_node("Add", ["c3", "x"], ["y"])]
    model = make(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 4, 5, 5])], {"W3": f32(4, 4, 3, 3)})
    _, result = merge(model)
    assert not result.modified and "Conv 'c3': dilations [2, 2]" in result.warnings[0]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])]
    model = make(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 4, 5, 5])])
    assert MergeRepVGG().explain(model) == [] and not merge(model)[1].modified
