"""``slipway analyze``: placeholder, replaced by its real implementation."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
