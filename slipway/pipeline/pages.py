"""Rendered text with known content, to judge OCR models by what they read (the demo, the tests, the benches).

Everything is drawn with Pillow's built-in scalable font (``ImageFont.load_default(size=...)``),
so no font file has to be present; images are HWC uint8 BGR (OpenCV's order, what the OCR
pipeline takes).

* :func:`text_lines`: deterministic lines of 2-3 words and a number;
* :func:`render_text`: those lines on a white page, one font size;
* :func:`render_lines`: a :class:`Page` of lines in several sizes and colors, with the box of
  every drawn line (the demo's page; :func:`random_page` for held-out pages);
* :func:`render_page`: a document page (title, paragraphs, a ruled table, a framed figure) for
  layout detectors;
* :func:`line_crops`: single-line crops (48 px high) and their text, for recognizers;
* :func:`edit_distance`, :func:`char_accuracy` (one line), :func:`read_accuracy` (what a pipeline read on a
  :class:`Page`) and :func:`crop_text_metric` (a ``quantize(metric=...)`` over a recognizer's
  outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["WORDS", "Page", "char_accuracy", "crop_text_metric", "edit_distance", "line_crops", "line_of", "random_page",
           "read_accuracy", "read_lines", "render_lines", "render_page", "render_text", "text_lines"]

WORDS = ("slipway", "deploy", "model", "quantize", "engine", "server", "detect", "verify", "runtime", "layout",
         "ONNX", "kernel", "tensor", "batch", "latency", "Hello", "World", "invoice", "total", "amount")


def _font(px: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=px)


def _bgr(img: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def text_lines(n: int, seed: int = 0) -> list[str]:
    """``n`` lines of 2-3 words and a number, deterministic."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(2, 4)), replace=False)]
        lines.append(" ".join(words) + f" {int(rng.integers(10, 9999))}")
    return lines


def render_text(lines: list[str], size: tuple[int, int] = (640, 480), font_px: int = 30) -> np.ndarray:
    """A white page with ``lines`` drawn in black, one under another; BGR uint8 (OpenCV's order)."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = _font(font_px)
    step = max(font_px * 2, (h - 40) // max(len(lines), 1))
    for i, line in enumerate(lines):
        draw.text((24 + 13 * (i % 3), 24 + i * step), line, fill="black", font=font)
    return _bgr(img)


@dataclass(frozen=True)
class Page:
    """A rendered page and what was drawn on it: ``lines`` top to bottom, ``boxes`` [N, 4] their
    x0, y0, x1, y1 in pixels, ``sizes`` their font sizes."""

    image: np.ndarray
    lines: list[str]
    boxes: np.ndarray
    sizes: list[int]


def render_lines(lines: Sequence[str], sizes: Sequence[int], size: tuple[int, int] = (720, 560), seed: int = 0,
                 colors: Sequence[tuple[int, int, int]] | None = None) -> Page:
    """``lines`` drawn top to bottom on a white page ``size`` (w, h), line ``i`` at font size ``sizes[i]``
    (px), indented and colored by ``seed`` (dark colors, or ``colors`` as RGB); a line that does not fit
    the page is a ``ValueError``."""
    from PIL import Image, ImageDraw

    if len(lines) != len(sizes) or not lines:
        raise ValueError(f"render_lines: {len(lines)} lines and {len(sizes)} sizes")
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    boxes, y = [], 20
    for i, (text, px) in enumerate(zip(lines, sizes, strict=True)):
        font = _font(int(px))
        x = int(rng.integers(20, 60))
        color = tuple(colors[i]) if colors is not None else tuple(int(c) for c in rng.integers(0, 80, 3))
        box = draw.textbbox((x, y), text, font=font)
        if box[2] > w - 8 or box[3] > h - 8:
            raise ValueError(f"render_lines: line {i} ({text!r} at {px} px) does not fit a {w}x{h} page")
        draw.text((x, y), text, fill=color, font=font)
        boxes.append(box)
        y = box[3] + int(px * 0.9) + int(rng.integers(0, 10))
    return Page(_bgr(img), list(lines), np.asarray(boxes, np.float32).reshape(-1, 4), [int(s) for s in sizes])


def random_page(seed: int, n: int = 6, size: tuple[int, int] | None = None) -> Page:
    """A held-out page: ``n`` lines of :func:`text_lines` at font sizes 18-34 px, on a page ``size`` (w, h)
    or, by default, 560 px high and 600-840 px wide (pages differ in size, as scans do: any 7 consecutive
    seeds give 7 widths)."""
    sizes = np.random.default_rng(seed + 1).integers(18, 35, n)
    width = 600 + 40 * (seed % 7)
    return render_lines(text_lines(n, seed), [int(s) for s in sizes], size=size or (width, 560), seed=seed)


def render_page(seed: int = 0, size: tuple[int, int] = (608, 800)) -> np.ndarray:
    """A document page: a title, paragraphs of text lines, a ruled table and a framed figure; BGR."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((w // 4, 30), "Deployment Report " + str(int(rng.integers(1, 99))), fill="black", font=_font(30))
    body = _font(14)
    y = 90
    for _ in range(2):  # paragraphs
        for line in text_lines(6, int(rng.integers(0, 10_000))):
            draw.text((40, y), (line + " ") * 3, fill="black", font=body)
            y += 20
        y += 24
    x0, y0, cols, rows = 60, y, 4, 5  # a table
    for r in range(rows + 1):
        draw.line([(x0, y0 + 26 * r), (x0 + 120 * cols, y0 + 26 * r)], fill="black", width=1)
    for c in range(cols + 1):
        draw.line([(x0 + 120 * c, y0), (x0 + 120 * c, y0 + 26 * rows)], fill="black", width=1)
    for r in range(rows):
        for c in range(cols):
            draw.text((x0 + 120 * c + 8, y0 + 26 * r + 5), f"{int(rng.integers(0, 999))}.{c}", fill="black", font=body)
    fy = y0 + 26 * rows + 40  # a figure: a framed chart with bars and a caption
    draw.rectangle([(120, fy), (480, fy + 150)], outline="black", width=2)
    for i in range(6):
        top = fy + 140 - int(rng.integers(20, 130))
        draw.rectangle([(140 + 55 * i, top), (175 + 55 * i, fy + 140)], fill=(60, 90, 160))
    draw.text((200, fy + 160), "Figure 1. Latency by engine", fill="black", font=body)
    return _bgr(img)


def line_crops(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """``n`` single-line crops (BGR, 48 px high, at most 320 px wide) and the text drawn on each."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    crops, texts = [], []
    for i, line in enumerate(text_lines(n, seed)):
        text = " ".join(line.split()[:2]) if len(line) > 18 else line
        font = _font(int(rng.integers(26, 34)))
        w = int(min(316, font.getlength(text) + 12))
        img = Image.new("RGB", (w, 48), tuple(int(c) for c in rng.integers(215, 256, 3)))
        ImageDraw.Draw(img).text((6, 6 + i % 3), text, fill=tuple(int(c) for c in rng.integers(0, 60, 3)), font=font)
        crops.append(_bgr(img))
        texts.append(text)
    return crops, texts


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and substitutions from ``a`` to ``b``."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(predicted: str, truth: str) -> float:
    """1 - edit distance / len(truth), spaces ignored (PP-OCR often drops them), floored at 0."""
    a, b = predicted.replace(" ", ""), truth.replace(" ", "")
    if not b:
        return float(not a)
    return max(0.0, 1 - edit_distance(a, b) / len(b))


def line_of(quad: Any, page: Page) -> int | None:
    """The drawn line of ``page`` a found quad (four corners, page pixels) lies on: the one whose band (its
    box widened by half its height) holds the quad's center, nearest by height; None when none does."""
    q = np.asarray(quad, np.float64).reshape(-1, 2)
    cx, cy = q.mean(axis=0)
    x0, y0, x1, y1 = (page.boxes[:, k].astype(np.float64) for k in range(4))
    pad = (y1 - y0) / 2
    inside = (x0 - pad <= cx) & (cx <= x1 + pad) & (y0 - pad <= cy) & (cy <= y1 + pad)
    if not inside.any():
        return None
    return int(np.argmin(np.where(inside, np.abs(cy - (y0 + y1) / 2), np.inf)))


def read_lines(found: Sequence[Mapping[str, Any]], page: Page) -> list[str]:
    """What an OCR read on each drawn line of ``page``: the ``found`` lines (``{"text", "box"}``, box four
    corners) on that line (:func:`line_of`), left to right."""
    got: list[list[tuple[float, str]]] = [[] for _ in page.lines]
    for line in found:
        i = line_of(line["box"], page)
        if i is not None:
            got[i].append((float(np.asarray(line["box"], np.float64).reshape(-1, 2)[:, 0].min()), str(line["text"])))
    return [" ".join(t for _, t in sorted(parts)) for parts in got]


def read_accuracy(found: Sequence[Mapping[str, Any]], page: Page) -> float:
    """Mean character accuracy (percent) of what was read on each drawn line (:func:`read_lines`); a line
    read nowhere scores 0, text found off every drawn line is not counted."""
    return 100.0 * float(np.mean([char_accuracy(r, t) for r, t in zip(read_lines(found, page), page.lines,
                                                                        strict=True)]))


def crop_text_metric(truths: Sequence[str], charset: Sequence[str]) -> Callable[[list[np.ndarray], np.ndarray], float]:
    """A ``quantize(metric=...)`` for a CTC recognizer: greedy-decode its first output (one array, or the
    per-batch arrays of samples of several widths) with ``charset`` (the non-blank classes) and score each
    sample against ``truths[label]``; mean character accuracy, percent."""
    from slipway.ops.ocr import ctc_greedy_decode

    def ocr_char_accuracy(outputs: list[Any], labels: np.ndarray) -> float:
        parts = outputs[0] if isinstance(outputs[0], list) else [outputs[0]]  # per-batch arrays when widths vary
        texts = [t for part in parts for t, _ in ctc_greedy_decode(part, list(charset))]
        return 100.0 * float(np.mean([char_accuracy(p, truths[int(i)]) for p, i in zip(texts, labels, strict=True)]))

    return ocr_char_accuracy
