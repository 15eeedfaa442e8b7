"""onnxruntime alone, in process, for bench/serve.py: the physical limit the servers are held to.

A layout ``NxT`` is N model instances of T intra-op threads each (inter-op 1). It is measured two
ways when N > 1: ``shared`` (one InferenceSession, run from N threads at once, which is what
slipway's N instances do) and ``separate`` (N sessions, one per thread, which is what Triton's N
instances through PyTriton do). Each batch size runs closed-loop in every thread for a few
windows; a window's rows/s is every row its runs finished over its wall time (the last run may end
after the window's deadline, and is counted with its time), and a batch's figure is the median
window. Throughput, not a per-call median, because the servers are measured on throughput.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

WINDOWS = 3  # per batch size (median); --quick uses 1
MIN_RUNS = 2  # a window lasts at least this many runs of one thread


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def window(sessions: list[ort.InferenceSession], feeds: dict[str, np.ndarray], seconds: float) -> float:
    """Runs finished per second over one window, every session driven by its own thread at once."""
    counts = [0] * len(sessions)
    start = threading.Barrier(len(sessions) + 1)
    box: dict[str, float] = {}

    def drive(i: int) -> None:
        start.wait()
        deadline = box["t0"] + seconds
        sess = sessions[i]
        while True:
            sess.run(None, feeds)
            counts[i] += 1
            if time.perf_counter() >= deadline:
                return

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(len(sessions))]
    for t in threads:
        t.start()
    box["t0"] = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - box["t0"])


def batch_rows(sessions: list[ort.InferenceSession], feeds: dict[str, np.ndarray], batch: int,
               seconds: float, windows: int) -> float:
    """Median rows/s over ``windows`` windows (``seconds`` in all, each >= MIN_RUNS runs) after 2 warm-up runs."""
    t0 = time.perf_counter()
    window(sessions, feeds, 0.0)  # warm-up: one run per thread
    window(sessions, feeds, 0.0)
    one = (time.perf_counter() - t0) / 2
    span = max(seconds / windows, MIN_RUNS * one)
    return batch * statistics.median(window(sessions, feeds, span) for _ in range(windows))


def variants(instances: int) -> list[str]:
    return ["shared", "separate"] if instances > 1 else ["shared"]


def measure_layout(path: Path, pool: Path, instances: int, threads: int, batches: tuple[int, ...],
                   seconds: float, windows: int, variant: str) -> dict[str, Any]:
    """rows/s at each batch size for one layout; ``variant`` shared (one session) or separate."""
    first = session(path, threads)
    sessions = [first] * instances if variant == "shared" else [first] + [session(path, threads)
                                                                         for _ in range(instances - 1)]
    data = np.load(pool)
    rows = {}
    for b in batches:
        feeds = {k[3:]: np.resize(data[k], (b, *data[k].shape[1:])) for k in data.files if k.startswith("in:")}
        rows[b] = batch_rows(sessions, feeds, b, seconds, windows)
    best = max(rows, key=rows.get)
    return {"instances": instances, "threads": threads, "variant": variant, "rows_per_s": rows,
            "best_batch": best, "best_rows_per_s": rows[best]}


def label(layout: str, variant: str) -> str:
    return layout if variant == "shared" else f"{layout} separate"


def measure(path: Path, pool: Path, layouts: list[tuple[int, int]], batches: tuple[int, ...], seconds: float,
            windows: int = WINDOWS) -> dict[str, dict[str, Any]]:
    """Every layout (and variant) of one model: {label: result}."""
    out = {}
    for n, t in layouts:
        for v in variants(n):
            out[label(f"{n}x{t}", v)] = measure_layout(path, pool, n, t, batches, seconds, windows, v)
    return out


def best_of(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The higher rows/s of two measurements at each layout and batch (taken before and after the load runs)."""
    out = {}
    for key, x in a.items():
        rows = {k: max(x["rows_per_s"][k], b[key]["rows_per_s"][k]) for k in x["rows_per_s"]}
        best = max(rows, key=rows.get)
        out[key] = {**x, "rows_per_s": rows, "best_batch": best, "best_rows_per_s": rows[best]}
    return out


def overall(layouts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The best rows/s over every layout and batch size: {rows_per_s, layout, batch}."""
    key = max(layouts, key=lambda k: layouts[k]["best_rows_per_s"])
    return {"rows_per_s": layouts[key]["best_rows_per_s"], "layout": key, "batch": layouts[key]["best_batch"]}
