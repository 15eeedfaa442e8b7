"""Triton ensembles: ``platform: "ensemble"`` configs with ``ensemble_scheduling { step [...] }``.

An ensemble is a DAG of calls to other models of the repository (its *composing* models) over named
tensors, accepted as Triton writes it: each step names a ``model_name`` and ``model_version`` (-1:
the newest ready version), an ``input_map`` (composing model input -> ensemble tensor) and an
``output_map`` (composing model output -> ensemble tensor). Ensemble tensors are the ensemble's
inputs and the steps' mapped outputs; the ensemble's outputs are some of them.

Three levels of checks, each a one-line error naming the ensemble, the step and the field:

* :func:`ensemble_steps` (the repository, when the config is read; it also checks each composing
  model's name by its own rule): every step names a model, every
  tensor a step reads is an ensemble input or another step's output, no tensor is written twice,
  every ensemble output is written, and the steps hold no cycle;
* :meth:`Ensemble.check_composing` (when the ensemble loads, its composing models loaded first):
  the mapped names are inputs / outputs of the composing models, every required input is fed, and
  the datatypes and ranks of each tensor agree between its writer and its readers;
* the request: the ensemble's own signature (:func:`slipway.serve.request.check`), then each step's
  request is checked by its composing model as any client request is.

A request runs only the steps its requested outputs need (a subset of outputs never waits for a
tensor nobody computes); steps whose inputs are ready run concurrently. Every step is an ordinary
request to the composing model through the data plane, so each composing model keeps its own dynamic
batching, instances, statistics and metrics, a composing model reloaded meanwhile keeps the ensemble
serving (the request goes to the new version), and tensors pass between steps as the same arrays,
never copied or encoded. A failing step is reported with the ensemble, the step and its model, with
the composing model's status (400 for what the data caused, 503 for a model that is not ready).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slipway.errors import ServeError
from slipway.serve.request import Checked, Checking, Signature, TensorSpec
from slipway.serve.stats import ModelStats
from slipway.serve.types import InferRequest, InferResponse, InferTensor, RequestedOutput

__all__ = ["PLATFORM", "Step", "Ensemble", "is_ensemble", "ensemble_steps", "composing_models"]

PLATFORM = "ensemble"
MAX_DEPTH = 8  # ensembles of ensembles, at most this deep (a reloaded config could close a cycle)

_DEPTH = contextvars.ContextVar("slipway_ensemble_depth", default=0)

Call = Callable[[InferRequest], Awaitable[InferResponse]]
Lookup = Callable[[str, str], Any]  # (model, version "" = newest) -> a served version (ModelVersion / Ensemble)


@dataclass(frozen=True)
class Step:
    index: int
    model: str
    version: int  # -1: the newest ready version
    inputs: Mapping[str, str]  # composing model input -> ensemble tensor
    outputs: Mapping[str, str]  # composing model output -> ensemble tensor

    @property
    def label(self) -> str:
        return f"step {self.index} ({self.model!r})"


def is_ensemble(config: Any) -> bool:
    return config.platform == PLATFORM


def composing_models(config: Any) -> list[str]:
    """The models an ensemble config calls, in step order, each once."""
    return list(dict.fromkeys(s.model_name for s in config.ensemble_scheduling.step))


def ensemble_steps(name: str, config: Any) -> list[Step]:
    """The steps of ensemble ``config``, statically checked (see the module docstring); ServeError 400."""
    where = f"ensemble {name!r}"
    if not config.input or not config.output:
        raise ServeError(f"{where}: an ensemble must declare its inputs and outputs", 400)
    if config.HasField("dynamic_batching") or config.HasField("sequence_batching"):
        raise ServeError(f"{where}: an ensemble does not batch (its composing models do): remove "
                         f"{'dynamic' if config.HasField('dynamic_batching') else 'sequence'}_batching", 400)
    scheduling = config.ensemble_scheduling.step
    if not scheduling:
        raise ServeError(f"{where}: ensemble_scheduling has no step", 400)
    writer: dict[str, str] = {i.name: "the ensemble input" for i in config.input}
    steps = []
    for i, s in enumerate(scheduling):
        if not s.model_name:
            raise ServeError(f"{where}: step {i} has no model_name", 400)
        if s.model_name == name:
            raise ServeError(f"{where}: step {i} calls the ensemble itself", 400)
        if s.model_version == 0 or s.model_version < -1:
            raise ServeError(f"{where}: step {i} ({s.model_name!r}) model_version {s.model_version}: "
                             "expected -1 (the newest) or a version number", 400)
        step = Step(i, s.model_name, int(s.model_version), dict(s.input_map), dict(s.output_map))
        if not step.outputs:
            raise ServeError(f"{where}: {step.label} has an empty output_map", 400)
        for out, tensor in step.outputs.items():
            if not tensor:
                raise ServeError(f"{where}: {step.label} output_map {out!r} maps to an empty tensor name", 400)
            if tensor in writer:
                raise ServeError(f"{where}: {step.label} output_map {out!r} writes tensor {tensor!r}, already "
                                 f"written by {writer[tensor]}", 400)
            writer[tensor] = step.label
        steps.append(step)
    for step in steps:
        for key, tensor in step.inputs.items():
            if tensor not in writer:
                raise ServeError(f"{where}: {step.label} input_map {key!r} reads tensor {tensor!r}, which is "
                                 "neither an ensemble input nor any step's output", 400)
    for out in config.output:
        if out.name not in writer:
            raise ServeError(f"{where}: output {out.name!r} is written by no step's output_map", 400)
        if writer[out.name] == "the ensemble input":
            raise ServeError(f"{where}: output {out.name!r} is also an input", 400)
    _order(where, steps, set(i.name for i in config.input))
    return steps


def _order(where: str, steps: Sequence[Step], inputs: set[str]) -> list[Step]:
    """The steps in an order that runs each after the ones writing its inputs; 400 naming a cycle's step."""
    known, left, order = set(inputs), list(steps), []
    while left:
        ready = [s for s in left if all(t in known for t in s.inputs.values())]
        if not ready:
            s = left[0]
            waiting = sorted(t for t in s.inputs.values() if t not in known)
            raise ServeError(f"{where}: the steps hold a cycle: {s.label} waits for {', '.join(map(repr, waiting))}, "
                             "written by a step that waits for it", 400)
        for s in ready:
            order.append(s)
            known.update(s.outputs.values())
            left.remove(s)
    return order


class Ensemble(Checking):
    """A served ensemble version: the same face as :class:`slipway.serve.model.ModelVersion` (``check``,
    ``run``, ``metadata``, ``stats``, ``pending``, ``close``), its work done by ``call`` (the data plane's
    infer: every step is an ordinary request to its composing model)."""

    platform = PLATFORM

    def __init__(self, name: str, version: int, config: Any, call: Call) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.max_batch_size = int(config.max_batch_size)
        self.steps = ensemble_steps(name, config)
        # BYTES stay bytes: the composing model's own check turns them into text if its engine wants that
        self.signature = Signature.of(name, config, bytes_as_text=False)
        self.inputs = list(self.signature.inputs)
        self.outputs = list(self.signature.outputs)
        self.stats = ModelStats(name, str(version))
        self.closing = False
        self._call = call
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer = {t: s for s in self.steps for t in s.outputs.values()}

    @property
    def pending(self) -> int:
        return self._running

    def composing(self) -> list[tuple[str, str]]:
        """(model, version "" = newest) of every step."""
        return list(dict.fromkeys((s.model, str(s.version) if s.version > 0 else "") for s in self.steps))

    # -- load-time check ------------------------------------------------------------------------

    def check_composing(self, lookup: Lookup) -> None:
        """The mapped names, datatypes and ranks against the loaded composing models (ServeError 400)."""
        where = f"ensemble {self.name!r}"
        types: dict[str, tuple[str, list[int] | None, str]] = {  # tensor -> (datatype, full shape, who says so)
            s.name: (s.datatype, self._full(s), "the ensemble input") for s in self.inputs}
        models = {}
        for step in self.steps:
            try:
                mv = lookup(step.model, str(step.version) if step.version > 0 else "")
            except ServeError as e:
                raise ServeError(f"{where}: {step.label}: {e}", e.status if e.status in (400, 404) else 400) from None
            models[step.index] = mv
            if self.max_batch_size > 0 and not 0 < self.max_batch_size <= mv.max_batch_size:
                raise ServeError(f"{where}: max_batch_size {self.max_batch_size} is over {step.label}'s "
                                 f"{mv.max_batch_size}", 400)
            by_out = {o.name: o for o in mv.outputs}
            for out, tensor in step.outputs.items():
                spec = by_out.get(out)
                if spec is None:
                    raise ServeError(f"{where}: {step.label} output_map {out!r}: model {step.model!r} has no such "
                                     f"output ({', '.join(by_out)})", 400)
                types[tensor] = (spec.datatype, _full(spec, mv.max_batch_size), f"{step.label} output {out!r}")
        for step in self.steps:
            mv = models[step.index]
            by_in = {i.name: i for i in mv.inputs}
            for key, tensor in step.inputs.items():
                spec = by_in.get(key)
                if spec is None:
                    raise ServeError(f"{where}: {step.label} input_map {key!r}: model {step.model!r} has no such "
                                     f"input ({', '.join(by_in)})", 400)
                _agree(where, f"{step.label} input {key!r}", spec.datatype, _full(spec, mv.max_batch_size),
                       tensor, types[tensor])
            missing = [i.name for i in mv.inputs if i.name not in step.inputs and not i.optional]
            if missing:
                raise ServeError(f"{where}: {step.label} does not feed input(s) {', '.join(map(repr, missing))} of "
                                 f"model {step.model!r}", 400)
        for out in self.outputs:
            _agree(where, f"output {out.name!r}", out.datatype, self._full(out), out.name, types[out.name])

    def _full(self, spec: TensorSpec) -> list[int]:
        return _full(spec, self.max_batch_size)

    # -- requests -------------------------------------------------------------------------------

    async def run(self, checked: Checked, request_id: str = "") -> InferResponse:
        """Run the steps the requested outputs need, each as a request to its composing model."""
        if self.closing:
            raise ServeError(f"model {self.name!r} is unloading", 503)
        depth = _DEPTH.get()
        if depth >= MAX_DEPTH:
            raise ServeError(f"ensemble {self.name!r}: ensembles call each other more than {MAX_DEPTH} deep "
                             "(do their steps form a cycle?)", 400)
        token = _DEPTH.set(depth + 1)
        start = time.monotonic_ns()
        self._running += 1
        self._idle.clear()
        try:
            values = {s.name: InferTensor(s.name, s.datatype, list(a.shape), a)
                      for s in self.inputs if (a := checked.feeds.get(s.name)) is not None}
            wanted = [spec.name for spec, _ in checked.outputs]
            await self._run_steps(self._needed(wanted), values, request_id)
        except ServeError:
            self.stats.request_done(False, time.monotonic_ns() - start, reason="BACKEND")
            raise
        except BaseException:
            self.stats.request_done(False, time.monotonic_ns() - start, reason="CANCELED")
            raise
        finally:
            _DEPTH.reset(token)
            self._running -= 1
            if self._running == 0:
                self._idle.set()
        outputs = []
        for spec, params in checked.outputs:
            t = values[spec.name]
            outputs.append(InferTensor(spec.name, t.datatype, list(t.data.shape), t.data, params))
        elapsed = time.monotonic_ns() - start
        self.stats.request_done(True, elapsed, rows=checked.rows, infer_ns=elapsed)
        self.stats.execution_done(checked.rows, 0, elapsed, 0)
        return InferResponse(self.name, str(self.version), request_id, outputs)

    def _needed(self, wanted: Sequence[str]) -> list[Step]:
        """The steps writing ``wanted`` and, recursively, their inputs; in step order."""
        need: set[int] = set()
        stack = [self._writer[t] for t in wanted if t in self._writer]
        while stack:
            s = stack.pop()
            if s.index in need:
                continue
            need.add(s.index)
            stack += [self._writer[t] for t in s.inputs.values() if t in self._writer]
        return [s for s in self.steps if s.index in need]

    async def _run_steps(self, steps: list[Step], values: dict[str, InferTensor], request_id: str) -> None:
        left = list(steps)
        while left:
            ready = [s for s in left if all(t in values for t in s.inputs.values())]
            for s in ready:
                left.remove(s)
            if len(ready) == 1:
                values.update(await self._step(ready[0], values, request_id))
                continue
            # independent steps at once; the first failure cancels the others and is raised as it is
            tasks = [asyncio.ensure_future(self._step(s, values, request_id)) for s in ready]
            try:
                for produced in await asyncio.gather(*tasks):
                    values.update(produced)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    async def _step(self, step: Step, values: Mapping[str, InferTensor], request_id: str) -> dict[str, InferTensor]:
        inputs = []
        for key, tensor in step.inputs.items():
            t = values[tensor]
            inputs.append(InferTensor(key, t.datatype, t.shape, t.data))
        request = InferRequest(step.model, str(step.version) if step.version > 0 else "", request_id, inputs,
                               [RequestedOutput(out) for out in step.outputs])
        try:
            response = await self._call(request)
        except ServeError as e:
            raise ServeError(f"ensemble {self.name!r} {step.label}: {e}", e.status) from None
        got = {o.name: o for o in response.outputs}
        return {tensor: got[out] for out, tensor in step.outputs.items()}

    # -- life cycle -----------------------------------------------------------------------------

    async def close(self, drain: bool = True) -> None:
        self.closing = True
        if drain:
            await self._idle.wait()


def _full(spec: TensorSpec, max_batch_size: int) -> list[int]:
    dims = list(spec.reshape if spec.reshape is not None else spec.dims)
    return ([-1] if max_batch_size > 0 else []) + dims


def _agree(where: str, reader: str, datatype: str, shape: list[int], tensor: str,
           written: tuple[str, list[int] | None, str]) -> None:
    """The reader of ``tensor`` takes what its writer gives: the same datatype, rank and fixed sizes."""
    w_type, w_shape, writer = written
    if datatype != w_type:
        raise ServeError(f"{where}: {reader} takes {datatype} but tensor {tensor!r} is {w_type} ({writer})", 400)
    if w_shape is not None and (len(shape) != len(w_shape) or any(
            a != -1 and b != -1 and a != b for a, b in zip(shape, w_shape, strict=True))):
        raise ServeError(f"{where}: {reader} takes shape {shape} but tensor {tensor!r} has shape {w_shape} "
                         f"({writer})", 400)
