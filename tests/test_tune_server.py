"""slipway tune --server: a configuration search against a real `slipway serve`, each point measured with slipway perf."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slipway.cli import main
from slipway.errors import UserError
from slipway.loadgen import Settings
from slipway.serve.repository import Repository
from slipway.servertune import Point, candidate, tune_server
from tests.serve.conftest import _save, gemm_model

FAST = Settings(window_s=0.25, stability=0.5, max_trials=3, warmup_s=0.1)
CONFIG = "max_batch_size: 16\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _save(gemm_model(), tmp_path / "repo" / "gemm" / "1" / "model.onnx")
    (tmp_path / "repo" / "gemm" / "config.pbtxt").write_text(CONFIG)
    return tmp_path / "repo"


def test_candidate_keeps_the_client_limit_and_replaces_the_serving_settings():
    base = {"name": "m", "max_batch_size": 16, "instance_group": [{"count": 3, "kind": "KIND_CPU"}],
            "parameters": {"threads": {"string_value": "4"}, "precision": {"string_value": "fp32"}},
            "dynamic_batching": {"max_queue_delay_microseconds": 50}}
    got = candidate(base, Point(2, 1, 8, 500, "x"))
    assert got["max_batch_size"] == 16
    assert got["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert got["parameters"] == {"precision": {"string_value": "fp32"}, "intra_op_thread_count": {"string_value": "1"}}
    assert got["dynamic_batching"] == {"max_queue_delay_microseconds": 500, "preferred_batch_size": [8]}
    assert "dynamic_batching" not in candidate(base, Point(1, 2, 0, 0, "x"))
    assert base["instance_group"][0]["count"] == 3  # the base is not changed


def test_search_measures_writes_the_winner_and_a_report(repo: Path, tmp_path: Path):
    folder = repo / "gemm"
    result = tune_server(folder, protocol="grpc", concurrency=4, instances=[1, 2], threads=[1], delays_us=[200],
                         batch_limit=4, settings=FAST, report=tmp_path / "tune.html")
    stages = [p.stage for p in result.points]
    assert stages[0] == "baseline" and "instances" in stages and "batch" in stages and stages[-1] == "confirm"
    measured = [p for p in result.points if p.throughput]
    assert len(measured) == len(result.points)  # every point finished requests, none failed
    assert all(p.errors == 0 and p.feasible and p.p99_ms >= p.p50_ms > 0 for p in measured)
    assert {p.instances for p in result.points if p.stage == "instances"} == {1, 2}
    assert all(p.max_batch <= 4 for p in result.points if p.stage != "baseline")
    confirmed = [p for p in result.points if p.stage == "confirm"]
    best = max(confirmed[1:], key=lambda p: p.throughput, default=None)
    if best is not None and best.throughput > confirmed[0].throughput * 1.02:
        assert result.winner is best and result.path == folder / "config.pbtxt"
        assert (folder / "config.pbtxt.bak").read_text() == CONFIG
        config = Repository(repo).config("gemm")
        assert config.max_batch_size == 16  # what clients may send is unchanged
        assert config.instance_group[0].count == best.instances
        if best.max_batch:
            assert list(config.dynamic_batching.preferred_batch_size) == [best.max_batch]
        assert config.parameters["intra_op_thread_count"].string_value == str(best.threads)
    else:
        assert result.winner is confirmed[0] and result.path is None
        assert (folder / "config.pbtxt").read_text() == CONFIG
    html = (tmp_path / "tune.html").read_text()
    assert result.winner.describe() in html and "<svg" in html and html.count("<tr") > len(result.points)


def test_an_unreachable_latency_limit_is_one_line_and_writes_nothing(repo: Path):
    with pytest.raises(UserError, match=r"gemm: no configuration met the limit \(p99 <= 0.001 ms"):
        tune_server(repo / "gemm", protocol="http", concurrency=2, max_p99_ms=0.001, instances=[1], threads=[1],
                    delays_us=[], batch_limit=2, settings=FAST, write=True)
    assert (repo / "gemm" / "config.pbtxt").read_text() == CONFIG
    assert not (repo / "gemm" / "config.pbtxt.bak").exists()


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "nowhere: not a model folder of a repository"),
    (["REPO", "--protocol", "tcp"], "unknown protocol 'tcp'"),
    (["REPO/gemm", "--protocol", "tcp"], "unknown protocol 'tcp'"),
    (["REPO/gemm", "--max-p99-ms", "-1"], "--max-p99-ms must be more than 0"),
    (["REPO/gemm", "--instances", "0"], "--instances values must be at least 1"),
    (["REPO/gemm", "--instances", "a,b"], "bad --instances 'a,b'"),
])
def test_bad_input_is_one_line(repo: Path, tmp_path: Path, capsys, args, message):
    args = [a.replace("REPO", str(repo)) for a in args]
    if args[0] == "nowhere":
        args[0] = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as e:
        main(["tune", *args, "--server"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_model_that_does_not_load_names_the_server_log_line(tmp_path: Path):
    folder = tmp_path / "repo" / "broken"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="slipway serve"):
        tune_server(folder, settings=FAST)
    shutil.rmtree(tmp_path / "repo")
