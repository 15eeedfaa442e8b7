"""``slipway serve REPO --ray``: a model repository on Ray Serve, across machines.

* ``deploy.py``: :class:`RayServing` (the Python API): one deployment per model, scaled fixed or on queue
  depth, and the ingress; redeploying rolls changes out replica by replica;
* ``files.py``: model files through Ray's object store, hash-checked where a replica unpacks them;
* ``replica.py``: a model replica, slipway's own :class:`~slipway.serve.dataplane.DataPlane` (batcher,
  instances) inside a Ray actor;
* ``registry.py``: the named actor the replicas report to (metadata, config, statistics);
* ``plane.py``: the ingress's :class:`~slipway.serve.types.Plane`: inference through the deployments (a
  dead replica retried once, else 503 fast), the rest from the reports, statistics summed over replicas;
* ``ingress.py`` + ``protos.py``: KServe v2 over HTTP (slipway's ASGI adapter) and gRPC (slipway's servicer
  behind Ray's gRPC proxy), so tritonclient works unchanged.

Imported only by the CLI and by users: nothing under :mod:`slipway.serve` imports it, and Ray is imported
when a repository is deployed.
"""

from __future__ import annotations

from slipway.rayserve.deploy import RayServing, Scale
from slipway.rayserve.ingress import IngressSettings
from slipway.rayserve.replica import Settings

__all__ = ["RayServing", "Scale", "Settings", "IngressSettings"]
