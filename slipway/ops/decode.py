"""Detector head decoders: YOLO anchor-free (v8-style, DFL optional), YOLO anchor-based
(v5-style, with objectness) and SSD prior boxes, each followed by score filtering,
class-aware NMS and mapping back to the original image.

Scores are filtered *before* anything else: on raw logits the threshold is compared in
logit space, so sigmoid / box decoding only run on the few candidates that survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_range, check_size
from slipway.ops.classify import logit, sigmoid, softmax
from slipway.ops.detect import batched_nms, batched_nms_prechecked, nms
from slipway.ops.geometry import Transform

YOLOV5_ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


@dataclass
class Detections:
    """Detections of one image: ``boxes`` [K, 4] xyxy float32, ``scores`` [K], ``class_ids`` [K]."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def to_original(self, transform: Transform, clip: bool = True) -> Detections:
        """The same detections with boxes mapped through ``transform`` to the original image."""
        boxes = transform.to_original(self.boxes, kind="boxes", clip=clip).astype(np.float32)
        return Detections(boxes, self.scores, self.class_ids)


def _finish(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_threshold: float,
    max_detections: int,
    class_agnostic: bool,
    transform: Transform | None,
    prechecked: bool = False,
) -> Detections:
    """NMS (class-aware unless agnostic), cap, map back. ``prechecked``: the arrays are
    known finite float boxes, finite scores and int64 classes (skip re-validating them)."""
    if class_agnostic:
        keep = nms(boxes, scores, iou_threshold, max_detections=max_detections)
    elif prechecked:
        keep = batched_nms_prechecked(boxes, scores, classes, iou_threshold, max_detections)
    else:
        keep = batched_nms(boxes, scores, classes, iou_threshold, max_detections=max_detections)
    det = Detections(
        boxes[keep].astype(np.float32, copy=False),
        scores[keep].astype(np.float32, copy=False),
        classes[keep].astype(np.int64, copy=False),
    )
    return det.to_original(transform) if transform is not None else det


def _cap(idx: np.ndarray, scores: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` candidates, the best-scored ones."""
    if idx.size <= limit:
        return idx
    return idx[np.argpartition(-scores, limit - 1)[:limit]]


def _cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., 0:2] - half, b[..., 0:2] + half], -1)


# ---------------------------------------------------------------------------------- YOLO anchor-free


def make_anchor_points(input_size: int | tuple[int, int], strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Grid-cell centers ``[A, 2]`` (x, y, in grid units: ``j + 0.5``) and stride ``[A]``,
    level by level, row-major — the anchor order of YOLOv8-style heads."""
    h, w = check_size("input_size", input_size)
    pts, st = [], []
    for s in strides:
        ny, nx = h // int(s), w // int(s)
        gx, gy = np.meshgrid(np.arange(nx, dtype=np.float32) + 0.5, np.arange(ny, dtype=np.float32) + 0.5)
        pts.append(np.stack([gx.ravel(), gy.ravel()], 1))
        st.append(np.full(nx * ny, float(s), np.float32))
    return np.concatenate(pts), np.concatenate(st)


def dfl_expectation(logits: np.ndarray) -> np.ndarray:
    """Distribution focal loss decoding: softmax over the last axis (``reg_max`` bins),
    then the expected bin index."""
    p = softmax(logits, axis=-1)
    return p @ np.arange(logits.shape[-1], dtype=p.dtype)


def decode_yolo_anchor_free(
    outputs: Any,
    *,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    decoded: bool = True,
    input_size: int | tuple[int, int] | None = None,
    strides: Sequence[int] = (8, 16, 32),
    reg_max: int = 16,
    multi_label: bool = False,
    class_agnostic: bool = False,
    max_candidates: int = 30000,
    transform: Transform | None = None,
) -> list[Detections]:
    """Decode a YOLOv8-style head ``[N, 4 + C, A]`` (A = 8400 for 640x640, strides 8/16/32).

    ``decoded=True`` (Ultralytics ONNX export): rows 0-3 are cx, cy, w, h in input pixels,
    rows 4.. are class scores in [0, 1]. ``decoded=False`` (raw head): rows 0..4*reg_max-1
    are DFL logits of the left/top/right/bottom distances (``reg_max=1``: plain distances)
    in stride units around the grid-cell centers, the rest are class logits (sigmoid).
    Returns one :class:`Detections` per image, mapped through ``transform`` when given.
    """
    out = check_array("outputs", outputs, ndim=(2, 3), dtype_kind="f", finite=False)  # checked per stage below
    out = out[None] if out.ndim == 2 else out
    nbox = 4 if decoded else 4 * int(reg_max)
    if out.shape[1] <= nbox:
        raise UserError(f"outputs: expected [N, {nbox} + classes, anchors], got shape {out.shape}")
    thr = score_threshold if decoded else logit(score_threshold)
    anchors = None
    if not decoded:
        if input_size is None:
            raise UserError("input_size: required to build the anchor grid when decoded=False")
        anchors = make_anchor_points(input_size, strides)
        if anchors[0].shape[0] != out.shape[2]:
            raise UserError(f"outputs: {out.shape[2]} anchors but input_size/strides give {anchors[0].shape[0]}")
    results = []
    for pred in out:
        cls = pred[nbox:]
        cand, ci, sc = _candidates(cls, thr, multi_label, max_candidates)
        if cand.size == 0:
            results.append(Detections.empty())
            continue
        if not decoded:
            sc = sigmoid(sc)
        boxes = _af_boxes(pred, cand, decoded, anchors, int(reg_max))
        if not np.isfinite(boxes).all():
            raise UserError("outputs: contains NaN or inf box values")
        results.append(_finish(boxes, sc, ci, iou_threshold, max_detections, class_agnostic, transform, True))
    return results


def _candidates(cls: np.ndarray, thr: float, multi_label: bool, limit: int) -> tuple[np.ndarray, ...]:
    """Anchors (and classes) passing ``thr`` from a [C, A] score block, capped at ``limit``."""
    best = cls.max(axis=0)  # NaN propagates through max: one cheap check covers all scores
    if best.size and not best.max() < np.inf:  # NaN or +inf somewhere
        raise UserError("outputs: contains NaN or inf scores")
    if multi_label:
        ci, cand = np.nonzero(cls >= thr)
        sc = cls[ci, cand]
    else:
        cand = np.flatnonzero(best >= thr)
        ci = cls[:, cand].argmax(axis=0)
        sc = best[cand]
    if cand.size > limit:
        keep = _cap(np.arange(cand.size), sc, limit)
        cand, ci, sc = cand[keep], ci[keep], sc[keep]
    return cand, ci.astype(np.int64, copy=False), sc


def _af_boxes(pred: np.ndarray, cand: np.ndarray, decoded: bool, anchors: Any, reg_max: int) -> np.ndarray:
    if decoded:  # cx, cy, w, h rows -> xyxy columns, in float32 as _cxcywh_to_xyxy
        rows = pred[:4].take(cand, axis=1).astype(np.float32, copy=False)
        half = rows[2:4] / 2
        xyxy = np.empty_like(rows)
        np.subtract(rows[0:2], half, out=xyxy[0:2])
        np.add(rows[0:2], half, out=xyxy[2:4])
        return xyxy.T
    points, stride = anchors[0][cand], anchors[1][cand]
    reg = pred[: 4 * reg_max, cand].T.reshape(-1, 4, reg_max)
    dist = dfl_expectation(reg) if reg_max > 1 else reg[..., 0]
    lt, rb = dist[:, :2], dist[:, 2:]
    return (np.concatenate([points - lt, points + rb], 1) * stride[:, None]).astype(np.float32)


# ---------------------------------------------------------------------------------- YOLO anchor-based


def decode_yolo_anchor_based(
    outputs: Any,
    *,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    anchors: Sequence[Sequence[float]] = YOLOV5_ANCHORS,
    strides: Sequence[int] = (8, 16, 32),
    multi_label: bool = False,
    class_agnostic: bool = False,
    max_candidates: int = 30000,
    transform: Transform | None = None,
) -> list[Detections]:
    """Decode a YOLOv5-style head with objectness.

    ``outputs`` is either the exported, decoded tensor ``[N, A, 5 + C]`` (cx, cy, w, h in
    pixels, objectness, class probabilities) or the list of raw per-level maps
    ``[N, na * (5 + C), H, W]`` (logits; ``xy = (2 sigmoid - 0.5 + grid) * stride``,
    ``wh = (2 sigmoid)^2 * anchor``). Score = objectness x class probability; objectness
    is filtered first, as in YOLOv5's ``non_max_suppression``.
    """
    if isinstance(outputs, (list, tuple)):
        flat = _yolov5_flatten_raw(outputs, anchors, strides, score_threshold)
    else:
        flat = check_array("outputs", outputs, ndim=(2, 3), dtype_kind="f")
        flat = flat[None] if flat.ndim == 2 else flat
        if flat.shape[2] < 6:
            raise UserError(f"outputs: expected [N, anchors, 5 + classes], got shape {flat.shape}")
    results = []
    for pred in flat:
        obj_ok = np.flatnonzero(pred[:, 4] >= score_threshold)
        rows = pred[obj_ok]
        conf = rows[:, 5:] * rows[:, 4:5]
        cand, ci, sc = _candidates(conf.T, score_threshold, multi_label, max_candidates)
        if cand.size == 0:
            results.append(Detections.empty())
            continue
        boxes = _cxcywh_to_xyxy(rows[cand, :4].astype(np.float32))
        results.append(_finish(boxes, sc, ci, iou_threshold, max_detections, class_agnostic, transform))
    return results


def _yolov5_flatten_raw(maps: Sequence[Any], anchors: Any, strides: Sequence[int], thr: float) -> list[np.ndarray]:
    """Raw per-level logits → per-image [K, 5 + C] decoded rows (objectness-filtered)."""
    anc = np.asarray(anchors, dtype=np.float32).reshape(len(maps), -1, 2)
    if len(strides) != len(maps):
        raise UserError(f"strides: {len(strides)} strides for {len(maps)} output maps")
    lthr = logit(thr)
    per_image: list[list[np.ndarray]] = []
    for level, m in enumerate(maps):
        arr = check_array(f"outputs[{level}]", m, ndim=4, dtype_kind="f")
        n, ch, ny, nx = arr.shape
        na = anc.shape[1]
        if ch % na or ch // na < 6:
            raise UserError(f"outputs[{level}]: {ch} channels is not anchors({na}) x (5 + classes)")
        v = arr.reshape(n, na, ch // na, ny, nx)
        for i in range(n):
            a_idx, gy, gx = np.nonzero(v[i, :, 4] >= lthr)
            t = v[i][a_idx, :, gy, gx]
            s = sigmoid(t)
            xy = (s[:, 0:2] * 2 - 0.5 + np.stack([gx, gy], 1)) * strides[level]
            wh = (s[:, 2:4] * 2) ** 2 * anc[level][a_idx]
            rows = np.concatenate([xy, wh, s[:, 4:]], 1)
            if level == 0:
                per_image.append([])
            per_image[i].append(rows)
    return [np.concatenate(p).astype(np.float32) for p in per_image]


# ---------------------------------------------------------------------------------- SSD


def ssd_priors(
    image_size: int = 300,
    feature_maps: Sequence[int] = (38, 19, 10, 5, 3, 1),
    steps: Sequence[float] = (8, 16, 32, 64, 100, 300),
    min_sizes: Sequence[float] = (30, 60, 111, 162, 213, 264),
    max_sizes: Sequence[float] = (60, 111, 162, 213, 264, 315),
    aspect_ratios: Sequence[Sequence[float]] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    clip: bool = True,
) -> np.ndarray:
    """SSD prior (default) boxes ``[P, 4]`` as normalized cx, cy, w, h (8732 for SSD300).

    Per cell, in order: the min-size square, the sqrt(min*max) square, then for each
    aspect ratio r the boxes (s*sqrt(r), s/sqrt(r)) and (s/sqrt(r), s*sqrt(r)).
    """
    levels = [len(feature_maps), len(steps), len(min_sizes), len(max_sizes), len(aspect_ratios)]
    if len(set(levels)) != 1:
        raise UserError(f"ssd_priors: per-level lists have different lengths {levels}")
    out = []
    for f, step, mn, mx, ars in zip(feature_maps, steps, min_sizes, max_sizes, aspect_ratios, strict=True):
        fk = image_size / step
        ii, jj = np.meshgrid(np.arange(f), np.arange(f), indexing="ij")
        cx, cy = ((jj.ravel() + 0.5) / fk), ((ii.ravel() + 0.5) / fk)
        s, sp = mn / image_size, np.sqrt(mn / image_size * (mx / image_size))
        wh = [(s, s), (sp, sp)]
        for r in ars:
            q = np.sqrt(r)
            wh += [(s * q, s / q), (s / q, s * q)]
        wh_arr = np.asarray(wh)
        cell = np.stack([cx, cy], 1)[:, None, :].repeat(len(wh), 1)
        out.append(np.concatenate([cell, np.broadcast_to(wh_arr, cell.shape)], 2).reshape(-1, 4))
    priors = np.concatenate(out).astype(np.float32)
    return np.clip(priors, 0.0, 1.0) if clip else priors


def decode_ssd_boxes(loc: Any, priors: Any, variances: tuple[float, float] = (0.1, 0.2)) -> np.ndarray:
    """Center-size decoding: ``[..., P, 4]`` offsets + priors (cx, cy, w, h) → xyxy boxes
    (normalized like the priors): ``c = p_c + l_c * v0 * p_wh``, ``wh = p_wh * exp(l_wh * v1)``."""
    lo = check_array("loc", loc, ndim=(2, 3), dtype_kind="f", last_dim=4)
    pr = check_array("priors", priors, ndim=2, dtype_kind="f", last_dim=4)
    if lo.shape[-2] != pr.shape[0]:
        raise UserError(f"loc and priors: {lo.shape[-2]} offsets for {pr.shape[0]} priors")
    c = pr[:, :2] + lo[..., :2] * variances[0] * pr[:, 2:]
    wh = pr[:, 2:] * np.exp(lo[..., 2:] * variances[1])
    return np.concatenate([c - wh / 2, c + wh / 2], -1)


def decode_ssd(
    loc: Any,
    conf: Any,
    priors: Any,
    *,
    variances: tuple[float, float] = (0.1, 0.2),
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    max_detections: int = 200,
    background: int | None = 0,
    activation: str = "softmax",
    image_size: int | tuple[int, int] | None = None,
    transform: Transform | None = None,
) -> list[Detections]:
    """SSD post-processing: ``loc`` [N, P, 4], ``conf`` [N, P, C] → per-image detections.

    Class scores use ``softmax`` (or ``sigmoid``, or ``none`` for probabilities); the
    ``background`` class is never reported; every (prior, class) pair above the threshold
    is a candidate (multi-label, as SSD does); NMS is per class. Boxes are scaled from
    normalized to pixels with ``image_size`` ``(h, w)`` when given.
    """
    lo = check_array("loc", loc, ndim=3, dtype_kind="f", last_dim=4)
    cf = check_array("conf", conf, ndim=3, dtype_kind="f")
    if cf.shape[:2] != lo.shape[:2]:
        raise UserError(f"loc and conf: shapes {lo.shape} and {cf.shape} disagree on N or P")
    act = {"softmax": lambda x: softmax(x, -1), "sigmoid": sigmoid, "none": lambda x: x}.get(activation)
    if act is None:
        raise UserError(f"activation: expected 'softmax', 'sigmoid' or 'none', got {activation!r}")
    boxes_all = decode_ssd_boxes(lo, priors, variances).astype(np.float32)
    if image_size is not None:
        h, w = check_size("image_size", image_size)
        boxes_all = boxes_all * np.array([w, h, w, h], np.float32)
    results = []
    for i in range(lo.shape[0]):
        probs = act(cf[i])
        if background is not None:
            probs = probs.copy()
            probs[:, background] = -np.inf
        p, c = np.nonzero(probs >= score_threshold)
        if p.size == 0:
            results.append(Detections.empty())
            continue
        results.append(
            _finish(boxes_all[i][p], probs[p, c], c.astype(np.int64), iou_threshold, max_detections, False, transform)
        )
    return results


# ---------------------------------------------------------------------------------- PP-PicoDet (GFL head)


def picodet_centers(input_size: int | tuple[int, int], strides: Sequence[int]) -> list[np.ndarray]:
    """Per level, the anchor centers ``[A_l, 2]`` (x, y) in input pixels: ``(j + 0.5) * stride``,
    row-major, with ``ceil(size / stride)`` cells per axis (PaddleDetection's PicoDet export:
    an 800x608 input gives 13x10 cells at stride 64)."""
    h, w = check_size("input_size", input_size)
    out = []
    for s in strides:
        s = int(s)
        gx, gy = np.meshgrid(np.arange(-(-w // s)), np.arange(-(-h // s)))
        out.append((np.stack([gx.ravel(), gy.ravel()], 1) + 0.5) * s)
    return out


def decode_picodet(
    scores: Sequence[Any],
    boxes: Sequence[Any],
    *,
    input_size: int | tuple[int, int],
    strides: Sequence[int] = (8, 16, 32, 64),
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    level_top_k: int = 1000,
    class_candidates: int = 200,
    max_per_class: int = 100,
    transform: Transform | None = None,
) -> list[Detections]:
    """Decode a PP-PicoDet (GFL-style) head exported without NMS: per level, ``scores[l]``
    ``[N, A_l, C]`` class probabilities (sigmoid already applied) and ``boxes[l]``
    ``[N, A_l, 4 * (reg_max + 1)]`` distribution logits of the left/top/right/bottom
    distances (bins of one stride).

    Per image, as PaddleDetection's ``PicoDetPostProcess`` (and rapid-layout) do it: per
    level the ``level_top_k`` anchors with the highest best-class score; box = center -/+
    expected distance x stride; then per class the scores ``> score_threshold`` (strict),
    the ``class_candidates`` best of them, greedy NMS (suppressed when IoU > ``iou_threshold``)
    keeping at most ``max_per_class``. Detections come ordered by class, then descending
    score; boxes are in input pixels, or mapped (and clipped) through ``transform``.
    """
    if len(scores) != len(strides) or len(boxes) != len(strides):
        raise UserError(f"scores / boxes: expected {len(strides)} levels (one per stride), got {len(scores)} / "
                        f"{len(boxes)}")
    centers = picodet_centers(input_size, strides)
    sc = [check_array(f"scores[{i}]", s, ndim=3, dtype_kind="f") for i, s in enumerate(scores)]
    bx = [check_array(f"boxes[{i}]", b, ndim=3, dtype_kind="f") for i, b in enumerate(boxes)]
    n, ncls = sc[0].shape[0], sc[0].shape[2]
    for i, (s, b, c) in enumerate(zip(sc, bx, centers, strict=True)):
        if s.shape != (n, c.shape[0], ncls) or b.shape[:2] != (n, c.shape[0]) or b.shape[2] % 4:
            raise UserError(f"scores[{i}] / boxes[{i}]: shapes {s.shape} / {b.shape} do not fit {c.shape[0]} anchors "
                            f"(stride {strides[i]}) x {ncls} classes, 4 x bins")
    thr = check_range("score_threshold", score_threshold, 0.0, 1.0)
    results = []
    for img in range(n):
        all_boxes, all_scores = [], []
        for s, b, c, stride in zip(sc, bx, centers, strides, strict=True):
            best = s[img].max(axis=1)
            top = np.argsort(-best, kind="stable")[:level_top_k]
            bins = b[img, top].reshape(-1, 4, b.shape[2] // 4).astype(np.float64)
            dist = dfl_expectation(bins) * float(stride)
            ctr = np.tile(c[top], 2)
            all_boxes.append(ctr + np.array([-1.0, -1.0, 1.0, 1.0]) * dist)
            all_scores.append(s[img, top])
        bxs, scs = np.concatenate(all_boxes), np.concatenate(all_scores)
        anchor, cls = np.nonzero(scs > thr)
        if anchor.size == 0:
            results.append(Detections.empty())
            continue
        prob = scs[anchor, cls]
        # per class, the best `class_candidates` (sorted by class, then descending score)
        order = np.lexsort((-prob, cls))
        anchor, cls, prob = anchor[order], cls[order], prob[order]
        rank = np.arange(cls.size) - np.searchsorted(cls, cls, side="left")
        keep = rank < class_candidates
        anchor, cls, prob = anchor[keep], cls[keep].astype(np.int64), prob[keep]
        cand_boxes = bxs[anchor]
        kept = batched_nms_prechecked(cand_boxes, prob, cls, iou_threshold, None)
        # at most `max_per_class` per class, then ordered by class, descending score
        kept = kept[np.lexsort((-prob[kept], cls[kept]))]
        kc = cls[kept]
        rank = np.arange(kc.size) - np.searchsorted(kc, kc, side="left")
        kept = kept[rank < max_per_class]
        det = Detections(cand_boxes[kept].astype(np.float32), prob[kept].astype(np.float32), cls[kept])
        results.append(det.to_original(transform) if transform is not None else det)
    return results
