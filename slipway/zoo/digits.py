"""A small CNN trained in seconds on scikit-learn's handwritten digits: a zoo model whose outputs mean something.

The other zoo models carry seeded *random* weights: right for measuring cost and speed, but
their top-1 answers are noise, so an INT8 model's accuracy cannot be judged on them. This one
is trained, on CPU, on ``sklearn.datasets.load_digits`` (1,797 8x8 grey images of the digits
0-9, shipped inside scikit-learn: nothing is downloaded), upsampled to 16x16 and scaled to
[0, 1]. A fixed, stratified split keeps :data:`TEST_SIZE` images held out; the network reaches
about 98-99% top-1 on them in a few seconds on two cores. Used by ``slipway demo`` (INT8
accuracy against true labels), the benchmarks and the tests. Needs torch and scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slipway.errors import MissingDependencyError

__all__ = ["SIZE", "TEST_SIZE", "EPOCHS", "digits_data", "DigitsCNN", "train_digits_cnn", "fit", "accuracy"]

SIZE = 16  # the 8x8 images are upsampled (bilinear) to SIZE x SIZE
TEST_SIZE = 360  # held-out images (20%), stratified by class
EPOCHS = 6
BATCH = 32
Split = tuple[np.ndarray, np.ndarray]  # (images [N, 1, SIZE, SIZE] float32 in [0, 1], labels [N] int64)


def digits_data(seed: int = 0) -> tuple[Split, Split]:
    """``((x_train, y_train), (x_test, y_test))``: the digits as ``[N, 1, SIZE, SIZE]`` float32 in [0, 1].

    The split is stratified and fixed by ``seed``; the test split has :data:`TEST_SIZE` images.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise MissingDependencyError("scikit-learn", "sklearn") from None
    import cv2

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # [N, 8, 8], pixel values 0..16
    up = np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for im in images])
    x = np.clip(up, 0.0, 1.0)[:, None].astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, stratify=y, random_state=seed)
    return (np.ascontiguousarray(x_train), y_train), (np.ascontiguousarray(x_test), y_test)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch") from None
    return torch


def DigitsCNN() -> Any:  # noqa: N802 - a factory that reads like the class it builds
    """Conv-BN-ReLU x3 (16 -> 32 -> 64 channels, max-pooled 16 -> 8 -> 4), global average pool, Linear(64, 10)."""
    nn = _torch().nn

    def block(cin: int, cout: int) -> list[Any]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16), nn.MaxPool2d(2),
        *block(16, 32), nn.MaxPool2d(2),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def accuracy(module: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``module`` (eval mode, no grad) on ``x`` against ``y``, in percent."""
    torch = _torch()
    module.eval()
    with torch.no_grad():
        pred = module(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean() * 100.0)


def train_digits_cnn(seed: int = 0, epochs: int = EPOCHS) -> tuple[Any, Split, Split]:
    """Train :func:`DigitsCNN` on the digits; return ``(module in eval mode, (x_train, y_train), (x_test, y_test))``.

    Deterministic for a given ``seed`` and machine (``torch.manual_seed``, a seeded shuffle,
    Adam with a one-cycle schedule); a few seconds on two CPU cores. Other CPUs may round
    differently, so the weights differ in the last bits, not the accuracy (about 98-99%).
    """
    torch = _torch()
    train, test = digits_data(seed)
    torch.manual_seed(seed)
    module = DigitsCNN()
    fit(module, train, epochs, seed)
    return module, train, test


def fit(module: Any, train: Split, epochs: int, seed: int = 0, lr: float = 3e-3, max_lr: float = 1e-2) -> Any:
    """Train ``module`` on ``train`` for ``epochs`` (Adam, a one-cycle schedule up to ``max_lr``, a seeded
    shuffle, batches of :data:`BATCH`, one thread); the training of :func:`train_digits_cnn`, and the same
    short fine-tune for pruned copies. Returns the module in eval mode."""
    torch = _torch()
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    steps = (len(x) + BATCH - 1) // BATCH
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=epochs * steps)
    g = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: one thread is fastest (several spin on a loaded machine) and stabler
    try:
        module.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for i in range(steps):
                idx = order[i * BATCH:(i + 1) * BATCH]
                opt.zero_grad()
                loss_fn(module(x[idx]), y[idx]).backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    module.eval()
    return module
