"""A/B timing: is model B slower than model A on this engine? The one engine behind the
never-slower check of ``optimize`` and the speed guard of ``quantize``.

Two sessions are timed in alternating blocks (:func:`latency_ratio`): the order flips every
round and each side runs twice untimed before its block, so drift in machine load and the other
session's spinning worker threads hit both alike. Each block gives one median; the result
(:class:`Speed`) holds the median of the per-block medians of each side and in how many paired
blocks B was the slower (a sign test). :meth:`Speed.slower` is the decision both stages take:
B's median past a tolerance AND, where asked, B slower in most paired blocks, so that machine
noise - which makes either side lose about half the blocks - does not count as slower.

``slipway bench`` (:mod:`slipway.perf.runner`) measures one configuration at a time with the
same statistics (:mod:`slipway.perf.stats`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from slipway import backends
from slipway.perf.stats import median
from slipway.verify.inputs import Feeds, plan_sizes, random_feeds
from slipway.verify.probe import hinted_specs

__all__ = ["TARGETS", "Speed", "latency", "latency_pair", "latency_compare", "latency_ratio", "SIGN_TEST_SHARE"]

TARGETS = {"ort": "ort", "openvino": "openvino"}  # --target of optimize / quantize -> backend table name
SIGN_TEST_SHARE = 0.7  # B lost at least this share of the paired blocks: not noise


@dataclass
class Speed:
    a_ms: float  # median of per-block medians
    b_ms: float
    b_slower_share: float  # share of paired blocks where b's median was above a's
    blocks: int

    def slower(self, tolerance: float, min_share: float = 0.0) -> bool:
        """B is slower than A: its median is over A's by more than ``tolerance`` (relative) and it
        was the slower in at least ``min_share`` of the paired blocks."""
        return self.b_ms > self.a_ms * (1 + tolerance) and self.b_slower_share >= min_share


def random_batch1(model: ir.Model, dim_sizes: Mapping[str, Sequence[int]] | None = None) -> Feeds:
    """Random inputs at batch 1, other dynamic dims at ``dim_sizes`` (seed 0)."""
    specs = hinted_specs(model)
    sizes = plan_sizes(specs, [1], dim_sizes)[0]
    return random_feeds(specs, sizes, np.random.default_rng(0))


def latency(model: ir.Model, backend: str = "ort", dim_sizes: Mapping[str, Sequence[int]] | None = None,
            budget_s: float = 1.0, feeds: Feeds | None = None) -> float:
    """Median latency (ms) of ``model`` on ``feeds`` (default: batch 1 at ``dim_sizes``) on ``backend``."""
    feeds = random_batch1(model, dim_sizes) if feeds is None else feeds
    s = backends.load(model, backend)
    try:
        return latency_ratio(lambda: s.run(feeds), lambda: s.run(feeds), budget_s).a_ms
    finally:
        s.close()


def latency_pair(a: ir.Model, b: ir.Model, backend: str = "ort", budget_s: float = 2.0,
                 dim_sizes: Mapping[str, Sequence[int]] | None = None,
                 feeds: Feeds | None = None) -> tuple[float, float]:
    """Median latency (ms) of ``a`` and ``b`` on ``feeds`` (default: batch 1) on ``backend``, timed in
    alternating blocks so that drift in machine load hits both alike."""
    speed = latency_compare(a, b, backend, budget_s, dim_sizes, feeds)
    return speed.a_ms, speed.b_ms


def latency_compare(a: ir.Model, b: ir.Model, backend: str = "ort", budget_s: float = 2.0,
                    dim_sizes: Mapping[str, Sequence[int]] | None = None, feeds: Feeds | None = None) -> Speed:
    """:func:`latency_pair` with the paired-block statistics."""
    feeds = random_batch1(a, dim_sizes) if feeds is None else feeds
    sa = backends.load(a, backend)
    sb = backends.load(b, backend)
    try:
        return latency_ratio(lambda: sa.run(feeds), lambda: sb.run(feeds), budget_s)
    finally:
        sa.close()
        sb.close()


def latency_ratio(fa: Callable[[], object], fb: Callable[[], object], budget_s: float) -> Speed:
    """Alternate blocks of ``fa`` and ``fb`` calls (the order flips every round); the medians of
    per-block medians in ms, and in how many paired blocks ``fb`` was the slower."""
    for f in (fa, fb, fa, fb):  # warm-up
        f()
    t = time.perf_counter()
    fa()
    once = max(time.perf_counter() - t, 1e-6)
    per_round = max(3, min(50, int(0.05 / once)))
    rounds = max(7, int(budget_s / (2 * (per_round + 2) * once)))
    ma: list[float] = []
    mb: list[float] = []
    start = time.perf_counter()
    for r in range(rounds):
        if r >= 7 and r % 2 == 0 and time.perf_counter() - start > budget_s:
            break  # the estimate from one call was too low (timer and median overheads)
        order = (fa, fb) if r % 2 == 0 else (fb, fa)
        for f in order:
            f()  # untimed: the other session's spinning worker threads are not charged to this one
            f()
            samples = []
            for _ in range(per_round):
                t = time.perf_counter()
                f()
                samples.append(time.perf_counter() - t)
            (ma if f is fa else mb).append(median(samples))
    share = float(np.mean([b > a for a, b in zip(ma, mb, strict=True)]))
    return Speed(median(ma) * 1e3, median(mb) * 1e3, share, len(ma))
