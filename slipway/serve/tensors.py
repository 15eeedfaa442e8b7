"""Tensor codecs of the KServe v2 protocol: datatype names, raw bytes, JSON lists, BYTES.

One table maps the protocol's datatype names to numpy dtypes and to Triton's model-config enum
(``TYPE_FP32``...). Every decoder checks sizes against the declared shape and raises a one-line
:class:`ServeError` (400) naming the tensor, so a truncated or oversized body never reaches an
engine. BYTES elements travel as 4-byte little-endian length + bytes in binary form and as
strings in JSON; BF16 uses ``ml_dtypes.bfloat16`` (numpy has no bfloat16 of its own).

A tensor's declared shape is never trusted for an allocation: :func:`check_elements` compares the
element count with ``--max-elements`` and with the bytes that actually came (a binary BYTES
element needs at least its 4-byte length, a JSON element at least one character) before anything
of that size exists. Non-finite float outputs go into JSON as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (bare ``NaN`` is not JSON; numpy, and so tritonclient's
``as_numpy``, parses the strings back); as inputs, bare ``NaN`` / ``Infinity`` are read as Python's
and rapidjson's JSON readers (and tritonclient's JSON writer) have them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

from slipway.errors import ServeError

__all__ = [
    "DATATYPES", "CONFIG_TYPES", "numpy_dtype", "datatype_of", "config_type", "datatype_from_config",
    "from_raw", "to_raw", "from_json", "to_json", "check_shape", "element_count", "count_error", "type_error",
    "check_elements", "NO_LIMIT", "shared_memory_input", "data_and_shared_memory",
]

NO_LIMIT = 1 << 62  # max_elements when the caller sets none
_CHUNK = 1 << 18  # elements converted per step of a large JSON list (the GIL is let go between steps)

# protocol name -> numpy dtype (object for BYTES)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(object),
}

# protocol name -> Triton model-config enum name (BYTES is TYPE_STRING there)
CONFIG_TYPES: dict[str, str] = {k: "TYPE_STRING" if k == "BYTES" else f"TYPE_{k}" for k in DATATYPES}
_FROM_CONFIG = {v: k for k, v in CONFIG_TYPES.items()}
_BY_DTYPE = {v: k for k, v in DATATYPES.items() if k != "BYTES"}


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise ServeError(f"unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})", 400) from None


def datatype_of(dtype: np.dtype) -> str:
    """The protocol name of a numpy dtype (object, str and bytes arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise ServeError(f"numpy dtype {dtype} has no KServe v2 datatype", 500) from None


def config_type(datatype: str) -> str:
    return CONFIG_TYPES[datatype]


def datatype_from_config(type_name: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; ``TYPE_STRING`` -> ``BYTES``."""
    try:
        return _FROM_CONFIG[type_name]
    except KeyError:
        raise ServeError(f"model config data type {type_name!r} is not supported", 400) from None


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def count_error(name: str, got: int, datatype: str, shape: Sequence[int]) -> ServeError:
    """THE message of typed data (JSON ``data``, gRPC ``*_contents``) with the wrong number of elements."""
    return ServeError(f"input {name!r}: {got} elements, expected {element_count(shape)} for {datatype} {list(shape)}",
                      400)


def type_error(name: str, datatype: str) -> ServeError:
    """THE message of typed data of the wrong kind: JSON strings for FP32, gRPC ``int_contents`` for FP32 ..."""
    kind = "strings" if datatype == "BYTES" else "booleans" if datatype == "BOOL" else "numbers"
    return ServeError(f"input {name!r}: data must hold {datatype} {kind}", 400)


_SHM_PARAMS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")


def shared_memory_input(parameters: Any) -> bool:
    """Whether an input's parameters put its data in a shared-memory region (none comes in the body)."""
    return isinstance(parameters, dict) and any(k in parameters for k in _SHM_PARAMS)


def data_and_shared_memory(name: str) -> ServeError:
    """THE message of an input that has data in the request body and names a shared-memory region too."""
    return ServeError(f"input {name!r} has data in the request and in shared memory; give one of them", 400)


def check_shape(name: str, shape: Any) -> list[int]:
    """``shape`` as a list of non-negative ints, or a 400 naming the tensor."""
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ServeError(f"input {name!r}: shape must be a list of integers, got {shape!r}", 400)
    if any(d < 0 for d in shape):
        raise ServeError(f"input {name!r}: shape {list(shape)} has a negative dimension", 400)
    return list(shape)


def check_elements(name: str, shape: Sequence[int], datatype: str, nbytes: int, per_element: int,
                   max_elements: int) -> int:
    """The element count of ``shape``, refused before any allocation when it is past ``max_elements``
    (413) or when ``nbytes`` of data cannot hold that many elements of ``per_element`` bytes at least (400)."""
    count = element_count(shape)
    if count > max_elements:
        raise ServeError(f"input {name!r}: {datatype} {list(shape)} has {count} elements, over the limit of "
                         f"{max_elements} (--max-elements)", 413)
    if count * per_element > nbytes:
        raise ServeError(f"input {name!r}: {nbytes} bytes of data cannot hold the {count} elements of {datatype} "
                         f"{list(shape)} (at least {per_element} bytes each)", 400)
    return count


# ---------------------------------------------------------------------------------------------
# binary form


def from_raw(name: str, raw: bytes | bytearray | memoryview, datatype: str, shape: Sequence[int],
             max_elements: int = NO_LIMIT) -> np.ndarray:
    """Decode one tensor's binary data; the array may share memory with ``raw`` (read-only)."""
    dtype = numpy_dtype(datatype)
    count = element_count(shape)
    if count > max_elements:
        check_elements(name, shape, datatype, len(raw), 0, max_elements)
    if datatype == "BYTES":
        return _bytes_from_raw(name, memoryview(raw), count).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise ServeError(
            f"input {name!r}: {len(raw)} bytes of data, expected {expected} for {datatype} {list(shape)}", 400
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    """The binary form of ``array`` (C order; BYTES as length-prefixed elements)."""
    if array.dtype == object or array.dtype.kind in "SU":
        parts = []
        for x in array.reshape(-1):
            b = _as_bytes(x)
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def _bytes_from_raw(name: str, view: memoryview, count: int) -> np.ndarray:
    # every element has a 4-byte length: a shape that the bytes sent cannot fill allocates no more than
    # they can (the loop below stops at the end of the data, naming where)
    out = np.empty(min(count, len(view) // 4 + 1), dtype=object)
    pos, end = 0, len(view)
    for i in range(count):
        if pos + 4 > end:
            raise ServeError(f"input {name!r}: BYTES data ends after {i} of {count} elements", 400)
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + n > end:
            raise ServeError(f"input {name!r}: BYTES element {i} says {n} bytes but only {end - pos} remain", 400)
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != end:
        raise ServeError(f"input {name!r}: {end - pos} bytes left over after {count} BYTES elements", 400)
    return out


def _as_bytes(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, (bytearray, memoryview, np.bytes_)):
        return bytes(x)
    return str(x).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# JSON form


def from_json(name: str, data: Any, datatype: str, shape: Sequence[int], max_elements: int = NO_LIMIT,
              nbytes: int = NO_LIMIT) -> np.ndarray:
    """Decode a JSON ``data`` list (flat or nested, row-major) into an array of ``shape``.

    ``nbytes``: the size of the JSON text the data came in (each element took one character at least).
    """
    dtype = numpy_dtype(datatype)
    count = element_count(shape)
    if count > max_elements or count > nbytes:
        check_elements(name, shape, datatype, nbytes, 1, max_elements)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise count_error(name, len(flat), datatype, shape)
        out = np.empty(count, dtype=object)
        for i, x in enumerate(flat):
            if not isinstance(x, (str, bytes)):
                raise type_error(name, datatype)
            out[i] = x.encode("utf-8") if isinstance(x, str) else x
        return out.reshape(shape)
    try:
        arr = _asarray(data)
        if arr.dtype.kind in "SU":  # strings, even "1.5", are not numbers (float64 would parse them)
            raise type_error(name, datatype)
        if (dtype.kind == "f" or datatype == "BF16") and arr.dtype != np.float64:
            arr = np.asarray(data, dtype=np.float64) if arr.dtype == object else arr.astype(np.float64)
    except (ValueError, TypeError):
        raise ServeError(f"input {name!r}: data is not a regular list of numbers", 400) from None
    if arr.dtype == object or arr.dtype.kind in "SUV":
        raise type_error(name, datatype)
    if arr.size != count:
        raise count_error(name, arr.size, datatype, shape)
    if datatype == "BOOL":
        if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
            raise ServeError(f"input {name!r}: BOOL data must be true/false", 400)
    elif dtype.kind in "iu":
        if arr.dtype.kind == "f" or arr.dtype == np.bool_:
            raise ServeError(f"input {name!r}: {datatype} data must be integers", 400)
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ServeError(f"input {name!r}: a value is out of range for {datatype}", 400)
    elif dtype.kind == "f" or datatype == "BF16":
        top = float(ml_dtypes.finfo(dtype).max)  # a finite number past it would silently become inf
        finite = arr[np.isfinite(arr)]
        if finite.size and (finite.min() < -top or finite.max() > top):
            raise ServeError(f"input {name!r}: a value is out of range for {datatype}", 400)
    return arr.astype(dtype).reshape(shape)


def to_json(array: np.ndarray) -> list:
    """``array`` as a flat JSON list (BYTES as UTF-8 strings, raw bytes if not UTF-8 decodable)."""
    flat = array.reshape(-1)
    if array.dtype == object or array.dtype.kind in "SU":
        out = []
        for x in flat:
            b = _as_bytes(x)
            try:
                out.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                raise ServeError("a BYTES output is not UTF-8 text; ask for it in binary form", 400) from None
        return out
    if array.dtype == ml_dtypes.bfloat16 or array.dtype == np.float16:
        flat = flat.astype(np.float32)
    out = flat.tolist()
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():  # bare NaN / Infinity is not JSON
        for i in np.flatnonzero(~np.isfinite(flat)).tolist():
            out[i] = _NON_FINITE[int(np.sign(flat[i])) if not np.isnan(flat[i]) else 0]
    return out


_NON_FINITE = {0: "NaN", 1: "Infinity", -1: "-Infinity"}


def _asarray(data: list) -> np.ndarray:
    """``np.asarray(data)`` in steps of ``_CHUNK`` rows for long lists: one C call over millions of
    elements would hold the GIL (and stall the server's event loop) for the whole conversion."""
    width = _width(data[0]) if data else 1
    if len(data) * width <= _CHUNK or len(data) == 1:
        return np.asarray(data)
    step = max(1, _CHUNK // width)
    parts = [np.asarray(data[i : i + step]) for i in range(0, len(data), step)]
    if len({p.shape[1:] for p in parts}) > 1:
        raise ValueError("ragged")
    return np.concatenate(parts)


def _width(row: Any) -> int:
    n = 1
    while isinstance(row, list) and row:
        n *= len(row)
        row = row[0]
    return n


def _flatten(data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out
