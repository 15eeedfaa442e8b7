"""INT8 on the edge engines from slipway's calibration data (:mod:`slipway.backends.edge_int8`).

The trained digits CNN (:mod:`slipway.zoo.digits`, exported once by tests/prune/digits.py) is quantized by MNN's
own tool and by slipway's ncnn table + rewrite (:mod:`slipway.backends.ncnn_int8`), both fed an .npz of 256
training images, and judged on the 360 held-out images: top-1 within 2 points of FP32 and the same answer on
>= 97% of them (measured: FP32 99.4%; MNN admm 99.2%, agreement 99.7%, output SNR 29 dB; ncnn auto (picks
percentile; entropy 36.3, minmax 36.4, percentile 36.4, mse 36.1 dB; no layer kept FP32) 99.4%,
agreement 100%, 36 dB). Then the cache (reused; another calibration set, sample cap or method is another entry),
the one-line errors for bad calibration data, and the refusal of an INT8 model too far from FP32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slipway.backends import Options, get
from slipway.errors import UserError, VerificationError

pytest.importorskip("MNN")
pytest.importorskip("ncnn")
pytest.importorskip("sklearn")

from slipway.backends import edge, edge_int8, ncnn_int8  # noqa: E402
from tests.backends.conftest import CALIB  # noqa: E402
from tests.prune.digits import data  # noqa: E402

ENGINES = ("mnn", "ncnn")



@pytest.fixture(autouse=True)
def engine_cache(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("SLIPWAY_CACHE", str(tmp_path_factory.getbasetemp() / "engine-cache"))


def int8(path: Path | str, **settings) -> Options:
    return Options(threads=1, precision="int8", settings={"calib": str(path), **settings})


def entries(engine: str) -> list[Path]:
    root = edge.cache_root() / engine
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


@pytest.mark.parametrize("engine", ENGINES)
def test_int8_keeps_the_digits_accuracy(digits, calib, engine):
    _, (x_test, y_test) = data()
    (fp32,) = get(engine).load(digits, Options(threads=1))
    (q,) = get(engine).load(digits, int8(calib))
    a, b = fp32.run({"x": x_test})["logits"], q.run({"x": x_test})["logits"]
    acc32, acc8 = (a.argmax(1) == y_test).mean() * 100, (b.argmax(1) == y_test).mean() * 100
    assert acc32 >= 97 and acc8 >= acc32 - 2
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.97
    (entry,) = entries(f"{engine}-int8")
    manifest = json.loads((entry / "manifest.json").read_text())
    quantizer = get(engine).quantizer
    assert manifest["options"]["method"] == quantizer.methods[0]
    assert manifest["options"]["samples"] == quantizer.samples(quantizer.methods[0])
    assert manifest["options"]["calibration_sha256"] == edge.digest(str(calib))
    (out,) = manifest["verification"]["outputs"]
    assert out["snr_db"] >= edge_int8.MIN_SNR_DB and out["cosine"] > 0.98
    # 8-bit weights: the weights file is about a third of the FP32 one or less (int8 weights plus their scales)
    weights = "model.mnn" if engine == "mnn" else "model.ncnn.bin"
    assert (entry / weights).stat().st_size < 0.5 * (entries(engine)[0] / weights).stat().st_size


def test_ncnn_table_and_rewrite_are_ncnn2int8s(digits, calib):
    """The table has a weight-scale line and a bottom-scale line per quantized layer; the .param marks those
    layers int8_scale_term=1; the int8 weights in the .bin are what ncnn's own quantize_to_int8 makes of the FP32
    weights with those scales, and the scales follow the bias."""
    import ncnn

    get("ncnn").load(digits, int8(calib))
    (entry,) = entries("ncnn-int8")
    (fp32,) = entries("ncnn")
    table = dict(line.split(" ", 1) for line in (entry / ncnn_int8.TABLE).read_text().splitlines())
    _, layers = ncnn_int8.read_param(entry / "model.ncnn.param")
    quantized = [la for la in layers if la.type in ncnn_int8.QUANTIZED]
    assert [la.type for la in quantized] == ["Convolution"] * 3 + ["InnerProduct"]
    assert all(la.params[8] == "1" for la in quantized) and len(table) == 2 * len(quantized)
    _, fp32_layers = ncnn_int8.read_param(fp32 / "model.ncnn.param")
    data = (fp32 / "model.ncnn.bin").read_bytes()
    ncnn_int8.walk_bin(fp32_layers, data)
    conv = next(la for la in fp32_layers if la.name == quantized[1].name)
    start, count = conv.weight
    w = np.frombuffer(data, np.float32, count, start)
    scales = np.array(table[f"{conv.name}_param_0"].split(), np.float32)  # the table's 6 significant digits
    assert len(scales) == int(conv.params[0]) and float(table[conv.name]) > 0
    offset = _int8_offset(entry, conv.name)
    exact = np.frombuffer((entry / "model.ncnn.bin").read_bytes(), np.float32, len(scales),
                          offset + (count + 3) // 4 * 4 + 4 * len(scales))  # after the int8 weights and the bias
    np.testing.assert_allclose(exact, scales, rtol=1e-5)
    scales = exact
    opt = ncnn.Option()
    opt.use_packing_layout, opt.num_threads = False, 1
    w3 = np.ascontiguousarray(w.reshape(len(scales), 1, -1))  # kept alive: ncnn.Mat borrows its memory
    want = np.array(ncnn.quantize_to_int8(ncnn.Mat(w3), ncnn.Mat(scales), opt))
    got = np.frombuffer((entry / "model.ncnn.bin").read_bytes(), np.int8, count, offset)
    assert np.array_equal(got, want.reshape(-1))


def _int8_offset(entry: Path, name: str) -> int:
    """Where the int8 weights of layer ``name`` start in the INT8 .bin (after their 4-byte tag)."""
    pos = 0
    _, layers = ncnn_int8.read_param(entry / "model.ncnn.param")
    data = (entry / "model.ncnn.bin").read_bytes()
    for la in layers:
        if la.type not in ncnn_int8.QUANTIZED:
            continue
        size_id, bias_id = (2, 1) if la.type == "InnerProduct" else (6, 5)
        n, out = int(la.params[size_id]), int(la.params[0])
        assert int.from_bytes(data[pos:pos + 4], "little") == ncnn_int8.INT8_TAG
        if la.name == name:
            return pos + 4
        groups = int(la.params.get(7, 1)) if la.type == "ConvolutionDepthWise" else out
        pos += 4 + (n + 3) // 4 * 4 + 4 * out * int(la.params.get(bias_id, 0)) + 4 * groups + 4
    raise AssertionError(name)


def test_a_bin_the_walk_cannot_account_for_is_refused(digits):
    import slipway.backends.ncnn as ncnnb

    entry = ncnnb.converted(digits)
    _, layers = ncnn_int8.read_param(entry.file("model.ncnn.param"))
    with pytest.raises(UserError, match="the .bin holds 95796 bytes but its layers account for 95800"):
        ncnn_int8.walk_bin(layers, entry.file("model.ncnn.bin").read_bytes()[:-4])


@pytest.mark.parametrize("engine", ENGINES)
def test_cache_is_reused_and_another_calibration_set_rebuilds(digits, calib, tmp_path, monkeypatch, engine):
    get(engine).load(digits, int8(calib))
    before = entries(f"{engine}-int8")

    def no_child(*args, **kwargs):
        raise AssertionError("the cached INT8 entry was rebuilt")

    with monkeypatch.context() as m:
        m.setattr(edge_int8, "_child", no_child)
        get(engine).load(digits, int8(calib))  # from the cache, no child process
    assert entries(f"{engine}-int8") == before
    (x_train, _), _ = data()
    other = tmp_path / "other.npz"
    np.savez(other, x=x_train[CALIB:2 * CALIB])
    get(engine).load(digits, int8(other))
    get(engine).load(digits, int8(calib, calib_samples=8))
    assert len(entries(f"{engine}-int8")) == len(before) + 2


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("arrays, why", [
    ({"image": np.zeros((4, 1, 16, 16), np.float32)}, "'image' is not a model input"),
    ({"x": np.zeros((4, 1, 8, 8), np.float32)}, r"input .x. expects shape \[batch, 1, 16, 16\], got \[4, 1, 8"),
    ({"x": np.zeros((4, 16, 16), np.float32)}, "expects samples of shape"),
])
def test_bad_calibration_data_is_one_line(digits, tmp_path, arrays, why, engine):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=why) as e:
        get(engine).load(digits, int8(path))
    assert "\n" not in str(e.value)
    root = edge.cache_root() / f"{engine}-int8"
    assert not root.is_dir() or not any(p.name.startswith(".build-") for p in root.iterdir())


def test_int8_options_are_checked(digits, calib, tmp_path):
    with pytest.raises(UserError, match="needs calibration data: setting calib"):
        get("mnn").load(digits, Options(precision="int8"))
    with pytest.raises(UserError, match="applies to precision int8 only"):
        get("mnn").load(digits, Options(settings={"calib": str(calib)}))
    with pytest.raises(UserError, match="calib_method='minmax' is not valid"):
        get("mnn").load(digits, int8(calib, calib_method="minmax"))
    with pytest.raises(UserError, match="calib_samples must be an integer"):
        get("mnn").load(digits, int8(calib, calib_samples=0))
    with pytest.raises(UserError, match="calibration data not found"):
        get("mnn").load(digits, int8(tmp_path / "missing.npz"))
    assert "int8" in get("mnn").precisions


def test_int8_far_from_fp32_is_refused_and_nothing_cached(digits, calib, monkeypatch):
    monkeypatch.setattr(edge_int8, "MIN_SNR_DB", 99.0)  # no 8-bit model is 99 dB from FP32
    with pytest.raises(VerificationError, match=r"too far from FP32: output 'logits' at [\d.]+ dB SNR") as e:
        get("mnn").load(digits, int8(calib, calib_samples=12))
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert not any(json.loads((p / "manifest.json").read_text())["options"]["samples"] == 12
                   for p in entries("mnn-int8"))


def test_a_crash_of_mnns_tool_is_one_line(digits, calib):
    """MNN 3.6.1's KL calibration segfaults on a model with pooling / Flatten (fixed upstream after 3.6.1): the
    child process dies, the parent says so in one line."""
    with pytest.raises(UserError, match=r"crashed \(signal \d+\).*method kl"):
        get("mnn").load(digits, int8(calib, calib_method="kl"))
