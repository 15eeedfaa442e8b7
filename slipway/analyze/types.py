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
    # Control flow (If / Loop / Scan): the costs above include the nodes of its subgraphs.
    trip_count: int | None = None  # iterations counted for a Loop / Scan whose trip count is known
    # True when this node, or a loop inside it, runs an unknown number of times: the costs above
    # count one iteration of that loop (a lower bound), never zero.
    trip_count_unknown: bool = False
    not_counted_inside: list[str] = field(default_factory=list)  # op types in its subgraphs without a cost
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
class SubgraphCost:
    """Summed static cost of one subgraph (an If branch, a Loop or Scan body) run once.

    What the If / Loop / Scan formulas of :mod:`slipway.analyze.cost` combine. ``params``
    counts the weights the subgraph holds (its initializers and Constant tensors).
    """

    macs: int = 0
    flops: int = 0
    params: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    not_counted: list[str] = field(default_factory=list)  # op types inside without a cost
    trip_count_unknown: bool = False  # a loop inside runs an unknown number of times (counted once)
    notes: list[str] = field(default_factory=list)  # what the shape walk could not pin down

    def add(self, n: NodeCost) -> None:
        """Add one node of the subgraph (its own not-counted ops and inner loops included)."""
        if n.counted:
            self.macs += n.macs or 0
            self.flops += n.flops or 0
        else:
            self.not_counted.append(n.op_type)
        self.params += n.params
        self.bytes_read += n.bytes_read
        self.bytes_written += n.bytes_written
        self.not_counted += n.not_counted_inside
        self.trip_count_unknown |= n.trip_count_unknown


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
            "not_counted": sorted({n.op_type for n in self.nodes if not n.counted}
                                  | {op for n in self.nodes for op in n.not_counted_inside}),
            # Nodes whose costs count one iteration of a loop with an unknown trip count: the totals
            # above are then a lower bound.
            "trip_count_unknown": [n.name for n in self.nodes if n.trip_count_unknown],
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
