"""Per-model-version inference statistics in Triton's terms.

The same counters feed ``GET v2/models/M/stats`` / ``ModelStatistics`` (as Triton's
``ModelStatistics`` protobuf) and the Prometheus metrics (``nv_inference_*``). Durations are
nanoseconds. Every update happens on the server's event loop, so no lock is needed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Duration", "ModelStats", "FAILURE_REASONS"]

# Triton's nv_inference_request_failure{reason=...} values
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    name: str
    version: str
    last_inference_ms: int = 0  # wall clock of the last request's end, ms since the epoch
    inference_count: int = 0  # rows (batch elements) served successfully
    execution_count: int = 0  # engine runs (one per batch)
    success: Duration = field(default_factory=Duration)  # whole request time, successful ones
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    failures: Counter = field(default_factory=Counter)  # reason -> count
    batches: dict[int, BatchStats] = field(default_factory=dict)  # rows in one execution -> times

    def request_done(
        self, ok: bool, request_ns: int, rows: int = 0, queue_ns: int = 0, input_ns: int = 0, infer_ns: int = 0,
        output_ns: int = 0, reason: str = "OTHER",
    ) -> None:
        """One request finished: ``ok`` with its share of the phases, or failed for ``reason``."""
        self.last_inference_ms = int(time.time() * 1000)
        if ok:
            self.success.add(request_ns)
            self.inference_count += rows
            self.queue.add(queue_ns)
            self.compute_input.add(input_ns)
            self.compute_infer.add(infer_ns)
            self.compute_output.add(output_ns)
        else:
            self.fail.add(request_ns)
            self.failures[reason if reason in FAILURE_REASONS else "OTHER"] += 1

    def execution_done(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One engine run of ``rows`` batch elements."""
        self.execution_count += 1
        b = self.batches.get(rows)
        if b is None:
            b = self.batches[rows] = BatchStats()
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)

    def merge(self, other: ModelStats) -> None:
        """Add ``other``'s counts and durations (the same model version elsewhere: another replica)."""
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            getattr(self, name).add(getattr(other, name).ns, getattr(other, name).count)
        self.failures.update(other.failures)
        for rows, b in other.batches.items():
            mine = self.batches.setdefault(rows, BatchStats())
            for name in ("compute_input", "compute_infer", "compute_output"):
                getattr(mine, name).add(getattr(b, name).ns, getattr(b, name).count)

    def to_proto(self):
        """This version's statistics as Triton's ``inference.ModelStatistics`` message."""
        from tritonclient.grpc import service_pb2 as pb

        def d(x: Duration):
            return pb.StatisticDuration(count=x.count, ns=x.ns)

        return pb.ModelStatistics(
            name=self.name,
            version=self.version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            inference_stats=pb.InferStatistics(
                success=d(self.success), fail=d(self.fail), queue=d(self.queue),
                compute_input=d(self.compute_input), compute_infer=d(self.compute_infer),
                compute_output=d(self.compute_output),
            ),
            batch_stats=[
                pb.InferBatchStatistics(
                    batch_size=rows, compute_input=d(b.compute_input), compute_infer=d(b.compute_infer),
                    compute_output=d(b.compute_output),
                )
                for rows, b in sorted(self.batches.items())
            ],
        )
