"""Image pre-processing: letterbox, crops, warps, normalize, layout, channel order, dtype.

Conventions: images are HWC (or HW) numpy arrays, batches NHWC; sizes are ``(height,
width)``; coordinates are ``(x, y)``. Every geometric op can return a :class:`Transform`
that maps boxes and points from the original image to the model input and back, so
post-processing lands on the original pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_image, check_size
from slipway.ops.geometry import Transform
from slipway.ops.resize import CV2_METHODS, resize

# ---------------------------------------------------------------------------------- letterbox


def letterbox_geometry(
    src_size: tuple[int, int], size: int | tuple[int, int], scaleup: bool = True, center: bool = True
) -> tuple[tuple[int, int], tuple[int, int], Transform]:
    """Resized size ``(nh, nw)``, padding ``(top, left)`` and transform of a letterbox.

    Ultralytics' ``LetterBox`` arithmetic: ``r = min(H/h, W/w)`` (at most 1 without
    ``scaleup``), ``nw = round(w * r)``, centered padding split ``round(d/2 ∓ 0.1)``.
    """
    h, w = check_size("image size", src_size)
    H, W = check_size("size", size)
    r = min(H / h, W / w)
    if not scaleup:
        r = min(r, 1.0)
    nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
    dw, dh = (W - nw) / 2, (H - nh) / 2
    top, left = (int(round(dh - 0.1)), int(round(dw - 0.1))) if center else (0, 0)
    m = np.array([[nw / w, 0.0, left], [0.0, nh / h, top], [0.0, 0.0, 1.0]])
    return (nh, nw), (top, left), Transform(m, (h, w), (H, W))


def letterbox(
    image: Any,
    size: int | tuple[int, int],
    *,
    color: float | Sequence[float] = 114,
    method: str = "cv2_linear",
    scaleup: bool = True,
    center: bool = True,
) -> tuple[np.ndarray, Transform]:
    """Resize keeping the aspect ratio, pad to ``size = (H, W)``; return (image, transform).

    ``transform.to_original(boxes)`` maps detections back onto the original image.
    Batches (NHWC) get one transform shared by all images.
    """
    arr = check_image("image", image, batched=None)
    batched = arr.ndim == 4
    h, w = arr.shape[1:3] if batched else arr.shape[:2]
    (nh, nw), (top, left), tf = letterbox_geometry((h, w), size, scaleup, center)
    H, W = tf.dst_size
    shape = ((arr.shape[0],) if batched else ()) + (H, W) + arr.shape[(3 if batched else 2) :]
    out = np.empty(shape, dtype=arr.dtype)
    _fill_border(out, (top, left, nh, nw), color, batched)
    inner = out[:, top : top + nh, left : left + nw] if batched else out[top : top + nh, left : left + nw]
    if (nh, nw) == (h, w):
        inner[...] = arr
    elif method in CV2_METHODS and not batched and arr.dtype in (np.uint8, np.float32) and arr.ndim == 3:
        cv2.resize(arr, (nw, nh), dst=inner, interpolation=CV2_METHODS[method])
    else:
        inner[...] = resize(arr, (nh, nw), method)
    return out, tf


def _fill_border(out: np.ndarray, box: tuple[int, int, int, int], color: Any, batched: bool) -> None:
    """Fill everything outside the ``(top, left, h, w)`` box of an HWC/NHWC array."""
    top, left, nh, nw = box
    o = out if batched else out[None]
    value = np.asarray(color, dtype=np.float64)
    if value.ndim and o.ndim == 4 and value.shape[0] != o.shape[-1]:
        raise UserError(f"color: expected a scalar or {o.shape[-1]} values, got {value.shape[0]}")
    o[:, :top] = value
    o[:, top + nh :] = value
    o[:, top : top + nh, :left] = value
    o[:, top : top + nh, left + nw :] = value


def preprocess(
    image: Any,
    size: int | tuple[int, int],
    *,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    scale: float = 1 / 255,
    swap_rb: bool = True,
    color: float = 114,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, Transform]:
    """Fused letterbox + normalize + HWC→NCHW (+ BGR→RGB): the usual detector input.

    Returns a float32 blob ``[N, C, H, W]`` with ``(pixel * scale - mean) / std`` per output
    channel (``mean``/``std`` in output channel order) and the letterbox transform. One
    ``cv2.resize`` plus one fused multiply-add per channel; the pad area is filled with the
    normalized ``color`` directly. Same pixels as :func:`letterbox` then :func:`normalize`.
    """
    arr = check_image("image", image, batched=None)
    imgs = arr if arr.ndim == 4 else arr[None]
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    n, h, w, c = imgs.shape
    (nh, nw), (top, left), tf = letterbox_geometry((h, w), size)
    H, W = tf.dst_size
    a, b = _affine_coefficients(mean, std, scale, c)
    order = list(range(c))[::-1] if (swap_rb and c >= 3) else list(range(c))
    if swap_rb and c == 4:
        order = [2, 1, 0, 3]
    out = np.empty((n, c, H, W), dtype=np.float32)
    for i in range(n):
        src = imgs[i] if imgs.dtype in (np.uint8, np.float32) else imgs[i].astype(np.float32)
        small = src if (nh, nw) == (h, w) else cv2.resize(src, (nw, nh), interpolation=interpolation)
        planes = cv2.split(small) if c > 1 else [small.reshape(nh, nw)]
        for k, ch in enumerate(order):
            plane = out[i, k]
            pad = float(color) * a[k] + b[k]
            plane[:top] = pad
            plane[top + nh :] = pad
            plane[top : top + nh, :left] = pad
            plane[top : top + nh, left + nw :] = pad
            dst = plane[top : top + nh, left : left + nw]
            cv2.addWeighted(planes[ch], a[k], planes[ch], 0.0, b[k], dst=dst, dtype=cv2.CV_32F)
    return out, tf


def _affine_coefficients(mean: Any, std: Any, scale: float, c: int) -> tuple[list[float], list[float]]:
    """Per-channel a, b with ``(x * scale - mean) / std == a * x + b`` (float64 folding)."""
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (c,)) if np.ndim(mean) == 0 else np.asarray(mean, float)
    s = np.broadcast_to(np.asarray(std, dtype=np.float64), (c,)) if np.ndim(std) == 0 else np.asarray(std, float)
    if m.shape != (c,) or s.shape != (c,):
        raise UserError(f"mean/std: expected a scalar or {c} values, got {m.shape} and {s.shape}")
    if np.any(s == 0) or not np.all(np.isfinite(s)) or not np.all(np.isfinite(m)):
        raise UserError("std: must be finite and non-zero; mean must be finite")
    return list(scale / s), list(-m / s)


def unletterbox(array: Any, transform: Transform, method: str = "cv2_linear") -> np.ndarray:
    """Crop the letterboxed content of a model-input-sized HWC map and resize it back.

    Works for images, masks (use ``cv2_nearest``), logits and heatmaps with any number of
    channels; the output has the original ``(h, w)``.
    """
    arr = check_image("array", array, batched=None)
    m = transform.matrix
    if abs(m[0, 1]) > 1e-12 or abs(m[1, 0]) > 1e-12 or np.any(m[2] != [0, 0, 1]):
        raise UserError("transform: unletterbox needs a scale+translate transform (letterbox, resize, crop)")
    h, w = transform.src_size
    x0, y0 = int(round(m[0, 2])), int(round(m[1, 2]))
    nw, nh = int(round(w * m[0, 0])), int(round(h * m[1, 1]))
    inner = arr[..., y0 : y0 + nh, x0 : x0 + nw, :] if arr.ndim == 4 else arr[y0 : y0 + nh, x0 : x0 + nw]
    return resize(np.ascontiguousarray(inner), (h, w), method)


# ---------------------------------------------------------------------------------- crops


def center_crop(image: Any, size: int | tuple[int, int], *, return_transform: bool = False) -> Any:
    """Crop the center ``(h, w)`` (torchvision ``CenterCrop``: offsets ``round((H - h) / 2)``,
    zero padding when the crop is larger than the image). HWC/HW or NHWC."""
    arr = check_image("image", image, batched=None)
    ch, cw = check_size("size", size)
    batched = arr.ndim == 4
    h, w = arr.shape[1:3] if batched else arr.shape[:2]
    if ch > h or cw > w:
        pt, pl = max(ch - h, 0) // 2, max(cw - w, 0) // 2
        pb, pr = max(ch - h, 0) - pt, max(cw - w, 0) - pl
        pads = [(pt, pb), (pl, pr)] + [(0, 0)] * (arr.ndim - (3 if batched else 2))
        arr = np.pad(arr, ([(0, 0)] if batched else []) + pads)
        h, w = h + pt + pb, w + pl + pr
        offset = (-pt, -pl)
    else:
        offset = (0, 0)
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    out = arr[:, top : top + ch, left : left + cw] if batched else arr[top : top + ch, left : left + cw]
    if not return_transform:
        return out
    oh, ow = image.shape[1:3] if batched else np.shape(image)[:2]
    m = np.array([[1.0, 0.0, -(left + offset[1])], [0.0, 1.0, -(top + offset[0])], [0.0, 0.0, 1.0]])
    return out, Transform(m, (int(oh), int(ow)), (ch, cw))


def resize_shorter(image: Any, size: int, method: str = "pil_bilinear", **kwargs: Any) -> np.ndarray:
    """Resize so the shorter side is ``size`` keeping the aspect (torchvision ``Resize(int)``:
    the longer side is ``int(size * long / short)``)."""
    arr = check_image("image", image, batched=None)
    h, w = arr.shape[1:3] if arr.ndim == 4 else arr.shape[:2]
    s = int(size)
    if s <= 0:
        raise UserError(f"size: expected a positive int, got {size!r}")
    oh, ow = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
    return resize(arr, (oh, ow), method, **kwargs)


# ---------------------------------------------------------------------------------- pixels


def normalize(
    image: Any,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    scale: float = 1.0,
    *,
    channel_axis: int = -1,
    dtype: Any = np.float32,
) -> np.ndarray:
    """``(image * scale - mean) / std`` per channel along ``channel_axis``, in ``dtype``.

    The arithmetic is folded into one multiply-add in ``dtype`` (float32 by default).
    """
    arr = check_array("image", image, dtype_kind="fiub", allow_empty=False)
    if arr.ndim < 2:
        raise UserError(f"image: expected at least 2-D, got shape {arr.shape}")
    axis = channel_axis % arr.ndim
    c = arr.shape[axis] if (np.ndim(mean) or np.ndim(std)) else 1
    a, b = _affine_coefficients(mean, std, scale, c)
    shape = [1] * arr.ndim
    if c > 1 or np.ndim(mean) or np.ndim(std):
        shape[axis] = c
    av = np.asarray(a, dtype=dtype).reshape(shape)
    bv = np.asarray(b, dtype=dtype).reshape(shape)
    out = np.multiply(arr, av, dtype=dtype)
    out += bv
    return out


def hwc_to_chw(image: Any) -> np.ndarray:
    """HWC → CHW (or NHWC → NCHW), contiguous."""
    arr = check_array("image", image, ndim=(3, 4))
    return np.ascontiguousarray(np.moveaxis(arr, -1, -3))


def chw_to_hwc(image: Any) -> np.ndarray:
    """CHW → HWC (or NCHW → NHWC), contiguous."""
    arr = check_array("image", image, ndim=(3, 4))
    return np.ascontiguousarray(np.moveaxis(arr, -3, -1))


def bgr_to_rgb(image: Any, channel_axis: int = -1) -> np.ndarray:
    """Swap the first and third channel (BGR ↔ RGB; BGRA ↔ RGBA keeps alpha last)."""
    arr = check_array("image", image, dtype_kind="fiub", finite=False)
    if arr.ndim < 1:
        raise UserError("image: expected an array with a channel axis")
    axis = channel_axis % arr.ndim
    c = arr.shape[axis]
    if c not in (3, 4):
        raise UserError(f"image: expected 3 or 4 channels on axis {channel_axis}, got {c}")
    order = [2, 1, 0] + ([3] if c == 4 else [])
    return np.ascontiguousarray(np.take(arr, order, axis=axis))


rgb_to_bgr = bgr_to_rgb


def convert_dtype(image: Any, dtype: Any) -> np.ndarray:
    """Convert pixel values between dtypes, rescaling the value range.

    Integers map to floats in [0, 1] (divided by the type's max); floats in [0, 1] map to
    integers by ``round(x * max)`` with clipping; integer → integer rescales by the ratio
    of maxima with rounding; float → float is a cast.
    """
    arr = check_array("image", image, dtype_kind="fiub")
    dt = np.dtype(dtype)
    src = arr.dtype
    if dt.kind not in "fiub":
        raise UserError(f"dtype: expected a numeric dtype, got {dt}")
    if src == dt:
        return arr.copy()
    if src == np.bool_:
        arr = arr.astype(np.uint8) * 255 if dt.kind in "iu" or dt == np.bool_ else arr.astype(dt)
        return arr.astype(dt) if arr.dtype != dt else arr
    if dt == np.bool_:
        return arr != 0
    smax = float(np.iinfo(src).max) if src.kind in "iu" else 1.0
    dmax = float(np.iinfo(dt).max) if dt.kind in "iu" else 1.0
    if dt.kind == "f":
        return (arr.astype(np.float64) / smax).astype(dt) if src.kind in "iu" else arr.astype(dt)
    info = np.iinfo(dt)
    x = arr.astype(np.float64) * (dmax / smax)
    return np.clip(np.rint(x), max(info.min, 0) if src.kind == "u" else info.min, info.max).astype(dt)
