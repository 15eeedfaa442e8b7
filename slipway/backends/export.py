"""``export(model, engine, out)``: an engine's own files for an ONNX model, verified, plus a manifest.

``slipway export MODEL --engine mnn|ncnn|openvino -o DIR`` writes DIR with the engine's files (``model.mnn``;
``model.ncnn.param`` + ``model.ncnn.bin``; ``model.xml`` + ``model.bin``) and ``manifest.json``: the ONNX
file's SHA-256, the engine's version, each file's SHA-256 and size, the inputs and outputs, and the
verification record (outputs compared with onnxruntime at two or more shapes).

The files come from :func:`slipway.backends.edge.convert` (the verified conversion cache; OpenVINO's IR is
converted, verified and cached the same way, by :data:`OPENVINO_IR`), and their hashes are checked against
the manifest before anything is written.

``--precision int8 --calib DATA`` (mnn, ncnn): the engine's INT8 files from :mod:`slipway.backends.edge_int8`
(quantized by the engine's own tool from the calibration data ``slipway quantize --calib`` reads, verified
against onnxruntime FP32 on the first calibration samples, cached). Their manifest names the engine
``<engine>-int8``, says ``"precision": "int8"``, and its verification record holds each output's SNR and
cosine against onnxruntime FP32 and the calibration data's SHA-256. The exported INT8 files load and serve on
the ``mnn`` / ``ncnn`` backend as they are (precision int8, or the default). A model the engine cannot take fails first (one line naming the
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
    against their manifest: this engine (its FP32 or INT8 files), this engine version, every file there at its
    size."""
    folder = Path(file).parent
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{folder / MANIFEST} is not readable: {one_line(e)}") from None
    version = converter.version()
    if not isinstance(manifest, dict) or manifest.get("engine") not in (converter.name, f"{converter.name}-int8"):
        raise UserError(f"{folder / MANIFEST} is not a {converter.name} export")
    if manifest.get("engine_version") != version:
        raise UserError(f"{folder} was exported with {converter.name} {manifest.get('engine_version')}, this is "
                        f"{version}: export the ONNX model again")
    found = valid(folder, manifest["engine"], version, manifest.get("source_sha256"), manifest.get("options"))
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


INT8_ENGINES = ("mnn", "ncnn")  # the engines that quantize their own files (slipway.backends.edge_int8)


def export(model: Any, engine: str, out: str | os.PathLike, *, precision: str = "fp32",
           calib: str | os.PathLike | None = None, calib_method: str | None = None,
           calib_samples: int | None = None) -> Path:
    """Write ``engine``'s verified files for ``model`` (an ONNX path, bytes, ``ModelProto`` or ``onnx_ir.Model``)
    and a ``manifest.json`` into the new directory ``out``; returns its path. ``precision="int8"`` (mnn, ncnn)
    with ``calib`` (and optionally the engine's ``calib_method`` / ``calib_samples``): the INT8 files."""
    if engine not in ENGINES:
        raise UserError(f"cannot export to {engine!r} (choose from {', '.join(ENGINES)})")
    if precision not in ("fp32", "int8"):
        raise UserError(f"export writes fp32 or int8 files, not {precision!r} (fp16 is chosen when the files are "
                        f"loaded: Options(precision='fp16'))")
    int8 = precision == "int8"
    if int8 and engine not in INT8_ENGINES:
        raise UserError(f"--precision int8 exports the INT8 files of {' / '.join(INT8_ENGINES)}; for {engine}, "
                        f"quantize the ONNX model (slipway quantize) and export that")
    if not int8 and (calib is not None or calib_method is not None or calib_samples is not None):
        raise UserError("--calib, --calib-method and --calib-samples apply to --precision int8 only")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"output {target} exists and is not an empty directory")
    entry = _int8_entry(engine, model, calib, calib_method, calib_samples) if int8 else \
        convert(_converters()[engine], model)
    _check_hashes(entry)
    manifest = {**entry.manifest, "precision": precision,
                "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if int8:
        manifest["verification"] = {**manifest["verification"],
                                    "calibration_sha256": manifest["options"]["calibration_sha256"]}
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


def _int8_entry(engine: str, model: Any, calib: str | os.PathLike | None, method: str | None,
                samples: int | None) -> Converted:
    """The verified INT8 cache entry (:func:`slipway.backends.edge_int8.quantized`) of ``model`` on ``engine``."""
    from slipway.backends import get
    from slipway.backends.edge_int8 import quantized, split_options

    backend = get(engine)
    why = backend.available()
    if why:
        raise UserError(f"backend {engine!r} is not available: {why}")
    if calib is None:
        raise UserError(f"--precision int8 on {engine} needs calibration data: give --calib DATA (an .npz of the "
                        f"inputs by name, a .npy, or a folder of them or of images, as slipway quantize --calib takes)")
    settings: dict[str, Any] = {"calib": str(calib)}
    if method is not None:
        settings["calib_method"] = method
    if samples is not None:
        settings["calib_samples"] = samples
    _, request = split_options(engine, Options(precision="int8", settings=settings), backend.quantizer)
    assert request is not None  # precision int8
    return quantized(backend.quantizer, convert(_converters()[engine], model), model, request)


def _check_hashes(entry: Converted) -> None:
    """Every file of the cache entry still has the SHA-256 its manifest records (else it is not what was
    verified: the entry is dropped, and the next export converts afresh)."""
    for name, info in entry.manifest["files"].items():
        if digest(str(entry.file(name))) != info["sha256"]:
            shutil.rmtree(entry.path, ignore_errors=True)
            raise UserError(f"the cached {entry.manifest['engine']} file {name} does not match its verified hash "
                            f"(removed from the cache {entry.path}); run the export again to convert afresh")
