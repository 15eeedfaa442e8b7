"""slipway serve at the engine's limit: rows/s at concurrency 16 against onnxruntime alone at its best batch,
the batcher before and after staging, and the ceiling the serving path's own cost leaves on this machine.

The MobileNetV2-ish and tiny models of bench/serve.py, served by `slipway serve` (dynamic batching with no
queue delay; layouts 1x2 and 2x1 on 2 cores; max batch 32 and 2) with the load from `slipway perf`
(slipway.loadgen, in this process) over HTTP, gRPC, and both with system shared memory. Server modes
(bench/serve_peers/patched.py): ``after`` = slipway as it is; ``before`` = the batcher without staging;
``null`` = everything but the engine (the data plane replays its first answer): the serving path's and the
client's CPU per request. The ceiling: the cores over (the engine's CPU per row at its best + the serving path's
+ the client's per request), what a server could reach if serving cost nothing beyond what it measurably costs.
The limit is onnxruntime alone in process (bench/serve_peers/raw.py: every layout and batch 1..32, before and
after the load runs, the better of the two). Cross-check: the old load generator (bench/serve_loadgen.py, a
separate tritonclient process) at one point against `slipway perf` at the same point.

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.serve_limit [--rounds 1] [--window 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import fmt, machine, publish, versions
from bench.serve import prepare
from bench.serve_peers import raw
from bench.serve_peers.launch import Budget, Launch, ModelSpec, triton_config
from bench.serve_peers.tables import BATCHES
from slipway.cpus import usable_cpus
from slipway.loadgen import Settings, profile
from slipway.serve import free_port

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 16
CPUS = usable_cpus()
LAYOUTS = ((1, 2), (2, 1))
POINTS = (("http", "none"), ("grpc", "none"), ("http", "system"), ("grpc", "system"))
# (instances, threads, max batch, server mode): the batcher before / after staging at the default max batch and at
# a small one (this CPU runs MobileNetV2 fastest per row at batch 1-2), one layout more, and the null server
CONFIGS = ((2, 1, 32, "before"), (2, 1, 32, "after"), (2, 1, 2, "before"), (2, 1, 2, "after"), (1, 2, 32, "after"),
           (2, 1, 2, "null"))


def server(models: list[ModelSpec], budget: Budget, mode: str, workdir: Path) -> Launch:
    """`slipway serve` (bench/serve_peers/patched.py: ``after`` as it is, ``before`` without batch staging,
    ``null`` without the engine) over the models with ``budget``."""
    repo = workdir / f"repo-{budget.layout}-{budget.max_batch_size}-{mode}"
    for m in models:
        (repo / m.name / "1").mkdir(parents=True, exist_ok=True)
        (repo / m.name / "config.pbtxt").write_text(triton_config(m, budget))
        shutil.copyfile(m.path, repo / m.name / "1" / "model.onnx")
    http, grpc = free_port(), free_port()
    cmd = [str(ROOT / ".venv" / "bin" / "python"), "-m", "bench.serve_peers.patched", mode, "serve", str(repo),
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", "-1"]
    launch = Launch("slipway", cmd, {"PYTHONPATH": str(ROOT)}, http, grpc, workdir=workdir,
                    layout=f"{budget.layout} mb{budget.max_batch_size} {mode}")
    why = launch.start(models)
    if why:
        raise SystemExit(f"slipway serve did not start: {why}")
    return launch


def old_generator(launch: Launch, model: str, pool: Path, seconds: float, workdir: Path) -> dict[str, Any]:
    """The old load generator (bench/serve_loadgen.py: asyncio tritonclient clients in their own process,
    every reply checked against onnxruntime's) over gRPC at concurrency 16: its JSON summary."""
    cmd = [sys.executable, "-m", "bench.serve_loadgen", "--url", f"127.0.0.1:{launch.grpc_port}", "--protocol",
           "grpc", "--model", model, "--data", str(pool), "--concurrency", str(CONCURRENCY), "--client", "aio",
           "--duration", str(seconds), "--warmup", "1", "--latencies", str(workdir / "old-latencies.npy")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        return {"failed_run": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def perf(launch: Launch, model: str, protocol: str, shm: str, settings: Settings) -> dict[str, Any]:
    port = launch.http_port if protocol == "http" else launch.grpc_port
    result = profile(f"127.0.0.1:{port}", model, protocol=protocol, concurrency=[CONCURRENCY], settings=settings,
                     shared_memory=shm, server_pid=launch.proc.pid)
    row = result.rows[0]
    rows = row["inferences_per_s"]
    return {"rows_per_s": rows, "p50_ms": row["p50_us"] / 1e3, "p99_ms": row["p99_us"] / 1e3,
            "server_cpu": row.get("server_cpu"),  # cores the server process used
            "server_cpu_ms_per_row": 1e3 * row["server_cpu"] / rows if row.get("server_cpu") and rows else None,
            "errors": row["errors"], "stable": row["stable"], "client_cpu": row["client_cpu"],
            "server_queue_ms": row.get("server_queue_us", 0) / 1e3,
            "server_infer_ms": row.get("server_compute_infer_us", 0) / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--window", type=float, default=2.0, help="slipway perf's window, seconds")
    ap.add_argument("--raw-seconds", type=float, default=1.0)
    ap.add_argument("--models", default="mobilenetv2,tiny")
    args = ap.parse_args()
    t0 = time.perf_counter()
    host, found = machine(), versions()
    settings = Settings(window_s=args.window, stability=0.1, max_trials=8, warmup_s=1.0)
    work = Path(tempfile.mkdtemp(prefix="slipway-serve-limit-"))
    specs = [prepare(name, work, 2) for name in args.models.split(",")]
    models = [s for s, _ in specs]

    def engine() -> dict[str, dict[str, Any]]:
        return {s.name: raw.measure(s.path, pool, list(LAYOUTS), BATCHES, args.raw_seconds) for s, pool in specs}

    print("raw onnxruntime...", flush=True)
    before = engine()
    launches = {(n, t, mbs, mode): server(models, Budget(threads=t, instances=n, max_batch_size=mbs), mode, work)
                for n, t, mbs, mode in CONFIGS}
    cells: dict[tuple, list[dict[str, Any]]] = {}
    cross: dict[str, Any] = {}
    try:
        keys = list(launches)
        for r in range(args.rounds):
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                for spec in models:
                    for protocol, shm in POINTS:
                        if key[3] == "null" and shm != "none":
                            continue  # a replayed answer skips the data plane's shared-memory bookkeeping
                        got = perf(launches[key], spec.name, protocol, shm, settings)
                        cells.setdefault((spec.name, *key, protocol, shm), []).append(got)
                        print(f"round {r} {spec.name} {key} {protocol} shm={shm}: {got['rows_per_s']:.1f} rows/s",
                              flush=True)
        # cross-check at one point: the old generator and slipway perf, back to back on the same server
        spec, pool = specs[0]
        key = (1, 2, 32, "after")
        old = old_generator(launches[key], spec.name, pool, args.window * 3, work)
        new = perf(launches[key], spec.name, "grpc", "none", settings)
        cross = {"model": spec.name, "layout": "1x2 mb32", "protocol": "grpc", "old_rps": old.get("rps"),
                 "old_failed": old.get("failed"), "old_wrong": old.get("wrong"), "perf_rps": new["rows_per_s"]}
    finally:
        for launch in launches.values():
            launch.stop()
    after = engine()
    limits = {m: raw.overall(raw.best_of(before[m], after[m])) for m in before}
    rows, ceilings = [], []
    best_of = {k: max(runs, key=lambda x: x["rows_per_s"]) for k, runs in cells.items()}
    for (model, n, t, mbs, mode, protocol, shm), best in best_of.items():
        top = limits[model]["rows_per_s"]
        raw_cpu = 1e3 * CPUS / top  # CPU ms a row costs onnxruntime alone at its best (every core busy)
        served = best.get("server_cpu_ms_per_row")
        versus = "-" if mode == "null" else f"{best['rows_per_s'] / top:.2f}x"
        rows.append([model, f"{n}x{t}", str(mbs), mode, protocol, shm, fmt(best["rows_per_s"]), fmt(best["p50_ms"]),
                     fmt(best["p99_ms"]), str(sum(x["errors"] for x in cells[(model, n, t, mbs, mode, protocol, shm)])),
                     versus, fmt(best.get("server_cpu")), fmt(best.get("client_cpu")), fmt(served)])
        if mode != "null":
            continue
        # the serving path's and the client's CPU per request, without the engine -> the ceiling with it
        client = 1e3 * best["client_cpu"] / best["rows_per_s"] if best.get("client_cpu") else 0.0
        ceiling = CPUS * 1e3 / (raw_cpu + (served or 0.0) + client)
        measured = max((b["rows_per_s"] for (m, *_, md, p, sh), b in best_of.items()
                        if m == model and md != "null" and p == protocol and sh == shm), default=0.0)
        ceilings.append([model, protocol, shm, fmt(raw_cpu), fmt(served), fmt(client), fmt(ceiling),
                         f"{ceiling / top:.2f}x", fmt(measured), f"{measured / top:.2f}x", f"{measured / ceiling:.2f}x"])
    raw_rows = [[m, v["layout"], str(v["batch"]), fmt(v["rows_per_s"]), fmt(1e3 * CPUS / v["rows_per_s"])]
                for m, v in limits.items()]
    sections = [(f"slipway serve, concurrency {CONCURRENCY} (best of {args.rounds} round(s))",
                 ["model", "layout", "max batch", "server", "protocol", "shared memory", "rows/s", "p50 ms", "p99 ms",
                  "errors", "vs raw best", "server cores", "client cores", "server CPU ms / row"], rows),
                ("the ceiling the serving path leaves (null server: everything but the engine)",
                 ["model", "protocol", "shared memory", "engine CPU ms / row (raw best)", "serving CPU ms / req",
                  "client CPU ms / req", "ceiling rows/s", "ceiling vs raw best", "best measured rows/s",
                  "measured vs raw best", "measured vs ceiling"], ceilings),
                ("onnxruntime alone, best over layouts and batches",
                 ["model", "layout", "batch", "rows/s", "CPU ms / row"], raw_rows)]
    if cross:
        ratio = cross["perf_rps"] / cross["old_rps"] if cross.get("old_rps") else float("nan")
        sections.append(("cross-check: old generator vs slipway perf", ["model", "server", "protocol",
                         "old req/s", "slipway perf req/s", "ratio"],
                         [[cross["model"], cross["layout"], cross["protocol"], fmt(cross["old_rps"] or 0),
                           fmt(cross["perf_rps"]), f"{ratio:.3f}"]]))
    notes = ("\nLoad: `slipway perf` closed loop, windows of "
             f"{args.window:g} s until the last three agree within 10 % (at most 8), 1 s warm-up, random inputs; "
             "shared memory: one input and one output region per concurrent request (Triton's system shared "
             "memory extension). Servers: `after` = slipway serve as it is; `before` = its batcher without staging "
             "(a full batch handed to a busy instance, started by the instance's thread the moment its batch ends, "
             "instead of a round trip through the event loop); `null` = no engine (the data plane replays its "
             "first answer), the serving path alone. Server and client cores: CPU seconds per second of the server "
             "process (/proc) and of the load generator; the load generator runs on the same cores as the server, "
             "which onnxruntime alone does not share with anyone. Ceiling = cores / (engine CPU per row at its "
             "best + serving CPU per request + client CPU per request): what a server that cost only what the "
             "null server measurably costs could reach; it assumes the engine keeps its best per-row cost while "
             "sharing the cores with serving threads, which it does not (cache and time-slice effects).\n")
    publish("serve_limit", "slipway serve at the engine's limit", host, found, sections, notes,
            time.perf_counter() - t0, {"cells": {" ".join(map(str, k)): v for k, v in cells.items()},
                                       "raw": {"before": before, "after": after, "limits": limits},
                                       "cross_check": cross})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
