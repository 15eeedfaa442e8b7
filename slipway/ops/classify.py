"""Classification / generic post-processing: numerically stable softmax, log-softmax,
sigmoid, and batched sorted top-k. Float32 in gives float32 out."""

from __future__ import annotations

from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array


def _float(name: str, x: Any) -> np.ndarray:
    arr = check_array(name, x, dtype_kind="fiub", allow_empty=True)
    if arr.ndim == 0:
        raise UserError(f"{name}: expected at least a 1-D array, got a scalar")
    return arr if arr.dtype.kind == "f" else arr.astype(np.float32)


def _axis(name: str, arr: np.ndarray, axis: int) -> int:
    if not -arr.ndim <= axis < arr.ndim:
        raise UserError(f"{name}: axis {axis} is out of range for shape {arr.shape}")
    return axis % arr.ndim


def softmax(x: Any, axis: int = -1) -> np.ndarray:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (never overflows)."""
    arr = _float("x", x)
    ax = _axis("x", arr, axis)
    if arr.size == 0:
        return arr.copy()
    e = arr - arr.max(axis=ax, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=ax, keepdims=True)
    return e


def log_softmax(x: Any, axis: int = -1) -> np.ndarray:
    """``x - max - log(sum(exp(x - max)))`` along ``axis``."""
    arr = _float("x", x)
    ax = _axis("x", arr, axis)
    if arr.size == 0:
        return arr.copy()
    shifted = arr - arr.max(axis=ax, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=ax, keepdims=True))


def sigmoid(x: Any) -> np.ndarray:
    """``1 / (1 + exp(-x))`` computed from ``exp(-|x|)`` so no input overflows."""
    arr = _float("x", x)
    e = np.exp(-np.abs(arr))
    pos = arr >= 0
    out = np.where(pos, 1.0, e).astype(arr.dtype, copy=False)
    out /= 1.0 + e
    return out


def logit(p: float) -> float:
    """Inverse sigmoid of a probability (``±inf`` at 0 and 1): the logit a score threshold
    corresponds to, so raw logits can be filtered before any sigmoid is computed."""
    p = float(p)
    if p <= 0.0:
        return -np.inf
    if p >= 1.0:
        return np.inf
    return float(np.log(p / (1.0 - p)))


def topk(x: Any, k: int, axis: int = -1, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest (or smallest) values along ``axis`` and their indices, sorted.

    Batched over all other axes; uses ``argpartition`` then sorts only the k winners
    (equal winners keep the lower index first; which of several values tied at the k-th
    place is chosen is unspecified, as in ``torch.topk``). ``k`` beyond the axis is clipped.
    """
    arr = check_array("x", x, dtype_kind="fiub")
    if arr.ndim == 0:
        raise UserError("x: expected at least a 1-D array, got a scalar")
    ax = _axis("x", arr, axis)
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise UserError(f"k: expected a non-negative int, got {k!r}")
    n = arr.shape[ax]
    k = min(int(k), n)
    moved = np.moveaxis(arr, ax, -1)
    key = moved.astype(np.int64) if moved.dtype.kind in "ub" else moved
    key = -key if largest else key
    if k == 0:
        idx = np.zeros(moved.shape[:-1] + (0,), dtype=np.int64)
    elif k < n:
        part = np.argpartition(key, k - 1, axis=-1)[..., :k]
        pk = np.take_along_axis(key, part, -1)
        order = np.lexsort((part, pk), axis=-1)
        idx = np.take_along_axis(part, order, -1)
    else:
        idx = np.argsort(key, axis=-1, kind="stable")
    vals = np.take_along_axis(moved, idx, -1)
    return np.moveaxis(vals, -1, ax), np.moveaxis(idx.astype(np.int64), -1, ax)
