"""``slipway quantize IN -o OUT --calib DATA``: INT8 / FP16 / BF16, evaluated, within an accuracy budget, timed."""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slipway.cli.common import DATA_OPTION, SHAPE_OPTION, console, err_console, parse_shapes, print_json
from slipway.errors import UserError

SENSITIVITY_ROWS = 15


def load_metric(spec: str | None) -> str | Callable | None:
    """``top1``, ``none``, ``MODULE:FUNC`` or ``path/to/file.py:FUNC`` -> what ``quantize(metric=)`` takes."""
    if spec is None or spec == "top1":
        return "top1"
    if spec in ("none", "agreement"):
        return None
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise UserError(f"bad --metric {spec!r}: use top1, none, MODULE:FUNC or path/to/file.py:FUNC")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UserError(f"--metric: file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(f"slipway_user_metric_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise UserError(f"--metric: importing {path} raised {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise UserError(f"--metric: cannot import module {where!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"--metric: {where} has no function {name!r}")
    return fn


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UserError(f"bad {what} {text!r}: expected numbers separated by commas") from None
    if not values:
        raise UserError(f"bad {what} {text!r}: no numbers")
    return values


def preprocess_spec(size: str | None, mean: str | None, std: str | None, scale: float | None, bgr: bool,
                    resize: str) -> Any:
    """An ImageSpec from the image options, or None when none was given (the defaults then apply)."""
    from slipway.quantize.data import ImageSpec

    if size is None and mean is None and std is None and scale is None and not bgr and resize == "stretch":
        return None
    hw = _floats(size, "--size")
    if hw is not None and (len(hw) != 2 or any(d < 1 or d != int(d) for d in hw)):
        raise UserError(f"bad --size {size!r}: expected H,W (for example 224,224)")
    if resize not in ("stretch", "letterbox"):
        raise UserError(f"bad --resize {resize!r}: stretch or letterbox")
    m, s = _floats(mean, "--mean"), _floats(std, "--std")
    return ImageSpec(size=(int(hw[0]), int(hw[1])) if hw else None, mean=(m if m and len(m) > 1 else (m or (0.0,))[0]),
                     std=(s if s and len(s) > 1 else (s or (1.0,))[0]), scale=1 / 255 if scale is None else scale,
                     rgb=not bgr, resize=resize)


def quantize(
    model: Path = typer.Argument(..., help="ONNX model file"),
    output: Path = typer.Option(..., "-o", "--output", help="where to write the quantized model"),
    calib: str | None = typer.Option(None, "--calib", help="calibration data: image folder, .npy/.npz file or folder"),
    method: str = typer.Option("auto", "--method", help="calibration method: auto (entropy, else the best of the "
                                                         "others when it loses over 1 point) | entropy | minmax | "
                                                         "percentile | mse"),
    precision: str = typer.Option("int8", "--precision", help="int8 | fp16 | bf16"),
    symmetric: bool | None = typer.Option(None, "--symmetric/--asymmetric",
                                          help="activation ranges (default: what this CPU runs best)"),
    per_tensor: bool = typer.Option(False, "--per-tensor", help="one weight scale per tensor, not per channel"),
    reduce_range: bool | None = typer.Option(None, "--reduce-range/--full-range",
                                             help="7-bit weights (default: on x86 CPUs without VNNI/AMX)"),
    max_drop: float | None = typer.Option(None, "--max-drop", help="largest metric drop allowed (points for top1)"),
    eval_data: str | None = typer.Option(None, "--eval", help="evaluation data (.npz with a 'labels' array, ...)"),
    metric: str | None = typer.Option(None, "--metric", help="top1 | none | MODULE:FUNC | file.py:FUNC"),
    fallback: str = typer.Option("fp32", "--fallback", help="precision of the layers reverted: fp32 | fp16"),
    target: str = typer.Option("ort", "--target", help="engine to evaluate and time on: ort | openvino"),
    cache: Path | None = typer.Option(None, "--cache", help="calibration cache file (re-used with another method)"),
    calib_limit: int | None = typer.Option(None, "--calib-limit", help="use at most this many calibration samples"),
    eval_limit: int | None = typer.Option(None, "--eval-limit", help="use at most this many evaluation samples"),
    size: str | None = typer.Option(None, "--size", help="images: H,W of the model input"),
    mean: str | None = typer.Option(None, "--mean", help="images: per-channel mean after scaling, e.g. 0.485,0.456,0.406"),
    std: str | None = typer.Option(None, "--std", help="images: per-channel std, e.g. 0.229,0.224,0.225"),
    scale: float | None = typer.Option(None, "--scale", help="images: pixel scale before mean/std (default 1/255)"),
    bgr: bool = typer.Option(False, "--bgr", help="images: keep OpenCV's BGR channel order"),
    resize: str = typer.Option("stretch", "--resize", help="images: stretch | letterbox"),
    shape: list[str] = SHAPE_OPTION,
    data: Path | None = DATA_OPTION,
    atol: float | None = typer.Option(None, "--atol", help="absolute tolerance of the final check against FP32 "
                                                           "(default: int8 1e-3, fp16 1e-3, bf16 1e-2)"),
    rtol: float | None = typer.Option(None, "--rtol", help="tolerance relative to FP32's largest output "
                                                           "(default: int8 1.0, fp16 0.05, bf16 0.2)"),
    no_prepare: bool = typer.Option(False, "--no-prepare", help="skip the graph clean-up before placing Q/DQ"),
    no_speed_check: bool = typer.Option(False, "--no-speed-check", help="skip timing FP32 vs quantized"),
    speed_budget: float = typer.Option(2.0, "--speed-budget", help="seconds to spend timing FP32 vs quantized"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON (nothing else on stdout)"),
) -> None:
    """Quantize to INT8 (QDQ) with calibration, or convert to FP16/BF16; evaluate against FP32, keep the most
    sensitive layers in float until --max-drop holds, and time FP32 vs quantized on the target engine."""
    from slipway.model import check_output
    from slipway.quantize import quantize as run_quantize

    check_output(output, model)
    if cache is not None:
        check_output(cache, model, what="--cache")
    chosen_metric = load_metric(metric)
    spec = preprocess_spec(size, mean, std, scale, bgr, resize)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("quantizing", total=None)

        def progress(stage: str, done: int, total: int | None) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        result = run_quantize(
            model, output, calib=calib, method=method, precision=precision, symmetric=symmetric,
            per_channel=not per_tensor, reduce_range=reduce_range, max_drop=max_drop, eval_data=eval_data, metric=chosen_metric,
            fallback=fallback, target=target, cache=cache, preprocess=spec, calib_limit=calib_limit,
            eval_limit=eval_limit, prepare=not no_prepare, speed_check=not no_speed_check,
            speed_budget_s=speed_budget, progress=progress, shapes=parse_shapes(shape) or None,
            data=None if data is None else str(data), atol=atol, rtol=rtol,
        )
    if as_json:
        print_json(result.to_dict())
        return
    _print(result)


def _num(x: float | None, fmt: str = ".2f") -> str:
    if x is None:
        return "-"
    return format(x, fmt) if math.isfinite(x) else str(x)


def _summary(result) -> Table:
    table = Table(title="result", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    s, sp = result.score, result.speed
    table.add_row("precision", result.precision + (f" ({result.method} calibration)" if result.method else ""))
    if result.quant is not None:
        counts = {k: n for k, n in result.quant.counts.items() if k not in ("skipped", "activations", "weights",
                                                                         "biases")}
        table.add_row("quantized nodes", ", ".join(f"{k} {n}" for k, n in counts.items()))
        table.add_row("formats", result.metadata().get("slipway.quantize.formats", "-"))
    if s is not None:
        table.add_row(f"{s.metric}", f"{_num(s.fp32)} (FP32) -> {_num(s.value)}   drop {_num(s.drop, '.3f')}"
                      + (f" (max {result.max_drop:g})" if result.max_drop is not None else ""))
        if s.agreement is not None and result.metric.kind != "agreement":
            table.add_row("top-1 agreement with FP32", f"{_num(s.agreement)} %")
        table.add_row("output SNR / cosine", f"{_num(s.snr_db, '.1f')} dB / {_num(s.cosine, '.5f')}")
        table.add_row("evaluated on", f"{result.eval_samples} samples of {result.eval_source} on {result.engine}")
    if sp is not None and sp.latency_fp32_ms is not None:
        table.add_row("latency (batch 1)", f"{sp.latency_fp32_ms:.3f} ms FP32 -> {sp.latency_quant_ms:.3f} ms "
                      f"({sp.speedup:.2f}x) on {result.engine}")
    if sp is not None:
        table.add_row("int8 instructions", sp.isa)
    return table


def _sensitivity(result) -> Table:
    from slipway.quantize.sensitivity import table as rows

    floated = {f.node for f in result.float_layers}
    table = Table(title="sensitivity (most sensitive first; local = the layer quantized alone)", title_justify="left")
    for col in ("#", "node", "op", "local SNR dB", "local cos", "accum. SNR dB", "accum. cos", "kept"):
        table.add_column(col, justify="left" if col in ("node", "op", "kept") else "right", overflow="fold")
    for row in rows(result.sensitivity, SENSITIVITY_ROWS):
        table.add_row(*row, "float" if row[1] in floated else "int8")
    return table


def _print(result) -> None:
    console.print(_summary(result))
    if result.sensitivity:
        console.print(_sensitivity(result))
        if len(result.sensitivity) > SENSITIVITY_ROWS:
            console.print(f"  ... {len(result.sensitivity) - SENSITIVITY_ROWS} more layers (--json lists all)")
    if result.steps:
        console.print("accuracy budget: " + ", ".join(f"{st.layers} float -> drop {st.drop:.3g}" for st in result.steps))
    for f in result.float_layers:
        console.print(f"  kept in {f.precision}: {f.node} ({f.op_type}) - {f.why}")
    if result.max_drop is not None and not result.float_layers:
        console.print("accuracy budget met with every layer quantized")
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]")
    for w in result.all_warnings():
        err_console.print(f"[yellow]warning:[/] {w}")
    if result.path:
        console.print(f"written to {result.path}")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
