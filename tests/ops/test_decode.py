"""slipway.ops.decode: YOLO anchor-free / anchor-based and SSD decoders vs torch / OpenCV."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
import torch

from slipway.errors import UserError
from slipway.ops import (
    batched_nms,
    box_convert,
    decode_ssd,
    decode_ssd_boxes,
    decode_yolo_anchor_based,
    decode_yolo_anchor_free,
    letterbox,
    make_anchor_points,
    ssd_priors,
)
from tests.ops.test_detect import nms_py

RNG = np.random.default_rng(4)


def yolov8_output(num_classes: int = 80, objects: int = 12, rng: np.random.Generator = RNG) -> np.ndarray:
    """A realistic exported YOLOv8 output [1, 4 + C, 8400]: low background scores, and
    clusters of confident anchors around a few objects."""
    pts, stride = make_anchor_points(640, (8, 16, 32))
    a = pts.shape[0]
    out = np.zeros((1, 4 + num_classes, a), np.float32)
    out[0, 4:] = rng.uniform(0, 0.05, (num_classes, a))
    centers = pts * stride[:, None]
    out[0, 0:2] = centers.T + rng.normal(0, 2, (2, a))
    out[0, 2:4] = rng.uniform(8, 60, (2, a))
    for _ in range(objects):
        c, cls = rng.uniform(40, 600, 2), rng.integers(num_classes)
        near = np.nonzero(np.abs(centers - c).max(1) < 1.5 * stride)[0]  # ~15 anchors over 3 levels
        wh = rng.uniform(40, 200, 2)
        out[0, 0:2, near] = c + rng.normal(0, 3, (near.size, 2))
        out[0, 2:4, near] = wh * np.exp(rng.normal(0, 0.05, (near.size, 2)))
        out[0, 4 + cls, near] = rng.uniform(0.3, 0.95, near.size)
    return out


def opencv_yolov8(out: np.ndarray, conf: float, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hand-written path (transpose, max/argmax, filter) with cv2.dnn.NMSBoxes per class."""
    rows = out[0].T
    scores = rows[:, 4:]
    cls, best = scores.argmax(1), scores.max(1)
    m = best > conf
    b, s, c = rows[m, :4], best[m], cls[m]
    xywh = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, 2:]], 1)
    keep = []
    for k in np.unique(c):
        idx = np.nonzero(c == k)[0]
        keep += idx[np.asarray(cv2.dnn.NMSBoxes(xywh[idx], s[idx], conf, iou)).ravel()].tolist()
    keep = np.asarray(keep, dtype=np.int64)
    return box_convert(xywh[keep], "xywh", "xyxy"), s[keep], c[keep]


def test_class_offsets_survive_negative_coordinates() -> None:
    # two boxes of different classes (IoU 0.009 even ignoring classes). Offsetting by
    # class * (max_coord + 1), as cv2.dnn.NMSBoxesBatched does, assumes coordinates >= 0: the
    # class-1 box starts at -60, lands on the class-0 box after its +81 shift (IoU 0.45) and
    # OpenCV drops it. Class-aware NMS keeps both
    xyxy = np.array([[0.0, 0.0, 80.0, 80.0], [-60.0, -60.0, 10.0, 10.0]], np.float32)
    scores, classes = np.array([0.9, 0.8], np.float32), np.array([0, 1])
    assert batched_nms(xyxy, scores, classes, 0.1).tolist() == [0, 1]
    xywh = box_convert(xyxy, "xyxy", "xywh")
    assert len(np.asarray(cv2.dnn.NMSBoxesBatched(xywh, scores, classes.astype(np.int32), 0.0, 0.1)).ravel()) == 1


def _torch_v8_raw_reference(raw: np.ndarray, reg_max: int, thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ultralytics-style decode in torch: DFL softmax-expectation, dist2bbox x stride, sigmoid."""
    t = torch.from_numpy(raw)
    pts, st = (torch.from_numpy(x) for x in make_anchor_points(64, (8, 16, 32)))
    box = t[0, : 4 * reg_max].reshape(4, reg_max, -1)
    dist = (
        (torch.softmax(box, 1) * torch.arange(reg_max, dtype=t.dtype)[None, :, None]).sum(1)
        if reg_max > 1
        else box[:, 0]
    )
    lt, rb = dist[:2].T, dist[2:].T
    xyxy = torch.cat([pts - lt, pts + rb], 1) * st[:, None]
    cls = torch.sigmoid(t[0, 4 * reg_max :])
    best, ci = cls.max(0)
    m = best >= thr
    return xyxy[m].numpy(), best[m].numpy(), ci[m].numpy()


@pytest.mark.parametrize("reg_max", [16, 1])
def test_yolov8_raw_head_matches_torch_decode(reg_max: int) -> None:
    # iou_threshold=1.0 disables suppression, so every candidate is compared: boxes max abs
    # diff <= 1e-3 px, scores <= 1e-6 (float32 softmax / sigmoid in a different order)
    a = sum((64 // s) ** 2 for s in (8, 16, 32))
    raw = RNG.normal(0, 1, (1, 4 * reg_max + 5, a)).astype(np.float32)
    raw[0, 4 * reg_max :] -= 2.0
    det = decode_yolo_anchor_free(
        raw, decoded=False, input_size=64, reg_max=reg_max, score_threshold=0.3, iou_threshold=1.0, max_detections=10**6
    )[0]
    boxes, scores, cls = _torch_v8_raw_reference(raw, reg_max, 0.3)
    order = np.argsort(-scores, kind="stable")
    assert len(det) == len(scores) > 10
    assert np.abs(det.boxes - boxes[order]).max() <= 1e-3
    assert np.abs(det.scores - scores[order]).max() <= 1e-6
    np.testing.assert_array_equal(det.class_ids, cls[order])


def test_yolov8_multi_label_agnostic_and_transform() -> None:
    out = yolov8_output(num_classes=3, objects=4)
    anchor = 100
    out[0, 4:, anchor] = [0.9, 0.8, 0.0]  # one anchor confident for two classes
    multi = decode_yolo_anchor_free(out, score_threshold=0.7, iou_threshold=1.0, multi_label=True)[0]
    single = decode_yolo_anchor_free(out, score_threshold=0.7, iou_threshold=1.0)[0]
    assert len(multi) == len(single) + 1
    agnostic = decode_yolo_anchor_free(out, score_threshold=0.25, class_agnostic=True)[0]
    aware = decode_yolo_anchor_free(out, score_threshold=0.25)[0]
    assert len(agnostic) <= len(aware)
    _, tf = letterbox(np.zeros((480, 800, 3), np.uint8), 640)
    mapped = decode_yolo_anchor_free(out, transform=tf)[0]
    np.testing.assert_allclose(mapped.boxes, tf.to_original(aware.boxes), atol=1e-3)
    assert mapped.boxes[:, 2].max() <= 800 and mapped.boxes[:, 3].max() <= 480


def _torch_v5_reference(maps: list[np.ndarray], anchors: np.ndarray, strides: tuple[int, ...]) -> np.ndarray:
    """YOLOv5 Detect.forward (v6+) in torch: sigmoid, xy = (2s - 0.5 + grid) * stride,
    wh = (2s)^2 * anchor; returns the flattened [N, A, 5 + C] export layout."""
    rows = []
    for i, m in enumerate(maps):
        t = torch.from_numpy(m)
        n, ch, ny, nx = t.shape
        na = anchors.shape[1]
        y = t.view(n, na, ch // na, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
        gy, gx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grid = torch.stack((gx, gy), 2).view(1, 1, ny, nx, 2).float()
        xy = (y[..., :2] * 2 - 0.5 + grid) * strides[i]
        wh = (y[..., 2:4] * 2) ** 2 * torch.from_numpy(anchors[i]).view(1, na, 1, 1, 2)
        rows.append(torch.cat((xy, wh, y[..., 4:]), -1).view(n, -1, ch // na))
    return torch.cat(rows, 1).numpy()


def test_yolov5_raw_maps_equal_export_layout_and_torch() -> None:
    # raw per-level logits vs the exported (torch-decoded) layout: identical detections,
    # boxes max abs diff <= 1e-3 px, scores <= 1e-6
    strides, c = (8, 16, 32), 6
    anchors = np.asarray(
        [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]], np.float32
    )
    maps = [RNG.normal(-1, 2, (2, 3 * (5 + c), 128 // s, 96 // s)).astype(np.float32) for s in strides]
    flat = _torch_v5_reference(maps, anchors.reshape(3, 3, 2), strides)
    raw = decode_yolo_anchor_based(maps, anchors=anchors, strides=strides, score_threshold=0.5)
    exported = decode_yolo_anchor_based(flat, score_threshold=0.5)
    for r, e in zip(raw, exported, strict=True):
        assert len(r) == len(e) > 0
        np.testing.assert_array_equal(r.class_ids, e.class_ids)
        assert np.abs(r.boxes - e.boxes).max() <= 1e-3 and np.abs(r.scores - e.scores).max() <= 1e-6
    # score = objectness x class probability, and NMS is per class
    rows = flat[0]
    conf = rows[:, 5:] * rows[:, 4:5]
    best, ci = conf.max(1), conf.argmax(1)
    m = (rows[:, 4] >= 0.5) & (best >= 0.5)
    xyxy = box_convert(rows[m, :4], "cxcywh", "xyxy")
    keep = batched_nms(xyxy, best[m], ci[m], 0.45)
    np.testing.assert_allclose(exported[0].scores, best[m][keep], atol=1e-7)


def test_ssd_priors_match_reference_loops() -> None:
    # ssd.pytorch PriorBox written as plain loops: 8732 priors, max abs diff <= 1e-7 (float32)
    fmaps, steps, mins, maxs = (
        [38, 19, 10, 5, 3, 1],
        [8, 16, 32, 64, 100, 300],
        [30, 60, 111, 162, 213, 264],
        [60, 111, 162, 213, 264, 315],
    )
    ars = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    ref = []
    for k, f in enumerate(fmaps):
        for i, j in itertools.product(range(f), repeat=2):
            fk = 300 / steps[k]
            cx, cy = (j + 0.5) / fk, (i + 0.5) / fk
            s = mins[k] / 300
            ref += [cx, cy, s, s]
            sp = math.sqrt(s * (maxs[k] / 300))
            ref += [cx, cy, sp, sp]
            for ar in ars[k]:
                ref += [cx, cy, s * math.sqrt(ar), s / math.sqrt(ar), cx, cy, s / math.sqrt(ar), s * math.sqrt(ar)]
    ref = np.clip(np.array(ref).reshape(-1, 4), 0, 1)
    priors = ssd_priors()
    assert priors.shape == (8732, 4)
    assert np.abs(priors - ref).max() <= 1e-7


def test_ssd_decode_boxes_and_end_to_end() -> None:
    priors = ssd_priors(
        image_size=300,
        feature_maps=(10, 5),
        steps=(30, 60),
        min_sizes=(60, 120),
        max_sizes=(120, 200),
        aspect_ratios=((2,), (2,)),
    )
    p = priors.shape[0]
    loc = RNG.normal(0, 1, (2, p, 4)).astype(np.float32)
    conf = RNG.normal(0, 2, (2, p, 4)).astype(np.float32)
    # ssd.pytorch decode in torch: max abs diff <= 1e-6 (normalized coordinates)
    pt, lt = torch.from_numpy(priors), torch.from_numpy(loc[0])
    b = torch.cat((pt[:, :2] + lt[:, :2] * 0.1 * pt[:, 2:], pt[:, 2:] * torch.exp(lt[:, 2:] * 0.2)), 1)
    ref = torch.cat((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1).numpy()
    assert np.abs(decode_ssd_boxes(loc[0], priors) - ref).max() <= 1e-6
    # end to end: softmax, background 0 dropped, per-class NMS (oracle: plain-Python NMS)
    dets = decode_ssd(
        loc, conf, priors, score_threshold=0.5, iou_threshold=0.45, max_detections=10**6, image_size=(300, 300)
    )
    probs = torch.softmax(torch.from_numpy(conf[0]), -1).numpy()
    boxes = ref * 300
    expect = []
    for c in range(1, 4):
        idx = np.nonzero(probs[:, c] >= 0.5)[0]
        expect += [(probs[i, c], c, i) for i in idx[nms_py(boxes[idx], probs[idx, c], 0.45)]]
    expect.sort(key=lambda e: -e[0])
    assert len(dets[0]) == len(expect) > 0
    np.testing.assert_array_equal(dets[0].class_ids, [e[1] for e in expect])
    assert np.abs(dets[0].boxes - boxes[[e[2] for e in expect]]).max() <= 1e-3
    assert 0 not in dets[1].class_ids


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: decode_yolo_anchor_free(np.zeros((1, 4, 10), np.float32)), "classes"),
        (lambda: decode_yolo_anchor_free(np.zeros((1, 2, 3, 4), np.float32)), "2 or 3-D"),
        (lambda: decode_yolo_anchor_free(np.full((1, 6, 10), np.nan, np.float32)), "NaN"),
        (lambda: decode_yolo_anchor_free(np.zeros((1, 69, 10), np.float32), decoded=False), "input_size"),
        (lambda: decode_yolo_anchor_free(np.zeros((1, 69, 10), np.float32), decoded=False, input_size=64), "anchors"),
        (lambda: decode_yolo_anchor_based([np.zeros((1, 20, 4, 4), np.float32)], strides=(8,)), "channels"),
        (lambda: decode_yolo_anchor_based(np.zeros((1, 10, 5), np.float32)), "5 \\+ classes"),
        (
            lambda: decode_ssd(
                np.zeros((1, 5, 4), np.float32), np.zeros((1, 6, 3), np.float32), np.zeros((5, 4), np.float32)
            ),
            "disagree",
        ),
        (lambda: ssd_priors(feature_maps=(3,)), "different lengths"),
    ],
)
def test_bad_inputs(call: object, match: str) -> None:
    with pytest.raises(UserError, match=match):
        call()


def test_empty_outputs_give_empty_detections() -> None:
    det = decode_yolo_anchor_free(np.zeros((2, 6, 30), np.float32))
    assert [len(d) for d in det] == [0, 0] and det[0].boxes.shape == (0, 4)


# ---------------------------------------------------------------------------------- PP-PicoDet


def picodet_head(size: tuple[int, int], num_classes: int, objects: int, rng: np.random.Generator) -> tuple[list, list]:
    """Synthetic PicoDet outputs (sigmoid scores [1, A_l, C], 8-bin DFL logits [1, A_l, 32]) with
    clusters of confident anchors around a few objects, several classes overlapping."""
    from slipway.ops import picodet_centers

    scores, boxes = [], []
    for lvl, ctr in enumerate(picodet_centers(size, (8, 16, 32, 64))):
        a = ctr.shape[0]
        s = rng.uniform(0, 0.3, (1, a, num_classes)).astype(np.float32)
        for _ in range(objects):
            c = rng.integers(0, a)
            near = np.flatnonzero(np.abs(ctr - ctr[c]).max(1) <= 8 * 2 ** lvl * 2)
            s[0, near, rng.integers(0, num_classes)] = rng.uniform(0.3, 0.99, near.size)
        scores.append(s)
        boxes.append(rng.normal(0, 2, (1, a, 32)).astype(np.float32))
    return scores, boxes


@pytest.mark.parametrize("seed", range(4))
def test_picodet_matches_rapid_layout_postprocess(seed: int) -> None:
    """decode_picodet vs rapid-layout's PPPostProcess (PaddleDetection's PicoDet post-processing):
    the same detections in the same order (class, then score), boxes within 1e-3 px."""
    pytest.importorskip("rapid_layout")
    from rapid_layout.model_handler.pp.post_process import PPPostProcess

    from slipway.ops import decode_picodet
    from slipway.ops.geometry import scale_transform

    rng = np.random.default_rng(seed)
    size, orig, ncls = (256, 192), (int(rng.integers(200, 900)), int(rng.integers(200, 900))), 5
    scores, boxes = picodet_head(size, ncls, objects=6, rng=rng)
    for thr, iou in ((0.5, 0.5), (0.25, 0.3), (0.9, 0.6)):
        ref = PPPostProcess([str(i) for i in range(ncls)], thr, iou)
        rb, rs, rn = ref(orig, np.zeros((1, 3, *size), np.float32), scores + boxes)
        det = decode_picodet(scores, boxes, input_size=size, score_threshold=thr, iou_threshold=iou,
                             transform=scale_transform(orig, size))[0]
        assert [int(n) for n in rn] == det.class_ids.tolist()
        assert len(det) > 0 or thr == 0.9
        np.testing.assert_array_equal(np.asarray(rs, np.float32), det.scores)
        np.testing.assert_allclose(np.asarray(rb, np.float64).reshape(-1, 4), det.boxes, atol=1e-3)


def test_picodet_caps_and_errors() -> None:
    from slipway.ops import decode_picodet

    rng = np.random.default_rng(9)
    scores, boxes = picodet_head((128, 128), 2, objects=8, rng=rng)
    full = decode_picodet(scores, boxes, input_size=128, score_threshold=0.1, iou_threshold=1.0)[0]
    capped = decode_picodet(scores, boxes, input_size=128, score_threshold=0.1, iou_threshold=1.0, max_per_class=3)[0]
    assert len(full) > 6 and np.bincount(capped.class_ids).max() <= 3
    for c in np.unique(capped.class_ids):  # the best-scored of each class are the ones kept
        assert np.allclose(capped.scores[capped.class_ids == c], full.scores[full.class_ids == c][:3])
    empty = decode_picodet(scores, boxes, input_size=128, score_threshold=1.0)[0]
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    with pytest.raises(UserError, match="levels"):
        decode_picodet(scores[:3], boxes, input_size=128)
    with pytest.raises(UserError, match="do not fit"):
        decode_picodet(scores, boxes, input_size=160)
