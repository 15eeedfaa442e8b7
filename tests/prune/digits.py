"""The zoo's trained digits CNN (:mod:`slipway.zoo.digits`) exported to ONNX once, cached under
``.slipway_cache/prune`` (keyed by the zoo source and the torch version), with its data split."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from tests.cache import build_once

CACHE = Path(__file__).resolve().parents[2] / ".slipway_cache" / "prune"


@functools.lru_cache(maxsize=1)
def data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    from slipway.zoo.digits import digits_data

    return digits_data(0)


def cached_digits() -> Path:
    """The trained digits CNN as ONNX (dynamic batch), trained and exported once."""
    from importlib.metadata import version

    import slipway.zoo.digits

    src = Path(slipway.zoo.digits.__file__).read_bytes() + Path(__file__).read_bytes()
    path = CACHE / f"digits-{hashlib.sha256(src + version('torch').encode()).hexdigest()[:12]}.onnx"
    return build_once(path, _train_and_export)


def _train_and_export(path: Path) -> None:
    import torch

    from slipway.convert import from_torch
    from slipway.zoo.digits import train_digits_cnn

    module, _, (x_test, _) = train_digits_cnn(0)
    from_torch(module, (torch.from_numpy(x_test[:2]),), path, input_names=["x"], output_names=["logits"])
