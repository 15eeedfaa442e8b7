"""The Ray path's pieces that need no cluster: file shipping and its hash check, deployment options from
config.pbtxt and the CLI, the CLI's refusals, statistics summed over replicas."""

from __future__ import annotations

import itertools

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from slipway.errors import UserError
from slipway.rayserve.deploy import Scale, model_options
from slipway.rayserve.files import closure, ship, unpack
from slipway.serve.repository import Repository
from slipway.serve.stats import ModelStats


class Store:
    """ray.put / ray.get over a dict."""

    def __init__(self) -> None:
        self.objects: dict[int, bytes] = {}
        self._ids = itertools.count()

    def put(self, data: bytes) -> int:
        ref = next(self._ids)
        self.objects[ref] = data
        return ref

    def get(self, ref: int) -> bytes:
        return self.objects[ref]


def test_shipped_files_arrive_whole_and_a_changed_byte_is_refused(ray_repo, tmp_path):
    repo = Repository(ray_repo)
    store = Store()
    shipped = ship(repo, "gemm", store.put)
    assert [rel for rel, _, _ in shipped.files] == ["1/model.onnx", "config.pbtxt"]
    unpack([shipped], tmp_path / "a", store.get)
    for rel, _, _ in shipped.files:
        assert (tmp_path / "a" / "gemm" / rel).read_bytes() == (ray_repo / "gemm" / rel).read_bytes()
    ref = shipped.files[0][2]
    store.objects[ref] = store.objects[ref][:-1] + bytes([store.objects[ref][-1] ^ 1])
    with pytest.raises(UserError, match=r"model gemm: file 1/model.onnx does not match the repository's"):
        unpack([shipped], tmp_path / "b", store.get)
    assert not (tmp_path / "b" / "gemm" / "1" / "model.onnx").exists()
    assert ship(repo, "gemm", store.put).digest == shipped.digest  # the same files, the same digest


def test_an_ensemble_ships_with_the_models_it_calls(tmp_path):
    from tests.serve.conftest import build_repository

    root = build_repository(tmp_path / "repo")
    (root / "ens").mkdir()
    (root / "ens" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 8\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [16] }]\noutput [{ name: "z" data_type: TYPE_FP32 dims: [16] }]\n'
        'ensemble_scheduling { step [{ model_name: "gemm" model_version: -1 input_map { key: "x" value: "x" } '
        'output_map { key: "y" value: "z" } }] }\n')
    assert closure(Repository(root), "ens") == ["ens", "gemm"]
    assert closure(Repository(root), "gemm") == ["gemm"]


def _config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def _param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


def test_replicas_come_from_the_config_over_the_cli():
    plain = model_options("m", _config(""), Scale(replicas=3, cpus=0.5))
    assert plain["num_replicas"] == 3 and plain["ray_actor_options"] == {"num_cpus": 0.5}
    assert plain["name"] == "model-m" and "autoscaling_config" not in plain
    fixed = model_options("m", _config(_param("slipway.ray.replicas", "2")), Scale(autoscale=(1, 4)))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    auto = model_options("m", _config(_param("slipway.ray.max_replicas", "6") +
                                      _param("slipway.ray.target_ongoing_requests", "3")), Scale(autoscale=(2, 4)))
    assert auto["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 6, "initial_replicas": 2,
                                          "target_ongoing_requests": 3.0, "upscale_delay_s": 30.0,
                                          "downscale_delay_s": 600.0}
    cli = model_options("m", _config(""), Scale(autoscale=(0, 3)))
    assert cli["autoscaling_config"]["min_replicas"] == 0 and cli["autoscaling_config"]["initial_replicas"] == 1
    seq = model_options("m", _config("sequence_batching {}\n" + _param("slipway.ray.replicas", "4")), Scale())
    assert seq["num_replicas"] == 1  # a sequence's state lives in one replica


@pytest.mark.parametrize("params, message", [
    (_param("slipway.ray.replica", "2"), r"model m: config parameter slipway.ray.replica is not one of"),
    (_param("slipway.ray.replicas", "two"), r"model m: config parameter slipway.ray.replicas='two' is not a number"),
    (_param("slipway.ray.replicas", "0"), r"model m: --replicas must be 1 or more, got 0"),
    (_param("slipway.ray.min_replicas", "5") + _param("slipway.ray.max_replicas", "2"),
     r"model m: --autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got 5:2"),
    (_param("slipway.ray.cpus", "-1"), r"model m: CPUs per replica must be 0 or more, got -1.0"),
])
def test_a_bad_ray_parameter_is_one_line_naming_the_model(params, message):
    with pytest.raises(UserError, match=message):
        model_options("m", _config(params), Scale())


def test_statistics_merge_adds_every_count():
    a, b = ModelStats("m", "1"), ModelStats("m", "1")
    a.request_done(True, 1000, 2, 10, 20, 30, 40)
    a.execution_done(2, 20, 30, 40)
    b.request_done(True, 3000, 1, 1, 2, 3, 4)
    b.request_done(False, 500, reason="REJECTED")
    b.execution_done(1, 2, 3, 4)
    b.execution_done(2, 5, 6, 7)
    a.merge(b)
    assert (a.inference_count, a.execution_count, a.success.count, a.success.ns) == (3, 3, 2, 4000)
    assert (a.fail.count, a.failures["REJECTED"], a.queue.ns, a.compute_infer.ns) == (1, 1, 11, 33)
    assert {rows: (s.compute_infer.count, s.compute_infer.ns) for rows, s in a.batches.items()} == \
        {1: (1, 3), 2: (2, 36)}


@pytest.mark.parametrize("args, message", [
    (["--model-control-mode", "explicit"], "--ray serves every model of the repository"),
    (["--autoscale", "4"], "--autoscale '4': expected MIN:MAX"),
    (["--autoscale", "a:b"], "--autoscale 'a:b': expected MIN:MAX"),
    (["--http-port", "0"], "--ray needs fixed --http-port and --grpc-port"),
    (["--replicas", "0"], "--replicas must be 1 or more, got 0"),
])
def test_the_cli_refuses_a_bad_ray_setting_before_starting_anything(ray_repo, args, message, capsys):
    from slipway.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(ray_repo), "--ray", *args])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and message in err, err


def test_replicas_the_cluster_has_no_cpus_for_are_refused_before_deploying():
    from slipway.rayserve.deploy import _check_room

    plan = {"a": (["a"], model_options("a", _config(""), Scale(replicas=2, cpus=1))),
            "b": (["b"], model_options("b", _config(""), Scale(autoscale=(1, 4), cpus=0.5)))}
    _check_room(plan, 2.5)
    with pytest.raises(UserError, match=r"the models' first replicas reserve 2.5 CPUs and the Ray cluster has 2: "):
        _check_room(plan, 2.0)
