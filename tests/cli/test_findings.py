"""Issue 12: the command line probed as a careless user and an attacker would.

Inputs never overwritten (also through a symlink or ``./`` spelling), pickles never loaded without
``--trust-pickle``, a write into a read-only or missing folder, an impossible batch and external data
outside the model's folder each give one ``error:`` line and leave nothing behind.
"""

from __future__ import annotations

import io
import json
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import slipway
from slipway.cli import main
from slipway.errors import UserError
from tests.perf.models import matmul, save

FAST_BENCH = ("--time", "0.05", "--max-time", "0.5", "--warmup", "1", "--min-runs", "1", "--no-isolate")
QUICK_QUANT = ("--no-speed-check", "--precision", "fp16")


def plant(sentinel: str) -> None:
    """The payload of the malicious pickles: harmless, but leaves a file behind if it ever runs."""
    Path(sentinel).write_text("the pickle ran")


class Payload:
    """Unpickling this calls ``plant(sentinel)``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self) -> tuple:
        return plant, (self.sentinel,)


def cli(capsys, *args: object) -> tuple[int, str, str]:
    """``slipway ARGS`` in this process through the real entry point: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(code: int, stderr: str, *fragments: str) -> str:
    """Exit code 1 and exactly one line on stderr, an ``error:`` line holding every fragment."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1, stderr
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save(matmul(k=16), tmp_path / "m.onnx")


def deny_writes_in(monkeypatch, folder: Path) -> None:
    """Make ``folder`` behave as read-only (tests run as root, where chmod stops nothing)."""
    real_dir, real_file = tempfile.mkdtemp, tempfile.mkstemp

    def check(where: object) -> None:
        if where is not None and Path(where).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied", str(where))

    def mkdtemp(suffix=None, prefix=None, dir=None):  # noqa: A002 - tempfile's own names
        check(dir)
        return real_dir(suffix, prefix, dir)

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):  # noqa: A002
        check(dir)
        return real_file(suffix, prefix, dir, text)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


# 1. quantize X -o X ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantize_refuses_to_overwrite_its_input(capsys, model, precision):
    before = model.read_bytes()
    code, _, err = cli(capsys, "quantize", model, "-o", model, "--precision", precision, "--no-speed-check")
    one_error(code, err, "refusing to overwrite the input model")
    assert model.read_bytes() == before


@pytest.mark.parametrize("spelling", ["dot", "symlink-out", "symlink-in"])
def test_quantize_refuses_the_input_under_another_spelling(capsys, model, monkeypatch, spelling):
    monkeypatch.chdir(model.parent)
    link = model.parent / "link.onnx"
    link.symlink_to(model.name)
    src, out = {"dot": ("m.onnx", "./m.onnx"), "symlink-out": ("m.onnx", "link.onnx"),
                "symlink-in": ("link.onnx", "./sub/../m.onnx")}[spelling]
    (model.parent / "sub").mkdir()
    before = model.read_bytes()
    code, _, err = cli(capsys, "quantize", src, "-o", out, *QUICK_QUANT)
    one_error(code, err, "refusing to overwrite the input model")
    assert model.read_bytes() == before and link.is_symlink()


def test_quantize_api_refuses_to_overwrite_its_input(model):
    from slipway.quantize import quantize

    with pytest.raises(UserError, match="refusing to overwrite the input model"):
        quantize(str(model), model.parent / "." / model.name, precision="fp16", speed_check=False)


# 2. pickles need --trust-pickle ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["evil.pkl", "evil.joblib", "model.pt", "weights.bin"])
def test_pickle_is_not_loaded_without_trust(capsys, tmp_path, name):
    sentinel = tmp_path / "PWNED"
    evil = tmp_path / name
    evil.write_bytes(pickle.dumps(Payload(sentinel), protocol=4))  # starts with the pickle opcode \x80
    out = tmp_path / "out.onnx"
    code, _, err = cli(capsys, "convert", evil, "-o", out, "--shape", "X=1,4")
    one_error(code, err, str(evil), "would run code", "--trust-pickle")
    assert not sentinel.exists() and not out.exists()


def test_pickle_is_not_loaded_by_the_python_api_without_trust(tmp_path):
    sentinel = tmp_path / "PWNED"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Payload(sentinel), protocol=2))
    with pytest.raises(UserError, match="trust_pickle=True"):
        slipway.convert.from_file(evil, tmp_path / "out.onnx", shapes={"X": [1, 4]})
    assert not sentinel.exists()


def test_trusted_sklearn_pickle_still_converts(capsys, tmp_path):
    pytest.importorskip("skl2onnx")
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(X, y), tmp_path / "iris.pkl")
    out = tmp_path / "iris.onnx"
    code, stdout, err = cli(capsys, "convert", tmp_path / "iris.pkl", "-o", out, "--trust-pickle", "--json")
    assert code == 0, err
    assert json.loads(stdout)["verification"]["ok"] and slipway.load(out).graph is not None


def _pt2(tmp_path: Path, tamper: str, sentinel: Path) -> Path:
    """A real torch.export archive, with the weights or example inputs swapped for a malicious pickle."""
    torch = pytest.importorskip("torch")

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.l(x)

    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(Linear().eval(), (torch.randn(2, 4),)), clean)
    buf = io.BytesIO()
    torch.save(Payload(sentinel), buf)
    evil = tmp_path / f"{tamper}.pt2"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if tamper == "weights" and name.endswith("_weights_config.json"):
                config = json.loads(data)
                config["config"]["l.weight"]["use_pickle"] = True  # torch loads it with weights_only=False
                data = json.dumps(config).encode()
            elif tamper == "weights" and name.endswith("/weight_0"):
                data = buf.getvalue()
            elif tamper == "inputs" and "/sample_inputs/" in name:
                data = buf.getvalue()  # torch falls back to weights_only=False when weights-only fails
            dst.writestr(name, data)
    return evil


@pytest.mark.parametrize("tamper", ["weights", "inputs"])
def test_pt2_with_pickled_parts_is_not_loaded_without_trust(capsys, tmp_path, tamper):
    sentinel = tmp_path / "PWNED"
    evil = _pt2(tmp_path, tamper, sentinel)
    out = tmp_path / "out.onnx"
    code, _, err = cli(capsys, "convert", evil, "-o", out)
    one_error(code, err, str(evil), "would run code", "--trust-pickle")
    assert not sentinel.exists() and not out.exists()


# 3. one line instead of a traceback ----------------------------------------------------------------------------------

def test_analyze_report_into_a_read_only_folder(capsys, model, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    deny_writes_in(monkeypatch, folder)
    code, _, err = cli(capsys, "analyze", model, "--report", folder / "r.html")
    one_error(code, err, f"cannot write {folder / 'r.html'}", "Permission denied")
    assert list(folder.iterdir()) == []


def test_bench_report_into_a_read_only_folder(capsys, model, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    deny_writes_in(monkeypatch, folder)
    code, _, err = cli(capsys, "bench", model, "--report", folder / "b.html", *FAST_BENCH)
    one_error(code, err, f"cannot write {folder / 'b.html'}", "Permission denied")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command", ["optimize", "quantize"])
def test_model_into_a_read_only_folder(capsys, model, tmp_path, monkeypatch, command):
    folder = tmp_path / "ro"
    folder.mkdir()
    deny_writes_in(monkeypatch, folder)
    extra = ("--no-speed-check",) if command == "optimize" else QUICK_QUANT
    code, _, err = cli(capsys, command, model, "-o", folder / "o.onnx", *extra)
    one_error(code, err, f"cannot write {folder / 'o.onnx'}", "Permission denied")
    assert list(folder.iterdir()) == []


def test_convert_into_a_read_only_folder(capsys, tmp_path, monkeypatch):
    pytest.importorskip("skl2onnx")
    import joblib
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    joblib.dump(LinearRegression().fit(rng.standard_normal((20, 3)), rng.standard_normal(20)), tmp_path / "r.pkl")
    folder = tmp_path / "ro"
    folder.mkdir()
    deny_writes_in(monkeypatch, folder)
    code, _, err = cli(capsys, "convert", tmp_path / "r.pkl", "-o", folder / "r.onnx", "--trust-pickle")
    one_error(code, err, f"cannot write {folder / 'r.onnx'}", "Permission denied")
    assert list(folder.iterdir()) == []


def test_api_write_failure_is_a_user_error_and_still_an_os_error(model, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    deny_writes_in(monkeypatch, folder)
    with pytest.raises(UserError, match="cannot write .*Permission denied") as caught:
        slipway.save(slipway.load(model), folder / "o.onnx")
    assert isinstance(caught.value, OSError) and list(folder.iterdir()) == []


@pytest.mark.parametrize("command", ["optimize", "quantize", "bench", "analyze"])
def test_output_under_a_regular_file(capsys, model, tmp_path, command):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    target = blocker / "out.html"
    args = {"optimize": ("-o", target, "--no-speed-check"), "quantize": ("-o", target, *QUICK_QUANT),
            "bench": ("--report", target, *FAST_BENCH), "analyze": ("--report", target)}[command]
    code, _, err = cli(capsys, command, model, *args)
    one_error(code, err, f"cannot write {target}")
    assert blocker.read_text() == "not a folder"


def test_bench_batch_too_large_for_memory(capsys, model):
    code, _, err = cli(capsys, "bench", model, "--batch", 10**12, *FAST_BENCH)
    one_error(code, err, "batch 1000000000000 is too large for memory")


def test_bench_batch_refused_before_allocating(model, monkeypatch):
    from slipway.perf import feeds

    monkeypatch.setattr(feeds, "available_memory", lambda: 1_000_000)  # 1 MB left
    with pytest.raises(UserError, match="batch 100000 is too large for memory: the inputs need"):
        feeds.make_feeds(slipway.load(model), [1, 100_000])  # 100000 x 16 float32 = 6.4 MB (+ float64 draw)


N = 512  # floats in the external tensor (2 KB: onnx_ir hands tensors under 1 KB to the checker by reference)


def _external_model(folder: Path, location: str) -> Path:
    """``y = x + w`` whose ``w`` (N floats) lives at ``location`` (external data)."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[N], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * N))):
        w.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    proto.ir_version = 8
    path = folder / "ext.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def escaping(tmp_path: Path, how: str) -> Path:
    """A model whose external data leaves its folder: by ``..``, by an absolute path, or by a symlink."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(N, dtype=np.float32).tobytes())
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    if how == "symlink":
        (folder / "w.bin").symlink_to(secret)
        return _external_model(folder, "w.bin")
    return _external_model(folder, "../../secret.bin" if how == "dotdot" else str(secret))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_compare_refuses_external_data_outside_the_model_folder(capsys, tmp_path, model, how):
    evil = escaping(tmp_path, how)
    code, _, err = cli(capsys, "compare", evil, model)
    one_error(code, err, str(evil), "external data")


@pytest.mark.parametrize("how, command", [("dotdot", "info"), ("absolute", "info"), ("symlink", "info"),
                                          ("dotdot", "bench"), ("symlink", "bench")])
def test_every_command_refuses_external_data_outside_the_folder(capsys, tmp_path, how, command):
    extra = FAST_BENCH if command == "bench" else ()
    code, _, err = cli(capsys, command, escaping(tmp_path, how), *extra)
    one_error(code, err, "external data")


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_load_refuses_external_data_outside_the_folder_only(tmp_path, how):
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "w.bin").write_bytes(np.arange(N, dtype=np.float32).tobytes())
    m = slipway.load(_external_model(inside, "w.bin"))  # data in the model's folder still loads
    np.testing.assert_array_equal(m.graph.initializers["w"].const_value.numpy(), np.arange(N, dtype=np.float32))
    with pytest.raises(UserError, match="external data"):
        slipway.load(escaping(tmp_path, how))


# 4. no silent folders ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["optimize", "quantize", "convert", "bench"])
def test_output_in_a_missing_folder_is_refused(capsys, model, tmp_path, command):
    missing = tmp_path / "nope" / "deeper"
    if command == "convert":
        pytest.importorskip("torch")
        src = _pt2(tmp_path, "none", tmp_path / "PWNED")  # untampered
        args: tuple = ("convert", src, "-o", missing / "o.onnx")
    else:
        args = {"optimize": ("optimize", model, "-o", missing / "o.onnx", "--no-speed-check"),
                "quantize": ("quantize", model, "-o", missing / "o.onnx", *QUICK_QUANT),
                "bench": ("bench", model, "--report", missing / "b.html", *FAST_BENCH)}[command]
    code, _, err = cli(capsys, *args)
    one_error(code, err, f"the directory {missing} does not exist")
    assert not (tmp_path / "nope").exists()


def test_bench_report_refuses_to_overwrite_the_model(capsys, model):
    before = model.read_bytes()
    code, _, err = cli(capsys, "bench", model, "--report", model, *FAST_BENCH)
    one_error(code, err, "refusing to overwrite the input model")
    assert model.read_bytes() == before

