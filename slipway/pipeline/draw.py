"""Draw a pipeline's outputs on its image: OCR quads and texts, detection boxes, class labels.

:func:`draw` picks what to draw by the outputs' keys: ``lines`` (``[{"text", "score", "box"}]``,
``box`` four corners) as OCR, ``boxes`` (xyxy) with ``scores`` / ``labels`` as detection, and
``labels`` / ``scores`` without ``boxes`` as classification (top-k written in the corner). The
image is never changed in place; OpenCV draws on a BGR copy (``cv2.putText`` writes ASCII: other
characters become ``?``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from slipway.errors import UserError

__all__ = ["draw", "color_for", "draw_label", "text_scale"]

_COLORS = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
           (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]
_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def _ascii(text: Any) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text))


def _bgr(image: Any) -> np.ndarray:
    import cv2

    img = np.asarray(image)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img).copy()
    raise UserError(f"draw: expected an HxW or HxWxC image, got shape {img.shape}")


def text_scale(img: np.ndarray) -> tuple[float, int]:
    s = max(img.shape[:2]) / 1000
    return max(0.4, 0.6 * s), max(1, round(2 * s))


def draw_label(img: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """``text`` on a filled box whose bottom-left corner is (x, y), kept inside the image."""
    import cv2

    fs, th = text_scale(img)
    (w, h), base = cv2.getTextSize(text, _FONT, fs, th)
    x = int(min(max(x, 0), max(img.shape[1] - w, 0)))
    y = int(min(max(y, h + base), img.shape[0]))
    cv2.rectangle(img, (x, y - h - base), (x + w, y), color, -1)
    cv2.putText(img, text, (x, y - base), _FONT, fs, (255, 255, 255), th, cv2.LINE_AA)


def color_for(key: Any) -> tuple[int, int, int]:
    """The same color for the same label in every run (crc32, not the salted ``hash``)."""
    if isinstance(key, (int, np.integer)):
        return _COLORS[int(key) % len(_COLORS)]
    return _COLORS[zlib.crc32(str(key).encode()) % len(_COLORS)]


def _draw_lines(img: np.ndarray, lines: Any) -> None:
    import cv2

    _, th = text_scale(img)
    for i, line in enumerate(lines):
        quad = np.asarray(line["box"], np.float32).reshape(4, 2).round().astype(np.int32)
        color = _COLORS[i % len(_COLORS)]
        cv2.polylines(img, [quad], True, color, th, cv2.LINE_AA)
        draw_label(img, _ascii(line.get("text", "")), int(quad[:, 0].min()), int(quad[:, 1].min()), color)


def _draw_boxes(img: np.ndarray, boxes: Any, scores: Any, labels: Any) -> None:
    import cv2

    _, th = text_scale(img)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    s = None if scores is None else np.asarray(scores).reshape(-1)
    labs = None if labels is None else list(np.asarray(labels, dtype=object).reshape(-1))
    for i, (x1, y1, x2, y2) in enumerate(b):
        lab = labs[i] if labs is not None and i < len(labs) else None
        color = color_for(lab if lab is not None else i)
        cv2.rectangle(img, (round(x1), round(y1)), (round(x2), round(y2)), color, th, cv2.LINE_AA)
        text = " ".join(t for t in (None if lab is None else _ascii(lab),
                                    None if s is None or i >= len(s) else f"{float(s[i]):.2f}") if t)
        if text:
            draw_label(img, text, round(x1), round(y1), color)


def _draw_classes(img: np.ndarray, labels: Any, scores: Any) -> None:
    labs = list(np.asarray(labels, dtype=object).reshape(-1))
    s = None if scores is None else np.asarray(scores).reshape(-1)
    fs, th = text_scale(img)
    import cv2

    (_, h), base = cv2.getTextSize("Ag", _FONT, fs, th)
    for i, lab in enumerate(labs):
        text = _ascii(lab) + ("" if s is None or i >= len(s) else f" {float(s[i]):.3f}")
        draw_label(img, text, 4, (h + base + 4) * (i + 1), _COLORS[i % len(_COLORS)])


def _draw_keypoints(img: np.ndarray, keypoints: Any, min_score: float = 0.0) -> None:
    import cv2

    _, th = text_scale(img)
    kp = np.asarray(keypoints, np.float64).reshape(-1, *np.shape(keypoints)[-2:]) if np.size(keypoints) else []
    for i, person in enumerate(kp):
        color = _COLORS[i % len(_COLORS)]
        for x, y, *score in person:
            if not score or score[0] >= min_score:
                cv2.circle(img, (round(x), round(y)), 2 * th + 1, color, -1, cv2.LINE_AA)


def _draw_mask(img: np.ndarray, mask: Any) -> None:
    """Each class but 0 (background) blended over the image in its color."""
    m = np.asarray(mask)
    if m.shape != img.shape[:2]:
        raise UserError(f"draw: mask of shape {m.shape} does not cover the image {img.shape[:2]}")
    overlay = img.copy()
    for c in np.unique(m):
        if c != 0:
            overlay[m == c] = color_for(int(c))
    img[:] = (0.55 * img + 0.45 * overlay).astype(np.uint8)


def draw(image: Any, outputs: Mapping[str, Any]) -> np.ndarray:
    """A BGR copy of ``image`` with ``outputs`` drawn on it (OCR lines, detection boxes and keypoints, a
    segmentation mask, or class labels)."""
    if not isinstance(outputs, Mapping):
        raise UserError(f"draw: expected the pipeline's outputs as a mapping, got {type(outputs).__name__}")
    img = _bgr(image)
    if "lines" in outputs:
        _draw_lines(img, outputs["lines"])
    elif "mask" in outputs:
        _draw_mask(img, outputs["mask"])
    elif "boxes" in outputs:
        _draw_boxes(img, outputs["boxes"], outputs.get("scores"), outputs.get("labels"))
        if "keypoints" in outputs:
            _draw_keypoints(img, outputs["keypoints"])
    elif "labels" in outputs or "scores" in outputs:
        labels = outputs["labels"] if "labels" in outputs else np.arange(np.asarray(outputs["scores"]).size)
        _draw_classes(img, labels, outputs.get("scores"))
    else:
        raise UserError(f"draw: nothing to draw in outputs {sorted(outputs)} "
                        "(expected 'lines', 'mask', 'boxes' or 'labels' / 'scores')")
    return img
