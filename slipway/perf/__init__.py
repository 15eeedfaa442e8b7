"""Honest latency and throughput: ``benchmark(model, backends=..., batches=..., ...)``.

* :mod:`slipway.perf.runner`  the sweep, weight-sharing instances in threads, peak memory
* :mod:`slipway.perf.stats`   stopping rule (time/count budget + stable median), percentiles, RSS
* :mod:`slipway.perf.feeds`   random inputs by dtype, or user data checked and tiled to each batch
* :mod:`slipway.perf.report`  one offline HTML file: latency-vs-throughput chart and table
"""

from __future__ import annotations

from typing import Any

from slipway.perf.runner import BenchResult, Config, benchmark

__all__ = ["BenchResult", "Config", "benchmark", "write_report"]


def __getattr__(name: str) -> Any:
    # The report (and its charts) is imported on first use: a benchmark process never needs it.
    if name == "write_report":
        from slipway.perf.report import write_report

        return write_report
    raise AttributeError(f"module 'slipway.perf' has no attribute {name!r}")
