"""Boxes: format conversion, areas, IoU matrices, and fast greedy NMS (plain, class-aware, soft).

IoU is the area-only ("+1-free") ratio used by torchvision and OpenCV's ``cv2.dnn.NMSBoxes``
(for float boxes): a box ``(x1, y1, x2, y2)`` has area ``(x2 - x1) * (y2 - y1)``; boxes with
negative extent count as empty. A box is suppressed when its IoU with a kept, higher-scored
box is **greater than** the threshold; ties in score keep the lower index first (stable
order, as OpenCV).

The NMS engine is exact greedy NMS, vectorized two ways and switched adaptively: while each
kept box removes many others (clustered detections), blocks of the top boxes are resolved
together and suppress the rest with one IoU matrix; when suppression is sparse (many boxes
survive), only box pairs that can reach the threshold are enumerated (a sweep over boxes
sorted by x1) and the greedy order is resolved on that sparse graph in a few vectorized rounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_range, check_same_len

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
_BLOCK = 64
_PAIR_CHUNK = 1 << 17
_CACHE_ELEMS = 1 << 16  # IoU tiles small enough to stay in L2
_UPPER = np.triu(np.ones((_BLOCK, _BLOCK), dtype=bool), 1)


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
    keep = _nms_sorted(b[order], thr, limit)
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
    if b.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    cand = np.nonzero(s >= score_threshold)[0]
    if cand.size == 0 or limit == 0:
        return np.zeros(0, dtype=np.int64)
    order = cand[np.argsort(-s[cand], kind="stable")]
    keep = _nms_sorted(b[order], thr, limit, c[order].astype(np.int64))
    return order[keep].astype(np.int64)


def _nms_args(boxes: Any, scores: Any, iou: float, score_thr: float, max_det: int | None) -> tuple:
    b = _boxes("boxes_xyxy", boxes)
    s = check_array("scores", scores, ndim=1, dtype_kind="fiu")
    check_same_len("boxes_xyxy", b, "scores", s)
    thr = check_range("iou_threshold", iou, 0.0, 1.0)
    try:
        st = float(score_thr)
    except (TypeError, ValueError):
        raise UserError(f"score_threshold: expected a number, got {score_thr!r}") from None
    if np.isnan(st) or st == np.inf:
        raise UserError(f"score_threshold: expected a finite number or -inf, got {score_thr!r}")
    if max_det is not None and (not isinstance(max_det, (int, np.integer)) or max_det < 0):
        raise UserError(f"max_detections: expected a non-negative int or None, got {max_det!r}")
    limit = len(s) if max_det is None else int(max_det)
    return b, s, thr, limit


def _nms_sorted(b: np.ndarray, thr: float, limit: int, classes: np.ndarray | None = None) -> np.ndarray:
    """Positions kept by greedy NMS of boxes already sorted by descending score."""
    n = b.shape[0]
    ctx = _Boxes(b, thr, classes)
    kept: list[np.ndarray] = []
    alive = np.arange(n)
    total_pairs = -1
    removed_per_block: list[int] = []
    count = 0
    while alive.size and count < limit:
        blk, rest = alive[:_BLOCK], alive[_BLOCK:]
        kb = blk[_resolve_block(ctx, blk)]
        kept.append(kb)
        count += kb.size
        if rest.size == 0 or count >= limit:
            break
        before = rest.size
        rest = rest[~_suppressed_by(ctx, kb, rest)]
        removed_per_block.append(blk.size + before - rest.size)
        alive = rest
        cost_args = (n, alive.size, total_pairs, ctx.last_cost, removed_per_block)
        if total_pairs < 0 and _prefer_sparse(*cost_args):
            total_pairs = _count_pairs(ctx, np.arange(n))
            cost_args = (n, alive.size, total_pairs, ctx.last_cost, removed_per_block)
        if total_pairs >= 0 and _prefer_sparse(*cost_args):
            kept.append(_sparse_nms(ctx, alive))
            break
    out = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return out[:limit]


class _Boxes:
    """Score-sorted boxes as contiguous columns (float32 unless given float64), their areas,
    the threshold, optional class ids, and the x keys of the pair sweep (class-shifted)."""

    def __init__(self, b: np.ndarray, thr: float, classes: np.ndarray | None) -> None:
        dt = np.float64 if b.dtype == np.float64 else np.float32
        self.x1, self.y1, self.x2, self.y2 = (np.ascontiguousarray(b[:, k], dtype=dt) for k in range(4))
        self.area = np.maximum(self.x2 - self.x1, 0) * np.maximum(self.y2 - self.y1, 0)
        self.thr = dt(thr)
        self.cls = classes
        self.kx1, self.kx2 = self.x1, self.x2
        if classes is not None and classes.size and classes.min() != classes.max():
            lo, hi = float(b[:, 0::2].min()), float(b[:, 0::2].max())
            shift = (classes - classes.min()).astype(np.float64) * (hi - lo + 1.0)
            self.kx1, self.kx2 = self.x1 + shift, self.x2 + shift
        self.n = b.shape[0]
        self.last_cost = 0.0  # estimated microseconds of the last suppression step
        self._sweep: tuple[np.ndarray, np.ndarray, float] | None = None

    def sweep(self) -> tuple[np.ndarray, np.ndarray, float]:
        """All boxes sorted by sweep key x1, the sorted keys, and the widest box (cached)."""
        if self._sweep is None:
            xs = np.argsort(self.kx1, kind="stable")
            wmax = float(np.max(np.maximum(self.kx2 - self.kx1, 0))) if self.n else 0.0
            self._sweep = (xs, self.kx1[xs], wmax)
        return self._sweep


def _over(ctx: _Boxes, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """IoU(i, j) > thr for broadcastable index arrays (the one formula both phases use)."""
    iw = np.minimum(ctx.x2[i], ctx.x2[j])
    iw -= np.maximum(ctx.x1[i], ctx.x1[j])
    np.maximum(iw, 0, out=iw)
    ih = np.minimum(ctx.y2[i], ctx.y2[j])
    ih -= np.maximum(ctx.y1[i], ctx.y1[j])
    np.maximum(ih, 0, out=ih)
    iw *= ih  # intersection
    union = ctx.area[i] + ctx.area[j]
    union -= iw
    union *= ctx.thr
    over = iw > union
    if ctx.cls is not None:
        over &= ctx.cls[i] == ctx.cls[j]
    return over


def _resolve_block(ctx: _Boxes, blk: np.ndarray) -> np.ndarray:
    """Greedy NMS inside one block (sequential over bit rows of its IoU matrix)."""
    m = _over(ctx, blk[:, None], blk[None, :])
    m &= _UPPER[: blk.size, : blk.size]
    if not m.any():
        return np.arange(blk.size)
    rows = np.zeros((m.shape[0], 8), dtype=np.uint8)  # _BLOCK <= 64: one uint64 per row
    rows[:, : (m.shape[1] + 7) // 8] = np.packbits(m, axis=1, bitorder="little")
    masks = rows.view("<u8")[:, 0].tolist()
    removed, keep = 0, []
    for i, mask in enumerate(masks):
        if not (removed >> i) & 1:
            keep.append(i)
            removed |= mask
    return np.asarray(keep, dtype=np.int64)


def _suppressed_by(ctx: _Boxes, kept: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Which of ``rest`` overlap any of ``kept`` past the threshold.

    Small problems use a dense IoU tile; large ones only test, for each kept box, the boxes
    whose (class-shifted) x1 lies in the window that can reach the threshold.
    """
    if kept.size * rest.size <= _CACHE_ELEMS:
        ctx.last_cost = 30.0 + 0.01 * kept.size * rest.size
        return _over(ctx, kept[:, None], rest[None, :]).any(axis=0)
    xs, kx1s, wmax = ctx.sweep()
    w = np.maximum(ctx.kx2[kept] - ctx.kx1[kept], 0)
    lo = np.searchsorted(kx1s, ctx.kx1[kept] - (1 - ctx.thr) * wmax - _slack(ctx.kx1[kept]), side="left")
    hi = np.searchsorted(kx1s, ctx.kx2[kept] - ctx.thr * w * 0.999 + _slack(ctx.kx2[kept]), side="left")
    cnt = np.maximum(hi - lo, 0)
    total = int(cnt.sum())
    ctx.last_cost = 60.0 + 0.035 * total
    member = np.zeros(ctx.n, dtype=bool)
    member[rest] = True
    hit = np.zeros(ctx.n, dtype=bool)
    if total:
        jj = np.arange(total, dtype=np.intp)
        jj += np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
        cand = xs[jj]
        kk = np.repeat(kept, cnt)
        m = member[cand]
        cand, kk = cand[m], kk[m]
        hit[cand[_over(ctx, kk, cand)]] = True
    return hit[rest]


def _slack(x: np.ndarray) -> np.ndarray:
    """A little room on window bounds so float rounding never drops a candidate."""
    return 1e-6 * (np.abs(x) + 1)


def _prefer_sparse(n: int, r: int, total_pairs: int, last_cost: float, removed: list[int]) -> bool:
    """Switch to the sparse phase when it is cheaper than finishing block by block.

    Costs in microseconds (measured on a 2-core x86 box): a block costs ~70 plus its
    suppression step (~0.01 per IoU of a dense tile, ~0.035 per windowed pair), and about
    ``r / rate`` blocks remain at the recent removal rate; the sparse phase costs ~300 + 0.2 r + 0.015 per candidate pair, estimated
    from the count over all boxes scaled by (r / n)^2.
    """
    if r < 2 * _BLOCK or not removed:
        return False
    rate = max(float(np.mean(removed[-4:])), 1.0)
    block_cost = (r / rate) * (70.0 + last_cost)
    pairs = max(total_pairs, 0)  # before counting: a lower bound on the sparse cost
    sparse_cost = 300.0 + 0.2 * r + 0.015 * pairs * (r / n) ** 2
    return sparse_cost < block_cost


def _x_windows(ctx: _Boxes, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``idx`` sorted by x1 and, for each, the end of its candidate window.

    IoU > t needs an x-overlap > t * width of either box, so a partner j (x1_j >= x1_i) must
    start before x2_i - t * w_i; the bound is relaxed slightly against rounding.
    """
    order = ctx.sweep()[0]
    if idx.size == ctx.n:
        xs = order
    else:
        member = np.zeros(ctx.n, dtype=bool)
        member[idx] = True
        xs = order[member[order]]
    x1s, x2s = ctx.kx1[xs], ctx.kx2[xs]
    w = np.maximum(x2s - x1s, 0)
    bound = x2s - ctx.thr * w * 0.999 + _slack(x2s)
    hi = np.searchsorted(x1s, bound, side="left")
    lo = np.arange(1, xs.size + 1)
    return xs, lo, np.maximum(hi, lo)


def _count_pairs(ctx: _Boxes, idx: np.ndarray) -> int:
    _, lo, hi = _x_windows(ctx, idx)
    return int((hi - lo).sum())


def _edges(ctx: _Boxes, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (earlier, later) pairs of ``idx`` whose IoU passes the threshold, in chunks.

    Works on x1-sorted copies of the columns: the i side of each window is a ``repeat``
    of contiguous values, x1_j >= x1_i saves a max, and a y-overlap test prunes most
    candidates before the full IoU.
    """
    xs, lo, hi = _x_windows(ctx, idx)
    x1, y1, x2, y2, ar = (c[xs] for c in (ctx.x1, ctx.y1, ctx.x2, ctx.y2, ctx.area))
    cnt = hi - lo
    csum = np.cumsum(cnt)
    src_parts, dst_parts = [], []
    start = 0
    while start < xs.size:
        base = csum[start - 1] if start else 0
        stop = max(int(np.searchsorted(csum, base + _PAIR_CHUNK, side="right")), start + 1)
        c = cnt[start:stop]
        total = int(c.sum())
        if total:
            jj = np.arange(total, dtype=np.intp)
            jj += np.repeat(lo[start:stop] - (np.cumsum(c) - c), c)
            ih = np.minimum(np.repeat(y2[start:stop], c), y2[jj])
            ih -= np.maximum(np.repeat(y1[start:stop], c), y1[jj])
            k = np.flatnonzero(ih > 0)
            ii = np.repeat(np.arange(start, stop), c)[k]
            jj, ih = jj[k], ih[k]
            iw = np.minimum(x2[ii], x2[jj]) - x1[jj]
            np.maximum(iw, 0, out=iw)
            inter = iw * ih
            ok = inter > ctx.thr * (ar[ii] + ar[jj] - inter)
            a, b = xs[ii[ok]], xs[jj[ok]]
            src_parts.append(np.minimum(a, b))
            dst_parts.append(np.maximum(a, b))
        start = stop
    if not src_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(src_parts), np.concatenate(dst_parts)


def _sparse_nms(ctx: _Boxes, idx: np.ndarray) -> np.ndarray:
    """Greedy NMS of ``idx`` (score-sorted positions) resolved on the sparse overlap graph."""
    src, dst = _edges(ctx, idx)
    n = int(idx.max()) + 1 if idx.size else 0
    state = np.full(n, 3, dtype=np.int8)  # 0 undecided, 1 kept, 2 suppressed, 3 not in idx
    state[idx] = 0
    for _ in range(64):
        blocked = np.zeros(n, dtype=bool)
        blocked[dst] = True
        state[(state == 0) & ~blocked] = 1
        state[dst[state[src] == 1]] = 2
        live = (state[src] == 0) & (state[dst] == 0)
        src, dst = src[live], dst[live]
        if src.size == 0:
            state[state == 0] = 1
            break
    else:
        _resolve_sequential(state, src, dst)
    return idx[state[idx] == 1]


def _resolve_sequential(state: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
    """Finish a long suppression chain node by node (rarely needed fallback)."""
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    starts = np.searchsorted(src, np.arange(state.size))
    ends = np.searchsorted(src, np.arange(state.size), side="right")
    for i in np.nonzero(state == 0)[0]:
        if state[i] == 0:
            state[i] = 1
            targets = dst[starts[i] : ends[i]]
            state[targets[state[targets] == 0]] = 2


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
