"""The test zoo: the models of ``slipway.zoo`` exported to ONNX once into a cache.

``build(name)`` gives a seeded ``nn.Module`` (eval mode) and an example input; ``export(name)``
gives the path of its ONNX export (dynamo exporter, dynamic batch dim "batch"), cached under
``.slipway_cache/zoo`` keyed by the zoo source and the torch version so that every test
session and every xdist worker reuses one export.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from slipway.zoo import NAMES, ZOO, build
from tests.cache import build_once

__all__ = ["NAMES", "ZOO", "build", "export"]

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SLIPWAY_ZOO_CACHE", ROOT / ".slipway_cache" / "zoo"))


def _key(name: str) -> str:
    import torch

    import slipway.zoo.models

    src = Path(slipway.zoo.models.__file__).read_bytes() + Path(__file__).read_bytes()
    return hashlib.sha256(src + torch.__version__.encode() + name.encode()).hexdigest()[:12]


def export(name: str) -> Path:
    """Export a zoo model to ONNX once (cached across sessions and workers) and return its path."""
    return build_once(CACHE / f"{name}-{_key(name)}.onnx", lambda path: _export_to(name, path))


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
