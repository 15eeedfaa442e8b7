"""Triton-layout repository: config parsing and completion from the model, checks, versions, safety, fingerprints."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

from slipway.errors import ServeError, UserError
from slipway.serve.repository import DEFAULT_MAX_BATCH_SIZE, Repository, completed_text

FLOAT, INT64, STRING = TensorProto.FLOAT, TensorProto.INT64, TensorProto.STRING


def identity_model(x_shape: list, y_shape: list | None = None, dtype: int = FLOAT,
                   op: str = "Identity") -> onnx.ModelProto:
    """One node: x -> op -> y."""
    nodes = [helper.make_node(op, ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, x_shape)],
                              [helper.make_tensor_value_info("y", dtype, y_shape or x_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def add_model(root: Path, name: str, model: onnx.ModelProto | None = None, config: str | None = None,
              versions: tuple[int, ...] = (1,), filename: str = "model.onnx") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    for v in versions:
        (folder / str(v)).mkdir(exist_ok=True)
        if model is not None:
            onnx.save(model, str(folder / str(v) / filename))
    return folder


def error(fn, *args, **kwargs) -> ServeError:
    with pytest.raises(ServeError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


DYNAMIC = identity_model(["N", 3])
STATIC = identity_model([1, 3])


# ---------------------------------------------------------------------------------------------
# completion


def test_complete_dynamic_batch_model(tmp_path):
    add_model(tmp_path, "m", DYNAMIC)
    config = Repository(tmp_path).config("m")
    assert config.name == "m"
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert config.HasField("dynamic_batching")
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [("x", "TYPE_FP32", [3])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [3])]
    assert [(g.count, g.kind, g.name) for g in config.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU, "m_0")]


def test_complete_static_model_keeps_full_dims(tmp_path):
    add_model(tmp_path, "m", STATIC)
    config = Repository(tmp_path).config("m")
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 3] and list(config.output[0].dims) == [1, 3]


def test_complete_not_batchable_when_one_tensor_is_static(tmp_path):
    add_model(tmp_path, "m", identity_model(["N", 3], [2, 3]))
    config = Repository(tmp_path).config("m")
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 3]


def test_complete_types_and_inner_dynamic_dims(tmp_path):
    add_model(tmp_path, "s", identity_model(["N", "L"], dtype=STRING))
    add_model(tmp_path, "i", identity_model([2, "L"], dtype=INT64))
    repo = Repository(tmp_path)
    s, i = repo.config("s"), repo.config("i")
    assert (mc.DataType.Name(s.input[0].data_type), list(s.input[0].dims), s.max_batch_size) == ("TYPE_STRING", [-1], 32)
    assert (mc.DataType.Name(i.input[0].data_type), list(i.input[0].dims), i.max_batch_size) == ("TYPE_INT64", [2, -1], 0)


def test_completed_config_matches_onnxruntime_and_round_trips(tmp_path):
    folder = add_model(tmp_path, "m", identity_model(["batch", 4, "w"], op="Relu"))
    config = Repository(tmp_path).config("m")
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for ours, theirs in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in ours] == [t.name for t in theirs]
        assert [[-1, *t.dims] for t in ours] == [[-1 if isinstance(d, str) else d for d in t.shape] for t in theirs]
    parsed = text_format.Parse(completed_text(config), mc.ModelConfig())
    assert parsed == config


def test_initializers_listed_as_inputs_are_not_completed(tmp_path):
    model = identity_model(["N", 3], op="Relu")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "w"))
    model.graph.input.append(helper.make_tensor_value_info("w", FLOAT, [3]))
    add_model(tmp_path, "m", model)
    assert [i.name for i in Repository(tmp_path).config("m").input] == ["x"]


def test_unreadable_onnx_file(tmp_path):
    folder = add_model(tmp_path, "m")
    (folder / "1" / "model.onnx").write_text("not a model")
    assert "m/1/model.onnx is not a readable ONNX model" in str(error(Repository(tmp_path).config, "m"))


def test_model_file_types_the_server_cannot_serve(tmp_path):
    """The engine's reader (Engine.io) names the file's own type; the repository refuses what has no datatype."""
    c64 = identity_model(["N", 3], dtype=TensorProto.COMPLEX64)
    add_model(tmp_path, "c", c64)
    assert str(error(Repository(tmp_path).config, "c")) == \
        "model 'c': input 'x' has ONNX type COMPLEX64, which the server does not support"
    seq = helper.make_model(helper.make_graph(
        [helper.make_node("SequenceEmpty", [], ["y"])], "g", [],
        [helper.make_value_info("y", helper.make_sequence_type_proto(helper.make_tensor_type_proto(FLOAT, None)))]),
        opset_imports=[helper.make_operatorsetid("", 17)])
    add_model(tmp_path, "s", seq)
    assert str(error(Repository(tmp_path).config, "s")) == "model 's': output 'y' is a sequence_type, not a tensor"


# ---------------------------------------------------------------------------------------------
# explicit configs


EXPLICIT = """
max_batch_size: 8
input [ {{ name: "x" data_type: {xtype} dims: {xdims} }} ]
output [ {{ name: "{yname}" data_type: TYPE_FP32 dims: [ 3 ] }} ]
{extra}
"""


def explicit(xtype: str = "TYPE_FP32", xdims: str = "[ 3 ]", yname: str = "y", extra: str = "") -> str:
    return EXPLICIT.format(xtype=xtype, xdims=xdims, yname=yname, extra=extra)


def test_explicit_config_is_kept(tmp_path):
    add_model(tmp_path, "m", DYNAMIC, explicit(extra="instance_group [ { count: 2 kind: KIND_GPU } ]"))
    config = Repository(tmp_path).config("m")
    assert config.max_batch_size == 8
    assert not config.HasField("dynamic_batching")  # only added with an autocompleted max_batch_size
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]


@pytest.mark.parametrize("config, message", [
    (explicit(xtype="TYPE_INT64"), "input 'x' has data_type TYPE_INT64 but the model has TYPE_FP32"),
    (explicit(xdims="[ 4 ]"), "input 'x' has dims [4] after the batch dim but the model has shape [-1, 3]"),
    (explicit(xdims="[ 3, 1 ]"), "input 'x' has dims [3, 1]"),
    (explicit(xdims="[ -1 ]"), "input 'x' has dims [-1]"),
    (explicit(yname="z"), "output 'z' is not an output of the model (y)"),
    (explicit(xdims="[ 0 ]"), "dims [0] may hold only positive sizes and -1"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] }, { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]',
     "input 'x' is declared twice"),
    ('input [ { name: "x" dims: [ -1, 3 ] } ]', "input 'x' has no data_type"),
    ('output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 3 ] } ] input [ { name: "q" data_type: TYPE_FP32 } ]',
     "input 'q' is not an input of the model (x)"),
])
def test_explicit_config_mismatch(tmp_path, config, message):
    add_model(tmp_path, "m", DYNAMIC, config)
    assert message in str(error(Repository(tmp_path).config, "m"))


def test_undeclared_model_input_and_batch_on_static_model(tmp_path):
    two = helper.make_graph([helper.make_node("Add", ["x", "z"], ["y"])], "g",
                            [helper.make_tensor_value_info(n, FLOAT, ["N", 3]) for n in "xz"],
                            [helper.make_tensor_value_info("y", FLOAT, ["N", 3])])
    add_model(tmp_path, "two", helper.make_model(two), explicit())
    add_model(tmp_path, "static", STATIC, explicit())
    add_model(tmp_path, "static_mbs", STATIC, "max_batch_size: 4")
    repo = Repository(tmp_path)
    assert "model input(s) z are not declared" in str(error(repo.config, "two"))
    assert "but the model has shape [1, 3]" in str(error(repo.config, "static"))
    assert "max_batch_size 4 needs a dynamic first dim on input 'x'" in str(error(repo.config, "static_mbs"))


def test_outputs_completed_when_only_inputs_declared(tmp_path):
    add_model(tmp_path, "m", DYNAMIC, 'max_batch_size: 2 input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]')
    config = Repository(tmp_path).config("m")
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [3])]


def test_reshape(tmp_path):
    model = identity_model([2, 3])
    add_model(tmp_path, "ok", model, 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 6 ] reshape { shape: [ 2, 3 ] } } ]')
    add_model(tmp_path, "count", model,
              'input [ { name: "x" data_type: TYPE_FP32 dims: [ 5 ] reshape { shape: [ 2, 3 ] } } ]')
    add_model(tmp_path, "shape", model,
              'input [ { name: "x" data_type: TYPE_FP32 dims: [ 6 ] reshape { shape: [ 3, 2 ] } } ]')
    repo = Repository(tmp_path)
    assert list(repo.config("ok").input[0].reshape.shape) == [2, 3]
    assert "reshape [2, 3] does not hold the same elements as dims [5]" in str(error(repo.config, "count"))
    assert "input 'x' has reshape [3, 2] but the model has shape [2, 3]" in str(error(repo.config, "shape"))


@pytest.mark.parametrize("extra, message", [
    ("dynamic_batching { preferred_batch_size: [ 4, 16 ] }", "preferred_batch_size 16 is not in 1..max_batch_size (8)"),
    ("dynamic_batching { preferred_batch_size: [ 0 ] }", "preferred_batch_size 0"),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 3 }", "default_priority_level 3 is not in 1..priority_levels (2)"),
    ("dynamic_batching { priority_levels: 2 }", "default_priority_level 0 is not in 1..priority_levels (2)"),
    ("dynamic_batching { default_priority_level: 1 }", "need priority_levels"),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 value: {} } }",
     "priority_queue_policy level 3 is not in 1..2"),
    ("sequence_batching { }", "sequence_batching is not supported"),
    ("instance_group [ { count: -1 } ]", "instance_group 0 has count -1"),
])
def test_batching_checks(tmp_path, extra, message):
    add_model(tmp_path, "m", DYNAMIC, explicit(extra=extra))
    assert message in str(error(Repository(tmp_path).config, "m"))


def test_dynamic_batching_needs_max_batch_size(tmp_path):
    add_model(tmp_path, "m", STATIC, "dynamic_batching { }")
    assert "dynamic_batching needs max_batch_size > 0" in str(error(Repository(tmp_path).config, "m"))
    add_model(tmp_path, "ok", DYNAMIC, explicit(extra="dynamic_batching { preferred_batch_size: [ 2, 8 ] "
                                                      "priority_levels: 2 default_priority_level: 2 }"))
    assert list(Repository(tmp_path).config("ok").dynamic_batching.preferred_batch_size) == [2, 8]


@pytest.mark.parametrize("config, message", [
    ('platform: "pytorch_libtorch"', "backend 'pytorch_libtorch' is not supported (onnxruntime_onnx, openvino)"),
    ('platform: "tensorrt_plan"', "backend 'tensorrt_plan' is not supported"),
    ('backend: "tensorflow"', "backend 'tensorflow' is not supported"),
    ('platform: "onnxruntime_onnx" backend: "openvino"', "platform 'onnxruntime_onnx' and backend 'openvino' disagree"),
    ('name: "other"', "config name 'other' does not match its directory"),
    ('default_model_filename: "../model.onnx"', "default_model_filename '../model.onnx' must be a plain file name"),
])
def test_bad_engine_and_names(tmp_path, config, message):
    add_model(tmp_path, "m", DYNAMIC, config)
    assert message in str(error(Repository(tmp_path).config, "m"))


def test_backend_and_platform_complete_each_other(tmp_path):
    add_model(tmp_path, "a", DYNAMIC, 'backend: "onnxruntime"')
    add_model(tmp_path, "b", DYNAMIC, 'platform: "openvino"')
    repo = Repository(tmp_path)
    assert (repo.config("a").platform, repo.config("b").backend) == ("onnxruntime_onnx", "openvino")


def test_bad_pbtxt_syntax(tmp_path):
    add_model(tmp_path, "m", DYNAMIC, 'name: "m"\nmax_batch_size: 4\nfoo: 3\n')
    err = error(Repository(tmp_path).config, "m")
    assert err.status == 400
    assert str(err) == 'm/config.pbtxt: 3:1 : Message type "inference.ModelConfig" has no field named "foo".'


def test_override_json_replaces_file(tmp_path):
    add_model(tmp_path, "m", DYNAMIC, "max_batch_size: 4 dynamic_batching { }")
    repo = Repository(tmp_path)
    config = repo.config("m", '{"max_batch_size": 0, "input": [{"name": "x", "data_type": "TYPE_FP32", '
                              '"dims": [-1, 3]}]}')
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, 3]
    assert repo.config("m").max_batch_size == 4
    assert "the config parameter is not a valid model config: Failed to load JSON" in str(error(repo.config, "m", "{"))
    assert "has no field named" in str(error(repo.config, "m", '{"nme": 1}'))
    assert "config name 'x' does not match" in str(error(repo.config, "m", '{"name": "x"}'))


# ---------------------------------------------------------------------------------------------
# versions and files


def test_version_policies(tmp_path):
    folder = add_model(tmp_path, "m", DYNAMIC, versions=(1, 2, 3, 10))
    for skipped in ("0", "01", "abc"):
        (folder / skipped).mkdir()
        onnx.save(DYNAMIC, str(folder / skipped / "model.onnx"))
    (folder / "11").mkdir()  # no model file
    repo = Repository(tmp_path)

    def versions(policy: str) -> list[int]:
        return repo.versions("m", text_format.Parse(policy, mc.ModelConfig()))

    assert versions("") == [10]
    assert versions("version_policy { latest { num_versions: 2 } }") == [3, 10]
    assert versions("version_policy { all { } }") == [1, 2, 3, 10]
    assert versions("version_policy { specific { versions: [ 3, 1, 3 ] } }") == [1, 3]
    err = error(versions, "version_policy { specific { versions: [ 1, 11 ] } }")
    assert (err.status, str(err)) == (404, "model 'm' version 11 (version_policy specific) has no model.onnx")
    assert "num_versions must be at least 1" in str(error(versions, "version_policy { latest { } }"))
    assert repo.model_file("m", mc.ModelConfig(), 2) == folder / "2" / "model.onnx"
    assert error(repo.model_file, "m", mc.ModelConfig(), 11).status == 404


def test_no_version(tmp_path):
    add_model(tmp_path, "m", config="", versions=())
    repo = Repository(tmp_path)
    err = error(repo.versions, "m", mc.ModelConfig())
    assert (err.status, str(err)) == (404, "model 'm' has no version with model.onnx")
    assert error(repo.config, "m").status == 404


def test_completion_reads_newest_version_and_default_model_filename(tmp_path):
    folder = add_model(tmp_path, "m", STATIC, 'default_model_filename: "net.onnx"', versions=(1, 2), filename="net.onnx")
    onnx.save(DYNAMIC, str(folder / "2" / "net.onnx"))
    repo = Repository(tmp_path)
    config = repo.config("m")
    assert config.max_batch_size == 32
    assert repo.model_file("m", config, 1) == folder / "1" / "net.onnx"


def test_openvino_model_xml(tmp_path):
    ov = pytest.importorskip("openvino")
    folder = add_model(tmp_path, "m", config='backend: "openvino"', versions=(1,))
    onnx.save(DYNAMIC, str(tmp_path / "src.onnx"))
    ov.save_model(ov.convert_model(str(tmp_path / "src.onnx")), str(folder / "1" / "model.xml"))
    repo = Repository(tmp_path)
    config = repo.config("m")
    assert (config.platform, config.max_batch_size, list(config.input[0].dims)) == ("openvino", 32, [3])
    assert repo.model_file("m", config, 1) == folder / "1" / "model.xml"
    onnx.save(DYNAMIC, str(folder / "1" / "model.onnx"))
    assert repo.model_file("m", config, 1) == folder / "1" / "model.onnx"
    (folder / "1" / "model.onnx").unlink()
    (folder / "1" / "model.xml").write_text("<net>")
    assert str(error(repo.config, "m")).startswith("model 'm': m/1/model.xml is not a readable OpenVINO model: ")


# ---------------------------------------------------------------------------------------------
# names and safety


def test_names_and_path(tmp_path):
    add_model(tmp_path / "repo", "b", DYNAMIC)
    add_model(tmp_path / "repo", "a", config="")
    add_model(tmp_path / "repo", ".hidden", DYNAMIC)
    add_model(tmp_path, "outside", DYNAMIC)
    (tmp_path / "repo" / "empty").mkdir()
    (tmp_path / "repo" / "file").write_text("x")
    (tmp_path / "repo" / "escape").symlink_to(tmp_path / "outside")
    (tmp_path / "repo" / "alias").symlink_to(tmp_path / "repo" / "b")
    repo = Repository(tmp_path / "repo")
    assert repo.names() == ["a", "alias", "b"]
    assert repo.path("alias") == tmp_path / "repo" / "alias"
    for bad in ("../outside", "", "/etc", "a/b", "a\\b", ".hidden", "..", "a\0b", "escape", "x..y"):
        err = error(repo.path, bad)
        assert err.status == 400 and "is not allowed" in str(err)
    assert (error(repo.path, "nope").status, str(error(repo.path, "empty"))) == (404, "unknown model 'empty'")
    with pytest.raises(UserError, match="is not a directory"):
        Repository(tmp_path / "missing")


@pytest.mark.parametrize("filename", ["1/model.py", "weights.pkl", "sub/dir/lib.so", "1/Model.PT"])
def test_executable_files_are_refused(tmp_path, filename):
    folder = add_model(tmp_path, "m", DYNAMIC)
    (folder / filename).parent.mkdir(parents=True, exist_ok=True)
    (folder / filename).write_text("import os")
    err = error(Repository(tmp_path).config, "m")
    assert str(err) == (f"model 'm' contains executable files ({filename}); "
                        "start the server with --allow-python-models to load them")
    assert Repository(tmp_path, allow_python_models=True).config("m").max_batch_size == 32


def test_python_backend(tmp_path):
    io = 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ] output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]'
    folder = add_model(tmp_path, "p", config=f'backend: "python" max_batch_size: 4 {io}')
    (folder / "1" / "model.py").write_text("class TritonPythonModel: pass")
    add_model(tmp_path, "bare", config='backend: "python"')
    (tmp_path / "bare" / "1" / "model.py").write_text("")
    add_model(tmp_path, "nofile", config='backend: "python"', versions=())
    assert "--allow-python-models" in str(error(Repository(tmp_path).config, "p"))
    assert "uses backend 'python'" in str(error(Repository(tmp_path).config, "nofile"))
    repo = Repository(tmp_path, allow_python_models=True)
    config = repo.config("p")
    assert (config.backend, config.platform, config.max_batch_size) == ("python", "", 4)
    assert repo.versions("p", config) == [1] and repo.model_file("p", config, 1) == folder / "1" / "model.py"
    assert "a python model must declare its inputs and outputs" in str(error(repo.config, "bare"))


# ---------------------------------------------------------------------------------------------
# fingerprint


def test_fingerprint(tmp_path):
    folder = add_model(tmp_path, "m", DYNAMIC, "max_batch_size: 4")
    repo = Repository(tmp_path)
    first = repo.fingerprint("m")
    assert repo.fingerprint("m") == first
    (folder / ".config.pbtxt.swp").write_text("editor")
    assert repo.fingerprint("m") == first

    seen = {first}

    def changed() -> None:
        now = repo.fingerprint("m")
        assert now not in seen
        seen.add(now)

    st = os.stat(folder / "1" / "model.onnx")
    os.utime(folder / "1" / "model.onnx", ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    changed()
    (folder / "2").mkdir()
    onnx.save(DYNAMIC, str(folder / "2" / "model.onnx"))
    changed()
    (folder / "2" / "model.tune.json").write_text("{}")
    changed()
    (folder / "config.pbtxt").write_text("max_batch_size: 8")
    changed()
    (folder / "2" / "model.onnx").unlink()
    changed()


# ---------------------------------------------------------------------------------------------
# bounds: what a config (config.pbtxt or a load request's override) may ask of the server


@pytest.mark.parametrize("override, message", [
    ({"max_batch_size": 1_000_000}, "max_batch_size 1000000 is over the limit of 8192"),
    ({"max_batch_size": 4, "instance_group": [{"count": 1_000_000, "kind": "KIND_CPU"}]},
     "instance_group asks for 1000000 instances; at most "),
    ({"max_batch_size": 4, "instance_group": [{"count": 1, "kind": "KIND_CPU"}] * 1000},
     "instance_group asks for 1000 instances; at most "),
    ({"max_batch_size": 4, "model_warmup": [{"name": "w", "batch_size": 1, "count": 1_000_000,
                                             "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [3],
                                                              "zero_data": True}}}]},
     "model_warmup asks for 1000000 runs in all; at most 64"),
    ({"max_batch_size": 4, "model_warmup": [{"name": f"w{i}", "batch_size": 1} for i in range(17)]},
     "model_warmup has 17 samples; at most 16"),
    ({"max_batch_size": 4, "model_warmup": [{"name": "w", "batch_size": 5}]},
     "model_warmup 'w' has batch_size 5, over max_batch_size 4"),
    ({"max_batch_size": 4, "model_warmup": [{"name": "w", "batch_size": 1, "inputs": {
        "x": {"data_type": "TYPE_FP32", "dims": [100_000, 100_000], "zero_data": True}}}]},
     "model_warmup 'w' inputs are over the limit of 256 MiB"),
    ({"max_batch_size": 4, "model_warmup": [{"name": "w", "batch_size": 1, "inputs": {
        "x": {"data_type": "TYPE_FP32", "dims": [3], "input_data_file": "../../../etc/passwd"}}}]},
     "input_data_file '../../../etc/passwd' must be a plain file name"),
    ({"cc_model_filenames": {"8.0": "/etc/passwd"}}, "cc_model_filenames['8.0'] '/etc/passwd' must be a plain"),
    ({"model_repository_agents": {"agents": [{"name": "checksum"}]}}, "model_repository_agents are not supported"),
    ({"parameters": {"backend": {"string_value": "python"}}}, "config parameter backend='python' runs code"),
    ({"parameters": {"backend": {"string_value": "nope"}}}, "config parameter backend='nope' is not a registered"),
    ({"parameters": {"threads": {"string_value": "1000000"}}}, "config parameter threads=1000000 is over the limit"),
    ({"parameters": {"inter_op_thread_count": {"string_value": "1000000"}}},
     "config parameter inter_op_thread_count=1000000 is over the limit"),
    ({"parameters": {"slipway.inter_op_threads": {"string_value": "1000000"}}},
     "config parameter slipway.inter_op_threads=1000000 is over the limit"),
])
def test_config_bounds(tmp_path, override, message):
    add_model(tmp_path, "m", DYNAMIC)
    err = error(Repository(tmp_path).config, "m", override)
    assert err.status == 400 and message in str(err) and str(tmp_path) not in str(err)


def test_config_within_bounds_is_kept(tmp_path):
    from slipway.serve.repository import max_instances

    add_model(tmp_path, "m", DYNAMIC)
    config = Repository(tmp_path).config("m", {
        "max_batch_size": 8192, "instance_group": [{"count": max_instances(), "kind": "KIND_CPU"}],
        "parameters": {"threads": {"string_value": "2"}, "slipway.graph_optimization_level": {"string_value": "all"}},
        "model_warmup": [{"name": "w", "batch_size": 8, "count": 64, "inputs": {
            "x": {"data_type": "TYPE_FP32", "dims": [3], "input_data_file": "x.bin"}}}]})
    assert config.max_batch_size == 8192 and config.instance_group[0].count == max_instances()


def test_long_and_odd_names(tmp_path):
    repo = Repository(tmp_path)
    for bad, why in (("a" * 256, "model name of 256 bytes is not allowed: at most 255 bytes"),
                     ("é" * 128, "model name of 256 bytes is not allowed"),
                     (" ", "it is blank"), ("a\nb", "it holds control characters"), ("\udc80", "not valid UTF-8")):
        err = error(repo.path, bad)
        assert err.status == 400 and why in str(err) and str(tmp_path) not in str(err)
    assert error(repo.path, "a" * 255).status == 404  # long, but a name


def test_messages_hold_no_absolute_paths(tmp_path):
    repo = Repository(tmp_path)
    model = tmp_path / "m" / "1" / "model.onnx"
    text = f"could not load {model}: [Errno 2] No such file or directory: '{model.resolve()}'; root {tmp_path}"
    assert repo.relative(text) == "could not load m/1/model.onnx: [Errno 2] No such file or directory: " \
                                  "'m/1/model.onnx'; root ."
    add_model(tmp_path, "broken", config="max_batch_size: 0")
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    err = error(repo.config, "broken")
    assert str(tmp_path) not in str(err) and "broken/1/model.onnx" in str(err)
