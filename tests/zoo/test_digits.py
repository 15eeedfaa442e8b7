"""The zoo's trained model: a small CNN on sklearn's bundled digits, trained in seconds on CPU."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from slipway.zoo import train_digits_cnn  # noqa: E402
from slipway.zoo.digits import SIZE, TEST_SIZE, accuracy, digits_data  # noqa: E402


def test_data_is_a_fixed_stratified_split_of_the_bundled_digits() -> None:
    (x_train, y_train), (x_test, y_test) = digits_data(0)
    assert x_train.shape == (1797 - TEST_SIZE, 1, SIZE, SIZE) and x_test.shape == (TEST_SIZE, 1, SIZE, SIZE)
    assert x_train.dtype == x_test.dtype == np.float32 and y_test.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert np.bincount(y_test, minlength=10).min() >= 35  # stratified: every class held out
    (_, _), (x_again, y_again) = digits_data(0)
    np.testing.assert_array_equal(x_again, x_test)
    np.testing.assert_array_equal(y_again, y_test)


def test_cnn_trains_to_95_percent_held_out_accuracy() -> None:
    import torch

    threads = torch.get_num_threads()
    module, (x_train, y_train), (x_test, y_test) = train_digits_cnn(seed=0)
    assert torch.get_num_threads() == threads  # training pins one thread and gives the setting back
    assert not module.training
    assert accuracy(module, x_test, y_test) >= 95.0
    assert accuracy(module, x_train, y_train) >= 97.0
