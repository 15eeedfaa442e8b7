"""The server's logic, free of any transport: health, metadata, config, statistics, repository
control, system shared memory (the region registry of :mod:`slipway.serve.shm`) and inference. ``http.py`` and ``grpc.py`` are thin adapters over one :class:`DataPlane`.

Models come from a :class:`~slipway.serve.repository.Repository`. Control modes (as Triton's):

* ``none``: every model is loaded at start; the repository is not watched.
* ``poll``: as ``none``, then the repository is re-read every ``poll_seconds``; a model whose files
  changed (and stayed unchanged for one more poll, so a half-copied file is never loaded) is loaded
  again beside the old one, which keeps serving until the new one is ready and then drains: no
  request fails during the swap. A failed reload keeps the old version serving.
* ``explicit``: only the models named at start (or none) are loaded; the load/unload API does the rest.

The load/unload API answers only in ``explicit`` mode; in the others it is refused as Triton refuses it
(503 / UNAVAILABLE, Triton's message plus the mode and the option to change it).

Readiness: the server is ready once started, until it stops, while every model it loaded at start is
serving (or was unloaded on purpose). A model that fails later (a corrupt new model in poll mode, a
failed load request) is not ready and shows its reason in the repository index, but the server stays
ready and serves the others; a failed reload of a served model keeps the old versions serving and shows
``reload failed: ...`` as the reason of their rows. The index lists the models of the repository and
the ones still serving; a model folder removed in poll mode is unloaded and leaves the index.

No message a client sees holds an absolute path: :meth:`Repository.relative` rewrites them.

Sequences (Triton's sequence batching, :mod:`slipway.serve.sequence`): a sequence-batched model checks
and orders its requests itself; a request with sequence parameters entering an ensemble reserves its
place in every sequence-batched composing model there and then, and its composing requests carry its
flags (as Triton's ensemble passes the correlation ID on). :meth:`DataPlane.sequences` counts a model's
live sequences. A model without sequence batching ignores the (type-checked) parameters, as Triton.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from tritonclient.grpc import service_pb2 as pb

from slipway import __version__
from slipway.errors import ServeError, UserError, one_line
from slipway.serve.ensemble import MAX_DEPTH, Ensemble, composing_models, is_ensemble
from slipway.serve.model import ModelVersion, load_version
from slipway.serve.repository import Repository
from slipway.serve.sequence import Sequences, reserve, unreserve
from slipway.serve.shm import SharedMemory, cuda_refused
from slipway.serve.types import InferRequest, InferResponse

__all__ = ["DataPlane", "EXTENSIONS", "CONTROL_MODES", "unknown_model", "pick_version"]

log = logging.getLogger("slipway.serve")

EXTENSIONS = [
    "binary_tensor_data", "statistics", "model_repository", "model_repository(unload_dependents)",
    "schedule_policy", "model_configuration", "parameters", "system_shared_memory",
]
CONTROL_MODES = ("none", "poll", "explicit")
V = TypeVar("V")


@dataclass
class Entry:
    """What the server knows of one model name."""

    name: str
    config: Any = None  # ModelConfig of the served versions
    versions: dict[int, ModelVersion | Ensemble] = field(default_factory=dict)
    state: str = "UNAVAILABLE"  # READY | LOADING | UNLOADING | UNAVAILABLE
    reason: str = ""
    fingerprint: str = ""
    required: bool = False  # loaded at start: the server is not ready while it does not serve
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DataPlane:
    """The :class:`~slipway.serve.types.Plane` the adapters serve (see the module docstring)."""

    def __init__(self, repository: Repository, *, control: str = "none", models: list[str] | None = None,
                 threads: int = 0, max_pending: int = 1024, poll_seconds: float = 2.0) -> None:
        if control not in CONTROL_MODES:
            raise ServeError(f"model control mode {control!r} is not one of {', '.join(CONTROL_MODES)}", 400)
        self.repository = repository
        self.control = control
        self.startup_models = models
        self.threads = threads
        self.max_pending = max_pending
        self.poll_seconds = poll_seconds
        self.entries: dict[str, Entry] = {}
        self.stopping = False
        self.started = False
        self._seen: dict[str, str] = {}  # name -> fingerprint seen at the last poll
        self._retiring: set[asyncio.Task] = set()
        self.shm = SharedMemory()  # system shared-memory regions, for both transports (serve/shm.py)
        self._polling: asyncio.Task | None = None

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Load the start-up models; returns one line per model that failed to load."""
        if self.control == "explicit":
            names = self.repository.names() if self.startup_models == ["*"] else list(self.startup_models or [])
        else:
            names = self.repository.names()
        errors = []
        for name in names:
            entry = self.entries.setdefault(name, Entry(name))
            entry.required = True
            if entry.versions:
                continue  # already loaded as a composing model of an ensemble
            try:
                await self._load(name)
            except ServeError as e:
                entry.reason = entry.reason or str(e)  # a name refused before loading has none yet
                errors.append(str(e))
                log.error("model %s failed to load: %s", name, e)
        for name in self.repository.names():
            self._seen[name] = self.repository.fingerprint(name)
        self.started = True
        return errors

    async def poll(self) -> None:
        """One look at the repository (poll mode): load new and changed models, unload removed ones."""
        names = set(self.repository.names())
        for name in sorted(names):
            fp = self.repository.fingerprint(name)
            last, self._seen[name] = self._seen.get(name), fp
            entry = self.entries.get(name)
            if fp != last or (entry is not None and entry.fingerprint == fp):
                continue  # still changing (wait for it to settle), or already serving these files
            if entry is not None and entry.state == "UNAVAILABLE" and entry.fingerprint == fp:
                continue
            try:
                await self._load(name)
                log.info("model %s (re)loaded after a repository change", name)
            except ServeError as e:
                self.entries[name].fingerprint = fp  # don't retry the same broken files every poll
                log.error("model %s failed to reload, keeping what was serving: %s", name, e)
        for name in [n for n in self.entries if n not in names]:
            entry = self.entries[name]
            if entry.versions:
                await self._unload(name)
                log.info("model %s unloaded: removed from the repository", name)
            if not entry.versions and not entry.lock.locked():
                del self.entries[name]  # gone from the repository: gone from the index (as Triton's)
        for name in [n for n in self._seen if n not in names]:
            del self._seen[name]

    async def run_polling(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.poll()
            except Exception:  # a poll must never stop the server
                log.exception("repository poll failed")

    async def open(self, exit_on_error: bool = True) -> list[str]:
        """:meth:`start`, as a server runs it: with ``exit_on_error`` a model that failed to load stops everything
        (UserError naming the first); returns one line per model that failed."""
        errors = await self.start()
        if errors and exit_on_error:
            await self.shutdown(drain=False)
            raise UserError(f"{len(errors)} model(s) failed to load; first: {errors[0]}")
        return errors

    def poll_in_background(self) -> None:
        """In ``poll`` mode, watch the repository from a task of the running loop (:meth:`close` ends it)."""
        if self.control == "poll" and self._polling is None:
            self._polling = asyncio.ensure_future(self.run_polling())

    async def close(self, drain: bool = True, drain_seconds: float = 30.0) -> None:
        """Stop polling, then :meth:`shutdown` (in-flight requests get up to ``drain_seconds``)."""
        if self._polling is not None:
            self._polling.cancel()
            self._polling = None
        try:
            await asyncio.wait_for(self.shutdown(drain=drain), drain_seconds)
        except asyncio.TimeoutError:
            log.warning("shutdown: requests still running after %.0f s; closing anyway", drain_seconds)

    async def shutdown(self, drain: bool = True) -> None:
        """Stop taking requests (ready turns false) and finish the ones in flight."""
        self.stopping = True
        closing = [v.close(drain=drain) for e in self.entries.values() for v in e.versions.values()]
        await asyncio.gather(*closing, *self._retiring, return_exceptions=True)
        self.shm.close()  # regions still used by a request are unmapped when it lets go

    # -- health and metadata --------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Started, not stopping, and every model loaded at start serving (see the module docstring)."""
        if self.stopping or not self.started:
            return False
        return all(e.versions for e in self.entries.values() if e.required)

    def metadata(self) -> dict[str, Any]:
        return {"name": "slipway", "version": __version__, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str = "") -> bool:
        """Loaded and serving; an ensemble only while every composing model is ready too."""
        return not self.stopping and self._ready(name, version, 0)

    def _ready(self, name: str, version: str, depth: int) -> bool:
        try:
            mv = self._version(name, version)
        except ServeError:
            return False
        if isinstance(mv, Ensemble):
            return depth < MAX_DEPTH and all(self._ready(m, v, depth + 1) for m, v in mv.composing())
        return True

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        mv = self._version(name, version)
        entry = self.entries[name]
        return {"name": name, "versions": [str(v) for v in sorted(entry.versions)], "platform": mv.platform,
                **mv.metadata()}

    def model_config(self, name: str, version: str = "") -> Any:  # ModelConfig
        return self._version(name, version).config

    def model_statistics(self, name: str = "", version: str = "") -> Any:  # ModelStatisticsResponse
        if name:
            if version:
                versions = [self._version(name, version)]
            else:
                self._entry(name)
                versions = [v for _, v in sorted(self.entries[name].versions.items())]
        else:
            versions = [v for e in self.entries.values() for _, v in sorted(e.versions.items())]
        return pb.ModelStatisticsResponse(model_stats=[v.stats.to_proto() for v in versions])

    def served_statistics(self) -> list[tuple[str, str, Any, int]]:
        """(model, version, its ModelStats, requests pending) per served version: what the metrics export."""
        return [(e.name, str(n), v.stats, v.pending) for e in list(self.entries.values())
                for n, v in list(e.versions.items())]

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """One row per served version, else one per model (repository folders and models still serving)."""
        out = []
        serving = {n for n, e in self.entries.items() if e.versions or e.state == "LOADING"}
        for name in sorted(set(self.repository.names()) | serving):
            entry = self.entries.get(name)
            if entry is not None and entry.versions:
                out += [{"name": name, "version": str(v), "state": entry.state, "reason": entry.reason}
                        for v in sorted(entry.versions)]
            elif not ready_only:
                state = entry.state if entry is not None else "UNAVAILABLE"
                reason = entry.reason if entry is not None else "unloaded"
                out.append({"name": name, "version": "", "state": state, "reason": reason})
        return [r for r in out if not ready_only or r["state"] == "READY"]

    # -- repository control ---------------------------------------------------------------------

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """The load API (explicit mode only): load or reload ``name``; the old versions drain after the swap."""
        self._check_control()
        await self._load(name, parameters)

    async def unload_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """The unload API (explicit mode only); ``unload_dependents``: the ensembles calling ``name`` too."""
        self._check_control()
        if name not in self.entries:
            self.repository.path(name)  # 400/404 for a name the repository does not have either
        await self._unload(name)
        if (parameters or {}).get("unload_dependents"):
            for other, entry in list(self.entries.items()):
                if any(isinstance(v, Ensemble) and name in (m for m, _ in v.composing())
                       for v in entry.versions.values()):
                    await self._unload(other)

    def _check_control(self) -> None:
        if self.control != "explicit":  # Triton: UNAVAILABLE (HTTP 503), its message, then ours
            raise ServeError(f"explicit model load / unload is not allowed: the server runs in model control mode "
                             f"{self.control!r}; start it with --model-control-mode explicit", 503)

    async def _load(self, name: str, parameters: dict[str, Any] | None = None, chain: tuple[str, ...] = ()) -> None:
        """Load (or reload) every version the policy selects; the old ones drain after the swap. An
        ensemble's composing models that are not loaded yet load first (``chain``: the ensembles
        loading them, so a cycle is an error, not a recursion)."""
        if self.stopping:
            raise ServeError("the server is shutting down", 503)
        files = [k for k in (parameters or {}) if str(k).startswith("file:")]
        if files:
            raise ServeError(f"loading model files sent with the request ({files[0]}) is not supported; "
                             "put them in the repository", 400)
        override = (parameters or {}).get("config") or None
        if override is not None and not isinstance(override, str):
            raise ServeError("load parameter 'config' must be a JSON string", 400)
        path = self.repository.path(name)  # 400/404 for names that are not in the repository
        entry = self.entries.setdefault(name, Entry(name))
        async with entry.lock:
            fingerprint = self.repository.fingerprint(name)
            if not entry.versions:
                entry.state = "LOADING"
            try:
                config = self.repository.config(name, override)
                if is_ensemble(config):
                    await self._load_composing(name, config, chain)
                numbers = self.repository.versions(name, config)
                new = await self._load_versions(name, config, numbers)
            except Exception as e:
                if not isinstance(e, ServeError):
                    e = ServeError(f"model {name!r} failed to load: {one_line(e)}", 500)
                e = ServeError(self.repository.relative(str(e)), e.status)
                if not entry.versions:
                    entry.state, entry.reason = "UNAVAILABLE", str(e)
                else:  # the old versions keep serving; the index says why the new files are not
                    entry.reason = f"reload failed: {e}"
                entry.fingerprint = fingerprint
                raise e from None
            old = entry.versions
            entry.config, entry.versions, entry.fingerprint = config, new, fingerprint
            entry.state, entry.reason = "READY", ""
        log.info("model %s ready (versions %s) from %s", name, ", ".join(map(str, sorted(new))), path)
        self._retire(old.values())

    async def _load_composing(self, name: str, config, chain: tuple[str, ...]) -> None:
        for model in composing_models(config):
            if model in chain or model == name:
                raise ServeError(f"ensemble {name!r}: composing model {model!r} calls it back "
                                 f"({' -> '.join((*chain, name, model))})", 400)
            entry = self.entries.get(model)
            if entry is not None and entry.versions:
                continue
            try:
                await self._load(model, chain=(*chain, name))
            except ServeError as e:
                raise ServeError(f"ensemble {name!r}: composing model {model!r} did not load: {e}", e.status) from None

    async def _load_versions(self, name: str, config, numbers: list[int]) -> dict[int, ModelVersion | Ensemble]:
        loaded: dict[int, ModelVersion | Ensemble] = {}
        if is_ensemble(config):
            for n in numbers:
                loaded[n] = Ensemble(name, n, config, self.infer)
                loaded[n].check_composing(self._version)
            return loaded
        try:
            for n in numbers:
                loaded[n] = await load_version(name, n, config, self.repository.model_file(name, config, n),
                                               threads=self.threads, max_pending=self.max_pending)
        except BaseException:
            for mv in loaded.values():
                await mv.close(drain=False)
            raise
        return loaded

    async def _unload(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is None:
            return
        async with entry.lock:
            old, entry.versions = entry.versions, {}
            entry.state, entry.reason, entry.required = "UNAVAILABLE", "unloaded", False
        await asyncio.gather(*(v.close(drain=True) for v in old.values()))

    def _retire(self, versions) -> None:
        for mv in versions:
            task = asyncio.ensure_future(mv.close(drain=True))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    # -- shared memory (Triton's system shared-memory extension; CUDA's is refused) --------------

    def shm_register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        self.shm.register(name, key, offset, byte_size)

    def shm_unregister(self, name: str = "") -> None:
        self.shm.unregister(name)

    def shm_status(self, name: str = "") -> list[dict[str, Any]]:
        return self.shm.status(name)

    def cuda_shm_register(self, name: str) -> None:
        raise cuda_refused()

    # -- inference ------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Inputs read from / outputs written into shared memory around :meth:`_infer` (serve/shm.py)."""
        if self.stopping:
            raise ServeError("the server is shutting down", 503)
        try:
            lease = self.shm.lease(request)  # RequestError for a bad region, offset or size
        except ServeError as e:
            log.warning("request %s to %s failed (%d): %s", request.id or "-", request.model, e.status, e)
            raise
        if lease is None:
            return await self._infer(request)
        try:
            response = await self._infer(request)
            lease.write(response)
            return response
        finally:
            lease.release()

    async def _infer(self, request: InferRequest) -> InferResponse:
        for _ in range(3):
            mv = self._version(request.model, request.version)
            try:
                checked = mv.check(request)  # THE request check (slipway.serve.request), for every transport
                if checked.sequence is None or not isinstance(mv, Ensemble):
                    return await mv.run(checked, request.id)
                return await self._run_ensemble_sequence(mv, checked, request.id)
            except ServeError as e:
                # swapped out between choosing the version and queueing: ask the new one
                if e.status == 503 and mv.closing and not request.version and not self.stopping:
                    continue
                if e.status >= 500 or e.status == 400:
                    log.warning("request %s to %s failed (%d): %s", request.id or "-", request.model, e.status, e)
                if e.status >= 500:  # an engine's own message may name the model file
                    message = self.repository.relative(str(e))
                    if message != str(e):
                        raise ServeError(message, e.status) from None
                raise
        raise ServeError(f"model {request.model!r} is being reloaded; try again", 503)

    async def _run_ensemble_sequence(self, ensemble: Ensemble, checked, request_id: str) -> InferResponse:
        """An ensemble request with sequence parameters: its place in each sequence-batched composing model
        taken now (arrival order), its flags passed to the composing requests (serve/sequence.py)."""
        registries = self._sequence_models(ensemble, 0)
        if not registries:
            return await ensemble.run(checked, request_id)
        try:
            reservation, token = reserve(checked.sequence, registries)
        except ServeError:
            ensemble.stats.request_done(False, 0, reason="OTHER")
            raise
        try:
            return await ensemble.run(checked, request_id)
        finally:
            unreserve(reservation, token)

    def _sequence_models(self, ensemble: Ensemble, depth: int) -> list[Sequences]:
        """The sequences of the sequence-batched models an ensemble calls (through nested ensembles too)."""
        out: list[Sequences] = []
        for model, version in ensemble.composing():
            try:
                mv = self._version(model, version)
            except ServeError:
                continue  # the step will say so
            if isinstance(mv, Ensemble):
                if depth < MAX_DEPTH:
                    out += self._sequence_models(mv, depth + 1)
            elif mv.sequences is not None:
                out.append(mv.sequences)
        return out

    def sequences(self, name: str, version: str = "") -> dict[str, int]:
        """A sequence-batched model's sequence counts (live, started, restarted, ended, timed_out); {} for
        other models."""
        mv = self._version(name, version)
        registry = getattr(mv, "sequences", None)
        return registry.statistics() if registry is not None else {}

    def _entry(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            unknown_model(name)
        return entry

    def _version(self, name: str, version: str = "") -> ModelVersion:
        entry = self._entry(name)
        return pick_version(name, entry.versions, version, entry.state, entry.reason)


def unknown_model(name: Any) -> NoReturn:
    """THE error for a model name nobody serves (400 without a name)."""
    if not isinstance(name, str) or not name:
        raise ServeError("a model name is required", 400)
    raise ServeError(f"unknown model {name!r}", 404)


def pick_version(name: str, versions: dict[int, V], version: str, state: str, reason: str) -> V:
    """The version a request names (``""``: the newest) of a known model, else THE error saying why."""
    if not versions:
        why = f": {reason}" if reason else ""
        raise ServeError(f"model {name!r} is not ready ({state.lower()}{why})", 503)
    if not version:
        return versions[max(versions)]
    try:
        n = int(version)
    except ValueError:
        raise ServeError(f"model version {version!r} is not an integer", 400) from None
    found = versions.get(n)
    if found is None:
        have = ", ".join(map(str, sorted(versions)))
        raise ServeError(f"model {name!r} has no version {n} loaded (loaded: {have})", 404)
    return found
