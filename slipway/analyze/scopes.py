"""Static shapes and small constant values where ONNX shape inference stops.

ONNX shape inference (:mod:`slipway.analyze.shapes`) types most of the main graph, but it
loses dims that hang on small computations over constants and shapes which its data
propagation does not follow (pads built by ``ConstantOfShape -> Concat``, Reshape targets
from ``Shape -> Slice -> Concat``, conditions ``Shape -> Gather -> Equal -> If``), and inside
If / Loop / Scan subgraphs it keeps almost none. A :class:`Scope` walks a graph node by node
instead: each node is typed by its op's own ONNX inference function, given the values of its
small constant inputs. Those values are computed on demand: ``Shape`` / ``Size`` of a value of
static shape, and any deterministic standard op whose inputs are all known constants (ONNX's
reference evaluator, for results of at most ``SMALL`` elements). Nested control flow is walked
alike, so an If whose condition became a constant takes the shapes of the branch that runs. In
the main graph (:func:`main_scope`) only the nodes inference left untyped, and every control-flow
body, are walked.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from slipway.analyze.shapes import ValueInfo, dtype_of

SMALL = 1024  # elements: constants up to this size are computed and fed to shape inference
UNKNOWN = ValueInfo(None, None)
_GRAPH = onnx.AttributeProto.GRAPH
_TENSOR = onnx.AttributeProto.TENSOR
_EXTERNAL = onnx.TensorProto.EXTERNAL
_STRING = onnx.TensorProto.STRING
_DEFAULT = ("", "ai.onnx")
_RANDOM = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
})
# A trip count at or above this is a "while" loop's placeholder (exporters write INT64_MAX), not a count.
MAX_TRIPS = 2**31
_CHANGING = "loop-carried shapes change between iterations: the body is costed at the first iteration's"


class Scope:
    """The values one graph sees: its own, typed, and through ``parent`` those of the graphs around it.

    ``children[i]`` holds the scopes of the subgraphs of the graph's ``i``-th node, by attribute
    name; ``weights`` the static info of its initializers and Constant tensors; ``improved`` (main
    graph) the If / Loop / Scan outputs the walk typed where ONNX inference could not.
    """

    def __init__(self, graph: onnx.GraphProto, types: dict[str, ValueInfo], parent: Scope | None,
                 opsets: dict[str, int], weights: dict[str, ValueInfo | None] | None = None) -> None:
        self.graph = graph
        self.types = types
        self.parent = parent
        self.opsets = opsets
        self.weights = weights if weights is not None else subgraph_weights(graph)
        self.children: dict[int, dict[str, Scope]] = {}
        self.improved: dict[str, ValueInfo] = {}
        self.notes: list[str] = []
        self._producers = {o: n for n in graph.node for o in n.output if o}
        self._index = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
        self._initializers = {t.name: t for t in graph.initializer}
        self._own = {vi.name for vi in graph.input} | set(self._initializers) | set(self._producers)
        self._values: dict[str, np.ndarray | None] = {}
        self._opset_protos = [onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]

    # ------------------------------------------------------------ lookups through the enclosing scopes

    def _owner(self, name: str) -> Scope | None:
        scope: Scope | None = self
        while scope is not None and name not in scope._own:
            scope = scope.parent
        return scope

    def type_of(self, name: str) -> ValueInfo:
        owner = self._owner(name)
        return owner.types.get(name, UNKNOWN) if owner is not None else UNKNOWN

    def weight_of(self, name: str) -> tuple[Scope, ValueInfo | None] | None:
        """(scope defining it, static info) of a weight (initializer or Constant tensor); None if not one."""
        owner = self._owner(name)
        if owner is None or name not in owner.weights:
            return None
        return owner, owner.weights[name]

    def value_of(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is a small constant the analysis can compute, else None."""
        owner = self._owner(name)
        if owner is None:
            return None
        if name not in owner._values:
            owner._values[name] = None  # a cycle reads None
            owner._values[name] = owner._compute(name)
        return owner._values[name]

    # ------------------------------------------------------------ constant values

    def _compute(self, name: str) -> np.ndarray | None:
        init = self._initializers.get(name)
        if init is not None:
            return _tensor_value(init)
        node = self._producers.get(name)
        if node is None or node.domain not in _DEFAULT:
            return None  # a graph input, or an op we cannot evaluate
        if node.op_type == "Constant":
            return constant_value(node)
        if node.op_type in ("Shape", "Size"):
            return self._shape_value(node)
        if node.op_type == "If":
            return self._branch_value(node, name)
        if node.op_type in _RANDOM or _has_graph(node):
            return None
        return self._evaluate(node, name)

    def _shape_value(self, node: onnx.NodeProto) -> np.ndarray | None:
        shape = self.type_of(node.input[0]).shape
        if shape is None:
            return None
        if node.op_type == "Size":
            return np.array(math.prod(shape), np.int64)
        start, end = _attr_int(node, "start", 0), _attr_int(node, "end", len(shape))
        return np.array(shape[start:end], np.int64)  # Python slicing clamps like ONNX does

    def _branch_value(self, node: onnx.NodeProto, name: str) -> np.ndarray | None:
        cond = self.value_of(node.input[0])
        children = self.children.get(self._index[name], {})
        if cond is None or cond.size != 1:
            return None
        branch = children.get("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
        k = list(node.output).index(name)
        if branch is None or k >= len(branch.graph.output):
            return None
        return branch.value_of(branch.graph.output[k].name)

    def _evaluate(self, node: onnx.NodeProto, name: str) -> np.ndarray | None:
        info = self.type_of(name)
        if info.numel is None or info.numel > SMALL or info.dtype == ir.DataType.STRING:
            return None
        from onnx.reference import ReferenceEvaluator  # 75 ms to import: only for models that need it

        feeds = {}
        for i in node.input:
            if i:
                value = self.value_of(i)
                if value is None:
                    return None
                feeds[i] = value
        try:
            outs = ReferenceEvaluator(node, opsets={"": self._opset("")}).run(None, feeds)
        except Exception:  # an op the reference evaluator lacks, or bad attributes: just not known
            return None
        for out, value in zip(node.output, outs, strict=False):
            if out and out != name:
                self._values.setdefault(out, np.asarray(value))
        return np.asarray(outs[list(node.output).index(name)])

    def _opset(self, domain: str) -> int:
        if domain in _DEFAULT:
            return self.opsets.get("", self.opsets.get("ai.onnx", 1))
        return self.opsets.get(domain, 1)

    # ------------------------------------------------------------ the walk

    def walk(self) -> None:
        """Type every value of this (sub)graph in node order, walking the subgraphs of its nodes too."""
        for i, node in enumerate(self.graph.node):
            outs = self.control_flow(i, node) if _has_graph(node) else self._infer(node)
            for name, info in zip(node.output, outs, strict=False):
                if name:
                    self.types[name] = info

    def _infer(self, node: onnx.NodeProto) -> list[ValueInfo]:
        unknown = [UNKNOWN] * len(node.output)
        if node.op_type == "Constant" and node.domain in _DEFAULT:
            return [constant_info(node)]
        try:
            schema = onnx.defs.get_schema(node.op_type, self._opset(node.domain), node.domain)
        except onnx.defs.SchemaError:  # an op of another domain: its outputs stay unknown
            return unknown
        types, data = {}, {}
        for name in node.input:
            if not name:
                continue
            info = self.type_of(name)
            types[name] = _type_proto(info)
            if info.numel is not None and info.numel <= SMALL:
                value = self.value_of(name)
                if value is not None:
                    data[name] = numpy_helper.from_array(value, name)
        try:
            out = onnx.shape_inference.infer_node_outputs(schema, node, types, data, opset_imports=self._opset_protos)
        except Exception:  # inference cannot type it at these inputs: unknown, not an error
            return unknown
        return [_info(out.get(o)) for o in node.output]

    def control_flow(self, i: int, node: onnx.NodeProto) -> list[ValueInfo]:
        """Walk the subgraphs of the ``i``-th node (If / Loop / Scan) and type its outputs."""
        graphs = {a.name: a.g for a in node.attribute if a.type == _GRAPH}
        op = node.op_type if node.domain in _DEFAULT else ""
        if op == "If" and {"then_branch", "else_branch"} <= graphs.keys():
            outs = self._if(i, node, graphs)
        elif op == "Loop" and "body" in graphs:
            outs = self._loop(i, node, graphs["body"])
        elif op == "Scan" and "body" in graphs and self._opset("") >= 9:
            outs = self._scan(i, node, graphs["body"])
        else:
            outs = []
        return (outs + [UNKNOWN] * len(node.output))[: len(node.output)]

    def _subgraph(self, graph: onnx.GraphProto, inputs: list[ValueInfo]) -> Scope:
        given = (inputs + [UNKNOWN] * len(graph.input))[: len(graph.input)]
        types = {vi.name: _declared(vi, info) for vi, info in zip(graph.input, given, strict=True)}
        scope = Scope(graph, types, self, self.opsets)
        for name, info in scope.weights.items():
            if info is not None and name in scope._initializers:
                types[name] = info
        scope.walk()
        return scope

    def _if(self, i: int, node: onnx.NodeProto, graphs: dict[str, onnx.GraphProto]) -> list[ValueInfo]:
        children = {attr: self._subgraph(graphs[attr], []) for attr in ("then_branch", "else_branch")}
        self.children[i] = children
        outs = {attr: [c.type_of(o.name) for o in c.graph.output] for attr, c in children.items()}
        cond = self.value_of(node.input[0]) if node.input else None
        if cond is not None and cond.size == 1:
            return outs["then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"]
        return [_merge(a, b) for a, b in zip(outs["then_branch"], outs["else_branch"], strict=False)]

    def _loop(self, i: int, node: onnx.NodeProto, graph: onnx.GraphProto) -> list[ValueInfo]:
        carried = [self.type_of(n) if n else UNKNOWN for n in node.input[2:]]
        body = self._subgraph(graph, [ValueInfo((), ir.DataType.INT64), ValueInfo((), ir.DataType.BOOL), *carried])
        self.children[i] = {"body": body}
        outs = [body.type_of(o.name) for o in graph.output][1:]
        after = (outs + [UNKNOWN] * len(carried))[: len(carried)]
        if any(None not in (a.shape, b.shape) and a.shape != b.shape for a, b in zip(carried, after, strict=True)):
            body.notes.append(_CHANGING)
        trips = trip_count(self.value_of(node.input[0]) if node.input and node.input[0] else None)
        scans = [_stacked(o, trips, 0) for o in outs[len(carried):]]
        return [_merge(a, b) for a, b in zip(carried, after, strict=True)] + scans

    def _scan(self, i: int, node: onnx.NodeProto, graph: onnx.GraphProto) -> list[ValueInfo]:
        n_states = len(node.input) - _attr_int(node, "num_scan_inputs", 0)
        states = [self.type_of(n) for n in node.input[:n_states]]
        in_axes = _attr_ints(node, "scan_input_axes")
        slices, length = [], None
        for k, name in enumerate(node.input[n_states:]):
            info = self.type_of(name)
            if not info.shape:  # unknown (or a scalar, which cannot be scanned)
                slices.append(ValueInfo(None, info.dtype))
                continue
            axis = (in_axes[k] if k < len(in_axes) else 0) % len(info.shape)
            length = info.shape[axis] if length is None else length
            slices.append(ValueInfo(info.shape[:axis] + info.shape[axis + 1:], info.dtype))
        body = self._subgraph(graph, [*states, *slices])
        self.children[i] = {"body": body}
        outs = [body.type_of(o.name) for o in graph.output]
        out_axes = _attr_ints(node, "scan_output_axes")
        scans = [_stacked(o, length, out_axes[k] if k < len(out_axes) else 0) for k, o in enumerate(outs[n_states:])]
        return [_merge(a, b) for a, b in zip(states, outs, strict=False)] + scans


def main_scope(graph: onnx.GraphProto, table: dict[str, ValueInfo], opsets: dict[str, int],
               weights: dict[str, ValueInfo | None], order: list[int]) -> Scope:
    """The main graph's scope over the types ONNX inference gave it (``table``).

    The walk visits the nodes in run ``order``: it types the subgraphs of every If / Loop / Scan,
    and the outputs of the nodes inference left without a static shape (a Reshape whose target
    shape is computed from constants and shapes, and everything after it). What it finds is
    written into ``table`` and listed in ``improved``.
    """
    scope = Scope(graph, table, None, opsets, weights)
    for i in order:
        node = graph.node[i]
        if _has_graph(node):
            outs = scope.control_flow(i, node)
        elif all(table.get(o, UNKNOWN).shape is not None for o in node.output if o):
            continue
        else:
            outs = scope._infer(node)
        for name, info in zip(node.output, outs, strict=False):
            if name and info.shape is not None and table.get(name, UNKNOWN).shape is None:
                table[name] = scope.improved[name] = info
    return scope


# ---------------------------------------------------------------- tensors and types


def subgraph_weights(graph: onnx.GraphProto) -> dict[str, ValueInfo | None]:
    """Static info of a graph's initializers and of the tensors its Constant nodes hold."""
    out: dict[str, ValueInfo | None] = {t.name: _tensor_info(t) for t in graph.initializer if t.name}
    out.update(constant_weights(graph.node))
    return out


def constant_weights(nodes) -> dict[str, ValueInfo | None]:
    """Static info of the tensors Constant nodes hold in their ``value``: weights, like initializers.

    Exporters such as paddle2onnx store every weight this way; ``slipway info`` counts them too.
    """
    out: dict[str, ValueInfo | None] = {}
    for node in nodes:
        if node.op_type != "Constant" or node.domain not in _DEFAULT or not node.output:
            continue
        for a in node.attribute:
            if a.name == "value" and a.type == _TENSOR:
                out[node.output[0]] = _tensor_info(a.t)
    return out


def _tensor_info(t: onnx.TensorProto) -> ValueInfo | None:
    try:
        return ValueInfo(tuple(t.dims), dtype_of(t.data_type))
    except ValueError:  # an element type this onnx_ir does not know
        return None


def _tensor_value(t: onnx.TensorProto) -> np.ndarray | None:
    if math.prod(t.dims) > SMALL or t.data_location == _EXTERNAL or t.data_type == _STRING:
        return None
    try:
        return numpy_helper.to_array(t)
    except Exception:  # an element type numpy cannot hold
        return None


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node when it is a small numeric tensor, else None."""
    for a in node.attribute:
        if a.name == "value" and a.type == _TENSOR:
            return _tensor_value(a.t)
        if a.name in ("value_float", "value_floats"):
            return np.array(a.f if a.name == "value_float" else list(a.floats), np.float32)
        if a.name in ("value_int", "value_ints"):
            return np.array(a.i if a.name == "value_int" else list(a.ints), np.int64)
    return None


# Constant attributes other than ``value``: (element type, list field or None for a scalar).
_CONSTANT_ATTRS = {
    "value_float": (ir.DataType.FLOAT, None), "value_floats": (ir.DataType.FLOAT, "floats"),
    "value_int": (ir.DataType.INT64, None), "value_ints": (ir.DataType.INT64, "ints"),
    "value_string": (ir.DataType.STRING, None), "value_strings": (ir.DataType.STRING, "strings"),
}


def constant_info(node: onnx.NodeProto) -> ValueInfo:
    """Shape and type of a Constant node's output, read from its attribute."""
    for a in node.attribute:
        if a.name == "value" and a.type == _TENSOR:
            return _tensor_info(a.t) or UNKNOWN
        if a.name in _CONSTANT_ATTRS:
            dtype, field = _CONSTANT_ATTRS[a.name]
            return ValueInfo(() if field is None else (len(getattr(a, field)),), dtype)
    return UNKNOWN


def trip_count(m: np.ndarray | None) -> int | None:
    """A Loop's trip count from the value of its ``M`` input; None when unknown or a "while" placeholder."""
    if m is None or m.size != 1:
        return None
    n = int(m.reshape(-1)[0])
    return n if 0 <= n < MAX_TRIPS else None


def _type_proto(info: ValueInfo) -> onnx.TypeProto:
    tp = onnx.TypeProto()
    tp.tensor_type.elem_type = int(info.dtype) if info.dtype is not None else 0
    if info.shape is not None:
        tp.tensor_type.shape.SetInParent()
        for d in info.shape:
            tp.tensor_type.shape.dim.add().dim_value = d
    return tp


def _info(tp: onnx.TypeProto | None) -> ValueInfo:
    """Static info of an inferred type: a shape only when every dim is a known size."""
    if tp is None or not tp.HasField("tensor_type"):
        return UNKNOWN
    tt = tp.tensor_type
    try:
        dtype = dtype_of(tt.elem_type) if tt.elem_type else None
    except ValueError:
        dtype = None
    if not tt.HasField("shape") or not all(d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim):
        return ValueInfo(None, dtype)
    return ValueInfo(tuple(d.dim_value for d in tt.shape.dim), dtype)


def _declared(vi: onnx.ValueInfoProto, given: ValueInfo) -> ValueInfo:
    """A subgraph input's info: what the enclosing node feeds it, else what the subgraph declares."""
    if given.shape is not None:
        return given
    declared = _info(vi.type)
    return declared if declared.shape is not None or given.dtype is None else given


def _merge(a: ValueInfo, b: ValueInfo) -> ValueInfo:
    """What a value is when it may be ``a`` or ``b``: equal infos stay, else the shape is unknown."""
    return a if a == b else ValueInfo(None, a.dtype if a.dtype == b.dtype else (a.dtype or b.dtype))


def _stacked(info: ValueInfo, length: int | None, axis: int) -> ValueInfo:
    """A scan output: ``length`` per-iteration values ``info`` stacked along ``axis``."""
    if length is None or info.shape is None:
        return ValueInfo(None, info.dtype)
    axis %= len(info.shape) + 1
    return ValueInfo((*info.shape[:axis], length, *info.shape[axis:]), info.dtype)


def _has_graph(node: onnx.NodeProto) -> bool:
    return any(a.type == _GRAPH for a in node.attribute)


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _attr_ints(node: onnx.NodeProto, name: str) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), [])
