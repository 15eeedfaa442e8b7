"""Shared input validation for ``slipway.ops``.

Every check raises :class:`slipway.errors.UserError` with a one-line message that names the
argument, so a bad array from user code never turns into an obscure numpy traceback deep
inside an op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from slipway.errors import UserError

_KIND_NAMES = {"f": "float", "i": "signed int", "u": "unsigned int", "b": "bool", "c": "complex"}


def _fmt_ndim(ndim: int | Sequence[int]) -> str:
    if isinstance(ndim, int):
        return str(ndim)
    return " or ".join(str(n) for n in ndim)


def check_array(
    name: str,
    a: Any,
    ndim: int | Sequence[int] | None = None,
    dtype_kind: str | None = None,
    allow_empty: bool = True,
    finite: bool = True,
    last_dim: int | Sequence[int] | None = None,
) -> np.ndarray:
    """Turn ``a`` into an ndarray and check it; return the array (no copy when possible).

    ``ndim``: the allowed rank or ranks. ``dtype_kind``: allowed numpy kind letters, e.g.
    ``"fiu"`` for any real number, ``"f"`` for floats only. ``allow_empty``: whether an array
    with zero elements passes. ``finite``: reject NaN and inf (float arrays only).
    ``last_dim``: the allowed size or sizes of the last axis (e.g. 4 for boxes).
    """
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:
        raise UserError(f"{name}: cannot be converted to an array ({e})") from None
    if arr.dtype == object:
        raise UserError(f"{name}: expected a numeric array, got dtype object (ragged or non-numeric input?)")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise UserError(f"{name}: expected a {_fmt_ndim(ndim)}-D array, got shape {tuple(arr.shape)}")
    if dtype_kind is not None and arr.dtype.kind not in dtype_kind:
        want = "/".join(_KIND_NAMES.get(k, k) for k in dtype_kind)
        raise UserError(f"{name}: expected dtype {want}, got {arr.dtype}")
    if last_dim is not None and arr.ndim >= 1:
        allowed_last = (last_dim,) if isinstance(last_dim, int) else tuple(last_dim)
        if arr.shape[-1] not in allowed_last:
            raise UserError(f"{name}: expected last dimension {_fmt_ndim(last_dim)}, got shape {tuple(arr.shape)}")
    if not allow_empty and arr.size == 0:
        raise UserError(f"{name}: is empty (shape {tuple(arr.shape)})")
    if finite and arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "inf"
        raise UserError(f"{name}: contains {bad} values")
    return arr


def check_image(name: str, image: Any, batched: bool | None = False) -> np.ndarray:
    """Check an HWC / HW image (or NHWC batch when ``batched``; either when ``None``)."""
    ndim: tuple[int, ...] = {False: (2, 3), True: (4,), None: (2, 3, 4)}[batched]
    arr = check_array(name, image, ndim=ndim, dtype_kind="fiub", allow_empty=False)
    return arr


def check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    """Check a positive (or non-negative) finite scalar and return it as float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise UserError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return v


def check_range(name: str, value: Any, lo: float, hi: float) -> float:
    """Check a finite scalar in the closed range [lo, hi] and return it as float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected a number, got {value!r}") from None
    if not (lo <= v <= hi):
        raise UserError(f"{name}: expected a number in [{lo}, {hi}], got {value!r}")
    return v


def check_size(name: str, size: Any) -> tuple[int, int]:
    """Check a target size given as an int (square) or (height, width); return (h, w)."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise UserError(f"{name}: expected an int or (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise UserError(f"{name}: expected positive sizes, got {size!r}")
    return h, w


def check_same_len(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    """Check two arrays have the same length along axis 0."""
    if len(a) != len(b):
        raise UserError(f"{name_a} and {name_b}: lengths differ ({len(a)} vs {len(b)})")
