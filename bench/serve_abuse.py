"""What abusive clients cost ``slipway serve``: memory and health-check stalls, before vs after hardening.

A ``slipway serve`` subprocess is started from a source tree (``--tree``, default this repository;
``PYTHONPATH=<tree> <this python> -m slipway serve ...``, so the same virtualenv) on 127.0.0.1 over a
repository built here: ``tiny`` (x FP32 [batch, 16] -> y = x @ W + b, config completed from the
model) and ``strings`` (BYTES identity, text [-1, 1] -> same, ``max_batch_size: 0``). Then, each step
bounded in time:

(a) **held bodies**: 20 connections send infer headers claiming a 64 MiB body (``Content-Length:
    67108864``, the default body limit) and one byte, and hold for 5 s; the server's VmRSS
    (/proc/<pid>/status) before, while held, and 1 s after they close; VmHWM.
(b) **big requests**, one at a time, while a poller GETs ``/v2/health/live`` every 10 ms on its own
    keep-alive connection: a BYTES request of shape [2**28, 1] with a 108-byte body; a 60 MB JSON
    body; a request with 300,000 inputs; a gRPC request with 15 M ``fp32_contents``. Per request:
    the answer (status, time), peak RSS (VmHWM after a reset through /proc/<pid>/clear_refs, and the
    highest VmRSS sampled every 10 ms) and the longest health-check response time.
(c) **slow headers**: 200 connections each send one byte of a request head per second; how many are
    still open after 15 s and 30 s, and the RSS then.

A watchdog kills the server past ``--rss-cap-gb`` (default 8) so a bad tree cannot take the machine;
a server that dies is restarted for the next step. Results go to ``bench/results/serve_abuse.md`` /
``.json``, one column per ``--column`` (``before`` for ``--tree /tmp/base14``, the code before the
hardening; ``after`` for the working tree): each run replaces its own column and keeps the other.

Run from the repo root::

    mkdir -p /tmp/base14 && git -C . archive <base commit> | tar -x -C /tmp/base14
    PYTHONPATH=. .venv/bin/python -m bench.serve_abuse --tree /tmp/base14 --column before
    PYTHONPATH=. .venv/bin/python -m bench.serve_abuse --column after
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.common import RESULTS, header, machine, markdown_table, print_table, versions
from slipway.model import atomic_write_text
from slipway.serve import free_port

ROOT = Path(__file__).resolve().parents[1]
NAME = "serve_abuse"
MIB = 1 << 20
HELD = 20
HOLD_S = 5.0
SLOW = 200
POLL_S = 0.010
STRINGS_CONFIG = """
name: "strings"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "text" data_type: TYPE_STRING dims: [ -1, 1 ] } ]
output [ { name: "same" data_type: TYPE_STRING dims: [ -1, 1 ] } ]
"""


# ---------------------------------------------------------------------------------------------
# the repository and the server


def build_repository(root: Path) -> Path:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "B")]
    tiny = helper.make_model(helper.make_graph([helper.make_node("Gemm", ["x", "W", "B"], ["y"])], "tiny", [x], [y],
                                               inits), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    t = helper.make_tensor_value_info("text", TensorProto.STRING, ["n", 1])
    s = helper.make_tensor_value_info("same", TensorProto.STRING, ["n", 1])
    strings = helper.make_model(helper.make_graph([helper.make_node("Identity", ["text"], ["same"])], "strings", [t],
                                                  [s]), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for name, model in (("tiny", tiny), ("strings", strings)):
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, root / name / "1" / "model.onnx")
    (root / "strings" / "config.pbtxt").write_text(STRINGS_CONFIG)
    return root



def status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def rss_mib(pid: int) -> float | None:
    kb = status_kb(pid).get("VmRSS")
    return None if kb is None else kb / 1024


def hwm_mib(pid: int) -> float | None:
    kb = status_kb(pid).get("VmHWM")
    return None if kb is None else kb / 1024


def reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class ServerProcess:
    """``slipway serve`` from ``tree`` in a subprocess, with an RSS watchdog."""

    def __init__(self, tree: Path, repo: Path, log: Path, rss_cap_mib: float) -> None:
        self.tree, self.repo, self.log, self.cap = tree, repo, log, rss_cap_mib
        self.proc: subprocess.Popen | None = None
        self.killed_for_rss = False

    def start(self, timeout: float = 120.0) -> None:
        self.http, self.grpc = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        cmd = [sys.executable, "-m", "slipway", "serve", str(self.repo), "--host", "127.0.0.1",
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", "-1",
               "--threads", "1", "--log-format", "text"]
        self.proc = subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"), start_new_session=True)
        self.killed_for_rss = False
        threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.log}")
            if get(self.http, "/v2/health/ready", timeout=1.0)[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the server was not ready after {timeout:.0f} s; see {self.log}")

    def _watch(self, proc: subprocess.Popen) -> None:
        while proc.poll() is None:
            rss = rss_mib(proc.pid)
            if rss is not None and rss > self.cap:
                self.killed_for_rss = True
                proc.kill()
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self) -> bool:
        """Restart a server that died; True when it had died."""
        if self.alive():
            return False
        self.start()
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    except OSError:
        return None, b""
    finally:
        conn.close()


def post(port: int, path: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int | None, bytes, float]:
    """(status or None, response body or the client error, seconds from sending to the whole answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read(), time.perf_counter() - t0
    except (OSError, http.client.HTTPException) as e:
        return None, f"{type(e).__name__}: {e}".encode(), time.perf_counter() - t0
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# (a) held bodies


def held_bodies(server: ServerProcess) -> dict[str, Any]:
    pid, port = server.pid, server.http
    before = rss_mib(pid)
    reset_hwm(pid)
    socks = []
    head = (f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {64 * MIB}\r\n\r\n{{").encode()
    for _ in range(HELD):
        s = socket.create_connection(("127.0.0.1", port), timeout=HOLD_S + 5)
        s.sendall(head)
        socks.append(s)
    peak = 0.0
    t_end = time.monotonic() + HOLD_S
    while time.monotonic() < t_end:
        peak = max(peak, rss_mib(pid) or 0.0)
        time.sleep(0.05)
    held = rss_mib(pid)
    open_at_end = sum(1 for s in socks if _still_open(s))
    for s in socks:
        s.close()
    time.sleep(1.0)
    return {"rss_before_mib": before, "rss_held_mib": held, "rss_peak_sampled_mib": peak,
            "rss_after_close_mib": rss_mib(pid), "hwm_mib": hwm_mib(pid), "open_after_hold": open_at_end,
            "server_alive": server.alive(), "killed_for_rss": server.killed_for_rss}


def _still_open(s: socket.socket) -> bool:
    """No EOF or error from the server yet (data it sent, e.g. an error answer, counts as closed soon)."""
    s.setblocking(False)
    try:
        data = s.recv(65536)
        return False if data == b"" else not data.startswith(b"HTTP/")
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


# ---------------------------------------------------------------------------------------------
# (b) big requests under a health poller


class Poller:
    """GET /v2/health/live every 10 ms on one keep-alive connection; the longest response time."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.worst = 0.0
        self.failures = 0
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/v2/health/live")
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            dt = time.perf_counter() - t0
            self.worst = max(self.worst, dt)
            self.count += 1
            self.failures += not ok
            if not ok:
                time.sleep(POLL_S)  # a dead server: do not spin
            self._stop.wait(max(0.0, POLL_S - dt))
        conn.close()


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mib(self.pid) or 0.0)
            time.sleep(POLL_S)

    def stop(self) -> float:
        self._done.set()
        self.join(2)
        return self.peak


Answer = tuple[int | str | None, str, float]  # HTTP status or gRPC code (None: none came), detail, seconds


def bytes_huge_shape(server: ServerProcess, timeout: float) -> Answer:
    elements = b"".join(struct.pack("<I", 5) + b"hello" for _ in range(12))  # 108 bytes
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1 << 28, 1],
                                   "parameters": {"binary_data_size": len(elements)}}]}).encode()
    status, body, seconds = post(server.http, "/v2/models/strings/infer", head + elements,
                                 {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(head))}, timeout)
    return status, body[:160].decode("utf-8", "replace"), seconds


def json_60mb(server: ServerProcess, timeout: float) -> Answer:
    rows = 60_000_000 // (16 * 10)  # "0.12345678," ~ 10 bytes a value
    value = "0.1234567"
    row = "[" + ",".join([value] * 16) + "]"
    data = "[" + ",".join([row] * rows) + "]"
    body = ('{"inputs":[{"name":"x","datatype":"FP32","shape":[' + str(rows) + ',16],"data":' + data + "}]}").encode()
    status, out, seconds = post(server.http, "/v2/models/tiny/infer", body, {"Content-Type": "application/json"},
                                timeout)
    return status, f"{len(body) / 1e6:.1f} MB body: " + out[:140].decode("utf-8", "replace"), seconds


def many_inputs(server: ServerProcess, timeout: float) -> Answer:
    items = ",".join('{"name":"x' + str(i) + '","datatype":"FP32","shape":[1],"data":[0]}' for i in range(300_000))
    body = ('{"inputs":[' + items + "]}").encode()
    status, out, seconds = post(server.http, "/v2/models/tiny/infer", body, {"Content-Type": "application/json"},
                                timeout)
    return status, f"{len(body) / 1e6:.1f} MB body: " + out[:140].decode("utf-8", "replace"), seconds


def grpc_fp32_contents(server: ServerProcess, timeout: float) -> Answer:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    n = 15_000_000
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[n // 16, 16])
    tensor.contents.fp32_contents.extend(np.zeros(n, np.float32))
    size = request.ByteSize()
    options = [("grpc.max_send_message_length", 256 * MIB), ("grpc.max_receive_message_length", 256 * MIB)]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        t0 = time.perf_counter()
        try:
            stub.ModelInfer(request, timeout=timeout)
            return "OK", f"{size / 1e6:.1f} MB message: OK", time.perf_counter() - t0
        except grpc.RpcError as e:
            name = e.code().name
            return name, f"{size / 1e6:.1f} MB message: {name}: {(e.details() or '')[:120]}", time.perf_counter() - t0


BIG = [
    ("BYTES shape [2**28, 1], 108-byte body", bytes_huge_shape),
    ("60 MB JSON body", json_60mb),
    ("300,000 inputs", many_inputs),
    ("gRPC fp32_contents, 15 M values", grpc_fp32_contents),
]


def big_requests(server: ServerProcess, timeout: float) -> list[dict[str, Any]]:
    out = []
    for label, fn in BIG:
        restarted = server.ensure()
        pid = server.pid
        time.sleep(0.5)
        base = rss_mib(pid)
        hwm_reset = reset_hwm(pid)
        sampler = RssSampler(pid)
        sampler.start()
        with Poller(server.http, timeout) as poller:
            time.sleep(0.2)
            status, detail, elapsed = fn(server, timeout)
            time.sleep(0.5)
        peak = sampler.stop()
        row = {"request": label, "status": status, "detail": detail, "seconds": elapsed, "rss_before_mib": base,
               "rss_peak_sampled_mib": peak, "hwm_mib": hwm_mib(pid) if hwm_reset else None,
               "live_worst_ms": poller.worst * 1000, "live_polls": poller.count, "live_failures": poller.failures,
               "server_alive": server.alive(), "killed_for_rss": server.killed_for_rss,
               "restarted_before": restarted}
        print(f"{label}: {status} in {elapsed:.2f} s, peak RSS {peak:.0f} MiB, worst live {poller.worst * 1000:.0f} ms"
              f", alive {row['server_alive']}: {detail[:120]}", flush=True)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# (c) slow headers


def slow_headers(server: ServerProcess, checkpoints: tuple[float, ...] = (15.0, 30.0)) -> dict[str, Any]:
    server.ensure()
    pid, port = server.pid, server.http
    base = rss_mib(pid)
    head = (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4096)
    socks: list[socket.socket | None] = []
    for _ in range(SLOW):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setblocking(False)
            socks.append(s)
        except OSError:
            socks.append(None)
    t0 = time.monotonic()
    pos = 0
    result: dict[str, Any] = {"connections": SLOW, "rss_before_mib": base}
    for mark in checkpoints:
        while time.monotonic() - t0 < mark:
            for i, s in enumerate(socks):
                if s is None:
                    continue
                try:
                    data = s.recv(65536)
                    if data == b"" or data.startswith(b"HTTP/"):
                        s.close()
                        socks[i] = None
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    socks[i] = None
                    continue
                try:
                    s.send(head[pos : pos + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    socks[i] = None
            pos = min(pos + 1, len(head) - 1)
            time.sleep(max(0.0, 1.0 - ((time.monotonic() - t0) % 1.0)))
        result[f"open_after_{int(mark)}s"] = sum(s is not None for s in socks)
        result[f"rss_after_{int(mark)}s_mib"] = rss_mib(pid)
    for s in socks:
        if s is not None:
            s.close()
    result["server_alive"] = server.alive()
    return result


# ---------------------------------------------------------------------------------------------
# report


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def rows_for(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, value) pairs of one column, in table order."""
    a, c = run["held"], run["slow"]
    rows = [
        ("(a) RSS before, MiB", _mib(a["rss_before_mib"])),
        (f"(a) RSS with {HELD} x 64 MiB bodies claimed and held {HOLD_S:.0f} s, MiB", _mib(a["rss_held_mib"])),
        ("(a) RSS 1 s after they close, MiB", _mib(a["rss_after_close_mib"])),
        ("(a) VmHWM, MiB", _mib(a["hwm_mib"])),
        ("(a) connections still open after the hold", str(a["open_after_hold"])),
    ]
    for b in run["big"]:
        status = "died" if not b["server_alive"] else ("no answer" if b["status"] is None else str(b["status"]))
        if b["killed_for_rss"]:
            status = f"killed at the {run['rss_cap_gb']:g} GB RSS cap"
        rows += [
            (f"(b) {b['request']}: answer, seconds", f"{status}, {b['seconds']:.2f} s"),
            (f"(b) {b['request']}: peak RSS, MiB (before)",
             f"{_mib(max(b['rss_peak_sampled_mib'] or 0, b['hwm_mib'] or 0))} ({_mib(b['rss_before_mib'])})"),
            (f"(b) {b['request']}: longest /v2/health/live, ms",
             f"{b['live_worst_ms']:,.0f}" + (f" ({b['live_failures']} failed)" if b["live_failures"] else "")),
        ]
    rows += [
        (f"(c) {SLOW} slow-header connections open after 15 s", str(c["open_after_15s"])),
        (f"(c) {SLOW} slow-header connections open after 30 s", str(c["open_after_30s"])),
        ("(c) RSS before / after 15 s / after 30 s, MiB",
         f"{_mib(c['rss_before_mib'])} / {_mib(c['rss_after_15s_mib'])} / {_mib(c['rss_after_30s_mib'])}"),
    ]
    return rows


def render(data: dict[str, Any]) -> str:
    columns = [c for c in ("before", "after") if c in data["runs"]]
    first = data["runs"][columns[0]]
    measures = [m for m, _ in rows_for(first)]
    values = {c: dict(rows_for(data["runs"][c])) for c in columns}
    table = [[m] + [values[c].get(m, "-") for c in columns] for m in measures]
    md = header("slipway serve under abusive clients", first["machine"], first["versions"])
    for c in columns:
        run = data["runs"][c]
        md += (f"\n- **{c}**: tree `{run['tree']}` (source {run['tree_commit']}), run {run['machine']['date']}, "
               f"{run['machine']['cpu']}, {run['machine']['physical_cores']} cores, load at start "
               f"{', '.join(str(x) for x in run['machine']['load_average_1_5_15m'])}; bench time {run['elapsed_s']:.0f} s")
    md += "\n\n" + markdown_table(["measure"] + columns, table)
    md += "\n### Answers\n\n"
    for c in columns:
        for b in data["runs"][c]["big"]:
            md += f"- {c}, {b['request']}: `{b['detail'][:200]}`\n"
    md += NOTES
    return md


NOTES = """
Notes. One server process (`slipway serve --threads 1`, HTTP + gRPC on 127.0.0.1, the default limits
of the tree) over a `tiny` FP32 model (x [batch, 16]) and a BYTES identity (`max_batch_size: 0`, dims
[-1, 1]). RSS is VmRSS from /proc/<pid>/status; a peak is the larger of the VmHWM after a reset
(/proc/<pid>/clear_refs) and the highest VmRSS sampled every 10 ms. "Longest /v2/health/live" is the
longest response time of a poller sending one request every 10 ms on its own keep-alive connection
while the request runs (plus 0.5 s). A server past the RSS cap is killed (and counted so) and a
fresh one serves the next request. Slow-header clients send one byte of a request head every second.
Reproduce: `PYTHONPATH=. .venv/bin/python -m bench.serve_abuse --tree /tmp/base14 --column before` and
`PYTHONPATH=. .venv/bin/python -m bench.serve_abuse --column after`.
"""


def tree_commit(tree: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and Path(tree, ".git").exists():
            dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True,
                                   timeout=30).stdout.strip()
            return out.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "an exported tree (no git)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", type=Path, default=ROOT, help="source tree whose slipway serves (default: this repo)")
    ap.add_argument("--column", choices=("before", "after"), default=None,
                    help="result column (default: after for this repo, before for another tree)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for each big request")
    ap.add_argument("--rss-cap-gb", type=float, default=8.0, help="kill the server past this RSS")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = ap.parse_args(argv)
    tree = args.tree.resolve()
    if not (tree / "slipway" / "serve").is_dir():
        ap.error(f"{tree} has no slipway/serve")
    column = args.column or ("after" if tree == ROOT else "before")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve_abuse_") as tmp:
        repo = build_repository(Path(tmp) / "repo")
        server = ServerProcess(tree, repo, Path(tmp) / "server.log", args.rss_cap_gb * 1024)
        try:
            server.start()
            print(f"server pid {server.pid} from {tree}: http {server.http}, grpc {server.grpc}", flush=True)
            held = held_bodies(server)
            print(f"(a) {held}", flush=True)
            server.ensure()
            big = big_requests(server, args.timeout)
            slow = slow_headers(server)
            print(f"(c) {slow}", flush=True)
        finally:
            server.stop()
            log_tail = Path(tmp, "server.log").read_text(errors="replace")[-3000:] if Path(tmp, "server.log").exists() else ""
    run = {"tree": str(tree), "tree_commit": tree_commit(tree), "machine": machine(), "versions": versions(),
           "rss_cap_gb": args.rss_cap_gb, "held": held, "big": big, "slow": slow,
           "elapsed_s": time.perf_counter() - t_start, "server_log_tail": log_tail}
    out_json = args.out / f"{NAME}.json"
    data = json.loads(out_json.read_text()) if out_json.exists() else {"runs": {}}
    data["runs"][column] = run
    md = render(data)
    atomic_write_text(out_json, json.dumps(data, indent=2, default=str) + "\n")
    atomic_write_text(args.out / f"{NAME}.md", md)
    print_table(f"serve abuse ({column})", ["measure", column], rows_for(run))
    print(f"wrote {args.out / (NAME + '.md')} and {out_json}")


if __name__ == "__main__":
    main()

