"""Small models for the compare tests: a chain of three convolutions, perturbed, quantized, FP16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from tests.passes.util import make, tensor

SHAPE = (1, 3, 8, 8)


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
        "W2": (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32),
        "W3": (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32),
    }


def chain(w: dict[str, np.ndarray] | None = None, batch: int | str = "batch") -> ir.Model:
    """x -> conv1 -> relu1 -> conv2 -> relu2 -> conv3 -> y (tensors c1, r1, c2, r2, y)."""
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["y"], name="conv3"),
    ]
    return make(nodes, [tensor("x", [batch, 3, 8, 8])], [tensor("y", [batch, 4, 8, 8])], w or weights())


def perturbed(node_weight: str = "W2", scale: float = -1.0) -> ir.Model:
    """The chain with one convolution's weight multiplied by ``scale`` (sign flipped by default)."""
    w = weights()
    w[node_weight] = w[node_weight] * np.float32(scale)
    return chain(w)


def save(model: ir.Model, path: Path) -> Path:
    ir.save(model, path)
    return path


def fp16(path: Path) -> Path:
    """The chain converted to FP16 by onnxruntime's converter (Casts at the inputs and outputs)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(ir.to_proto(chain()), keep_io_types=True)
    onnx.save(proto, path)
    return path


def qdq(tmp: Path) -> Path:
    """The chain statically quantized to QDQ (int8) by onnxruntime, calibrated on random inputs."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.batches = iter([{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    src, out = save(chain(), tmp / "fp32_for_qdq.onnx"), tmp / "qdq.onnx"
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs advice on pre-processing
    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ)
    return out
