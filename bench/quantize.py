"""INT8 quantization side by side: slipway ``quantize`` (4 calibration methods) vs onnxruntime's
``quantize_static`` defaults vs NNCF, on a trained digits CNN and on the zoo's ResNet-18 and MobileNetV2.

For each model, in one run:

* **digits** - a small CNN trained inside the bench on sklearn's 8x8 digits (half for training,
  half for the test), exported with ``slipway.convert.from_torch``; calibrated on 256 training
  images, evaluated on the 899 test images: top-1 accuracy and its drop from FP32, in points;
* **resnet18, mobilenetv2** - random (seeded) weights, so there are no labels: top-1 agreement
  with FP32, output SNR (dB) and cosine on "structured" inputs (smooth 1/f-like random images,
  ImageNet-normalized), calibrated on 64 of them, evaluated on 100 others.

Variants: FP32; slipway INT8 with ``minmax``, ``percentile``, ``entropy`` and ``mse`` ranges
(its defaults: per-channel symmetric weights; activation symmetry and weight range chosen for the
CPU by ``speed.int8_defaults`` - on x86 without VNNI, asymmetric activations and 7-bit weights); onnxruntime
``quantize_static`` with its defaults (QDQ, per-tensor weights, uint8 activations, MinMax
calibration), and with ``per_channel=True, reduce_range=True`` (what it recommends for CPUs
without VNNI); NNCF ``nncf.quantize`` with its defaults (ONNX backend); slipway FP16. Every model is
evaluated on onnxruntime and OpenVINO (CPU), against the FP32 model in onnxruntime, and timed at
batch 1 on both engines, all variants of a model in alternating blocks.

Targets (issue 5): <= 0.5 point drop on the digits CNN; on the zoo models, agreement and SNR of
slipway's best method >= those of ORT's defaults.

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.quantize`` (NNCF: ``pip install nncf``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from bench.common import alternating_blocks, fmt, machine, publish, versions
from slipway.analyze.machine import cpu_features, int8_isa
from slipway.quantize.speed import int8_defaults

METHODS = ("minmax", "percentile", "entropy", "mse")
ENGINES = ("ort", "openvino")
BATCH = 16
SLIPWAY_EVAL = 32  # samples slipway's own evaluation and sensitivity use on the zoo models
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


class Case:
    def __init__(self, name: str, path: Path, calib: np.ndarray, x: np.ndarray, labels: np.ndarray | None):
        self.name, self.path, self.calib, self.x, self.labels = name, path, calib, x, labels


def structured_images(n: int, seed: int, size: int = 224) -> np.ndarray:
    """Smooth random images: noise at 4 scales (amplitude ~ 1/frequency), a shared luminance plus
    a weaker colour field, in [0, 1], then ImageNet-normalized; [n, 3, size, size] float32."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32)
        for cells, amp in ((4, 1.0), (12, 0.5), (40, 0.25), (112, 0.12)):
            lum = cv2.resize(rng.standard_normal((cells, cells)).astype(np.float32), (size, size),
                             interpolation=cv2.INTER_CUBIC)
            col = cv2.resize(rng.standard_normal((cells, cells, 3)).astype(np.float32), (size, size),
                             interpolation=cv2.INTER_CUBIC)
            img += amp * (lum[..., None] + 0.3 * col)
        img = np.clip(0.5 + 0.18 * img, 0.0, 1.0).transpose(2, 0, 1)
        out[i] = (img - MEAN) / STD
    return out


def digits_case(tmp: Path) -> Case:
    from tests.quantize.digits_cnn import digits, trained_cnn

    path = tmp / "digits.onnx"
    t0 = time.perf_counter()
    acc = trained_cnn(path)
    print(f"digits CNN trained and exported in {time.perf_counter() - t0:.1f} s (torch test accuracy {acc:.2f} %)")
    x_tr, _, x_te, y_te = digits()
    return Case("digits", path, x_tr[:256], x_te, y_te)


def zoo_case(name: str, n_calib: int, n_eval: int) -> Case:
    from tests.zoo import export

    return Case(name, export(name), structured_images(n_calib, 1), structured_images(n_eval, 2), None)


# ---------------------------------------------------------------- quantizers


def run_slipway(case: Case, dst: Path, method: str, cache: Path, **kw: Any) -> dict[str, Any]:
    from slipway.quantize import quantize

    # slipway evaluates (and ranks layers) itself; the zoo models' tables use the bench's own evaluation
    eval_data = {"x": case.x, "labels": case.labels} if case.labels is not None else {"x": case.x[:SLIPWAY_EVAL]}
    r = quantize(case.path, dst, calib={"x": case.calib}, method=method, eval_data=eval_data, cache=cache,
                 speed_check=False, **kw)
    return {"float_layers": [f.node for f in r.float_layers], "nodes_quantized": r.nodes_quantized()}


def run_ort(case: Case, dst: Path, **options: Any) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": case.calib[i:i + 1]} for i in range(len(case.calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(str(case.path), str(dst), Reader(), quant_format=QuantFormat.QDQ, **options)
    return {}


def run_nncf(case: Case, dst: Path) -> dict[str, Any]:
    import nncf

    model = onnx.load(str(case.path))
    data = nncf.Dataset([{"x": case.calib[i:i + 1]} for i in range(len(case.calib))])
    onnx.save(nncf.quantize(model, data, subset_size=len(case.calib)), str(dst))
    return {}


def run_fp16(case: Case, dst: Path) -> dict[str, Any]:
    from slipway.quantize import quantize

    quantize(case.path, dst, precision="fp16", eval_data={"x": case.x[:8]}, speed_check=False)
    return {}


def variants(case: Case, tmp: Path) -> dict[str, Callable[[Path], dict[str, Any]]]:
    cache = tmp / f"{case.name}-calibration.npz"
    out: dict[str, Callable[[Path], dict[str, Any]]] = {}
    for m in METHODS:
        out[f"slipway-{m}"] = lambda dst, m=m: run_slipway(case, dst, m, cache)
    if case.labels is not None:
        out["slipway-entropy-budget0.1"] = lambda dst: run_slipway(case, dst, "entropy", cache, max_drop=0.1)
    out["ort-defaults"] = lambda dst: run_ort(case, dst)
    out["ort-per-channel-7bit"] = lambda dst: run_ort(case, dst, per_channel=True, reduce_range=True)
    out["nncf"] = lambda dst: run_nncf(case, dst)
    out["slipway-fp16"] = lambda dst: run_fp16(case, dst)
    return out


# ---------------------------------------------------------------- evaluation


def outputs(path: Path, x: np.ndarray, engine: str) -> np.ndarray:
    from slipway import backends

    s = backends.load(str(path), engine)
    try:
        return np.concatenate([s.run({"x": x[i:i + BATCH]})[s.outputs[0].name] for i in range(0, len(x), BATCH)])
    finally:
        s.close()


def scores(y: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    r, a = ref.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    noise = float(np.sum((r - a) ** 2))
    out = {"agreement": 100.0 * float(np.mean(y.argmax(1) == ref.argmax(1))),
           "classes": int(len(np.unique(y.argmax(1)))),
           "snr_db": 10 * np.log10(float(np.sum(r * r)) / noise) if noise else float("inf"),
           "cosine": float(np.sum(r * a) / np.sqrt(np.sum(r * r) * np.sum(a * a)))}
    if labels is not None:
        out["top1"] = 100.0 * float(np.mean(y.argmax(1) == labels))
    return out


def latencies(paths: dict[str, Path], engine: str, repeats: int) -> dict[str, float]:
    from slipway import backends

    sessions = {k: backends.load(str(p), engine) for k, p in paths.items()}
    x = {"x": np.random.default_rng(0).standard_normal(
        [1, *[d for d in sessions["fp32"].inputs[0].shape[1:]]]).astype(np.float32)}
    try:
        fns = {k: (lambda s=s: s.run(x)) for k, s in sessions.items()}
        timed = alternating_blocks(fns, repeats, warmup=3, rounds=4, rotate=True)
    finally:
        for s in sessions.values():
            s.close()
    return {k: t.median * 1e3 for k, t in timed.items()}


def one(case: Case, tmp: Path, repeats: int) -> dict[str, Any]:
    paths = {"fp32": case.path}
    row: dict[str, Any] = {"model": case.name, "eval_samples": len(case.x), "calib_samples": len(case.calib),
                           "variants": {"fp32": {"seconds": 0.0}}}
    for name, make in variants(case, tmp).items():
        dst = tmp / f"{case.name}-{name}.onnx"
        print(f"  {case.name}: {name}...", flush=True)
        t0 = time.perf_counter()
        try:
            extra = make(dst)
        except Exception as e:  # a quantizer failing on a model is a result, not a crash
            row["variants"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            continue
        row["variants"][name] = {"seconds": time.perf_counter() - t0, "bytes": dst.stat().st_size, **extra}
        paths[name] = dst
    row["variants"]["fp32"]["bytes"] = case.path.stat().st_size
    ref = outputs(case.path, case.x, "ort")
    for engine in ENGINES:
        for name, p in paths.items():
            try:
                row["variants"][name][engine] = scores(outputs(p, case.x, engine), ref, case.labels)
            except Exception as e:
                row["variants"][name][engine] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
        runnable = {k: p for k, p in paths.items() if "error" not in row["variants"][k][engine]}
        for name, ms in latencies(runnable, engine, repeats).items():
            row["variants"][name][engine]["ms"] = ms
    return row


# ---------------------------------------------------------------- tables


def _cell(v: dict[str, Any], engine: str, key: str, digits: int = 4) -> str:
    e = v.get(engine, {})
    if "error" in v or "error" in e:
        return "fail"
    return fmt(e.get(key), digits)


def tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    acc, zoo, lat, sizes = [], [], [], []
    for r in rows:
        fp32 = r["variants"]["fp32"]
        for name, v in r["variants"].items():
            if r["model"] == "digits":
                drops = [(f"{fp32[e]['top1'] - v[e]['top1']:.2f}" if "top1" in v.get(e, {}) else "fail")
                         for e in ENGINES]
                acc.append([name, _cell(v, "ort", "top1"), drops[0], _cell(v, "openvino", "top1"), drops[1],
                            _cell(v, "ort", "agreement"), _cell(v, "ort", "snr_db", 3),
                            ", ".join(v.get("float_layers", [])) or "-"])
            else:
                zoo.append([r["model"], name, _cell(v, "ort", "agreement"), _cell(v, "ort", "snr_db", 3),
                            _cell(v, "ort", "cosine", 5), _cell(v, "openvino", "agreement"),
                            _cell(v, "openvino", "snr_db", 3), _cell(v, "ort", "classes")])
            speed = []
            for e in ENGINES:
                ms, base = v.get(e, {}).get("ms"), fp32.get(e, {}).get("ms")
                speed += [fmt(ms), f"{base / ms:.2f}x" if ms and base else "-"]
            lat.append([r["model"], name, *speed])
            sizes.append([r["model"], name, v.get("error", "") or f"{v.get('bytes', 0) / 1e6:.2f}",
                          fmt(v.get("seconds")), fmt(v.get("nodes_quantized"))])
    return [
        ("digits CNN (trained): top-1 accuracy (%) and drop from FP32 (points), agreement (%) and SNR (dB) on ORT",
         ["variant", "ORT top1", "ORT drop", "OV top1", "OV drop", "ORT agreement", "ORT SNR dB", "float layers"],
         acc),
        ("Zoo models (random weights, structured inputs): top-1 agreement with FP32 (%), output SNR (dB), "
         "cosine, distinct top-1 classes predicted",
         ["model", "variant", "ORT agree", "ORT SNR dB", "ORT cosine", "OV agree", "OV SNR dB", "classes"], zoo),
        ("Latency at batch 1 (ms, median of alternating blocks) and speedup vs FP32",
         ["model", "variant", "ORT ms", "ORT speedup", "OV ms", "OV speedup"], lat),
        ("File size (MB), quantize time (s; slipway's includes its evaluation and sensitivity), nodes quantized",
         ["model", "variant", "MB", "seconds", "slipway nodes quantized"], sizes),
    ]


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        v = r["variants"]
        ok = {m: v[f"slipway-{m}"] for m in METHODS if "error" not in v.get(f"slipway-{m}", {"error": 1})}
        if not ok:
            out.append(f"{r['model']}: every slipway method failed")
            continue
        if r["model"] == "digits":
            drops = {m: v["fp32"]["ort"]["top1"] - x["ort"]["top1"] for m, x in ok.items()}
            best = min(drops, key=drops.get)
            out.append(f"digits: best slipway method {best}, drop {drops[best]:.2f} points on ORT "
                       f"({'meets' if drops[best] <= 0.5 else 'MISSES'} the <= 0.5 target); worst method "
                       f"{max(drops, key=drops.get)} {max(drops.values()):.2f}")
            continue
        best = max(ok, key=lambda m: (ok[m]["ort"]["snr_db"], ok[m]["ort"]["agreement"]))
        ortd = v.get("ort-defaults", {})
        if "ort" not in ortd or "error" in ortd:
            out.append(f"{r['model']}: ORT defaults failed; best slipway method {best}")
            continue
        s, o = ok[best]["ort"], ortd["ort"]
        met = s["snr_db"] >= o["snr_db"] and s["agreement"] >= o["agreement"]
        out.append(f"{r['model']}: best slipway method {best}: agreement {s['agreement']:.1f} % vs ORT defaults "
                   f"{o['agreement']:.1f} %, SNR {s['snr_db']:.1f} vs {o['snr_db']:.1f} dB "
                   f"({'meets' if met else 'MISSES'} the target)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet18,mobilenetv2")
    parser.add_argument("--calib", type=int, default=64, help="calibration images for the zoo models")
    parser.add_argument("--eval", type=int, default=100, help="evaluation images for the zoo models")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    host, found = machine(), versions()
    for extra in ("openvino", "nncf", "scikit-learn"):
        try:
            found[extra] = metadata.version(extra)
        except metadata.PackageNotFoundError:
            found[extra] = "-"
    isa, native = int8_isa(cpu_features())
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.models.split(","):
            print(f"{name}...", flush=True)
            case = digits_case(tmp) if name == "digits" else zoo_case(name, args.calib, args.eval)
            rows.append(one(case, tmp, args.repeats))
    lines = verdicts(rows)
    notes = ("\n## Verdicts\n\n" + "".join(f"- {line}\n" for line in lines)
             + f"\nINT8 instruction set of this CPU: {isa}"
             + ("" if native else " - no VNNI/AMX: onnxruntime and OpenVINO emulate int8 dot products with "
                "VPMADDUBSW (u8 x s8 pairs summed into a saturating int16), so full-range per-channel weights lose "
                "~20 dB of SNR in the real kernels (hence 7-bit weights) and int8 activations take a slower path "
                "(hence uint8); what INT8 gains over FP32 here is in the latency table: real for the convolution-"
                "heavy ResNet-18, little for the depthwise MobileNetV2 on onnxruntime, nothing for the tiny digits CNN")
             + ".\n\nslipway's formats on this machine: " + int8_defaults().why
             + ".\n\nAccuracy and agreement are measured against the FP32 model in onnxruntime, on the engine "
             "named (optimizations on: real int8 kernels). `slipway-entropy-budget0.1` is `quantize(..., "
             "max_drop=0.1)`: the most sensitive layers go back to FP32 until the drop is <= 0.1 point. "
             "NNCF and ORT run with their defaults; NNCF's default preset is symmetric per-channel weights and "
             "mixed activations with bias correction.\n\nThe zoo models have random (seeded) weights: they give "
             "nearly the same logits for every input (`classes` = 1), so top-1 agreement is trivially 100 % and the "
             "output SNR is the measure that tells the variants apart. (Making them input-sensitive by re-estimating "
             "BatchNorm on these images and centering the classifier bias does not help: the input-dependent part "
             "of a random deep net's logits is then so small that every quantizer, slipway's, ORT's and NNCF's, "
             "leaves ~0 dB SNR and slipway's verification refuses to write the model.) slipway's own evaluation "
             "(and its sensitivity ranking) runs on the first "
             f"{SLIPWAY_EVAL} evaluation images of a zoo model; the tables use all of them.\n")
    publish("quantize", "INT8 quantization: slipway vs onnxruntime quantize_static vs NNCF", host, found,
            tables(rows), notes, time.perf_counter() - t0,
            {"machine": host, "versions": found, "int8_isa": isa, "rows": rows, "verdicts": lines})


if __name__ == "__main__":
    main()
