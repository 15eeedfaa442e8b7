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

import contextlib
import math
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from slipway.convert.inputs import Feeds, InputSpec, input_specs, random_feeds
from slipway.convert.probe import at_batch, derive_dim_sizes, fixed_dims, with_value_hints
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
        check_memory({b: data_bytes(specs, data, b) for b in batches})
        with _out_of_memory(max(batches)):
            return {b: batch_data(specs, data, b) for b in batches}
    batches = default_batches(specs) if batches is None else batches
    check_batches(specs, batches)
    sizes = _sizes(model, specs, shapes or {})
    batch = model_batch(specs)
    base = int(shapes[specs[0].name][0]) if isinstance(batch, str) and shapes and specs[0].name in shapes else 1
    per_batch = {b: (at_batch(specs, sizes, b, base) if isinstance(batch, str) else sizes) for b in batches}
    check_memory({b: random_bytes(specs, s) for b, s in per_batch.items()})
    rng = np.random.default_rng(seed)
    out = {}
    for b, s in per_batch.items():
        with _out_of_memory(b):
            out[b] = random_feeds(specs, s, rng)
    return out


def random_bytes(specs: Sequence[InputSpec], sizes: Mapping[str, int]) -> int:
    """Bytes of one random feed dict at ``sizes``, plus the float64 draw a float input is made from."""
    total = 0
    for s in specs:
        n = math.prod(d if isinstance(d, int) else int(sizes[d]) for d in s.dims)
        total += n * (s.dtype.itemsize + (8 if np.issubdtype(s.dtype, np.floating) else 0))
    return total


def data_bytes(specs: Sequence[InputSpec], data: Mapping[str, np.ndarray], batch: int) -> int:
    """Bytes of ``data`` tiled or cut to ``batch`` rows (see :func:`batch_data`)."""
    name = model_batch(specs)
    total = 0
    for s in specs:
        a = data[s.name]
        batched = isinstance(name, str) and s.dims and s.dims[0] == name and a.shape[0] > 0
        total += a.nbytes // a.shape[0] * batch if batched else a.nbytes
    return total


def available_memory() -> int | None:
    """Bytes this process may still allocate: the kernel's MemAvailable, capped by a cgroup v2 limit;
    None where neither is known."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int((cg / "memory.current").read_text().strip())
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def check_memory(need: Mapping[int, int], available: int | None = None) -> None:
    """Refuse batch sizes whose inputs cannot fit in memory before anything is allocated."""
    available = available_memory() if available is None else available
    if available is None or not need:
        return
    total = 0
    for b in sorted(need):
        total += need[b]
        if total > available:
            raise UserError(f"batch {b} is too large for memory: the inputs need {_gb(total)} and "
                            f"{_gb(available)} is available; use a smaller batch")


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"


@contextlib.contextmanager
def _out_of_memory(batch: int) -> Iterator[None]:
    try:
        yield
    except MemoryError:
        raise UserError(f"batch {batch} is too large for memory: its inputs cannot be allocated; "
                        "use a smaller batch") from None


def _sizes(model: ir.Model, specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """:func:`dim_sizes` of ``shapes``; dynamic dims it leaves open take sizes the model runs on."""
    batch = model_batch(specs)
    open_dims = [d for s in specs for d in s.dims if isinstance(d, str) and d != batch]
    given = {s.name for s in specs} & set(shapes)
    if all(any(d in s.dims for s in specs if s.name in given) for d in open_dims):
        return dim_sizes(specs, shapes)
    return derive_dim_sizes(model, shapes)


def dim_sizes(specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Sizes of the named dims other than the batch, from ``shapes``; a missing one is an error."""
    batch = model_batch(specs)
    sizes = {d: n for d, n in fixed_dims(specs, shapes, free_batch=True).items() if d != batch}
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
    """``data`` with every batched input tiled (or cut) along axis 0 to ``batch`` rows; an unnamed dim
    of another input that has the data's batch size (a state's batch, ``state [2, None, 128]``) along with it."""
    name = model_batch(specs)
    have = int(data[specs[0].name].shape[0]) if isinstance(name, str) and specs[0].dims else None
    sizes = {d: int(data[s.name].shape[a]) for s in specs for a, d in enumerate(s.dims) if isinstance(d, str)}
    follow = at_batch(specs, sizes, batch, have) if have is not None else {}
    feeds: Feeds = {}
    for s in specs:
        a = data[s.name]
        for axis, d in enumerate(s.dims):
            if isinstance(d, str) and follow.get(d, a.shape[axis]) != a.shape[axis]:
                a = np.take(a, np.arange(follow[d]) % a.shape[axis], axis=axis)
        feeds[s.name] = np.require(a, requirements="C")  # ascontiguousarray makes a 0-d array 1-d
    return feeds


def describe(feeds: Mapping[str, np.ndarray]) -> str:
    """``x[8,3,224,224] float32``: the shapes and dtypes of one feed dict."""
    return ", ".join(f"{k}[{','.join(map(str, v.shape))}] {v.dtype}" for k, v in feeds.items()) or "no inputs"
