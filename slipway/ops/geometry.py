"""Geometric transforms: a projective :class:`Transform` that maps boxes and points between
an original image and a model input, and OpenCV affine / perspective warps that return one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_image, check_size


@dataclass(frozen=True)
class Transform:
    """A projective map (3x3 ``matrix``) from original-image to model-input coordinates.

    ``src_size`` is the original ``(h, w)``, ``dst_size`` the model input ``(h, w)``.
    Letterbox, resize and crop transforms use corner coordinates (a box edge at x maps to
    x * scale + pad, so box edges map exactly); warp transforms use OpenCV's convention
    (pixel centers at integers), the same matrix ``cv2.warpAffine`` takes.
    """

    matrix: np.ndarray
    src_size: tuple[int, int]
    dst_size: tuple[int, int]

    @property
    def inverse_matrix(self) -> np.ndarray:
        """The 3x3 map from model-input to original coordinates."""
        return np.linalg.inv(self.matrix)

    def inverse(self) -> Transform:
        """The transform from model input back to the original image."""
        return Transform(self.inverse_matrix, self.dst_size, self.src_size)

    def then(self, other: Transform) -> Transform:
        """The composition: apply ``self`` first, then ``other``."""
        return Transform(other.matrix @ self.matrix, self.src_size, other.dst_size)

    def to_input(self, coords: Any, kind: str = "auto", clip: bool = False) -> np.ndarray:
        """Map boxes ``[..., 4+]`` (xyxy) or points ``[..., 2|3]`` into model-input coords."""
        return _apply(self.matrix, coords, kind, self.dst_size if clip else None)

    def to_original(self, coords: Any, kind: str = "auto", clip: bool | None = None) -> np.ndarray:
        """Map boxes or points from model-input coordinates back to the original image.

        ``kind``: ``"boxes"`` (first 4 columns are x1, y1, x2, y2; extra columns such as
        score and class are kept), ``"points"`` (first 2 columns are x, y; a third column
        such as a keypoint score is kept) or ``"auto"`` (last dim 4 → boxes, 2 or 3 →
        points). ``clip`` (default: True for boxes, False for points) clips to the image.
        """
        resolved = _resolve_kind(coords, kind)
        do_clip = (resolved == "boxes") if clip is None else clip
        return _apply(self.inverse_matrix, coords, resolved, self.src_size if do_clip else None)


def _resolve_kind(coords: Any, kind: str) -> str:
    if kind in ("boxes", "points"):
        return kind
    if kind != "auto":
        raise UserError(f"kind: expected 'auto', 'boxes' or 'points', got {kind!r}")
    last = np.shape(coords)[-1] if np.ndim(coords) else 0
    if last == 4:
        return "boxes"
    if last in (2, 3):
        return "points"
    raise UserError(f"coords: last dimension {last} is ambiguous; pass kind='boxes' or kind='points'")


def _project(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 projective matrix to points ``[..., 2]`` (float64)."""
    x, y = xy[..., 0], xy[..., 1]
    w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    return np.stack([(m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w], -1)


def _apply(m: np.ndarray, coords: Any, kind: str, clip_to: tuple[int, int] | None) -> np.ndarray:
    kind = _resolve_kind(coords, kind)
    need = 4 if kind == "boxes" else 2
    arr = check_array("coords", coords, dtype_kind="fiu")
    if arr.ndim == 0 or arr.shape[-1] < need:
        raise UserError(f"coords: {kind} need a last dimension of at least {need}, got shape {arr.shape}")
    out = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32, copy=True)
    if kind == "points":
        xy = _project(m, arr[..., :2].astype(np.float64))
        if clip_to is not None:
            xy = np.clip(xy, 0, [clip_to[1], clip_to[0]])
        out[..., :2] = xy
        return out
    b = arr[..., :4].astype(np.float64)
    corners = np.stack([b[..., [0, 1]], b[..., [2, 1]], b[..., [0, 3]], b[..., [2, 3]]], -2)
    p = _project(m, corners)
    box = np.concatenate([p.min(-2), p.max(-2)], -1)
    if clip_to is not None:
        h, w = clip_to
        box = np.clip(box, 0, [w, h, w, h])
    out[..., :4] = box
    return out


def scale_transform(src_size: tuple[int, int], dst_size: tuple[int, int]) -> Transform:
    """The transform of a plain (stretching) resize from ``src_size`` to ``dst_size``."""
    (sh, sw), (dh, dw) = check_size("src_size", src_size), check_size("dst_size", dst_size)
    m = np.diag([dw / sw, dh / sh, 1.0])
    return Transform(m, (sh, sw), (dh, dw))


# ---------------------------------------------------------------------------------- warps

_BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101}


def warp_affine(
    image: Any,
    matrix: Any,
    size: int | tuple[int, int],
    *,
    interpolation: int = cv2.INTER_LINEAR,
    border: str = "constant",
    border_value: float | Sequence[float] = 0,
    return_transform: bool = False,
) -> Any:
    """``cv2.warpAffine`` with a 2x3 ``matrix`` (source → output, OpenCV pixel centers);
    ``size`` is the output ``(h, w)``. The transform maps points between the two images."""
    m = check_array("matrix", matrix, ndim=2, dtype_kind="fiu")
    if m.shape not in ((2, 3), (3, 3)):
        raise UserError(f"matrix: expected shape (2, 3) or (3, 3), got {m.shape}")
    full = np.vstack([m[:2].astype(np.float64), [0.0, 0.0, 1.0]])
    return _warp(image, full, size, interpolation, border, border_value, return_transform, affine=True)


def warp_perspective(
    image: Any,
    matrix: Any,
    size: int | tuple[int, int],
    *,
    interpolation: int = cv2.INTER_LINEAR,
    border: str = "constant",
    border_value: float | Sequence[float] = 0,
    return_transform: bool = False,
) -> Any:
    """``cv2.warpPerspective`` with a 3x3 homography (source → output); see :func:`warp_affine`."""
    m = check_array("matrix", matrix, ndim=2, dtype_kind="fiu")
    if m.shape != (3, 3):
        raise UserError(f"matrix: expected shape (3, 3), got {m.shape}")
    if abs(np.linalg.det(m.astype(np.float64))) < 1e-12:
        raise UserError("matrix: is singular (not invertible)")
    return _warp(image, m.astype(np.float64), size, interpolation, border, border_value, return_transform, False)


def _warp(
    image: Any,
    m: np.ndarray,
    size: Any,
    interpolation: int,
    border: str,
    border_value: Any,
    return_transform: bool,
    affine: bool,
) -> Any:
    arr = check_image("image", image, batched=None)
    h, w = check_size("size", size)
    if border not in _BORDERS:
        raise UserError(f"border: expected one of {', '.join(_BORDERS)}, got {border!r}")
    if arr.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        raise UserError(f"image: dtype {arr.dtype} is not supported by OpenCV warps; convert it first")
    bv = (
        tuple(float(v) for v in np.broadcast_to(np.asarray(border_value, float), (4,)))
        if np.ndim(border_value) == 0
        else tuple(float(v) for v in border_value)
    )
    kw = dict(flags=interpolation, borderMode=_BORDERS[border], borderValue=bv)

    def one(im: np.ndarray) -> np.ndarray:
        if affine:
            return cv2.warpAffine(np.ascontiguousarray(im), m[:2], (w, h), **kw)
        return cv2.warpPerspective(np.ascontiguousarray(im), m, (w, h), **kw)

    out = np.stack([one(im) for im in arr]) if arr.ndim == 4 else one(arr)
    if arr.ndim >= 3 and out.ndim == arr.ndim - 1:
        out = out[..., None]
    if not return_transform:
        return out
    src = arr.shape[1:3] if arr.ndim == 4 else arr.shape[:2]
    return out, Transform(m, (int(src[0]), int(src[1])), (h, w))
