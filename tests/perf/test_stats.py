from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from slipway.errors import UserError
from slipway.perf.stats import Budget, RssSampler, current_rss_bytes, peak_rss_mb, summarize


def test_summary_matches_numpy_and_is_ordered():
    a = np.random.default_rng(0).lognormal(0.0, 0.5, 1000)
    s = summarize(list(a))
    assert s.p50_ms == pytest.approx(np.median(a))
    assert s.p99_ms == pytest.approx(np.percentile(a, 99))
    assert s.mean_ms == pytest.approx(a.mean())
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    assert s.runs == 1000


def test_stable_needs_the_recent_median_to_match():
    b = Budget(min_time_s=0.0, min_runs=10, tolerance=0.05)
    assert b.stable([[1.0] * 50])
    assert not b.stable([[1.0] * 50 + [2.0] * 50])  # second half twice as slow
    assert not b.stable([[1.0] * 5])  # fewer than min_runs
    # per instance halves: both instances settled at their own (different) speeds
    assert b.stable([[1.0] * 40, [1.02] * 40])


def test_done_respects_min_time_min_runs_and_the_limits():
    b = Budget(min_time_s=1.0, max_time_s=2.0, min_runs=10, max_runs=100)
    steady = [[1.0] * 20]
    assert not b.done(0.5, steady)  # stable but the min time is not over
    assert b.done(1.0, steady)
    assert not b.done(1.5, [[1.0] * 10 + [3.0] * 10])  # not stable yet
    assert b.done(2.0, [[1.0] * 10 + [3.0] * 10])  # max time: stop regardless
    assert b.done(0.1, [[1.0] * 50, [1.0] * 50])  # max runs over all instances
    assert Budget(min_time_s=2.0).time_limit_s == 6.0
    assert Budget(min_time_s=0.1).time_limit_s == pytest.approx(1.1)


@pytest.mark.parametrize("kwargs, match", [
    ({"warmup": -1}, "warmup"), ({"min_time_s": -1.0}, "min time"), ({"min_time_s": 2.0, "max_time_s": 1.0}, "max time"),
    ({"min_runs": 0}, "min runs"), ({"min_runs": 10, "max_runs": 5}, "max runs"), ({"tolerance": 0.0}, "tolerance"),
])
def test_bad_budgets_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        Budget(**kwargs)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_rss_sampler_sees_a_transient_allocation():
    before = current_rss_bytes() / 2**20
    with RssSampler() as rss:
        block = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MiB, touched
        time.sleep(0.05)
        del block
    after = current_rss_bytes() / 2**20
    assert rss.peak_mb >= before + 190
    assert after < rss.peak_mb - 150  # freed again: the sampler kept the peak, not the end
    assert peak_rss_mb() >= rss.peak_mb - 1
