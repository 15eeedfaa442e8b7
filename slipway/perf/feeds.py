"""The inputs a benchmark runs on, one set per batch size.

The batch dim is the first input's dim 0 (as in :mod:`slipway.verify.inputs`); every input
whose dim 0 carries the same name is batched with it.

* Random (no data given): floats standard normal, integers uniform in [0, 9] (narrowed when the
  input indexes a smaller table through ``Gather``, or set to the constants the graph compares
  it with), booleans a fair coin, drawn by :func:`slipway.verify.inputs.random_feeds`. Dynamic dims other than the batch take their
  sizes from ``shapes`` (``--shape NAME=D0,D1,...``).
* Data (a dict of arrays or an ``.npz`` file): names, dtypes, ranks and static dims are checked
  against the model (:func:`slipway.verify.inputs.check_data`); the batch axis is tiled or cut to
  each batch size (a batch-1 file serves every batch).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from slipway.errors import UserError
from slipway.verify.inputs import (
    Feeds,
    InputsLike,
    InputSpec,
    at_batch,
    batch_data,
    check_data,
    load_inputs,
    model_batch,
    random_feeds,
)
from slipway.verify.probe import derive_dim_sizes, fixed_dims, hinted_specs

__all__ = ["make_feeds", "default_batches", "check_batches", "check_memory", "available_memory",
           "random_bytes", "data_bytes", "dim_sizes"]


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
    specs = hinted_specs(model)
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
