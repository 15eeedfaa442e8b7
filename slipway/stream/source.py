"""Where a stream's frames come from: video files, network streams, V4L2 cameras, image folders and MOTChallenge
detections files, behind one iterable :class:`Source` made by :func:`open_source`.

Decoding is FFmpeg's (PyAV, its own threads); a corrupt packet, frame or image is skipped and counted, never fatal.
A live source (URL, camera) reconnects with exponential backoff and reads on a helper thread, so that
:meth:`Source.close` ends a blocked iteration promptly from any thread.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slipway.errors import MissingDependencyError, UserError, one_line
from slipway.stream.frames import Detections, Frame
from slipway.stream.mot import by_frame, read_mot

__all__ = ["Counters", "Source", "open_source", "IMAGE_SUFFIXES", "URL_SCHEMES"]

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pbm", ".pgm",
                            ".ppm", ".pnm", ".sr", ".ras", ".exr", ".hdr", ".pic"})
OPEN_TIMEOUT = 5.0  # seconds to connect and probe a live source
READ_TIMEOUT = 10.0  # seconds without data before a live source counts as failed (and reconnects)
_FILE_READ_ERRORS = 16  # consecutive read errors after which a damaged file is taken to end
_CAMERA = re.compile(r"^/dev/video\d+$")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass
class Counters:
    """What a source did: frames ``decoded`` (before the stride; image files read), frames ``yielded``, ``corrupt``
    packets, frames or files skipped (and frames the decoder swallowed), ``reconnects`` of a live source,
    ``resolution_changes`` between consecutive frames."""

    decoded: int = 0
    yielded: int = 0
    corrupt: int = 0
    reconnects: int = 0
    resolution_changes: int = 0


class Source:
    """An iterable of :class:`Frame` (blocking) from one input; ``stream`` is its index in the run.

    ``width`` / ``height`` (of the latest frame), ``fps`` and ``frames`` (the total before the stride) are None
    until known. Iterating twice reads the input again (a live one reconnects)."""

    kind = "source"

    def __init__(self, spec: str, stream: int, *, live: bool, stride: int, fps: float | None) -> None:
        self.spec = spec
        self.stream = stream
        self.live = live
        self.stride = stride
        self.fps = fps
        self.width: int | None = None
        self.height: int | None = None
        self.frames: int | None = None
        self.counters = Counters()
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} stream={self.stream} {self.spec!r}>"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __iter__(self) -> Iterator[Frame]:
        frames = self._pumped() if self.live else self._read()
        try:
            for frame in frames:
                if self._closed.is_set():
                    return
                self.counters.yielded += 1
                yield frame
        finally:
            frames.close()

    def close(self) -> None:
        """Stop: an iteration in progress (on any thread) ends promptly. Idempotent."""
        self._closed.set()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _error(self, why: str) -> UserError:
        return UserError(f"stream {self.stream} ({self.spec}): {why}")

    def _size(self, width: int, height: int) -> None:
        if self.width is not None and (width, height) != (self.width, self.height):
            self.counters.resolution_changes += 1
        self.width, self.height = width, height

    def _pumped(self) -> Iterator[Frame]:
        """``_read`` on a helper thread through a 2-slot queue, so a read blocked in FFmpeg cannot hold up close."""
        slots: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not (stop.is_set() or self._closed.is_set()):
                try:
                    slots.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def pump() -> None:
            frames = self._read()
            try:
                for frame in frames:
                    if not put(frame):
                        return
                put(_END)
            except BaseException as e:  # handed to the consumer
                put(_Failed(e))
            finally:
                frames.close()

        threading.Thread(target=pump, name=f"slipway-source-{self.stream}", daemon=True).start()
        try:
            while not self._closed.is_set():
                try:
                    item = slots.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            stop.set()


_END = object()


@dataclass
class _Failed:
    error: BaseException


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise MissingDependencyError("av (PyAV)", "stream") from None
    return av


class _AVSource(Source):
    """A source FFmpeg demuxes and decodes (file, URL, camera): its first video stream."""

    def __init__(self, spec: str, stream: int, *, live: bool, stride: int, fps: float | None, retries: int,
                 backoff: float, fmt: str | None = None, options: dict[str, str] | None = None) -> None:
        super().__init__(spec, stream, live=live, stride=stride, fps=fps)
        self.retries, self.backoff = retries, backoff
        self._fmt, self._options = fmt, options or {}
        self._fps_given = fps
        self._probe: Any = None
        self._index = 0
        self.kind = "camera" if fmt == "v4l2" else "url" if live else "video"

    def _open(self) -> Any:
        """Open the container and describe its video stream (raises PyAV's errors)."""
        av = _av()
        timeout = (OPEN_TIMEOUT, READ_TIMEOUT) if self.live else None
        container = av.open(self.spec, "r", format=self._fmt, options=self._options, timeout=timeout)
        try:
            if not container.streams.video:
                raise self._error("has no video stream")
            vs = container.streams.video[0]
            rate = vs.average_rate or vs.guessed_rate
            self.fps = self._fps_given or (float(rate) if rate else None)
            self.frames = None if self.live or not vs.frames else int(vs.frames)
            if self.width is None and vs.codec_context.width:
                self.width, self.height = vs.codec_context.width, vs.codec_context.height
        except BaseException:
            container.close()
            raise
        return container

    def _read(self) -> Iterator[Frame]:
        self._index = 0  # the decode index: from 0 each iteration, on across reconnects
        if not self.live:
            container, self._probe = self._probe or self._open(), None
            with container:
                yield from self._decode(container)
            return
        av = _av()
        failures = 0
        while not self._closed.is_set():
            try:
                with self._open() as container:
                    for frame in self._decode(container):
                        failures = 0
                        yield frame
                return  # a clean end of stream
            except (av.error.FFmpegError, OSError) as e:
                if self._closed.is_set():
                    return
                failures += 1
                if failures > self.retries:
                    why = "timed out" if isinstance(e, av.error.ExitError) else one_line(e)
                    tries = f"{failures} {'try' if failures == 1 else 'tries'}"
                    raise self._error(f"unreachable after {tries} ({self.retries} reconnects): {why}") from None
                self.counters.reconnects += 1
                self._closed.wait(self.backoff * 2 ** (failures - 1))

    def _decode(self, container: Any) -> Iterator[Frame]:
        """Frames of the first video stream, packet by packet: a packet the decoder rejects or a frame it flags
        corrupt is skipped and counted, and so are the frames it swallowed (packets in - frames out at the end).
        A read error ends a live source (to reconnect); in a file, reading goes on past it."""
        av = _av()
        vs = container.streams.video[0]
        vs.codec_context.thread_type = "AUTO"
        tb = vs.time_base
        start = vs.start_time or 0
        sent = out = read_errors = 0
        while True:
            packets = container.demux(vs)
            try:
                for packet in packets:
                    read_errors = 0
                    if self._closed.is_set():
                        return
                    if packet.size and packet.is_corrupt:
                        self.counters.corrupt += 1
                        continue
                    try:
                        decoded = packet.decode()
                    except av.error.FFmpegError:
                        self.counters.corrupt += 1
                        continue
                    sent += bool(packet.size)
                    for f in decoded:
                        out += 1
                        frame = self._frame(f, tb, start)
                        if frame is not None:
                            yield frame
                break  # end of stream, decoder flushed
            except av.error.FFmpegError:
                if self.live:
                    raise
                self.counters.corrupt += 1
                read_errors += 1
                if read_errors >= _FILE_READ_ERRORS:
                    return
            finally:
                packets.close()
        self.counters.corrupt += max(0, sent - out)

    def _frame(self, f: Any, tb: Any, start: int) -> Frame | None:
        if f.is_corrupt:
            self.counters.corrupt += 1
            return None
        index = self._index
        self._index += 1
        self.counters.decoded += 1
        self._size(f.width, f.height)
        if index % self.stride:
            return None
        t = None if f.pts is None or tb is None else float((f.pts - start) * tb)
        return Frame(self.stream, index, t, f.to_ndarray(format="bgr24"))

    def close(self) -> None:
        super().close()
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.close()


class _FolderSource(Source):
    """Images in a folder, in natural name order; time = index / fps."""

    kind = "images"

    def __init__(self, spec: str, stream: int, *, stride: int, fps: float | None) -> None:
        super().__init__(spec, stream, live=False, stride=stride, fps=fps or 30.0)
        try:
            names = [p for p in Path(spec).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        except OSError as e:
            raise self._error(f"cannot list the folder: {one_line(e)}") from None
        self.files = sorted(names, key=_natural)
        if not self.files:
            raise self._error(f"no images ({', '.join(sorted(IMAGE_SUFFIXES)[:6])}, ...) in this folder")
        self.frames = len(self.files)

    def _read(self) -> Iterator[Frame]:
        import cv2

        for index in range(0, len(self.files), self.stride):
            if self._closed.is_set():
                return
            img = cv2.imread(str(self.files[index]), cv2.IMREAD_COLOR)
            if img is None:
                self.counters.corrupt += 1
                continue
            self.counters.decoded += 1
            self._size(img.shape[1], img.shape[0])
            yield Frame(self.stream, index, index / self.fps, img)


def _natural(p: Path) -> list[Any]:
    return [(0, int(s), s) if s.isdigit() else (1, 0, s) for s in re.split(r"(\d+)", p.name)]


class _DetectionsSource(Source):
    """A MOTChallenge detections file: one image-less Frame per frame number 1..max, with its detections."""

    kind = "detections"

    def __init__(self, spec: str, stream: int, *, stride: int, fps: float | None) -> None:
        super().__init__(spec, stream, live=False, stride=stride, fps=fps or 30.0)
        try:
            self._groups = by_frame(read_mot(spec))
        except UserError as e:
            raise UserError(f"stream {stream}: {e}") from None
        self.frames = len(self._groups)

    def _read(self) -> Iterator[Frame]:
        for index, rows in enumerate(self._groups):
            if self._closed.is_set():
                return
            self.counters.decoded += 1
            if index % self.stride:
                continue
            boxes = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
            classes = np.where(rows[:, 7] >= 0, rows[:, 7], -1).astype(np.int64)
            yield Frame(self.stream, index, index / self.fps, None, Detections(boxes, rows[:, 6], classes))


def open_source(spec: str | os.PathLike, stream: int = 0, *, stride: int = 1, retries: int = 3,
                backoff: float = 0.5, fps: float | None = None) -> Source:
    """The source ``spec`` names: a URL (rtsp/rtmp/http(s)/udp/tcp/srt; live), a camera ``/dev/videoN`` (live),
    a folder of images, a MOTChallenge detections ``.txt`` file, or a video file FFmpeg opens.

    ``stride`` N yields every N-th frame (indices keep counting all frames). A live source reconnects after a
    failure, waiting ``backoff`` seconds doubled each time, and gives up (UserError) after ``retries`` reconnects
    without a frame; the end of its data ends it. ``fps`` sets the rate of image folders and detections files
    (default 30; time = index / fps), is requested from a camera, and replaces a video's reported rate (its frame
    times still come from its timestamps, relative to the stream's start). Anything else is a one-line
    UserError naming the stream and the spec."""
    spec = os.fspath(spec)
    where = f"stream {stream} ({spec})"
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise UserError(f"{where}: stride must be a positive integer, got {stride!r}")
    stride = int(stride)
    if retries < 0 or backoff < 0:
        raise UserError(f"{where}: retries and backoff must not be negative, got {retries} and {backoff}")
    if fps is not None and not fps > 0:
        raise UserError(f"{where}: fps must be positive, got {fps}")
    url = _URL.match(spec)
    if url:
        scheme = url.group(1).lower()
        if scheme not in URL_SCHEMES:
            raise UserError(f"{where}: unsupported URL scheme {scheme!r} (supported: {', '.join(URL_SCHEMES)})")
        options = {"rtsp_transport": "tcp"} if scheme.startswith("rtsp") else {}
        return _AVSource(spec, stream, live=True, stride=stride, fps=fps, retries=retries, backoff=backoff,
                         options=options)
    if _CAMERA.match(spec):
        if not os.path.exists(spec):
            cams = sorted(str(p) for p in Path("/dev").glob("video*"))
            raise UserError(f"{where}: no such camera ({'found: ' + ', '.join(cams) if cams else 'no cameras found'})")
        options = {"framerate": f"{fps:g}"} if fps else {}
        return _AVSource(spec, stream, live=True, stride=stride, fps=fps, retries=retries, backoff=backoff,
                         fmt="v4l2", options=options)
    path = Path(spec)
    if path.is_dir():
        return _FolderSource(spec, stream, stride=stride, fps=fps)
    if not path.is_file():
        raise UserError(f"{where}: no such file, folder, camera or URL")
    if path.suffix.lower() == ".txt":
        return _DetectionsSource(spec, stream, stride=stride, fps=fps)
    return _open_file(spec, stream, stride, fps)


def _open_file(spec: str, stream: int, stride: int, fps: float | None) -> Source:
    av = _av()
    src = _AVSource(spec, stream, live=False, stride=stride, fps=fps, retries=0, backoff=0.0)
    try:
        src._probe = src._open()
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise src._error(f"not a video FFmpeg can open: {one_line(e)}") from None
    return src
