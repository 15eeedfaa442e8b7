"""slipway.ops.detect: box formats, IoU, NMS (vs OpenCV and a plain-Python oracle), soft-NMS."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import slipway.ops._nms as engine_mod
from slipway.errors import UserError
from slipway.ops import batched_nms, box_area, box_convert, box_iou, clip_boxes, nms, soft_nms

RNG = np.random.default_rng(3)


def uniform_boxes(n: int, rng: np.random.Generator, size: float = 640) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(10, 100, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.random(n).astype(np.float32)


def clustered_boxes(n: int, rng: np.random.Generator, k: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Detector-like candidates: jittered copies around k objects."""
    c = rng.uniform(0, 640, (k, 2))
    wh = rng.uniform(20, 150, (k, 2))
    a = rng.integers(0, k, n)
    cc = c[a] + rng.normal(0, 0.08, (n, 2)) * wh[a]
    ww = wh[a] * np.exp(rng.normal(0, 0.1, (n, 2)))
    return np.concatenate([cc - ww / 2, cc + ww / 2], 1).astype(np.float32), rng.random(n).astype(np.float32)


def iou_py(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - inter
    return inter / union if union > 0 else 0.0


def nms_py(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Plain-Python greedy NMS (torchvision semantics: suppress when IoU > thr)."""
    b = boxes.astype(np.float64).tolist()
    keep: list[int] = []
    for i in sorted(range(len(b)), key=lambda i: (-scores[i], i)):
        if all(iou_py(b[i], b[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def test_box_convert_and_area() -> None:
    xyxy = np.array([[1.0, 2.0, 5.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(box_convert(xyxy, "xyxy", "xywh"), [[1, 2, 4, 8], [0, 0, 0, 0]])
    np.testing.assert_allclose(box_convert(xyxy, "xyxy", "cxcywh"), [[3, 6, 4, 8], [0, 0, 0, 0]])
    for fmt in ("xywh", "cxcywh"):
        np.testing.assert_allclose(box_convert(box_convert(xyxy, "xyxy", fmt), fmt, "xyxy"), xyxy)
    np.testing.assert_allclose(box_area(np.array([[1, 2, 5, 10], [5, 5, 1, 1]])), [32, 0])
    np.testing.assert_allclose(clip_boxes(np.array([[-5.0, 3, 50, 70]]), (60, 40)), [[0, 3, 40, 60]])


def test_box_iou_matrix_and_batch() -> None:
    # vs the plain-Python oracle, max abs diff <= 1e-12 in float64
    a = uniform_boxes(7, RNG, 50)[0].astype(np.float64)
    b = uniform_boxes(5, RNG, 50)[0].astype(np.float64)
    ref = np.array([[iou_py(x, y) for y in b.tolist()] for x in a.tolist()])
    assert np.abs(box_iou(a, b) - ref).max() <= 1e-12
    batch = box_iou(np.stack([a, a[::-1]]), b[None])
    assert batch.shape == (2, 7, 5)
    np.testing.assert_allclose(batch[1], ref[::-1])
    assert box_iou(np.zeros((1, 4)), np.zeros((1, 4)))[0, 0] == 0.0  # two empty boxes


@pytest.mark.parametrize("engine", ["auto", "blocks", "sparse"])
@pytest.mark.parametrize("gen", [uniform_boxes, clustered_boxes])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.8])
def test_nms_matches_opencv_and_oracle(monkeypatch: pytest.MonkeyPatch, engine: str, gen: object, thr: float) -> None:
    # exact kept indices and order. OpenCV's NMSBoxes on float boxes uses the same +1-free
    # IoU (w*h) and "suppress when IoU > thr"; random float scores have no ties
    if engine != "auto":
        monkeypatch.setattr(engine_mod, "_prefer_sparse", lambda *a: engine == "sparse")
    boxes, scores = gen(700, RNG)
    keep = nms(boxes, scores, thr)
    xywh = box_convert(boxes, "xyxy", "xywh")
    ref_cv = np.asarray(cv2.dnn.NMSBoxes(xywh, scores, 0.0, thr)).ravel()  # scores > 0 here
    np.testing.assert_array_equal(keep, ref_cv)
    np.testing.assert_array_equal(keep, nms_py(boxes, scores, thr))
    assert keep.dtype == np.int64


def test_nms_score_threshold_max_detections_and_empty() -> None:
    boxes, scores = clustered_boxes(300, RNG)
    full = nms(boxes, scores, 0.5)
    # score_threshold keeps scores >= threshold; max_detections keeps the best prefix
    got = nms(boxes, scores, 0.5, score_threshold=0.6, max_detections=5)
    ref = nms_py(boxes[scores >= 0.6], scores[scores >= 0.6], 0.5)
    np.testing.assert_array_equal(got, np.nonzero(scores >= 0.6)[0][ref][:5])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, max_detections=3), full[:3])
    assert np.all(np.diff(scores[full]) <= 0)  # descending score
    empty = nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert nms(boxes, scores, 0.5, score_threshold=2.0).shape == (0,)
    assert nms(boxes, scores, 0.5, max_detections=0).shape == (0,)


@pytest.mark.parametrize("engine", ["blocks", "sparse"])
def test_nms_long_suppression_chain(monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    # 10-px boxes shifted 2 px each: IoU(i, i+1) = 0.67, IoU(i, i+2) = 0.43, so every other box is
    # kept; in the sparse engine this is a 236-long dependency chain (> 12 vectorized rounds,
    # finished by the sequential fallback)
    monkeypatch.setattr(engine_mod, "_prefer_sparse", lambda *a: engine == "sparse")
    calls = []
    original = engine_mod._resolve_sequential
    monkeypatch.setattr(engine_mod, "_resolve_sequential", lambda *a: calls.append(1) or original(*a))
    n = 300
    x = np.arange(n, dtype=np.float64) * 2.0
    boxes = np.stack([x, np.zeros(n), x + 10, np.full(n, 10.0)], 1)
    scores = np.linspace(1, 0.1, n)
    keep = nms(boxes, scores, 0.5)
    np.testing.assert_array_equal(keep, nms_py(boxes, scores, 0.5))
    np.testing.assert_array_equal(keep, np.arange(0, n, 2))
    assert len(calls) == (1 if engine == "sparse" else 0)


def test_batched_nms_is_per_class_nms() -> None:
    boxes, scores = clustered_boxes(500, RNG, k=10)
    classes = RNG.integers(0, 4, 500)
    keep = batched_nms(boxes, scores, classes, 0.45)
    ref = []
    for c in range(4):
        idx = np.nonzero(classes == c)[0]
        ref += idx[nms_py(boxes[idx], scores[idx], 0.45)].tolist()
    ref = sorted(ref, key=lambda i: -scores[i])
    np.testing.assert_array_equal(keep, ref)
    xywh = box_convert(boxes, "xyxy", "xywh")
    ref_cv = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, scores, classes.astype(np.int32), 0.0, 0.45)).ravel()
    np.testing.assert_array_equal(np.sort(keep), np.sort(ref_cv))
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5).shape == (0,)


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_opencv(method: str) -> None:
    # OpenCV's softNMSBoxes takes integer Rects: integer boxes make both IoUs identical.
    # Same indices in the same order; decayed scores max abs diff <= 1e-6 (float32 math)
    boxes, scores = clustered_boxes(200, RNG, k=8)
    boxes = np.round(boxes)
    xywh = box_convert(boxes, "xyxy", "xywh").astype(np.int32)
    flag = cv2.dnn.SOFT_NMSMETHOD_SOFTNMS_LINEAR if method == "linear" else cv2.dnn.SOFT_NMSMETHOD_SOFTNMS_GAUSSIAN
    ref_scores, ref_idx = cv2.dnn.softNMSBoxes(xywh, scores, 0.05, 0.3, top_k=0, sigma=0.5, method=flag)
    idx, new = soft_nms(boxes, scores, iou_threshold=0.3, sigma=0.5, score_threshold=0.05, method=method)
    np.testing.assert_array_equal(idx, np.asarray(ref_idx).ravel())
    assert np.abs(new - np.asarray(ref_scores).ravel()).max() <= 1e-6
    top, _ = soft_nms(boxes, scores, method=method, max_detections=4)
    assert top.shape == (4,)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: nms(np.zeros((3, 3)), np.zeros(3), 0.5), "last dimension 4"),
        (lambda: nms(np.zeros((3, 4, 1)), np.zeros(3), 0.5), "2-D"),
        (lambda: nms(np.full((2, 4), np.nan), np.zeros(2), 0.5), "NaN"),
        (lambda: nms(np.zeros((2, 4)), np.array([0.1, np.nan]), 0.5), "scores: contains NaN"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(3), 0.5), "lengths differ"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(2), 1.5), "iou_threshold"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(2), 0.5, max_detections=-1), "max_detections"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(2), 0.5, score_threshold=float("nan")), "score_threshold"),
        (lambda: batched_nms(np.zeros((2, 4)), np.zeros(2), np.zeros(2), 0.5), "class_ids"),
        (lambda: soft_nms(np.zeros((2, 4)), np.zeros(2), method="hard"), "method"),
        (lambda: box_convert(np.zeros((2, 4)), "xyxy", "ltrb"), "out_fmt"),
    ],
)
def test_bad_inputs(call: object, match: str) -> None:
    with pytest.raises(UserError, match=match):
        call()
