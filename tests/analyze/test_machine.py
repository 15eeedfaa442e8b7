"""Measured machine peaks: plausible numbers, the cache, CPU feature parsing."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from slipway.analyze import machine
from slipway.analyze.types import MachinePeaks

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 2
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp i8mm
CPU implementer\t: 0x41
"""

AVX2_ONLY = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n"
AVX512_VNNI = "model name\t: Intel(R) Xeon(R) Gold 6248\nflags\t\t: fpu avx avx2 fma avx512f avx512bw avx512_vnni\n"
ARM_SDOT = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimdrdm asimddp\nCPU implementer\t: 0x41\n"
# one cpuinfo per int8 instruction set the tests force: (text, int8_isa(features))
VARIANTS = {
    "avx2": (AVX2_ONLY, ("AVX2 (no int8 dot-product instruction)", False)),
    "avx512_vnni": (AVX512_VNNI, ("AVX512-VNNI", True)),
    "amx": (X86_CPUINFO, ("AMX-INT8", True)),
    "arm_sdot": (ARM_SDOT, ("ARM SDOT", True)),
    "arm_i8mm": (ARM_CPUINFO, ("ARM I8MM", True)),
}


def test_features_parse_from_x86_cpuinfo():
    f = machine.parse_features(X86_CPUINFO)
    assert f["avx2"] and f["avx512f"] and f["avx512_vnni"] and f["amx_tile"] and f["amx_int8"] and f["amx_bf16"]
    assert not f["avx_vnni"] and not f["asimddp"] and not f["i8mm"]
    assert machine.cpu_model(X86_CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+"
    assert machine.int8_isa(f) == ("AMX-INT8", True)
    # Three logical CPUs on two physical cores: onnxruntime's default is the physical cores.
    assert machine.default_threads(X86_CPUINFO) == min(2, machine.cpu_count())


def test_features_parse_from_arm_and_avx2_cpuinfo():
    arm = machine.parse_features(ARM_CPUINFO)
    assert arm["asimd"] and arm["asimddp"] and arm["i8mm"]
    assert not arm["avx2"] and not arm["amx_int8"]
    assert machine.int8_isa(arm) == ("ARM I8MM", True)
    amd = machine.parse_features(AVX2_ONLY)
    assert amd["avx2"] and amd["fma"] and not amd["avx512f"] and not amd["avx_vnni"]
    isa, native = machine.int8_isa(amd)
    assert isa.startswith("AVX2") and not native
    assert machine.parse_features("") == dict.fromkeys(machine.FEATURE_FLAGS, False)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_int8_isa_per_cpu_variant(variant):
    text, expected = VARIANTS[variant]
    assert machine.int8_isa(machine.parse_features(text)) == expected


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_measure_reports_the_forced_cpu_features(monkeypatch, variant):
    # the features and the int8 instruction set come from cpuinfo, not from the measurement: each
    # variant is forced (cpuinfo text and fake probes), whatever this host has
    text, (isa, _) = VARIANTS[variant]
    monkeypatch.setattr(machine, "cpuinfo_text", lambda: text)
    monkeypatch.setattr(machine, "matmul_gflops", lambda seconds, threads: (100.0, "fake fp32"))
    monkeypatch.setattr(machine, "matmul_int8_gops", lambda seconds, threads: (400.0, "fake int8"))
    monkeypatch.setattr(machine, "bandwidth_gbs", lambda seconds, threads: (10.0, "fake bandwidth"))
    p = machine.measure(seconds=0.01, threads=1)
    assert p.features == machine.parse_features(text) and p.cpu == machine.cpu_model(text)
    assert p.methods["int8_isa"] == isa and p.methods["int8"] == f"fake int8; int8 instruction set: {isa}"
    assert (p.fp32_gflops, p.int8_gops, p.mem_bandwidth_gbs) == (100.0, 400.0, 10.0)


def test_gflops_formula_with_a_fake_clock(monkeypatch):
    # Every perf_counter() call advances 10 ms, so each timed run takes exactly 10 ms.
    clock = iter(np.arange(0.0, 1000.0, 0.01))
    monkeypatch.setattr(machine.time, "perf_counter", lambda: float(next(clock)))
    gflops, how = machine.matmul_gflops(0.05, threads=1, n=64)
    assert gflops == pytest.approx(2 * 64**3 / 0.01 / 1e9, rel=1e-6)
    assert "MatMul fp32 64x64x64" in how
    gbs, how = machine.bandwidth_gbs(0.05, threads=1, nbytes=2**20)
    assert gbs == pytest.approx(2 * 2**20 / 0.01 / 1e9, rel=1e-6)
    assert "1 MiB" in how


def test_measure_returns_plausible_peaks_quickly():
    t0 = time.perf_counter()
    p = machine.measure(seconds=0.3, threads=1)
    assert time.perf_counter() - t0 < 30
    # One thread: above a slow scalar loop, below 5 GHz x 64 FP32 FLOP/cycle (2 AVX-512 FMA units);
    # int8 below 5 GHz x 2048 ops/cycle, AMX-INT8's 1024 MACs per cycle (the widest int8 unit of any
    # CPU: the bound holds on AVX2, VNNI, AMX and ARM alike)
    assert 0.5 < p.fp32_gflops < 320
    assert p.int8_gops is not None and 0.5 < p.int8_gops < 5 * 2048
    assert 0.3 < p.mem_bandwidth_gbs < 1000
    assert p.threads == 1 and p.cores >= 1 and p.cpu
    assert set(p.methods) >= {"fp32", "int8", "bandwidth", "int8_isa"}
    assert p.ridge_point == pytest.approx(p.fp32_gflops / p.mem_bandwidth_gbs)


def test_fp32_peak_is_comparable_to_numpy_blas():
    # An independent oracle: numpy's BLAS on the same problem, best of several runs, one thread
    # each is not enforceable for BLAS, so only the order of magnitude is compared.
    gflops, _ = machine.matmul_gflops(0.3, threads=1, n=512)
    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    best = min(_timed(lambda: a @ a) for _ in range(10))
    numpy_gflops = 2 * 512**3 / best / 1e9
    assert numpy_gflops / 20 < gflops < numpy_gflops * 20


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _fake_peaks(threads: int) -> MachinePeaks:
    return MachinePeaks(cpu="test cpu", cores=2, threads=threads, features={"avx2": True}, fp32_gflops=100.0,
                        int8_gops=200.0, mem_bandwidth_gbs=10.0, methods={"fp32": "fake"})


def test_peaks_are_cached_per_key(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIPWAY_CACHE", str(tmp_path))
    monkeypatch.setattr(machine, "_MEMO", {})
    calls = []

    def fake_measure(seconds: float = 3.0, threads: int | None = None) -> MachinePeaks:
        calls.append(threads)
        return _fake_peaks(threads)

    monkeypatch.setattr(machine, "measure", fake_measure)
    first = machine.peaks(threads=1)
    assert calls == [1]
    assert machine.peaks(threads=1) is first  # in-process hit: same object, no measurement
    assert calls == [1]
    data = json.loads((tmp_path / "machine.json").read_text())
    assert list(data) == [machine.cache_key(1)]
    assert data[machine.cache_key(1)]["fp32_gflops"] == 100.0
    monkeypatch.setattr(machine, "_MEMO", {})
    again = machine.peaks(threads=1)  # from the file
    assert calls == [1] and again == first
    machine.peaks(threads=2)  # another key measures
    assert calls == [1, 2]
    machine.peaks(threads=1, refresh=True)
    assert calls == [1, 2, 1]
    assert len(json.loads((tmp_path / "machine.json").read_text())) == 2


def test_corrupt_cache_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIPWAY_CACHE", str(tmp_path))
    monkeypatch.setattr(machine, "_MEMO", {})
    (tmp_path / "machine.json").write_text("{not json")
    monkeypatch.setattr(machine, "measure", lambda seconds=3.0, threads=None: _fake_peaks(threads))
    assert machine.peaks(threads=1).fp32_gflops == 100.0
    assert machine.cache_key(1) in json.loads((tmp_path / "machine.json").read_text())


def test_cache_path_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIPWAY_CACHE", str(tmp_path / "c"))
    assert machine.cache_path() == tmp_path / "c" / "machine.json"
    monkeypatch.delenv("SLIPWAY_CACHE")
    assert machine.cache_path().parts[-3:] == (".cache", "slipway", "machine.json")
