"""Pipeline core: steps, the op registry, checks at construction, run, YAML files.

A :class:`Pipeline` is a list of :class:`Step` s wired by tensor names: every step reads named
pipeline tensors (a pipeline input or another step's output) and writes new ones. Construction
checks the wiring (unique step names, every input produced, no tensor produced twice, no cycle,
known ops, every pipeline output produced) and orders the steps topologically; every problem is
a one-line :class:`PipelineError` naming the step and the field. ``run`` passes values between
steps as they are (no copies), creates each model's engine session once (lazily, through
:func:`slipway.backends.load`) and names the failing step in a one-line error.

The op registry lives here (:data:`OPS`, :func:`register_op`) so that task modules
(``slipway.pipeline.ocr``, ``.detect``) can register ops while the package is still importing;
``slipway.pipeline.ops`` re-exports it next to the generic ops.

State: an op registered ``stateful=True`` (the tracker, :mod:`slipway.pipeline.track`) keeps state
between runs. It is called with ``state=``: a dict of its own (one per step), taken from the ``state``
given to :meth:`Pipeline.run` (a dict of step name -> that step's dict: the server keeps one per
sequence, :mod:`slipway.serve.sequence`), else from the pipeline's own (one per running pipeline,
emptied by :meth:`Pipeline.reset_state` or a new pipeline). Runs that share a state must come in
order: ``map(workers > 1)`` refuses a pipeline with stateful steps.
"""

from __future__ import annotations

import contextvars
import difflib
import importlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slipway.backends.declared import onnx_io
from slipway.errors import UserError, one_line
from slipway.model import atomic_write_text

__all__ = [
    "OPS",
    "OpSpec",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "Step",
    "path_params",
    "register_op",
]

KINDS = ("model", "op", "python")
MODEL_PARAMS = {"backend": "ort", "threads": 0}
PATH_SUFFIXES = ("_model", "_path", "_file")
FORMAT_VERSION = 1


class PipelineError(UserError):
    """A pipeline that is wired wrong, a bad pipeline file, missing inputs, or a step that failed."""


# ---------------------------------------------------------------------------------- op registry


@dataclass(frozen=True)
class OpSpec:
    """A registered op: ``fn(**inputs, **params) -> dict`` with exactly ``outputs`` as keys."""

    name: str
    fn: Callable[..., dict[str, Any]]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    paths: tuple[str, ...] | None = None  # params that name files (None: the naming rule, see path_params)
    stateful: bool = False  # called with state= (a dict kept between runs; see the module docstring)

    @property
    def doc(self) -> str:
        return (inspect.getdoc(self.fn) or "").split("\n", 1)[0]

    def defaults(self) -> dict[str, Any]:
        """Keyword arguments of ``fn`` that have a default value."""
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):
            return {}
        return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


OPS: dict[str, OpSpec] = {}


def register_op(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...],
                paths: tuple[str, ...] | None = None, stateful: bool = False) -> Callable:
    """Decorator: register ``fn`` as the pipeline op ``name`` with the given input / output names.

    The function takes the inputs (and the step's params) as keyword arguments and returns a dict
    with exactly ``outputs`` as keys. ``paths`` names the params whose string values are files
    (a model, a dictionary): pipeline files store them relative to the file, like model steps;
    without it, the naming rule of :func:`path_params` applies. Registering a second, different
    function under a taken name is a programming error (``ValueError``); re-registering the same
    function (a module reload) is allowed. ``stateful``: the op keeps state between runs and takes
    it as the keyword ``state`` (see the module docstring).
    """
    inputs, outputs = tuple(inputs), tuple(outputs)
    if paths is not None:
        paths = tuple(paths)
    if not name or not isinstance(name, str):
        raise ValueError(f"register_op: op name must be a non-empty string, got {name!r}")
    for label, names in (("inputs", inputs), ("outputs", outputs)):
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"register_op({name!r}): {label} must be distinct non-empty strings, got {names}")

    def wrap(fn: Callable) -> Callable:
        old = OPS.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(
                f"register_op: op {name!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}"
            )
        OPS[name] = OpSpec(name, fn, inputs, outputs, paths, bool(stateful))
        return fn

    return wrap


def _named_path(key: str) -> bool:
    return key == "model" or key.endswith(PATH_SUFFIXES)


def path_params(step: Step) -> list[str]:
    """The params of an op / python step that name files, stored relative to the pipeline file.

    An op's declared ``paths`` (:func:`register_op`); for an op that declares none and for python
    steps, the params named ``model`` or ending in ``_model``, ``_path`` or ``_file``. Only string
    (or path) values count: a list of characters, a number or ``None`` stay as they are.
    """
    if step.kind == "model" or not isinstance(step.params, Mapping):
        return []
    spec = OPS.get(step.target) if step.kind == "op" and isinstance(step.target, str) else None
    declared = spec.paths if spec is not None else None
    return [k for k, v in step.params.items()
            if isinstance(v, (str, os.PathLike)) and (k in declared if declared is not None else _named_path(k))]


def _ensure_ops() -> None:
    """Import the generic and task ops (core is importable alone; the registry fills on first use)."""
    importlib.import_module("slipway.pipeline.ops")
    importlib.import_module("slipway.pipeline.track")  # the stateful tracker op


# ---------------------------------------------------------------------------------- steps


def _default_params() -> dict[str, Any]:
    return {}


_RUNNING: contextvars.ContextVar[Pipeline | None] = contextvars.ContextVar("slipway_pipeline", default=None)
_SHARED: dict[tuple[str, int, int, str, int], Any] = {}
_SHARED_LOCK = threading.Lock()


def model_session(model: str | os.PathLike, backend: str = "ort", threads: int = 0) -> Any:
    """THE engine session an op runs a model file on (the OCR recognizer and angle classifier): the
    running pipeline's own, created on its first use and closed with the pipeline (so two pipelines,
    or two instances of a served one, never share one); outside any pipeline, one process-wide
    session. Keyed by the file as it is now (path, mtime, size), the backend and the thread count,
    so a file replaced in place (a served model reloaded) never gets the old file's session."""
    from slipway.backends import load
    from slipway.backends.base import Options

    path = Path(model)
    if not path.is_file():
        raise UserError(f"model: file not found: {path}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, backend, int(threads))
    pipeline = _RUNNING.get()
    cache, lock = (pipeline._op_sessions, pipeline._lock) if pipeline is not None else (_SHARED, _SHARED_LOCK)
    with lock:
        if key not in cache:
            cache[key] = load(path, backend, Options(threads=int(threads)))
        return cache[key]


@dataclass
class Step:
    """One step: a model (ONNX path), a registered op (its name) or a python callable.

    ``inputs`` maps the step-side name (model: ONNX input name; op / python: keyword) to a
    pipeline tensor name; ``outputs`` maps the step-side name (model: ONNX output name; op /
    python: key of the returned dict) to a pipeline tensor name. ``params`` are extra keyword
    arguments (op / python) or engine settings (model: ``backend``, ``threads``).
    """

    name: str
    kind: str
    target: Any
    inputs: dict[str, str]
    outputs: dict[str, str]
    params: dict[str, Any] = field(default_factory=_default_params)

    @classmethod
    def model(cls, name: str, path: str | os.PathLike, inputs: Mapping[str, str], outputs: Mapping[str, str],
              **params: Any) -> Step:
        return cls(name, "model", path, dict(inputs), dict(outputs), dict(params))

    @classmethod
    def op(cls, name: str, op: str, inputs: Mapping[str, str], outputs: Mapping[str, str], **params: Any) -> Step:
        return cls(name, "op", op, dict(inputs), dict(outputs), dict(params))

    @classmethod
    def python(cls, name: str, fn: Callable | str, inputs: Mapping[str, str], outputs: Mapping[str, str],
               **params: Any) -> Step:
        return cls(name, "python", fn, dict(inputs), dict(outputs), dict(params))

    def describe(self) -> str:
        """``KIND TARGET`` as the error messages write it."""
        return f"{self.kind} {_target_text(self)}"


def _target_text(step: Step) -> str:
    t = step.target
    if step.kind == "python" and callable(t):
        return f"{getattr(t, '__module__', '?')}:{getattr(t, '__qualname__', type(t).__name__)}"
    return str(t)


@dataclass
class PipelineResult:
    outputs: dict[str, Any]
    timings_ms: dict[str, float]  # per step, plus "total"
    trace: dict[str, Any] | None = None  # every tensor, when run(trace=True)


# ---------------------------------------------------------------------------------- pipeline


class Pipeline:
    """Steps wired by tensor names, checked at construction, run in topological order."""

    def __init__(self, steps: list[Step], inputs: list[str], outputs: list[str], name: str = "pipeline",
                 base: Path | None = None) -> None:
        self.steps = list(steps)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.name = name
        self.base = Path(base) if base is not None else None
        self._sessions: dict[str, Any] = {}
        self._op_sessions: dict[tuple[str, int, int, str, int], Any] = {}  # model_session's, for this pipeline
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}
        self._params: dict[str, dict[str, Any]] = {}  # params as the steps run them (file params resolved)
        self._fns: dict[str, Callable] = {}
        self._order: list[Step] = []
        self._last_use: dict[str, int] = {}
        self._state: dict[str, dict[str, Any]] = {}  # stateful ops' state when run() is given none
        self._check()

    # ------------------------------------------------------------------ checks

    def _check(self) -> None:
        _ensure_ops()
        for label, names in (("inputs", self.inputs), ("outputs", self.outputs)):
            _check_names(f"pipeline {label}", names)
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise PipelineError(f"pipeline {label}: tensor {n!r} is listed twice")
                seen.add(n)
        producer: dict[str, str] = {n: "pipeline input" for n in self.inputs}
        by_name: dict[str, Step] = {}
        for i, step in enumerate(self.steps):
            if not isinstance(step, Step):
                raise PipelineError(f"steps[{i}]: expected a Step, got {type(step).__name__}")
            if not isinstance(step.name, str) or not step.name:
                raise PipelineError(f"steps[{i}]: step name must be a non-empty string, got {step.name!r}")
            if step.name in by_name:
                raise PipelineError(f"duplicate step name {step.name!r}")
            by_name[step.name] = step
            self._check_step(step)
            for key, tensor in step.outputs.items():
                if tensor in producer:
                    raise PipelineError(
                        f"step {step.name!r} output {key!r}: tensor {tensor!r} is already produced by "
                        f"{_who(producer[tensor])}"
                    )
                producer[tensor] = step.name
        for step in self.steps:
            for key, tensor in step.inputs.items():
                if tensor not in producer:
                    raise PipelineError(f"step {step.name!r} input {key!r}: unknown tensor {tensor!r}"
                                        f"{_suggest(tensor, producer)}")
        for tensor in self.outputs:
            if tensor not in producer:
                raise PipelineError(f"pipeline output {tensor!r} is produced by no step{_suggest(tensor, producer)}")
        self._order = _toposort(self.steps, producer)
        last: dict[str, int] = {}
        for i, step in enumerate(self._order):
            for tensor in step.inputs.values():
                last[tensor] = i
        self._last_use = last

    def _check_step(self, step: Step) -> None:
        where = f"step {step.name!r}"
        if step.kind not in KINDS:
            raise PipelineError(f"{where}: unknown kind {step.kind!r} (expected one of: {', '.join(KINDS)})")
        for label in ("inputs", "outputs"):
            mapping = getattr(step, label)
            if not isinstance(mapping, Mapping):
                raise PipelineError(f"{where} {label}: expected a mapping of names to tensors, "
                                    f"got {type(mapping).__name__}")
            for key, tensor in mapping.items():
                if not isinstance(key, str) or not key:
                    raise PipelineError(f"{where} {label}: names must be non-empty strings, got {key!r}")
                if not isinstance(tensor, str) or not tensor:
                    raise PipelineError(f"{where} {label} {key!r}: tensor name must be a non-empty string, "
                                        f"got {tensor!r}")
        if not step.outputs:
            raise PipelineError(f"{where} outputs: a step must produce at least one tensor")
        if not isinstance(step.params, Mapping):
            raise PipelineError(f"{where} params: expected a mapping, got {type(step.params).__name__}")
        if step.kind == "op":
            self._check_op(step, where)
        elif step.kind == "model":
            self._check_model(step, where)
        else:
            self._check_python(step, where)
        self._resolve_paths(step, where)

    def _resolve_paths(self, step: Step, where: str) -> None:
        """File params: relative ones are under ``base`` (the pipeline file's folder); each must exist."""
        params = dict(step.params)
        for key in path_params(step):
            path = Path(params[key])
            if not path.is_absolute() and self.base is not None:
                path = self.base / path
            if not path.is_file():
                raise PipelineError(f"{where} params {key!r}: file not found: {path}")
            params[key] = str(path)
        self._params[step.name] = params

    def _check_op(self, step: Step, where: str) -> None:
        if not isinstance(step.target, str) or step.target not in OPS:
            hint = _suggest(str(step.target), OPS, "op ") if isinstance(step.target, str) else ""
            raise PipelineError(f"{where}: unknown op {step.target!r}{hint}")
        spec = OPS[step.target]
        for key in step.inputs:
            if key not in spec.inputs:
                raise PipelineError(f"{where} inputs: op {spec.name!r} has no input {key!r} "
                                    f"(inputs: {', '.join(spec.inputs)})")
        for key in step.outputs:
            if key not in spec.outputs:
                raise PipelineError(f"{where} outputs: op {spec.name!r} has no output {key!r} "
                                    f"(outputs: {', '.join(spec.outputs)})")
        defaults = spec.defaults()
        for key in spec.inputs:
            if key not in step.inputs and key not in step.params and key not in defaults:
                raise PipelineError(f"{where} inputs: op {spec.name!r} input {key!r} is not connected")
        for key in step.params:
            if key in step.inputs:
                raise PipelineError(f"{where} params: {key!r} is also connected as an input")
        if spec.stateful and ("state" in step.params or "state" in step.inputs):
            raise PipelineError(f"{where}: 'state' of op {spec.name!r} is kept by the pipeline; it is no param "
                                "or input")
        _check_params(where, spec.fn, step.params, step.inputs)

    def _check_model(self, step: Step, where: str) -> None:
        if not isinstance(step.target, (str, os.PathLike)):
            raise PipelineError(f"{where}: model target must be a path, got {type(step.target).__name__}")
        for key in step.params:
            if key not in MODEL_PARAMS:
                raise PipelineError(f"{where} params: unknown model parameter {key!r} "
                                    f"(known: {', '.join(MODEL_PARAMS)})")
        threads = step.params.get("threads", 0)
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
            raise PipelineError(f"{where} params: threads must be a non-negative int, got {threads!r}")
        backend = step.params.get("backend", "ort")
        if not isinstance(backend, str):
            raise PipelineError(f"{where} params: backend must be a string, got {backend!r}")
        path = Path(step.target)
        if not path.is_absolute() and self.base is not None:
            path = self.base / path
        if not path.is_file():
            raise PipelineError(f"{where}: model file not found: {path}")
        self._paths[step.name] = path
        if path.suffix.lower() != ".onnx":
            return  # another engine's files: the session checks the names when it is created
        declared_in, declared_out = onnx_io(path, str(step.target))
        names_in = [t.name for t in declared_in]
        names_out = [t.name for t in declared_out]
        for key in step.inputs:
            if key not in names_in:
                raise PipelineError(f"{where} inputs: model has no input {key!r} (inputs: {', '.join(names_in)})")
        for key in names_in:
            if key not in step.inputs:
                raise PipelineError(f"{where} inputs: model input {key!r} is not connected")
        for key in step.outputs:
            if key not in names_out:
                raise PipelineError(f"{where} outputs: model has no output {key!r} "
                                    f"(outputs: {', '.join(names_out)})")

    def _check_python(self, step: Step, where: str) -> None:
        fn = step.target
        if isinstance(fn, str):
            fn = _resolve(fn, where)
        if not callable(fn):
            raise PipelineError(f"{where}: python target must be callable, got {type(fn).__name__}")
        self._fns[step.name] = fn
        for key in step.params:
            if key in step.inputs:
                raise PipelineError(f"{where} params: {key!r} is also connected as an input")
        _check_params(where, fn, step.params, step.inputs)

    # ------------------------------------------------------------------ run

    def run(self, inputs: Mapping[str, Any], *, trace: bool = False,
            state: dict[str, Any] | None = None) -> PipelineResult:
        """Run every step in topological order on ``inputs`` (pipeline input name -> value).

        ``state``: where stateful ops keep their state for this run (step name -> the step's dict, filled
        on first use: one such dict per stream / sequence); None: the pipeline's own."""
        if not isinstance(inputs, Mapping):
            raise PipelineError(f"pipeline inputs: expected a mapping of names to values, got {type(inputs).__name__}")
        for n in self.inputs:
            if n not in inputs:
                raise PipelineError(f"missing pipeline input {n!r} (inputs: {', '.join(self.inputs)})")
        for n in inputs:
            if n not in self.inputs:
                raise PipelineError(f"unknown pipeline input {n!r} (inputs: {', '.join(self.inputs)})")
        if state is not None and not isinstance(state, dict):
            raise PipelineError(f"state: expected a dict, got {type(state).__name__}")
        token = _RUNNING.set(self)  # ops that run a model file get this pipeline's sessions (model_session)
        try:
            return self._run(inputs, trace, self._state if state is None else state)
        finally:
            _RUNNING.reset(token)

    __call__ = run

    def map(self, inputs: Iterable[Mapping[str, Any]], *, workers: int = 1) -> list[PipelineResult]:
        """:meth:`run` on each of ``inputs`` (several images), results in the same order; ``workers`` > 1 runs
        that many at once in threads that share this pipeline's sessions (the engines run concurrent calls;
        give the model steps ``threads`` so that workers x threads fits the cores). The first failure is
        raised, naming the item; the items not started yet are not run."""
        items = list(inputs)
        if not isinstance(workers, int) or workers < 1:
            raise PipelineError(f"workers: expected a positive integer, got {workers!r}")
        if workers > 1 and self.stateful_steps:
            raise PipelineError(f"workers: step {self.stateful_steps[0]!r} keeps state between runs, so the "
                                "inputs must run in order; use workers=1")

        def one(i: int) -> PipelineResult:
            try:
                return self.run(items[i])
            except PipelineError as e:
                raise PipelineError(f"input {i}: {e}") from e

        if workers == 1 or len(items) < 2:
            return [one(i) for i in range(len(items))]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="slipway-pipeline") as pool:
            futures = [pool.submit(one, i) for i in range(len(items))]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _run(self, inputs: Mapping[str, Any], trace: bool, state: dict[str, Any]) -> PipelineResult:
        values: dict[str, Any] = dict(inputs)
        kept: dict[str, Any] | None = dict(inputs) if trace else None
        keep = set(self.outputs)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        for i, step in enumerate(self._order):
            t0 = time.perf_counter()
            try:
                produced = self._run_step(step, {k: values[t] for k, t in step.inputs.items()}, state)
            except Exception as e:  # noqa: BLE001 - every failure is named by its step
                typed = not isinstance(e, UserError)
                raise PipelineError(f"step {step.name!r} ({step.describe()}) failed: {one_line(e, typed=typed)}") from e
            timings[step.name] = (time.perf_counter() - t0) * 1e3
            for key, tensor in step.outputs.items():
                values[tensor] = produced[key]
                if kept is not None:
                    kept[tensor] = produced[key]
            for tensor in step.inputs.values():
                if self._last_use.get(tensor) == i and tensor not in keep:
                    values.pop(tensor, None)  # free what no later step reads
        timings["total"] = (time.perf_counter() - start) * 1e3
        return PipelineResult({n: values[n] for n in self.outputs}, timings, kept)

    def _run_step(self, step: Step, feeds: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        if step.kind == "model":
            session = self.session(step.name)
            got = session.run(feeds, list(step.outputs))
            return got
        if step.kind == "op":
            spec = OPS[step.target]
            if spec.stateful:
                feeds["state"] = state.setdefault(step.name, {})
            got = spec.fn(**feeds, **self._params[step.name])
            _check_returned(got, spec.outputs, exact=True)
            return got
        got = self._fns[step.name](**feeds, **self._params[step.name])
        _check_returned(got, tuple(step.outputs), exact=False)
        return got

    def files(self) -> dict[tuple[str, str | None], Path]:
        """Every file the pipeline reads, resolved: ``(step, None)`` for a model step's model,
        ``(step, param)`` for a parameter that names a file (:func:`path_params`)."""
        out: dict[tuple[str, str | None], Path] = {(name, None): path for name, path in self._paths.items()}
        for step in self.steps:
            for key in path_params(step):
                out[(step.name, key)] = Path(self._params[step.name][key])
        return out

    def session(self, step_name: str) -> Any:
        """The engine session of a model step (created on first use, then reused)."""
        s = self._sessions.get(step_name)
        if s is not None:
            return s
        with self._lock:
            s = self._sessions.get(step_name)
            if s is None:
                from slipway.backends import load
                from slipway.backends.base import Options

                step = next(st for st in self.steps if st.name == step_name)
                params = {**MODEL_PARAMS, **step.params}
                s = load(str(self._paths[step_name]), params["backend"], Options(threads=int(params["threads"])))
                self._sessions[step_name] = s
        return s

    @property
    def stateful_steps(self) -> list[str]:
        """The op steps that keep state between runs (stateful ops), in run order."""
        return [s.name for s in self._order if s.kind == "op" and OPS[s.target].stateful]

    def reset_state(self) -> None:
        """Forget the state the stateful ops kept in this pipeline (runs given no ``state``): a new stream."""
        self._state.clear()

    def close(self) -> None:
        """Close the engine sessions, its model steps' and its ops' (they are created again on the next run)."""
        with self._lock:
            sessions, self._sessions = self._sessions, {}
            op_sessions, self._op_sessions = self._op_sessions, {}
        for s in [*sessions.values(), *op_sessions.values()]:
            s.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def order(self) -> list[str]:
        """Step names in the order they run."""
        return [s.name for s in self._order]

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, inputs={self.inputs}, outputs={self.outputs}, steps={self.order})"

    # ------------------------------------------------------------------ files

    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        """The pipeline as plain data (what :meth:`to_file` writes); model paths and file params
        (:func:`path_params`) relative to ``base``, absolute without it."""

        def rel(p: str | os.PathLike) -> str:
            path = Path(p).resolve()
            return os.path.relpath(path, base.resolve()) if base is not None else str(path)

        steps = []
        for step in self.steps:
            d: dict[str, Any] = {"name": step.name}
            if step.kind == "model":
                d["model"] = rel(self._paths[step.name])
            elif step.kind == "op":
                d["op"] = step.target
            else:
                d["python"] = _import_path(step)
            d["inputs"] = dict(step.inputs)
            d["outputs"] = dict(step.outputs)
            if step.params:
                files = path_params(step)
                d["params"] = {k: rel(self._params[step.name][k]) if k in files
                               else _plain(v, f"step {step.name!r} params {k!r}") for k, v in step.params.items()}
            steps.append(d)
        return {"version": FORMAT_VERSION, "name": self.name, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "steps": steps}

    def to_file(self, path: str | os.PathLike) -> Path:
        """Write the pipeline as YAML (model paths relative to the file's folder), atomically."""
        import yaml

        path = Path(path)
        atomic_write_text(path, yaml.safe_dump(self.to_dict(path.parent), sort_keys=False, default_flow_style=None))
        return path

    @classmethod
    def from_dict(cls, data: Any, base: Path | None = None, *, allow_python: bool = False,
                  label: str = "pipeline") -> Pipeline:
        """A pipeline from plain data (the :meth:`to_dict` form); relative model paths are under ``base``."""
        if not isinstance(data, Mapping):
            raise PipelineError(f"{label}: expected a mapping at the top level, got {type(data).__name__}")
        known = {"version", "name", "inputs", "outputs", "steps"}
        for key in data:
            if key not in known:
                raise PipelineError(f"{label}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise PipelineError(f"{label}: unsupported version {version!r} (this slipway reads {FORMAT_VERSION})")
        for key in ("inputs", "outputs", "steps"):
            if key not in data:
                raise PipelineError(f"{label}: missing key {key!r}")
            if not isinstance(data[key], list):
                raise PipelineError(f"{label} {key}: expected a list, got {type(data[key]).__name__}")
        steps = [_step_from_dict(i, d, label, allow_python) for i, d in enumerate(data["steps"])]
        name = data.get("name", "pipeline")
        if not isinstance(name, str):
            raise PipelineError(f"{label} name: expected a string, got {name!r}")
        return cls(steps, list(data["inputs"]), list(data["outputs"]), name=name, base=base)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, allow_python: bool = False) -> Pipeline:
        """Read a YAML pipeline file (model paths relative to its folder).

        ``python`` steps name a callable as ``module:attr`` and import it, so they are refused unless
        ``allow_python`` (a file should not run code by being read).
        """
        import yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PipelineError(f"pipeline file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PipelineError(f"cannot read pipeline file {path}: {one_line(e)}") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PipelineError(f"{path}: not valid YAML: {' '.join(str(e).split())[:200]}") from e
        return cls.from_dict(data, path.parent, allow_python=allow_python, label=str(path))


# ---------------------------------------------------------------------------------- helpers


def _who(producer: str) -> str:
    return "a pipeline input" if producer == "pipeline input" else f"step {producer!r}"


def _suggest(name: str, known: Mapping[str, Any] | list[str], what: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {what}{close[0]!r}?)" if close else ""


def _check_names(label: str, names: Any) -> None:
    if not isinstance(names, (list, tuple)):
        raise PipelineError(f"{label}: expected a list of tensor names, got {type(names).__name__}")
    for n in names:
        if not isinstance(n, str) or not n:
            raise PipelineError(f"{label}: tensor names must be non-empty strings, got {n!r}")


def _check_params(where: str, fn: Callable, params: Mapping[str, Any], inputs: Mapping[str, str]) -> None:
    """Every param and input must be a keyword the function accepts."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    ps = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values()):
        return
    accepted = {k for k, p in ps.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                       inspect.Parameter.KEYWORD_ONLY)}
    for label, keys in (("inputs", inputs), ("params", params)):
        for key in keys:
            if key not in accepted:
                raise PipelineError(f"{where} {label}: unexpected keyword {key!r} "
                                    f"(accepted: {', '.join(sorted(accepted))})")
    for k, p in ps.items():
        if (p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                and p.default is inspect.Parameter.empty and k not in inputs and k not in params):
            raise PipelineError(f"{where}: argument {k!r} is neither an input nor a param")


def _check_returned(got: Any, expected: tuple[str, ...], *, exact: bool) -> None:
    if not isinstance(got, Mapping):
        raise PipelineError(f"expected a dict with keys {list(expected)}, got {type(got).__name__}")
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected] if exact else []
    if missing or extra:
        raise PipelineError(f"returned keys {list(got)}, expected {list(expected)}")


def _toposort(steps: list[Step], producer: Mapping[str, str]) -> list[Step]:
    """Kahn's algorithm, ties in list order; a cycle is named step by step."""
    deps: dict[str, set[str]] = {}
    for s in steps:
        deps[s.name] = {producer[t] for t in s.inputs.values() if producer[t] != "pipeline input"}
    done: set[str] = set()
    order: list[Step] = []
    pending = list(steps)
    while pending:
        ready = [s for s in pending if deps[s.name] <= done]
        if not ready:
            raise PipelineError(f"cycle between steps: {_cycle(pending, deps)}")
        for s in ready:
            done.add(s.name)
            order.append(s)
        pending = [s for s in pending if s.name not in done]
    return order


def _cycle(pending: list[Step], deps: Mapping[str, set[str]]) -> str:
    """One cycle among the steps left, written ``'a' -> 'b' -> 'a'`` (data flow order)."""
    left = {s.name for s in pending}
    first = pending[0].name
    path: list[str] = []
    node = first
    while node not in path:
        path.append(node)
        node = sorted(d for d in deps[node] if d in left)[0] if any(d in left for d in deps[node]) else first
    loop = path[path.index(node):] + [node]
    return " -> ".join(repr(n) for n in reversed(loop))


def _resolve(target: str, where: str) -> Callable:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise PipelineError(f"{where}: python target must be 'module:attr', got {target!r}")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise PipelineError(f"{where}: cannot import {target!r}: {one_line(e)}") from e
    return obj


def _import_path(step: Step) -> str:
    fn = step.target
    if isinstance(fn, str):
        return fn
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not qual or "<" in qual or module == "__main__":
        raise PipelineError(f"step {step.name!r}: python target {qual or fn!r} cannot be written to a file "
                            "(use a module-level function)")
    return f"{module}:{qual}"


def _plain(value: Any, where: str) -> Any:
    """A param as YAML-safe data: tuples and numpy values become lists and Python scalars."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    raise PipelineError(f"{where}: a {type(value).__name__} cannot be written to a pipeline file")


def _step_from_dict(i: int, d: Any, label: str, allow_python: bool) -> Step:
    where = f"{label} steps[{i}]"
    if not isinstance(d, Mapping):
        raise PipelineError(f"{where}: expected a mapping, got {type(d).__name__}")
    kinds = [k for k in KINDS if k in d]
    if len(kinds) != 1:
        raise PipelineError(f"{where}: expected exactly one of 'model', 'op', 'python'")
    kind = kinds[0]
    known = {"name", kind, "inputs", "outputs", "params"}
    for key in d:
        if key not in known:
            raise PipelineError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    if "name" not in d:
        raise PipelineError(f"{where}: missing key 'name'")
    if kind == "python" and not allow_python:
        raise PipelineError(f"{where} ({d['name']!r}): python steps import code; "
                            "read the file with allow_python=True to run them")
    if not isinstance(d[kind], str):
        raise PipelineError(f"{where} {kind}: expected a string, got {d[kind]!r}")
    for key in ("inputs", "outputs", "params"):
        if key in d and not isinstance(d[key], Mapping):
            raise PipelineError(f"{where} {key}: expected a mapping, got {type(d[key]).__name__}")
    return Step(d["name"], kind, d[kind], dict(d.get("inputs") or {}), dict(d.get("outputs") or {}),
                dict(d.get("params") or {}))
