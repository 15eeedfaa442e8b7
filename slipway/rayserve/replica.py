"""A model replica: one model (an ensemble with the models it calls) on slipway's own data plane, in a Ray actor.

Each replica of a model's Ray Serve deployment unpacks the model's files from the object store (hash-checked,
:mod:`slipway.rayserve.files`) into a private folder and serves them with a :class:`DataPlane` of its own, so
slipway's dynamic batcher and model instances work inside each replica as they do in ``slipway serve``. It
answers :meth:`infer` (a decoded :class:`InferRequest`: the ingress decodes HTTP and gRPC once) and reports
what the ingress needs to the registry every :data:`REPORT_SECONDS` (:mod:`slipway.rayserve.registry`).
A request the data plane refuses comes back as :class:`Refused` (its status and message), a value rather than
an exception, so Ray never wraps it: the client sees the message ``slipway serve`` would give.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slipway.errors import ServeError, UserError
from slipway.rayserve.files import ModelFiles, unpack
from slipway.rayserve.registry import NAMESPACE, REGISTRY, REPORT_SECONDS
from slipway.serve.dataplane import DataPlane
from slipway.serve.repository import Repository
from slipway.serve.types import InferRequest, InferResponse

__all__ = ["ModelReplica", "Refused", "Settings"]

log = logging.getLogger("slipway.rayserve")


@dataclass(frozen=True)
class Settings:
    """What every replica of a repository gets alike (``slipway serve``'s options)."""

    threads: int = 0
    max_pending: int = 1024
    allow_python_models: bool = False


@dataclass(frozen=True)
class Refused:
    """A request the data plane refused: what the client is told."""

    status: int
    message: str


class ModelReplica:
    """The class of every model deployment (``serve.deployment(ModelReplica)`` in :mod:`slipway.rayserve.deploy`)."""

    async def __init__(self, name: str, models: list[ModelFiles], settings: Settings) -> None:
        import ray
        from ray import serve

        self._name = name
        self._dir = Path(tempfile.mkdtemp(prefix=f"slipway-{name}-"))
        self._task: asyncio.Task | None = None
        try:
            unpack(models, self._dir, ray.get)
            repo = Repository(self._dir, allow_python_models=settings.allow_python_models)
            self._plane = DataPlane(repo, control="explicit", models=[name], threads=settings.threads,
                                    max_pending=settings.max_pending)
            errors = await self._plane.start()
            if errors:
                raise UserError(f"model {name} failed to load: {errors[0]}")
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._id = serve.get_replica_context().replica_id.unique_id
        self._node = ray.get_runtime_context().get_node_id()
        self._registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
        await self._registry.report.remote(self._id, name, self.report())
        self._task = asyncio.create_task(self._reporting())

    async def infer(self, request: InferRequest) -> InferResponse | Refused:
        try:
            return await self._plane.infer(request)
        except ServeError as e:
            return Refused(e.status, str(e))

    def report(self) -> dict[str, Any]:
        """What this replica serves: per model its versions (metadata, config) and state; its statistics; its node."""
        plane = self._plane
        models = {}
        for name, entry in plane.entries.items():
            versions = {v: {"metadata": plane.model_metadata(name, str(v)),
                            "config": plane.model_config(name, str(v)).SerializeToString()}
                        for v in sorted(entry.versions)}
            models[name] = {"versions": versions, "state": entry.state, "reason": entry.reason,
                            "ready": plane.model_ready(name)}
        return {"models": models, "stats": plane.served_statistics(), "ready": plane.ready(), "node": self._node}

    async def _reporting(self) -> None:
        while True:
            await asyncio.sleep(REPORT_SECONDS)
            try:
                await self._registry.report.remote(self._id, self._name, self.report())
            except Exception as e:  # noqa: BLE001 - the registry restarting must not stop serving
                log.warning("replica %s of %s could not report: %s", self._id, self._name, e)

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose model is not serving is replaced."""
        if not self._plane.ready():
            raise ServeError(f"model {self._name} is not ready in replica {self._id}", 503)

    async def __del__(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(Exception):
                await self._registry.report.remote(self._id, self._name, self.report())
                await self._registry.retire.remote(self._id)
        with contextlib.suppress(Exception):
            await self._plane.shutdown(drain=True)
        shutil.rmtree(self._dir, ignore_errors=True)
