"""The tracker of one stream: ``slipway.ops``' SortTracker or ByteTracker over :class:`Detections`, optionally one per
class, with a prediction step for the frames between detections (``--every N``)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.ops.track import ByteTracker, SortTracker, TrackState, _IdSource, _Tracker
from slipway.stream.frames import Detections, Tracks

KINDS: dict[str, type[_Tracker]] = {"bytetrack": ByteTracker, "sort": SortTracker}


def _params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check the parameter names against the tracker's constructor (values are checked by the constructor)."""
    accepted = [p for p in inspect.signature(KINDS[kind].__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(f"tracker {kind}: unknown parameter {unknown[0]!r} (accepted: {', '.join(accepted)})")
    return params


class StreamTracker:
    """Tracks of one stream, frame by frame: :meth:`update` on frames with detections, :meth:`predict` on the frames
    between them (a skipped frame moves the tracks but is not a miss: nothing ages towards ``max_age``).

    ``kind``: ``"bytetrack"`` (:class:`slipway.ops.ByteTracker`) or ``"sort"`` (:class:`slipway.ops.SortTracker`);
    ``params`` go to its constructor. ``per_class=True`` runs one tracker per class id, so a box never takes the id
    of a track of another class; ids stay unique across classes (one id sequence from 1) and ``Tracks.classes``
    holds the tracker's class. Class-agnostic (the default), ``Tracks.classes`` is the class of the detection each
    track last matched (-1 where the detector gives none).
    """

    def __init__(self, kind: str = "bytetrack", per_class: bool = False, **params: Any) -> None:
        if kind not in KINDS:
            raise UserError(f"tracker: unknown kind {kind!r} (choose from {', '.join(KINDS)})")
        self.kind = kind
        self.per_class = bool(per_class)
        self.params = _params(kind, params)
        self._ids = _IdSource()
        self._trackers: dict[int, _Tracker] = {}
        self._frames = 0  # frames with detections so far
        self._clock = 0  # every frame so far
        self._single = None if self.per_class else self._new()

    def _new(self) -> _Tracker:
        tracker = KINDS[self.kind](**self.params)
        tracker._ids = self._ids
        # A class that first appears mid-stream gets a tracker whose rules see the stream's frame count
        # (ByteTrack confirms at once only in the stream's first frame, SORT reports early only in the first min_hits).
        tracker.frame, tracker.clock = self._frames, self._clock
        return tracker

    def update(self, det: Detections) -> Tracks:
        """Feed one frame's detections; return its tracks (``predicted`` False: each was matched in this frame)."""
        if not isinstance(det, Detections):
            raise UserError(f"tracker: expected Detections, got {type(det).__name__}")
        if self._single is not None:
            state = self._single.update_tracks(det.boxes, det.scores, det.classes)
            self._frames += 1
            self._clock += 1
            return _tracks(state)
        for c in np.unique(det.classes).tolist():
            if c not in self._trackers:
                self._trackers[c] = self._new()
        states = []
        for c, tracker in self._trackers.items():
            keep = det.classes == c
            states.append((c, tracker.update_tracks(det.boxes[keep], det.scores[keep], det.classes[keep])))
        self._frames += 1
        self._clock += 1
        return _merge(states)

    def predict(self) -> Tracks:
        """A frame without detections: the tracks reported in the last detected frame, moved by their filters
        (``predicted`` True)."""
        self._clock += 1
        if self._single is not None:
            return _tracks(self._single.predict_tracks())
        return _merge([(c, t.predict_tracks()) for c, t in self._trackers.items()])

    def reset(self) -> None:
        """Forget every track (a new video): ids start again from 1."""
        self.__init__(self.kind, self.per_class, **self.params)


def _tracks(state: TrackState, cls: int | None = None) -> Tracks:
    classes = state.classes if cls is None else np.full(len(state), cls, np.int64)
    return Tracks(state.boxes, state.ids, classes, state.scores, state.ages, state.predicted)


def _merge(states: list[tuple[int, TrackState]]) -> Tracks:
    if not states:
        return Tracks()
    parts = [_tracks(s, c) for c, s in states]
    ids = np.concatenate([p.ids for p in parts])
    order = np.argsort(ids, kind="stable")
    return Tracks(*(np.concatenate([getattr(p, f) for p in parts])[order]
                    for f in ("boxes", "ids", "classes", "scores", "ages", "predicted")))
