"""usable_cpus(): the affinity mask capped by the cgroup CPU quota (v2 cpu.max, v1 cfs quota/period)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slipway import cpus


def _files(monkeypatch, files: dict[str, str], affinity: int | None = 8) -> None:
    """Make the cgroup files read ``files`` (path -> text; others missing) and the affinity ``affinity`` CPUs."""

    def read(path: Path) -> str | None:
        return files.get(str(path))

    monkeypatch.setattr(cpus, "_read", read)
    if affinity is None:
        monkeypatch.delattr(cpus.os, "sched_getaffinity", raising=False)
        monkeypatch.setattr(cpus.os, "cpu_count", lambda: 16)
    else:
        monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)


def test_affinity_alone(monkeypatch):
    _files(monkeypatch, {}, affinity=3)
    assert cpus.usable_cpus() == 3 and cpus.quota_cpus() is None


def test_no_affinity_call_falls_back_to_the_host_count(monkeypatch):
    _files(monkeypatch, {}, affinity=None)
    assert cpus.usable_cpus() == 16


@pytest.mark.parametrize(("text", "want"), [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1),
                                            ("max 100000", 8), ("1600000 100000", 8)])
def test_cgroup_v2_quota(monkeypatch, text, want):
    _files(monkeypatch, {"/sys/fs/cgroup/cpu.max": text}, affinity=8)
    assert cpus.usable_cpus() == want


@pytest.mark.parametrize(("quota", "period", "want"), [("300000", "100000", 3), ("-1", "100000", 8),
                                                       ("250000", "100000", 3)])
def test_cgroup_v1_quota(monkeypatch, quota, period, want):
    _files(monkeypatch, {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": quota,
                         "/sys/fs/cgroup/cpu/cpu.cfs_period_us": period}, affinity=8)
    assert cpus.usable_cpus() == want


def test_v1_combined_controller_folder(monkeypatch):
    _files(monkeypatch, {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "200000",
                         "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000"}, affinity=8)
    assert cpus.usable_cpus() == 2


def test_the_own_cgroup_is_read_before_the_root(monkeypatch):
    _files(monkeypatch, {"/proc/self/cgroup": "0::/kubepods/pod1\n",
                         "/sys/fs/cgroup/kubepods/pod1/cpu.max": "100000 100000",
                         "/sys/fs/cgroup/cpu.max": "max 100000"}, affinity=8)
    assert cpus.usable_cpus() == 1
    _files(monkeypatch, {"/proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n",
                         "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000",
                         "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}, affinity=8)
    assert cpus.usable_cpus() == 4


def test_the_affinity_caps_a_larger_quota_and_garbage_is_ignored(monkeypatch):
    _files(monkeypatch, {"/sys/fs/cgroup/cpu.max": "800000 100000"}, affinity=2)
    assert cpus.usable_cpus() == 2
    _files(monkeypatch, {"/sys/fs/cgroup/cpu.max": "lots 100000"}, affinity=4)
    assert cpus.usable_cpus() == 4


def test_real_host_is_at_least_one_and_at_most_the_host_count():
    import os

    assert 1 <= cpus.usable_cpus() <= (os.cpu_count() or 1)


def test_tune_and_the_machine_probes_use_it(monkeypatch):
    from slipway import tune
    from slipway.analyze import machine

    monkeypatch.setattr(tune, "usable_cpus", lambda: 3)
    assert tune._Search(Path("m.onnx"), {}, "latency", None, 0.1, None).cores == 3
    assert machine.cpu_count is cpus.usable_cpus
