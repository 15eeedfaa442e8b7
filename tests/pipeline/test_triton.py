"""Pipelines written as Triton ensembles (slipway.pipeline.triton) and served: the real PP-OCR and layout
models through tritonclient (HTTP and gRPC) answer what the in-process pipeline answers, each composing
model keeps its own statistics, and what cannot be an ensemble is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from slipway.errors import UserError
from slipway.pipeline import Pipeline, Step
from slipway.pipeline.detect import detect_pipeline
from slipway.pipeline.ocr import ocr_pipeline
from slipway.pipeline.triton import segments, to_repository
from slipway.serve import Server
from tests.corpus import model
from tests.pipeline.test_ocr import render_page

pytest.importorskip("rapidocr_onnxruntime")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def ocr():
    return ocr_pipeline(model("ppocr_det"), model("ppocr_rec"), model("ppocr_cls"), threads=1)


@pytest.fixture(scope="module")
def served(tmp_path_factory, ocr):
    page, _ = render_page(11)
    repo = tmp_path_factory.mktemp("ens") / "repo"
    to_repository(ocr, repo, sample={"image": page}, instances=2)
    layout = detect_pipeline(model("layout"), kind="layout", threads=1)
    to_repository(layout, repo / "layout_models", sample={"image": page}, name="layout")
    for folder in (repo / "layout_models").iterdir():  # two ensembles in one repository
        folder.rename(repo / folder.name)
    (repo / "layout_models").rmdir()
    server = Server(repo, http_port=0, grpc_port=0, metrics_port=0, threads=1).start_in_thread()
    yield server, repo, layout
    server.stop_thread()


def test_the_ocr_pipeline_is_cut_where_models_are(ocr) -> None:
    assert [[s.name for s in part] for part in segments(ocr)] == [
        ["det_pre"], ["det"], ["det_post", "crop", "cls", "rec", "ctc", "lines"]]


def test_repository_layout(served) -> None:
    _, repo, _ = served
    assert sorted(p.name for p in repo.iterdir()) == sorted(
        ["ocr", "ocr_det_pre", "ocr_det", "ocr_det_post", "layout", "layout_preprocess", "layout_detector", "layout_decode"])
    config = (repo / "ocr" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in config and 'input_map { key: "meta" value: "meta" }' in config
    assert "count: 2" in (repo / "ocr_det_post" / "config.pbtxt").read_text()  # runs of ops: two instances
    # the op runs are bundles: the recognizer and classifier travel with the steps that read them
    manifest = json.loads((repo / "ocr_det_post" / "1" / "manifest.json").read_text())
    assert {Path(f).name for f in manifest["files"]} >= {"pipeline.yaml"}
    assert any(f.endswith(".onnx") for f in manifest["files"])


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_ocr_ensemble_answers_what_the_pipeline_does(served, ocr, transport) -> None:
    server, _, _ = served
    module = httpclient if transport == "http" else grpcclient
    client = module.InferenceServerClient(f"127.0.0.1:{server.http_port if transport == 'http' else server.grpc_port}")
    page, drawn = render_page(5)
    ok, png = cv2.imencode(".png", page)
    image = module.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png.tobytes()], dtype=object))
    before = _count(client, "ocr_det", transport)
    result = client.infer("ocr", [image])
    lines = [json.loads(x) for x in result.as_numpy("lines")]
    want = ocr.run({"image": cv2.imdecode(png, cv2.IMREAD_COLOR)}).outputs["lines"]
    assert [line["text"] for line in lines] == [line["text"] for line in want]
    assert len(lines) >= len(drawn) - 1
    for got, exp in zip(lines, want, strict=True):
        np.testing.assert_allclose(got["box"], exp["box"], atol=1e-3)  # the same float32 math, sent as JSON
        assert abs(got["score"] - exp["score"]) < 1e-6
    assert _count(client, "ocr_det", transport) == before + 1  # the detector ran as its own model


def _count(client, name: str, transport: str) -> int:
    stats = client.get_inference_statistics(name)
    if transport == "http":
        return int(stats["model_stats"][0]["inference_count"])
    return int(stats.model_stats[0].inference_count)


def test_layout_ensemble_answers_what_the_pipeline_does(served) -> None:
    server, _, layout = served
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    page, _ = render_page(8)
    ok, png = cv2.imencode(".png", page)
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png.tobytes()], dtype=object))
    result = client.infer("layout", [image])
    want = layout.run({"image": cv2.imdecode(png, cv2.IMREAD_COLOR)}).outputs
    for name, value in want.items():
        got = result.as_numpy(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            np.testing.assert_allclose(got, value, rtol=1e-6, atol=1e-5)
        elif isinstance(value, np.ndarray) and value.dtype.kind == "U":  # strings come back as BYTES
            assert [x.decode() for x in got] == value.tolist()
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got, value)
    assert len(want["boxes"]) > 0


def test_a_corrupt_image_is_a_400_naming_the_step(served) -> None:
    from tritonclient.utils import InferenceServerException

    server, _, _ = served
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([b"\x89PNG not really"], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer("ocr", [image])
    assert e.value.status() == "400"
    assert "ensemble 'ocr' step 0 ('ocr_det_pre')" in str(e.value) and "not a decodable image" in str(e.value)
    assert client.is_server_ready()


def test_what_cannot_be_an_ensemble(tmp_path, ocr) -> None:
    page, _ = render_page(1)
    with pytest.raises(UserError, match="already exists"):
        (tmp_path / "taken").mkdir()
        to_repository(ocr, tmp_path / "taken", sample={"image": page})
    with pytest.raises(UserError, match="image_input"):
        to_repository(ocr, tmp_path / "x", sample={"image": page}, image_input="jpeg")
    with pytest.raises(UserError, match="instances: expected a positive integer"):
        to_repository(ocr, tmp_path / "x", sample={"image": page}, instances=0)
    # crops (a list of arrays) made before the detector and read after it would cross between composing models
    det, rec = ocr.steps[1], model("ppocr_rec")
    steps = [Step.op("pre", "ocr.det_preprocess", {"image": "image"}, {"tensor": "t", "work": "work", "meta": "meta"}),
             Step.op("crop", "ocr.crop", {"image": "work", "boxes": "boxes"}, {"crops": "crops"}),
             Step.model("det", det.target, {k: "t" for k in det.inputs}, {k: "prob" for k in det.outputs}),
             Step.op("rec", "ocr.recognize", {"crops": "crops"}, {"probs": "probs"}, model=str(rec))]
    box = np.array([[[10, 10], [200, 10], [200, 40], [10, 40]]], np.float32)
    with pytest.raises(UserError) as e:
        to_repository(Pipeline(steps, ["image", "boxes"], ["prob", "probs"], base=ocr.base), tmp_path / "y",
                      sample={"image": page, "boxes": box})
    assert str(e.value).startswith("tensor 'crops' (a list) cannot pass between composing models"), str(e.value)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
