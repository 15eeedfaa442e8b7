"""``slipway run P.yaml IMAGE...``: run a pipeline file on images; JSON lines, a table, drawings."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from slipway.cli.common import console
from slipway.errors import UserError, WriteError, one_line
from slipway.model import atomic_write_bytes


def plain(value: Any) -> Any:
    """JSON-ready data: numpy arrays and scalars become lists and Python numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def record(image: str, outputs: Mapping[str, Any], timings: Mapping[str, float] | None = None) -> dict[str, Any]:
    """One image's result as plain data: ``{"image", <outputs>}`` (a classifier's batch of one unwrapped)."""
    out = dict(outputs)
    if "mask" in out:  # a segmentation mask is a picture (--draw), not JSON: its size stays
        out["mask"] = {"shape": list(np.shape(out["mask"]))}
    if "lines" not in out and "boxes" not in out and "mask" not in out:  # classification: [1, k] -> [k]
        for key in ("labels", "scores"):
            v = out.get(key)
            if isinstance(v, np.ndarray) and v.ndim >= 2 and v.shape[0] == 1:
                out[key] = v[0]
    rec: dict[str, Any] = {"image": image, **plain(out)}
    if timings is not None:
        rec["timings_ms"] = {k: round(float(v), 3) for k, v in timings.items()}
    return rec


def read_image(path: Path) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise UserError(f"image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"cannot read image {path}: not an image OpenCV can decode")
    return img


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise WriteError(f"cannot encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())


def _table(rec: dict[str, Any]) -> Table:
    title = rec["image"]
    if "lines" in rec:
        t = Table("text", "score", "box", title=f"{title}: {len(rec['lines'])} lines", title_justify="left")
        for ln in rec["lines"]:
            t.add_row(str(ln["text"]), f"{ln['score']:.3f}",
                      " ".join(f"{x:.0f},{y:.0f}" for x, y in ln["box"]))
    elif "boxes" in rec:
        t = Table("label", "score", "box (x1,y1,x2,y2)", title=f"{title}: {len(rec['boxes'])} boxes",
                  title_justify="left")
        labels = rec.get("labels") or [""] * len(rec["boxes"])
        scores = rec.get("scores") or [float("nan")] * len(rec["boxes"])
        for b, s, lab in zip(rec["boxes"], scores, labels, strict=False):
            t.add_row(str(lab), f"{s:.3f}", ",".join(f"{v:.0f}" for v in b))
    elif "classes" in rec:
        t = Table("class", "share of the pixels", title=title, title_justify="left")
        for name, share in rec["classes"].items():
            t.add_row(str(name), f"{100 * float(share):.1f} %")
    elif "labels" in rec or "scores" in rec:
        labels = rec.get("labels") or list(range(len(rec.get("scores") or [])))
        scores = rec.get("scores") or [float("nan")] * len(labels)
        t = Table("label", "score", title=title, title_justify="left")
        for lab, s in zip(labels, scores, strict=False):
            t.add_row(str(lab), f"{float(s):.4f}")
    else:
        t = Table("output", "value", title=title, title_justify="left")
        for k, v in rec.items():
            if k not in ("image", "timings_ms"):
                t.add_row(k, json.dumps(v)[:200])
    return t


def run(
    pipeline_file: Path = typer.Argument(..., metavar="PIPELINE", help="pipeline file (YAML), or a bundle (folder or "
                                                                      ".zip: hashes checked, golden self-test run)"),
    images: list[Path] = typer.Argument(..., metavar="IMAGE", help="images (anything OpenCV reads)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object per image (JSON lines)"),
    draw_dir: Path | None = typer.Option(None, "--draw", help="write DIR/<image stem>.png with the results drawn"),
    timings: bool = typer.Option(False, "--timings", help="add per-step times (ms)"),
    workers: int = typer.Option(1, "--workers", help="images run at once (threads sharing the pipeline's sessions)"),
) -> None:
    """Run PIPELINE (a file or a bundle) on each IMAGE: OCR lines, detection boxes, masks, keypoints or class
    labels, as a table or JSON."""
    from slipway.pipeline import Pipeline
    from slipway.pipeline.bundle import load_bundle

    if pipeline_file.is_dir() or pipeline_file.suffix.lower() == ".zip":
        p = load_bundle(pipeline_file)  # every file's SHA-256 checked, then the golden self-test
    else:
        p = Pipeline.from_file(pipeline_file)
    if len(p.inputs) != 1:
        raise UserError(f"{pipeline_file}: run feeds one image, the pipeline has inputs {', '.join(p.inputs)}")
    if draw_dir is not None:
        if draw_dir.exists() and not draw_dir.is_dir():
            raise UserError(f"--draw: {draw_dir} is not a directory")
        stems = [Path(i).stem for i in images]
        dup = next((s for s in stems if stems.count(s) > 1), None)
        if dup is not None:
            raise UserError(f"--draw: two images would be drawn to {draw_dir / (dup + '.png')}")
    loaded = [(str(path), read_image(path)) for path in images]  # every image read before any output
    with p:
        runs = p.map([{p.inputs[0]: img} for _, img in loaded], workers=workers)
    results = [(name, img, res) for (name, img), res in zip(loaded, runs, strict=True)]
    drawings = []
    if draw_dir is not None:
        from slipway.pipeline.draw import draw

        drawings = [(draw_dir / f"{Path(name).stem}.png", draw(img, res.outputs)) for name, img, res in results]
        try:
            draw_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create {draw_dir}: {one_line(e)}") from e
        for path, picture in drawings:
            _write_png(path, picture)
    for name, _, res in results:
        rec = record(name, res.outputs, res.timings_ms if timings else None)
        if as_json:
            sys.stdout.write(json.dumps(rec) + "\n")
            continue
        console.print(_table(rec))
        if timings:
            console.print("timings: " + "  ".join(f"{k} {v:.1f} ms" for k, v in rec["timings_ms"].items()))
    if not as_json:
        for path, _ in drawings:
            console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
