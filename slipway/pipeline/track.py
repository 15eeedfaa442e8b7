"""The ``track`` op: a multi-object tracker as a pipeline step, its tracker kept between runs.

``track`` takes a frame's detections (``boxes`` [N, 4] xyxy, ``scores`` [N], ``class_ids`` [N], what the
detect pipelines' decode steps give) and returns that frame's tracks: ``boxes`` [K, 4] float64, ``ids`` [K]
int64, ``classes`` [K] int64, ``scores`` [K] float64, ``ages`` [K] int64 and ``predicted`` [K] bool, as
:class:`slipway.stream.track.StreamTracker` gives them (``kind``: ``bytetrack`` or ``sort``, ``per_class``,
any other param goes to the tracker's constructor and is checked there, on the first frame).

The op is registered ``stateful``: its :class:`StreamTracker` lives in the ``state`` dict the pipeline
hands it (:mod:`slipway.pipeline.core`): in process, one tracker per running pipeline
(``Pipeline.reset_state()`` or a new pipeline starts again); served with ``sequence_batching``, one per
sequence (correlation ID), made at its ``sequence_start`` and freed at its end or idle timeout
(:mod:`slipway.serve.sequence`). The optional input ``reset`` (a truthy value) forgets every track
before the frame. Frames of one stream must come in order.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from slipway.pipeline.core import register_op

__all__ = ["track"]

OUTPUTS = ("boxes", "ids", "classes", "scores", "ages", "predicted")


@register_op("track", inputs=("boxes", "scores", "class_ids", "reset"), outputs=OUTPUTS, stateful=True)
def track(boxes: Any, scores: Any = None, class_ids: Any = None, reset: Any = False, kind: str = "bytetrack",
          per_class: bool = False, state: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    """Tracks of one frame from its detections; the tracker is kept in ``state`` between frames."""
    from slipway.stream.frames import Detections
    from slipway.stream.track import StreamTracker

    state = {} if state is None else state
    lock = state.setdefault("lock", threading.Lock())
    det = Detections(np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                     None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1),
                     None if class_ids is None else np.asarray(class_ids).astype(np.int64).reshape(-1))
    with lock:
        tracker = state.get("tracker")
        if tracker is None or _truthy(reset):
            tracker = state["tracker"] = StreamTracker(kind, per_class, **params)
        tracks = tracker.update(det)
    return {"boxes": tracks.boxes.astype(np.float64, copy=False).reshape(-1, 4),
            "ids": tracks.ids.astype(np.int64, copy=False), "classes": tracks.classes.astype(np.int64, copy=False),
            "scores": tracks.scores.astype(np.float64, copy=False), "ages": tracks.ages.astype(np.int64, copy=False),
            "predicted": tracks.predicted.astype(bool, copy=False)}


def _truthy(value: Any) -> bool:
    """``reset`` as sent: a bool, a number or a one-element array."""
    if value is None:
        return False
    a = np.asarray(value)
    return bool(a.reshape(-1)[0]) if a.size else False
