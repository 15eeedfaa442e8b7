"""OCR as a pipeline: PP-OCR text detection (DBNet) -> reading order -> crops -> [angle classifier] -> recognition (CTC).

The steps reproduce RapidOCR 1.4.4 (``rapidocr_onnxruntime``) with its defaults, so the same
ONNX models read the same text from the same image:

* ``ocr.det_preprocess``: RapidOCR's whole-image guards (longest side above ``max_side_len`` or
  shortest below ``min_side_len``: resized, sides multiples of 32; an image ``min_height`` px
  high or less, or wider than ``width_height_ratio`` x its height, padded with black rows) then
  the detector's input: shortest side up to ``limit_side_len`` (``limit_type="min"``; ``"max"``
  caps the longest), both sides rounded to multiples of 32, bilinear, ``(x / 255 - mean) / std``,
  NCHW float32;
* the detector itself is a ``model`` step;
* ``ocr.db_postprocess``: DBNet's map -> quads (:func:`slipway.ops.ocr.db_boxes`: threshold,
  2x2 dilation, min-area rectangles, box score, unclip, size filters), mapped to the working
  image as RapidOCR does (``round(x / W * width)``, clipped, whole pixels), quads smaller than
  4 px dropped, reading order (:func:`slipway.ops.ocr.sort_boxes`);
* ``ocr.crop``: each quad warped upright (:func:`slipway.ops.ocr.crop_quads`, cubic, borders
  replicated, tall crops turned 90 degrees);
* ``ocr.classify`` (optional): the angle classifier over crops batched ``cls_batch`` at a time
  in aspect-ratio order, each resized to height 48 (width <= 192) and zero-padded; a crop
  labelled ``"180"`` with a score above ``cls_thresh`` is turned 180 degrees;
* ``ocr.recognize``: the recognizer over crops sorted by aspect ratio, ``rec_batch`` at a time,
  each batch resized to height 48 and zero-padded to the widest crop of that batch (at least
  320 px): the same tensors RapidOCR feeds, so the outputs are the same; or, with ``rec_buckets``,
  batched by width (each crop padded only to its width rounded up to a multiple of the step):
  faster, and on rendered pages closer to the drawn text (bench/pipeline.py);
* ``ocr.ctc_decode``: greedy CTC (:func:`slipway.ops.ocr.ctc_greedy_decode`) with the model's
  character list (its ``character`` metadata, then the space PaddleOCR appends);
* ``ocr.lines``: boxes back to the original image, lines scoring below ``text_score`` dropped.

Why recognition is an op and not a ``model`` step: a model step runs one tensor per call, and
the number and widths of the crops vary per image. One tensor padded to the widest crop of the
page changes what the recognizer reads (PP-OCRv4's SVTR neck mixes the whole width, padding
included), so parity with RapidOCR needs its batches: ``ocr.recognize`` and ``ocr.classify``
run their model once per batch, on the pipeline's own session for the file
(:func:`slipway.pipeline.core.model_session`, closed with the pipeline).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_image
from slipway.ops.ocr import crop_quads, ctc_greedy_decode, db_boxes, load_charset, order_quad, sort_boxes
from slipway.pipeline.core import model_session
from slipway.pipeline.detect import uint8_lut_nchw
from slipway.pipeline.ops import register_op


def _resize32(img: np.ndarray, ratio: float) -> np.ndarray | None:
    """``img`` scaled by ``ratio`` (sizes truncated), then each side rounded to a multiple of 32."""
    h, w = img.shape[:2]
    rh, rw = int(round(int(h * ratio) / 32) * 32), int(round(int(w * ratio) / 32) * 32)
    if rh <= 0 or rw <= 0:
        return None
    return cv2.resize(img, (rw, rh))


def _as_bgr(image: Any) -> np.ndarray:
    img = check_image("image", image)
    if img.dtype != np.uint8:
        raise UserError(f"image: expected uint8 HWC BGR, got dtype {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.shape[2] != 3:
        raise UserError(f"image: expected 1, 3 or 4 channels, got {img.shape[2]}")
    return img


@register_op("ocr.det_preprocess", inputs=("image",), outputs=("tensor", "work", "meta"))
def det_preprocess(image: Any, *, limit_side_len: int = 736, limit_type: str = "min",
                   mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                   max_side_len: int = 2000, min_side_len: int = 30, min_height: int = 30,
                   width_height_ratio: float = 8) -> dict[str, Any]:
    """Image (HWC uint8 BGR) -> detector input ``tensor`` [1, 3, H, W], the ``work`` image the
    crops are cut from, and ``meta`` (sizes, scale and padding to map boxes back)."""
    img = _as_bgr(image)
    raw_h, raw_w = img.shape[:2]
    ratio_h = ratio_w = 1.0
    if max(raw_h, raw_w) > max_side_len:  # RapidOCR.preprocess -> reduce_max_side
        img = _resize32(img, max_side_len / max(raw_h, raw_w))
        ratio_h, ratio_w = raw_h / img.shape[0], raw_w / img.shape[1]
    if min(img.shape[:2]) < min_side_len:  # -> increase_min_side
        h0, w0 = img.shape[:2]
        img = _resize32(img, min_side_len / min(h0, w0))
        if img is None:
            raise UserError(f"image: {raw_h}x{raw_w} is too small to read")
        ratio_h, ratio_w = h0 / img.shape[0], w0 / img.shape[1]
    h, w = img.shape[:2]
    top = 0
    if h <= min_height or (width_height_ratio != -1 and w / h > width_height_ratio):  # maybe_add_letterbox
        top = int(abs(max(int(w / width_height_ratio), min_height) * 2 - h) / 2)
        img = cv2.copyMakeBorder(img, top, top, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    h, w = img.shape[:2]
    if limit_type == "max":
        ratio = limit_side_len / max(h, w) if max(h, w) > limit_side_len else 1.0
    elif limit_type == "min":
        ratio = limit_side_len / min(h, w) if min(h, w) < limit_side_len else 1.0
    else:
        raise UserError(f"limit_type: expected 'min' or 'max', got {limit_type!r}")
    resized = _resize32(img, ratio)
    if resized is None:
        raise UserError(f"image: {raw_h}x{raw_w} is too small to read")

    def normalize(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) * (1 / 255.0) - np.asarray(mean)) / np.asarray(std)

    tensor = uint8_lut_nchw(resized, normalize)  # the same values, through a table per channel
    if tensor is None:
        tensor = np.ascontiguousarray(normalize(resized).transpose(2, 0, 1)[None], dtype=np.float32)
    meta = {"raw_size": (raw_h, raw_w), "work_size": (h, w), "ratio": (ratio_h, ratio_w), "top": top}
    return {"tensor": tensor, "work": img, "meta": meta}


@register_op("ocr.db_postprocess", inputs=("prob", "meta"), outputs=("boxes", "scores"))
def db_postprocess(prob: Any, meta: dict[str, Any], *, thresh: float = 0.3, box_thresh: float = 0.5,
                   unclip_ratio: float = 1.6, max_candidates: int = 1000, use_dilation: bool = True,
                   score_mode: str = "fast", min_size: float = 3.0, line_tolerance: float = 10.0) -> dict[str, Any]:
    """DBNet map [1, 1, H, W] -> ``boxes`` [K, 4, 2] float32 quads on the work image in reading order, ``scores`` [K]."""
    p = check_array("prob", prob, ndim=(2, 3, 4), dtype_kind="f", allow_empty=False)
    p = p.reshape(p.shape[-2:]) if p.ndim == 2 or int(np.prod(p.shape[:-2])) == 1 else None
    if p is None:
        raise UserError(f"prob: expected one map [1, 1, H, W], got shape {tuple(np.shape(prob))}")
    found = db_boxes(p, thresh=thresh, box_thresh=box_thresh, unclip_ratio=unclip_ratio, min_size=min_size,
                     max_candidates=max_candidates, score_mode=score_mode, dilate=use_dilation, compat="paddle")
    mh, mw = p.shape
    h, w = meta["work_size"]
    keep_boxes, keep_scores = [], []
    for quad, score in zip(found.boxes, found.scores, strict=True):
        # DBPostProcess.boxes_from_bitmap: round(x / W * width) clipped to [0, width], whole pixels; then
        # TextDetector.filter_tag_det_res: ordered, clipped to [0, width - 1], at least 4 px each way
        q = np.empty((4, 2), np.float32)
        q[:, 0] = np.clip(np.round(quad[:, 0] / mw * w), 0, w).astype(np.int32)
        q[:, 1] = np.clip(np.round(quad[:, 1] / mh * h), 0, h).astype(np.int32)
        q = order_quad(q)
        q[:, 0] = np.clip(q[:, 0], 0, w - 1).astype(np.int32)
        q[:, 1] = np.clip(q[:, 1], 0, h - 1).astype(np.int32)
        if int(np.linalg.norm(q[0] - q[1])) <= 3 or int(np.linalg.norm(q[0] - q[3])) <= 3:
            continue
        keep_boxes.append(q)
        keep_scores.append(score)
    boxes = np.asarray(keep_boxes, np.float32).reshape(-1, 4, 2)
    scores = np.asarray(keep_scores, np.float32)
    if len(boxes):
        order = sort_boxes(boxes, line_tolerance)
        boxes, scores = boxes[order], scores[order]
    return {"boxes": boxes, "scores": scores}


@register_op("ocr.crop", inputs=("image", "boxes"), outputs=("crops",))
def crop(image: Any, boxes: Any, *, tall_ratio: float = 1.5) -> dict[str, Any]:
    """Each quad of ``boxes`` cut out of ``image`` and warped upright (cubic; tall crops turned 90 degrees)."""
    return {"crops": crop_quads(image, np.asarray(boxes, np.float32).reshape(-1, 4, 2), rotate_tall=True,
                                tall_ratio=tall_ratio, interpolation=cv2.INTER_CUBIC, compat="paddle")}


# (x / 255 - 0.5) / 0.5 in float32 for each uint8 value: what the whole-crop arithmetic gives, per pixel
_REC_TABLE = np.ascontiguousarray(((np.arange(256, dtype=np.uint8).astype(np.float32) / 255 - 0.5) / 0.5)[None])


def _resize_norm(img: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """PP-OCR's rec/cls input: height ``height``, width ceil(height * w / h) capped at ``width``, bilinear,
    ``x / 255 * 2 - 1``, CHW, zero-padded on the right to ``width`` (written into ``out`` when given:
    a zeroed [C, height, width] float32 array)."""
    h, w = img.shape[:2]
    rw = min(width, int(math.ceil(height * w / float(h))))
    resized = cv2.resize(img, (rw, height))
    if out is None:
        out = np.zeros((img.shape[2] if img.ndim == 3 else 1, height, width), np.float32)
    if resized.dtype == np.uint8:
        norm = cv2.LUT(resized, _REC_TABLE).reshape(resized.shape)
    else:
        norm = (resized.astype(np.float32) / 255 - 0.5) / 0.5
    out[:, :, :rw] = norm.transpose(2, 0, 1) if norm.ndim == 3 else norm[None]
    return out


def _batch(items: list[np.ndarray], idx: np.ndarray, height: int, width: int) -> np.ndarray:
    """The crops ``idx`` of ``items`` resized and normalized into one zero-padded [N, C, height, width] batch."""
    first = items[int(idx[0])]
    channels = first.shape[2] if first.ndim == 3 else 1
    if any((items[int(i)].shape[2] if items[int(i)].ndim == 3 else 1) != channels for i in idx):
        return np.stack([_resize_norm(items[int(i)], height, width) for i in idx])
    x = np.zeros((len(idx), channels, height, width), np.float32)
    for k, i in enumerate(idx):
        _resize_norm(items[int(i)], height, width, out=x[k])
    return x


def crop_tensor(crops: Sequence[Any], image_shape: Sequence[int] = (3, 48, 320)) -> np.ndarray:
    """``crops`` as a recognizer (``image_shape`` (3, 48, 320)) or the angle classifier ((3, 48, 192))
    reads each alone: [N, C, H, W], each resized to height H (width at most W) and zero-padded."""
    _, height, width = (int(v) for v in image_shape)
    items = _check_crops(list(crops))
    if not items:
        raise UserError("crops: expected at least one crop")
    return _batch(items, np.arange(len(items)), height, width)


def _check_crops(crops: Any) -> list[np.ndarray]:
    if not isinstance(crops, (list, tuple)):
        raise UserError(f"crops: expected a list of HWC images, got {type(crops).__name__}")
    return [check_image(f"crops[{i}]", c) for i, c in enumerate(crops)]


def _in_ratio_order(crops: list[np.ndarray]) -> np.ndarray:
    """Crop indices by width / height (numpy's default argsort, as RapidOCR sorts them)."""
    return np.argsort(np.array([c.shape[1] / float(c.shape[0]) for c in crops]))


@register_op("ocr.classify", inputs=("crops",), outputs=("crops", "angles"))
def classify(crops: Any, *, model: str | os.PathLike, backend: str = "ort", threads: int = 0,
             image_shape: Sequence[int] = (3, 48, 192), batch: int = 6, cls_thresh: float = 0.9,
             labels: Sequence[str] = ("0", "180")) -> dict[str, Any]:
    """Angle classifier: ``crops`` with those read as upside down (label "180", score > ``cls_thresh``)
    turned 180 degrees, and ``angles`` [(label, score)] per crop."""
    items = _check_crops(crops)
    out = list(items)
    angles: list[tuple[str, float]] = [("", 0.0)] * len(items)
    if not items:
        return {"crops": out, "angles": angles}
    sess = model_session(model, backend, threads)
    name = sess.inputs[0].name
    _, height, width = (int(v) for v in image_shape)
    order = _in_ratio_order(items)
    for start in range(0, len(items), int(batch)):
        idx = order[start:start + int(batch)]
        x = _batch(items, idx, height, width)
        probs = next(iter(sess.run({name: x}).values()))
        for i, row in zip(idx, probs, strict=True):
            k = int(row.argmax())
            label, score = str(labels[k]), float(row[k])
            angles[i] = (label, score)
            if "180" in label and score > cls_thresh:
                out[i] = cv2.rotate(items[i], cv2.ROTATE_180)
    return {"crops": out, "angles": angles}


@register_op("ocr.recognize", inputs=("crops",), outputs=("probs",))
def recognize(crops: Any, *, model: str | os.PathLike, backend: str = "ort", threads: int = 0,
              image_shape: Sequence[int] = (3, 48, 320), batch: int = 6, buckets: int = 0) -> dict[str, Any]:
    """Text recognizer over ``crops``: ``probs`` [T_i, C] per crop (crop order).

    ``buckets=0`` batches as RapidOCR does (aspect-ratio order, ``batch`` at a time, padded to the batch's
    widest crop, at least ``image_shape``'s width): the same tensors, so the same texts. ``buckets=N``
    batches by width instead: each crop resized to height H is padded only to its own width rounded up
    to a multiple of N pixels, and crops of one padded width run together, up to ``batch`` at a time.
    Less padding is less work, and PP-OCRv4's recognizer (its SVTR neck mixes the whole width, padding
    included) reads short lines better without a wide black margin: bench/pipeline.py measures both.
    """
    items = _check_crops(crops)
    probs: list[np.ndarray | None] = [None] * len(items)
    if not items:
        return {"probs": []}
    if int(buckets) < 0:
        raise UserError(f"buckets: expected 0 (RapidOCR's batches) or a width step in pixels, got {buckets}")
    sess = model_session(model, backend, threads)
    name = sess.inputs[0].name
    _, height, width = (int(v) for v in image_shape)
    for idx, padded in _rec_batches(items, height, width, int(batch), int(buckets)):
        x = _batch(items, idx, height, padded)
        out = next(iter(sess.run({name: x}).values()))
        for i, row in zip(idx, out, strict=True):
            probs[i] = row
    return {"probs": probs}


def _rec_batches(items: list[np.ndarray], height: int, width: int, batch: int,
                 buckets: int) -> list[tuple[np.ndarray, int]]:
    """(crop indices, padded width) of each recognizer batch (see :func:`recognize`)."""
    order = _in_ratio_order(items)
    ratios = [c.shape[1] / float(c.shape[0]) for c in items]
    if not buckets:
        out = []
        for start in range(0, len(items), batch):
            idx = order[start:start + batch]
            out.append((idx, int(height * max([width / height] + [ratios[i] for i in idx]))))
        return out
    groups: list[tuple[list[int], int]] = []
    for i in order:
        w = max(buckets, int(math.ceil(height * ratios[i] / buckets)) * buckets)
        if groups and groups[-1][1] == w and len(groups[-1][0]) < batch:
            groups[-1][0].append(int(i))
        else:
            groups.append(([int(i)], w))
    return [(np.asarray(idx), w) for idx, w in groups]


@functools.lru_cache(maxsize=8)
def _metadata_charset(path: str) -> tuple[str, ...]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    if "character" not in meta:
        raise UserError(f"rec: {Path(path).name} has no 'character' metadata; pass charset= (a dictionary file)")
    return tuple(meta["character"].splitlines()) + (" ",)


def model_charset(model: str | os.PathLike) -> list[str]:
    """The characters of a PP-OCR recognizer: its ``character`` metadata, one per line, then " "
    (RapidOCR's CTCLabelDecode appends the space; the blank is class 0)."""
    path = Path(model)
    if not path.is_file():
        raise UserError(f"rec: file not found: {path}")
    return list(_metadata_charset(str(path.resolve())))


@register_op("ocr.ctc_decode", inputs=("probs",), outputs=("texts", "scores"), paths=("model", "charset"))
def ctc_decode(probs: Any, *, charset: Sequence[str] | str | os.PathLike | None = None,
               model: str | os.PathLike | None = None) -> dict[str, Any]:
    """Greedy CTC over each crop's ``probs`` [T, C] (blank 0): ``texts`` and ``scores`` (mean kept-step probability).

    ``charset``: the non-blank classes' characters, or a dictionary file (one per line; the space
    is appended, as RapidOCR does); without it, the ``character`` metadata of the recognizer ``model``.
    """
    if charset is None:
        if model is None:
            raise UserError("ctc_decode: pass charset= (characters or a dictionary file) or model= (the recognizer)")
        chars = model_charset(model)
    elif isinstance(charset, (str, os.PathLike)):
        chars = load_charset(charset, space=True)
    else:
        chars = [str(c) for c in charset]
    texts, scores = [], []
    table = [""] + list(chars)
    for i, p in enumerate(probs):
        arr = check_array(f"probs[{i}]", p, ndim=2, dtype_kind="f")
        got = _greedy_float32(arr, table)
        if got is None:
            (text, score), = ctc_greedy_decode(arr, chars)
        else:
            text, score = got
        texts.append(text)
        scores.append(score)
    return {"texts": texts, "scores": scores}


def _greedy_float32(p: np.ndarray, table: list[str]) -> tuple[str, float] | None:
    """:func:`slipway.ops.ocr.ctc_greedy_decode` of one float32 ``[T, C]`` probability map (blank 0),
    without taking the log of the whole map: distinct float32 values keep their order through a
    float64 log, so the argmax is the same, and the kept steps' probabilities go through the same
    float64 log and exp as there. None (the caller decodes it the general way, which also raises
    its errors) for other dtypes, a class-count mismatch or values outside [0, 1]."""
    if p.dtype != np.float32 or p.shape[1] != len(table) or p.shape[0] == 0:
        return None
    if p.min() < 0 or float(p.max()) > 1 + 1e-6:
        return None
    best = p.argmax(axis=1)
    keep = best != 0
    keep[1:] &= best[1:] != best[:-1]
    idx = np.nonzero(keep)[0]
    if not len(idx):
        return "", 0.0
    with np.errstate(divide="ignore"):
        kept = np.exp(np.log(p[idx, best[idx]].astype(np.float64)))
    return "".join(table[k] for k in best[idx]), float(kept.mean())


@register_op("ocr.lines", inputs=("boxes", "texts", "scores", "meta"), outputs=("lines",))
def lines(boxes: Any, texts: Sequence[str], scores: Sequence[float], meta: dict[str, Any], *,
          text_score: float = 0.5) -> dict[str, Any]:
    """``[{text, score, box}]`` in reading order, ``box`` the quad in the original image's pixels
    (padding removed, scaled back, clipped), lines scoring below ``text_score`` dropped."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4, 2).copy()
    if not len(b) == len(texts) == len(scores):
        raise UserError(f"lines: {len(b)} boxes, {len(texts)} texts and {len(scores)} scores")
    raw_h, raw_w = meta["raw_size"]
    ratio_h, ratio_w = meta["ratio"]
    b[:, :, 1] -= meta["top"]
    b[:, :, 0] *= ratio_w
    b[:, :, 1] *= ratio_h
    b = np.maximum(b, 0)
    b[..., 0] = np.minimum(b[..., 0], raw_w)
    b[..., 1] = np.minimum(b[..., 1], raw_h)
    out = [{"text": t, "score": float(s), "box": q.tolist()}
           for q, t, s in zip(b, texts, scores, strict=True) if float(s) >= text_score]
    return {"lines": out}


_STEP_PARAMS = {
    "det_pre": ("limit_side_len", "limit_type", "mean", "std", "max_side_len", "min_side_len", "min_height",
                "width_height_ratio"),
    "det_post": ("thresh", "box_thresh", "unclip_ratio", "max_candidates", "use_dilation", "score_mode", "min_size",
                 "line_tolerance"),
    "crop": ("tall_ratio",),
    "cls": ("cls_thresh", "cls_batch", "cls_image_shape"),
    "rec": ("rec_batch", "rec_image_shape", "rec_buckets"),
    "lines": ("text_score",),
}
_RENAMED = {"cls_batch": "batch", "cls_image_shape": "image_shape", "rec_batch": "batch", "rec_image_shape": "image_shape",
            "rec_buckets": "buckets"}


def ocr_pipeline(det: str | os.PathLike, rec: str | os.PathLike, cls: str | os.PathLike | None = None, *,
                 charset: Sequence[str] | str | os.PathLike | None = None, backend: str = "ort", threads: int = 0,
                 **params: Any):
    """PP-OCR as a :class:`slipway.pipeline.Pipeline`: input ``image`` (HWC uint8, BGR as OpenCV
    reads it, as RapidOCR takes it; grayscale and BGRA are converted), output ``lines``
    (``[{"text", "score", "box"}]``, ``box`` four ``[x, y]`` corners tl, tr, br, bl in the
    image's pixels, in reading order).

    ``det``, ``rec``, ``cls`` are the detector, recognizer and (optional) angle classifier ONNX
    files; ``charset`` the recognizer's characters (a list, or a dictionary file, one per line;
    default: the model's ``character`` metadata). ``params`` override RapidOCR's defaults:
    ``limit_side_len`` (736), ``limit_type`` ("min"), ``thresh`` (0.3), ``box_thresh`` (0.5),
    ``unclip_ratio`` (1.6), ``max_candidates`` (1000), ``use_dilation`` (True), ``score_mode``
    ("fast"), ``cls_thresh`` (0.9), ``cls_batch`` (6), ``rec_batch`` (6), ``rec_buckets`` (0: RapidOCR's
    batches; 32: batches by width, see :func:`recognize`), ``text_score`` (0.5),
    and the rest of the step parameters above.
    """
    from slipway.backends.declared import onnx_io
    from slipway.pipeline import Pipeline, Step

    step_params: dict[str, dict[str, Any]] = {k: {} for k in _STEP_PARAMS}
    for key, value in params.items():
        step = next((s for s, names in _STEP_PARAMS.items() if key in names), None)
        if step is None:
            known = ", ".join(sorted(n for names in _STEP_PARAMS.values() for n in names))
            raise UserError(f"ocr_pipeline: unknown parameter {key!r} (known: {known})")
        step_params[step][_RENAMED.get(key, key)] = value
    det_in, det_out = onnx_io(Path(det), "det")
    if len(det_in) != 1 or len(det_out) != 1:
        raise UserError(f"det: expected one input and one output, got {len(det_in)} and {len(det_out)}")
    if charset is None:
        model_charset(rec)  # fail now, not on the first run, when the model carries no characters
        ctc = {"model": str(rec)}
    else:
        ctc = {"charset": str(charset) if isinstance(charset, os.PathLike) else charset}
    engine = {"backend": backend, "threads": threads}
    steps = [
        Step.op("det_pre", "ocr.det_preprocess", {"image": "image"},
                {"tensor": "det_input", "work": "work", "meta": "meta"}, **step_params["det_pre"]),
        Step.model("det", det, {det_in[0].name: "det_input"}, {det_out[0].name: "det_prob"}, **engine),
        Step.op("det_post", "ocr.db_postprocess", {"prob": "det_prob", "meta": "meta"},
                {"boxes": "boxes", "scores": "box_scores"}, **step_params["det_post"]),
        Step.op("crop", "ocr.crop", {"image": "work", "boxes": "boxes"}, {"crops": "crops"}, **step_params["crop"]),
    ]
    rec_in = "crops"
    if cls is not None:
        steps.append(Step.op("cls", "ocr.classify", {"crops": "crops"}, {"crops": "upright", "angles": "angles"},
                             model=str(cls), **engine, **step_params["cls"]))
        rec_in = "upright"
    steps += [
        Step.op("rec", "ocr.recognize", {"crops": rec_in}, {"probs": "rec_probs"}, model=str(rec), **engine,
                **step_params["rec"]),
        Step.op("ctc", "ocr.ctc_decode", {"probs": "rec_probs"}, {"texts": "texts", "scores": "text_scores"},
                **ctc),
        Step.op("lines", "ocr.lines", {"boxes": "boxes", "texts": "texts", "scores": "text_scores", "meta": "meta"},
                {"lines": "lines"}, **step_params["lines"]),
    ]
    return Pipeline(steps, inputs=["image"], outputs=["lines"], name="ocr")
