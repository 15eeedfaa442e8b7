"""Semantic segmentation as a pipeline: letterbox + normalize -> the model -> logits back to the original
image -> per-pixel classes.

* ``preprocess`` (the generic op): letterbox to the model's input size, ``(x * scale - mean) / std``,
  BGR -> RGB, NCHW; the letterbox transform is kept as a plain dict (``matrix``, ``src_size``,
  ``dst_size``) so it can travel between the composing models of an ensemble;
* the segmenter is a ``model`` step (``[1, C, h, w]`` logits or probabilities, at the input's size
  or a fraction of it);
* ``segment.to_original``: the logits resized bilinearly into the letterboxed input's frame, the
  padding cropped, resized to the original image (MMSegmentation resizes logits, not labels: the
  edges are smoother), then the argmax: ``mask`` ``[H, W]`` int32 in the original image's pixels,
  and ``classes``: ``{class (label name or id): share of the image's pixels}``, largest first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array
from slipway.ops.geometry import Transform
from slipway.ops.resize import resize
from slipway.ops.segment import segmentation_to_original
from slipway.pipeline.ops import IMAGENET_MEAN, IMAGENET_STD, register_op

__all__ = ["segment_pipeline", "to_original", "as_transform"]


def as_transform(value: Any) -> Transform:
    """A :class:`~slipway.ops.geometry.Transform`, or the dict a pipeline passes instead (``matrix``,
    ``src_size``, ``dst_size``), as a Transform."""
    if isinstance(value, Transform):
        return value
    try:
        return Transform(np.asarray(value["matrix"], np.float64).reshape(3, 3), tuple(value["src_size"]),
                         tuple(value["dst_size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"transform: expected a Transform or a dict of matrix, src_size, dst_size ({e})") from None


def transform_dict(t: Transform) -> dict[str, Any]:
    return {"matrix": np.asarray(t.matrix).tolist(), "src_size": list(t.src_size), "dst_size": list(t.dst_size)}


@register_op("segment.to_original", inputs=("logits", "transform"), outputs=("mask", "classes"))
def to_original(logits: Any, transform: Any, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Logits ``[1, C, h, w]`` -> ``mask`` [H, W] int32 (original pixels) and ``classes`` {class: pixel share}."""
    lg = check_array("logits", logits, ndim=(3, 4), dtype_kind="f", allow_empty=False)
    if lg.ndim == 4:
        if lg.shape[0] != 1:
            raise UserError(f"logits: expected one image [1, C, h, w], got shape {lg.shape}")
        lg = lg[0]
    tf = as_transform(transform)
    if labels is not None and len(labels) != lg.shape[0]:
        raise UserError(f"labels: {len(labels)} names for {lg.shape[0]} classes")
    if tuple(lg.shape[1:]) != tuple(tf.dst_size):  # a head at a fraction of the input: up to the input first
        stack = np.ascontiguousarray(lg.transpose(1, 2, 0), dtype=np.float32)
        lg = resize(stack, tuple(tf.dst_size), "cv2_linear").reshape(*tf.dst_size, -1).transpose(2, 0, 1)
    mask = segmentation_to_original(lg, tf).astype(np.int32)
    ids, counts = np.unique(mask, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    names = [str(labels[int(i)]) if labels is not None else str(int(i)) for i in ids[order]]
    return {"mask": mask, "classes": {n: float(c) / mask.size for n, c in zip(names, counts[order], strict=True)}}


@register_op("segment.preprocess", inputs=("image",), outputs=("blob", "transform"))
def preprocess(image: Any, size: Any, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD, scale: float = 1 / 255,
               swap_rb: bool = True, color: float = 0) -> dict[str, Any]:
    """The generic ``preprocess`` op with its transform as a dict (see the module docstring)."""
    from slipway.pipeline.ops import preprocess as generic

    out = generic(image, size, mean=mean, std=std, scale=scale, swap_rb=swap_rb, color=color)
    return {"blob": out["blob"], "transform": transform_dict(out["transform"])}


def segment_pipeline(
    model_path: str | os.PathLike,
    size: Sequence[int] | None = None,
    mean: float | Sequence[float] = IMAGENET_MEAN,
    std: float | Sequence[float] = IMAGENET_STD,
    *,
    labels: Sequence[str] | None = None,
    scale: float = 1 / 255,
    swap_rb: bool = True,
    backend: str = "ort",
    threads: int = 0,
):
    """Semantic segmentation of one image (input ``image``, HWC uint8 BGR): outputs ``mask`` [H, W] and
    ``classes``. ``size`` (H, W): the model input (default: the model's fixed input size)."""
    from slipway.backends.declared import onnx_io
    from slipway.pipeline import Pipeline, Step

    path = Path(model_path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    ins, outs = onnx_io(path, str(model_path))
    if len(ins) != 1 or not outs:
        raise UserError(f"{model_path}: expected one image input and a logits output, got {len(ins)} inputs")
    hw = _input_size(ins[0].shape, size, str(model_path))
    steps = [
        Step.op("preprocess", "segment.preprocess", {"image": "image"}, {"blob": "blob", "transform": "transform"},
                size=list(hw), mean=mean, std=std, scale=scale, swap_rb=swap_rb),
        Step.model("model", path, {ins[0].name: "blob"}, {outs[0].name: "logits"}, backend=backend, threads=threads),
        Step.op("to_original", "segment.to_original", {"logits": "logits", "transform": "transform"},
                {"mask": "mask", "classes": "classes"}, **({"labels": list(labels)} if labels else {})),
    ]
    return Pipeline(steps, ["image"], ["mask", "classes"], name="segment")


def _input_size(shape: Any, size: Sequence[int] | None, label: str) -> tuple[int, int]:
    if size is not None:
        hw = tuple(int(v) for v in size)
        if len(hw) != 2 or min(hw) < 1:
            raise UserError(f"size: expected (H, W), got {size!r}")
        return hw  # type: ignore[return-value]
    dims = list(shape or [])
    if len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[2:]):
        return int(dims[2]), int(dims[3])
    raise UserError(f"{label}: the input size is not fixed in the model ({dims}); pass size=(H, W)")
