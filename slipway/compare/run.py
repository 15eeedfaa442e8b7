"""Inputs for a comparison and runs of a model, as is or with chosen intermediates exposed."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from slipway.backends import Options, load
from slipway.errors import UserError, one_line
from slipway.graph import copy_model
from slipway.model import as_model
from slipway.verify.inputs import Feeds, InputSpec, check_names, input_specs, plan_sizes, random_feeds
from slipway.verify.probe import derive_dim_sizes, hinted_specs, plan_inputs

__all__ = ["DEFAULT_DIM", "load_model", "typed_copy", "make_feeds", "run_model", "describe_run"]

DEFAULT_DIM = 16  # size of a dynamic dim other than the batch dim when none is given


def load_model(model: object, what: str) -> ir.Model:
    """A path, ``ModelProto`` or ``ir.Model`` as an ``ir.Model`` (one-line UserError if unusable)."""
    if isinstance(model, (str, os.PathLike)):
        return as_model(model)
    try:
        return as_model(model)  # type: ignore[arg-type]
    except UserError:
        raise
    except Exception:
        raise UserError(f"model {what} must be an ONNX file path, a ModelProto or an onnx_ir.Model, "
                        f"got {type(model).__name__}") from None


def typed_copy(model: ir.Model) -> ir.Model:
    """A copy of ``model`` (sharing its weights) in which every main-graph value has a type if inference can say."""
    copy = copy_model(model)
    copy.graph.sort()
    if any(v.type is None for node in copy.graph for v in node.outputs):
        try:
            copy = ShapeInferencePass(strict_mode=False)(copy).model
        except Exception as e:  # inference is best effort: values it cannot type are not compared
            copy.meta["slipway.compare.inference_error"] = one_line(e)
    return copy


def _specs_checked(a: ir.Model, b: ir.Model) -> list[InputSpec]:
    specs = hinted_specs(a)  # random inputs follow the graph's value hints
    names_a = [s.name for s in specs]
    names_b = [s.name for s in input_specs(b)]
    if sorted(names_a) != sorted(names_b):
        raise UserError(f"the models have different inputs: A has {names_a}, B has {names_b}")
    return specs


def make_feeds(a: ir.Model, b: ir.Model, feeds: Mapping[str, np.ndarray] | str | os.PathLike | None, *,
               batch: int, seed: int, dims: Mapping[str, int] | None = None,
               shapes: Mapping[str, Sequence[int]] | None = None) -> Feeds:
    """The user's feeds (a dict or an .npz file) checked against A's inputs, else random ones.

    Random inputs: at ``shapes`` (``--shape``) when given; else the batch dim (dim 0 of the first
    input, when dynamic) takes ``batch``, other dynamic dims ``dims[name]``, else sizes A runs
    on (derived by :func:`slipway.verify.probe.derive_dim_sizes`).
    """
    specs = _specs_checked(a, b)
    if shapes:
        if feeds is not None:
            raise UserError("give either --data or --shape, not both (the data has its shapes)")
        return plan_inputs(a, shapes=shapes, batch_sizes=(), seed=seed).first
    if feeds is None:
        if batch < 1:
            raise UserError(f"batch must be at least 1, got {batch}")
        named = {d for s in specs for d in s.dims if isinstance(d, str)}
        unknown = sorted(set(dims or {}) - named)
        if unknown:
            raise UserError(f"no dynamic dim named {unknown[0]!r} (the model's dynamic dims: {sorted(named)})")
        batch_dim = specs[0].dims[0] if specs and specs[0].dims and isinstance(specs[0].dims[0], str) else None
        derived = {} if named - {batch_dim} <= set(dims or {}) else derive_dim_sizes(a)
        sizes = {n: [int((dims or {}).get(n, derived.get(n, DEFAULT_DIM)))] for n in named
                 if n != batch_dim or n in (dims or {})}
        plan = plan_sizes(specs, [batch], sizes)
        return random_feeds(specs, plan[0], np.random.default_rng(seed))
    given = _read_npz(feeds) if isinstance(feeds, (str, os.PathLike)) else dict(feeds)
    return _check_feeds(specs, given)


def _read_npz(path: str | os.PathLike) -> Feeds:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"inputs file not found: {p}")
    try:
        data = np.load(p, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"cannot read inputs from {p}: {one_line(e)}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserError(f"{p} is not an .npz file (save inputs with numpy.savez(path, name=array, ...))")
    try:
        with data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"cannot read inputs from {p}: {one_line(e)}") from None


def _check_feeds(specs: Sequence[InputSpec], given: Mapping[str, object]) -> Feeds:
    check_names(specs, given)
    out: Feeds = {}
    sizes: dict[str, int] = {}
    for s in specs:
        x = np.asarray(given[s.name])
        if x.ndim != len(s.dims):
            raise UserError(f"input {s.name!r} has rank {x.ndim} (shape {list(x.shape)}), the model expects "
                            f"rank {len(s.dims)} {s.dims}")
        for axis, (got, want) in enumerate(zip(x.shape, s.dims, strict=True)):
            if isinstance(want, int) and got != want:
                raise UserError(f"input {s.name!r} has shape {list(x.shape)}, the model expects {s.dims} "
                                f"(dim {axis} must be {want})")
            if isinstance(want, str) and sizes.setdefault(want, got) != got:
                raise UserError(f"input {s.name!r} has size {got} for dim {want!r}, another input has {sizes[want]}")
        out[s.name] = _cast(s, x)
    return out


def _cast(spec: InputSpec, x: np.ndarray) -> np.ndarray:
    if x.dtype == spec.dtype:
        return x
    kinds = {"f": "f", "i": "iu", "u": "iu", "b": "b"}
    if x.dtype.kind in kinds.get(spec.dtype.kind, spec.dtype.kind):
        return x.astype(spec.dtype)
    raise UserError(f"input {spec.name!r} has dtype {x.dtype}, the model expects {spec.dtype}")


def run_model(model: ir.Model, feeds: Feeds, *, backend: str, options: Options | None,
              expose: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``backend``; with ``expose``, a copy that outputs those values too.

    Returns every output of the run by name (the model's own outputs and the exposed values).
    """
    target = model
    if expose:
        target = copy_model(model)
        by_name = {v.name: v for node in target.graph for v in node.outputs}
        present = {v.name for v in target.graph.outputs}
        for name in expose:
            if name not in present:
                target.graph.outputs.append(by_name[name])
                present.add(name)
    session = load(target, backend, options)
    try:
        return session.run(feeds)
    finally:
        session.close()


def describe_run(model: object, backend: str, options: Options | None) -> str:
    """``"resnet18.onnx on ort (settings: graph_optimization_level=all)"``."""
    if isinstance(model, (str, os.PathLike)):
        what = Path(model).name
    else:
        what = getattr(getattr(model, "graph", None), "name", None) or "model"
    extra = []
    if options is not None:
        if options.precision != "fp32":
            extra.append(f"precision {options.precision}")
        if options.threads:
            extra.append(f"{options.threads} threads")
        extra += [f"{k}={v}" for k, v in sorted(options.settings.items())]
    return f"{what} on {backend}" + (f" ({', '.join(extra)})" if extra else "")
