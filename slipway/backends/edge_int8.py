"""INT8 for the engines that do not read ONNX (MNN, ncnn), calibrated on slipway's own calibration data.

``Options(precision="int8", settings={"calib": PATH})`` on the ``mnn`` (or ``ncnn``) backend: the model is
converted to the engine's FP32 files as usual (:func:`slipway.backends.edge.convert`, verified and cached), then
quantized by the engine's own tool fed with the calibration data ``slipway quantize --calib`` reads (a ``.npz``
keyed by input name, a ``.npy`` for a one-input model, a folder of them or of images:
:func:`slipway.quantize.data.calibration_data`, every feed checked against the ONNX inputs: a wrong input name,
rank, dim or dtype is a one-line error before anything runs). Settings, taken only with precision int8:

* ``calib``: the calibration data (path; required);
* ``calib_method``: the engine's method (the first of :attr:`Quantizer.methods` by default);
* ``calib_samples``: at most this many samples are used (the engine's default for the method otherwise).

They are not in the engine's ``settings`` table (which ``slipway tune`` searches): they choose the model, not
how it runs.

The INT8 files are a cache entry like the FP32 ones, in ``$SLIPWAY_CACHE/engines/<engine>-int8/<key>``, keyed
by the ONNX model's SHA-256, the engine's version, the FP32 files' SHA-256, the calibration data's SHA-256 (its
files' bytes and names), the method and the sample cap; built in a child process (``python -m
slipway.backends.edge_int8``: a quantization tool that crashes is one line here), renamed into place under a
per-key lock. **Verified** before it is cached: the INT8 model and onnxruntime's FP32 run the first
:data:`VERIFY_SAMPLES` calibration samples (in-distribution inputs: random ones would sit outside the calibrated
ranges and be clipped), and every float output must be within :data:`MIN_SNR_DB` of the reference (signal to
noise of the whole output, see :func:`snr_db`); elementwise FP32 tolerances (``atol 1e-4``) do not apply to
8-bit arithmetic. A model whose INT8 output is garbage is refused with one line naming the output, its SNR and
cosine, and nothing is cached. A quantizer that searches its own way to the bar (ncnn's accuracy budget: layers
kept FP32) leaves a record of it in the work folder (:data:`RECORD`), kept in the manifest as ``accuracy_budget``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnx_ir as ir

from slipway.backends.base import Options, TensorInfo, check_options
from slipway.backends.edge import (
    MANIFEST,
    ConversionMismatch,
    Converted,
    cached,
    digest,
    replace_dir,
    run_child,
    tensor_info,
)
from slipway.errors import UserError

__all__ = ["Quantizer", "Int8Backend", "Int8Request", "INT8_SETTINGS", "split_options", "quantized", "data_sha256", "MIN_SNR_DB",
           "VERIFY_SAMPLES"]

INT8_SETTINGS = ("calib", "calib_method", "calib_samples")
VERIFY_SAMPLES = 16  # calibration samples the INT8 model is verified on
# The bar: output SNR >= 15 dB, i.e. the error's energy at most 3.2% of the output's (cosine >= ~0.984 when the
# gain is kept). Sound 8-bit post-training quantization sits well above it (measured: the digits CNN 29-36 dB with
# top-1 within 0.3 points, MobileNetV2 33-37 dB, on MNN and ncnn); broken calibration sits well below it (MNN's
# ema on the digits CNN: 7.4 dB; with one sample per step it lost 19 points of top-1), as does a mis-quantized
# layer or a wrong scale (noise of the order of the signal: ~0 dB).
MIN_SNR_DB = 15.0
TIMEOUT_S = 1800  # one quantization + verification in the child
CALIB_BATCH = 8  # rows per calibration feed (one calibration file of the engine's)
RECORD = "quantization.json"  # what a quantizer's own accuracy search did (in the work folder), for the manifest


class Quantizer(Protocol):
    name: str  # the engine ("mnn"); its INT8 entries live in <cache>/<name>-int8
    target: str  # "module:attribute" of this object, which the child imports
    methods: tuple[str, ...]  # the engine's calibration methods, the default first

    def samples(self, method: str) -> int:
        """The default sample cap of ``method``."""
        ...

    def version(self) -> str:
        ...

    def quantize(self, fp32: Path, out: Path, work: Path, feeds: list[dict[str, np.ndarray]], method: str) -> None:
        """In the child: write the INT8 files for the FP32 entry ``fp32`` into ``out`` from ``feeds``."""
        ...

    def run_files(self, out: Path, inputs: list[TensorInfo],
                  outputs: list[TensorInfo]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """A runner of the INT8 files (in the child, for the verification runs)."""
        ...

    def crashed(self, method: str, signal: int, log: str) -> str:
        """The one line for a quantization tool killed by ``signal``."""
        ...


@dataclass(frozen=True)
class Int8Request:
    calib: str  # the calibration data's path
    method: str
    samples: int


def split_options(engine: str, options: Options | None, quantizer: Quantizer) -> tuple[Options | None,
                                                                                      Int8Request | None]:
    """``options`` as the FP32 engine takes them (precision fp32, the int8 settings removed) and the INT8
    request when the precision is int8; ``(options, None)`` otherwise. One-line errors for int8 settings
    without precision int8, int8 without ``calib``, an unknown method, a bad sample count, a missing path."""
    if options is None:
        return None, None
    settings = dict(options.settings)
    given = {k: settings.pop(k) for k in INT8_SETTINGS if k in settings}
    if options.precision != "int8":
        if given:
            raise UserError(f"{engine}: setting {next(iter(given))} applies to precision int8 only")
        return options, None
    calib = given.get("calib")
    if not isinstance(calib, (str, os.PathLike)) or not str(calib):
        raise UserError(f"{engine}: precision int8 needs calibration data: setting calib=PATH (an .npz of the "
                        f"inputs by name, a .npy, or a folder of them or of images, as slipway quantize --calib takes)")
    method = given.get("calib_method", quantizer.methods[0])
    if method not in quantizer.methods:
        raise UserError(f"{engine}: setting calib_method={method!r} is not valid (choose from "
                        f"{', '.join(quantizer.methods)})")
    samples = given.get("calib_samples", quantizer.samples(method))
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(f"{engine}: setting calib_samples must be an integer >= 1, got {samples!r}")
    path = Path(calib)
    if not path.exists():
        raise UserError(f"calibration data not found: {path}")
    return Options(options.threads, "fp32", settings), Int8Request(str(path), method, samples)


class Int8Backend:
    """Mixed into an :class:`~slipway.backends.edge.EdgeBackend` subclass (before it) with a ``quantizer``:
    precision int8 offered, and loaded from the verified INT8 entry of the calibration data in setting ``calib``."""

    quantizer: Quantizer
    name: str

    @property
    def precisions(self) -> tuple[str, ...]:
        return (*super().precisions, "int8")  # type: ignore[misc]

    def load(self, model: Any, options: Options | None = None, *, instances: int = 1) -> list[Any]:
        from slipway.backends.edge import convert
        from slipway.backends.export import is_export

        if is_export(model):
            return self._exported(model, options, instances)
        opts, request = split_options(self.name, options, self.quantizer)
        if request is None:
            return super().load(model, opts, instances=instances)  # type: ignore[misc]
        why = self.available()  # type: ignore[attr-defined]
        if why:
            raise UserError(f"backend {self.name!r} is not available: {why}")
        opts = check_options(self.name, opts, self.precisions, self.settings, instances)  # type: ignore[attr-defined]
        entry = quantized(self.quantizer, convert(self.converter, model), model, request)  # type: ignore[attr-defined]
        return self.sessions(entry, opts, instances)  # type: ignore[attr-defined]

    def _exported(self, model: Any, options: Options | None, instances: int) -> list[Any]:
        """Files ``slipway export`` wrote: FP32 ones (any precision the engine offers but int8) or INT8 ones
        (``--precision int8``: run as they are, at precision int8 or the default fp32)."""
        from slipway.backends.export import exported

        why = self.available()  # type: ignore[attr-defined]
        if why:
            raise UserError(f"backend {self.name!r} is not available: {why}")
        entry = exported(self.converter, model)  # type: ignore[attr-defined]
        int8 = entry.manifest["engine"] == f"{self.name}-int8"
        opts = options or Options()
        given = next((k for k in INT8_SETTINGS if k in opts.settings), None)
        if given:
            raise UserError(f"{self.name}: setting {given} quantizes the ONNX model: give the .onnx file, not the "
                            f"exported files")
        if opts.precision == "int8" and not int8:
            raise UserError(f"{self.name}: {Path(model).parent} holds FP32 files: export them with --precision int8 "
                            f"--calib DATA, or give the .onnx file with setting calib")
        if int8 and opts.precision not in ("fp32", "int8"):
            raise UserError(f"{self.name}: {Path(model).parent} holds INT8 files: they run in int8 only")
        opts = Options(opts.threads, "fp32" if opts.precision == "int8" else opts.precision, dict(opts.settings))
        opts = check_options(self.name, opts, self.precisions, self.settings, instances)  # type: ignore[attr-defined]
        return self.sessions(entry, opts, instances)  # type: ignore[attr-defined]


def data_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of calibration data: a file's bytes, or a folder's files (relative names and bytes, sorted)."""
    p = Path(path)
    if p.is_file():
        return digest(str(p))
    h = hashlib.sha256()
    for f in sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")):
        h.update(f"{f.relative_to(p).as_posix()}\0{digest(str(f))}\0".encode())
    return h.hexdigest()


def quantized(quantizer: Quantizer, fp32: Converted, model: Any, request: Int8Request) -> Converted:
    """The verified INT8 entry of ``model`` (whose FP32 entry is ``fp32``): from the cache, else built."""
    engine = f"{quantizer.name}-int8"
    version = quantizer.version()
    sha = fp32.manifest["source_sha256"]
    opts = {"calibration_sha256": data_sha256(request.calib), "method": request.method, "samples": request.samples,
            "fp32_files": {n: f["sha256"] for n, f in sorted(fp32.manifest["files"].items())},
            "min_snr_db": MIN_SNR_DB, **getattr(quantizer, "key_options", {})}
    return cached(engine, version, sha, opts, lambda entry, key: _build(quantizer, fp32, model, request, entry, key))


def _ir(model: Any) -> ir.Model:
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        return ir.serde.deserialize_model(onnx.load_from_string(bytes(model)))
    from slipway.model import as_model

    return as_model(model)


def _feeds(m: ir.Model, request: Int8Request) -> list[dict[str, np.ndarray]]:
    """The calibration feeds (checked against the model's inputs by slipway's calibration reader)."""
    from slipway.quantize.data import calibration_data

    data = calibration_data(request.calib, m, batch=CALIB_BATCH, limit=request.samples)
    return [dict(f) for f in data]


def _verify_feeds(feeds: list[dict[str, np.ndarray]], m: ir.Model) -> list[dict[str, np.ndarray]]:
    """The first :data:`VERIFY_SAMPLES` samples of the calibration feeds (rows of the batch when there is one)."""
    from slipway.verify.inputs import input_specs

    specs = input_specs(m)
    d0 = specs[0].dims[0] if specs[0].dims else None
    out, rows = [], 0
    for f in feeds:
        if rows >= VERIFY_SAMPLES:
            break
        take = min(_rows(f, m), VERIFY_SAMPLES - rows)
        out.append({s.name: f[s.name][:take] if (isinstance(d0, str) or d0 == 1) and s.dims and s.dims[0] == d0
                    else f[s.name] for s in specs})
        rows += take
    return out


def _build(quantizer: Quantizer, fp32: Converted, model: Any, request: Int8Request, entry: Path,
           key: dict[str, Any]) -> Converted:
    from slipway.compare.metrics import cosine, snr_db
    from slipway.verify import ort_runner
    from slipway.verify.engine import engine_name

    m = _ir(model)
    feeds = _feeds(m, request)
    checks = _verify_feeds(feeds, m)
    reference = ort_runner(m)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=entry.parent))
    try:
        work, out = tmp / "work", tmp / "entry"
        work.mkdir()
        out.mkdir()
        _save(work / "calib.npz", feeds)
        _save(work / "verify.npz", checks)
        spec = {"quantizer": quantizer.target, "fp32": str(fp32.path), "out": str(out), "work": str(work),
                "method": request.method, "calib": len(feeds), "verify": len(checks),
                "inputs": fp32.manifest["inputs"], "outputs": fp32.manifest["outputs"]}
        (work / "spec.json").write_text(json.dumps(spec))
        start = time.perf_counter()
        _child(quantizer, request.method, work)
        seconds = time.perf_counter() - start
        got = np.load(work / "outputs.npz")
        refs = [reference(f) for f in checks]
        results = []
        for t in fp32.outputs:
            if t.dtype is None or t.dtype.kind != "f":
                continue
            ref = np.concatenate([r[t.name].astype(np.float64).ravel() for r in refs])
            act = np.concatenate([got[f"{i}/{t.name}"].astype(np.float64).ravel() for i in range(len(checks))])
            if ref.shape != act.shape:
                raise ConversionMismatch(f"{quantizer.name} int8: output {t.name!r} has {act.size} values, "
                                         f"onnxruntime {ref.size}")
            results.append({"name": t.name, "snr_db": round(snr_db(ref, act), 2), "cosine": round(cosine(ref, act), 5),
                            "max_abs": float(np.abs(ref - act).max()) if ref.size else 0.0})
        rows = sum(_rows(f, m) for f in checks)
        record = json.loads((work / RECORD).read_text()) if (work / RECORD).is_file() else None
        kept = f", {len(record['fp32_layers'])} layers kept FP32" if record and record.get("fp32_layers") else ""
        for r in results:
            if not r["snr_db"] >= MIN_SNR_DB:
                raise ConversionMismatch(
                    f"{quantizer.name} int8 ({request.method}{kept}) is too far from FP32: output {r['name']!r} at "
                    f"{r['snr_db']:.1f} dB SNR (cosine {r['cosine']:.3f}) on {rows} calibration samples, below "
                    f"{MIN_SNR_DB:g} dB; try another calib_method, more or better calibration data, or fp32")
        verification = {"reference": "the ONNX model in " + engine_name(), "data": f"the first {rows} calibration "
                        "samples", "min_snr_db": MIN_SNR_DB, "outputs": results, "ok": True}
        files = {p.name: {"sha256": digest(str(p)), "bytes": p.stat().st_size} for p in sorted(out.iterdir())}
        manifest = {**key, "files": files, "inputs": spec["inputs"], "outputs": spec["outputs"],
                    "calibration": {"path": str(Path(request.calib).resolve()), "samples": sum(_rows(f, m) for f in feeds)},
                    "verification": verification, "quantization_s": round(seconds, 3),
                    **({"accuracy_budget": record} if record else {}),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
        replace_dir(out, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Converted(entry, manifest)


def _rows(feeds: Mapping[str, np.ndarray], m: ir.Model) -> int:
    """Samples in one feed: the batch (dim 0 of the first input when it is dynamic or 1), else 1."""
    from slipway.verify.inputs import input_specs

    spec = input_specs(m)[0]
    d0 = spec.dims[0] if spec.dims else None
    return int(feeds[spec.name].shape[0]) if isinstance(d0, str) or d0 == 1 else 1


def _save(path: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    np.savez(path, **{f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()})


def _load(path: Path, count: int, names: list[str]) -> list[dict[str, np.ndarray]]:
    with np.load(path) as z:
        return [{n: z[f"{i}/{n}"] for n in names} for i in range(count)]


def _child(quantizer: Quantizer, method: str, work: Path) -> None:
    code, log = run_child("slipway.backends.edge_int8", work, f"{quantizer.name}: quantizing and verifying the model",
                          TIMEOUT_S)
    if code == 0 and (work / "outputs.npz").is_file():
        return
    error = work / "error.txt"
    if error.is_file():
        raise UserError(f"{quantizer.name} int8: {error.read_text().strip()}")
    if code < 0:
        raise UserError(quantizer.crashed(method, -code, log))
    tail = [ln.strip() for ln in log.splitlines() if ln.strip()]
    raise UserError(f"{quantizer.name} could not quantize the model: {tail[-1][:300] if tail else 'no output'}")


# ---------------------------------------------------------------------------------------------
# the child: python -m slipway.backends.edge_int8 WORK


def _main(work: Path) -> int:
    spec = json.loads((work / "spec.json").read_text())
    module, attr = spec["quantizer"].split(":")
    quantizer = getattr(importlib.import_module(module), attr)
    inputs = [tensor_info(t) for t in spec["inputs"]]
    outputs = [tensor_info(t) for t in spec["outputs"]]
    names = [t.name for t in inputs]
    out = Path(spec["out"])
    try:
        quantizer.quantize(Path(spec["fp32"]), out, work, _load(work / "calib.npz", spec["calib"], names),
                           spec["method"])
        run = quantizer.run_files(out, inputs, outputs)
        results: dict[str, np.ndarray] = {}
        for i, feeds in enumerate(_load(work / "verify.npz", spec["verify"], names)):
            results.update({f"{i}/{k}": v for k, v in run(feeds).items()})
    except UserError as e:
        (work / "error.txt").write_text(str(e))
        return 2
    np.savez(work / "outputs.npz", **results)
    return 0


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1])))
