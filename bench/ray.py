"""slipway serve on Ray Serve vs plain `slipway serve`: what Ray's proxy and the ingress hop cost on this machine.

The MobileNetV2-ish and tiny models of bench/serve.py: plain `slipway serve` (2 instances x 1 thread, max batch
32, no queue delay) against `slipway serve --ray` on a local Ray cluster of this machine's cores with 1 replica
(2 instances x 1 thread) and 2 replicas (1 instance x 1 thread each), the same batching; load from `slipway perf`
(a separate process) at concurrency 16 over HTTP and gRPC. The proxy's overhead is the ratio of req/s and of
p50 / p99 to the plain server's. On paper, N machines: a replica per core on every machine, each at the
measured per-replica rate, through as many proxies (Ray runs one per node) each capped at the measured proxy
ceiling (the tiny model's req/s over Ray, where the engine costs next to nothing).

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.ray``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import fmt, machine, publish, versions
from bench.serve import prepare
from bench.serve_peers.launch import Budget, Launch, ModelSpec, triton_config
from slipway.cpus import usable_cpus
from slipway.serve import free_port

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 16
LOAD = """
import json, sys
from slipway.loadgen import Settings, profile
r = profile(sys.argv[1], sys.argv[2], protocol=sys.argv[3], concurrency=[int(sys.argv[4])],
            settings=Settings(window_s=float(sys.argv[5]), warmup_s=1.0, stability=0.1, max_trials=6))
row = r.rows[0]
print(json.dumps({k: row.get(k) for k in ("inferences_per_s", "p50_us", "p99_us", "errors", "client_cpu", "stable")}))
"""


def repository(models: list[ModelSpec], budget: Budget, root: Path, replicas: int = 1) -> Path:
    for m in models:
        (root / m.name / "1").mkdir(parents=True, exist_ok=True)
        extra = f'parameters {{ key: "slipway.ray.replicas" value: {{ string_value: "{replicas}" }} }}\n'
        (root / m.name / "config.pbtxt").write_text(triton_config(m, budget) + extra)
        shutil.copyfile(m.path, root / m.name / "1" / "model.onnx")
    return root


def load(port: int, model: str, protocol: str, window: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", LOAD, f"127.0.0.1:{port}", model, protocol, str(CONCURRENCY),
                           str(window)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--models", default="tiny,mobilenetv2")
    ap.add_argument("--from-json", action="store_true", help="tables again from bench/results/ray.json (no load)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    host, found = machine(), versions()
    found["ray"] = __import__("ray").__version__
    if args.from_json:
        saved = json.loads((ROOT / "bench" / "results" / "ray.json").read_text())
        results = {tuple(k.split(" | ")): v for k, v in saved.items()}
        measured = next((line for line in (ROOT / "bench" / "results" / "ray.md").read_text().splitlines()
                         if line.startswith("Machine:")), "")
        report(results, host, found, t0, usable_cpus(),
               f"\nTables re-rendered from bench/results/ray.json (--from-json); the load ran earlier: {measured}\n")
        return
    work = Path(tempfile.mkdtemp(prefix="slipway-bench-ray-"))
    models = [prepare(name, work, 2)[0] for name in args.models.split(",")]
    results: dict[tuple[str, str, str], dict[str, Any]] = {}

    plain_repo = repository(models, Budget(instances=2, threads=1), work / "plain")
    http, grpc = free_port(), free_port()
    cmd = [str(ROOT / ".venv" / "bin" / "python"), "-m", "slipway", "serve", str(plain_repo), "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", "-1"]
    plain = Launch("slipway", cmd, {"PYTHONPATH": str(ROOT)}, http, grpc, workdir=work, layout="plain")
    why = plain.start(models)
    if why:
        raise SystemExit(f"slipway serve did not start: {why}")
    try:
        for m in models:
            for protocol, port in (("http", http), ("grpc", grpc)):
                results[("plain", m.name, protocol)] = load(port, m.name, protocol, args.window)
                print("plain", m.name, protocol, results[("plain", m.name, protocol)], flush=True)
    finally:
        plain.stop()

    from slipway.rayserve import RayServing, Scale

    cpus = usable_cpus()
    for replicas, budget in ((1, Budget(instances=2, threads=1)), (2, Budget(instances=1, threads=1))):
        repo = repository(models, budget, work / f"ray{replicas}", replicas)
        serving = RayServing(repo, http_port=free_port(), grpc_port=free_port(),
                             scale=Scale(cpus=cpus / (replicas * len(models))),
                             init={"num_cpus": cpus})
        try:
            serving.deploy()
            for m in models:
                for protocol, port in (("http", serving.http_port), ("grpc", serving.grpc_port)):
                    key = (f"ray {replicas} replica{'s' if replicas > 1 else ''}", m.name, protocol)
                    results[key] = load(port, m.name, protocol, args.window)
                    print(*key, results[key], flush=True)
        finally:
            serving.shutdown()

    report(results, host, found, t0, cpus)
    shutil.rmtree(work, ignore_errors=True)


def report(results: dict[tuple[str, ...], dict[str, Any]], host: dict[str, Any], found: dict[str, str], t0: float,
           cpus: int, provenance: str = "") -> None:
    rows = []
    for (server, model, protocol), r in results.items():
        base = results.get(("plain", model, protocol), {})
        if "failed" in r:
            rows.append([model, protocol, server, "failed: " + r["failed"][:80]] + ["-"] * 7)
            continue
        ratio = r["inferences_per_s"] / base["inferences_per_s"] if base.get("inferences_per_s") else None
        rows.append([model, protocol, server, fmt(r["inferences_per_s"]), fmt(r["p50_us"] / 1e3),
                     fmt(r["p99_us"] / 1e3), str(r["errors"]), f"{100 * r['client_cpu']:.0f}%",
                     f"{ratio:.2f}x" if ratio else "-",
                     f"{r['p50_us'] / base['p50_us']:.2f}x" if base.get("p50_us") else "-",
                     f"{r['p99_us'] / base['p99_us']:.2f}x" if base.get("p99_us") else "-"])
    paper = []
    for protocol in ("http", "grpc"):
        # per machine: its cores' engines (this machine's plain server) and what Ray's path carried here for this
        # model (proxy + ingress + replica hops, every Ray process on the same cores); the tiny model's req/s is the
        # path's ceiling with next to no engine work
        engines = results.get(("plain", "mobilenetv2", protocol), {}).get("inferences_per_s")
        path = max((r.get("inferences_per_s") or 0 for (server, model, p), r in results.items()
                    if server.startswith("ray") and model == "mobilenetv2" and p == protocol), default=0)
        tiny = results.get(("ray 1 replica", "tiny", protocol), {}).get("inferences_per_s")
        if not engines or not path:
            continue
        for n in (1, 2, 4, 8):
            paper.append([protocol, str(n), fmt(n * engines), fmt(n * path), fmt(n * tiny) if tiny else "-",
                          fmt(min(n * engines, n * path)), "engines" if engines <= path else "Ray's path"])
    sections = [(f"concurrency {CONCURRENCY}: req/s = rows/s; latency ms",
                 ["model", "protocol", "server", "req/s", "p50", "p99", "errors", "client CPU", "req/s vs plain",
                  "p50 vs plain", "p99 vs plain"], rows),
                (f"on paper: N machines like this one ({cpus} cores), MobileNetV2-ish",
                 ["protocol", "machines", "engines' rows/s (N x this machine's plain server)",
                  "Ray's path (N x its best MobileNetV2-ish rows/s here)", "Ray's path, tiny model (N x req/s)",
                  "expected rows/s (if every hop scaled)", "bound by"], paper)]
    notes = ("\nPlain: `slipway serve` (2 instances x 1 intra-op thread, one process). Ray: `slipway serve --ray` "
             f"semantics through the Python API (RayServing) on a local cluster of {cpus} CPUs: Ray's HTTP / gRPC "
             "proxy -> the ingress replica (decode, encode: slipway's ASGI adapter and gRPC servicer) -> a model "
             "replica (slipway's data plane: batcher and instances), two hops through Ray's actor calls; 1 replica "
             "= 2 instances x 1 thread, 2 replicas = 1 x 1 each, every model's replicas reserving the cores between "
             "them. The "
             "load generator (`slipway perf`, its own process) shares the cores. On paper: Ray runs a proxy on "
             "every node and model replicas spread over the nodes, so each machine adds what it carried here: the "
             "lower of its engines' rows/s (this machine's plain server) and Ray's path's (the best MobileNetV2-ish "
             "rows/s over Ray here; the tiny model's req/s shows the path's cost with next to no engine work). "
             "That assumes every hop scales with the machines; the ingress does not yet (one replica, on the head "
             "node, so that losing a worker loses no request in its ingress): past one machine the ingress "
             "replica's own throughput caps the Ray path. Linear in N otherwise; no network between nodes was "
             "measured (one machine only).\n") + provenance
    publish("ray", "slipway serve on Ray Serve vs plain slipway serve", host, found, sections, notes,
            time.perf_counter() - t0, {" | ".join(k): v for k, v in results.items()})


if __name__ == "__main__":
    main()
