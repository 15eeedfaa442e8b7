"""The pipeline op registry and the generic ops: thin wrappers around :mod:`slipway.ops`.

Every op takes its inputs and params as keyword arguments and returns a dict with exactly its
declared outputs. Sizes arrive as lists from YAML files and are turned back into tuples here.
Task modules (``slipway.pipeline.ocr``, ``slipway.pipeline.detect``) register their own ops; they
are imported at the end of this module so :data:`OPS` is complete whenever ``slipway.pipeline``
is imported.

Also here: :func:`classify_pipeline`, the classification task built from these ops.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.ops import classify as _classify
from slipway.ops import detect as _detect
from slipway.ops import image as _image
from slipway.ops import resize as _resize
from slipway.pipeline.core import OPS, OpSpec, Pipeline, Step, register_op

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "OPS", "OpSpec", "classify_pipeline", "register_op"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size(size: Any) -> Any:
    return tuple(size) if isinstance(size, list) else size


def _values(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


# ---------------------------------------------------------------------------------- image


@register_op("letterbox", inputs=("image",), outputs=("image", "transform"))
def letterbox(image: Any, size: Any, color: Any = 114, method: str = "cv2_linear", scaleup: bool = True,
              center: bool = True) -> dict[str, Any]:
    """Resize keeping the aspect ratio and pad to ``size`` (H, W); the transform maps boxes back."""
    out, tf = _image.letterbox(image, _size(size), color=_values(color), method=method, scaleup=scaleup,
                               center=center)
    return {"image": out, "transform": tf}


@register_op("resize", inputs=("image",), outputs=("image",))
def resize(image: Any, size: Any, method: str = "cv2_linear") -> dict[str, Any]:
    """Resize an HWC image (or NHWC batch) to ``size`` (H, W), aspect ratio not kept."""
    return {"image": _resize.resize(image, _size(size), method)}


@register_op("center_crop", inputs=("image",), outputs=("image",))
def center_crop(image: Any, size: Any) -> dict[str, Any]:
    """The central ``size`` (H, W) region of an HWC image."""
    return {"image": _image.center_crop(image, _size(size))}


@register_op("normalize", inputs=("image",), outputs=("image",))
def normalize(image: Any, mean: Any = 0.0, std: Any = 1.0, scale: float = 1.0, channel_axis: int = -1) -> dict:
    """``(image * scale - mean) / std`` per channel, float32."""
    return {"image": _image.normalize(image, _values(mean), _values(std), scale, channel_axis=channel_axis)}


@register_op("bgr_to_rgb", inputs=("image",), outputs=("image",))
def bgr_to_rgb(image: Any) -> dict[str, Any]:
    """Swap the first and third channels of an HWC image (or NHWC batch)."""
    return {"image": _image.bgr_to_rgb(image)}


@register_op("to_nchw", inputs=("image",), outputs=("blob",))
def to_nchw(image: Any) -> dict[str, Any]:
    """HWC -> NCHW with a batch of one (NHWC -> NCHW), contiguous."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise UserError(f"image: expected an HWC image or NHWC batch, got shape {arr.shape}")
    return {"blob": _image.hwc_to_chw(arr)}


@register_op("preprocess", inputs=("image",), outputs=("blob", "transform"))
def preprocess(image: Any, size: Any, mean: Any = 0.0, std: Any = 1.0, scale: float = 1 / 255,
               swap_rb: bool = True, color: float = 114) -> dict[str, Any]:
    """Fused letterbox + normalize + HWC->NCHW (+ BGR->RGB): a float32 blob and the letterbox transform."""
    blob, tf = _image.preprocess(image, _size(size), mean=_values(mean), std=_values(std), scale=scale,
                                 swap_rb=swap_rb, color=color)
    return {"blob": blob, "transform": tf}


# ---------------------------------------------------------------------------------- classify


@register_op("softmax", inputs=("x",), outputs=("y",))
def softmax(x: Any, axis: int = -1) -> dict[str, Any]:
    """Softmax along ``axis``."""
    return {"y": _classify.softmax(x, axis)}


@register_op("sigmoid", inputs=("x",), outputs=("y",))
def sigmoid(x: Any) -> dict[str, Any]:
    """Elementwise logistic sigmoid."""
    return {"y": _classify.sigmoid(x)}


@register_op("topk", inputs=("x",), outputs=("values", "indices"))
def topk(x: Any, k: int, axis: int = -1, largest: bool = True) -> dict[str, Any]:
    """The ``k`` largest (or smallest) values along ``axis`` and their indices, sorted."""
    values, indices = _classify.topk(x, k, axis, largest)
    return {"values": values, "indices": indices}


# ---------------------------------------------------------------------------------- detect


@register_op("nms", inputs=("boxes", "scores"), outputs=("indices",))
def nms(boxes: Any, scores: Any, iou_threshold: float = 0.45, score_threshold: float = 0.0,
        max_detections: int | None = None) -> dict[str, Any]:
    """Greedy NMS over xyxy boxes: kept indices by descending score."""
    return {"indices": _detect.nms(boxes, scores, iou_threshold, score_threshold, max_detections)}


@register_op("batched_nms", inputs=("boxes", "scores", "classes"), outputs=("indices",))
def batched_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float = 0.45, score_threshold: float = 0.0,
                max_detections: int | None = None) -> dict[str, Any]:
    """Class-aware NMS over xyxy boxes: kept indices by descending score."""
    return {"indices": _detect.batched_nms(boxes, scores, classes, iou_threshold, score_threshold, max_detections)}


@register_op("box_convert", inputs=("boxes",), outputs=("boxes",))
def box_convert(boxes: Any, in_fmt: str, out_fmt: str) -> dict[str, Any]:
    """Convert boxes between xyxy / xywh / cxcywh."""
    return {"boxes": _detect.box_convert(boxes, in_fmt, out_fmt)}


# ---------------------------------------------------------------------------------- tasks


def classify_pipeline(
    model_path: str | os.PathLike,
    size: int | Sequence[int] = (224, 224),
    mean: float | Sequence[float] = IMAGENET_MEAN,
    std: float | Sequence[float] = IMAGENET_STD,
    top_k: int = 5,
    *,
    scale: float = 1 / 255,
    swap_rb: bool = True,
    input_name: str | None = None,
    output_name: str | None = None,
    backend: str = "ort",
    threads: int = 0,
) -> Pipeline:
    """Image classification: letterbox + normalize (+ BGR->RGB) -> model -> softmax -> top-k.

    Pipeline input ``image`` (HWC uint8, BGR as OpenCV reads it unless ``swap_rb=False``); outputs
    ``scores`` (top-k probabilities, ``[N, k]``) and ``labels`` (their class indices). The model's
    only input and first output are used unless ``input_name`` / ``output_name`` say otherwise.
    """
    from slipway.backends.declared import onnx_io

    path = Path(model_path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    ins, outs = onnx_io(path, str(model_path))
    if input_name is None:
        if len(ins) != 1:
            raise UserError(f"{model_path}: the model has {len(ins)} inputs; name the image one with input_name")
        input_name = ins[0].name
    if output_name is None:
        if not outs:
            raise UserError(f"{model_path}: the model has no outputs")
        output_name = outs[0].name
    hw = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    steps = [
        Step.op("preprocess", "preprocess", {"image": "image"}, {"blob": "blob"}, size=hw, mean=mean, std=std,
                scale=scale, swap_rb=swap_rb),
        Step.model("model", path, {input_name: "blob"}, {output_name: "logits"}, backend=backend, threads=threads),
        Step.op("softmax", "softmax", {"x": "logits"}, {"y": "probs"}),
        Step.op("topk", "topk", {"x": "probs"}, {"values": "scores", "indices": "labels"}, k=top_k),
    ]
    return Pipeline(steps, ["image"], ["scores", "labels"], name="classify")


# The task modules register their ops on import (written separately; a missing one is skipped).
for _m in ("ocr", "detect", "segment", "pose", "track"):
    try:
        importlib.import_module(f"slipway.pipeline.{_m}")
    except ModuleNotFoundError as _e:
        if _e.name != f"slipway.pipeline.{_m}":
            raise
