"""Helpers shared by the CLI command files."""

from __future__ import annotations

import json
import re
import sys

import typer
from rich.console import Console

from slipway.errors import UserError

console = Console()
err_console = Console(stderr=True)

# the same two options on every command that runs a model (verification, timing, comparison)
SHAPE_OPTION = typer.Option(
    None, "--shape", help="input sizes NAME=D0,D1,... (repeatable, or a=1,2,b=3 in one); runs use exactly these "
                          "(plus a second batch size where the batch is dynamic); default: derived from the model")
DATA_OPTION = typer.Option(
    None, "--data", help=".npz of real inputs by name (np.savez); runs use exactly these arrays")


def print_json(obj: object) -> None:
    """Print machine-readable output on stdout (nothing else goes to stdout with --json)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_default) + "\n")


def _default(o: object) -> object:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def parse_shapes(specs: list[str] | None) -> dict[str, list[int]]:
    """Parse ``--shape`` options into ``{"x": [1, 3, 224, 224]}``.

    Each option is ``NAME=D0,D1,...``; several inputs may also share one option
    (``input=1,512,state=2,1,128``): a token with ``=`` starts the next input. Dims may be
    separated by ``,`` or ``x`` (``x=1x3x224x224``). Every command that runs a model parses
    shapes here, so the same mistake gets the same message everywhere.
    """
    shapes: dict[str, list[int]] = {}
    for spec in specs or []:
        for name, dims in _split_shape_spec(spec):
            if name in shapes:
                raise UserError(f"bad --shape {spec!r}: input {name!r} is given twice")
            try:
                shapes[name] = [int(d) for d in re.split(r"[,x]", dims) if d]
            except ValueError:
                raise UserError(f"bad --shape {spec!r}: dims of {name!r} must be integers, got {dims!r}") from None
            if any(d <= 0 for d in shapes[name]):
                raise UserError(f"bad --shape {spec!r}: dims of {name!r} must be positive")
    return shapes


def _split_shape_spec(spec: str) -> list[tuple[str, str]]:
    """``"a=1,2,b=3"`` -> ``[("a", "1,2"), ("b", "3")]``; a malformed spec is a one-line error."""
    parts: list[tuple[str, list[str]]] = []
    for token in spec.split(","):
        name, sep, first = token.partition("=")
        if sep:
            parts.append((name.strip(), [first.strip()]))
        elif parts:
            parts[-1][1].append(token.strip())
        else:
            parts.append(("", [token]))
    out = [(name, ",".join(d for d in dims if d)) for name, dims in parts]
    if not out or any(not name or not dims for name, dims in out):
        raise UserError(f"bad --shape {spec!r}: expected NAME=D0,D1,... (for example x=1,3,224,224)")
    return out


def human(n: float | int | None, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".strip()
