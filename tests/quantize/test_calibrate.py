"""Calibration: streaming statistics against numpy and onnxruntime, histogram growth, bounded memory,
the four range methods (entropy checked against a direct loop), the cache file."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import cv2
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from slipway.errors import UserError
from slipway.quantize import calibrate
from slipway.quantize.calibrate import activations, collect, kl_divergences, load, ranges, save, threshold, update
from slipway.quantize.data import ImageSpec, calibration_data
from slipway.quantize.types import METHODS, Calibration, TensorStats
from tests.passes.util import make, run, tensor

W = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
B = np.array([0.1, 0.2, -0.3, 0.0], dtype=np.float32)


def small_model(width: int = 4):
    """x -> Mul(W) -> Relu -> Add(Identity(B)) -> y; Identity(B) depends on weights only."""
    w = np.resize(W, width).astype(np.float32)
    b = np.resize(B, width).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Identity", ["b"], ["bc"]), helper.make_node("Add", ["r", "bc"], ["y"])]
    return make(nodes, [tensor("x", ["batch", width])], [tensor("y", ["batch", width])], {"w": w, "b": b})


def expected(x: np.ndarray) -> dict[str, np.ndarray]:
    m = x * W
    r = np.maximum(m, 0)
    return {"x": x, "m": m, "r": r, "y": r + B}


def batches(n: int, seed: int = 0, rows: int = 8, width: int = 4):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.normal(size=(rows, width)).astype(np.float32)


def test_stats_match_numpy_and_onnxruntime():
    model = small_model()
    data = list(batches(3))
    seen = []
    cal = collect(model, data, progress=lambda done, total: seen.append((done, total)))
    assert activations(model) == ["x", "m", "r", "y"]  # bc depends on weights only
    assert list(cal.stats) == ["x", "m", "r", "y"] and cal.samples == 24
    assert seen == [(8, 24), (16, 24), (24, 24)]
    allx = np.concatenate(data)
    ref = expected(allx)
    ref["y"] = np.concatenate([run(model, {"x": x})[0] for x in data])  # the output, from onnxruntime
    for name, values in ref.items():
        st = cal.stats[name]
        assert (st.min, st.max, st.count) == (pytest.approx(values.min()), pytest.approx(values.max()), values.size)
        assert st.hist.sum() == values.size and len(st.hist) == 2048


def test_minmax_matches_onnxruntime_calibrator(tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    model = small_model()
    ir.save(model, tmp_path / "m.onnx")
    data = list(batches(3, seed=5))
    reference = create_calibrator(tmp_path / "m.onnx", augmented_model_path=tmp_path / "aug.onnx",
                                  calibrate_method=CalibrationMethod.MinMax)

    class Reader:
        def __init__(self):
            self.items = iter([{"x": x} for x in data])

        def get_next(self):
            return next(self.items, None)

    reference.collect_data(Reader())
    theirs = {k: tuple(float(np.asarray(t).item()) for t in v.range_value) for k, v in reference.compute_data().data.items()}
    ours = ranges(collect(model, data), "minmax", symmetric=False)
    assert set(ours) == set(theirs) - {"bc"}  # ORT also calibrates Identity(weight)
    for name, (lo, hi) in ours.items():
        assert (lo, hi) == pytest.approx(theirs[name], abs=1e-7), name


def test_choose_tensors_and_errors():
    model = small_model()
    cal = collect(model, list(batches(1)), tensors=["r"])
    assert list(cal.stats) == ["r"]
    with pytest.raises(UserError, match="no tensor named 'nope'"):
        collect(model, list(batches(1)), tensors=["nope"])
    nodes = [helper.make_node("Add", ["i", "i"], ["o"])]
    ints = make(nodes, [tensor("i", [2], onnx.TensorProto.INT64)], [tensor("o", [2], onnx.TensorProto.INT64)])
    with pytest.raises(UserError, match="no float activations"):
        collect(ints, [np.array([1, 2])])
    with pytest.raises(UserError, match="only float tensors"):
        collect(ints, [np.array([1, 2])], tensors=["o"])


def edge_counts(st: TensorStats, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Streamed and true counts of |x| below each bin edge of the streamed histogram."""
    edges = np.arange(1, len(st.hist)) * (st.hist_max / len(st.hist))
    return np.cumsum(st.hist)[:-1], np.searchsorted(np.sort(np.abs(values)), edges, side="left")


def test_histogram_growth_is_exact_at_bin_edges():
    rng = np.random.default_rng(1)
    small, big = rng.normal(size=50_000), rng.normal(scale=37.0, size=50_000)
    st = TensorStats("t", np.inf, -np.inf, 0)
    update(st, small)
    first = st.hist_max
    update(st, big)
    assert st.hist_max >= np.abs(big).max() and np.log2(st.hist_max / first) % 1 == 0  # grew by a power of 2
    streamed, true = edge_counts(st, np.concatenate([small, big]))
    assert np.abs(streamed - true).max() <= 1  # only values on an edge (float rounding) may move
    one = TensorStats("t", np.inf, -np.inf, 0)
    update(one, np.concatenate([small, big]))
    width = st.hist_max / len(st.hist)
    for pct in (50, 90, 99, 99.9):  # the one-pass histogram agrees within a bin
        a = threshold(st, "percentile", percentile=pct)
        b = threshold(one, "percentile", percentile=pct)
        assert abs(a - b) <= width, pct
    assert (st.min, st.max, st.count) == (one.min, one.max, one.count)


def test_histogram_from_zeros_and_non_finite():
    st = TensorStats("t", np.inf, -np.inf, 0)
    update(st, np.zeros(10))
    assert st.hist_max == 0 and st.hist[0] == 10
    assert update(st, np.array([np.nan, 4.0, -2.0, np.inf])) is True
    assert (st.min, st.max, st.count, st.hist_max) == (-2.0, 4.0, 12, 4.0)
    assert st.hist[0] == 10 and st.hist.sum() == 12
    model = small_model()
    cal = collect(model, [np.array([[np.nan, 1, 2, 3]], dtype=np.float32)])
    assert any("non-finite" in n for n in cal.notes)


def test_memory_is_bounded(monkeypatch):
    alive: list[weakref.ref] = []
    real = calibrate._execute

    def watched(session, names, feeds, k):
        gc.collect()
        assert not [r for r in alive if r() is not None], "activations of an earlier batch are still alive"
        outs = real(session, names, feeds, k)
        alive.extend(weakref.ref(o) for o in outs)
        return outs

    monkeypatch.setattr(calibrate, "_execute", watched)
    model = small_model(width=4096)

    def peak(n: int) -> int:
        tracemalloc.start()
        collect(model, lambda: batches(n, rows=16, width=4096))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    few, many = peak(3), peak(30)
    assert many < few * 1.25 + 200_000, (few, many)


def reference_kl(hist: np.ndarray, levels: int, eps: float = 1e-4) -> np.ndarray:
    """TensorRT's entropy calibration written as a plain loop (MXNet's smoothing)."""

    def smooth(p):
        zeros = p == 0
        if zeros.all():
            return None
        return p + eps * zeros - eps * zeros.sum() / (~zeros).sum() * ~zeros

    out = []
    for i in range(levels, len(hist) + 1):
        p = hist[:i].astype(float).copy()
        p[-1] += hist[i:].sum()
        m = i // levels
        q = np.zeros(i)
        for k in range(levels):
            s, e = k * m, (k + 1) * m if k < levels - 1 else i
            n = (p[s:e] != 0).sum()
            if n:
                q[s:e] = np.where(p[s:e] != 0, hist[s:e].sum() / n, 0)
        ps, qs = smooth(p), smooth(q)
        if ps is None or qs is None:
            out.append(np.inf)
            continue
        ps, qs = ps / ps.sum(), qs / qs.sum()
        out.append(np.sum(ps * np.log(ps / qs)))
    return np.array(out)


@pytest.mark.parametrize("case", ["dense", "outliers", "sparse", "gaps"])
def test_kl_matches_the_direct_loop(case):
    rng = np.random.default_rng(3)
    x = {"dense": np.abs(rng.laplace(size=100_000)), "outliers": np.r_[np.abs(rng.normal(size=50_000)), 30, 45],
         "sparse": np.abs(rng.standard_cauchy(size=300)), "gaps": np.abs(rng.laplace(size=20_000))}[case]
    hist = np.histogram(x, bins=512, range=(0, x.max()))[0]
    if case == "gaps":
        hist[200:230] = 0
        hist[-6:-1] = 0
    i, kl = kl_divergences(hist, 128)
    ref = reference_kl(hist, 128)
    assert list(i) == list(range(128, 513))
    np.testing.assert_allclose(kl, ref, rtol=1e-9, atol=1e-12)
    assert np.argmin(kl) == np.argmin(ref)


def heavy_tail() -> tuple[np.ndarray, TensorStats]:
    """Laplace(0, 1) with three outliers at 50..80, streamed in five batches."""
    rng = np.random.default_rng(7)
    x = rng.laplace(scale=1.0, size=600_000).astype(np.float32)
    x[rng.choice(x.size, 3, replace=False)] = rng.choice([-1, 1], 3) * rng.uniform(50, 80, 3)
    st = TensorStats("t", np.inf, -np.inf, 0)
    for part in np.array_split(x, 5):
        update(st, part)
    return x, st


def fake_quant_mse(x: np.ndarray, t: float) -> float:
    s = t / 127
    return float(np.mean((np.clip(np.round(x / s), -127, 127) * s - x) ** 2))


def test_heavy_tail_entropy_and_mse_clip_outliers():
    x, st = heavy_tail()
    amax = np.abs(x).max()
    t = {m: threshold(st, m) for m in METHODS}
    assert t["minmax"] == pytest.approx(amax)
    assert t["entropy"] < 0.3 * amax  # ORT's default entropy calibration stays at the max here
    assert t["percentile"] < 0.3 * amax
    errors = {m: fake_quant_mse(x, t[m]) for m in METHODS}
    assert errors["mse"] < 0.5 * errors["minmax"], errors
    grid = np.linspace(0.02, 1.0, 200) * amax  # the histogram's choice is near the best measured one
    best = min(fake_quant_mse(x, g) for g in grid)
    assert errors["mse"] < 1.05 * best, (errors["mse"], best)


def test_ranges_sides_and_zero():
    x, st = heavy_tail()
    cal = Calibration({"t": st, "relu": TensorStats("relu", 0.0, 0.0, 0), "zero": TensorStats("zero", 0, 0, 0)}, 1)
    update(cal.stats["relu"], np.maximum(x, 0) + 0.5)
    update(cal.stats["zero"], np.zeros(5))
    sym = ranges(cal, "percentile")
    t = threshold(st, "percentile")
    assert sym["t"] == (-t, t) and sym["zero"] == (0.0, 0.0)
    asym = ranges(cal, "minmax", symmetric=False)
    assert asym["t"] == (st.min, st.max) and asym["relu"] == (0.0, cal.stats["relu"].max)  # 0 always inside
    lo, hi = ranges(cal, "entropy", symmetric=False)["relu"]
    assert lo == 0.0 and 0.5 < hi < cal.stats["relu"].max
    with pytest.raises(UserError, match="unknown calibration method 'kl'"):
        ranges(cal, "kl")
    with pytest.raises(UserError, match="percentile"):
        ranges(cal, "percentile", percentile=0)


def test_cache_reused_and_stale_ignored(tmp_path, monkeypatch):
    runs = []
    real = calibrate._execute
    monkeypatch.setattr(calibrate, "_execute", lambda *a: runs.append(1) or real(*a))
    model = small_model()
    data = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    path = tmp_path / "calib.npz"
    first = collect(model, data, cache=path)
    n = len(runs)
    assert n == 3 and path.is_file()  # 20 rows in batches of 8
    again = collect(model, data.copy(), cache=path)
    assert len(runs) == n and any("cache" in note for note in again.notes)
    for name, st in first.stats.items():
        got = again.stats[name]
        assert (got.min, got.max, got.count, got.hist_max) == (st.min, st.max, st.count, st.hist_max)
        np.testing.assert_array_equal(got.hist, st.hist)
    assert ranges(again, "entropy") == ranges(first, "entropy")
    assert list(collect(model, data, tensors=["r"], cache=path).stats) == ["r"] and len(runs) == n
    collect(model, data + 1, cache=path)  # other data: stale
    assert len(runs) == n + 3
    collect(small_model(width=4), data + 1, cache=path, bins=512)  # other bins: stale
    assert len(runs) == n + 6
    other = small_model()
    other.graph.initializers["w"].const_value = ir.tensor(W * 2)  # other weights: stale
    collect(other, data, cache=path)
    assert len(runs) == n + 9
    path.write_bytes(b"garbage")  # unreadable: recomputed and rewritten
    collect(model, data, cache=path)
    assert len(runs) == n + 12 and load(path).samples == 20


def test_cache_file_round_trip_and_errors(tmp_path):
    _, st = heavy_tail()
    cal = Calibration({"t": st, "unseen": TensorStats("unseen", np.inf, -np.inf, 0)}, 5, "m1", "d1", ["a note"])
    back = load(save(cal, tmp_path / "c.npz"))
    assert (back.samples, back.model_digest, back.data_digest, back.notes) == (5, "m1", "d1", ["a note"])
    np.testing.assert_array_equal(back.stats["t"].hist, st.hist)
    assert back.stats["unseen"].hist is None and back.stats["unseen"].count == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".slipway-tmp")]
    with pytest.raises(UserError, match="calibration cache not found"):
        load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable calibration cache"):
        load(tmp_path / "bad.npz")


def test_zoo_model_from_images(tmp_path):
    from tests.zoo import export

    path = export("mobilenetv2")
    rng = np.random.default_rng(0)
    for k in range(8):
        cv2.imwrite(str(tmp_path / f"img{k}.png"), rng.integers(0, 256, (200 + 8 * k, 240, 3), dtype=np.uint8))
    spec = ImageSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    cal = collect(path, calibration_data(tmp_path, path, preprocess=spec, batch=4))
    assert cal.samples == 8 and len(cal.stats) > 50 and not cal.notes
    for method in METHODS:
        for symmetric in (True, False):
            got = ranges(cal, method, symmetric=symmetric)
            assert set(got) == set(cal.stats)
            bad = {k: v for k, v in got.items() if not (np.isfinite(v).all() and v[0] <= 0 <= v[1] and v[1] > v[0])}
            assert not bad, (method, symmetric, list(bad.items())[:3])
    entropy, minmax = ranges(cal, "entropy"), ranges(cal, "minmax")
    clipped = sum(entropy[k][1] < minmax[k][1] for k in cal.stats)
    assert clipped > len(cal.stats) // 2
