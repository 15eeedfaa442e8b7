"""``slipway bundle PIPELINE.yaml -o app/``: the pipeline, its models and golden cases in one folder or .zip."""

from __future__ import annotations

from pathlib import Path

import typer

from slipway.cli.common import console, print_json


def bundle(
    pipeline: Path = typer.Argument(..., help="pipeline YAML file"),
    output: Path = typer.Option(..., "-o", "--output", help="bundle folder (with --zip: the .zip file)"),
    as_zip: bool = typer.Option(False, "--zip", help="write one .zip file instead of a folder"),
    golden: list[Path] = typer.Option(None, "--golden", help="image read with OpenCV: its outputs now are the "
                                                              "expected ones (repeatable)"),
    rtol: float = typer.Option(1e-3, "--rtol", help="relative tolerance of float outputs in the self-test"),
    atol: float = typer.Option(1e-3, "--atol", help="absolute tolerance of float outputs in the self-test"),
    force: bool = typer.Option(False, "--force", help="replace an existing bundle at the output path"),
    allow_python: bool = typer.Option(False, "--allow-python", help="allow python steps (they import code)"),
    check: bool = typer.Option(False, "--check", help="then load the bundle and run its self-test"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Bundle PIPELINE: every model it uses, the rewritten pipeline file, tuned settings, golden cases
    and a manifest of SHA-256 hashes, written atomically."""
    import json

    from slipway.pipeline.bundle import MANIFEST, load_bundle
    from slipway.pipeline.bundle import bundle as write_bundle

    out = write_bundle(pipeline, output, golden=list(golden or ()), zip=as_zip, force=force, rtol=rtol,
                       atol=atol, allow_python=allow_python)
    if check:
        load_bundle(out, allow_python=allow_python).close()
    if as_json:
        if out.is_dir():
            print_json(json.loads((out / MANIFEST).read_text()))
        else:
            import zipfile

            with zipfile.ZipFile(out) as z:
                print_json(json.loads(z.read(MANIFEST)))
        return
    console.print(f"wrote {out}" + ("  (self-test passed)" if check else ""))


def register(app: typer.Typer) -> None:
    app.command("bundle")(bundle)
