"""``slipway compare A [B]``: layer-by-layer differences of two runs and the first node that diverges."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from slipway.cli.common import DATA_OPTION, SHAPE_OPTION, console, err_console, parse_shapes, print_json
from slipway.errors import UserError

HELP = """Compare two runs layer by layer and name the first node whose output diverges.

Runs model A (the reference) and B on the same inputs and compares every intermediate float
tensor (matched by name, or through Cast and QuantizeLinear/DequantizeLinear pairs). Three uses:
two models on one backend (`compare fp32.onnx int8.onnx`), one model on two backends
(`compare m.onnx --backend-b openvino`), one model under two option sets
(`compare m.onnx --set-a graph_optimization_level=disabled --set-b graph_optimization_level=all`).

A tensor diverges when max_abs > atol + rtol * max|A|. Exit code: 0 when the comparison ran,
whether or not the runs diverge (with --fail: 2 when they diverge); 1 on bad input.

Stage parity of a pipeline: `compare P.yaml --reference rapidocr --image page.png [--image ...]`
(or `--reference rapid-layout`) runs the pipeline file (an ocr / layout pipeline) and the peer
library on the same models and images, compares each stage in pipeline order (arrays: max abs /
rel; texts: exact-match rate; boxes: IoU matching) and names the first stage past tolerance, with
the end metric (text exact-match rate, box matched share / IoU). A single image may also be given
as B. With --fail: exit 2 when a stage diverges.
"""


def compare(
    model_a: Path = typer.Argument(..., help="model A (the reference), an ONNX file; or a pipeline .yaml with --reference"),
    model_b: Path | None = typer.Argument(None, help="model B (default: model A again, on --backend-b / --set-b)"),
    backend: str = typer.Option("ort", "--backend", help="backend that runs A (ort, openvino, ...)"),
    backend_b: str | None = typer.Option(None, "--backend-b", help="backend that runs B (default: --backend)"),
    set_a: list[str] = typer.Option(None, "--set-a", help="backend setting for A, KEY=VALUE (repeatable)"),
    set_b: list[str] = typer.Option(None, "--set-b", help="backend setting for B, KEY=VALUE; B takes A's otherwise"),
    precision: str = typer.Option("fp32", "--precision", help="precision the engine runs A in (fp32, fp16, bf16)"),
    precision_b: str | None = typer.Option(None, "--precision-b", help="precision for B (default: --precision)"),
    data: Path | None = DATA_OPTION,
    inputs: Path | None = typer.Option(None, "--inputs", hidden=True, help="the old name of --data"),
    shape: list[str] = SHAPE_OPTION,
    atol: float = typer.Option(1e-4, "--atol", help="absolute tolerance"),
    rtol: float = typer.Option(1e-3, "--rtol", help="tolerance relative to max|A| of each tensor"),
    batch: int = typer.Option(1, "--batch", help="batch size of random inputs"),
    dim: list[str] = typer.Option(None, "--dim", help="size of another dynamic dim of random inputs, NAME=SIZE"),
    seed: int = typer.Option(0, "--seed", help="seed of the random inputs"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON (nothing else on stdout)"),
    show_all: bool = typer.Option(False, "--all", help="show every layer, not only the first divergent and worst"),
    top: int = typer.Option(20, "--top", help="layers shown without --all (the first divergent and the worst)"),
    fail: bool = typer.Option(False, "--fail", help="exit with code 2 when the runs diverge"),
    bisect: bool = typer.Option(False, "--bisect", help="apply the optimize passes one by one to A and name the "
                                                        "first that changes its outputs"),
    passes: str | None = typer.Option(None, "--passes", help="with --bisect: comma-separated passes "
                                                             "(default: the optimize pipeline)"),
    reference: str | None = typer.Option(None, "--reference", help="stage parity of pipeline file A against a "
                                                                   "peer library: rapidocr or rapid-layout"),
    image: list[Path] = typer.Option(None, "--image", help="with --reference: an image to run (repeatable)"),
) -> None:
    from slipway.backends import Options
    from slipway.compare import compare as run_compare

    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if reference is not None or model_a.suffix.lower() in (".yaml", ".yml"):
        images = ([model_b] if model_b is not None else []) + list(image or [])
        _stages(model_a, reference, images, atol, rtol, as_json, fail)
        return
    if image:
        raise UserError("--image goes with --reference (stage parity of a pipeline file)")
    inputs = data if data is not None else inputs
    shapes = parse_shapes(shape) or None
    if bisect:
        if model_b is not None:
            raise UserError("--bisect takes one model (it compares the model before and after each pass)")
        _bisect(model_a, backend, passes, inputs, atol, rtol, batch, seed, parse_dims(dim), as_json, top, fail, shapes)
        return
    settings_a = parse_settings(set_a, "--set-a")
    options_a = Options(precision=precision, settings=settings_a)
    options_b = None
    if set_b or precision_b is not None:
        options_b = Options(precision=precision_b or precision,
                            settings={**settings_a, **parse_settings(set_b, "--set-b")})
    with err_console.status("running both models..."):
        report = run_compare(model_a, model_b, backend_a=backend, backend_b=backend_b, options_a=options_a,
                             options_b=options_b, feeds=inputs, atol=atol, rtol=rtol, batch=batch, seed=seed,
                             dims=parse_dims(dim), shapes=shapes)
    if as_json:
        print_json(report.to_dict())
    else:
        print_report(report, None if show_all else top)
    if fail and report.diverged:
        raise typer.Exit(2)




def _stages(pipeline_file: Path, reference: str | None, images: list[Path], atol: float, rtol: float,
            as_json: bool, fail: bool) -> None:
    from slipway.cli.run import read_image
    from slipway.pipeline import Pipeline
    from slipway.pipeline.parity import compare_stages, reference_for

    if reference is None:
        raise UserError(f"{pipeline_file.name} is a pipeline file: name the implementation to compare it with, "
                        "--reference rapidocr or --reference rapid-layout")
    if not images:
        raise UserError("--reference needs at least one image (--image PATH, repeatable)")
    pipe = Pipeline.from_file(pipeline_file)
    ref = reference_for(pipe, reference)
    feeds = [{"image": read_image(p)} for p in images]
    with err_console.status(f"running the pipeline and {reference} on {len(feeds)} image(s)..."):
        report = compare_stages(pipe, ref, feeds, atol=atol, rtol=rtol)
    if as_json:
        print_json(report.to_dict())
    else:
        report.print(console)
    if fail and report.diverged:
        raise typer.Exit(2)


def _bisect(model: Path, backend: str, passes: str | None, inputs: Path | None, atol: float, rtol: float,
            batch: int, seed: int, dims: dict[str, int], as_json: bool, top: int, fail: bool,
            shapes: dict[str, list[int]] | None = None) -> None:
    from slipway.compare import bisect as run_bisect
    from slipway.passes.manager import make_passes

    chosen = make_passes([p.strip() for p in (passes or "").split(",") if p.strip()] or None)
    with err_console.status(f"bisecting {len(chosen)} passes..."):
        result = run_bisect(model, chosen, backend=backend, feeds=inputs, atol=atol, rtol=rtol, batch=batch,
                            seed=seed, dims=dims, shapes=shapes)
    if as_json:
        print_json(result.to_dict())
    else:
        table = Table(title="passes applied one by one (errors of the final outputs vs the original model)",
                      title_justify="left")
        for col in ("pass", "changed", "max_abs", "max_rel", "ok"):
            table.add_column(col, justify="left" if col == "pass" else "right")
        for step in result.steps:
            table.add_row(step.name, "yes" if step.modified else "-", _f(step.max_abs), _f(step.max_rel),
                          "[green]ok[/]" if step.ok else f"[red]{escape(step.error) or 'DIVERGES'}[/]")
        console.print(table)
        if result.culprit is None:
            console.print("[bold green]no pass changes the outputs past tolerance[/]")
        else:
            console.print(f"[bold red]first pass that changes the outputs: {result.culprit}[/]")
            if result.report is not None:
                print_report(result.report, top)
    if fail and result.culprit is not None:
        raise typer.Exit(2)


def parse_settings(specs: list[str] | None, option: str) -> dict[str, object]:
    """``["graph_optimization_level=all", "threads=2"]`` -> ``{"graph_optimization_level": "all", "threads": 2}``."""
    out: dict[str, object] = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad {option} {spec!r}: expected KEY=VALUE (for example graph_optimization_level=all)")
        out[key.strip()] = _value(value.strip())
    return out


def _value(text: str) -> object:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_dims(specs: list[str] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for spec in specs or []:
        name, sep, size = spec.partition("=")
        if not sep or not name or not size.strip().isdigit() or int(size) < 1:
            raise UserError(f"bad --dim {spec!r}: expected NAME=SIZE with a positive integer size (e.g. seq=32)")
        out[name] = int(size)
    return out


def _f(x: float, spec: str = ".3g") -> str:
    return format(x, spec) if x == x else "nan"


def print_report(report, top: int | None) -> None:
    """The layers table (the first divergent node and the worst ``top``), final outputs and a verdict."""
    console.print(f"[bold]A[/]: {escape(report.a)}\n[bold]B[/]: {escape(report.b)}")
    console.print("inputs: " + ", ".join(f"{k}={v}" for k, v in report.inputs.items())
                  + f"   tolerance: atol {report.atol:g} + rtol {report.rtol:g} x max|A|")
    first = report.first_divergent_node
    shown = report.layers if top is None else _pick(report.layers, first.diff if first else None, top)
    title = f"{len(shown)} of {len(report.layers)} matched tensors"
    if len(shown) < len(report.layers):
        title += " (the first divergent and the worst by SNR; --all shows every one)"
    console.print(_table(shown, title, first.diff if first else None))
    console.print(_table(report.outputs, "final outputs (models run as they are)", None))
    unmatched = [("A", report.unmatched_a), ("B", report.unmatched_b)]
    console.print("unmatched: " + "; ".join(f"{len(names)} only in {side}" + (f" ({escape(_head(names))})" if names
                                                                              else "") for side, names in unmatched))
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    if first is not None:
        d = first.diff
        console.print(f"[bold red]first divergent node: {escape(first.name or '(unnamed)')} ({first.op_type}) -> "
                      f"{escape(first.tensor)}: max_abs {d.max_abs:.3g}, max_rel {d.max_rel:.3g}, "
                      f"cosine {_f(d.cosine, '.6f')}, SNR {_f(d.snr_db, '.1f')} dB[/]")
    elif report.diverged:
        console.print("[bold red]the final outputs diverge[/]")
    else:
        console.print("[bold green]no divergence: every matched tensor is within tolerance[/]")


def _head(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "")


def _pick(layers: list, first: object, top: int) -> list:
    """The first divergent layer and the worst others (lowest SNR), kept in topological order."""
    def badness(d) -> tuple:
        snr = d.snr_db if d.snr_db == d.snr_db else float("-inf")
        return (d.ok, snr, -d.max_rel)

    chosen = {id(first)} if first is not None else set()
    for d in sorted(layers, key=badness):
        if len(chosen) >= top:
            break
        chosen.add(id(d))
    return [d for d in layers if id(d) in chosen]


def _table(rows: list, title: str, first: object) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("tensor", "node", "op", "B tensor"):
        table.add_column(col, overflow="fold")
    for col in ("max_abs", "max_rel", "cosine", "snr_db", ""):
        table.add_column(col, justify="right", no_wrap=True)
    for d in rows:
        b = "" if d.b_name == d.name and not d.via else d.b_name + (f" (via {d.via})" if d.via else "")
        verdict = "ok" if d.ok else ("shape" if d.shape_mismatch else "DIVERGES")
        style = "bold red" if d is first else (None if d.ok else "yellow")
        table.add_row(escape(d.name), escape(d.node), d.op_type, escape(b), f"{d.max_abs:.3g}", f"{d.max_rel:.3g}",
                      _f(d.cosine, ".6f"), _f(d.snr_db, ".1f"), verdict, style=style)
    return table


def register(app: typer.Typer) -> None:
    app.command("compare", help=HELP)(compare)
