"""The data of channel-group discovery: layouts, groups, edits, the plan, and the walk's state (union-find).

:mod:`slipway.prune.groups` fills them; :mod:`slipway.prune.surgery`, :mod:`slipway.prune.criteria` and
:mod:`slipway.prune.recover` read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx_ir as ir

__all__ = ["Segs", "Layout", "Edit", "Producer", "Group", "Plan", "Walk", "Blocked"]

Segs = tuple[tuple[int, int], ...]  # (group id, channels) side by side along the axis


@dataclass(frozen=True)
class Layout:
    """Where a value's channels lie: ``axis`` of a rank-``rank`` tensor holds ``segs`` side by side,
    each channel ``inner`` consecutive elements (``inner > 1`` after Flatten of ``[N, C, H, W]``)."""

    axis: int
    rank: int
    segs: Segs
    inner: int = 1

    @property
    def size(self) -> int:
        return sum(n for _, n in self.segs) * self.inner


@dataclass
class Edit:
    """One change surgery makes: ``kind`` "slice" (the constant at ``node.inputs[index]`` along
    ``axis`` by ``layout``), "group" (a depthwise Conv's ``group`` = its kept channels), "reshape"
    (the constant shape at ``index``: entry ``axis`` = the layout's kept size) or "split" (a Split's
    sizes: each output's kept share of ``layout``, ``parts`` segments each)."""

    kind: str
    node: int  # position in the main graph
    index: int
    axis: int
    layout: Layout
    parts: tuple[int, ...] = ()  # "split": segments of ``layout`` in each output


@dataclass
class Producer:
    node: int
    name: str  # label() for messages
    op_type: str
    weight: int  # input index of the weight
    axis: int  # the weight's output-channel axis
    output: str  # name of the value it produces (stats, activations)
    out_axis: int  # channel axis of that value


@dataclass
class Group:
    gid: int
    size: int
    producers: list[Producer] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    bn: list[tuple[int, int]] = field(default_factory=list)  # (node, segment offset) of BatchNormalization nodes
    values: list[tuple[str, int, int, int]] = field(default_factory=list)  # (value, axis, offset, inner) a weight reads
    blocks: int = 1  # a grouped Conv reads these channels: each of ``blocks`` equal runs keeps as many

    @property
    def prunable(self) -> bool:
        return not self.blocked and self.size // self.blocks > 1


@dataclass
class Plan:
    """What :func:`discover` found: groups (roots of the union-find), edits, and consumers (nodes whose
    weights lose input channels: their outputs change; recovery corrects them)."""

    groups: dict[int, Group]
    edits: list[Edit]
    parent: dict[int, int]
    consumers: list[tuple[int, str, int]]  # (node, output value, its channel axis)
    skipped: list[str] = field(default_factory=list)

    def root(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def prunable(self) -> list[Group]:
        return [g for g in self.groups.values() if g.prunable]


class Walk:
    """The state of one walk over a graph: layouts by value, groups (union-find), edits, consumers."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.nodes = list(graph)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.layouts: dict[int, Layout] = {}  # id(value) -> layout
        self.groups: dict[int, Group] = {}
        self.parent: dict[int, int] = {}
        self.edits: list[Edit] = []
        self.consumers: list[tuple[int, str, int]] = []

    # --- groups
    def new_group(self, size: int) -> int:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.groups[gid] = Group(gid, size)
        return gid

    def root(self, gid: int) -> int:
        while self.parent[gid] != gid:
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        ra, rb = min(ra, rb), max(ra, rb)
        self.parent[rb] = ra
        ga, gb = self.groups.pop(rb), self.groups[ra]
        gb.producers += ga.producers
        gb.blocked += ga.blocked
        gb.bn += ga.bn
        gb.values += ga.values
        gb.blocks = math.lcm(gb.blocks, ga.blocks)
        if gb.size % gb.blocks:
            gb.blocked.append(f"grouped convolutions split these {gb.size} channels into {gb.blocks} blocks")

    def block(self, layout: Layout, why: str) -> None:
        for gid, _ in layout.segs:
            g = self.groups[self.root(gid)]
            if why not in g.blocked:
                g.blocked.append(why)

    def get(self, value: ir.Value | None) -> Layout | None:
        return None if value is None else self.layouts.get(id(value))

    def put(self, value: ir.Value, layout: Layout) -> None:
        self.layouts[id(value)] = layout

    def edit(self, kind: str, node: ir.Node, index: int, axis: int, layout: Layout) -> None:
        self.edits.append(Edit(kind, self.index[id(node)], index, axis, layout))



class Blocked(Exception):
    """Raised by a rule: the groups of the node's channel-carrying inputs cannot be pruned, and why."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


