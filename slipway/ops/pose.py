"""Pose post-processing: keypoints from heatmaps (argmax, quarter-offset, DARK) and the
top-down affine that crops a person and maps keypoints back to the image.

Semantics follow MMPose 1.x (``get_heatmap_maximum``, ``refine_keypoints``,
``refine_keypoints_dark``, ``get_warp_matrix``), vectorized over instances and keypoints.
Keypoint coordinates are ``(x, y)`` in heatmap pixels (integer = pixel center).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_size
from slipway.ops.geometry import Transform


def _heatmaps(heatmaps: Any) -> tuple[np.ndarray, bool]:
    hm = check_array("heatmaps", heatmaps, ndim=(3, 4), dtype_kind="f", allow_empty=False)
    return (hm, True) if hm.ndim == 4 else (hm[None], False)


def heatmap_argmax(heatmaps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Peak location ``[N, K, 2]`` (x, y; float32) and value ``[N, K]`` of each heatmap.

    ``heatmaps`` is ``[N, K, H, W]`` (or ``[K, H, W]``); a keypoint whose maximum is <= 0
    gets location (-1, -1), as in MMPose.
    """
    hm, batched = _heatmaps(heatmaps)
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, h * w)
    idx = flat.argmax(axis=2)
    vals = np.take_along_axis(flat, idx[..., None], 2)[..., 0]
    locs = np.stack([idx % w, idx // w], -1).astype(np.float32)
    locs[vals <= 0] = -1
    return (locs, vals) if batched else (locs[0], vals[0])


def refine_quarter_offset(keypoints: Any, heatmaps: Any) -> np.ndarray:
    """Shift each argmax location a quarter pixel toward its higher neighbour.

    MMPose ``refine_keypoints`` borders: x moves only when ``1 < x < W - 1``, y only when
    ``1 < y < H - 1`` (the HRNet reference skips column/row 1 too).
    """
    hm, batched = _heatmaps(heatmaps)
    kp = check_array("keypoints", keypoints, ndim=(2, 3), dtype_kind="f", last_dim=(2, 3))
    kp = (kp if batched else kp[None]).astype(np.float32, copy=True)
    n, k, h, w = hm.shape
    x, y = kp[..., 0].astype(np.int64), kp[..., 1].astype(np.int64)
    ni, ki = np.indices((n, k))
    okx = (x > 1) & (x < w - 1) & (y > 0) & (y < h)
    oky = (y > 1) & (y < h - 1) & (x > 0) & (x < w)
    xc, yc = np.clip(x, 1, w - 2), np.clip(y, 1, h - 2)
    dx = np.where(okx, hm[ni, ki, np.clip(y, 0, h - 1), xc + 1] - hm[ni, ki, np.clip(y, 0, h - 1), xc - 1], 0.0)
    dy = np.where(oky, hm[ni, ki, yc + 1, np.clip(x, 0, w - 1)] - hm[ni, ki, yc - 1, np.clip(x, 0, w - 1)], 0.0)
    kp[..., 0] += np.sign(dx).astype(np.float32) * 0.25
    kp[..., 1] += np.sign(dy).astype(np.float32) * 0.25
    return kp if batched else kp[0]


def blur_heatmaps(heatmaps: Any, kernel: int = 11) -> np.ndarray:
    """Gaussian-blur each heatmap (zero border, sigma from ``kernel``) and rescale it to
    keep its original maximum — the DARK "distribution modulation" step."""
    hm, batched = _heatmaps(heatmaps)
    if kernel < 1 or kernel % 2 == 0:
        raise UserError(f"kernel: expected a positive odd int, got {kernel!r}")
    n, k, h, w = hm.shape
    stack = np.ascontiguousarray(hm.reshape(n * k, h, w).transpose(1, 2, 0), dtype=np.float32)
    out = np.empty_like(stack)
    for c in range(0, n * k, 128):  # OpenCV 5 maps at most 128 channels into a Mat
        part = cv2.GaussianBlur(stack[..., c : c + 128], (kernel, kernel), 0, borderType=cv2.BORDER_CONSTANT)
        out[..., c : c + 128] = part.reshape(h, w, -1)
    out = out.transpose(2, 0, 1).reshape(n, k, h, w)
    orig = hm.reshape(n, k, -1).max(-1)
    now = out.reshape(n, k, -1).max(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out *= np.where(now != 0, orig / now, 0.0)[..., None, None].astype(np.float32)
    return out if batched else out[0]


def refine_dark(keypoints: Any, heatmaps: Any, kernel: int = 11) -> np.ndarray:
    """DARK (Zhang et al., CVPR 2020): sub-pixel keypoints from a second-order Taylor
    expansion of the log of the blurred heatmap around the argmax location.

    ``offset = -H^-1 g`` with central differences (step 1 for the gradient, step 2 for the
    Hessian); applied when ``1 < x < W - 2`` and ``1 < y < H - 2`` and the Hessian is
    invertible. Log of ``max(blurred, 1e-10)`` as MMPose 1.x.
    """
    hm, batched = _heatmaps(heatmaps)
    kp = check_array("keypoints", keypoints, ndim=(2, 3), dtype_kind="f", last_dim=(2, 3))
    kp = (kp if batched else kp[None]).astype(np.float32, copy=True)
    n, k, h, w = hm.shape
    lg = np.log(np.maximum(blur_heatmaps(hm, kernel), 1e-10))
    x, y = kp[..., 0].astype(np.int64), kp[..., 1].astype(np.int64)
    ok = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2)
    xc, yc = np.clip(x, 2, w - 3), np.clip(y, 2, h - 3)
    ni, ki = np.indices((n, k))

    def at(dy: int, dx: int) -> np.ndarray:
        return lg[ni, ki, yc + dy, xc + dx].astype(np.float64)

    c = at(0, 0)
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
    dyy = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    ok &= det != 0
    safe = np.where(ok, det, 1.0)
    ox = -(dyy * dx - dxy * dy) / safe
    oy = -(-dxy * dx + dxx * dy) / safe
    kp[..., 0] += np.where(ok, ox, 0.0).astype(np.float32)
    kp[..., 1] += np.where(ok, oy, 0.0).astype(np.float32)
    return kp if batched else kp[0]


def decode_heatmaps(heatmaps: Any, method: str = "quarter", kernel: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``[N, K, 2]`` (heatmap pixels) and scores ``[N, K]`` from heatmaps.

    ``method``: ``argmax`` (integer peak), ``quarter`` (peak + quarter offset, the HRNet
    / SimpleBaseline default) or ``dark`` (Taylor refinement, ``kernel`` blur size).
    """
    if method not in ("argmax", "quarter", "dark"):
        raise UserError(f"method: expected 'argmax', 'quarter' or 'dark', got {method!r}")
    locs, vals = heatmap_argmax(heatmaps)
    if method == "quarter":
        locs = refine_quarter_offset(locs, heatmaps)
    elif method == "dark":
        locs = refine_dark(locs, heatmaps, kernel)
    return locs, vals


# ---------------------------------------------------------------------------------- top-down


def top_down_transform(
    center: Sequence[float],
    scale: Sequence[float],
    output_size: int | tuple[int, int],
    rotation: float = 0.0,
    shift: Sequence[float] = (0.0, 0.0),
) -> Transform:
    """The affine that crops a person box (``center`` (x, y), ``scale`` (w, h) in pixels,
    ``rotation`` degrees counter-clockwise) into a model input of ``output_size`` (h, w).

    MMPose ``get_warp_matrix`` (fixed aspect ratio): box width maps to the output width,
    the box center to the output center. Use with :func:`slipway.ops.warp_affine` and map
    keypoints back with ``transform.to_original(points)``.
    """
    c = check_array("center", center, ndim=1, dtype_kind="fiu", last_dim=2).astype(np.float64)
    s = check_array("scale", scale, ndim=1, dtype_kind="fiu", last_dim=2).astype(np.float64)
    if s[0] <= 0:
        raise UserError(f"scale: width must be positive, got {s[0]}")
    oh, ow = check_size("output_size", output_size)
    k = ow / s[0]
    r = np.deg2rad(float(rotation))
    cs, sn = np.cos(r), np.sin(r)
    lin = k * np.array([[cs, sn], [-sn, cs]])  # scale * R(-rotation)
    src_center = c + s * np.asarray(shift, dtype=np.float64)
    t = np.array([ow / 2.0, oh / 2.0]) - lin @ src_center
    m = np.eye(3)
    m[:2, :2], m[:2, 2] = lin, t
    return Transform(m, (0, 0), (oh, ow))


def keypoints_to_image(
    keypoints: Any,
    center: Any,
    scale: Any,
    heatmap_size: int | tuple[int, int],
) -> np.ndarray:
    """Map keypoints ``[N, K, 2+]`` from heatmap pixels to image pixels (MMPose 1.x
    top-down): ``kp / heatmap_size * scale + center - scale / 2`` with per-instance
    ``center`` and ``scale`` ``[N, 2]``. Extra columns (scores) are kept."""
    kp = check_array("keypoints", keypoints, ndim=3, dtype_kind="f")
    if kp.shape[-1] < 2:
        raise UserError(f"keypoints: expected [N, K, 2+], got shape {kp.shape}")
    c = check_array("center", center, ndim=2, dtype_kind="fiu", last_dim=2)
    s = check_array("scale", scale, ndim=2, dtype_kind="fiu", last_dim=2)
    if not (kp.shape[0] == c.shape[0] == s.shape[0]):
        raise UserError(f"keypoints, center, scale: batch sizes differ ({kp.shape[0]}, {c.shape[0]}, {s.shape[0]})")
    hh, hw = check_size("heatmap_size", heatmap_size)
    out = kp.astype(np.float32, copy=True)
    size = np.array([hw, hh], np.float64)
    xy = kp[..., :2] / size * s[:, None, :] + c[:, None, :] - s[:, None, :] / 2
    out[..., :2] = xy
    return out
