"""``slipway compare``: in-process through typer's runner, and twice as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from slipway.cli.compare import register
from slipway.errors import UserError
from tests.compare import util

# Runs the real entry point, registering the command first if cli/__init__ does not yet.
BOOT = (
    "import sys, slipway.cli as c\n"
    "from slipway.cli import compare as m\n"
    "orig = c._register\n"
    "def reg():\n"
    "    orig()\n"
    "    if not any(i.name == 'compare' for i in c.app.registered_commands):\n"
    "        m.register(c.app)\n"
    "c._register = reg\n"
    "c.main(sys.argv[1:])\n"
)
LAYER_KEYS = {"name", "max_abs", "max_rel", "cosine", "snr_db"}


def subprocess_slipway(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-c", BOOT, "compare", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=Path(__file__).resolve().parents[2])


def slipway(*args: object):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    register(app)
    return CliRunner(env={"COLUMNS": "160"}).invoke(app, ["compare", *map(str, args)])


@pytest.fixture
def models(tmp_path) -> tuple[Path, Path]:
    return util.save(util.chain(), tmp_path / "a.onnx"), util.save(util.perturbed("W2"), tmp_path / "b.onnx")


def test_json_names_the_first_divergent_node(models, tmp_path):
    np.savez(tmp_path / "in.npz", x=np.ones(util.SHAPE, np.float32))
    r = subprocess_slipway(*models, "--json", "--inputs", tmp_path / "in.npz")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)  # nothing but JSON on stdout
    assert d["first_divergent_node"]["name"] == "conv2" and d["first_divergent_node"]["op_type"] == "Conv"
    assert d["first_divergent_node"]["tensor"] == "c2"
    assert [x["name"] for x in d["layers"]] == ["c1", "r1", "c2", "r2", "y"]
    assert all(LAYER_KEYS <= set(x) for x in d["layers"])
    assert d["layers"][0]["snr_db"] == "inf" and d["unmatched"] == {"a": [], "b": []}
    assert d["inputs"] == {"x": [1, 3, 8, 8]} and d["diverged"] is True


def test_bad_input_is_one_line_and_exit_code_1(models):
    r = subprocess_slipway(models[0], models[0], "--dim", "seq")
    assert r.returncode == 1
    assert r.stderr.startswith("error: bad --dim 'seq'") and r.stderr.count("\n") == 1, r.stderr


def test_identical_json_has_null_divergence_and_fail_exit_code(models):
    a, b = models
    r = slipway(a, a, "--json", "--batch", "2", "--fail")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["first_divergent_node"] is None and d["inputs"] == {"x": [2, 3, 8, 8]}
    r = slipway(a, b, "--fail")  # diverged: exit code 2, table on stdout
    assert r.exit_code == 2, r.output
    assert "first divergent node: conv2 (Conv)" in r.stdout and "DIVERGES" in r.stdout


def test_table_shows_top_layers_unless_all(models):
    r = slipway(*models, "--top", "2")
    assert r.exit_code == 0, r.output
    assert "2 of 5 matched tensors" in r.stdout and "final outputs" in r.stdout
    r = slipway(*models, "--all")
    assert "5 of 5 matched tensors" in r.stdout


def test_one_model_under_two_option_sets(models):
    a, _ = models
    r = slipway(a, "--set-a", "graph_optimization_level=disabled", "--set-b", "graph_optimization_level=all", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["first_divergent_node"] is None and "graph_optimization_level=all" in d["b"]
    assert "graph_optimization_level=disabled" in d["a"]


@pytest.mark.parametrize("args, message", [
    (["missing.onnx"], "model file not found"),
    (["{a}"], "nothing to compare"),
    (["{a}", "{a}", "--inputs", "nope.npz"], "inputs file not found"),
    (["{a}", "--set-b", "graph_optimization_level"], "bad --set-b"),
    (["{a}", "--set-b", "no_such_setting=1"], "no_such_setting"),
    (["{a}", "{a}", "--dim", "seq=0"], "bad --dim"),
    (["{a}", "{a}", "--top", "0"], "--top"),
])
def test_bad_input_is_a_user_error(models, args, message):
    r = slipway(*[x.format(a=models[0]) for x in args])
    assert isinstance(r.exception, UserError), r.output
    assert message in str(r.exception) and "\n" not in str(r.exception)


def test_bisect_mode_runs_the_optimize_passes(tmp_path):
    import subprocess
    import sys

    from tests.zoo import export

    r = subprocess.run([sys.executable, "-m", "slipway", "compare", str(export("repvgg")), "--bisect", "--json",
                        "--passes", "fuse-batchnorm,merge-repvgg,remove-dead"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = __import__("json").loads(r.stdout)
    assert data["culprit"] is None
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["merge-repvgg"]["modified"] and steps["merge-repvgg"]["ok"]
    r = subprocess.run([sys.executable, "-m", "slipway", "compare", str(export("repvgg")), str(export("repvgg")),
                        "--bisect"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--bisect takes one model" in r.stderr
