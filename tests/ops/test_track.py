"""Tests of slipway.ops.track: the batched Kalman filter, assignment, SORT, ByteTrack and CLEAR-MOT metrics."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from slipway.errors import UserError
from slipway.ops.track import (
    ByteTracker,
    KalmanTracks,
    SortTracker,
    clear_mot,
    id_switches,
    iou_matrix,
    match,
    mota,
    overlap_pairs,
)

# ---------------------------------------------------------------- helpers


def _gt_frame(boxes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes, ids[:, None].astype(float)], axis=1)


def _linear_scene(rng: np.random.Generator, n: int, frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` boxes on a grid moving linearly (never crossing), and noisy detections of them."""
    gx, gy = np.meshgrid(np.arange(10) * 120.0 + 60, np.arange(int(np.ceil(n / 10))) * 90.0 + 60)
    start = np.stack([gx.ravel(), gy.ravel()], axis=1)[:n]
    vel = rng.uniform(-1.5, 1.5, size=(n, 2))
    wh = rng.uniform(30, 50, size=(n, 2))
    gt, dets = [], []
    for f in range(frames):
        c = start + vel * f
        boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
        gt.append(_gt_frame(boxes, np.arange(1, n + 1)))
        dets.append(boxes + rng.normal(0, 1.0, size=boxes.shape))
    return gt, dets


def _run(tracker: SortTracker | ByteTracker, dets: list[np.ndarray], scores: list[np.ndarray] | None = None) -> list:
    return [tracker.update(d, None if scores is None else s) for d, s in zip(dets, scores or [None] * len(dets),
                                                                              strict=True)]


# ---------------------------------------------------------------- Kalman filter


def test_kalman_predict_update_hand_numbers() -> None:
    t = KalmanTracks()
    t.add(np.array([[0.0, 0.0, 10.0, 20.0]]), np.array([1]))  # z = [cx 5, cy 10, s 200, r 0.5]
    np.testing.assert_allclose(t.state(), [[5, 10, 200, 0.5, 0, 0, 0]])
    t.predict()  # zero velocity: x unchanged; P = F P0 F^T + Q
    P = t.covariance()[0]
    assert P[0, 0] == 10 + 1e4 + 1 and P[0, 4] == 1e4 and P[4, 4] == 1e4 + 0.01
    assert P[2, 2] == 10 + 1e4 + 1 and P[2, 6] == 1e4 and P[6, 6] == 1e4 + 1e-4
    assert P[3, 3] == 11 and P[0, 1] == 0
    t.update(np.array([0]), np.array([[2.0, 0.0, 12.0, 20.0]]))  # cx measured 7: innovation 2
    s = 10011 + 1  # S = P00 + R00
    k_pos, k_vel = 10011 / s, 1e4 / s
    x = t.state()[0]
    assert x[0] == pytest.approx(5 + 2 * k_pos, abs=1e-12) and x[4] == pytest.approx(2 * k_vel, abs=1e-12)
    np.testing.assert_allclose(x[[1, 2, 3, 5, 6]], [10, 200, 0.5, 0, 0], atol=1e-12)
    P = t.covariance()[0]
    assert P[0, 0] == pytest.approx(10011 * (1 - k_pos), rel=1e-12)
    assert P[0, 4] == pytest.approx(1e4 * (1 - k_pos), rel=1e-12)
    assert P[4, 4] == pytest.approx(1e4 + 0.01 - k_vel * 1e4, rel=1e-12)
    assert P[3, 3] == pytest.approx(11 * 10 / 21, rel=1e-12)  # r: K = 11 / (11 + 10)


def test_kalman_matches_generic_matrix_filter() -> None:
    """The batched per-coordinate filter equals SORT's 7-D matrix filter (x = Fx, P = FPF'+Q; K = PH'S^-1)."""
    F = np.eye(7)
    F[0, 4] = F[1, 5] = F[2, 6] = 1
    Q = np.diag([1, 1, 1, 1, 0.01, 0.01, 1e-4])
    R = np.diag([1, 1, 10, 10.0])
    H = np.eye(4, 7)
    rng = np.random.default_rng(0)
    boxes0 = rng.uniform(0, 100, size=(5, 2))
    boxes0 = np.concatenate([boxes0, boxes0 + rng.uniform(10, 40, size=(5, 2))], axis=1)
    t = KalmanTracks()
    t.add(boxes0, np.arange(5))
    xs = [t.state()[i].copy() for i in range(5)]
    Ps = [np.diag([10, 10, 10, 10, 1e4, 1e4, 1e4]) for _ in range(5)]
    for step in range(12):
        t.predict()
        for i in range(5):
            xs[i], Ps[i] = F @ xs[i], F @ Ps[i] @ F.T + Q
        idx = np.nonzero(rng.random(5) < 0.7)[0]  # some tracks get a detection
        boxes = boxes0[idx] + step * 2.0 + rng.normal(0, 1, size=(len(idx), 4))
        t.update(idx, boxes)
        for k, i in enumerate(idx):
            w, h = boxes[k, 2] - boxes[k, 0], boxes[k, 3] - boxes[k, 1]
            z = np.array([boxes[k, 0] + w / 2, boxes[k, 1] + h / 2, w * h, w / h])
            K = Ps[i] @ H.T @ np.linalg.inv(H @ Ps[i] @ H.T + R)
            xs[i] = xs[i] + K @ (z - H @ xs[i])
            Ps[i] = (np.eye(7) - K @ H) @ Ps[i]
    np.testing.assert_allclose(t.state(), np.stack(xs), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(t.covariance(), np.stack(Ps), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- IoU and assignment


def test_iou_matrix_matches_python_loop() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 50, size=(7, 2))
    a = np.concatenate([a, a + rng.uniform(0, 30, size=(7, 2))], axis=1)
    b = rng.uniform(0, 50, size=(5, 2))
    b = np.concatenate([b, b + rng.uniform(0, 30, size=(5, 2))], axis=1)
    b[0] = [3, 3, 3, 3]  # empty box: IoU 0 with everything, even itself

    def iou(p: np.ndarray, q: np.ndarray) -> float:
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - iw * ih
        return iw * ih / union if union > 0 else 0.0

    expected = np.array([[iou(p, q) for q in b] for p in a])
    np.testing.assert_allclose(iou_matrix(a, b), expected, atol=1e-12)
    assert iou_matrix(b[:1], b[:1])[0, 0] == 0.0
    assert iou_matrix(a, np.empty((0, 4))).shape == (7, 0)


def test_overlap_pairs_equal_the_nonzero_iou_entries() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 300, size=(60, 2))
    a = np.concatenate([a, a + rng.uniform(0, 60, size=(60, 2))], axis=1)
    b = rng.uniform(0, 300, size=(50, 2))
    b = np.concatenate([b, b + rng.uniform(0, 90, size=(50, 2))], axis=1)
    a[3, 2] = a[3, 0]  # zero width: overlaps nothing
    rows, cols, iou = overlap_pairs(a, b)
    dense = iou_matrix(a, b)
    er, ec = np.nonzero(dense > 0)
    assert len(er) > 50  # the scene has overlaps to find
    got = sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    assert got == sorted(zip(er.tolist(), ec.tolist(), strict=True))
    np.testing.assert_allclose(iou, dense[rows, cols], atol=1e-12)
    assert [len(x) for x in overlap_pairs(a, np.empty((0, 4)))] == [0, 0, 0]


@pytest.mark.parametrize("seed", range(5))
def test_match_is_the_best_assignment_over_admissible_pairs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    score = rng.random((5, 4)) * (rng.random((5, 4)) < 0.5)
    thr = 0.3
    pairs, free_r, free_c = match(score, thr)
    assert (score[pairs[:, 0], pairs[:, 1]] >= thr).all()
    best = 0.0  # brute force over every partial matching of admissible pairs
    for perm in itertools.permutations(range(5), 4):
        best = max(best, sum(score[r, c] for c, r in enumerate(perm) if score[r, c] >= thr))
    assert score[pairs[:, 0], pairs[:, 1]].sum() == pytest.approx(best, abs=1e-12)
    assert sorted(free_r.tolist() + pairs[:, 0].tolist()) == list(range(5))
    assert sorted(free_c.tolist() + pairs[:, 1].tolist()) == list(range(4))


# ---------------------------------------------------------------- SORT


def test_sort_linear_motion_reaches_done_bar() -> None:
    gt, dets = _linear_scene(np.random.default_rng(0), n=30, frames=60)
    res = clear_mot(gt, _run(SortTracker(max_age=3, min_hits=3), dets))
    assert res.mota >= 0.95 and res.idsw == 0  # the bar
    assert res.fn == 0 and res.fp == 0  # the first min_hits frames are reported too
    assert res.motp > 0.85


def test_sort_crossing_trajectories_keep_ids() -> None:
    # A moves right, B moves left on nearly the same row; they overlap fully around frame 20.
    rng = np.random.default_rng(1)
    gt, dets = [], []
    for f in range(40):
        a = np.array([20 + 4.0 * f, 100, 60 + 4.0 * f, 140])
        b = np.array([180 - 4.0 * f, 104, 220 - 4.0 * f, 144])
        boxes = np.stack([a, b])
        gt.append(_gt_frame(boxes, np.array([1, 2])))
        dets.append(boxes + rng.normal(0, 0.5, size=boxes.shape))
    hyp = _run(SortTracker(max_age=3, min_hits=1, iou_threshold=0.3), dets)
    res = clear_mot(gt, hyp)
    assert res.idsw == 0 and res.mota >= 0.95
    before, after = hyp[10], hyp[35]
    assert before[np.argmin(before[:, 0]), 4] == after[np.argmax(after[:, 0]), 4]  # A went left to right


def test_sort_track_survives_occlusion_within_max_age() -> None:
    rng = np.random.default_rng(2)
    gt, dets = _linear_scene(rng, n=3, frames=30)
    for f in range(12, 16):  # object 0 is not detected for 4 frames
        dets[f] = dets[f][1:]
    hyp = _run(SortTracker(max_age=5, min_hits=3), dets)
    res = clear_mot(gt, hyp)
    assert res.idsw == 0 and res.fn == 4 and res.fp == 0
    id_before = hyp[11][np.argmin(np.abs(hyp[11][:, 0] - gt[11][0, 0])), 4]
    id_after = hyp[16][np.argmin(np.abs(hyp[16][:, 0] - gt[16][0, 0])), 4]
    assert id_before == id_after
    short = _run(SortTracker(max_age=2, min_hits=3), dets)  # the track dies: a new id after the gap
    assert clear_mot(gt, short).idsw == 1


def test_sort_empty_frames_age_and_remove_tracks() -> None:
    tr = SortTracker(max_age=2, min_hits=1)
    out = tr.update(np.array([[0, 0, 10, 10], [50, 50, 70, 80.0]]), np.array([0.9, 0.8]))
    np.testing.assert_allclose(out, [[0, 0, 10, 10, 1], [50, 50, 70, 80, 2]])
    for age in (1, 2):
        assert tr.update(np.empty((0, 4))).shape == (0, 5)
        assert len(tr.tracks) == 2 and (tr.tracks.since_update == age).all()
    assert tr.update([]).shape == (0, 5) and len(tr.tracks) == 0


def test_sort_update_100_objects_is_fast() -> None:
    gt, dets = _linear_scene(np.random.default_rng(3), n=100, frames=40)
    tr = SortTracker(max_age=3, min_hits=3)
    times = []
    for d in dets:
        t0 = time.perf_counter()
        tr.update(d, np.ones(100))
        times.append(time.perf_counter() - t0)
    # Typically ~0.3 ms here; the bound leaves room for a loaded 2-core machine but fails
    # for a per-track Python loop with per-object matrix Kalman updates.
    assert np.median(times[5:]) < 3e-3


# ---------------------------------------------------------------- ByteTrack


def test_bytetrack_recovers_low_score_detections_that_sort_drops() -> None:
    rng = np.random.default_rng(4)
    gt, dets = _linear_scene(rng, n=20, frames=50)
    scores = [np.where(rng.random(20) < 0.3, 0.3, 0.9) for _ in dets]  # 30% of detections are weak
    sort_in = [(d[s >= 0.5], s[s >= 0.5]) for d, s in zip(dets, scores, strict=True)]  # usual SORT input
    sort = clear_mot(gt, _run(SortTracker(max_age=5, min_hits=1), [d for d, _ in sort_in], [s for _, s in sort_in]))
    byte = clear_mot(gt, _run(ByteTracker(high_thresh=0.5, low_thresh=0.1), dets, scores))
    assert byte.idsw == 0 and sort.idsw == 0
    assert byte.mota >= 0.95 and byte.mota > sort.mota + 0.2
    assert byte.fn < sort.fn / 5


def test_bytetrack_linear_motion_and_unconfirmed_tracks() -> None:
    gt, dets = _linear_scene(np.random.default_rng(5), n=30, frames=40)
    res = clear_mot(gt, _run(ByteTracker(), dets, [np.full(30, 0.9)] * 40))
    assert res.mota >= 0.95 and res.idsw == 0
    tr = ByteTracker()
    tr.update(np.array([[0, 0, 10, 10.0]]), np.array([0.9]))  # frame 1: confirmed at once
    out = tr.update(np.array([[0, 0, 10, 10], [100, 100, 120, 120.0]]), np.array([0.9, 0.9]))
    assert out[:, 4].tolist() == [1]  # the new box is unconfirmed in its first frame
    out = tr.update(np.array([[0, 0, 10, 10], [100, 100, 120, 120.0]]), np.array([0.9, 0.9]))
    assert out[:, 4].tolist() == [1, 2]
    out = tr.update(np.array([[300, 300, 310, 310.0]]), np.array([0.55]))  # below new_track_thresh 0.6
    assert out.shape == (0, 5) and len(tr.tracks) == 2


# ---------------------------------------------------------------- CLEAR-MOT


def test_clear_mot_hand_case() -> None:
    A, B, C = [0, 0, 10, 10], [50, 0, 60, 10], [200, 200, 210, 210]
    A_shift = [0, 0, 10, 8]  # IoU 0.8 with A
    frames = [
        ([(1, A), (2, B)], [(10, A), (20, B)]),  # 2 matches
        ([(1, A), (2, B)], [(10, A)]),  # FN
        ([(1, A), (2, B)], [(10, A), (30, B)]),  # gt 2 was 20, now 30: IDSW
        ([(1, A)], [(10, A), (40, C)]),  # FP
        ([(1, A), (2, B)], [(20, A), (10, B)]),  # both swap: 2 IDSW
        ([(1, A)], [(20, A_shift), (50, A)]),  # the old pair (1, 20) still has IoU >= 0.5: kept, 50 is FP
    ]

    def arr(rows: list) -> np.ndarray:
        return np.array([[*box, i] for i, box in rows], float)

    gt, hyp = [arr(g) for g, _ in frames], [arr(h) for _, h in frames]
    res = clear_mot(gt, hyp)
    assert (res.num_gt, res.fn, res.fp, res.idsw, res.matches) == (10, 1, 2, 3, 9)
    assert res.mota == pytest.approx(1 - 6 / 10)
    assert res.motp == pytest.approx((8 + 0.8) / 9)
    assert mota(gt, hyp) == res.mota and id_switches(gt, hyp) == 3
    assert clear_mot([np.empty((0, 5))], [arr([(1, A)])]).fp == 1


# ---------------------------------------------------------------- bad input


def test_tracker_bad_input() -> None:
    tr = SortTracker()
    with pytest.raises(UserError, match=r"boxes_xyxy: expected shape \[N, 4\]"):
        tr.update(np.zeros((3, 5)))
    with pytest.raises(UserError, match=r"boxes_xyxy: expected shape \[N, 4\]"):
        tr.update(np.zeros(4))
    with pytest.raises(UserError, match="boxes_xyxy: contains NaN"):
        tr.update(np.array([[0, 0, np.nan, 1]]))
    with pytest.raises(UserError, match="x2 >= x1"):
        tr.update(np.array([[5, 0, 1, 1.0]]))
    with pytest.raises(UserError, match="lengths differ"):
        tr.update(np.zeros((2, 4)), np.ones(3))
    with pytest.raises(UserError, match="scores: expected a 1-D array"):
        tr.update(np.zeros((2, 4)), np.ones((2, 1)))
    with pytest.raises(UserError, match="iou_threshold"):
        SortTracker(iou_threshold=2.0)
    with pytest.raises(UserError, match="low_thresh: must not exceed high_thresh"):
        ByteTracker(high_thresh=0.3, low_thresh=0.5)
    with pytest.raises(UserError, match="scores: ByteTracker needs"):
        ByteTracker().update(np.zeros((1, 4)), None)
    with pytest.raises(UserError, match="number of frames differs"):
        clear_mot([np.empty((0, 5))], [])
    with pytest.raises(UserError, match=r"hyp\[0\]: expected shape \[K, 5\]"):
        clear_mot([np.zeros((1, 5))], [np.zeros((1, 4))])
    assert tr.frame == 0  # rejected input changes nothing
