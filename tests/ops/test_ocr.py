"""Tests of slipway.ops.ocr: DBNet boxes, reading order, quad crops, CTC greedy and beam decoding."""

from __future__ import annotations

import itertools
import math
import re

import cv2
import numpy as np
import pytest
import torch

from slipway.errors import UserError
from slipway.ops.ocr import (
    crop_quad,
    crop_quads,
    ctc_beam_decode,
    ctc_greedy_decode,
    db_boxes,
    load_charset,
    order_quad,
    sort_boxes,
)

CHARS = list("abcd")


def _random_probs(rng: np.random.Generator, shape: tuple[int, ...], sharp: float = 1.0) -> np.ndarray:
    logits = rng.normal(size=shape) * sharp
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _greedy_oracle(probs: np.ndarray, table: list[str], blank: int) -> tuple[str, float]:
    """Plain-Python best path: argmax per step, merge repeats, drop blanks; mean prob of kept steps."""
    text, kept, prev = "", [], None
    for step in probs.tolist():
        k = max(range(len(step)), key=lambda j: step[j])
        if k != blank and k != prev:
            text += table[k]
            kept.append(step[k])
        prev = k
    return text, (sum(kept) / len(kept) if kept else 0.0)


# ---------------------------------------------------------------- CTC greedy


def test_greedy_matches_python_oracle_exactly() -> None:
    rng = np.random.default_rng(0)
    probs = _random_probs(rng, (16, 12, 5))
    lengths = rng.integers(0, 13, size=16)
    got = ctc_greedy_decode(probs, CHARS, lengths=lengths)
    table = [""] + CHARS
    for i in range(16):
        text, conf = _greedy_oracle(probs[i, :lengths[i]], table, 0)
        assert got[i][0] == text  # exact string
        assert got[i][1] == pytest.approx(conf, abs=1e-12)


def test_greedy_matches_torch_with_logits_and_blank_last() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 20, 5)) * 3
    got = ctc_greedy_decode(logits, CHARS, blank=-1, kind="logits")
    t = torch.from_numpy(logits)
    probs = torch.softmax(t, dim=2)
    for i in range(8):
        best = t[i].argmax(dim=1)
        labels, counts = torch.unique_consecutive(best, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        keep = labels != 4
        text = "".join(CHARS[k] for k in labels[keep].tolist())
        conf = probs[i, starts[keep], labels[keep]].mean().item() if keep.any() else 0.0
        assert got[i][0] == text  # exact string
        assert got[i][1] == pytest.approx(conf, abs=1e-9)


def test_greedy_known_alignment() -> None:
    # "hello" aligned as h h _ e l _ l o o _ : repeats merge, the blank separates the two l's.
    chars = list("ehlo")
    path = "hh_el_loo_"
    probs = np.full((len(path), 5), 0.05)
    for t, ch in enumerate(path):
        probs[t, 0 if ch == "_" else 1 + chars.index(ch)] = 0.8
    assert ctc_greedy_decode(probs, chars) == [("hello", pytest.approx(0.8))]


def test_greedy_empty_sequences() -> None:
    assert ctc_greedy_decode(np.zeros((2, 0, 5)), CHARS) == [("", 0.0), ("", 0.0)]
    probs = _random_probs(np.random.default_rng(2), (2, 6, 5))
    assert ctc_greedy_decode(probs, CHARS, lengths=[0, 0]) == [("", 0.0), ("", 0.0)]


# ---------------------------------------------------------------- CTC beam


def _label_probs(probs: np.ndarray, blank: int) -> dict[tuple[int, ...], float]:
    """Exact p(label) for every label: sum over all C^T paths of their probability, grouped by collapsed path."""
    t, c = probs.shape
    out: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(c), repeat=t):
        p = math.prod(probs[i, k] for i, k in enumerate(path))
        label = tuple(k for i, k in enumerate(path) if k != blank and (i == 0 or path[i - 1] != k))
        out[label] = out.get(label, 0.0) + p
    return out


@pytest.mark.parametrize("seed", range(6))
def test_beam_equals_brute_force_most_probable_labeling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = _random_probs(rng, (5, 4), sharp=1.5)
    blank = seed % 4
    table = CHARS[:3]
    full = table[:blank] + [""] + table[blank:]
    exact = _label_probs(probs, blank)
    best = max(exact, key=exact.get)
    text, logp = ctc_beam_decode(probs, table, blank=blank, beam_width=200)[0]
    assert text == "".join(full[k] for k in best)
    assert logp == pytest.approx(math.log(exact[best]), abs=1e-12)


def _torch_label_logprob(log_probs: np.ndarray, labels: list[int]) -> float:
    """log p(labels | x) = -ctc_loss for one sequence of log-probabilities [T, C] (blank 0)."""
    lp = torch.from_numpy(log_probs)[:, None, :]
    loss = torch.nn.functional.ctc_loss(lp, torch.tensor([labels], dtype=torch.long), torch.tensor([lp.shape[0]]),
                                        torch.tensor([len(labels)]), blank=0, reduction="none")
    return -loss.item()


@pytest.mark.parametrize("t, chars", [(7, "abc"), (10, "ab")])
def test_beam_logprob_matches_torch_ctc_loss_with_every_prefix_kept(t: int, chars: str) -> None:
    # The beam (2048) holds every prefix of length <= t, so no alignment is pruned: the
    # returned log-prob is the exact label probability.
    logits = np.random.default_rng(t).normal(size=(3, t, len(chars) + 1)) * 1.5
    lp = torch.log_softmax(torch.from_numpy(logits), dim=2).numpy()
    for i, (text, logp) in enumerate(ctc_beam_decode(logits, list(chars), kind="logits", beam_width=2048)):
        assert logp == pytest.approx(_torch_label_logprob(lp[i], [1 + chars.index(c) for c in text]), abs=1e-4)


def test_beam_logprob_matches_torch_ctc_loss_on_peaked_outputs() -> None:
    # OCR-like outputs: one class per step holds >= 1 - 1e-4 of the mass. A beam of 10 then
    # loses under 1e-4 of log p(label) to pruned prefixes (each lost alignment costs ~1e-4).
    rng = np.random.default_rng(0)
    n, t, c = 8, 24, 6
    probs = rng.dirichlet(np.ones(c), size=(n, t)) * rng.uniform(0, 1e-4, size=(n, t, 1))
    dominant = rng.integers(0, c, size=(n, t))
    probs[np.arange(n)[:, None], np.arange(t)[None, :], dominant] += 1 - probs.sum(-1)
    for i, (text, logp) in enumerate(ctc_beam_decode(probs, list("abcde"), beam_width=10)):
        assert len(text) > 5
        assert logp == pytest.approx(_torch_label_logprob(np.log(probs[i]), [1 + "abcde".index(ch) for ch in text]),
                                     abs=1e-4)


def test_beam_matches_greedy_on_peaked_distributions() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(10, 30, 7)) * 8
    greedy = [t for t, _ in ctc_greedy_decode(logits, list("abcdef"), kind="logits")]
    beam = [t for t, _ in ctc_beam_decode(logits, list("abcdef"), kind="logits", beam_width=5)]
    assert beam == greedy
    assert len(set(greedy)) > 5  # the texts are not trivial


def test_beam_prefers_label_with_more_alignments_than_best_path() -> None:
    # Best path is "_" ... (blank, p=0.4 each step) but "a" collects more mass over its alignments.
    probs = np.array([[0.4, 0.35, 0.25]] * 3)
    exact = _label_probs(probs, 0)
    assert max(exact, key=exact.get) == (1,)
    assert ctc_greedy_decode(probs, ["a", "b"])[0][0] == ""
    text, logp = ctc_beam_decode(probs, ["a", "b"], beam_width=8)[0]
    assert text == "a" and logp == pytest.approx(math.log(exact[(1,)]), abs=1e-12)


def test_beam_empty_sequences() -> None:
    assert ctc_beam_decode(np.zeros((1, 0, 5)), CHARS) == [("", 0.0)]
    probs = _random_probs(np.random.default_rng(4), (2, 6, 5))
    assert ctc_beam_decode(probs, CHARS, lengths=[0, 6])[0] == ("", 0.0)


# ---------------------------------------------------------------- charset


def test_charset_file_blank_and_space(tmp_path) -> None:
    path = tmp_path / "dict.txt"
    path.write_text("x\ny\nz\n", encoding="utf-8")
    assert load_charset(path) == ["x", "y", "z"]
    assert load_charset(path, space=True) == ["x", "y", "z", " "]
    probs = np.eye(4)[[1, 1, 0, 3, 2]]
    assert ctc_greedy_decode(probs, path)[0][0] == "xzy"
    assert ctc_greedy_decode(probs, ["x", "y", "z"], blank=3)[0][0] == "yxz"


# ---------------------------------------------------------------- CTC bad input


@pytest.mark.parametrize(
    "scores, kwargs, message",
    [
        (np.zeros(5), {}, "scores: expected a 2 or 3-D array"),
        (np.full((1, 3, 5), np.nan), {}, "scores: contains NaN"),
        (np.full((1, 3, 5), 2.0), {}, "kind='probs' needs values in [0, 1]"),
        (np.zeros((1, 3, 5)), {"kind": "softmax"}, "kind: expected"),
        (np.zeros((1, 3, 6)), {}, "charset: 4 characters + blank = 5 classes, but the scores have 6"),
        (np.zeros((1, 3, 5)), {"blank": 7}, "blank: index 7"),
        (np.zeros((1, 3, 5)), {"lengths": [4]}, "lengths: expected 1 values in [0, 3]"),
        (np.zeros((1, 3, 5)), {"lengths": [[1]]}, "lengths: expected a 1-D array"),
    ],
)
def test_ctc_bad_input(scores: np.ndarray, kwargs: dict, message: str) -> None:
    for decode in (ctc_greedy_decode, ctc_beam_decode):
        with pytest.raises(UserError, match=re.escape(message)):
            decode(scores, CHARS, **kwargs)
    with pytest.raises(UserError, match="beam_width"):
        ctc_beam_decode(np.zeros((1, 3, 5)), CHARS, beam_width=0)
    with pytest.raises(UserError, match="dictionary file not found"):
        ctc_greedy_decode(np.zeros((1, 3, 5)), "no/such/dict.txt")


# ---------------------------------------------------------------- DBNet boxes


def _expected_unclip(x0: int, y0: int, x1: int, y1: int, ratio: float) -> np.ndarray:
    """Quad of the pixel block [x0..x1] x [y0..y1] grown by DBNet's unclip distance.

    The contour runs through the outer pixel centers, so the rectangle is (x1 - x0) x (y1 - y0);
    it grows by d = area * ratio / perimeter on every side (round joins do not reach further).
    """
    w, h = x1 - x0, y1 - y0
    d = w * h * ratio / (2 * (w + h))
    return np.array([[x0 - d, y0 - d], [x1 + d, y0 - d], [x1 + d, y1 + d], [x0 - d, y1 + d]])


def _sorted_by_x(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.argsort(boxes[:, 0, 0])]


def test_db_axis_aligned_boxes_scores_and_filters() -> None:
    prob = np.zeros((120, 240), np.float32)
    prob[20:30, 10:60] = 0.9  # pixels x 10..59, y 20..29
    prob[50:74, 100:180] = 0.8
    prob[90:93, 200:203] = 1.0  # 3x3 blob: contour 2 x 2, shorter side 2 < min_size
    prob[90:110, 120:160] = 0.5  # above thresh, below box_thresh
    res = db_boxes(prob, thresh=0.3, box_thresh=0.7, unclip_ratio=1.5)
    boxes = _sorted_by_x(res.boxes)
    assert boxes.shape == (2, 4, 2)
    expected = [_expected_unclip(10, 20, 59, 29, 1.5), _expected_unclip(100, 50, 179, 73, 1.5)]
    np.testing.assert_allclose(boxes[0], expected[0], atol=0.05)  # 1/64 px offset grid
    np.testing.assert_allclose(boxes[1], expected[1], atol=0.05)
    np.testing.assert_allclose(np.sort(res.scores), [0.8, 0.9], atol=1e-6)
    slow = db_boxes(prob, score_mode="slow")
    np.testing.assert_allclose(np.sort(slow.scores), [0.8, 0.9], atol=1e-6)
    assert len(db_boxes(prob, box_thresh=0.4).boxes) == 3  # the 0.5 block passes a lower box_thresh
    # The blob passes min_size=1: 2 x 2 grows by 4 * 1.5 / 8 = 0.75 per side to 3.5 >= min_size + 2.
    assert len(db_boxes(prob, box_thresh=0.4, min_size=1.0).boxes) == 4
    assert len(db_boxes(prob, box_thresh=0.4, min_size=1.6).boxes) == 3  # 3.5 < 1.6 + 2


def _rotated_rect(center: tuple[float, float], size: tuple[float, float], angle: float) -> np.ndarray:
    return order_quad(cv2.boxPoints((center, size, angle)))


def _raster_rotated_rect(shape: tuple[int, int], center: tuple[float, float], size: tuple[float, float],
                         angle: float, value: float) -> np.ndarray:
    """Map with ``value`` at the pixels whose centers lie inside the rotated rectangle (numpy only)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    t = np.deg2rad(angle)
    dx, dy = xs - center[0], ys - center[1]
    u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
    inside = (np.abs(u) <= size[0] / 2) & (np.abs(v) <= size[1] / 2)
    return np.where(inside, value, 0.0).astype(np.float32)


@pytest.mark.parametrize("angle", [0.0, 12.0, 30.0, -20.0])
def test_db_rotated_boxes_recovered_within_two_pixels(angle: float) -> None:
    center, (w, h) = (150.3, 100.6), (140.0, 30.0)
    prob = _raster_rotated_rect((200, 300), center, (w, h), angle, 0.95)
    res = db_boxes(prob, unclip_ratio=1.5)
    assert res.boxes.shape == (1, 4, 2)
    # The contour runs through the outermost pixel centers inside the w x h rectangle, so it
    # spans w - e x h - e with 0 <= e < ~1.5; unclip grows it by d = area * 1.5 / perimeter per side.
    d = w * h * 1.5 / (2 * (w + h))
    (cx, cy), size, got_angle = cv2.minAreaRect(res.boxes[0])
    assert abs(cx - center[0]) < 0.75 and abs(cy - center[1]) < 0.75
    np.testing.assert_allclose(sorted(size), [h + 2 * d, w + 2 * d], atol=2.5)  # e plus its effect on d
    assert min(abs((got_angle - angle) % 90), 90 - abs((got_angle - angle) % 90)) < 1.0
    corners = _rotated_rect(center, (w + 2 * d, h + 2 * d), angle)
    assert np.abs(res.boxes[0] - corners).max() < 2.0
    assert 0.85 < res.scores[0] <= 0.95 + 1e-6  # the rectangle's filled edge pixels may fall just outside
    assert db_boxes(prob, score_mode="slow").scores[0] == pytest.approx(0.95, abs=1e-6)  # exactly the region


def test_db_maps_back_to_original_scale() -> None:
    prob = np.zeros((64, 128), np.float32)
    prob[10:20, 30:90] = 0.9
    base = db_boxes(prob)
    scaled = db_boxes(prob, original_size=(256, 384))  # y x4, x x3
    manual = (base.boxes + 0.5) * np.array([3.0, 4.0]) - 0.5
    np.testing.assert_allclose(scaled.boxes, manual, atol=1e-4)
    np.testing.assert_allclose(scaled.scores, base.scores)
    edge = np.zeros((64, 128), np.float32)
    edge[0:10, 0:40] = 0.9  # the unclipped box crosses the border: clipped to the image
    out = db_boxes(edge, original_size=(128, 256)).boxes
    assert out.min() == 0.0 and out[..., 0].max() <= 255 and out[..., 1].max() <= 127


def test_db_slow_score_and_polygons() -> None:
    prob = np.zeros((100, 100), np.float32)
    tri = np.array([[10, 80], [90, 80], [50, 10]], np.int32)
    cv2.fillPoly(prob, [tri], 0.9)
    fast = db_boxes(prob, box_thresh=0.1)
    slow = db_boxes(prob, box_thresh=0.1, score_mode="slow")
    assert slow.scores[0] == pytest.approx(0.9, abs=1e-6)  # mean inside the contour
    assert 0.35 < fast.scores[0] < 0.75  # the rectangle around a triangle is about half background
    assert db_boxes(prob, box_thresh=0.5, polygons=True).boxes == []  # a triangle has < 4 outline points
    house = np.array([[10, 80], [90, 80], [90, 40], [50, 10], [10, 40]], np.int32)
    prob = np.zeros((100, 100), np.float32)
    cv2.fillPoly(prob, [house], 0.9)
    poly = db_boxes(prob, box_thresh=0.5, polygons=True)
    assert len(poly.boxes) == 1 and poly.boxes[0].ndim == 2 and len(poly.boxes[0]) >= 5
    assert poly.scores[0] == pytest.approx(0.9, abs=0.01)  # mean inside the simplified outline
    outline = poly.boxes[0].reshape(-1, 1, 2)
    for x, y in house.tolist():  # every corner lies inside the grown polygon, at least d - 1 px deep
        assert cv2.pointPolygonTest(outline, (float(x), float(y)), True) > 1.0


def test_db_empty_map_and_bad_input() -> None:
    res = db_boxes(np.zeros((32, 32), np.float32))
    assert res.boxes.shape == (0, 4, 2) and res.scores.shape == (0,)
    with pytest.raises(UserError, match="prob: expected a 2-D array"):
        db_boxes(np.zeros((1, 32, 32)))
    with pytest.raises(UserError, match="prob: contains NaN"):
        db_boxes(np.full((8, 8), np.nan))
    with pytest.raises(UserError, match="prob: is empty"):
        db_boxes(np.zeros((0, 8)))
    with pytest.raises(UserError, match="score_mode"):
        db_boxes(np.zeros((8, 8)), score_mode="exact")
    with pytest.raises(UserError, match="thresh"):
        db_boxes(np.zeros((8, 8)), thresh=1.5)


# ---------------------------------------------------------------- reading order


def test_sort_boxes_known_layout() -> None:
    # Two lines; tops jitter by up to 6 px within a line; the second line starts 40 px lower.
    layout = {"A": (10, 12), "B": (120, 8), "C": (230, 14), "D": (15, 52), "E": (100, 47), "F": (300, 55)}
    names = ["E", "C", "A", "F", "B", "D"]
    xyxy = np.array([[x, y, x + 80, y + 20] for x, y in (layout[n] for n in names)], float)
    order = sort_boxes(xyxy)
    assert [names[i] for i in order] == ["A", "B", "C", "D", "E", "F"]
    quads = np.stack([[[x0, y0], [x1, y0], [x1, y1], [x0, y1]] for x0, y0, x1, y1 in xyxy])
    assert [names[i] for i in sort_boxes(quads)] == ["A", "B", "C", "D", "E", "F"]
    assert [names[i] for i in sort_boxes(xyxy, line_tolerance=0)] == ["B", "A", "C", "E", "D", "F"]
    assert sort_boxes(np.zeros((0, 4))).shape == (0,)
    with pytest.raises(UserError, match="boxes: expected"):
        sort_boxes(np.zeros((3, 5)))


# ---------------------------------------------------------------- perspective crops


def _pattern(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A smooth test pattern in patch coordinates (u = column, v = row)."""
    return 0.5 + 0.25 * np.sin(2 * np.pi * u / 23.0) * np.cos(2 * np.pi * v / 13.0) + 0.2 * np.cos(u / 9.0 + v / 5.0)


def test_crop_quad_reproduces_rotated_patch() -> None:
    h, w, theta = 24, 64, np.deg2rad(25.0)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    patch_center, image_center = np.array([(w - 1) / 2, (h - 1) / 2]), np.array([80.0, 70.0])

    def to_image(pts: np.ndarray) -> np.ndarray:  # patch (u, v) -> image (x, y)
        return (pts - patch_center) @ rot.T + image_center

    ys, xs = np.mgrid[0:140, 0:160].astype(np.float64)
    uv = (np.stack([xs, ys], -1) - image_center) @ rot + patch_center  # inverse rotation
    image = _pattern(uv[..., 0], uv[..., 1]).astype(np.float32)
    quad = to_image(np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]]))
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float64)
    upright = _pattern(uu, vv)
    # Bilinear error <= (|f_xx| + |f_yy|) / 8 ~ 0.012 for this pattern; OpenCV's bicubic is similar.
    for interp, bound in ((cv2.INTER_LINEAR, 0.015), (cv2.INTER_CUBIC, 0.015)):
        crop = crop_quad(image, quad, interpolation=interp)
        assert crop.shape == (h, w)
        assert np.abs(crop - upright).max() < bound


def test_crop_quad_exact_on_pixel_edges_and_rotates_tall() -> None:
    img = np.random.default_rng(5).integers(0, 255, size=(60, 80, 3), dtype=np.uint8)
    edges = np.array([[9.5, 4.5], [39.5, 4.5], [39.5, 14.5], [9.5, 14.5]])  # pixels x 10..39, y 5..14
    np.testing.assert_array_equal(crop_quad(img, edges, interpolation=cv2.INTER_LINEAR), img[5:15, 10:40])
    tall = np.array([[9.5, 4.5], [19.5, 4.5], [19.5, 44.5], [9.5, 44.5]])  # 10 wide, 40 high
    upright = crop_quad(img, tall, interpolation=cv2.INTER_LINEAR, rotate_tall=False)
    np.testing.assert_array_equal(upright, img[5:45, 10:20])
    np.testing.assert_array_equal(crop_quad(img, tall, interpolation=cv2.INTER_LINEAR), np.rot90(img[5:45, 10:20]))
    crops = crop_quads(img, np.stack([edges, tall]), interpolation=cv2.INTER_LINEAR)
    assert [c.shape for c in crops] == [(10, 30, 3), (10, 40, 3)]
    with pytest.raises(UserError, match="quad: expected shape"):
        crop_quad(img, np.zeros((3, 2)))
    with pytest.raises(UserError, match="quad: degenerate"):
        crop_quad(img, np.zeros((4, 2)))
    with pytest.raises(UserError, match="image: expected"):
        crop_quad(np.zeros(5), edges)
