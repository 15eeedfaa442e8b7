"""slipway.pipeline.bundle: bundles of the OCR and layout pipelines with a golden page each."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

import slipway
from slipway.errors import UserError
from slipway.pipeline.bundle import MANIFEST, _compare, _pack, bundle
from tests.corpus import model, render_page

pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("rapid_layout")

DET = "models/ch_PP-OCRv4_det_infer.onnx"


@pytest.fixture(scope="module")
def ocr_bundle(tmp_path_factory) -> Path:
    from slipway.pipeline.ocr import ocr_pipeline
    from tests.pipeline.test_ocr import render_page as ocr_page

    d = tmp_path_factory.mktemp("ocr")
    page, _ = ocr_page(0)
    cv2.imwrite(str(d / "page.png"), page)
    p = ocr_pipeline(model("ppocr_det"), model("ppocr_rec"), model("ppocr_cls"))
    return bundle(p, d / "app", golden=[d / "page.png"])


@pytest.fixture(scope="module")
def layout_setup(tmp_path_factory) -> tuple[Path, Path]:
    """A layout pipeline file over a copy of the model with tuned settings beside it, and a page image."""
    from slipway.pipeline.detect import detect_pipeline
    from slipway.settings import digest, settings_path

    d = tmp_path_factory.mktemp("layout")
    m = d / "src" / "layout.onnx"
    m.parent.mkdir()
    shutil.copy(model("layout"), m)
    settings_path(m).write_text(json.dumps({"backend": "ort", "options": {"threads": 2}, "model_sha256": digest(m)}))
    cv2.imwrite(str(d / "page.png"), render_page(0))
    return detect_pipeline(m).to_file(d / "src" / "layout.yaml"), d / "page.png"


def test_ocr_bundle_layout_manifest_and_load(ocr_bundle: Path) -> None:
    files = sorted(p.relative_to(ocr_bundle).as_posix() for p in ocr_bundle.rglob("*") if p.is_file())
    assert files == ["golden/page.npz", MANIFEST, DET, "models/ch_PP-OCRv4_rec_infer.onnx",
                     "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "pipeline.yaml"]
    m = json.loads((ocr_bundle / MANIFEST).read_text())
    assert set(m["files"]) == set(files) - {MANIFEST}
    assert m["versions"]["slipway"] == slipway.__version__ and "onnxruntime" in m["versions"]
    rec = m["models"]["models/ch_PP-OCRv4_rec_infer.onnx"]
    assert [u["step"] for u in rec["used_by"]] == ["rec", "ctc"] and rec["verification"] == {}
    text = (ocr_bundle / "pipeline.yaml").read_text()
    assert "model: models/ch_PP-OCRv4_rec_infer.onnx" in text and "rapidocr" not in text
    p = slipway.load_bundle(ocr_bundle)
    with np.load(ocr_bundle / "golden/page.npz") as z:
        assert len(p.run({"image": z["a0"]}).outputs["lines"]) >= 4


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tampered_missing_and_extra_files_refused(ocr_bundle: Path, tmp_path: Path) -> None:
    b = _copy(ocr_bundle, tmp_path / "app")
    raw = bytearray((b / DET).read_bytes())
    raw[len(raw) // 2] ^= 1
    (b / DET).write_bytes(bytes(raw))
    with pytest.raises(UserError) as e:
        slipway.load_bundle(b)
    assert str(e.value) == f"bundle {b}: file {DET} was changed (SHA-256 differs from the manifest)"
    (b / DET).unlink()
    with pytest.raises(UserError, match=f"^bundle {b}: file {DET} is missing$"):
        slipway.load_bundle(b)
    shutil.copy(ocr_bundle / DET, b / DET)
    (b / "models" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match=f"^bundle {b}: unexpected file models/extra.onnx \\(not in the manifest\\)$"):
        slipway.load_bundle(b)
    (b / "models" / "extra.onnx").unlink()
    (b / MANIFEST).unlink()
    with pytest.raises(UserError, match="^not a slipway bundle"):
        slipway.load_bundle(b)


def test_bundle_moved_still_loads(ocr_bundle: Path, tmp_path: Path) -> None:
    b = _copy(ocr_bundle, tmp_path / "a" / "app")
    moved = tmp_path / "elsewhere" / "deeper" / "app2"
    moved.parent.mkdir(parents=True)
    shutil.move(b, moved)
    p = slipway.load_bundle(moved)
    assert all(str(moved.resolve()) in str(s.params.get("model", moved)) for s in p.steps if s.name in ("cls", "rec"))


def test_layout_bundle_from_file_with_settings_and_zip(layout_setup, tmp_path: Path) -> None:
    pipe, page = layout_setup
    out = bundle(pipe, tmp_path / "app", golden=[page])
    m = json.loads((out / MANIFEST).read_text())
    assert m["models"]["models/layout.onnx"]["settings"] == "models/layout.tune.json"
    assert (out / "models/layout.tune.json").is_file() and "models/layout.tune.json" in m["files"]
    assert slipway.load_bundle(out).run({"image": cv2.imread(str(page))}).outputs["labels"].size
    z = bundle(pipe, tmp_path / "app2", golden=[page], zip=True)
    assert z.name == "app2.zip" and zipfile.is_zipfile(z)
    moved = tmp_path / "moved" / "b.zip"
    moved.parent.mkdir()
    shutil.move(z, moved)
    p = slipway.load_bundle(moved)
    assert p.run({"image": cv2.imread(str(page))}).outputs["boxes"].shape[1] == 4
    # a zip with an extra member is refused before anything is extracted
    with zipfile.ZipFile(moved, "a") as zf:
        zf.writestr("models/extra.onnx", b"x")
    with pytest.raises(UserError, match="unexpected file models/extra.onnx"):
        slipway.load_bundle(moved)


def test_overwrite_refused_then_forced(layout_setup, tmp_path: Path) -> None:
    pipe, page = layout_setup
    out = bundle(pipe, tmp_path / "app")
    (out / "keep").write_text("old")
    with pytest.raises(UserError, match="already exists; pass force=True"):
        bundle(pipe, out)
    assert (out / "keep").is_file()
    bundle(pipe, out, golden=[page], force=True)
    assert not (out / "keep").exists() and (out / "golden/page.npz").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["app"]  # no temporary folder left behind
    with pytest.raises(UserError, match="refusing to replace"):
        bundle(pipe, pipe.parent, force=True)  # the folder that holds the source model


def test_golden_mismatch_names_output_and_difference(layout_setup, tmp_path: Path) -> None:
    from slipway.pipeline.bundle import _sha256

    pipe, page = layout_setup
    out = bundle(pipe, tmp_path / "app", golden=[page])
    g = out / "golden/page.npz"
    with np.load(g) as z:
        arrays = {k: z[k] for k in z.files}
    tree = json.loads(str(arrays["__tree__"]))
    key = tree["outputs"]["dict"]["scores"]["array"]
    arrays[key] = arrays[key] + np.float32(0.25)
    np.savez_compressed(g, **arrays)
    m = json.loads((out / MANIFEST).read_text())
    m["files"]["golden/page.npz"] = _sha256(g)
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(UserError) as e:
        slipway.load_bundle(out)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{out}: golden golden/page.npz: self-test on ort failed: output 'scores'")
    assert "max abs difference 0.25" in msg
    slipway.load_bundle(out, self_test=False)


def test_compare_nested_fields() -> None:
    lines = [{"text": "Hello", "score": 0.91, "box": [[1.0, 2.0], [3.0, 2.0], [3.0, 4.0], [1.0, 4.0]]}]
    arrays: dict = {}
    skel = _pack({"lines": lines, "n": 3}, arrays, "outputs")
    ok = {"lines": [{"text": "Hello", "score": 0.9105, "box": [[1.0005, 2.0]] + lines[0]["box"][1:]}], "n": 3}
    assert _compare(skel, ok, arrays, "", 1e-3, 1e-3) is None
    bad = {"lines": [dict(lines[0], text="Hel1o")], "n": 3}
    assert _compare(skel, bad, arrays, "", 1e-3, 1e-3) == "'lines[0].text': expected 'Hello', got 'Hel1o'"
    assert "'lines[0].box': max abs difference 0.5" in _compare(
        skel, {"lines": [dict(lines[0], box=[[1.5, 2.0]] + lines[0]["box"][1:])], "n": 3}, arrays, "", 1e-3, 1e-3)
    assert _compare(skel, {"lines": [], "n": 3}, arrays, "", 1e-3, 1e-3) == "'lines': 0 items, expected 1"
    assert "exact" in _compare(skel, {"lines": lines, "n": 4}, arrays, "", 1e-3, 1e-3)


def test_cli_bundle_zip_golden_check(layout_setup, tmp_path: Path, capsys) -> None:
    from slipway.cli import main

    pipe, page = layout_setup
    out = tmp_path / "cli" / "app.zip"
    with pytest.raises(SystemExit) as ok:
        main(["bundle", str(pipe), "-o", str(out), "--zip", "--golden", str(page), "--check"])
    assert ok.value.code == 0
    assert "self-test passed" in capsys.readouterr().out and out.is_file()
    with pytest.raises(SystemExit) as e:
        main(["bundle", str(pipe), "-o", str(out), "--zip"])
    assert e.value.code == 1
    assert "already exists" in capsys.readouterr().err
