"""``slipway optimize IN -o OUT``: verified graph optimization that is never slower on the target."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from slipway.cli.common import DATA_OPTION, SHAPE_OPTION, console, err_console, parse_shapes, print_json
from slipway.errors import UserError


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def optimize(
    model: Path | None = typer.Argument(None, help="ONNX model file"),
    output: Path | None = typer.Option(None, "-o", "--output", help="where to write the optimized model"),
    passes: str | None = typer.Option(None, "--passes", help="comma-separated passes to run (default: all)"),
    skip: str | None = typer.Option(None, "--skip", help="comma-separated passes to leave out"),
    target: str = typer.Option("ort", "--target", help="engine the result must not be slower on: ort | openvino"),
    target_opset: int | None = typer.Option(None, "--target-opset", help="convert to this ONNX opset first"),
    shape: list[str] = SHAPE_OPTION,
    data: Path | None = DATA_OPTION,
    verify_each: bool = typer.Option(False, "--verify-each", help="verify after every pass (names the pass that broke it)"),
    atol: float | None = typer.Option(None, "--atol", help="absolute tolerance of the verification "
                                                           "(default 1e-4; 1e-3 for a Q/DQ model)"),
    rtol: float | None = typer.Option(None, "--rtol", help="relative tolerance, of the output's largest magnitude "
                                                           "(default 1e-3; 2e-2 for a Q/DQ model)"),
    allow_growth: bool = typer.Option(False, "--allow-growth", help="let constant folding grow the file by over 10%"),
    no_speed_check: bool = typer.Option(False, "--no-speed-check", help="skip timing against the input"),
    explain: bool = typer.Option(False, "--explain", help="also print why rules did not match"),
    list_passes: bool = typer.Option(False, "--list-passes", help="list the passes and exit"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON (nothing else on stdout)"),
) -> None:
    """Fold, eliminate and fuse (Conv-BN, RepVGG, LayerNorm, GELU...), verify, and keep only what is not slower."""
    from slipway.optimize import optimize as run_optimize
    from slipway.passes import PASSES
    from slipway.passes.manager import DEFAULT_ORDER

    if list_passes:
        for name in [n for n in DEFAULT_ORDER if n in PASSES] + sorted(set(PASSES) - set(DEFAULT_ORDER)):
            console.print(f"[bold]{name}[/]  {PASSES[name]().summary}")
        return
    if model is None:
        raise UserError("give the ONNX model to optimize (or --list-passes)")
    if output is None and not explain:
        raise UserError("give an output file with -o OUT (or --explain to only see what would match)")
    from slipway.model import check_output

    check_output(output, model)
    with err_console.status("optimizing...") as status:
        result = run_optimize(
            model, output, passes=_names(passes) or None, skip=_names(skip), target=target,
            target_opset=target_opset, verify_each=verify_each, atol=atol, rtol=rtol,
            allow_growth=allow_growth, speed_check=not no_speed_check, explain=explain,
            shapes=parse_shapes(shape) or None, data=data,
            progress=lambda text: status.update(f"optimizing: {text}"),
        )
    if as_json:
        print_json(result.to_dict())
        return
    _print(result, explain)


def _print(result, explain: bool) -> None:
    table = Table(title="passes", title_justify="left")
    for col, justify in (("pass", "left"), ("changes", "right"), ("rules", "left"), ("ms", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for name, r in result.passes.records.items():
        rules = ", ".join(f"{k}={n}" for k, n in sorted(r.changes.items(), key=lambda kv: -kv[1]))
        table.add_row(name, str(r.total), rules or "-", f"{1e3 * r.seconds:.1f}")
    console.print(table)
    ver = result.verification
    d = result.to_dict()["verification"]
    console.print(f"nodes: {result.nodes_before} -> {result.nodes_after}   "
                  f"iterations: {result.passes.iterations}")
    if ver is not None:
        console.print(f"verified on {'; '.join(ver.runs)}: max_abs {d['max_abs']:.3g}, max_rel {d['max_rel']:.3g}")
        for note in ver.notes:
            console.print(f"  {note}")
    if result.latency_before_ms is not None:
        ratio = result.latency_before_ms / max(result.latency_after_ms, 1e-9)
        console.print(f"latency: {result.latency_before_ms:.3f} ms -> {result.latency_after_ms:.3f} ms "
                      f"({ratio:.2f}x)   {result.decision}")
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    if explain:
        console.print("[bold]why rules did not match[/]" if result.explain else "no near-misses to explain")
        for line in result.explain:
            console.print(f"  {line}")
    if result.path:
        console.print(f"written to {result.path}")


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
