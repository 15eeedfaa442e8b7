"""Reference architectures, built in code with seeded random weights.

Used by ``slipway demo``, the benchmarks and the test zoo. ResNet-18 and MobileNetV2 follow
torchvision's layer layout (so published MAC and parameter counts apply); the others are
compact models with the op mix of their real counterparts. Needs torch (``slipway[torch]``).

One model is *trained* rather than random, for numbers that need meaningful outputs (INT8
accuracy): :func:`slipway.zoo.digits.train_digits_cnn`, a small CNN trained in seconds on CPU on
scikit-learn's bundled digits (needs ``slipway[sklearn]`` too; nothing is downloaded).
"""

from __future__ import annotations

from typing import NamedTuple

from slipway.errors import MissingDependencyError, UserError
from slipway.zoo.digits import train_digits_cnn


class Entry(NamedTuple):
    factory: str  # class name in slipway/zoo/models.py
    input_shape: tuple[int, ...]
    dynamic: dict[int, str]  # extra named dynamic dims besides batch


ZOO: dict[str, Entry] = {
    "resnet18": Entry("ResNet18", (1, 3, 224, 224), {}),
    "mobilenetv2": Entry("MobileNetV2", (1, 3, 224, 224), {}),
    "repvgg": Entry("RepVGG", (1, 3, 64, 64), {}),
    "transformer": Entry("TinyTransformer", (1, 16, 32), {1: "seq"}),
    "yolo": Entry("TinyYolo", (1, 3, 128, 128), {}),
    "unet": Entry("TinyUNet", (1, 3, 64, 64), {}),
    "pose": Entry("TinyPose", (1, 3, 128, 96), {}),
}
NAMES = list(ZOO)
__all__ = ["Entry", "ZOO", "NAMES", "build", "train_digits_cnn"]


def _randomize_bn(module) -> None:
    import torch

    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def build(name: str):
    """Return ``(module, example_input)`` for a zoo model; weights are seeded."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch") from None
    from slipway.zoo import models

    if name not in ZOO:
        raise UserError(f"unknown zoo model {name!r}; known: {', '.join(NAMES)}")
    entry = ZOO[name]
    torch.manual_seed(0)
    module = getattr(models, entry.factory)()
    _randomize_bn(module)
    module.eval()
    x = torch.randn(*entry.input_shape, generator=torch.Generator().manual_seed(2))
    return module, x
