"""``slipway stream``: detections files, a video through a detector, sinks, the status summary, ``stream eval``
(both argument orders) and one-line errors."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from slipway.cli.stream import register, status_text
from slipway.errors import SlipwayError
from slipway.stream.mot import read_mot, write_mot
from slipway.stream.synth import make_scene, noisy_detections, write_video


def cli(*args: object) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) as ``slipway stream ...`` gives them (a SlipwayError: ``error: ...``, exit 1)."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """slipway"""

    register(app)
    result = CliRunner().invoke(app, ["stream", *map(str, args)])
    if isinstance(result.exception, SlipwayError):
        return 1, result.stdout, f"error: {result.exception}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    scene = make_scene(frames=60, objects=6, size=(320, 192), seed=2)
    return write_mot(d / "gt.txt", scene.gt), write_mot(d / "det.txt", noisy_detections(scene, seed=2))


def test_detections_file_mot_and_eval_both_orders(tmp_path, scene_files) -> None:
    gt, det = scene_files
    out = tmp_path / "tracks.txt"
    code, stdout, _ = cli(det, "--mot", out)
    assert code == 0, stdout
    assert "60 frames" in stdout and f"wrote {out}" in stdout
    rows = read_mot(out)
    assert rows[:, 0].max() <= 60 and len(rows) > 100
    code, stdout, _ = cli("eval", "--gt", gt, out, "--json")
    assert code == 0
    scores = json.loads(stdout)
    assert {"mota", "idf1", "hota", "deta", "assa", "idsw", "fp", "fn"} <= set(scores)
    assert scores["mota"] > 0.5 and scores["hota"] > 0.4
    code, stdout2, _ = cli("eval", "--gt", gt, "--json", out)  # --json never takes a .txt as its path
    assert code == 0 and json.loads(stdout2) == scores
    code, table, _ = cli("eval", out, "--gt", gt)
    assert code == 0 and "MOTA" in table and "HOTA" in table and f"{100 * scores['mota']:.1f}" in table


def test_json_lines_to_stdout_every_n(tmp_path, scene_files) -> None:
    _, det = scene_files
    code, stdout, stderr = cli(det, "--every", "3", "--tracker", "sort", "--max-frames", "30", "--json")
    assert code == 0
    lines = [json.loads(line) for line in stdout.splitlines()]  # nothing but JSON on stdout
    assert [r["index"] for r in lines] == list(range(30))
    assert [r["detected"] for r in lines] == [i % 3 == 0 for i in range(30)]
    assert "30 frames" in stderr  # the summary went to stderr


def test_video_through_a_detector_model(tmp_path) -> None:
    zoo = pytest.importorskip("tests.zoo")
    video = write_video(make_scene(frames=24, objects=4, size=(320, 192)), tmp_path / "in.mp4")
    out_json, out_video, out_mot = tmp_path / "r.jsonl", tmp_path / "out.mp4", tmp_path / "t.txt"
    code, stdout, _ = cli(video, video, "--model", zoo.export("yolo"), "--kind", "yolo", "--threads", "1",
                          "--batch", "2", "--json", out_json, "--video", out_video, "--mot", out_mot)
    assert code == 0, stdout
    rows = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert len(rows) == 48 and sorted({r["stream"] for r in rows}) == [0, 1]
    assert [r["index"] for r in rows if r["stream"] == 1] == list(range(24))
    assert out_video.stat().st_size > 0 and (tmp_path / "out.1.mp4").is_file() and (tmp_path / "t.1.txt").is_file()
    assert "engine calls" in stdout
    from slipway.pipeline.detect import detect_pipeline

    pipeline_file = detect_pipeline(zoo.export("yolo"), kind="yolo", threads=1).to_file(tmp_path / "det.yaml")
    out2 = tmp_path / "r2.out"
    code, stdout, _ = cli(video, "--pipeline", pipeline_file, "--max-frames", "5", "--every", "2", f"--json={out2}")
    assert code == 0, stdout
    assert [json.loads(line)["detected"] for line in out2.read_text().splitlines()] == [True, False, True, False, True]


@pytest.mark.parametrize(("args", "message"), [
    (["{video}"], "frames need a detector"),
    (["{det}", "--policy", "newest"], "policy must be one of"),
    (["/nonexistent.txt"], "no such file"),
    (["{det}", "--jsn"], "no such option: --jsn"),
    (["{det}", "--json", "--json=a.json"], "--json is given twice"),
    (["eval", "--gt", "{det}", "{det}", "--json=s.json"], "--json takes no path"),
    (["{det}", "--tracker", "deepsort"], "tracker must be"),
    (["{det}", "--gt", "{det}"], "--gt belongs to"),
    (["eval", "{det}"], "give the ground truth with --gt"),
    (["eval", "--gt", "{det}", "{det}", "{det}"], "give one TRACKS file"),
    ([], "give at least one SOURCE"),
])
def test_errors_are_one_line(tmp_path, monkeypatch, scene_files, args, message) -> None:
    monkeypatch.chdir(tmp_path)  # nothing a failed parse might write lands in the repository
    _, det = scene_files
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    code, _, err = cli(*[a.format(video=video, det=det) for a in args])
    assert code == 1 and message in err and "\n" not in err


def test_status_text_is_one_line() -> None:
    stats = {"fps": 12.34, "processed": 5, "detected": 2, "dropped": {"overflow": 1, "stale": 0, "corrupt": 0},
             "stages": {"pre": {"queue": 3}, "infer": {"queue": 0}, "track": {"ms": 1.0}}}
    line = status_text(stats)
    assert "12.3 fps" in line and "overflow 1" in line and "pre 3" in line and "\n" not in line


def test_ctrl_c_stops_cleanly_and_closes_sinks(tmp_path) -> None:
    """SIGINT during a run (the CLI's handler): reading stops, the frames in flight finish, sinks are closed."""
    import os
    import signal
    import threading
    import time

    from slipway.cli.stream import _interrupts
    from slipway.stream.runner import run_stream
    from slipway.stream.sink import MotSink
    from tests.stream.test_runner import FakeSource

    sink = MotSink(tmp_path / "t.txt")
    run = run_stream([FakeSource(20, 0, live=True, endless=True, delay=0.002)], tracker="sort", sinks=[sink],
                     pipeline=_pass_through())
    previous = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    with _interrupts(run):
        timer.start()
        t0 = time.perf_counter()
        stats = run.wait()
    assert time.perf_counter() - t0 < 3 and stats["processed"] > 10
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back
    assert (tmp_path / "t.txt").is_file()
    assert not [t for t in threading.enumerate() if t.name.startswith("slipway-stream")]


def _pass_through():
    import numpy as np

    from slipway.pipeline import Pipeline, Step

    def detect(image):
        return {"boxes": np.array([[10.0, 10.0, 50.0, 60.0]]), "scores": np.array([0.9])}

    return Pipeline([Step.python("detect", detect, {"image": "image"}, {"boxes": "boxes", "scores": "scores"})],
                    inputs=["image"], outputs=["boxes", "scores"])
