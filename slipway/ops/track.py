"""Multi-object tracking: a SORT-style tracker, ByteTrack-style two-stage association, CLEAR-MOT metrics.

Both trackers keep every track in one set of numpy arrays (:class:`KalmanTracks`): the
constant-velocity Kalman filter predicts and corrects all tracks in a few batched array
operations instead of one Python object per track, so an update with 100 objects costs
under a millisecond. The state of a track is SORT's ``[cx, cy, s, r, vcx, vcy, vs]``: box
center, area ``s = w * h``, aspect ``r = w / h`` (constant) and the velocities of the first three.
Association maximizes the total IoU over the overlapping track/detection pairs whose IoU passes
the threshold (Hungarian assignment, ``scipy.optimize.linear_sum_assignment``, run only on
the pairs that compete); boxes that do not overlap never match.

Besides ``update(boxes, scores) -> [K, 5]``, both trackers have ``update_tracks(boxes, scores,
classes) -> TrackState`` (ids, boxes, scores and classes of the detections last matched, ages,
predicted flags) and ``predict_tracks()`` / ``predict()`` for a frame without detections (a
stream that detects every N frames): the filter moves one frame, but a skipped frame is not a
miss, so no track ages towards ``max_age``, loses its streak or dies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from slipway.errors import UserError
from slipway.ops._check import check_array, check_positive, check_range, check_same_len

# SORT's noise levels for [cx, cy, s, r] (position part) and their velocities (r has none).
Q_POS = np.array([1.0, 1.0, 1.0, 1.0])
Q_VEL = np.array([0.01, 0.01, 0.0001, 0.0])
R_MEAS = np.array([1.0, 1.0, 10.0, 10.0])
P0_POS = np.array([10.0, 10.0, 10.0, 10.0])
P0_VEL = np.array([1e4, 1e4, 1e4, 0.0])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4] (xyxy) -> [N, M]; 0 where the union is empty."""
    ax1, ay1, ax2, ay2 = np.ascontiguousarray(a.T, dtype=np.float64)[:, :, None]
    bx1, by1, bx2, by2 = np.ascontiguousarray(b.T, dtype=np.float64)[:, None, :]
    w = np.minimum(ax2, bx2)
    w -= np.maximum(ax1, bx1)
    np.maximum(w, 0.0, out=w)
    h = np.minimum(ay2, by2)
    h -= np.maximum(ay1, by1)
    np.maximum(h, 0.0, out=h)
    w *= h
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - w
    return np.divide(w, union, out=np.zeros_like(w), where=union > 0)


def xyxy_to_z(boxes: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] xyxy -> measurements [N, 4] of [cx, cy, s, r] (a box of zero height gets r = w / 1e-12)."""
    z = np.empty((len(boxes), 4))
    wh = boxes[:, 2:] - boxes[:, :2]
    np.add(boxes[:, :2], wh / 2, out=z[:, :2])
    np.multiply(wh[:, 0], wh[:, 1], out=z[:, 2])
    np.divide(wh[:, 0], np.maximum(wh[:, 1], 1e-12), out=z[:, 3])
    return z


def z_to_xyxy(z: np.ndarray) -> np.ndarray:
    """Measurements [N, 4] of [cx, cy, s, r] -> boxes [N, 4] xyxy (a non-positive s * r gives an empty box)."""
    w = np.sqrt(np.maximum(z[:, 2] * z[:, 3], 0.0))
    half = np.stack([w, z[:, 2] / np.maximum(w, 1e-12)], axis=1)
    half *= 0.5
    out = np.empty((len(z), 4))
    np.subtract(z[:, :2], half, out=out[:, :2])
    np.add(z[:, :2], half, out=out[:, 2:])
    return out


DENSE_PAIRS = 1024


def overlap_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of boxes of ``a`` [N, 4] and ``b`` [M, 4] (xyxy) that overlap: ``(rows, cols, iou)``, IoU > 0.

    A sweep over ``b`` sorted by x1 finds, for each box of ``a``, the boxes whose x1 lies in
    ``(a.x1 - widest b, a.x2)``; the IoU is computed only for those candidates, so the cost
    grows with the number of nearby pairs rather than with N * M. Up to ``DENSE_PAIRS`` pairs
    the dense :func:`iou_matrix` is cheaper (fewer array operations) and gives the same IoUs.
    """
    if len(a) == 0 or len(b) == 0:
        return np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0)
    if len(a) * len(b) <= DENSE_PAIRS:
        iou = iou_matrix(a, b)
        rows, cols = np.nonzero(iou)
        return rows, cols, iou[rows, cols]
    ax1, ay1, ax2, ay2 = np.ascontiguousarray(a.T, dtype=np.float64)
    bx1, by1, bx2, by2 = np.ascontiguousarray(b.T, dtype=np.float64)
    order = np.argsort(bx1, kind="stable")
    sorted_x1, bw = bx1[order], bx2 - bx1
    lo = np.searchsorted(sorted_x1, ax1 - bw.max())
    counts = np.searchsorted(sorted_x1, ax2) - lo
    np.maximum(counts, 0, out=counts)
    rows = np.repeat(np.arange(len(a)), counts)
    cols = order[np.arange(len(rows)) + np.repeat(lo - (np.cumsum(counts) - counts), counts)]
    iw = np.minimum(ax2[rows], bx2[cols]) - np.maximum(ax1[rows], bx1[cols])
    ih = np.minimum(ay2[rows], by2[cols]) - np.maximum(ay1[rows], by1[cols])
    keep = np.nonzero((iw > 0) & (ih > 0))[0]
    rows, cols = rows[keep], cols[keep]
    inter = iw[keep] * ih[keep]
    union = ((ax2 - ax1) * (ay2 - ay1))[rows] + (bw * (by2 - by1))[cols] - inter
    return rows, cols, inter / union


def match_pairs(rows: np.ndarray, cols: np.ndarray, score: np.ndarray, n: int, m: int,
                threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign rows to columns maximizing the total score over the candidate pairs with ``score >= threshold``.

    The candidates are given as parallel arrays ``rows``, ``cols``, ``score`` (each pair at
    most once) over an ``n x m`` problem. Returns ``(pairs [K, 2], unmatched_rows,
    unmatched_cols)``. A pair whose row and column have no other candidate is taken
    directly; the Hungarian solver runs only on the rows and columns that compete, which
    gives the same optimum.
    """
    ok = score >= threshold
    r, c, s = rows[ok], cols[ok], score[ok]
    if len(r) == 0:
        return np.empty((0, 2), np.intp), np.arange(n), np.arange(m)
    row_n, col_n = np.bincount(r, minlength=n), np.bincount(c, minlength=m)
    alone = (row_n[r] == 1) & (col_n[c] == 1)
    if alone.all():
        pairs = np.empty((len(r), 2), np.intp)
        pairs[:, 0], pairs[:, 1] = r, c
    else:
        rest = ~alone
        r2, c2 = r[rest], c[rest]
        sub_rows = np.flatnonzero(np.bincount(r2, minlength=n))
        sub_cols = np.flatnonzero(np.bincount(c2, minlength=m))
        ri, ci = np.searchsorted(sub_rows, r2), np.searchsorted(sub_cols, c2)
        gain = np.zeros((len(sub_rows), len(sub_cols)))
        has = np.zeros(gain.shape, bool)
        gain[ri, ci], has[ri, ci] = s[rest], True
        rr, cc = linear_sum_assignment(gain, maximize=True)
        good = has[rr, cc]
        k = int(alone.sum())
        pairs = np.empty((k + int(good.sum()), 2), np.intp)
        pairs[:k, 0], pairs[:k, 1] = r[alone], c[alone]
        pairs[k:, 0], pairs[k:, 1] = sub_rows[rr[good]], sub_cols[cc[good]]
    row_free = np.ones(n, bool)
    row_free[pairs[:, 0]] = False
    col_free = np.ones(m, bool)
    col_free[pairs[:, 1]] = False
    return pairs, np.nonzero(row_free)[0], np.nonzero(col_free)[0]


def match(score: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`match_pairs` on a dense score matrix [N, M]: every entry is a candidate."""
    n, m = score.shape
    rows, cols = np.nonzero(np.ones((n, m), bool))
    return match_pairs(rows, cols, score.ravel(), n, m, threshold)


@dataclass
class TrackState:
    """Tracks of one frame, by ascending id: ``boxes`` [K, 4] xyxy, ``ids`` [K] int64, ``scores`` [K] (of the
    detection last matched), ``classes`` [K] int64 (of the detection last matched; -1 when none was given),
    ``ages`` [K] int64 (frames since the track started: 0 in its first frame; predicted frames count) and
    ``predicted`` [K] bool (True where no detection corrected the box in this frame)."""

    boxes: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    ages: np.ndarray
    predicted: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> np.ndarray:
        """[K, 5] of [x1, y1, x2, y2, id]: what ``update`` returns."""
        return np.concatenate([self.boxes, self.ids[:, None].astype(np.float64)], axis=1)


class KalmanTracks:
    """All tracks of a tracker as arrays, with SORT's constant-velocity Kalman filter run on all at once.

    SORT's 7-D state ``[cx, cy, s, r, vcx, vcy, vs]`` with F, Q, R and P0 diagonal per
    coordinate keeps a block-diagonal covariance: each of cx, cy, s is an independent
    (position, velocity) filter and r a position-only one. So the state is stored as ``pos``
    [N, 4] and ``vel`` [N, 4] (``vel[:, 3]`` stays 0) and the covariance as its three distinct
    entries per coordinate, ``p_pp``, ``p_pv``, ``p_vv`` [N, 4]; predict and update are then
    exact elementwise formulas. :meth:`state` and :meth:`covariance` give the 7-D forms.
    Per track it also keeps the frame it started (``start``, on the tracker's clock) and the
    score and class of the detection it last matched (``score``, ``cls``).
    """

    FIELDS = ("pos", "vel", "p_pp", "p_pv", "p_vv", "ids", "hits", "streak", "since_update", "confirmed",
              "start", "score", "cls")

    def __init__(self) -> None:
        for name in ("pos", "vel", "p_pp", "p_pv", "p_vv"):
            setattr(self, name, np.empty((0, 4)))
        for name in ("ids", "hits", "streak", "since_update", "start", "cls"):  # streak: consecutive matched frames
            setattr(self, name, np.empty(0, np.int64))
        self.confirmed = np.empty(0, bool)
        self.score = np.empty(0)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, boxes: np.ndarray, ids: np.ndarray, confirmed: bool = False, scores: np.ndarray | None = None,
            classes: np.ndarray | None = None, start: int = 0) -> None:
        """Start one track per box [K, 4] with zero velocity and SORT's initial covariance."""
        k = len(boxes)
        if k == 0:
            return
        zeros = np.zeros((k, 4))
        init = {"pos": xyxy_to_z(boxes), "vel": zeros, "p_pp": zeros + P0_POS, "p_pv": zeros, "p_vv": zeros + P0_VEL,
                "ids": ids, "hits": np.ones(k, np.int64), "streak": np.ones(k, np.int64),
                "since_update": np.zeros(k, np.int64), "confirmed": np.full(k, confirmed),
                "start": np.full(k, start, np.int64), "score": np.ones(k) if scores is None else scores,
                "cls": np.full(k, -1, np.int64) if classes is None else classes}
        for name in self.FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), init[name]]))

    def keep(self, mask: np.ndarray) -> None:
        """Drop the tracks where ``mask`` is False."""
        if not mask.all():
            for name in self.FIELDS:
                setattr(self, name, getattr(self, name)[mask])

    def predict(self, miss: bool = True) -> np.ndarray:
        """Advance every track one frame (x = F x, P = F P F^T + Q); return the predicted boxes [N, 4].

        ``miss=True`` (a frame with detections follows): every track counts one more frame since
        its last match, and a track unmatched in the previous frame loses its streak. ``miss=False``
        (a frame without detections): only the filter moves."""
        self.vel[self.pos[:, 2] + self.vel[:, 2] <= 0, 2] = 0.0  # the area would become non-positive
        self.pos += self.vel
        self.p_pp += 2.0 * self.p_pv + self.p_vv + Q_POS
        self.p_pv += self.p_vv
        self.p_vv += Q_VEL
        if miss:
            self.streak[self.since_update > 0] = 0
            self.since_update += 1
        return z_to_xyxy(self.pos)

    def update(self, idx: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None = None,
               classes: np.ndarray | None = None) -> None:
        """Correct the tracks ``idx`` with their detections ``boxes`` [K, 4] (K = P H^T S^-1, P = (I - K H) P);
        record the detections' ``scores`` and ``classes`` when given."""
        if len(idx) == 0:
            return
        if scores is not None:
            self.score[idx] = scores
        if classes is not None:
            self.cls[idx] = classes
        y = np.zeros((len(self), 4))  # innovation; rows without a detection get a zero gain below
        y[idx] = xyxy_to_z(boxes) - self.pos[idx]
        hit = np.zeros((len(self), 1))
        hit[idx] = 1.0
        gain = hit / (self.p_pp + R_MEAS)
        k_pos, k_vel = gain * self.p_pp, gain * self.p_pv
        self.pos += k_pos * y
        self.vel += k_vel * y
        self.p_vv -= k_vel * self.p_pv
        k_pos -= 1.0
        self.p_pp *= -k_pos
        self.p_pv *= -k_pos
        self.since_update[idx] = 0
        self.hits[idx] += 1
        self.streak[idx] += 1

    def boxes(self) -> np.ndarray:
        """Current boxes [N, 4] xyxy."""
        return z_to_xyxy(self.pos)

    def state(self) -> np.ndarray:
        """States [N, 7] of [cx, cy, s, r, vcx, vcy, vs]."""
        return np.concatenate([self.pos, self.vel[:, :3]], axis=1)

    def covariance(self) -> np.ndarray:
        """Covariances [N, 7, 7] of the 7-D state."""
        n = len(self)
        P = np.zeros((n, 7, 7))
        i = np.arange(4)
        v = np.arange(3)
        P[:, i, i] = self.p_pp
        P[:, v, v + 4] = P[:, v + 4, v] = self.p_pv[:, :3]
        P[:, v + 4, v + 4] = self.p_vv[:, :3]
        return P


class _IdSource:
    """Hands out track ids 1, 2, ...; trackers that share one (one tracker per class) never reuse an id."""

    def __init__(self) -> None:
        self.next = 1

    def take(self, n: int) -> np.ndarray:
        ids = np.arange(self.next, self.next + n, dtype=np.int64)
        self.next += n
        return ids


class _Tracker:
    """Shared state and steps of the trackers: the tracks, the frame counters, the id source.

    ``frame`` counts the frames with detections (``update``), ``clock`` every frame (``update``
    and ``predict``): track ages are on the clock, the trackers' rules on ``frame``."""

    def __init__(self) -> None:
        self.tracks = KalmanTracks()
        self.frame = 0
        self.clock = 0
        self._ids = _IdSource()
        self._skipped = False  # the last frame was a prediction: every box is predicted

    def _start(self, boxes: np.ndarray, confirmed: bool, scores: np.ndarray | None = None,
               classes: np.ndarray | None = None) -> None:
        self.tracks.add(boxes, self._ids.take(len(boxes)), confirmed, scores, classes, start=self.clock)

    def _step(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> None:
        raise NotImplementedError

    def _shown(self) -> np.ndarray:
        """Which tracks are reported in the current frame."""
        raise NotImplementedError

    def _check(self, boxes_xyxy: object, scores: object | None,
               classes: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _check_detections(boxes_xyxy, scores, classes)

    def update(self, boxes_xyxy: object, scores: object | None = None) -> np.ndarray:
        """Feed one frame's detections [N, 4] (N may be 0); return the tracked boxes [K, 5] of [x1, y1, x2, y2, id]."""
        self._advance(boxes_xyxy, scores, None)
        return _result(self.tracks, self._shown())

    def update_tracks(self, boxes_xyxy: object, scores: object | None = None,
                      classes: object | None = None) -> TrackState:
        """:meth:`update` returning the reported tracks as a :class:`TrackState`; ``classes`` [N] (integers) are
        recorded per track (the class of the detection last matched) but do not gate matching."""
        self._advance(boxes_xyxy, scores, classes)
        return self.state()

    def _advance(self, boxes_xyxy: object, scores: object | None, classes: object | None) -> None:
        boxes, scores_, classes_ = self._check(boxes_xyxy, scores, classes)  # before any change: bad input changes nothing
        self.frame += 1
        self.clock += 1
        self._skipped = False
        if len(self.tracks) or len(boxes):
            self._step(boxes, scores_, classes_)

    def predict(self) -> np.ndarray:
        """A frame without detections: move every track one frame without counting a miss; return the predicted boxes
        [K, 5] of the tracks reported in the last frame with detections, now ``predicted``."""
        self.predict_tracks()
        return _result(self.tracks, self._shown())

    def predict_tracks(self) -> TrackState:
        """:meth:`predict` returning a :class:`TrackState` (``predicted`` all True)."""
        self.clock += 1
        self._skipped = True
        self.tracks.predict(miss=False)
        return self.state()

    def state(self, include_lost: bool = False) -> TrackState:
        """The tracks reported in the current frame; ``include_lost``: every live track (unconfirmed and lost ones
        too, lost ones ``predicted``)."""
        t = self.tracks
        show = np.ones(len(t), bool) if include_lost else self._shown()
        return TrackState(z_to_xyxy(t.pos[show]), t.ids[show], t.score[show], t.cls[show],
                          self.clock - t.start[show], (t.since_update[show] > 0) | self._skipped)


def _check_detections(boxes: object, scores: object | None,
                      classes: object | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = check_array("boxes_xyxy", boxes, dtype_kind="fiu")
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise UserError(f"boxes_xyxy: expected shape [N, 4], got {tuple(b.shape)}")
    b = b.astype(np.float64, copy=False)
    if np.any(b[:, 2:] < b[:, :2]):
        raise UserError("boxes_xyxy: every box needs x2 >= x1 and y2 >= y1")
    if scores is None:
        s = np.ones(len(b))
    else:
        s = check_array("scores", scores, ndim=1, dtype_kind="fiu").astype(np.float64, copy=False)
        check_same_len("boxes_xyxy", b, "scores", s)
    if classes is None:
        return b, s, np.full(len(b), -1, np.int64)
    c = check_array("classes", classes, ndim=1, dtype_kind="fiu")
    if c.dtype.kind == "f" and np.any(c != np.round(c)):
        raise UserError("classes: expected integer class ids")
    check_same_len("boxes_xyxy", b, "classes", c)
    return b, s, c.astype(np.int64, copy=False)


def _result(tracks: KalmanTracks, show: np.ndarray) -> np.ndarray:
    """Rows [x1, y1, x2, y2, id] of the tracks in ``show``, by ascending id (tracks are kept in id order)."""
    out = np.empty((int(show.sum()), 5))
    out[:, :4] = z_to_xyxy(tracks.pos[show])
    out[:, 4] = tracks.ids[show]
    return out


class SortTracker(_Tracker):
    """SORT: constant-velocity Kalman filter, IoU cost, Hungarian assignment.

    Each :meth:`update` predicts every track, matches detections by IoU (pairs below
    ``iou_threshold`` never match), corrects the matched tracks, starts a track per
    unmatched detection with ``score >= min_score`` and drops tracks unmatched for more than
    ``max_age`` frames. A track is reported once it has been matched in ``min_hits``
    consecutive frames (or during the first ``min_hits`` frames of the sequence); from then
    on it is reported in every frame it is matched, so a track that reappears after an
    occlusion keeps its id and is reported at once. ``unconfirmed_max_age`` (None: ``max_age``,
    SORT's rule) drops a track not yet confirmed after that many unmatched frames instead: 0
    is DeepSORT's and ByteTrack's rule (a tentative track dies at its first miss), so the
    false positives' tentative tracks do not linger for ``max_age`` frames taking detections.
    Ids start at 1. Frames fed to :meth:`predict` (no detections) count for none of these rules.
    """

    def __init__(self, max_age: int = 1, min_hits: int = 3, iou_threshold: float = 0.3, min_score: float = 0.0,
                 unconfirmed_max_age: int | None = None) -> None:
        self.max_age = int(check_positive("max_age", max_age, allow_zero=True))
        self.unconfirmed_max_age = (self.max_age if unconfirmed_max_age is None
                                    else int(check_positive("unconfirmed_max_age", unconfirmed_max_age, allow_zero=True)))
        self.min_hits = int(check_positive("min_hits", min_hits, allow_zero=True))
        self.iou_threshold = check_range("iou_threshold", iou_threshold, 0.0, 1.0)
        self.min_score = float(min_score)
        super().__init__()

    def _step(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> None:
        t = self.tracks
        predicted = t.predict()
        rows, cols, iou = overlap_pairs(predicted, boxes)
        pairs, _, free_dets = match_pairs(rows, cols, iou, len(t), len(boxes), self.iou_threshold)
        d = pairs[:, 1]
        t.update(pairs[:, 0], boxes[d], scores[d], classes[d])
        new = free_dets[scores[free_dets] >= self.min_score]
        self._start(boxes[new], False, scores[new], classes[new])
        t.confirmed |= t.streak >= self.min_hits
        t.keep(np.where(t.confirmed, t.since_update <= self.max_age, t.since_update <= self.unconfirmed_max_age))

    def _shown(self) -> np.ndarray:
        t = self.tracks
        return (t.since_update == 0) & (t.confirmed | (self.frame <= self.min_hits))


class ByteTracker(_Tracker):
    """ByteTrack-style tracker: high-score detections first, then low-score ones to the remaining tracks.

    Detections with ``score >= high_thresh`` are matched to all live tracks (tracked and lost),
    with cost ``1 - IoU`` (times the score when ``fuse_score``) and pairs above
    ``match_thresh`` rejected — ByteTrack's convention, so the default 0.8 means IoU >= 0.2.
    Detections with ``low_thresh <= score < high_thresh`` are then matched to the tracks still
    tracked in the previous frame and unmatched (cost limit ``low_match_thresh``, IoU >= 0.5 by
    default); they never start tracks. Unconfirmed (one-frame) tracks get the remaining high
    detections (cost limit ``unconfirmed_match_thresh``) or die. A remaining high detection
    with ``score >= new_track_thresh`` (default ``high_thresh + 0.1``) starts a track, confirmed
    at once in the first frame, otherwise when matched again the next frame. A track lost for
    more than ``max_age`` frames is dropped. ``low_match_lost`` offers the low-score detections
    to the lost tracks as well (the ``trackers`` package's rule; ByteTrack's paper and code offer
    them only to the tracks tracked in the previous frame). Ids start at 1. Frames fed to :meth:`predict` (no
    detections) count for none of these rules: "the previous frame" is the previous one with detections.
    """

    def __init__(
        self,
        high_thresh: float = 0.5,
        low_thresh: float = 0.1,
        match_thresh: float = 0.8,
        max_age: int = 30,
        new_track_thresh: float | None = None,
        low_match_thresh: float = 0.5,
        unconfirmed_match_thresh: float = 0.7,
        fuse_score: bool = True,
        low_match_lost: bool = False,
    ) -> None:
        self.high_thresh = check_range("high_thresh", high_thresh, 0.0, 1.0)
        self.low_thresh = check_range("low_thresh", low_thresh, 0.0, 1.0)
        if self.low_thresh > self.high_thresh:
            raise UserError(f"low_thresh: must not exceed high_thresh ({low_thresh} > {high_thresh})")
        self.match_thresh = check_range("match_thresh", match_thresh, 0.0, 1.0)
        self.low_match_thresh = check_range("low_match_thresh", low_match_thresh, 0.0, 1.0)
        self.unconfirmed_match_thresh = check_range("unconfirmed_match_thresh", unconfirmed_match_thresh, 0.0, 1.0)
        self.new_track_thresh = self.high_thresh + 0.1 if new_track_thresh is None else float(new_track_thresh)
        self.max_age = int(check_positive("max_age", max_age, allow_zero=True))
        self.fuse_score = bool(fuse_score)
        self.low_match_lost = bool(low_match_lost)
        super().__init__()

    def _check(self, boxes_xyxy: object, scores: object | None,
               classes: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if scores is None:
            raise UserError("scores: ByteTracker needs detection scores")
        return _check_detections(boxes_xyxy, scores, classes)

    def _step(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> None:
        t = self.tracks
        n, m = len(t), len(boxes)
        was_tracked = t.since_update == 0
        predicted = t.predict()
        # The overlapping pairs once; each stage matches the ones between its tracks and its detections.
        r, c, iou = overlap_pairs(predicted, boxes)
        fused = iou * scores[c] if self.fuse_score else iou
        high = scores >= self.high_thresh
        low = (scores >= self.low_thresh) & ~high
        free_trk = t.confirmed.copy()
        matched = []

        def stage(trk: np.ndarray, det: np.ndarray, sim: np.ndarray, limit: float) -> None:
            """Match the tracks ``trk`` to the detections ``det`` (masks; the matched ones are cleared)."""
            sel = trk[r] & det[c]
            pairs, _, _ = match_pairs(r[sel], c[sel], sim[sel], n, m, 1.0 - limit)
            trk[pairs[:, 0]] = False
            det[pairs[:, 1]] = False
            matched.append(pairs)

        stage(free_trk, high, fused, self.match_thresh)
        stage(free_trk if self.low_match_lost else free_trk & was_tracked, low, iou, self.low_match_thresh)
        unconf = ~t.confirmed
        stage(unconf, high, fused, self.unconfirmed_match_thresh)  # unconf: now the unmatched ones, which die
        pairs = np.concatenate(matched)
        d = pairs[:, 1]
        t.update(pairs[:, 0], boxes[d], scores[d], classes[d])
        t.confirmed[~t.confirmed & (t.since_update == 0)] = True
        alive = ~unconf & (t.since_update <= self.max_age)
        t.keep(alive)
        new = np.nonzero(high & (scores >= self.new_track_thresh))[0]
        self._start(boxes[new], self.frame == 1, scores[new], classes[new])

    def _shown(self) -> np.ndarray:
        t = self.tracks
        return (t.since_update == 0) & t.confirmed


@dataclass
class MotResult:
    """CLEAR-MOT counts over a sequence: ``mota = 1 - (fn + fp + idsw) / num_gt``; ``motp`` = mean IoU of matches."""

    num_gt: int
    matches: int
    fn: int
    fp: int
    idsw: int
    mota: float
    motp: float


def _frame_array(name: str, a: object) -> np.ndarray:
    arr = check_array(name, a, dtype_kind="fiu")
    if arr.size == 0:
        return np.empty((0, 5))
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise UserError(f"{name}: expected shape [K, 5] of [x1, y1, x2, y2, id], got {tuple(arr.shape)}")
    return arr.astype(np.float64)


def clear_mot(gt: Sequence[object], hyp: Sequence[object], iou_threshold: float = 0.5) -> MotResult:
    """CLEAR-MOT metrics of hypotheses ``hyp`` against ground truth ``gt``, per frame arrays [K, 5] of [x1, y1, x2, y2, id].

    Per frame: a ground-truth object keeps the hypothesis it was matched to in the previous
    frame when both are present and their IoU is still >= ``iou_threshold``; the rest are
    matched by Hungarian assignment on IoU (pairs below the threshold never match). A match
    whose hypothesis differs from the object's last matched hypothesis (any number of frames
    before) is an ID switch. Unmatched ground truth counts as FN, unmatched hypotheses as FP.
    This is TrackEval's CLEAR, including its rule that a frame without ground truth or without
    hypotheses leaves the previous frame's matches in place for the next one.
    """
    if len(gt) != len(hyp):
        raise UserError(f"gt and hyp: number of frames differs ({len(gt)} vs {len(hyp)})")
    thr = check_range("iou_threshold", iou_threshold, 0.0, 1.0)
    last: dict[int, int] = {}  # gt id -> last matched hyp id
    prev: dict[int, int] = {}  # gt id -> hyp id matched in the previous frame (one-to-one)
    num_gt = matches = fn = fp = idsw = 0
    iou_sum = 0.0
    for f, (g_raw, h_raw) in enumerate(zip(gt, hyp, strict=True)):
        g, h = _frame_array(f"gt[{f}]", g_raw), _frame_array(f"hyp[{f}]", h_raw)
        g_ids, h_ids = g[:, 4].astype(np.int64), h[:, 4].astype(np.int64)
        iou = iou_matrix(g[:, :4], h[:, :4])
        h_col = {int(i): c for c, i in enumerate(h_ids)}
        kept = [(r, h_col[prev[int(gid)]]) for r, gid in enumerate(g_ids) if prev.get(int(gid)) in h_col]
        kept = [(r, c) for r, c in kept if iou[r, c] >= thr]
        g_free = np.setdiff1d(np.arange(len(g)), [r for r, _ in kept])
        h_free = np.setdiff1d(np.arange(len(h)), [c for _, c in kept])
        pairs, _, _ = match(iou[np.ix_(g_free, h_free)], thr)
        new = [(int(g_free[a]), int(h_free[b])) for a, b in pairs]
        for r, c in new:
            gid, hid = int(g_ids[r]), int(h_ids[c])
            idsw += int(gid in last and last[gid] != hid)
            last[gid] = hid
        if len(g) and len(h):
            prev = {int(g_ids[r]): int(h_ids[c]) for r, c in kept + new}
        n_match = len(kept) + len(new)
        iou_sum += float(sum(iou[r, c] for r, c in kept + new))
        num_gt += len(g)
        matches += n_match
        fn += len(g) - n_match
        fp += len(h) - n_match
    mota = 1.0 - (fn + fp + idsw) / num_gt if num_gt else float("nan")
    motp = iou_sum / matches if matches else float("nan")
    return MotResult(num_gt, matches, fn, fp, idsw, mota, motp)


def mota(gt: Sequence[object], hyp: Sequence[object], iou_threshold: float = 0.5) -> float:
    """MOTA = 1 - (FN + FP + IDSW) / number of ground-truth boxes (see :func:`clear_mot`)."""
    return clear_mot(gt, hyp, iou_threshold).mota


def id_switches(gt: Sequence[object], hyp: Sequence[object], iou_threshold: float = 0.5) -> int:
    """Number of ID switches in the CLEAR-MOT definition (see :func:`clear_mot`)."""
    return clear_mot(gt, hyp, iou_threshold).idsw
