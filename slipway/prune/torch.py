"""The PyTorch path: for users who have the ``nn.Module``, the same criteria through torch-pruning's dependency
graph, a fine-tune callback, then export and verification with slipway's converter.

``prune_torch(module, example, output, ratio=0.3)`` deep-copies the module (the caller's is never changed),
prunes the copy with ``torch_pruning.pruner.MetaPruner`` (importance: ``l1`` / ``l2`` group magnitude,
``fpgm``, ``bn-scale``; ``target_macs`` bisects the ratio on torch-pruning's own MAC count), re-estimates its
BatchNorm statistics on ``calib`` batches when given (adaptive BN), calls ``finetune(module)`` when given (the
user's training loop), and exports it with :func:`slipway.convert.from_torch`, which verifies the ONNX file
against the pruned module before writing it. The output layers (by default the last ``nn.Linear``, else the
last convolution) keep their channels. Needs ``pip install 'slipway[prune]'``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slipway.errors import MissingDependencyError, UserError

__all__ = ["prune_torch", "TorchPruneResult", "TORCH_CRITERIA"]

TORCH_CRITERIA = ("l1", "l2", "fpgm", "bn-scale")
MACS_STEPS = 10
MAX_RATIO = 0.95


@dataclass
class TorchPruneResult:
    module: Any  # the pruned (and fine-tuned) copy
    ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    verified: Any  # slipway.verify.VerifiedModel of the export

    @property
    def macs_kept(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError:
        raise MissingDependencyError("torch-pruning", "prune") from None
    return torch_pruning


def _importance(tp: Any, criterion: str) -> Any:
    if criterion not in TORCH_CRITERIA:
        raise UserError(f"criterion {criterion!r} is not available on the PyTorch path (choose from "
                        f"{', '.join(TORCH_CRITERIA)})")
    if criterion == "fpgm":
        return tp.importance.FPGMImportance()
    if criterion == "bn-scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2)


def _outputs(module: Any) -> list[Any]:
    import torch

    linear = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    convs = [m for m in module.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    return linear[-1:] or convs[-1:]


def _pruned(module: Any, example: Any, criterion: str, ratio: float, ignored: Sequence[Any] | None,
            round_to: int | None) -> Any:
    tp = _tp()
    m = copy.deepcopy(module).eval()
    keep_out = list(ignored) if ignored is not None else _outputs(m)
    if ignored is not None:  # the caller named modules of the original: map them into the copy
        by_id = {id(a): b for a, b in zip(module.modules(), m.modules(), strict=True)}
        keep_out = [by_id.get(id(x), x) for x in keep_out]
    pruner = tp.pruner.MetaPruner(m, example, importance=_importance(tp, criterion), pruning_ratio=ratio,
                                  ignored_layers=keep_out, round_to=round_to)
    pruner.step()
    return m.eval()


def _adabn(module: Any, calib: Sequence[Any]) -> None:
    import torch

    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    module.train()
    with torch.no_grad():
        for batch in calib:
            module(*batch) if isinstance(batch, tuple) else module(batch)
    module.eval()


def prune_torch(
    module: Any,
    example_inputs: Any,
    output: str | os.PathLike | None = None,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    criterion: str = "l1",
    calib: Sequence[Any] | None = None,
    finetune: Callable[[Any], Any] | None = None,
    ignored_layers: Sequence[Any] | None = None,
    round_to: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> TorchPruneResult:
    """Prune a copy of ``module`` (see the module docstring); ``calib``: batches (tensors or tuples) for
    BatchNorm re-estimation; ``finetune(module)``: called on the pruned copy before export."""
    if (ratio is None) == (target_macs is None):
        raise UserError("give exactly one of ratio or target_macs")
    for name, x in (("ratio", ratio), ("target_macs", target_macs)):
        if x is not None and (not isinstance(x, (int, float)) or not 0 < x < 1):
            raise UserError(f"{name} must be a number between 0 and 1 (exclusive), got {x!r}")
    tp = _tp()
    from slipway.convert import from_torch

    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    macs0, params0 = tp.utils.count_ops_and_params(module, example)
    if target_macs is not None:
        lo, hi = 0.0, MAX_RATIO
        if tp.utils.count_ops_and_params(_pruned(module, example, criterion, hi, ignored_layers, round_to),
                                         example)[0] > target_macs * macs0:
            raise UserError(f"cannot reach {target_macs:g} of the MACs by pruning {MAX_RATIO:.0%} of the channels")
        for _ in range(MACS_STEPS):
            mid = (lo + hi) / 2
            macs = tp.utils.count_ops_and_params(_pruned(module, example, criterion, mid, ignored_layers, round_to),
                                                 example)[0]
            lo, hi = (lo, mid) if macs <= target_macs * macs0 else (mid, hi)
        ratio = hi
    pruned = _pruned(module, example, criterion, float(ratio), ignored_layers, round_to)
    if calib is not None:
        _adabn(pruned, calib)
    if finetune is not None:
        finetune(pruned)
        pruned.eval()
    macs1, params1 = tp.utils.count_ops_and_params(pruned, example)
    verified = from_torch(pruned, example, output, input_names=input_names, output_names=output_names)
    return TorchPruneResult(pruned, float(ratio), int(macs0), int(macs1), int(params0), int(params1), verified)
