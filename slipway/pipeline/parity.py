"""Stage parity: a pipeline against a reference implementation, stage by stage.

:func:`compare_stages` runs a :class:`~slipway.pipeline.Pipeline` with ``trace=True`` and a
*reference* (a Python callable doing the same job, ``reference(inputs) -> {name: value}``) on the
same inputs, compares every mapped stage in pipeline order and names the first stage past
tolerance, plus an end metric (text exact-match rate for OCR, box IoU / matched share for
detection, keypoint error for pose). How a stage is compared depends on its values:

* ``array`` (numeric arrays): max abs / rel error, ok when ``max_abs <= atol + rtol * max|ref|``
  and the shapes agree (:func:`slipway.compare.metrics.tensor_diff`);
* ``texts`` (lists / arrays of strings): exact-match rate, element by element, ok at 100 %;
* ``boxes`` (``[K, 4, 2]`` quads, or ``[K, 4]`` xyxy for a tensor named ``*box*``): greedy
  one-to-one IoU matching, ok when the counts agree and every pair has IoU >= ``iou_thresh``;
* ``arrays`` (lists of arrays, e.g. crops): each pair as ``array``, ok when all are;
* ``keypoints`` (``[K, J, 2|3]`` for a tensor named ``*keypoint*``): as ``array``, plus the keypoint
  error in pixels (mean and largest distance between the x, y of each joint), the pose end metric.

Ready references for the real peers: :func:`rapidocr_reference` (RapidOCR 1.4.x, its internals
recorded through instance-level wrappers: detector input, probability map, sorted boxes, crops,
recognized texts and scores) and :func:`rapid_layout_reference` (rapid-layout: pre-processed
tensor, raw head outputs, final boxes / scores / labels).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slipway.errors import UserError

__all__ = ["StageDiff", "StageReport", "compare_stages", "rapid_layout_reference", "rapidocr_reference",
           "reference_for"]

KINDS = ("array", "texts", "boxes", "arrays", "keypoints")


@dataclass
class StageDiff:
    """One stage: the pipeline tensor, the reference's name for it, how it compared."""

    stage: str  # the pipeline's tensor name
    reference: str  # the reference's name
    kind: str  # array | texts | boxes | arrays
    ok: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def summary(self) -> str:
        m = self.metrics
        if self.kind in ("array", "arrays"):
            text = f"max_abs {m.get('max_abs', float('nan')):.3g}, max_rel {m.get('max_rel', float('nan')):.3g}"
            if self.kind == "arrays":
                text = f"{m.get('n_ref', 0)} vs {m.get('n_got', 0)} items, " + text
            return text
        if self.kind == "texts":
            return f"exact match {m['match_rate']:.1%} ({m['matched']}/{m['total']})"
        if self.kind == "keypoints":
            return (f"keypoint error mean {m['mean_error_px']:.3g} px, largest {m['max_error_px']:.3g} px over "
                    f"{m['joints']} joints")
        return (f"{m['n_ref']} vs {m['n_got']} boxes, matched {m['matched_share']:.1%}, "
                f"mean IoU {m['mean_iou']:.3f}, min IoU {m['min_iou']:.3f}")

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "reference": self.reference, "kind": self.kind, "ok": self.ok,
                "metrics": _jsonable(self.metrics), "detail": self.detail}


@dataclass
class StageReport:
    """Every compared stage in pipeline order, the first past tolerance, the end metric."""

    pipeline: str
    reference: str
    stages: list[StageDiff]
    end_stage: str | None
    end_metric: dict[str, Any]
    atol: float
    rtol: float
    runs: int = 1
    not_compared: list[str] = field(default_factory=list)  # mapped names one side did not produce

    @property
    def first_divergent(self) -> StageDiff | None:
        return next((s for s in self.stages if not s.ok), None)

    @property
    def diverged(self) -> bool:
        return self.first_divergent is not None

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergent
        return {"pipeline": self.pipeline, "reference": self.reference, "runs": self.runs, "atol": self.atol,
                "rtol": self.rtol, "diverged": self.diverged, "first_divergent": first.stage if first else None,
                "stages": [s.to_dict() for s in self.stages], "end_stage": self.end_stage,
                "end_metric": _jsonable(self.end_metric), "not_compared": list(self.not_compared)}

    def table(self):
        """A rich table of the stages (the first divergent one in bold red)."""
        from rich.markup import escape
        from rich.table import Table

        first = self.first_divergent
        t = Table(title=f"stages: pipeline {self.pipeline} vs reference {self.reference} ({self.runs} input set"
                        f"{'s' if self.runs != 1 else ''})", title_justify="left")
        for col in ("stage", "reference", "kind", "difference", ""):
            t.add_column(col, overflow="fold")
        for s in self.stages:
            style = "bold red" if s is first else (None if s.ok else "yellow")
            t.add_row(escape(s.stage), escape(s.reference), s.kind, escape(s.summary()),
                      "ok" if s.ok else "DIVERGES", style=style)
        return t

    def print(self, console=None) -> None:
        from rich.console import Console
        from rich.markup import escape

        console = console or Console()
        console.print(self.table())
        if self.end_stage is not None:
            console.print(f"end metric ({escape(self.end_stage)}): "
                          + ", ".join(f"{k} {_fmt(v)}" for k, v in self.end_metric.items()))
        if self.not_compared:
            console.print(f"[dim]not compared (missing on one side): {escape(', '.join(self.not_compared))}[/]")
        first = self.first_divergent
        if first is None:
            console.print("[bold green]no divergent stage: every compared stage is within tolerance[/]")
        else:
            console.print(f"[bold red]first divergent stage: {escape(first.stage)} "
                          f"(reference {escape(first.reference)}): {escape(first.summary())}[/]")


# ---------------------------------------------------------------------------------- comparison


def _kind(name: str, ref_name: str, ref: Any, got: Any) -> str:
    if isinstance(ref, str) or isinstance(got, str):
        return "texts"
    for v in (ref, got):
        if isinstance(v, (list, tuple)) and v:
            if all(isinstance(x, str) for x in v):
                return "texts"
            if all(isinstance(x, np.ndarray) for x in v) and len({x.shape for x in v}) > 1:
                return "arrays"
        if isinstance(v, np.ndarray) and v.dtype.kind in "USO" and v.size:
            return "texts"
    for v in (ref, got):
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if a.ndim == 3 and a.shape[-1] in (2, 3) and "keypoint" in f"{name} {ref_name}".lower():
            return "keypoints"
        if a.ndim == 3 and a.shape[1:] == (4, 2):
            return "boxes"
        if a.ndim == 2 and a.shape[1] == 4 and ("box" in name.lower() or "box" in ref_name.lower()):
            return "boxes"
    for v in (ref, got):
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, np.ndarray) for x in v) and v[0].ndim >= 2:
            return "arrays"
    return "array"


def _as_boxes(v: Any) -> np.ndarray:
    a = np.asarray(v if v is not None else [], dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 4, 2))
    if a.ndim == 2 and a.shape[1] == 4:  # xyxy -> quad
        x0, y0, x1, y1 = a.T
        return np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1),
                         np.stack([x0, y1], 1)], 1)
    return a.reshape(-1, 4, 2)


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two quads [4, 2] (shapely polygons; cv2 rasterization at 4x without shapely)."""
    try:
        from shapely.geometry import Polygon
    except ImportError:  # pragma: no cover - rasterized at 4x without shapely
        import cv2

        pa, pb = a * 4, b * 4
        lo = np.floor(np.minimum(pa.min(0), pb.min(0))).astype(int)
        pa, pb = pa - lo, pb - lo
        hi = np.ceil(np.maximum(pa.max(0), pb.max(0))).astype(int) + 2
        ma, mb = np.zeros((hi[1], hi[0]), np.uint8), np.zeros((hi[1], hi[0]), np.uint8)
        cv2.fillPoly(ma, [np.round(pa).astype(np.int32)], 1)
        cv2.fillPoly(mb, [np.round(pb).astype(np.int32)], 1)
        return float((ma & mb).sum() / max((ma | mb).sum(), 1))
    pa, pb = Polygon(a), Polygon(b)
    if not (pa.is_valid and pb.is_valid):
        pa, pb = pa.buffer(0), pb.buffer(0)
    union = pa.union(pb).area
    return float(pa.intersection(pb).area / union) if union else float(np.allclose(a, b))


def match_quads(ref: Any, got: Any) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(ref index, got index, IoU)`` of two sets of quads [K, 4, 2], greedy by IoU
    (pairs that do not overlap are not matched)."""
    ra, ga = np.asarray(ref), np.asarray(got)
    if not len(ra) or not len(ga):
        return []
    m = np.array([[quad_iou(r, g) for g in ga] for r in ra])
    pairs: list[tuple[int, int, float]] = []
    used_r: set[int] = set()
    used_g: set[int] = set()
    for flat in np.argsort(-m, axis=None, kind="stable"):
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] <= 0:
            break
        if i not in used_r and j not in used_g:
            used_r.add(i)
            used_g.add(j)
            pairs.append((i, j, float(m[i, j])))
    return pairs


def _box_stats(ref: Any, got: Any) -> dict[str, Any]:
    ra, ga = _as_boxes(ref), _as_boxes(got)
    return {"n_ref": len(ra), "n_got": len(ga), "ious": [iou for _, _, iou in match_quads(ra, ga)]}


def _texts(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    return [str(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]


class _Acc:
    """One stage's results over several input sets."""

    def __init__(self, stage: str, ref_name: str, kind: str) -> None:
        self.stage, self.ref_name, self.kind = stage, ref_name, kind
        self.ok = True
        self.details: list[str] = []
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.cosine = 1.0
        self.matched = self.total = 0
        self.n_ref = self.n_got = 0
        self.ious: list[float] = []
        self.errors: list[float] = []  # keypoints: pixel distance of each joint

    def add(self, ref: Any, got: Any, *, atol: float, rtol: float, iou_thresh: float, run: int) -> None:
        from slipway.compare.metrics import tensor_diff

        where = f"input set {run}: " if run else ""
        if self.kind == "keypoints":
            r, g = np.asarray(ref, np.float64), np.asarray(got, np.float64)
            if r.shape[:-1] == g.shape[:-1] and r.shape[-1] >= 2 and g.shape[-1] >= 2:
                self.errors += np.linalg.norm(r[..., :2] - g[..., :2], axis=-1).ravel().tolist()
        if self.kind in ("array", "keypoints"):
            try:
                r, g = np.asarray(ref, np.float64), np.asarray(got, np.float64)
            except (TypeError, ValueError) as e:
                self.ok = False
                self.details.append(f"{where}not numeric ({e})")
                return
            if r.shape != g.shape and r.size == g.size:
                g = g.reshape(r.shape)  # [K] vs [K, 1] and the like: the values are what matter
            if r.shape != g.shape:
                self.ok = False
                self.max_abs = self.max_rel = math.inf
                self.details.append(f"{where}shape {list(r.shape)} vs {list(g.shape)}")
                return
            if r.size == 0:
                return
            d = tensor_diff(self.stage, r, g, atol=atol, rtol=rtol)
            self.max_abs, self.max_rel = max(self.max_abs, d.max_abs), max(self.max_rel, d.max_rel)
            self.cosine = min(self.cosine, d.cosine) if d.cosine == d.cosine else self.cosine
            if not d.ok:
                self.ok = False
                self.details.append(f"{where}max_abs {d.max_abs:.3g} > allowed {d.allowed:.3g}")
        elif self.kind == "arrays":
            r_items, g_items = list(ref or []), list(got or [])
            self.n_ref += len(r_items)
            self.n_got += len(g_items)
            if len(r_items) != len(g_items):
                self.ok = False
                self.details.append(f"{where}{len(r_items)} vs {len(g_items)} items")
            for k, (r, g) in enumerate(zip(r_items, g_items, strict=False)):
                r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
                if r.shape != g.shape:
                    self.ok = False
                    self.max_abs = self.max_rel = math.inf
                    self.details.append(f"{where}item {k}: shape {list(r.shape)} vs {list(g.shape)}")
                    continue
                d = tensor_diff(f"{self.stage}[{k}]", r, g, atol=atol, rtol=rtol)
                self.max_abs, self.max_rel = max(self.max_abs, d.max_abs), max(self.max_rel, d.max_rel)
                if not d.ok:
                    self.ok = False
                    self.details.append(f"{where}item {k}: max_abs {d.max_abs:.3g} > allowed {d.allowed:.3g}")
        elif self.kind == "texts":
            r, g = _texts(ref), _texts(got)
            n = max(len(r), len(g))
            same = sum(a == b for a, b in zip(r, g, strict=False))
            self.matched += same
            self.total += n
            if same != n:
                self.ok = False
                bad = next((k for k, (a, b) in enumerate(zip(r, g, strict=False)) if a != b), min(len(r), len(g)))
                self.details.append(f"{where}{same}/{n} identical; first difference at {bad}: "
                                    f"{(r[bad] if bad < len(r) else None)!r} vs {(g[bad] if bad < len(g) else None)!r}")
        else:  # boxes
            s = _box_stats(ref, got)
            self.n_ref += s["n_ref"]
            self.n_got += s["n_got"]
            self.ious += s["ious"]
            low = [x for x in s["ious"] if x < iou_thresh]
            if s["n_ref"] != s["n_got"] or len(s["ious"]) != s["n_ref"] or low:
                self.ok = False
                self.details.append(f"{where}{s['n_ref']} vs {s['n_got']} boxes, {len(s['ious'])} matched, "
                                    f"{len(low)} below IoU {iou_thresh:g}")

    def result(self) -> StageDiff:
        if self.kind in ("array", "arrays", "keypoints"):
            m: dict[str, Any] = {"max_abs": self.max_abs, "max_rel": self.max_rel}
            if self.kind == "array":
                m["cosine"] = self.cosine
            elif self.kind == "keypoints":
                m |= {"mean_error_px": float(np.mean(self.errors)) if self.errors else 0.0,
                      "max_error_px": float(np.max(self.errors)) if self.errors else 0.0, "joints": len(self.errors)}
            else:
                m |= {"n_ref": self.n_ref, "n_got": self.n_got}
        elif self.kind == "texts":
            m = {"match_rate": self.matched / self.total if self.total else 1.0, "matched": self.matched,
                 "total": self.total}
        else:
            n = max(self.n_ref, self.n_got)
            m = {"n_ref": self.n_ref, "n_got": self.n_got, "matched": len(self.ious),
                 "matched_share": len(self.ious) / n if n else 1.0,
                 "mean_iou": float(np.mean(self.ious)) if self.ious else (1.0 if not n else 0.0),
                 "min_iou": float(np.min(self.ious)) if self.ious else (1.0 if not n else 0.0)}
        return StageDiff(self.stage, self.ref_name, self.kind, self.ok, m, "; ".join(self.details[:5]))


def _pipeline_order(pipeline: Any) -> list[str]:
    """Tensor names in the order the pipeline produces them (inputs first)."""
    names = list(pipeline.inputs)
    for step in getattr(pipeline, "_order", None) or pipeline.steps:
        names += [t for t in step.outputs.values() if t not in names]
    return names


def compare_stages(pipeline: Any, reference: Callable[[dict[str, Any]], Mapping[str, Any]],
                   inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
                   stages: Mapping[str, str] | None = None, atol: float = 1e-4, rtol: float = 1e-3,
                   iou_thresh: float = 0.9, metric: str | Callable[..., dict[str, Any]] | None = None,
                   kinds: Mapping[str, str] | None = None) -> StageReport:
    """Run ``pipeline`` (``trace=True``) and ``reference`` on ``inputs`` and compare their stages.

    ``inputs``: one pipeline input dict, or a list of them (every stage is judged over all).
    ``reference(inputs) -> {name: value}`` returns the stage values it can expose and its final
    outputs. ``stages`` maps the reference's names to the pipeline's tensor names (default: the
    reference's own ``stages`` attribute, else the names both sides have). Stages are compared in
    pipeline order; the report's ``first_divergent`` is the first one past tolerance (``array``:
    ``max_abs <= atol + rtol * max|ref|``; ``texts``: every string identical; ``boxes``: same
    count, each matched with IoU >= ``iou_thresh``). ``kinds`` forces a stage's kind (by pipeline
    tensor name). ``metric`` picks the end metric: a pipeline tensor name among the compared
    stages (default: the reference's ``end`` attribute, else the last compared ``texts`` or
    ``boxes`` stage, else the last stage), or a
    callable ``metric(ref_values, pipeline_trace) -> dict`` called per input set (the dicts of the
    last set are reported).
    """
    runs = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not runs:
        raise UserError("compare_stages: no inputs")
    if stages is None:
        stages = getattr(reference, "stages", None)
    order = _pipeline_order(pipeline)
    accs: dict[str, _Acc] = {}
    missing: set[str] = set()
    custom: dict[str, Any] = {}
    for k, feeds in enumerate(runs):
        result = pipeline.run(dict(feeds), trace=True)
        trace = dict(result.trace or {}) | dict(result.outputs)
        ref = dict(reference(dict(feeds)))
        mapping = dict(stages) if stages is not None else {n: n for n in ref if n in trace}
        for ref_name, tensor in sorted(mapping.items(), key=lambda kv: (order.index(kv[1]) if kv[1] in order
                                                                         else len(order), kv[1])):
            if ref_name not in ref or tensor not in trace:
                missing.add(f"{ref_name} -> {tensor}")
                continue
            if tensor not in accs:
                kind = (kinds or {}).get(tensor) or _kind(tensor, ref_name, ref[ref_name], trace[tensor])
                if kind not in KINDS:
                    raise UserError(f"kinds[{tensor!r}]: expected one of {', '.join(KINDS)}, got {kind!r}")
                accs[tensor] = _Acc(tensor, ref_name, kind)
            accs[tensor].add(ref[ref_name], trace[tensor], atol=atol, rtol=rtol, iou_thresh=iou_thresh,
                             run=k if len(runs) > 1 else 0)
        if callable(metric):
            custom = dict(metric(ref, trace))
    diffs = [accs[t].result() for t in sorted(accs, key=lambda t: order.index(t) if t in order else len(order))]
    end_stage: str | None
    if callable(metric):
        end_stage, end_metric = getattr(metric, "__name__", "metric"), custom
    else:
        if metric is not None and metric not in accs:
            raise UserError(f"metric: {metric!r} is not a compared stage (compared: {', '.join(accs) or 'none'})")
        pick = metric or (getattr(reference, "end", None) if getattr(reference, "end", None) in accs else None) \
            or next((d.stage for d in reversed(diffs) if d.kind in ("texts", "boxes", "keypoints")),
                              diffs[-1].stage if diffs else None)
        end_stage = pick
        end_metric = next((d.metrics for d in diffs if d.stage == pick), {})
    return StageReport(pipeline=str(getattr(pipeline, "name", "pipeline")),
                       reference=str(getattr(reference, "name", getattr(reference, "__name__", "reference"))),
                       stages=diffs, end_stage=end_stage, end_metric=end_metric, atol=atol, rtol=rtol,
                       runs=len(runs), not_compared=sorted(missing))


# ---------------------------------------------------------------------------------- references


class _Reference:
    """A callable reference with a name and a default stage mapping."""

    def __init__(self, name: str, fn: Callable[[dict[str, Any]], dict[str, Any]], stages: dict[str, str] | None,
                 end: str | None = None) -> None:
        self.name, self._fn, self.stages, self.end = name, fn, stages, end  # end: the default end-metric stage

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return self._fn(inputs)


def rapidocr_reference(det: str | os.PathLike, rec: str | os.PathLike, cls: str | os.PathLike | None = None,
                       **kwargs: Any) -> _Reference:
    """RapidOCR (``rapidocr_onnxruntime``) on the same models, its internals recorded.

    Instance-level wrappers around the engine's detector session, ``auto_text_det``, ``text_cls``
    and ``text_rec`` record, per call: ``det_input`` (the detector's NCHW float32 input),
    ``prob`` (DBNet's map), ``boxes`` (quads on the working image, in reading order), ``crops``
    (cut out of the working image), ``upright`` (after the angle classifier, with ``cls``),
    ``texts`` / ``text_scores`` (every recognized line, before the ``text_score`` filter) and the
    final ``lines`` (``[[box, text, score]]``, RapidOCR's answer). ``kwargs`` go to ``RapidOCR``.
    Takes ``{"image": BGR uint8}``.
    """
    from rapidocr_onnxruntime import RapidOCR

    use_cls = cls is not None
    args: dict[str, Any] = {"det_model_path": str(det), "rec_model_path": str(rec), "use_cls": use_cls}
    if cls is not None:
        args["cls_model_path"] = str(cls)
    engine = RapidOCR(**args, **kwargs)
    rec_: dict[str, Any] = {}
    det_infer, auto_det, text_cls, text_rec = engine.text_det.infer, engine.auto_text_det, engine.text_cls, \
        engine.text_rec

    def infer(x):
        rec_["det_input"] = x
        out = det_infer(x)
        rec_["prob"] = out[0]
        return out

    def auto_text_det(img):
        boxes, elapse = auto_det(img)
        rec_["boxes"] = np.asarray(boxes if boxes is not None else [], np.float32).reshape(-1, 4, 2)
        return boxes, elapse

    def classify(imgs, *a, **kw):
        rec_["crops"] = list(imgs)
        out = text_cls(imgs, *a, **kw)
        rec_["upright"] = list(out[0])
        return out

    def recognize(imgs, *a, **kw):
        rec_.setdefault("crops", list(imgs))
        out = text_rec(imgs, *a, **kw)
        rec_["texts"] = [str(r[0]) for r in out[0]]
        rec_["text_scores"] = [float(r[1]) for r in out[0]]
        return out

    engine.text_det.infer = infer
    engine.auto_text_det = auto_text_det
    engine.text_cls = classify
    engine.text_rec = recognize

    def run(inputs: dict[str, Any]) -> dict[str, Any]:
        rec_.clear()
        found, _ = engine(inputs["image"])
        out = dict(rec_)
        for key in ("texts", "text_scores"):
            out.setdefault(key, [])
        out.setdefault("boxes", np.zeros((0, 4, 2), np.float32))
        out["lines"] = found or []
        return out

    stages = {"det_input": "det_input", "prob": "det_prob", "boxes": "boxes", "crops": "crops",
              "texts": "texts", "text_scores": "text_scores"}
    if use_cls:
        stages["upright"] = "upright"
    return _Reference("rapidocr", run, stages, end="texts")


def rapid_layout_reference(model: str | os.PathLike, *, conf_thresh: float = 0.5, iou_thresh: float = 0.5,
                           **kwargs: Any) -> _Reference:
    """rapid-layout (``RapidLayout``) on the same PP-PicoDet layout model, its session recorded.

    Exposes ``tensor`` (the pre-processed NCHW input), the raw head outputs in the model's output
    order under the pipeline's names (``scores0``.. then ``boxes0``..), and the final ``boxes``
    (xyxy, original pixels), ``scores`` and ``labels`` (class names). Takes ``{"image": BGR uint8}``.
    """
    from rapid_layout import RapidLayout

    engine = RapidLayout(model_dir_or_path=str(model), conf_thresh=conf_thresh, iou_thresh=iou_thresh, **kwargs)
    handler = getattr(engine.model_handler, "model_processors", None)
    if handler is None or not hasattr(handler, "session"):
        raise UserError("rapid_layout_reference: this rapid-layout version has no model handler session to record")
    session = handler.session
    rec_: dict[str, Any] = {}

    def recorded(x):
        rec_["tensor"] = x
        preds = session(x)
        rec_["raw"] = list(preds)
        return preds

    handler.session = recorded

    def run(inputs: dict[str, Any]) -> dict[str, Any]:
        rec_.clear()
        res = engine(inputs["image"])
        raw = rec_.get("raw", [])
        nlev = len(raw) // 2
        out: dict[str, Any] = {"tensor": rec_.get("tensor")}
        for i, v in enumerate(raw):
            out[f"scores{i}" if i < nlev else f"boxes{i - nlev}"] = v
        out["boxes"] = np.asarray(res.boxes if res.boxes is not None else [], np.float32).reshape(-1, 4)
        out["scores"] = np.asarray(res.scores if res.scores is not None else [], np.float32)
        out["labels"] = [str(n) for n in (res.class_names or [])]
        return out

    return _Reference("rapid-layout", run, None, end="boxes")  # None: the same names as the pipeline


def reference_for(pipeline: Any, name: str) -> _Reference:
    """The reference ``name`` (``rapidocr``, ``rapid-layout``) built on the models of ``pipeline``."""
    steps = {s.name: s for s in pipeline.steps}
    paths = getattr(pipeline, "_paths", {})
    params = getattr(pipeline, "_params", {})
    if name == "rapidocr":
        if not {"det", "rec"} <= set(steps):
            raise UserError("--reference rapidocr: the pipeline has no 'det' and 'rec' steps (an ocr_pipeline)")
        det = paths.get("det") or Path(str(steps["det"].target))
        rec = params.get("rec", steps["rec"].params).get("model")
        cls = params.get("cls", steps["cls"].params).get("model") if "cls" in steps else None
        return rapidocr_reference(det, rec, cls)
    if name in ("rapid-layout", "rapid_layout", "layout"):
        if "detector" not in steps:
            raise UserError("--reference rapid-layout: the pipeline has no 'detector' step (a detect_pipeline)")
        det = paths.get("detector") or Path(str(steps["detector"].target))
        dec = params.get("decode", steps["decode"].params if "decode" in steps else {})
        return rapid_layout_reference(det, conf_thresh=float(dec.get("score_thresh", 0.5)),
                                      iou_thresh=float(dec.get("iou_thresh", 0.5)))
    raise UserError(f"--reference: expected rapidocr or rapid-layout, got {name!r}")


# ---------------------------------------------------------------------------------- helpers


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if v != v else ("inf" if v > 0 else "-inf")
    return v
