"""THE CPU count every stage splits work by: :func:`usable_cpus`.

``os.cpu_count()`` is the host's count. A process may run on fewer CPUs: its affinity mask
(``taskset``, ``docker --cpuset-cpus``) and its cgroup's CPU quota (``docker --cpus``,
Kubernetes ``limits.cpu``: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)
both limit it. Splitting the host's count among engine instances or threads in a CPU-limited
container over-subscribes the cores it really has; the tuner, the benchmark report, the machine
probes and the server all use this count instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["usable_cpus", "affinity_cpus", "quota_cpus"]

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus() -> int:
    """CPUs this process can use: its affinity, capped by its cgroup CPU quota (rounded up), at least 1."""
    n = affinity_cpus()
    quota = quota_cpus()
    return max(1, min(n, quota) if quota is not None else n)


def affinity_cpus() -> int:
    """Logical CPUs in this process's affinity mask (the host's count where there is no mask)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity off Linux
        return os.cpu_count() or 1


def quota_cpus() -> int | None:
    """CPUs the cgroup's CPU quota allows (quota / period, rounded up), None without a quota.

    The process's own cgroup (from ``/proc/self/cgroup``) is read first, then the root of the
    mount (what a container sees); cgroup v2 (``cpu.max``) before v1 (``cpu.cfs_quota_us``).
    """
    for folder in _cgroup_dirs():
        v2 = _read(folder / "cpu.max")
        if v2 is not None:
            parts = v2.split()
            if parts and parts[0] != "max":
                return _ratio(parts[0], parts[1] if len(parts) > 1 else "100000")
            return None
        quota = _read(folder / "cpu.cfs_quota_us")
        if quota is not None:
            return _ratio(quota, _read(folder / "cpu.cfs_period_us") or "100000")
    return None


def _ratio(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:  # -1: no quota (v1)
        return None
    return max(1, math.ceil(q / p))


def _cgroup_dirs() -> list[Path]:
    """Where the CPU controller's files may be: the own cgroup's folder, then the mount roots."""
    own: list[Path] = []
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        path = path.strip().lstrip("/")
        if not path:
            continue
        if hierarchy == "0" and not controllers:  # cgroup v2
            own.append(CGROUP / path)
        elif "cpu" in controllers.split(","):  # cgroup v1 cpu controller
            own += [CGROUP / "cpu" / path, CGROUP / "cpu,cpuacct" / path]
    return own + [CGROUP, CGROUP / "cpu", CGROUP / "cpu,cpuacct"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
