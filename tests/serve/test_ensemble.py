"""Triton ensembles (``platform: "ensemble"``): accepted as Triton writes them, checked with one-line
errors naming the step and field, run as requests to their composing models (each keeping its own
batching and statistics), a subset of outputs running only the steps it needs, reloads of a composing
model never failing a request, and tritonclient over HTTP and gRPC to the ensemble and to each
composing model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from slipway.errors import ServeError
from slipway.serve import Server
from slipway.serve.dataplane import DataPlane
from slipway.serve.repository import Repository
from slipway.serve.types import InferRequest, InferTensor, RequestedOutput
from tests.serve.conftest import ADD_SUB_CONFIG, B, W, _save, add_sub_model, gemm_model, strings_model

# A + B and A - B by add_sub, then each through gemm (two steps that run at once): Triton's own syntax.
CHAIN = """
name: "chain"
platform: "ensemble"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "B" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "out_sum" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "out_diff" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "sum" data_type: TYPE_FP32 dims: [ 16 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "add_sub"
      model_version: -1
      input_map { key: "INPUT0" value: "A" }
      input_map { key: "INPUT1" value: "B" }
      output_map { key: "OUTPUT0" value: "sum" }
      output_map { key: "OUTPUT1" value: "diff" }
    },
    {
      model_name: "gemm"
      model_version: -1
      input_map { key: "x" value: "sum" }
      output_map { key: "y" value: "out_sum" }
    },
    {
      model_name: "gemm"
      model_version: 1
      input_map { key: "x" value: "diff" }
      output_map { key: "y" value: "out_diff" }
    }
  ]
}
"""

TEXT = """
name: "text"
platform: "ensemble"
max_batch_size: 0
input [ { name: "words" data_type: TYPE_STRING dims: [ 3 ] } ]
output [ { name: "echo" data_type: TYPE_STRING dims: [ 3 ] } ]
ensemble_scheduling { step [ { model_name: "strings" model_version: -1
  input_map { key: "text" value: "words" } output_map { key: "same" value: "echo" } } ] }
"""


def build(root: Path, chain: str = CHAIN) -> Path:
    _save(add_sub_model(), root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    _save(gemm_model(), root / "gemm" / "1" / "model.onnx")
    _save(strings_model(), root / "strings" / "1" / "model.onnx")
    for name, text in (("chain", chain), ("text", TEXT)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text)
    return root


def expected(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    return {"sum": a + b, "out_sum": (a + b) @ W + B, "out_diff": (a - b) @ W + B}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(build(tmp_path_factory.mktemp("ens")), http_port=0, grpc_port=0, metrics_port=0,
               threads=1).start_in_thread()
    yield s
    s.stop_thread()


def _inputs(module, a: np.ndarray, b: np.ndarray) -> list:
    out = []
    for name, x in (("A", a), ("B", b)):
        t = module.InferInput(name, list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        out.append(t)
    return out


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_ensemble_and_its_composing_models_over_tritonclient(server, transport) -> None:
    module = httpclient if transport == "http" else grpcclient
    port = server.http_port if transport == "http" else server.grpc_port
    client = module.InferenceServerClient(f"127.0.0.1:{port}")
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 16), dtype=np.float32), rng.standard_normal((4, 16), dtype=np.float32)
    assert client.is_model_ready("chain")
    meta = client.get_model_metadata("chain")
    platform = meta["platform"] if transport == "http" else meta.platform
    assert platform == "ensemble"
    result = client.infer("chain", _inputs(module, a, b))
    for name, want in expected(a, b).items():
        # one FP32 add then a 16-term dot product: float32 rounding of sums of 16 products of O(1) values
        np.testing.assert_allclose(result.as_numpy(name), want, rtol=1e-5, atol=1e-5)
    # each composing model answers on its own as well
    x = module.InferInput("x", [4, 16], "FP32")
    x.set_data_from_numpy(a)
    np.testing.assert_allclose(client.infer("gemm", [x]).as_numpy("y"), a @ W + B, rtol=1e-5, atol=1e-5)
    # the config comes back as Triton wrote it
    config = client.get_model_config("chain")
    steps = (config["ensemble_scheduling"]["step"] if transport == "http"
             else config.config.ensemble_scheduling.step)
    assert len(steps) == 3


def test_bytes_pass_through_an_ensemble(server) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    words = np.array([b"one", "dé".encode(), b"three"], dtype=object)
    t = httpclient.InferInput("words", [3], "BYTES")
    t.set_data_from_numpy(words)
    assert client.infer("text", [t]).as_numpy("echo").tolist() == words.tolist()


def _stats(client, name: str) -> dict:
    return client.get_inference_statistics(name)["model_stats"][0]


def test_a_subset_of_outputs_runs_only_the_steps_it_needs(server) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    a = np.ones((1, 16), np.float32)
    before = int(_stats(client, "gemm")["inference_count"])
    adds = int(_stats(client, "add_sub")["inference_count"])
    result = client.infer("chain", _inputs(httpclient, a, a), outputs=[httpclient.InferRequestedOutput("sum")])
    np.testing.assert_array_equal(result.as_numpy("sum"), a + a)
    assert result.as_numpy("out_sum") is None
    assert int(_stats(client, "gemm")["inference_count"]) == before  # neither gemm step ran
    assert int(_stats(client, "add_sub")["inference_count"]) == adds + 1
    client.infer("chain", _inputs(httpclient, a, a), outputs=[httpclient.InferRequestedOutput("out_diff")])
    assert int(_stats(client, "gemm")["inference_count"]) == before + 1  # one of the two gemm steps
    ens = _stats(client, "chain")
    assert int(ens["inference_stats"]["success"]["count"]) >= 2


def test_a_failing_step_is_named_and_the_server_keeps_serving(tmp_path) -> None:
    # the ensemble takes any width; gemm takes 16: the step's own check refuses, and says which step
    loose = CHAIN.replace('{ name: "A" data_type: TYPE_FP32 dims: [ 16 ] }',
                          '{ name: "A" data_type: TYPE_FP32 dims: [ -1 ] }')
    loose = loose.replace('{ name: "B" data_type: TYPE_FP32 dims: [ 16 ] }',
                          '{ name: "B" data_type: TYPE_FP32 dims: [ -1 ] }')
    plane = DataPlane(Repository(build(tmp_path, loose)), threads=1)

    async def go():
        assert await plane.start() == []
        bad = np.ones((1, 8), np.float32)
        request = InferRequest("chain", inputs=[InferTensor("A", "FP32", [1, 8], bad),
                                                InferTensor("B", "FP32", [1, 8], bad)])
        with pytest.raises(ServeError) as e:
            await plane.infer(request)
        good = np.ones((1, 16), np.float32)
        ok = await plane.infer(InferRequest("chain", inputs=[InferTensor("A", "FP32", [1, 16], good),
                                                             InferTensor("B", "FP32", [1, 16], good)]))
        await plane.shutdown()
        return e.value, ok

    error, ok = asyncio.run(asyncio.wait_for(go(), 60))
    assert error.status == 400
    message = str(error)
    assert message.startswith("ensemble 'chain' step 0 ('add_sub'): input 'INPUT0': shape [1, 8]"), message
    assert "\n" not in message
    assert {o.name for o in ok.outputs} == {"out_sum", "out_diff", "sum"}


BAD_CONFIGS = [
    ("step [ ]", None, "ensemble_scheduling has no step"),
    ('model_name: "gemm"\n      model_version: -1\n      input_map { key: "x" value: "sum" }',
     'model_name: "gemm"\n      model_version: -1\n      input_map { key: "x" value: "nowhere" }',
     "step 1 ('gemm') input_map 'x' reads tensor 'nowhere', which is neither an ensemble input nor any step's output"),
    ('output_map { key: "y" value: "out_diff" }', 'output_map { key: "y" value: "out_sum" }',
     "step 2 ('gemm') output_map 'y' writes tensor 'out_sum', already written by step 1 ('gemm')"),
    ('output_map { key: "OUTPUT1" value: "diff" }', 'output_map { key: "OUTPUT1" value: "diff" }\n'
     '      input_map { key: "INPUT2" value: "out_sum" }',
     "the steps hold a cycle: step 0 ('add_sub') waits for 'out_sum'"),
    ('model_version: 1', 'model_version: 0', "step 2 ('gemm') model_version 0: expected -1"),
    ('model_name: "add_sub"', 'model_name: "../etc"', "ensemble 'chain': step 0: model name '../etc' is not allowed"),
    ('platform: "ensemble"', 'platform: "ensemble"\ndynamic_batching { }',
     'Field "ensemble_scheduling" is specified along with field "dynamic_batching"'),
    ('{ name: "sum" data_type: TYPE_FP32 dims: [ 16 ] }', '{ name: "sum2" data_type: TYPE_FP32 dims: [ 16 ] }',
     "output 'sum2' is written by no step's output_map"),
]


@pytest.mark.parametrize("old,new,message", BAD_CONFIGS)
def test_bad_ensemble_configs_are_one_line_errors(tmp_path, old, new, message) -> None:
    if new is None:  # no steps at all
        text = CHAIN[:CHAIN.index("ensemble_scheduling")] + "ensemble_scheduling { }\n"
    else:
        text = CHAIN.replace(old, new, 1)
    repo = Repository(build(tmp_path, text))
    with pytest.raises(ServeError) as e:
        repo.config("chain")
    assert e.value.status == 400 and message in str(e.value) and "\n" not in str(e.value), str(e.value)


LOAD_ERRORS = [
    ('model_name: "gemm"\n      model_version: -1', 'model_name: "nope"\n      model_version: -1',
     "ensemble 'chain': composing model 'nope' did not load: unknown model 'nope'"),
    ('input_map { key: "x" value: "sum" }', 'input_map { key: "z" value: "sum" }',
     "step 1 ('gemm') input_map 'z': model 'gemm' has no such input (x)"),
    ('output_map { key: "y" value: "out_sum" }', 'output_map { key: "w" value: "out_sum" }',
     "step 1 ('gemm') output_map 'w': model 'gemm' has no such output (y)"),
    ('{ name: "A" data_type: TYPE_FP32 dims: [ 16 ] }', '{ name: "A" data_type: TYPE_FP16 dims: [ 16 ] }',
     "step 0 ('add_sub') input 'INPUT0' takes FP32 but tensor 'A' is FP16 (the ensemble input)"),
    ('{ name: "out_sum" data_type: TYPE_FP32 dims: [ 16 ] }', '{ name: "out_sum" data_type: TYPE_FP32 dims: [ 8 ] }',
     "output 'out_sum' takes shape [-1, 8] but tensor 'out_sum' has shape [-1, 16] (step 1 ('gemm') output 'y')"),
    ("max_batch_size: 8", "max_batch_size: 64", "max_batch_size 64 is over step 0 ('add_sub')'s 8"),
    ('input_map { key: "INPUT1" value: "B" }', "", "step 0 ('add_sub') does not feed input(s) 'INPUT1'"),
]


@pytest.mark.parametrize("old,new,message", LOAD_ERRORS)
def test_ensembles_that_do_not_fit_their_models_fail_to_load(tmp_path, old, new, message) -> None:
    plane = DataPlane(Repository(build(tmp_path, CHAIN.replace(old, new, 1))), threads=1)

    async def go():
        errors = await plane.start()
        index = plane.repository_index()
        await plane.shutdown()
        return errors, index

    errors, index = asyncio.run(asyncio.wait_for(go(), 60))
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], errors
    row = next(r for r in index if r["name"] == "chain")
    assert row["state"] == "UNAVAILABLE" and message in row["reason"]
    assert all(r["state"] == "READY" for r in index if r["name"] != "chain")  # the others serve


def _feed(a: np.ndarray) -> list[InferTensor]:
    return [InferTensor("A", "FP32", list(a.shape), a), InferTensor("B", "FP32", list(a.shape), a)]


def test_explicit_mode_loads_composing_models_and_survives_their_reload(tmp_path) -> None:
    plane = DataPlane(Repository(build(tmp_path)), control="explicit", models=["chain"], threads=1)
    a = np.full((2, 16), 0.5, np.float32)
    want = expected(a, a)

    async def go():
        assert await plane.start() == []
        assert {n for n, e in plane.entries.items() if e.versions} == {"chain", "add_sub", "gemm"}
        assert plane.model_ready("chain")

        async def client(n: int) -> int:
            ok = 0
            for _ in range(n):
                r = await plane.infer(InferRequest("chain", inputs=_feed(a)))
                got = {o.name: o.data for o in r.outputs}
                np.testing.assert_allclose(got["out_diff"], want["out_diff"], rtol=1e-5, atol=1e-5)
                ok += 1
            return ok

        async def reloads() -> None:
            for _ in range(3):
                await plane.load_model("gemm")  # the new version swaps in; the old one drains
                await asyncio.sleep(0.01)

        done = await asyncio.gather(client(40), client(40), reloads())
        gemm_versions = plane.entries["gemm"].versions
        # a composing model unloaded: the ensemble is not ready, and a request names the step
        await plane.unload_model("gemm")
        ready_after = plane.model_ready("chain")
        with pytest.raises(ServeError) as e:
            await plane.infer(InferRequest("chain", inputs=_feed(a), outputs=[RequestedOutput("out_sum")]))
        # the subset that needs only add_sub still answers
        r = await plane.infer(InferRequest("chain", inputs=_feed(a), outputs=[RequestedOutput("sum")]))
        await plane.unload_model("add_sub", {"unload_dependents": True})
        chain_after = bool(plane.entries["chain"].versions)
        await plane.shutdown()
        return done, gemm_versions, ready_after, e.value, r, chain_after

    done, gemm_versions, ready_after, error, r, chain_after = asyncio.run(asyncio.wait_for(go(), 120))
    assert done[:2] == [40, 40] and gemm_versions  # no request failed through three reloads
    assert not ready_after
    assert error.status == 503 and str(error).startswith("ensemble 'chain' step 1 ('gemm'): model 'gemm' is not ready")
    np.testing.assert_array_equal(r.outputs[0].data, a + a)
    assert not chain_after  # unload_dependents took the ensemble down with add_sub


def test_ensembles_of_ensembles_and_cycles(tmp_path) -> None:
    root = build(tmp_path)
    outer = """
name: "outer"
platform: "ensemble"
max_batch_size: 8
input [ { name: "P" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "Q" data_type: TYPE_FP32 dims: [ 16 ] } ]
ensemble_scheduling { step [ { model_name: "chain" model_version: -1
  input_map { key: "A" value: "P" } input_map { key: "B" value: "P" }
  output_map { key: "out_diff" value: "Q" } } ] }
"""
    (root / "outer" / "1").mkdir(parents=True)
    (root / "outer" / "config.pbtxt").write_text(outer)
    plane = DataPlane(Repository(root), control="explicit", models=["outer"], threads=1)
    p = np.full((1, 16), 2.0, np.float32)

    async def go():
        errors = await plane.start()
        r = await plane.infer(InferRequest("outer", inputs=[InferTensor("P", "FP32", [1, 16], p)]))
        await plane.shutdown()
        return errors, r

    errors, r = asyncio.run(asyncio.wait_for(go(), 60))
    assert errors == []
    np.testing.assert_allclose(r.outputs[0].data, np.zeros((1, 16), np.float32) @ W + B, rtol=1e-5, atol=1e-5)

    # a cycle through two ensembles is an error at load, not a recursion
    loop_a = outer.replace('"outer"', '"loop_a"').replace('model_name: "chain"', 'model_name: "loop_b"')
    loop_a = loop_a.replace('input_map { key: "B" value: "P" }', "").replace('key: "A"', 'key: "P"')
    loop_a = loop_a.replace('key: "out_diff"', 'key: "Q"')
    loop_b = loop_a.replace('"loop_a"', '"loop_b"', 1).replace('model_name: "loop_b"', 'model_name: "loop_a"')
    for name, text in (("loop_a", loop_a), ("loop_b", loop_b)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text)
    plane = DataPlane(Repository(root), control="explicit", models=["loop_a"], threads=1)

    async def cycle():
        errors = await plane.start()
        await plane.shutdown()
        return errors

    errors = asyncio.run(asyncio.wait_for(cycle(), 60))
    assert len(errors) == 1 and "composing model 'loop_a' calls it back (loop_a -> loop_b -> loop_a)" in errors[0]


def test_http_errors_name_the_step(server) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    t = httpclient.InferInput("A", [1, 16], "FP32")
    t.set_data_from_numpy(np.ones((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("chain", [t])  # B missing: the ensemble's own check
    assert "model 'chain': input 'B' is missing" in str(e.value)


def test_a_failing_step_beside_another_is_reported_as_itself(tmp_path) -> None:
    """Two steps run at once (the two gemm steps); one fails: its own 400, naming it, not a wrapped error."""
    plane = DataPlane(Repository(build(tmp_path)), control="explicit", models=["chain"], threads=1)
    a = np.ones((1, 16), np.float32)

    async def go():
        assert await plane.start() == []
        await plane.unload_model("gemm")  # both gemm steps now fail at once
        with pytest.raises(ServeError) as e:
            await plane.infer(InferRequest("chain", inputs=_feed(a),
                                           outputs=[RequestedOutput("out_sum"), RequestedOutput("out_diff")]))
        await plane.shutdown()
        return e.value

    error = asyncio.run(asyncio.wait_for(go(), 60))
    assert type(error) is ServeError and error.status == 503
    assert str(error).startswith("ensemble 'chain' step ") and "model 'gemm' is not ready" in str(error)
