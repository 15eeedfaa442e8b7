"""The PyTorch path: torch-pruning on the nn.Module, BatchNorm re-estimated, fine-tune callback, verified export."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from slipway.errors import UserError  # noqa: E402
from slipway.prune.torch import prune_torch  # noqa: E402
from slipway.zoo.digits import DigitsCNN, accuracy  # noqa: E402
from tests.prune.digits import data  # noqa: E402


def test_prune_torch_re_estimates_batchnorm_calls_finetune_and_verifies_the_export(tmp_path: Path) -> None:
    from slipway.zoo.digits import train_digits_cnn

    module, (x_train, _), (x_test, y_test) = train_digits_cnn(0)
    before = [p.detach().clone() for p in module.parameters()]
    seen = []
    calib = [torch.from_numpy(x_train[i:i + 32]) for i in range(0, 256, 32)]
    r = prune_torch(module, torch.from_numpy(x_test[:2]), tmp_path / "p.onnx", target_macs=0.7, calib=calib,
                    finetune=seen.append, input_names=["x"], output_names=["logits"])
    assert seen == [r.module]
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))  # caller's untouched
    assert 0.6 <= r.macs_kept <= 0.7 and r.params_after < r.params_before
    assert r.verified.path == tmp_path / "p.onnx" and r.verified.report.ok
    # adaptive BN on 256 images: 97.2% vs the unpruned 99.4%, and 20.6% without it (bench/results/prune.md);
    # 6 points of margin for other CPUs' rounding of the training and of torch-pruning's channel ranking
    assert accuracy(r.module, x_test, y_test) >= accuracy(module, x_test, y_test) - 6.0


def test_prune_torch_bad_input() -> None:
    x = torch.from_numpy(data()[1][0][:2])
    with pytest.raises(UserError, match="exactly one"):
        prune_torch(DigitsCNN(), x)
    with pytest.raises(UserError, match="between 0 and 1"):
        prune_torch(DigitsCNN(), x, ratio=1.0)
    with pytest.raises(UserError, match="not available on the PyTorch path"):
        prune_torch(DigitsCNN(), x, ratio=0.5, criterion="activation")
