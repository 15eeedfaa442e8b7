"""INT8 / FP16 quantization with calibration and evaluation samples of several shapes (dynamic H x W):
batches of one shape each in sample order, metrics over every sample, the budget loop, verification at
two shapes; and PP-OCRv4 rec fed line crops of their own widths."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from slipway.compare.metrics import snr_db
from slipway.compare.run import typed_copy
from slipway.errors import UserError
from slipway.quantize import calibrate, quantize
from slipway.quantize import evaluate as E
from slipway.quantize import sensitivity as sens
from slipway.quantize.data import calibration_data
from tests.passes.util import make, run, tensor

FAST = {"speed_check": False}
SIZES = [(16, 16), (24, 32), (32, 20)]  # H x W
ORDER = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 1, 1, 2, 2, 0]  # runs of one shape, each shape coming back


def fcn(seed: int = 0) -> ir.Model:
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm classifier on x [N, 3, H, W]; a second output,
    the first Relu's map [N, 8, H, W], whose shape follows the input's."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.4,
             "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
             "w2": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.25,
             "b2": rng.standard_normal(16).astype(np.float32) * 0.1,
             "wg": rng.standard_normal((10, 16)).astype(np.float32),
             "bg": np.zeros(10, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["features"], name="relu1"),
        helper.make_node("Conv", ["features", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["logits"], name="fc", transB=1),
    ]
    return make(nodes, [tensor("x", ["N", 3, "H", "W"])],
                [tensor("logits", ["N", 10]), tensor("features", ["N", 8, "H", "W"])], inits)


def samples(order: list[int], seed: int) -> list[np.ndarray]:
    """One [3, H, W] sample per entry of ``order`` (an index into SIZES)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, *SIZES[k])).astype(np.float32) for k in order]


@pytest.fixture(scope="module")
def model() -> ir.Model:
    return fcn()


@pytest.fixture(scope="module")
def calib() -> list[dict[str, np.ndarray]]:
    return [{"x": x[None]} for x in samples(ORDER * 2, seed=1)]


@pytest.fixture(scope="module")
def evalset(model) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Evaluation samples, their labels (FP32's own classes: top-1 is 100 only when the labels stay with
    their samples) and FP32's logits, in sample order."""
    xs = samples(ORDER, seed=2)
    logits = np.concatenate([run(model, {"x": x[None]})[0] for x in xs])
    return xs, logits.argmax(1), logits


def pairs(evalset) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    xs, labels, _ = evalset
    return [({"x": x}, labels[i]) for i, x in enumerate(xs)]


def shape_of(feeds: dict[str, np.ndarray]) -> tuple[int, ...]:
    return tuple(feeds["x"].shape)


# ---------------------------------------------------------------- evaluation data and metrics


def test_batches_are_runs_of_one_shape_in_sample_order(model, evalset):
    xs, labels, _ = evalset
    data = E.from_feeds(model, pairs(evalset))  # the clean "comes in N shapes" error is gone
    assert data.samples == len(xs) and data.dynamic
    assert [shape_of(b)[2:] for b in data.batches] == [SIZES[k] for k in (0, 1, 2, 0, 1, 2, 0)]
    assert [shape_of(b)[0] for b in data.batches] == [3, 3, 3, 2, 2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b["x"].reshape(len(b["x"]), -1)[:, 0] for b in data.batches]),
                                  [x.reshape(-1)[0] for x in xs])  # sample order kept
    np.testing.assert_array_equal(data.labels, labels)
    assert any("sort the samples by shape" in n for n in data.notes)
    one, other = E.verify_feeds(data)  # batch 1 of the first shape, then the next shape
    assert shape_of(one) == (1, 3, *SIZES[0]) and shape_of(other) == (3, 3, *SIZES[1])
    cut = E.from_feeds(model, pairs(evalset), limit=5)
    assert cut.samples == 5 and [shape_of(b)[:1] + shape_of(b)[2:] for b in cut.batches] == [(3, 16, 16), (2, 24, 32)]
    np.testing.assert_array_equal(cut.labels, labels[:5])


def test_one_shape_keeps_todays_batches(model):
    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    data = E.from_feeds(model, {"x": x, "labels": np.zeros(40, np.int64)})
    assert [len(b["x"]) for b in data.batches] == [E.BATCH, 8] and not data.notes
    assert [len(f["x"]) for f in E.verify_feeds(data)] == [1, 3]


def test_static_batch_leaves_out_each_runs_remainder():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    static = make(nodes, [tensor("x", [2, 3, "H", "W"])], [tensor("y", [2, 3, "H", "W"])])
    xs = samples([0, 0, 0, 1, 1], seed=0)
    data = E.from_feeds(static, [({"x": x}, np.array([i])) for i, x in enumerate(xs)])
    assert data.samples == 4 and [len(b["x"]) for b in data.batches] == [2, 2]
    np.testing.assert_array_equal(data.labels, [0, 1, 3, 4])  # sample 2 (the first run's remainder) left out
    assert any("1 samples left out" in n for n in data.notes)
    assert [shape_of(f) for f in E.verify_feeds(data)] == [(2, 3, 16, 16), (2, 3, 24, 32)]


def test_metrics_on_outputs_of_several_shapes(model, evalset):
    data = E.from_feeds(model, pairs(evalset))
    ref = E.run_outputs(model, data)
    logits, maps = ref
    assert isinstance(logits, np.ndarray) and logits.shape == (len(evalset[0]), 10)  # one shape: one array
    np.testing.assert_allclose(logits, evalset[2], rtol=1e-5, atol=1e-5)
    assert isinstance(maps, list) and [m.shape[0] for m in maps] == [len(b["x"]) for b in data.batches]
    assert E.samples_in(maps) == E.samples_in(logits) == len(evalset[0])
    noisy = [logits + 0.01, [m * 1.01 for m in maps]]
    top1 = E.resolve_metric("top1", data.labels, ref)
    s = E.score(top1, noisy, ref, data.labels)
    assert (s.fp32, s.agreement) == (100.0, 100.0)
    flat = np.concatenate([logits.ravel(), *(m.ravel() for m in maps)]).astype(np.float64)
    noisy_flat = np.concatenate([noisy[0].ravel(), *(m.ravel() for m in noisy[1])]).astype(np.float64)
    assert s.snr_db == pytest.approx(snr_db(flat, noisy_flat))  # over every element of every output
    maps_only = E.resolve_metric(None, None, [maps])
    assert maps_only.kind == "cosine"
    assert E.metric_value(maps_only, [noisy[1]], None, [maps]) == pytest.approx(100.0)  # a scaled map: cosine 1
    with pytest.raises(UserError, match="varying shapes"):
        E.resolve_metric("top1", data.labels, [maps])
    seen = []

    def custom(outputs, labels):
        seen.append([type(o).__name__ for o in outputs])
        return float(np.mean([m.mean() for m in outputs[1]]))

    E.metric_value(E.resolve_metric(custom, None, ref), ref, None, ref)
    assert seen == [["ndarray", "list"]]


# ---------------------------------------------------------------- calibration and sensitivity


def test_calibration_streams_samples_of_several_shapes(model, calib, tmp_path):
    cal = calibrate.collect(model, calib)
    assert cal.samples == len(calib) and all(cal.stats[n].count > 0 for n in ("x", "features", "logits"))
    assert cal.stats["x"].count == sum(c["x"].size for c in calib)
    for i, (h, w) in enumerate([(30, 40), (30, 40), (20, 50), (30, 40)]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((h, w, 3), 40 * i, np.uint8))

    def keep_aspect(image: np.ndarray) -> np.ndarray:  # height 16, width a multiple of 8
        w = max(8, round(image.shape[1] * 16 / image.shape[0] / 8) * 8)
        return cv2.resize(image, (w, 16)).transpose(2, 0, 1).astype(np.float32) / 255

    images = calibration_data(tmp_path, model, preprocess=keep_aspect)
    assert [f["x"].shape for f in images] == [(2, 3, 16, 24), (1, 3, 16, 40), (1, 3, 16, 24)]
    assert calibrate.collect(model, images).samples == 4


def test_sensitivity_sums_batches_of_several_shapes(model, calib):
    from slipway.quantize import qdq

    typed = typed_copy(model)  # analyze() compares typed values (quantize() gives it the prepared graph)
    ranges = calibrate.ranges(calibrate.collect(typed, calib), "minmax")
    quant, _ = qdq.quantize_qdq(typed, ranges)
    batches = list(calib[:9])  # three shapes
    rows = sens.analyze(typed, quant, batches)
    assert {r.node for r in rows} >= {"conv1", "conv2", "fc"}
    assert all(math.isfinite(r.snr_db) and math.isfinite(r.local_snr_db) and r.snr_db > 15 for r in rows)
    one_each = {r.node: r.snr_db for r in sens.analyze(typed, quant, batches[:1])}
    assert all(math.isfinite(v) for v in one_each.values())


# ---------------------------------------------------------------- quantize() end to end


def test_int8_with_three_shapes(model, calib, evalset, tmp_path):
    out = tmp_path / "int8.onnx"
    r = quantize(model, out, calib=calib, eval_data=pairs(evalset), method="minmax", **FAST)
    n = len(evalset[0])
    assert r.calib_samples == len(calib) and r.eval_samples == n and out.is_file()
    assert r.metric.kind == "top1" and r.score.fp32 == 100.0  # the labels stayed with their samples
    assert r.score.agreement is not None and r.score.agreement >= 80.0
    assert r.score.snr_db > 20.0 and r.score.cosine > 0.99
    assert r.quant.quantized and r.sensitivity and all(math.isfinite(s.snr_db) for s in r.sensitivity)
    assert {shape_of(f)[2:] for f in r.verify_feeds} == {SIZES[0], SIZES[1]}
    assert r.verification is not None and not r.verification.failure
    single = quantize(model, None, calib=calib, eval_data=[p for p in pairs(evalset) if p[0]["x"].shape[1] == 16],
                      method="minmax", **FAST)  # the same ranges, evaluated on one shape only
    assert abs(single.score.snr_db - r.score.snr_db) < 6.0


def test_budget_loop_with_three_shapes(model, calib, evalset):
    reference = evalset[2]
    received: list[tuple[str, int]] = []

    def logit_error(outputs, labels):  # 0 for FP32, < 0 once quantized
        received.append((type(outputs[1]).__name__, E.samples_in(outputs[1])))
        return -float(np.mean(np.abs(outputs[0] - reference)))

    kw = {"calib": calib, "eval_data": [{"x": x[None]} for x in evalset[0]], "metric": logit_error, "method": "minmax",
          **FAST}
    full = quantize(model, None, **kw)
    assert full.score.drop > 0 and full.eval_samples == len(reference)
    budget = full.score.drop / 2
    r = quantize(model, None, max_drop=budget, **kw)
    assert r.score.drop <= budget and r.float_layers and len(r.steps) >= 2
    assert set(received) == {("list", len(reference))}  # the varying map: one array per batch, every sample


def test_fp16_with_three_shapes(model, evalset, tmp_path):
    r = quantize(model, tmp_path / "fp16.onnx", precision="fp16", eval_data=pairs(evalset), **FAST)
    assert r.eval_samples == len(evalset[0]) and r.score.fp32 == 100.0 and r.score.snr_db > 40.0
    assert not r.verification.failure and len({shape_of(f) for f in r.verify_feeds}) == 2


# ---------------------------------------------------------------- PP-OCRv4 rec, crops of their own width


def rec_sample(crop: np.ndarray) -> np.ndarray:
    """Height 48 keeping the ratio, width a multiple of 8 (at most 320), (x / 255 - 0.5) / 0.5, CHW, RGB."""
    h, w = crop.shape[:2]
    width = int(min(320, max(8, round(w * 48 / h / 8) * 8)))
    x = cv2.resize(crop, (width, 48))[:, :, ::-1].astype(np.float32)
    return ((x / 255 - 0.5) / 0.5).transpose(2, 0, 1)


def test_ppocr_rec_int8_on_crops_of_their_own_width(tmp_path: Path):
    """Only that every sample is evaluated (the corpus tests and the bench judge the text read)."""
    from tests.corpus import model as corpus_model
    from tests.corpus.ocr import line_crops

    xs = [rec_sample(c) for c in line_crops(12, seed=100)[0]]
    calib, evalset = xs[:6], xs[6:]
    assert len({x.shape for x in evalset}) >= 3
    seen: list[int] = []

    def positions(outputs, labels):  # the CTC output [N, W / 8, 6625]: one array per batch
        seen.append(E.samples_in(outputs[0]))
        return float(sum(p.shape[0] * p.shape[1] for p in E.parts(outputs[0])))

    r = quantize(corpus_model("ppocr_rec"), tmp_path / "rec.int8.onnx", calib=[{"x": x[None]} for x in calib],
                 eval_data=[{"x": x[None]} for x in evalset], metric=positions, method="minmax", **FAST)
    assert r.calib_samples == len(calib) and r.eval_samples == len(evalset) and r.quant.quantized
    assert set(seen) == {len(evalset)} and r.score.fp32 == r.score.value == sum(x.shape[2] // 8 for x in evalset)
    assert math.isfinite(r.score.snr_db) and 0 < r.score.cosine <= 1 and r.sensitivity
    assert len({shape_of(f)[3] for f in r.verify_feeds}) == 2 and not r.verification.failure


def test_inputs_sharing_a_batch_with_different_row_counts_are_refused():
    """Only inputs that share no batch axis (a scalar, a state batched on axis 1) run as given; two batched
    inputs with 3 and 2 rows are the user's mistake, not that layout."""
    from onnx import TensorProto, helper

    from slipway.errors import UserError
    from slipway.quantize import evaluate as ev

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    proto = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    pairs = [({"a": np.zeros((3, 4), np.float32), "b": np.zeros((2, 4), np.float32)}, np.arange(3))]
    with pytest.raises(UserError, match="different numbers of samples"):
        ev.from_feeds(model, pairs)
