"""Turn a 2-D MatMul by a constant followed by a bias Add into one Gemm."""

from __future__ import annotations

import onnx_ir as ir

from slipway.errors import UserError
from slipway.graph import Names, float_const, is_op, label, node_like, only_used_by, replace
from slipway.passes._fusion import Fuse, FusionPass, Match, Skip
from slipway.passes.base import register

TARGETS = ("ort", "openvino")


@register
class MatMulAddToGemm(FusionPass):
    """Add(MatMul(A, B), c) -> Gemm(A, B, c)

    Only where it helps the engine: A must be 2-D, B a constant 2-D weight and c a constant bias
    broadcastable to [N] (scalar, [N], [1, N]). A 3-D MatMul + Add is never rewritten into
    Reshape + Gemm + Reshape: ONNX Runtime fuses a batched MatMul with its Add, bias-GELU and
    friends itself (FusedMatMul, BiasGelu, ...) and the Reshapes would block those fusions.
    The rule is the same for ``target="ort"`` and ``"openvino"``. Risky: ORT's own optimizer
    does this fusion at run time, so the gain can be zero; the never-slower check decides.
    """

    name = "matmul-add-to-gemm"
    risky = True

    def __init__(self, *, target: str = "ort") -> None:
        if target not in TARGETS:
            raise UserError(f"matmul-add-to-gemm: unknown target {target!r} (expected one of {', '.join(TARGETS)})")
        self.target = target

    def match(self, node: ir.Node) -> Match:
        if not is_op(node, "Add") or len(node.inputs) != 2 or None in node.inputs:
            return None
        for i in (0, 1):
            matmul = node.inputs[i].producer()
            if is_op(matmul, "MatMul") and len(matmul.outputs) == 1 and None not in matmul.inputs:
                return self._match(node, matmul, node.inputs[1 - i])
        return None

    def _match(self, add: ir.Node, matmul: ir.Node, bias: ir.Value) -> Match:
        where = f"{label(add)} after {label(matmul)}"
        a, b = matmul.inputs
        if a.shape is None:
            return Skip(f"{where}: the rank of {a.name!r} is unknown")
        if len(a.shape) != 2:
            return Skip(f"{where}: A is {len(a.shape)}-D; only 2-D MatMul + Add becomes Gemm")
        w = float_const(b)
        if w is None or w.ndim != 2:
            return Skip(f"{where}: B is not a constant 2-D float weight")
        c = float_const(bias)
        if c is None:
            return None  # a residual sum, not a bias
        n = w.shape[1]
        if c.ndim > 2 or any(d != 1 for d in c.shape[:-1]) or (c.ndim and c.shape[-1] not in (1, n)):
            return Skip(f"{where}: the bias of shape {list(c.shape)} is not broadcastable to [{n}]")
        if not only_used_by(matmul.outputs[0], add):
            return Skip(f"{where}: the MatMul output is also used elsewhere")

        def apply(graph: ir.Graph, namer: Names) -> None:
            gemm = node_like(matmul, "Gemm", [a, b, bias], [])
            replace(graph, [matmul, add], [gemm], add.outputs[0], gemm.outputs[0])

        return Fuse("Add(MatMul)", apply)
