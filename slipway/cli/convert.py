"""``slipway convert MODEL_FILE -o out.onnx``: convert to ONNX, verify, and write only if it matches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from slipway.cli.common import DATA_OPTION, SHAPE_OPTION, console, err_console, parse_shapes, print_json
from slipway.errors import UserError

if TYPE_CHECKING:
    from slipway.verify import VerifiedModel


def parse_dynamic(specs: list[str] | None) -> dict[str, dict[int, str | None]]:
    """Parse ``--dynamic x:0=batch,x:2=h`` into ``{"x": {0: "batch", 2: "h"}}``.

    The name ``static`` keeps a dim fixed (``x:0=static``).
    """
    result: dict[str, dict[int, str | None]] = {}
    for spec in specs or []:
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            target, sep, name = item.partition("=")
            inp, colon, axis = target.rpartition(":")
            if not sep or not colon or not inp or not name:
                raise UserError(f"bad --dynamic {item!r}: expected INPUT:AXIS=NAME (for example x:0=batch)")
            try:
                ax = int(axis)
            except ValueError:
                raise UserError(f"bad --dynamic {item!r}: the axis must be an integer") from None
            result.setdefault(inp, {})[ax] = None if name == "static" else name
    return result


def parse_dtypes(specs: list[str] | None) -> dict[str, str]:
    """Parse ``--dtype ids=int64`` options."""
    result = {}
    for spec in specs or []:
        name, sep, dtype = spec.partition("=")
        if not sep or not name or not dtype:
            raise UserError(f"bad --dtype {spec!r}: expected NAME=DTYPE (for example ids=int64)")
        result[name] = dtype
    return result


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"bad --batch-sizes {text!r}: expected integers like 1,3") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise UserError(f"bad --batch-sizes {text!r}: expected positive integers like 1,3")
    return sizes


def convert(
    model: Path = typer.Argument(..., help="torch.export .pt2, TorchScript .pt/.ts, or scikit-learn .pkl/.joblib"),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write (only if verification passes)"),
    shape: list[str] = SHAPE_OPTION,
    data: Path | None = DATA_OPTION,
    dynamic: list[str] = typer.Option(None, "--dynamic", help="dynamic dims INPUT:AXIS=NAME[,...]; NAME 'static' fixes one"),
    dtype: list[str] = typer.Option(None, "--dtype", help="input dtype NAME=DTYPE for TorchScript (default float32)"),
    sample: Path = typer.Option(None, "--sample", help=".npy rows to verify a scikit-learn model on"),
    opset: int = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)"),
    atol: float = typer.Option(1e-4, "--atol", help="absolute tolerance"),
    rtol: float = typer.Option(1e-3, "--rtol", help="tolerance relative to max |reference| of each output"),
    batch_sizes: str = typer.Option("1,3", "--batch-sizes", help="batch sizes to verify at"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow loading pickles (scikit-learn files, "
                                      ".pt2 files with pickled parts): this runs code from the file"),
) -> None:
    """Convert MODEL to ONNX, verify it against its framework at several batch sizes, write OUTPUT."""
    from slipway.convert import FORMATS, detect_format, from_file
    from slipway.model import check_output

    options = {"shapes": parse_shapes(shape), "dtypes": parse_dtypes(dtype), "dynamic_dims": parse_dynamic(dynamic),
               "batch_sizes": parse_sizes(batch_sizes)}
    fmt = detect_format(model)
    check_output(output, model)
    with err_console.status(f"converting {model.name} ({FORMATS[fmt]}) and verifying it"):
        result = from_file(model, output, sample=sample, opset=opset, atol=atol, rtol=rtol,
                           trust_pickle=trust_pickle, data=data, **options)
    data = _result_dict(model, fmt, result)
    if as_json:
        print_json(data)
        return
    _print_summary(data)


def _result_dict(model: Path, fmt: str, result: VerifiedModel) -> dict:
    from slipway.model import dims, dtype_name

    m = result.model
    return {
        "input": str(model),
        "format": fmt,
        "output": str(result.path),
        "converted_from": m.metadata_props.get("slipway.converted_from", ""),
        "opset": m.opset_imports.get("", None),
        "inputs": [{"name": v.name, "dtype": dtype_name(v), "shape": dims(v)} for v in m.graph.inputs
                   if v.name not in m.graph.initializers],
        "outputs": [{"name": v.name, "dtype": dtype_name(v), "shape": dims(v)} for v in m.graph.outputs],
        "verification": result.report.to_dict(),
    }


def _print_summary(d: dict) -> None:
    v = d["verification"]
    console.print(f"[bold]{d['input']}[/] -> [bold]{d['output']}[/]  ({d['converted_from']}, opset {d['opset']})")
    for kind in ("inputs", "outputs"):
        for x in d[kind]:
            console.print(f"  {kind[:-1]:6} {x['name']}  {x['dtype']}  {x['shape']}")
    table = Table("output", "max abs", "max rel", "allowed", "compared", "ok", title_justify="left",
                  title=f"verified against {v['reference']} at batch sizes "
                        f"{', '.join(map(str, v['batch_sizes']))} (atol {v['atol']:g}, rtol {v['rtol']:g})")
    for o in v["outputs"]:
        table.add_row(o["name"], _num(o["max_abs"]), _num(o["max_rel"]), _num(o["allowed"]),
                      "exactly" if o["exact"] else "numerically", "[green]yes[/]" if o["ok"] else "[red]no[/]")
    console.print(table)
    console.print(f"engine: {v['engine']}; runs: {'; '.join(v['runs'])}")
    for note in v["notes"]:
        console.print(f"[yellow]note:[/] {note}")


def _num(x: float | str) -> str:
    return x if isinstance(x, str) else f"{x:.3g}"


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
