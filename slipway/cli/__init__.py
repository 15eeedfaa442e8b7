"""The ``slipway`` command line: one thin file per subcommand over the public API."""

from __future__ import annotations

import sys

import typer

from slipway.errors import SlipwayError

app = typer.Typer(
    name="slipway",
    help="Take trained neural networks to production: convert, analyze, optimize, run, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Take trained neural networks to production: convert, analyze, optimize, run, serve."""


def _register() -> None:
    # Imported here so that `slipway --help` stays fast and each command file stays independent.
    from slipway.cli import (
        analyze,
        bench,
        bundle,
        compare,
        convert,
        demo,
        export,
        info,
        machine,
        optimize,
        perf,
        pipeline,
        prune,
        quantize,
        run,
        serve,
        stream,
        tune,
    )

    for mod in (info, convert, analyze, optimize, quantize, prune, compare, bench, tune, pipeline, run, bundle, serve,
                stream, perf, export, machine, demo):
        mod.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: errors a user caused print one line and exit with code 1."""
    _register()
    try:
        app(args=argv, prog_name="slipway")
    except SlipwayError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(1)
