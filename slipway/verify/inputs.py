"""What a model runs on: input specs, the sizes of named dims per run, random feeds, user data.

* :func:`input_specs` - a model's inputs with every dynamic dim named (unnamed, ``"?"`` and ``-1``
  dims become ``<input>.<axis>``);
* :func:`plan_sizes` / :func:`at_batch` - the sizes of the named dims for each run;
* :func:`random_feeds` / :func:`random_array` - THE random input generator of every stage
  (verification, probing, bench, tune, compare, profiling, calibration fallbacks); the value
  hints of :func:`slipway.verify.probe.with_value_hints` (an ``example``) keep integer inputs in
  range;
* :func:`load_inputs` / :func:`check_data` / :func:`batch_data` - the user's arrays (a dict or an
  ``.npz`` file, ``--data``) checked against the specs and tiled to a batch size.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from slipway.errors import UserError, one_line

Feeds = dict[str, np.ndarray]
InputsLike = Mapping[str, np.ndarray] | str | os.PathLike
DEFAULT_BATCH_SIZES = (1, 3)
UNNAMED = ("?", "-1", "None")


@dataclass
class InputSpec:
    """One model input: ``dims`` holds ints for static dims and names for dynamic ones.

    ``example`` (optional) is a typical value: random inputs follow its value range, and a
    dynamic dim that has no other size given defaults to the example's size.
    """

    name: str
    dims: list[int | str]
    dtype: np.dtype
    example: np.ndarray | None = None
    anonymous: tuple[int, ...] = ()  # axes whose dim had no name in the model (named here)
    branch_values: tuple[int, ...] = ()  # constants the graph compares this (integer) input with


def input_specs(model: ir.Model, examples: Mapping[str, np.ndarray] | None = None) -> list[InputSpec]:
    """Specs of a model's graph inputs; unnamed dynamic dims are named ``<input>.<axis>``.

    Exporters mark a dynamic dim in several ways: a name, no value at all, ``-1`` (old
    paddle2onnx) or ``"?"`` (which two dims can share without being equal); the last three are
    unnamed here.
    """
    specs = []
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        if v.shape is None or v.dtype is None:
            raise UserError(f"input {v.name!r} has no shape or dtype; slipway cannot make inputs for it")
        dims: list[int | str] = []
        anonymous: list[int] = []
        for axis, d in enumerate(v.shape):
            if isinstance(d, int) and d >= 0:
                dims.append(d)
            elif isinstance(d, int) or not d.value or d.value in UNNAMED:
                dims.append(f"{v.name}.{axis}")
                anonymous.append(axis)
            else:
                dims.append(d.value)
        specs.append(InputSpec(v.name, dims, np.dtype(v.dtype.numpy()), (examples or {}).get(v.name),
                               tuple(anonymous)))
    return specs


def plan_sizes(
    specs: Sequence[InputSpec],
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    dim_sizes: Mapping[str, Sequence[int]] | None = None,
    ranges: Mapping[str, tuple[int | None, int | None]] | None = None,
    batch_dim: str | None = None,
) -> list[dict[str, int]]:
    """Sizes of the named dims for each run.

    The batch dim (``batch_dim``, else the first input's dim 0 when it is named) takes each of
    ``batch_sizes``; another named dim takes ``dim_sizes[name]``, else the example's size and
    twice it. ``ranges`` (name -> (min, max), from the exporter) clip every size.
    """
    named = _named_dims(specs)
    if batch_dim is None and specs and specs[0].dims and isinstance(specs[0].dims[0], str):
        batch_dim = specs[0].dims[0]
    lists: dict[str, list[int]] = {}
    for name, example in named.items():
        if dim_sizes and name in dim_sizes:
            sizes = [int(s) for s in dim_sizes[name]]
        elif name == batch_dim:
            sizes = [int(b) for b in batch_sizes]
        elif example is not None:
            sizes = [example, 2 * example]
        else:
            raise UserError(f"dynamic dim {name!r} has no example size; give the sizes to verify it at (dim_sizes)")
        if any(s <= 0 for s in sizes) or not sizes:
            raise UserError(f"sizes for dim {name!r} must be positive, got {sizes}")
        lists[name] = _clip(sizes, (ranges or {}).get(name, (None, None)))
    runs = max([len(v) for v in lists.values()] + [len(batch_sizes), 2])
    return [{name: sizes[i % len(sizes)] for name, sizes in lists.items()} for i in range(runs)]


def _named_dims(specs: Sequence[InputSpec]) -> dict[str, int | None]:
    named: dict[str, int | None] = {}
    for s in specs:
        for axis, d in enumerate(s.dims):
            if isinstance(d, str):
                size = int(s.example.shape[axis]) if s.example is not None and s.example.ndim > axis else None
                if named.get(d) is None:
                    named[d] = size
    return named


def _clip(sizes: list[int], bounds: tuple[int | None, int | None]) -> list[int]:
    lo, hi = bounds
    out = []
    for s in sizes:
        s = max(s, lo) if lo is not None else s
        s = min(s, hi) if hi is not None else s
        if s not in out:
            out.append(s)
    return out


@dataclass(frozen=True)
class Distribution:
    """How :func:`random_array` draws values of an input that has no ``example``.

    ``floats``: ``"normal"`` (standard normal; with an example, the example's mean and standard
    deviation) or ``"uniform"`` (in [-1, 1); with an example, over its [min, max]).
    ``ints``: the inclusive range of integer values (with an example, the example's [min, max]).
    """

    floats: str = "normal"
    ints: tuple[int, int] = (0, 9)


NORMAL = Distribution()  # verification, probing, bench, tune, compare
SMALL = Distribution("uniform", (0, 3))  # profiling: bounded values, small integer indices


def random_feeds(specs: Sequence[InputSpec], sizes: Mapping[str, int], rng: np.random.Generator,
                 dist: Distribution = NORMAL) -> Feeds:
    """Random inputs at the given dim sizes (see :func:`random_array` for the values)."""
    feeds: Feeds = {}
    for s in specs:
        shape = tuple(d if isinstance(d, int) else sizes[d] for d in s.dims)
        feeds[s.name] = random_array(shape, s.dtype, rng, s.example, dist)
    return feeds


def random_array(shape: Sequence[int], dtype: np.dtype | type, rng: np.random.Generator,
                 example: np.ndarray | None = None, dist: Distribution = NORMAL) -> np.ndarray:
    """One random input. Booleans: fair coin. Integers: uniform over the example's [min, max], else
    over ``dist.ints`` ([0, 9] by default). Floats: ``dist.floats`` (normal by default, following the
    example's mean and standard deviation)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    has_example = example is not None and example.size > 0
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        lo, hi = (int(example.min()), int(example.max())) if has_example else dist.ints
        return rng.integers(lo, hi + 1, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        if dist.floats == "uniform":
            lo, hi = (float(example.min()), float(example.max())) if has_example else (-1.0, 1.0)
            return rng.uniform(lo, hi, shape).astype(dtype)
        mean, std = (float(example.mean()), float(example.std())) if has_example else (0.0, 1.0)
        return (rng.standard_normal(shape) * (std if std > 0 else 1.0) + mean).astype(dtype)
    raise UserError(f"cannot make random inputs of dtype {dtype}")


def describe(feeds: Mapping[str, np.ndarray]) -> str:
    """``x[1,3,16,16] y[1,8]``: the shapes of one run."""
    return " ".join(f"{k}[{','.join(str(d) for d in v.shape)}]" for k, v in feeds.items())


# ---------------------------------------------------------------- the batch


def model_batch(specs: Sequence[InputSpec]) -> int | str:
    """The batch dim: its name when dynamic, its size when static (1 for a model without one)."""
    if not specs or not specs[0].dims:
        return 1
    return specs[0].dims[0]


def batch_dim(specs: Sequence[InputSpec]) -> str | None:
    """The batch dim's name (the first input's dim 0) when it is dynamic, else None."""
    return specs[0].dims[0] if specs and specs[0].dims and isinstance(specs[0].dims[0], str) else None


def shared_batch(specs: Sequence[InputSpec]) -> bool:
    """Whether samples are rows of axis 0 of every input: no scalar input, and every dim 0 dynamic or
    the first input's (silero's ``state [2, None, 128]`` is not). Row counts that then disagree are the
    user's mistake, not another layout."""
    first = specs[0].dims[0] if specs and specs[0].dims else None
    return all(s.dims and (isinstance(s.dims[0], str) or s.dims[0] == first) for s in specs)


def at_batch(specs: Sequence[InputSpec], sizes: Mapping[str, int], batch: int, base: int = 1) -> dict[str, int]:
    """``sizes`` (made at batch ``base``) moved to ``batch``: the batch dim and the unnamed dims of
    other inputs that equal ``base`` (a state's batch: ``state [2, None, 128]``) take ``batch``."""
    name = batch_dim(specs)
    if name is None:
        return dict(sizes)
    follow = {d for d in tied_dims(specs) if sizes.get(d) == base}
    return {**sizes, name: batch, **{d: batch for d in follow}}


def tied_dims(specs: Sequence[InputSpec]) -> set[str]:
    """Unnamed dims of inputs after the first: candidates to share the batch size."""
    return {s.dims[a] for s in specs[1:] for a in s.anonymous if isinstance(s.dims[a], str)}


# ---------------------------------------------------------------- user data


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
        raise UserError(f"{p} is not a readable .npz file: {one_line(e)}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise UserError(f"{p}: expected a .npz archive of named arrays (np.savez), got one array")
    try:
        with loaded:
            return {k: loaded[k] for k in loaded.files}, p.name
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{p} is not a readable .npz file: {one_line(e)}") from None


def check_names(specs: Sequence[InputSpec], given: Mapping[str, object], what: str = "") -> None:
    """One value per model input and nothing else (one-line errors, prefixed with ``what``)."""
    at = f"{what}: " if what else ""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in given]
    if missing:
        raise UserError(f"{at}no value for input {missing[0]!r} (the inputs given are {sorted(given)}; the model's "
                        f"inputs are {names})")
    extra = sorted(set(given) - set(names))
    if extra:
        raise UserError(f"{at}the model has no input named {extra[0]!r} (its inputs are {names})")


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
