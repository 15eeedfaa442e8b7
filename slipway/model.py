"""Model I/O: load, validate, save (atomic, external data, > 2 GB) and summarize ONNX models.

In memory a model is an ``onnx_ir.Model``. Every function here accepts either an
``onnx_ir.Model``, an ``onnx.ModelProto`` or a path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx_ir.passes.common import CheckerPass, ShapeInferencePass

from slipway.errors import UserError, WriteError, one_line

ModelLike = ir.Model | onnx.ModelProto | str | os.PathLike

# Domains whose ops a runtime we support can execute (besides functions defined in the model).
KNOWN_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training",
    "com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental", "org.pytorch.aten",
})
MIN_OPSET = 7
# Protobuf cannot serialize a single message over 2 GiB; above this, weights go to a side file.
EXTERNAL_THRESHOLD = 1_800_000_000
SOURCE_KEY = "slipway.source_path"


def max_opset() -> int:
    """Highest default-domain opset the installed onnx understands."""
    return onnx.defs.onnx_opset_version()


def load(path: str | os.PathLike, *, validate: bool = True, infer_shapes: bool = True) -> ir.Model:
    """Load an ONNX file (external data included) into an ``onnx_ir.Model``.

    Raises :class:`UserError` with a one-line message for a missing file, a truncated or
    corrupt protobuf, a file that is not an ONNX model, an op from an unknown domain or an
    unsupported opset. With ``infer_shapes`` the values carry inferred shapes; symbolic
    dims are kept.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"model file not found: {p}")
    if p.is_dir():
        raise UserError(f"expected an ONNX file, got a directory: {p}")
    if p.stat().st_size == 0:
        raise UserError(f"{p} is empty, not an ONNX model")
    _check_not_other_format(p)
    try:
        model = ir.load(p)
    except (DecodeError, RuntimeWarning) as e:
        if not _starts_like_onnx(p):
            raise UserError(f"{p} is not an ONNX model: its bytes are not an ONNX protobuf") from None
        raise UserError(f"{p} is a truncated or corrupt ONNX file: the protobuf cannot be parsed ({one_line(e)})") from None
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{p}: cannot read external data: {one_line(e)}") from None
    except Exception as e:  # onnx_ir raises plain exceptions for malformed protos
        raise UserError(f"{p} is not a readable ONNX model: {one_line(e)}") from None
    if model.graph is None or (len(model.graph) == 0 and not model.graph.outputs and not model.graph.inputs):
        raise UserError(f"{p} is not an ONNX model: it has no graph (truncated file or another format)")
    check_external_data(model, p)
    model.meta[SOURCE_KEY] = str(p.resolve())  # also where slipway.backends finds MODEL.tune.json
    if validate:
        check(model, where=str(p))
    if infer_shapes:
        ShapeInferencePass(strict_mode=False)(model)
    return model


def _check_not_other_format(p: Path) -> None:
    head = p.open("rb").read(16)
    signatures = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"PK\x03\x04": "a zip archive (a PyTorch checkpoint or TorchScript file?)",
        b"\x80\x02": "a Python pickle",
        b"\x80\x04": "a Python pickle",
        b"\x93NUMPY": "a NumPy array",
        b"\x7fELF": "an executable",
        b"{": "a JSON/text file",
        b"<": "an XML/HTML file",
    }
    for sig, what in signatures.items():
        if head.startswith(sig):
            raise UserError(f"{p} is not an ONNX model: it looks like {what}")


def _starts_like_onnx(p: Path) -> bool:
    # Every ONNX writer emits field 1 (ir_version, a varint) first: tag byte 0x08.
    return p.open("rb").read(1) == b"\x08"


def _external_tensors(model: ir.Model) -> list[ir.ExternalTensor]:
    """Every tensor whose bytes live in a side file: initializers of every (sub)graph, and tensor
    attributes of every node, functions included."""
    tensors: list[object] = []
    nodes: list[ir.Node] = []
    for graph in model.graphs():
        tensors += [v.const_value for v in graph.initializers.values()]
        nodes += list(graph)
    for function in model.functions.values():
        nodes += list(ir.traversal.RecursiveGraphIterator(function))
    for node in nodes:
        for attr in node.attributes.values():
            if attr.is_ref():  # a function's reference to its caller's attribute: no value here
                continue
            if attr.type == ir.AttributeType.TENSOR:
                tensors.append(attr.value)
            elif attr.type == ir.AttributeType.TENSORS:
                tensors.extend(attr.value or ())
    return [t for t in tensors if isinstance(t, ir.ExternalTensor)]


def check_external_data(model: ir.Model, path: str | os.PathLike) -> None:
    """Refuse external data that lies outside the model's folder (an absolute ``location``, ``..``, or a
    symlink out of it) or that is missing or shorter than the tensors it should hold."""
    base = Path(path).resolve().parent
    for t in _external_tensors(model):
        where = f"{path}: tensor {t.name!r} has external data at {t.location!r}"
        if Path(t.location).is_absolute() or Path(t.location).drive:
            raise UserError(f"{where}: an absolute path; external data must lie in the model's folder")
        file = (base / t.location).resolve()
        if not file.is_relative_to(base):
            raise UserError(f"{where}, outside the model's folder {base}; refusing to read it")
        if not file.is_file():
            raise UserError(f"{where}, and that file does not exist")
        if (t.offset or 0) + t.nbytes > file.stat().st_size:
            raise UserError(f"{where}, and that file is too short for it (truncated?)")


def check(model: ir.Model, where: str = "model") -> None:
    """Validate opsets, op domains and structure (onnx checker with full shape checks)."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None:
        raise UserError(f"{where}: no default-domain (ai.onnx) opset is imported")
    top = max_opset()
    if opset > top:
        raise UserError(f"{where}: opset {opset} is not supported (this onnx supports up to {top})")
    if opset < MIN_OPSET:
        raise UserError(f"{where}: opset {opset} is too old (slipway supports opset {MIN_OPSET}..{top})")
    functions = {(f.domain, f.name) for f in model.functions.values()}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in KNOWN_DOMAINS and (node.domain, node.op_type) not in functions:
            raise UserError(
                f"{where}: node {node.name or '(unnamed)'!r} uses op {node.op_type!r} from unknown domain {node.domain!r}"
            )
    try:
        CheckerPass(full_check=True)(model)
    except onnx.checker.ValidationError as e:
        raise UserError(f"{where}: invalid ONNX model: {one_line(e)}") from None
    except onnx.shape_inference.InferenceError as e:
        raise UserError(f"{where}: invalid ONNX model (shape inference failed): {one_line(e)}") from None


def as_model(model: ModelLike, *, validate: bool = False, infer_shapes: bool = True) -> ir.Model:
    """Coerce a path, a ``ModelProto`` or an ``ir.Model`` to an ``ir.Model``."""
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, onnx.ModelProto):
        m = ir.serde.deserialize_model(model)
        if validate:
            check(m)
        return m
    return load(model, validate=validate, infer_shapes=infer_shapes)


WEIGHT_DTYPES = {
    ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE,
    ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4,
    ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E5M2,
}


def is_weight(tensor: ir.TensorProtocol | None) -> bool:
    """True for tensors that count as parameters: float and low-bit integer data of rank >= 1.

    int32/int64 constants (shapes, axes, indices) are not parameters, and neither are rank-0
    floats: they are op constants the exporter moved out of attributes (Clip's bounds for
    ReLU6, attention scales, epsilons) — PyTorch and onnx-tool do not count them either.
    """
    return tensor is not None and tensor.dtype in WEIGHT_DTYPES and tensor.shape is not None and len(tensor.shape) > 0


def numel(tensor: ir.TensorProtocol) -> int:
    return int(np.prod(tensor.shape.numpy())) if tensor.shape is not None and len(tensor.shape) else 1


def weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def source_path(model: ModelLike | None) -> Path | None:
    """The file a model comes from: the path itself, or where an ``ir.Model`` was loaded from."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    if isinstance(model, ir.Model) and model.meta.get(SOURCE_KEY):
        return Path(model.meta[SOURCE_KEY])
    return None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: after resolving symlinks and ``.``/``..``, or as hard links."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrite(output: str | os.PathLike, *sources: ModelLike | None) -> None:
    """Raise the one-line ``UserError`` when ``output`` is the file one of ``sources`` was read from."""
    for src in sources:
        path = source_path(src)
        if path is not None and same_file(output, path):
            raise UserError(f"refusing to overwrite the input model {output}; choose another output path")


def check_output(path: str | os.PathLike | None, *sources: ModelLike | None, what: str = "output",
                 create_dirs: bool = False) -> Path | None:
    """Refuse, before any work, an output file that cannot or must not be written.

    Refused: one of the inputs (``sources``: paths or loaded models; compared after resolving
    symlinks and ``.``/``..``), a directory, and (unless ``create_dirs``, which the Python API uses
    so that a script may write into a new folder) a file in a directory that does not exist or is
    not writable. Every command that writes a file calls this; ``None`` passes.
    """
    if path is None:
        return None
    out = Path(path)
    refuse_overwrite(out, *sources)
    if out.is_dir():
        raise UserError(f"{what} path is a directory: {out}")
    if create_dirs:
        return out
    parent = out.parent
    if not parent.exists():
        raise UserError(f"the directory {parent} does not exist (for the {what} {out}); create it first")
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: the directory {parent} is not writable")
    return out


def _write_error(out: Path, e: OSError) -> WriteError:
    reason = e.strerror or one_line(e)
    return WriteError(f"cannot write {out}: {reason}")


def _make_parent(out: Path) -> None:
    """The folder ``out`` goes in, created if missing (the Python API); a failure is a one-line error."""
    if out.parent.exists() and not out.parent.is_dir():
        raise WriteError(f"cannot write {out}: {out.parent} is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(out, e) from None


def save(
    model: ModelLike,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model atomically.

    Weights go to ``<name>.data`` beside the model when ``external_data`` is true, or when it
    is ``None`` and the weights are too big for one protobuf (> ~1.8 GB). The file the model
    was loaded from is refused unless ``overwrite=True``. Files appear under their final
    names only once fully written; after a failure nothing is left behind. A failed write
    (read-only folder, full disk) is a one-line ``UserError`` naming the path.
    """
    m = as_model(model)
    out = Path(path)
    if not overwrite:
        refuse_overwrite(out, m)
    if out.is_dir():
        raise UserError(f"output path is a directory: {out}")
    if external_data is None:
        external_data = weight_bytes(m) > EXTERNAL_THRESHOLD
    data_name = out.name + ".data" if external_data else None
    if not external_data:
        # Weights loaded lazily from another file must travel inside the new one.
        ir.external_data.load_to_model(m)
    _make_parent(out)
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=".slipway-tmp-", dir=out.parent))
    except OSError as e:
        raise _write_error(out, e) from None
    try:
        ir.save(m, tmpdir / out.name, external_data=data_name)
        if data_name and (tmpdir / data_name).exists():
            os.replace(tmpdir / data_name, out.parent / data_name)
        os.replace(tmpdir / out.name, out)
    except OSError as e:
        raise _write_error(out, e) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file so that it appears complete or not at all (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a file so that it appears complete or not at all; a failed write (read-only folder,
    full disk) is a one-line ``UserError`` naming the path."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"output path is a directory: {out}")
    _make_parent(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".slipway-tmp-", dir=out.parent)
    except OSError as e:
        raise _write_error(out, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask like open() does
        os.replace(tmp, out)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(out, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def dims(value: ir.Value) -> list[int | str | None]:
    """A value's shape as a list: ints for static dims, names for symbolic ones, None if unknown."""
    if value.shape is None:
        return []
    out: list[int | str | None] = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d)
        else:
            out.append(d.value)  # SymbolicDim: name or None
    return out


def dtype_name(value: ir.Value) -> str:
    return value.dtype.name.lower() if value.dtype is not None else "unknown"


def _subgraphs(graph: ir.Graph) -> list[ir.Graph]:
    """Every graph nested in ``graph``'s nodes (If branches, Loop and Scan bodies), recursively."""
    out: list[ir.Graph] = []
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                out.append(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                out.extend(attr.value)
    return out


def summary(model: ModelLike) -> dict:
    """Inputs/outputs, opsets, op histogram, parameter count and bytes, file size."""
    m = as_model(model)
    params = 0
    pbytes = 0
    tensors = [v.const_value for g in (m.graph, *_subgraphs(m.graph)) for v in g.initializers.values()]
    # Constant nodes carry weights too in some exporters, in subgraphs (If / Loop bodies) as well.
    tensors += [n.attributes["value"].value for n in ir.traversal.RecursiveGraphIterator(m.graph)
                if n.op_type == "Constant" and n.domain == "" and "value" in n.attributes]
    for t in tensors:
        if is_weight(t):
            params += numel(t)
            pbytes += t.nbytes
    hist = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                   for n in ir.traversal.RecursiveGraphIterator(m.graph))
    source = m.meta.get(SOURCE_KEY)
    file_size = None
    if source and Path(source).exists():
        file_size = Path(source).stat().st_size
        data = [t for t in _external_files(m, Path(source).parent)]
        file_size += sum(f.stat().st_size for f in data)
    return {
        "path": source,
        "ir_version": m.ir_version,
        "producer": " ".join(x for x in (m.producer_name, m.producer_version) if x),
        "opsets": {(k or "ai.onnx"): v for k, v in sorted(m.opset_imports.items())},
        "inputs": [{"name": v.name, "dtype": dtype_name(v), "shape": dims(v)} for v in m.graph.inputs
                   if v.name not in m.graph.initializers],
        "outputs": [{"name": v.name, "dtype": dtype_name(v), "shape": dims(v)} for v in m.graph.outputs],
        "nodes": sum(hist.values()),
        "op_histogram": dict(hist.most_common()),
        "params": params,
        "param_bytes": pbytes,
        "file_bytes": file_size,
        "metadata": {k: v for k, v in m.metadata_props.items()},
    }


def _external_files(m: ir.Model, base: Path) -> set[Path]:
    files = set()
    for v in m.graph.initializers.values():
        t = v.const_value
        if isinstance(t, ir.ExternalTensor):
            files.add((base / t.location).resolve())
    return {f for f in files if f.exists()}
