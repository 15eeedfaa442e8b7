"""Deploy a model repository on Ray Serve: one deployment per model, an ingress with KServe v2 over HTTP and gRPC.

:class:`RayServing` reads the repository once (every config checked: a broken model fails before anything is
deployed), ships each model's files through the object store (:mod:`slipway.rayserve.files`), and runs one Ray
Serve application: a deployment per model (its replicas: :class:`~slipway.rayserve.replica.ModelReplica`,
each with slipway's batcher and instances) and the ingress (:mod:`slipway.rayserve.ingress`) behind Ray's HTTP
and gRPC proxies. Calling :meth:`RayServing.deploy` again after the repository changed rolls the change out:
Ray Serve starts the new replicas of a changed model and drains the old ones (requests in flight finish;
new ones go to ready replicas), replica by replica.

Scale, per model: ``config.pbtxt`` parameters ``slipway.ray.replicas`` (fixed), or ``slipway.ray.min_replicas``
/ ``slipway.ray.max_replicas`` / ``slipway.ray.target_ongoing_requests`` (autoscaling on the requests each
replica has queued or running), and ``slipway.ray.cpus`` (CPUs each replica reserves); what a config does not
say comes from :class:`Scale` (the CLI's ``--replicas`` / ``--autoscale MIN:MAX`` / ``--replica-cpus``). A
sequence-batched model (its state lives in one replica) always runs one replica.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from slipway.errors import ServeError, UserError, one_line
from slipway.rayserve.files import ModelFiles, closure, ship
from slipway.rayserve.ingress import IngressSettings
from slipway.rayserve.registry import NAMESPACE, REGISTRY
from slipway.rayserve.replica import Settings
from slipway.serve.repository import Repository

__all__ = ["RayServing", "Scale", "model_options"]

log = logging.getLogger("slipway.rayserve")

APP = "slipway"
HEAD = "node:__internal_head__"  # Ray's resource of the head node
REPLICA_ONGOING = 128  # requests one model replica takes at once: its batcher merges them
INGRESS_ONGOING = 1024


@dataclass(frozen=True)
class Scale:
    """Replicas of every model whose config says nothing: fixed (``replicas``) or autoscaling (``autoscale``)."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max)
    target_ongoing_requests: float = 8.0
    cpus: float = 1.0  # per model replica
    upscale_delay_s: float = 30.0  # autoscaling: how long the load must stay above target before a replica is added
    downscale_delay_s: float = 600.0  # ... below target before one is removed (Ray Serve's defaults)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise UserError(f"--replicas must be 1 or more, got {self.replicas}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 0 <= low <= high or high < 1:
                raise UserError(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {low}:{high}")
        if self.target_ongoing_requests <= 0:
            raise UserError(f"target ongoing requests must be more than 0, got {self.target_ongoing_requests}")
        if self.cpus < 0:
            raise UserError(f"CPUs per replica must be 0 or more, got {self.cpus}")


def model_options(name: str, config: Any, scale: Scale) -> dict[str, Any]:
    """The Ray Serve deployment options of model ``name`` (its config's ``slipway.ray.*`` parameters over ``scale``)."""
    params = {k: v.string_value for k, v in config.parameters.items() if k.startswith("slipway.ray.")}
    known = {"slipway.ray.replicas", "slipway.ray.min_replicas", "slipway.ray.max_replicas",
             "slipway.ray.target_ongoing_requests", "slipway.ray.cpus"}
    for key in params:
        if key not in known:
            raise UserError(f"model {name}: config parameter {key} is not one of {', '.join(sorted(known))}")

    def number(key: str, kind=int):
        try:
            return kind(params[key])
        except ValueError:
            raise UserError(f"model {name}: config parameter {key}={params[key]!r} is not a number") from None

    try:
        if "slipway.ray.replicas" in params:
            scale = replace(scale, replicas=number("slipway.ray.replicas"), autoscale=None)
        if {"slipway.ray.min_replicas", "slipway.ray.max_replicas"} & params.keys():
            low, high = scale.autoscale or (1, scale.replicas)
            low = number("slipway.ray.min_replicas") if "slipway.ray.min_replicas" in params else low
            high = number("slipway.ray.max_replicas") if "slipway.ray.max_replicas" in params else high
            scale = replace(scale, autoscale=(low, high))
        if "slipway.ray.target_ongoing_requests" in params:
            scale = replace(scale, target_ongoing_requests=number("slipway.ray.target_ongoing_requests", float))
        if "slipway.ray.cpus" in params:
            scale = replace(scale, cpus=number("slipway.ray.cpus", float))
    except UserError as e:
        raise UserError(f"model {name}: {e}") from None
    options: dict[str, Any] = {"name": f"model-{name}", "max_ongoing_requests": REPLICA_ONGOING,
                               "ray_actor_options": {"num_cpus": scale.cpus}}
    if config.HasField("sequence_batching"):
        if scale.autoscale is not None or scale.replicas != 1:
            log.warning("model %s is sequence-batched (its sequences live in one replica): one replica", name)
        options["num_replicas"] = 1
    elif scale.autoscale is not None:
        low, high = scale.autoscale
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
                                         "target_ongoing_requests": scale.target_ongoing_requests,
                                         "upscale_delay_s": scale.upscale_delay_s,
                                         "downscale_delay_s": scale.downscale_delay_s}
    else:
        options["num_replicas"] = scale.replicas
    return options


@dataclass
class RayServing:
    """A repository served on Ray Serve (see the module docstring). ``deploy()`` it; ``shutdown()`` when done."""

    repository: Path
    address: str | None = None  # a running cluster ("auto", "ray://..."); None: start a local one
    scale: Scale = field(default_factory=Scale)
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    settings: Settings = field(default_factory=Settings)
    ingress: IngressSettings = field(default_factory=IngressSettings)
    init: dict[str, Any] = field(default_factory=dict)  # more ray.init arguments (num_cpus=...)
    _own_ray: bool = False
    _deployed_prints: dict[str, str] = field(default_factory=dict)  # the files deploy() last shipped

    def _repo(self) -> Repository:
        return Repository(self.repository, allow_python_models=self.settings.allow_python_models)

    def plan(self, repo: Repository | None = None) -> dict[str, tuple[list[str], dict[str, Any]]]:
        """Per model: the models its replicas load (itself, and an ensemble's composing models) and its options.
        Reads and checks every config; UserError naming the model for the first broken one."""
        repo = repo or self._repo()
        names = repo.names()
        if not names:
            raise UserError(f"model repository {self.repository} has no model")
        out = {}
        for name in names:
            try:
                config = repo.config(name)
                out[name] = (closure(repo, name), model_options(name, config, self.scale))
            except ServeError as e:
                raise UserError(f"model {name}: {repo.relative(str(e))}") from None
        return out

    def deploy(self) -> dict[str, str]:
        """Deploy (or roll out the changes of) the repository; returns each model's files digest."""
        import ray
        from ray import serve
        from ray.serve.config import HTTPOptions, gRPCOptions

        import slipway.rayserve.protos as protos
        from slipway.rayserve.ingress import Ingress, build_asgi
        from slipway.rayserve.protos import GRPC_HOST, SERVICER
        from slipway.rayserve.registry import Registry
        from slipway.rayserve.replica import ModelReplica

        repo = self._repo()
        prints = self.fingerprints(repo)
        plan = self.plan(repo)
        if not ray.is_initialized():
            env = {"env_vars": {GRPC_HOST: self.host}, "worker_process_setup_hook": f"{protos.__name__}.bind_host"}
            ray.init(address=self.address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                     runtime_env=env, **self.init)
            self._own_ray = True
        _check_room(plan, ray.cluster_resources().get("CPU", 0.0))
        serve.start(http_options=HTTPOptions(host=self.host, port=self.http_port),
                    grpc_options=gRPCOptions(port=self.grpc_port, grpc_servicer_functions=[SERVICER]))
        # on the head node (it outlives workers), restarted if it dies (the replicas' next reports refill it)
        ray.remote(num_cpus=0)(Registry).options(
            name=REGISTRY, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
            max_task_retries=-1, resources={HEAD: 0.001}).remote()
        shipped: dict[str, ModelFiles] = {}
        models = {}
        for name, (loads, options) in plan.items():
            for n in loads:
                if n not in shipped:
                    shipped[n] = ship(repo, n, ray.put)
            models[name] = serve.deployment(ModelReplica).options(**options).bind(
                name, [shipped[n] for n in loads], self.settings)
        # the ingress on the head node with the proxies: a worker lost takes no request's ingress with it (Ray's
        # proxy would answer its requests INTERNAL); losing the head loses the cluster anyway
        ingress = serve.deployment(serve.ingress(build_asgi)(Ingress)).options(
            name="ingress", max_ongoing_requests=INGRESS_ONGOING,
            ray_actor_options={"num_cpus": 0, "resources": {HEAD: 0.001}})
        try:
            serve.run(ingress.bind(models, self.ingress), name=APP, route_prefix="/")
        except RuntimeError as e:  # Ray Serve's "Deploying application ... failed: ..." (a replica did not start)
            raise UserError(f"{one_line(e)} (the replicas' errors are in Ray's logs: serve/replica_*.log)") from None
        self._deployed_prints = prints
        return {n: shipped[n].digest for n in plan}

    def run(self, poll_seconds: float | None = None) -> None:
        """Deploy, then serve until SIGINT / SIGTERM; with ``poll_seconds``, redeploy a model whose files changed
        (and stayed unchanged for one more poll), which rolls it out replica by replica."""
        import signal
        import threading

        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            self.deploy()
            log.info("serving %s on Ray: HTTP %s:%d, gRPC %s:%d", self.repository, self.host, self.http_port,
                     self.host, self.grpc_port)
            last = self._deployed_prints
            while not stop.wait(poll_seconds or 3600.0):
                if poll_seconds is None:
                    continue
                now = self.fingerprints()
                changing, last = now != last, now
                if now == self._deployed_prints or changing:
                    continue  # nothing new, or still being copied: look again next poll
                try:
                    self.deploy()
                    log.info("rolled out a repository change")
                except UserError as e:
                    log.error("the changed repository was not deployed (the old one keeps serving): %s", e)
                    self._deployed_prints = now  # not the same broken files again every poll
        finally:
            self.shutdown()

    def fingerprints(self, repo: Repository | None = None) -> dict[str, str]:
        """Per model folder: what changes when a file is added, removed, resized or touched."""
        repo = repo or self._repo()
        return {name: repo.fingerprint(name) for name in repo.names()}

    def shutdown(self) -> None:
        """Delete the application and the registry; stop Ray if this object started it."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        try:
            serve.delete(APP)
            serve.shutdown()
            ray.kill(ray.get_actor(REGISTRY, namespace=NAMESPACE))
        except Exception as e:  # noqa: BLE001 - shutting down what is left
            log.warning("shutting down the Ray application: %s", e)
        if self._own_ray:
            ray.shutdown()
            self._own_ray = False


def _check_room(plan: dict[str, tuple[list[str], dict[str, Any]]], cpus: float) -> None:
    """Ray Serve would wait forever for replicas the cluster has no CPUs for: refuse that in one line first."""
    need = 0.0
    for _, options in plan.values():
        count = options.get("num_replicas") or options["autoscaling_config"]["initial_replicas"]
        need += count * options["ray_actor_options"]["num_cpus"]
    if need > cpus + 1e-9:
        raise UserError(f"the models' first replicas reserve {need:g} CPUs and the Ray cluster has {cpus:g}: lower "
                        "--replica-cpus (or slipway.ray.cpus), the replicas, or add nodes")
