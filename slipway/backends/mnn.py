"""The MNN engine ("mnn"): ONNX -> .mnn with MNN's converter, run with MNN's Module API on CPU.

A model is converted once per (ONNX SHA-256, MNN version, conversion options) and verified against
onnxruntime before it is used (:mod:`slipway.backends.edge`: cached under ``$SLIPWAY_CACHE/engines/mnn``).
The converter runs through MNN's ``_tools`` extension in the child process, never through the ``mnnconvert``
script, whose usage logger sends telemetry and pip-installs a package at run time.

Dynamic dims stay dynamic: the module is loaded shape-mutable and each request runs at its own shapes.

``Options.threads`` sets MNN's ``numThread`` (0: every usable CPU); ``Options.precision``: fp32 runs MNN's
precision "normal" or "high" (setting ``precision_mode``), fp16 its precision "low", offered only where the
CPU computes in FP16 (ARMv8.2 ``asimdhp``; on x86 MNN's "low" runs FP32). Setting ``power``: normal | high
(MNN's power mode: high keeps its threads spinning).

``precision="int8"`` (settings ``calib`` = calibration data, ``calib_method`` admm | kl | ema, ``calib_samples``;
:mod:`slipway.backends.edge_int8`): the FP32 .mnn quantized by MNN's own tool (``_tools.mnnquant``, never the
``mnnquant`` script: telemetry) fed with slipway's calibration data through the tool's "sequence" input (see
:meth:`MNNQuantizer.quantize`), verified against onnxruntime FP32 and cached.

Inputs reach MNN as float32 / int32 / uint8 / int8 (int64 and bool as int32, other floats as float32, as
MNN's converter types them); outputs come back in the ONNX model's own dtypes. Instances each load their
own module and runtime (MNN's runtime is not shared between threads).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway.backends.base import FeedCheck, Options, SessionBase, TensorInfo
from slipway.backends.edge import Converted, EdgeBackend, convert, cpu_has_fp16, package_version, quiet_stdout
from slipway.backends.edge_int8 import Int8Backend
from slipway.cpus import usable_cpus
from slipway.errors import MissingDependencyError, UserError, one_line

__all__ = ["MNNBackend", "MNNSession", "MNNQuantizer", "CPU", "CONVERTER", "QUANTIZER"]

SETTINGS: dict[str, tuple[Any, ...]] = {
    "precision_mode": ("normal", "high"),
    "power": ("normal", "high"),
}
FILE = "model.mnn"


@functools.lru_cache(maxsize=1)
def _mnn() -> Any:
    try:
        with quiet_stdout():  # MNN prints the CPU's features to stdout when it loads
            import MNN.expr
            import MNN.nn
    except ImportError:
        raise MissingDependencyError("MNN", "edge") from None
    return MNN


class MNNConverter:
    """How :mod:`slipway.backends.edge` converts, runs and explains MNN models."""

    name = "mnn"
    target = "slipway.backends.mnn:CONVERTER"

    def version(self) -> str:
        return package_version("MNN")

    def check(self, model: ir.Model) -> None:
        return None

    def convert(self, source: Path, out: Path, options: Mapping[str, Any], shapes: list[list[list[int]]]) -> None:
        import _tools  # MNN's converter extension (the wheel's top-level module)

        target = out / FILE
        _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(source), "--MNNModel", str(target),
                           "--bizCode", "slipway"])
        if not target.is_file():
            raise UserError("MNN's converter wrote no model")

    def run_files(self, out: Path, options: Mapping[str, Any], inputs: list[TensorInfo],
                  outputs: list[TensorInfo]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        session = MNNSession("mnn", _module(out / FILE, inputs, outputs, Options(threads=1)), inputs, outputs)
        return session.run

    def unsupported(self, out: Path, log: str) -> list[str]:
        ops: list[str] = []
        for line in re.findall(r"These Op Not Support:(.*)", log):
            ops += [op.split("::")[-1] for op in line.split() if op.split("::")[-1] not in ops]
        return ops


CONVERTER = MNNConverter()


class MNNQuantizer:
    """INT8 by MNN's post-training quantization tool (``_tools.mnnquant``, in the child process of
    :mod:`slipway.backends.edge_int8`), fed slipway's calibration feeds as the tool's "sequence" input.

    That input (MNN's tools/quantization/calibration.cpp ``getModuleInputs``, 3.6.1) is a folder of sample
    folders, taken in sorted order; each holds ``input.json`` (``{"inputs": [{"name": N, "shape": [...]}]}``, the
    shape every input is created at: without it the tool has no tensor to fill) and ``<input name>.txt`` per input:
    the values in row-major order as whitespace-separated decimal numbers, read as doubles and cast to the input's
    type, so any dtype, rank, batch and several inputs pass. The config sets ``"input_type": "sequence"`` and
    ``"batch_size": 1`` (with a larger one, EMA overwrites all but the last sample folder of each batch). Methods:

    * ``admm`` (default): ADMM search of each tensor's scale on ONE forward pass of the LAST sample folder, so
      slipway writes one folder holding every sample as one batch (``calib_samples``, default 16: the search
      costs about 10 s per MobileNetV2 sample on one x86 core);
    * ``kl``: KL histograms streamed over every folder (one per feed of 8 samples). MNN 3.6.1's KL crashes
      (SIGSEGV in ``_collectFeatureMapsDistribution``) on any model with a Raster or Pooling op whose inputs
      have no tensor index (Flatten, pooling: most CNNs); fixed upstream after 3.6.1 (MNN PR #4711);
    * ``ema``: moving averages of min/max over the folders in MNN's training mode (less accurate here).

    admm stays the default: it is the only method that was accurate on the models measured (digits CNN 29 dB,
    MobileNetV2 37 dB), and no cheaper method is accurate where admm is too slow. Measured on PP-OCRv4 with 16
    rendered pages / line crops (MNN 3.6.1, x86; SNR against onnxruntime FP32, the bar is 15 dB): rec ema 12.3 dB
    in 5 s, kl 0.7 dB in 15 s, admm 6.1 dB on 1 sample (over 6 min for 8); det ema 0.0 dB in 16 s and kl 0.0 dB in
    21 s (the INT8 outputs are near zero), admm minutes per sample at 480 x 480; the digits CNN: ema 7.4 dB. So on
    a large model give ``calib_method=ema`` for a fast answer (the verification refuses it when it is far off),
    and expect MNN's INT8 of PP-OCRv4 to be refused.
    """

    name = "mnn"
    target = "slipway.backends.mnn:QUANTIZER"
    methods = ("admm", "kl", "ema")

    def samples(self, method: str) -> int:
        return 16 if method == "admm" else 128

    def version(self) -> str:
        return package_version("MNN")

    def quantize(self, fp32: Path, out: Path, work: Path, feeds: list[dict[str, np.ndarray]], method: str) -> None:
        import _tools

        folder = work / "mnn-calibration"
        batches = [_one_batch(feeds)] if method == "admm" else feeds
        for i, batch in enumerate(batches):
            _write_sample(folder / f"{i:06d}", batch)
        config = {"path": str(folder), "used_sample_num": 0, "feature_quantize_method": method.upper(),
                  "weight_quantize_method": "MAX_ABS", "feature_clamp_value": 127, "weight_clamp_value": 127,
                  "batch_size": 1, "quant_bits": 8, "input_type": "sequence", "debug": False}
        (work / "mnn-quant.json").write_text(json.dumps(config))
        target = out / FILE
        _tools.mnnquant(["mnnquant", str(fp32 / FILE), str(target), str(work / "mnn-quant.json")])
        if not target.is_file():
            raise UserError("MNN's quantization tool wrote no model")

    def run_files(self, out: Path, inputs: list[TensorInfo],
                  outputs: list[TensorInfo]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        return CONVERTER.run_files(out, {}, inputs, outputs)

    def crashed(self, method: str, signal: int, log: str) -> str:
        why = (" (MNN 3.6.1's KL calibration crashes on models with Flatten or pooling; use calib_method=admm)"
               if method == "kl" else "")
        return f"MNN's quantization tool crashed (signal {signal}) on this model with method {method}{why}"


def _one_batch(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every feed as one batch (concatenated on dim 0), for a method that runs one forward pass."""
    if len(feeds) == 1:
        return feeds[0]
    first = feeds[0]
    for f in feeds[1:]:
        for name, a in f.items():
            if a.ndim == 0 or a.shape[1:] != first[name].shape[1:]:
                raise UserError(f"MNN's admm calibration runs one batch: input {name!r} has samples of shapes "
                                f"{list(first[name].shape)} and {list(a.shape)}; give samples of one shape or "
                                f"calib_method=ema")
    return {name: np.concatenate([f[name] for f in feeds]) for name in first}


def _write_sample(folder: Path, feeds: Mapping[str, np.ndarray]) -> None:
    """One sample folder of MNN's "sequence" calibration input: input.json + <input name>.txt per input."""
    folder.mkdir(parents=True)
    for name, a in feeds.items():
        if not name or "/" in name or name.startswith("."):
            raise UserError(f"MNN's calibration reads input {name!r} from a file named after it; rename the input")
        a = np.ascontiguousarray(a)
        if a.dtype.kind == "f":
            a.astype(np.float32).tofile(folder / f"{name}.txt", sep=" ", format="%.9g")
        else:
            a.astype(np.int64).tofile(folder / f"{name}.txt", sep=" ", format="%d")
    (folder / "input.json").write_text(json.dumps({"inputs": [{"name": n, "shape": list(a.shape)}
                                                              for n, a in feeds.items()]}))


QUANTIZER = MNNQuantizer()


class MNNBackend(Int8Backend, EdgeBackend):
    quantizer = QUANTIZER

    def imports(self) -> None:
        _mnn()

    def fp16(self) -> bool:
        return cpu_has_fp16()

    def sessions(self, entry: Converted, options: Options, instances: int) -> list[MNNSession]:
        inputs, outputs = entry.inputs, entry.outputs
        return [MNNSession(self.name, _module(entry.file(FILE), inputs, outputs, options), inputs, outputs)
                for _ in range(instances)]


def converted(model: Any) -> Converted:
    """The verified MNN conversion of ``model`` (from the cache when there)."""
    return convert(CONVERTER, model)


def _module(path: Path, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], opts: Options) -> Any:
    mnn = _mnn()
    precision = "low" if opts.precision == "fp16" else opts.settings.get("precision_mode", "normal")
    config = {"backend": 0, "precision": precision, "numThread": opts.threads or usable_cpus(),
              "power": opts.settings.get("power", "normal")}
    try:
        with quiet_stdout():
            runtime = mnn.nn.create_runtime_manager((config,))
            return mnn.nn.load_module_from_file(str(path), [t.name for t in inputs], [t.name for t in outputs],
                                                runtime_manager=runtime, shape_mutable=True)
    except Exception as e:  # MNN raises plain exceptions for a file it cannot read
        raise UserError(f"MNN cannot load {path}: {one_line(e)}") from None


def _mnn_dtype(dtype: np.dtype) -> tuple[np.dtype, str]:
    """The numpy dtype an input is given to MNN in, and MNN's name of it."""
    if dtype.kind == "f":
        return np.dtype(np.float32), "float"
    if dtype == np.uint8:
        return dtype, "uint8"
    if dtype == np.int8:
        return dtype, "int8"
    return np.dtype(np.int32), "int"


class MNNSession(SessionBase):
    """One MNN module: ``run(feeds)`` checks the feeds against the ONNX inputs, runs, and returns copies."""

    def __init__(self, backend: str, module: Any, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
        mnn = _mnn()
        self.backend = backend
        self._module = module
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._check = FeedCheck(self._inputs)
        self._names = [t.name for t in outputs]
        self._dtypes = {t.name: t.dtype for t in outputs}
        self._in = [(t.name, *_mnn_dtype(t.dtype)) for t in inputs]
        self._expr = mnn.expr

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = self._requested(feeds, outputs)
        if self._module is None:
            raise UserError("this session is closed")
        F = self._expr
        args = []
        for name, dtype, kind in self._in:
            a = np.ascontiguousarray(feeds[name], dtype=dtype)
            args.append(F.const(a, list(a.shape), F.NCHW, getattr(F, kind)))
        try:
            values = self._module.onForward(args)
        except Exception as e:
            raise UserError(f"MNN could not run the model: {one_line(e)}") from None
        got = {}
        for name, v in zip(self._names, values, strict=True):
            if v.data_format == F.NC4HW4:
                v = F.convert(v, F.NCHW)
            got[name] = np.array(v.read(), dtype=self._dtypes[name], copy=True)
        return {name: got[name] for name in names}

    def close(self) -> None:
        self._module = None

    def __repr__(self) -> str:
        return f"MNNSession({self.backend!r}, inputs={[t.name for t in self._inputs]})"


CPU = MNNBackend(CONVERTER, SETTINGS)
