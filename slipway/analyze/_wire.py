"""Read an ONNX file's graph without reading its weights.

``read_model_bytes(path)`` reads the file's ``onnx.ModelProto`` bytes. Large files are memory-mapped
and their protobuf bytes walked at the wire level, so that the data of every initializer over
``BIG_TENSOR_BYTES`` (the ones the analysis never reads) is dropped before parsing: the pages
holding weights are never read, and a multi-GB model costs what its graph costs. Such an
initializer keeps its name, dims, data type and external-data fields. Weights in a side file
are never loaded either. ``None`` means the fast read could not tell what the file is; the
caller then goes through :func:`slipway.model.load`, which raises the right error (and so it does
when the bytes do not parse).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable

import onnx
import onnx_ir as ir

# Initializers above this size are never read (nor fed to shape inference).
BIG_TENSOR_BYTES = 1024
# Files below this size are parsed whole: cheaper than walking them field by field.
_SKIM_FILE_BYTES = 1 << 20
# A TensorProto message this short cannot hold more than BIG_TENSOR_BYTES of data: kept as is.
_SMALL_MESSAGE = BIG_TENSOR_BYTES + 64

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_DIMS, _TENSOR_DATA_TYPE = 1, 2
# TensorProto fields holding the data: float, int32, int64, raw, double, uint64 (string_data is kept).
_TENSOR_DATA = frozenset({4, 5, 7, 9, 10, 11})
_STRING = onnx.TensorProto.STRING
_BITS: dict[int, int | None] = {}


def read_model_bytes(path: str | os.PathLike) -> bytes | None:
    """The ModelProto bytes at ``path`` without the data of its big initializers, or None to fall back."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size == 0 or f.read(1) != b"\x08":  # every ONNX writer emits ir_version (field 1) first
                return None
            if size <= _SKIM_FILE_BYTES:
                f.seek(0)
                data = f.read()
            else:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                    data = _skim_model(buf)
    except Exception:  # unreadable or malformed: slipway.model.load says what is wrong
        return None
    return data


def _skim_model(buf: mmap.mmap) -> bytes:
    """ModelProto bytes with big initializer data dropped from the graph."""
    return _rewrite(buf, 0, len(buf), _MODEL_GRAPH, _skim_graph)


def _skim_graph(buf: mmap.mmap, start: int, end: int) -> bytes | None:
    return _rewrite(buf, start, end, _GRAPH_INITIALIZER, _skim_tensor)


def _skim_tensor(buf: mmap.mmap, start: int, end: int) -> bytes | None:
    """TensorProto bytes without its data fields when it is bigger than BIG_TENSOR_BYTES; None: unchanged."""
    if end - start <= _SMALL_MESSAGE:
        return None
    dims: list[int] = []
    data_type = 0
    keep: list[tuple[int, int]] = []
    has_data = False
    for field, wire, at, body, stop in _fields(buf, start, end):
        if field in _TENSOR_DATA:
            has_data = True
            continue
        keep.append((at, stop))
        if field == _TENSOR_DIMS:
            dims += _varints(buf, body, stop) if wire == 2 else [_signed(_varint(buf, body)[0])]
        elif field == _TENSOR_DATA_TYPE and wire == 0:
            data_type = _varint(buf, body)[0]
    if not has_data or data_type == _STRING or not _is_big(dims, data_type):
        return None
    return b"".join(buf[a:b] for a, b in keep)


def tensor_nbytes(dims: list[int], data_type: int) -> int | None:
    """Bytes of a tensor of these dims and ONNX data type (sub-byte types rounded up); None if unsized."""
    bits = _BITS.get(data_type, 0)
    if bits == 0:
        try:
            bits = ir.DataType(data_type).bitwidth
        except (TypeError, ValueError):  # strings, undefined or unknown types
            bits = None
        _BITS[data_type] = bits
    if bits is None:
        return None
    n = 1
    for d in dims:
        n *= d
    return (n * bits + 7) // 8


def _is_big(dims: list[int], data_type: int) -> bool:
    nbytes = tensor_nbytes(dims, data_type)
    return nbytes is not None and nbytes > BIG_TENSOR_BYTES


def _rewrite(buf: mmap.mmap, start: int, end: int, number: int, fn: Callable) -> bytes:
    """Message bytes with its length-delimited fields ``number`` rewritten by ``fn``.

    ``fn`` returns the new bytes of a field, or None to keep it as it is. Writers emit fields
    in number order, so the walk stops at the first higher-numbered field after them: a field
    ``number`` further on is kept as it is (its data is read for nothing, but nothing is lost).
    """
    parts: list[bytes] = []
    last = start
    for field, wire, at, body, stop in _fields(buf, start, end, number):
        if field != number or wire != 2:
            continue
        inner = fn(buf, body, stop)
        if inner is None:
            continue  # unchanged: copied with its neighbours
        parts.append(buf[last:at])
        parts.append(_varint_bytes(field << 3 | 2) + _varint_bytes(len(inner)) + inner)
        last = stop
    parts.append(buf[last:end])
    return b"".join(parts)


def _fields(buf: mmap.mmap, start: int, end: int, until: int = 0) -> list[tuple[int, int, int, int, int]]:
    """(field number, wire type, tag offset, value offset, end offset) of each field in a message.

    With ``until``, the list ends before the first field numbered above ``until`` that follows
    one numbered ``until``.
    """
    out: list[tuple[int, int, int, int, int]] = []
    seen = False
    pos = start
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            body = pos + 1
        else:
            tag, body = _varint(buf, pos)
        wire = tag & 7
        if wire == 2:  # a length, inlined for the 1- and 2-byte cases
            n = buf[body]
            if n < 0x80:
                body += 1
            else:
                n2 = buf[body + 1]
                if n2 < 0x80:
                    n = (n & 0x7F) | (n2 << 7)
                    body += 2
                else:
                    n, body = _varint(buf, body)
            stop = body + n
        elif wire == 0:
            stop = body + 1
            while buf[stop - 1] >= 0x80:
                stop += 1
        elif wire == 1:
            stop = body + 8
        elif wire == 5:
            stop = body + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if stop > end:
            raise ValueError("truncated protobuf field")
        field = tag >> 3
        if until:
            if field == until:
                seen = True
            elif seen and field > until:
                break
        out.append((field, wire, pos, body, stop))
        pos = stop
    return out


def _varint(buf: mmap.mmap, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the offset after it."""
    result, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _varints(buf: mmap.mmap, pos: int, end: int) -> list[int]:
    out = []
    while pos < end:
        v, pos = _varint(buf, pos)
        out.append(_signed(v))
    return out


def _signed(v: int) -> int:
    """A varint read as int64."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
