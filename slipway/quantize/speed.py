"""Speed guard: does this CPU have INT8 dot-product instructions, and is the quantized model faster?

A quantized model is only worth its accuracy cost when it runs faster. Two things are reported:

* :func:`isa_check` - the best INT8 instruction set of this CPU (AMX-INT8, AVX512-VNNI,
  AVX-VNNI, ARM I8MM/SDOT; from :mod:`slipway.analyze.machine`). Without a native int8 dot
  product (AVX2 only, plain NEON) the engines emulate it with 16-bit multiply-adds and INT8 is
  often no faster than FP32: a warning says so.
* :func:`measure` - the FP32 and the quantized model timed at batch 1 on the target engine with
  its own optimizations on, in alternating blocks (:func:`slipway.perf.ab.latency_compare`, the
  engine of optimize's never-slower check too), so both see the same background load. The
  latencies are always measured and reported, whatever the instruction set.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from slipway.analyze.machine import cpu_features, cpu_model, int8_isa
from slipway.errors import UserError
from slipway.perf.ab import latency_compare

__all__ = ["SpeedReport", "Int8Choice", "int8_defaults", "isa_check", "measure", "TARGETS"]

TARGETS = ("ort", "openvino")  # engine table names
SLOWER_TOLERANCE = 0.02  # the quantized model is reported slower past 2% over FP32's median


@dataclass
class SpeedReport:
    target: str
    cpu: str
    isa: str  # e.g. "AVX512-VNNI", "AVX2 (no int8 dot-product instruction)"
    native_int8: bool
    latency_fp32_ms: float | None = None
    latency_quant_ms: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        if self.latency_fp32_ms is None or not self.latency_quant_ms:
            return None
        return self.latency_fp32_ms / self.latency_quant_ms

    def to_dict(self) -> dict:
        speedup = self.speedup
        return {
            "target": self.target, "cpu": self.cpu, "int8_isa": self.isa, "native_int8": self.native_int8,
            "latency_fp32_ms": _round(self.latency_fp32_ms), "latency_quant_ms": _round(self.latency_quant_ms),
            "speedup": None if speedup is None else round(speedup, 3), "warnings": list(self.warnings),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


@dataclass
class Int8Choice:
    symmetric: bool  # symmetric activations (zero point 0)
    activation_type: str  # "uint8" | "int8"
    reduce_range: bool  # 7-bit weights
    why: str


def int8_defaults(features: Mapping[str, bool] | None = None, machine: str | None = None) -> Int8Choice:
    """The activation and weight formats that run accurately and fast on this CPU's int8 kernels.

    * ARM (SDOT / I8MM multiply s8 x s8): symmetric int8 activations, full-range weights.
    * x86: the engines multiply u8 x s8 (VNNI's VPDPBUSD, else VPMADDUBSW): asymmetric uint8
      activations. int8 activations take onnxruntime's slower s8 x s8 path (ResNet-18 measured
      1.6x slower than with uint8 on an AVX2 CPU, no faster than FP32). Without VNNI/AMX,
      VPMADDUBSW adds two u8 x s8 products into a saturating int16, which full-range weights
      overflow (output SNR ~20 instead of ~40 dB measured): 7-bit weights (``reduce_range``), as
      onnxruntime recommends for such CPUs.
    """
    feats = dict(cpu_features() if features is None else features)
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch in ("arm64", "aarch64") or arch.startswith("arm") or feats.get("asimd"):
        return Int8Choice(True, "int8", False, "ARM CPU: symmetric int8 activations, full-range int8 weights")
    isa, native = int8_isa(feats)
    if native:
        return Int8Choice(False, "uint8", False, f"x86 CPU with {isa}: asymmetric uint8 activations (u8 x s8 kernels)")
    return Int8Choice(False, "uint8", True, f"x86 CPU without VNNI/AMX ({isa}): asymmetric uint8 activations and "
                                            "7-bit weights (VPMADDUBSW's int16 pair sums saturate with full-range "
                                            "weights)")


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")


def isa_check(precision: str, target: str, features: Mapping[str, bool] | None = None) -> SpeedReport:
    """The instruction-set part of the report, with a warning when INT8 (or BF16/FP16) may not pay off."""
    check_target(target)
    feats = dict(cpu_features() if features is None else features)
    isa, native = int8_isa(feats)
    report = SpeedReport(target, cpu_model(), isa, native)
    if precision == "int8" and not native:
        report.warnings.append(
            f"this CPU has no int8 dot-product instruction (VNNI, AMX or ARM SDOT/I8MM; best: {isa}): "
            "INT8 may not be faster than FP32 here; see latency_fp32_ms vs latency_quant_ms")
    if precision == "bf16" and not (feats.get("avx512_bf16") or feats.get("amx_bf16")):
        report.warnings.append("this CPU has no BF16 instructions (AVX512-BF16, AMX-BF16): the BF16 model "
                               "will likely run slower than FP32 on CPU")
    if precision == "fp16":
        report.warnings.append("CPU engines run most FP16 ops through casts to FP32: the FP16 model halves the "
                               "weights but will likely not be faster on CPU (it is meant for GPUs)")
    return report


def measure(report: SpeedReport, fp32: ir.Model, quantized: ir.Model, *, budget_s: float = 2.0,
            dim_sizes: Mapping[str, Sequence[int]] | None = None,
            feeds: Mapping[str, np.ndarray] | None = None) -> SpeedReport:
    """Time ``fp32`` and ``quantized`` on ``feeds`` (default: batch 1 at ``dim_sizes``) on ``report.target``
    (alternating blocks); fills the latencies."""
    speed = latency_compare(fp32, quantized, report.target, budget_s, dim_sizes,
                            dict(feeds) if feeds is not None else None)
    before, after = speed.a_ms, speed.b_ms
    report.latency_fp32_ms, report.latency_quant_ms = before, after
    if speed.slower(SLOWER_TOLERANCE):
        report.warnings.append(
            f"the quantized model is slower than FP32 on {report.target}: {after:.3f} ms vs {before:.3f} ms")
    return report
