"""Where a `slipway serve` process spends its time under load: py-spy samples of every thread, by activity.

The MobileNetV2-ish model of bench/serve.py (2 instances x 1 thread, max batch 2: this CPU's fastest per row),
HTTP and gRPC at concurrency 16 from `slipway perf` in its own process, the server sampled by py-spy
(``--threads --idle --nonblocking``, 200 Hz) for a few seconds in the middle of the load. Servers
(bench/serve_peers/patched.py): ``before`` = the batcher without staging, ``after`` = slipway as it is.
Each sample is filed under its thread (the event loop, the model instances, gRPC's poller, others) and what the
thread was doing (the innermost recognizable frame); the table is the share of each thread's samples.

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.serve_profile``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import machine, publish, versions
from bench.serve import prepare
from bench.serve_limit import server
from bench.serve_peers.launch import Budget

ROOT = Path(__file__).resolve().parents[1]
PYSPY = ROOT / ".venv" / "bin" / "py-spy"
# (frame name fragment, activity), first match from the innermost frame outwards
ACTIVITIES = (
    ("OrtSession.run", "engine run (onnxruntime)"),
    ("_concat", "batch assembly"), ("_split", "batch assembly"),
    ("Batcher._worker", "instance idle: waiting for a batch"),
    ("decode_infer", "decode request"), ("decode_request", "decode request"), ("_read_body", "read body"),
    ("encode_infer", "encode response"), ("encode_response", "encode response"),
    ("Checking.check", "request check"), ("Batcher.", "batcher (event loop)"), ("DataPlane.", "data plane"),
    ("ModelStats.", "statistics"),
    ("RequestHandler", "HTTP transport (aiohttp)"), ("StreamWriter", "HTTP transport (aiohttp)"),
    ("StreamResponse", "HTTP transport (aiohttp)"), ("_rpc", "gRPC handler"), ("ModelInfer", "gRPC handler"),
    ("_poll_wrapper", "gRPC poller"), ("Server.run", "event loop idle or in C (epoll, uvloop, grpc core)"),
)


def thread_kind(name: str) -> str:
    if "MainThread" in name:
        return "event loop"
    if "slipway-" in name:
        return "model instances"
    if "_poll_wrapper" in name:
        return "gRPC poller"
    return "other"


def activity(frames: list[str]) -> str:
    for frame in reversed(frames):
        for fragment, what in ACTIVITIES:
            if fragment in frame:
                return what
    return "other"


def sample(pid: int, seconds: int, out: Path) -> dict[str, Counter]:
    subprocess.run([str(PYSPY), "record", "-p", str(pid), "-d", str(round(seconds)), "-r", "200", "--threads", "--idle",
                    "--nonblocking", "-f", "raw", "-o", str(out)], capture_output=True, check=True)
    by: dict[str, Counter] = {}
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        by.setdefault(thread_kind(frames[0]), Counter())[activity(frames[1:])] += int(n)
    return by


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    host, found = machine(), versions()
    work = Path(tempfile.mkdtemp(prefix="slipway-serve-profile-"))
    spec, _ = prepare("mobilenetv2", work, 2)
    data: dict[str, Any] = {}
    rows = []
    for mode in ("before", "after"):
        launch = server([spec], Budget(instances=2, threads=1, max_batch_size=2), mode, work)
        try:
            for protocol in ("http", "grpc"):
                port = launch.http_port if protocol == "http" else launch.grpc_port
                out = work / f"{mode}-{protocol}.json"
                with open(out, "w") as stdout:
                    load = subprocess.Popen([sys.executable, "-m", "slipway", "perf", "-m", spec.name, "-u",
                                             f"127.0.0.1:{port}", "-i", protocol, "--concurrency-range", "16", "-p",
                                             "2000", "-r", "5", "--warmup", "1", "--json"],
                                            cwd=ROOT, stdout=stdout, stderr=subprocess.DEVNULL,
                                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
                time.sleep(2.5)
                by = sample(launch.proc.pid, args.seconds, work / f"{mode}-{protocol}.txt")
                load.wait(300)
                rps = json.loads(out.read_text())["levels"][0]["inferences_per_s"] if out.stat().st_size else None
                data[f"{mode} {protocol}"] = {"rows_per_s": rps, "samples": {k: dict(v) for k, v in by.items()}}
                for kind, counts in sorted(by.items()):
                    total = sum(counts.values())
                    for what, n in counts.most_common():
                        if n / total >= 0.01:
                            rows.append([protocol, mode, f"{rps:.0f}" if rps else "-", kind, what, f"{100 * n / total:.1f}%"])
                print(mode, protocol, rps, flush=True)
        finally:
            launch.stop()
    notes = ("\nShares are of each thread group's samples (two model instance threads together; 'idle' samples "
             "included, py-spy --idle). A model instance that is not running the engine is waiting for its next "
             "batch: the server's engine time lost to hand-offs. py-spy sees Python frames: time inside C code "
             "(uvloop's epoll, grpc core, onnxruntime) is filed under the Python frame that called it.\n")
    publish("serve_profile", "slipway serve under load: where the time goes (before / after batch staging)", host,
            found, [("threads and activities, concurrency 16",
                     ["protocol", "server", "rows/s (while sampled)", "thread", "activity", "share of samples"],
                     rows)], notes, time.perf_counter() - t0, data)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
