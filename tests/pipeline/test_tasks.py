"""The segmentation and top-down pose task pipelines on the zoo's UNet and pose models (seeded weights),
against the same steps done by hand with onnxruntime, OpenCV and numpy; their files, CLI and drawings."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from slipway.errors import UserError
from slipway.pipeline import Pipeline
from slipway.pipeline.draw import draw
from slipway.pipeline.pose import box_center_scale, pose_pipeline
from slipway.pipeline.segment import segment_pipeline
from tests.corpus import ort_session
from tests.zoo import export

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _image(h: int = 150, w: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    cv2.rectangle(img, (40, 30), (120, 110), (20, 200, 60), -1)
    return img


def test_segmentation_matches_the_steps_done_by_hand() -> None:
    path = export("unet")  # TinyUNet: [N, 3, 64, 64] -> [N, 4, 64, 64]
    pipe = segment_pipeline(path, size=(64, 64))
    img = _image()
    out = pipe.run({"image": img}).outputs
    # by hand: letterbox 200x150 into 64x64 (scale 0.32 -> 64x48, 8 px pad above and below), normalize, RGB
    k = 64 / 200
    nh = round(150 * k)
    top = (64 - nh) // 2
    box = np.zeros((64, 64, 3), np.uint8)
    box[top:top + nh] = cv2.resize(img, (64, nh), interpolation=cv2.INTER_LINEAR)
    x = ((box[..., ::-1] / 255.0 - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)[None]
    logits = ort_session(path).run(None, {"x": x})[0][0]
    crop = logits[:, top:top + nh].transpose(1, 2, 0)
    want = cv2.resize(crop, (200, 150), interpolation=cv2.INTER_LINEAR).argmax(-1)
    mask = out["mask"]
    assert mask.shape == (150, 200) and mask.dtype == np.int32
    # the same float32 logits, resized by the same OpenCV call: argmax ties aside, the same labels
    assert (mask == want).mean() > 0.995
    assert abs(sum(out["classes"].values()) - 1) < 1e-9
    assert list(out["classes"]) == [str(c) for c in np.argsort(-np.bincount(mask.ravel(), minlength=4),
                                                               kind="stable") if (mask == c).any()]
    picture = draw(img, out)
    assert picture.shape == img.shape and not np.array_equal(picture, img)


def test_segmentation_needs_a_size_or_a_fixed_input(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    assert segment_pipeline(export("unet")).steps[0].params["size"] == [64, 64]  # read from the model
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_operatorsetid("", 17)])
    onnx.save(model, tmp_path / "any.onnx")
    with pytest.raises(UserError, match="the input size is not fixed in the model"):
        segment_pipeline(tmp_path / "any.onnx")
    assert segment_pipeline(tmp_path / "any.onnx", size=(32, 48)).steps[0].params["size"] == [32, 48]


def test_pose_matches_the_steps_done_by_hand() -> None:
    path = export("pose")  # TinyPose: [N, 3, 128, 96] -> [N, 17, 32, 24]
    pipe = pose_pipeline(path, size=(128, 96))
    img = _image(240, 320, seed=1)
    boxes = np.array([[40, 30, 120, 110], [150, 20, 300, 230]], np.float32)
    out = pipe.run({"image": img, "person_boxes": boxes}).outputs
    kp = out["keypoints"]
    assert kp.shape == (2, 17, 3)
    np.testing.assert_array_equal(out["boxes"], boxes)
    # by hand: MMPose's center / scale (x1.25, widened to 96:128), the affine crop, the model, argmax + quarter offset
    from slipway.pipeline.pose import crops as pose_crops

    sess = ort_session(path)
    got_crops = pose_crops(img, boxes, size=[128, 96])["crops"]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        c = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
        w, h = (w, w * 128 / 96) if w > h * 96 / 128 else (h * 96 / 128, h)
        k = 96 / w
        m = np.array([[k, 0, 48 - k * c[0]], [0, k, 64 - k * c[1]]])
        crop = cv2.warpAffine(img, m, (96, 128), flags=cv2.INTER_LINEAR, borderValue=0)
        x = ((crop[..., ::-1] / 255.0 - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)
        # OpenCV's fixed-point bilinear may round a pixel one gray level apart for a float32 vs float64 matrix
        np.testing.assert_allclose(got_crops[i], x, atol=1.01 / 255 / STD.min())
        hm = sess.run(None, {"x": got_crops[i:i + 1]})[0][0]
        for j in range(17):
            yy, xx = np.unravel_index(hm[j].argmax(), hm[j].shape)
            px, py = float(xx), float(yy)
            if hm[j].max() <= 0:  # MMPose: no peak, no keypoint (-1, -1 in heatmap pixels)
                px = py = -1.0
            else:
                if 0 < xx < 23:
                    px += 0.25 * np.sign(hm[j, yy, xx + 1] - hm[j, yy, xx - 1])
                if 0 < yy < 31:
                    py += 0.25 * np.sign(hm[j, yy + 1, xx] - hm[j, yy - 1, xx])
            want = np.array([px / 24 * w + c[0] - w / 2, py / 32 * h + c[1] - h / 2])
            # float32 heatmaps on both sides; positions in pixels of a box up to 260 px across
            np.testing.assert_allclose(kp[i, j, :2], want, atol=1e-3)
            assert abs(kp[i, j, 2] - hm[j].max()) < 1e-5
    assert draw(img, out).shape == img.shape


def test_pose_with_no_people_and_bad_boxes() -> None:
    pipe = pose_pipeline(export("pose"), size=(128, 96))
    out = pipe.run({"image": _image(), "person_boxes": np.zeros((0, 4), np.float32)}).outputs
    assert out["keypoints"].shape == (0, 0, 3) and out["boxes"].shape == (0, 4)
    with pytest.raises(UserError, match="boxes"):
        pipe.run({"image": _image(), "person_boxes": np.zeros((2, 3), np.float32)})


def test_box_center_scale_keeps_the_aspect() -> None:
    c, s = box_center_scale(np.array([[0, 0, 40, 40], [0, 0, 100, 20]], np.float32), (128, 96))
    np.testing.assert_allclose(c, [[20, 20], [50, 10]])
    np.testing.assert_allclose(s, [[50, 50 * 128 / 96], [125, 125 * 128 / 96]], rtol=1e-6)


def test_pose_with_a_detector_and_task_files(tmp_path: Path) -> None:
    """Detector -> people -> crops -> heatmaps in one pipeline, written and read back as a file."""
    pipe = pose_pipeline(export("pose"), detector=export("yolo"), kind="yolo", size=(128, 96), person=0,
                         score_thresh=0.0)
    assert pipe.order[:4] == ["det_preprocess", "det_detector", "det_decode", "det_labels"]
    img = _image(128, 128, seed=3)
    out = pipe.run({"image": img}).outputs
    assert len(out["keypoints"]) == len(out["boxes"])
    path = pipe.to_file(tmp_path / "pose.yaml")
    again = Pipeline.from_file(path).run({"image": img}).outputs
    np.testing.assert_array_equal(again["keypoints"], out["keypoints"])
    seg = segment_pipeline(export("unet"), size=(64, 64)).to_file(tmp_path / "seg.yaml")
    assert Pipeline.from_file(seg).run({"image": img}).outputs["mask"].shape == (128, 128)


def test_cli_writes_and_runs_segment_and_pose_files(tmp_path: Path) -> None:
    import json

    from tests.cli.test_pipeline_cli import slipway, user_error

    image = tmp_path / "img.png"
    cv2.imwrite(str(image), _image())
    r = slipway("pipeline", "segment", "--model", export("unet"), "-o", tmp_path / "seg.yaml")
    assert r.exit_code == 0, r.output
    r = slipway("run", tmp_path / "seg.yaml", image, "--json", "--draw", tmp_path / "drawn")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output.splitlines()[0])
    assert rec["mask"] == {"shape": [150, 200]} and abs(sum(rec["classes"].values()) - 1) < 1e-9
    assert (tmp_path / "drawn" / "img.png").is_file()
    r = slipway("pipeline", "pose", "--model", export("pose"), "--detector", export("yolo"), "--score-thresh", "0.0",
                "-o", tmp_path / "pose.yaml")
    assert r.exit_code == 0, r.output
    r = slipway("run", tmp_path / "pose.yaml", image, "--json")
    rec = json.loads(r.output.splitlines()[0])
    assert len(rec["keypoints"]) == len(rec["boxes"])
    r = slipway("pipeline", "segment", "--model", export("unet"), "--top-k", "3", "-o", tmp_path / "x.yaml")
    assert "--top-k is not an option of this task" in user_error(r)


def test_stage_parity_reports_keypoint_error() -> None:
    """compare_stages on the pose pipeline: a reference that agrees on the crops but places every joint 1.5 px
    to the right is named at the keypoints stage, and the end metric is the keypoint error in pixels."""
    from slipway.pipeline.parity import compare_stages

    pipe = pose_pipeline(export("pose"), size=(128, 96))
    feeds = {"image": _image(240, 320, seed=1), "person_boxes": np.array([[40, 30, 120, 110]], np.float32)}
    truth = pipe.run(feeds, trace=True).trace

    def reference(inputs):
        kp = truth["keypoints"].copy()
        kp[..., 0] += 1.5
        return {"crops": truth["crops"], "keypoints": kp}

    report = compare_stages(pipe, reference, feeds)
    assert [d.stage for d in report.stages] == ["crops", "keypoints"]
    assert report.first_divergent.stage == "keypoints" and report.end_stage == "keypoints"
    assert report.end_metric["mean_error_px"] == pytest.approx(1.5, abs=1e-4)
    assert report.end_metric["joints"] == 17
    assert "keypoint error mean 1.5 px" in report.stages[1].summary()
