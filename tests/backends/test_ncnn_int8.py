"""ncnn INT8 on the real PP-OCRv4 models (:mod:`slipway.backends.ncnn_int8`): the ``.bin`` walk knows every layer
type pnnx writes weights for (Gemm, MultiHeadAttention, LayerNorm... of the rec model's transformer neck), and the
accuracy budget keeps the layers most responsible for the INT8 error in FP32 until the output SNR holds.

Measured (x86, ncnn 1.0.20261020; 16 rendered pages / line crops; the SNR of all-int8 models on them): det entropy
10.9, minmax 15.3, percentile 5.9, mse 7.1 dB; rec entropy 1.2 (one 1x1 convolution alone takes it to 0.9 dB),
minmax 8.9, percentile 13.6, mse 9.4 dB. Method auto takes the best one; the budget then keeps det 6 of 62 layers
(minmax, 19.9 dB; 19.1 dB on 8 held-out pages) and rec 13 of 38 (percentile, 20.2 dB; 17.6 dB on 8 held-out
crops, 10.9 to 37 dB per crop) in FP32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slipway.backends import Options, edge, edge_int8, get, ncnn_int8
from slipway.backends.ncnn_int8 import Budget, Layer
from slipway.errors import UserError

pytest.importorskip("ncnn")
pytest.importorskip("rapidocr_onnxruntime")

from tests.corpus import model  # noqa: E402


@pytest.fixture(autouse=True)
def engine_cache(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("SLIPWAY_CACHE", str(tmp_path_factory.getbasetemp() / "engine-cache"))


def layer(kind: str, **params: int) -> Layer:
    p = {int(k[1:]): str(v) for k, v in params.items()}
    return Layer(kind, "l", ["a"], ["b"], p, "")


@pytest.mark.parametrize("kind, params, loads", [
    # Gemm: constant B [N, K] (transB) and C broadcast over N (type 4), both flagged, as pnnx writes nn.Linear
    ("Gemm", {"p2": 0, "p3": 1, "p4": 0, "p5": 1, "p6": 1, "p7": 0, "p8": 240, "p9": 120, "p10": 4},
     [("w", 28800), ("w", 240)]),
    ("Gemm", {"p4": 1, "p5": 0, "p6": 1, "p7": 3, "p9": 5, "p10": 1}, [("w", 15), ("w", 3)]),
    ("Gemm", {"p5": 1, "p8": 4, "p9": 2, "p6": 1, "p10": -1}, [("w", 8)]),  # C given at run time
    ("Gemm", {"p5": 1, "p8": 4, "p9": 2, "p18": 2}, [("?", 0)]),  # already int8
    # MultiHeadAttention: q, k, v, out weights (flagged) each followed by its raw bias
    ("MultiHeadAttention", {"p0": 120, "p1": 8, "p2": 14400, "p3": 120, "p4": 120},
     [("w", 14400), ("f", 120)] * 4),
    ("MultiHeadAttention", {"p0": 8, "p2": 32, "p3": 6, "p4": 5},
     [("w", 32), ("f", 8), ("w", 48), ("f", 8), ("w", 40), ("f", 8), ("w", 32), ("f", 4)]),
    ("LayerNorm", {"p0": 120, "p2": 1}, [("f", 120)] * 2),
    ("LayerNorm", {"p0": 120, "p2": 0}, []),
    ("RMSNorm", {"p0": 64}, [("f", 64)]),
    ("MemoryData", {"p0": 4, "p1": 3}, [("f", 12)]),
    ("MemoryData", {"p0": 4, "p21": 0}, [("w", 4)]),
    ("MemoryData", {}, []),  # ncnn creates a 1-element blob without reading
    ("Embed", {"p0": 16, "p1": 100, "p2": 1, "p3": 1600}, [("w", 1600), ("f", 16)]),
    ("BinaryOp", {"p0": 2, "p1": 1}, []),
])
def test_the_walk_reads_what_ncnns_load_model_reads(kind, params, loads):
    assert ncnn_int8._loads(layer(kind, **params)) == loads


@pytest.mark.parametrize("name, size", [("ppocr_rec", 10750388), ("ppocr_det", 4685856)])
def test_the_walk_accounts_for_every_byte_of_the_ppocr_models(name, size):
    entry = edge.convert(get("ncnn").converter, str(model(name)))
    _, layers = ncnn_int8.read_param(entry.file("model.ncnn.param"))
    data = entry.file("model.ncnn.bin").read_bytes()
    assert len(data) == size
    ncnn_int8.walk_bin(layers, data)  # raises unless the segments end exactly at the end of the file
    ends = [o + n for la in layers for o, n in la.segments]
    starts = [o for la in layers for o, _ in la.segments]
    assert starts[0] == 0 and ends[-1] == size and starts[1:] == ends[:-1]
    if name == "ppocr_rec":
        by = {la.name: la for la in layers}
        # the CTC head: B [6625, 120] flagged float32 (4-byte tag + data), then C [6625] flagged
        assert by["gemm_4"].segments[0][1] == 4 + 4 * 120 * 6625
        assert by["gemm_4"].segments[1][1] == 4 + 4 * 6625
        assert [n for _, n in by["attention_77"].segments] == [4 + 4 * 14400, 4 * 120] * 4
        assert {la.type for la in layers if la.segments} >= {"Gemm", "MultiHeadAttention", "LayerNorm",
                                                              "Convolution", "InnerProduct"}


def test_zero_or_denormal_weight_groups_get_scale_1():
    w = np.array([0, 0, 1e-40, -1e-41, 0.5, -1.0], np.float32)
    s = ncnn_int8.weight_scales(w, 3)
    assert s.tolist() == [1.0, 1.0, 127.0]
    assert ncnn_int8.to_int8(w, s).tolist() == [0, 0, 0, 0, 64, -127]


def test_a_layer_kept_fp32_is_untouched_in_param_and_bin(digits):
    """rewrite(keep=...): the kept layer's .param line and .bin bytes are the FP32 ones; the others are int8."""
    entry = edge.convert(get("ncnn").converter, digits)
    header, layers = ncnn_int8.read_param(entry.file("model.ncnn.param"))
    data = entry.file("model.ncnn.bin").read_bytes()
    ncnn_int8.walk_bin(layers, data)
    targets = [la for la in layers if la.type in ncnn_int8.QUANTIZED]
    bottoms = {la: 10.0 for la in targets}
    kept = targets[0]
    param, blob, table = ncnn_int8.rewrite(header, layers, data, bottoms, {kept.name})
    lines = {ln.split()[1]: ln for ln in param.splitlines()[2:]}
    assert lines[kept.name] == kept.line and " 8=" not in kept.line
    assert all(lines[la.name].endswith(" 8=1") for la in targets[1:])
    o, n = kept.segments[0][0], kept.segments[-1][0] + kept.segments[-1][1]
    assert blob[o:n] == data[o:n]  # the first layer: its bytes are at the same place
    assert int.from_bytes(blob[n:n + 4], "little") == ncnn_int8.INT8_TAG  # the next convolution's, in int8
    assert kept.name not in {ln.split()[0] for ln in table.splitlines()}
    assert len(table.splitlines()) == 2 * (len(targets) - 1)
    _, again = ncnn_int8.read_param(_write(entry.path.parent / "kept", param, blob) / "model.ncnn.param")
    assert [la.params.get(8) for la in again if la.type in ncnn_int8.QUANTIZED] == [None] + ["1"] * (len(targets) - 1)


def _write(d: Path, param: str, blob: bytes) -> Path:
    d.mkdir(exist_ok=True)
    (d / "model.ncnn.param").write_text(param)
    (d / "model.ncnn.bin").write_bytes(blob)
    return d


def _budget(noise: dict[str, float], target: float) -> Budget:
    """A Budget whose measure() adds up the noise of each int8 layer (no model runs)."""
    b = object.__new__(Budget)
    b.layers = [Layer("Convolution", n, ["a"], ["b"], {}, "") for n in noise]
    b.bottoms = {la: 1.0 for la in b.layers}
    b.target, b.samples, b.evaluations, b.sensitivity = target, [[]] * 8, 0, {}
    b.all_int8 = b.snr = None

    def measure(keep):
        b.evaluations += 1
        total = sum(v for n, v in noise.items() if n not in keep)
        return float("inf") if total == 0 else -10 * np.log10(total)

    b.measure = measure
    return b


def test_the_budget_keeps_the_noisiest_layers_fp32_deterministically():
    noise = {"conv0": 0.001, "conv1": 0.2, "conv2": 0.002, "conv3": 0.05, "conv4": 0.05, "conv5": 0.0005}
    b = _budget(noise, 16.0)  # allowed noise 0.0251: keep conv1, conv3 and conv4 (the tie: the earlier first)
    keep = b.search()
    assert keep == {"conv1", "conv3", "conv4"} and b.snr >= 16.0
    assert b.evaluations == 1 + len(noise) + 1
    rec = b.record(keep)
    assert rec["fp32_layers"] == ["conv1", "conv3", "conv4"] and rec["int8_layers"] == 3
    assert rec["snr_db_all_int8"] == pytest.approx(-10 * np.log10(sum(noise.values())), abs=0.01)
    assert _budget(noise, 16.0).search() == keep
    # already good enough: nothing kept, one evaluation
    b = _budget(noise, 5.0)
    assert b.search() == frozenset() and b.evaluations == 1
    # out of reach (a target no model meets): every layer kept FP32 within the bounded steps, then given up
    b = _budget(noise, 400.0)
    assert len(b.search()) <= len(noise) and b.evaluations <= 1 + len(noise) + 1 + ncnn_int8.MAX_STEPS


def test_a_budget_no_layer_meets_is_one_line(digits, calib, tmp_path, monkeypatch):
    """A target no int8 layer can meet would keep every layer FP32: an FP32 model under an INT8 name. Refused,
    naming the least sensitive layer and its SNR."""
    from tests.backends.conftest import CALIB

    monkeypatch.setattr(edge_int8, "MIN_SNR_DB", 200.0)
    entry = edge.convert(get("ncnn").converter, digits)
    x = np.load(calib)["x"][:CALIB]
    with pytest.raises(UserError, match=r"no layer stays int8 within the accuracy budget \(203 dB SNR on 16 calib"
                                        r"ration samples\): all-int8 \(\w+\) is at [\d.]+ dB and the least "
                                        r"sensitive layer, \w+, alone at [\d.]+ dB$") as e:
        ncnn_int8.QUANTIZER.quantize(entry.path, tmp_path, tmp_path, [{"x": x[i:i + 8]} for i in range(0, 32, 8)],
                                     "auto")
    assert "\n" not in str(e.value)


def _calib(name: str, path: Path, n: int = 16, seed: int = 100) -> Path:
    """Rendered pages (det, 480 x 480) or line crops (rec, 48 x 320) through the OCR pipeline's pre-processing."""
    from slipway.pipeline.ocr import crop_tensor, det_preprocess
    from slipway.pipeline.pages import line_crops, render_lines, text_lines

    if name == "ppocr_det":
        rng = np.random.default_rng(seed)
        pages = [render_lines(text_lines(5, seed=seed + i), [int(v) for v in rng.integers(16, 25, 5)],
                              size=(480, 480), seed=seed + i).image for i in range(n)]
        x = np.concatenate([det_preprocess(p, limit_side_len=480, limit_type="max")["tensor"] for p in pages])
    else:
        x = crop_tensor(line_crops(n, seed=seed)[0], (3, 48, 320))
    np.savez(path, x=x)
    return path


def _check_ppocr_int8(name: str, method: str, tmp_path: Path) -> None:
    calib = _calib(name, tmp_path / f"{name}.npz")
    (q,) = get("ncnn").load(str(model(name)), Options(threads=1, precision="int8", settings={"calib": str(calib)}))
    root = edge.cache_root() / "ncnn-int8"
    sha = edge.digest(str(model(name)))
    ((entry, manifest),) = [(p, m) for p in root.iterdir() if not p.name.startswith(".")
                            for m in [json.loads((p / "manifest.json").read_text())] if m["source_sha256"] == sha]
    (out,) = manifest["verification"]["outputs"]
    assert out["snr_db"] >= edge_int8.MIN_SNR_DB
    budget = manifest["accuracy_budget"]
    assert manifest["options"]["method"] == "auto" and budget["method"] == method
    assert budget["method_snr_db"][method] == max(budget["method_snr_db"].values())
    assert budget["snr_db_all_int8"] < budget["target_snr_db"]  # the whole-model INT8 misses the target...
    kept = budget["fp32_layers"]
    assert kept and budget["snr_db"] >= budget["target_snr_db"]  # ...and the budget restored it
    _, layers = ncnn_int8.read_param(entry / "model.ncnn.param")
    by = {la.name: la for la in layers}
    assert all(8 not in by[n].params for n in kept)  # kept FP32: no int8_scale_term
    int8 = [la for la in layers if la.params.get(8) == "1"]
    assert len(int8) == budget["int8_layers"] > len(kept)
    # held-out inputs (other pages / crops: bench/engines.py's 8): still above the bar
    x = np.load(_calib(name, tmp_path / "held_out.npz", n=8, seed=0))["x"]
    (ref,) = get("ort").load(str(model(name)), Options(threads=1))
    key = next(iter(ref.run({"x": x[:1]})))
    a = np.concatenate([ref.run({"x": x[i:i + 1]})[key].ravel() for i in range(len(x))]).astype(np.float64)
    b = np.concatenate([q.run({"x": x[i:i + 1]})[key].ravel() for i in range(len(x))]).astype(np.float64)
    from slipway.compare.metrics import snr_db

    assert snr_db(a, b) >= edge_int8.MIN_SNR_DB
    if name == "ppocr_rec":  # the CTC argmax per time step (what the decoder reads) mostly unchanged
        assert (a.reshape(-1, 6625).argmax(1) == b.reshape(-1, 6625).argmax(1)).mean() >= 0.95


def test_ppocr_rec_int8_passes_with_the_budget(tmp_path):
    _check_ppocr_int8("ppocr_rec", "percentile", tmp_path)


@pytest.mark.slow
def test_ppocr_det_int8_passes_with_the_budget(tmp_path):
    _check_ppocr_int8("ppocr_det", "minmax", tmp_path)
