"""Sinks: MOT files round-trip through read_mot, JSON lines, annotated videos, per-stream names, atomic commits."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest

from slipway.errors import UserError
from slipway.pipeline.draw import color_for
from slipway.stream.frames import Detections, FrameResult, Tracks
from slipway.stream.mot import read_mot
from slipway.stream.sink import JsonLinesSink, MotSink, VideoSink, make_sinks, stream_path


def _tracks(rng: np.random.Generator, n: int, predicted: bool = False) -> Tracks:
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(10, 60, (n, 2))
    return Tracks(boxes=np.round(np.c_[xy, xy + wh], 2), ids=np.arange(1, n + 1) * 3,
                  classes=rng.integers(-1, 3, n), scores=np.round(rng.uniform(0.3, 1, n), 4),
                  ages=rng.integers(0, 50, n), predicted=np.full(n, predicted) | (np.arange(n) == 0))


def _results(streams: int = 1, frames: int = 6, seed: int = 0) -> list[FrameResult]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(frames):
        for s in range(streams):
            dets = Detections(rng.uniform(0, 100, (2, 4)).cumsum(axis=1), rng.uniform(0, 1, 2), [0, -1])
            out.append(FrameResult(s, i * 2, i * 2 / 30, dets, _tracks(rng, i % 4), detected=i % 2 == 0,
                                   latency=0.0123456))
    return out


def test_stream_path_rule(tmp_path):
    assert stream_path(tmp_path / "t.txt", 0) == tmp_path / "t.txt"
    assert stream_path(tmp_path / "t.txt", 2) == tmp_path / "t.2.txt"
    assert stream_path(tmp_path / "cam{stream}/t.mp4", 0) == tmp_path / "cam0/t.mp4"
    assert stream_path("out-{stream}.txt", 3).name == "out-3.txt"


def test_mot_sink_round_trip_per_stream_and_atomic(tmp_path):
    results = _results(streams=2)
    path = tmp_path / "tracks.txt"
    with MotSink(path) as sink:
        assert not sink.needs_image
        for r in results:
            sink.write(r)
        assert not path.exists() and not (tmp_path / "tracks.1.txt").exists()  # nothing final before close
    sink.close()  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracks.1.txt", "tracks.txt"]
    for stream, name in ((0, "tracks.txt"), (1, "tracks.1.txt")):
        rows = read_mot(tmp_path / name)
        mine = [r for r in results if r.stream == stream]
        expect = np.concatenate([np.c_[np.full(len(r.tracks), r.index + 1), r.tracks.ids, r.tracks.boxes[:, :2],
                                       r.tracks.boxes[:, 2:] - r.tracks.boxes[:, :2], r.tracks.scores]
                                 for r in mine])
        np.testing.assert_allclose(rows[:, :7], expect, atol=0.006)
        assert (rows[:, 7:] == -1).all()


def test_mot_sink_empty_stream_still_gets_a_file(tmp_path):
    r = FrameResult(0, 0, 0.0, Detections(), Tracks())
    with MotSink(tmp_path / "t{stream}.txt") as sink:
        sink.write(r)
    assert (tmp_path / "t0.txt").read_text() == ""


def test_json_lines(tmp_path):
    results = _results(streams=2, frames=4)
    path = tmp_path / "out.jsonl"
    with JsonLinesSink(path) as sink:
        for r in results:
            sink.write(r)
        assert not path.exists()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(results)
    for d, r in zip(lines, results, strict=True):
        assert (d["stream"], d["index"], d["detected"], d["latency_ms"]) == (r.stream, r.index, r.detected, 12.346)
        assert d["time"] == pytest.approx(r.time, abs=1e-6)
        np.testing.assert_allclose(np.reshape(d["detections"]["boxes"], (-1, 4)), r.detections.boxes, atol=0.005)
        assert d["detections"]["classes"] == [0, -1]
        t = d["tracks"]
        assert t["ids"] == r.tracks.ids.tolist() and t["classes"] == r.tracks.classes.tolist()
        assert t["ages"] == r.tracks.ages.tolist() and t["predicted"] == r.tracks.predicted.tolist()
        np.testing.assert_allclose(np.reshape(t["boxes"], (-1, 4)), r.tracks.boxes, atol=0.005)
        np.testing.assert_allclose(t["scores"], r.tracks.scores, atol=5e-5)
    buf = io.StringIO()
    with JsonLinesSink(buf) as sink:
        sink.write(results[0])
    assert json.loads(buf.getvalue())["index"] == 0 and not buf.closed


def _frame_results(stream: int, sizes: list[tuple[int, int]]) -> list[FrameResult]:
    out = []
    for i, (w, h) in enumerate(sizes):
        image = np.full((h, w, 3), 128, np.uint8)
        s = w / sizes[0][0]
        tracks = Tracks(boxes=np.array([[40, 40, 120, 100], [150, 60, 200, 140]]) * s, ids=np.array([4, 9]),
                        classes=np.array([-1, 2]), scores=np.array([0.9, 0.8]), ages=np.array([i, i]),
                        predicted=np.array([False, i % 2 == 1]))
        out.append(FrameResult(stream, i, i / 25, Detections(), tracks, image=image))
    return out


def test_video_sink_draws_tracks(tmp_path):
    path = tmp_path / "v.mp4"
    sizes = [(321, 181)] * 6 + [(642, 362)] * 4  # odd size, then a resolution change
    sink = VideoSink(path, crf=12)
    assert sink.needs_image
    with sink:
        for r in _frame_results(0, sizes) + _frame_results(1, [(160, 120)] * 3):
            sink.write(r)
        assert not path.exists()
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
        assert c.streams.video[0].duration * c.streams.video[0].time_base == pytest.approx(10 / 25, abs=0.05)
    assert len(frames) == 10 and all(f.shape == (182, 322, 3) for f in frames)
    for f in (frames[0], frames[8]):
        color = np.array(color_for(4))
        edge = f[70, 39:42].astype(int)  # the left edge of track 4's box (x = 40, 2 px thick), below its label
        assert np.abs(edge - color).max(axis=1).min() < 40, (edge, color)
        assert np.abs(f[70, 80].astype(int) - 128).max() < 10  # the box's inside is untouched
    with av.open(str(tmp_path / "v.1.mp4")) as c:
        assert [f.width for f in c.decode(video=0)] == [160] * 3


def test_video_sink_needs_images(tmp_path):
    with VideoSink(tmp_path / "v.mp4") as sink, pytest.raises(UserError, match="stream 0 frame 0 has no image"):
        sink.write(FrameResult(0, 0, 0.0, Detections(), Tracks()))
    assert not (tmp_path / "v.mp4").exists()


def test_make_sinks(tmp_path):
    sinks = make_sinks(mot=tmp_path / "a.txt", json="-", video=tmp_path / "a.mp4", trail=5)
    assert [type(s).__name__ for s in sinks] == ["MotSink", "JsonLinesSink", "VideoSink"]
    assert [s.needs_image for s in sinks] == [False, False, True]
    assert make_sinks() == []
    for s in sinks:
        s.close()
    assert not list(tmp_path.iterdir())
