"""Boxes: format conversion, areas, IoU matrices, and fast greedy NMS (plain, class-aware, soft).

IoU is the area-only ("+1-free") ratio used by torchvision and OpenCV's ``cv2.dnn.NMSBoxes``
(for float boxes): a box ``(x1, y1, x2, y2)`` has area ``(x2 - x1) * (y2 - y1)``; boxes with
negative extent count as empty. A box is suppressed when its IoU with a kept, higher-scored
box is **greater than** the threshold; ties in score keep the lower index first (stable
order, as OpenCV).

The NMS engine (``slipway.ops._nms``) is exact greedy NMS, vectorized and adaptive.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_range, check_same_len
from slipway.ops._nms import nms_sorted

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _boxes(name: str, boxes: Any, ndim: int | tuple[int, ...] = 2) -> np.ndarray:
    arr = check_array(name, boxes, ndim=ndim, dtype_kind="fiu", last_dim=4)
    return arr if arr.dtype.kind == "f" else arr.astype(np.float64)


def box_convert(boxes: Any, in_fmt: str, out_fmt: str) -> np.ndarray:
    """Convert boxes ``[..., 4]`` between ``xyxy``, ``xywh`` (top-left + size), ``cxcywh``."""
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in BOX_FORMATS:
            raise UserError(f"{name}: expected one of {', '.join(BOX_FORMATS)}, got {fmt!r}")
    b = _boxes("boxes", boxes, ndim=tuple(range(1, 8)))
    if in_fmt == out_fmt:
        return b.copy()
    a, c = b[..., :2], b[..., 2:]
    if in_fmt == "xywh":
        a, c = a, a + c
    elif in_fmt == "cxcywh":
        a, c = a - c / 2, a + c / 2
    if out_fmt == "xyxy":
        return np.concatenate([a, c], -1)
    if out_fmt == "xywh":
        return np.concatenate([a, c - a], -1)
    return np.concatenate([(a + c) / 2, c - a], -1)


def box_area(boxes: Any) -> np.ndarray:
    """Area of xyxy boxes ``[..., 4]`` (zero for boxes with negative extent)."""
    b = _boxes("boxes", boxes, ndim=tuple(range(1, 8)))
    return np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)


def box_iou(boxes1: Any, boxes2: Any) -> np.ndarray:
    """IoU matrix ``[..., N, M]`` of xyxy boxes ``[..., N, 4]`` and ``[..., M, 4]``.

    Leading (batch) dims broadcast. Two empty boxes have IoU 0.
    """
    a = _boxes("boxes1", boxes1, ndim=tuple(range(2, 8)))
    b = _boxes("boxes2", boxes2, ndim=tuple(range(2, 8)))
    a, b = a[..., :, None, :], b[..., None, :, :]
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def clip_boxes(boxes: Any, size: tuple[int, int]) -> np.ndarray:
    """Clip xyxy boxes ``[..., 4]`` to an image of ``size = (h, w)``."""
    b = _boxes("boxes", boxes, ndim=tuple(range(1, 8)))
    h, w = size
    return np.clip(b, 0, np.array([w, h, w, h], dtype=b.dtype))


# ---------------------------------------------------------------------------------- NMS


def nms(
    boxes_xyxy: Any,
    scores: Any,
    iou_threshold: float,
    score_threshold: float = 0.0,
    max_detections: int | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices (int64) by descending score.

    Boxes with ``score < score_threshold`` are dropped first; at most ``max_detections``
    indices are returned. Zero boxes give an empty array.
    """
    b, s, thr, limit = _nms_args(boxes_xyxy, scores, iou_threshold, score_threshold, max_detections)
    cand = np.nonzero(s >= score_threshold)[0] if score_threshold > -np.inf else np.arange(len(s))
    if cand.size == 0 or limit == 0:
        return np.zeros(0, dtype=np.int64)
    order = cand[np.argsort(-s[cand], kind="stable")]
    keep = nms_sorted(b[order], thr, limit)
    return order[keep].astype(np.int64)


def batched_nms(
    boxes_xyxy: Any,
    scores: Any,
    class_ids: Any,
    iou_threshold: float,
    score_threshold: float = 0.0,
    max_detections: int | None = None,
) -> np.ndarray:
    """Class-aware NMS: boxes only suppress boxes of the same class.

    The IoU test also requires equal classes; for the sparse pair sweep each class is
    shifted by ``class * (span + 1)`` along x (in float64, for ordering only) so windows
    never mix classes. IoUs use the original coordinates, exactly as per-class NMS.
    """
    b, s, thr, limit = _nms_args(boxes_xyxy, scores, iou_threshold, score_threshold, max_detections)
    c = check_array("class_ids", class_ids, ndim=1, dtype_kind="iu")
    check_same_len("boxes_xyxy", b, "class_ids", c)
    return _batched(b, s, c, thr, score_threshold, limit)


def batched_nms_prechecked(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float, max_detections: int | None
) -> np.ndarray:
    """:func:`batched_nms` (score threshold 0) for arrays the caller has already checked:
    finite float boxes [N, 4], finite real scores [N], int class ids [N]. Only the scalar
    arguments are validated, with the same messages."""
    thr, limit = _nms_scalars(len(scores), iou_threshold, 0.0, max_detections)
    return _batched(boxes, scores, class_ids, thr, 0.0, limit)


def _batched(b: np.ndarray, s: np.ndarray, c: np.ndarray, thr: float, score_thr: float, limit: int) -> np.ndarray:
    if b.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    cand = np.flatnonzero(s >= score_thr)
    if cand.size == 0 or limit == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-s, kind="stable") if cand.size == s.size else cand[np.argsort(-s[cand], kind="stable")]
    keep = nms_sorted(b[order], thr, limit, c[order].astype(np.int64, copy=False))
    return order[keep].astype(np.int64, copy=False)


def _nms_args(boxes: Any, scores: Any, iou: float, score_thr: float, max_det: int | None) -> tuple:
    b = _boxes("boxes_xyxy", boxes)
    s = check_array("scores", scores, ndim=1, dtype_kind="fiu")
    check_same_len("boxes_xyxy", b, "scores", s)
    thr, limit = _nms_scalars(len(s), iou, score_thr, max_det)
    return b, s, thr, limit


def _nms_scalars(n: int, iou: float, score_thr: float, max_det: int | None) -> tuple[float, int]:
    """Checked IoU threshold and detection cap (``n`` when ``max_det`` is None)."""
    thr = check_range("iou_threshold", iou, 0.0, 1.0)
    try:
        st = float(score_thr)
    except (TypeError, ValueError):
        raise UserError(f"score_threshold: expected a number, got {score_thr!r}") from None
    if np.isnan(st) or st == np.inf:
        raise UserError(f"score_threshold: expected a finite number or -inf, got {score_thr!r}")
    if max_det is not None and (not isinstance(max_det, (int, np.integer)) or max_det < 0):
        raise UserError(f"max_detections: expected a non-negative int or None, got {max_det!r}")
    limit = n if max_det is None else int(max_det)
    return thr, limit


# ---------------------------------------------------------------------------------- soft-NMS


def soft_nms(
    boxes_xyxy: Any,
    scores: Any,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
    max_detections: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS (Bodla et al. 2017): decay overlapping scores instead of removing boxes.

    Repeatedly picks the highest current score (lowest index on ties), then multiplies
    every other score by ``exp(-iou^2 / sigma)`` (``gaussian``) or by ``1 - iou`` where
    ``iou > iou_threshold`` (``linear``); boxes whose score falls below
    ``score_threshold`` are dropped. Returns (kept indices, their decayed scores), in
    selection order — the semantics of ``cv2.dnn.softNMSBoxes`` (float32 arithmetic).
    """
    b, s, thr, limit = _nms_args(boxes_xyxy, scores, iou_threshold, score_threshold, max_detections)
    if method not in ("gaussian", "linear"):
        raise UserError(f"method: expected 'gaussian' or 'linear', got {method!r}")
    sig = float(sigma)
    if method == "gaussian" and not sig > 0:
        raise UserError(f"sigma: expected a positive number, got {sigma!r}")
    cur = s.astype(np.float32).copy()
    live = np.nonzero(cur >= score_threshold)[0]
    keep, kept_scores = [], []
    bx = b.astype(np.float64)
    area = np.maximum(bx[:, 2] - bx[:, 0], 0) * np.maximum(bx[:, 3] - bx[:, 1], 0)
    while live.size and len(keep) < limit:
        m = int(np.argmax(cur[live]))  # first maximum = lowest index among ties (live is sorted)
        i = live[m]
        keep.append(i)
        kept_scores.append(cur[i])
        live = np.delete(live, m)
        if not live.size:
            break
        iou = _iou_one(bx, area, i, live).astype(np.float32)
        if method == "gaussian":
            cur[live] *= np.exp(-(iou * iou) / np.float32(sig))
        else:
            cur[live] *= np.where(iou > thr, np.float32(1) - iou, np.float32(1))
        live = live[cur[live] >= score_threshold]
    return np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float32)


def _iou_one(b: np.ndarray, area: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    o = b[others]
    iw = np.maximum(np.minimum(b[i, 2], o[:, 2]) - np.maximum(b[i, 0], o[:, 0]), 0)
    ih = np.maximum(np.minimum(b[i, 3], o[:, 3]) - np.maximum(b[i, 1], o[:, 1]), 0)
    inter = iw * ih
    union = area[i] + area[others] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
