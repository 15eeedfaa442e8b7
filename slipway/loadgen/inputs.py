"""What ``slipway perf`` sends: the model as the server declares it, and a pool of input sets.

Shapes follow perf_analyzer: for a batching model (``max_batch_size`` > 0) ``--shape NAME:DIMS``
gives the dims after the batch dim and ``batch`` the batch; a dynamic dim (-1) must be given.
Inputs (a pool of different sets, cycled by the requests):

* random: floats uniform in [0, 1), 8-bit integers over their whole range, wider integers in
  [0, 100), booleans a fair coin, BYTES random ASCII strings of ``string_length``;
* ``.npz``: arrays by input name, axis 0 a pool of samples (each request takes ``batch`` of them);
* JSON (perf_analyzer's form): ``{"data": [{"NAME": [flat values] | {"content": [...], "shape": [...]}}, ...]}``,
  one entry per request;
* image files (a file or a folder of .jpg / .png / ...): for a model with one BYTES input, each
  file's bytes are one element (the encoded image a pipeline decodes).
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

__all__ = ["ModelInfo", "TensorSpec", "make_pool", "parse_shape"]

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
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        missing = [s.name for s in model.inputs if s.name not in arrays]
        if missing:
            raise UserError(f"{path.name} has no array for input(s) {', '.join(missing)} of {model.name!r}")
        samples = min(len(arrays[s.name]) for s in model.inputs)
        if samples == 0:
            raise UserError(f"{path.name} holds no samples (axis 0 is empty)")
        sets = []
        for start in range(0, max(samples, batch), batch):
            rows = [(start + i) % samples for i in range(batch)]
            one = []
            for s in model.inputs:
                a = arrays[s.name][rows] if lead else arrays[s.name][rows[0]]
                one.append((s.name, s.datatype, _typed(model, s, a, path)))
            sets.append(one)
            if start + batch >= samples:
                break
        return sets
    if path.suffix == ".json":
        return _json(model, path, lead, shapes)
    raise UserError(f"input data {path.name}: expected an .npz, a .json, an image file or a folder of images")


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
