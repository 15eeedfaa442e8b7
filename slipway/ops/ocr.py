"""OCR post-processing: DBNet text boxes, reading order, perspective crops, CTC greedy and beam decoding.

Coordinates follow OpenCV's pixel-center convention: pixel ``(row, col)`` is the point
``(x=col, y=row)``. A quad is four ``(x, y)`` corners in the order top-left, top-right,
bottom-right, bottom-left.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyclipper

from slipway.errors import UserError
from slipway.ops._check import check_array, check_positive, check_range

_CLIPPER_SCALE = 64.0
_CV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)  # what cv2.warpPerspective takes as is  # pyclipper works on integers; offsetting at 1/64 px keeps sub-pixel precision


@dataclass
class TextBoxes:
    """Text regions found in a probability map: ``boxes`` [K, 4, 2] quads (or a list of [P, 2] polygons) and ``scores`` [K]."""

    boxes: np.ndarray | list[np.ndarray]
    scores: np.ndarray


def order_quad(points: np.ndarray) -> np.ndarray:
    """Order 4 corner points [4, 2] as top-left, top-right, bottom-right, bottom-left.

    The two leftmost points (by x) are the left side, the upper of them top-left; the same
    for the two rightmost.
    """
    p = points[np.argsort(points[:, 0], kind="stable")]
    left = p[:2][np.argsort(p[:2, 1], kind="stable")]
    right = p[2:][np.argsort(p[2:, 1], kind="stable")]
    return np.stack([left[0], right[0], right[1], left[1]]).astype(np.float32)


def _min_area_quad(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-area rotated rectangle around ``points`` as an ordered quad, and its shorter side."""
    rect = cv2.minAreaRect(points.reshape(-1, 1, 2).astype(np.float32))
    return order_quad(cv2.boxPoints(rect)), float(min(rect[1]))


def _unclip(polygon: np.ndarray, ratio: float) -> np.ndarray | None:
    """Grow a polygon outward by ``area * ratio / perimeter`` (DBNet's unclip) with round joins.

    Returns the grown polygon [P, 2], or None when the offset does not give exactly one polygon.
    """
    area = abs(cv2.contourArea(polygon.astype(np.float32)))
    perimeter = cv2.arcLength(polygon.astype(np.float32).reshape(-1, 1, 2), True)
    if perimeter <= 0 or area <= 0:
        return None
    offset = pyclipper.PyclipperOffset()
    offset.ArcTolerance = 0.25 * _CLIPPER_SCALE
    offset.AddPath(pyclipper.scale_to_clipper(polygon.tolist(), _CLIPPER_SCALE), pyclipper.JT_ROUND,
                   pyclipper.ET_CLOSEDPOLYGON)
    grown = offset.Execute(area * ratio / perimeter * _CLIPPER_SCALE)
    if len(grown) != 1:
        return None
    return np.asarray(pyclipper.scale_from_clipper(grown[0], _CLIPPER_SCALE), dtype=np.float64)


def _unclip_paddle(polygon: np.ndarray, ratio: float) -> np.ndarray | None:
    """PaddleOCR's unclip: the offset on whole pixels (corners truncated toward zero), every
    resulting polygon's points kept together. Returns [P, 2] or None when nothing is left."""
    area = abs(cv2.contourArea(polygon.astype(np.float32)))
    perimeter = cv2.arcLength(polygon.astype(np.float32).reshape(-1, 1, 2), True)
    if perimeter <= 0:
        return None
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(np.trunc(polygon).astype(np.int64).tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    grown = offset.Execute(area * ratio / perimeter)
    points = [pt for poly in grown for pt in poly]
    return np.asarray(points, np.float64).reshape(-1, 2) if points else None


def _polygon_mean(prob: np.ndarray, polygon: np.ndarray, paddle: bool = False) -> float:
    """Mean of ``prob`` over the pixels inside ``polygon`` (filled in its bounding-box crop).

    ``paddle``: PaddleOCR's arithmetic (box from floor / ceil of the extremes, corners truncated)."""
    h, w = prob.shape
    if paddle:
        x0, y0 = np.clip(np.floor(polygon.min(axis=0)).astype(np.int32), 0, [w - 1, h - 1])
        x1, y1 = np.clip(np.ceil(polygon.max(axis=0)).astype(np.int32), 0, [w - 1, h - 1])
        local = (polygon - [x0, y0]).astype(np.int32)
    else:
        pts = np.round(polygon).astype(np.int32)
        x0, y0 = np.clip(pts.min(axis=0), 0, [w - 1, h - 1])
        x1, y1 = np.clip(pts.max(axis=0), 0, [w - 1, h - 1])
        local = pts - [x0, y0]
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [local.reshape(-1, 1, 2)], 1)
    return float(cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0])


def db_boxes(
    prob: object,
    *,
    thresh: float = 0.3,
    box_thresh: float = 0.7,
    unclip_ratio: float = 1.5,
    min_size: float = 3.0,
    max_candidates: int = 1000,
    score_mode: str = "fast",
    polygons: bool = False,
    dilate: bool = False,
    original_size: tuple[int, int] | None = None,
    compat: str | None = None,
) -> TextBoxes:
    """Text regions from a DBNet probability map ``prob`` [H, W] (values in [0, 1]).

    Steps: binarize at ``prob > thresh`` (optionally dilated by a 2x2 kernel), trace the
    outer contours, take each contour's minimum-area rectangle (or, with ``polygons``, its
    simplified outline), drop it when the rectangle's shorter side is below ``min_size``,
    score it, drop it when the score is below ``box_thresh``, unclip it by
    ``distance = area * unclip_ratio / perimeter`` (round-joined polygon offset, pyclipper),
    take the minimum-area rectangle of the result and drop it when its shorter side is below
    ``min_size + 2``. Score: ``"fast"`` is the mean probability inside the rectangle (or
    simplified polygon), ``"slow"`` the mean inside the exact contour. With
    ``original_size=(height, width)`` the points are mapped from the map's pixel grid to the
    original image's (``x' = (x + 0.5) * width / W - 0.5``, likewise y) and clipped to it.

    ``compat="paddle"`` reproduces PaddleOCR's (and RapidOCR's) ``DBPostProcess`` arithmetic
    for quads, so the same map gives the same boxes: the fast score over the box's floor / ceil
    extent with its corners truncated, the unclip offset on whole pixels (corners truncated,
    all resulting polygons' points taken together).
    """
    p = check_array("prob", prob, ndim=2, dtype_kind="fiu", allow_empty=False).astype(np.float32)
    check_range("thresh", thresh, 0.0, 1.0)
    check_range("box_thresh", box_thresh, 0.0, 1.0)
    check_positive("unclip_ratio", unclip_ratio, allow_zero=True)
    if score_mode not in ("fast", "slow"):
        raise UserError(f"score_mode: expected 'fast' or 'slow', got {score_mode!r}")
    if compat not in (None, "paddle"):
        raise UserError(f"compat: expected None or 'paddle', got {compat!r}")
    if compat and polygons:
        raise UserError("compat='paddle' applies to quads only (polygons=False)")
    bitmap = (p > thresh).astype(np.uint8)
    if dilate:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[:max_candidates]:
        found = _region(p, contour.reshape(-1, 2), box_thresh, unclip_ratio, min_size, score_mode, polygons,
                        compat == "paddle")
        if found is not None:
            boxes.append(found[0])
            scores.append(found[1])
    if original_size is not None:
        boxes = [_to_original(b, p.shape, original_size) for b in boxes]
    score_arr = np.asarray(scores, np.float32)
    if polygons:
        return TextBoxes(boxes, score_arr)
    return TextBoxes(np.asarray(boxes, np.float32).reshape(-1, 4, 2), score_arr)


def _region(prob: np.ndarray, contour: np.ndarray, box_thresh: float, ratio: float, min_size: float,
            score_mode: str, polygons: bool, paddle: bool = False) -> tuple[np.ndarray, float] | None:
    """One contour -> (quad or polygon, score), or None when a filter rejects it."""
    if polygons:
        eps = 0.002 * cv2.arcLength(contour.reshape(-1, 1, 2), True)
        shape = cv2.approxPolyDP(contour.reshape(-1, 1, 2), eps, True).reshape(-1, 2).astype(np.float64)
        if len(shape) < 4:
            return None
        short = _min_area_quad(shape)[1]
    else:
        shape, short = _min_area_quad(contour)
    if short < min_size:
        return None
    score = _polygon_mean(prob, shape if score_mode == "fast" else contour, paddle and score_mode == "fast")
    if score < box_thresh:
        return None
    grown = _unclip_paddle(shape, ratio) if paddle else _unclip(shape, ratio)
    if grown is None:
        return None
    quad, short = _min_area_quad(grown)
    if short < min_size + 2:
        return None
    return (grown.astype(np.float32) if polygons else quad), score


def _to_original(points: np.ndarray, map_shape: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """Map points from the probability map's pixel grid to the original image's, clipped to it."""
    (mh, mw), (oh, ow) = map_shape, (int(original_size[0]), int(original_size[1]))
    scale = np.array([ow / mw, oh / mh], np.float32)
    out = (points + 0.5) * scale - 0.5
    return np.clip(out, 0, [ow - 1, oh - 1]).astype(np.float32)


def sort_boxes(boxes: object, line_tolerance: float = 10.0) -> np.ndarray:
    """Reading order of text boxes: indices sorting them top-to-bottom, then left-to-right within a line.

    ``boxes`` is [K, 4, 2] quads or [K, 4] xyxy. Boxes are taken by their top (smallest y);
    a box whose top is within ``line_tolerance`` pixels of the top of the first box of the
    current line joins that line; within a line, boxes go by their left edge (smallest x).
    """
    b = check_array("boxes", boxes, ndim=(2, 3), dtype_kind="fiu")
    if b.ndim == 3 and b.shape[1:] != (4, 2) or b.ndim == 2 and b.shape[1] != 4:
        raise UserError(f"boxes: expected [K, 4, 2] quads or [K, 4] xyxy, got shape {tuple(b.shape)}")
    check_positive("line_tolerance", line_tolerance, allow_zero=True)
    if b.ndim == 3:
        top, left = b[:, :, 1].min(axis=1), b[:, :, 0].min(axis=1)
    else:
        top, left = b[:, 1], b[:, 0]
    order = np.lexsort((left, top))
    lines: list[list[int]] = []
    line_top = -np.inf
    for i in order:
        if top[i] - line_top > line_tolerance or not lines:
            lines.append([])
            line_top = top[i]
        lines[-1].append(int(i))
    return np.array([i for line in lines for i in sorted(line, key=lambda j: (left[j], top[j]))], np.int64)


def crop_quad(image: object, quad: object, *, rotate_tall: bool = True, tall_ratio: float = 1.5,
              interpolation: int = cv2.INTER_CUBIC, compat: str | None = None) -> np.ndarray:
    """Cut the region inside ``quad`` [4, 2] (tl, tr, br, bl) out of ``image`` and warp it upright.

    The output is ``h x w`` with ``w`` the longer of the top and bottom edges and ``h`` the
    longer of the left and right edges (rounded); the quad's corners map to the outer corners
    of the output (pixel edges), so a quad tracing a patch's outer boundary gives back that
    patch. Borders replicate. Images of a dtype OpenCV cannot warp (bool, int32, ...) come
    back as float32. With ``rotate_tall``, a crop with ``h / w >= tall_ratio`` is
    rotated 90 degrees counter-clockwise (vertical text).

    ``compat="paddle"`` is PaddleOCR's (and RapidOCR's) ``get_rotate_crop_image``: sizes
    truncated instead of rounded and the quad's corners mapped to the output's corner pixel
    centers ``(0, 0) .. (w, h)``, so the same quad gives the same crop.
    """
    if compat not in (None, "paddle"):
        raise UserError(f"compat: expected None or 'paddle', got {compat!r}")
    img = check_array("image", image, ndim=(2, 3), dtype_kind="fiub", allow_empty=False)
    q = check_array("quad", quad, ndim=2, dtype_kind="fiu").astype(np.float64)
    if q.shape != (4, 2):
        raise UserError(f"quad: expected shape [4, 2], got {tuple(q.shape)}")
    size = round if compat is None else int
    w = int(size(max(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[3]))))
    h = int(size(max(np.linalg.norm(q[3] - q[0]), np.linalg.norm(q[2] - q[1]))))
    if w < 1 or h < 1:
        raise UserError(f"quad: degenerate quad (output size {h}x{w})")
    lo, hi_w, hi_h = (-0.5, w - 0.5, h - 0.5) if compat is None else (0, w, h)
    dst = np.array([[lo, lo], [hi_w, lo], [hi_w, hi_h], [lo, hi_h]], np.float32)
    m = cv2.getPerspectiveTransform(q.astype(np.float32), dst)
    src = img if img.dtype in _CV_DTYPES else img.astype(np.float32)
    out = cv2.warpPerspective(src, m, (w, h), flags=interpolation, borderMode=cv2.BORDER_REPLICATE)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    if rotate_tall and h / w >= tall_ratio:
        out = np.ascontiguousarray(np.rot90(out))
    return out


def crop_quads(image: object, quads: object, **kwargs: object) -> list[np.ndarray]:
    """:func:`crop_quad` for each quad of ``quads`` [K, 4, 2]."""
    q = check_array("quads", quads, ndim=3, dtype_kind="fiu")
    if q.shape[1:] != (4, 2) and q.size:
        raise UserError(f"quads: expected shape [K, 4, 2], got {tuple(q.shape)}")
    return [crop_quad(image, one, **kwargs) for one in q]


def load_charset(path: str | os.PathLike, *, space: bool = False) -> list[str]:
    """Read a character dictionary file, one character (or token) per line; append " " when ``space``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"charset: dictionary file not found: {p}")
    chars = [line.rstrip("\r\n") for line in p.read_text(encoding="utf-8").splitlines()]
    return chars + [" "] if space else chars


def _class_table(charset: Sequence[str] | str | os.PathLike, num_classes: int, blank: int) -> tuple[list[str], int]:
    """Characters per class index, with "" at the blank; check it has ``num_classes`` entries."""
    chars = load_charset(charset) if isinstance(charset, (str, os.PathLike)) else [str(c) for c in charset]
    if not -(len(chars) + 1) <= blank <= len(chars):
        raise UserError(f"blank: index {blank} is outside the {len(chars) + 1} classes")
    b = blank % (len(chars) + 1)
    table = chars[:b] + [""] + chars[b:]
    if len(table) != num_classes:
        raise UserError(f"charset: {len(chars)} characters + blank = {len(table)} classes, "
                        f"but the scores have {num_classes}")
    return table, b


def _log_probs(scores: object, kind: str, lengths: object | None) -> tuple[np.ndarray, np.ndarray]:
    """Check CTC scores [N, T, C] (or [T, C]) and return log-probabilities and valid lengths [N]."""
    s = check_array("scores", scores, ndim=(2, 3), dtype_kind="fiu").astype(np.float64)
    if s.ndim == 2:
        s = s[None]
    if kind == "probs":
        if s.size and (s.min() < 0 or s.max() > 1 + 1e-6):
            raise UserError("scores: kind='probs' needs values in [0, 1] (pass kind='logits' for raw outputs)")
        with np.errstate(divide="ignore"):
            lp = np.log(s)
    elif kind == "logits":
        m = s.max(axis=2, keepdims=True) if s.size else s
        lp = s - m - np.log(np.exp(s - m).sum(axis=2, keepdims=True))
    elif kind == "log_probs":
        lp = s
    else:
        raise UserError(f"kind: expected 'probs', 'logits' or 'log_probs', got {kind!r}")
    n, t = s.shape[:2]
    if lengths is None:
        return lp, np.full(n, t, np.int64)
    ln = check_array("lengths", lengths, ndim=1, dtype_kind="iu").astype(np.int64)
    if len(ln) != n or (ln < 0).any() or (ln > t).any():
        raise UserError(f"lengths: expected {n} values in [0, {t}], got {ln.tolist()}")
    return lp, ln


def ctc_greedy_decode(scores: object, charset: Sequence[str] | str | os.PathLike, *, blank: int = 0,
                      kind: str = "probs", lengths: object | None = None) -> list[tuple[str, float]]:
    """Best-path CTC decoding of ``scores`` [N, T, C] (or [T, C]): argmax per step, merge repeats, drop blanks.

    ``charset`` lists the characters of the non-blank classes in order (or is a dictionary
    file path); the blank is class ``blank``. ``kind`` says whether the scores are
    ``"probs"``, ``"logits"`` or ``"log_probs"``. Returns ``(text, confidence)`` per sequence,
    the confidence being the mean probability of the kept steps (0.0 for an empty text).
    """
    lp, ln = _log_probs(scores, kind, lengths)
    n, t, c = lp.shape
    table, b = _class_table(charset, c, blank)
    if t == 0:
        return [("", 0.0)] * n
    best = lp.argmax(axis=2)
    best_p = np.exp(np.take_along_axis(lp, best[:, :, None], axis=2)[:, :, 0])
    keep = best != b
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    keep &= np.arange(t)[None, :] < ln[:, None]
    out = []
    for i in range(n):
        idx = np.nonzero(keep[i])[0]
        text = "".join(table[k] for k in best[i, idx])
        out.append((text, float(best_p[i, idx].mean()) if len(idx) else 0.0))
    return out


def ctc_beam_decode(scores: object, charset: Sequence[str] | str | os.PathLike, *, beam_width: int = 10,
                    blank: int = 0, kind: str = "probs", lengths: object | None = None) -> list[tuple[str, float]]:
    """CTC prefix beam search over ``scores`` [N, T, C] (or [T, C]); returns ``(text, log p(text))`` per sequence.

    Each prefix carries the log-probabilities of its alignments ending in a blank and in a
    non-blank; at each step the ``beam_width`` most probable prefixes survive. With a beam
    wide enough to keep every prefix, the result is the most probable labeling and its
    exact probability (the sum over all its alignments). Arguments as in :func:`ctc_greedy_decode`.
    """
    lp, ln = _log_probs(scores, kind, lengths)
    width = int(check_positive("beam_width", beam_width))
    table, b = _class_table(charset, lp.shape[2], blank)
    out = []
    for i in range(lp.shape[0]):
        labels, logp = _prefix_beam(lp[i, :ln[i]], b, width)
        out.append(("".join(table[k] for k in labels), logp))
    return out


def _prefix_beam(lp: np.ndarray, blank: int, width: int) -> tuple[tuple[int, ...], float]:
    """Prefix beam search on one sequence of log-probabilities [T, C]; return (best labels, its log-prob)."""
    beam: list[tuple[int, ...]] = [()]
    pb, pnb = np.zeros(1), np.full(1, -np.inf)
    for row in lp:
        last = np.array([p[-1] if p else -1 for p in beam])
        has = last >= 0
        total = np.logaddexp(pb, pnb)
        new_pb = total + row[blank]
        new_pnb = np.where(has, pnb + row[np.maximum(last, 0)], -np.inf)  # repeat of the last label
        ext = total[:, None] + row[None, :]  # prefix + c
        ext[has, last[has]] = pb[has] + row[last[has]]  # a repeat extends only after a blank
        ext[:, blank] = -np.inf
        index = {p: k for k, p in enumerate(beam)}
        for k, p in enumerate(beam):  # extensions that land on a prefix already in the beam
            parent = index.get(p[:-1]) if p else None
            if parent is not None:
                new_pnb[k] = np.logaddexp(new_pnb[k], ext[parent, p[-1]])
                ext[parent, p[-1]] = -np.inf
        flat = ext.ravel()
        top = np.argpartition(-flat, width - 1)[:width] if flat.size > width else np.arange(flat.size)
        top = top[np.isfinite(flat[top])]
        cand = beam + [beam[j // ext.shape[1]] + (int(j % ext.shape[1]),) for j in top]
        cb = np.concatenate([new_pb, np.full(len(top), -np.inf)])
        cnb = np.concatenate([new_pnb, flat[top]])
        order = np.argsort(-np.logaddexp(cb, cnb), kind="stable")[:width]
        beam, pb, pnb = [cand[k] for k in order], cb[order], cnb[order]
    k = int(np.argmax(np.logaddexp(pb, pnb)))
    return beam[k], float(np.logaddexp(pb[k], pnb[k]))
