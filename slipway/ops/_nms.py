"""The greedy-NMS engine behind :func:`slipway.ops.nms` and :func:`slipway.ops.batched_nms`.

Exact greedy NMS (a box is suppressed when its IoU with a kept, higher-scored box is greater
than the threshold), vectorized two ways and switched adaptively by a cost model:

- **blocks**: the top 64 remaining boxes are resolved together (greedy order over the bit
  rows of their IoU matrix), then suppress the rest, testing only the boxes whose x1 lies in
  a window that can reach the threshold. Fast while each kept box removes many others
  (clustered detections).
- **sparse**: every pair that can reach the threshold is enumerated once by a sweep over
  boxes sorted by x1 (an x-overlap > t * width is necessary), IoU-tested, and the greedy
  order is resolved on that sparse graph in vectorized rounds. Fast when most boxes survive.

Class-aware NMS adds a class-equality test to the IoU test; the sweep key shifts each class
along x (float64) so windows never mix classes. With many classes (<= 32 boxes per class on
average) it first runs **class rounds**: boxes grouped by class, each round keeps the best
remaining box of every class and drops what it suppresses (one vectorized pass over the
survivors); detector output (a few objects per class) finishes in a handful of rounds, the
last <= 64 survivors in one block. Rounds that stop paying off hand the survivors to the
two phases above.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 64
_PAIR_CHUNK = 1 << 17
_CACHE_ELEMS = 1 << 16  # IoU tiles small enough to stay in L2
_MAX_ROUNDS = 12
_PER_CLASS = 32  # class rounds only with at most this many boxes per class on average
_UPPER = np.triu(np.ones((_BLOCK, _BLOCK), dtype=bool), 1)


def nms_sorted(b: np.ndarray, thr: float, limit: int, classes: np.ndarray | None = None) -> np.ndarray:
    """Positions kept by greedy NMS of boxes already sorted by descending score."""
    if classes is not None and b.shape[0] > _BLOCK:
        return _class_rounds(b, thr, limit, classes)
    return _blocks_then_sparse(b, thr, limit, classes)


def _blocks_then_sparse(b: np.ndarray, thr: float, limit: int, classes: np.ndarray | None) -> np.ndarray:
    """The block phase, switching to the sparse phase when the cost model prefers it."""
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


def _class_rounds(b: np.ndarray, thr: float, limit: int, classes: np.ndarray) -> np.ndarray:
    """Class-aware greedy NMS by rounds over boxes grouped by class (stable: score order kept
    inside each class, which is all greedy NMS needs when classes never interact).

    Each round keeps the first survivor of every class, tests the class's other survivors
    against it and drops the suppressed ones. <= 64 survivors finish in one block; when a
    round removes under an eighth of the survivors (few boxes per class kept per round is
    too slow) the survivors go, in score order, to the block/sparse engine.
    """
    group = np.argsort(classes, kind="stable")
    live_cls = classes[group]
    if b.shape[0] > _PER_CLASS * (np.count_nonzero(live_cls[1:] != live_cls[:-1]) + 1):
        return _blocks_then_sparse(b, thr, limit, classes)  # too few classes for rounds to pay
    dt = np.float64 if b.dtype == np.float64 else np.float32
    live_cols = np.empty((5, b.shape[0]), dtype=dt)  # x1, y1, x2, y2, area (as _Boxes)
    live_cols[:4] = b[group].T
    x1, y1, x2, y2, area = live_cols
    np.multiply(np.maximum(x2 - x1, 0), np.maximum(y2 - y1, 0), out=area)
    dthr = dt(thr)
    alive = np.arange(b.shape[0])
    kept: list[np.ndarray] = []
    while alive.size > _BLOCK:
        starts, gone = _class_round(live_cols, live_cls, dthr)
        kept.append(alive[starts])
        stay = ~gone
        alive, live_cols, live_cls = alive[stay], live_cols[:, stay], live_cls[stay]
        if alive.size * 8 > gone.size * 7 and alive.size > _BLOCK:
            rest = np.sort(group[alive])
            sub = _blocks_then_sparse(b[rest], thr, limit, classes[rest])
            return _merge([group[np.concatenate(kept)], rest[sub]], limit)
    if alive.size:
        kept.append(alive[_resolve_small(live_cols, live_cls, dthr)])
    return _merge([group[np.concatenate(kept)]], limit)


def _class_round(cols: np.ndarray, cls: np.ndarray, thr: np.floating) -> tuple[np.ndarray, np.ndarray]:
    """One round over class-grouped survivors: the first of each class (indices) and which
    survivors are now decided (kept or suppressed by their class's first)."""
    first = np.empty(cls.size, dtype=bool)
    first[0] = True
    np.not_equal(cls[1:], cls[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    runs = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=runs[:-1])
    runs[-1] = cls.size - starts[-1]
    ref = cols[:, starts].repeat(runs, axis=1)
    gone = _columns_over(cols, ref, thr)
    gone[starts] = True
    return starts, gone


def _resolve_small(cols: np.ndarray, cls: np.ndarray, thr: np.floating) -> np.ndarray:
    """Greedy NMS of <= 64 score-ordered boxes given as [5, m] columns and class ids: the
    IoU test of _over on the dense m x m tile, then the bit-row loop of _resolve_block."""
    m = _columns_over(cols[:, :, None], cols[:, None, :], thr)
    m &= cls[:, None] == cls[None, :]
    return _greedy_rows(m)


def _columns_over(a: np.ndarray, b: np.ndarray, thr: np.floating) -> np.ndarray:
    """The IoU test of _over, term for term, on broadcastable [x1, y1, x2, y2, area] columns:
    intersection > thr * (area_a + area_b - intersection)."""
    side = np.minimum(a[2:4], b[2:4])
    side -= np.maximum(a[0:2], b[0:2])
    np.maximum(side, 0, out=side)
    inter = side[0] * side[1]
    union = a[4] + b[4]
    union -= inter
    union *= thr
    return inter > union


def _merge(parts: list[np.ndarray], limit: int) -> np.ndarray:
    """Kept positions from several parts, in score order, capped at ``limit``."""
    out = np.concatenate(parts)
    out.sort()
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
    return _greedy_rows(_over(ctx, blk[:, None], blk[None, :]))


def _greedy_rows(m: np.ndarray) -> np.ndarray:
    """Rows kept by greedy order over a <= 64 x 64 "i suppresses j" matrix (only j > i
    counts), each row packed into one uint64 of bits."""
    m &= _UPPER[: m.shape[0], : m.shape[1]]
    if not m.any():
        return np.arange(m.shape[0])
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
    ``r / rate`` blocks remain at the recent removal rate; the sparse phase costs ~800
    (including ~8 resolution rounds) + 0.2 r + 0.015 per candidate pair, estimated from the
    count over all boxes scaled by (r / n)^2.
    """
    if r < 2 * _BLOCK or not removed:
        return False
    rate = max(float(np.mean(removed[-4:])), 1.0)
    block_cost = (r / rate) * (70.0 + last_cost)
    pairs = max(total_pairs, 0)  # before counting: a lower bound on the sparse cost
    sparse_cost = 800.0 + 0.2 * r + 0.015 * pairs * (r / n) ** 2
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
    """Greedy NMS of ``idx`` (score-sorted positions) resolved on the sparse overlap graph.

    Each vectorized round keeps the undecided boxes that no live edge points to and
    suppresses the targets of kept boxes; the first undecided box is always decided, so
    rounds = longest keep/suppress chain. Long chains finish sequentially.
    """
    src, dst = _edges(ctx, idx)
    local = np.full(ctx.n, -1, dtype=np.intp)
    local[idx] = np.arange(idx.size)
    src, dst = local[src], local[dst]
    state = np.zeros(idx.size, dtype=np.int8)  # 0 undecided, 1 kept, 2 suppressed
    for _ in range(_MAX_ROUNDS):
        blocked = np.zeros(idx.size, dtype=bool)
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
    return idx[state == 1]


def _resolve_sequential(state: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
    """Finish the undecided boxes in score order, one by one (plain Python over the edges)."""
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    und = np.flatnonzero(state == 0)
    starts = np.searchsorted(src, und).tolist()
    ends = np.searchsorted(src, und, side="right").tolist()
    st, targets = state.tolist(), dst.tolist()
    for i, a, b in zip(und.tolist(), starts, ends, strict=True):
        if st[i] == 0:
            st[i] = 1
            for j in targets[a:b]:
                if st[j] == 0:
                    st[j] = 2
    state[:] = st
