"""The stateful ``track`` op (slipway/pipeline/track.py) and the pipeline's state hook (core.py).

In process, one tracker per running pipeline: the op's tracks equal a plain StreamTracker loop over the same
detections; a ``state`` given to ``run`` keeps a stream of its own; ``reset_state``, a new pipeline or the
``reset`` input start again; parameters reach the tracker; the file form round-trips.
"""

from __future__ import annotations

import numpy as np
import pytest

from slipway.pipeline import Pipeline, PipelineError, Step
from slipway.pipeline.core import OPS, _ensure_ops
from slipway.stream.frames import Detections
from slipway.stream.synth import make_scene, noisy_detections
from slipway.stream.track import StreamTracker

INPUTS = {"boxes": "boxes", "scores": "scores", "class_ids": "class_ids"}


def _frames(seed: int = 0, frames: int = 40) -> list[dict[str, np.ndarray]]:
    scene = make_scene(frames=frames, objects=6, size=(320, 240), seed=seed, classes=2)
    dets = noisy_detections(scene, seed=seed)
    out = []
    for f in range(1, frames + 1):
        r = dets[dets[:, 0] == f]
        out.append({"boxes": np.c_[r[:, 2:4], r[:, 2:4] + r[:, 4:6]].astype(np.float32),
                    "scores": r[:, 6].astype(np.float32), "class_ids": r[:, 7].astype(np.int64)})
    return out


def _pipeline(**params) -> Pipeline:
    step = Step.op("track", "track", INPUTS, {"ids": "ids", "boxes": "track_boxes", "classes": "classes",
                                              "scores": "track_scores", "ages": "ages"}, **params)
    return Pipeline([step], ["boxes", "scores", "class_ids"], ["ids", "track_boxes", "classes", "track_scores", "ages"])


def _reference(frames, **params):
    tracker = StreamTracker(**params)
    return [tracker.update(Detections(f["boxes"], f["scores"], f["class_ids"])) for f in frames]


def _check(out: dict, want) -> None:
    np.testing.assert_array_equal(out["ids"], want.ids)
    np.testing.assert_array_equal(out["track_boxes"], want.boxes)
    np.testing.assert_array_equal(out["classes"], want.classes)
    np.testing.assert_array_equal(out["track_scores"], want.scores)
    np.testing.assert_array_equal(out["ages"], want.ages)


def test_registered_stateful() -> None:
    _ensure_ops()  # the op modules register on first use
    spec = OPS["track"]
    assert spec.stateful and spec.outputs == ("boxes", "ids", "classes", "scores", "ages", "predicted")
    assert _pipeline().stateful_steps == ["track"]


@pytest.mark.parametrize("params", [{}, {"kind": "sort", "max_age": 2}, {"per_class": True}],
                         ids=["bytetrack", "sort", "per-class"])
def test_equals_a_stream_tracker_loop(params) -> None:
    frames = _frames()
    want = _reference(frames, **params)
    p = _pipeline(**params)
    for f, w in zip(frames, want, strict=True):
        _check(p.run(f).outputs, w)
    assert max(len(w) for w in want) >= 3


def test_each_state_is_its_own_stream() -> None:
    a, b = _frames(1), _frames(2)
    want_a, want_b = _reference(a), _reference(b)
    p = _pipeline()
    sa: dict = {}
    sb: dict = {}
    for fa, fb, wa, wb in zip(a, b, want_a, want_b, strict=True):  # interleaved, as a server runs two sequences
        _check(p.run(fa, state=sa).outputs, wa)
        _check(p.run(fb, state=sb).outputs, wb)
    assert set(sa) == {"track"} and "tracker" in sa["track"]
    assert p._state == {}  # the pipeline's own state was not touched
    with pytest.raises(PipelineError, match="state: expected a dict, got list"):
        p.run(a[0], state=[])


def test_reset_state_new_pipeline_and_reset_input() -> None:
    frames = _frames(3)
    want = _reference(frames)
    p = _pipeline()
    for f in frames[:10]:
        p.run(f)
    p.reset_state()
    _check(p.run(frames[0]).outputs, want[0])  # ids from 1 again
    _check(_pipeline().run(frames[0]).outputs, want[0])
    step = Step.op("track", "track", {**INPUTS, "reset": "reset"}, {"ids": "ids"})
    q = Pipeline([step], ["boxes", "scores", "class_ids", "reset"], ["ids"])
    for f in frames[:10]:
        q.run({**f, "reset": np.array([False])})
    got = q.run({**frames[0], "reset": np.array([True])}).outputs["ids"]
    np.testing.assert_array_equal(got, want[0].ids)


def test_bad_parameters_and_state_misuse() -> None:
    frames = _frames()
    with pytest.raises(PipelineError, match="step 'track'.*tracker bytetrack: unknown parameter 'nope'"):
        _pipeline(nope=1).run(frames[0])
    with pytest.raises(PipelineError, match="'state' of op 'track' is kept by the pipeline"):
        _pipeline(state={})
    with pytest.raises(PipelineError, match="step 'track' keeps state between runs"):
        _pipeline().map(frames[:3], workers=2)
    assert len(_pipeline().map(frames[:3])) == 3


def test_file_round_trip(tmp_path) -> None:
    frames = _frames()
    want = _reference(frames, kind="sort")
    path = _pipeline(kind="sort").to_file(tmp_path / "track.yaml")
    p = Pipeline.from_file(path)
    assert p.stateful_steps == ["track"]
    for f, w in zip(frames[:10], want[:10], strict=True):
        _check(p.run(f).outputs, w)
