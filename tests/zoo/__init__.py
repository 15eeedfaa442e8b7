"""The test zoo: models built in code and exported to ONNX once into a cache.

``build(name)`` gives a seeded ``nn.Module`` (eval mode) and an example input; ``export(name)``
gives the path of its ONNX export (dynamo exporter, dynamic batch dim "batch"), cached under
``.slipway_cache/zoo`` keyed by the zoo source and the torch version so that every test
session and every xdist worker reuses one export.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SLIPWAY_ZOO_CACHE", ROOT / ".slipway_cache" / "zoo"))


class Entry(NamedTuple):
    factory: str  # class name in tests/zoo/models.py
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
    import torch

    from tests.zoo import models

    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {NAMES}")
    entry = ZOO[name]
    torch.manual_seed(0)
    module = getattr(models, entry.factory)()
    _randomize_bn(module)
    module.eval()
    x = torch.randn(*entry.input_shape, generator=torch.Generator().manual_seed(2))
    return module, x


def _key(name: str) -> str:
    import torch

    src = (Path(__file__).parent / "models.py").read_bytes() + Path(__file__).read_bytes()
    return hashlib.sha256(src + torch.__version__.encode() + name.encode()).hexdigest()[:12]


def export(name: str) -> Path:
    """Export a zoo model to ONNX once (cached across sessions and workers) and return its path."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}-{_key(name)}.onnx"
    if path.exists():
        return path
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            _export_to(name, path)
    return path


def _export_to(name: str, path: Path) -> None:
    import torch

    module, x = build(name)
    dims = {0: "batch", **ZOO[name].dynamic}
    program = torch.onnx.export(
        module,
        (x,),
        input_names=["x"],
        output_names=["y"],
        dynamic_shapes={"x": dims},
        dynamo=True,
        verbose=False,
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx")
    os.close(fd)
    try:
        program.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
