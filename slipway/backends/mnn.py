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

Inputs reach MNN as float32 / int32 / uint8 / int8 (int64 and bool as int32, other floats as float32, as
MNN's converter types them); outputs come back in the ONNX model's own dtypes. Instances each load their
own module and runtime (MNN's runtime is not shared between threads).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway.backends.base import FeedCheck, Options, SessionBase, TensorInfo
from slipway.backends.edge import Converted, EdgeBackend, convert, cpu_has_fp16, package_version, quiet_stdout
from slipway.cpus import usable_cpus
from slipway.errors import MissingDependencyError, UserError, one_line

__all__ = ["MNNBackend", "MNNSession", "CPU", "CONVERTER"]

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


class MNNBackend(EdgeBackend):
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
