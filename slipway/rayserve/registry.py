"""What the replicas of a Ray-served repository report, in one named actor the ingress reads.

Ray Serve routes each call to one replica; nothing broadcasts to all of them. So every model replica reports
on its own, every :data:`REPORT_SECONDS`, what its data plane would answer: per model it serves, the versions
with their metadata and config, the index rows, and its statistics (a ``ModelStatisticsResponse``). The
ingress reads the whole table (:meth:`Registry.table`) and answers metadata from it and statistics as the sum
over replicas. A replica that stops (scaled down, replaced, its node gone) keeps its last report as
``retired``: cumulative counters never go backwards when a replica leaves; its rows no longer count as
serving.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Registry", "REGISTRY", "NAMESPACE", "REPORT_SECONDS"]

REGISTRY = "slipway-registry"
NAMESPACE = "slipway"
REPORT_SECONDS = 0.5
STALE_SECONDS = 10.0  # a replica silent this long no longer counts as serving


class Registry:
    """The table of replica reports (a Ray actor: ``ray.remote(num_cpus=0)(Registry)``)."""

    def __init__(self) -> None:
        self._reports: dict[str, dict[str, Any]] = {}

    def report(self, replica: str, deployment: str, report: dict[str, Any]) -> None:
        self._reports[replica] = {**report, "deployment": deployment, "at": time.monotonic(), "retired": False}

    def retire(self, replica: str) -> None:
        if replica in self._reports:
            self._reports[replica]["retired"] = True

    def table(self) -> dict[str, dict[str, Any]]:
        """Every report; ``live``: reported lately and not retired."""
        now = time.monotonic()
        return {r: {**v, "live": not v["retired"] and now - v["at"] < STALE_SECONDS} for r, v in self._reports.items()}
