"""Top-down pose estimation as a pipeline: person boxes -> affine crops -> heatmap model -> keypoints in the
original image (MMPose 1.x's top-down conventions, SimpleBaseline / HRNet-style heatmap models).

* person boxes come from a detector (any :func:`slipway.pipeline.detect.detect_pipeline` kind, its
  steps and tensors prefixed ``det_``, its boxes of class ``person`` kept) or are a second pipeline
  input, ``person_boxes`` [K, 4] xyxy;
* ``pose.crops``: each box -> center and scale (the box times ``padding`` 1.25, widened or heightened
  to the model input's aspect ratio, MMPose's ``bbox_xyxy2cs`` + ``fix_aspect_ratio``), the affine
  that maps it onto the model input (:func:`slipway.ops.pose.top_down_transform`), the warped crop
  (bilinear, zero border), ``(x * scale - mean) / std``, BGR -> RGB: ``crops`` [K, 3, H, W];
* ``pose.estimate``: the heatmap model over the crops, ``batch`` at a time (the pipeline's own
  session, :func:`slipway.pipeline.core.model_session`; no crops, no run);
* ``pose.keypoints``: heatmap peaks refined by a quarter pixel toward the higher neighbour (or
  ``dark``), mapped back: ``kp / heatmap_size * scale + center - scale / 2``
  (:func:`slipway.ops.pose.keypoints_to_image`): ``keypoints`` [K, J, 3] (x, y, score).

Outputs: ``boxes`` [K, 4] xyxy, ``scores`` [K] (the detector's; 1 for given boxes), ``keypoints``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.ops._check import check_array, check_image
from slipway.ops.geometry import warp_affine
from slipway.ops.image import hwc_to_chw
from slipway.ops.image import normalize as _normalize
from slipway.ops.pose import decode_heatmaps, keypoints_to_image, top_down_transform
from slipway.pipeline.core import model_session
from slipway.pipeline.ops import IMAGENET_MEAN, IMAGENET_STD, register_op

__all__ = ["pose_pipeline", "box_center_scale"]


def box_center_scale(boxes: Any, size: Sequence[int], padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Center [K, 2] and scale [K, 2] (w, h, pixels) of xyxy ``boxes``, padded and fixed to the (H, W) aspect."""
    b = check_array("boxes", boxes, ndim=2, dtype_kind="fiu", last_dim=4).astype(np.float64)
    center = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    scale = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1) * padding
    aspect = size[1] / size[0]  # w / h of the model input
    w, h = scale[:, 0], scale[:, 1]
    wide = w > h * aspect
    scale = np.where(wide[:, None], np.stack([w, w / aspect], 1), np.stack([h * aspect, h], 1))
    return center.astype(np.float32), scale.astype(np.float32)


@register_op("pose.crops", inputs=("image", "boxes"), outputs=("crops", "centers", "scales"))
def crops(image: Any, boxes: Any, size: Sequence[int], padding: float = 1.25, mean: Any = IMAGENET_MEAN,
          std: Any = IMAGENET_STD, scale: float = 1 / 255, swap_rb: bool = True) -> dict[str, Any]:
    """Each person box warped onto the model input (H, W) = ``size``: ``crops`` [K, 3, H, W] float32."""
    img = check_image("image", image)
    hw = (int(size[0]), int(size[1]))
    center, sc = box_center_scale(np.asarray(boxes, np.float32).reshape(-1, 4), hw, padding)
    out = np.zeros((len(center), 3, *hw), np.float32)
    for k, (c, s) in enumerate(zip(center, sc, strict=True)):
        tf = top_down_transform(c, s, hw)
        crop = warp_affine(img, tf.matrix, hw)
        if swap_rb:
            crop = crop[..., ::-1]
        out[k] = hwc_to_chw(_normalize(crop, tuple(mean) if isinstance(mean, list) else mean,
                                       tuple(std) if isinstance(std, list) else std, scale))
    return {"crops": out, "centers": center, "scales": sc}


@register_op("pose.estimate", inputs=("crops",), outputs=("heatmaps",))
def estimate(crops: Any, *, model: str | os.PathLike, backend: str = "ort", threads: int = 0,
             batch: int = 8) -> dict[str, Any]:
    """The heatmap model over ``crops`` [K, 3, H, W], ``batch`` at a time: ``heatmaps`` [K, J, h, w]."""
    x = check_array("crops", crops, ndim=4, dtype_kind="f")
    if len(x) == 0:
        return {"heatmaps": np.zeros((0, 0, 0, 0), np.float32)}
    sess = model_session(model, backend, threads)
    name = sess.inputs[0].name
    parts = [next(iter(sess.run({name: x[i:i + int(batch)]}).values())) for i in range(0, len(x), int(batch))]
    return {"heatmaps": np.concatenate(parts).astype(np.float32, copy=False)}


@register_op("pose.keypoints", inputs=("heatmaps", "centers", "scales"), outputs=("keypoints",))
def keypoints(heatmaps: Any, centers: Any, scales: Any, method: str = "quarter") -> dict[str, Any]:
    """``keypoints`` [K, J, 3]: x, y in original pixels and the heatmap peak as the score."""
    hm = check_array("heatmaps", heatmaps, ndim=4, dtype_kind="f")
    if len(hm) == 0:
        return {"keypoints": np.zeros((0, 0, 3), np.float32)}
    locs, vals = decode_heatmaps(hm, method)
    kp = np.concatenate([locs, vals[..., None]], axis=-1).astype(np.float32)
    return {"keypoints": keypoints_to_image(kp, centers, scales, hm.shape[2:])}


@register_op("pose.people", inputs=("boxes", "scores", "labels"), outputs=("boxes", "scores"))
def people(boxes: Any, scores: Any, labels: Any, person: Any = 0) -> dict[str, Any]:
    """The detector's boxes of class ``person`` (a name or a class id)."""
    lab = np.asarray(labels).reshape(-1)
    keep = np.array([str(v) == str(person) for v in lab], bool)
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4)[keep],
            "scores": np.asarray(scores, np.float32).reshape(-1)[keep]}


@register_op("pose.given_boxes", inputs=("boxes",), outputs=("boxes", "scores"))
def given_boxes(boxes: Any) -> dict[str, Any]:
    """Boxes given with the image: [K, 4] xyxy, each with score 1."""
    b = check_array("boxes", np.asarray(boxes, np.float32).reshape(-1, 4), ndim=2, last_dim=4)
    return {"boxes": b, "scores": np.ones(len(b), np.float32)}


def pose_pipeline(
    model: str | os.PathLike,
    *,
    detector: str | os.PathLike | None = None,
    kind: str = "yolo",
    person: Any = 0,
    size: Sequence[int] | None = None,
    padding: float = 1.25,
    mean: float | Sequence[float] = IMAGENET_MEAN,
    std: float | Sequence[float] = IMAGENET_STD,
    method: str = "quarter",
    backend: str = "ort",
    threads: int = 0,
    **detector_params: Any,
):
    """Top-down pose (see the module docstring). Without ``detector`` the pipeline takes ``image`` and
    ``person_boxes``; with one (a detection model of ``kind``, its class ``person`` kept) only ``image``."""
    from slipway.backends.declared import onnx_io
    from slipway.pipeline import Pipeline, Step
    from slipway.pipeline.detect import detect_pipeline

    path = Path(model)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    ins, _ = onnx_io(path, str(model))
    if len(ins) != 1:
        raise UserError(f"{model}: a heatmap model takes one image input, it has {len(ins)}")
    if size is None:
        dims = list(ins[0].shape or [])
        if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[2:]):
            raise UserError(f"{model}: the input size is not fixed in the model ({dims}); pass size=(H, W)")
        size = (int(dims[2]), int(dims[3]))
    hw = [int(size[0]), int(size[1])]
    if method not in ("argmax", "quarter", "dark"):
        raise UserError(f"method: expected 'argmax', 'quarter' or 'dark', got {method!r}")
    engine = {"backend": backend, "threads": threads}
    if detector is not None:
        det = detect_pipeline(detector, kind=kind, backend=backend, threads=threads, **detector_params)

        def renamed(m: dict[str, str]) -> dict[str, str]:
            return {k: t if t == "image" else f"det_{t}" for k, t in m.items()}

        steps = [Step(f"det_{s.name}", s.kind, s.target, renamed(s.inputs), renamed(s.outputs), dict(s.params))
                 for s in det.steps]
        steps.append(Step.op("people", "pose.people", {"boxes": "det_boxes", "scores": "det_scores",
                                                       "labels": "det_labels"},
                             {"boxes": "boxes", "scores": "scores"}, person=person))
        inputs = ["image"]
    else:
        steps = [Step.op("people", "pose.given_boxes", {"boxes": "person_boxes"}, {"boxes": "boxes", "scores": "scores"})]
        inputs = ["image", "person_boxes"]
    steps += [
        Step.op("crops", "pose.crops", {"image": "image", "boxes": "boxes"},
                {"crops": "crops", "centers": "centers", "scales": "scales"}, size=hw, padding=padding, mean=mean,
                std=std),
        Step.op("pose", "pose.estimate", {"crops": "crops"}, {"heatmaps": "heatmaps"}, model=str(path), **engine),
        Step.op("keypoints", "pose.keypoints", {"heatmaps": "heatmaps", "centers": "centers", "scales": "scales"},
                {"keypoints": "keypoints"}, method=method),
    ]
    return Pipeline(steps, inputs, ["boxes", "scores", "keypoints"], name="pose", base=det.base if detector else None)
