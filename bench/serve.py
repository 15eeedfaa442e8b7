"""Serving: slipway serve vs Triton (through PyTriton) vs MLServer, under closed-loop tritonclient load.

Every server gets the same ONNX models, the same onnxruntime thread budget (``--threads``
intra-op threads in all, inter-op 1) and a dynamic batcher of max batch 32 (Triton and slipway:
``dynamic_batching`` with ``max_queue_delay_microseconds`` 0; MLServer: adaptive batching, which
needs a ``max_batch_time`` > 0, 1 ms). The budget is split into layouts (``--layouts``, default
1x2,2x1): N model instances x T intra-op threads each, N x T = ``--threads``. slipway and Triton
(through PyTriton) run in every layout (slipway: ``instance_group`` count N, its N instances
sharing one InferenceSession; Triton: N instances, each with its own session); MLServer has no
in-process instances and runs once, 1 x ``--threads``. All servers (one process per server and
layout) run at once on 127.0.0.1; each measurement cell (model x protocol x concurrency) runs every
server in turn, ``--rounds`` times in rotated order, so they share the same background load. The load generator (bench/serve_loadgen.py) is a
separate process: N closed-loop tritonclient clients, every reply checked against onnxruntime's
output for its input. MLServer speaks only JSON over HTTP, so its HTTP requests and replies are
JSON (``binary_data=False``); the others get tritonclient's default binary tensors.

Models: a tiny Gemm (x[batch,16] -> y[batch,16]; measures per-request overhead) and the zoo's
MobileNetV2-ish (dynamic batch). Also measured: onnxruntime alone, in process, at batch 1..32 in
every layout (bench/serve_peers/raw.py; the physical limit is the best over batches and layouts;
before and after the load runs, the better of the two at each batch), and,
with ``--long N``, slipway's server RSS before and after N tiny requests (half over HTTP, half over
gRPC, at once) and its peak RSS (VmHWM).

Setup: ``bash bench/serve_peers/setup.sh`` (peer virtualenvs). Run from the repo root:
``PYTHONPATH=. .venv/bin/python -m bench.serve [--quick] [--long 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bench.common import machine, publish, versions
from bench.serve_peers import launch, raw
from bench.serve_peers.launch import Budget, Launch, ModelSpec
from bench.serve_peers.tables import BATCHES, LABELS, MODELS, PROTOCOLS, load_table, memory_table, raw_table, targets
from slipway.analyze.machine import default_threads

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("slipway", "triton", "mlserver")
CONCURRENCY = (1, 4, 16, 32)
POOL = 8  # different inputs per model, cycled by the clients
AIO_FROM = 8  # --client auto: one synchronous client per thread below this concurrency, asyncio clients from it
# (measured on the 2-core bench machine against slipway: threads cost ~20% less client CPU per request at
# concurrency 1 and 4, asyncio ~10-15% less at 16 and 32, over both HTTP and gRPC)


def tiny_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")]
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "tiny",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def prepare(name: str, workdir: Path, threads: int) -> tuple[ModelSpec, Path]:
    """The model's spec (ONNX path, inputs/outputs) and an .npz pool of inputs with their expected outputs."""
    if name == "tiny":
        path = workdir / "tiny.onnx"
        tiny_model(path)
    else:
        from tests.zoo import export

        path = export(name)
    sess = raw.session(path, threads)

    def sig(args: list[Any]) -> list[tuple[str, str, list[int]]]:
        dtype = {"tensor(float)": "float32"}
        return [(a.name, dtype[a.type], [int(d) for d in a.shape[1:]]) for a in args]

    spec = ModelSpec(name, Path(path).resolve(), sig(sess.get_inputs()), sig(sess.get_outputs()))
    rng = np.random.default_rng(1)
    inputs = {n: rng.standard_normal((POOL, *dims)).astype(t) for n, t, dims in spec.inputs}
    outs = [sess.run(None, {n: x[i:i + 1] for n, x in inputs.items()}) for i in range(POOL)]
    expected = {o.name: np.concatenate([r[j] for r in outs]) for j, o in enumerate(sess.get_outputs())}
    pool = workdir / f"{name}-pool.npz"
    np.savez(pool, **{f"in:{k}": v for k, v in inputs.items()}, **{f"out:{k}": v for k, v in expected.items()})
    return spec, pool


def load(server: Launch, model: str, pool: Path, protocol: str, concurrency: int, args: argparse.Namespace,
         workdir: Path, requests: int = 0) -> dict[str, Any]:
    """One loadgen run (a subprocess); its JSON summary plus the latencies (seconds)."""
    port = server.http_port if protocol == "http" else server.grpc_port
    lat = workdir / f"lat-{server.name}-{server.layout}-{model}-{protocol}-{concurrency}-{time.monotonic_ns()}.npy"
    client = args.client if args.client != "auto" else ("threads" if concurrency < AIO_FROM else "aio")
    cmd = [sys.executable, "-m", "bench.serve_loadgen", "--url", f"127.0.0.1:{port}", "--protocol", protocol,
           "--model", model, "--data", str(pool), "--concurrency", str(concurrency), "--client", client,
           "--duration", str(args.duration), "--warmup", str(args.warmup), "--latencies", str(lat)]
    if requests:
        cmd += ["--requests", str(requests)]
    if server.name == "mlserver" and protocol == "http":
        cmd.append("--json")
    limit = args.warmup + args.duration + 300 + requests / 100
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=limit,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return {"failed_run": f"load generator timed out after {limit:.0f} s"}
    if done.returncode != 0:
        return {"failed_run": " / ".join(done.stderr.strip().splitlines()[-3:])[-400:]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["latencies"] = np.load(lat)
    lat.unlink()
    return out


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one server in one cell, as one result."""
    bad = [p["failed_run"] for p in parts if "failed_run" in p]
    good = [p for p in parts if "failed_run" not in p]
    if not good:
        return {"reason": bad[0]}
    lat = np.concatenate([p["latencies"] for p in good]) * 1e3
    seconds = sum(p["seconds"] for p in good)
    out = {"client": good[0]["client"], "requests": len(lat), "seconds": seconds, "rps": len(lat) / seconds,
           "failed": sum(p["failed"] for p in good), "wrong": sum(p["wrong"] for p in good),
           "client_cpu_pct": 100 * sum(p["client_cpu_s"] for p in good) / seconds,
           "errors": [e for p in good for e in p["errors"]][:3] + bad}
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = float(np.percentile(lat, q)) if len(lat) else None
    return out


def measure(servers: dict[str, Launch], specs: list[tuple[ModelSpec, Path]], args: argparse.Namespace,
            workdir: Path) -> list[dict[str, Any]]:
    """Every cell (model x protocol x concurrency), every server and layout in it (keys of ``servers``)."""
    rows = []
    names = list(servers)
    for spec, pool in specs:
        for protocol in PROTOCOLS:
            for c in args.concurrency:
                print(f"{spec.name} {protocol} c{c}...", end=" ", flush=True)
                t0 = time.perf_counter()
                parts: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
                for r in range(args.rounds):
                    for n in names[r % len(names):] + names[:r % len(names)]:
                        parts[n].append(load(servers[n], spec.name, pool, protocol, c, args, workdir))
                print(f"{time.perf_counter() - t0:.0f} s", flush=True)
                for n in names:
                    rows.append({"model": spec.name, "protocol": protocol, "concurrency": c,
                                 "server": servers[n].name, "layout": servers[n].layout, **merge(parts[n])})
    return rows


def long_run(server: Launch, spec: ModelSpec, pool: Path, n: int, args: argparse.Namespace,
             workdir: Path) -> dict[str, Any]:
    """slipway's RSS before and after n tiny requests (n/2 over HTTP and n/2 over gRPC, concurrently)."""
    for protocol in PROTOCOLS:
        load(server, spec.name, pool, protocol, 8, args, workdir, requests=2000)
    before = server.rss()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        runs = list(ex.map(lambda p: load(server, spec.name, pool, p, 8, args, workdir, requests=n // 2), PROTOCOLS))
    after = server.rss()
    done = sum(r.get("requests", 0) for r in runs)
    errors = sum(r.get("failed", 0) + r.get("wrong", 0) for r in runs)
    change = 100 * (after.get("VmRSS", 0) / before["VmRSS"] - 1) if before.get("VmRSS") else None
    return {"requests": done, "errors": errors, "seconds": time.perf_counter() - t0, "before_kib": before,
            "after_kib": after, "rss_change_pct": change,
            "failed_runs": [r["failed_run"] for r in runs if "failed_run" in r]}


# -----------------------------------------------------------------------------------------------
# main


def peer_versions() -> dict[str, str]:
    found = {}
    for venv, package in (("mlserver", "mlserver"), ("pytriton", "nvidia-pytriton")):
        python = launch.VENVS / venv / "bin" / "python"
        if python.exists():
            done = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                                  capture_output=True, text=True)
            found[package] = done.stdout.strip() or "-"
    from importlib import metadata

    found["tritonclient"] = metadata.version("tritonclient")
    return found


def server_version(server: Launch) -> str:
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        meta = client.get_server_metadata()
        return f"{meta.get('name', server.name)} {meta.get('version', '?')}"
    except Exception as e:  # metadata is informative only
        return f"? ({type(e).__name__})"
    finally:
        client.close()


def budgets(names: list[str], layouts: list[tuple[int, int]], base: Budget) -> list[tuple[str, Budget]]:
    """(server, budget) to start: slipway and Triton in every layout, MLServer once with 1 x the whole budget."""
    out = []
    for name in names:
        if name == "mlserver":
            out.append((name, replace(base, instances=1, threads=base.threads)))
        else:
            out += [(name, replace(base, instances=n, threads=t)) for n, t in layouts]
    return out


def start_servers(names: list[str], layouts: list[tuple[int, int]], models: list[ModelSpec], base: Budget,
                  workdir: Path) -> tuple[dict[str, Launch], dict[str, str]]:
    """Start every server in its layouts (two at a time: Triton takes a while); {key: Launch}, {key: why not}."""
    todo = budgets(names, layouts, base)
    print("starting " + ", ".join(f"{n} {b.layout}" for n, b in todo) + "...", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        got = list(ex.map(lambda nb: launch.start(nb[0], models, nb[1], workdir / f"{nb[0]}-{nb[1].layout}"), todo))
    print(f"  started in {time.perf_counter() - t0:.0f} s", flush=True)
    started, missing = {}, {}
    for (name, b), g in zip(todo, got, strict=True):
        if isinstance(g, str):
            print(f"  {name} {b.layout} not available: {g}", flush=True)
            missing[f"{name} {b.layout}"] = g
        else:
            started[g.key] = g
    return started, missing


def parse_layouts(text: str, threads: int) -> list[tuple[int, int]]:
    """ "1x2,2x1" -> [(1, 2), (2, 1)]; each instances x threads must use the whole thread budget."""
    out = []
    for item in text.split(","):
        n, _, t = item.strip().lower().partition("x")
        if not (n.isdigit() and t.isdigit() and int(n) >= 1 and int(t) >= 1):
            raise ValueError(f"--layouts: {item!r} is not INSTANCESxTHREADS (e.g. 2x1)")
        if int(n) * int(t) != threads:
            raise ValueError(f"--layouts: {item} uses {int(n) * int(t)} threads, not the budget --threads {threads}")
        if (int(n), int(t)) not in out:
            out.append((int(n), int(t)))
    return out


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test (~3 min): concurrency 1 and 16, 1 x 1.5 s runs, raw engine measured once, "
                             "briefly, before the load runs; no long run")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--concurrency", default=None, help="comma-separated (default 1,4,16,32; quick 1,16)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per run (default 3; quick 1.5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    parser.add_argument("--rounds", type=int, default=None, help="runs per server per cell (default 2; quick 1)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="onnxruntime intra-op thread budget (all instances together)")
    parser.add_argument("--layouts", default=None,
                        help="INSTANCESxTHREADS,... with INSTANCES x THREADS = --threads (default 1xT,Tx1: 1x2,2x1 "
                             "on 2 threads)")
    parser.add_argument("--mlserver-batch-ms", type=float, default=1.0,
                        help="MLServer adaptive batching max_batch_time (it must be > 0)")
    parser.add_argument("--client", choices=["auto", "aio", "threads"], default="auto",
                        help=f"load generator clients (auto: threads below concurrency {AIO_FROM}, else asyncio)")
    parser.add_argument("--long", type=int, default=None,
                        help="tiny requests for slipway's RSS check (default 100000; quick 0 = skip)")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in (args.concurrency or ("1,16" if args.quick else "1,4,16,32")).split(",")]
    args.duration = args.duration or (1.5 if args.quick else 3.0)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.long = (0 if args.quick else 100_000) if args.long is None else args.long
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    default = f"1x{args.threads},{args.threads}x1" if args.threads > 1 else "1x1"
    try:
        args.layouts = parse_layouts(args.layouts or default, args.threads)
    except ValueError as e:
        parser.error(str(e))
    return args


def notes(args: argparse.Namespace, budget: Budget, server_versions: dict[str, str]) -> str:
    served = "; ".join(f"{LABELS.get(k.split()[0], k)} {k.split()[-1]}: {v}" for k, v in server_versions.items())
    layouts = ", ".join(f"{n}x{t}" for n, t in args.layouts)
    return (f"\nEvery server: the same ONNX file, onnxruntime intra-op thread budget {budget.threads} "
            f"(inter-op 1), max batch {budget.max_batch_size}. Layout NxT = N model instances x T intra-op "
            f"threads each ({layouts}): slipway with instance_group count N (its N instances share one "
            "InferenceSession, each run on the caller's thread plus the session's pool) and "
            "intra_op_thread_count T; Triton (PyTriton) with N instances (a list of N infer callables), each with "
            f"its own onnxruntime session of T threads. MLServer has no in-process model instances: it runs "
            f"only 1x{budget.threads} (one session, run in one worker thread); its column \"req/s vs MLServer\" "
            "compares every layout with that. Triton and slipway dynamic batching with "
            f"max_queue_delay_microseconds {budget.queue_delay_us}, MLServer adaptive batching with max_batch_time "
            f"{budget.mlserver_batch_time_s * 1e3:g} ms, in-process (parallel_workers 0), access log off. Servers "
            f"reported: {served}. Load: closed loop, tritonclient clients in a separate process ("
            + (f"one synchronous client per thread below concurrency {AIO_FROM}, asyncio clients on uvloop from it; "
               "whichever cost the client less CPU per request" if args.client == "auto" else f"{args.client} clients")
            + "), "
            f"{args.rounds} x {args.duration:g} s per server and layout per cell (after >= {args.warmup:g} s "
            "warm-up), servers in rotated order; every reply is checked against onnxruntime's output for its input "
            "(errors = failed + wrong replies). One row per request, so req/s = rows/s. HTTP to MLServer is JSON "
            "(it has no binary tensors); HTTP to the others uses binary tensors; MLServer's gRPC endpoint takes "
            "tritonclient.grpc's requests (raw_input_contents) unmodified. Client CPU % = the load "
            "generator's CPU seconds per wall second (100% = one core); client and servers share the machine's "
            "cores. Ratios: req/s over Triton's in the same cell and layout, and over MLServer's in the same cell; "
            "p99 over Triton's in the same layout (<= 1 is better); rows/s over the raw best (onnxruntime alone, "
            "the best over batch sizes and layouts). Raw table: NxT = one session of T threads run from N threads "
            "at once (as slipway's instances); \"NxT separate\" = N sessions, one per thread (as Triton's); "
            f"closed loop at each batch size, median of {1 if args.quick else raw.WINDOWS} window(s) of throughput, "
            + ("measured once, before the load runs (--quick). " if args.quick else
               "the better of a measurement before and one after the load runs. ")
            + "Targets compare slipway's best layout "
            "(highest req/s in the cell) with Triton's best layout and with the raw best; the p99 targets use those "
            "same layouts.\n")


def main() -> None:
    args = parse()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers are stopped on SIGTERM too
    budget = Budget(threads=args.threads, mlserver_batch_time_s=args.mlserver_batch_ms / 1e3)
    host, found = machine(), versions()
    found.update(peer_versions())
    t0 = time.perf_counter()
    raw_s, windows = (0.3, 1) if args.quick else (1.0, raw.WINDOWS)

    def engine() -> dict[str, dict[str, Any]]:
        out = {}
        for s, p in specs:
            print(f"raw onnxruntime {s.name}...", flush=True)
            out[s.name] = raw.measure(s.path, p, args.layouts, BATCHES, raw_s, windows)
        return out

    with tempfile.TemporaryDirectory(prefix="slipway-serve-bench-") as d:
        workdir = Path(d)
        specs = [prepare(m, workdir, budget.threads) for m in args.models.split(",")]
        before = engine()
        servers, missing = start_servers(args.servers.split(","), args.layouts, [s for s, _ in specs], budget,
                                         workdir)
        try:
            served = {n: server_version(s) for n, s in servers.items()}
            rows = measure(servers, specs, args, workdir)
            rss = {n: s.rss() for n, s in servers.items()}
            long = None
            tiny = next(((s, p) for s, p in specs if s.name == "tiny"), None)
            slipways = [s for s in servers.values() if s.name == "slipway"]
            if args.long and slipways and tiny:
                target = max(slipways, key=lambda s: int(s.layout.split("x")[0]))  # the most instances
                print(f"long run: {args.long} tiny requests on slipway {target.layout}...", flush=True)
                long = long_run(target, tiny[0], tiny[1], args.long, args, workdir)
                long["layout"] = target.layout
        finally:
            for s in servers.values():
                s.stop()
        after = engine() if not args.quick else before
    engines = {m: raw.best_of(before[m], after[m]) for m in before}
    sections = [
        ("Closed-loop load (req/s = rows/s; latency ms)",
         ["model", "protocol", "concurrency", "server", "layout", "req/s", "p50", "p90", "p99", "errors",
          "client CPU", "req/s vs Triton", "req/s vs MLServer", "p99 vs Triton", "rows/s vs raw best"],
         load_table(rows, missing, engines)),
        (f"onnxruntime alone, in process (layouts of {budget.threads} intra-op threads): rows/s by batch size",
         ["model", "layout"] + [f"batch {b}" for b in BATCHES] + ["best"], raw_table(engines)),
        ("Targets (slipway)", ["target", "measured", "goal", "result"], targets(rows, engines)),
        ("Server memory (MiB)", ["server", "VmRSS before", "VmRSS after", "change", "VmHWM"],
         memory_table(long, rss)),
    ]
    data = {"machine": host, "versions": found, "servers": served, "budget": vars(budget),
            "args": {k: v for k, v in vars(args).items()}, "raw": engines,
            "raw_best": {m: raw.overall(v) for m, v in engines.items()}, "rows": rows, "missing": missing,
            "memory": {"long_run": long, "after_load": rss}}
    publish("serve", "Serving: slipway vs Triton (PyTriton) vs MLServer", host, found, sections,
            notes(args, budget, served), time.perf_counter() - t0, data)


if __name__ == "__main__":
    main()
