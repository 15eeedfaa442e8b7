"""``slipway demo`` (the default): an OCR application taken to production, start to finish.

The models are PP-OCRv4 text detection and recognition and the mobile angle classifier as the
``rapidocr-onnxruntime`` wheel ships them (nothing is downloaded). Pages and lines are rendered
with known text (:mod:`slipway.pipeline.pages`), so every accuracy below is what the models
*read*, against what was drawn:

1. read a page with the models as shipped (:func:`slipway.pipeline.ocr.ocr_pipeline`, RapidOCR's
   pipeline), drawn and read text side by side, the boxes drawn into ``page.png``;
2. optimize det, cls and rec (:func:`slipway.optimize.optimize`: verified, never slower) on the
   page's own tensors;
3. quantize det and rec to INT8 within a budget of :data:`MAX_DROP` points of character accuracy:
   rec judged on held-out rendered lines, det by what the whole pipeline reads on held-out pages
   with it; an INT8 model is kept only when it meets the budget and is not slower (within
   :data:`SPEED_NOISE`; cls, 0.1 M parameters, stays FP32);
4. the final pipeline against the shipped and the optimized FP32 ones on pages no stage has seen;
5. a bundle (models, pipeline file, manifest of SHA-256s, the page as golden case), loaded back
   (hashes checked, golden self-test);
6. served by ``slipway serve`` (the "pipeline" engine) and called with tritonclient over HTTP
   with the encoded PNG: the lines must equal the in-process result.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slipway.cli.common import console
from slipway.cpus import usable_cpus
from slipway.errors import SlipwayError, UserError, one_line

MAX_DROP = 1.0  # points of character accuracy an INT8 model may lose on its held-out set
PPOCR = {"det": "models/ch_PP-OCRv4_det_infer.onnx", "rec": "models/ch_PP-OCRv4_rec_infer.onnx",
         "cls": "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"}
# the demo's page: (text, font size in px)
PAGE = (("slipway OCR demo", 40), ("Invoice 2026-0415 for model deployment", 26),
        ("Quantize the detector and the recognizer", 24), ("latency 12.5 ms on 2 CPU cores", 28),
        ("Total amount: 4,250.00 EUR", 30), ("Hello World, verify every step!", 22),
        ("small print: batch 8, engine onnxruntime", 18))
SPEED_NOISE = 0.05  # an INT8 model timed within 5% of FP32 counts as not slower (timing noise on a busy machine)
STAGES = 6
# pages for calibration, for the accuracy budget (det: its pages, rec: their lines) and for the final comparison
CALIB_PAGES, EVAL_PAGES, TEST_PAGES = 4, 6, 4


def ppocr_models() -> dict[str, Path]:
    """det / rec / cls: the PP-OCR ONNX files inside the installed ``rapidocr-onnxruntime`` wheel."""
    try:
        root = importlib.resources.files("rapidocr_onnxruntime")
    except ModuleNotFoundError:
        raise UserError("the OCR demo needs the PP-OCRv4 models of the rapidocr-onnxruntime wheel: "
                        "pip install --no-deps rapidocr-onnxruntime==1.4.4 (or run the zoo demo: "
                        "slipway demo --model resnet18)") from None
    paths = {k: Path(str(root / rel)) for k, rel in PPOCR.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"rapidocr-onnxruntime does not ship {missing[0]} (expected version 1.4.4)")
    return paths


def demo_page() -> Any:
    """The page the demo reads (a :class:`slipway.pipeline.pages.Page`)."""
    from slipway.pipeline.pages import render_lines

    return render_lines([t for t, _ in PAGE], [s for _, s in PAGE], size=(720, 560), seed=7)


@dataclass
class Clock:
    """Seconds per stage, printed at the end."""

    start: float
    stages: list[tuple[str, float]]

    @contextmanager
    def stage(self, i: int, title: str) -> Iterator[None]:
        console.rule(f"{i}/{STAGES}  {title}")
        t = time.perf_counter()
        yield
        self.stages.append((title, time.perf_counter() - t))


def ocr_demo(out: Path) -> None:
    """Run the OCR application's stages (see the module docstring), writing into ``out``."""
    import cv2

    from slipway.cli.demo_serve import check_served, serve_and_call
    from slipway.pipeline.bundle import load_bundle
    from slipway.pipeline.draw import draw
    from slipway.pipeline.ocr import ocr_pipeline

    clock = Clock(time.perf_counter(), [])
    shipped = ppocr_models()
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    page = demo_page()

    with clock.stage(1, "read a rendered page with PP-OCRv4 as shipped (det + cls + rec)"):
        pipe = ocr_pipeline(shipped["det"], shipped["rec"], shipped["cls"])
        result = pipe.run({"image": page.image}, trace=True)
        lines = result.outputs["lines"]
        _print_reading(page, lines)
        cv2.imwrite(str(out / "page_input.png"), page.image)
        cv2.imwrite(str(out / "page.png"), draw(page.image, {"lines": lines}))
        steps = ", ".join(f"{k} {v:.0f}" for k, v in result.timings_ms.items() if k != "total")
        console.print(f"{len(lines)} lines in {result.timings_ms['total']:.0f} ms, sessions created on the way "
                      f"(ms per step: {steps})")
        console.print(f"wrote {out / 'page.png'} (boxes and text drawn) and {out / 'page_input.png'}")

    with clock.stage(2, "optimize det, cls, rec: fold, fuse, clean up; verified and never slower"):
        opt = _optimize_all(shipped, models, result.trace or {})
        fp32 = ocr_pipeline(opt["det"], opt["rec"], opt["cls"])

    with clock.stage(3, f"quantize det and rec to INT8, judged by the text read (budget {MAX_DROP:g} point)"):
        final = _quantize_all(opt, fp32, models)

    with clock.stage(4, "the final pipeline vs FP32 on pages no stage has seen"):
        chosen = ocr_pipeline(final["det"], final["rec"], final["cls"])
        if final != opt:
            chosen = _held_out({"as shipped": pipe, "optimized FP32": fp32, "final (INT8)": chosen}, page.image)
        else:
            chosen = _held_out({"as shipped": pipe, "final (optimized FP32)": fp32}, page.image)

    with clock.stage(5, "bundle it, load it back (SHA-256 check + golden self-test)"):
        app = _bundle(chosen, out / "ocr_bundle", page.image)
        t = time.perf_counter()
        loaded = load_bundle(app)
        console.print(f"load_bundle: every file's SHA-256 matches the manifest and the golden page reads the same "
                      f"[green]ok[/] ({time.perf_counter() - t:.1f} s)")
        expected = loaded.run({"image": page.image}).outputs["lines"]
        loaded.close()

    with clock.stage(6, "serve it as a Triton ensemble (slipway serve) and call it with tritonclient"):
        served = serve_and_call(app, out / "repository", out / "page_input.png")
        check_served(served, expected)

    _print_times(clock)


def _table(*columns: str) -> Any:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def _show(table: Any, lines: list[str], note: str) -> None:
    console.print(table)
    for line in lines:
        console.print(line)
    console.print(note)


def _print_reading(page: Any, lines: list[dict[str, Any]]) -> None:
    from slipway.pipeline.pages import char_accuracy, read_accuracy, read_lines

    table = _table("size", "drawn", "read", "chars")
    for px, truth, got in zip(page.sizes, page.lines, read_lines(lines, page), strict=True):
        acc = 100 * char_accuracy(got, truth)
        table.add_row(f"{px} px", truth, got, f"[{'green' if acc >= 99.95 else 'yellow'}]{acc:.1f}%[/]")
    console.print(table)
    console.print(f"character accuracy on the page: [bold]{read_accuracy(lines, page):.1f}%[/] "
                  "(spaces ignored: PP-OCR often drops them)")


def _optimize_all(shipped: dict[str, Path], models: Path, trace: dict[str, Any]) -> dict[str, Path]:
    """Each model optimized (verified, timed) on the tensors it saw on the page; what changed."""
    from slipway.optimize import optimize
    from slipway.pipeline.ocr import crop_tensor

    crops = trace["crops"][:6]
    data = {"det": {"x": trace["det_input"]}, "cls": {"x": crop_tensor(crops, (3, 48, 192))},
            "rec": {"x": crop_tensor(crops, (3, 48, 320))}}
    table = _table("model", "input", "nodes", "max abs err", "latency", "decision")
    changes, paths = [], {}
    for name in ("det", "cls", "rec"):
        paths[name] = models / f"ppocr_{name}.opt.onnx"
        with console.status(f"optimizing {name}...") as status:
            r = optimize(shipped[name], paths[name], data=data[name], batch_sizes=(1, 2), speed_budget_s=1.0,
                         progress=lambda text, s=status, n=name: s.update(f"optimizing {n}: {text}"))
        d = r.to_dict()
        table.add_row(name, "x" + str(list(data[name]["x"].shape)), f"{r.nodes_before} -> {r.nodes_after}",
                      f"{d['verification']['max_abs']:.1g}",
                      f"{r.latency_before_ms:.1f} -> {r.latency_after_ms:.1f} ms", r.decision)
        done = sorted(((k, v) for k, v in d["passes"].items() if v), key=lambda kv: -kv[1])
        changes.append(f"{name}: " + (", ".join(f"{k} {v}" for k, v in done) or "nothing"))
    _show(table, changes, "(verified against the shipped models at two batch sizes, onnxruntime with its "
          "optimizations off; latency timed alternately, its optimizations on)")
    return paths


def _quantize_all(opt: dict[str, Path], fp32: Any, models: Path) -> dict[str, Path]:
    """det and rec to INT8 within the budget, each kept only if it meets it and is not slower; cls stays FP32."""
    table = _table("model", "judged on", "FP32", "INT8", "drop", "latency FP32 -> INT8", "kept")
    final, notes = dict(opt), []
    for name, run in (("rec", _quantize_rec), ("det", _quantize_det)):
        with console.status(f"quantizing {name}...") as status:
            try:
                q, judged = run(opt, fp32, models / f"ppocr_{name}.int8.onnx",
                                lambda stage, done, total, s=status, n=name:
                                s.update(f"quantizing {n}: {stage} {done}/{total or '?'}"))
            except SlipwayError as e:
                table.add_row(name, "", "", "", "", "", "[yellow]FP32[/]")
                notes.append(f"{name}: no INT8 model met the budget: {one_line(e)}")
                continue
        s, sp = q.score, q.speed
        faster = sp is None or sp.speedup is None or sp.speedup >= 1 - SPEED_NOISE
        if s.drop <= MAX_DROP and faster:
            final[name], kept = Path(q.path), "[green]INT8[/]"
        else:
            kept = "[yellow]FP32[/] (" + ("INT8 is slower here" if s.drop <= MAX_DROP else "over the budget") + ")"
        speed = f"{sp.latency_fp32_ms:.1f} -> {sp.latency_quant_ms:.1f} ms" if sp and sp.speedup else "not timed"
        table.add_row(name, judged, f"{s.fp32:.1f}%", f"{s.value:.1f}%", f"{s.drop:+.2f}", speed, kept)
        notes.append(f"{name}: {q.nodes_quantized()} nodes quantized, {q.method} ranges from {q.calib_samples} "
                     f"samples, {len(q.float_layers)} layers kept in float, output SNR {s.snr_db:.1f} dB")
    _show(table, notes, "(characters read against the drawn text, on pages the calibration never saw; cls, 0.1 M "
          "parameters and a few ms, stays FP32)")
    return final


def _quantize_rec(opt: dict[str, Path], fp32: Any, output: Path, progress: Callable) -> tuple[Any, str]:
    """rec calibrated on the crops the pipeline cuts from some pages, judged by the characters it reads on
    the crops of held-out pages (each crop a sample at its own width)."""
    from slipway.pipeline.ocr import model_charset
    from slipway.pipeline.pages import crop_text_metric, random_page
    from slipway.quantize import quantize

    calib, _ = _rec_set(fp32, [random_page(500 + i) for i in range(CALIB_PAGES)])
    x, texts = _rec_set(fp32, [random_page(2000 + i) for i in range(EVAL_PAGES)])
    q = quantize(opt["rec"], output, calib=[{"x": c} for c in calib],
                 eval_data=[({"x": c}, np.array([i])) for i, c in enumerate(x)],
                 metric=crop_text_metric(texts, model_charset(opt["rec"])), max_drop=MAX_DROP,
                 speed_budget_s=1.0, progress=progress)
    return q, f"{len(x)} lines of {EVAL_PAGES} held-out pages"


def _rec_set(pipe: Any, pages: list[Any]) -> tuple[list[np.ndarray], list[str]]:
    """Each upright crop ``pipe`` cuts from ``pages`` as the recognizer reads it alone ([1, 3, 48, W], W 320 or
    the crop's own width at height 48), and the text drawn on its line ("" for a crop off every line)."""
    from slipway.pipeline.ocr import crop_tensor
    from slipway.pipeline.ocr import lines as to_page
    from slipway.pipeline.pages import line_of

    xs, truths = [], []
    for page in pages:
        t = pipe.run({"image": page.image}, trace=True).trace or {}
        n = len(t["upright"])
        # the crops' quads in page pixels, by the pipeline's own mapping (each "text" its crop's index)
        placed = to_page(t["boxes"], [str(k) for k in range(n)], [1.0] * n, t["meta"])["lines"]
        for crop, line in zip(t["upright"], placed, strict=True):
            h, w = crop.shape[:2]
            xs.append(crop_tensor([crop], (3, 48, int(48 * max(320 / 48, w / h)))))
            i = line_of(line["box"], page)
            truths.append(page.lines[i] if i is not None else "")
    return xs, truths


def _quantize_det(opt: dict[str, Path], fp32: Any, output: Path, progress: Callable) -> tuple[Any, str]:
    """det judged by what the rest of the pipeline (FP32 cls + rec) reads on held-out pages with its maps."""
    from slipway.pipeline import Pipeline
    from slipway.pipeline.ocr import det_preprocess
    from slipway.pipeline.pages import random_page, read_accuracy
    from slipway.quantize import quantize

    tail = Pipeline([s for s in fp32.steps if s.name not in ("det_pre", "det")], inputs=["det_prob", "meta", "work"],
                    outputs=["lines"], name="ocr-after-det")
    pages = [random_page(2000 + i) for i in range(EVAL_PAGES)]
    pre = [det_preprocess(p.image) for p in pages]

    def page_char_accuracy(outputs: list[Any], labels: np.ndarray) -> float:
        parts = outputs[0] if isinstance(outputs[0], list) else [outputs[0]]  # per-batch arrays: pages differ in size
        maps = [part[j:j + 1] for part in parts for j in range(len(part))]
        scores = []
        for prob, i in zip(maps, (int(k) for k in labels), strict=True):
            found = tail.run({"det_prob": prob, "meta": pre[i]["meta"], "work": pre[i]["work"]})
            scores.append(read_accuracy(found.outputs["lines"], pages[i]))
        return float(np.mean(scores))

    calib = [{"x": det_preprocess(random_page(500 + i).image)["tensor"]} for i in range(CALIB_PAGES)]
    q = quantize(opt["det"], output, calib=calib, eval_data=[({"x": p["tensor"]}, np.array([i]))
                                                            for i, p in enumerate(pre)],
                 metric=page_char_accuracy, max_drop=MAX_DROP, speed_budget_s=1.0, progress=progress)
    return q, f"{EVAL_PAGES} held-out pages"


def _held_out(pipes: dict[str, Any], warm_up: np.ndarray) -> Any:
    """Character accuracy and ms per page of each pipeline on :data:`TEST_PAGES` pages no stage has seen
    (pipelines interleaved page by page, each warmed up first). Returns the last pipeline, or the one before
    it when the last loses more than :data:`MAX_DROP` points to it (the INT8 models are then not kept)."""
    from slipway.pipeline.pages import random_page, read_accuracy

    acc: dict[str, list[float]] = {k: [] for k in pipes}
    ms: dict[str, list[float]] = {k: [] for k in pipes}
    with console.status(f"reading {TEST_PAGES} held-out pages with each pipeline..."):
        for p in pipes.values():
            p.run({"image": warm_up})
        for i in range(TEST_PAGES):
            page = random_page(3000 + i)
            for name, p in pipes.items():
                r = p.run({"image": page.image})
                acc[name].append(read_accuracy(r.outputs["lines"], page))
                ms[name].append(r.timings_ms["total"])
    table = _table("pipeline", "characters read", "ms per page", "det", "rec", "cls")
    for name, p in pipes.items():
        files = p.files()
        table.add_row(name, f"{np.mean(acc[name]):.1f}%", f"{np.median(ms[name]):.0f}", files[("det", None)].name,
                      files[("rec", "model")].name, files[("cls", "model")].name)
    console.print(table)
    names = list(pipes)
    last, before = names[-1], names[-2]
    drop = float(np.mean(acc[before]) - np.mean(acc[last]))
    if len(names) > 2 and drop > MAX_DROP:
        console.print(f"[yellow]the INT8 pipeline reads {drop:.1f} points less than FP32 on these pages, over the "
                      f"{MAX_DROP:g}-point budget: the bundle keeps the optimized FP32 models[/]")
        return pipes[before]
    speedup = np.median(ms[names[0]]) / np.median(ms[last])
    console.print(f"{last}: {np.mean(acc[last]):.1f}% of the characters ({-drop:+.1f} points vs {before}), "
                  f"{speedup:.2f}x the speed of the models as shipped; this pipeline goes into the bundle")
    return pipes[last]


def _bundle(pipeline: Any, target: Path, image: np.ndarray) -> Path:
    from slipway.pipeline.bundle import bundle

    with console.status("writing the bundle (golden outputs computed)..."):
        app = bundle(pipeline, target, golden=[image], force=True)
    manifest = json.loads((app / "manifest.json").read_text())
    for rel, sha in sorted(manifest["files"].items()):
        console.print(f"  {rel:<40} {(app / rel).stat().st_size / 1e6:7.2f} MB  sha256 {sha[:12]}...")
    return app


def _print_times(clock: Clock) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, title="time per stage")
    table.add_column("stage")
    table.add_column("s", justify="right")
    for title, s in clock.stages:
        table.add_row(title, f"{s:.1f}")
    total = time.perf_counter() - clock.start
    table.add_row("[bold]total[/]", f"[bold]{total:.1f}[/]")
    console.print(table)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    console.print(f"{usable_cpus()} usable CPU cores" + (f", load average {load:.1f} now" if load is not None else ""))
