"""Calibration: streaming activation statistics, the four range methods, and the cache file.

:func:`collect` runs the FP32 model in onnxruntime with the chosen tensors exposed as outputs,
one batch at a time, and folds each batch into per-tensor :class:`TensorStats` (running min/max
and a histogram of ``|x|``), dropping the activations at once: memory is one batch's outputs plus
``bins`` counts per tensor, whatever the size of the data. The histogram covers ``[0, hist_max]``;
when a batch exceeds ``hist_max`` the range grows by a power of two ``k`` and every ``k``
neighbouring bins merge into one, so counts stay exact at the new bin edges.

:func:`ranges` turns the stats into a clipping range per tensor with one of :data:`METHODS`:

* ``minmax``: ``(min, max)``; symmetric ``±max|x|``.
* ``percentile``: the ``percentile`` of ``|x|`` (linear inside a bin).
* ``entropy``: TensorRT's KL-divergence search over the 2048-bin ``|x|`` histogram: candidate
  thresholds of ``i`` bins (``i`` from ``num_quant_levels`` to the last non-empty bin);
  ``P = hist[:i]`` with the outliers folded into its last bin; ``Q = hist[:i]`` merged into
  ``num_quant_levels`` levels and expanded back over the bins where ``P`` is non-zero; both
  smoothed (``eps = 1e-4``, as MXNet/TensorRT); the ``i`` minimizing ``KL(P||Q)`` gives the
  threshold ``(i + 0.5) * bin_width``. Bin 0, where the exact zeros of a Relu pile up, counts
  like bin 1 (as NVIDIA's pytorch-quantization does). All ``i`` are evaluated at once.
* ``mse``: the threshold minimizing the expected squared error of int8 fake quantization:
  rounding (``x^2`` below half a step, ``step^2 / 12`` above) plus clipping ``(|x| - T)^2``.

Histogram methods give a threshold ``T`` on ``|x|``. Symmetric ranges are ``(-T, T)``. Asymmetric
ranges keep each side's observed extreme when it is inside: ``(max(min, -T), min(max, T))``, so a
non-negative tensor (after Relu) gets ``(0, T)`` and is searched with twice the levels (uint8).
Every range contains 0 (so that zero is exact); an all-zero tensor gives ``(0, 0)``.

:func:`save` / :func:`load` keep a :class:`Calibration` in one ``.npz`` (the histograms plus a JSON
record); :func:`collect` with ``cache=PATH`` reuses it when the model digest, the data digest
and the bins match and it covers the requested tensors, so trying another method does not re-run
the data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway.backends.ort import ort_session
from slipway.compare.run import load_model, typed_copy
from slipway.errors import UserError, one_line
from slipway.model import ModelLike, atomic_write_bytes
from slipway.quantize.data import CalibrationData, calibration_data
from slipway.quantize.types import METHODS, Calibration, Ranges, TensorStats

__all__ = ["collect", "ranges", "threshold", "activations", "model_digest", "update", "save", "load",
           "kl_divergences", "FLOAT_TYPES"]

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})
CACHE_VERSION = 1
KL_EPS = 1e-4
TAYLOR = 10  # terms of the smoothing-shift series in kl_divergences
Progress = Callable[[int, int | None], None]


# ---------------------------------------------------------------------------------- collect


def collect(model: ModelLike, data: Any, *, tensors: Sequence[str] | None = None, bins: int = 2048,
            progress: Progress | None = None, cache: str | os.PathLike | None = None) -> Calibration:
    """Stream ``data`` through the FP32 ``model`` and gather the statistics of ``tensors``.

    ``tensors`` defaults to :func:`activations` (every float value that depends on a graph input,
    graph inputs included). ``data`` is anything :func:`calibration_data` takes. ``progress(done,
    total)`` is called after each batch with samples done and the total (None when unknown).
    With ``cache``, a cache file for this model, data and ``bins`` is used instead of running the
    data, and a fresh one is written otherwise (the data digest is computed only then).
    """
    if not isinstance(bins, int) or bins < 16:
        raise UserError(f"bins must be an integer of at least 16, got {bins!r}")
    original = load_model(model, "to calibrate")
    typed = typed_copy(original)
    names = _chosen(typed, tensors)
    feeds = calibration_data(data, typed)
    mdigest = model_digest(original)
    ddigest = feeds.digest() if cache is not None else ""  # may cost a pass over in-memory or generated data
    if cache is not None:
        cached = _from_cache(Path(cache), mdigest, ddigest, bins, names)
        if cached is not None:
            return cached
    cal = _run(typed, feeds, names, bins, progress)
    cal.model_digest, cal.data_digest = mdigest, ddigest or ""
    if ddigest is None:
        cal.notes.append("the data is a one-shot iterator: its cache entry cannot be matched on a later run")
    if cache is not None:
        save(cal, cache)
    return cal


def activations(model: ir.Model) -> list[str]:
    """Float values of the main graph that depend on a graph input (inputs included), in graph order."""
    if any(v.type is None for node in model.graph for v in node.outputs):
        model = typed_copy(model)
    inits = set(model.graph.initializers)
    live: set[str] = set()
    names: list[str] = []
    for v in model.graph.inputs:
        if v.name not in inits:
            live.add(v.name)
            if v.dtype in FLOAT_TYPES:
                names.append(v.name)
    for node in model.graph:
        subgraph = any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())
        if not subgraph and not any(i is not None and i.name in live for i in node.inputs):
            continue
        for out in node.outputs:
            if out.name:
                live.add(out.name)
                if out.dtype in FLOAT_TYPES and out.name not in names:
                    names.append(out.name)
    return names


def _chosen(model: ir.Model, tensors: Sequence[str] | None) -> list[str]:
    if tensors is None:
        names = activations(model)
        if not names:
            raise UserError("the model has no float activations to calibrate")
        return names
    values = {v.name: v for v in model.graph.inputs}
    values.update({v.name: v for node in model.graph for v in node.outputs if v.name})
    for name in tensors:
        v = values.get(name)
        if name in model.graph.initializers:
            raise UserError(f"{name!r} is a weight, not an activation; weights are not calibrated")
        if v is None:
            raise UserError(f"no tensor named {name!r} in the model's main graph")
        if v.dtype not in FLOAT_TYPES:
            raise UserError(f"tensor {name!r} is {v.dtype.name.lower() if v.dtype else 'of unknown type'}; "
                            f"only float tensors are calibrated")
    if not tensors:
        raise UserError("no tensors to calibrate")
    return list(dict.fromkeys(tensors))


def _run(model: ir.Model, data: CalibrationData, names: list[str], bins: int, progress: Progress | None) -> Calibration:
    inputs = {s.name for s in data.specs}
    exposed = [n for n in names if n not in inputs]
    stats = {n: TensorStats(n, float("inf"), float("-inf"), 0) for n in names}
    bad: set[str] = set()
    done = 0
    session = _session(model, exposed) if exposed else None
    for k, feeds in enumerate(data):
        for n in names:
            if n in inputs and update(stats[n], feeds[n], bins):
                bad.add(n)
        outs = _execute(session, exposed, feeds, k) if exposed else []
        for i, n in enumerate(exposed):
            if update(stats[n], outs[i], bins):
                bad.add(n)
            outs[i] = None  # drop each activation as soon as it is counted
        del outs
        done += data.rows(feeds)
        if progress is not None:
            progress(done, data.total)
    del session  # frees the engine (and a > 2 GB model's temporary file) before the stats are returned
    notes = [f"{n}: non-finite values ignored" for n in names if n in bad]
    return Calibration(stats, done, notes=notes)


def _session(model: ir.Model, exposed: list[str]) -> Any:
    """An onnxruntime session of ``model`` (our copy) with ``exposed`` as its only outputs."""
    by_name = {v.name: v for node in model.graph for v in node.outputs}
    model.graph.outputs.clear()
    model.graph.outputs.extend(by_name[n] for n in exposed)
    try:
        return ort_session(model, optimization="basic", raw_errors=True)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"onnxruntime cannot load the model to calibrate: {one_line(e)}") from None


def _execute(session: Any, names: list[str], feeds: dict[str, np.ndarray], k: int) -> list[Any]:
    try:
        return session.run(names, feeds)
    except Exception as e:
        raise UserError(f"calibration batch {k}: onnxruntime failed: {one_line(e)}") from None


def update(stats: TensorStats, x: Any, bins: int = 2048) -> bool:
    """Fold one batch of values into ``stats``; True when non-finite values were dropped."""
    a = np.asarray(x)
    a = (a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)).reshape(-1)
    if a.size == 0:
        return False
    lo, hi = float(a.min()), float(a.max())
    dropped = not (np.isfinite(lo) and np.isfinite(hi))
    if dropped:
        a = a[np.isfinite(a)]
        if a.size == 0:
            return True
        lo, hi = float(a.min()), float(a.max())
    stats.min, stats.max, stats.count = min(stats.min, lo), max(stats.max, hi), stats.count + int(a.size)
    amax = max(-lo, hi)
    if stats.hist is None:
        stats.hist, stats.hist_max = np.zeros(bins, dtype=np.int64), amax
    elif amax > stats.hist_max:
        _grow(stats, amax)
    if stats.hist_max == 0:
        stats.hist[0] += a.size  # all zeros so far: bin 0 whatever the range becomes
        return dropped
    n = len(stats.hist)
    scaled = np.abs(a)
    scaled *= n / stats.hist_max
    np.minimum(scaled, n - 1, out=scaled)
    stats.hist += np.bincount(scaled.astype(np.intp), minlength=n)
    return dropped


def _grow(stats: TensorStats, amax: float) -> None:
    """Widen the histogram range by a power of two, merging that many neighbouring bins."""
    if stats.hist_max == 0:
        stats.hist_max = amax
        return
    k = 2 ** max(1, int(np.ceil(np.log2(amax / stats.hist_max))))
    while stats.hist_max * k < amax:
        k *= 2
    n = len(stats.hist)
    padded = np.zeros(-(-n // k) * k, dtype=np.int64)
    padded[:n] = stats.hist
    merged = padded.reshape(-1, k).sum(axis=1)
    stats.hist = np.zeros(n, dtype=np.int64)
    stats.hist[: len(merged)] = merged
    stats.hist_max *= k


def model_digest(model: ir.Model) -> str:
    """SHA-256 of the model's serialized graph and weights (each initializer hashed apart: no 2 GB limit)."""
    proto = ir.serde.serialize_model(model)
    h = hashlib.sha256()
    for t in proto.graph.initializer:
        h.update(t.SerializeToString(deterministic=True))
    del proto.graph.initializer[:]
    h.update(proto.SerializeToString(deterministic=True))
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------- ranges


def ranges(calibration: Calibration, method: str, *, symmetric: bool = True, percentile: float = 99.99,
           num_quant_levels: int = 128) -> Ranges:
    """Tensor name -> (lo, hi) by ``method`` (one of :data:`METHODS`); tensors never seen are left out."""
    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    if not 0 < percentile <= 100:
        raise UserError(f"percentile must be in (0, 100], got {percentile}")
    if not isinstance(num_quant_levels, int) or num_quant_levels < 2:
        raise UserError(f"num_quant_levels must be an integer >= 2, got {num_quant_levels!r}")
    out: Ranges = {}
    for name, st in calibration.stats.items():
        if st.count == 0:
            continue
        t = threshold(st, method, symmetric=symmetric, percentile=percentile, num_quant_levels=num_quant_levels)
        lo, hi = (-t, t) if symmetric else (max(st.min, -t), min(st.max, t))
        out[name] = (float(min(lo, 0.0)), float(max(hi, 0.0)))
    return out


def threshold(st: TensorStats, method: str, *, symmetric: bool = True, percentile: float = 99.99,
              num_quant_levels: int = 128) -> float:
    """The clipping threshold on ``|x|`` that ``method`` picks for one tensor."""
    amax = max(-st.min, st.max, 0.0)
    if method == "minmax" or st.hist is None or st.hist_max == 0 or amax == 0:
        return float(amax)
    unsigned = not symmetric and st.min >= 0
    hist, width = st.hist, st.hist_max / len(st.hist)
    if method == "percentile":
        t = _percentile(hist, width, percentile)
    elif method == "entropy":
        i = _entropy_bins(hist, num_quant_levels * (2 if unsigned else 1))
        t = (i + 0.5) * width
    else:
        t = _mse(hist, width, 255 if unsigned else 127)
    return float(min(t, amax))


def _percentile(hist: np.ndarray, width: float, pct: float) -> float:
    cum = np.cumsum(hist)
    target = pct / 100 * cum[-1]
    k = int(np.searchsorted(cum, target))
    below = cum[k - 1] if k else 0
    return (k + (target - below) / max(hist[k], 1)) * width


def _mse(hist: np.ndarray, width: float, levels: int) -> float:
    """Threshold (a bin edge) minimizing rounding + clipping squared error over the histogram."""
    h = hist.astype(np.float64)
    c = (np.arange(len(h)) + 0.5) * width
    H0, H1, H2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (h, h * c, h * c * c))
    n = int(np.flatnonzero(hist)[-1]) + 1
    k = np.arange(1, n + 1)
    t = k * width
    step = t / levels
    j = np.clip(np.ceil(step / (2 * width) - 0.5), 0, k).astype(np.intp)  # bins whose center rounds to 0
    rounding = H2[j] + (H0[k] - H0[j]) * step**2 / 12
    clipping = (H2[-1] - H2[k]) - 2 * t * (H1[-1] - H1[k]) + t * t * (H0[-1] - H0[k])
    return float(t[int(np.argmin(rounding + clipping))])


def _entropy_bins(hist: np.ndarray, levels: int) -> int:
    n = int(np.flatnonzero(hist)[-1]) + 1
    if n <= levels:
        return n
    h = hist[:n].copy()
    h[0] = h[1]  # as NVIDIA's pytorch-quantization: the exact zeros (after Relu) must not steer the search
    candidates, kl = kl_divergences(h, levels)
    return int(candidates[int(np.argmin(kl))])


def kl_divergences(hist: np.ndarray, levels: int = 128, eps: float = KL_EPS) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) of TensorRT's entropy calibration for every candidate ``i`` in ``levels..len(hist)``.

    Sums over bins come from prefix sums, and all candidates with the same ``m = i // levels``
    share their first ``levels - 1`` groups of ``m`` bins. The smoothing shifts (``p' = p - a``,
    ``q' = q - b``) enter through power series in ``a / p`` and ``b / q`` (dropped terms below
    1e-9 of a count); a candidate whose ``b / q`` is not small is summed directly.
    """
    h = np.asarray(hist, dtype=np.float64)
    i = np.arange(levels, len(h) + 1)
    total = h.sum()
    cum, nzc = _prefix(h), _prefix(h > 0)
    out = total - cum[i]
    last = h[i - 1] + out  # P's last bin, the outliers folded in
    extra = (h[i - 1] == 0) & (out > 0)  # P's last bin is non-zero only through the outliers
    m = i // levels
    lo = m * (levels - 1)  # start of the last group, which runs to i
    s_last = cum[i] - cum[lo]
    n_last = nzc[i] - nzc[lo] + extra
    nzp = nzc[i] + extra
    nzq = nzp - (extra & (s_last == 0))  # Q is zero where only the outliers made P non-zero
    a = eps * (i - nzp) / nzp
    b = eps * (i - nzq) / np.maximum(nzq, 1)
    pl = np.maximum(last - a, 1e-300)
    t1 = _sum_plogp(h, i - 1, a) + np.where(last > 0, pl * np.log(pl), 0.0)
    q_last = np.where(s_last > 0, s_last / np.maximum(n_last, 1) - b, eps)
    t2 = _sum_plogq(cum, nzc, m, levels, a, b)
    t2 += np.where(n_last > 0, (s_last + out - a * n_last) * np.log(np.maximum(q_last, 1e-300)), 0.0)
    tq = cum[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (t1 - t2) / total + np.log(tq / total)
    return i, np.where(tq > 0, kl, np.inf)


def _prefix(x: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])


def _sum_plogp(h: np.ndarray, j: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``sum((h - a) log(h - a))`` over the non-zero bins before ``j``, per candidate."""
    pos = h > 0
    safe = np.where(pos, h, 1.0)
    logs = np.where(pos, np.log(safe), 0.0)
    out = _prefix(h * logs)[j] - a * _prefix(np.where(pos, logs + 1, 0.0))[j]
    for n in range(2, TAYLOR + 1):  # (h-a)log(h-a) = h log h - a(log h + 1) + sum a^n / (n(n-1) h^(n-1))
        out += a**n / (n * (n - 1)) * _prefix(np.where(pos, safe ** (1 - n), 0.0))[j]
    return out


def _sum_plogq(cum: np.ndarray, nzc: np.ndarray, m: np.ndarray, levels: int, a: np.ndarray,
               b: np.ndarray) -> np.ndarray:
    """``sum((S - a nz) log(S / nz - b))`` over the first ``levels - 1`` groups of each candidate."""
    mu, idx = np.unique(m, return_inverse=True)
    starts = mu[:, None] * np.arange(levels - 1)
    ends = starts + mu[:, None]
    s, nz = cum[ends] - cum[starts], nzc[ends] - nzc[starts]
    has = s > 0
    q = np.where(has, s / np.maximum(nz, 1), 1.0)
    logq = np.where(has, np.log(q), 0.0)
    out = (s * logq).sum(1)[idx] - a * (nz * logq).sum(1)[idx]
    inv = np.where(has, 1 / q, 0.0)
    power = np.ones_like(inv)
    for n in range(1, TAYLOR + 1):  # log(q - b) = log q - sum (b/q)^n / n
        power *= inv
        out -= b**n / n * ((s * power).sum(1)[idx] - a * (nz * power).sum(1)[idx])
    direct = b * inv.max(1)[idx] > 0.1
    if direct.any():
        r = idx[direct]
        w = s[r] - a[direct, None] * nz[r]
        out[direct] = np.where(has[r], w * np.log(np.maximum(q[r] - b[direct, None], 1e-300)), 0.0).sum(1)
    return out


# ---------------------------------------------------------------------------------- cache


def save(calibration: Calibration, path: str | os.PathLike) -> Path:
    """Write ``calibration`` to one ``.npz`` file (histograms + a JSON record), atomically."""
    stats = list(calibration.stats.values())
    record = {
        "format": "slipway.calibration", "version": CACHE_VERSION, "samples": calibration.samples,
        "model_digest": calibration.model_digest, "data_digest": calibration.data_digest,
        "notes": calibration.notes,
        "tensors": [{"name": s.name, "min": s.min, "max": s.max, "count": s.count, "hist_max": s.hist_max,
                     "hist": s.hist is not None} for s in stats],
    }
    arrays = {f"h{k}": s.hist for k, s in enumerate(stats) if s.hist is not None}
    arrays["record"] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return _atomic_write_bytes(Path(path), buf.getvalue())


def load(path: str | os.PathLike) -> Calibration:
    """Read a calibration cache written by :func:`save`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"calibration cache not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            record = json.loads(bytes(z["record"]).decode())
            if record.get("format") != "slipway.calibration":
                raise ValueError("no slipway calibration record")
            if record.get("version") != CACHE_VERSION:
                raise UserError(f"{p}: calibration cache version {record.get('version')} is not supported "
                                f"(expected {CACHE_VERSION}); delete it to recalibrate")
            stats = {}
            for k, t in enumerate(record["tensors"]):
                hist = np.array(z[f"h{k}"], dtype=np.int64) if t["hist"] else None
                stats[t["name"]] = TensorStats(t["name"], float(t["min"]), float(t["max"]), int(t["count"]),
                                               hist, float(t["hist_max"]))
    except UserError:
        raise
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{p} is not a readable calibration cache: {one_line(e)}") from None
    return Calibration(stats, int(record["samples"]), record["model_digest"], record["data_digest"],
                       list(record.get("notes", [])))


def _from_cache(path: Path, mdigest: str, ddigest: str | None, bins: int, names: list[str]) -> Calibration | None:
    """The cached stats of ``names`` when the file matches the model, data and bins; else None."""
    if ddigest is None or not path.is_file():
        return None
    try:
        cal = load(path)
    except UserError:
        return None
    fits = all(n in cal.stats and (cal.stats[n].hist is None or len(cal.stats[n].hist) == bins) for n in names)
    if cal.model_digest != mdigest or cal.data_digest != ddigest or not fits:
        return None
    cal.stats = {n: cal.stats[n] for n in names}
    cal.notes.append(f"statistics loaded from the calibration cache {path}")
    return cal


def _atomic_write_bytes(out: Path, data: bytes) -> Path:
    if out.is_dir():
        raise UserError(f"calibration cache path is a directory: {out}")
    return atomic_write_bytes(out, data)