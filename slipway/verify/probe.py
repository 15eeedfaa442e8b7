"""Inputs a model actually runs on: the user's shapes or data, else sizes derived by probing.

Real models restrict their input sizes in ways the ONNX signature does not say: a text detector
needs H and W to be multiples of 32 (its FPN adds upsampled maps), a voice detector needs 256 or
512 samples and a sample rate it branches on, a state input shares its batch with the audio. So
every command that runs a model (verification in convert / optimize / quantize, compare, bench,
tune) gets its inputs here, one way:

* ``data`` (``--data FILE.npz``): exactly those arrays;
* ``shapes`` (``--shape NAME=D0,D1,...``): exactly those sizes, random values;
* otherwise sizes **derived from the model**: candidate sizes of the dynamic dims are tried in
  onnxruntime, cheapest first, and the first ones it runs are used. Integer inputs compared with
  constants in the graph (``Equal(sr, 16000)``) take those constants, and one more run takes another
  value (half the constant) so the other branch of the If they drive runs too. A dim without a name in
  an input other than the first (``state [2, None, 128]``) is first tried at the batch size.

Each plan adds a second batch size where the batch dim is dynamic (unnamed dims that equal the
batch follow it). Every run in the plan has run on the reference; when nothing runs, one line
says which inputs need ``--shape`` or ``--data``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from slipway.errors import UserError, one_line
from slipway.graph import const
from slipway.verify.engine import Runner, ort_runner
from slipway.verify.inputs import (
    DEFAULT_BATCH_SIZES,
    Feeds,
    InputSpec,
    at_batch,
    batch_data,
    batch_dim,
    check_data,
    describe,
    input_specs,
    load_inputs,
    random_feeds,
    tied_dims,
)

# sizes tried for a dynamic dim, cheapest combination first: multiples of 16 and 32 (strided
# image models), powers of two and the usual audio chunk lengths
LADDER = (16, 32, 64, 96, 128, 160, 256, 320, 512, 640, 1024)
MAX_PROBES = 48
PROBE_BUDGET_S = 30.0
COMPARISONS = {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"}


@dataclass
class Plan:
    """The inputs to run: one feed dict per run, each known to run on the reference."""

    feeds: list[Feeds]
    source: str  # "data", "shapes" or "derived"
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> Feeds:
        return self.feeds[0]


def plan_inputs(
    model: ir.Model,
    reference: Runner | None = None,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seed: int = 0,
    specs: Sequence[InputSpec] | None = None,
) -> Plan:
    """The runs for ``model``: its ``data``, else its ``shapes``, else derived sizes (see the module).

    ``reference`` runs the model (default: onnxruntime, optimizations off); a run it cannot do
    is an error for the user's own inputs and a skipped candidate for derived ones.
    """
    if data is not None and shapes:
        raise UserError("give either --data or --shape, not both (the data has its shapes)")
    specs = list(specs) if specs is not None else hinted_specs(model)
    if reference is None:
        reference = ort_runner(model)
    rng = np.random.default_rng(seed)
    if data is not None:
        return _from_data(specs, reference, data, batch_sizes)
    if shapes:
        fixed = fixed_dims(specs, shapes)
        batch = _user_batch(specs, shapes)
        first = random_feeds(specs, _with_batch(specs, fixed, batch), rng)
        _must_run(reference, first, "at the given --shape")
        plan = Plan([first], "shapes")
        second = [b for b in batch_sizes if b != batch][:1]  # exactly the given shapes, plus one other batch
        _add_batch_run(plan, specs, reference, fixed, second, rng)
        return plan
    return _derived(specs, reference, batch_sizes, rng)


def derive_dim_sizes(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None,
                     reference: Runner | None = None) -> dict[str, int]:
    """Sizes of every dynamic dim except the batch: the user's (``shapes``), the rest derived."""
    specs = hinted_specs(model)
    batch = batch_dim(specs)
    fixed = fixed_dims(specs, shapes or {})
    if all(d == batch or d in fixed for d in _dynamic(specs)):
        return {d: n for d, n in fixed.items() if d != batch}
    plan = plan_inputs(model, reference, shapes=shapes, batch_sizes=(1,), specs=specs)
    sizes = sizes_of(specs, plan.first)
    return {d: n for d, n in sizes.items() if d != batch}


# ---------------------------------------------------------------- hints and dims


def hinted_specs(model: ir.Model) -> list[InputSpec]:
    """The model's input specs with the graph's value hints (:func:`with_value_hints`): what every
    random input is drawn from."""
    return with_value_hints(model, input_specs(model))


def with_value_hints(model: ir.Model, specs: list[InputSpec]) -> list[InputSpec]:
    """Integer inputs get a value range from the graph: Gather indices draw within the table,
    inputs compared with constants (``Equal(sr, 16000)``) take the first constant."""
    for spec in specs:
        if not np.issubdtype(spec.dtype, np.integer) or spec.example is not None:
            continue
        rows = _gather_rows(model, spec.name)
        values = compared_constants(model, spec.name)
        if rows:
            spec.example = np.array([0, min(9, rows - 1)], dtype=spec.dtype)
        elif values:
            spec.example = np.array([values[0]], dtype=spec.dtype)
            spec.branch_values = tuple(values)
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


def compared_constants(model: ir.Model, name: str) -> list[int]:
    """Integer constants that input ``name`` is compared with (in graph order)."""
    value = next((v for v in model.graph.inputs if v.name == name), None)
    found: list[int] = []
    for node, _ in value.uses() if value is not None else ():
        if node.op_type not in COMPARISONS or node.domain not in ("", "ai.onnx"):
            continue
        for other in node.inputs:
            c = const(other, limit=1) if other is not value else None
            if c is not None and c.size == 1 and np.issubdtype(c.dtype, np.integer):
                found.append(int(c.reshape(-1)[0]))
    return list(dict.fromkeys(found))


def _dynamic(specs: Sequence[InputSpec]) -> list[str]:
    return list(dict.fromkeys(d for s in specs for d in s.dims if isinstance(d, str)))


def fixed_dims(specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]],
               free_batch: bool = False) -> dict[str, int]:
    """The dim sizes ``shapes`` gives, checked against the model (one-line errors). ``free_batch``:
    the batch (the first input's dim 0) is set elsewhere (``--batch``), so a static one is not checked."""
    names = {s.name: s for s in specs}
    sizes: dict[str, int] = {}
    for name, dims in shapes.items():
        spec = names.get(name)
        if spec is None:
            raise UserError(f"--shape names {name!r}, which is not a model input "
                            f"(inputs: {', '.join(names) or 'none'})")
        if len(dims) != len(spec.dims):
            raise UserError(f"--shape {name}: got {len(dims)} dims, the input has rank {len(spec.dims)} "
                            f"{_show(spec.dims)}")
        for axis, (want, d) in enumerate(zip(dims, spec.dims, strict=True)):
            if int(want) < 1:
                raise UserError(f"--shape {name}: dims must be positive, got {list(dims)}")
            if free_batch and axis == 0 and spec is specs[0]:
                continue
            if isinstance(d, int) and int(want) != d:
                raise UserError(f"--shape {name}: dim {axis} is {want}, the model fixes it at {d}")
            if isinstance(d, str) and sizes.setdefault(d, int(want)) != int(want):
                raise UserError(f"--shape gives dim {d!r} two sizes: {sizes[d]} and {want}")
    return sizes


def _show(dims: Sequence[int | str]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _user_batch(specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]]) -> int:
    batch = batch_dim(specs)
    if batch is None:
        return 1
    return int(fixed_dims(specs, shapes).get(batch, 1))


def _with_batch(specs: Sequence[InputSpec], sizes: Mapping[str, int], batch: int) -> dict[str, int]:
    """``sizes`` completed: the batch dim at ``batch``; dims not given derive nothing here."""
    out = dict(sizes)
    name = batch_dim(specs)
    if name is not None:
        out.setdefault(name, batch)
    missing = [d for d in _dynamic(specs) if d not in out]
    if missing:
        owner = next(s for s in specs if any(d in missing for d in s.dims))
        raise UserError(f"input {owner.name!r} has dynamic dims {missing} that --shape does not give: "
                        f"give every input's shape (--shape {owner.name}={_show(owner.dims)[1:-1]})")
    return out


def sizes_of(specs: Sequence[InputSpec], feeds: Feeds) -> dict[str, int]:
    """The dynamic dim sizes of one feed dict."""
    out: dict[str, int] = {}
    for s in specs:
        a = feeds.get(s.name)
        for axis, d in enumerate(s.dims):
            if isinstance(d, str) and a is not None and a.ndim > axis:
                out.setdefault(d, int(a.shape[axis]))
    return out


# ---------------------------------------------------------------- running


def _try(reference: Runner, feeds: Feeds) -> str:
    """"" when ``reference`` runs ``feeds``, else its one-line error."""
    try:
        reference(feeds)
    except UserError:
        raise
    except Exception as e:  # onnxruntime's errors are plain exceptions
        return one_line(e)
    return ""


def _must_run(reference: Runner, feeds: Feeds, how: str) -> None:
    error = _try(reference, feeds)
    if error:
        raise UserError(f"the model does not run {how} ({describe(feeds)}): {error}")


def _from_data(specs: list[InputSpec], reference: Runner, data: Mapping[str, np.ndarray] | str | os.PathLike,
               batch_sizes: Sequence[int]) -> Plan:
    arrays, label = load_inputs(data)
    check_data(specs, arrays, label)
    first = {s.name: np.require(arrays[s.name], requirements="C") for s in specs}  # keeps 0-d arrays 0-d
    _must_run(reference, first, f"on {label}")
    plan = Plan([first], "data")
    batch = batch_dim(specs)
    if batch is not None:
        have = int(first[specs[0].name].shape[0])
        other = next((b for b in batch_sizes if b != have), None)
        if other is not None:
            feeds = batch_data(specs, first, other)
            error = _try(reference, feeds)
            if error:
                plan.notes.append(f"the data tiled to batch {other} does not run ({error}); verified at its own "
                                  f"batch {have} only")
            else:
                plan.feeds.append(feeds)
    return plan


def _add_batch_run(plan: Plan, specs: list[InputSpec], reference: Runner, sizes: Mapping[str, int],
                   batch_sizes: Sequence[int], rng: np.random.Generator, second: Mapping[str, int] | None = None) -> None:
    """A run at each other batch size (unnamed dims at the batch size follow it), if it runs; the
    runs alternate between ``sizes`` and ``second`` (other derived sizes), second first."""
    batch = batch_dim(specs)
    have = sizes.get(batch, 1) if batch is not None else None
    others = [b for b in dict.fromkeys(batch_sizes) if b != have] if batch is not None else []
    variants = [dict(second), dict(sizes)] if second is not None and dict(second) != dict(sizes) else [dict(sizes)]
    if not others:
        if len(variants) > 1:
            feeds = random_feeds(specs, variants[0], rng)
            if not _try(reference, feeds):
                plan.feeds.append(feeds)
        return
    for i, other in enumerate(others):
        base = variants[i % len(variants)]
        moved, alone = at_batch(specs, base, other, have), {**base, batch: other}  # with and without tied dims
        error = ""
        for trial in [moved] + ([alone] if alone != moved else []):
            feeds = random_feeds(specs, trial, rng)
            error = _try(reference, feeds)
            if not error:
                plan.feeds.append(feeds)
                break
        if error:
            plan.notes.append(f"the model does not run at batch {other} ({error}); not verified at that batch")


def _derived(specs: list[InputSpec], reference: Runner, batch_sizes: Sequence[int],
             rng: np.random.Generator) -> Plan:
    batch = batch_dim(specs)
    first_batch = int(batch_sizes[0]) if batch_sizes else 1
    dims = [d for d in _dynamic(specs) if d != batch]
    tied = tied_dims(specs)
    base = {batch: first_batch} if batch is not None else {}
    examples = _example_sizes(specs)
    choices = [_candidates(d, d in tied, examples.get(d), first_batch) for d in dims]
    found, ran, tried, first_error = _search(specs, reference, dims, choices, base, rng, want=2)
    if not found:
        raise UserError(_no_sizes_message(specs, tried, first_error))
    plan = Plan([ran[0]], "derived")
    if dims:
        shown = ", ".join(f"{d}={found[0][d]}" for d in dims)
        plan.notes.append(f"input sizes derived by running the model ({tried} tried): {shown}")
    _add_batch_run(plan, specs, reference, found[0], batch_sizes, rng, found[1] if len(found) > 1 else None)
    _other_branches(plan, specs, reference, dims, choices, base, rng)
    return plan


def _search(specs: Sequence[InputSpec], reference: Runner, dims: list[str], choices: list[list[int]],
            base: Mapping[str, int], rng: np.random.Generator, want: int,
            budget: int = MAX_PROBES) -> tuple[list[dict[str, int]], list[Feeds], int, str]:
    """Up to ``want`` sizes of ``dims`` the reference runs, cheapest first: (the sizes, the feeds it ran
    at them, candidates tried, the first error)."""
    found: list[dict[str, int]] = []
    ran: list[Feeds] = []
    tried, first_error, t0 = 0, "", time.monotonic()
    for combo in _cheapest_first(choices):
        if len(found) == want or tried >= budget or (tried and time.monotonic() - t0 > PROBE_BUDGET_S):
            break
        sizes = {**base, **dict(zip(dims, combo, strict=True))}
        tried += 1
        feeds = random_feeds(specs, sizes, rng)
        error = _try(reference, feeds)
        if error:
            first_error = first_error or error
            continue
        found.append(sizes)
        ran.append(feeds)
    return found, ran, tried, first_error


def _other_branches(plan: Plan, specs: list[InputSpec], reference: Runner, dims: list[str],
                    choices: list[list[int]], base: Mapping[str, int], rng: np.random.Generator) -> None:
    """A run where an input the graph compares with constants (``Equal(sr, 16000)``) takes another value,
    so the other branch of the If it drives is verified too (half the constant, else one more)."""
    for i, spec in enumerate(specs):
        if not spec.branch_values:
            continue
        others = [v for v in (spec.branch_values[0] // 2, spec.branch_values[0] + 1) if v not in spec.branch_values]
        for value in others:
            changed = [*specs[:i], replace(spec, example=np.array([value], dtype=spec.dtype)), *specs[i + 1:]]
            _, ran, _, _ = _search(changed, reference, dims, choices, base, rng, want=1, budget=MAX_PROBES // 2)
            if ran:
                plan.feeds.append(ran[0])
                plan.notes.append(f"also run with {spec.name}={value} (the other side of the comparison with "
                                  f"{spec.branch_values[0]})")
                break


def _example_sizes(specs: Sequence[InputSpec]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in specs:
        if s.example is None or np.issubdtype(s.dtype, np.integer):  # integer examples are value hints
            continue
        for axis, d in enumerate(s.dims):
            if isinstance(d, str) and s.example.ndim == len(s.dims):
                out.setdefault(d, int(s.example.shape[axis]))
    return out


def _candidates(dim: str, tied: bool, example: int | None, batch: int) -> list[int]:
    sizes = ([example] if example else []) + ([batch] if tied else []) + list(LADDER)
    return list(dict.fromkeys(sizes))


def _cheapest_first(choices: list[list[int]]) -> list[tuple[int, ...]]:
    """Combinations of the candidate sizes, smallest product first (then the candidates' order)."""
    if not choices:
        return [()]
    per_dim = max(2, int(20000 ** (1 / len(choices))))
    trimmed = [c[:per_dim] for c in choices]
    combos = list(itertools.product(*trimmed))
    rank = [{v: i for i, v in enumerate(c)} for c in trimmed]
    return sorted(combos, key=lambda t: (float(np.prod([float(x) for x in t])),
                                         sum(r[x] for r, x in zip(rank, t, strict=True))))


def _no_sizes_message(specs: Sequence[InputSpec], tried: int, first_error: str) -> str:
    owners = [s for s in specs if any(isinstance(d, str) for d in s.dims) or np.issubdtype(s.dtype, np.integer)]
    names = ", ".join(repr(s.name) for s in owners) or ", ".join(repr(s.name) for s in specs)
    example = owners[0] if owners else specs[0]
    return (f"the model did not run on any of {tried} derived input sizes (on the smallest: {first_error}); "
            f"give input {names} with --shape {example.name}={_show(example.dims)[1:-1]} "
            f"or real inputs with --data FILE.npz")
