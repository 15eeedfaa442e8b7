"""Instances share one copy of the weights, and running does not grow memory.

Peak memory is read from ``/proc/self/status`` (VmHWM) in a fresh interpreter per measurement,
so one measurement's allocations cannot hide or inflate another's. The child runs with a fixed
glibc mmap threshold: with the default (dynamic) one, some freed 16 MiB weight buffers stay in
the heap at random, and one load's footprint varies by +-64 MiB from run to run.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slipway.backends import Options, get
from tests.backends.test_ort import mlp

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")

ROOT = Path(__file__).resolve().parents[2]
WIDTH, LAYERS = 2048, 8  # 8 MatMul weights of 2048x2048 float32: 128 MiB

CHILD = """
import json, sys
import numpy as np
from slipway.backends import Options, get

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}

path, backend, instances, separate, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
engine = get(backend)
engine.available()  # imports the engine's library before the baseline
base = status()
options = Options(threads=1)
if separate:  # the control: independent loads, each with its own weights
    sessions = [engine.load(path, options)[0] for _ in range(instances)]
else:
    sessions = engine.load(path, options, instances=instances)
x = np.full((1, width), 0.01, np.float32)
sums = [float(s.run({"x": x})["y"].sum()) for s in sessions]
now = status()
print(json.dumps({"base": base["VmHWM"], "peak": now["VmHWM"], "rss": now["VmRSS"], "sums": sums}))
"""


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    nodes, prev = [], "x"
    for i in range(LAYERS):
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Relu", [prev], ["y"]))
    weights = [numpy_helper.from_array(rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * 0.03, f"w{i}")
               for i in range(LAYERS)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", WIDTH])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("big") / "chain.onnx"
    onnx.save(model, path)
    return str(path)


@functools.cache
def measure(path: str, backend: str, instances: int, separate: bool = False) -> dict:
    args = [sys.executable, "-c", CHILD, path, backend, str(instances), "1" if separate else "0", str(WIDTH)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["sums"]) == instances and len(set(result["sums"])) == 1
    return result


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_four_instances_cost_about_one(big_model, backend):
    if get(backend).available():
        pytest.skip(get(backend).available())
    one = measure(big_model, backend, 1)
    four = measure(big_model, backend, 4)
    weights_mib = WIDTH * WIDTH * 4 * LAYERS // 2**20
    assert one["peak"] - one["base"] >= weights_mib  # the weights are really in memory
    assert four["peak"] <= 1.3 * one["peak"], (one, four)
    assert four["peak"] - four["base"] <= 1.3 * (one["peak"] - one["base"]), (one, four)


@pytest.mark.slow
def test_separate_loads_do_not_share(big_model):
    """The control for the test above: four independent sessions hold four copies."""
    one = measure(big_model, "ort", 1)
    four = measure(big_model, "ort", 4, separate=True)
    assert four["peak"] - four["base"] >= 2.5 * (one["peak"] - one["base"]), (one, four)


def rss_mib() -> float:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) / 1024


@pytest.mark.parametrize(("backend", "settings"), [
    ("ort", {}), ("ort", {"io_binding": True}), ("openvino", {}),
])
def test_no_memory_growth_over_many_runs(backend, settings):
    if get(backend).available():
        pytest.skip(get(backend).available())
    (session,) = get(backend).load(mlp(), Options(threads=1, settings=settings))
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1 + i % 4, 16)).astype(np.float32)} for i in range(16)]
    for i in range(1000):  # warm-up: arenas, per-shape plans, allocator pools
        session.run(feeds[i % 16])
    before = rss_mib()
    for i in range(10_000):
        session.run(feeds[i % 16])
    assert rss_mib() - before < 5, f"RSS grew {rss_mib() - before:.1f} MiB over 10,000 runs"
