"""A pipeline file placed in a repository is served (engine "pipeline", backend "slipway_pipeline").

rapid-layout's layout model as ``detect_pipeline`` builds it, written to REPO/layout/1/pipeline.yaml
with the model beside it; called over HTTP and gRPC with raw pixels and with an encoded PNG, the
answers equal the in-process pipeline's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from slipway.backends.pipeline import to_tensor
from slipway.pipeline import Pipeline
from slipway.pipeline.detect import detect_pipeline
from slipway.serve import Server
from tests import corpus

pytest.importorskip("rapid_layout")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

OUTPUTS = """
output [
  { name: "boxes" data_type: TYPE_FP32 dims: [ -1, 4 ] },
  { name: "scores" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "labels" data_type: TYPE_STRING dims: [ -1 ] }
]
"""
RAW = 'backend: "slipway_pipeline"\nmax_batch_size: 0\ninput [{ name: "image" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }]\n'
ENCODED = 'backend: "slipway_pipeline"\nmax_batch_size: 0\ninput [{ name: "image" data_type: TYPE_STRING dims: [ 1 ] }]\n'


def _model_dir(repo: Path, name: str, config: str) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True)
    model = version / "layout.onnx"
    shutil.copyfile(corpus.model("layout"), model)
    detect_pipeline(model).to_file(version / "pipeline.yaml")
    (repo / name / "config.pbtxt").write_text(config + OUTPUTS)
    return version / "pipeline.yaml"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    path = _model_dir(repo, "layout", RAW)
    _model_dir(repo, "layout_png", ENCODED)
    page = corpus.render_page(seed=1)
    expected = Pipeline.from_file(path).run({"image": page}).outputs
    with Server(repo, http_port=0, grpc_port=0, metrics_port=None) as server:
        yield server, page, expected


def _check(result, expected) -> None:
    assert len(expected["boxes"]) > 0  # the page has a layout to find
    np.testing.assert_array_equal(result.as_numpy("boxes"), expected["boxes"])
    np.testing.assert_array_equal(result.as_numpy("scores"), expected["scores"])
    labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("labels").reshape(-1)]
    assert labels == [str(x) for x in expected["labels"]]


@pytest.mark.parametrize("client", [httpclient, grpcclient], ids=["http", "grpc"])
def test_raw_pixels(served, client) -> None:
    server, page, expected = served
    port = server.http_port if client is httpclient else server.grpc_port
    c = client.InferenceServerClient(f"127.0.0.1:{port}")
    inp = client.InferInput("image", list(page.shape), "UINT8")
    inp.set_data_from_numpy(page)
    _check(c.infer("layout", [inp]), expected)


@pytest.mark.parametrize("client", [httpclient, grpcclient], ids=["http", "grpc"])
def test_encoded_png(served, client) -> None:
    server, page, expected = served
    port = server.http_port if client is httpclient else server.grpc_port
    ok, png = cv2.imencode(".png", page)  # lossless: the same pixels as the raw request
    assert ok
    c = client.InferenceServerClient(f"127.0.0.1:{port}")
    inp = client.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png.tobytes()], dtype=object))
    _check(c.infer("layout_png", [inp]), expected)


@pytest.mark.parametrize("client", [httpclient, grpcclient], ids=["http", "grpc"])
def test_corrupt_image_is_a_client_error(served, client) -> None:
    server, _, _ = served
    port = server.http_port if client is httpclient else server.grpc_port
    c = client.InferenceServerClient(f"127.0.0.1:{port}")
    inp = client.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"\x89PNG not really an image"], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        c.infer("layout_png", [inp])
    assert "'image'" in str(e.value) and "decodable" in str(e.value)
    assert "\n" not in e.value.message()
    status = str(e.value.status())
    assert ("400" in status) if client is httpclient else ("INVALID_ARGUMENT" in status)


def test_python_steps_are_refused(tmp_path) -> None:
    """A served pipeline runs ops and models only: a python step fails the load, with or without the flag."""
    repo = tmp_path / "repo"
    path = _model_dir(repo, "layout", RAW)
    data = path.read_text().replace("op: detect.labels", "python: builtins:dict", 1)
    assert data != path.read_text()
    path.write_text(data)
    server = Server(repo, http_port=0, grpc_port=None, metrics_port=None, allow_python_models=True)
    with pytest.raises(Exception, match="python steps"):
        with server:
            pass


def test_outputs_as_tensors() -> None:
    lines = [{"text": "Hello", "score": np.float32(0.5), "box": np.zeros((4, 2), np.float32)}]
    out = to_tensor("lines", lines)
    assert out.dtype == object and out.shape == (1,)
    assert json.loads(out[0]) == {"text": "Hello", "score": 0.5, "box": [[0.0, 0.0]] * 4}
    assert to_tensor("texts", ["a", "b"]).tolist() == [b"a", b"b"]
    a = np.ones(3, np.float32)
    assert to_tensor("x", a) is a


def test_files_outside_the_model_folder_are_refused(tmp_path) -> None:
    """A repository's pipeline file reads only files beside it: a model reached through '..' fails the load."""
    from slipway.backends.pipeline import PIPELINE
    from slipway.errors import UserError

    repo = tmp_path / "repo"
    path = _model_dir(repo, "layout", RAW)
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(path.parent / "layout.onnx", outside)
    path.write_text(path.read_text().replace("model: layout.onnx", "model: ../../../elsewhere.onnx"))
    assert Pipeline.from_file(path).files()[("detector", None)].resolve() == outside.resolve()  # it does run in-process
    with pytest.raises(UserError, match=r"^pipeline.yaml: step '\w+' model reads a file outside its folder: "
                                        r"elsewhere.onnx \(keep the pipeline's models beside it\)$"):
        PIPELINE.load(path)
    shutil.move(outside, path.parent / "layout.onnx")
    path.write_text(path.read_text().replace("model: ../../../elsewhere.onnx", "model: layout.onnx"))
    sessions = PIPELINE.load(path)  # the same pipeline with its model beside it loads
    assert len(sessions) == 1
    sessions[0].close()


@pytest.mark.parametrize("config,message", [
    (RAW.replace('name: "image"', 'name: "picture"'), "input 'picture' is not an input of the model (image)"),
    (RAW + 'input [{ name: "extra" data_type: TYPE_FP32 dims: [ 1 ] }]\n', "input 'extra' is not an input"),
    ('backend: "slipway_pipeline"\nmax_batch_size: 0\n', "input 'image' has no type in the model file; declare the "
                                                         "inputs in config.pbtxt"),
])
def test_config_names_are_checked_against_the_pipeline_file(tmp_path, config, message) -> None:
    from slipway.errors import ServeError
    from slipway.serve.repository import Repository

    repo = tmp_path / "repo"
    _model_dir(repo, "layout", config)
    if "output [" not in config and "declare the inputs" in message:
        (repo / "layout" / "config.pbtxt").write_text(config)
    with pytest.raises(ServeError) as e:
        Repository(repo).config("layout")
    assert message in str(e.value) and e.value.status == 400, str(e.value)
    # the outputs, too
    (repo / "layout" / "config.pbtxt").write_text(RAW + OUTPUTS.replace('"scores"', '"score"'))
    with pytest.raises(ServeError, match="output 'score' is not an output of the model"):
        Repository(repo).config("layout")
