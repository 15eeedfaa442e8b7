"""Sources: video files, strides, image folders, detections files, damaged and size-changing streams, HTTP,
reconnects, close from another thread, bad specs."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from slipway.errors import UserError
from slipway.stream.mot import write_mot
from slipway.stream.source import open_source
from slipway.stream.synth import make_scene, noisy_detections, write_video

FRAMES, SIZE = 64, (320, 192)


@pytest.fixture(scope="module")
def scene():
    return make_scene(FRAMES, 4, SIZE, seed=1)


@pytest.fixture(scope="module")
def videos(scene, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    mp4 = write_video(scene, d / "scene.mp4", crf=18)
    ts = write_video(scene, d / "scene.ts", crf=18, gop=16)
    small = write_video(make_scene(32, 3, (256, 144), seed=2), d / "small.ts", crf=18, gop=16)
    data = bytearray(ts.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (d / "damaged.ts").write_bytes(bytes(data))
    (d / "sizes.ts").write_bytes(ts.read_bytes() + small.read_bytes())
    return {"mp4": mp4, "ts": ts, "damaged": d / "damaged.ts", "sizes": d / "sizes.ts"}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Stalling(_Quiet):
    """Sends the first half of the file, then holds the connection open until ``release`` is set."""

    release = threading.Event()

    def do_GET(self) -> None:
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.release.wait(20)


class _Dropping(_Quiet):
    """The first request gets half the file (of the full Content-Length) and a closed connection."""

    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data if self.requests > 1 else data[: len(data) // 2])
        self.wfile.flush()
        if self.requests == 1:
            self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def serve(videos):
    servers = []

    def start(handler: type = _Quiet) -> str:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(videos["ts"].parent)))
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    _Stalling.release.set()
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_file_decodes_the_rendered_frames(scene, videos):
    src = open_source(videos["mp4"], 2)
    assert (src.live, src.width, src.height, src.fps, src.frames) == (False, 320, 192, 30.0, FRAMES)
    frames = list(src)
    assert [f.index for f in frames] == list(range(FRAMES))
    assert all(f.stream == 2 and f.image.shape == (192, 320, 3) and f.image.dtype == np.uint8 for f in frames)
    np.testing.assert_allclose([f.time for f in frames], np.arange(FRAMES) / 30, atol=1e-6)
    # H.264 at crf 18 is visually lossless: ~2.5 mean abs error on these textured frames (yuv420p chroma
    # subsampling blurs the box edges); a wrong frame (order, color order, off by one) is tens away.
    errors = [np.abs(f.image.astype(int) - scene.render(f.index + 1)).mean() for f in frames]
    assert max(errors) < 6
    wrong = np.abs(frames[10].image.astype(int) - scene.render(30)).mean()
    assert wrong > 2 * max(errors)
    c = src.counters
    assert (c.decoded, c.yielded, c.corrupt, c.reconnects, c.resolution_changes) == (FRAMES, FRAMES, 0, 0, 0)


def test_stride_keeps_decode_indices(videos):
    src = open_source(videos["ts"], stride=3)
    frames = list(src)
    assert [f.index for f in frames] == list(range(0, FRAMES, 3))
    np.testing.assert_allclose([f.time for f in frames], np.arange(0, FRAMES, 3) / 30, atol=1e-6)
    assert (src.counters.decoded, src.counters.yielded) == (FRAMES, len(range(0, FRAMES, 3)))
    assert [f.index for f in src] == [f.index for f in frames]  # a second pass reads the file again


def test_image_folder_natural_order_and_corrupt_file(scene, tmp_path):
    for i in range(12):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), scene.render(i + 1))
    (tmp_path / "img5.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.md").write_text("ignored")
    src = open_source(tmp_path, fps=10)
    frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]  # img10 after img9
    assert all(np.array_equal(f.image, scene.render(f.index + 1)) for f in frames)
    np.testing.assert_allclose([f.time for f in frames], [f.index / 10 for f in frames])
    assert (src.frames, src.counters.corrupt, src.counters.decoded, src.width, src.height) == (12, 1, 11, 320, 192)
    assert [f.index for f in open_source(tmp_path, stride=4)] == [0, 4, 8]


def test_detections_file(scene, tmp_path):
    dets = noisy_detections(scene, seed=3)
    dets = dets[dets[:, 0] != 7]  # a frame without detections
    path = write_mot(tmp_path / "det.txt", dets)
    src = open_source(path)
    frames = list(src)
    assert len(frames) == src.frames == FRAMES and [f.index for f in frames] == list(range(FRAMES))
    assert all(f.image is None for f in frames) and len(frames[6].detections) == 0
    rows = dets[dets[:, 0] == 12]
    d = frames[11].detections
    assert frames[11].time == pytest.approx(11 / 30)
    order = np.lexsort((rows[:, 3], rows[:, 2]))
    mine = np.lexsort((d.boxes[:, 1], d.boxes[:, 0]))
    np.testing.assert_allclose(d.boxes[mine], np.c_[rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]][order], atol=0.01)
    np.testing.assert_allclose(d.scores[mine], rows[order, 6], atol=1e-4)
    assert d.classes.tolist() == [1] * len(d)


def test_damaged_stream_goes_on(videos):
    src = open_source(videos["damaged"])
    frames = list(src)
    assert src.counters.corrupt > 0
    assert len(frames) >= 0.7 * FRAMES
    assert max(f.time for f in frames) == pytest.approx((FRAMES - 1) / 30)  # decoded past the damage to the end


def test_resolution_change(videos):
    src = open_source(videos["sizes"])
    sizes = [f.image.shape[:2] for f in src]
    assert len(sizes) == FRAMES + 32
    assert sizes[0] == (192, 320) and sizes[-1] == (144, 256)
    assert src.counters.resolution_changes == 1 and (src.width, src.height) == (256, 144)


def test_http_stream(videos, serve):
    src = open_source(serve() + "/scene.ts", 1)
    assert src.live
    frames = list(src)
    assert [f.index for f in frames] == list(range(FRAMES))
    assert (src.width, src.height, src.fps, src.frames) == (320, 192, 30.0, None)
    assert src.counters.reconnects == 0 and all(f.stream == 1 for f in frames)


def test_dropped_connection_reconnects(videos, serve):
    src = open_source(serve(_Dropping) + "/scene.ts", backoff=0.01)
    indices = [f.index for f in src]
    assert src.counters.reconnects == 1 and _Dropping.requests == 2
    assert indices == list(range(len(indices))) and FRAMES < len(indices) < 2 * FRAMES  # the index goes on


def test_unreachable_url_retries_then_fails():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    src = open_source(f"rtsp://127.0.0.1:{port}/cam", 3, retries=3, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"^stream 3 \(rtsp://127.0.0.1:{port}/cam\): unreachable after 4 tries "
                                        r"\(3 reconnects\): .*refused"):
        list(src)
    assert src.counters.reconnects == 3
    assert time.monotonic() - start < 2  # 0.01 + 0.02 + 0.04 s of backoff


def test_close_from_another_thread_ends_a_blocked_read(videos, serve):
    src = open_source(serve(_Stalling) + "/scene.ts")
    got = []
    for frame in src:
        got.append(frame)
        if len(got) == 1:
            closed_at = time.monotonic()
            threading.Timer(0.2, src.close).start()
    waited = time.monotonic() - closed_at
    assert 0.15 < waited < 2  # blocked on the stalled read until close; without it, READ_TIMEOUT (10 s)
    assert 1 <= len(got) < FRAMES
    src.close()  # idempotent


def test_close_ends_a_file_iteration(videos):
    src = open_source(videos["mp4"])
    n = 0
    for _ in src:
        n += 1
        if n == 5:
            threading.Thread(target=src.close).start()
            time.sleep(0.1)
    assert n == 5


@pytest.mark.parametrize("spec, message", [
    ("missing.mp4", r"no such file, folder, camera or URL"),
    ("ftp://example.com/a.mp4", r"unsupported URL scheme 'ftp'"),
    ("/dev/video97", r"no such camera"),
    ("junk.mp4", r"not a video FFmpeg can open"),
    ("empty", r"no images"),
    ("bad.txt", r"stream 0: .*bad.txt:1: not a MOTChallenge line"),
])
def test_bad_specs(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x01garbage" * 100)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.txt").write_text("hello\n")
    with pytest.raises(UserError, match=message) as e:
        open_source(spec)
    assert "\n" not in str(e.value) and spec in str(e.value)


def test_bad_options(videos):
    with pytest.raises(UserError, match="stride must be a positive integer"):
        open_source(videos["mp4"], stride=0)
    with pytest.raises(UserError, match="fps must be positive"):
        open_source(videos["mp4"], fps=0)
