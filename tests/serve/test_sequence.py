"""Sequence batching (serve/sequence.py): a served tracking pipeline keeps one tracker per correlation ID.

Three synthesized videos stream interleaved, over gRPC ``ModelStreamInfer`` and over HTTP, to a pipeline
model (detector -> decode -> track in one pipeline.yaml) and to the same pipeline written as a Triton
ensemble by ``to_repository`` (its detector a dynamically batched composing model, the decode + track ops
a sequence-batched one): each sequence's track ids and boxes equal a plain ``StreamTracker`` loop over the
in-process detections, and the ensemble's detector batched frames of different sequences together.
Triton's mistakes get one message over both transports; states are freed at the end and at idle timeout.
The detector is a hand-made ONNX graph (vertical-gradient energy per 8x8 cell -> a score per cell), so the
whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

import slipway.serve.grpc as grpc_adapter
from slipway.pipeline import Pipeline, Step
from slipway.pipeline.detect import detect_pipeline
from slipway.pipeline.triton import to_repository
from slipway.serve import Server
from slipway.serve.request import SequenceFlags
from slipway.serve.sequence import RECENT, Sequences, reserve, unreserve
from slipway.stream.stages import detections
from slipway.stream.synth import make_scene
from slipway.stream.track import StreamTracker
from tests.serve.conftest import _save, gemm_model

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

FRAMES = 16
SEQUENCES = (11, 12, "cam-c")  # two integer correlation IDs and a string one
SIZE = (160, 120)
OUT = ("track_boxes", "track_ids")
SEQ = "sequence_batching { max_sequence_idle_microseconds: 5000000 }\n"
TRACKER = ('backend: "slipway_pipeline"\nmax_batch_size: 0\n'
           'input [{ name: "image" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }]\n'
           'output [{ name: "track_boxes" data_type: TYPE_FP64 dims: [ -1, 4 ] },'
           ' { name: "track_ids" data_type: TYPE_INT64 dims: [ -1 ] }]\n'
           'instance_group [{ count: 2 kind: KIND_CPU }]\n')
TRACK_ONLY = ('backend: "slipway_pipeline"\nmax_batch_size: 0\n'
              'input [{ name: "boxes" data_type: TYPE_FP32 dims: [ -1, 4 ] },'
              ' { name: "scores" data_type: TYPE_FP32 dims: [ -1 ] },'
              ' { name: "class_ids" data_type: TYPE_INT64 dims: [ -1 ] }]\n'
              'output [{ name: "track_ids" data_type: TYPE_INT64 dims: [ -1 ] }]\n'
              'sequence_batching { max_sequence_idle_microseconds: 200000 }\n')


def detector(path: Path, size: int = 96, stride: int = 8) -> Path:
    """x [N, 3, size, size] -> y [N, 5, cells]: YOLOv8-style, one fixed 24-pixel box per 8x8 cell scored by the
    mean |vertical gradient| in the cell (the synthesized boxes are striped, the background smooth)."""
    g = size // stride
    cy, cx = np.mgrid[0:g, 0:g]
    boxes = np.stack([(cx.reshape(-1) + .5) * stride, (cy.reshape(-1) + .5) * stride,
                      np.full(g * g, 24.0), np.full(g * g, 24.0)]).astype(np.float32)[None]
    kern = np.zeros((1, 3, 2, 1), np.float32)
    kern[0, :, 0, 0], kern[0, :, 1, 0] = 1 / 3, -1 / 3
    nodes = [helper.make_node("Conv", ["x", "kern"], ["d"], pads=[0, 0, 1, 0]),
             helper.make_node("Abs", ["d"], ["a"]),
             helper.make_node("AveragePool", ["a"], ["p"], kernel_shape=[stride, stride], strides=[stride, stride]),
             helper.make_node("Reshape", ["p", "shape"], ["r"]),
             helper.make_node("Sub", ["r", "t"], ["s0"]), helper.make_node("Mul", ["s0", "k"], ["s1"]),
             helper.make_node("Sigmoid", ["s1"], ["score"]), helper.make_node("Mul", ["score", "zero"], ["z"]),
             helper.make_node("Add", ["boxes", "z"], ["b"]), helper.make_node("Concat", ["b", "score"], ["y"], axis=1)]
    inits = [numpy_helper.from_array(kern, "kern"), numpy_helper.from_array(np.array([0, 1, g * g], np.int64), "shape"),
             numpy_helper.from_array(np.array(0.1, np.float32), "t"),
             numpy_helper.from_array(np.array(60.0, np.float32), "k"),
             numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(boxes, "boxes")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, g * g])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    onnx.save(model, path)
    return path


def track_pipeline(det: Path) -> Pipeline:
    """detect_pipeline's steps up to decode, then the track op (its tracker kept per sequence when served)."""
    steps = [s for s in detect_pipeline(det, kind="yolo").steps if s.name != "labels"]
    steps.append(Step.op("track", "track", {"boxes": "boxes", "scores": "scores", "class_ids": "class_ids"},
                         {"boxes": "track_boxes", "ids": "track_ids"}))
    return Pipeline(steps, ["image"], list(OUT), name="tracks")


def only_track(folder: Path) -> Path:
    folder.mkdir(parents=True)
    p = Pipeline([Step.op("track", "track", {"boxes": "boxes", "scores": "scores", "class_ids": "class_ids"},
                          {"ids": "track_ids"})], ["boxes", "scores", "class_ids"], ["track_ids"])
    return p.to_file(folder / "pipeline.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seq")
    det = detector(tmp / "det.onnx")
    videos = {sid: [make_scene(frames=FRAMES, objects=4, size=SIZE, seed=k + 1).render(f) for f in range(1, FRAMES + 1)]
              for k, sid in enumerate(SEQUENCES)}
    plain = detect_pipeline(det, kind="yolo")
    expected = {}
    for sid, frames in videos.items():  # THE reference: a plain tracker loop over the in-process detections
        tracker = StreamTracker()
        expected[sid] = [tracker.update(detections(plain.run({"image": f}).outputs)) for f in frames]
    assert sum(len(t) for ts in expected.values() for t in ts) > 2 * FRAMES  # tracks to compare
    repo = to_repository(track_pipeline(det), tmp / "repo", sample={"image": videos[11][0]}, image_input="raw",
                           instances=2)
    assert "sequence_batching" in (repo / "tracks_decode" / "config.pbtxt").read_text()  # holds the track step
    with open(repo / "tracks_detector" / "config.pbtxt", "a") as f:
        f.write("dynamic_batching { max_queue_delay_microseconds: 20000 }\n")
    (repo / "tracker" / "1").mkdir(parents=True)
    shutil.copyfile(det, repo / "tracker" / "1" / "det.onnx")
    track_pipeline(repo / "tracker" / "1" / "det.onnx").to_file(repo / "tracker" / "1" / "pipeline.yaml")
    (repo / "tracker" / "config.pbtxt").write_text(TRACKER + SEQ)
    only_track(repo / "track_only" / "1")
    (repo / "track_only" / "config.pbtxt").write_text(TRACK_ONLY)
    _save(gemm_model(), repo / "plain" / "1" / "model.onnx")
    server = Server(repo, http_port=0, grpc_port=0, metrics_port=None, threads=1).start_in_thread()
    yield server, videos, expected
    server.stop_thread()


def _same(got: dict[str, np.ndarray], want) -> None:
    np.testing.assert_array_equal(got["track_ids"].reshape(-1), want.ids)
    np.testing.assert_array_equal(got["track_boxes"].reshape(-1, 4), want.boxes)


def _image(client, frame: np.ndarray):
    inp = client.InferInput("image", list(frame.shape), "UINT8")
    inp.set_data_from_numpy(frame)
    return inp


@pytest.mark.parametrize("model, offload", [("tracker", False), ("tracks", False), ("tracker", True)],
                         ids=["pipeline-model", "ensemble", "decoded-in-threads"])
def test_grpc_stream_interleaved_sequences(world, model, offload, monkeypatch) -> None:
    """``decoded-in-threads``: every request decoded off the event loop (as large frames are), so a later
    frame may finish decoding first; the stream still hands them to the model in the order they came."""
    server, videos, expected = world
    if offload:  # and the first frames decode slowest: the frames after them are ready first
        decode = grpc_adapter.decode_request

        def slow_first(request, limits=None):
            if request.id.endswith("/0"):
                time.sleep(0.05)
            return decode(request, limits)

        monkeypatch.setattr(grpc_adapter, "OFFLOAD_ELEMENTS", 0)
        monkeypatch.setattr(grpc_adapter, "decode_request", slow_first)
    before = server.plane.model_statistics("tracks_detector").model_stats[0]
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    got: dict[str, dict] = {}
    errors: list[str] = []
    done = threading.Event()

    def callback(result, error) -> None:
        if error is not None:
            errors.append(str(error))
        else:
            got[result.get_response().id] = {k: result.as_numpy(k) for k in OUT}
        if len(got) + len(errors) == FRAMES * len(SEQUENCES):
            done.set()

    c.start_stream(callback=callback)
    for f in range(FRAMES):  # frame f of every sequence, then frame f + 1: interleaved, nothing awaited
        for sid in SEQUENCES:
            c.async_stream_infer(model, [_image(grpcclient, videos[sid][f])], request_id=f"{sid}/{f}",
                                 sequence_id=sid, sequence_start=f == 0, sequence_end=f == FRAMES - 1)
    assert done.wait(60), f"{len(got)} answers"
    c.stop_stream()
    assert not errors, errors[0]
    for sid in SEQUENCES:
        for f in range(FRAMES):
            _same(got[f"{sid}/{f}"], expected[sid][f])
    assert server.plane.sequences("tracker" if model == "tracker" else "tracks_decode")["live"] == 0  # all ended
    if model == "tracks":  # the detector's dynamic batcher formed batches across the sequences
        after = server.plane.model_statistics("tracks_detector").model_stats[0]
        inferences = after.inference_count - before.inference_count
        executions = after.execution_count - before.execution_count
    
        assert inferences == FRAMES * len(SEQUENCES) and executions < inferences


@pytest.mark.parametrize("model", ["tracker", "tracks"], ids=["pipeline-model", "ensemble"])
def test_http_sequence_parameters(world, model) -> None:
    server, videos, expected = world
    c = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    for f in range(FRAMES):
        for sid in SEQUENCES:
            r = c.infer(model, [_image(httpclient, videos[sid][f])], sequence_id=sid, sequence_start=f == 0,
                        sequence_end=f == FRAMES - 1)
            _same({k: r.as_numpy(k) for k in OUT}, expected[sid][f])


# ---------------------------------------------------------------------------------------------
# mistakes: the same answer over HTTP and gRPC


def _http(server, model: str, params: dict) -> tuple[int, str]:
    body = {"inputs": [{"name": "boxes", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 9, 9]},
                       {"name": "scores", "datatype": "FP32", "shape": [1], "data": [0.9]},
                       {"name": "class_ids", "datatype": "INT64", "shape": [1], "data": [0]}],
            "parameters": params}
    if model == "plain":
        body["inputs"] = [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]
    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/models/{model}/infer",
                                 data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]


def _grpc(server, model: str, params: dict) -> tuple[str, str]:
    request = pb.ModelInferRequest(model_name=model)
    if model == "plain":
        request.inputs.add(name="x", datatype="FP32", shape=[1, 16]).contents.fp32_contents.extend([1.0] * 16)
    else:
        request.inputs.add(name="boxes", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 1, 9, 9])
        request.inputs.add(name="scores", datatype="FP32", shape=[1]).contents.fp32_contents.append(0.9)
        request.inputs.add(name="class_ids", datatype="INT64", shape=[1]).contents.int64_contents.append(0)
    for key, value in params.items():
        p = request.parameters[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = value
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details()


START = "must specify the START flag on the first request of the sequence"
NO_ID = "inference request to model 'track_only' must specify a non-zero or non-empty correlation ID"
CASES = {  # name: (setup requests, the request, message)
    "missing id": ([], {"sequence_start": True}, f"{NO_ID} (request parameter 'sequence_id' is missing)"),
    "id 0": ([], {"sequence_id": 0, "sequence_start": True}, f"{NO_ID} (sequence_id is 0)"),
    "empty id": ([], {"sequence_id": ""}, f"{NO_ID} (sequence_id is '')"),
    "no parameters": ([], {}, f"{NO_ID} (request parameter 'sequence_id' is missing)"),
    "not started": ([], {"sequence_id": "{id}"}, f"inference request for sequence {{id}} to model 'track_only' {START}"),
    "after end": ([{"sequence_id": "{id}", "sequence_start": True, "sequence_end": True}], {"sequence_id": "{id}"},
                  f"inference request for sequence {{id}} to model 'track_only' {START} (the sequence ended)"),
    "after idle": ([{"sequence_id": "{id}", "sequence_start": True}, "sleep"], {"sequence_id": "{id}"},
                   f"inference request for sequence {{id}} to model 'track_only' {START} (the sequence was idle for "
                   "over 200 ms and was released (max_sequence_idle_microseconds 200000))"),
    "start not a bool": ([], {"sequence_id": "{id}", "sequence_start": "yes"},
                         "request parameter 'sequence_start' must be true or false, got 'yes'"),
    "end not a bool": ([], {"sequence_id": "{id}", "sequence_end": 1},
                       "request parameter 'sequence_end' must be true or false, got 1"),
    "id a float": ([], {"sequence_id": 1.5}, "request parameter 'sequence_id' must be an unsigned integer or a "
                                            "string, got 1.5"),
    "id negative": ([], {"sequence_id": -4}, "request parameter 'sequence_id' must be an unsigned integer or a "
                                            "string, got -4"),
}


def _fill(params: dict, sid: int) -> dict:
    return {k: (sid if v == "{id}" else v) for k, v in params.items()}


def test_mistakes_same_over_http_and_grpc(world) -> None:
    server = world[0]
    sid = 1000
    for name, (setup, params, message) in CASES.items():
        answers = []
        for send in (_http, _grpc):
            sid += 1
            for step in setup:
                if step == "sleep":
                    time.sleep(0.45)
                else:
                    assert send(server, "track_only", _fill(step, sid))[0] in (200, "OK"), name
            answers.append(send(server, "track_only", _fill(params, sid)))
        want = message.replace("{id}", str(sid - 1)), message.replace("{id}", str(sid))
        assert answers[0] == (400, want[0]), name
        assert answers[1] == ("INVALID_ARGUMENT", want[1]), name


def test_ensemble_passes_the_flags_on(world) -> None:
    """An ensemble request's sequence parameters reach its sequence-batched composing model (as Triton's)."""
    server, videos, _ = world
    frame = videos[11][0]
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(frame.shape),
                        "data": frame.reshape(-1).tolist()}], "parameters": {"sequence_id": 77}}
    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/models/tracks/infer",
                                 data=json.dumps(body).encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=20)
    assert e.value.code == 400
    assert json.loads(e.value.read())["error"] == f"inference request for sequence 77 to model 'tracks_decode' {START}"
    assert server.plane.sequences("tracks_decode")["live"] == 0


def test_plain_model_ignores_sequence_parameters(world) -> None:
    """As Triton: a model without sequence batching ignores them (their types are still checked)."""
    server = world[0]
    params = {"sequence_id": 5, "sequence_start": False, "sequence_end": True}
    assert _http(server, "plain", params)[0] == 200
    assert _grpc(server, "plain", params)[0] == "OK"
    assert _http(server, "plain", {"sequence_start": "no"}) == (
        400, "request parameter 'sequence_start' must be true or false, got 'no'")


def test_states_freed_at_end_and_idle_timeout(world) -> None:
    server = world[0]
    registry = server.plane._version("track_only").sequences
    base = registry.statistics()
    for sid in range(5000, 5040):
        assert _http(server, "track_only", {"sequence_id": sid, "sequence_start": True})[0] == 200
    assert registry.live == 40
    for sid in range(5000, 5020):
        assert _http(server, "track_only", {"sequence_id": sid, "sequence_end": True})[0] == 200
    assert registry.live == 20
    deadline = time.monotonic() + 5
    while registry.live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.live == 0 and not registry._live
    stats = registry.statistics()
    assert stats["ended"] - base["ended"] == 20 and stats["timed_out"] - base["timed_out"] == 20
    assert len(registry._recent) <= RECENT


# ---------------------------------------------------------------------------------------------
# the registry alone


def _flags(sid, start=False, end=False) -> SequenceFlags:
    return SequenceFlags(sid, start, end)


def test_requests_of_a_sequence_run_in_arrival_order() -> None:
    async def main() -> list[str]:
        seqs = Sequences("m", 10_000_000)
        order: list[str] = []

        async def request(name: str, flags: SequenceFlags, delay: float) -> None:
            ticket = seqs.admit(flags)  # synchronous: the place is the arrival order
            try:
                await ticket.wait()
                order.append(f"{name}+")
                ticket.state["n"] = ticket.state.get("n", 0) + 1
                await asyncio.sleep(delay)
                order.append(f"{name}-")
            finally:
                ticket.release()

        await asyncio.gather(request("a1", _flags(1, start=True), 0.03), request("b1", _flags(2, start=True), 0.0),
                             request("a2", _flags(1), 0.0), request("a3", _flags(1, end=True), 0.0))
        assert seqs.live == 1  # 2 is still live, 1 ended
        seqs.close()
        return order

    order = asyncio.run(main())
    assert order.index("a1-") < order.index("a2+") < order.index("a2-") < order.index("a3+")
    assert order.index("b1-") < order.index("a1-")  # another sequence does not wait


def test_ensemble_requests_keep_their_entry_order() -> None:
    """A place is reserved when a request enters an ensemble: a later frame whose earlier steps finish first
    still reaches the stateful step after the frame before it (its composing request finds its flags and
    ticket in the context)."""
    async def main() -> list[str]:
        seqs = Sequences("m", 10_000_000)
        order: list[str] = []

        async def ensemble_request(name: str, flags: SequenceFlags, before_step: float) -> None:
            reservation, token = reserve(flags, [seqs])
            try:
                await asyncio.sleep(before_step)  # the detector etc.
                ticket = seqs.enter(None)  # the stateful composing model's request: no parameters of its own
                try:
                    await ticket.wait()
                    order.append(name)
                finally:
                    ticket.release()
            finally:
                unreserve(reservation, token)

        await asyncio.gather(asyncio.ensure_future(ensemble_request("f0", _flags(9, start=True), 0.05)),
                             asyncio.ensure_future(ensemble_request("f1", _flags(9), 0.0)),
                             asyncio.ensure_future(ensemble_request("f2", _flags(9, end=True), 0.02)))
        assert seqs.live == 0 and seqs.statistics()["ended"] == 1
        return order

    assert asyncio.run(main()) == ["f0", "f1", "f2"]


def test_restart_gives_a_fresh_state_after_the_old_requests() -> None:
    async def main() -> None:
        seqs = Sequences("m", 10_000_000)
        t1 = seqs.admit(_flags(7, start=True))
        t1.state["tracker"] = "old"
        t2 = seqs.admit(_flags(7, start=True))  # restart while t1 is queued
        assert t2.state == {} and seqs.statistics()["restarted"] == 1
        waiting = asyncio.ensure_future(t2.wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        t1.release()
        await waiting
        assert t1.state == {}  # the old sequence's state is freed with its last request
        t2.release()
        seqs.close()

    asyncio.run(main())


def test_a_cancelled_request_keeps_the_order() -> None:
    async def main() -> None:
        seqs = Sequences("m", 10_000_000)
        t1 = seqs.admit(_flags(3, start=True))
        t2 = seqs.admit(_flags(3))
        t3 = seqs.admit(_flags(3))
        t2.release()  # gave up while waiting for t1
        w3 = asyncio.ensure_future(t3.wait())
        await asyncio.sleep(0.01)
        assert not w3.done()  # still after t1
        t1.release()
        await asyncio.wait_for(w3, 1)
        t3.release()
        seqs.close()

    asyncio.run(main())


def test_many_sequences_leave_nothing_behind() -> None:
    async def main() -> None:
        seqs = Sequences("m", 20_000)  # 20 ms
        for sid in range(1, 3001):
            t = seqs.admit(_flags(sid, start=True, end=sid % 2 == 0))
            t.state["x"] = np.zeros(100)
            t.release()
        assert seqs.live == 1500
        await asyncio.sleep(0.2)
        assert seqs.live == 0 and len(seqs._recent) == RECENT
        stats = seqs.statistics()
        assert stats["ended"] == 1500 and stats["timed_out"] == 1500

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# configs


def test_configs(tmp_path) -> None:
    from slipway.errors import ServeError
    from slipway.serve.repository import Repository

    _save(gemm_model(), tmp_path / "onnx" / "1" / "model.onnx")
    (tmp_path / "onnx" / "config.pbtxt").write_text(SEQ)
    only_track(tmp_path / "ctl" / "1")
    (tmp_path / "ctl" / "config.pbtxt").write_text(
        TRACK_ONLY.replace("sequence_batching {", 'sequence_batching { control_input [{ name: "START" }]'))
    only_track(tmp_path / "ok" / "1")
    (tmp_path / "ok" / "config.pbtxt").write_text(TRACK_ONLY.replace("sequence_batching {",
                                                                     "sequence_batching { oldest { } "))
    repo = Repository(tmp_path)
    with pytest.raises(ServeError, match="sequence_batching is not supported for backend 'onnxruntime' models"):
        repo.config("onnx")
    with pytest.raises(ServeError, match="control_input is not supported"):
        repo.config("ctl")
    assert repo.config("ok").sequence_batching.HasField("oldest")


def test_stateful_pipeline_needs_sequence_batching(tmp_path) -> None:
    only_track(tmp_path / "t" / "1")
    (tmp_path / "t" / "config.pbtxt").write_text(TRACK_ONLY.replace(
        "sequence_batching { max_sequence_idle_microseconds: 200000 }\n", ""))
    server = Server(tmp_path, http_port=0, grpc_port=None, metrics_port=None, exit_on_error=False).start_in_thread()
    try:
        assert len(server.errors) == 1
        assert "step 'track' keeps state per stream; add sequence_batching" in server.errors[0]
    finally:
        server.stop_thread()
