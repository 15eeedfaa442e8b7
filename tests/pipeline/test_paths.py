"""File params of op / python steps (the OCR recognizer, classifier, charset) are stored relative to the
pipeline file, like model steps: the folder can move and the pipeline still runs, with the same output."""

from __future__ import annotations

import shutil

import pytest
import yaml

from slipway.pipeline import Pipeline, PipelineError, Step, register_op
from slipway.pipeline.core import path_params
from slipway.pipeline.ocr import ocr_pipeline
from tests import corpus
from tests.corpus import render_text, text_lines


def _copy_models(folder):
    folder.mkdir(parents=True)
    names = {}
    for key in ("ppocr_det", "ppocr_rec", "ppocr_cls"):
        src = corpus.model(key)
        shutil.copy(src, folder / src.name)
        names[key] = folder / src.name
    return names


def test_ocr_pipeline_moves_with_its_folder(tmp_path):
    models = _copy_models(tmp_path / "a" / "models")
    p = ocr_pipeline(models["ppocr_det"], models["ppocr_rec"], models["ppocr_cls"])
    out = p.to_file(tmp_path / "a" / "ocr.yaml")
    data = yaml.safe_load(out.read_text())
    by_name = {s["name"]: s for s in data["steps"]}
    assert by_name["det"]["model"] == "models/ch_PP-OCRv4_det_infer.onnx"
    assert by_name["rec"]["params"]["model"] == "models/ch_PP-OCRv4_rec_infer.onnx"
    assert by_name["cls"]["params"]["model"] == "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    assert by_name["ctc"]["params"]["model"] == "models/ch_PP-OCRv4_rec_infer.onnx"
    image = render_text(text_lines(3, seed=1), size=(480, 240))
    expected = p.run({"image": image}).outputs["lines"]
    assert expected

    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = Pipeline.from_file(tmp_path / "b" / "ocr.yaml")
    got = moved.run({"image": image}).outputs["lines"]
    assert [ln["text"] for ln in got] == [ln["text"] for ln in expected]
    assert [ln["box"] for ln in got] == [ln["box"] for ln in expected]
    # written again from the new place: still relative
    again = yaml.safe_load(moved.to_file(tmp_path / "b" / "again.yaml").read_text())
    assert {s["name"]: s for s in again["steps"]}["rec"]["params"]["model"] == "models/ch_PP-OCRv4_rec_infer.onnx"


@register_op("test_paths.read", inputs=("x",), outputs=("y",), paths=("table",))
def _read(x, table: str, model: str = "not a path") -> dict:
    with open(table, encoding="utf-8") as f:
        return {"y": f.read().strip() + str(x) + model}


def _echo(x, data_file: str) -> dict:
    with open(data_file, encoding="utf-8") as f:
        return {"y": f.read().strip() + str(x)}


def test_declared_paths_and_the_naming_rule(tmp_path):
    (tmp_path / "t.txt").write_text("T")
    steps = [Step.op("read", "test_paths.read", {"x": "a"}, {"y": "b"}, table="t.txt", model="m"),
             Step.python("echo", _echo, {"x": "b"}, {"y": "c"}, data_file=str(tmp_path / "t.txt"))]
    p = Pipeline(steps, ["a"], ["c"], base=tmp_path)
    assert path_params(steps[0]) == ["table"]  # declared: `model` here is a plain string
    assert path_params(steps[1]) == ["data_file"]  # python step: the naming rule
    assert p.run({"a": 1}).outputs["c"] == "TT1m"
    d = p.to_dict(tmp_path)
    assert d["steps"][0]["params"] == {"table": "t.txt", "model": "m"}
    assert d["steps"][1]["params"] == {"data_file": "t.txt"}


def test_missing_file_param_is_one_line(tmp_path):
    step = Step.op("read", "test_paths.read", {"x": "a"}, {"y": "b"}, table="nope.txt")
    with pytest.raises(PipelineError, match=r"^step 'read' params 'table': file not found: .*nope.txt$"):
        Pipeline([step], ["a"], ["b"], base=tmp_path)
