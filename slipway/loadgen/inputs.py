"""What ``slipway perf`` sends: the model as the server declares it, and a pool of input sets.

Shapes follow perf_analyzer: for a batching model (``max_batch_size`` > 0) ``--shape NAME:DIMS``
gives the dims after the batch dim and ``batch`` the batch; a dynamic dim (-1) must be given.
Inputs (a pool of different sets, cycled by the requests):

* random: floats uniform in [0, 1), 8-bit integers over their whole range, wider integers in
  [0, 100), booleans a fair coin, BYTES random ASCII strings of ``string_length``;
* ``.npz``: arrays by input name (``NAME``, or ``in:NAME``), axis 0 a pool of samples (each request
  takes ``batch`` of them);
* JSON (perf_analyzer's form): ``{"data": [{"NAME": [flat values] | {"content": [...], "shape": [...]}}, ...]}``,
  one entry per request;
* image files (a file or a folder of .jpg / .png / ...): for a model with one BYTES input, each
  file's bytes are one element (the encoded image a pipeline decodes).

Expected outputs (``--validate``, :func:`expected_outputs`), one :class:`Expected` per pool entry: the
.npz's ``out:NAME`` arrays (the same rows as the inputs), or the JSON's ``validation_data`` (perf_analyzer's
form, the same structure and length as ``data``). A reply matches when every expected output is in it with
the expected element count (and shape, where known) and ``|got - want| <= atol + rtol * |want|``
elementwise (the bound computed once per entry); BYTES compare equal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slipway.errors import UserError

__all__ = ["Expected", "ModelInfo", "TensorSpec", "expected_outputs", "make_pool", "parse_shape"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # v2 name: FP32, INT64, BYTES, ...
    dims: tuple[int, ...]  # without the batch dim for a batching model; -1 = dynamic


@dataclass(frozen=True)
class ModelInfo:
    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    steps: tuple[str, ...]  # composing models of an ensemble, in step order (once each)

    @classmethod
    def from_server(cls, name: str, metadata: Mapping[str, Any], config: Mapping[str, Any]) -> ModelInfo:
        mbs = int(config.get("max_batch_size", 0) or 0)

        def spec(t: Mapping[str, Any]) -> TensorSpec:
            dims = tuple(int(d) for d in t.get("shape", []))
            return TensorSpec(t["name"], t["datatype"], dims[1:] if mbs > 0 and dims else dims)

        steps = [s.get("model_name", "") for s in config.get("ensemble_scheduling", {}).get("step", [])]
        return cls(name, str(metadata.get("platform") or config.get("platform") or config.get("backend", "")), mbs,
                   tuple(spec(t) for t in metadata.get("inputs", [])),
                   tuple(t["name"] for t in metadata.get("outputs", [])), tuple(dict.fromkeys(s for s in steps if s)))


def parse_shape(specs: Sequence[str]) -> dict[str, list[int]]:
    """``["x:3,224,224"]`` (perf_analyzer) or ``["x=3,224,224"]`` -> ``{"x": [3, 224, 224]}``."""
    out: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":") if ":" in spec else spec.partition("=")
        try:
            values = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            values = []
        if not sep or not name or not values or any(v < 0 for v in values):
            raise UserError(f"bad --shape {spec!r}: expected NAME:D0,D1,... (for example INPUT0:3,224,224)")
        out[name] = values
    return out


def _dims(model: ModelInfo, spec: TensorSpec, shapes: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    given = shapes.get(spec.name)
    if given is None:
        if any(d < 0 for d in spec.dims):
            raise UserError(f"input {spec.name!r} of {model.name!r} has dynamic dims {list(spec.dims)}: give them "
                            f"with --shape {spec.name}:D0,D1,...")
        return spec.dims
    if len(given) != len(spec.dims) or any(d >= 0 and d != g for d, g in zip(spec.dims, given, strict=True)):
        what = "after the batch dim " if model.max_batch_size > 0 else ""
        raise UserError(f"--shape {spec.name}:{','.join(map(str, given))} does not fit input {spec.name!r} of "
                        f"{model.name!r}: its dims {what}are {list(spec.dims)}")
    return tuple(given)


def _random(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator, string_length: int) -> np.ndarray:
    from tritonclient.utils import triton_to_np_dtype

    if spec.datatype == "BYTES":
        codes = rng.integers(97, 123, size=(*shape, string_length), dtype=np.uint8)
        flat = codes.reshape(-1, string_length)
        return np.array([row.tobytes() for row in flat], dtype=object).reshape(shape)
    dtype = np.dtype(triton_to_np_dtype(spec.datatype))
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = (info.min, info.max) if dtype.itemsize == 1 else (0, 99)
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    return rng.random(size=shape, dtype=np.float32).astype(dtype)


def make_pool(model: ModelInfo, *, batch: int = 1, shapes: Mapping[str, Sequence[int]] | None = None,
              data: str | Path | None = None, pool: int = 4, string_length: int = 16, seed: int = 0
              ) -> list[list[tuple[str, str, np.ndarray]]]:
    """Input sets, one per distinct request: each a list of (name, datatype, array with the batch dim)."""
    shapes = dict(shapes or {})
    names = {s.name for s in model.inputs}
    for n in shapes:
        if n not in names:
            raise UserError(f"--shape names {n!r}, which is not an input of {model.name!r} "
                            f"(inputs: {', '.join(sorted(names))})")
    if batch < 1:
        raise UserError(f"batch size must be at least 1, got {batch}")
    if model.max_batch_size == 0 and batch != 1:
        raise UserError(f"{model.name!r} does not batch (max_batch_size 0): use batch size 1")
    if model.max_batch_size > 0 and batch > model.max_batch_size:
        raise UserError(f"batch size {batch} is more than {model.name!r}'s max_batch_size {model.max_batch_size}")
    lead = (batch,) if model.max_batch_size > 0 else ()
    if data is not None:
        return _from_data(model, Path(data), lead, batch, shapes)
    rng = np.random.default_rng(seed)
    dims = {s.name: _dims(model, s, shapes) for s in model.inputs}
    return [[(s.name, s.datatype, _random(s, lead + dims[s.name], rng, string_length)) for s in model.inputs]
            for _ in range(max(1, pool))]


def _from_data(model: ModelInfo, path: Path, lead: tuple[int, ...], batch: int,
               shapes: Mapping[str, Sequence[int]]) -> list[list[tuple[str, str, np.ndarray]]]:
    if not path.exists():
        raise UserError(f"input data {path} does not exist")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return _images(model, path, lead)
    if path.suffix == ".npz":
        inputs, _ = _npz(model, path)
        samples = min(len(inputs[s.name]) for s in model.inputs)
        sets = []
        for rows in _rows(samples, batch):
            one = []
            for s in model.inputs:
                a = inputs[s.name][rows] if lead else inputs[s.name][rows[0]]
                one.append((s.name, s.datatype, _typed(model, s, a, path)))
            sets.append(one)
        return sets
    if path.suffix == ".json":
        return _json(model, path, lead, shapes)
    raise UserError(f"input data {path.name}: expected an .npz, a .json, an image file or a folder of images")


def _npz(model: ModelInfo, path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """An .npz's inputs (``NAME`` or ``in:NAME``) and expected outputs (``out:NAME``), each with axis 0 the samples."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    inputs = {s.name: arrays[s.name] if s.name in arrays else arrays.get("in:" + s.name) for s in model.inputs}
    missing = [n for n, a in inputs.items() if a is None]
    if missing:
        raise UserError(f"{path.name} has no array for input(s) {', '.join(missing)} of {model.name!r} "
                        "(name them NAME or in:NAME)")
    if min(len(a) for a in inputs.values()) == 0:
        raise UserError(f"{path.name} holds no samples (axis 0 is empty)")
    return inputs, {k[4:]: a for k, a in arrays.items() if k.startswith("out:")}


def _rows(samples: int, batch: int) -> list[list[int]]:
    """The sample rows of each request: ``batch`` at a time, wrapping around, until every sample was sent once."""
    out = []
    for start in range(0, max(samples, batch), batch):
        out.append([(start + i) % samples for i in range(batch)])
        if start + batch >= samples:
            break
    return out


def _typed(model: ModelInfo, spec: TensorSpec, a: np.ndarray, path: Path) -> np.ndarray:
    from tritonclient.utils import triton_to_np_dtype

    if spec.datatype == "BYTES":
        return np.array([v if isinstance(v, bytes) else str(v).encode() for v in a.ravel()], dtype=object
                        ).reshape(a.shape)
    want = np.dtype(triton_to_np_dtype(spec.datatype))
    rank = len(spec.dims) + (1 if model.max_batch_size > 0 else 0)
    if a.ndim != rank:
        raise UserError(f"{path.name}: input {spec.name!r} has rank {a.ndim} per request, the model wants {rank}")
    return a.astype(want, copy=False)


def _json(model: ModelInfo, path: Path, lead: tuple[int, ...], shapes: Mapping[str, Sequence[int]]):
    try:
        entries = json.loads(path.read_text())["data"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise UserError(f"{path.name} is not perf_analyzer input data ({{\"data\": [...]}}): {e}") from None
    sets = []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        one = []
        for s in model.inputs:
            value = entry.get(s.name) if isinstance(entry, dict) else None
            if value is None:
                raise UserError(f"{path.name}: entry {i} has no data for input {s.name!r}")
            content, shape = (value.get("content"), value.get("shape")) if isinstance(value, dict) else (value, None)
            dims = tuple(shape) if shape is not None else _dims(model, s, shapes)
            flat = np.array(content, dtype=object if s.datatype == "BYTES" else None).ravel()
            if flat.size != math.prod(dims):
                raise UserError(f"{path.name}: entry {i} input {s.name!r} has {flat.size} values, shape {list(dims)} "
                                f"needs {math.prod(dims)}")
            a = flat.reshape(dims)
            a = np.repeat(a[None], lead[0], axis=0) if lead else a
            one.append((s.name, s.datatype, _typed(model, s, a, path)))
        sets.append(one)
    if not sets:
        raise UserError(f"{path.name} holds no entries in \"data\"")
    return sets


def _images(model: ModelInfo, path: Path, lead: tuple[int, ...]):
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    if len(model.inputs) != 1 or model.inputs[0].datatype != "BYTES":
        raise UserError(f"image files feed a model with one BYTES input; {model.name!r} has "
                        f"{', '.join(f'{s.name} ({s.datatype})' for s in model.inputs)}")
    s = model.inputs[0]
    dims = tuple(1 if d < 0 else d for d in s.dims)
    sets = []
    for f in files:
        a = np.full(lead + dims, f.read_bytes(), dtype=object)
        sets.append([(s.name, s.datatype, a)])
    return sets


# -- expected outputs (--validate) -----------------------------------------------------------------


@dataclass(frozen=True)
class _Want:
    flat: np.ndarray  # expected values, flattened (object array of bytes for BYTES)
    raw: bytes  # their bytes (numeric): an exact match is accepted without arithmetic
    bound: np.ndarray | None  # allowed |got - want| per element; None for BYTES (equality)
    shape: tuple[int, ...] | None  # the expected shape where the data gives it


@dataclass(frozen=True)
class Expected:
    """One request's expected outputs; :meth:`check` answers '' for a matching reply, else what is wrong."""

    outputs: dict[str, _Want]

    def check(self, got: Mapping[str, np.ndarray]) -> str:
        for name, w in self.outputs.items():
            a = got.get(name)
            if a is None:
                return f"output {name!r} missing from the reply"
            if w.shape is not None and a.shape != w.shape:
                return f"output {name!r} has shape {list(a.shape)}, expected {list(w.shape)}"
            if a.size != w.flat.size:
                return f"output {name!r} has {a.size} elements, expected {w.flat.size}"
            if w.bound is None:
                flat = [v if isinstance(v, bytes) else str(v).encode() for v in a.ravel()]
                bad = [i for i, (x, y) in enumerate(zip(flat, w.flat, strict=True)) if x != y]
                if bad:
                    return (f"output {name!r} differs at {len(bad)} of {a.size} elements (first at {bad[0]}: "
                            f"got {flat[bad[0]][:40]!r}, expected {w.flat[bad[0]][:40]!r})")
                continue
            if a.dtype == w.flat.dtype and a.tobytes() == w.raw:
                continue
            diff = np.abs(a.reshape(-1).astype(w.flat.dtype, copy=False) - w.flat)
            bad = ~(diff <= w.bound)  # NaN fails
            if bad.any():
                i = int(np.argmax(bad))
                return (f"output {name!r} differs at {int(bad.sum())} of {a.size} elements (max abs difference "
                        f"{np.nanmax(diff):.3g}; first at {i}: got {a.reshape(-1)[i]:.6g}, expected {w.flat[i]:.6g})")
        return ""


def _want(a: np.ndarray, shape_known: bool, rtol: float, atol: float) -> _Want:
    shape = tuple(a.shape) if shape_known else None
    if a.dtype == object or a.dtype.kind in "SU":
        flat = np.array([v if isinstance(v, bytes) else str(v).encode() for v in a.ravel()], dtype=object)
        return _Want(flat, b"", None, shape)
    flat = np.ascontiguousarray(a).reshape(-1)
    if flat.dtype.kind not in "fc":  # integers and booleans: compared as float64 (exact for the usual tolerances)
        flat = flat.astype(np.float64)
    return _Want(flat, flat.tobytes(), (atol + rtol * np.abs(flat)).astype(flat.dtype), shape)


def expected_outputs(model: ModelInfo, data: str | Path | None, *, batch: int = 1, rtol: float = 1e-3,
                     atol: float = 1e-4) -> list[Expected]:
    """One :class:`Expected` per entry of ``make_pool(model, data=data, batch=batch)``, in the same order."""
    if rtol < 0 or atol < 0:
        raise UserError(f"--rtol and --atol must be 0 or more, got {rtol:g} and {atol:g}")
    if data is None:
        raise UserError("--validate needs --input-data with expected outputs: an .npz with out:NAME arrays or "
                        "perf_analyzer JSON with \"validation_data\"")
    path = Path(data)
    lead = batch if model.max_batch_size > 0 else 0
    if path.suffix == ".npz" and path.is_file():
        inputs, outputs = _npz(model, path)
        _known(model, path, outputs, "out:NAME arrays")
        samples = min(len(a) for a in inputs.values())
        short = [n for n, a in outputs.items() if len(a) < samples]
        if short:
            raise UserError(f"{path.name}: out:{short[0]} has fewer samples than the inputs ({samples})")
        return [Expected({n: _want(a[rows] if lead else a[rows[0]], True, rtol, atol) for n, a in outputs.items()})
                for rows in _rows(samples, batch)]
    if path.suffix == ".json" and path.is_file():
        try:
            doc = json.loads(path.read_text())
            entries, wanted = doc["data"], doc["validation_data"]
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise UserError(f"{path.name} has no perf_analyzer \"validation_data\" (expected outputs): {e}") from None
        if not isinstance(wanted, list) or not isinstance(entries, list) or len(wanted) != len(entries):
            raise UserError(f"{path.name}: \"validation_data\" must be a list as long as \"data\" ({len(entries)})")
        out = []
        for i, entry in enumerate(wanted):
            if not isinstance(entry, dict) or not entry:
                raise UserError(f"{path.name}: validation_data entry {i} names no output")
            _known(model, path, entry, "validation_data")
            one = {}
            for name, value in entry.items():
                content, shape = (value.get("content"), value.get("shape")) if isinstance(value, dict) else (value, None)
                a = np.array(content, dtype=object if _is_text(content) else None).ravel()
                a = a.reshape(shape) if shape is not None else a
                a = np.repeat(a[None], lead, axis=0) if lead else a
                one[name] = _want(a, shape is not None, rtol, atol)
            out.append(Expected(one))
        return out
    raise UserError(f"--validate: input data {path.name} holds no expected outputs (an .npz with out:NAME arrays "
                    "or perf_analyzer JSON with \"validation_data\")")


def _known(model: ModelInfo, path: Path, names: Mapping[str, Any], what: str) -> None:
    if not names:
        raise UserError(f"--validate: {path.name} holds no expected outputs ({what})")
    unknown = [n for n in names if n not in model.outputs]
    if unknown:
        raise UserError(f"{path.name}: {unknown[0]!r} is not an output of {model.name!r} "
                        f"(outputs: {', '.join(model.outputs)})")


def _is_text(content: Any) -> bool:
    while isinstance(content, list) and content:
        content = content[0]
    return isinstance(content, str | bytes)
