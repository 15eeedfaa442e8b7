"""slipway.ops.classify against torch: softmax, log_softmax, sigmoid, top-k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slipway.errors import UserError
from slipway.ops import log_softmax, logit, sigmoid, softmax, topk

RNG = np.random.default_rng(2)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax_match_torch(axis: int) -> None:
    # float32 vs torch float32: max abs diff <= 1e-6 (probabilities) / 1e-5 (log-probs)
    x = (RNG.standard_normal((4, 7, 9)) * 5).astype(np.float32)
    t = torch.from_numpy(x)
    assert np.abs(softmax(x, axis) - torch.softmax(t, axis).numpy()).max() <= 1e-6
    assert np.abs(log_softmax(x, axis) - torch.log_softmax(t, axis).numpy()).max() <= 1e-5
    assert softmax(x, axis).dtype == np.float32


def test_softmax_is_stable_on_huge_logits() -> None:
    x = np.array([[1e4, 1e4 - 1, -1e4], [-1e30, 0.0, 1e30]], np.float32)
    ref = torch.softmax(torch.from_numpy(x), -1).numpy()
    out = softmax(x)
    assert np.isfinite(out).all() and np.abs(out - ref).max() <= 1e-6
    assert np.isfinite(log_softmax(x)[0]).all()


def test_sigmoid_matches_torch_and_never_overflows() -> None:
    # float32 over [-100, 100]: max abs diff <= 2 float32 ulps at 1.0 (2**-22): both libraries
    # take exp from a CPU-dependent SIMD path (numpy's AVX2 / AVX-512 loops, torch's SLEEF), each
    # within a few ulps, and round 1 + e and the division in their own order; float64 to 1e-15
    x = np.linspace(-100, 100, 2001, dtype=np.float32)
    assert np.abs(sigmoid(x) - torch.sigmoid(torch.from_numpy(x)).numpy()).max() <= 2.0**-22
    x64 = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    with np.errstate(over="raise"):
        out = sigmoid(x64)
    np.testing.assert_allclose(out, torch.sigmoid(torch.from_numpy(x64)).numpy(), atol=1e-15)
    assert sigmoid(np.array([1, 2], np.int64)).dtype == np.float32


def test_logit_inverts_sigmoid() -> None:
    for p in (0.01, 0.25, 0.5, 0.9):
        assert abs(float(sigmoid(np.array([logit(p)]))[0]) - p) < 1e-7
    assert logit(0.0) == -np.inf and logit(1.0) == np.inf


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_topk_matches_torch(largest: bool, k: int) -> None:
    # distinct values (a permutation) so the order is unique: exact equality
    x = np.stack([RNG.permutation(50) for _ in range(6)]).astype(np.float32).reshape(2, 3, 50)
    vals, idx = topk(x, k, largest=largest)
    tv, ti = torch.topk(torch.from_numpy(x), k, largest=largest, sorted=True)
    np.testing.assert_array_equal(vals, tv.numpy())
    np.testing.assert_array_equal(idx, ti.numpy())
    v0, i0 = topk(x, k, axis=1, largest=largest)
    tv0, ti0 = torch.topk(torch.from_numpy(x), min(k, 3), dim=1, largest=largest)
    np.testing.assert_array_equal(i0, ti0.numpy())
    assert idx.dtype == np.int64


def test_topk_ties_unsigned_and_edges() -> None:
    x = np.array([3, 7, 7, 1, 7], np.uint8)
    vals, idx = topk(x, 3)
    assert vals.tolist() == [7, 7, 7] and idx.tolist() == [1, 2, 4]  # ties: lower index first
    assert topk(x, 0)[1].shape == (0,)
    assert topk(x, 99)[0].tolist() == [7, 7, 7, 3, 1]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: softmax(np.array(1.0)), "scalar"),
        (lambda: softmax(np.zeros((2, 3)), axis=2), "axis"),
        (lambda: sigmoid(np.array([np.nan])), "NaN"),
        (lambda: topk(np.zeros(4), -1), "non-negative"),
        (lambda: topk(np.array([1.0, np.inf]), 1), "inf"),
        (lambda: softmax(np.array(["a"])), "dtype"),
    ],
)
def test_bad_inputs(call: object, match: str) -> None:
    with pytest.raises(UserError, match=match):
        call()
