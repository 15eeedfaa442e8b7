"""``export(model, engine, out)``: an engine's own files for an ONNX model, verified, plus a manifest.

``slipway export MODEL --engine mnn|ncnn|openvino -o DIR`` writes DIR with the engine's files (``model.mnn``;
``model.ncnn.param`` + ``model.ncnn.bin``; ``model.xml`` + ``model.bin``) and ``manifest.json``: the ONNX
file's SHA-256, the engine's version, each file's SHA-256 and size, the inputs and outputs, and the
verification record (outputs compared with onnxruntime at two or more shapes).

The files come from :func:`slipway.backends.edge.convert` (the verified conversion cache; OpenVINO's IR is
converted, verified and cached the same way, by :data:`OPENVINO_IR`), and their hashes are checked against
the manifest before anything is written. A model the engine cannot take fails first (one line naming the
engine, the op and the node) and DIR is not created; DIR appears complete, by one rename, or not at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway.backends.base import Options, TensorInfo
from slipway.backends.edge import (
    MANIFEST,
    Converted,
    Converter,
    convert,
    digest,
    package_version,
    tensor_info,
    valid,
)
from slipway.errors import UserError, WriteError, one_line
from slipway.model import _umask

__all__ = ["export", "exported", "is_export", "read_io", "ENGINES", "OPENVINO_IR"]


class OpenVINOIR:
    """ONNX -> OpenVINO IR (``model.xml`` / ``model.bin``, weights kept FP32), as a verified conversion."""

    name = "openvino"
    target = "slipway.backends.export:OPENVINO_IR"

    def version(self) -> str:
        return package_version("openvino", extra="openvino")

    def check(self, model: ir.Model) -> None:
        return None

    def convert(self, source: Path, out: Path, options: Mapping[str, Any], shapes: list[list[list[int]]]) -> None:
        import openvino as ov

        from slipway.backends.openvino import core

        ov.save_model(core().read_model(str(source)), str(out / "model.xml"), compress_to_fp16=False)

    def run_files(self, out: Path, options: Mapping[str, Any], inputs: list[TensorInfo],
                  outputs: list[TensorInfo]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        from slipway.backends.openvino import CPU

        (session,) = CPU.load(str(out / "model.xml"), Options(threads=1))
        return session.run

    def unsupported(self, out: Path, log: str) -> list[str]:
        found = re.search(r"No conversion rule found for operations: (.*)", log)
        if not found:
            return []
        return [re.sub(r"-\d+$", "", op.strip()) for op in found.group(1).split(",") if op.strip()]


OPENVINO_IR = OpenVINOIR()


def is_export(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and Path(model).suffix != ".onnx" and \
        (Path(model).parent / MANIFEST).is_file()


def exported(converter: Converter, file: str | os.PathLike) -> Converted:
    """The engine's files ``slipway export`` wrote (``file`` one of them, ``manifest.json`` beside it), checked
    against their manifest: this engine, this engine version, every file there at its size."""
    folder = Path(file).parent
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{folder / MANIFEST} is not readable: {one_line(e)}") from None
    version = converter.version()
    if not isinstance(manifest, dict) or manifest.get("engine") != converter.name:
        raise UserError(f"{folder / MANIFEST} is not a {converter.name} export")
    if manifest.get("engine_version") != version:
        raise UserError(f"{folder} was exported with {converter.name} {manifest.get('engine_version')}, this is "
                        f"{version}: export the ONNX model again")
    found = valid(folder, converter.name, version, manifest.get("source_sha256"), manifest.get("options"))
    if found is None or Path(file).name not in manifest["files"]:
        raise UserError(f"{folder} does not hold the files its manifest lists (at their sizes)")
    return found


def read_io(path: Path, label: str) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The inputs and outputs of an engine's model file (the engines' ``io`` reader): an ONNX file's own,
    an exported file's from the ``manifest.json`` beside it."""
    from slipway.backends.declared import onnx_io

    if Path(path).suffix == ".onnx":
        return onnx_io(path, label)
    try:
        manifest = json.loads((Path(path).parent / MANIFEST).read_text())
        return ([tensor_info(t, "manifest") for t in manifest["inputs"]],
                [tensor_info(t, "manifest") for t in manifest["outputs"]])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{label} needs the manifest.json slipway export writes beside it: {one_line(e)}") from None


def _converters() -> dict[str, Converter]:
    from slipway.backends import mnn, ncnn

    return {"mnn": mnn.CONVERTER, "ncnn": ncnn.CONVERTER, "openvino": OPENVINO_IR}


ENGINES = ("mnn", "ncnn", "openvino")


def export(model: Any, engine: str, out: str | os.PathLike) -> Path:
    """Write ``engine``'s verified files for ``model`` (an ONNX path, bytes, ``ModelProto`` or ``onnx_ir.Model``)
    and a ``manifest.json`` into the new directory ``out``; returns its path."""
    if engine not in ENGINES:
        raise UserError(f"cannot export to {engine!r} (choose from {', '.join(ENGINES)})")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"output {target} exists and is not an empty directory")
    entry = convert(_converters()[engine], model)
    _check_hashes(entry)
    manifest = {**entry.manifest, "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if isinstance(model, (str, os.PathLike)):
        manifest["source"] = str(model)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".slipway-tmp-", dir=target.parent))
    except OSError as e:
        raise WriteError(f"cannot write {target}: {one_line(e)}") from None
    try:
        for name in entry.manifest["files"]:
            shutil.copyfile(entry.file(name), tmp / name)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.chmod(tmp, 0o777 & ~_umask())
        if target.is_dir():
            target.rmdir()  # empty (checked above)
        os.rename(tmp, target)
    except OSError as e:
        raise WriteError(f"cannot write {target}: {one_line(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_hashes(entry: Converted) -> None:
    """Every file of the cache entry still has the SHA-256 its manifest records (else it is not what was
    verified: the entry is dropped, and the next export converts afresh)."""
    for name, info in entry.manifest["files"].items():
        if digest(str(entry.file(name))) != info["sha256"]:
            shutil.rmtree(entry.path, ignore_errors=True)
            raise UserError(f"the cached {entry.manifest['engine']} file {name} does not match its verified hash "
                            f"(removed from the cache {entry.path}); run the export again to convert afresh")
