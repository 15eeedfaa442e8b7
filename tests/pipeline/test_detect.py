"""slipway.pipeline.detect: the layout pipeline against rapid-layout 1.2.1 with its own model
(same engine, onnxruntime CPU): same boxes, classes, order and scores."""

from __future__ import annotations

import numpy as np
import pytest

from slipway.errors import UserError
from slipway.ops.detect import box_iou
from tests.corpus import model, render_page, render_text, text_lines

pytest.importorskip("rapid_layout")


def pages() -> list[tuple[str, np.ndarray]]:
    """Rendered layout pages (several sizes, so the stretch back to the original is exercised)
    and synthetic ones: a text-only page, a blank page, a noisy scan."""
    rng = np.random.default_rng(3)
    noisy = np.clip(render_page(5, (900, 1200)).astype(np.int16) + rng.integers(-40, 40, (1200, 900, 3)), 0, 255)
    return [
        ("page0", render_page(0)),
        ("page1-wide", render_page(1, (1000, 700))),
        ("page2-large", render_page(2, (1240, 1754))),
        ("text-only", render_text(text_lines(6, seed=4), size=(640, 480))),
        ("blank", np.full((500, 400, 3), 255, np.uint8)),
        ("noisy-scan", noisy.astype(np.uint8)),
    ]


@pytest.fixture(scope="module")
def layout_model():
    return model("layout")


def compare(ref, out) -> dict[str, float]:
    """Same count, same classes in the same order, matched IoU >= 0.9, scores within 1e-3."""
    rb = np.asarray(ref.boxes if ref.boxes is not None else [], np.float64).reshape(-1, 4)
    names = list(ref.class_names or [])
    scores = np.asarray(ref.scores if ref.scores is not None else [], np.float64)
    boxes, got_scores, labels = out["boxes"], out["scores"], out["labels"]
    assert boxes.shape == (len(rb), 4) and boxes.dtype == np.float32
    assert [str(n) for n in labels] == names
    iou = np.diag(box_iou(rb, boxes)) if len(rb) else np.ones(0)
    assert (iou >= 0.9).all(), iou
    diff = np.abs(scores - got_scores)
    assert (diff <= 1e-3).all(), diff
    return {"n": len(rb), "min_iou": float(iou.min(initial=1.0)), "max_score_diff": float(diff.max(initial=0.0))}


@pytest.mark.parametrize("thresh", [0.5, 0.2])
def test_layout_matches_rapid_layout(layout_model, thresh: float) -> None:
    from rapid_layout import RapidLayout

    from slipway.pipeline.detect import detect_pipeline

    engine = RapidLayout(model_dir_or_path=str(layout_model), conf_thresh=thresh, iou_thresh=0.5)
    pipe = detect_pipeline(layout_model, kind="layout", score_thresh=thresh, iou_thresh=0.5)
    assert pipe.inputs == ["image"] and pipe.outputs == ["boxes", "scores", "labels"]
    stats = {}
    for name, img in pages():
        stats[name] = compare(engine(img), pipe.run({"image": img}).outputs)
    assert stats["blank"]["n"] == 0
    assert sum(s["n"] for s in stats.values()) >= (20 if thresh == 0.5 else 40), stats
    # the rendered page's table, figure and text are found (the model's own classes)
    found = set(pipe.run({"image": render_page(0)}).outputs["labels"])
    assert {"text", "table"} <= found, found


def test_layout_pipeline_round_trips_yaml(layout_model, tmp_path) -> None:
    from slipway.pipeline import Pipeline
    from slipway.pipeline.detect import detect_pipeline

    pipe = detect_pipeline(layout_model)
    img = render_page(7)
    first = pipe.run({"image": img}, trace=True)
    assert first.trace is not None and first.trace["tensor"].shape == (1, 3, 800, 608)
    assert set(first.timings_ms) >= {"preprocess", "detector", "decode", "labels", "total"}
    back = Pipeline.from_file(pipe.to_file(tmp_path / "layout.yaml"))
    again = back.run({"image": img}).outputs
    for k in ("boxes", "scores"):
        np.testing.assert_array_equal(first.outputs[k], again[k])
    assert list(first.outputs["labels"]) == list(again["labels"])


def test_layout_labels_and_errors(layout_model) -> None:
    from slipway.pipeline import PipelineError
    from slipway.pipeline.detect import detect_pipeline, model_labels

    names = model_labels(layout_model)
    assert names is not None and names[:3] == ["text", "title", "figure"] and len(names) == 10
    ids = detect_pipeline(layout_model, labels=[f"c{i}" for i in range(10)]).run({"image": render_page(0)})
    assert all(str(x).startswith("c") for x in ids.outputs["labels"])
    with pytest.raises(UserError, match="kind"):
        detect_pipeline(layout_model, kind="retinanet")
    with pytest.raises(UserError, match="not found"):
        detect_pipeline(layout_model.parent / "missing.onnx")
    with pytest.raises(PipelineError, match="step 'preprocess'"):
        detect_pipeline(layout_model).run({"image": np.zeros((10, 10), np.float32)})


def test_yolo_pipeline_matches_direct_decoding() -> None:
    """The YOLOv8-style kind: letterbox + ort + decode_yolo_anchor_free, boxes back through the
    letterbox (the zoo's TinyYolo, 128x128, random weights: many boxes)."""
    pytest.importorskip("torch")
    from slipway.ops import decode_yolo_anchor_free, preprocess
    from slipway.pipeline.detect import detect_pipeline
    from tests.corpus import ort_session
    from tests.zoo import export

    path = export("yolo")
    img = render_page(0, (300, 200))
    pipe = detect_pipeline(path, kind="yolo", score_thresh=0.3)
    out = pipe.run({"image": img}).outputs
    blob, tf = preprocess(img, 128)
    sess = ort_session(path)
    ref = decode_yolo_anchor_free(sess.run(None, {sess.get_inputs()[0].name: blob})[0], score_threshold=0.3,
                                  transform=tf)[0]
    assert len(ref) > 0
    np.testing.assert_allclose(out["boxes"], ref.boxes, atol=1e-3)
    np.testing.assert_allclose(out["scores"], ref.scores, atol=1e-5)
    assert out["labels"].dtype == np.int64 and out["labels"].tolist() == ref.class_ids.tolist()
    assert (out["boxes"][:, [0, 2]] <= 200).all() and (out["boxes"][:, [1, 3]] <= 300).all()
