"""Roofline math on hand numbers."""

from __future__ import annotations

import pytest

from slipway.analyze import roofline
from slipway.analyze.profile import split_weights
from slipway.analyze.types import Analysis, MachinePeaks, NodeCost

# Ridge point 100 / 10 = 10 FLOP/byte; INT8 ridge 400 / 10 = 40.
M = MachinePeaks(cpu="c", cores=1, threads=1, features={}, fp32_gflops=100.0, int8_gops=400.0, mem_bandwidth_gbs=10.0)


def node(op: str, flops: int | None, read: int, written: int, time_ms: float | None) -> NodeCost:
    return NodeCost(op.lower(), op, [], [], None if flops is None else flops // 2, flops,
                    bytes_read=read, bytes_written=written, counted=flops is not None, time_ms=time_ms)


def test_attainable_and_bound():
    assert M.ridge_point == 10.0
    assert roofline.attainable_gflops(2.0, 100.0, 10.0) == 20.0
    assert roofline.attainable_gflops(50.0, 100.0, 10.0) == 100.0
    assert roofline.bound(9.99, 10.0) == "memory"
    assert roofline.bound(10.0, 10.0) == "compute"


def test_classify_on_hand_numbers():
    # I = 1e9 / 1e8 = 10 (at the ridge): attainable 100 GFLOP/s; 1e9 FLOPs in 20 ms = 50 GFLOP/s.
    assert roofline.classify(node("Conv", 10**9, 6 * 10**7, 4 * 10**7, 20.0), M) == ("compute", pytest.approx(0.5))
    # I = 2: attainable 20 GFLOP/s; 2e8 FLOPs in 40 ms = 5 GFLOP/s.
    assert roofline.classify(node("Add", 2 * 10**8, 5 * 10**7, 5 * 10**7, 40.0), M) == ("memory", pytest.approx(0.25))
    # Zero FLOPs: the fraction is achieved bandwidth, 1e8 bytes in 20 ms = 5 GB/s of 10.
    assert roofline.classify(node("Transpose", 0, 5 * 10**7, 5 * 10**7, 20.0), M) == ("memory", pytest.approx(0.5))
    # Not counted: time is kept, no roofline.
    n = node("Custom", None, 10**6, 10**6, 3.0)
    assert roofline.classify(n, M) == (None, None)
    # No time (static): bound only.
    assert roofline.classify(node("Conv", 10**9, 10**7, 0, None), M) == ("compute", None)


def test_int8_ops_use_the_int8_roof():
    # I = 1e10 / 1e8 = 100 >= 40: compute-bound against 400 GOP/s; 1e10 ops in 50 ms = 200 GOP/s.
    q = node("MatMulInteger", 10**10, 10**8, 0, 50.0)
    assert roofline.peak_for(q, M) == 400.0
    assert roofline.classify(q, M) == ("compute", pytest.approx(0.5))
    # I = 20: compute-bound for FP32 (ridge 10) but memory-bound for INT8 (ridge 40).
    assert roofline.classify(node("QLinearConv", 2 * 10**9, 10**8, 0, None), M)[0] == "memory"
    assert roofline.classify(node("Conv", 2 * 10**9, 10**8, 0, None), M)[0] == "compute"
    no_int8 = MachinePeaks("c", 1, 1, {}, 100.0, None, 10.0)
    assert roofline.peak_for(q, no_int8) == 100.0


def test_apply_sets_every_node_and_the_machine():
    nodes = [node("Conv", 10**9, 6 * 10**7, 4 * 10**7, 20.0), node("Custom", None, 10, 10, 1.0)]
    a = Analysis("m.onnx", {"x": [1]}, nodes, 0)
    assert roofline.apply(a, M) is a and a.machine is M
    assert nodes[0].bound == "compute" and nodes[0].roofline_fraction == pytest.approx(0.5)
    assert nodes[1].bound is None and nodes[1].roofline_fraction is None and nodes[1].time_ms == 1.0


def test_fused_time_split_by_flops():
    conv = node("Conv", 2 * 10**9, 6 * 10**6, 4 * 10**6, None)
    relu = node("Relu", 10**6, 4 * 10**6, 4 * 10**6, None)
    custom = node("Custom", None, 10**7, 10**7, None)
    assert split_weights([conv, relu]) == [2e9, 1e6]
    assert split_weights([conv, relu, custom]) == [1e7, 8e6, 2e7]  # a FLOP count is missing: bytes
    assert split_weights([node("Reshape", 0, 0, 0, None)] * 2) == [1.0, 1.0]


def fused_pair(time_conv: float, time_relu: float, extra_reader: bool = False) -> Analysis:
    # Conv reads x (4 MB) + W (2 MB), writes c (4 MB); the fused Relu reads c and writes r (4 MB each).
    conv = NodeCost("conv", "Conv", ["x", "W"], ["c"], 10**9, 2 * 10**9, bytes_read=6 * 10**6,
                    bytes_written=4 * 10**6, time_ms=time_conv, ran_as=["conv_relu"])
    relu = NodeCost("relu", "Relu", ["c"], ["r"], 0, 10**6, bytes_read=4 * 10**6, bytes_written=4 * 10**6,
                    time_ms=time_relu, ran_as=["conv_relu"])
    nodes = [conv, relu]
    if extra_reader:  # c is also read outside the kernel, so it does reach memory
        nodes.append(NodeCost("other", "Sigmoid", ["c"], ["s"], 0, 10**6, bytes_read=4 * 10**6,
                              bytes_written=4 * 10**6, time_ms=1.0, ran_as=["other"]))
    return Analysis("m.onnx", {"x": [1]}, nodes, 0)


def test_fused_nodes_are_one_roofline_point():
    a = fused_pair(39.98, 0.02)
    assert list(roofline.fused_groups(a.nodes)) == ["conv_relu"]
    p = roofline.group_point("conv_relu", a.nodes, a.nodes)
    # The kernel moves x + W in and r out = 10 MB; c stays inside.
    assert (p.flops, p.bytes_moved, p.time_ms, p.members) == (2_001_000_000, 10**7, pytest.approx(40.0), 2)
    assert p.intensity == pytest.approx(200.1)
    roofline.apply(a, M)
    # 2.001e9 FLOPs in 40 ms = 50.025 GFLOP/s of min(100, 200.1 x 10) = 100.
    for n in a.nodes:
        assert n.bound == "compute" and n.roofline_fraction == pytest.approx(0.50025)
    # The Relu alone would be memory-bound (intensity 1/8) and far "above" its roof.
    assert roofline.classify(a.nodes[1], M)[0] == "memory" and roofline.classify(a.nodes[1], M)[1] > 1


def test_a_tensor_read_outside_the_kernel_counts_as_moved():
    a = fused_pair(39.98, 0.02, extra_reader=True)
    p = roofline.group_point("conv_relu", a.nodes[:2], a.nodes)
    assert p.bytes_moved == 18 * 10**6  # nothing subtracted
    pts = roofline.points(a)
    assert pts[id(a.nodes[0])] is pts[id(a.nodes[1])] and pts[id(a.nodes[2])].group is None
