"""run_stream: stages on threads joined by bounded queues, cross-stream batching, --every N, overload policies,
clean stops. The exact checks use a test detector that looks a frame's detections up (pixel (0, 0) of each
rendered frame carries its index and scene), so a run's tracks must equal a plain loop's over the same detections."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from slipway.errors import UserError
from slipway.pipeline import Pipeline, Step
from slipway.stream.frames import Detections, Frame, FrameResult, Tracks
from slipway.stream.mot import by_frame, read_mot, write_mot
from slipway.stream.runner import run_stream
from slipway.stream.synth import make_scene, noisy_detections, write_video
from slipway.stream.track import StreamTracker

W, H = 320, 192
K = 32  # detections a frame can carry through the test detector's tensor
DETS: dict[int, list[np.ndarray]] = {}  # scene key -> per-frame detection rows (float32-exact)


def scene_dets(key: int, frames: int) -> list[np.ndarray]:
    if key not in DETS or len(DETS[key]) < frames:
        scene = make_scene(frames=frames, objects=6, size=(W, H), seed=key)
        rows = noisy_detections(scene, seed=key)
        rows[:, 2:7] = rows[:, 2:7].astype(np.float32)  # what survives the float32 tensor
        groups = [g[:K] for g in by_frame(rows, frames)]
        DETS[key] = groups
    return DETS[key]


def as_detections(rows: np.ndarray) -> Detections:
    boxes = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1).astype(np.float32)
    return Detections(boxes.astype(np.float64), rows[:, 6], rows[:, 7].astype(np.int64))


class FakeSource:
    """Rendered frames without a codec: pixel (0, 0) = (index % 256, index // 256, scene key)."""

    def __init__(self, key: int, frames: int, *, live: bool = False, delay: float = 0.0, endless: bool = False,
                 resize_at: int | None = None):
        self.key, self.n, self.live, self.delay, self.endless = key, frames, live, delay, endless
        self.spec = f"fake:{key}"
        self.counters = None
        self.closed = threading.Event()
        self.image = np.full((H, W, 3), 90, np.uint8)
        self.resize_at = resize_at
        if not endless:
            scene_dets(key, frames)

    def __iter__(self):
        i = 0
        while not self.closed.is_set() and (self.endless or i < self.n):
            if self.delay:
                time.sleep(self.delay)
            if i == self.resize_at:  # the resolution changes mid-stream
                self.image = np.full((W, H + 40, 3), 120, np.uint8)
            img = self.image.copy()
            img[0, 0] = (i % 256, i // 256, self.key)
            yield Frame(0, i, i / 30, img)
            i += 1

    def close(self) -> None:
        self.closed.set()


class FakeSink:
    needs_image = False

    def __init__(self) -> None:
        self.results, self.closed = [], False

    def write(self, result) -> None:
        self.results.append(result)

    def close(self) -> None:
        self.closed = True


def lookup(image: np.ndarray) -> dict:
    """The test detector's pre-process: the frame's detections as a [1, K, 6] tensor (xyxy, score, class)."""
    i, key = int(image[0, 0, 0]) + 256 * int(image[0, 0, 1]), int(image[0, 0, 2])
    rows = DETS[key][i] if key in DETS and i < len(DETS[key]) else np.zeros((0, 10))
    t = np.zeros((1, K, 6), np.float32)
    n = len(rows)
    t[0, :n, :2] = rows[:, 2:4]
    t[0, :n, 2:4] = rows[:, 2:4] + rows[:, 4:6]
    t[0, :n, 4] = rows[:, 6]
    t[0, :n, 5] = rows[:, 7]
    return {"tensor": t}


def unpack(y: np.ndarray) -> dict:
    y = y[0]
    keep = y[:, 4] > 0
    return {"boxes": y[keep, :4].astype(np.float64), "scores": y[keep, 4].astype(np.float64),
            "class_ids": y[keep, 5].astype(np.int64)}


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "identity.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", K, 6])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)]), path)
    return path


def lookup_pipeline(model: Path, post=unpack) -> Pipeline:
    return Pipeline([Step.python("pre", lookup, {"image": "image"}, {"tensor": "tensor"}),
                     Step.model("det", str(model), {"x": "tensor"}, {"y": "y"}, threads=1),
                     Step.python("post", post, {"y": "y"}, {"boxes": "boxes", "scores": "scores",
                                                              "class_ids": "class_ids"})],
                    inputs=["image"], outputs=["boxes", "scores", "class_ids"])


def plain_loop(key: int, frames: int, every: int = 1) -> list[Tracks]:
    tracker, out = StreamTracker("bytetrack"), []
    for i, rows in enumerate(scene_dets(key, frames)[:frames]):
        out.append(tracker.update(as_detections(rows)) if i % every == 0 else tracker.predict())
    return out


def same_tracks(a: Tracks, b: Tracks) -> None:
    for f in ("boxes", "ids", "classes", "scores", "ages", "predicted"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def by_stream(results) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in results:
        out.setdefault(r.stream, []).append(r)
    return out


def stream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("slipway-stream", "slipway-source"))]


# ------------------------------------------------------------------------------------------------- tests


def test_video_file_every_frame_once_in_order(tmp_path) -> None:
    """A real H.264 file through the zoo's YOLO (letterbox 128): every frame processed once, in order, with
    the batch of 4 split back per frame."""
    zoo = pytest.importorskip("tests.zoo")
    from slipway.pipeline.detect import detect_pipeline

    video = write_video(make_scene(frames=40, objects=4, size=(W, H)), tmp_path / "a.mp4")
    with detect_pipeline(zoo.export("yolo"), kind="yolo", threads=1) as pipe:
        want = [len(pipe.run({"image": img}).outputs["boxes"]) for img in _decode(video)]
        run = run_stream([str(video)], pipeline=pipe, batch=4, max_wait_ms=50)
        results = list(run)
    stats = run.stats()
    assert [r.index for r in results] == list(range(40))
    assert [len(r.detections) for r in results] == want  # batched inference gives each frame its own boxes
    assert stats["processed"] == stats["frames_in"] == 40 and stats["dropped"] == {"overflow": 0, "stale": 0,
                                                                                      "corrupt": 0}
    assert stats["streams"][0]["policy"] == "block" and stats["mean_batch"] > 1
    json.dumps(stats)
    assert not stream_threads()


def _decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def test_resolution_change_mid_stream(tmp_path) -> None:
    zoo = pytest.importorskip("tests.zoo")
    from slipway.pipeline.detect import detect_pipeline

    with detect_pipeline(zoo.export("yolo"), kind="yolo", threads=1) as pipe:
        results = list(run_stream([FakeSource(12, 16, resize_at=8), FakeSource(13, 12)], pipeline=pipe, batch=2))
        first = [r for r in results if r.stream == 0]
        assert [r.index for r in first] == list(range(16))
        for r, img in zip(first, FakeSource(12, 16, resize_at=8), strict=True):  # the same frames, one by one
            want = pipe.run({"image": img.image}).outputs["boxes"]
            np.testing.assert_allclose(r.detections.boxes, want, atol=1e-3)
            height, width = img.image.shape[:2]
            assert len(want) and want[:, 2].max() <= width and want[:, 3].max() <= height


def test_detections_file_tracks_equal_plain_loop(tmp_path) -> None:
    """A MOTChallenge detections file runs the tracker alone; its tracks (and its MOT file) equal a plain loop's."""
    from slipway.stream.sink import MotSink

    scene = make_scene(frames=60, objects=6, size=(W, H), seed=3)
    path = write_mot(tmp_path / "det.txt", noisy_detections(scene, seed=3))
    results = list(run_stream([str(path)], tracker="bytetrack", sinks=[MotSink(tmp_path / "run.txt")]))
    tracker = StreamTracker("bytetrack")
    groups = by_frame(read_mot(path), 60)
    assert [r.index for r in results] == list(range(60))
    with MotSink(tmp_path / "loop.txt") as loop:
        for r, rows in zip(results, groups, strict=True):
            boxes = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
            want = tracker.update(Detections(boxes, rows[:, 6], rows[:, 7].astype(np.int64)))
            same_tracks(r.tracks, want)
            loop.write(FrameResult(0, r.index, r.time, Detections(), want))
    assert (tmp_path / "run.txt").read_text() == (tmp_path / "loop.txt").read_text()
    assert len(read_mot(tmp_path / "run.txt")) > 100


def test_unreachable_url_is_one_clear_line(identity_model) -> None:
    t0 = time.perf_counter()
    run = run_stream(["rtsp://127.0.0.1:9/none"], pipeline=lookup_pipeline(identity_model), retries=1, backoff=0.05)
    with pytest.raises(UserError, match=r"^stream 0 \(rtsp://127.0.0.1:9/none\): decode failed: unreachable after 2 "
                                        r"tries \(1 reconnects\)") as e:
        run.wait()
    assert "\n" not in str(e.value) and time.perf_counter() - t0 < 15
    assert not stream_threads()


def test_corrupt_frames_counted_from_the_source(identity_model) -> None:
    from slipway.stream.source import Counters

    src = FakeSource(14, 20)
    src.counters = Counters(decoded=23, yielded=20, corrupt=3)
    stats = run_stream([src], pipeline=lookup_pipeline(identity_model)).wait()
    assert stats["dropped"]["corrupt"] == 3 and stats["streams"][0]["source_counters"]["decoded"] == 23
    assert stats["processed"] == 20


def test_batching_across_streams_equals_batch_1(identity_model) -> None:
    runs = {}
    for batch in (1, 4):
        run = run_stream([FakeSource(1, 50), FakeSource(2, 50)], pipeline=lookup_pipeline(identity_model),
                         batch=batch, max_wait_ms=50)
        runs[batch] = (by_stream(run), run.stats())
    assert runs[1][1]["mean_batch"] == 1 and runs[4][1]["mean_batch"] > 1.5  # frames of both streams in one call
    for s, key in ((0, 1), (1, 2)):
        loop = plain_loop(key, 50)
        one, four = runs[1][0][s], runs[4][0][s]
        assert [r.index for r in four] == list(range(50))
        for a, b, c in zip(one, four, loop, strict=True):
            same_tracks(a.tracks, b.tracks)
            same_tracks(b.tracks, c)


def test_every_n_predicts_between_detections(identity_model) -> None:
    run = run_stream([FakeSource(4, 60)], pipeline=lookup_pipeline(identity_model), every=3, batch=2)
    results = list(run)
    stats = run.stats()
    assert stats["detected"] == 20 and stats["stages"]["pre"]["calls"] == 20  # the detector saw 1 frame in 3
    assert sum(r.detected for r in results) == 20 and stats["processed"] == 60
    for i, (r, want) in enumerate(zip(results, plain_loop(4, 60, every=3), strict=True)):
        assert r.detected == (i % 3 == 0)
        same_tracks(r.tracks, want)
        if not r.detected:
            assert len(r.detections) == 0 and r.tracks.predicted.all()
    assert any(len(r.tracks) for r in results if not r.detected)


def _slow_tracker(delay: float):
    def make():
        tracker = StreamTracker("sort")

        class Slow:
            def update(self, det):
                time.sleep(delay)
                return tracker.update(det)

            def predict(self):
                return tracker.predict()

        return Slow()

    return make


@pytest.mark.parametrize(("policy", "reason"), [("drop-oldest", "overflow"), ("skip-to-live", "stale")])
def test_overload_policies_drop_count_and_bound(identity_model, policy, reason) -> None:
    run = run_stream([FakeSource(5, 80)], pipeline=lookup_pipeline(identity_model), policy=policy, queue=3,
                     tracker=_slow_tracker(0.006))
    results = list(run)
    stats = run.stats()
    st = stats["streams"][0]
    assert st["dropped"][reason] > 0 and st["dropped"]["overflow" if reason == "stale" else "stale"] == 0
    assert st["processed"] + st["dropped"][reason] == st["frames_in"] == 80
    assert st["max_queue"] <= 3 and stats["queue_bound"]["ingress"] == 3
    assert all(stats["stages"][s]["max_queue"] <= stats["queue_bound"]["stage"] for s in ("infer", "post"))
    idx = [r.index for r in results]
    assert idx == sorted(set(idx)) and len(idx) == st["processed"]


def test_block_policy_loses_nothing_under_a_slow_stage(identity_model) -> None:
    run = run_stream([FakeSource(5, 30)], pipeline=lookup_pipeline(identity_model), queue=2,
                     tracker=_slow_tracker(0.004))
    assert [r.index for r in run] == list(range(30))
    assert run.stats()["streams"][0]["max_queue"] <= 2


def test_stop_mid_run_is_prompt_and_closes_sinks(identity_model) -> None:
    sink = FakeSink()
    run = run_stream([FakeSource(6, 0, live=True, endless=True, delay=0.002)],
                     pipeline=lookup_pipeline(identity_model), sinks=[sink])
    assert run.policies == ["skip-to-live"]  # live sources default to skip-to-live
    got = []
    for r in run:
        got.append(r)
        if len(got) == 10:
            t0 = time.perf_counter()
            run.stop()
    assert time.perf_counter() - t0 < 2.0
    assert sink.closed and len(sink.results) == len(got) >= 10
    assert not stream_threads()


def test_error_in_post_process_is_one_line_and_stops_every_thread(identity_model) -> None:
    def broken(y):
        if y[0, 0, 4] > 0:  # the first frame with a detection
            raise ValueError("bad tensor\nsecond line")
        return unpack(y)

    sink = FakeSink()
    run = run_stream([FakeSource(7, 60), FakeSource(8, 0, live=True, endless=True)],
                     pipeline=lookup_pipeline(identity_model, broken), sinks=[sink])
    with pytest.raises(UserError, match=r"stream \d \(fake:\d\): post-process failed: .*bad tensor") as e:
        run.wait()
    assert "\n" not in str(e.value)
    assert sink.closed and not stream_threads()


def test_stream_ending_mid_batch_is_flushed_at_once(identity_model) -> None:
    t0 = time.perf_counter()
    run = run_stream([FakeSource(9, 10)], pipeline=lookup_pipeline(identity_model), batch=8, max_wait_ms=20_000)
    results = list(run)
    assert [r.index for r in results] == list(range(10))
    assert time.perf_counter() - t0 < 5.0  # the last 2 frames did not wait 20 s for a full batch


def test_four_streams_at_once(identity_model) -> None:
    import cv2

    before = cv2.getNumThreads()
    sources = [FakeSource(10 + k, 30 + 10 * k) for k in range(4)]
    with run_stream(sources, pipeline=lookup_pipeline(identity_model), batch=4) as run:
        assert cv2.getNumThreads() == 1  # the stages are the parallelism while a run goes
        results = by_stream(run)
    assert cv2.getNumThreads() == before
    stats = run.stats()
    assert stats["processed"] == 30 + 40 + 50 + 60 and stats["mean_batch"] > 1
    for s in range(4):
        assert [r.index for r in results[s]] == list(range(30 + 10 * s))
        for r, want in zip(results[s], plain_loop(10 + s, 30 + 10 * s), strict=True):
            same_tracks(r.tracks, want)
    assert all(st["latency_ms"]["p99"] >= st["latency_ms"]["p50"] > 0 for st in stats["streams"])


def test_pipeline_without_a_model_step_runs_whole_per_frame() -> None:
    def detect(image):
        return unpack(lookup(image)["tensor"])

    pipe = Pipeline([Step.python("detect", detect, {"image": "image"},
                                 {"boxes": "boxes", "scores": "scores", "class_ids": "class_ids"})],
                    inputs=["image"], outputs=["boxes", "scores"])
    results = list(run_stream([FakeSource(11, 30)], pipeline=pipe, batch=4))
    for r, want in zip(results, plain_loop(11, 30), strict=True):
        same_tracks(r.tracks, want)


def test_bad_arguments_are_one_line(identity_model) -> None:
    pipe = lookup_pipeline(identity_model)
    with pytest.raises(UserError, match="policy must be one of"):
        run_stream([FakeSource(1, 5)], pipeline=pipe, policy="newest")
    with pytest.raises(UserError, match="needs a tracker"):
        run_stream([FakeSource(1, 5)], pipeline=pipe, tracker="none", every=2)
    with pytest.raises(UserError, match="no 'boxes' tensor"):
        run_stream([FakeSource(1, 5)], pipeline=Pipeline([Step.python("p", unpack, {"y": "image"}, {"scores": "s"})],
                                                         inputs=["image"], outputs=["s"]))
    with pytest.raises(UserError, match="no pipeline was given"):
        run_stream([FakeSource(1, 5)]).wait()
    with pytest.raises(UserError, match="no such file"):
        run_stream(["/nonexistent/video.mp4"])
    assert not stream_threads()


def test_automatic_batch_is_kept_only_when_faster(identity_model) -> None:
    run = run_stream([FakeSource(15, 60), FakeSource(16, 60), FakeSource(17, 60)],
                     pipeline=lookup_pipeline(identity_model), max_wait_ms=20)
    results = by_stream(run)
    json.dumps(run.stats())
    report = run.stats()["batching"]
    assert report["auto"] and {"batched_ms_per_frame", "single_ms_per_frame"} <= set(report)
    for s in range(3):  # whatever was decided, each frame got its own detections
        for r, want in zip(results[s], plain_loop(15 + s, 60), strict=True):
            same_tracks(r.tracks, want)

    from slipway.stream.stages import PROBE_CALLS, Stages

    for batched, single, keep in ((1.0, 2.0, True), (2.0, 2.0, False), (3.0, 2.0, False)):
        stages = Stages.__new__(Stages)
        stages._probe, stages._batching, stages.batch, stages._auto = [], True, 4, True
        for k in range(PROBE_CALLS):
            stages._probed(k % 2 == 0, 9.0 if k < 2 else (batched if k % 2 == 0 else single))  # first ones: warm-up
        assert stages._batching is keep and stages.batch == (4 if keep else 1)
        assert stages._batching_report()["on"] is keep
