"""The ingress's :class:`~slipway.serve.types.Plane` for a repository served on Ray: the same answers as
``slipway serve``'s data plane, from the replicas' reports and their deployments.

* **Inference** goes to the model's deployment (Ray Serve picks the replica). A replica that dies with the
  request (its process, its node) is retried once on another; past that, or past ``request_timeout_s``, the
  request fails fast with 503 / UNAVAILABLE, never hangs; requests of a sequence (state lives in one replica)
  are not retried. :attr:`RayPlane.counters` counts retries and fast failures; they are exported as metrics.
* **Metadata, config, readiness, index** come from the reports (:mod:`slipway.rayserve.registry`), refreshed
  every half report interval by :meth:`RayPlane.follow`; the lookups and their errors are the data plane's own
  (:func:`~slipway.serve.dataplane.unknown_model`, :func:`~slipway.serve.dataplane.pick_version`).
* **Statistics** are the sum over every replica that ever reported (a replica that left keeps counting, so
  the Triton-named Prometheus counters never go backwards).
* Repository control and system shared memory (the client and the replicas are on different machines) are
  refused with one line each, over both transports.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from slipway import __version__
from slipway.errors import ServeError, one_line
from slipway.rayserve.registry import REPORT_SECONDS
from slipway.rayserve.replica import Refused
from slipway.serve.dataplane import EXTENSIONS, pick_version, unknown_model
from slipway.serve.shm import cuda_refused
from slipway.serve.stats import ModelStats
from slipway.serve.types import InferRequest, InferResponse

__all__ = ["RayPlane"]

log = logging.getLogger("slipway.rayserve")

NO_CONTROL = ("explicit model load / unload is not allowed: the repository is served on Ray; change it and deploy "
              "it again (`slipway serve REPO --ray`), which rolls the change out replica by replica")
NO_SHM = ("system shared memory is not available when the repository is served on Ray: the client and the "
          "replicas are on different machines; send the tensors in the request")


def _ray_errors() -> tuple[tuple[type[BaseException], ...], type[BaseException]]:
    """(what a replica that died with a request raises, what full replica queues raise)."""
    from ray.exceptions import ActorUnavailableError, NodeDiedError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    dead = RayActorError, ActorUnavailableError, NodeDiedError, ReplicaUnavailableError, DeploymentUnavailableError
    return dead, BackPressureError


class RayPlane:
    def __init__(self, handles: dict[str, Any], registry: Any, *, request_timeout_s: float = 60.0) -> None:
        self._handles = handles  # model name -> its deployment's handle
        self._registry = registry
        self._timeout = request_timeout_s
        self._table: dict[str, dict[str, Any]] = {}
        self._configs: dict[bytes, mc.ModelConfig] = {}
        self._dead, self._full = _ray_errors()
        self.counters: Counter = Counter()  # retried, unavailable, timed_out

    # -- the reports ----------------------------------------------------------------------------

    async def refresh(self) -> None:
        self._table = await self._registry.table.remote()

    async def follow(self) -> None:
        """Keep the reports fresh (the ingress runs this for its lifetime)."""
        while True:
            try:
                await self.refresh()
            except Exception as e:  # noqa: BLE001 - keep answering from the last table
                log.warning("the replica registry did not answer: %s", e)
            await asyncio.sleep(REPORT_SECONDS / 2)

    def _served(self, name: str) -> dict[str, Any] | None:
        """The freshest live report of ``name`` by its own deployment (else by an ensemble's replica)."""
        best = None
        for report in self._table.values():
            model = report["models"].get(name)
            if model is None or not report["live"]:
                continue
            rank = (report["deployment"] == name, model["ready"], report["at"])
            if best is None or rank > best[0]:
                best = (rank, model)
        return None if best is None else best[1]

    def _version(self, name: str, version: str) -> dict[str, Any]:
        if name not in self._handles:
            unknown_model(name)
        model = self._served(name)
        if model is None:
            return pick_version(name, {}, version, "UNAVAILABLE", "no replica is serving it yet")
        return pick_version(name, model["versions"], version, model["state"], model["reason"])

    # -- health and metadata --------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return all((m := self._served(name)) is not None and m["ready"] for name in self._handles)

    def metadata(self) -> dict[str, Any]:
        return {"name": "slipway", "version": __version__,
                "extensions": [e for e in EXTENSIONS if e != "system_shared_memory"]}

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self._version(name, version)
        except ServeError:
            return False
        return bool(self._served(name)["ready"])

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        return self._version(name, version)["metadata"]

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        data = self._version(name, version)["config"]
        config = self._configs.get(data)
        if config is None:
            config = self._configs[data] = mc.ModelConfig.FromString(data)
        return config

    def served_statistics(self) -> list[tuple[str, str, ModelStats, int]]:
        """Per model version: the statistics summed over every replica that reported them (a replica that left
        keeps counting: counters never go backwards), and the requests pending in the live ones."""
        merged: dict[tuple[str, str], list] = {}
        for report in self._table.values():
            for model, version, stats, pending in report["stats"]:
                row = merged.get((model, version))
                if row is None:
                    row = merged[(model, version)] = [ModelStats(model, version), 0]
                row[0].merge(stats)
                row[1] += pending if report["live"] else 0
        return [(m, v, stats, pending) for (m, v), (stats, pending) in sorted(merged.items())]

    def model_statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        if name:
            self._version(name, version)  # the data plane's errors for an unknown model or version
        return pb.ModelStatisticsResponse(model_stats=[
            stats.to_proto() for model, v, stats, _ in self.served_statistics()
            if (not name or model == name) and (not version or v == version)])

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        rows = []
        for name in sorted(self._handles):
            model = self._served(name)
            if model is not None and model["versions"]:
                rows += [{"name": name, "version": str(v), "state": model["state"], "reason": model["reason"]}
                         for v in sorted(model["versions"])]
            elif not ready_only:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE",
                             "reason": "no replica is serving it"})
        return [r for r in rows if not ready_only or r["state"] == "READY"]

    # -- refused here ---------------------------------------------------------------------------

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        raise ServeError(NO_CONTROL, 503)

    async def unload_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        raise ServeError(NO_CONTROL, 503)

    def shm_register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        raise ServeError(NO_SHM, 400)

    def shm_unregister(self, name: str = "") -> None:
        return None  # nothing is registered; unknown names are no error

    def shm_status(self, name: str = "") -> list[dict[str, Any]]:
        if name:
            raise ServeError(NO_SHM, 400)
        return []

    def cuda_shm_register(self, name: str) -> None:
        raise cuda_refused()

    # -- inference ------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        handle = self._handles.get(request.model)
        if handle is None:
            unknown_model(request.model)
        tries = 1 if "sequence_id" in request.parameters else 2
        for attempt in range(tries):
            response = handle.infer.remote(request)
            try:
                result = await asyncio.wait_for(_awaited(response), self._timeout)
            except asyncio.TimeoutError:
                response.cancel()
                self.counters["timed_out"] += 1
                raise ServeError(f"model {request.model}: no replica answered within {self._timeout:g} s", 503) \
                    from None
            except self._full:
                self.counters["unavailable"] += 1
                raise ServeError(f"model {request.model}: its replicas' queues are full; retry later", 503) from None
            except self._dead as e:
                if attempt + 1 < tries:
                    self.counters["retried"] += 1
                    log.warning("model %s: a replica failed with the request (%s); retrying once", request.model,
                                one_line(e))
                    continue
                self.counters["unavailable"] += 1
                raise ServeError(f"model {request.model}: no replica could answer ({one_line(e)}); retry later",
                                 503) from None
            if isinstance(result, Refused):
                raise ServeError(result.message, result.status)
            return result
        raise AssertionError("unreachable")


async def _awaited(response: Any) -> Any:
    return await response
