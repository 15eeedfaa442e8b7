"""PyTorch -> ONNX with verification (slipway.convert.from_torch)."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import slipway  # noqa: E402
from slipway.convert import from_torch  # noqa: E402
from slipway.errors import MissingDependencyError, UserError, VerificationError  # noqa: E402


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-pool, strided conv, global pool, linear: 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 10)
        bn = self.features[1]
        with torch.no_grad():  # non-trivial running statistics, so BatchNorm is not an identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class TwoHeadMLP(nn.Module):
    """Shared trunk with two heads: class logits and an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Dropout(0.5))
        self.logits = nn.Linear(32, 5)
        self.embed = nn.Linear(32, 3)

    def forward(self, x):
        h = self.trunk(x)
        return self.logits(h), torch.tanh(self.embed(h))


class TokenNet(nn.Module):
    """Token ids [batch, seq] -> dict of logits and the predicted class (int64)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.out = nn.Linear(8, 4)

    def forward(self, tokens):
        h = torch.relu(self.conv(self.emb(tokens).transpose(1, 2))).mean(dim=2)
        logits = self.out(h)
        return {"logits": logits, "pred": logits.argmax(dim=1)}


class Drifting(nn.Module):
    """Exports a graph that differs from eager: ``drift`` gets +0.5 only while exporting."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        if torch.compiler.is_exporting():
            y = y + 0.5
        return y, self.lin(x) * 2


def _seeded(cls):
    torch.manual_seed(0)
    return cls().eval()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    model = _seeded(SmallCNN)
    x = torch.randn(2, 3, 32, 32)
    out = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    return model, x, from_torch(model, x, out)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    model = _seeded(TwoHeadMLP).train()  # from_torch must export and verify in eval mode
    x = torch.randn(4, 16)
    out = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    return model, x, from_torch(model, x, out, output_names=["logits", "embedding"], batch_sizes=(1, 2, 5))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    model = _seeded(TokenNet)
    ids = torch.randint(0, 50, (2, 6))
    out = tmp_path_factory.mktemp("tok") / "tok.onnx"
    result = from_torch(model, ids, out, dynamic_dims={"tokens": {1: "seq"}}, dim_sizes={"seq": [6, 11]})
    return model, ids, result


def _torch_np(model, *args):
    with torch.no_grad():
        return model(*args)


def test_cnn_metadata_recorded_and_small(cnn):
    model, x, result = cnn
    meta = slipway.load(result.path).metadata_props
    err = float(meta["slipway.verify.output.max_abs"])
    assert 0 <= err < 1e-4 and float(meta["slipway.verify.output.max_rel"]) < 1e-4
    assert meta["slipway.verify.batch_sizes"] == "1,2,3"
    assert meta["slipway.verify.ok"] == "true"
    assert meta["slipway.converted_from"].startswith(f"torch {torch.__version__.split('+')[0]} nn.Module SmallCNN")
    # The recorded error is the worst over the runs, the example run included.
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {"x": x.numpy()})[0]
    assert float(np.abs(onnx_out - _torch_np(model, x).numpy()).max()) <= err + 1e-7


def test_cnn_dynamic_batch_runs_at_batch_7(cnn):
    model, _, result = cnn
    assert slipway.summary(result.path)["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    x7 = torch.randn(7, 3, 32, 32)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x7.numpy()})[0]
    want = _torch_np(model, x7).numpy()
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_two_outputs_named_and_verified_in_eval_mode(mlp):
    model, x, result = mlp
    assert model.training, "from_torch must restore the training flag"
    report = result.report
    assert [o.name for o in report.outputs] == ["logits", "embedding"]
    assert report.ok and report.batch_sizes == [1, 2, 4, 5]
    assert all(o.max_abs < 1e-4 and not o.exact for o in report.outputs)
    meta = result.model.metadata_props
    for name in ("logits", "embedding"):
        assert float(meta[f"slipway.verify.{name}.max_abs"]) == pytest.approx(
            next(o.max_abs for o in report.outputs if o.name == name), rel=1e-5)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 16)
    logits, emb = sess.run(None, {"x": x3.numpy()})
    want = _torch_np(model.eval(), x3)
    model.train()
    np.testing.assert_allclose(logits, want[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(emb, want[1].numpy(), atol=1e-5)


def test_user_named_dim_and_dict_outputs(tokens):
    model, _, result = tokens
    summary = slipway.summary(result.path)
    assert summary["inputs"][0]["shape"] == ["batch", "seq"]
    assert summary["inputs"][0]["dtype"] == "int64"
    assert [o["name"] for o in summary["outputs"]] == ["logits", "pred"]
    pred = next(o for o in result.report.outputs if o.name == "pred")
    assert pred.exact and pred.ok and pred.max_abs == 0
    assert any("[3,11]" in run for run in result.report.runs)  # seq really varied
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for seq in (4, 13):
        ids = torch.randint(0, 50, (2, seq))
        logits, pred_onnx = sess.run(None, {"tokens": ids.numpy()})
        want = _torch_np(model, ids)
        np.testing.assert_allclose(logits, want["logits"].numpy(), atol=1e-5)
        np.testing.assert_array_equal(pred_onnx, want["pred"].numpy())


def test_mismatch_raises_naming_output_and_writes_nothing(tmp_path):
    out = tmp_path / "drift.onnx"
    with pytest.raises(VerificationError) as info:
        from_torch(_seeded(Drifting), torch.randn(2, 4), out, output_names=["drift", "same"])
    message = str(info.value)
    assert "'drift'" in message and "batch 2" in message and "atol 0.0001" in message
    assert "\n" not in message
    assert not out.exists() and list(tmp_path.iterdir()) == []
    checks = {o.name: o for o in info.value.report.outputs}
    assert checks["drift"].max_abs == pytest.approx(0.5, abs=1e-5) and not checks["drift"].ok
    assert checks["same"].ok and checks["same"].max_abs < 1e-5


def test_exported_program_dims_get_names_and_ranges(tmp_path):
    model = _seeded(SmallCNN)
    dims = {0: torch.export.Dim("b", max=64), 2: torch.export.Dim("h", min=16, max=40)}
    ep = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"x": dims})
    result = from_torch(ep, output_path=tmp_path / "ep.onnx", dynamic_dims={"x": {2: "height"}})
    assert slipway.summary(result.path)["inputs"][0]["shape"] == ["batch", 3, "height", 32]
    assert result.report.ok and result.report.batch_sizes == [1, 2, 3]
    # height is verified at the example's 32 and at 2 x 32 = 64 clipped to the program's max of 40
    assert result.report.runs == ["x[2,3,32,32]", "x[1,3,32,32]", "x[3,3,40,32]"]
    assert "ExportedProgram" in result.model.metadata_props["slipway.converted_from"]
    x = torch.randn(5, 3, 24, 32)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], _torch_np(model, x).numpy(), atol=1e-4)


def test_static_exported_program_cannot_gain_dynamic_dims():
    model = _seeded(SmallCNN)
    ep = torch.export.export(model, (torch.randn(2, 3, 32, 32),))
    with pytest.raises(UserError, match="static in the exported program"):
        from_torch(ep, dynamic_dims={"x": {2: "height"}})


def test_export_failure_is_one_line_user_error(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # control flow on values: torch.export refuses it

    out = tmp_path / "dd.onnx"
    with pytest.raises(UserError) as info:
        from_torch(DataDependent(), torch.randn(2, 3), out)
    assert str(info.value).startswith("torch.onnx.export failed: GuardOnDataDependentSymNode")
    assert "\n" not in str(info.value) and not out.exists()


def test_model_that_rejects_a_batch_size_is_a_user_error(tmp_path):
    class FixedBatch(nn.Module):
        def forward(self, x):
            return x.reshape(2, -1)  # hard-codes the batch size

    out = tmp_path / "fixed.onnx"
    with pytest.raises(UserError, match=r"while verifying, on inputs \[1,3\].*x:0=static"):
        from_torch(FixedBatch(), torch.randn(2, 3), out)
    assert not out.exists()
    result = from_torch(FixedBatch(), torch.randn(2, 3), out, dynamic_dims={"x": {0: None}})
    assert result.report.ok and result.report.batch_sizes == [2]
    assert slipway.summary(out)["inputs"][0]["shape"] == [2, 3]


def test_legacy_exporter_and_bad_dynamic_dims(tmp_path):
    model = _seeded(TwoHeadMLP)
    result = from_torch(model, torch.randn(2, 16), tmp_path / "legacy.onnx", dynamo=False)
    assert result.report.ok and "legacy" in result.model.metadata_props["slipway.converted_from"]
    assert [o.name for o in result.report.outputs] == ["output_0", "output_1"]
    assert all(o.max_abs < 1e-4 for o in result.report.outputs)
    with pytest.raises(UserError, match="unknown input 'y'"):
        from_torch(model, torch.randn(2, 16), dynamic_dims={"y": {0: "batch"}})
    with pytest.raises(UserError, match="no axis 5"):
        from_torch(model, torch.randn(2, 16), dynamic_dims={"x": {5: "n"}})


def test_missing_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"slipway\[torch\]"):
        from_torch(object(), None)
