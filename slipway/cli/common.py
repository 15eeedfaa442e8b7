"""Helpers shared by the CLI command files."""

from __future__ import annotations

import json
import sys

from rich.console import Console

from slipway.errors import UserError

console = Console()
err_console = Console(stderr=True)


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
    """Parse ``--shape x=1,3,224,224`` options into ``{"x": [1, 3, 224, 224]}``."""
    shapes: dict[str, list[int]] = {}
    for spec in specs or []:
        name, sep, dims = spec.partition("=")
        if not sep or not name or not dims:
            raise UserError(f"bad --shape {spec!r}: expected NAME=D0,D1,... (for example x=1,3,224,224)")
        try:
            shapes[name] = [int(d) for d in dims.replace("x", ",").split(",") if d]
        except ValueError:
            raise UserError(f"bad --shape {spec!r}: dims must be integers") from None
        if any(d <= 0 for d in shapes[name]):
            raise UserError(f"bad --shape {spec!r}: dims must be positive")
    return shapes


def human(n: float | int | None, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".strip()
