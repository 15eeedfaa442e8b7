"""Fixtures the edge engines' INT8 tests share (test_edge_int8.py, test_edge_int8_cli.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CALIB = 256  # training images in the calibration .npz


@pytest.fixture(scope="module")
def digits() -> str:
    """The trained digits CNN (built once per session, see tests/cache.build_once)."""
    from tests.prune.digits import cached_digits

    return str(cached_digits())


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """CALIB training images of the digits split as a calibration .npz."""
    from tests.prune.digits import data

    (x_train, _), _ = data()
    path = tmp_path_factory.mktemp("calib") / "digits.npz"
    np.savez(path, x=x_train[:CALIB])
    return path
