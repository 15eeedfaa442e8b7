"""Evaluation of a quantized model against its FP32 reference: the data, the runs, the metric.

The evaluation data (``eval_data``) is

* an ``.npz`` file or a dict of arrays keyed by input name, with an optional ``labels`` array
  (also accepted: ``label``, ``y``) - one row per sample along axis 0;
* an iterable of ``(feeds, label)`` pairs or of bare ``feeds`` (a dict, or an array for a
  one-input model), each with or without its batch axis;
* any calibration source :mod:`slipway.quantize.data` reads (a folder of images with its
  pre-processing, ``.npy`` files ...), without labels.

Samples may come in several shapes (an input with dynamic H and W fed images resized keeping
their aspect): consecutive samples of the same shape form the batches, so every batch has one
shape, and the sample order (and the labels' order) is kept. Sorting the samples by shape gives
fewer, larger batches.

The metric (higher is better; the *drop* is FP32's score minus the quantized model's, in the
metric's own units - points for percentages):

* ``"top1"`` with labels: top-1 accuracy in percent, of a classifier-like first output
  (``[N, C]``, or ``[N, C, 1, 1]``) against integer (or one-hot) labels;
* a callable ``metric(outputs, labels) -> float``: ``outputs`` lists the model's outputs in
  order, each one array concatenated over the evaluation set along axis 0 - or, for an output
  whose shape differs between batches (samples of several shapes), a *list* of arrays, one per
  batch, in sample order (see :func:`run_outputs`); ``labels`` is the label array (or ``None``);
* without labels (or ``metric=None``): **agreement with FP32** - the percentage of samples whose
  top-1 class is the same (classifier-like outputs), else 100 x the mean per-sample cosine
  similarity of the outputs.

Every score also carries the output SNR (dB) and cosine similarity against FP32 over all
elements of the float outputs, and the top-1 agreement when the first output is classifier-like.
"""

from __future__ import annotations

import itertools
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway import backends
from slipway.compare.metrics import cosine, snr_db
from slipway.compare.run import DEFAULT_DIM
from slipway.errors import UserError, one_line
from slipway.perf.ab import TARGETS
from slipway.verify.inputs import (
    Feeds,
    InputSpec,
    check_names,
    input_specs,
    plan_sizes,
    random_feeds,
    shared_batch,
)
from slipway.verify.probe import hinted_specs

__all__ = ["EvalData", "Judge", "Metric", "Score", "Output", "from_feeds", "random_set", "verify_feeds", "run_outputs",
           "parts", "samples_in", "resolve_metric", "metric_value", "score", "LABEL_KEYS", "BATCH"]

LABEL_KEYS = ("labels", "label", "y")
BATCH = 32  # rows per engine call when the batch dim is dynamic
# One output over the evaluation set: one array (the batches concatenated along axis 0), or one
# array per batch, in sample order, when the output's shape differs between batches.
Output = np.ndarray | list[np.ndarray]
MetricFn = Callable[[list[Output], np.ndarray | None], float]


@dataclass
class EvalData:
    batches: list[Feeds]  # in sample order; each of one shape (consecutive samples of the same shape)
    labels: np.ndarray | None
    samples: int
    source: str
    notes: list[str] = field(default_factory=list)
    dynamic: bool = True  # the batch dim is dynamic (batches of any size run)
    whole: bool = False  # the inputs share no batch axis (a scalar, a state batched on axis 1): feeds as given


def _batch_dim(specs: Sequence[InputSpec]) -> int | str:
    return specs[0].dims[0] if specs and specs[0].dims else 1


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"evaluation data not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, AttributeError) as e:
        raise UserError(f"cannot read evaluation data {path}: {one_line(e)}") from None


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
    check_names(specs, feeds, what)
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
    """Random inputs (:func:`slipway.verify.inputs.random_feeds` with the graph's value hints) as an
    evaluation set without labels; dynamic dims other than the batch at ``dims[name]`` (default
    :data:`DEFAULT_DIM`), a dynamic dim 0 of another input at the batch's rows."""
    specs = hinted_specs(model)
    dim = _batch_dim(specs)
    rng = np.random.default_rng(seed)
    size = {d: [int((dims or {}).get(d, DEFAULT_DIM))] for s in specs for d in s.dims if isinstance(d, str)}
    for s in specs:  # a shared batch axis (shared_batch): every dynamic dim 0 has the batch's rows
        if s.dims and isinstance(s.dims[0], str) and s.dims[0] != dim:
            size[s.dims[0]] = [samples if isinstance(dim, str) else int(dim)]
    if isinstance(dim, str):
        plan = plan_sizes(specs, [samples], {d: n for d, n in size.items() if d != dim})[0]
        rows = [random_feeds(specs, plan, rng)]
    else:
        plan = plan_sizes(specs, [1], size)[0]
        rows = [random_feeds(specs, plan, rng) for _ in range(max(1, samples // max(int(dim), 1)))]
    return _build(specs, rows, None, "random inputs", None, "random inputs", BATCH)


def verify_feeds(data: EvalData) -> list[Feeds]:
    """Feeds for the final verification: batch 1, then up to 3 samples of the next shape when the samples
    come in several shapes, else batch 3 (a static batch: the first batch, and the next shape's)."""
    first = data.batches[0]
    if data.whole:
        return data.batches[:2]
    one = {k: x[:1] for k, x in first.items()} if data.dynamic else first
    other = next((b for b in data.batches[1:] if _shape(b) != _shape(first)), None)
    if other is not None:
        return [one, {k: x[:3] for k, x in other.items()} if data.dynamic else other]
    if data.dynamic and data.samples >= 4:  # one shape: the first two batches concatenate
        whole = {k: np.concatenate([b[k] for b in data.batches[:2]], axis=0)[:4] for k in first}
        return [{k: x[:1] for k, x in whole.items()}, {k: x[1:4] for k, x in whole.items()}]
    if data.dynamic and _count(first) > 1:
        return [one, first]
    return [first]


def _shape(feeds: Feeds) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The non-batch shape of every input: what samples must share to be batched together."""
    return tuple((k, tuple(x.shape[1:])) for k, x in feeds.items())


def _count(feeds: Feeds) -> int:
    return int(next(iter(feeds.values())).shape[0])


def _counts(specs: Sequence[InputSpec], rows: list[Feeds], what: str) -> list[int]:
    counts = []
    for r in rows:
        sizes = {s.name: int(r[s.name].shape[0]) for s in specs}
        if len(set(sizes.values())) != 1:
            raise UserError(f"{what}: the inputs have different numbers of samples: {sizes}")
        counts.append(sizes[specs[0].name])
    return counts


def _cut(rows: list[Feeds], counts: list[int], limit: int) -> tuple[list[Feeds], list[int]]:
    """The first ``limit`` samples of ``rows``."""
    out, kept, seen = [], [], 0
    for r, c in zip(rows, counts, strict=True):
        if seen >= limit:
            break
        take = min(c, limit - seen)
        out.append(r if take == c else {k: x[:take] for k, x in r.items()})
        kept.append(take)
        seen += take
    return out, kept


def _runs(rows: list[Feeds], counts: list[int]) -> Iterator[tuple[Feeds, int]]:
    """Consecutive rows of one shape, concatenated: (feeds, samples), in sample order."""
    group: list[Feeds] = []
    size = 0
    for r, c in zip(rows, counts, strict=True):
        if c == 0:
            continue
        if group and _shape(r) != _shape(group[0]):
            yield _join(group), size
            group, size = [], 0
        group.append(r)
        size += c
    if group:
        yield _join(group), size


def _join(group: list[Feeds]) -> Feeds:
    if len(group) == 1:
        return group[0]
    return {k: np.concatenate([g[k] for g in group], axis=0) for k in group[0]}


def _build(specs: Sequence[InputSpec], rows: list[Feeds], labels: list[np.ndarray] | None, source: str,
           limit: int | None, what: str, batch: int) -> EvalData:
    if not rows or not specs:
        raise UserError(f"{what} is empty: no samples")
    if not shared_batch(specs):  # each feed dict is one sample, run as given
        rows = rows[:limit] if limit is not None else rows
        lab = np.concatenate(labels, axis=0)[:len(rows)] if labels else None
        note = ("the inputs share no batch axis (a scalar input, or one batched on another axis): each feed "
                "dict is one sample, run as given")
        return EvalData(rows, lab, len(rows), source, [note], dynamic=False, whole=True)
    counts = _counts(specs, rows, what)
    n = sum(counts)
    if n == 0:
        raise UserError(f"{what} is empty: no samples")
    lab = np.concatenate(labels, axis=0) if labels else None
    if lab is not None and lab.shape[0] != n:
        raise UserError(f"{what}: {lab.shape[0]} labels for {n} samples")
    if limit is not None and n > limit:
        rows, counts = _cut(rows, counts, limit)
        lab = lab[:limit] if lab is not None else None
        n = limit
    dim = _batch_dim(specs)
    step = batch if isinstance(dim, str) else int(dim)
    batches: list[Feeds] = []
    keep: list[int] = []  # the samples batched (a static batch leaves a run's remainder out)
    runs, start = 0, 0
    for feeds, m in _runs(rows, counts):
        usable = m if isinstance(dim, str) else m - m % step
        batches += [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, usable, step)]
        keep += range(start, start + usable)
        runs, start = runs + 1, start + m
    if not keep:
        of = " of one shape" if runs > 1 else ""
        raise UserError(f"{what}: {n} samples, fewer than the model's static batch of {step}{of}")
    notes = _notes(n - len(keep), step, len({_shape(b) for b in batches}), runs)
    if len(keep) < n and lab is not None:
        lab = lab[np.asarray(keep)]
    return EvalData(batches, lab, len(keep), source, notes, isinstance(dim, str))


def _notes(left: int, step: int, shapes: int, runs: int) -> list[str]:
    notes = []
    if left:
        notes.append(f"{left} samples left out to fill whole batches of {step}")
    if runs > shapes:
        notes.append(f"samples of {shapes} shapes in {runs} runs of one shape, each run batched apart (sample "
                     "order kept): sort the samples by shape for fewer, larger batches")
    return notes


def run_outputs(model: ir.Model, ev: EvalData, target: str = "ort") -> list[Output]:
    """Each output of ``model`` over the whole evaluation set on ``target``: one array, the batches
    concatenated along axis 0, or - when the output's shape differs between batches (samples of several
    shapes) - the list of the batches' arrays, in sample order."""
    session = backends.load(model, TARGETS.get(target, target))
    try:
        names = [o.name for o in session.outputs]
        runs = [session.run(feeds) for feeds in ev.batches]
    finally:
        session.close()
    if ev.whole:  # one sample per run: a leading axis makes each run's output one row
        runs = [{k: v[None] for k, v in r.items()} for r in runs]
    return [_merge([r[n] for r in runs]) for n in names]


def _merge(arrays: list[np.ndarray]) -> Output:
    """One array when the batches' outputs share their non-batch shape (and dtype), else the list."""
    first = arrays[0]
    if first.ndim and all(a.ndim and a.shape[1:] == first.shape[1:] and a.dtype == first.dtype for a in arrays):
        return np.concatenate(arrays, axis=0)
    return list(arrays)


def parts(output: Output) -> list[np.ndarray]:
    """An output's arrays: the one array, or its per-batch arrays."""
    return output if isinstance(output, list) else [output]


def samples_in(output: Output) -> int:
    """Rows (samples) of an output over all its batches (a batch without a batch axis counts once)."""
    return sum(int(p.shape[0]) if p.ndim else 1 for p in parts(output))


def _dtype(output: Output) -> np.dtype:
    return parts(output)[0].dtype


def _sample_rows(output: Output) -> Iterator[np.ndarray]:
    for p in parts(output):
        yield from (p if p.ndim else p[None])


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


def classifier_like(outputs: Sequence[Output]) -> bool:
    """Whether the first output is ``[N, C]`` (or ``[N, C, 1, 1]``) floats; one of varying shape is not."""
    if not outputs or isinstance(outputs[0], list):
        return False
    y = outputs[0]
    if y.dtype.kind != "f" or y.ndim < 2:
        return False
    return y.shape[1] >= 2 and all(d == 1 for d in y.shape[2:])


def _shape_text(output: Output) -> str:
    if isinstance(output, list):
        return f"varying shapes ({list(output[0].shape)}, {list(output[-1].shape)} ...)"
    return f"shape {list(output.shape)}"


def resolve_metric(metric: str | MetricFn | None, labels: np.ndarray | None,
                   reference: Sequence[Output]) -> Metric:
    """The metric to gate on, given what the data has (labels) and what the model outputs."""
    if callable(metric):
        return Metric("custom", getattr(metric, "__name__", "metric"), metric)
    if metric not in (None, "top1"):
        raise UserError(f"unknown metric {metric!r}: use 'top1', a Python callable (outputs, labels) -> float, "
                        "or none (agreement with FP32)")
    if metric == "top1" and labels is not None:
        if not classifier_like(reference):
            raise UserError(f"metric top1 needs a classifier output [N, classes]; the first output has "
                            f"{_shape_text(reference[0]) if reference else 'shape []'}")
        return Metric("top1", "top1")
    if classifier_like(reference):
        return Metric("agreement", "top-1 agreement with FP32")
    return Metric("cosine", "output cosine with FP32 (x100)")


def _classes(y: Output) -> np.ndarray:
    return np.concatenate([p.reshape(p.shape[0], -1).argmax(axis=1) for p in parts(y)])


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


def _call_custom(m: Metric, outputs: list[Output], labels: np.ndarray | None) -> float:
    try:
        value = m.fn(outputs, labels)  # type: ignore[misc]
    except Exception as e:
        raise UserError(f"the metric {m.name!r} raised {one_line(e, typed=True)}") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"the metric {m.name!r} returned {type(value).__name__}, not a number") from None
    if not math.isfinite(value):
        raise UserError(f"the metric {m.name!r} returned {value}")
    return value


def metric_value(m: Metric, outputs: list[Output], labels: np.ndarray | None, reference: list[Output]) -> float:
    if m.kind == "custom":
        return _call_custom(m, outputs, labels)
    if m.kind == "top1":
        return 100.0 * float(np.mean(_classes(outputs[0]) == _labels(labels, samples_in(outputs[0]))))
    if m.kind == "agreement":
        return 100.0 * float(np.mean(_classes(outputs[0]) == _classes(reference[0])))
    per = [cosine(r, a) for r, a in zip(_sample_vectors(reference), _sample_vectors(outputs), strict=True)]
    return 100.0 * float(np.mean(per))


def _sample_vectors(outputs: Sequence[Output]) -> Iterator[np.ndarray]:
    """Per sample, its float outputs (every output when none is float) as one float64 vector, in sample order."""
    chosen = [o for o in outputs if _dtype(o).kind == "f"] or list(outputs)
    for rows in zip(*(_sample_rows(o) for o in chosen), strict=True):
        yield np.concatenate([r.astype(np.float64).ravel() for r in rows])


def _flat(outputs: Sequence[Output]) -> np.ndarray:
    """Every element of the float outputs, as float64 (a list output's batches one after another: the
    same order as their concatenation)."""
    pieces = [p.astype(np.float64).ravel() for o in outputs if _dtype(o).kind == "f" for p in parts(o)]
    return np.concatenate(pieces) if pieces else np.zeros(0)


def score(m: Metric, outputs: list[Output], reference: list[Output], labels: np.ndarray | None,
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


class Judge:
    """Evaluates candidate models (quantized, pruned) against the reference model's outputs on the engine
    (computed once): ``judge(model)`` -> :class:`Score`."""

    def __init__(self, source: ir.Model, data: EvalData, metric: Any, engine: str) -> None:
        self.data, self.engine = data, engine
        self.reference = run_outputs(source, data, engine)
        self.metric = resolve_metric(metric, data.labels, self.reference)
        self.fp32 = metric_value(self.metric, self.reference, data.labels, self.reference)

    def __call__(self, model: ir.Model) -> Score:
        return score(self.metric, run_outputs(model, self.data, self.engine), self.reference,
                        self.data.labels, self.fp32)
