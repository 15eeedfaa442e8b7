"""``slipway pipeline TASK ... -o P.yaml``: write a task pipeline file (ocr, detect, classify, segment, pose)."""

from __future__ import annotations

from pathlib import Path

import typer

from slipway.cli.common import console
from slipway.errors import UserError

TASKS = {
    "ocr": ("--det", "--rec", "--cls"),
    "detect": ("--model", "--kind", "--score-thresh", "--iou-thresh"),
    "classify": ("--model", "--size", "--top-k"),
    "segment": ("--model", "--size"),
    "pose": ("--model", "--detector", "--kind", "--size", "--score-thresh", "--iou-thresh"),
}


def _model(option: str, path: Path | None, task: str) -> Path:
    if path is None:
        raise UserError(f"{task}: {option} is required")
    if not path.is_file():
        raise UserError(f"{option}: model file not found: {path}")
    return path


def _size(text: str) -> tuple[int, int]:
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise UserError(f"bad --size {text!r}: expected H,W (for example 224,224) or one side")
    return dims[0], dims[1]


def pipeline(
    task: str = typer.Argument(..., help="the task: ocr, detect, classify, segment or pose"),
    output: Path = typer.Option(..., "-o", "--output", help="pipeline file to write (YAML)"),
    det: Path | None = typer.Option(None, "--det", help="ocr: text detection model (ONNX)"),
    rec: Path | None = typer.Option(None, "--rec", help="ocr: text recognition model (ONNX)"),
    cls: Path | None = typer.Option(None, "--cls", help="ocr: text angle classifier (ONNX, optional)"),
    rec_buckets: int = typer.Option(0, "--rec-buckets", help="ocr: 0 batches the recognizer as RapidOCR does (the "
                                                             "same texts); N batches crops by width, each padded to "
                                                             "a multiple of N px (faster)"),
    model: Path | None = typer.Option(None, "--model", help="detect / classify / segment / pose: the model (ONNX)"),
    detector: Path | None = typer.Option(None, "--detector", help="pose: the person detector (ONNX; without "
                                                                 "it the pipeline takes the boxes as an input)"),
    kind: str | None = typer.Option(None, "--kind", help="detect: layout (PP-PicoDet, default), yolo (v8-style), "
                                                         "yolov5 or ssd; pose: the detector's kind (default yolo)"),
    score_thresh: float | None = typer.Option(None, "--score-thresh", help="detect: minimum box score"),
    iou_thresh: float | None = typer.Option(None, "--iou-thresh", help="detect: NMS IoU threshold"),
    size: str | None = typer.Option(None, "--size", help="classify: input H,W (default 224,224); segment / pose: "
                                                          "input H,W when the model's is not fixed"),
    top_k: int | None = typer.Option(None, "--top-k", help="classify: classes kept (default 5)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing output file"),
) -> None:
    """Write a task pipeline file: pre-processing -> model(s) -> post-processing, model paths relative to it.

    slipway pipeline ocr --det det.onnx --rec rec.onnx [--cls cls.onnx] -o ocr.yaml\n
    slipway pipeline detect --model layout.onnx [--kind layout|yolo] -o detect.yaml\n
    slipway pipeline classify --model m.onnx [--size 224,224] [--top-k 5] -o classify.yaml\n
    slipway pipeline segment --model seg.onnx [--size H,W] -o segment.yaml\n
    slipway pipeline pose --model pose.onnx [--detector det.onnx --kind yolo] -o pose.yaml
    """
    from slipway.model import check_output

    if task not in TASKS:
        raise UserError(f"unknown task {task!r} (tasks: {', '.join(sorted(TASKS))})")
    given = {"--det": det, "--rec": rec, "--cls": cls, "--model": model, "--detector": detector, "--kind": kind,
             "--score-thresh": score_thresh, "--iou-thresh": iou_thresh, "--size": size, "--top-k": top_k}
    foreign = [opt for opt, v in given.items() if v is not None and opt not in TASKS[task]]
    if foreign:
        raise UserError(f"{task}: {', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not an option "
                        f"of this task (options: {', '.join(TASKS[task])})")
    if task == "ocr":
        models = [_model("--det", det, task), _model("--rec", rec, task)]
        if cls is not None:
            models.append(_model("--cls", cls, task))
    else:
        models = [_model("--model", model, task)] + ([_model("--detector", detector, task)] if detector else [])
    check_output(output, *models, what="pipeline file")
    if output.exists() and not force:
        raise UserError(f"{output} exists; pass --force to overwrite it")

    if task == "ocr":
        from slipway.pipeline.ocr import ocr_pipeline

        p = ocr_pipeline(det, rec, cls, rec_buckets=rec_buckets)
    elif task == "detect":
        from slipway.pipeline.detect import detect_pipeline

        p = detect_pipeline(model, kind=kind or "layout", score_thresh=score_thresh, iou_thresh=iou_thresh)
    elif task == "segment":
        from slipway.pipeline.segment import segment_pipeline

        p = segment_pipeline(model, size=_size(size) if size else None)
    elif task == "pose":
        from slipway.pipeline.pose import pose_pipeline

        thresholds = {k: v for k, v in (("score_thresh", score_thresh), ("iou_thresh", iou_thresh)) if v is not None}
        p = pose_pipeline(model, detector=detector, kind=kind or "yolo", size=_size(size) if size else None,
                          **thresholds)
    else:
        from slipway.pipeline import classify_pipeline

        if top_k is not None and top_k < 1:
            raise UserError(f"bad --top-k {top_k}: expected a positive integer")
        p = classify_pipeline(model, size=_size(size) if size else (224, 224), top_k=5 if top_k is None else top_k)
    p.to_file(output)
    console.print(f"wrote {output}: {p.name} pipeline, steps {' -> '.join(p.order)}")


def register(app: typer.Typer) -> None:
    app.command("pipeline")(pipeline)
