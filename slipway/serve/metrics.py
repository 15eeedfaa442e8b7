"""Prometheus metrics with Triton's names and labels, read from the statistics at scrape time.

Sample names and labels are Triton's (``nv_inference_request_success{model,version}``,
``nv_inference_request_failure{model,version,reason}``, ``nv_inference_count``,
``nv_inference_exec_count``, ``nv_inference_pending_request_count``,
``nv_inference_{request,queue,compute_input,compute_infer,compute_output}_duration_us``,
``nv_cpu_memory_used_bytes``, ``nv_cpu_memory_total_bytes``), so dashboards and autoscaling rules
written for Triton work unchanged. Triton's counters have no ``_total`` suffix, which
prometheus-client adds to every "counter" family, so they are exposed as untyped samples with
exactly Triton's names. slipway adds ``slipway_batch_size`` (a histogram of rows per engine run)
and the standard ``process_*`` metrics (resident memory, CPU time, open files).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

__all__ = ["registry", "render", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_COUNTERS = [  # (name, help, value of a ModelStats)
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_count", "Number of inferences performed (rows; a batch of n counts n)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (batches)", lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: s.compute_output.ns // 1000),
]
_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Collector:
    def __init__(self, plane) -> None:
        self.plane = plane

    def collect(self):
        versions = self.plane.served_statistics()
        for name, doc, value in _COUNTERS:
            m = Metric(name, doc, "unknown")
            for model, version, stats, _ in versions:
                m.add_sample(name, {"model": model, "version": version}, float(value(stats)))
            yield m
        fail = Metric("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                      "unknown")
        for model, version, stats, _ in versions:
            for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
                fail.add_sample("nv_inference_request_failure",
                                {"model": model, "version": version, "reason": reason},
                                float(stats.failures.get(reason, 0)))
        yield fail
        pending = GaugeMetricFamily("nv_inference_pending_request_count",
                                    "Instantaneous number of pending requests awaiting execution per-model",
                                    labels=["model", "version"])
        for model, version, _, waiting in versions:
            pending.add_metric([model, version], waiting)
        yield pending
        yield self._batch_sizes(versions)
        used, total = _memory()
        yield GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU memory used by the system, bytes", value=used)
        yield GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), bytes", value=total)

    def _batch_sizes(self, versions):
        h = HistogramMetricFamily("slipway_batch_size", "Rows per engine execution (dynamic batching)",
                                  labels=["model", "version"])
        for model, version, stats, _ in versions:
            counts = {rows: b.compute_infer.count for rows, b in stats.batches.items()}
            buckets, acc = [], 0
            for edge in _BUCKETS:
                acc = sum(c for rows, c in counts.items() if rows <= edge)
                buckets.append((str(edge), acc))
            total = sum(counts.values())
            buckets.append(("+Inf", total))
            h.add_metric([model, version], buckets, sum_value=sum(r * c for r, c in counts.items()))
        return h


def _memory() -> tuple[int, int]:
    """(used, total) system memory in bytes from /proc/meminfo (0, 0 where there is none)."""
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        return info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0)), info["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        return 0, 0


def registry(plane) -> CollectorRegistry:
    """A registry with the Triton-named metrics of ``plane`` and this process's metrics."""
    reg = CollectorRegistry()
    reg.register(_Collector(plane))
    ProcessCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(reg), CONTENT_TYPE
