"""Roofline model: attainable throughput, memory/compute bound, achieved fraction of the roof.

attainable(I) = min(peak, I x bandwidth) for arithmetic intensity I (FLOPs per byte moved);
a node is memory-bound when I is below the ridge point peak / bandwidth, else compute-bound;
its roofline fraction is achieved FLOP/s divided by attainable(I). For nodes that move bytes
but do no arithmetic (Transpose, Concat, ...) the fraction is achieved bandwidth / bandwidth,
which is the same quantity in the limit I -> 0.

Nodes the engine fused into one kernel (Conv + Relu, Conv + Add + Relu) are one point on the
roofline: the group's FLOPs over the bytes it moves to and from memory (its inner tensors
never reach memory), at the kernel's measured time. Each member gets the group's bound and
fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

from slipway.analyze.types import Analysis, MachinePeaks, NodeCost

# Ops that onnxruntime runs as integer (int8/uint8) kernels: their roof is the INT8 peak.
INT8_OPS = {
    "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QGemm", "QAttention", "QLinearAdd", "QLinearMul",
}


@dataclass
class Point:
    """A node's place on the roofline: intensity (FLOP/B), FLOPs, bytes, time (ms), fused group."""

    intensity: float | None
    flops: int | None
    bytes_moved: int
    time_ms: float | None
    group: str | None = None  # the engine kernel when fused with other nodes
    members: int = 1


def attainable_gflops(intensity: float, peak_gflops: float, bandwidth_gbs: float) -> float:
    """Attainable GFLOP/s at ``intensity`` FLOPs/byte: min(peak, intensity x bandwidth)."""
    return min(peak_gflops, intensity * bandwidth_gbs)


def bound(intensity: float, ridge_point: float) -> str:
    """"memory" below the ridge point, "compute" at or above it."""
    return "memory" if intensity < ridge_point else "compute"


def is_int8(node: NodeCost) -> bool:
    return node.op_type.split("::")[-1] in INT8_OPS


def peak_for(node: NodeCost, machine: MachinePeaks) -> float:
    """The compute roof that applies to a node: INT8 for integer kernels when measured, else FP32."""
    if is_int8(node) and machine.int8_gops:
        return machine.int8_gops
    return machine.fp32_gflops


def achieved_gflops(node: NodeCost) -> float | None:
    """Measured GFLOP/s of a node (None without a time or a FLOP count)."""
    if node.flops is None or not node.time_ms:
        return None
    return node.flops / (node.time_ms * 1e-3) / 1e9


def classify_point(p: Point, peak: float, bandwidth: float) -> tuple[str | None, float | None]:
    """(bound, roofline fraction) of a point; (None, None) without counted FLOPs or bytes."""
    if p.intensity is None:
        return None, None
    where = bound(p.intensity, peak / bandwidth)
    if not p.time_ms:
        return where, None
    seconds = p.time_ms * 1e-3
    if p.intensity == 0:
        return where, p.bytes_moved / seconds / 1e9 / bandwidth
    return where, p.flops / seconds / 1e9 / attainable_gflops(p.intensity, peak, bandwidth)


def classify(node: NodeCost, machine: MachinePeaks) -> tuple[str | None, float | None]:
    """(bound, roofline fraction) of one node on its own."""
    return classify_point(node_point(node), peak_for(node, machine), machine.mem_bandwidth_gbs)


def node_point(node: NodeCost) -> Point:
    moved = node.bytes_read + node.bytes_written
    return Point(node.intensity, node.flops, moved, node.time_ms)


def fused_groups(nodes: list[NodeCost]) -> dict[str, list[NodeCost]]:
    """Engine kernel name -> the original nodes it ran, for kernels that ran two or more nodes entirely."""
    groups: dict[str, list[NodeCost]] = {}
    for n in nodes:
        if len(n.ran_as) == 1:
            groups.setdefault(n.ran_as[0], []).append(n)
    return {k: v for k, v in groups.items() if len(v) > 1}


def group_point(name: str, members: list[NodeCost], all_nodes: list[NodeCost]) -> Point:
    """One roofline point for a fused kernel: its FLOPs over the bytes it moves to and from memory.

    A member's output read only by other members stays inside the kernel: its write and those
    reads are taken off the members' byte counts.
    """
    inside = {id(n) for n in members}
    readers: dict[str, list[NodeCost]] = {}
    for n in all_nodes:
        for t in set(n.inputs):
            if t:
                readers.setdefault(t, []).append(n)
    moved = sum(n.bytes_read + n.bytes_written for n in members)
    for n in members:
        outs = [t for t in n.outputs if t]
        for t in outs:
            users = readers.get(t, [])
            if users and all(id(u) in inside for u in users):
                moved -= (n.bytes_written // len(outs)) * (1 + len(users))
    moved = max(moved, 0)
    flops = None if any(n.flops is None for n in members) else sum(n.flops for n in members)
    time_ms = sum(n.time_ms or 0.0 for n in members) or None
    intensity = None if flops is None or moved == 0 else flops / moved
    return Point(intensity, flops, moved, time_ms, group=name, members=len(members))


def points(analysis: Analysis) -> dict[int, Point]:
    """``id(node)`` -> its roofline point: the fused kernel's point for fused nodes, else its own."""
    out = {id(n): node_point(n) for n in analysis.nodes}
    for name, members in fused_groups(analysis.nodes).items():
        p = group_point(name, members, analysis.nodes)
        for n in members:
            out[id(n)] = p
    return out


def apply(analysis: Analysis, machine: MachinePeaks) -> Analysis:
    """Set ``bound`` and ``roofline_fraction`` on every node against ``machine``; returns ``analysis``."""
    analysis.machine = machine
    pts = points(analysis)
    for node in analysis.nodes:
        node.bound, node.roofline_fraction = classify_point(pts[id(node)], peak_for(node, machine),
                                                            machine.mem_bandwidth_gbs)
    return analysis
