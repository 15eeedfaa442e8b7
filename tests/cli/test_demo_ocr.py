"""``slipway demo``: the OCR application (PP-OCRv4 from the rapidocr-onnxruntime wheel).

Fast: the demo's page is read, its bundle -> serve -> tritonclient step on the shipped models. Slow:
the whole demo end to end (optimize, INT8 judged by text, held-out pages, bundle, serve).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slipway.errors import UserError

pytest.importorskip("rapidocr_onnxruntime")


@pytest.fixture(scope="module")
def shipped() -> dict[str, Path]:
    from slipway.cli.demo_ocr import ppocr_models

    return ppocr_models()


def test_the_shipped_models_read_the_demo_page(shipped) -> None:
    from slipway.cli.demo_ocr import PAGE, demo_page
    from slipway.pipeline.ocr import ocr_pipeline
    from slipway.pipeline.pages import random_page, read_accuracy

    page = demo_page()
    assert page.lines == [t for t, _ in PAGE] and len(set(page.sizes)) == len(PAGE)
    pipe = ocr_pipeline(shipped["det"], shipped["rec"], shipped["cls"])
    assert read_accuracy(pipe.run({"image": page.image}).outputs["lines"], page) >= 95.0
    held_out = random_page(3000)
    assert read_accuracy(pipe.run({"image": held_out.image}).outputs["lines"], held_out) >= 95.0


def test_bundle_serve_and_call(shipped, tmp_path: Path) -> None:
    """The demo's last two stages on the shipped models: the served lines equal the in-process ones."""
    import cv2

    from slipway.cli.demo_ocr import demo_page
    from slipway.cli.demo_serve import check_served, serve_and_call
    from slipway.pipeline.bundle import bundle, load_bundle
    from slipway.pipeline.ocr import ocr_pipeline

    page = demo_page()
    png = tmp_path / "page.png"
    cv2.imwrite(str(png), page.image)
    app = bundle(ocr_pipeline(shipped["det"], shipped["rec"], shipped["cls"]), tmp_path / "app", golden=[page.image])
    expected = load_bundle(app).run({"image": page.image}).outputs["lines"]
    served = serve_and_call(app, tmp_path / "repo", png)
    assert [line["text"] for line in served] == [line["text"] for line in expected]
    check_served(served, expected)
    changed = [dict(line) for line in expected]
    changed[0]["text"] += "!"
    with pytest.raises(UserError, match="differ from the in-process result"):
        check_served(served, changed)
    config = (tmp_path / "repo" / "ocr" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in config  # served as a Triton ensemble of its models and runs of ops
    assert (tmp_path / "repo" / "ocr_det" / "1" / "model.onnx").is_file()


def test_a_missing_wheel_is_one_line(monkeypatch) -> None:
    import importlib.resources

    from slipway.cli import demo_ocr

    def files(package: str):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(importlib.resources, "files", files)
    with pytest.raises(UserError, match="rapidocr-onnxruntime") as e:
        demo_ocr.ppocr_models()
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_ocr_demo_end_to_end(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "slipway", "demo", "--out", str(tmp_path)], capture_output=True,
                       text=True, env={**os.environ, "COLUMNS": "200"}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for i in range(1, 7):
        assert f"{i}/6" in out
    page = re.search(r"character accuracy on the page: ([\d.]+)%", out)
    assert page is not None and float(page[1]) >= 95.0, out[-4000:]
    assert re.search(r"rec\s+│ \d+ lines of \d+ held-out pages\s+│ 100\.0%", out) is not None, out[-4000:]
    assert "this pipeline goes into the bundle" in out or "the bundle keeps the optimized FP32 models" in out
    assert re.search(r"the 7 lines equal the in-process pipeline's", out) is not None, out[-4000:]
    assert re.search(r"total\s+│\s+[\d.]+", out) is not None
    for f in ("page.png", "page_input.png", "ocr_bundle/manifest.json", "models/ppocr_det.opt.onnx",
              "repository/ocr/config.pbtxt", "repository/ocr_det/1/model.onnx"):
        assert (tmp_path / f).is_file(), f
