"""The inputs a benchmark runs on, one set per batch size.

The batch dim is the first input's dim 0 (as in :mod:`slipway.convert.inputs`); every input
whose dim 0 carries the same name is batched with it.

* Random (no data given): floats standard normal, integers uniform in [0, 9] (narrowed when the
  input indexes a smaller table through ``Gather``), booleans a fair coin, drawn by
  :func:`slipway.convert.inputs.random_feeds`. Dynamic dims other than the batch take their
  sizes from ``shapes`` (``--shape NAME=D0,D1,...``).
* Data (a dict of arrays or an ``.npz`` file): names, dtypes, ranks and static dims are checked
  against the model; the batch axis is tiled or cut to each batch size (a batch-1 file serves
  every batch).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from slipway.convert.inputs import Feeds, InputSpec, input_specs, random_feeds
from slipway.errors import UserError

InputsLike = Mapping[str, np.ndarray] | str | os.PathLike


def model_batch(specs: Sequence[InputSpec]) -> int | str:
    """The batch dim: its name when dynamic, its size when static (1 for a model without one)."""
    if not specs or not specs[0].dims:
        return 1
    return specs[0].dims[0]


def default_batches(specs: Sequence[InputSpec]) -> tuple[int]:
    """(1,) for a dynamic batch, else the model's static batch."""
    b = model_batch(specs)
    return (1,) if isinstance(b, str) else (b,)


def check_batches(specs: Sequence[InputSpec], batches: Sequence[int]) -> None:
    """A static-batch model runs only its own batch size."""
    b = model_batch(specs)
    for n in batches:
        if n < 1:
            raise UserError(f"batch sizes must be at least 1, got {n}")
        if isinstance(b, int) and n != b:
            where = f"input {specs[0].name!r} has a static batch of {b}" if specs and specs[0].dims else (
                "the model has no batch dim")
            raise UserError(f"cannot run batch {n}: {where}; export the model with a dynamic batch dim")


def make_feeds(model: ir.Model, batches: Sequence[int] | None, inputs: InputsLike | None = None,
               shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0) -> dict[int, Feeds]:
    """One feed dict per batch size, random or from ``inputs``.

    ``batches=None``: the data's own batch, else 1 (or the model's static batch).
    """
    specs = with_value_hints(model, input_specs(model))
    if inputs is not None:
        if shapes:
            raise UserError("give either input data or input shapes, not both (the data has its shapes)")
        data, label = load_inputs(inputs)
        check_data(specs, data, label)
        if batches is None:
            batch = model_batch(specs)
            batches = (int(data[specs[0].name].shape[0]),) if isinstance(batch, str) else (batch,)
        check_batches(specs, batches)
        return {b: batch_data(specs, data, b) for b in batches}
    batches = default_batches(specs) if batches is None else batches
    check_batches(specs, batches)
    sizes = dim_sizes(specs, shapes or {})
    batch = model_batch(specs)
    rng = np.random.default_rng(seed)
    out = {}
    for b in batches:
        if isinstance(batch, str):
            sizes[batch] = b
        out[b] = random_feeds(specs, sizes, rng)
    return out


def with_value_hints(model: ir.Model, specs: list[InputSpec]) -> list[InputSpec]:
    """Integer inputs that index a table (``Gather`` indices) draw from [0, min(9, rows - 1)]."""
    for spec in specs:
        if not np.issubdtype(spec.dtype, np.integer) or spec.example is not None:
            continue
        rows = _gather_rows(model, spec.name)
        if rows:
            spec.example = np.array([0, min(9, rows - 1)], dtype=spec.dtype)
    return specs


def _gather_rows(model: ir.Model, name: str) -> int | None:
    value = next((v for v in model.graph.inputs if v.name == name), None)
    smallest = None
    for node, index in value.uses() if value is not None else ():
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or index != 1:
            continue
        data = node.inputs[0]
        attr = node.attributes.get("axis")
        axis = attr.as_int() if attr is not None else 0
        if data is None or data.shape is None or not -len(data.shape) <= axis < len(data.shape):
            continue
        rows = data.shape[axis]
        if isinstance(rows, int) and rows > 0:
            smallest = rows if smallest is None else min(smallest, rows)
    return smallest


def dim_sizes(specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Sizes of the named dims other than the batch, from ``shapes``; a missing one is an error."""
    names = {s.name: s for s in specs}
    for name, dims in shapes.items():
        spec = names.get(name)
        if spec is None:
            raise UserError(f"--shape names {name!r}, which is not a model input (inputs: {', '.join(names) or 'none'})")
        if len(dims) != len(spec.dims):
            raise UserError(f"--shape {name}: got {len(dims)} dims, the input has rank {len(spec.dims)}")
        if any(int(d) < 1 for d in dims):
            raise UserError(f"--shape {name}: dims must be positive, got {list(dims)}")
    batch = model_batch(specs)
    sizes: dict[str, int] = {}
    for s in specs:
        given = shapes.get(s.name)
        for axis, d in enumerate(s.dims):
            if isinstance(d, int):
                if given is not None and given[axis] != d and not (axis == 0 and s is specs[0]):
                    raise UserError(f"--shape {s.name}: dim {axis} is {given[axis]}, the model fixes it at {d}")
                continue
            if d != batch and given is not None and sizes.setdefault(d, int(given[axis])) != int(given[axis]):
                raise UserError(f"--shape gives dim {d!r} two sizes: {sizes[d]} and {given[axis]}")
    for s in specs:
        for axis, d in enumerate(s.dims):
            if isinstance(d, str) and d != batch and d not in sizes:
                raise UserError(f"input {s.name!r} dim {axis} ({d!r}) is dynamic: give its size with "
                                f"--shape {s.name}=... or pass input data")
    return sizes


def load_inputs(inputs: InputsLike) -> tuple[dict[str, np.ndarray], str]:
    """The arrays of a dict or an ``.npz`` file, and a label for error messages."""
    if isinstance(inputs, Mapping):
        return {str(k): np.asarray(v) for k, v in inputs.items()}, "inputs"
    p = Path(inputs)
    if not p.is_file():
        raise UserError(f"input data file not found: {p}")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{p} is not a readable .npz file: {_one_line(e)}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise UserError(f"{p}: expected a .npz archive of named arrays (np.savez), got one array")
    try:
        with loaded:
            return {k: loaded[k] for k in loaded.files}, p.name
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{p} is not a readable .npz file: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def check_data(specs: Sequence[InputSpec], data: Mapping[str, np.ndarray], label: str) -> None:
    """Names, dtypes, ranks, static dims and shared dim sizes of ``data`` against the model."""
    names = [s.name for s in specs]
    for name in data:
        if name not in names:
            raise UserError(f"{label}: {name!r} is not a model input (inputs: {', '.join(names) or 'none'})")
    batch = model_batch(specs)
    seen: dict[str, tuple[int, str]] = {}
    for s in specs:
        if s.name not in data:
            raise UserError(f"{label}: input {s.name!r} is missing (the model needs {', '.join(names)})")
        a = data[s.name]
        if a.dtype != s.dtype:
            raise UserError(f"{label}: input {s.name!r} is {a.dtype}, the model expects {s.dtype}")
        if a.ndim != len(s.dims):
            raise UserError(f"{label}: input {s.name!r} has rank {a.ndim} {list(a.shape)}, the model expects "
                            f"rank {len(s.dims)} {s.dims}")
        for axis, d in enumerate(s.dims):
            n = int(a.shape[axis])
            if isinstance(d, int) and n != d:
                raise UserError(f"{label}: input {s.name!r} dim {axis} is {n}, the model fixes it at {d}")
            if isinstance(d, str):
                if n == 0:
                    raise UserError(f"{label}: input {s.name!r} dim {axis} is empty")
                first = seen.setdefault(d, (n, s.name))
                if first[0] != n and d != batch:
                    raise UserError(f"{label}: dim {d!r} is {first[0]} in {first[1]!r} but {n} in {s.name!r}")
                if first[0] != n:
                    raise UserError(f"{label}: the batch dim is {first[0]} in {first[1]!r} but {n} in {s.name!r}")


def batch_data(specs: Sequence[InputSpec], data: Mapping[str, np.ndarray], batch: int) -> Feeds:
    """``data`` with every batched input tiled (or cut) along axis 0 to ``batch`` rows."""
    name = model_batch(specs)
    feeds: Feeds = {}
    for s in specs:
        a = data[s.name]
        if isinstance(name, str) and s.dims and s.dims[0] == name and a.shape[0] != batch:
            a = np.take(a, np.arange(batch) % a.shape[0], axis=0)
        feeds[s.name] = np.ascontiguousarray(a)
    return feeds


def describe(feeds: Mapping[str, np.ndarray]) -> str:
    """``x[8,3,224,224] float32``: the shapes and dtypes of one feed dict."""
    return ", ".join(f"{k}[{','.join(map(str, v.shape))}] {v.dtype}" for k, v in feeds.items()) or "no inputs"
