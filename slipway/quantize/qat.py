"""QAT models in: Q/DQ models exported from quantization-aware training.

A PyTorch QAT export may leave a ``BatchNormalization`` after a Conv whose weight is read through
``DequantizeLinear``; the ``fold-qat-batchnorm`` pass (:mod:`slipway.passes.qat_batchnorm`, where
the fold and its numbers are explained) folds it through the dequantization.

``has_qdq(model)`` tells whether a model already carries Q/DQ (a QAT or already quantized model).
"""

from __future__ import annotations

import onnx_ir as ir

from slipway.passes.base import PassResult
from slipway.passes.qat_batchnorm import FoldQatBatchNorm, has_qdq

__all__ = ["FoldQatBatchNorm", "fold_bn_into_qdq_conv", "has_qdq"]


def fold_bn_into_qdq_conv(model: ir.Model) -> PassResult:
    """Run :class:`FoldQatBatchNorm` on ``model`` (changed in place); the result says what it folded."""
    return FoldQatBatchNorm()(model)
