"""A small CNN trained in a few seconds on sklearn's 8x8 digits, exported to ONNX (for quantization tests).

``digits()`` returns the scaled images ``[N, 1, 8, 8]`` float32 and labels, split into a training
half and a test half; ``trained_cnn(path)`` trains the net (seeded) and writes its verified ONNX
export (dynamic batch) to ``path``, returning the test accuracy of the PyTorch model in percent;
``cached_cnn()`` gives the path of that export cached under ``.slipway_cache/quantize`` (keyed by
this file and the torch version), so the tests train it once.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from tests.cache import build_once


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): images scaled to [0, 1], shape [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    half = len(y) // 2
    return x[:half], y[:half], x[half:], y[half:]


def net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def train(epochs: int = 15, seed: int = 0):
    """The trained module (eval mode) and its test accuracy in percent."""
    import torch

    x_tr, y_tr, x_te, y_te = digits()
    torch.manual_seed(seed)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=g).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean()) * 100
    return model, acc


def trained_cnn(path: Path, epochs: int = 15) -> float:
    """Train, export (verified, dynamic batch) to ``path``; returns the PyTorch test accuracy (%)."""
    import torch

    from slipway.convert import from_torch

    model, acc = train(epochs)
    from_torch(model, torch.from_numpy(digits()[2][:2]), path, input_names=["x"], output_names=["logits"])
    return acc


CACHE = Path(__file__).resolve().parents[2] / ".slipway_cache" / "quantize"


def cached_cnn() -> Path:
    """The trained digits CNN as ONNX, trained and exported once (cached across sessions and workers)."""
    from importlib.metadata import version

    # the torch version from its metadata: importing torch costs seconds when the export is cached
    key = hashlib.sha256(Path(__file__).read_bytes() + version("torch").encode()).hexdigest()[:12]
    return build_once(CACHE / f"digits-cnn-{key}.onnx", trained_cnn)
