"""slipway.pipeline.ocr against RapidOCR 1.4.4 with its own PP-OCRv4 models, on pages rendered with PIL."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from slipway.pipeline.pages import edit_distance
from slipway.pipeline.parity import match_quads
from tests.corpus import WORDS, model, ort_session

pytest.importorskip("rapidocr_onnxruntime")

FONTS = [Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
         Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf")]


def _font(k: int, size: int):
    from PIL import ImageFont

    path = FONTS[k % len(FONTS)]
    return ImageFont.truetype(str(path), size) if path.is_file() else ImageFont.load_default(size=size)


def render_page(seed: int, size: tuple[int, int] = (720, 560), angle: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """A white page of 6-8 lines (2-4 words and a number), fonts and sizes varying by line, turned
    ``angle`` degrees; BGR uint8 and the drawn lines."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    drawn, y, k = [], 24, 0
    while True:
        px = int(rng.integers(18, 34))
        if y + px * 1.6 > h - 16:
            break
        text = " ".join(str(s) for s in rng.choice(WORDS, size=int(rng.integers(2, 5)), replace=False))
        text += f" {int(rng.integers(10, 99999))}"
        x = int(rng.integers(16, 80))
        font = _font(k + seed, px)
        while x + font.getlength(text) > w - 16:
            text = text.rsplit(" ", 1)[0]
        draw.text((x, y), text, fill=tuple(int(c) for c in rng.integers(0, 70, 3)), font=font)
        drawn.append(text)
        y += int(px * 1.8) + int(rng.integers(0, 12))
        k += 1
    page = np.ascontiguousarray(np.asarray(img)[:, :, ::-1])
    if angle:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        page = cv2.warpAffine(page, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
    return page, drawn


def match(ref: list[tuple[np.ndarray, str]], got: list[dict]) -> list[tuple[int, int, float]]:
    """One-to-one matches (ref index, got index, IoU) of RapidOCR's lines and the pipeline's."""
    return match_quads([r[0] for r in ref], [np.asarray(g["box"]) for g in got])


@pytest.fixture(scope="module")
def paths() -> dict[str, Path]:
    return {"det": model("ppocr_det"), "rec": model("ppocr_rec"), "cls": model("ppocr_cls")}


def _pages() -> list[np.ndarray]:
    return [render_page(0)[0], render_page(1, angle=2.0)[0], render_page(2, size=(900, 420), angle=-3.0)[0]]


@pytest.mark.parametrize("use_cls", [False, True], ids=["det-rec", "det-cls-rec"])
def test_parity_with_rapidocr(paths, use_cls):
    from rapidocr_onnxruntime import RapidOCR

    from slipway.pipeline.ocr import ocr_pipeline

    engine = RapidOCR(det_model_path=str(paths["det"]), rec_model_path=str(paths["rec"]),
                      cls_model_path=str(paths["cls"]), use_cls=use_cls)
    pipe = ocr_pipeline(paths["det"], paths["rec"], paths["cls"] if use_cls else None)
    n_ref = n_same = 0
    ious: list[float] = []
    for page in _pages():
        found, _ = engine(page)
        ref = [(np.asarray(box, np.float32), text) for box, text, _score in (found or [])]
        result = pipe.run({"image": page})
        got = result.outputs["lines"]
        assert len(got) == len(ref), ([r[1] for r in ref], [g["text"] for g in got])
        pairs = match(ref, got)
        assert len(pairs) == len(ref)
        n_ref += len(ref)
        n_same += sum(ref[i][1] == got[j]["text"] for i, j, _ in pairs)
        ious += [iou for *_, iou in pairs]
        steps = [s.name for s in pipe.steps]
        assert set(steps) | {"total"} <= set(result.timings_ms)
        assert all(t >= 0 for t in result.timings_ms.values())
    assert n_ref >= 15
    assert n_same / n_ref >= 0.95, f"{n_same}/{n_ref} texts identical"
    assert min(ious) >= 0.9, f"min IoU {min(ious):.3f}, median {np.median(ious):.3f}"


def test_reads_the_drawn_text(paths):
    """Not only RapidOCR's answer: the lines read match the lines drawn (spaces aside)."""
    from slipway.pipeline.ocr import ocr_pipeline

    page, drawn = render_page(5)
    got = ocr_pipeline(paths["det"], paths["rec"]).run({"image": page}).outputs["lines"]
    texts = [g["text"].replace(" ", "") for g in got]
    assert len(texts) == len(drawn)
    assert sum(t == d.replace(" ", "") for t, d in zip(texts, drawn, strict=True)) >= len(drawn) - 1
    for line in got:
        assert set(line) == {"text", "score", "box"} and np.asarray(line["box"]).shape == (4, 2)


def test_width_buckets_read_the_drawn_text_as_well_with_less_padding(paths):
    """rec_buckets=32: each crop padded to its own width (rounded up to 32 px), batches of equal widths.
    The boxes are the same (detection is untouched); the texts, spaces included, are at least as close to
    what was drawn as with RapidOCR's batches (on these pages, closer: fewer spaces lost), for less
    padded recognizer input."""
    from slipway.pipeline.ocr import _rec_batches, ocr_pipeline

    same = ocr_pipeline(paths["det"], paths["rec"])
    fast = ocr_pipeline(paths["det"], paths["rec"], rec_buckets=32)
    err_same = err_fast = pixels_same = pixels_fast = 0
    for seed in (5, 6):
        page, drawn = render_page(seed)
        a = same.run({"image": page}, trace=True)
        b = fast.run({"image": page}).outputs["lines"]
        assert [x["box"] for x in a.outputs["lines"]] == [x["box"] for x in b]
        truth = "\n".join(drawn)
        err_same += edit_distance("\n".join(x["text"] for x in a.outputs["lines"]), truth)
        err_fast += edit_distance("\n".join(x["text"] for x in b), truth)
        crops = a.trace["crops"]
        pixels_same += sum(len(i) * w for i, w in _rec_batches(crops, 48, 320, 6, 0))
        pixels_fast += sum(len(i) * w for i, w in _rec_batches(crops, 48, 320, 6, 32))
    assert err_fast <= err_same, (err_fast, err_same)
    assert pixels_fast < 0.9 * pixels_same, (pixels_fast, pixels_same)


def test_each_pipeline_owns_its_op_sessions(paths):
    """The recognizer and classifier sessions belong to the pipeline running them (two pipelines, or two
    instances of a served one, never share one) and close with it; outside a pipeline, one shared session."""
    from slipway.pipeline import model_session
    from slipway.pipeline.ocr import ocr_pipeline

    page, _ = render_page(5)
    a = ocr_pipeline(paths["det"], paths["rec"], paths["cls"])
    b = ocr_pipeline(paths["det"], paths["rec"], paths["cls"])
    lines_a = a.run({"image": page}).outputs["lines"]
    lines_b = b.run({"image": page}).outputs["lines"]
    assert lines_a == lines_b
    assert len(a._op_sessions) == len(b._op_sessions) == 2  # rec and cls
    assert not {id(s) for s in a._op_sessions.values()} & {id(s) for s in b._op_sessions.values()}
    assert model_session(paths["rec"]) is model_session(paths["rec"])  # outside a pipeline: shared
    assert model_session(paths["rec"]) not in a._op_sessions.values()
    a.close()
    assert a._op_sessions == {} and len(b._op_sessions) == 2
    assert a.run({"image": page}).outputs["lines"] == lines_a  # created again on the next run


def test_upside_down_page_with_classifier(paths):
    from slipway.pipeline.ocr import ocr_pipeline

    page, drawn = render_page(7)
    upside = np.ascontiguousarray(page[::-1, ::-1])
    pipe = ocr_pipeline(paths["det"], paths["rec"], paths["cls"])
    result = pipe.run({"image": upside}, trace=True)
    texts = {g["text"].replace(" ", "") for g in result.outputs["lines"]}
    assert sum(d.replace(" ", "") in texts for d in drawn) >= len(drawn) - 1
    assert sum(label == "180" for label, _ in result.trace["angles"]) >= len(drawn) - 1


def test_blank_page_and_bad_input(paths):
    from slipway.errors import UserError
    from slipway.pipeline.ocr import ocr_pipeline

    pipe = ocr_pipeline(paths["det"], paths["rec"])
    assert pipe.run({"image": np.full((200, 300, 3), 255, np.uint8)}).outputs["lines"] == []
    with pytest.raises(UserError, match="uint8"):
        pipe.run({"image": np.zeros((64, 64, 3), np.float32)})
    with pytest.raises(UserError, match="unknown parameter 'tresh'"):
        ocr_pipeline(paths["det"], paths["rec"], tresh=0.2)


def test_pipeline_file_round_trip(paths, tmp_path):
    from slipway.pipeline import Pipeline
    from slipway.pipeline.ocr import ocr_pipeline

    pipe = ocr_pipeline(paths["det"], paths["rec"], box_thresh=0.6)
    saved = pipe.to_file(tmp_path / "ocr.yaml")
    again = Pipeline.from_file(saved)
    page, _ = render_page(3)
    t = time.perf_counter()
    a = pipe.run({"image": page}).outputs["lines"]
    assert time.perf_counter() - t < 30
    assert again.run({"image": page}).outputs["lines"] == a


def test_paddle_compat_ops_equal_rapidocr_code(paths):
    """db_boxes / crop_quad with compat="paddle" give RapidOCR's own DBPostProcess boxes and crops."""
    from rapidocr_onnxruntime import RapidOCR
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    from slipway.ops.ocr import crop_quad, db_boxes, order_quad
    from slipway.pipeline.ocr import det_preprocess

    page, _ = render_page(1, angle=2.0)
    prep = det_preprocess(page)
    prob = ort_session(paths["det"]).run(None, {"x": prep["tensor"]})[0]
    theirs, their_scores = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6,
                                         use_dilation=True)(prob, prob.shape[2:])
    ours = db_boxes(prob[0, 0], box_thresh=0.5, unclip_ratio=1.6, dilate=True, compat="paddle")
    assert len(theirs) == len(ours.boxes) > 5
    np.testing.assert_allclose(ours.scores, their_scores, rtol=1e-6)
    got = np.clip(np.round(ours.boxes), 0, prob.shape[-1]).astype(np.int32)
    np.testing.assert_array_equal(np.stack([order_quad(q) for q in got]),
                                  np.stack([order_quad(q.astype(np.float32)) for q in theirs]))
    engine = RapidOCR.__new__(RapidOCR)
    quads = np.stack([order_quad(q.astype(np.float32)) for q in theirs])
    for theirs_crop, quad in zip(engine.get_crop_img_list(prep["work"], list(quads)), quads, strict=True):
        np.testing.assert_array_equal(crop_quad(prep["work"], quad, compat="paddle"), theirs_crop)
