"""Side-by-side benchmarks of ``slipway.ops`` against what users write otherwise.

Run: ``.venv/bin/python bench/ops.py [--quick]``. Every comparison runs in this one process,
calls of the two sides interleaved, and reports the median of the repeats. Writes
``bench/results/ops.md`` and ``bench/results/ops.json`` with the machine and versions.

Rows:
- NMS on 1k / 10k boxes (uniform random and detector-like clustered) vs ``cv2.dnn.NMSBoxes``
  and the classic numpy loop (target: >= 1.0x OpenCV); kept indices are checked identical.
- letterbox + normalize + HWC→NCHW of a 1080p frame to 640x640 vs the usual hand-written
  OpenCV/numpy chain (target >= 1.0x); outputs are checked equal (<= 1e-5).
- YOLOv8-style decode + class-aware NMS of [1, 84, 8400] vs the OpenCV ``NMSBoxesBatched``
  path (target >= 1.0x), and as a share of a MobileNetV2-ish ONNX Runtime inference at
  batch 1 measured in the same run (target < 10%).

Each benchmark is a function ``bench_xxx(ctx) -> list[dict]`` in ``BENCHES``; ``ctx`` carries
shared measurements (``ctx["mobilenetv2_ms"]``) so later rows can report a share of them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import slipway.ops as ops  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------- timing


def _once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def compare(ours: Callable[[], Any], theirs: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median ms of two callables, calls interleaved so machine noise hits both alike."""
    for _ in range(2):
        ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        a.append(_once(ours))
        b.append(_once(theirs))
    return float(np.median(a)), float(np.median(b))


def measure(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(2):
        fn()
    return float(np.median([_once(fn) for _ in range(repeats)]))


def row(
    group: str, case: str, ours: float, baseline: str, base_ms: float, target: str, note: str = "", ratio: bool = True
) -> dict:
    """One result; ``speedup`` = baseline / slipway (left empty for share-of rows)."""
    return {
        "group": group,
        "case": case,
        "slipway_ms": round(ours, 4),
        "baseline": baseline,
        "baseline_ms": round(base_ms, 4),
        "speedup": round(base_ms / ours, 2) if ratio and ours > 0 else None,
        "target": target,
        "note": note,
    }


# ---------------------------------------------------------------------------------- data


def uniform_boxes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, 640, (n, 2))
    wh = rng.uniform(10, 100, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.random(n).astype(np.float32)


def clustered_boxes(n: int, rng: np.random.Generator, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Detector-like candidates: jittered copies of boxes around k objects."""
    c, wh = rng.uniform(0, 640, (k, 2)), rng.uniform(20, 150, (k, 2))
    a = rng.integers(0, k, n)
    cc = c[a] + rng.normal(0, 0.08, (n, 2)) * wh[a]
    ww = wh[a] * np.exp(rng.normal(0, 0.1, (n, 2)))
    return np.concatenate([cc - ww / 2, cc + ww / 2], 1).astype(np.float32), rng.random(n).astype(np.float32)


def yolov8_output(objects: int, rng: np.random.Generator, classes: int = 80) -> np.ndarray:
    """An exported-YOLOv8-like [1, 84, 8400]: background scores < 0.05 and clusters of
    confident anchors (scores 0.3-0.95) around ``objects`` objects."""
    pts, stride = ops.make_anchor_points(640, (8, 16, 32))
    centers = pts * stride[:, None]
    out = np.zeros((1, 4 + classes, centers.shape[0]), np.float32)
    out[0, 4:] = rng.uniform(0, 0.05, (classes, centers.shape[0]))
    out[0, 0:2] = centers.T
    out[0, 2:4] = rng.uniform(8, 60, (2, centers.shape[0]))
    for _ in range(objects):
        c, cls, wh = rng.uniform(40, 600, 2), rng.integers(classes), rng.uniform(40, 200, 2)
        near = np.nonzero(np.abs(centers - c).max(1) < 1.5 * stride)[0]  # ~15 anchors over 3 levels
        out[0, 0:2, near] = c + rng.normal(0, 3, (near.size, 2))
        out[0, 2:4, near] = wh * np.exp(rng.normal(0, 0.05, (near.size, 2)))
        out[0, 4 + cls, near] = rng.uniform(0.3, 0.95, near.size)
    return out


# ---------------------------------------------------------------------------------- baselines


def nms_numpy_loop(boxes: np.ndarray, scores: np.ndarray, thr: float) -> np.ndarray:
    """The classic py-faster-rcnn loop (without the +1), as found in many code bases."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.nonzero(ovr <= thr)[0] + 1]
    return np.asarray(keep)


def hand_written_preprocess(img: np.ndarray, size: int = 640) -> np.ndarray:
    """The usual YOLO letterbox + normalize + CHW chain written with OpenCV and numpy."""
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (size - nw) / 2, (size - nh) / 2
    top, bottom, left, right = int(round(dh - 0.1)), int(round(dh + 0.1)), int(round(dw - 0.1)), int(round(dw + 0.1))
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    x = padded[..., ::-1].astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def opencv_yolo_path(out: np.ndarray, conf: float, iou: float, top_k: int = 300) -> tuple[np.ndarray, ...]:
    """Transpose, max/argmax per anchor, filter, xywh, cv2.dnn.NMSBoxesBatched (top_k kept)."""
    rows = out[0].T
    scores = rows[:, 4:]
    cls, best = scores.argmax(1), scores.max(1)
    m = best > conf
    b = rows[m, :4]
    xywh = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, 2:]], 1)
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, best[m], cls[m].astype(np.int32), conf, iou, 1.0, top_k)).ravel()
    return xywh[keep], best[m][keep], cls[m][keep]


# ---------------------------------------------------------------------------------- benches


def bench_model_reference(ctx: dict) -> list[dict]:
    """MobileNetV2-ish inference at batch 1 in ONNX Runtime: the yardstick for post-processing."""
    import onnxruntime as ort

    path, shape = _mobilenet_onnx()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ms = measure(lambda: sess.run(None, {name: x}), ctx["repeats"] * 2)
    ctx["mobilenetv2_ms"] = ms
    note = f"{path.name}, {ort.__version__}, default threads"
    return [row("reference", f"MobileNetV2-ish ORT b1 {shape[2]}x{shape[3]}", ms, "-", ms, "-", note, ratio=False)]


def _mobilenet_onnx() -> tuple[Path, tuple[int, ...]]:
    try:
        from tests.zoo import build, export

        _, x = build("mobilenetv2")
        return export("mobilenetv2"), tuple(x.shape)
    except ImportError:
        return _export_fallback_mobilenet(), (1, 3, 224, 224)


def _export_fallback_mobilenet() -> Path:
    """A MobileNetV2-like torch model (inverted residuals, width 1.0) exported once."""
    import torch
    from torch import nn

    def block(cin: int, cout: int, stride: int, t: int = 6) -> nn.Module:
        mid = cin * t
        return nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip

    cfg = [
        (32, 16, 1, 1),
        (16, 24, 2, 6),
        (24, 32, 2, 6),
        (32, 64, 2, 6),
        (64, 96, 1, 6),
        (96, 160, 2, 6),
        (160, 320, 1, 6),
    ]
    layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    layers += [block(a, b, s, t) for a, b, s, t in cfg]
    layers += [nn.Conv2d(320, 1280, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    model = nn.Sequential(*layers).eval()
    path = ROOT / ".slipway_cache" / "bench_mobilenetv2.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=True)
    return path


def bench_nms(ctx: dict) -> list[dict]:
    rows = []
    for gen in (uniform_boxes, clustered_boxes):
        for n in (1000, 10000):
            boxes, scores = gen(n, np.random.default_rng(n))
            xywh = np.ascontiguousarray(ops.box_convert(boxes, "xyxy", "xywh"))
            keep = ops.nms(boxes, scores, 0.5)
            ref = np.asarray(cv2.dnn.NMSBoxes(xywh, scores, 0.0, 0.5)).ravel()
            loop_keep = nms_numpy_loop(boxes, scores, 0.5)
            same_cv = np.array_equal(keep, ref)
            same_loop = (
                "same"
                if np.array_equal(keep, loop_keep)
                else "same set"
                if set(keep) == set(loop_keep)
                else "DIFFERENT"
            )
            reps = ctx["repeats"] if n <= 1000 or gen is clustered_boxes else max(3, ctx["repeats"] // 3)
            ours, cv = compare(lambda b=boxes, s=scores: ops.nms(b, s, 0.5),
                               lambda x=xywh, s=scores: cv2.dnn.NMSBoxes(x, s, 0.0, 0.5), reps)  # fmt: skip
            loop = measure(lambda b=boxes, s=scores: nms_numpy_loop(b, s, 0.5), max(3, reps // 2))
            case = f"{n} boxes, {gen.__name__.split('_')[0]}, kept {keep.size}"
            note = "identical kept indices" if same_cv else "KEPT INDICES DIFFER"
            rows.append(row("nms", case, ours, "cv2.dnn.NMSBoxes", cv, ">= 1.0x", note))
            loop_note = {"same": "identical kept indices", "same set": "same set (loop orders score ties last-first)"}
            rows.append(row("nms", case, ours, "numpy loop", loop, "-", loop_note.get(same_loop, "KEPT SET DIFFERS")))
    return rows


def bench_preprocess(ctx: dict) -> list[dict]:
    img = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    ours_out, _ = ops.preprocess(img, 640, mean=MEAN, std=STD)
    diff = float(np.abs(ours_out - hand_written_preprocess(img)).max())
    ours, hand = compare(lambda: ops.preprocess(img, 640, mean=MEAN, std=STD), lambda: hand_written_preprocess(img),
                         ctx["repeats"] * 2)  # fmt: skip
    note = f"max abs diff {diff:.1e}"
    return [
        row(
            "preprocess",
            "1080p BGR → 1x3x640x640 letterbox+normalize",
            ours,
            "hand-written cv2/numpy",
            hand,
            ">= 1.0x",
            note,
        )
    ]


def bench_yolo(ctx: dict) -> list[dict]:
    rows = []
    for objects in (20, 100):
        out = yolov8_output(objects, np.random.default_rng(objects))

        def ours(o: np.ndarray = out) -> Any:
            return ops.decode_yolo_anchor_free(o, score_threshold=0.25, iou_threshold=0.45, max_detections=300)

        det = ours()[0]
        ref_scores = per_class_reference(out, 0.25, 0.45)
        same = len(det) == len(ref_scores) and np.array_equal(np.sort(det.scores), np.sort(ref_scores))
        batched = len(opencv_yolo_path(out, 0.25, 0.45)[1])
        a, b = compare(ours, lambda o=out: opencv_yolo_path(o, 0.25, 0.45), ctx["repeats"] * 2)
        case = f"[1, 84, 8400], {objects} objects, {len(det)} detections"
        note = "same detections as per-class cv2.dnn.NMSBoxes" if same else "DIFFERS FROM PER-CLASS NMS"
        if batched != len(det):
            note += f"; NMSBoxesBatched keeps {batched} (its class offsets break on negative coordinates)"
        rows.append(row("yolo decode+nms", case, a, "cv2 NMSBoxesBatched path", b, ">= 1.0x", note))
        if "mobilenetv2_ms" in ctx:
            pct = 100.0 * a / ctx["mobilenetv2_ms"]
            rows.append(row("yolo decode+nms", case, a, "share of MobileNetV2-ish ORT b1", ctx["mobilenetv2_ms"],
                            "< 10%", f"{pct:.1f}% of the inference", ratio=False))  # fmt: skip
    return rows


def per_class_reference(out: np.ndarray, conf: float, iou: float) -> np.ndarray:
    """Scores kept by the correct reference: cv2.dnn.NMSBoxes run class by class."""
    rows = out[0].T
    best, cls = rows[:, 4:].max(1), rows[:, 4:].argmax(1)
    m = best > conf
    b, s, c = rows[m, :4], best[m], cls[m]
    xywh = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, 2:]], 1)
    kept = []
    for k in np.unique(c):
        idx = np.nonzero(c == k)[0]
        kept += s[idx[np.asarray(cv2.dnn.NMSBoxes(xywh[idx], s[idx], conf, iou)).ravel()]].tolist()
    return np.sort(np.asarray(kept, np.float32))[::-1][:300]


BENCHES: list[Callable[[dict], list[dict]]] = [bench_model_reference, bench_nms, bench_preprocess, bench_yolo]


# ---------------------------------------------------------------------------------- report


def machine() -> dict:
    """Machine and versions (bench.common's header fields plus OpenCV and thread counts)."""
    from bench.common import machine as host
    from bench.common import versions

    info = {**host(), **versions(), "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads()}
    return {k: v for k, v in info.items() if k not in ("onnx-tool",)}


def to_markdown(info: dict, rows: list[dict]) -> str:
    lines = [
        "# slipway.ops benchmarks",
        "",
        "Machine and versions: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
    ]
    lines += ["Median of interleaved repeats in one process; speedup = baseline ms / slipway ms.", ""]
    lines += [
        "| group | case | slipway ms | baseline | baseline ms | speedup | target | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['speedup']}x" if r["speedup"] is not None else "-"
        lines.append(
            f"| {r['group']} | {r['case']} | {r['slipway_ms']:.3f} | {r['baseline']} | {r['baseline_ms']:.3f} "
            f"| {speed} | {r['target']} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for ops.md / ops.json")
    args = parser.parse_args(argv)
    ctx: dict = {"repeats": 3 if args.quick else 15}
    rows: list[dict] = []
    for bench in BENCHES:
        got = bench(ctx)
        for r in got:
            print(f"{r['group']:>16} | {r['case']:<48} | {r['slipway_ms']:9.3f} ms | {r['baseline']:<26} "
                  f"| {r['baseline_ms']:9.3f} ms | {r['speedup'] or '-'}x | {r['note']}")  # fmt: skip
        rows += got
    from bench.common import write_results

    info = machine()
    md, js = write_results("ops", to_markdown(info, rows), {"machine": info, "rows": rows}, args.out)
    print(f"wrote {md} and {js}")
    return 0


# ---- tracking agent: define bench_xxx(ctx) functions below and add them with BENCHES.append(...) ----

from scipy.optimize import linear_sum_assignment  # noqa: E402


class _ObjectTrack:
    """Baseline track: one object with a 7-D matrix Kalman filter, as SORT's KalmanBoxTracker over filterpy."""

    F = np.eye(7) + np.eye(7, k=4)
    H = np.eye(4, 7)
    Q = np.diag([1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 1e-4])
    R = np.diag([1.0, 1.0, 10.0, 10.0])

    def __init__(self, box: np.ndarray, track_id: int) -> None:
        self.x = np.zeros((7, 1))
        self.x[:4, 0] = _box_to_z(box)
        self.P = np.diag([10.0, 10.0, 10.0, 10.0, 1e4, 1e4, 1e4])
        self.id, self.since_update, self.streak, self.confirmed = track_id, 0, 1, False

    def predict(self) -> np.ndarray:
        if self.x[6, 0] + self.x[2, 0] <= 0:
            self.x[6, 0] = 0.0
        self.x = self.F @ self.x
        self.P = self.F @ self.P @ self.F.T + self.Q
        self.streak = 0 if self.since_update > 0 else self.streak
        self.since_update += 1
        return _z_to_box(self.x[:4, 0])

    def update(self, box: np.ndarray) -> None:
        K = self.P @ self.H.T @ np.linalg.inv(self.H @ self.P @ self.H.T + self.R)
        self.x = self.x + K @ (_box_to_z(box)[:, None] - self.H @ self.x)
        ikh = np.eye(7) - K @ self.H
        self.P = ikh @ self.P @ ikh.T + K @ self.R @ K.T  # Joseph form, as filterpy
        self.since_update, self.streak = 0, self.streak + 1


def _box_to_z(b: np.ndarray) -> np.ndarray:
    w, h = b[2] - b[0], b[3] - b[1]
    return np.array([b[0] + w / 2, b[1] + h / 2, w * h, w / h])


def _z_to_box(z: np.ndarray) -> np.ndarray:
    w = np.sqrt(z[2] * z[3])
    return np.array([z[0] - w / 2, z[1] - z[2] / w / 2, z[0] + w / 2, z[1] + z[2] / w / 2])


class ObjectSort:
    """The straightforward SORT: a list of track objects, a numpy IoU matrix, Hungarian on all of it.

    Same semantics as ``slipway.ops.SortTracker`` (max_age, min_hits, confirmed tracks), so
    the two must return the same boxes and ids.
    """

    def __init__(self, max_age: int = 3, min_hits: int = 3, iou_threshold: float = 0.3) -> None:
        self.max_age, self.min_hits, self.iou_threshold = max_age, min_hits, iou_threshold
        self.tracks: list[_ObjectTrack] = []
        self.frame, self.next_id = 0, 1

    def update(self, dets: np.ndarray) -> np.ndarray:
        self.frame += 1
        pred = np.array([t.predict() for t in self.tracks]).reshape(-1, 4)
        matched: set[int] = set()
        if len(pred) and len(dets):
            a, b = pred[:, None], dets[None]
            iw = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
            ih = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
            inter = iw * ih
            iou = inter / ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
                           + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter)  # fmt: skip
            ok = (iou >= self.iou_threshold) & (inter > 0)
            for r, c in zip(*linear_sum_assignment(np.where(ok, iou, 0.0), maximize=True), strict=True):
                if ok[r, c]:
                    self.tracks[r].update(dets[c])
                    matched.add(int(c))
        for c in range(len(dets)):
            if c not in matched:
                self.tracks.append(_ObjectTrack(dets[c], self.next_id))
                self.next_id += 1
        out = []
        for t in self.tracks:
            t.confirmed |= t.streak >= self.min_hits
            if t.since_update == 0 and (t.confirmed or self.frame <= self.min_hits):
                out.append([*_z_to_box(t.x[:4, 0]), t.id])
        self.tracks = [t for t in self.tracks if t.since_update <= self.max_age]
        return np.array(out).reshape(-1, 5)


def tracking_scene(n: int, frames: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` boxes moving linearly on a 1920x1080-ish grid, 1 px detection noise, 5% missed
    detections and 3 false positives a frame; returns per-frame detections and scores."""
    gx, gy = np.meshgrid(np.arange(10) * 180.0 + 90, np.arange(int(np.ceil(n / 10))) * 100.0 + 60)
    start = np.stack([gx.ravel(), gy.ravel()], 1)[:n]
    vel, wh = rng.uniform(-1.5, 1.5, (n, 2)), rng.uniform(30, 60, (n, 2))
    dets, scores = [], []
    for f in range(frames):
        c = start + vel * f
        boxes = np.concatenate([c - wh / 2, c + wh / 2], 1) + rng.normal(0, 1.0, (n, 4))
        boxes = boxes[rng.random(n) >= 0.05]
        fp = rng.uniform(0, 1800, (3, 2))
        boxes = np.concatenate([boxes, np.concatenate([fp, fp + rng.uniform(20, 60, (3, 2))], 1)])
        dets.append(boxes)
        scores.append(np.concatenate([rng.uniform(0.6, 0.95, len(boxes) - 3), rng.uniform(0.5, 0.7, 3)]))
    return dets, scores


def bench_tracking(ctx: dict) -> list[dict]:
    """Tracker update with 100 objects: slipway's batched trackers vs per-track objects; share of the model."""
    warmup, frames = 10, 10 + 12 * ctx["repeats"]
    dets, scores = tracking_scene(100, frames, np.random.default_rng(0))
    ours, base, byte = ops.SortTracker(max_age=3, min_hits=3), ObjectSort(max_age=3, min_hits=3), ops.ByteTracker()
    t_ours, t_base, t_byte, diff, same_ids = [], [], [], 0.0, True
    for f, (d, s) in enumerate(zip(dets, scores, strict=True)):  # interleaved: each tracker gets the frame in turn
        out, ms = _timed(ours.update, d, s)
        out_base, ms_base = _timed(base.update, d)
        _, ms_byte = _timed(byte.update, d, s)
        if f >= warmup:
            t_ours.append(ms), t_base.append(ms_base), t_byte.append(ms_byte)
        same_ids &= out.shape == out_base.shape and np.array_equal(out[:, 4], out_base[:, 4])
        if same_ids and len(out):
            diff = max(diff, float(np.abs(out - out_base).max()))
    m_ours, m_base, m_byte = (float(np.median(t)) for t in (t_ours, t_base, t_byte))
    note = (f"same ids, boxes max abs diff {diff:.1e}" if same_ids else "OUTPUTS DIFFER") + f"; {len(t_ours)} frames"
    case = "SortTracker.update, 100 objects (+misses, FPs)"
    rows = [row("tracking", case, m_ours, "per-track objects (filterpy-style SORT)", m_base, "-", note)]
    if "mobilenetv2_ms" in ctx:
        ref = ctx["mobilenetv2_ms"]
        for name, ms in ((case, m_ours), ("ByteTracker.update, 100 objects (+misses, FPs)", m_byte)):
            rows.append(row("tracking", name, ms, "share of MobileNetV2-ish ORT b1", ref, "< 10%",
                            f"{100.0 * ms / ref:.1f}% of the inference", ratio=False))  # fmt: skip
    return rows


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its wall time in ms."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0) * 1e3


BENCHES.append(bench_tracking)


if __name__ == "__main__":
    raise SystemExit(main())
