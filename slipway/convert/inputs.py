"""Inputs for verification: input specs, the sizes of named dims per run, random feeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from slipway.errors import UserError

Feeds = dict[str, np.ndarray]
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


def random_feeds(specs: Sequence[InputSpec], sizes: Mapping[str, int], rng: np.random.Generator) -> Feeds:
    """Random inputs at the given dim sizes.

    Floats: normal with the example's mean and standard deviation (standard normal without an
    example). Integers: uniform over the example's [min, max] (over [0, 10) without one).
    Booleans: fair coin.
    """
    feeds: Feeds = {}
    for s in specs:
        shape = tuple(d if isinstance(d, int) else sizes[d] for d in s.dims)
        feeds[s.name] = _sample(shape, s.dtype, s.example, rng)
    return feeds


def _sample(shape: tuple[int, ...], dtype: np.dtype, example: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    has_example = example is not None and example.size > 0
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        lo, hi = (int(example.min()), int(example.max())) if has_example else (0, 9)
        return rng.integers(lo, hi + 1, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        mean, std = (float(example.mean()), float(example.std())) if has_example else (0.0, 1.0)
        return (rng.standard_normal(shape) * (std if std > 0 else 1.0) + mean).astype(dtype)
    raise UserError(f"cannot make random inputs of dtype {dtype}")


def describe(feeds: Mapping[str, np.ndarray]) -> str:
    """``x[1,3,16,16] y[1,8]``: the shapes of one run."""
    return " ".join(f"{k}[{','.join(str(d) for d in v.shape)}]" for k, v in feeds.items())
