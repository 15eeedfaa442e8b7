"""Triton-layout model repositories: ``ROOT/MODEL/config.pbtxt`` and ``ROOT/MODEL/<version>/model.onnx``.

:class:`Repository` reads one model's ``config.pbtxt`` (or the JSON config of Triton's load API) into
Triton's own ``ModelConfig`` proto and completes what the file leaves out from the model itself, as
Triton's autocomplete does: platform, inputs and outputs (names, types, dims), ``max_batch_size``
plus ``dynamic_batching`` for a model whose every tensor has a dynamic first dim, one CPU instance.
What the config does declare is checked against the model. Model names never leave the root (and
are at most 255 bytes, without control characters), and nothing executable (Python, pickles, shared
libraries) is loaded unless the server allows it, not even through a ``backend`` parameter.
``sequence_batching`` is accepted for pipelines only (:data:`SEQUENCE_BACKENDS`: their stateful ops keep a
state per sequence, :mod:`slipway.serve.sequence`); implicit state, control inputs and iterative sequences
are refused.

A config (config.pbtxt or the ``config`` parameter of a load request) is bounded: ``max_batch_size``
at most :data:`MAX_BATCH_SIZE`, instances at most :func:`max_instances` in all, thread counts at most
:func:`max_threads`, warm-up at most :data:`MAX_WARMUP_SAMPLES` samples, :data:`MAX_WARMUP_RUNS` runs
and :data:`MAX_WARMUP_BYTES` per sample; fields that name files (``default_model_filename``,
``cc_model_filenames``, warm-up ``input_data_file``) take plain file names only, and repository agents
are refused.

Every problem is a one-line :class:`ServeError` (400 bad config, 404 missing model or version) whose
paths are relative to the repository (``MODEL/1/model.onnx``): :meth:`Repository.relative` is THE
rewrite of any text a client may see.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

import slipway.serve.tensors as tensors
from slipway.backends import ENGINES, Engine, TensorInfo, served_by
from slipway.backends.base import UNTYPED
from slipway.cpus import usable_cpus
from slipway.errors import ServeError, UserError, one_line
from slipway.serve.batcher import batch_policy, check_policy
from slipway.serve.ensemble import ensemble_steps, is_ensemble

__all__ = ["Repository", "model_files", "completed_text", "CONFIG_FILE", "DEFAULT_MAX_BATCH_SIZE", "EXECUTABLE_SUFFIXES",
           "MAX_NAME_BYTES", "MAX_BATCH_SIZE", "MAX_WARMUP_SAMPLES", "MAX_WARMUP_RUNS", "MAX_WARMUP_BYTES",
           "max_instances", "max_threads"]

CONFIG_FILE = "config.pbtxt"
DEFAULT_MAX_BATCH_SIZE = 32
MAX_NAME_BYTES = 255  # NAME_MAX: a longer name is no directory of the repository (ENAMETOOLONG)
MAX_BATCH_SIZE = 8192
MAX_WARMUP_SAMPLES = 16
MAX_WARMUP_RUNS = 64  # sum of the samples' counts (each run once per instance)
MAX_WARMUP_BYTES = 256 << 20  # the inputs of one warm-up sample
INSTANCES_PER_CPU = 4
EXECUTABLE_SUFFIXES = (".py", ".pkl", ".pickle", ".joblib", ".pt", ".pth", ".so")
_VERSION = re.compile(r"[1-9][0-9]*")  # Triton ignores version dirs that are not numbers or start with 0


def _engine(config: mc.ModelConfig) -> Engine | None:
    """The registered engine serving the config's backend (None when no engine serves it)."""
    return served_by(config.backend or "onnxruntime")


def _platforms() -> tuple[dict[str, str], dict[str, str]]:
    """(backend -> platform, platform -> backend) of the registered engines; backends without a platform
    (python) are served by backend name only."""
    platform_of = {e.triton[0]: e.triton[1] for e in ENGINES.values() if e.triton and e.triton[1]}
    return platform_of, {v: k for k, v in platform_of.items()}



def max_instances() -> int:
    """The most model instances one config may ask for, in all: 4 per usable CPU, at least 8."""
    return max(8, INSTANCES_PER_CPU * usable_cpus())


def max_threads() -> int:
    """The largest thread count (threads, inter-op threads, streams) a config parameter may ask for: as many
    as instances."""
    return max_instances()


def completed_text(config: mc.ModelConfig) -> str:
    """``config`` in config.pbtxt syntax."""
    return text_format.MessageToString(config)


class Repository:
    def __init__(self, root: str | Path, *, allow_python_models: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"model repository {root} is not a directory")
        self._real_root = self.root.resolve()
        self.allow_python_models = allow_python_models

    def names(self) -> list[str]:
        """Model directories (with a config.pbtxt or a version dir), sorted; hidden and escaping ones skipped."""
        out = []
        try:
            entries = list(os.scandir(self.root))
        except OSError as e:
            raise ServeError(f"the model repository cannot be read: {e.strerror}", 500) from None
        for entry in entries:
            try:
                self.path(entry.name)
            except ServeError:
                continue
            out.append(entry.name)
        return sorted(out)

    def path(self, name: str) -> Path:
        """The folder of model ``name``: 400 for a name that is not allowed, 404 when it is no model."""
        check_name(name)
        path = self.root / name
        try:
            real = path.resolve()
            if real == self._real_root or not real.is_relative_to(self._real_root):
                raise ServeError(f"model name {name!r} is not allowed", 400)
            if not _is_model_dir(path):
                raise ServeError(f"unknown model {name!r}", 404)
        except (OSError, RuntimeError):
            raise ServeError(f"model name {name!r} is not allowed", 400) from None
        return path

    def relative(self, text: str) -> str:
        """``text`` with every absolute path into the repository made relative to it (``MODEL/1/model.onnx``):
        THE rewrite of a message a client may see."""
        for root in sorted({str(self._real_root), str(self.root.absolute())}, key=len, reverse=True):
            if root != os.sep:
                text = text.replace(root + os.sep, "").replace(root, ".")
        return text

    def config(self, name: str, override: str | dict | None = None) -> mc.ModelConfig:
        """The completed, checked config of model ``name``; ``override`` (JSON) replaces config.pbtxt."""
        path = self.path(name)
        config = _parse(name, path, override)
        if not config.name:
            config.name = name
        elif config.name != name:
            raise ServeError(f"model {name!r}: config name {config.name!r} does not match its directory", 400)
        _set_engine(name, config)
        _check_bounds(name, config)
        if not self.allow_python_models:
            _refuse_executables(name, path, config)
        if config.HasField("sequence_batching"):
            _check_sequence_batching(name, config)
        if config.max_batch_size < 0:
            raise ServeError(f"model {name!r}: max_batch_size {config.max_batch_size} is negative", 400)
        _check_filename(name, config)
        for kind, items in (("input", config.input), ("output", config.output)):
            for io in items:
                _check_dims(name, kind, io)
        if is_ensemble(config):
            for i, step in enumerate(config.ensemble_scheduling.step):
                if step.model_name:
                    try:
                        check_name(step.model_name)
                    except ServeError as e:
                        raise ServeError(f"ensemble {name!r}: step {i}: {e}", 400) from None
            ensemble_steps(name, config)
            return config
        engine = _engine(config)
        if engine is None:
            raise ServeError(f"model {name!r}: no engine serves backend {config.backend!r}", 400)
        if not engine.io:  # nothing to read them from (python)
            if not config.input or not config.output:
                raise ServeError(f"model {name!r}: a {config.backend} model must declare its inputs and outputs", 400)
        else:
            self._complete_io(name, engine, config)
        _complete_instances(name, config)
        _check_batching(name, config)
        return config

    def versions(self, name: str, config: mc.ModelConfig) -> list[int]:
        """The versions to serve under ``config.version_policy``, ascending."""
        path = self.path(name)
        if is_ensemble(config):  # no model file: its version folders (Triton's empty 1/), else version 1
            available = _version_dirs(path) or [1]
        else:
            available = [v for v in _version_dirs(path) if _find_file(path, config, v) is not None]
        if not available:
            raise ServeError(f"model {name!r} has no version with {' or '.join(_candidates(config))}", 404)
        policy = config.version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return available
        if choice == "specific":
            wanted = sorted(set(policy.specific.versions))
            for v in wanted:
                if v not in available:
                    files = " or ".join(_candidates(config))
                    raise ServeError(f"model {name!r} version {v} (version_policy specific) has no {files}", 404)
            if not wanted:
                raise ServeError(f"model {name!r}: version_policy specific lists no versions", 400)
            return wanted
        count = policy.latest.num_versions if choice == "latest" else 1
        if count < 1:
            raise ServeError(f"model {name!r}: version_policy latest num_versions must be at least 1", 400)
        return available[-count:]

    def model_file(self, name: str, config: mc.ModelConfig, version: int) -> Path:
        found = _find_file(self.path(name), config, version)
        if found is None:
            raise ServeError(f"model {name!r} version {version} has no {' or '.join(_candidates(config))}", 404)
        return found

    def fingerprint(self, name: str) -> str:
        """Changes when a (non-hidden) file under the model dir is added, removed, resized or touched."""
        path = self.path(name)
        h = hashlib.sha256(str(path.resolve()).encode())
        for rel, st in sorted(_walk(path, hidden=False)):
            h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()[:32]

    def _complete_io(self, name: str, engine: Engine, config: mc.ModelConfig) -> None:
        file = self.model_file(name, config, self.versions(name, config)[-1])
        inputs, outputs = _read_io(name, engine, file, file.relative_to(self.root).as_posix())
        if config.max_batch_size == 0 and not config.input and not config.output and _batchable(inputs + outputs):
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
            if not config.HasField("dynamic_batching"):
                config.dynamic_batching.SetInParent()
        for kind, declared, actual in (("input", config.input, inputs), ("output", config.output, outputs)):
            if declared:
                _check_declared(name, kind, declared, actual, config.max_batch_size)
            else:
                _fill(name, kind, declared, actual, config.max_batch_size)


# ---------------------------------------------------------------------------------------------
# names, files, versions


def check_name(name: object) -> None:
    """A one-line 400 for a model name that cannot name a folder of the repository."""
    if not isinstance(name, str) or not name:
        raise ServeError("model name '' is not allowed: a model name is required", 400)
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ServeError(f"model name {name!r} is not allowed: it is not valid UTF-8", 400) from None
    if size > MAX_NAME_BYTES:
        raise ServeError(f"model name of {size} bytes is not allowed: at most {MAX_NAME_BYTES} bytes", 400)
    if not name.strip():
        raise ServeError(f"model name {name!r} is not allowed: it is blank", 400)
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ServeError(f"model name {name!r} is not allowed: it holds control characters", 400)
    if not _name_allowed(name):
        raise ServeError(f"model name {name!r} is not allowed", 400)


def _name_allowed(name: object) -> bool:
    return (isinstance(name, str) and bool(name) and not name.startswith(".") and not os.path.isabs(name)
            and not any(bad in name for bad in ("/", "\\", "..", "\0")))


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and ((path / CONFIG_FILE).is_file() or bool(_version_dirs(path)))


def _version_dirs(path: Path) -> list[int]:
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    return sorted(int(e.name) for e in entries if _VERSION.fullmatch(e.name) and e.is_dir())


def _candidates(config: mc.ModelConfig) -> list[str]:
    if config.default_model_filename:
        return [config.default_model_filename]
    engine = _engine(config)
    return list(engine.files) if engine is not None else ["model.onnx"]


def _find_file(path: Path, config: mc.ModelConfig, version: int) -> Path | None:
    for filename in _candidates(config):
        file = path / str(version) / filename
        if file.is_file():
            return file
    return None


def _check_filename(name: str, config: mc.ModelConfig) -> None:
    filename = config.default_model_filename
    if filename and not _name_allowed(filename):
        raise ServeError(f"model {name!r}: default_model_filename {filename!r} must be a plain file name", 400)


def model_files(folder: Path) -> list[str]:
    """The (non-hidden) files of a model folder, as sorted posix paths relative to it."""
    return sorted(rel for rel, _ in _walk(folder, hidden=False))


def _walk(top: Path, *, hidden: bool) -> Iterator[tuple[str, os.stat_result]]:
    """(relative posix path, stat) of every file under ``top``; symlinked dirs are followed once."""
    seen: set[Path] = set()
    stack = [(top, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            real = folder.resolve()
            entries = list(os.scandir(folder))
        except (OSError, RuntimeError):
            continue
        if real in seen:
            continue
        seen.add(real)
        for entry in entries:
            if not hidden and entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            try:
                if entry.is_dir():
                    stack.append((Path(entry.path), rel + "/"))
                    continue
                st = entry.stat()
            except OSError:
                continue
            yield rel, st


def _refuse_executables(name: str, path: Path, config: mc.ModelConfig) -> None:
    found = sorted(rel for rel, _ in _walk(path, hidden=True) if rel.lower().endswith(EXECUTABLE_SUFFIXES))
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ServeError(f"model {name!r} contains executable files ({shown}); "
                         "start the server with --allow-python-models to load them", 400)
    engine = _engine(config)
    if engine is not None and engine.runs_code:
        raise ServeError(f"model {name!r} uses backend {config.backend!r}, which runs its code; "
                         "start the server with --allow-python-models to load it", 400)


# ---------------------------------------------------------------------------------------------
# config text, engine, instances, batching



def _parse(name: str, path: Path, override: str | dict | None) -> mc.ModelConfig:
    config = mc.ModelConfig()
    if override is not None:
        try:
            if isinstance(override, dict):
                json_format.ParseDict(override, config)
            else:
                json_format.Parse(override, config)
        except (json_format.ParseError, TypeError) as e:
            raise ServeError(f"model {name!r}: the config parameter is not a valid model config: "
                             f"{one_line(e)}", 400) from None
        return config
    file = path / CONFIG_FILE
    if not file.is_file():
        return config
    try:
        text_format.Parse(file.read_text(encoding="utf-8"), config)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        raise ServeError(f"{name}/{CONFIG_FILE}: {one_line(e)}", 400) from None
    return config


def _set_engine(name: str, config: mc.ModelConfig) -> None:
    """Fill platform and backend of each other (onnxruntime_onnx when neither is set); refuse the backends
    no registered engine serves (:mod:`slipway.backends`)."""
    platform, backend = config.platform, config.backend
    if is_ensemble(config):
        if backend:
            raise ServeError(f"model {name!r}: an ensemble has no backend (backend {backend!r})", 400)
        return
    if not platform and not backend:
        platform, backend = "onnxruntime_onnx", "onnxruntime"
    if backend and not platform and served_by(backend) is not None and not served_by(backend).triton[1]:
        return  # served by backend name only (python); whether it may run is the executable check's
    platform_of, backend_of = _platforms()
    for value, table in ((backend, platform_of), (platform, backend_of)):
        if value and value not in table:
            raise ServeError(f"model {name!r}: backend {value!r} is not supported ({', '.join(backend_of)})", 400)
    if backend and platform and platform_of[backend] != platform:
        raise ServeError(f"model {name!r}: platform {platform!r} and backend {backend!r} disagree", 400)
    config.platform = platform or platform_of[backend]
    config.backend = backend or backend_of[platform]


def _complete_instances(name: str, config: mc.ModelConfig) -> None:
    if not config.instance_group:
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    for i, group in enumerate(config.instance_group):
        if group.count < 0:
            raise ServeError(f"model {name!r}: instance_group {i} has count {group.count}", 400)
        group.count = group.count or 1
        group.name = group.name or f"{config.name}_{i}"
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_GPU if group.gpus else mc.ModelInstanceGroup.KIND_CPU
        if group.kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
            raise ServeError(f"model {name!r}: instance_group {i} is KIND_CPU but lists gpus", 400)


def _check_bounds(name: str, config: mc.ModelConfig) -> None:
    """What a config may ask of the server, bounded (see the module docstring); one-line 400 each."""
    where = f"model {name!r}"
    if config.max_batch_size > MAX_BATCH_SIZE:
        raise ServeError(f"{where}: max_batch_size {config.max_batch_size} is over the limit of {MAX_BATCH_SIZE}", 400)
    total = sum(max(1, g.count) for g in config.instance_group)
    if total > max_instances():
        raise ServeError(f"{where}: instance_group asks for {total} instances; at most {max_instances()} "
                         f"({INSTANCES_PER_CPU} per usable CPU, at least 8)", 400)
    for cc, filename in config.cc_model_filenames.items():
        if not _name_allowed(filename):
            raise ServeError(f"{where}: cc_model_filenames[{cc!r}] {filename!r} must be a plain file name", 400)
    if config.HasField("model_repository_agents") and config.model_repository_agents.agents:
        raise ServeError(f"{where}: model_repository_agents are not supported", 400)
    _check_parameters(where, config)
    _check_warmup(where, config)


def _check_parameters(where: str, config: mc.ModelConfig) -> None:
    """The ``backend`` parameter names a registered engine that runs no code; thread counts are bounded."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    backend = params.get("backend")
    if backend is not None:
        engine = ENGINES.get(backend)
        if engine is None:
            raise ServeError(f"{where}: config parameter backend={backend!r} is not a registered engine "
                             f"({', '.join(e for e in ENGINES if not ENGINES[e].runs_code)})", 400)
        if engine.runs_code:
            raise ServeError(f"{where}: config parameter backend={backend!r} runs code; set the config's backend "
                             "and start the server with --allow-python-models instead", 400)
    engine = ENGINES.get(backend) if backend is not None else _engine(config)
    counts = {"threads", "intra_op_thread_count", *(engine.parameters if engine is not None else {})}
    for key, value in params.items():
        if key in counts or (key.startswith("slipway.") and not key.startswith("slipway.ray.")):
            try:
                n = int(value)
            except ValueError:
                if key.startswith("slipway."):
                    continue  # not a count; the engine checks its settings
                raise ServeError(f"{where}: config parameter {key}={value!r} must be an integer", 400) from None
            if n > max_threads():
                raise ServeError(f"{where}: config parameter {key}={n} is over the limit of {max_threads()}", 400)


def _check_warmup(where: str, config: mc.ModelConfig) -> None:
    samples = config.model_warmup
    if len(samples) > MAX_WARMUP_SAMPLES:
        raise ServeError(f"{where}: model_warmup has {len(samples)} samples; at most {MAX_WARMUP_SAMPLES}", 400)
    runs = sum(max(1, s.count) for s in samples)
    if runs > MAX_WARMUP_RUNS:
        raise ServeError(f"{where}: model_warmup asks for {runs} runs in all; at most {MAX_WARMUP_RUNS}", 400)
    mbs = config.max_batch_size
    for s in samples:
        label = f"{where}: model_warmup {s.name!r}"
        if mbs > 0 and s.batch_size > mbs:  # a model without a batch dim runs every sample once, as is
            raise ServeError(f"{label} has batch_size {s.batch_size}, over max_batch_size {mbs}", 400)
        rows = max(1, s.batch_size) if mbs > 0 else 1
        size = 0
        for input_name, w in s.inputs.items():
            if any(d < 1 for d in w.dims):
                raise ServeError(f"{label} input {input_name!r} has dims {list(w.dims)}; warm-up dims are positive",
                                 400)
            if w.HasField("input_data_file") and not _name_allowed(w.input_data_file):
                raise ServeError(f"{label} input {input_name!r}: input_data_file {w.input_data_file!r} must be a "
                                 "plain file name", 400)
            itemsize = _itemsize(w.data_type)
            size += rows * itemsize * tensors.element_count(list(w.dims))
            if size > MAX_WARMUP_BYTES:
                raise ServeError(f"{label} inputs are over the limit of {MAX_WARMUP_BYTES >> 20} MiB", 400)


def _itemsize(data_type: int) -> int:
    try:
        return tensors.DATATYPES[tensors.datatype_from_config(mc.DataType.Name(data_type))].itemsize or 1
    except (ServeError, ValueError, KeyError):
        return 1


SEQUENCE_BACKENDS = ("slipway_pipeline",)  # engines that keep a state per sequence (serve/sequence.py)


def _check_sequence_batching(name: str, config: mc.ModelConfig) -> None:
    """``sequence_batching`` for a model that keeps its own state per sequence: the pipeline engine (its
    stateful ops). Triton's implicit state and control inputs (what a plain ONNX model would need) and
    iterative sequences are refused, each by name; direct and oldest strategies run alike."""
    where = f"model {name!r}: sequence_batching"
    if (config.backend or "") not in SEQUENCE_BACKENDS:
        raise ServeError(f"{where} is not supported for backend {config.backend or config.platform!r} models "
                         "(they would need Triton's implicit state or control inputs); pipelines (backend "
                         "\"slipway_pipeline\") keep their state per sequence", 400)
    seq = config.sequence_batching
    for field, label in (("control_input", "control_input"), ("state", "state (implicit state)")):
        if len(getattr(seq, field)):
            raise ServeError(f"{where}: {label} is not supported; the pipeline keeps its state itself", 400)
    if seq.iterative_sequence:
        raise ServeError(f"{where}: iterative_sequence is not supported", 400)
    if seq.max_sequence_idle_microseconds > 24 * 3600 * 10**6:
        raise ServeError(f"{where}: max_sequence_idle_microseconds {seq.max_sequence_idle_microseconds} is over "
                         "a day", 400)


def _check_batching(name: str, config: mc.ModelConfig) -> None:
    """The config's batching policy, by the batcher's own check (one rule set)."""
    try:
        check_policy(batch_policy(config), name)
    except UserError as e:
        raise ServeError(str(e), 400) from None


# ---------------------------------------------------------------------------------------------
# inputs and outputs


def _read_io(name: str, engine: Engine, file: Path, rel: str) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """What ``file`` declares, read by the engine's own reader (:attr:`Engine.io`): each tensor's type a
    protocol datatype (checked here) and each dynamic dim -1."""
    try:
        inputs, outputs = engine.read_io(file, rel)
    except UserError as e:
        raise ServeError(f"model {name!r}: {e}", 400) from None
    return [_tensor(name, "input", t) for t in inputs], [_tensor(name, "output", t) for t in outputs]


def _tensor(model: str, kind: str, t: TensorInfo) -> TensorInfo:
    if t.type == UNTYPED:  # named by the file, typed by the config
        return t
    try:
        if t.dtype is None:
            raise TypeError
        tensors.datatype_of(t.dtype)
    except (ServeError, TypeError):
        raise ServeError(f"model {model!r}: {kind} {t.name!r} has {t.type}, which the server does not support",
                         400) from None
    shape = None if t.shape is None else tuple(d if isinstance(d, int) else -1 for d in t.shape)
    return TensorInfo(t.name, shape, t.dtype, t.type)


def _type_of(t: TensorInfo) -> int:
    return _type_enum(tensors.datatype_of(t.dtype))


def _batchable(items: Sequence[TensorInfo]) -> bool:
    return bool(items) and all(t.shape and t.shape[0] == -1 for t in items)


def _type_enum(datatype: str) -> int:
    return mc.DataType.Value(tensors.config_type(datatype))


def _fill(model: str, kind: str, declared: Sequence, actual: Sequence[TensorInfo], mbs: int) -> None:
    for t in actual:
        if t.type == UNTYPED:
            raise ServeError(f"model {model!r}: {kind} {t.name!r} has no type in the model file; "
                             f"declare the {kind}s in {CONFIG_FILE}", 400)
        if t.shape is None:
            raise ServeError(f"model {model!r}: {kind} {t.name!r} has no shape in the model file; "
                             f"declare it in {CONFIG_FILE}", 400)
        dims = list(t.shape)
        if mbs > 0:
            if not dims or dims[0] != -1:
                raise ServeError(f"model {model!r}: max_batch_size {mbs} needs a dynamic first dim on {kind} "
                                 f"{t.name!r}, the model has shape {dims}", 400)
            dims = dims[1:]
        declared.add(name=t.name, data_type=_type_of(t), dims=dims)


def _check_declared(model: str, kind: str, declared: Sequence, actual: Sequence[TensorInfo], mbs: int) -> None:
    by_name = {t.name: t for t in actual}
    seen: set[str] = set()
    for io in declared:
        where = f"model {model!r}: {kind} {io.name!r}"
        if io.name in seen:
            raise ServeError(f"{where} is declared twice", 400)
        seen.add(io.name)
        t = by_name.get(io.name)
        if t is None:
            raise ServeError(f"{where} is not an {kind} of the model ({', '.join(by_name)})", 400)
        if t.type == UNTYPED:
            continue
        if io.data_type != _type_of(t):
            raise ServeError(f"{where} has data_type {mc.DataType.Name(io.data_type)} but the model has "
                             f"{tensors.config_type(tensors.datatype_of(t.dtype))}", 400)
        reshaped = io.HasField("reshape")
        shape = list(io.reshape.shape if reshaped else io.dims)
        full = ([-1] if mbs > 0 else []) + shape
        if t.shape is not None and not _compatible(full, t.shape):
            batch = " after the batch dim" if mbs > 0 else ""
            raise ServeError(f"{where} has {'reshape' if reshaped else 'dims'} {shape}{batch} "
                             f"but the model has shape {list(t.shape)}", 400)
    missing = [t.name for t in actual if t.name not in seen]
    if kind == "input" and missing:
        raise ServeError(f"model {model!r}: model input(s) {', '.join(missing)} are not declared in the config", 400)


def _compatible(config: Sequence[int], model: Sequence[int]) -> bool:
    return len(config) == len(model) and all(m == -1 or c == m for c, m in zip(config, model, strict=True))


def _check_dims(model: str, kind: str, io: mc.ModelInput | mc.ModelOutput) -> None:
    where = f"model {model!r}: {kind} {io.name!r}"
    if not io.name:
        raise ServeError(f"model {model!r}: an {kind} has no name", 400)
    if io.data_type == mc.TYPE_INVALID:
        raise ServeError(f"{where} has no data_type", 400)
    if io.data_type not in mc.DataType.values():
        raise ServeError(f"{where} has unknown data_type {io.data_type}", 400)
    tensors.datatype_from_config(mc.DataType.Name(io.data_type))
    shapes = [("dims", list(io.dims))] + ([("reshape", list(io.reshape.shape))] if io.HasField("reshape") else [])
    for label, shape in shapes:
        if any(d == 0 or d < -1 for d in shape):
            raise ServeError(f"{where}: {label} {shape} may hold only positive sizes and -1", 400)
    if len(shapes) == 2:
        (_, dims), (_, reshape) = shapes
        if dims.count(-1) != reshape.count(-1) or _static_count(dims) != _static_count(reshape):
            raise ServeError(f"{where}: reshape {reshape} does not hold the same elements as dims {dims}", 400)


def _static_count(shape: Sequence[int]) -> int:
    return tensors.element_count([d for d in shape if d != -1])
