"""The stages of a stream run: a detector pipeline cut around its model step (``split_pipeline``), and the
thread loops (``Stages``) that decode, pre-process, infer in batches across frames and streams, post-process,
track and write sinks. :class:`slipway.stream.runner.StreamRun` starts them and consumes their output.

Each stage is one thread reading one bounded queue in FIFO order, so each stream's frames stay in order from
decode to result. An ``End`` marker follows each stream's last frame through every stage: the infer stage runs
a partly filled batch at once when it sees one, the post stage closes the sinks after the last one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.stream.frames import Detections, Frame, FrameResult, Tracks
from slipway.stream.queues import Channel, Counters, End, Ingress

DONE = End(-1)  # the post stage's last item: every stream has ended
PROBE_CALLS = 8  # engine calls timed (batched and frame by frame in turn) before an automatic batch is kept or not
PROBE_GAIN = 0.95  # batching is kept when a frame costs at most this share of its cost alone


DETECTION_TENSORS = ("boxes", "scores", "class_ids", "classes", "labels")


@dataclass
class Plan:
    """A detector pipeline cut around its one model step, for batching across frames: ``pre`` (the steps before
    the model in topological order: image -> the model's feeds and what ``post`` needs), the ``model`` step (run
    by ``run_model`` on a batch), ``post`` (the steps after it -> boxes / scores / class ids). A pipeline with no
    model step or several runs whole, frame by frame, in the infer stage (``whole``; no cross-frame batching)."""

    image: str
    pre: Any = None
    model: Any = None
    post: Any = None
    whole: Any = None
    carry: tuple[str, ...] = ()  # tensors of pre (or the image) that post reads besides the model's outputs
    detections: tuple[str, ...] = ()
    run_model: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    dynamic_batch: bool = False

    def close(self) -> None:
        for p in (self.pre, self.post, self.whole):
            if p is not None:
                p.close()


def split_pipeline(pipeline: Any) -> Plan:
    """Cut ``pipeline`` (a :class:`slipway.pipeline.Pipeline` with one image input and a ``boxes`` tensor)."""
    from slipway.pipeline import Pipeline

    if len(pipeline.inputs) != 1:
        raise UserError(f"stream: a pipeline takes one image per frame; {pipeline.name!r} has inputs "
                        f"{', '.join(pipeline.inputs)}")
    image = pipeline.inputs[0]
    order = [next(s for s in pipeline.steps if s.name == n) for n in pipeline.order]
    produced = {t for s in order for t in s.outputs.values()} | {image}
    detections = tuple(n for n in DETECTION_TENSORS if n in produced)
    if "boxes" not in detections:
        raise UserError(f"stream: pipeline {pipeline.name!r} gives no 'boxes' tensor; a stream runs a detector "
                        f"pipeline (boxes xyxy, scores, class_ids), e.g. slipway pipeline detect")
    models = [i for i, s in enumerate(order) if s.kind == "model"]
    if len(models) != 1:
        whole = Pipeline(order, [image], list(detections), name=pipeline.name, base=pipeline.base)
        return Plan(image=image, whole=whole, detections=detections)
    m = models[0]
    before, model, after = order[:m], order[m], order[m + 1:]
    made_before = {t for s in before for t in s.outputs.values()} | {image}
    needed_after = {t for s in after for t in s.inputs.values()} | set(detections)
    model_out = set(model.outputs.values())
    carry = tuple(sorted(t for t in needed_after if t in made_before and t not in model_out))
    pre_out = sorted(set(model.inputs.values()) | set(carry))
    missing = [t for t in model.inputs.values() if t not in made_before]
    if missing:
        raise UserError(f"stream: model step {model.name!r} reads {missing[0]!r}, made by no step before it")
    pre = Pipeline(before, [image], pre_out, name=f"{pipeline.name}-pre", base=pipeline.base) if before else None
    post = None
    if after:
        made_after = {t for s in after for t in s.outputs.values()}
        post_in = sorted((needed_after - made_after) & (model_out | set(carry)))
        post = Pipeline(after, post_in, list(detections), name=f"{pipeline.name}-post", base=pipeline.base)
    session = pipeline.session(model.name)
    names = dict(model.outputs)

    def run_model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = session.run({k: feeds[t] for k, t in model.inputs.items()}, list(names))
        return {names[k]: v for k, v in got.items()}

    infos = {t.name: t for t in session.inputs}
    dynamic = all(k in infos and _dynamic_batch(infos[k].shape) for k in model.inputs)
    return Plan(image=image, pre=pre, model=model, post=post, carry=carry, detections=detections,
                run_model=run_model, dynamic_batch=bool(dynamic))


def _dynamic_batch(shape: Any) -> bool:
    """Is the first dim of ``shape`` (a session's TensorInfo shape) free: a name, None or -1?"""
    if shape is None or len(shape) == 0:
        return False
    d = shape[0]
    return not isinstance(d, (int, np.integer)) or d < 0


@dataclass
class Work:
    """A frame on its way: ``mode`` "detect" (pre -> model -> post), "given" (the source's detections) or
    "predict" (the tracker's prediction only: ``--every N`` between detections); ``values``: its tensors."""

    frame: Frame
    mode: str
    values: dict[str, Any] | None = None


class Stages:
    """The stage threads over shared queues and counters; :class:`~slipway.stream.runner.StreamRun` adds the
    consumer side. Any stage's exception stops every stage (``_fail``: abort event, sources closed)."""

    def __init__(self, sources: list[Any], plan: Plan | None, *, policies: list[str], trackers: list[Any],
                 sinks: list[Any], every: int, batch: int, max_wait: float, queue: int, max_frames: int | None,
                 keep_images: bool, auto_batch: bool = False) -> None:
        n = len(sources)
        self.sources, self.plan, self.policies = sources, plan, policies
        self.every, self.batch, self.max_wait, self.max_frames = every, batch, max_wait, max_frames
        self._trackers, self._sinks = trackers, sinks
        self._keep_images = keep_images or any(getattr(s, "needs_image", False) for s in sinks)
        self._abort, self._stopping = threading.Event(), threading.Event()
        self._ingress = Ingress(n, queue, self._abort)
        bound = max(queue, 2 * batch)
        self._pre_q = Channel("pre", bound, self._abort)
        self._infer_q = Channel("infer", bound, self._abort)
        self._out = Channel("out", queue, self._abort)
        self._counters = Counters([spec_of(s) for s in sources])
        self._error: tuple[str, int, BaseException] | None = None
        self._lock = threading.Lock()
        self._batching = True
        self._probe: list[tuple[bool, float]] | None = [] if auto_batch else None  # (batched?, s per frame)
        self._auto = auto_batch
        self._sinks_closed = False
        self._threads = [threading.Thread(target=self._guard, args=("decode", i, self._decode, i),
                                          name=f"slipway-stream-decode-{i}", daemon=True) for i in range(n)]
        self._threads += [threading.Thread(target=self._guard, args=(stage, -1, fn), name=f"slipway-stream-{name}",
                                           daemon=True)
                          for name, stage, fn in (("pre", "pre-process", self._pre), ("infer", "infer", self._infer),
                                                  ("post", "post-process", self._post))]

    def _guard(self, stage: str, stream: int, fn: Callable[..., None], *args: Any) -> None:
        """A stage thread's body: whatever escapes it (a bug, not a frame's error) still stops the run."""
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the consumer as one line
            self._fail(stage, stream, e)

    def _close_sinks(self, failed: bool) -> None:
        with self._lock:
            if self._sinks_closed:
                return
            self._sinks_closed = True
        first: BaseException | None = None
        for sink in self._sinks:
            try:
                if failed and hasattr(sink, "abort"):
                    sink.abort()
                else:
                    sink.close()
            except Exception as e:  # noqa: BLE001 - every sink is closed; the first failure is reported
                first = first or e
        if first is not None and not failed:
            raise first

    def _fail(self, stage: str, stream: int, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = (stage, stream, exc)
        self._abort.set()
        for src in self.sources:
            quiet(src.close)

    def _decode(self, i: int) -> None:
        src, policy = self.sources[i], self.policies[i]
        reason = "overflow" if policy == "drop-oldest" else "stale"
        count = 0
        try:
            frames = iter(src)
            while not self._stopping.is_set() and not self._abort.is_set():
                if self.max_frames is not None and count >= self.max_frames:
                    break
                t0 = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    break
                self._counters.add_time("decode", time.perf_counter() - t0)
                frame.stream = i
                count += 1
                self._counters.frame_in(i)
                ok, dropped = self._ingress.put(i, frame, policy)
                if not ok:
                    return
                if dropped:
                    self._counters.drop(i, dropped, reason)
        except Exception as e:  # noqa: BLE001 - named by stage and stream
            if not (self._stopping.is_set() or self._abort.is_set()):
                self._fail("decode", i, e)
                return
        self._ingress.put(i, End(i, time.perf_counter()), "block")

    def _pre(self) -> None:
        n, ended = len(self.sources), 0
        seq = [0] * n
        while ended < n:
            item = self._ingress.get()
            if item is None:
                return
            if isinstance(item, End):
                ended += 1
                if not self._pre_q.put(item):
                    return
                continue
            s = item.stream
            try:
                work = self._prepare(item, seq[s])
            except Exception as e:  # noqa: BLE001 - named by stage and stream
                self._fail("pre-process", s, e)
                return
            seq[s] += 1
            if not self._pre_q.put(work):
                return

    def _prepare(self, frame: Frame, seq: int) -> Work:
        if seq % self.every:
            return Work(frame, "predict")
        if frame.detections is not None:
            return Work(frame, "given")
        if frame.image is None:
            return Work(frame, "predict")
        if self.plan is None:
            raise UserError("frames are images but no pipeline was given (--pipeline, --bundle or --model)")
        image = {self.plan.image: frame.image}
        if self.plan.pre is None:
            return Work(frame, "detect", image)
        t0 = time.perf_counter()
        values = dict(self.plan.pre.run(image).outputs)
        self._counters.add_time("pre", time.perf_counter() - t0)
        return Work(frame, "detect", values)

    def _infer(self) -> None:
        n, ended = len(self.sources), 0
        while ended < n:
            first = self._pre_q.get()
            if first is None:
                return
            items = [first]
            need = int(_detects(first))
            if need:
                deadline = time.perf_counter() + self.max_wait
                while need < self.batch:
                    left = deadline - time.perf_counter()
                    item = self._pre_q.get(timeout=left) if left > 0 else None
                    if item is None:
                        break
                    items.append(item)
                    if isinstance(item, End):
                        break  # a stream ended mid-batch: run what is here now
                    need += _detects(item)
            work = [w for w in items if _detects(w)]
            if work:
                try:
                    self._run_batch(work)
                except Exception as e:  # noqa: BLE001 - named by stage and stream
                    self._fail("infer", work[0].frame.stream, e)
                    return
            for item in items:
                ended += isinstance(item, End)
                if not self._infer_q.put(item):
                    return

    def _run_batch(self, work: list[Work]) -> None:
        plan = self.plan
        assert plan is not None  # noqa: S101 - _prepare made "detect" work only with a plan
        if plan.whole is not None:
            for w in work:
                t0 = time.perf_counter()
                w.values = dict(plan.whole.run(w.values).outputs)
                self._counters.add_time("infer", time.perf_counter() - t0)
                self._counters.batch(1)
            return
        tensors = list(plan.model.inputs.values())
        groups: dict[tuple, list[Work]] = {}
        for w in work:
            key = tuple((np.shape(w.values[t]), str(getattr(w.values[t], "dtype", ""))) for t in tensors)
            groups.setdefault(key, []).append(w)
        for key, group in groups.items():
            sizes = {shape[0] if shape else None for shape, _ in key}
            batchable = (self._batching and plan.dynamic_batch and len(group) > 1 and len(sizes) == 1
                         and None not in sizes)
            probing = batchable and self._probe is not None and len(self._probe) < PROBE_CALLS
            t0 = time.perf_counter()
            if batchable and not (probing and len(self._probe) % 2):  # probing: every other call frame by frame
                if self._run_batched(group, tensors, sizes.pop()):
                    if probing:
                        self._probed(True, (time.perf_counter() - t0) / len(group))
                    continue
            for w in group:
                t1 = time.perf_counter()
                w.values.update(plan.run_model({t: w.values[t] for t in tensors}))
                self._counters.add_time("infer", time.perf_counter() - t1)
                self._counters.batch(1)
            if probing:
                self._probed(False, (time.perf_counter() - t0) / len(group))

    def _run_batched(self, group: list[Work], tensors: list[str], size: int) -> bool:
        """One engine call on the group's inputs concatenated on axis 0, outputs split back per frame; False when
        the outputs are not batch-major (the model then runs frame by frame from now on)."""
        assert self.plan is not None  # noqa: S101
        t0 = time.perf_counter()
        out = self.plan.run_model({t: np.concatenate([w.values[t] for w in group], 0) for t in tensors})
        self._counters.add_time("infer", time.perf_counter() - t0)
        total = size * len(group)
        if not all(np.ndim(v) > 0 and np.shape(v)[0] == total for v in out.values()):
            self._batching = False
            return False
        for k, w in enumerate(group):
            w.values.update({name: v[k * size:(k + 1) * size] for name, v in out.items()})
        self._counters.batch(len(group))
        return True

    def _probed(self, batched: bool, per_frame: float) -> None:
        """Record a probe call; after ``PROBE_CALLS`` keep batching only if it is faster per frame (the first call
        of each kind, which pays the engine's first-shape costs, is left out)."""
        assert self._probe is not None  # noqa: S101
        self._probe.append((batched, per_frame))
        if len(self._probe) == PROBE_CALLS:
            b, s = (float(np.median([t for k, t in self._probe if k is kind][1:])) for kind in (True, False))
            if b > PROBE_GAIN * s:
                self._batching = False
                self.batch = 1  # no more waiting for batches to fill

    def _batching_report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"on": bool(self._batching and self.batch > 1), "auto": self._auto}
        if self._probe is not None and len(self._probe) >= PROBE_CALLS:
            for kind, name in ((True, "batched_ms_per_frame"), (False, "single_ms_per_frame")):
                out[name] = round(float(np.median([t for k, t in self._probe if k is kind][1:])) * 1e3, 3)
        return out

    def _post(self) -> None:
        n, ended = len(self.sources), 0
        while ended < n:
            item = self._infer_q.get()
            if item is None:
                return
            if isinstance(item, End):
                ended += 1
                self._counters.ended[item.stream] = True
                continue
            result = self._result(item)
            if result is None or not self._out.put(result):
                return
        try:
            self._close_sinks(failed=False)
        except Exception as e:  # noqa: BLE001 - named by stage
            self._fail("sink", -1, e)
            return
        self._out.put(DONE)

    def _result(self, w: Work) -> FrameResult | None:
        frame, s = w.frame, w.frame.stream
        stage = "post-process"
        try:
            t0 = time.perf_counter()
            det = None
            if w.mode == "given":
                det = frame.detections
            elif w.mode == "detect":
                values = w.values or {}
                if self.plan is not None and self.plan.post is not None:
                    values = self.plan.post.run({t: values[t] for t in self.plan.post.inputs}).outputs
                det = detections(values)
                self._counters.add_time("post", time.perf_counter() - t0)
            stage, t0 = "track", time.perf_counter()
            tracker = self._trackers[s]
            if tracker is None:
                tracks = Tracks()
            else:
                tracks = tracker.update(det) if det is not None else tracker.predict()
                self._counters.add_time("track", time.perf_counter() - t0)
            now = time.perf_counter()
            result = FrameResult(s, frame.index, frame.time, det if det is not None else Detections(), tracks,
                                 detected=det is not None, latency=now - frame.arrived,
                                 image=frame.image if self._keep_images else None)
            if self._sinks:
                stage = "sink"
                for sink in self._sinks:
                    sink.write(result)
                self._counters.add_time("sink", time.perf_counter() - now)
        except Exception as e:  # noqa: BLE001 - named by stage and stream
            self._fail(stage, s, e)
            return None
        self._counters.done(s, result.latency, result.detected)
        return result


def _detects(item: Any) -> bool:
    return isinstance(item, Work) and item.mode == "detect"


def detections(values: dict[str, Any]) -> Detections:
    """A frame's Detections from a detector's tensors: boxes [N, 4] xyxy, scores [N], class ids [N]."""
    boxes = np.asarray(values["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = values.get("scores")
    classes = values.get("class_ids", values.get("classes"))
    if classes is None and "labels" in values and np.asarray(values["labels"]).dtype.kind in "iu":
        classes = values["labels"]
    return Detections(boxes, None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1),
                      None if classes is None else np.asarray(classes).astype(np.int64).reshape(-1))


def quiet(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - cleanup after another error: that error is the one reported
        pass


def spec_of(src: Any) -> str:
    return str(getattr(src, "spec", None) or src)
