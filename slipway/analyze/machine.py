"""Measured peaks of this host: FP32 and INT8 matmul throughput, memory bandwidth, CPU features.

The numbers are measured with the engine models run on (onnxruntime on CPU, all intra-op
threads), best of several runs within a few seconds, and cached as JSON under
``$SLIPWAY_CACHE/machine.json`` (default ``~/.cache/slipway/machine.json``), keyed by CPU
model, core count, thread count and onnxruntime version.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from slipway.analyze.types import MachinePeaks
from slipway.backends.ort import ort_session
from slipway.cpus import usable_cpus as cpu_count  # THE CPU rule (affinity and cgroup quota)
from slipway.model import atomic_write_text

# /proc/cpuinfo flags we report (x86 and ARM spellings).
FEATURE_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve",
)
# Each of the two streamed buffers: 4x the last-level cache, within 64..256 MiB.
MIN_STREAM_BYTES, MAX_STREAM_BYTES = 64 * 2**20, 256 * 2**20
_MEMO: dict[str, MachinePeaks] = {}


def cpuinfo_text() -> str:
    """The text of /proc/cpuinfo, or "" where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def parse_features(text: str) -> dict[str, bool]:
    """CPU features from /proc/cpuinfo text ("flags" on x86, "Features" on ARM)."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return {name: name in flags for name in FEATURE_FLAGS}


def cpu_features(text: str | None = None) -> dict[str, bool]:
    """CPU features of this host: /proc/cpuinfo on Linux, sysctl on macOS, all False elsewhere."""
    text = cpuinfo_text() if text is None else text
    if text:
        return parse_features(text)
    feats = dict.fromkeys(FEATURE_FLAGS, False)
    if sys.platform == "darwin":
        keys = {"asimd": "hw.optional.AdvSIMD", "asimddp": "hw.optional.arm.FEAT_DotProd",
                "i8mm": "hw.optional.arm.FEAT_I8MM", "avx2": "hw.optional.avx2_0",
                "avx512f": "hw.optional.avx512f"}
        for name, key in keys.items():
            feats[name] = _sysctl(key) == "1"
    return feats


def _sysctl(key: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def cpu_model(text: str | None = None) -> str:
    """The CPU's marketing name ("model name" in /proc/cpuinfo), or a platform fallback."""
    text = cpuinfo_text() if text is None else text
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("model name", "hardware", "cpu model") and value.strip():
            return value.strip()
    if sys.platform == "darwin":
        name = _sysctl("machdep.cpu.brand_string")
        if name:
            return name
    return platform.processor() or platform.machine() or "unknown"


def default_threads(text: str | None = None) -> int:
    """Intra-op threads onnxruntime uses by default: physical cores (capped by the CPUs we may use)."""
    text = cpuinfo_text() if text is None else text
    cores: set[tuple[str, str]] = set()
    phys = core = None
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():
            if phys is not None and core is not None:
                cores.add((phys, core))
            phys = core = None
    n = len(cores) or cpu_count()
    return max(1, min(n, cpu_count()))


def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache from sysfs (Linux), or None."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def stream_bytes() -> int:
    """Bytes per buffer for the bandwidth probe: 4x the last-level cache, within 64..256 MiB."""
    llc = last_level_cache_bytes() or MAX_STREAM_BYTES
    return max(MIN_STREAM_BYTES, min(MAX_STREAM_BYTES, 4 * llc))


def int8_isa(features: dict[str, bool]) -> tuple[str, bool]:
    """The best INT8 dot-product instruction set the CPU has, and whether it is a native int8 dot product."""
    for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"),
                       ("i8mm", "ARM I8MM"), ("asimddp", "ARM SDOT")):
        if features.get(flag):
            return name, True
    for flag, name in (("avx512bw", "AVX512BW"), ("avx2", "AVX2"), ("asimd", "ARM NEON")):
        if features.get(flag):
            return f"{name} (no int8 dot-product instruction)", False
    return "scalar", False


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    return ort_session(model, threads=threads, inter_threads=1)


def _model(nodes: list, inputs: list, outputs: list, inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "machine_probe", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _best_time(run: Callable[[], None], seconds: float, min_runs: int = 3) -> tuple[float, int]:
    """Best wall time of ``run`` over repeated calls within ``seconds`` (after one warm-up call)."""
    run()
    best = float("inf")
    count = 0
    deadline = time.perf_counter() + seconds
    while count < min_runs or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        count += 1
    return best, count


def _bound_runner(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]):
    """A zero-copy run: inputs and preallocated outputs bound once, so no allocation is timed."""
    binding = sess.io_binding()
    for name, arr in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
    for name, arr in outputs.items():
        binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))
    return lambda: sess.run_with_iobinding(binding)


def matmul_gflops(seconds: float, threads: int, n: int | None = None) -> tuple[float, str]:
    """Achievable FP32 GFLOP/s of onnxruntime's MatMul (n x n times n x n, 2 n^3 FLOPs)."""
    n = n or (1024 if threads <= 8 else 2048)
    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "B")
    model = _model([helper.make_node("MatMul", ["A", "B"], ["Y"])],
                   [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
                   [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, n])], [b])
    sess = _session(model, threads)
    run = _bound_runner(sess, {"A": rng.standard_normal((n, n), dtype=np.float32)},
                        {"Y": np.empty((n, n), np.float32)})
    best, count = _best_time(run, seconds)
    method = f"onnxruntime MatMul fp32 {n}x{n}x{n}, {threads} threads, best of {count}"
    return 2 * n**3 / best / 1e9, method


def matmul_int8_gops(seconds: float, threads: int, n: int | None = None) -> tuple[float, str]:
    """Achievable INT8 GOP/s of onnxruntime's MatMulInteger (uint8 x int8 -> int32, 2 n^3 ops)."""
    n = n or (1024 if threads <= 8 else 2048)
    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "B")
    model = _model([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
                   [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
                   [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])], [b])
    sess = _session(model, threads)
    run = _bound_runner(sess, {"A": rng.integers(0, 256, (n, n), dtype=np.uint8)},
                        {"Y": np.empty((n, n), np.int32)})
    best, count = _best_time(run, seconds)
    method = f"onnxruntime MatMulInteger u8s8 {n}x{n}x{n}, {threads} threads, best of {count}"
    return 2 * n**3 / best / 1e9, method


def bandwidth_gbs(seconds: float, threads: int, nbytes: int | None = None) -> tuple[float, str]:
    """Streaming memory bandwidth: onnxruntime Add(x, scalar) over ``nbytes`` into a second buffer.

    Counts the bytes read plus the bytes written, as the static analysis counts a node's traffic.
    """
    nbytes = nbytes or stream_bytes()
    n = nbytes // 4
    c = numpy_helper.from_array(np.array([1.0], np.float32), "c")
    model = _model([helper.make_node("Add", ["X", "c"], ["Y"])],
                   [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n])],
                   [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n])], [c])
    sess = _session(model, threads)
    run = _bound_runner(sess, {"X": np.ones(n, np.float32)}, {"Y": np.zeros(n, np.float32)})
    best, count = _best_time(run, seconds)
    mib = nbytes // 2**20
    method = f"onnxruntime Add streaming {mib} MiB -> {mib} MiB (read + write bytes), {threads} threads, best of {count}"
    return 2 * n * 4 / best / 1e9, method


def measure(seconds: float = 3.0, threads: int | None = None) -> MachinePeaks:
    """Measure this host's FP32 and INT8 matmul peaks and memory bandwidth in about ``seconds``."""
    threads = threads or default_threads()
    text = cpuinfo_text()
    features = cpu_features(text)
    fp32, fp32_how = matmul_gflops(seconds * 0.4, threads)
    isa, _ = int8_isa(features)
    try:
        int8, int8_how = matmul_int8_gops(seconds * 0.25, threads)
        int8_how += f"; int8 instruction set: {isa}"
    except Exception as e:  # an onnxruntime build without the integer kernel
        int8, int8_how = None, f"not measurable: {str(e).splitlines()[0][:200]}"
    bw, bw_how = bandwidth_gbs(seconds * 0.35, threads)
    return MachinePeaks(
        cpu=cpu_model(text),
        cores=cpu_count(),
        threads=threads,
        features=features,
        fp32_gflops=round(fp32, 2),
        int8_gops=None if int8 is None else round(int8, 2),
        mem_bandwidth_gbs=round(bw, 2),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions={"onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version()},
        methods={"fp32": fp32_how, "int8": int8_how, "bandwidth": bw_how, "int8_isa": isa},
    )


def cache_path() -> Path:
    """Where measured peaks are cached: ``$SLIPWAY_CACHE/machine.json`` or ``~/.cache/slipway/machine.json``."""
    root = os.environ.get("SLIPWAY_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "slipway"
    return base / "machine.json"


def cache_key(threads: int) -> str:
    """Cache key: CPU model, core count, thread count and onnxruntime version."""
    return f"{cpu_model()}|cores={cpu_count()}|threads={threads}|onnxruntime={ort.__version__}"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_dict(d: dict) -> MachinePeaks:
    d = {k: v for k, v in d.items() if k != "ridge_point"}
    return MachinePeaks(**d)


def peaks(refresh: bool = False, threads: int | None = None, seconds: float = 3.0) -> MachinePeaks:
    """This host's peaks: from the cache when measured before with the same key, else measured and cached."""
    threads = threads or default_threads()
    key = cache_key(threads)
    path = cache_path()
    memo_key = f"{path}|{key}"
    if not refresh and memo_key in _MEMO:
        return _MEMO[memo_key]
    data = _read_cache(path)
    if not refresh and isinstance(data.get(key), dict):
        try:
            _MEMO[memo_key] = _from_dict(data[key])
            return _MEMO[memo_key]
        except TypeError:
            pass  # written by an incompatible version: measure again
    result = measure(seconds=seconds, threads=threads)
    data[key] = result.to_dict()
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    _MEMO[memo_key] = result
    return result
