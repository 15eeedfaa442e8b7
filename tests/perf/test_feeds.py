from __future__ import annotations

import numpy as np
import pytest

from slipway.errors import UserError
from slipway.perf.feeds import make_feeds
from tests.perf.models import matmul, mixed


def test_random_feeds_follow_dtype_ranges_and_the_batch():
    feeds = make_feeds(mixed(), [1, 8], shapes={"x": [1, 5, 8]})
    for b in (1, 8):
        f = feeds[b]
        assert f["x"].shape == (b, 5, 8) and f["x"].dtype == np.float32
        assert f["ids"].shape == (b, 5) and f["ids"].dtype == np.int64
        assert f["mask"].shape == (b, 5, 8) and f["mask"].dtype == np.bool_
    x = feeds[8]["x"]
    assert abs(x.mean()) < 0.5 and 0.6 < x.std() < 1.4  # standard normal
    ids = np.concatenate([feeds[b]["ids"].ravel() for b in (1, 8)])
    assert ids.min() >= 0 and ids.max() <= 3  # indexes a 4-row table
    assert 0 < feeds[8]["mask"].mean() < 1


def test_static_batch_cannot_run_another_batch():
    with pytest.raises(UserError, match="cannot run batch 8: input 'x' has a static batch of 1"):
        make_feeds(matmul(batch=1), [1, 8])
    assert make_feeds(matmul(batch=1), [1])[1]["x"].shape == (1, 256)


def test_dynamic_dims_besides_batch_are_derived_or_checked():
    derived = make_feeds(mixed(), [1, 2])  # no --shape: the smallest size the model runs on
    assert derived[1]["x"].shape == (1, 16, 8) and derived[2]["ids"].shape == (2, 16)
    with pytest.raises(UserError, match="not a model input"):
        make_feeds(mixed(), [1], shapes={"y": [1, 2, 8]})
    with pytest.raises(UserError, match="rank"):
        make_feeds(mixed(), [1], shapes={"x": [1, 2]})
    with pytest.raises(UserError, match="fixes it at 8"):
        make_feeds(mixed(), [1], shapes={"x": [1, 2, 9]})


def data(n: int = 1, seq: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((n, seq, 8)).astype(np.float32),
            "ids": rng.integers(0, 4, (n, seq)), "mask": rng.random((n, seq, 8)) < 0.5}


def test_npz_data_is_tiled_or_cut_to_each_batch(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, **data(n=3))
    feeds = make_feeds(mixed(), [1, 3, 8], inputs=path)
    d = data(n=3)
    np.testing.assert_array_equal(feeds[1]["x"], d["x"][:1])
    np.testing.assert_array_equal(feeds[3]["ids"], d["ids"])
    np.testing.assert_array_equal(feeds[8]["mask"], d["mask"][[0, 1, 2, 0, 1, 2, 0, 1]])
    assert list(make_feeds(mixed(), None, inputs=path)) == [3]  # default: the data's own batch
    one = make_feeds(mixed(), [8], inputs=data(n=1))[8]["x"]
    assert one.shape == (8, 3, 8) and (one == one[:1]).all()


@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("ids"), "input 'ids' is missing"),
    (lambda d: d.update(extra=np.zeros(1)), "'extra' is not a model input"),
    (lambda d: d.update(x=d["x"].astype(np.float64)), "input 'x' is float64, the model expects float32"),
    (lambda d: d.update(x=d["x"][0]), "input 'x' has rank 2"),
    (lambda d: d.update(x=np.zeros((1, 3, 7), np.float32)), "input 'x' dim 2 is 7, the model fixes it at 8"),
    (lambda d: d.update(ids=np.zeros((1, 4), np.int64)), "dim 'seq' is 3 in 'x' but 4 in 'ids'"),
    (lambda d: d.update(ids=np.zeros((2, 3), np.int64)), "the batch dim is 1 in 'x' but 2 in 'ids'"),
])
def test_bad_data_is_a_one_line_error(tmp_path, change, match):
    d = data()
    change(d)
    path = tmp_path / "data.npz"
    np.savez(path, **d)
    with pytest.raises(UserError, match=match) as e:
        make_feeds(mixed(), [1], inputs=path)
    assert "\n" not in str(e.value)


def test_unreadable_data_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        make_feeds(mixed(), [1], inputs=tmp_path / "missing.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(UserError, match="got one array"):
        make_feeds(mixed(), [1], inputs=tmp_path / "one.npy")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        make_feeds(mixed(), [1], inputs=tmp_path / "junk.npz")
    with pytest.raises(UserError, match="not both"):
        make_feeds(mixed(), [1], inputs=data(), shapes={"x": [1, 3, 8]})
