"""``slipway stream`` side by side: tracking quality and speed against roboflow's ``trackers`` package.

* **trackers** - synthesized scenes (:func:`slipway.stream.synth.make_scene`: moving, occluding boxes with MOT
  ground truth) and the same noisy detections (:func:`slipway.stream.synth.noisy_detections`: jitter, misses,
  low-scored false positives) into slipway's SortTracker / ByteTracker (through ``StreamTracker``) and
  ``trackers``' SORTTracker / ByteTrackTracker, with the thresholds the two share set alike (:data:`PAIRS`), and
  slipway's again with the papers' lifecycle rules (:data:`OWN_RULES`). MOTA / IDF1 / HOTA by
  :func:`slipway.stream.evaluate.evaluate_many` (TrackEval) over all scenes combined and per scene; time per
  frame of the tracker update alone (the peer's ``supervision.Detections`` and slipway's ``Detections`` are built
  before the clock starts; evaluation is not timed): the median over repeats of a whole pass over the scene,
  divided by its frames, the trackers taking turns pass by pass. Then slipway's trackers detecting every N frames
  and predicting in between (``--every N``).

* **end to end** - (bench/stream_e2e.py) a 1080p H.264 file -> 640 letterbox -> a YOLO-style detector ->
  ByteTrack through ``slipway.stream.run_stream`` against decode-only, detector-only and a plain loop; four 720p
  streams with cross-stream batching off / on / automatic, as fast as possible and paced live.

Targets (issue 18): MOTA / IDF1 / HOTA within 1 point of the peer or better, >= 3x faster per frame; the
pipeline >= 0.9x min(decode-only, detector-only) FPS.

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.stream``; the peer is installed without its GUI
OpenCV (slipway keeps ``opencv-python-headless``): ``pip install --no-deps trackers==2.6.1 supervision==0.31.2
pydeprecate==0.13.0 defusedxml==0.7.1`` (rich, requests, tqdm, pyyaml, pillow and scipy are already there).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import machine, publish, versions
from slipway.stream.evaluate import TrackScores, evaluate, evaluate_many
from slipway.stream.frames import Detections
from slipway.stream.mot import by_frame, tracks_rows
from slipway.stream.synth import make_scene, noisy_detections
from slipway.stream.track import StreamTracker

# (frames, objects, seed): 300-600 frames, 10-30 objects.
SCENES = ((300, 10, 0), (400, 15, 1), (500, 20, 2), (600, 30, 3))

# Each pair: slipway's parameters and the peer's, set alike where the two have a parameter for the same thing.
# SORT: max_age = lost_track_buffer (30 frames at 30 fps), min_hits = minimum_consecutive_frames, iou_threshold =
#   minimum_iou_threshold, min_score = track_activation_threshold (the peer's defaults).
# ByteTrack: high_thresh = high_conf_det_threshold, new_track_thresh = track_activation_threshold, max_age =
#   lost_track_buffer; the peer matches both stages (and unconfirmed tracks) at IoU >= minimum_iou_threshold 0.1, so
#   match_thresh = low_match_thresh = unconfirmed_match_thresh = 1 - 0.1 (ByteTrack's cost-limit convention); the
#   peer's low stage takes every detection under high_conf_det_threshold, so low_thresh = 0. A track is confirmed on
#   its second consecutive match in both (minimum_consecutive_frames=2). fuse_score (the IoU times the score in the
#   high stage) has no peer counterpart and keeps slipway's default (on).
# Two lifecycle rules of the peer's differ from the papers' and have a slipway parameter: its SORT drops a track
# not yet confirmed at its first miss (unconfirmed_max_age=0; SORT's paper keeps it max_age frames), its ByteTrack
# offers low-score detections to lost tracks too (low_match_lost=True; ByteTrack's paper only to the tracks tracked
# in the previous frame). PAIRS sets them alike; OWN_RULES lists them, for the rows with the papers' rules.
PAIRS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "sort": (dict(max_age=30, min_hits=3, iou_threshold=0.3, min_score=0.25, unconfirmed_max_age=0),
             dict(lost_track_buffer=30, frame_rate=30.0, track_activation_threshold=0.25,
                  minimum_consecutive_frames=3, minimum_iou_threshold=0.3)),
    "bytetrack": (dict(high_thresh=0.6, new_track_thresh=0.7, max_age=30, match_thresh=0.9, low_match_thresh=0.9,
                       unconfirmed_match_thresh=0.9, low_thresh=0.0, low_match_lost=True),
                  dict(lost_track_buffer=30, frame_rate=30.0, track_activation_threshold=0.7,
                       minimum_consecutive_frames=2, minimum_iou_threshold=0.1, high_conf_det_threshold=0.6)),
}
OWN_RULES = {"sort": dict(unconfirmed_max_age=None), "bytetrack": dict(low_match_lost=False)}
# The peer's SORT filters [x1, y1, x2, y2] with its own noise levels by default; with SORT's own [cx, cy, s, r]
# filter (what slipway's SortTracker runs) it is one more row, to tell the motion model from the rest.
PEER_VARIANTS = {"sort": {"trackers, SORT's filter": dict(state_estimator_class="XCYCSRStateEstimator")}}
PEER_CLASSES = {"sort": "SORTTracker", "bytetrack": "ByteTrackTracker"}


@dataclass
class SceneData:
    """A synthesized scene's ground truth and its detections, per frame, in both libraries' input types."""

    name: str
    frames: int
    gt: np.ndarray
    ours: list[Detections]
    peer: list[Any]  # supervision.Detections


@dataclass
class Run:
    """One tracker over one scene: its MOT rows and the seconds per frame of each repeat."""

    rows: np.ndarray
    per_frame_s: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.per_frame_s) * 1e3


def scenes(spec: tuple[tuple[int, int, int], ...] = SCENES) -> list[SceneData]:
    """The scenes and their detections, built once (outside every timed region)."""
    import supervision as sv

    out = []
    for frames, objects, seed in spec:
        scene = make_scene(frames=frames, objects=objects, seed=seed)
        dets = by_frame(noisy_detections(scene, seed=seed), frames)
        ours, peer = [], []
        for d in dets:
            boxes = np.concatenate([d[:, 2:4], d[:, 2:4] + d[:, 4:6]], axis=1)
            ours.append(Detections(boxes, d[:, 6], d[:, 7].astype(np.int64)))
            peer.append(sv.Detections(xyxy=boxes.astype(np.float32), confidence=d[:, 6].astype(np.float32),
                                      class_id=d[:, 7].astype(int)))
        out.append(SceneData(f"{frames} frames, {objects} objects, seed {seed}", frames, scene.gt, ours, peer))
    return out


@dataclass
class Spec:
    """How to run one tracker over one scene: a fresh tracker, one frame's step (the timed call), its inputs, and
    the MOT rows of one frame's output."""

    make: Callable[[], Any]
    step: Callable[[Any, Any], Any]
    inputs: list[Any]
    to_rows: Callable[[int, Any], np.ndarray]


def _pass(spec: Spec) -> tuple[float, list[Any]]:
    """One pass over the scene with a fresh tracker: seconds per frame spent in ``step`` alone, and the outputs."""
    tracker = spec.make()
    outs, spent = [], 0.0
    for x in spec.inputs:
        t0 = time.perf_counter()
        out = spec.step(tracker, x)
        spent += time.perf_counter() - t0
        outs.append(out)
    return spent / len(spec.inputs), outs


def run_alternating(specs: dict[str, Spec], repeats: int) -> dict[str, Run]:
    """``repeats`` passes of every spec, the specs taking turns (each round starting with the next one), so a change
    of the machine's background load falls on all of them alike; the rows come from the first pass."""
    times: dict[str, list[float]] = {name: [] for name in specs}
    rows: dict[str, np.ndarray] = {}
    names = list(specs)
    for r in range(max(1, repeats)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            per_frame, outs = _pass(specs[name])
            times[name].append(per_frame)
            if name not in rows:
                rows[name] = np.concatenate([specs[name].to_rows(f, o) for f, o in enumerate(outs, 1)])
    return {name: Run(rows[name], times[name]) for name in specs}


def ours(kind: str, scene: SceneData, **params: Any) -> Spec:
    """slipway's tracker through StreamTracker: ``Detections`` in, ``Tracks`` out."""
    return Spec(lambda: StreamTracker(kind, **params), lambda tr, d: tr.update(d), scene.ours,
                lambda f, t: tracks_rows(f, t.boxes, t.ids, t.scores))


def peer(kind: str, scene: SceneData, **params: Any) -> Spec:
    """The trackers package's tracker: ``supervision.Detections`` in and out (tracker_id -1: no mature track)."""
    import trackers

    cls = getattr(trackers, PEER_CLASSES[kind])
    if isinstance(params.get("state_estimator_class"), str):
        from trackers.utils import state_representations

        params = {**params, "state_estimator_class": getattr(state_representations, params["state_estimator_class"])}

    def to_rows(f: int, res: Any) -> np.ndarray:
        keep = res.tracker_id >= 0
        return tracks_rows(f, res.xyxy[keep].astype(np.float64), res.tracker_id[keep],
                           None if res.confidence is None else res.confidence[keep])

    return Spec(lambda: cls(**params), lambda tr, d: tr.update(d), scene.peer, to_rows)


def run_every(kind: str, scene: SceneData, every: int, **params: Any) -> np.ndarray:
    """slipway's tracker detecting every ``every`` frames and predicting in between (``--every N``): MOT rows."""
    tracker = StreamTracker(kind, **params)
    rows = []
    for f, det in enumerate(scene.ours, 1):
        t = tracker.update(det) if (f - 1) % every == 0 else tracker.predict()
        rows.append(tracks_rows(f, t.boxes, t.ids, t.scores))
    return np.concatenate(rows)


def _quality(s: TrackScores) -> list[str]:
    return [f"{100 * s.mota:.2f}", f"{100 * s.idf1:.2f}", f"{100 * s.hota:.2f}", str(s.idsw), f"{s.fp:,}",
            f"{s.fn:,}"]


def tracker_section(data: list[SceneData], repeats: int) -> tuple[list[tuple[str, list[str], list[list[str]]]],
                                                                   dict[str, Any]]:
    """The tracker tables (all scenes combined, per scene, detecting every N frames) and their numbers."""
    combined, per_scene, every_rows, record = [], [], [], {}
    for kind, (ours_params, peer_params) in PAIRS.items():
        own = {**ours_params, **OWN_RULES[kind]}
        variants = PEER_VARIANTS.get(kind, {})
        per = [run_alternating({"slipway": ours(kind, s, **ours_params), "slipway, papers' rules": ours(kind, s, **own),
                                "trackers": peer(kind, s, **peer_params),
                                **{name: peer(kind, s, **peer_params, **extra) for name, extra in variants.items()}},
                               repeats) for s in data]
        runs = {tool: [p[tool] for p in per] for tool in per[0]}
        scores = {tool: evaluate_many([(s.gt, r.rows, s.frames) for s, r in zip(data, rs, strict=True)])
                  for tool, rs in runs.items()}
        # per frame over all scenes: the frame-weighted mean of each scene's median
        ms = {tool: sum(r.median_ms * s.frames for s, r in zip(data, rs, strict=True)) / sum(s.frames for s in data)
              for tool, rs in runs.items()}
        for tool in runs:
            combined.append([kind, tool, *_quality(scores[tool]), f"{ms[tool]:.3f}", f"{ms['trackers'] / ms[tool]:.1f}x"])
        delta = [f"{100 * (getattr(scores['slipway'], m) - getattr(scores['trackers'], m)):+.2f}"
                 for m in ("mota", "idf1", "hota")]
        combined.append([kind, "slipway - trackers (points)", *delta, "", "", "", "", ""])
        record[kind] = {"params": {"slipway": ours_params, "slipway, papers' rules": own, "trackers": peer_params,
                                   **{name: {**peer_params, **extra} for name, extra in variants.items()}},
                        "combined": {t: {**scores[t].as_dict(), "ms_per_frame": ms[t]} for t in scores},
                        "scenes": [], "every": {}}
        for i, s in enumerate(data):
            entry = {}
            for tool in ("slipway", "trackers"):
                run = runs[tool][i]
                sc = evaluate(s.gt, run.rows, frames=s.frames)
                entry[tool] = {**sc.as_dict(), "ms_per_frame": run.median_ms,
                               "per_frame_ms_repeats": [1e3 * x for x in run.per_frame_s]}
                per_scene.append([s.name, kind, tool, *_quality(sc)[:3], f"{run.median_ms:.3f}",
                                  f"{runs['trackers'][i].median_ms / run.median_ms:.1f}x"])
            record[kind]["scenes"].append({"scene": s.name, **entry})
        for every in (1, 2, 3, 5):
            sc = evaluate_many([(s.gt, run_every(kind, s, every, **ours_params), s.frames) for s in data])
            every_rows.append([kind, str(every), *_quality(sc)])
            record[kind]["every"][every] = sc.as_dict()
    heads = ["tracker", "library", "MOTA", "IDF1", "HOTA", "IDSW", "FP", "FN", "ms / frame", "speed-up"]
    return [
        ("trackers: all scenes combined (TrackEval), same detections, shared thresholds and rules set alike", heads,
         combined),
        ("trackers: per scene", ["scene", "tracker", "library", "MOTA", "IDF1", "HOTA", "ms / frame", "speed-up"],
         per_scene),
        ("slipway, detecting every N frames and predicting in between (all scenes combined)",
         ["tracker", "N", "MOTA", "IDF1", "HOTA", "IDSW", "FP", "FN"], every_rows),
    ], record


NOTES = (
    "\nNotes: scores in percent, combined over the scenes as TrackEval combines sequences; IoU 0.5 for MOTA and "
    "IDF1. Same detections into both libraries; the thresholds the two share are set alike (bench/stream.py PAIRS: "
    "the peer's defaults, mapped onto slipway's parameters), the rest are each library's defaults. The two report "
    "different boxes: slipway reports each track's Kalman-filtered box, trackers the matched detection's box. "
    "'slipway, papers' rules': the same thresholds, but SORT keeps an unconfirmed track max_age frames (the peer "
    "drops it at its first miss: slipway's unconfirmed_max_age=0) and ByteTrack offers low-score detections only "
    "to the tracks tracked in the previous frame (the peer also to lost ones: low_match_lost=True). 'trackers, "
    "SORT's filter': the peer's SORT with XCYCSRStateEstimator, the [cx, cy, s, r] Kalman filter of SORT's paper "
    "that slipway's SortTracker runs (the peer's default filters [x1, y1, x2, y2] with lower noise). "
    "'ms / frame' is the tracker update alone (inputs built beforehand, no evaluation; slipway's includes "
    "StreamTracker and its Tracks record, the peer's its supervision.Detections result), median over repeats of a "
    "pass over the scene divided by its frames (the three trackers of a scene take turns, pass by pass), then "
    "frame-weighted over the scenes; 'speed-up' = trackers' time / slipway's. slipway's cost is mostly a fixed "
    "number of numpy calls a frame, the peer's grows with the tracks (a Python object and a Kalman filter each), "
    "so the ratio grows with the objects in the scene. Timed on 2 CPU cores shared with other work: expect noise "
    "in the times. "
    "'Every N' rows: slipway's tracker given detections on every N-th frame only and predicting the frames between "
    "(StreamTracker.predict), scored on every frame.\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--e2e-rounds", type=int, default=3, help="rounds of the end-to-end jobs (the best kept)")
    parser.add_argument("--frames", type=int, default=150, help="frames of the end-to-end 1080p file")
    parser.add_argument("--no-e2e", action="store_true", help="the tracker section only")
    args = parser.parse_args()
    t0 = time.perf_counter()
    host, found = machine(), versions()
    from importlib import metadata

    for pkg in ("trackers", "supervision", "trackeval", "scipy"):
        found[pkg] = metadata.version(pkg)
    data = scenes()
    sections, record = tracker_section(data, args.repeats)
    notes, e2e = NOTES, None
    if not args.no_e2e:
        import tempfile
        from pathlib import Path

        from bench import stream_e2e

        with tempfile.TemporaryDirectory(prefix="slipway-stream-e2e-") as tmp:
            e2e = stream_e2e.measure(Path(tmp), args.frames, args.e2e_rounds, 1, 15.0)
        sections += stream_e2e.sections_of(e2e)
        notes += stream_e2e.notes(e2e, args.e2e_rounds, 1, 15.0, None)
    publish("stream", "slipway stream: tracking vs the trackers package, and end to end", host, found, sections,
            notes, time.perf_counter() - t0, {"machine": host, "versions": found, "scenes": [s.name for s in data],
                                              "trackers": record, "end_to_end": e2e})


if __name__ == "__main__":
    main()
