"""Resize with explicit, named semantics that match a reference library pixel for pixel.

A model trained with torchvision transforms (PIL or torch ``interpolate``) and served with
``cv2.resize`` sees different pixels: the three libraries disagree on where a pixel center
is, whether downscaling low-pass filters (antialias), the bicubic constant and the rounding
of uint8 results. :func:`resize` takes the method by its library name:

========================  =============================================================
``cv2_nearest``            ``cv2.resize(..., INTER_NEAREST)``: src = floor(dst * in/out)
``cv2_nearest_exact``      ``INTER_NEAREST_EXACT``: src = floor((dst + 0.5) * in/out)
``cv2_linear``             ``INTER_LINEAR`` (half-pixel centers, no antialias)
``cv2_cubic``              ``INTER_CUBIC`` (a = -0.75, no antialias)
``cv2_area``               ``INTER_AREA`` (pixel-area average when shrinking)
``cv2_lanczos4``           ``INTER_LANCZOS4``
``pil_nearest``            ``Image.resize(NEAREST)``: src = floor((dst + 0.5) * in/out)
``pil_box`` ...            ``BOX``, ``BILINEAR``, ``HAMMING``, ``BICUBIC`` (a = -0.5),
``pil_lanczos``            ``LANCZOS``: filters widened by the scale when shrinking
                           (antialias); uint8 uses PIL's 22-bit fixed-point arithmetic
                           and its two-pass (horizontal, then vertical) rounding
``torch_nearest``          ``F.interpolate(mode="nearest")`` (float32 index math)
``torch_nearest_exact``    ``mode="nearest-exact"``
``torch_bilinear``         ``mode="bilinear"``, honours ``align_corners`` and ``antialias``
``torch_bicubic``          ``mode="bicubic"`` (a = -0.75; a = -0.5 with ``antialias``)
``torch_area``             ``mode="area"`` (adaptive average pooling)
========================  =============================================================

The cv2 methods call OpenCV; the PIL and torch methods are separable numpy resamplers that
need neither library. Images are HWC or HW, batches NHWC; ``size`` is ``(height, width)``.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_image, check_size

CV2_METHODS = {
    "cv2_nearest": cv2.INTER_NEAREST,
    "cv2_nearest_exact": cv2.INTER_NEAREST_EXACT,
    "cv2_linear": cv2.INTER_LINEAR,
    "cv2_cubic": cv2.INTER_CUBIC,
    "cv2_area": cv2.INTER_AREA,
    "cv2_lanczos4": cv2.INTER_LANCZOS4,
}
PIL_METHODS = ("pil_nearest", "pil_box", "pil_bilinear", "pil_hamming", "pil_bicubic", "pil_lanczos")
TORCH_METHODS = ("torch_nearest", "torch_nearest_exact", "torch_bilinear", "torch_bicubic", "torch_area")
METHODS = (*CV2_METHODS, *PIL_METHODS, *TORCH_METHODS)

_CV_MAX_CHANNELS = 128  # OpenCV 5 maps at most 128 trailing channels (CV_CN_MAX)
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
_PIL_PRECISION_BITS = 32 - 8 - 2


def resize(
    image: np.ndarray,
    size: int | tuple[int, int],
    method: str = "cv2_linear",
    *,
    align_corners: bool = False,
    antialias: bool = False,
) -> np.ndarray:
    """Resize an HWC/HW image or NHWC batch to ``size = (height, width)`` with ``method``.

    ``align_corners`` and ``antialias`` apply to the torch methods only (as in
    ``torch.nn.functional.interpolate``); PIL filters always antialias, OpenCV never does.
    The result keeps the input dtype (integers are rounded and clipped).
    """
    if method not in METHODS:
        raise UserError(f"method: unknown resize method {method!r}; choose one of {', '.join(METHODS)}")
    if (align_corners or antialias) and not method.startswith("torch_"):
        raise UserError(f"align_corners/antialias apply to torch_* methods only, not {method!r}")
    if align_corners and method in ("torch_nearest", "torch_nearest_exact", "torch_area"):
        raise UserError(f"align_corners: not defined for {method!r} (as in torch)")
    arr = check_image("image", image, batched=None)
    oh, ow = check_size("size", size)
    if method in CV2_METHODS:
        return _resize_cv2(arr, oh, ow, CV2_METHODS[method])
    batched = arr.ndim == 4
    x = arr if batched else arr[None]
    if x.ndim == 3:
        x = x[..., None]
    if method.startswith("pil_"):
        out = _resize_pil(x, oh, ow, method[4:])
    else:
        out = _resize_torch(x, oh, ow, method[6:], align_corners, antialias)
    if arr.ndim == 2:
        out = out[..., 0]
    return out if batched else out[0]


def _resize_cv2(arr: np.ndarray, oh: int, ow: int, flag: int) -> np.ndarray:
    """cv2.resize per image, converting dtypes OpenCV lacks and chunking channels > 128."""
    dtype = arr.dtype
    work = arr
    if dtype == np.bool_:
        work = arr.view(np.uint8)
    elif dtype.type not in _CV2_DTYPES:
        work = arr.astype(np.float64 if dtype.kind in "iu" else np.float32)
    if work.ndim == 4:
        out = np.stack([_resize_cv2_one(im, oh, ow, flag) for im in work])
    else:
        out = _resize_cv2_one(work, oh, ow, flag)
    if out.dtype != dtype:
        out = _cast(out, dtype)
    return out


def _resize_cv2_one(im: np.ndarray, oh: int, ow: int, flag: int) -> np.ndarray:
    if im.ndim == 3 and im.shape[2] > _CV_MAX_CHANNELS:
        parts = [
            _resize_cv2_one(im[..., c : c + _CV_MAX_CHANNELS], oh, ow, flag)
            for c in range(0, im.shape[2], _CV_MAX_CHANNELS)
        ]
        return np.concatenate([p if p.ndim == 3 else p[..., None] for p in parts], axis=2)
    out = cv2.resize(np.ascontiguousarray(im), (ow, oh), interpolation=flag)
    if im.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results to ``dtype``, rounding and clipping for integers."""
    if dtype == np.bool_:
        return x > 0.5 if x.dtype.kind == "f" else x.astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


# ---------------------------------------------------------------------------------- filters


def _f_box(x: np.ndarray) -> np.ndarray:
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _f_triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(1.0 - np.abs(x), 0.0)


def _f_hamming(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(ax == 0, 1.0, np.sin(np.pi * ax) / (np.pi * ax))
    return np.where(ax >= 1.0, 0.0, s * (0.54 + 0.46 * np.cos(np.pi * ax)))


def _cubic(a: float) -> Callable[[np.ndarray], np.ndarray]:
    def f(x: np.ndarray) -> np.ndarray:
        ax = np.abs(x)
        near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
        far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
        return np.where(ax < 1.0, near, np.where(ax < 2.0, far, 0.0))

    return f


def _f_lanczos(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(x == 0, 1.0, np.sin(np.pi * x) / (np.pi * x)) * np.where(
            x == 0, 1.0, np.sin(np.pi * x / 3.0) / (np.pi * x / 3.0)
        )
    return np.where(np.abs(x) < 3.0, s, 0.0)


_PIL_FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "box": (_f_box, 0.5),
    "bilinear": (_f_triangle, 1.0),
    "hamming": (_f_hamming, 1.0),
    "bicubic": (_cubic(-0.5), 2.0),
    "lanczos": (_f_lanczos, 3.0),
}


# ---------------------------------------------------------------------------------- weights


def _window_weights(
    in_size: int,
    out_size: int,
    scale: float,
    filt: Callable[[np.ndarray], np.ndarray],
    support: float,
    antialias: bool,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """PIL-style (and torch antialias) taps: a filter window around each output center.

    Returns ``idx`` and ``w`` of shape [out, K]; unused taps point at 0 with weight 0.
    """
    fscale = max(scale, 1.0) if antialias else 1.0
    sup = support * fscale
    center = (np.arange(out_size, dtype=dtype) + dtype(0.5)) * dtype(scale)
    xmin = np.maximum((center - sup + 0.5).astype(np.int64), 0)
    xmax = np.minimum((center + sup + 0.5).astype(np.int64), in_size)
    k = max(int(np.max(xmax - xmin)), 1)
    taps = np.arange(k)
    pos = xmin[:, None] + taps[None, :]
    valid = taps[None, :] < (xmax - xmin)[:, None]
    w = filt((pos - center[:, None] + dtype(0.5)) * dtype(1.0 / fscale)) * valid
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    return np.where(valid, pos, 0), w


def _apply_taps(x: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray, acc: type) -> np.ndarray:
    """out[..., o, ...] = sum_k w[o, k] * x[..., idx[o, k], ...] along ``axis`` (acc dtype)."""
    shape = [1] * x.ndim
    shape[axis] = idx.shape[0]
    out = np.zeros(x.shape[:axis] + (idx.shape[0],) + x.shape[axis + 1 :], dtype=acc)
    for k in range(idx.shape[1]):
        wk = w[:, k]
        if not wk.any():
            continue
        out += np.take(x, idx[:, k], axis=axis).astype(acc, copy=False) * wk.astype(acc).reshape(shape)
    return out


# ---------------------------------------------------------------------------------- PIL


def _resize_pil(x: np.ndarray, oh: int, ow: int, name: str) -> np.ndarray:
    """PIL ``Image.resize`` semantics on an NHWC array."""
    _, ih, iw, _ = x.shape
    if name == "nearest":
        return x[:, _pil_nearest_index(ih, oh)][:, :, _pil_nearest_index(iw, ow)]
    filt, support = _PIL_FILTERS[name]
    out = x
    # PIL resamples horizontally first, then vertically, rounding uint8 in between.
    for axis, in_size, out_size in ((2, iw, ow), (1, ih, oh)):
        if in_size == out_size:
            continue
        idx, w = _window_weights(in_size, out_size, in_size / out_size, filt, support, True)
        out = _pil_pass(out, axis, idx, w)
    return out if out is not x else x.copy()


def _pil_nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """PIL NEAREST: an affine walk that adds in/out per pixel in double precision.

    The running sum (not ``(i + 0.5) * scale``) decides exact-integer ties, so it is
    reproduced with a sequential cumulative sum.
    """
    scale = in_size / out_size
    steps = np.full(out_size, scale)
    steps[0] = scale * 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), in_size - 1)


def _pil_pass(x: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """One PIL resampling pass: fixed-point for uint8, double for float images."""
    if x.dtype == np.uint8:
        bits = _PIL_PRECISION_BITS
        one = float(1 << bits)
        kk = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one))
        acc = _apply_taps(x, axis, idx, kk, np.float64)  # exact: |sum| < 2**53
        acc = np.floor((acc + (1 << (bits - 1))) / one)
        return np.clip(acc, 0, 255).astype(np.uint8)
    if x.dtype.kind in "iub":
        return _cast(_apply_taps(x, axis, idx, w, np.float64), x.dtype)
    return _apply_taps(x, axis, idx, w, np.float64).astype(x.dtype if x.dtype.kind == "f" else np.float32)


# ---------------------------------------------------------------------------------- torch


def _torch_scale(in_size: int, out_size: int, align_corners: bool) -> np.float32:
    if align_corners:
        return np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.0)
    return np.float32(in_size) / np.float32(out_size)


def _torch_taps(in_size: int, out_size: int, mode: str, align: bool, aa: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index/weight taps of ``F.interpolate`` along one axis (float32 index math as torch)."""
    scale = _torch_scale(in_size, out_size, align)
    i = np.arange(out_size, dtype=np.float32)
    if mode in ("nearest", "nearest_exact"):
        off = np.float32(0.5) if mode == "nearest_exact" else np.float32(0.0)
        src = np.minimum(np.floor((i + off) * _torch_scale(in_size, out_size, False)).astype(np.int64), in_size - 1)
        return src[:, None], np.ones((out_size, 1))
    if mode == "area":
        start = (np.arange(out_size) * in_size) // out_size
        end = -((-(np.arange(out_size) + 1) * in_size) // out_size)
        k = int((end - start).max())
        pos = start[:, None] + np.arange(k)[None, :]
        valid = pos < end[:, None]
        return np.where(valid, pos, 0), valid / (end - start)[:, None]
    if aa:
        filt, support = (_f_triangle, 1.0) if mode == "bilinear" else (_cubic(-0.5), 2.0)
        return _window_weights(in_size, out_size, float(scale), filt, support, True, np.float32)
    return _torch_interp_taps(in_size, i, scale, mode, align)


def _torch_interp_taps(
    in_size: int, i: np.ndarray, scale: np.float32, mode: str, align: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Non-antialiased linear (2 taps) / cubic (4 taps) interpolation weights."""
    src = scale * i if align else scale * (i + np.float32(0.5)) - np.float32(0.5)
    if mode == "bilinear":
        src = np.maximum(src, np.float32(0.0))
        i0 = src.astype(np.int64)
        lam = src - i0.astype(np.float32)
        i1 = np.minimum(i0 + 1, in_size - 1)
        return np.stack([i0, i1], 1), np.stack([np.float32(1.0) - lam, lam], 1)
    i0 = np.floor(src).astype(np.int64)
    t = (src - i0.astype(np.float32)).astype(np.float64)
    f = _cubic(-0.75)
    w = np.stack([f(t + 1.0), f(t), f(1.0 - t), f(2.0 - t)], 1)
    idx = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return idx, w


def _resize_torch(x: np.ndarray, oh: int, ow: int, mode: str, align: bool, aa: bool) -> np.ndarray:
    """``torch.nn.functional.interpolate`` semantics on an NHWC array (float32 math)."""
    _, ih, iw, _ = x.shape
    if aa and mode not in ("bilinear", "bicubic"):
        raise UserError(f"antialias: only torch_bilinear and torch_bicubic support it, not torch_{mode}")
    if mode in ("nearest", "nearest_exact"):
        hi = _torch_taps(ih, oh, mode, False, False)[0][:, 0]
        wi = _torch_taps(iw, ow, mode, False, False)[0][:, 0]
        return x[:, hi][:, :, wi]
    acc = np.float64 if x.dtype == np.float64 else np.float32
    out = x
    for axis, in_size, out_size in ((2, iw, ow), (1, ih, oh)):
        idx, w = _torch_taps(in_size, out_size, mode, align, aa)
        out = _apply_taps(out, axis, idx, w, acc)
    return out if x.dtype.kind == "f" else _cast(out, x.dtype)
