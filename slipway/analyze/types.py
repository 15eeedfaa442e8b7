"""Data carried between the analysis stages: static costs, machine peaks, measured times."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class NodeCost:
    """Static cost of one ONNX node at resolved shapes, plus measured time after profiling.

    ``macs``/``flops`` are None when the op has no cost formula ("not counted"); they are
    never silently zero. FLOPs count a multiply-accumulate as 2 FLOPs.
    """

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    macs: int | None
    flops: int | None
    params: int = 0
    bytes_read: int = 0  # input activations + weights
    bytes_written: int = 0
    counted: bool = True
    note: str = ""
    # Filled by profiling (slipway.analyze.profile):
    time_ms: float | None = None
    bound: str | None = None  # "memory" | "compute"
    roofline_fraction: float | None = None
    # Names of the onnxruntime nodes this node executed in (one shared name = fused with others).
    ran_as: list[str] = field(default_factory=list)

    @property
    def intensity(self) -> float | None:
        """Arithmetic intensity in FLOPs per byte moved."""
        moved = self.bytes_read + self.bytes_written
        if self.flops is None or moved == 0:
            return None
        return self.flops / moved

    def to_dict(self) -> dict:
        d = asdict(self)
        d["intensity"] = self.intensity
        return d


@dataclass
class MachinePeaks:
    """Measured peaks of this host (``slipway machine``)."""

    cpu: str
    cores: int
    threads: int
    features: dict[str, bool]
    fp32_gflops: float
    int8_gops: float | None
    mem_bandwidth_gbs: float
    measured_at: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    # How each peak was measured ("fp32", "int8", "bandwidth" -> one line), e.g. the INT8 instruction set.
    methods: dict[str, str] = field(default_factory=dict)

    @property
    def ridge_point(self) -> float:
        """FLOPs/byte at which the FP32 roofline turns from memory- to compute-bound."""
        return self.fp32_gflops / self.mem_bandwidth_gbs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ridge_point"] = self.ridge_point
        return d


@dataclass
class Analysis:
    """Result of ``slipway.analyze.analyze``: per-node costs, totals, peak activation memory."""

    model_path: str | None
    input_shapes: dict[str, list[int]]
    nodes: list[NodeCost]
    peak_activation_bytes: int
    summary: dict = field(default_factory=dict)
    machine: MachinePeaks | None = None
    profiled: bool = False
    total_time_ms: float | None = None  # measured end-to-end latency when profiled
    # Nodes onnxruntime added (layout reorders, reshapes around fused Gemms) with their measured time.
    engine_nodes: list[NodeCost] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        counted = [n for n in self.nodes if n.counted]
        return {
            "macs": sum(n.macs or 0 for n in counted),
            "flops": sum(n.flops or 0 for n in counted),
            "params": sum(n.params for n in self.nodes),
            "bytes_read": sum(n.bytes_read for n in self.nodes),
            "bytes_written": sum(n.bytes_written for n in self.nodes),
            "peak_activation_bytes": self.peak_activation_bytes,
            "nodes": len(self.nodes),
            "not_counted": sorted({n.op_type for n in self.nodes if not n.counted}),
        }

    def to_dict(self) -> dict:
        d = {
            "model": self.model_path,
            "input_shapes": self.input_shapes,
            "totals": self.totals,
            "nodes": [n.to_dict() for n in self.nodes],
        }
        if self.machine is not None:
            d["machine"] = self.machine.to_dict()
        if self.profiled:
            d["total_time_ms"] = self.total_time_ms
            d["engine_nodes"] = [n.to_dict() for n in self.engine_nodes]
        return d
