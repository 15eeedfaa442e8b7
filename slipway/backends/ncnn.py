"""The ncnn engine ("ncnn"): ONNX -> .param/.bin with pnnx, run with ncnn's ``Net`` on CPU.

A model is converted once per (ONNX SHA-256, ncnn + pnnx versions, input shapes) and verified against
onnxruntime before it is used (:mod:`slipway.backends.edge`: cached under ``$SLIPWAY_CACHE/engines/ncnn``).

ncnn runs one sample at a time (its ``Mat`` has no batch axis): pnnx converts the model at batch 1 and a
request of batch N runs the N samples one after another, outputs stacked back on axis 0. Other dynamic
dims (an OCR model's height and width) are given to pnnx at two sizes (``inputshape`` / ``inputshape2``) so
its shape arithmetic stays dynamic, and each request runs at its own size. ncnn computes in float only: a
model with integer inputs, or whose inputs do not start with a batch axis of 1 or a dynamic one, is refused
before anything is converted, naming the input.

``Options.threads`` sets ``num_threads`` (0: every usable CPU); ``Options.precision``: fp32 turns ncnn's
FP16 paths off (its default is on), fp16 stores weights and activations in FP16 (``use_fp16_storage`` /
``use_fp16_packed``; x86 needs F16C) and, with setting ``fp16_arithmetic`` (default on), computes in FP16
where the CPU can (ARMv8.2). Settings: ``packing`` (``use_packing_layout``: SIMD-packed channels),
``winograd`` (``use_winograd_convolution``), ``sgemm`` (``use_sgemm_convolution``).

``precision="int8"`` (settings ``calib`` = calibration data, ``calib_method`` auto | entropy | minmax | percentile |
mse, ``calib_samples``; :mod:`slipway.backends.edge_int8`): Convolution, ConvolutionDepthWise and InnerProduct layers
in int8 from the calibration table slipway writes and ncnn2int8's rewrite (:mod:`slipway.backends.ncnn_int8`),
except those its accuracy budget keeps FP32, verified against onnxruntime FP32 and cached.

Instances share one ``Net`` (ncnn runs several extractors of one net at once); each run has its own
extractor.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway.backends.base import FeedCheck, Options, SessionBase, TensorInfo
from slipway.backends.edge import Converted, EdgeBackend, convert, cpu_flags, io_specs, package_version
from slipway.backends.edge_int8 import Int8Backend
from slipway.backends.ncnn_int8 import QUANTIZER
from slipway.cpus import usable_cpus
from slipway.errors import MissingDependencyError, UserError

__all__ = ["NcnnBackend", "NcnnSession", "CPU", "CONVERTER"]

SETTINGS: dict[str, tuple[Any, ...]] = {
    "packing": (True, False),
    "winograd": (True, False),
    "sgemm": (True, False),
    "fp16_arithmetic": (True, False),
}
PARAM, BIN = "model.ncnn.param", "model.ncnn.bin"
MAX_RANK = 5  # batch + ncnn's four dims (c, d, h, w)


@functools.lru_cache(maxsize=1)
def _ncnn() -> Any:
    try:
        import ncnn
    except ImportError:
        raise MissingDependencyError("ncnn", "edge") from None
    return ncnn


def _pnnx() -> str:
    try:
        import pnnx
    except ImportError:
        raise MissingDependencyError("pnnx", "edge") from None
    return pnnx.EXEC_PATH


class NcnnConverter:
    """How :mod:`slipway.backends.edge` converts, runs and explains ncnn models."""

    name = "ncnn"
    target = "slipway.backends.ncnn:CONVERTER"

    def version(self) -> str:
        return package_version("ncnn", "pnnx")

    def check(self, model: ir.Model) -> None:
        inputs, _ = io_specs(model)
        for t in inputs:
            if t.dtype.kind != "f":
                raise UserError(f"ncnn computes in float only: input {t.name!r} is {t.dtype}")
            if not 2 <= len(t.shape) <= MAX_RANK or t.shape[0] not in (1, None) and not isinstance(t.shape[0], str):
                raise UserError(f"ncnn runs one sample at a time: input {t.name!r} (shape "
                                f"{list(t.shape)}) needs a batch axis of 1 or a dynamic one and at most "
                                f"{MAX_RANK - 1} more dims")

    def convert(self, source: Path, out: Path, options: Mapping[str, Any], shapes: list[list[list[int]]]) -> None:
        runs = [[[1, *s[1:]] for s in run] for run in shapes]  # converted at batch 1
        args = [_pnnx(), "model.onnx", "inputshape=" + _shape_arg(runs[0]), "fp16=0",
                f"ncnnparam={out / PARAM}", f"ncnnbin={out / BIN}"]
        other = next((r for r in runs if r != runs[0]), None)
        if other is not None:
            args.append("inputshape2=" + _shape_arg(other))
        with tempfile.TemporaryDirectory(prefix="slipway-pnnx-") as tmp:  # pnnx writes its side files here
            os.symlink(source.resolve(), Path(tmp) / "model.onnx")
            done = subprocess.run(args, cwd=tmp, capture_output=True, text=True, errors="replace",
                                  stdin=subprocess.DEVNULL)
        print(done.stdout + done.stderr)  # the parent reads it on failure
        if done.returncode != 0 or not (out / PARAM).is_file():
            raise UserError(f"pnnx could not convert the model (exit {done.returncode})")
        missing = self.unsupported(out, "")
        if missing:
            raise UserError(f"ncnn has no layer for {', '.join(missing)}")

    def run_files(self, out: Path, options: Mapping[str, Any], inputs: list[TensorInfo],
                  outputs: list[TensorInfo]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        return NcnnSession("ncnn", _net(out / PARAM, out / BIN, Options(threads=1)), inputs, outputs).run

    def unsupported(self, out: Path, log: str) -> list[str]:
        """Layer types of the converted .param that ncnn cannot create (pnnx names them by their ONNX op)."""
        try:
            lines = (out / PARAM).read_text().splitlines()[2:]
        except OSError:
            return []
        ncnn = _ncnn()
        found: list[str] = []
        for line in lines:
            kind = line.split()[0] if line.split() else ""
            if kind and ncnn.layer_to_index(kind) < 0 and kind not in found:
                found.append(kind)
        return found


CONVERTER = NcnnConverter()


def _shape_arg(shapes: Sequence[Sequence[int]]) -> str:
    return ",".join("[" + ",".join(str(d) for d in s) + "]f32" for s in shapes)


def fp16_storage() -> bool:
    """ncnn can store FP16 here: ARM, or x86 with F16C."""
    return platform.machine().lower() in ("aarch64", "arm64") or "f16c" in cpu_flags()


class NcnnBackend(Int8Backend, EdgeBackend):
    quantizer = QUANTIZER

    def imports(self) -> None:
        _ncnn()
        _pnnx()

    def fp16(self) -> bool:
        return fp16_storage()

    def sessions(self, entry: Converted, options: Options, instances: int) -> list[NcnnSession]:
        net = _net(entry.file(PARAM), entry.file(BIN), options)
        return [NcnnSession(self.name, net, entry.inputs, entry.outputs) for _ in range(instances)]


def converted(model: Any) -> Converted:
    """The verified ncnn conversion of ``model`` (from the cache when there)."""
    return convert(CONVERTER, model)


def _net(param: Path, weights: Path, opts: Options) -> Any:
    ncnn = _ncnn()
    s = opts.settings
    fp16 = opts.precision == "fp16"
    opt = ncnn.Option()
    opt.num_threads = opts.threads or usable_cpus()
    opt.use_vulkan_compute = False
    opt.use_fp16_storage = opt.use_fp16_packed = fp16
    opt.use_fp16_arithmetic = fp16 and bool(s.get("fp16_arithmetic", True))
    opt.use_bf16_storage = False
    opt.use_int8_inference = True  # the layers an INT8 entry gave int8 scales run in int8 (others are FP32)
    opt.use_packing_layout = bool(s.get("packing", True))
    opt.use_winograd_convolution = bool(s.get("winograd", True))
    opt.use_sgemm_convolution = bool(s.get("sgemm", True))
    net = ncnn.Net()
    net.opt = opt
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise UserError(f"ncnn cannot load {param.name} / {weights.name} from {param.parent}")
    return net


class NcnnSession(SessionBase):
    """One instance on a shared ``Net``: ``run(feeds)`` runs each sample of the batch and stacks the outputs."""

    def __init__(self, backend: str, net: Any, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
        self.backend = backend
        self._net = net
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._check = FeedCheck(self._inputs)
        self._names = [t.name for t in outputs]
        self._blobs = {t.name: f"out{i}" for i, t in enumerate(outputs)}
        self._in = [(t.name, f"in{i}") for i, t in enumerate(inputs)]
        self._shapes = {t.name: t.shape for t in outputs}
        self._dtypes = {t.name: t.dtype for t in outputs}
        self._mat = _ncnn().Mat

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = self._requested(feeds, outputs)
        net = self._net
        if net is None:
            raise UserError("this session is closed")
        arrays = [(blob, np.ascontiguousarray(feeds[name], dtype=np.float32)) for name, blob in self._in]
        batch = arrays[0][1].shape[0] if arrays else 1
        if any(a.shape[0] != batch for _, a in arrays):
            raise UserError(f"inputs {', '.join(n for n, _ in self._in)} must share their batch (dim 0)")
        samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for b in range(batch):
            with net.create_extractor() as ex:
                for blob, a in arrays:
                    ex.input(blob, self._mat(a[b]))
                for name in names:
                    ret, mat = ex.extract(self._blobs[name])
                    if ret != 0:
                        raise UserError(f"ncnn could not run the model (output {name!r}: error {ret})")
                    samples[name].append(np.array(mat, copy=True))
        return {name: self._stack(name, samples[name]) for name in names}

    def _stack(self, name: str, parts: list[np.ndarray]) -> np.ndarray:
        """The samples stacked on a new axis 0, each given back the leading 1-dims ncnn dropped."""
        shape = self._shapes[name]
        rank = len(shape) if shape else parts[0].ndim + 1
        static = shape[1:] if shape and all(isinstance(d, int) for d in shape[1:]) else None
        fixed = [p.reshape(static) if static is not None and p.size == int(np.prod(static)) else
                 p.reshape((1,) * (rank - 1 - p.ndim) + p.shape) if p.ndim < rank - 1 else p for p in parts]
        return np.stack(fixed).astype(self._dtypes[name], copy=False)

    def close(self) -> None:
        self._net = None

    def __repr__(self) -> str:
        return f"NcnnSession({self.backend!r}, inputs={[t.name for t in self._inputs]})"


CPU = NcnnBackend(CONVERTER, SETTINGS)
