"""Profiling: trace parsing, mapping executed (fused) nodes back to the ONNX nodes, real onnxruntime runs."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from slipway.analyze import analyze
from slipway.analyze.profile import (
    ENGINE_NOTE,
    REMOVED_NOTE,
    ExecutedNode,
    attribute,
    map_executed,
    parse_trace,
    profile,
    random_feeds,
)
from slipway.analyze.types import Analysis, MachinePeaks, NodeCost
from slipway.errors import UserError
from slipway.model import as_model

M = MachinePeaks(cpu="c", cores=1, threads=1, features={}, fp32_gflops=100.0, int8_gops=None, mem_bandwidth_gbs=10.0)


def cost(name: str, op: str, inputs: list[str], outputs: list[str], flops: int | None = 0, moved: int = 0) -> NodeCost:
    return NodeCost(name, op, inputs, outputs, None if flops is None else flops // 2, flops,
                    bytes_read=moved // 2, bytes_written=moved - moved // 2, counted=flops is not None)


def ex(name: str, op: str, inputs: list[str], outputs: list[str], domain: str = "") -> ExecutedNode:
    return ExecutedNode(name, op, domain, inputs, outputs)


def test_parse_trace_takes_medians_of_runs_after_warmup():
    events = [{"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50}]
    runs = ((100, 100, 200, 400), (1000, 110, 210, 500), (2000, 130, 230, 600), (3000, 900, 240, 5000))
    for start, a, b, total in runs:  # the last run is stalled: medians ignore it
        events += [
            {"cat": "Node", "name": "a_fence_before", "ts": start + 1, "dur": 0},
            {"cat": "Node", "name": "a_kernel_time", "ts": start + 2, "dur": a, "args": {"op_name": "Conv"}},
            {"cat": "Node", "name": "b/Fusion_kernel_time", "ts": start + 150, "dur": b},
            {"cat": "Session", "name": "model_run", "ts": start, "dur": total},
        ]
    kernel_ms, run_ms = parse_trace(events, warmup=1)
    assert kernel_ms == pytest.approx({"a": 0.130, "b/Fusion": 0.230})
    assert run_ms == pytest.approx([0.5, 0.6, 5.0])


def nchwc_case() -> tuple[list[NodeCost], list[ExecutedNode]]:
    original = [
        cost("conv0", "Conv", ["x", "w0", "b0"], ["c0"]),
        cost("relu0", "Relu", ["c0"], ["r0"]),
        cost("conv1", "Conv", ["r0", "w1", "b1"], ["c1"]),
        cost("conv1b", "Conv", ["r0", "w1b"], ["c1b"]),
        cost("add", "Add", ["c1", "c1b"], ["s"]),
        cost("relu1", "Relu", ["s"], ["r1"]),
        cost("gap", "GlobalAveragePool", ["r1"], ["g"]),
        cost("flat", "Flatten", ["g"], ["y"]),
    ]
    nchwc = "com.microsoft.nchwc"
    executed = [  # what onnxruntime's NCHWc transformer makes of it (names as it generates them)
        ex("ReorderInput", "ReorderInput", ["x"], ["t0"], nchwc),
        ex("r0_nchwc", "Conv", ["t0", "reorder", "b0"], ["t1"], nchwc),  # Conv + Relu
        ex("c1_nchwc", "Conv", ["t1", "reorder_token_1", "b1"], ["t2"], nchwc),
        ex("c1b_bn_nchwc", "Conv", ["t1", "reorder_token_2", "", "t2"], ["t3"], nchwc),  # Conv + Sum + Relu
        ex("g_nchwc", "GlobalAveragePool", ["t3"], ["t4"], nchwc),
        ex("ReorderOutput", "ReorderOutput", ["t4"], ["g"], nchwc),
        ex("flat", "Flatten", ["g"], ["y"]),
    ]
    return original, executed


def test_map_nchwc_fused_nodes_back_to_the_original_nodes():
    original, executed = nchwc_case()
    cover = map_executed(original, executed, {"reorder", "reorder_token_1", "reorder_token_2", "b0", "b1"})
    assert cover == {
        "ReorderInput": [],
        "r0_nchwc": ["conv0", "relu0"],
        "c1_nchwc": ["conv1"],
        "c1b_bn_nchwc": ["conv1b", "add", "relu1"],
        "g_nchwc": ["gap"],
        "ReorderOutput": [],
        "flat": ["flat"],
    }


def test_attribute_splits_fused_time_and_keeps_engine_and_folded_nodes():
    original = [
        cost("shape", "Shape", ["x"], ["sh"], 0, 16),
        cost("gather", "Gather", ["sh", "idx"], ["d"], 0, 16),
        cost("concat", "Concat", ["d", "c"], ["newshape"], 0, 32),
        cost("reshape", "Reshape", ["x", "newshape"], ["x2"], 0, 8 * 10**6),
        cost("matmul", "MatMul", ["x2", "W"], ["mm"], 2 * 10**9, 10**7),
        cost("add", "Add", ["mm", "B"], ["lin"], 10**6, 8 * 10**6),
        cost("relu", "Relu", ["lin"], ["y"], None, 8 * 10**6),
    ]
    executed = [  # constant folding turned newshape into an initializer; MatMul+Add became a Gemm
        ex("reshape", "Reshape", ["x", "newshape"], ["x2"]),
        ex("gemm_input_reshape", "Reshape", ["x2", "gemm_input_shape"], ["a"]),
        ex("matmul/MatMulAddFusion", "Gemm", ["a", "W", "B"], ["b"]),
        ex("gemm_output_reshape", "Reshape", ["b", "gemm_output_shape"], ["lin"]),
        ex("relu", "Relu", ["lin"], ["y"]),
    ]
    a = Analysis("m.onnx", {"x": [4, 4]}, original, 0)
    kernel_ms = {"reshape": 1.0, "gemm_input_reshape": 0.5, "matmul/MatMulAddFusion": 3.0,
                 "gemm_output_reshape": 0.25, "relu": 1.5}
    attribute(a, executed, kernel_ms, {"newshape", "W", "B", "gemm_input_shape", "gemm_output_shape", "x"})
    times = {n.name: n.time_ms for n in a.nodes}
    # The Gemm's 3 ms split by FLOPs, 2e9 : 1e6.
    assert times == pytest.approx({"shape": 0.0, "gather": 0.0, "concat": 0.0, "reshape": 1.0,
                                   "matmul": 3.0 * 2e9 / 2.001e9, "add": 3.0 * 1e6 / 2.001e9, "relu": 1.5})
    assert [n.ran_as for n in a.nodes] == [[], [], [], ["reshape"], ["matmul/MatMulAddFusion"],
                                           ["matmul/MatMulAddFusion"], ["relu"]]
    assert all(n.note == REMOVED_NOTE for n in a.nodes[:3])
    assert "ran as matmul/MatMulAddFusion (Gemm)" in a.nodes[4].note == a.nodes[5].note
    assert [(n.name, n.op_type, n.time_ms) for n in a.engine_nodes] == [
        ("gemm_input_reshape", "Reshape", 0.5), ("gemm_output_reshape", "Reshape", 0.25)]
    assert all(n.note.startswith(ENGINE_NOTE) and not n.counted and n.flops is None for n in a.engine_nodes)
    total = sum(n.time_ms for n in a.nodes) + sum(n.time_ms for n in a.engine_nodes)
    assert total == pytest.approx(sum(kernel_ms.values()))


def conv_relu_model(path: Path) -> Path:
    """x[N,3,32,32] -> 3 x (Conv 3x3 + Relu) -> GlobalAveragePool -> Flatten (that one unnamed)."""
    rng = np.random.default_rng(0)
    chans = [3, 16, 32, 32]
    nodes, inits, x = [], [], "x"
    for i in range(3):
        w = rng.standard_normal((chans[i + 1], chans[i], 3, 3)).astype(np.float32) * 0.2
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(chans[i + 1], np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["y"]))
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_profile_conv_relu_model(tmp_path):
    path = conv_relu_model(tmp_path / "convs.onnx")
    a = analyze(path, {"x": [2, 3, 32, 32]})
    p = profile(path, a, runs=10, warmup=2, threads=1, machine=M)
    assert a.nodes[0].time_ms is None and not a.profiled  # the input analysis is left as it was
    assert p.profiled and p.machine is M and len(p.nodes) == len(a.nodes) == 8
    assert all(n.time_ms is not None and n.time_ms > 0 for n in p.nodes), [(n.name, n.time_ms) for n in p.nodes]
    by_name = {n.name: n for n in p.nodes}
    for i in range(3):  # onnxruntime fuses each Conv+Relu into one kernel; both originals get its time
        conv, relu = by_name[f"conv{i}"], by_name[f"relu{i}"]
        ran_as = conv.note.split("ran as ")[-1]
        assert relu.note.endswith(ran_as) and "," not in ran_as
        assert conv.ran_as == relu.ran_as and len(conv.ran_as) == 1
        assert conv.time_ms / relu.time_ms == pytest.approx(conv.flops / relu.flops)  # split by FLOPs
        # One roofline point for the kernel: it reads the Conv's inputs and writes the Relu's output.
        flops, moved = conv.flops + relu.flops, conv.bytes_read + relu.bytes_written
        attainable = min(100.0, flops / moved * 10.0)
        fraction = flops / ((conv.time_ms + relu.time_ms) * 1e6) / attainable
        assert conv.roofline_fraction == pytest.approx(fraction) and relu.roofline_fraction == pytest.approx(fraction)
        assert conv.bound == relu.bound == ("memory" if flops / moved < 10.0 else "compute")
    gap = by_name["gap"]  # on its own: its own numbers
    intensity = gap.flops / (gap.bytes_read + gap.bytes_written)
    assert gap.bound == "memory" and gap.roofline_fraction == pytest.approx(
        gap.flops / (gap.time_ms * 1e6) / (intensity * 10.0))
    assert by_name["conv2"].bound == "compute"
    # Kernel times add up to the measured latency, less the executor's own overhead.
    kernels = sum(n.time_ms for n in p.nodes) + sum(n.time_ms for n in p.engine_nodes)
    assert 0.3 * p.total_time_ms < kernels <= 1.05 * p.total_time_ms
    assert all(e.time_ms > 0 and e.note.startswith(ENGINE_NOTE) for e in p.engine_nodes)
    # The latency agrees with an independent timing of a plain session (no profiler).
    plain = plain_latency_ms(path, {"x": np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)})
    assert plain / 3 < p.total_time_ms < plain * 3
    assert p.to_dict()["nodes"][0]["time_ms"] == p.nodes[0].time_ms


def plain_latency_ms(path: Path, feeds: dict) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def test_random_feeds_per_dtype_and_dynamic_shapes():
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [n + "_out"]) for n in ("f", "i", "b")], "g",
        [helper.make_tensor_value_info("f", TensorProto.FLOAT16, ["N", 5]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [3, 7]),
         helper.make_tensor_value_info("b", TensorProto.BOOL, [64])],
        [helper.make_tensor_value_info(n + "_out", t, None) for n, t in
         (("f", TensorProto.FLOAT16), ("i", TensorProto.INT64), ("b", TensorProto.BOOL))])
    m = as_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = random_feeds(m, {"f": [4, 5]})
    assert feeds["f"].dtype == np.float16 and feeds["f"].shape == (4, 5)
    assert feeds["f"].min() >= -1 and feeds["f"].max() <= 1
    assert feeds["i"].dtype == np.int64 and feeds["i"].shape == (3, 7) and set(np.unique(feeds["i"])) <= {0, 1, 2, 3}
    assert feeds["b"].dtype == np.bool_ and 0 < feeds["b"].sum() < 64
    with pytest.raises(UserError, match="--shape f="):
        random_feeds(m, {})


def test_profile_rejects_bad_options(tmp_path):
    path = conv_relu_model(tmp_path / "convs.onnx")
    a = analyze(path, {"x": [1, 3, 32, 32]})
    with pytest.raises(UserError, match="--runs"):
        profile(path, a, runs=0, machine=M)
    with pytest.raises(UserError, match="--warmup"):
        profile(path, a, warmup=-1, machine=M)
