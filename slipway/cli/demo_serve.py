"""The OCR demo's serve step: a bundle served by ``slipway serve`` and called with tritonclient.

:func:`serve_and_call` writes the bundle's pipeline as a Triton ensemble repository
(:func:`slipway.pipeline.triton.to_repository`: the detector its own onnxruntime model with dynamic
batching, the pre- and post-processing bundled ``slipway_pipeline`` models, an encoded image in, the
lines out as JSON strings), starts ``slipway serve`` in a subprocess on a free port, sends the PNG with
``tritonclient.http``, prints each composing model's statistics and stops the server;
:func:`check_served` prints the returned lines and checks them against the in-process result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from slipway.cli.common import console
from slipway.errors import UserError
from slipway.serve import free_port, wait_ready


def serve_and_call(app: Path, repo: Path, png: Path, name: str = "ocr") -> list[dict[str, Any]]:
    """Serve the bundle ``app`` as the ensemble ``name`` (written to ``repo``) with ``slipway serve`` in a
    subprocess on a free port, send the encoded ``png`` with tritonclient over HTTP, show the composing models'
    statistics, stop the server; the lines it returned."""
    import cv2
    import tritonclient.http as httpclient

    from slipway.pipeline import Pipeline
    from slipway.pipeline.triton import segments, to_repository

    pipeline = Pipeline.from_file(app / "pipeline.yaml")
    to_repository(pipeline, repo, sample={"image": cv2.imread(str(png), cv2.IMREAD_COLOR)}, name=name, force=True)
    parts = [f"{name}_{part[0].name}" for part in segments(pipeline)]
    console.print(f"wrote {repo}: ensemble {name!r} = {' -> '.join(parts)} (slipway bundle --triton)")
    port = free_port()
    cmd = [sys.executable, "-m", "slipway", "serve", str(repo), "--http-port", str(port), "--grpc-port", "-1",
           "--metrics-port", "-1"]
    console.print(f"$ slipway serve {repo} --http-port {port} --grpc-port -1 --metrics-port -1")
    t = time.perf_counter()
    log = repo.parent / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        wait_ready(proc, lambda: client.is_model_ready(name), log=log, what=f"slipway serve (model {name!r})")
        console.print(f"ready in {time.perf_counter() - t:.1f} s")
        inp = httpclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([png.read_bytes()], dtype=object))
        t = time.perf_counter()
        got = client.infer(name, [inp], outputs=[httpclient.InferRequestedOutput("lines")]).as_numpy("lines")
        console.print(f"tritonclient.http: {png.name} ({png.stat().st_size / 1e3:.0f} kB PNG) -> {len(got)} lines "
                      f"in {(time.perf_counter() - t) * 1e3:.0f} ms")
        _print_stats(client, [name, *parts])
        return [json.loads(x) for x in got]
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        console.print(f"server stopped (exit code {proc.returncode})")


def _print_stats(client: Any, models: list[str]) -> None:
    """Each model's server-side statistics (the ensemble's and its composing models')."""
    from rich.table import Table

    table = Table("model (server statistics)", "requests", "compute ms", show_edge=False, pad_edge=False)
    for model in models:
        stats = client.get_inference_statistics(model)["model_stats"][0]
        infer = stats["inference_stats"]
        table.add_row(model, str(infer["success"]["count"]), f"{int(infer['compute_infer']['ns']) / 1e6:.0f}")
    console.print(table)


def check_served(served: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Print the lines the server returned; a one-line UserError unless their texts, scores and boxes equal
    ``expected`` (the in-process pipeline's)."""
    from rich.table import Table

    table = Table("text (returned by the server)", "score", "box (x0, y0, x1, y1)", show_edge=False, pad_edge=False)
    for line in served:
        q = np.asarray(line["box"], np.float64).reshape(-1, 2)
        table.add_row(line["text"], f"{line['score']:.3f}", "{:.0f}, {:.0f}, {:.0f}, {:.0f}".format(*q.min(0), *q.max(0)))
    console.print(table)
    same = len(served) == len(expected) and all(
        a["text"] == b["text"] and float(a["score"]) == float(b["score"])
        and np.array_equal(np.asarray(a["box"], np.float32), np.asarray(b["box"], np.float32))
        for a, b in zip(served, expected, strict=False))
    if not same:
        raise UserError("the served pipeline's lines differ from the in-process result")
    console.print(f"[green]the {len(served)} lines equal the in-process pipeline's[/] (texts, scores and boxes)")
