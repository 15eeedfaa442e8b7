"""Evaluation of a quantized model against its FP32 reference: the data, the runs, the metric.

The evaluation data (``eval_data``) is

* an ``.npz`` file or a dict of arrays keyed by input name, with an optional ``labels`` array
  (also accepted: ``label``, ``y``) - one row per sample along axis 0;
* an iterable of ``(feeds, label)`` pairs or of bare ``feeds`` (a dict, or an array for a
  one-input model), each with or without its batch axis;
* any calibration source :mod:`slipway.quantize.data` reads (a folder of images with its
  pre-processing, ``.npy`` files ...), without labels.

The metric (higher is better; the *drop* is FP32's score minus the quantized model's, in the
metric's own units - points for percentages):

* ``"top1"`` with labels: top-1 accuracy in percent, of a classifier-like first output
  (``[N, C]``, or ``[N, C, 1, 1]``) against integer (or one-hot) labels;
* a callable ``metric(outputs, labels) -> float``: ``outputs`` lists the model's outputs in
  order, each concatenated over the evaluation set along axis 0; ``labels`` is the label
  array (or ``None``);
* without labels (or ``metric=None``): **agreement with FP32** - the percentage of samples whose
  top-1 class is the same (classifier-like outputs), else 100 x the mean per-sample cosine
  similarity of the outputs.

Every score also carries the output SNR (dB) and cosine similarity against FP32 over all
float outputs, and the top-1 agreement when the first output is classifier-like.
"""

from __future__ import annotations

import itertools
import math
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway.compare.metrics import cosine, snr_db
from slipway.compare.run import DEFAULT_DIM
from slipway.convert.inputs import Feeds, InputSpec, input_specs, plan_sizes, random_feeds
from slipway.errors import UserError

__all__ = ["EvalData", "Metric", "Score", "from_feeds", "random_set", "verify_feeds", "run_outputs",
           "resolve_metric", "metric_value", "score", "LABEL_KEYS", "BATCH"]

LABEL_KEYS = ("labels", "label", "y")
BATCH = 32  # rows per engine call when the batch dim is dynamic
MetricFn = Callable[[list[np.ndarray], np.ndarray | None], float]


@dataclass
class EvalData:
    batches: list[Feeds]
    labels: np.ndarray | None
    samples: int
    source: str
    notes: list[str] = field(default_factory=list)
    dynamic: bool = True  # the batch dim is dynamic (batches of any size run)


def _batch_dim(specs: Sequence[InputSpec]) -> int | str:
    return specs[0].dims[0] if specs and specs[0].dims else 1


def _one_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
    return lines[0][:300] if lines else type(e).__name__


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"evaluation data not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, AttributeError) as e:
        raise UserError(f"cannot read evaluation data {path}: {_one_line(e)}") from None


def _split_labels(arrays: Mapping[str, Any], specs: Sequence[InputSpec]) -> tuple[dict[str, np.ndarray], Any]:
    names = {s.name for s in specs}
    keys = [k for k in LABEL_KEYS if k in arrays and k not in names]
    labels = np.asarray(arrays[keys[0]]) if keys else None
    return {k: np.asarray(v) for k, v in arrays.items() if k not in keys}, labels


def _with_batch_axis(spec: InputSpec, x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == len(spec.dims):
        return x
    if x.ndim == len(spec.dims) - 1:
        return x[None]
    raise UserError(f"{what}: input {spec.name!r} has shape {list(x.shape)}, the model expects {spec.dims}")


def _check(specs: Sequence[InputSpec], feeds: Mapping[str, np.ndarray], what: str) -> Feeds:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise UserError(f"{what}: no value for input {missing[0]!r} (got {sorted(feeds)}; the model's inputs "
                        f"are {names})")
    extra = sorted(set(feeds) - set(names))
    if extra:
        raise UserError(f"{what}: the model has no input named {extra[0]!r} (its inputs are {names})")
    out: Feeds = {}
    for s in specs:
        x = _with_batch_axis(s, np.asarray(feeds[s.name]), what)
        for axis, (got, want) in enumerate(zip(x.shape[1:], s.dims[1:], strict=True), start=1):
            if isinstance(want, int) and got != want:
                raise UserError(f"{what}: input {s.name!r} has shape {list(x.shape)}, the model expects {s.dims} "
                                f"(dim {axis} must be {want})")
        if x.dtype != s.dtype:
            if x.dtype.kind not in "fiub" or (s.dtype.kind == "f") != (x.dtype.kind == "f"):
                raise UserError(f"{what}: input {s.name!r} has dtype {x.dtype}, the model expects {s.dtype}")
            x = x.astype(s.dtype)
        out[s.name] = x
    return out


def _pairs(data: Any) -> tuple[bool, Any]:
    """Whether ``data`` is an iterable of ``(feeds, label)`` pairs, and the data to read (a one-shot
    iterator is peeked at and chained back together)."""
    if isinstance(data, (str, os.PathLike, Mapping, np.ndarray)) or callable(data):
        return False, data
    try:
        iterator = iter(data)
    except TypeError:
        return False, data
    if iterator is data:  # one-shot: peek at the first item
        first = next(iterator, None)
        if first is None:
            return False, []
        data = itertools.chain([first], iterator)
    else:
        first = next(iter(data), None)
    pair = isinstance(first, tuple) and len(first) == 2 and isinstance(first[0], (Mapping, np.ndarray))
    return pair, data


def from_feeds(model: ir.Model, data: Any, *, limit: int | None = None, what: str = "evaluation data",
               batch: int = BATCH, preprocess: Any = None) -> EvalData:
    """The evaluation set of ``data`` (see the module docstring), checked against the model's inputs."""
    specs = input_specs(model)
    if not specs:
        raise UserError("the model has no inputs to feed evaluation data to")
    source = os.fspath(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__
    if isinstance(data, (str, os.PathLike)) and str(data).endswith(".npz"):
        data = _read_npz(Path(data))
    if isinstance(data, Mapping):
        arrays, labels = _split_labels(data, specs)
        if labels is not None:
            return _build(specs, [_check(specs, arrays, what)], [labels], source, limit, what, batch)
        data = arrays
    pairs, data = _pairs(data)
    if not pairs:
        from slipway.quantize.data import calibration_data

        feeds = calibration_data(data, model, preprocess=preprocess, limit=limit)
        return _build(specs, [_check(specs, f, what) for f in feeds], None, source, limit, what, batch)
    rows: list[Feeds] = []
    labels_list: list[np.ndarray] = []
    for k, item in enumerate(data):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise UserError(f"{what}, item {k}: expected a (feeds, label) pair like the first item")
        feeds, label = item
        if not isinstance(feeds, Mapping):
            if len(specs) != 1:
                raise UserError(f"{what}: samples must be dicts keyed by input name (the model has "
                                f"{len(specs)} inputs)")
            feeds = {specs[0].name: feeds}
        rows.append(_check(specs, feeds, f"{what}, item {k}"))
        labels_list.append(np.atleast_1d(np.asarray(label)))
        if limit is not None and sum(len(next(iter(r.values()))) for r in rows) >= limit:
            break
    return _build(specs, rows, labels_list, source, limit, what, batch)


def random_set(model: ir.Model, samples: int, seed: int = 0, dims: Mapping[str, int] | None = None) -> EvalData:
    """Random inputs (standard normal floats) as an evaluation set without labels; dynamic dims other
    than the batch at ``dims[name]`` (default :data:`DEFAULT_DIM`)."""
    specs = input_specs(model)
    dim = _batch_dim(specs)
    rng = np.random.default_rng(seed)
    size = {d: [int((dims or {}).get(d, DEFAULT_DIM))] for s in specs for d in s.dims if isinstance(d, str)}
    if isinstance(dim, str):
        plan = plan_sizes(specs, [samples], {d: n for d, n in size.items() if d != dim})[0]
        rows = [random_feeds(specs, plan, rng)]
    else:
        plan = plan_sizes(specs, [1], size)[0]
        rows = [random_feeds(specs, plan, rng) for _ in range(max(1, samples // max(int(dim), 1)))]
    return _build(specs, rows, None, "random inputs", None, "random inputs", BATCH)


def verify_feeds(data: EvalData) -> list[Feeds]:
    """Feeds for the final verification: batch 1 and batch 3 (a static batch: the first batch)."""
    first = data.batches[0]
    rows = int(next(iter(first.values())).shape[0])
    if data.dynamic and data.samples >= 4:
        whole = {k: np.concatenate([b[k] for b in data.batches[:2]], axis=0)[:4] for k in first}
        return [{k: x[:1] for k, x in whole.items()}, {k: x[1:4] for k, x in whole.items()}]
    if data.dynamic and rows > 1:
        return [{k: x[:1] for k, x in first.items()}, first]
    return [first]


def _build(specs: Sequence[InputSpec], rows: list[Feeds], labels: list[np.ndarray] | None, source: str,
           limit: int | None, what: str, batch: int) -> EvalData:
    if not rows or not specs:
        raise UserError(f"{what} is empty: no samples")
    for s in specs:
        shapes = sorted({tuple(r[s.name].shape[1:]) for r in rows})
        if len(shapes) > 1:
            raise UserError(f"{what}: input {s.name!r} comes in {len(shapes)} shapes ({list(shapes[0])}, "
                            f"{list(shapes[1])}, ...); evaluation needs one shape per input: resize or pad the "
                            "samples, or give eval_data (--eval) of one shape")
    whole = {s.name: np.concatenate([r[s.name] for r in rows], axis=0) for s in specs}
    n = int(whole[specs[0].name].shape[0])
    sizes = {k: int(v.shape[0]) for k, v in whole.items()}
    if len(set(sizes.values())) != 1:
        raise UserError(f"{what}: the inputs have different numbers of samples: {sizes}")
    if n == 0:
        raise UserError(f"{what} is empty: no samples")
    lab = np.concatenate(labels, axis=0) if labels else None
    if lab is not None and lab.shape[0] != n:
        raise UserError(f"{what}: {lab.shape[0]} labels for {n} samples")
    notes: list[str] = []
    if limit is not None and n > limit:
        whole = {k: v[:limit] for k, v in whole.items()}
        lab = lab[:limit] if lab is not None else None
        n = limit
    dim = _batch_dim(specs)
    step = batch if isinstance(dim, str) else int(dim)
    usable = n if isinstance(dim, str) else n - n % step
    if usable == 0:
        raise UserError(f"{what}: {n} samples, fewer than the model's static batch of {step}")
    if usable < n:
        notes.append(f"{n - usable} samples left out to fill whole batches of {step}")
        lab = lab[:usable] if lab is not None else None
    batches = [{k: v[i:i + step] for k, v in whole.items()} for i in range(0, usable, step)]
    return EvalData(batches, lab, usable, source, notes, isinstance(dim, str))


def run_outputs(model: ir.Model, ev: EvalData, target: str = "ort") -> list[np.ndarray]:
    """Each output of ``model`` over the whole evaluation set (concatenated along axis 0) on ``target``."""
    from slipway import backends
    from slipway.optimize import TARGETS

    session = backends.load(model, TARGETS.get(target, target))
    try:
        names = [o.name for o in session.outputs]
        runs = [session.run(feeds) for feeds in ev.batches]
    finally:
        session.close()
    return [np.concatenate([r[n] for r in runs], axis=0) for n in names]


# ---------------------------------------------------------------- metrics


@dataclass
class Metric:
    kind: str  # "top1" | "agreement" | "cosine" | "custom"
    name: str
    fn: MetricFn | None = None


@dataclass
class Score:
    metric: str
    fp32: float  # the FP32 model's score (100 for agreement)
    value: float  # the quantized model's score
    drop: float  # fp32 - value
    agreement: float | None  # top-1 agreement with FP32 in percent (classifier-like outputs)
    snr_db: float
    cosine: float

    def to_dict(self) -> dict:
        return {"metric": self.metric, "fp32": _r(self.fp32), "value": _r(self.value), "drop": _r(self.drop),
                "agreement": _r(self.agreement), "snr_db": _r(self.snr_db), "cosine": _r(self.cosine, 6)}


def _r(x: float | None, digits: int = 4) -> float | str | None:
    if x is None:
        return None
    return round(float(x), digits) if math.isfinite(x) else str(x)


def classifier_like(outputs: Sequence[np.ndarray]) -> bool:
    if not outputs:
        return False
    y = outputs[0]
    if y.dtype.kind != "f" or y.ndim < 2:
        return False
    return y.shape[1] >= 2 and all(d == 1 for d in y.shape[2:])


def resolve_metric(metric: str | MetricFn | None, labels: np.ndarray | None,
                   reference: Sequence[np.ndarray]) -> Metric:
    """The metric to gate on, given what the data has (labels) and what the model outputs."""
    if callable(metric):
        return Metric("custom", getattr(metric, "__name__", "metric"), metric)
    if metric not in (None, "top1"):
        raise UserError(f"unknown metric {metric!r}: use 'top1', a Python callable (outputs, labels) -> float, "
                        "or none (agreement with FP32)")
    if metric == "top1" and labels is not None:
        if not classifier_like(reference):
            raise UserError(f"metric top1 needs a classifier output [N, classes]; the first output has shape "
                            f"{list(reference[0].shape) if reference else []}")
        return Metric("top1", "top1")
    if classifier_like(reference):
        return Metric("agreement", "top-1 agreement with FP32")
    return Metric("cosine", "output cosine with FP32 (x100)")


def _classes(y: np.ndarray) -> np.ndarray:
    return y.reshape(y.shape[0], -1).argmax(axis=1)


def _labels(labels: np.ndarray, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[1] > 1:
        lab = lab.argmax(axis=1)
    lab = lab.reshape(-1)
    if lab.shape[0] != n:
        raise UserError(f"{lab.shape[0]} labels for {n} outputs")
    if lab.dtype.kind == "f" and not np.all(lab == np.round(lab)):
        raise UserError("labels for metric top1 must be class indices (integers) or one-hot rows")
    return lab.astype(np.int64)


def _call_custom(m: Metric, outputs: list[np.ndarray], labels: np.ndarray | None) -> float:
    try:
        value = m.fn(outputs, labels)  # type: ignore[misc]
    except Exception as e:
        raise UserError(f"the metric {m.name!r} raised {type(e).__name__}: {_one_line(e)}") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"the metric {m.name!r} returned {type(value).__name__}, not a number") from None
    if not math.isfinite(value):
        raise UserError(f"the metric {m.name!r} returned {value}")
    return value


def metric_value(m: Metric, outputs: list[np.ndarray], labels: np.ndarray | None,
                 reference: list[np.ndarray]) -> float:
    if m.kind == "custom":
        return _call_custom(m, outputs, labels)
    if m.kind == "top1":
        return 100.0 * float(np.mean(_classes(outputs[0]) == _labels(labels, outputs[0].shape[0])))
    if m.kind == "agreement":
        return 100.0 * float(np.mean(_classes(outputs[0]) == _classes(reference[0])))
    per = [cosine(_rows(reference, i), _rows(outputs, i)) for i in range(reference[0].shape[0])]
    return 100.0 * float(np.mean(per))


def _rows(outputs: Sequence[np.ndarray], i: int) -> np.ndarray:
    return np.concatenate([o[i].astype(np.float64).ravel() for o in outputs if o.dtype.kind == "f"])


def _flat(outputs: Sequence[np.ndarray]) -> np.ndarray:
    parts = [o.astype(np.float64).ravel() for o in outputs if o.dtype.kind == "f"]
    return np.concatenate(parts) if parts else np.zeros(0)


def score(m: Metric, outputs: list[np.ndarray], reference: list[np.ndarray], labels: np.ndarray | None,
          fp32_value: float | None = None) -> Score:
    """The quantized outputs' score against FP32 (``fp32_value`` saves recomputing the FP32 score)."""
    ref = fp32_value if fp32_value is not None else metric_value(m, reference, labels, reference)
    value = metric_value(m, outputs, labels, reference)
    agree = 100.0 * float(np.mean(_classes(outputs[0]) == _classes(reference[0]))) if classifier_like(
        reference) else None
    r, a = _flat(reference), _flat(outputs)
    finite = np.isfinite(r) & np.isfinite(a)
    snr = snr_db(r[finite], a[finite]) if finite.all() else float("-inf")
    return Score(m.name, ref, value, ref - value, agree, snr, cosine(r[finite], a[finite]))
