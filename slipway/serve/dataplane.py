"""The server's logic, free of any transport: health, metadata, config, statistics, repository
control and inference. ``http.py`` and ``grpc.py`` are thin adapters over one :class:`DataPlane`.

Models come from a :class:`~slipway.serve.repository.Repository`. Control modes (as Triton's):

* ``none``: every model is loaded at start; the repository is not watched.
* ``poll``: as ``none``, then the repository is re-read every ``poll_seconds``; a model whose files
  changed (and stayed unchanged for one more poll, so a half-copied file is never loaded) is loaded
  again beside the old one, which keeps serving until the new one is ready and then drains: no
  request fails during the swap. A failed reload keeps the old version serving.
* ``explicit``: only the models named at start (or none) are loaded; the load/unload API does the rest.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from slipway import __version__
from slipway.errors import ServeError, one_line
from slipway.serve.model import ModelVersion, load_version
from slipway.serve.repository import Repository
from slipway.serve.types import InferRequest, InferResponse

__all__ = ["DataPlane", "EXTENSIONS", "CONTROL_MODES"]

log = logging.getLogger("slipway.serve")

EXTENSIONS = [
    "binary_tensor_data", "statistics", "model_repository", "model_repository(unload_dependents)",
    "schedule_policy", "model_configuration", "parameters",
]
CONTROL_MODES = ("none", "poll", "explicit")


@dataclass
class Entry:
    """What the server knows of one model name."""

    name: str
    config: Any = None  # ModelConfig of the served versions
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    state: str = "UNAVAILABLE"  # READY | LOADING | UNLOADING | UNAVAILABLE
    reason: str = ""
    fingerprint: str = ""
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

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Load the start-up models; returns one line per model that failed to load."""
        if self.control == "explicit":
            names = self.repository.names() if self.startup_models == ["*"] else list(self.startup_models or [])
        else:
            names = self.repository.names()
        errors = []
        for name in names:
            try:
                await self.load_model(name)
            except ServeError as e:
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
                await self.load_model(name)
                log.info("model %s (re)loaded after a repository change", name)
            except ServeError as e:
                self.entries[name].fingerprint = fp  # don't retry the same broken files every poll
                log.error("model %s failed to reload, keeping what was serving: %s", name, e)
        for name in [n for n in self.entries if n not in names and self.entries[n].versions]:
            await self.unload_model(name)
            log.info("model %s unloaded: removed from the repository", name)
        for name in [n for n in self._seen if n not in names]:
            del self._seen[name]

    async def run_polling(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.poll()
            except Exception:  # a poll must never stop the server
                log.exception("repository poll failed")

    async def shutdown(self, drain: bool = True) -> None:
        """Stop taking requests (ready turns false) and finish the ones in flight."""
        self.stopping = True
        closing = [v.close(drain=drain) for e in self.entries.values() for v in e.versions.values()]
        await asyncio.gather(*closing, *self._retiring, return_exceptions=True)

    # -- health and metadata --------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if self.stopping or not self.started:
            return False
        wanted = self.entries.values() if self.control == "explicit" else (
            self.entries.get(n) for n in self.repository.names())
        return all(e is not None and e.state == "READY" for e in wanted)

    def metadata(self) -> dict[str, Any]:
        return {"name": "slipway", "version": __version__, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str = "") -> bool:
        if self.stopping:
            return False
        try:
            self._version(name, version)
            return True
        except ServeError:
            return False

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

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        out = []
        for name in sorted(set(self.repository.names()) | set(self.entries)):
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
        """Load (or reload) every version the policy selects; the old ones drain after the swap."""
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
                numbers = self.repository.versions(name, config)
                new = await self._load_versions(name, config, numbers)
            except Exception as e:
                if not isinstance(e, ServeError):
                    e = ServeError(f"model {name!r} failed to load: {one_line(e)}", 500)
                if not entry.versions:
                    entry.state, entry.reason = "UNAVAILABLE", str(e)
                entry.fingerprint = fingerprint
                raise e from None
            old = entry.versions
            entry.config, entry.versions, entry.fingerprint = config, new, fingerprint
            entry.state, entry.reason = "READY", ""
        log.info("model %s ready (versions %s) from %s", name, ", ".join(map(str, sorted(new))), path)
        self._retire(old.values())

    async def _load_versions(self, name: str, config, numbers: list[int]) -> dict[int, ModelVersion]:
        loaded: dict[int, ModelVersion] = {}
        try:
            for n in numbers:
                loaded[n] = await load_version(name, n, config, self.repository.model_file(name, config, n),
                                               threads=self.threads, max_pending=self.max_pending)
        except BaseException:
            for mv in loaded.values():
                await mv.close(drain=False)
            raise
        return loaded

    async def unload_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        entry = self.entries.get(name)
        if entry is None:
            self.repository.path(name)  # 404 for a name the repository does not have either
            return
        async with entry.lock:
            old, entry.versions = entry.versions, {}
            entry.state, entry.reason = "UNAVAILABLE", "unloaded"
        await asyncio.gather(*(v.close(drain=True) for v in old.values()))

    def _retire(self, versions) -> None:
        for mv in versions:
            task = asyncio.ensure_future(mv.close(drain=True))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    # -- inference ------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        if self.stopping:
            raise ServeError("the server is shutting down", 503)
        for _ in range(3):
            mv = self._version(request.model, request.version)
            try:
                checked = mv.check(request)  # THE request check (slipway.serve.request), for every transport
                return await mv.run(checked, request.id)
            except ServeError as e:
                # swapped out between choosing the version and queueing: ask the new one
                if e.status == 503 and mv.closing and not request.version and not self.stopping:
                    continue
                if e.status >= 500 or e.status == 400:
                    log.warning("request %s to %s failed (%d): %s", request.id or "-", request.model, e.status, e)
                raise
        raise ServeError(f"model {request.model!r} is being reloaded; try again", 503)

    def _entry(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            if not isinstance(name, str) or not name:
                raise ServeError("a model name is required", 400)
            raise ServeError(f"unknown model {name!r}", 404)
        return entry

    def _version(self, name: str, version: str = "") -> ModelVersion:
        entry = self._entry(name)
        if not entry.versions:
            why = f": {entry.reason}" if entry.reason else ""
            raise ServeError(f"model {name!r} is not ready ({entry.state.lower()}{why})", 503)
        if not version:
            return entry.versions[max(entry.versions)]
        try:
            n = int(version)
        except ValueError:
            raise ServeError(f"model version {version!r} is not an integer", 400) from None
        mv = entry.versions.get(n)
        if mv is None:
            have = ", ".join(map(str, sorted(entry.versions)))
            raise ServeError(f"model {name!r} has no version {n} loaded (loaded: {have})", 404)
        return mv
