"""Synthesized scenes with known ground truth: moving, occluding boxes -> MOT ground truth, noisy detections,
rendered frames and encoded videos (PyAV). What the tests and bench/stream.py run on; nothing is downloaded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slipway.errors import UserError
from slipway.stream.mot import COLUMNS


@dataclass
class Scene:
    """``frames`` frames of ``width`` x ``height`` at ``fps``. ``gt``: MOT ground-truth rows [N, 10] of
    [frame (1-based), id, left, top, width, height, 1, class (1-based), visibility, -1]; ``depth`` per object id
    (larger is nearer: drawn later, occludes the others); ``colors`` per id (BGR)."""

    width: int
    height: int
    frames: int
    fps: int
    gt: np.ndarray
    depth: dict[int, float]
    colors: dict[int, tuple[int, int, int]]
    background: np.ndarray

    def rows(self, frame: int) -> np.ndarray:
        """Ground-truth rows of 1-based ``frame``."""
        return self.gt[self.gt[:, 0] == frame]

    def render(self, frame: int) -> np.ndarray:
        """Frame ``frame`` (1-based) as H x W x 3 uint8 BGR: the textured background, the boxes far to near."""
        img = self.background.copy()
        rows = self.rows(frame)
        for r in sorted(rows, key=lambda r: self.depth[int(r[1])]):
            x1, y1 = int(round(r[2])), int(round(r[3]))
            x2, y2 = int(round(r[2] + r[4])), int(round(r[3] + r[5]))
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, self.width), min(y2, self.height)
            if x2 <= x1 or y2 <= y1:
                continue
            color = np.array(self.colors[int(r[1])], dtype=np.uint8)
            img[y1:y2, x1:x2] = color
            img[y1:y2:6, x1:x2] = color // 2  # stripes, so boxes have texture for the encoder and the detector
            img[y1:y1 + 2, x1:x2] = img[y2 - 2:y2, x1:x2] = 255
        return img

    def images(self) -> Iterator[np.ndarray]:
        for f in range(1, self.frames + 1):
            yield self.render(f)


def make_scene(frames: int = 120, objects: int = 8, size: tuple[int, int] = (640, 360), fps: int = 30,
               seed: int = 0, classes: int = 1) -> Scene:
    """A scene of ``objects`` boxes crossing a ``size`` (width, height) frame at constant velocity plus a small
    random acceleration, bouncing off the borders, some entering late and leaving early, occluding each other by
    depth. Visibility is the share of a box not covered by nearer boxes (on a 4-pixel grid)."""
    if frames < 1 or objects < 1:
        raise UserError("make_scene: frames and objects must be positive")
    width, height = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    scale = min(width, height)
    rows, depth, colors = [], {}, {}
    for oid in range(1, objects + 1):
        w = rng.uniform(0.08, 0.22) * scale
        h = w * rng.uniform(0.8, 2.2)
        pos = np.array([rng.uniform(0, width - w), rng.uniform(0, height - h)])
        speed = rng.uniform(0.003, 0.012) * scale
        angle = rng.uniform(0, 2 * np.pi)
        vel = speed * np.array([np.cos(angle), np.sin(angle)])
        start = 1 if rng.random() < 0.6 else int(rng.integers(1, max(2, frames // 2)))
        end = frames if rng.random() < 0.7 else int(rng.integers(min(start + 10, frames), frames + 1))
        depth[oid] = float(rng.random())
        colors[oid] = tuple(int(c) for c in rng.integers(40, 230, 3))
        cls = int(rng.integers(0, classes)) + 1
        for f in range(1, frames + 1):
            vel += rng.normal(0, 0.02 * speed, 2)
            pos += vel
            for k, lim in ((0, width - w), (1, height - h)):
                if pos[k] < 0 or pos[k] > lim:
                    vel[k] = -vel[k]
                    pos[k] = np.clip(pos[k], 0, lim)
            if start <= f <= end:
                rows.append([f, oid, pos[0], pos[1], w, h, 1, cls, 1.0, -1])
    gt = np.array(rows, dtype=np.float64).reshape(-1, COLUMNS)
    gt = gt[np.lexsort((gt[:, 1], gt[:, 0]))]
    _visibility(gt, depth, width, height)
    yy, xx = np.mgrid[0:height, 0:width]
    noise = rng.integers(0, 24, (height // 8 + 1, width // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:height, :width]
    base = (60 + 60 * xx / width + 40 * yy / height)[..., None] + noise
    background = np.clip(np.concatenate([base, base * 0.9, base * 0.8], axis=2), 0, 255).astype(np.uint8)
    return Scene(width, height, frames, fps, gt, depth, colors, background)


def _visibility(gt: np.ndarray, depth: dict[int, float], width: int, height: int, cell: int = 4) -> None:
    for f in np.unique(gt[:, 0]):
        idx = np.flatnonzero(gt[:, 0] == f)
        covered = np.zeros((height // cell + 1, width // cell + 1), dtype=bool)
        for i in sorted(idx, key=lambda i: -depth[int(gt[i, 1])]):  # nearest first
            x1, y1 = int(gt[i, 2] // cell), int(gt[i, 3] // cell)
            x2, y2 = int((gt[i, 2] + gt[i, 4]) // cell) + 1, int((gt[i, 3] + gt[i, 5]) // cell) + 1
            region = covered[y1:y2, x1:x2]
            gt[i, 8] = 1.0 - region.mean() if region.size else 0.0
            region[:] = True


def noisy_detections(scene: Scene, *, sigma: float = 0.03, miss: float = 0.1, false_per_frame: float = 0.5,
                     min_visibility: float = 0.25, seed: int = 0) -> np.ndarray:
    """Detections a decent detector would give, made from the ground truth: each visible box (visibility >=
    ``min_visibility``) is missed with probability ``miss``, else jittered by ``sigma`` of its size, scored higher
    the more visible it is; plus Poisson(``false_per_frame``) false positives a frame, scored low. MOT rows with
    id -1 and the class in column 7."""
    rng = np.random.default_rng(seed)
    out = []
    for r in scene.gt:
        if r[8] < min_visibility or rng.random() < miss:
            continue
        w, h = r[4], r[5]
        x = r[2] + rng.normal(0, sigma * w)
        y = r[3] + rng.normal(0, sigma * h)
        w2, h2 = w * np.exp(rng.normal(0, sigma)), h * np.exp(rng.normal(0, sigma))
        score = float(np.clip(0.35 + 0.6 * r[8] + rng.normal(0, 0.08), 0.05, 1.0))
        out.append([r[0], -1, x, y, w2, h2, score, r[7], -1, -1])
    scale = min(scene.width, scene.height)
    for f in range(1, scene.frames + 1):
        for _ in range(rng.poisson(false_per_frame)):
            w = rng.uniform(0.05, 0.15) * scale
            h = w * rng.uniform(0.8, 2.0)
            out.append([f, -1, rng.uniform(0, scene.width - w), rng.uniform(0, scene.height - h), w, h,
                        float(rng.uniform(0.05, 0.55)), 1, -1, -1])
    dets = np.array(out, dtype=np.float64).reshape(-1, COLUMNS)
    return dets[np.argsort(dets[:, 0], kind="stable")]


def write_video(scene: Scene, path: str | os.PathLike, *, codec: str = "libx264", crf: int = 23,
                gop: int | None = None) -> Path:
    """Encode the scene's frames with PyAV (yuv420p; H.264 by default) to ``path``; atomic."""
    import av

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream(codec, rate=scene.fps)
        stream.width, stream.height = scene.width // 2 * 2, scene.height // 2 * 2
        stream.pix_fmt = "yuv420p"
        if codec in ("libx264", "h264"):
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        if gop:
            stream.codec_context.gop_size = gop
        for img in scene.images():
            frame = av.VideoFrame.from_ndarray(img[: stream.height, : stream.width], format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, p)
    return p
