"""detect_pipeline's YOLOv5 (anchor-based) and SSD kinds: the pipeline's boxes are what the decoders give on
the model's own outputs, mapped back to the original image (models here output fixed head tensors, so the
expected boxes are known)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slipway.errors import UserError
from slipway.ops.decode import decode_ssd, decode_yolo_anchor_based, ssd_priors
from slipway.ops.image import letterbox_geometry
from slipway.pipeline.detect import detect_pipeline


def _const_model(path: Path, size: int, heads: dict[str, np.ndarray]) -> Path:
    """x [1, 3, size, size] -> each head = its constant + 0 * mean(x) (the image reaches the outputs)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"])]
    inits = [numpy_helper.from_array(np.array(0, np.float32), "zero")]
    outs = []
    for name, value in heads.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_c"))
        nodes.append(helper.make_node("Add", [f"{name}_c", "z"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits),
                              opset_imports=[helper.make_operatorsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _image() -> np.ndarray:
    return cv2.resize(np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8), (200, 120))


def test_yolov5_kind(tmp_path) -> None:
    rows = np.zeros((1, 6, 5 + 3), np.float32)
    rows[0, :, :4] = [[20, 20, 10, 10], [21, 20, 10, 10], [40, 30, 16, 8], [50, 50, 4, 4], [5, 5, 6, 6], [60, 10, 8, 8]]
    rows[0, :, 4] = [0.9, 0.8, 0.7, 0.1, 0.6, 0.95]  # objectness
    rows[0, :, 5:] = [[0.9, 0.1, 0], [0.8, 0.1, 0.1], [0, 1, 0], [1, 0, 0], [0.2, 0.2, 0.6], [0, 0, 0.3]]
    path = _const_model(tmp_path / "v5.onnx", 64, {"out": rows})
    img = _image()
    got = detect_pipeline(path, kind="yolov5").run({"image": img}).outputs
    _, _, tf = letterbox_geometry(img.shape[:2], (64, 64))
    want = decode_yolo_anchor_based(rows, score_threshold=0.25, iou_threshold=0.45, transform=tf)[0]
    assert len(got["boxes"]) == 4  # two overlapping class-0 boxes merged; objectness x class under 0.25 dropped
    np.testing.assert_array_equal(got["boxes"], want.boxes)
    np.testing.assert_array_equal(got["scores"], want.scores)
    assert got["labels"].tolist() == want.class_ids.tolist()
    assert got["boxes"][:, 2].max() <= 200 and got["boxes"][:, 3].max() <= 120  # in the original image


def test_ssd_kind(tmp_path) -> None:
    priors = ssd_priors(300)
    rng = np.random.default_rng(1)
    loc = (rng.standard_normal((1, len(priors), 4)) * 0.1).astype(np.float32)
    conf = np.full((1, len(priors), 4), -4.0, np.float32)
    conf[0, :, 0] = 4.0  # background everywhere but three priors
    for p, c in ((100, 1), (5000, 2), (8000, 3)):
        conf[0, p] = -4.0
        conf[0, p, c] = 6.0
    path = _const_model(tmp_path / "ssd.onnx", 300, {"loc": loc, "conf": conf})
    img = _image()
    got = detect_pipeline(path, kind="ssd").run({"image": img}).outputs
    want = decode_ssd(loc, conf, priors, score_threshold=0.5, iou_threshold=0.45, image_size=(120, 200))[0]
    assert len(got["boxes"]) == 3 and sorted(got["labels"].tolist()) == [1, 2, 3]
    np.testing.assert_array_equal(got["boxes"], want.boxes)
    np.testing.assert_array_equal(got["scores"], want.scores)


def test_kinds_check_the_model(tmp_path) -> None:
    one = _const_model(tmp_path / "one.onnx", 300, {"out": np.zeros((1, 10, 9), np.float32)})
    with pytest.raises(UserError, match="an SSD takes a square input and has two outputs"):
        detect_pipeline(one, kind="ssd")
    with pytest.raises(UserError, match="kind: expected 'layout', 'yolo', 'yolov5' or 'ssd', got 'rcnn'"):
        detect_pipeline(one, kind="rcnn")
