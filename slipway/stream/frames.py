"""The records that travel through a stream run: a decoded frame, a frame's detections, its tracks, its result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def _empty(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


@dataclass
class Detections:
    """One frame's detections: ``boxes`` [N, 4] xyxy in original pixels (float64), ``scores`` [N] (float64),
    ``classes`` [N] (int64; -1 where the detector has no classes)."""

    boxes: np.ndarray = field(default_factory=lambda: _empty((0, 4), np.float64))
    scores: np.ndarray | None = None  # None: 1 for every box
    classes: np.ndarray | None = None  # None: -1 for every box

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.ones(n) if self.scores is None else np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.classes = (np.full(n, -1, np.int64) if self.classes is None
                        else np.asarray(self.classes, dtype=np.int64).reshape(-1))
        if len(self.scores) != n or len(self.classes) != n:
            raise ValueError(f"detections: {n} boxes but {len(self.scores)} scores and {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class Tracks:
    """One frame's tracks, by ascending id: ``boxes`` [K, 4] xyxy, ``ids`` [K], ``classes`` [K] (-1: class-agnostic),
    ``scores`` [K] (of the detection last matched), ``ages`` [K] (frames since the track started) and
    ``predicted`` [K] (True where the box is the filter's prediction: no detection matched it in this frame)."""

    boxes: np.ndarray = field(default_factory=lambda: _empty((0, 4), np.float64))
    ids: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))
    classes: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))
    scores: np.ndarray = field(default_factory=lambda: _empty((0,), np.float64))
    ages: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))
    predicted: np.ndarray = field(default_factory=lambda: _empty((0,), bool))

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> np.ndarray:
        """[K, 5] of [x1, y1, x2, y2, id]: the form ``slipway.ops.clear_mot`` takes."""
        return np.concatenate([self.boxes, self.ids[:, None].astype(np.float64)], axis=1)


@dataclass
class Frame:
    """A decoded frame: the index of its source in the run (``stream``), its index in that source (before any
    stride), its presentation time in seconds (None when the container has none), the image (H x W x 3 uint8 BGR;
    None for a detections-file source) and, for a detections-file source, its given detections. ``arrived`` is
    ``time.perf_counter()`` when it was decoded: latencies count from it."""

    stream: int
    index: int
    time: float | None
    image: np.ndarray | None
    detections: Detections | None = None
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class FrameResult:
    """What a run yields per processed frame, in each stream's frame order. ``detected`` is False on the frames
    between detections (``--every N``), whose tracks are the tracker's predictions. ``latency`` is seconds from
    decode to result. ``image`` is kept only when a sink draws on it."""

    stream: int
    index: int
    time: float | None
    detections: Detections
    tracks: Tracks
    detected: bool = True
    latency: float = 0.0
    image: np.ndarray | None = None
