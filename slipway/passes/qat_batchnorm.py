"""``fold-qat-batchnorm``: the BatchNormalization a QAT export leaves after a quantized Conv.

The work is in :mod:`slipway.quantize.qat` (imported when the pass runs, so the optimize pipeline
does not load the quantization package for float models).
"""

from __future__ import annotations

import onnx_ir as ir

from slipway.passes.base import Pass, PassResult, register

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@register
class FoldQatBatchNorm(Pass):
    """BatchNormalization(Conv(x, DequantizeLinear(Wq, s))) -> Conv(x, DequantizeLinear(Wq', s'))"""

    name = "fold-qat-batchnorm"

    def run(self, model: ir.Model) -> PassResult:
        if not _has_qdq(model):
            return PassResult(model, False)
        from slipway.quantize.qat import fold_bn_into_qdq_conv

        return fold_bn_into_qdq_conv(model)

    def explain(self, model: ir.Model) -> list[str]:
        if not _has_qdq(model):
            return []
        from slipway.quantize.qat import FoldQatBatchNorm as Impl

        return Impl().explain(model)


def _has_qdq(model: ir.Model) -> bool:
    return any(n.op_type in QDQ_OPS for n in ir.traversal.RecursiveGraphIterator(model.graph))
