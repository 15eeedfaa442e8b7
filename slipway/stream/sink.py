"""Where a stream run's results go: MOTChallenge track files, JSON lines, annotated videos.

A sink has ``needs_image`` (the runner keeps ``FrameResult.image`` only when a sink draws), ``write(result)`` and
``close()`` (idempotent; also a context manager); one thread writes. Files are written under a hidden temporary
name beside the target and renamed into place by ``close``, so no half-written file ever has the final name, and a
run stopped by a signal (which closes its sinks) keeps what it processed. With several streams, each stream has
its own MOT / video file, named by :func:`stream_path`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

from slipway.errors import MissingDependencyError, UserError, WriteError, one_line
from slipway.pipeline.draw import color_for, draw_label, text_scale
from slipway.stream.frames import FrameResult
from slipway.stream.mot import mot_line, tracks_rows

__all__ = ["JsonLinesSink", "MotSink", "Sink", "VideoSink", "make_sinks", "result_dict", "stream_path"]


def stream_path(path: str | os.PathLike, stream: int) -> Path:
    """The file of ``stream``: ``{stream}`` in ``path`` becomes the index; otherwise stream 0 writes ``path``
    itself and stream k > 0 writes ``<stem>.<k><suffix>`` beside it (``tracks.txt``, ``tracks.1.txt``, ...)."""
    text = os.fspath(path)
    if "{stream}" in text:
        return Path(text.replace("{stream}", str(stream)))
    p = Path(text)
    return p if stream == 0 else p.with_name(f"{p.stem}.{stream}{p.suffix}")


class Sink:
    """Base of the sinks: ``write`` each FrameResult, then ``close`` once (more calls do nothing)."""

    needs_image: bool = False
    _closed: bool = False

    def write(self, result: FrameResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and commit every file (renamed into place). Idempotent."""
        if not self._closed:
            self._closed = True
            self._finish()

    def _finish(self) -> None:
        pass

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed")

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Atomic:
    """``path`` written as ``.<stem>.tmp<suffix>`` beside it (the suffix kept for muxers that pick by it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"{path}: cannot write: {one_line(e)}") from None

    def open(self) -> IO[str]:
        try:
            return self.tmp.open("w", encoding="utf-8")
        except OSError as e:
            raise WriteError(f"{self.path}: cannot write: {one_line(e)}") from None

    def commit(self) -> None:
        os.replace(self.tmp, self.path)


def _close_all(closers: Iterable[Any]) -> None:
    """Call each closer; re-raise the first error once all have run."""
    first: BaseException | None = None
    for close in closers:
        try:
            close()
        except BaseException as e:  # noqa: BLE001 - the others still commit
            first = first or e
    if first is not None:
        raise first


class MotSink(Sink):
    """MOTChallenge tracks, one file per stream (:func:`stream_path`): ``frame, id, left, top, width, height,
    score, -1, -1, -1`` with frame = ``FrameResult.index + 1`` (the 1-based decode index) and every track the
    result holds. A stream that got results has a file even when it had no tracks."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        self._files: dict[int, tuple[_Atomic, IO[str]]] = {}

    def write(self, result: FrameResult) -> None:
        self._check_open()
        if result.stream not in self._files:
            target = _Atomic(stream_path(self.path, result.stream))
            self._files[result.stream] = (target, target.open())
        f = self._files[result.stream][1]
        t = result.tracks
        for r in tracks_rows(result.index + 1, t.boxes, t.ids, t.scores):
            f.write(mot_line(r))

    def _finish(self) -> None:
        def commit(target: _Atomic, f: IO[str]) -> None:
            f.close()
            target.commit()

        _close_all(lambda t=t, f=f: commit(t, f) for t, f in self._files.values())


def _r(a: np.ndarray, decimals: int) -> list:
    return np.round(np.asarray(a, dtype=np.float64), decimals).tolist()


def result_dict(result: FrameResult) -> dict[str, Any]:
    """A FrameResult as plain JSON data: boxes (xyxy) to 0.01 pixel, scores to 1e-4, time to 1 µs, latency in
    milliseconds to 1 µs."""
    d, t = result.detections, result.tracks
    return {
        "stream": int(result.stream), "index": int(result.index),
        "time": None if result.time is None else round(float(result.time), 6),
        "detected": bool(result.detected), "latency_ms": round(float(result.latency) * 1000, 3),
        "detections": {"boxes": _r(d.boxes, 2), "scores": _r(d.scores, 4), "classes": d.classes.tolist()},
        "tracks": {"ids": t.ids.tolist(), "boxes": _r(t.boxes, 2), "classes": t.classes.tolist(),
                   "scores": _r(t.scores, 4), "ages": t.ages.tolist(),
                   "predicted": [bool(p) for p in t.predicted]},
    }


class JsonLinesSink(Sink):
    """One JSON object (:func:`result_dict`) per line, every stream in one file. ``"-"`` writes to stdout and an
    open text file is written as is (both flushed per line, never closed); a path is committed on close."""

    def __init__(self, path_or_file: str | os.PathLike | IO[str]) -> None:
        self._target: _Atomic | None = None
        self._file: IO[str] | None = None
        self._live = False
        if isinstance(path_or_file, str) and path_or_file == "-":
            self._file, self._live = sys.stdout, True
        elif hasattr(path_or_file, "write"):
            self._file, self._live = path_or_file, True  # type: ignore[assignment]
        else:
            self._target = _Atomic(Path(path_or_file))  # type: ignore[arg-type]

    def write(self, result: FrameResult) -> None:
        self._check_open()
        if self._file is None:
            assert self._target is not None
            self._file = self._target.open()
        self._file.write(json.dumps(result_dict(result), separators=(",", ":")) + "\n")
        if self._live:
            self._file.flush()

    def _finish(self) -> None:
        if self._target is None:
            if self._file is not None:
                self._file.flush()
            return
        if self._file is None:
            self._file = self._target.open()  # an empty file: the run produced no results
        self._file.close()
        self._target.commit()


class _Encoder:
    """One stream's video file: H.264 (libx264, yuv420p) at the first frame's size padded to even, timestamps
    in milliseconds from the frames' times (or ``fps``), plus the stream's track trails and FPS meter."""

    def __init__(self, path: Path, first: np.ndarray, fps: float | None, crf: int) -> None:
        import av

        self.target = _Atomic(path)
        self.height, self.width = first.shape[:2]
        self.fps = fps
        try:
            self.container = av.open(str(self.target.tmp), "w")
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise WriteError(f"{path}: cannot write a video: {one_line(e)}") from None
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps or 30).limit_denominator(1001))
        self.stream.width, self.stream.height = self.width + self.width % 2, self.height + self.height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = Fraction(1, 1000)
        self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.written = 0
        self.last_pts = -1
        self.trails: dict[int, deque] = {}
        self.seen: dict[int, int] = {}
        self.clock: deque[float] = deque(maxlen=32)

    def fit(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """A copy of ``image`` at the first frame's size, padded to even; and the x, y scale applied."""
        import cv2

        h, w = image.shape[:2]
        sx, sy = self.width / w, self.height / h
        if (w, h) != (self.width, self.height):
            image = cv2.resize(image, (self.width, self.height),
                               interpolation=cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_LINEAR)
        pad_y, pad_x = self.stream.height - self.height, self.stream.width - self.width
        image = cv2.copyMakeBorder(image, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)  # always a copy
        return image, sx, sy

    def live_fps(self) -> float:
        self.clock.append(time.perf_counter())
        span = self.clock[-1] - self.clock[0]
        return (len(self.clock) - 1) / span if span > 0 else 0.0

    def encode(self, image: np.ndarray, result: FrameResult) -> None:
        import av

        if self.fps:
            ms = self.written * 1000 / self.fps
        else:
            ms = (result.time if result.time is not None else result.index / 30) * 1000
        self.last_pts = max(round(ms), self.last_pts + 1)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = self.last_pts, Fraction(1, 1000)
        self.container.mux(self.stream.encode(frame))
        self.written += 1

    def commit(self) -> None:
        try:
            self.container.mux(self.stream.encode())
        finally:
            self.container.close()
        self.target.commit()


def _dashed_rect(img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], color: tuple[int, int, int],
                 th: int, dash: int = 6) -> None:
    import cv2

    (x1, y1), (x2, y2) = p1, p2
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        n = max(1, int(np.hypot(b[0] - a[0], b[1] - a[1]) // dash))
        for i in range(0, n, 2):
            s, e = i / n, min(i + 1, n) / n
            cv2.line(img, (round(a[0] + (b[0] - a[0]) * s), round(a[1] + (b[1] - a[1]) * s)),
                     (round(a[0] + (b[0] - a[0]) * e), round(a[1] + (b[1] - a[1]) * e)), color, th, cv2.LINE_AA)


class VideoSink(Sink):
    """Annotated video, one file per stream (:func:`stream_path`; the container from the suffix, e.g. ``.mp4``):
    track boxes in a color per id (``slipway.pipeline.draw``'s palette) labelled ``id`` or ``id c<class>``,
    predicted boxes dashed and thinner, the last ``trail`` centers of each id as a line, and with ``overlay`` a
    corner line ``stream S  frame I  F fps`` (F: frames this sink got per second, lately). Frames of another
    size are rescaled to the stream's first frame size. ``fps`` fixes the output rate; None follows the
    frames' times."""

    needs_image = True

    def __init__(self, path: str | os.PathLike, *, fps: float | None = None, trail: int = 30, overlay: bool = True,
                 crf: int = 23) -> None:
        if fps is not None and not fps > 0:
            raise UserError(f"video sink: fps must be positive, got {fps}")
        try:
            import av  # noqa: F401
        except ImportError:
            raise MissingDependencyError("av (PyAV)", "stream") from None
        self.path, self.fps, self.trail, self.overlay, self.crf = path, fps, max(0, int(trail)), overlay, crf
        self._encoders: dict[int, _Encoder] = {}

    def write(self, result: FrameResult) -> None:
        self._check_open()
        if result.image is None:
            raise UserError(f"video sink: stream {result.stream} frame {result.index} has no image "
                            "(a detections-file source has none to draw on)")
        enc = self._encoders.get(result.stream)
        if enc is None:
            enc = self._encoders[result.stream] = _Encoder(stream_path(self.path, result.stream), result.image,
                                                           self.fps, self.crf)
        img, sx, sy = enc.fit(result.image)
        self._draw(img, result, enc, sx, sy)
        enc.encode(img, result)

    def _draw(self, img: np.ndarray, result: FrameResult, enc: _Encoder, sx: float, sy: float) -> None:
        import cv2

        _, th = text_scale(img)
        th = max(2, th)
        t = result.tracks
        boxes = t.boxes * np.array([sx, sy, sx, sy])
        for box, tid, cls, pred in zip(boxes, t.ids.tolist(), t.classes.tolist(), t.predicted.tolist(), strict=True):
            color = color_for(int(tid))
            p1, p2 = (round(box[0]), round(box[1])), (round(box[2]), round(box[3]))
            if pred:
                _dashed_rect(img, p1, p2, color, max(1, th // 2))
            else:
                cv2.rectangle(img, p1, p2, color, th, cv2.LINE_AA)
            if self.trail:
                trail = enc.trails.setdefault(tid, deque(maxlen=self.trail))
                trail.append(((p1[0] + p2[0]) // 2, (p1[1] + p2[1]) // 2))
                enc.seen[tid] = enc.written
                if len(trail) > 1:
                    cv2.polylines(img, [np.array(trail, np.int32)], False, color, max(1, th // 2), cv2.LINE_AA)
            draw_label(img, f"{tid}" if cls < 0 else f"{tid} c{cls}", p1[0], p1[1], color)
        for tid in [k for k, last in enc.seen.items() if enc.written - last > self.trail]:
            del enc.seen[tid], enc.trails[tid]
        if self.overlay:
            fs, lt = text_scale(img)
            (_, h), base = cv2.getTextSize("Ag", 0, fs, lt)
            draw_label(img, f"stream {result.stream}  frame {result.index}  {enc.live_fps():.1f} fps", 4,
                   h + base + 4, (40, 40, 40))

    def _finish(self) -> None:
        _close_all(enc.commit for enc in self._encoders.values())


def make_sinks(mot: str | os.PathLike | None = None, json: str | os.PathLike | IO[str] | None = None,
               video: str | os.PathLike | None = None, *, fps: float | None = None, trail: int = 30,
               overlay: bool = True) -> list[Sink]:
    """The sinks the CLI's ``--mot``, ``--json`` and ``--video`` options name, in that order (None: none)."""
    sinks: list[Sink] = []
    if mot is not None:
        sinks.append(MotSink(mot))
    if json is not None:
        sinks.append(JsonLinesSink(json))
    if video is not None:
        sinks.append(VideoSink(video, fps=fps, trail=trail, overlay=overlay))
    return sinks
