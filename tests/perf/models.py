"""Tiny hand-built models for the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from tests.passes.util import make, tensor


def matmul(batch: int | str = "N", k: int = 256) -> ir.Model:
    """``Relu(x @ W)`` with x [batch, k]: a fraction of a millisecond per run."""
    w = np.random.default_rng(0).standard_normal((k, k)).astype(np.float32)
    return make([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                [tensor("x", [batch, k])], [tensor("z", [batch, k])], {"w": w})


def mixed() -> ir.Model:
    """Three inputs sharing the batch dim: float features, int64 ids into a 4-row table, a bool mask,
    and a dynamic ``seq`` dim: ``Where(mask, Gather(table, ids) + x, 0)``."""
    table = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),  # [N, seq, 8]
        helper.make_node("Add", ["emb", "x"], ["s"]),
        helper.make_node("Where", ["mask", "s", "zero"], ["y"]),
    ]
    return make(nodes, [tensor("x", ["N", "seq", 8]), tensor("ids", ["N", "seq"], TensorProto.INT64),
                        tensor("mask", ["N", "seq", 8], TensorProto.BOOL)],
                [tensor("y", ["N", "seq", 8])], {"table": table, "zero": np.zeros((), np.float32)})


def save(model: ir.Model, path: Path) -> Path:
    onnx.save(ir.serde.serialize_model(model), path)
    return path
