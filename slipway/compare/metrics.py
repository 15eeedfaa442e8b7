"""Per-tensor error metrics: max abs / rel error (as in verification), cosine similarity, SNR."""

from __future__ import annotations

import numpy as np

from slipway.compare.types import TensorDiff
from slipway.verify import compare as compare_output

__all__ = ["tensor_diff", "cosine", "snr_db"]


def cosine(ref: np.ndarray, act: np.ndarray) -> float:
    """Cosine similarity of two flattened float64 arrays: 1 when both are zero, 0 when one is."""
    # Element-wise sums, not BLAS dot products: BLAS threads fight the engines' spinning pools.
    na, nb = float(np.sqrt(np.sum(ref * ref))), float(np.sqrt(np.sum(act * act)))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.sum(ref * act) / (na * nb))


def snr_db(ref: np.ndarray, act: np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (ref - act)^2)``: ``inf`` when identical, ``-inf`` for a zero reference."""
    noise = float(np.sum((ref - act) ** 2))
    if noise == 0.0:
        return float("inf")
    signal = float(np.sum(ref**2))
    return 10.0 * float(np.log10(signal / noise)) if signal > 0.0 else float("-inf")


def tensor_diff(name: str, ref: np.ndarray, act: np.ndarray, *, atol: float, rtol: float, node: str = "",
                op_type: str = "", b_name: str = "", via: str = "") -> TensorDiff:
    """Compare ``act`` (from B) with ``ref`` (from A), both cast to float64.

    ``max_abs``, ``max_rel`` and the pass/fail rule (``max_abs <= atol + rtol * max|ref|``) are
    those of :func:`slipway.verify.compare`. Cosine and SNR use the elements that are
    finite in both; a non-finite mismatch makes ``max_abs`` infinite and the SNR ``-inf``.
    Different shapes fail; their cosine and SNR are computed on the flattened values when the
    sizes agree, else they are NaN.
    """
    ref, act = np.asarray(ref), np.asarray(act)
    r = ref.astype(np.float64).ravel()
    a = act.astype(np.float64).ravel()
    check = compare_output(name, r.reshape(ref.shape), a.reshape(act.shape), atol=atol, rtol=rtol)
    if r.size != a.size:
        cos, snr = float("nan"), float("nan")
    else:
        finite = np.isfinite(r) & np.isfinite(a)
        cos, snr = cosine(r[finite], a[finite]), snr_db(r[finite], a[finite])
        if not np.isfinite(check.max_abs):
            snr = float("-inf")
    ok = check.ok and ref.shape == act.shape
    return TensorDiff(
        name=name, node=node, op_type=op_type, b_name=b_name or name, via=via,
        shape_a=[int(d) for d in ref.shape], shape_b=[int(d) for d in act.shape],
        dtype_a=str(ref.dtype), dtype_b=str(act.dtype), max_abs=check.max_abs, max_rel=check.max_rel,
        cosine=cos, snr_db=snr, allowed=check.allowed, ok=ok,
    )
