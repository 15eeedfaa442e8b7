"""slipway.pipeline.parity: stage-by-stage parity of pipelines with RapidOCR and rapid-layout."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tests.corpus import model
from tests.corpus import render_page as layout_page

pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("rapid_layout")


@pytest.fixture(scope="module")
def ocr_models():
    return model("ppocr_det"), model("ppocr_rec"), model("ppocr_cls")


@pytest.fixture(scope="module")
def page():
    from tests.pipeline.test_ocr import render_page

    return render_page(0)[0]


def test_ocr_pipeline_matches_rapidocr_stage_by_stage(ocr_models, page):
    from slipway.pipeline.ocr import ocr_pipeline
    from slipway.pipeline.parity import compare_stages, rapidocr_reference

    det, rec, cls = ocr_models
    report = compare_stages(ocr_pipeline(det, rec, cls), rapidocr_reference(det, rec, cls), {"image": page})
    assert [s.stage for s in report.stages] == ["det_input", "det_prob", "boxes", "crops", "upright", "texts",
                                                "text_scores"]
    assert report.first_divergent is None and not report.diverged, report.to_dict()
    assert report.end_stage == "texts" and report.end_metric["match_rate"] == 1.0
    assert report.end_metric["total"] >= 5
    kinds = {s.stage: s.kind for s in report.stages}
    assert kinds["boxes"] == "boxes" and kinds["texts"] == "texts" and kinds["det_prob"] == "array"
    d = json.loads(json.dumps(report.to_dict()))
    assert d["diverged"] is False and d["first_divergent"] is None and len(d["stages"]) == 7


@pytest.mark.parametrize(("params", "first"), [({"mean": (0.4, 0.5, 0.5)}, "det_input"),
                                               ({"unclip_ratio": 2.5}, "boxes")], ids=["mean", "unclip"])
def test_broken_pipeline_names_the_first_divergent_stage(ocr_models, page, params, first):
    from slipway.pipeline.ocr import ocr_pipeline
    from slipway.pipeline.parity import compare_stages, rapidocr_reference

    det, rec, _ = ocr_models
    report = compare_stages(ocr_pipeline(det, rec, **params), rapidocr_reference(det, rec), {"image": page})
    assert report.diverged and report.first_divergent.stage == first, report.to_dict()
    ok = {s.stage: s.ok for s in report.stages}
    order = [s.stage for s in report.stages]
    assert all(ok[s] for s in order[:order.index(first)])  # everything before it agrees
    assert report.first_divergent.detail


def test_layout_pipeline_matches_rapid_layout(tmp_path):
    from slipway.pipeline.detect import detect_pipeline
    from slipway.pipeline.parity import compare_stages, rapid_layout_reference

    lm = model("layout")
    report = compare_stages(detect_pipeline(lm), rapid_layout_reference(lm),
                            [{"image": layout_page(0)}, {"image": layout_page(1)}])
    names = [s.stage for s in report.stages]
    assert names[0] == "tensor" and names[-3:] == ["boxes", "scores", "labels"] and "scores0" in names
    assert not report.diverged, report.to_dict()
    assert report.runs == 2 and report.end_stage == "boxes"
    assert report.end_metric["matched_share"] == 1.0 and report.end_metric["n_ref"] > 0


def _invoke(*args):
    from slipway.cli.compare import register

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    register(app)
    return CliRunner(env={"COLUMNS": "160"}).invoke(app, ["compare", *map(str, args)])


def test_cli_stage_parity(ocr_models, page, tmp_path):
    from slipway.errors import UserError
    from slipway.pipeline.ocr import ocr_pipeline

    det, rec, _ = ocr_models
    img = tmp_path / "page.png"
    cv2.imwrite(str(img), page)
    good = ocr_pipeline(det, rec).to_file(tmp_path / "ocr.yaml")
    bad = ocr_pipeline(det, rec, mean=(0.4, 0.5, 0.5)).to_file(tmp_path / "bad.yaml")

    res = _invoke(good, "--reference", "rapidocr", "--image", img, "--fail")
    assert res.exit_code == 0, res.output
    assert "no divergent stage" in res.output and "det_prob" in res.output

    res = _invoke(bad, "--reference", "rapidocr", img, "--fail", "--json")  # the image as B works too
    assert res.exit_code == 2, res.output
    d = json.loads(res.output)
    assert d["first_divergent"] == "det_input" and d["end_metric"]["total"] >= 5

    res = _invoke(bad, "--reference", "rapidocr", "--image", img)  # without --fail: 0, the table says it
    assert res.exit_code == 0 and "first divergent stage: det_input" in res.output

    res = _invoke(good, "--image", img)  # a pipeline file needs --reference
    assert isinstance(res.exception, UserError) and "--reference" in str(res.exception)
    res = _invoke(good, "--reference", "nope", "--image", img)
    assert isinstance(res.exception, UserError)
    assert np.asarray(page).dtype == np.uint8
