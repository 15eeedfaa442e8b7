"""Roofline model: attainable throughput, memory/compute bound, achieved fraction of the roof.

attainable(I) = min(peak, I x bandwidth) for arithmetic intensity I (FLOPs per byte moved);
a node is memory-bound when I is below the ridge point peak / bandwidth, else compute-bound;
its roofline fraction is achieved FLOP/s divided by attainable(I). For nodes that move bytes
but do no arithmetic (Transpose, Concat, ...) the fraction is achieved bandwidth / bandwidth,
which is the same quantity in the limit I -> 0.
"""

from __future__ import annotations

from slipway.analyze.types import Analysis, MachinePeaks, NodeCost

# Ops that onnxruntime runs as integer (int8/uint8) kernels: their roof is the INT8 peak.
INT8_OPS = {
    "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QGemm", "QAttention", "QLinearAdd", "QLinearMul",
}


def attainable_gflops(intensity: float, peak_gflops: float, bandwidth_gbs: float) -> float:
    """Attainable GFLOP/s at ``intensity`` FLOPs/byte: min(peak, intensity x bandwidth)."""
    return min(peak_gflops, intensity * bandwidth_gbs)


def bound(intensity: float, ridge_point: float) -> str:
    """"memory" below the ridge point, "compute" at or above it."""
    return "memory" if intensity < ridge_point else "compute"


def peak_for(node: NodeCost, machine: MachinePeaks) -> float:
    """The compute roof that applies to a node: INT8 for integer kernels when measured, else FP32."""
    if node.op_type.split("::")[-1] in INT8_OPS and machine.int8_gops:
        return machine.int8_gops
    return machine.fp32_gflops


def achieved_gflops(node: NodeCost) -> float | None:
    """Measured GFLOP/s of a node (None without a time or a FLOP count)."""
    if node.flops is None or not node.time_ms:
        return None
    return node.flops / (node.time_ms * 1e-3) / 1e9


def achieved_gbs(node: NodeCost) -> float | None:
    """Measured GB/s of a node's reads plus writes (None without a time)."""
    moved = node.bytes_read + node.bytes_written
    if not node.time_ms or moved == 0:
        return None
    return moved / (node.time_ms * 1e-3) / 1e9


def classify(node: NodeCost, machine: MachinePeaks) -> tuple[str | None, float | None]:
    """(bound, roofline fraction) of one node; (None, None) when its FLOPs are not counted."""
    intensity = node.intensity
    if intensity is None:
        return None, None
    peak = peak_for(node, machine)
    where = bound(intensity, peak / machine.mem_bandwidth_gbs)
    if not node.time_ms:
        return where, None
    if intensity == 0:
        gbs = achieved_gbs(node)
        return where, None if gbs is None else gbs / machine.mem_bandwidth_gbs
    achieved = achieved_gflops(node)
    return where, achieved / attainable_gflops(intensity, peak, machine.mem_bandwidth_gbs)


def apply(analysis: Analysis, machine: MachinePeaks) -> Analysis:
    """Set ``bound`` and ``roofline_fraction`` on every node against ``machine``; returns ``analysis``."""
    analysis.machine = machine
    for node in analysis.nodes:
        node.bound, node.roofline_fraction = classify(node, machine)
    return analysis
