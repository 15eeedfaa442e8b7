"""One loaded model version: its engine sessions (instances that share weights), its batcher, and
the checks of every request against its config.

The config is Triton's ``ModelConfig`` (already completed and checked by the repository). The
engine is the one registered in :mod:`slipway.backends` for the config's backend and instance kind
(``onnxruntime`` -> "ort", or "ort-cuda" on ``KIND_GPU``; ``openvino`` -> "openvino" /
"openvino-gpu"; ``python`` -> "python"); the settings ``slipway tune`` wrote beside the model file
choose its options (:func:`slipway.backends.choose`) unless the config's ``parameters`` say
otherwise. The Triton parameter names an engine registers are understood (onnxruntime:
``inter_op_thread_count``, ``execution_mode``, ``enable_mem_arena``, ``enable_mem_pattern``), and
slipway's own (``threads`` / ``intra_op_thread_count``, ``precision``, ``backend``, any engine
setting as ``slipway.<name>``). A setting that names a file (``slipway.calib``: the calibration data of
precision int8 on mnn / ncnn) is a path relative to the model's folder and must stay inside it.

A config with ``sequence_batching`` (a pipeline with a stateful op) gets a
:class:`~slipway.serve.sequence.Sequences`: each request takes its place in its sequence, waits for
the one before it, and runs with the sequence's state (:class:`SequenceFeeds` carries it through the
batcher to the engine session's ``run(feeds, state=...)``). A pipeline with a stateful op but no
``sequence_batching`` is refused at load: its state would be shared by every client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

import slipway.serve.tensors as tensors
from slipway.backends import ENGINES, choose, get, served_by
from slipway.cpus import usable_cpus
from slipway.errors import ServeError, UserError, one_line
from slipway.serve.batcher import Batcher, batch_policy
from slipway.serve.request import Checked, Checking, RequestError, Signature, TensorSpec, specs
from slipway.serve.sequence import Sequences, idle_microseconds
from slipway.serve.stats import ModelStats
from slipway.serve.types import InferResponse, InferTensor
from slipway.verify.inputs import random_array

__all__ = ["TensorSpec", "ModelVersion", "load_version", "engine_options", "SequenceFeeds"]  # TensorSpec: request's


class SequenceFeeds(dict):
    """A sequence request's feeds with its sequence's ``state`` (the batcher hands a request's feeds to the
    engine as they are when it does not merge requests, which a sequence-batched model never does)."""

    __slots__ = ("state",)

    def __init__(self, feeds: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        super().__init__(feeds)
        self.state = state

log = logging.getLogger("slipway.serve")


class ModelVersion(Checking):
    """A ready version: ``await infer(request)``; ``await close()`` drains it.

    ``check(request)`` is the one check of a request (:func:`slipway.serve.request.check` against
    the version's :class:`Signature`); ``run(checked, id)`` queues a checked request.
    """

    def __init__(self, name: str, version: int, config, platform: str, run, instances: int,
                 closer=None, *, max_pending: int = 1024, bytes_as_text: bool = True) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.platform = platform
        self.max_batch_size = int(config.max_batch_size)
        self.signature = Signature.of(name, config, bytes_as_text=bytes_as_text)
        self.inputs = list(self.signature.inputs)
        self.outputs = list(self.signature.outputs)
        self.stats = ModelStats(name, str(version))
        self.batcher = Batcher(run, instances, batch_policy(config), self.stats, max_pending=max_pending, name=name)
        # per-sequence state and order (serve/sequence.py), for a config with sequence_batching
        self.sequences = Sequences(name, idle_microseconds(config)) if config.HasField("sequence_batching") else None
        self._closer = closer
        self.closing = False

    @property
    def pending(self) -> int:
        """Requests queued or running."""
        return self.batcher.pending

    # -- requests -------------------------------------------------------------------------------

    async def run(self, checked: Checked, request_id: str = "") -> InferResponse:
        """Queue a checked request, wait for its batch, and shape its outputs as the config says."""
        if self.sequences is None:
            results = await self.batcher.submit(checked.feeds, checked.rows, checked.level, checked.timeout_us)
        else:
            results = await self._run_in_sequence(checked)
        outputs = []
        for spec, params in checked.outputs:
            arr = results.get(spec.name)
            if arr is None:
                raise ServeError(f"model {self.name!r} did not produce output {spec.name!r}", 500)
            if spec.reshape is not None:
                arr = arr.reshape(([checked.rows] if self.max_batch_size > 0 else []) + list(spec.dims))
            if arr.dtype != object and tensors.DATATYPES[spec.datatype] != arr.dtype:
                arr = arr.astype(tensors.DATATYPES[spec.datatype])
            outputs.append(InferTensor(spec.name, spec.datatype, list(arr.shape), np.ascontiguousarray(arr), params))
        return InferResponse(self.name, str(self.version), request_id, outputs)

    async def _run_in_sequence(self, checked: Checked) -> dict[str, np.ndarray]:
        """Take the request's place in its sequence now (before any await: arrival order), wait for the
        requests before it, run it with the sequence's state."""
        start = time.monotonic_ns()
        try:
            if checked.rows != 1 and self.max_batch_size > 0:
                raise RequestError(f"inference request to model '{self.name}' must specify batch-size 1 due to "
                                   "requirements of sequence batcher")
            ticket = self.sequences.enter(checked.sequence)
        except ServeError:
            self.stats.request_done(False, time.monotonic_ns() - start, reason="OTHER")
            raise
        try:
            await ticket.wait()
            feeds = SequenceFeeds(checked.feeds, ticket.state)
            return await self.batcher.submit(feeds, checked.rows, checked.level, checked.timeout_us, start)
        finally:
            ticket.release()

    # -- life cycle -----------------------------------------------------------------------------

    async def close(self, drain: bool = True) -> None:
        self.closing = True
        await self.batcher.close(drain=drain)
        if self.sequences is not None:
            self.sequences.close()
        if self._closer is not None:
            self._closer()
            self._closer = None


# ---------------------------------------------------------------------------------------------
# loading


def engine_options(config, model_file: Path, threads: int = 0) -> tuple[str, Any]:
    """(backend name, Options) for a version: tuned settings, then the config's parameters.

    The engine is the one registered for config.pbtxt's backend on the instances' device
    (:func:`slipway.backends.served_by`); tuned settings apply by :func:`slipway.backends.choose`
    (the rule ``slipway.backends.load`` uses), else ``threads`` (``--threads``) is the default.
    Without a thread count from either, N > 1 instances split the cores between them (each gets
    ``cores // N`` intra-op threads): on CPU, two single-threaded instances of a conv net outrun
    one instance with two threads, and N instances with every core each oversubscribe the CPU.
    The config's ``parameters`` then override: ``backend``, ``threads`` / ``intra_op_thread_count``,
    ``precision``, ``slipway.<setting>``, and the Triton parameters the engine's registration names.
    """
    engine = _served_by(config)
    choice = choose(model_file, family=engine.family, device=engine.device, tuned=model_file.suffix == ".onnx")
    backend, options = choice.backend, choice.options
    if not choice.tuned:
        options.threads = threads
    instances = _instances(config)
    if options.threads == 0 and instances > 1:
        # N instances each with every core would oversubscribe the CPU: split the cores between them
        options.threads = max(1, usable_cpus() // instances)
    params = {k: v.string_value for k, v in config.parameters.items()}
    if "backend" in params:
        backend = params.pop("backend")
    known = ENGINES[backend].parameters if backend in ENGINES else {}
    for key, value in params.items():
        if key in ("intra_op_thread_count", "threads"):
            options.threads = _int_param(key, value)
        elif key == "precision":
            options.precision = value
        elif key in known:
            setting, conv = known[key]
            options.settings[setting] = conv(value)
        elif key.startswith("slipway.") and not key.startswith("slipway.ray."):  # slipway.ray.*: the Ray deployment's
            options.settings[key[len("slipway."):]] = _setting_value(value)
    for setting in PATH_SETTINGS:
        if setting in options.settings:
            options.settings[setting] = _model_folder_path(config, model_file, setting, options.settings[setting])
    return backend, options


PATH_SETTINGS = ("calib",)  # engine settings that name a file or folder (mnn / ncnn int8's calibration data)


def _model_folder_path(config, model_file: Path, setting: str, value: Any) -> str:
    """A config's path setting, relative to the model's folder (REPO/MODEL) and confined to it: no absolute
    path, no ``..``, no hidden part, nothing that resolves (through a link) outside the folder."""
    folder = model_file.parent.parent
    text = str(value)
    where = f"model {config.name!r}: config parameter slipway.{setting}={text!r}"
    parts = text.split("/")
    if (not text or os.path.isabs(text) or "\\" in text or "\0" in text
            or any(not part or part.startswith(".") for part in parts)):
        raise ServeError(f"{where} must be a path relative to the model's folder, without '..' or hidden parts",
                         400)
    try:
        real, root = (folder / text).resolve(), folder.resolve()
    except (OSError, RuntimeError):
        raise ServeError(f"{where} cannot be resolved", 400) from None
    if not real.is_relative_to(root) or real == root:
        raise ServeError(f"{where} leads outside the model's folder", 400)
    if not real.exists():
        raise ServeError(f"{where}: no such file or folder in the model's folder", 400)
    return str(real)


def _served_by(config):
    """The registered engine for config.pbtxt's backend on its instances' device (KIND_GPU -> gpu)."""
    triton = (config.backend or "onnxruntime").lower()
    gpu = any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group)
    engine = served_by(triton, "gpu" if gpu else "cpu") or served_by(triton)
    if engine is None:
        raise ServeError(f"model {config.name!r}: no engine serves backend {triton!r}", 400)
    return engine


def _int_param(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ServeError(f"config parameter {key}={value!r} must be an integer", 400) from None


def _setting_value(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(value)
    except ValueError:
        return value


def _instances(config) -> int:
    return max(1, sum(int(g.count) or 1 for g in config.instance_group)) if config.instance_group else 1


def _engine(name: str, version: int, config, model_file: Path, threads: int):
    """Load the engine (blocking: called in a thread) -> (platform, run, closer, instances, bytes as text)."""
    instances = _instances(config)
    backend, options = engine_options(config, model_file, threads)
    try:
        b = get(backend)
    except UserError as e:
        raise ServeError(f"model {name!r} version {version}: {e}", 400) from None
    why = b.available()
    if why:
        raise ServeError(f"model {name!r} version {version}: backend {backend!r} is not available: {why}", 400)
    try:
        sessions = b.load(str(model_file), options, instances=instances)
    except UserError as e:
        raise ServeError(f"model {name!r} version {version}: {e}", 400) from None

    def run(i: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(feeds, SequenceFeeds):  # a sequence's request: the engine runs it with its state
            return sessions[i].run(feeds, state=feeds.state)
        return sessions[i].run(feeds)

    def closer() -> None:
        for s in sessions:
            s.close()

    stateful = list(getattr(sessions[0], "stateful", None) or ()) if sessions else []
    if stateful and not config.HasField("sequence_batching"):
        closer()
        raise ServeError(f"model {name!r} version {version}: step {stateful[0]!r} keeps state per stream; add "
                         "sequence_batching { max_sequence_idle_microseconds: ... } to its config and send "
                         "sequence_id / sequence_start / sequence_end with each request", 400)
    try:
        warmup(config, run, instances)
    except Exception as e:
        closer()
        raise ServeError(f"model {name!r} version {version}: warmup failed: {one_line(e)}", 400) from None
    log.info("loaded %s version %d on %s (%d instance%s, %s)", name, version, backend, instances,
             "s" if instances > 1 else "", options.to_dict())
    return (config.platform or config.backend or "onnxruntime_onnx", run, closer, instances,
            ENGINES[backend].bytes_as_text)


def warmup(config, run, instances: int) -> None:
    """Run the config's ``model_warmup`` samples (or one zero sample at batch 1) on every instance."""
    samples = list(config.model_warmup)
    batched = int(config.max_batch_size) > 0
    if samples:
        for s in samples:
            feeds = {}
            rows = max(1, int(s.batch_size))
            for name, w in s.inputs.items():
                dtype = tensors.DATATYPES[tensors.datatype_from_config(mc.DataType.Name(w.data_type))]
                shape = ([rows] if batched else []) + list(w.dims)
                if w.HasField("random_data") and w.random_data and dtype.kind == "f":
                    feeds[name] = random_array(shape, dtype, np.random.default_rng(0))
                else:
                    feeds[name] = np.zeros(shape, dtype=dtype)
            for _ in range(max(1, int(s.count))):
                for i in range(instances):
                    run(i, feeds)
        return
    inputs = specs(config.input)
    if any(-1 in s.dims or s.datatype == "BYTES" for s in inputs):
        return  # no safe default sample
    feeds = {}
    for s in inputs:
        shape = ([1] if batched else []) + list(s.reshape if s.reshape is not None else s.dims)
        feeds[s.name] = np.zeros(shape, dtype=tensors.DATATYPES[s.datatype])
    for i in range(instances):
        run(i, feeds)


async def load_version(name: str, version: int, config, model_file: Path, *, threads: int = 0,
                       max_pending: int = 1024) -> ModelVersion:
    """Load a version off the event loop (engines take seconds to compile)."""
    loop = asyncio.get_running_loop()
    platform, run, closer, instances, text = await loop.run_in_executor(
        None, _engine, name, version, config, model_file, threads)
    return ModelVersion(name, version, config, platform, run, instances, closer, max_pending=max_pending,
                        bytes_as_text=text)
