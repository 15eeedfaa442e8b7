"""``slipway prune MODEL -o OUT --ratio R | --target-macs F | --target-latency MS``: structured channel pruning."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from slipway.cli.common import DATA_OPTION, SHAPE_OPTION, console, err_console, human, parse_shapes, print_json
from slipway.cli.quantize import load_metric
from slipway.errors import UserError


def prune(
    model: Path = typer.Argument(..., help="ONNX model file"),
    output: Path | None = typer.Option(None, "-o", "--output", help="where to write the pruned model"),
    ratio: float | None = typer.Option(None, "--ratio", help="share of each channel group removed, in (0, 1)"),
    target_macs: float | None = typer.Option(None, "--target-macs", help="share of the MACs kept (0.5 keeps half)"),
    target_latency: float | None = typer.Option(None, "--target-latency", help="latency to reach, ms at batch 1 on "
                                                                               "--target (measured)"),
    criterion: str = typer.Option("l1", "--criterion", help="l1 | l2 | fpgm | bn-scale | activation"),
    scope: str = typer.Option("uniform", "--scope", help="uniform (every group alike) | global (one threshold)"),
    calib: str | None = typer.Option(None, "--calib", help="calibration data (.npy/.npz, image folder): statistics "
                                                           "re-estimated after pruning; the activation criterion"),
    eval_data: str | None = typer.Option(None, "--eval", help="evaluation data (.npz with a 'labels' array, ...)"),
    metric: str | None = typer.Option(None, "--metric", help="top1 | none | MODULE:FUNC | file.py:FUNC"),
    max_drop: float | None = typer.Option(None, "--max-drop", help="largest metric drop allowed (points for top1): "
                                                                   "the ratio is lowered until it holds"),
    recovery: str = typer.Option("auto", "--recovery", help="auto | stats | bias | none (auto: stats with --calib)"),
    round_to: str | None = typer.Option(None, "--round-to", help="kept channels a multiple of N, or auto: the "
                                                                 "fastest of 1, 8, 16 measured on --target (the "
                                                                 "default; 1 with --no-speed-check)"),
    target: str = typer.Option("ort", "--target", help="engine to evaluate and time on: ort | openvino"),
    shape: list[str] = SHAPE_OPTION,
    data: Path | None = DATA_OPTION,
    explain: bool = typer.Option(False, "--explain", help="list every channel group and why it cannot be pruned"),
    no_speed_check: bool = typer.Option(False, "--no-speed-check", help="skip timing unpruned vs pruned"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON (nothing else on stdout)"),
) -> None:
    """Remove whole channels (filters) of convolutions and linear layers, with the layers that must shrink with
    them; re-estimate statistics from calibration data; keep the accuracy drop within --max-drop."""
    from slipway.prune import explain as run_explain
    from slipway.prune import prune as run_prune

    shapes = parse_shapes(shape) or None
    if explain:
        groups = run_explain(model)
        if as_json:
            print_json([g.to_dict() for g in groups])
        else:
            _groups(groups, kept=False)
        return
    if output is None:
        raise UserError("give the output file with -o / --output (or --explain to list the groups)")
    rnd: int | str | None = round_to
    if round_to not in (None, "auto"):
        try:
            rnd = int(round_to)
        except ValueError:
            raise UserError(f"bad --round-to {round_to!r}: a positive integer or auto") from None
    with console.status("pruning", spinner="dots") if not as_json else _Quiet() as status:
        result = run_prune(model, output, ratio=ratio, target_macs=target_macs, target_latency=target_latency,
                           criterion=criterion, scope=scope, calib=calib, eval_data=eval_data,
                           metric=load_metric(metric), max_drop=max_drop, recovery=recovery, round_to=rnd,
                           target=target, shapes=shapes, data=None if data is None else str(data),
                           speed_check=not no_speed_check, progress=status.update)
    if as_json:
        print_json(result.to_dict())
        return
    _print(result)


class _Quiet:
    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _text: str) -> None:
        return None


def _groups(groups: list, kept: bool = True) -> None:
    table = Table(title="channel groups", title_justify="left")
    for col in ("#", "channels", *(("kept",) if kept else ()), "produced by", "prunable / why not"):
        table.add_column(col, overflow="fold")
    for g in groups:
        producers = ", ".join(g.producers[:3]) + (f" (+{len(g.producers) - 3})" if len(g.producers) > 3 else "")
        table.add_row(str(g.gid), str(g.size), *((str(g.kept),) if kept else ()), producers,
                      "yes" if g.prunable else "; ".join(g.blocked))
    console.print(table)


def _print(result) -> None:
    table = Table(title="result", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("criterion", f"{result.criterion} ({result.scope}), ratio {result.ratio:.3g}, channels rounded to "
                  f"{result.round_to}, recovery {result.recovery} ({result.recovered} layers)")
    table.add_row("MACs", f"{human(result.macs_before)} -> {human(result.macs_after)} ({result.macs_kept:.1%} kept)")
    table.add_row("parameters", f"{human(result.params_before)} -> {human(result.params_after)}")
    s = result.score
    if s is not None:
        table.add_row(s.metric, f"{s.fp32:.2f} (unpruned) -> {s.value:.2f}   drop {s.drop:.3f}"
                      + (f" (max {result.max_drop:g})" if result.max_drop is not None else ""))
    if result.speedup is not None:
        table.add_row("latency (batch 1)", f"{result.latency_before_ms:.3f} ms -> {result.latency_after_ms:.3f} ms "
                      f"({result.speedup:.2f}x) on {result.target}")
    console.print(table)
    _groups([g for g in result.groups if g.kept < g.size])
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]")
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    if result.path:
        console.print(f"written to {result.path}")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)
