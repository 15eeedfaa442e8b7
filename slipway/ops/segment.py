"""Segmentation post-processing: class argmax, resizing back to the original image (through
the letterbox inverse), per-class masks and mask → polygon conversion.

Logits are ``[N, C, H, W]`` (or ``[C, H, W]``); label maps ``[N, H, W]`` (or ``[H, W]``).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_size
from slipway.ops.geometry import Transform
from slipway.ops.image import unletterbox
from slipway.ops.resize import resize


def segment_argmax(logits: Any) -> np.ndarray:
    """Per-pixel class ``[N, H, W]`` (int64) of logits or probabilities ``[N, C, H, W]``
    (``[C, H, W]`` → ``[H, W]``); ties go to the lower class index."""
    lg = check_array("logits", logits, ndim=(3, 4), dtype_kind="fiu", allow_empty=False)
    return lg.argmax(axis=-3).astype(np.int64)


def _to_hwc_stack(lg: np.ndarray) -> tuple[np.ndarray, int, int]:
    """[N, C, H, W] → [H, W, N*C] float32 (one resize call for all maps)."""
    n, c, h, w = lg.shape
    return np.ascontiguousarray(lg.reshape(n * c, h, w).transpose(1, 2, 0), dtype=np.float32), n, c


def logits_to_original(logits: Any, transform: Transform | None = None, size: Any = None) -> np.ndarray:
    """Resize logits ``[N, C, h, w]`` back to the original image, bilinearly.

    With a letterbox ``transform`` the padding is cropped first; with ``size`` (h, w) the
    whole map is stretched. Resizing logits before the argmax (as MMSegmentation does)
    gives smoother boundaries than resizing the label map.
    """
    lg = check_array("logits", logits, ndim=(3, 4), dtype_kind="f", allow_empty=False)
    batched = lg.ndim == 4
    x = lg if batched else lg[None]
    stack, n, c = _to_hwc_stack(x)
    if (transform is None) == (size is None):
        raise UserError("logits_to_original: pass exactly one of transform= or size=")
    if transform is not None:
        up = unletterbox(stack, transform, "cv2_linear")
    else:
        up = resize(stack, check_size("size", size), "cv2_linear")
    up = up.reshape(up.shape[0], up.shape[1], n * c)
    out = up.transpose(2, 0, 1).reshape(n, c, up.shape[0], up.shape[1])
    return out if batched else out[0]


def labels_to_original(labels: Any, transform: Transform | None = None, size: Any = None) -> np.ndarray:
    """Resize label maps ``[N, h, w]`` back to the original image (nearest neighbour)."""
    lb = check_array("labels", labels, ndim=(2, 3), dtype_kind="iub", allow_empty=False)
    batched = lb.ndim == 3
    x = lb if batched else lb[None]
    if (transform is None) == (size is None):
        raise UserError("labels_to_original: pass exactly one of transform= or size=")
    work = np.ascontiguousarray(x.transpose(1, 2, 0))  # resize handles int64/bool exactly
    if transform is not None:
        up = unletterbox(work, transform, "cv2_nearest")
    else:
        up = resize(work, check_size("size", size), "cv2_nearest")
    up = up.reshape(up.shape[0], up.shape[1], -1).transpose(2, 0, 1).astype(lb.dtype)
    return up if batched else up[0]


def segmentation_to_original(logits: Any, transform: Transform | None = None, size: Any = None) -> np.ndarray:
    """Labels at the original resolution: :func:`logits_to_original` then argmax."""
    return segment_argmax(logits_to_original(logits, transform, size))


def class_masks(labels: Any, num_classes: int) -> np.ndarray:
    """One boolean mask per class: ``[..., H, W]`` labels → ``[..., num_classes, H, W]``."""
    lb = check_array("labels", labels, ndim=(2, 3), dtype_kind="iu", allow_empty=False)
    if not isinstance(num_classes, (int, np.integer)) or num_classes <= 0:
        raise UserError(f"num_classes: expected a positive int, got {num_classes!r}")
    classes = np.arange(num_classes).reshape((num_classes,) + (1,) * 2)
    return lb[..., None, :, :] == classes


def mask_to_polygons(
    mask: Any,
    epsilon: float = 1.0,
    min_area: float = 0.0,
    holes: bool = False,
) -> list[np.ndarray]:
    """Outlines of a binary mask ``[H, W]`` (nonzero = foreground) as polygons ``[K, 2]``
    (x, y; float32).

    ``cv2.findContours`` (outer contours; with ``holes`` also the inner ones) simplified
    by ``cv2.approxPolyDP`` with ``epsilon`` pixels (0 keeps every contour point);
    polygons whose area is below ``min_area`` are dropped. Largest first.
    """
    m = check_array("mask", mask, ndim=2, dtype_kind="fiub", allow_empty=False)
    if epsilon < 0:
        raise UserError(f"epsilon: expected >= 0, got {epsilon!r}")
    binary = (m != 0).astype(np.uint8)
    mode = cv2.RETR_CCOMP if holes else cv2.RETR_EXTERNAL
    contours, _ = cv2.findContours(binary, mode, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for cnt in contours:
        approx = cv2.approxPolyDP(cnt, float(epsilon), True) if epsilon > 0 else cnt
        if len(approx) < 3 or cv2.contourArea(approx) < min_area:
            continue
        polys.append(approx.reshape(-1, 2).astype(np.float32))
    polys.sort(key=lambda p: -cv2.contourArea(p))
    return polys


def labels_to_polygons(
    labels: Any, epsilon: float = 1.0, min_area: float = 0.0, ignore: tuple[int, ...] = (0,)
) -> dict[int, list[np.ndarray]]:
    """Polygons of every class present in a label map ``[H, W]`` (skipping ``ignore``)."""
    lb = check_array("labels", labels, ndim=2, dtype_kind="iu", allow_empty=False)
    out: dict[int, list[np.ndarray]] = {}
    for cls in np.unique(lb):
        if int(cls) in ignore:
            continue
        polys = mask_to_polygons(lb == cls, epsilon, min_area)
        if polys:
            out[int(cls)] = polys
    return out
