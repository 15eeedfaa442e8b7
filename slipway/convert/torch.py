"""PyTorch -> ONNX through ``torch.onnx.export``, verified against PyTorch before anything is written.

Three kinds of model are accepted:

* an ``nn.Module`` (with example inputs): exported with the dynamo exporter
  (``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)``); ``dynamo=False`` picks the
  legacy TorchScript-based exporter instead;
* a ``torch.export.ExportedProgram``: its dynamic dims are fixed by the program; slipway names
  them (``batch`` for dim 0 unless told otherwise) but cannot make a static dim dynamic;
* a TorchScript module (``torch.jit.trace``/``script``): only the legacy exporter reads these.

torch is an optional extra, imported only when a function here runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway.errors import MissingDependencyError, SlipwayError, UserError
from slipway.model import check, check_output
from slipway.verify import DEFAULT_BATCH_SIZES, Feeds, Runner, VerifiedModel, commit, input_specs, verify

DynamicDims = Mapping[str, Mapping[int, "str | None"]]
CONVERTED_FROM = "slipway.converted_from"


def require_torch() -> Any:
    """Import torch, or raise ``MissingDependencyError("torch", "torch")``."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch") from None
    return torch


def from_torch(
    model: Any,
    example_inputs: Any = None,
    output_path: str | os.PathLike | None = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_dims: DynamicDims | None = None,
    dim_sizes: Mapping[str, Sequence[int]] | None = None,
    opset: int | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    dynamo: bool = True,
    seed: int = 0,
    source: str | None = None,
) -> VerifiedModel:
    """Export a PyTorch model to ONNX, verify it against PyTorch, then (optionally) write it.

    ``example_inputs`` is a tensor or a tuple of tensors (positional inputs); an
    ExportedProgram defaults to the inputs stored in it. Dim 0 of every input is a dynamic dim
    named ``batch``; ``dynamic_dims={"x": {0: "batch", 2: "height"}}`` names more, and an axis
    mapped to ``None`` stays static. The model is verified on its example inputs and on random
    inputs at each of ``batch_sizes`` (other named dims at ``dim_sizes[name]``, default the
    example size and twice it), against PyTorch in eval mode under ``no_grad``, in onnxruntime
    (see :mod:`slipway.verify`). Past ``atol``/``rtol`` a ``VerificationError`` names the
    output and nothing is written; otherwise the errors go into ``metadata_props`` and the model
    is saved atomically to ``output_path`` when given. Returns a ``VerifiedModel``.
    """
    check_output(output_path, create_dirs=True)
    torch = require_torch()
    kind = _kind(model, torch)
    args = _example_args(model, example_inputs, kind, torch)
    names = list(input_names) if input_names is not None else _default_input_names(model, kind, len(args))
    if len(names) != len(args):
        raise UserError(f"{len(names)} input names for {len(args)} example inputs")
    with _eval_mode(model, kind):
        fn = model.module() if kind == "ExportedProgram" else model
        outs = _output_names(_call(fn, args, torch, "on the example inputs"), output_names, torch)
        reference = _torch_runner(fn, names, outs, torch, args[0].device if args else None)
        per_input = _dims_per_input(names, args, dynamic_dims)
        with quiet():
            onnx_model, ranges, notes = _export(model, kind, args, names, outs, per_input, opset, dynamo, torch)
        check(onnx_model, where="exported model")
        examples = {n: _to_numpy(a) for n, a in zip(names, args, strict=True)}
        report = verify(reference, onnx_model, input_specs(onnx_model, examples), atol=atol, rtol=rtol,
                        batch_sizes=batch_sizes, dim_sizes=dim_sizes, ranges=ranges, extra_feeds=[examples],
                        seed=seed, reference_name=f"torch {_version(torch)} eager (eval, no_grad)")
    report.notes.extend(notes)
    exporter = "dynamo" if (dynamo and kind != "TorchScript") else "legacy TorchScript exporter"
    label = source or _label(model, kind)
    meta = {CONVERTED_FROM: f"torch {_version(torch)} {kind} {label} (torch.onnx.export, {exporter})"}
    return commit(onnx_model, report, output_path, metadata=meta)


@contextlib.contextmanager
def _eval_mode(model: Any, kind: str) -> Iterator[None]:
    """Put an nn.Module in eval mode for export and verification; restore its flag after."""
    was_training = kind == "nn.Module" and model.training
    if kind == "nn.Module":
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _output_names(first: Any, output_names: Sequence[str] | None, torch: Any) -> list[str]:
    count = len(_tensor_leaves(first, torch))
    names = list(output_names) if output_names is not None else _default_output_names(first, torch)
    if len(names) != count:
        raise UserError(f"{len(names)} output names for {count} output tensors")
    if len(set(names)) != len(names):
        raise UserError(f"output names must be unique, got {names}")
    return names


def _version(torch: Any) -> str:
    return torch.__version__.split("+")[0]


def _kind(model: Any, torch: Any) -> str:
    if isinstance(model, torch.export.ExportedProgram):
        return "ExportedProgram"
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        return "TorchScript"
    if isinstance(model, torch.nn.Module):
        return "nn.Module"
    raise UserError(f"expected a torch nn.Module, ExportedProgram or TorchScript module, got {type(model).__name__}")


def _label(model: Any, kind: str) -> str:
    if kind == "TorchScript":
        return getattr(model, "original_name", type(model).__name__)
    if kind == "ExportedProgram":
        return "program"
    return type(model).__name__


def _example_args(model: Any, example_inputs: Any, kind: str, torch: Any) -> tuple:
    if example_inputs is None and kind == "ExportedProgram" and model.example_inputs is not None:
        args, kwargs = model.example_inputs
        if kwargs:
            raise UserError("the exported program takes keyword inputs; pass example_inputs positionally")
        example_inputs = args
    if example_inputs is None:
        raise UserError(f"a {kind} needs example inputs (a tensor or a tuple of tensors)")
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise UserError(f"example input {i} is a {type(a).__name__}; slipway exports tensor inputs only")
    return args


def input_names_of(model: Any, kind: str) -> list[str]:
    """The input names a model declares (forward's parameters, the program's or graph's inputs)."""
    if kind == "ExportedProgram":
        return list(model.graph_signature.user_inputs)
    if kind == "TorchScript":
        graph = model.graph if hasattr(model, "graph") else model.forward.graph
        names = [re.sub(r"\.\d+$", "", v.debugName()) for v in graph.inputs()]
        return names[1:] if names and names[0] == "self" else names
    import inspect

    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _default_input_names(model: Any, kind: str, n: int) -> list[str]:
    names = input_names_of(model, kind)[:n]
    return names + [f"input_{i}" for i in range(len(names), n)]


def _default_output_names(out: Any, torch: Any) -> list[str]:
    """``output`` for one tensor; ``output_0``.. for a sequence; dict keys (``q_0`` nested)."""
    from torch.utils import _pytree

    leaves, _ = _pytree.tree_flatten_with_path(out)
    names = []
    for path, leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            continue
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if not parts:
            names.append("output")
        elif isinstance(path[0], _pytree.SequenceKey):
            names.append("_".join(["output"] + parts))
        else:
            names.append("_".join(parts))
    return names


def _tensor_leaves(out: Any, torch: Any) -> list[Any]:
    from torch.utils import _pytree

    return [x for x in _pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


def _to_numpy(t: Any) -> np.ndarray:
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    return t.numpy().copy()


def _call(fn: Any, args: Sequence[Any], torch: Any, what: str, hint: str = "") -> Any:
    try:
        with torch.no_grad():
            return fn(*args)
    except Exception as e:
        shapes = " ".join(f"[{','.join(str(d) for d in a.shape)}]" for a in args)
        raise UserError(f"PyTorch failed to run the model {what} {shapes}: {type(e).__name__}: "
                        f"{_first_line(e)}{hint}") from None


def _torch_runner(fn: Any, input_names: Sequence[str], output_names: Sequence[str], torch: Any,
                  device: Any = None) -> Runner:
    """Run the PyTorch model on numpy feeds (moved to ``device``, the example inputs' device)."""

    def run(feeds: Feeds) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device) for n in input_names]
        hint = ("; if the model does not accept these sizes, choose others (batch_sizes, dim_sizes) or keep the "
                "dim static (dynamic_dims={'x': {0: None}}, --dynamic x:0=static)")
        leaves = _tensor_leaves(_call(fn, args, torch, "while verifying, on inputs", hint), torch)
        if len(leaves) != len(output_names):
            raise UserError(f"the model returned {len(leaves)} tensors but has {len(output_names)} output names")
        return {n: _to_numpy(t) for n, t in zip(output_names, leaves, strict=True)}

    return run


def _dims_per_input(names: Sequence[str], args: Sequence[Any], dynamic_dims: DynamicDims | None) -> list[dict[int, str]]:
    """Dynamic dims per input: {axis: name}; dim 0 is ``batch`` unless overridden."""
    unknown = sorted(set(dynamic_dims or {}) - set(names))
    if unknown:
        raise UserError(f"dynamic_dims names unknown input {unknown[0]!r}; the inputs are {list(names)}")
    result = []
    for name, a in zip(names, args, strict=True):
        dims: dict[int, str | None] = {0: "batch"} if a.dim() > 0 else {}
        for axis, dim_name in (dynamic_dims or {}).get(name, {}).items():
            ax = int(axis) + a.dim() if int(axis) < 0 else int(axis)
            if not 0 <= ax < a.dim():
                raise UserError(f"dynamic dim {dim_name!r}: input {name!r} has {a.dim()} dims, no axis {axis}")
            if dim_name is not None and (not isinstance(dim_name, str) or not dim_name):
                raise UserError(f"dynamic dim names must be non-empty strings, got {dim_name!r} for {name}:{axis}")
            dims[ax] = dim_name
        result.append({ax: n for ax, n in dims.items() if n is not None})
    return result


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep the exporter's prints, log lines and warnings out of the user's terminal.

    The exporter prints partial graphs and logs warnings for things slipway reports itself
    (an export failure becomes one ``UserError`` line); ``--json`` output stays clean.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _export(model: Any, kind: str, args: tuple, names: list[str], outs: list[str],
            per_input: list[dict[int, str]], opset: int | None, dynamo: bool, torch: Any
            ) -> tuple[ir.Model, dict[str, tuple[int | None, int | None]], list[str]]:
    """Run the exporter; returns the ONNX model, the dim ranges it knows, and notes."""
    try:
        if kind == "TorchScript" or not dynamo:
            return _export_legacy(model, args, names, outs, per_input, opset, torch), {}, []
        if kind == "ExportedProgram":
            return _export_program(model, names, outs, per_input, opset, torch)
        prog = torch.onnx.export(model, args, dynamo=True, input_names=names, output_names=outs,
                                 dynamic_shapes=tuple(per_input), opset_version=opset, verbose=False)
        return prog.model, _program_ranges(prog.exported_program, prog.model), []
    except SlipwayError:
        raise
    except Exception as e:
        hint = "" if kind == "TorchScript" or not dynamo else " (dynamo=False tries the legacy exporter)"
        raise UserError(f"torch.onnx.export failed: {_export_error(e)}{hint}") from None


def _export_legacy(model: Any, args: tuple, names: list[str], outs: list[str],
                   per_input: list[dict[int, str]], opset: int | None, torch: Any) -> ir.Model:
    import onnx

    buf = io.BytesIO()
    axes = {n: dict(d) for n, d in zip(names, per_input, strict=True) if d}
    kwargs = {"opset_version": opset} if opset else {}
    torch.onnx.export(model, args, buf, dynamo=False, input_names=names, output_names=outs,
                      dynamic_axes=axes, **kwargs)
    return ir.serde.deserialize_model(onnx.load_from_string(buf.getvalue()))


def _program_symbols(ep: Any) -> list[dict[int, Any]]:
    """For each user input of an ExportedProgram: {axis: SymInt} of its dynamic dims."""
    by_name = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    result = []
    for name in ep.graph_signature.user_inputs:
        val = by_name[name].meta.get("val") if name in by_name else None
        shape = getattr(val, "shape", ())
        result.append({ax: d for ax, d in enumerate(shape) if not isinstance(d, int)})
    return result


def _range(ep: Any, sym: Any) -> tuple[int | None, int | None]:
    vr = ep.range_constraints.get(sym.node.expr)
    if vr is None:
        return None, None

    def as_int(x: Any) -> int | None:
        if getattr(x, "is_finite", True) is False:
            return None
        try:
            return int(x)
        except Exception:  # sympy infinities and symbolic bounds
            return None

    return as_int(vr.lower), as_int(vr.upper)


def _program_ranges(ep: Any, model: ir.Model) -> dict[str, tuple[int | None, int | None]]:
    """Value ranges of the ONNX model's named dims, from the program's range constraints."""
    ranges: dict[str, tuple[int | None, int | None]] = {}
    if ep is None:
        return ranges
    inputs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    for value, syms in zip(inputs, _program_symbols(ep), strict=False):
        for axis, sym in syms.items():
            dim = value.shape[axis] if value.shape is not None and axis < len(value.shape) else None
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                ranges[dim.value] = _range(ep, sym)
    return ranges


def _export_program(ep: Any, names: list[str], outs: list[str], per_input: list[dict[int, str]],
                    opset: int | None, torch: Any
                    ) -> tuple[ir.Model, dict[str, tuple[int | None, int | None]], list[str]]:
    """Export an ExportedProgram; its dynamic dims get the requested names."""
    symbols = _program_symbols(ep)
    rename: dict[str, str] = {}
    owner: dict[str, str] = {}
    notes: list[str] = []
    for name, wanted, syms in zip(names, per_input, symbols, strict=False):
        for axis, dim_name in wanted.items():
            if axis not in syms:
                if axis == 0 and dim_name == "batch":
                    notes.append(f"input {name!r} has a static dim 0 in the exported program; the batch size is fixed")
                    continue
                raise UserError(f"input {name!r} dim {axis} is static in the exported program, so it cannot be "
                                f"made dynamic ({dim_name!r}); re-export with torch.export.Dim for that dim")
            _claim(rename, owner, str(syms[axis]), dim_name, f"{name}:{axis}")
        for axis, sym in syms.items():
            if str(sym) not in rename:
                _claim(rename, owner, str(sym), f"{name}_dim{axis}", f"{name}:{axis}")
    prog = torch.onnx.export(ep, dynamo=True, input_names=names, output_names=outs, opset_version=opset,
                             verbose=False)
    prog.rename_axes(rename)
    return prog.model, _program_ranges(ep, prog.model), notes


def _claim(rename: dict[str, str], owner: dict[str, str], symbol: str, dim_name: str, where: str) -> None:
    """Give ``symbol`` the name ``dim_name`` unless another symbol already holds that name."""
    if symbol in rename:
        if rename[symbol] != dim_name and dim_name != "batch":
            raise UserError(f"dim {where} equals dim {owner[symbol]} in the exported program; it cannot be named "
                            f"both {rename[symbol]!r} and {dim_name!r}")
        return
    taken = {v: k for k, v in rename.items()}
    if dim_name in taken:
        dim_name = f"{where.replace(':', '_dim')}"
    rename[symbol] = dim_name
    owner[symbol] = where


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _export_error(e: BaseException) -> str:
    """The useful part of an exporter error, on one line."""
    text = str(e)
    m = re.search(r"## Exception summary\s*(.+?)(?:\n\s*\n\(Refer|\Z)", text, re.S)
    if m:
        summary = re.sub(r"<class '([\w.]+)'>", lambda g: g.group(1).rsplit(".", 1)[-1], m.group(1))
        text = " ".join(s.strip() for s in summary.splitlines() if s.strip())
    else:
        cause = e.__cause__ or e
        text = f"{type(cause).__name__}: {_first_line(cause)}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text[:500]
