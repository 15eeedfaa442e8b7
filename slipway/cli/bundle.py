"""``slipway bundle PIPELINE.yaml -o app/``: the pipeline, its models and golden cases in one folder or .zip;
with ``--triton``, a Triton model repository serving the pipeline as an ensemble."""

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
    triton: bool = typer.Option(False, "--triton", help="write a Triton model repository instead: the pipeline "
                                                        "as an ensemble of its models and runs of ops"),
    sample: Path = typer.Option(None, "--sample", help="with --triton: an image the pipeline runs on once, to "
                                                      "learn the types of the tensors between models"),
    name: str = typer.Option(None, "--name", help="with --triton: the ensemble's name (default: the pipeline's)"),
    raw_image: bool = typer.Option(False, "--raw-image", help="with --triton: take the image as raw UINT8 HWC "
                                                              "pixels instead of an encoded JPEG / PNG"),
    instances: int = typer.Option(1, "--instances", help="with --triton: instances of each run of ops (requests "
                                                         "run that many at once)"),
) -> None:
    """Bundle PIPELINE: every model it uses, the rewritten pipeline file, tuned settings, golden cases
    and a manifest of SHA-256 hashes, written atomically (or, with --triton, a model repository)."""
    import json

    if triton:
        _triton(pipeline, output, sample, name, raw_image, instances, force)
        return

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


def _triton(pipeline: Path, output: Path, sample: Path | None, name: str | None, raw: bool, instances: int,
            force: bool) -> None:
    from slipway.errors import UserError
    from slipway.pipeline import Pipeline
    from slipway.pipeline.bundle import golden_feeds
    from slipway.pipeline.triton import segments, to_repository

    if sample is None:
        raise UserError("--triton needs --sample IMAGE: the pipeline runs on it once to learn its tensors' types")
    p = Pipeline.from_file(pipeline)
    out = to_repository(p, output, sample=golden_feeds(p, sample, 0), name=name,
                        image_input="raw" if raw else "encoded", instances=instances, force=force)
    parts = segments(p)
    console.print(f"wrote {out}: ensemble {name or p.name!r} of {len(parts)} composing models "
                  f"({', '.join('+'.join(s.name for s in part) for part in parts)})")


def register(app: typer.Typer) -> None:
    app.command("bundle")(bundle)
