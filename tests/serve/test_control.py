"""Repository control: load/unload only in explicit mode, bounded load overrides, names and messages
without paths, readiness and the repository index through poll-mode changes (removed models, corrupt
new models and versions)."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from slipway.errors import ServeError
from slipway.serve import Server
from slipway.serve.dataplane import DataPlane
from slipway.serve.repository import Repository
from slipway.serve.types import InferRequest, InferTensor
from tests.serve.conftest import B, W, _save, gemm_model

REFUSED = "explicit model load / unload is not allowed: the server runs in model control mode"


def _repo(root: Path, *names: str) -> Path:
    for name in names:
        _save(gemm_model(), root / name / "1" / "model.onnx")
    return root


def _corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an onnx model")


def _no_such_op(path: Path) -> None:
    """A model whose inputs and outputs read fine but that onnxruntime refuses (its message names the file)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    model = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_operatorsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _post(port: int, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def _infer(plane: DataPlane, name: str = "gemm", version: str = ""):
    x = np.ones((1, 16), np.float32)
    return await plane.infer(InferRequest(name, version, inputs=[InferTensor("x", "FP32", [1, 16], x)]))


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


# ---------------------------------------------------------------------------------------------
# 1. load / unload only in explicit mode (as Triton: UNAVAILABLE -> HTTP 503 / gRPC UNAVAILABLE)


@pytest.mark.parametrize("control", ["none", "poll"])
def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path, control) -> None:
    repo = _repo(tmp_path / "repo", "gemm")
    with Server(repo, http_port=0, grpc_port=0, metrics_port=None, control=control, poll_seconds=30,
                threads=1) as server:
        for action in ("unload", "load"):
            status, body = _post(server.http_port, f"/v2/repository/models/gemm/{action}")
            assert status == 503, body
            assert body["error"] == (f"{REFUSED} {control!r}; start it with --model-control-mode explicit")
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        for call in (c.unload_model, c.load_model):
            with pytest.raises(InferenceServerException) as e:
                call("gemm")
            assert e.value.status() == str(grpc.StatusCode.UNAVAILABLE) and REFUSED in e.value.message()
        # the model kept serving all along
        h = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        assert h.is_model_ready("gemm") and h.is_server_ready()
        inp = httpclient.InferInput("x", [1, 16], "FP32")
        inp.set_data_from_numpy(np.ones((1, 16), np.float32))
        np.testing.assert_allclose(h.infer("gemm", [inp]).as_numpy("y"), np.ones((1, 16)) @ W + B, rtol=1e-5)


def test_explicit_mode_still_loads_and_unloads(tmp_path) -> None:
    repo = _repo(tmp_path, "gemm")

    async def main():
        plane = DataPlane(Repository(repo), control="explicit", threads=1)
        await plane.start()
        await plane.load_model("gemm")
        ready = plane.model_ready("gemm")
        await plane.unload_model("gemm")
        index = plane.repository_index()
        await plane.shutdown()
        return ready, index, plane.model_ready("gemm")

    ready, index, after = _run(main())
    assert ready and not after
    assert index == [{"name": "gemm", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}]


# ---------------------------------------------------------------------------------------------
# 2. and 3. bounded overrides, names, messages without absolute paths (through HTTP)


def test_load_overrides_names_and_messages(tmp_path) -> None:
    repo = _repo(tmp_path / "repo", "gemm")
    _corrupt(repo / "broken" / "1" / "model.onnx")
    _no_such_op(repo / "bogus" / "1" / "model.onnx")
    with Server(repo, http_port=0, grpc_port=None, metrics_port=None, control="explicit", threads=1) as server:
        port = server.http_port
        huge = json.dumps({"max_batch_size": 4, "instance_group": [{"count": 1_000_000, "kind": "KIND_CPU"}]})
        status, body = _post(port, "/v2/repository/models/gemm/load", {"parameters": {"config": huge}})
        assert status == 400 and "instance_group asks for 1000000 instances; at most" in body["error"]
        warm = json.dumps({"max_batch_size": 4, "model_warmup": [{"name": "w", "batch_size": 1, "count": 10**6}]})
        status, body = _post(port, "/v2/repository/models/gemm/load", {"parameters": {"config": warm}})
        assert status == 400 and "model_warmup asks for 1000000 runs in all; at most 64" in body["error"]
        status, body = _post(port, "/v2/repository/models/" + "a" * 300 + "/load")
        assert status == 400 and body["error"] == "model name of 300 bytes is not allowed: at most 255 bytes"
        errors = []
        for name in ("broken", "bogus"):
            status, body = _post(port, f"/v2/repository/models/{name}/load")
            assert status == 400 and f"{name}/1/model.onnx" in body["error"], body
            errors.append(body["error"])
        index = httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_repository_index()
        assert {r["name"]: r["reason"] for r in index}["bogus"] == errors[1]
        for text in [*errors, *(r["reason"] for r in index)]:
            assert str(tmp_path) not in text and str(repo.resolve()) not in text
        # a refused load left nothing behind: still not loaded, server ready
        c = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert not c.is_model_ready("gemm") and c.is_server_ready()


# ---------------------------------------------------------------------------------------------
# 4. and 5. readiness and the index through poll-mode changes


def _rows(plane: DataPlane) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in plane.repository_index():
        out.setdefault(row["name"], []).append(row)
    return out


async def _settle(plane: DataPlane) -> None:
    """Two polls: a change is loaded once it held still for one poll."""
    await plane.poll()
    await plane.poll()


def test_corrupt_new_model_leaves_the_server_ready(tmp_path) -> None:
    repo = _repo(tmp_path, "gemm")

    async def main():
        plane = DataPlane(Repository(repo), control="poll", threads=1)
        assert await plane.start() == [] and plane.ready()
        _corrupt(repo / "broken" / "1" / "model.onnx")
        _save(gemm_model(), repo / "late" / "1" / "model.onnx")
        await plane.poll()  # seen once, not loaded yet: the server stays ready meanwhile
        settling = plane.ready()
        await plane.poll()
        out = plane.ready(), plane.model_ready("broken"), plane.model_ready("late"), _rows(plane)
        y = await _infer(plane)
        await plane.shutdown()
        return settling, out, y

    settling, (ready, broken_ready, late_ready, rows), y = _run(main())
    assert settling and ready and not broken_ready and late_ready
    assert rows["broken"][0]["state"] == "UNAVAILABLE" and "broken/1/model.onnx" in rows["broken"][0]["reason"]
    assert str(tmp_path) not in rows["broken"][0]["reason"]
    assert rows["gemm"][0]["state"] == rows["late"][0]["state"] == "READY"
    np.testing.assert_allclose(y.outputs[0].data, np.ones((1, 16)) @ W + B, rtol=1e-5)


def test_removed_model_leaves_the_index(tmp_path) -> None:
    repo = _repo(tmp_path, "gemm", "gone")
    _corrupt(repo / "broken" / "1" / "model.onnx")

    async def main():
        plane = DataPlane(Repository(repo), control="poll", threads=1)
        errors = await plane.start()
        before = set(_rows(plane)), plane.ready()
        shutil.rmtree(repo / "gone")
        shutil.rmtree(repo / "broken")
        await _settle(plane)
        after = set(_rows(plane)), plane.ready(), plane.model_ready("gone")
        with pytest.raises(ServeError) as e:
            await _infer(plane, "gone")
        await plane.shutdown()
        return errors, before, after, e.value.status

    errors, before, after, status = _run(main())
    assert len(errors) == 1 and "broken" in errors[0]
    assert before == ({"gemm", "gone", "broken"}, False)  # a model that failed at start: not ready
    assert after == ({"gemm"}, True, False) and status == 404


def test_failed_reload_keeps_serving_and_shows_its_reason(tmp_path) -> None:
    repo = _repo(tmp_path, "gemm")

    async def main():
        plane = DataPlane(Repository(repo), control="poll", threads=1)
        await plane.start()
        _corrupt(repo / "gemm" / "2" / "model.onnx")  # a corrupt new version
        await _settle(plane)
        failed = plane.ready(), plane.model_ready("gemm"), _rows(plane)["gemm"], await _infer(plane)
        (repo / "gemm" / "2" / "model.onnx").unlink()
        _save(gemm_model(W * 2, B), repo / "gemm" / "2" / "model.onnx")  # fixed
        await _settle(plane)
        fixed = _rows(plane)["gemm"], await _infer(plane)
        await plane.shutdown()
        return failed, fixed

    (ready, model_ready, rows, y), (rows2, y2) = _run(main())
    assert ready and model_ready
    assert [(r["version"], r["state"]) for r in rows] == [("1", "READY")]
    assert rows[0]["reason"].startswith("reload failed: ") and "gemm/2/model.onnx" in rows[0]["reason"]
    assert str(tmp_path) not in rows[0]["reason"]
    assert y.version == "1"
    np.testing.assert_allclose(y.outputs[0].data, np.ones((1, 16)) @ W + B, rtol=1e-5)
    assert [(r["version"], r["state"], r["reason"]) for r in rows2] == [("2", "READY", "")]
    assert y2.version == "2"
    np.testing.assert_allclose(y2.outputs[0].data, np.ones((1, 16)) @ (W * 2) + B, rtol=1e-5)


def test_start_up_failure_stays_not_ready_until_fixed(tmp_path) -> None:
    repo = _repo(tmp_path, "gemm")
    _corrupt(repo / "broken" / "1" / "model.onnx")

    async def main():
        plane = DataPlane(Repository(repo), control="poll", threads=1)
        await plane.start()
        before = plane.ready()
        (repo / "broken" / "1" / "model.onnx").unlink()
        _save(gemm_model(), repo / "broken" / "1" / "model.onnx")
        await _settle(plane)
        after = plane.ready(), plane.model_ready("broken")
        await plane.shutdown()
        return before, after

    assert _run(main()) == (False, (True, True))
