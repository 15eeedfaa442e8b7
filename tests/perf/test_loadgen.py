"""slipway perf (slipway.loadgen) against a real slipway server on loopback: counts that agree with the
server's statistics, open-loop lag counted in the latency, errors reported, one-line bad input."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from slipway.cli import perf as perf_cli
from slipway.errors import UserError
from slipway.loadgen import Settings, parse_range, parse_shape, profile, to_csv
from slipway.loadgen.results import CSV_COLUMNS
from slipway.serve import Server
from slipway.serve.server import free_port
from tests.serve.conftest import build_repository

QUICK = Settings(window_s=0.25, max_trials=4, warmup_s=0.1)
SLEEPY = """
backend: "python"
max_batch_size: 1
input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = build_repository(tmp_path_factory.mktemp("repo"))
    (repo / "sleepy" / "1").mkdir(parents=True)
    (repo / "sleepy" / "1" / "model.py").write_text(
        "import time\n\ndef infer(inputs):\n    time.sleep(0.02)\n    return {'y': inputs['x']}\n")
    (repo / "sleepy" / "config.pbtxt").write_text(SLEEPY)
    s = Server(repo, http_port=0, grpc_port=0, metrics_port=0, threads=1, allow_python_models=True).start_in_thread()
    yield s
    s.stop_thread()


def _url(server, protocol: str) -> str:
    return f"127.0.0.1:{server.http_port if protocol == 'http' else server.grpc_port}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_closed_loop_counts_agree_with_the_server(server, protocol) -> None:
    p = profile(_url(server, protocol), "gemm", protocol=protocol, concurrency=[1, 3], settings=QUICK,
                metrics_url=f"127.0.0.1:{server.metrics_port}")
    assert p.client_sent == p.server_counted  # every request sent, probe and warm-up included, reached the server
    for r in p.rows:
        assert r["requests"] > 20 and r["errors"] == 0
        # the server's count over the reported windows: the client's, give or take the requests in flight
        assert abs(r["server_requests"] - r["requests"]) <= 2 * r["value"] + 0.02 * r["requests"]
        assert r["p50_us"] <= r["p90_us"] <= r["p95_us"] <= r["p99_us"]
        assert r["throughput_rps"] == pytest.approx(r["requests"] / r["seconds"])
        assert 0 < r["server_compute_infer_us"] < r["avg_us"]
        assert r["server_rss_mb"] > 10 and r["server_cpu"] is not None
    lines = list(csv.reader(io.StringIO(to_csv(p.rows))))
    assert lines[0] == ["Concurrency", *CSV_COLUMNS] and [x[0] for x in lines[1:]] == ["1", "3"]


def test_open_loop_latency_counts_from_the_intended_send_time(server) -> None:
    """20 ms a request, one instance, 100 requests/s asked, at most 4 outstanding: sends fall behind the
    schedule, the lag is reported and the latency grows window after window."""
    settings = Settings(window_s=0.4, max_trials=3, warmup_s=0.0, max_inflight=4)
    p = profile(_url(server, "http"), "sleepy", rates=[100], settings=settings)
    (r,) = p.rows
    assert r["mode"] == "request_rate" and r["errors"] == 0
    assert r["throughput_rps"] < 60  # the server's pace, not the schedule's
    assert r["late_share"] > 0.5 and r["lag_mean_ms"] > 20
    means = [np.mean(w.latencies) for w in p.levels[0].windows]
    assert means == sorted(means) and means[-1] > 2 * means[0]
    assert r["p50_us"] > 4 * r["server_compute_infer_us"]  # most of it is the wait to be sent


def test_open_loop_keeps_a_rate_it_can(server) -> None:
    p = profile(_url(server, "grpc"), "gemm", protocol="grpc", rates=[100], settings=QUICK,
                )
    (r,) = p.rows
    assert r["throughput_rps"] == pytest.approx(100, rel=0.2)
    assert r["lag_mean_ms"] < 5


def test_bytes_inputs(server) -> None:
    p = profile(_url(server, "grpc"), "strings", protocol="grpc", concurrency=[1], settings=QUICK, string_length=5)
    assert p.rows[0]["errors"] == 0 and p.rows[0]["requests"] > 0


def test_failures_mid_run_are_counted(tmp_path) -> None:
    repo = build_repository(tmp_path / "repo")
    s = Server(repo, http_port=0, grpc_port=None, metrics_port=None, threads=1, control="explicit",
               models=["gemm"]).start_in_thread()
    try:
        def unload() -> None:
            time.sleep(0.6)
            s.call(s.plane.unload_model("gemm"))

        t = threading.Thread(target=unload)
        t.start()
        settings = Settings(window_s=0.25, max_trials=10, warmup_s=0.1, stability=0.0001)
        p = profile(f"127.0.0.1:{s.http_port}", "gemm", concurrency=[2], settings=settings)
        t.join()
    finally:
        s.stop_thread()
    (r,) = p.rows
    assert r["errors"] > 0 and r["error_messages"]
    assert any("gemm" in m for m in r["error_messages"])
    assert p.levels[0].windows[-1].errors > 0 and not p.levels[0].windows[-1].latencies


def test_bad_input_is_one_line_before_any_load(server, tmp_path) -> None:
    http = _url(server, "http")
    with pytest.raises(UserError, match="cannot reach the server"):
        profile(f"127.0.0.1:{free_port()}", "gemm", concurrency=[1], settings=QUICK)
    with pytest.raises(UserError, match="cannot reach the server"):
        profile(f"127.0.0.1:{free_port()}", "gemm", protocol="grpc", concurrency=[1], settings=QUICK)
    for protocol in ("http", "grpc"):
        with pytest.raises(UserError, match="has no model 'nope'"):
            profile(_url(server, protocol), "nope", protocol=protocol, concurrency=[1], settings=QUICK)
    with pytest.raises(UserError, match="not an input"):
        profile(http, "gemm", concurrency=[1], shapes={"z": [16]}, settings=QUICK)
    with pytest.raises(UserError, match="does not fit input 'x'"):
        profile(http, "gemm", concurrency=[1], shapes={"x": [15]}, settings=QUICK)
    np.savez(tmp_path / "bad.npz", x=np.ones((2, 8), np.float32))
    before = server.plane._version("gemm").stats.success.count
    with pytest.raises(UserError, match="refused the first request"):
        profile(http, "gemm", concurrency=[1], data=tmp_path / "bad.npz", settings=QUICK)
    assert server.plane._version("gemm").stats.success.count == before  # nothing but the probe was sent
    with pytest.raises(UserError, match="START"):
        parse_range("4:2", "--concurrency-range", True)
    with pytest.raises(UserError, match="bad --shape"):
        parse_shape(["x"])


def test_ranges_and_shapes() -> None:
    assert parse_range("1:4:2", "c", True) == [1, 3]
    assert parse_range("2", "c", True) == [2]
    assert parse_range("50:100:25", "r", False) == [50.0, 75.0, 100.0]
    assert parse_shape(["x:3,224,224", "y=2"]) == {"x": [3, 224, 224], "y": [2]}


def test_data_files(server, tmp_path) -> None:
    http = _url(server, "http")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32))
    p = profile(http, "gemm", concurrency=[1], data=tmp_path / "x.npz", batch=2, settings=QUICK)
    assert p.rows[0]["errors"] == 0 and p.rows[0]["inferences_per_s"] == pytest.approx(2 * p.rows[0]["throughput_rps"])
    (tmp_path / "s.json").write_text(json.dumps({"data": [{"text": ["a", "bc", "d"]}, {"text": ["x", "y", "z"]}]}))
    p = profile(http, "strings", concurrency=[1], data=tmp_path / "s.json", settings=QUICK)
    assert p.rows[0]["errors"] == 0


def _invoke(*args: object):
    app = typer.Typer()
    app.callback()(lambda: None)
    perf_cli.register(app)
    return CliRunner().invoke(app, ["perf", *map(str, args)])


def test_cli_csv_and_json(server, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    r = _invoke("-m", "gemm", "-u", _url(server, "grpc"), "-i", "grpc", "--concurrency-range", "1:2",
                "-p", 250, "-r", 3, "--warmup", 0.1, "-f", out, "--json", "--report", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["model"] == "gemm" and [lv["value"] for lv in data["levels"]] == [1, 2]
    assert out.read_text().splitlines()[0].startswith("Concurrency,Inferences/Second,Client Send,")
    html = (tmp_path / "r.html").read_text()
    assert "Throughput vs latency" in html and html.count('class="compute_infer"') >= 3  # a bar per level + legend
    r = _invoke("-m", "gemm", "-u", _url(server, "http"), "--measurement-mode", "count_windows",
                "--measurement-request-count", 30, "-r", 3, "--warmup", 0)
    assert r.exit_code == 0, r.output
    assert "p50" in r.stdout and "infer/s" in r.stdout
    r = _invoke("-m", "nope", "-u", _url(server, "http"))
    assert isinstance(r.exception, UserError) and "no model 'nope'" in str(r.exception)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_breakdown_per_composing_model(tmp_path, protocol) -> None:
    from tests.serve.test_ensemble import build

    with Server(build(tmp_path / "repo"), http_port=0, grpc_port=0, metrics_port=None, threads=1) as s:
        p = profile(_url(s, protocol), "chain", protocol=protocol, concurrency=[2], settings=QUICK)
    (r,) = p.rows
    assert p.model.platform == "ensemble" and set(p.model.steps) == {"add_sub", "gemm"}
    assert r["errors"] == 0 and set(r["composing"]) == {"add_sub", "gemm"}
    assert r["composing"]["add_sub"]["success"] >= r["requests"] - 4
    assert r["server_compute_infer_us"] > 0 and r["server_queue_us"] > 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shared_memory_system(server, protocol) -> None:
    """``--shared-memory system``: a region pair per concurrent slot, registered for the run and gone after
    it (also after a run that fails); counts agree with the server's as without shared memory."""
    import os

    mine = f"slipway_perf_{os.getpid()}_"
    r = _invoke("-m", "add_sub", "-u", _url(server, protocol), "-i", protocol, "--shared-memory", "system",
                "--concurrency-range", 3, "-p", 250, "-r", 3, "--warmup", 0.1, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    (level,) = data["levels"]
    assert level["requests"] > 20 and level["errors"] == 0
    assert data["client_sent"] == data["server_counted"]
    status = f"http://{_url(server, 'http')}/v2/systemsharedmemory/status"
    with urllib.request.urlopen(status, timeout=10) as answer:
        assert json.loads(answer.read()) == []
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(mine)]
    # a BYTES output cannot fit 4 bytes: the probe fails, the regions are cleaned up all the same
    with pytest.raises(UserError, match="shared memory byte size 4 is too small"):
        profile(_url(server, protocol), "strings", protocol=protocol, concurrency=[2], settings=QUICK,
                shared_memory="system", output_shm_size=4)
    with urllib.request.urlopen(status, timeout=10) as answer:
        assert json.loads(answer.read()) == []
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(mine)]


def _kserve_subset_server(tokens: list[str | None]):
    """A v2 server with only metadata and JSON inference (MLServer's subset: no config, no statistics extension)
    that records each request's access-token header."""
    from aiohttp import web

    async def metadata(request):
        tokens.append(request.headers.get("x-token"))
        return web.json_response({"name": "m", "platform": "", "inputs": [{"name": "x", "datatype": "FP32",
                                  "shape": [-1, 3]}], "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]})

    async def infer(request):
        body = await request.json()
        x = body["inputs"][0]
        return web.json_response({"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32",
                                  "shape": x["shape"], "data": [2 * v for v in x["data"]]}]})

    async def missing(request):
        return web.json_response({"detail": "Not Found"}, status=404)

    app = web.Application()
    app.router.add_get("/v2/models/m", metadata)
    app.router.add_post("/v2/models/m/infer", infer)
    app.router.add_get("/v2/models/m/config", missing)
    app.router.add_get("/v2/models/m/stats", missing)
    return app


def test_a_server_without_config_and_statistics_is_measured_with_notes():
    """MLServer offers neither Triton's model configuration nor its statistics extension: perf measures anyway
    (batching assumed from the metadata's leading -1), says what it could not read, and sends -H headers."""
    import asyncio

    from aiohttp import web

    tokens: list[str | None] = []
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_kserve_subset_server(tokens))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        result = profile(f"127.0.0.1:{port}", "m", protocol="http", concurrency=[2], binary=False, batch=2,
                         settings=Settings(window_s=0.2, stability=0.5, max_trials=3, warmup_s=0.05),
                         headers={"x-token": "secret"})
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    row = result.rows[0]
    assert row["requests"] > 0 and row["errors"] == 0 and "server_queue_us" not in row
    assert result.model.max_batch_size > 0 and result.server_counted is None
    assert any("no model config" in n and "batching assumed" in n for n in result.notes)
    assert any(n.startswith("no server statistics") and "404" in n for n in result.notes)
    assert tokens and set(tokens) == {"secret"}


# -- --validate: replies decoded and checked against the expected outputs -----------------------------------


def _gemm_pool(tmp_path: Path, name: str, shift: float = 0.0, prefix: str = "in:") -> Path:
    """An .npz in bench/serve.py's form: inputs ``in:x`` (or ``x``), expected outputs ``out:y`` (+ ``shift``)."""
    from tests.serve.conftest import B, W

    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    path = tmp_path / name
    np.savez(path, **{prefix + "x": x, "out:y": x @ W + B + shift})
    return path


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_validate_passes_on_a_correct_server(server, tmp_path, protocol) -> None:
    pool = _gemm_pool(tmp_path, "pool.npz")
    p = profile(_url(server, protocol), "gemm", protocol=protocol, concurrency=[2], settings=QUICK, data=pool,
                validate=True)
    (r,) = p.rows
    assert p.validated and p.probe_error is None
    assert r["requests"] > 20 and r["errors"] == 0 and r["wrong"] == 0
    assert 0 < r["client_recv_us"] < r["avg_us"]  # the decode is timed, and part of the latency
    # JSON tensors over HTTP (MLServer's form) decode too; a plain NAME input array works as in:NAME does
    if protocol == "http":
        p = profile(_url(server, protocol), "gemm", concurrency=[1], settings=QUICK, binary=False, batch=2,
                    data=_gemm_pool(tmp_path, "plain.npz", prefix=""), validate=True)
        assert p.rows[0]["requests"] > 0 and p.rows[0]["errors"] == 0 and p.rows[0]["client_recv_us"] > 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_validate_catches_a_wrong_model(server, tmp_path, protocol) -> None:
    """A model whose outputs differ from the expected ones: every reply is a "wrong output" error, counted once
    each, none of them in the latencies; the server counted them as successes."""
    pool = _gemm_pool(tmp_path, "off.npz", shift=0.5)
    settings = Settings(window_s=0.3, max_trials=3, warmup_s=0.05)
    p = profile(_url(server, protocol), "gemm", protocol=protocol, concurrency=[2], settings=settings, data=pool,
                validate=True)
    (r,) = p.rows
    (w,) = p.levels[0].windows  # every request now fails: nothing more to learn at this level
    assert "differs" in p.probe_error and p.probe_error.startswith("wrong output: ")
    assert r["wrong"] == r["errors"] == w.finished == w.wrong > 10
    assert r["requests"] == 0 and r["p50_us"] is None and not w.latencies
    assert all(m.startswith("wrong output: output 'y' differs at 16 of 16 elements") for m in r["error_messages"])
    assert 1 <= len(r["error_messages"]) <= 3 and r["server_failures"] == 0


def test_validate_counts_only_the_wrong_replies(server, tmp_path) -> None:
    """One pool entry of four expected wrong; one client per entry (concurrency 4 cycles entry k on client k):
    exactly that client's replies are wrong."""
    pool = _gemm_pool(tmp_path, "one.npz")
    with np.load(pool) as f:
        arrays = dict(f)
    arrays["out:y"][2, 5] += 1.0
    np.savez(pool, **arrays)
    p = profile(_url(server, "grpc"), "gemm", protocol="grpc", concurrency=[4], settings=QUICK, data=pool,
                validate=True)
    (r,) = p.rows
    finished = sum(w.finished for w in p.levels[0].windows)
    assert 0 < r["wrong"] == r["errors"] and abs(r["wrong"] - finished / 4) <= 4 + 0.1 * finished / 4
    (message,) = r["error_messages"]  # the same message every time
    assert message.startswith("wrong output: output 'y' differs at 1 of 16 elements (max abs difference 1; first at 5:")


def test_validate_with_json_validation_data(server, tmp_path) -> None:
    from tests.serve.conftest import B, W

    x = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    doc = {"data": [{"x": row.tolist()} for row in x],
           "validation_data": [{"y": {"content": (row @ W + B).tolist(), "shape": [16]}} for row in x]}
    (tmp_path / "v.json").write_text(json.dumps(doc))
    p = profile(_url(server, "grpc"), "gemm", protocol="grpc", concurrency=[1], settings=QUICK,
                data=tmp_path / "v.json", validate=True)
    assert p.rows[0]["requests"] > 0 and p.rows[0]["errors"] == 0
    strings = {"data": [{"text": ["a", "bc", "d"]}], "validation_data": [{"same": ["a", "bc", "d"]}]}
    (tmp_path / "s.json").write_text(json.dumps(strings))
    p = profile(_url(server, "http"), "strings", concurrency=[1], settings=QUICK, data=tmp_path / "s.json",
                validate=True)
    assert p.rows[0]["requests"] > 0 and p.rows[0]["errors"] == 0
    strings["validation_data"] = [{"same": ["a", "bc", "e"]}]
    (tmp_path / "s.json").write_text(json.dumps(strings))
    p = profile(_url(server, "grpc"), "strings", protocol="grpc", concurrency=[1], settings=QUICK,
                data=tmp_path / "s.json", validate=True)
    assert p.rows[0]["wrong"] > 0 and "differs at 1 of 3 elements (first at 2: got b'd', expected b'e')" in p.probe_error
    with pytest.raises(UserError, match="validation_data"):
        doc.pop("validation_data")
        (tmp_path / "v.json").write_text(json.dumps(doc))
        profile(_url(server, "http"), "gemm", concurrency=[1], settings=QUICK, data=tmp_path / "v.json", validate=True)
    with pytest.raises(UserError, match="needs --input-data"):
        profile(_url(server, "http"), "gemm", concurrency=[1], settings=QUICK, validate=True)
    np.savez(tmp_path / "bad.npz", x=x, **{"out:z": x})
    with pytest.raises(UserError, match="'z' is not an output"):
        profile(_url(server, "http"), "gemm", concurrency=[1], settings=QUICK, data=tmp_path / "bad.npz", validate=True)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_validate_with_shared_memory_reads_the_output_regions(server, tmp_path, protocol) -> None:
    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal((6, 16)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "ok.npz", INPUT0=a, INPUT1=b, **{"out:OUTPUT0": a + b, "out:OUTPUT1": a - b})
    np.savez(tmp_path / "swapped.npz", INPUT0=a, INPUT1=b, **{"out:OUTPUT0": a - b, "out:OUTPUT1": a + b})
    ok = profile(_url(server, protocol), "add_sub", protocol=protocol, concurrency=[3], settings=QUICK,
                 data=tmp_path / "ok.npz", shared_memory="system", validate=True)
    assert ok.rows[0]["requests"] > 20 and ok.rows[0]["errors"] == 0 and ok.rows[0]["client_recv_us"] > 0
    swapped = profile(_url(server, protocol), "add_sub", protocol=protocol, concurrency=[3], settings=QUICK,
                      data=tmp_path / "swapped.npz", shared_memory="system", validate=True)
    assert swapped.rows[0]["wrong"] == swapped.rows[0]["errors"] > 0
    assert "output 'OUTPUT0' differs" in swapped.probe_error


def test_cli_validate_fills_the_client_recv_column(server, tmp_path) -> None:
    pool = _gemm_pool(tmp_path, "pool.npz")
    for validate in (True, False):
        out = tmp_path / f"{validate}.csv"
        args = ["-m", "gemm", "-u", _url(server, "grpc"), "-i", "grpc", "--concurrency-range", 2, "-p", 250, "-r", 3,
                "--warmup", 0.1, "--input-data", pool, "-f", out, "--json", "--latencies-file", tmp_path / "lat.npz"]
        r = _invoke(*args, *(["--validate", "--rtol", 1e-4, "--atol", 1e-5] if validate else []))
        assert r.exit_code == 0, r.output
        (level,) = json.loads(r.stdout)["levels"]
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert (int(rows[0]["Client Recv"]) > 0) == validate and (level["client_recv_us"] > 0) == validate
        assert level["errors"] == 0 and int(rows[0]["Client Send"]) == 0
        with np.load(tmp_path / "lat.npz") as f:
            assert f["concurrency=2"].size == level["requests"]
