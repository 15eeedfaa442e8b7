"""``slipway serve``: a KServe v2 (HTTP + gRPC) server over Triton-layout model repositories.

Layers, each transport-free below the adapters:

* ``tensors.py`` (datatypes, codecs, THE size and type messages) and ``types.py`` (what adapters decode into);
* ``repository.py`` reads ``REPO/MODEL/config.pbtxt`` + ``REPO/MODEL/VERSION/model.onnx`` with
  Triton's own model-config schema and completes a missing config from the model file, read by its
  engine's reader (``Engine.io`` in :mod:`slipway.backends`);
* ``request.py`` is THE check of an inference request (parameters, inputs, outputs), for every transport;
* ``model.py`` is one loaded version: engine sessions sharing one copy of the weights (the engine
  comes from the registry in :mod:`slipway.backends`), its request signature;
* ``batcher.py`` merges concurrent requests into batches, runs them off the event loop;
* ``dataplane.py`` is the protocol's logic (health, metadata, config, statistics, repository
  control, inference), typed for the adapters as ``types.Plane``; ``http.py`` (aiohttp) and
  ``grpc.py`` (grpc.aio) are thin adapters that only decode and encode;
* ``metrics.py`` exposes Triton-named Prometheus metrics; ``server.py`` ties it all to ports.

Imports run one way (tests/serve/test_imports.py): the lower modules (tensors, types, request, stats,
batcher) import no higher one; model and repository import them, dataplane imports those, server
imports dataplane, and this package only server; no module imports this package. The adapters (http,
grpc) import only tensors and types (they reach the data plane as ``types.Plane``); the server
imports them, metrics, aiohttp and prometheus_client when it starts.
"""

from __future__ import annotations

from slipway.serve.server import Server, free_port, wait_ready

__all__ = ["Server", "free_port", "wait_ready"]
