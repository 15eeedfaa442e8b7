"""Start, wait for and stop the servers that bench/serve.py compares: slipway, MLServer, Triton (PyTriton).

Every server runs as a subprocess in its own session (so stopping it stops its children too, e.g.
PyTriton's tritonserver and Python-backend stubs), bound to 127.0.0.1 on free ports, with the same
models, the same layout (``Budget.instances`` model instances of ``Budget.threads`` onnxruntime
intra-op threads each; MLServer always gets one instance) and a dynamic batcher of the same maximum
batch size. ``Launch.start`` returns a reason string instead of raising when a peer is
not installed or does not come up, so the bench can report "not available: <reason>".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slipway.serve import free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENVS = ROOT / "bench" / ".venvs"
# PyTriton protects Triton's statistics endpoint with an access token; the bench fixes it so that `slipway perf`
# can read the server-side breakdown (-H triton-access-token:TOKEN over HTTP, its gRPC metadata form over gRPC)
TRITON_TOKEN = "slipway-bench"
SETUP_HINT = "run bash bench/serve_peers/setup.sh"

TYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
         "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}


@dataclass
class ModelSpec:
    """A model as every server gets it: name, ONNX file, inputs/outputs (name, numpy dtype name, dims w/o batch)."""

    name: str
    path: Path
    inputs: list[tuple[str, str, list[int]]]
    outputs: list[tuple[str, str, list[int]]]


@dataclass
class Budget:
    """What every server is given alike."""

    threads: int = 2              # onnxruntime intra-op threads per instance (inter-op 1, sequential execution)
    instances: int = 1            # model instances (instance_group count); slipway's share one InferenceSession
    max_batch_size: int = 32
    queue_delay_us: int = 0       # Triton / slipway dynamic_batching max_queue_delay_microseconds
    mlserver_batch_time_s: float = 0.001  # MLServer adaptive batching needs max_batch_time > 0

    @property
    def layout(self) -> str:
        """instances x threads, e.g. "2x1"."""
        return f"{self.instances}x{self.threads}"



def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of one process, from /proc/PID/status; {} when it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def descendants(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/stat parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += parents.get(p, [])
    return found


@dataclass
class Launch:
    """One running server: its name, process, ports and log file; ``layout`` is its Budget's."""

    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    http_port: int = 0
    grpc_port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None
    workdir: Path | None = None
    layout: str = ""

    @property
    def key(self) -> str:
        """name and layout, e.g. "slipway 2x1"."""
        return f"{self.name} {self.layout}"

    def start(self, models: list[ModelSpec], timeout_s: float = 180.0) -> str:
        """Start and wait until the server and every model are ready; '' on success, else why not."""
        self.log = self.workdir / f"{self.name}.log"
        env = {**os.environ, **self.env}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.workdir, start_new_session=True)
        why = self.wait_ready([m.name for m in models], timeout_s)
        if why:
            tail = self.tail()
            self.stop()
            return f"{why}; log tail: {tail}"
        return ""

    def wait_ready(self, models: list[str], timeout_s: float) -> str:
        import tritonclient.http as http

        client = http.InferenceServerClient(f"127.0.0.1:{self.http_port}", connection_timeout=2.0,
                                            network_timeout=5.0)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return f"{self.name} exited with code {self.proc.returncode} before it was ready"
                try:
                    if client.is_server_ready() and all(client.is_model_ready(m) for m in models):
                        return ""
                except Exception:  # not listening yet
                    pass
                time.sleep(0.5)
        finally:
            client.close()
        return f"{self.name} not ready after {timeout_s:.0f} s"

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " / ".join(line.strip() for line in text[-lines:])[-2000:]

    def rss(self) -> dict[str, int]:
        """Server process VmRSS/VmHWM (KiB) plus the RSS of its whole process tree (tree_VmRSS)."""
        if self.proc is None or self.proc.poll() is not None:
            return {}
        main = rss_kib(self.proc.pid)
        main["tree_VmRSS"] = sum(rss_kib(p).get("VmRSS", 0) for p in descendants(self.proc.pid))
        return main

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # children left in the group (the session leader may exit first)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -----------------------------------------------------------------------------------------------
# per-server setup


def triton_config(m: ModelSpec, b: Budget) -> str:
    def io(entries):
        return ", ".join(f'{{ name: "{n}" data_type: {TYPES[t]} dims: [{", ".join(map(str, d))}] }}'
                         for n, t, d in entries)

    return (f'name: "{m.name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {b.max_batch_size}\n'
            f"input [ {io(m.inputs)} ]\noutput [ {io(m.outputs)} ]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {b.queue_delay_us} }}\n"
            f"instance_group [ {{ count: {b.instances} kind: KIND_CPU }} ]\n"
            f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{b.threads}" }} }}\n'
            'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }\n')


def slipway(models: list[ModelSpec], b: Budget, workdir: Path) -> Launch | str:
    python = ROOT / ".venv" / "bin" / "python"
    probe = subprocess.run([str(python), "-m", "slipway", "serve", "--help"], capture_output=True, text=True,
                           cwd=ROOT)
    if probe.returncode != 0:
        return "`slipway serve` is not available in .venv"
    repo = workdir / "slipway-repo"
    for m in models:
        (repo / m.name / "1").mkdir(parents=True, exist_ok=True)
        (repo / m.name / "config.pbtxt").write_text(triton_config(m, b))
        shutil.copyfile(m.path, repo / m.name / "1" / "model.onnx")
    http, grpc = free_port(), free_port()
    cmd = [str(python), "-m", "slipway", "serve", str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", "0"]
    return Launch("slipway", cmd, {"PYTHONPATH": str(ROOT)}, http, grpc, workdir=workdir)


def mlserver(models: list[ModelSpec], b: Budget, workdir: Path) -> Launch | str:
    exe = VENVS / "mlserver" / "bin" / "mlserver"
    if b.instances != 1:
        return f"MLServer has no in-process model instances (layout {b.layout}); give it 1 instance"
    if not exe.exists():
        return f"bench/.venvs/mlserver is missing ({SETUP_HINT})"
    root = workdir / "mlserver"
    http, grpc = free_port(), free_port()
    settings = {"host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": free_port(),
                "parallel_workers": 0, "debug": False, "load_models_at_startup": True}
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for m in models:
        (root / m.name).mkdir(exist_ok=True)
        model = {"name": m.name, "implementation": "mlserver_runtime.OnnxModel",
                 "max_batch_size": b.max_batch_size, "max_batch_time": b.mlserver_batch_time_s,
                 "parameters": {"uri": str(m.path), "extra": {"intra_op_threads": b.threads}},
                 # declared so that a client reading the metadata (slipway perf) knows the tensors
                 "inputs": [_mlserver_tensor(t) for t in m.inputs], "outputs": [_mlserver_tensor(t) for t in m.outputs]}
        (root / m.name / "model-settings.json").write_text(json.dumps(model, indent=2))
    return Launch("mlserver", [str(exe), "start", str(root)], {"PYTHONPATH": str(HERE)}, http, grpc,
                  workdir=workdir)


def _mlserver_tensor(t: tuple[str, str, list[int]]) -> dict[str, Any]:
    name, dtype, dims = t
    return {"name": name, "datatype": {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32"}[dtype],
            "shape": [-1, *dims]}


def venv_home_lib(venv: Path) -> str:
    """The lib folder of the interpreter a venv was made from (holds libpython for Triton's Python backend)."""
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return str(Path(value.strip()).parent / "lib")
    return ""


def pytriton(models: list[ModelSpec], b: Budget, workdir: Path) -> Launch | str:
    venv = VENVS / "pytriton"
    if not (venv / "bin" / "python").exists():
        return f"bench/.venvs/pytriton is missing ({SETUP_HINT})"
    http, grpc = free_port(), free_port()
    cmd = [str(venv / "bin" / "python"), str(HERE / "pytriton_server.py"), "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(free_port()), "--threads", str(b.threads),
           "--instances", str(b.instances),
           "--max-batch-size", str(b.max_batch_size), "--queue-delay-us", str(b.queue_delay_us)]
    for m in models:
        cmd += ["--model", f"{m.name}={m.path}"]
    lib = venv_home_lib(venv)
    env = {"LD_LIBRARY_PATH": ":".join(p for p in (lib, os.environ.get("LD_LIBRARY_PATH", "")) if p),
           "PYTHONPATH": "", "PYTRITON_ACCESS_TOKEN": TRITON_TOKEN}
    return Launch("triton", cmd, env, http, grpc, workdir=workdir)


SERVERS = {"slipway": slipway, "mlserver": mlserver, "triton": pytriton}


def start(name: str, models: list[ModelSpec], budget: Budget, workdir: Path) -> Launch | str:
    """A started, ready server, or the reason it is not available; ``workdir`` is its own (created here)."""
    workdir.mkdir(parents=True, exist_ok=True)
    made = SERVERS[name](models, budget, workdir)
    if isinstance(made, str):
        return made
    made.layout = budget.layout
    why = made.start(models)
    return f"{name} failed to start: {why}" if why else made


if __name__ == "__main__":  # smoke test: python -m bench.serve_peers.launch NAME MODEL.onnx
    import onnxruntime as ort

    sess = ort.InferenceSession(sys.argv[2])

    def sig(args):
        return [(a.name, "float32", [int(d) for d in a.shape[1:]]) for a in args]

    spec = ModelSpec("m", Path(sys.argv[2]).resolve(), sig(sess.get_inputs()), sig(sess.get_outputs()))
    with tempfile.TemporaryDirectory() as d:
        got = start(sys.argv[1], [spec], Budget(), Path(d))
        print(got if isinstance(got, str) else f"ready: http {got.http_port} grpc {got.grpc_port} rss {got.rss()}")
        if not isinstance(got, str):
            got.stop()
