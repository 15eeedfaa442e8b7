"""``slipway stream SOURCE...``: videos, URLs, cameras, image folders or MOTChallenge detections files through a
detector and a tracker, with a live status line; ``slipway stream eval --gt GT.txt TRACKS.txt`` scores tracks."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from slipway.cli.common import console, err_console, print_json
from slipway.errors import UserError

KINDS = ("yolo", "yolov5", "ssd", "layout")
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")


def stream(
    sources: list[str] = typer.Argument(None, metavar="SOURCE...", help="video files, URLs (rtsp/http/...), cameras "
                                        "(/dev/videoN), image folders, or MOTChallenge detections .txt files (the "
                                        "tracker alone on given detections); 'eval' scores tracks (see below)"),
    pipeline_file: Path | None = typer.Option(None, "--pipeline", help="detector pipeline file (YAML): image -> boxes, "
                                              "scores, class_ids (slipway pipeline detect ...)"),
    bundle: Path | None = typer.Option(None, "--bundle", help="a bundle (folder or .zip) of a detector pipeline"),
    model: Path | None = typer.Option(None, "--model", help="a detector ONNX file, run as --kind"),
    kind: str = typer.Option("yolo", "--kind", help=f"head of --model: {', '.join(KINDS)}"),
    score: float | None = typer.Option(None, "--score", help="score threshold of --model (default: the kind's)"),
    threads: int = typer.Option(0, "--threads", help="engine threads of --model (0: all cores)"),
    every: int = typer.Option(1, "--every", help="run the detector on every N-th frame; the tracker predicts between"),
    stride: int = typer.Option(1, "--stride", help="read every N-th frame of each source"),
    policy: str | None = typer.Option(None, "--policy", help="when the pipeline falls behind: block (wait; default "
                                      "for files), drop-oldest, skip-to-live (default for URLs and cameras)"),
    tracker: str = typer.Option("bytetrack", "--tracker", help="bytetrack, sort or none"),
    per_class: bool = typer.Option(False, "--per-class", help="one tracker per class (ids never jump across classes)"),
    batch: int | None = typer.Option(None, "--batch", help="frames (of all streams) per engine call (default: one "
                                     "per stream, at most 8, when the model's batch is dynamic, else 1)"),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", help="longest wait for a batch to fill"),
    queue: int = typer.Option(8, "--queue", help="frames queued per stream before the policy acts"),
    max_frames: int | None = typer.Option(None, "--max-frames", help="stop each stream after N frames"),
    retries: int = typer.Option(3, "--retries", help="reconnects of a live source before it fails"),
    mot: Path | None = typer.Option(None, "--mot", help="write MOTChallenge tracks (stream k>0: NAME.k.txt)"),
    video: Path | None = typer.Option(None, "--video", help="write an annotated video (stream k>0: NAME.k.mp4)"),
    gt: Path | None = typer.Option(None, "--gt", help="eval: the ground-truth MOTChallenge file"),
    iou: float = typer.Option(0.5, "--iou", help="eval: IoU a match needs (CLEAR, IDF1)"),
) -> None:
    """Run SOURCE... through a detector (--pipeline, --bundle or --model) and a tracker, with a live status line
    (FPS, drops, queue depths) and a summary at the end. Ctrl-C stops cleanly (a second one at once).

    With --json [PATH]: JSON lines per frame to stdout, or to PATH if it ends in .json/.jsonl/.ndjson, or --json=PATH.

    slipway stream eval --gt GT.txt TRACKS.txt [--json]: MOTA, IDF1 and HOTA (+ DetA, AssA, IDsw, FP, FN)."""
    sources, json_out = split_json(list(sources or []))
    if sources and sources[0] == "eval":
        _eval(sources[1:], gt, json_out, iou)
        return
    if gt is not None:
        raise UserError("--gt belongs to 'slipway stream eval --gt GT.txt TRACKS.txt'")
    if not sources:
        raise UserError("give at least one SOURCE (a video, URL, camera, image folder or detections .txt)")
    if kind not in KINDS:
        raise UserError(f"--kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    from slipway.stream.runner import run_stream
    from slipway.stream.sink import make_sinks

    pipeline = _pipeline(sources, pipeline_file, bundle, model, kind, score, threads)
    sinks = make_sinks(mot=mot, json=json_out, video=video)
    summary = err_console if json_out == "-" else console
    try:
        with _status_line() as show:
            run = run_stream(sources, pipeline=pipeline, every=every, policy=policy,
                             tracker=None if tracker == "none" else tracker, per_class=per_class, batch=batch,
                             max_wait_ms=max_wait_ms, queue=queue, sinks=sinks, max_frames=max_frames,
                             stride=stride, retries=retries, status=show, status_interval=0.25)
            with run, _interrupts(run):  # any exception here (even before the handler is in) stops the run
                stats = run.wait()  # closes the sinks (files committed), also after Ctrl-C
    finally:
        if pipeline is not None:
            pipeline.close()
    _summary(stats, summary)
    for path in (mot, video):
        if path is not None:
            summary.print(f"wrote {path}" + (" (one file per stream)" if len(sources) > 1 else ""), soft_wrap=True)


def _pipeline(sources: list[str], pipeline_file: Path | None, bundle: Path | None, model: Path | None, kind: str,
              score: float | None, threads: int) -> Any:
    given = [name for name, v in (("--pipeline", pipeline_file), ("--bundle", bundle), ("--model", model)) if v]
    if len(given) > 1:
        raise UserError(f"give one of --pipeline, --bundle, --model (got {' and '.join(given)})")
    if pipeline_file is not None:
        from slipway.pipeline import Pipeline

        return Pipeline.from_file(pipeline_file)
    if bundle is not None:
        from slipway.pipeline.bundle import load_bundle

        return load_bundle(bundle)
    if model is not None:
        from slipway.pipeline.detect import detect_pipeline

        return detect_pipeline(model, kind=kind, score_thresh=score, threads=threads)
    images = [s for s in sources if not s.lower().endswith(".txt")]
    if images:
        raise UserError(f"{images[0]}: frames need a detector: give --pipeline, --bundle or --model "
                        "(only MOTChallenge detections .txt sources run without one)")
    return None


@contextlib.contextmanager
def _interrupts(run: Any) -> Iterator[None]:
    """Ctrl-C: stop reading and finish the frames in flight (sinks are closed, files kept); twice: stop now."""
    count = [0]

    def handler(signum: int, frame: Any) -> None:
        count[0] += 1
        if count[0] == 1:
            err_console.print("[yellow]stopping: finishing the frames in flight (Ctrl-C again to stop now)[/]")
            run.stop()
        else:
            run.stop(drain=False)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _status_line() -> Iterator[Any]:
    with Live(Text(""), console=err_console, refresh_per_second=4, transient=True) as live:
        yield lambda stats: live.update(Text(status_text(stats)))


def status_text(stats: dict[str, Any]) -> str:
    """One line: live FPS, processed, drops by reason, queue depths per stage."""
    d = stats["dropped"]
    drops = " ".join(f"{k} {v}" for k, v in d.items())
    queues = " ".join(f"{s} {v.get('queue', 0)}" for s, v in stats["stages"].items() if "queue" in v)
    return (f"{stats['fps']:7.1f} fps  {stats['processed']} processed ({stats['detected']} detected)  "
            f"dropped: {drops}  queues: {queues}")


def _summary(stats: dict[str, Any], out: Any) -> None:
    t = Table("stream", "source", "in", "done", "detected", "dropped o/s/c", "ms p50/p99",
              title=f"{stats['processed']} frames in {stats['elapsed_s']:.2f} s: {stats['fps_overall']:.1f} fps",
              title_justify="left")
    for st in stats["streams"]:
        d, lat = st["dropped"], st["latency_ms"]
        t.add_row(str(st["stream"]), Path(st["source"]).name or st["source"], str(st["frames_in"]),
                  str(st["processed"]), str(st["detected"]), f"{d['overflow']}/{d['stale']}/{d['corrupt']}",
                  f"{lat['p50']:.1f}/{lat['p99']:.1f}")
    out.print(t)
    s = Table("stage", "ms per call", "calls", "max queue", title_justify="left")
    for name, v in stats["stages"].items():
        if name != "out":
            s.add_row(name, f"{v['ms']:.2f}" if "ms" in v else "-", str(v.get("calls", 0)),
                      str(v.get("max_queue", "-")))
    out.print(s)
    if stats["batches"]:
        line = f"engine calls: {stats['batches']}, {stats['mean_batch']:.2f} frames per call"
        bt = stats.get("batching", {})
        if "batched_ms_per_frame" in bt:
            line += (f" (automatic batching {'kept' if bt['on'] else 'turned off'}: "
                     f"{bt['batched_ms_per_frame']:.1f} ms "
                     f"a frame batched, {bt['single_ms_per_frame']:.1f} ms alone)")
        out.print(line)


def _eval(args: list[str], gt: Path | None, json_out: str | None, iou: float) -> None:
    """``slipway stream eval --gt GT.txt TRACKS.txt [--json]``."""
    from slipway.stream.evaluate import evaluate

    if json_out not in (None, "-"):
        raise UserError("stream eval: --json takes no path (the scores go to stdout as JSON)")
    if gt is None:
        raise UserError("stream eval: give the ground truth with --gt GT.txt")
    if len(args) != 1:
        raise UserError(f"stream eval: give one TRACKS file, got {len(args)}")
    scores = evaluate(gt, args[0], iou=iou)
    if json_out is not None:
        print_json(scores.as_dict())
        return
    t = Table("MOTA", "IDF1", "HOTA", "DetA", "AssA", "MOTP", "IDsw", "FP", "FN", "GT boxes", "frames",
              title=f"{args[0]} vs {gt}", title_justify="left")
    t.add_row(*(f"{100 * getattr(scores, k):.1f}" for k in ("mota", "idf1", "hota", "deta", "assa", "motp")),
              *(str(getattr(scores, k)) for k in ("idsw", "fp", "fn", "num_gt", "frames")))
    console.print(t)


def split_json(tokens: list[str]) -> tuple[list[str], str | None]:
    """``--json [PATH]`` taken out of the words typer left (the option's value is optional, which typer cannot
    parse): ``--json`` alone is stdout ("-"); it takes the next word only when that is ``-`` or ends in .json,
    .jsonl or .ndjson, so a source is never taken for the output; ``--json=PATH`` names any path."""
    words: list[str] = []
    json_out: str | None = None
    i = 0
    while i < len(tokens):
        word = tokens[i]
        i += 1
        if word == "--json" or word.startswith("--json="):
            if json_out is not None:
                raise UserError("--json is given twice")
            json_out = word.partition("=")[2] or "-"
            nxt = tokens[i] if i < len(tokens) else ""
            if word == "--json" and (nxt == "-" or (nxt.lower().endswith(JSON_SUFFIXES) and not nxt.startswith("-"))):
                json_out = nxt
                i += 1
        elif word.startswith("-") and word != "-":
            raise UserError(f"no such option: {word} (see slipway stream --help)")
        else:
            words.append(word)
    return words, json_out


def register(app: typer.Typer) -> None:
    app.command("stream", context_settings={"ignore_unknown_options": True})(stream)
