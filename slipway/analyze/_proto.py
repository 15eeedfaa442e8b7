"""A read-only view of a model's main graph for the analysis, built straight from its proto.

The analysis reads node names, op types, value names, the dims and dtypes of the
initializers and the declared shapes of a few values; deserializing the whole model to
``onnx_ir`` (and serializing it back for ONNX shape inference) costs more than the analysis
itself. :class:`ModelView` holds just that, read from an ``onnx.ModelProto``: from a path it
is read once without the big initializers' data (:mod:`slipway.analyze._wire`); an
``onnx_ir.Model`` is serialized once with its big initializers detached. Everything it
reports matches what ``onnx_ir`` would report for the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from slipway.analyze._wire import BIG_TENSOR_BYTES, read_model_bytes, tensor_nbytes
from slipway.analyze.memory import captured_values
from slipway.analyze.scopes import constant_weights
from slipway.analyze.shapes import ValueInfo, dtype_of, graph_inputs
from slipway.model import SOURCE_KEY, ModelLike, load

_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
_EXTERNAL = onnx.TensorProto.EXTERNAL
_STRING = onnx.TensorProto.STRING


class Attributes:
    """A node's attributes with ``onnx_ir``'s typed getters, each deserialized when first read."""

    __slots__ = ("_protos", "_by_name")

    def __init__(self, protos) -> None:
        self._protos = protos
        self._by_name: dict[str, onnx.AttributeProto] | None = None

    def _get(self, name: str) -> ir.Attr | None:
        if self._by_name is None:
            self._by_name = {a.name: a for a in self._protos}
        proto = self._by_name.get(name)
        return None if proto is None else ir.serde.deserialize_attribute(proto)

    def get_int(self, name: str, default=None):
        attr = self._get(name)
        return default if attr is None else attr.as_int()

    def get_float(self, name: str, default=None):
        attr = self._get(name)
        return default if attr is None else attr.as_float()

    def get_string(self, name: str, default=None):
        attr = self._get(name)
        return default if attr is None else attr.as_string()

    def get_ints(self, name: str, default=None):
        attr = self._get(name)
        return default if attr is None else attr.as_ints()


class NodeView:
    """One node of the main graph: names of its values ("" for an absent optional one)."""

    __slots__ = ("name", "op_type", "domain", "inputs", "outputs", "attributes", "has_subgraph", "captured")

    def __init__(
        self, name: str, op_type: str, domain: str, inputs: list[str], outputs: list[str], attributes: Any
    ) -> None:
        self.name = name
        self.op_type = op_type
        self.domain = domain
        self.inputs = inputs
        self.outputs = outputs
        self.attributes = attributes  # get_int / get_float / get_string / get_ints, as onnx_ir's
        self.has_subgraph = False
        self.captured: list[str] = []  # outer values its subgraphs (If/Loop/Scan bodies) read

    @classmethod
    def from_proto(cls, proto: onnx.NodeProto) -> NodeView:
        node = cls(proto.name, proto.op_type, proto.domain, list(proto.input), list(proto.output),
                   Attributes(proto.attribute))
        for a in proto.attribute:
            if a.type in _GRAPH_ATTRS:
                node.has_subgraph = True
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    node.captured += _captured(g)
        return node

    @classmethod
    def from_ir(cls, ir_node: ir.Node) -> NodeView:
        node = cls(
            ir_node.name, ir_node.op_type, ir_node.domain,
            [v.name if v is not None else "" for v in ir_node.inputs], [v.name for v in ir_node.outputs],
            ir_node.attributes,
        )
        node.has_subgraph = any(a.type in _GRAPH_ATTRS for a in ir_node.attributes.values())
        if node.has_subgraph:
            node.captured = [v.name for v in captured_values(ir_node)]
        return node


def _captured(graph: onnx.GraphProto) -> list[str]:
    """Names read anywhere inside ``graph`` (nested graphs too) that ``graph`` itself does not define."""
    own = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    own.update(o for n in graph.node for o in n.output)
    return [name for node in all_nodes(graph) for name in node.input if name and name not in own]


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    out = []
    for node in graph.node:
        out.append(node)
        for a in node.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                out += all_nodes(g)
    return out


@dataclass
class ModelView:
    """What the analysis reads of a model; see the module docstring.

    ``inputs`` are the real graph inputs (initializers excluded) with their declared shapes;
    ``weights`` maps every initializer, and every tensor a Constant node holds, to its static
    info (None: an initializer without a value); ``light`` is the model shape inference runs on (ours to change): big initializers
    are typed graph inputs; :func:`slipway.analyze.shapes.infer_static_shapes` pins its input
    dims and clears its declared shapes.
    """

    path: str | None
    opsets: dict[str, int]
    inputs: list[tuple[str, ir.Shape | None]]
    outputs: list[str]
    weights: dict[str, ValueInfo | None]
    nodes: list[NodeView]
    light: onnx.ModelProto
    # Declared (shape, dtype) of the named node outputs that the model declares at all.
    declared: Callable[[list[str]], dict[str, tuple[ir.Shape | None, ir.DataType | None]]]
    # Other values holding a constant (an onnx_ir value with a const_value): weights, not activations.
    constants: set[str] = field(default_factory=set)


def model_view(model: ModelLike) -> ModelView:
    """The view of a path, ``onnx.ModelProto`` or ``onnx_ir.Model``; raises UserError for a bad file."""
    if isinstance(model, ir.Model):
        return _from_ir(model)
    if isinstance(model, onnx.ModelProto):
        view = _from_proto(model, None, None)
        return view if view is not None else _from_ir(ir.serde.deserialize_model(model))
    data = read_model_bytes(model) if Path(model).is_file() else None
    proto = _parse(data) if data is not None else None
    view = _from_proto(proto, str(Path(model).resolve()), data) if proto is not None else None
    if view is None:  # let the loader explain what is wrong, or read what it can
        view = _from_ir(load(model, validate=False, infer_shapes=False))
    return view


def _parse(data: bytes) -> onnx.ModelProto | None:
    """The model in ``data``; None when it does not parse or has no graph."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # malformed: slipway.model.load says what is wrong
        return None
    return model if model.HasField("graph") else None


def _from_proto(model: onnx.ModelProto, path: str | None, data: bytes | None) -> ModelView | None:
    """The view of a proto; None where onnx_ir would reject the graph (a value defined twice).

    With ``data`` (the bytes ``model`` was parsed from) the proto is ours: it becomes the light
    model in place, and the declarations it loses are parsed again from ``data`` if ever needed.
    """
    g = model.graph
    if len(g.node) == 0 and not g.output and not g.input:
        return None
    nodes = [NodeView.from_proto(n) for n in g.node]
    defined = {v.name for v in g.input} | {t.name for t in g.initializer}
    count = len(defined)
    for node in nodes:
        outs = [o for o in node.outputs if o]
        defined.update(outs)
        count += len(outs)
    if count != len(defined):
        return None
    weights, small, big = _split_initializers(g.initializer)
    weights.update(constant_weights(g.node))
    outputs = {vi.name: vi for vi in g.output}
    inputs = [(vi.name, _declared_shape(vi, outputs.get(vi.name))[0]) for vi in g.input if vi.name not in weights]
    declared_graph = g if data is None else None  # an own proto loses its value_info just below
    light = _light_model(model, small, big, in_place=data is not None)

    def declared(names: list[str]) -> dict:
        return _declared_from_proto(declared_graph or _parse(data).graph, names)  # type: ignore[union-attr]

    return ModelView(
        path=path,
        opsets={o.domain: o.version for o in model.opset_import},
        inputs=inputs,
        outputs=[vi.name for vi in g.output],
        weights=weights,
        nodes=nodes,
        light=light,
        declared=declared,
    )


def _split_initializers(
    tensors,
) -> tuple[dict[str, ValueInfo | None], list[onnx.TensorProto], list[onnx.TensorProto]]:
    """Static info of every initializer, and the tensors small enough to hand to shape inference."""
    weights: dict[str, ValueInfo | None] = {}
    small, big = [], []
    for t in tensors:
        if not t.name:
            continue  # onnx_ir skips an initializer without a name
        dims = list(t.dims)
        weights[t.name] = ValueInfo(tuple(dims), dtype_of(t.data_type))
        if t.data_location == _EXTERNAL:
            nbytes = tensor_nbytes(dims, t.data_type)
        elif t.data_type == _STRING:
            nbytes = sum(len(s) for s in t.string_data)
        else:
            nbytes = tensor_nbytes(dims, t.data_type)
        (big if nbytes is None or nbytes > BIG_TENSOR_BYTES else small).append(t)
    return weights, small, big


def _light_model(
    model: onnx.ModelProto, small: list[onnx.TensorProto], big: list[onnx.TensorProto], in_place: bool
) -> onnx.ModelProto:
    """The model for shape inference: small initializers kept, big ones as typed graph inputs.

    Without value_info, and without what shape inference does not read (node metadata and doc
    strings, training info). ``in_place`` turns ``model`` itself into it; else it is a new
    proto and ``model`` is left as it is.
    """
    g = model.graph
    listed = {vi.name for vi in g.input}
    value_info = {vi.name: vi for vi in g.value_info} if big else {}
    typed = [_typed_input(t, value_info.get(t.name)) for t in big if t.name not in listed]
    if in_place:
        light, lg = model, g
        del lg.value_info[:]
        del lg.sparse_initializer[:]  # onnx_ir does not read them either
        keep = {t.name for t in small}
        for i in reversed([i for i, t in enumerate(lg.initializer) if t.name not in keep]):
            del lg.initializer[i]
        for name in ("training_info", "metadata_props", "doc_string"):
            light.ClearField(name)
    else:
        light = onnx.ModelProto(ir_version=model.ir_version)
        light.opset_import.extend(model.opset_import)
        light.functions.extend(model.functions)
        lg = light.graph
        lg.name = g.name
        lg.node.extend(g.node)
        lg.input.extend(g.input)
        lg.initializer.extend(small)
        lg.output.extend(g.output)
    lg.input.extend(typed)
    for node in lg.node:
        node.ClearField("metadata_props")
        node.ClearField("doc_string")
    return light


def _typed_input(tensor: onnx.TensorProto, declared: onnx.ValueInfoProto | None) -> onnx.ValueInfoProto:
    """A graph input standing for ``tensor``: its declared type where the model gives one, else the tensor's."""
    vi = onnx.ValueInfoProto(name=tensor.name)
    tt = vi.type.tensor_type
    known = declared.type.tensor_type if declared is not None and declared.type.HasField("tensor_type") else None
    tt.elem_type = known.elem_type if known is not None and known.elem_type else tensor.data_type
    if known is not None and len(known.shape.dim) > 0:
        tt.shape.CopyFrom(known.shape)
    else:
        tt.shape.SetInParent()
        for d in tensor.dims:
            tt.shape.dim.add().dim_value = d
    return vi


def _declared_shape(
    vi: onnx.ValueInfoProto, *overrides: onnx.ValueInfoProto | None
) -> tuple[ir.Shape | None, ir.DataType | None]:
    """(shape, dtype) onnx_ir gives a value declared by ``vi`` (later declarations override it)."""
    value = ir.Value(name=vi.name)
    for info in (vi, *overrides):
        if info is not None:
            ir.serde.deserialize_value_info_proto(info, value)
    return value.shape, value.dtype


def _declared_from_proto(graph: onnx.GraphProto, names: list[str]) -> dict:
    """Declared (shape, dtype) of node outputs: their value_info, overridden by the graph outputs'."""
    wanted = set(names)
    value_info = {vi.name: vi for vi in graph.value_info if vi.name in wanted}
    outputs = {vi.name: vi for vi in graph.output if vi.name in wanted}
    out = {}
    for name in names:
        infos = [i for i in (value_info.get(name), outputs.get(name)) if i is not None]
        if infos:
            out[name] = _declared_shape(infos[0], *infos[1:])
    return out


def _from_ir(model: ir.Model) -> ModelView:
    """The view of an ``onnx_ir`` model, which is left unchanged."""
    graph = model.graph
    light = _light_from_ir(model)
    weights: dict[str, ValueInfo | None] = {}
    for v in graph.initializers.values():
        t = v.const_value
        weights[v.name] = None if t is None else ValueInfo(tuple(int(d) for d in t.shape.numpy()), t.dtype)
    weights.update(constant_weights(light.graph.node))
    produced = {v.name: v for node in graph for v in node.outputs}
    constants = {v.name for v in (*graph.inputs, *produced.values()) if v.const_value is not None and v.name}

    def declared(names: list[str]) -> dict:
        return {n: (produced[n].shape, produced[n].dtype) for n in names if n in produced}

    return ModelView(
        path=model.meta.get(SOURCE_KEY),
        opsets=dict(model.opset_imports),
        inputs=[(v.name, v.shape) for v in graph_inputs(model)],
        outputs=[v.name for v in graph.outputs],
        weights=weights,
        nodes=[NodeView.from_ir(n) for n in graph],
        light=light,
        declared=declared,
        constants=constants,
    )


def _light_from_ir(model: ir.Model) -> onnx.ModelProto:
    """Serialize ``model`` with its large initializers turned into typed graph inputs.

    The initializers are detached only for the serialization and restored afterwards.
    """
    graph = model.graph
    order = list(graph.initializers.values())
    detached = [v for v in order if v.const_value is None or v.const_value.nbytes > BIG_TENSOR_BYTES]
    n_inputs = len(graph.inputs)
    saved = {v.name: (v.const_value, v.shape, v.dtype) for v in detached}
    try:
        for v in detached:
            if v.const_value is not None:
                v.shape = v.shape or ir.Shape(v.const_value.shape)
                v.dtype = v.dtype or v.const_value.dtype
            graph.initializers.pop(v.name)
            if v not in graph.inputs:
                graph.inputs.append(v)
        return ir.serde.serialize_model(model)
    finally:
        keep = list(graph.inputs[:n_inputs])
        graph.inputs.clear()
        graph.inputs.extend(keep)
        for v in detached:
            v.const_value, v.shape, v.dtype = saved[v.name]
        for v in list(graph.initializers.values()):
            graph.initializers.pop(v.name)
        for v in order:  # restore the original order too
            graph.initializers.add(v)
