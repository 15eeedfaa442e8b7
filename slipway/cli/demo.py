"""``slipway demo``: the OCR application by default (:mod:`slipway.cli.demo_ocr`); ``--model NAME`` runs
the whole front half of the job on a zoo model instead (:func:`zoo_demo`).

The zoo demo builds a reference network in PyTorch (seeded random weights), converts it to ONNX with
verification, summarizes it, optimizes it (verified, never slower), quantizes it to INT8 (speed and
fidelity to FP32), measures this machine's peaks, analyzes and profiles the optimized model against
the roofline, writes the HTML report, then serves it and calls it with tritonclient.

A random-weight network's top-1 answers are noise, so INT8 *accuracy* is judged on a network
whose answers mean something: :func:`quantize_digits` trains the zoo's small digits CNN
(:mod:`slipway.zoo.digits`, seconds on CPU), converts it, quantizes it with calibration images
from its training split and reports FP32 and INT8 top-1 on the held-out images against their
true labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import typer

from slipway.cli.common import console, human
from slipway.errors import MissingDependencyError


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="folder for the models, images, bundle and reports"),
    model: str | None = typer.Option(None, "--model", help="run the chain on a zoo model instead of the OCR "
                                     "application: resnet18, mobilenetv2, repvgg, yolo, unet, pose"),
    runs: int = typer.Option(20, "--runs", help="zoo demo: profiled runs"),
) -> None:
    """An OCR application taken to production: read a rendered page with PP-OCRv4, optimize, INT8 judged by
    the text read, bundle, serve and call it with tritonclient. With --model: the chain on a zoo model."""
    if model is None:
        from slipway.cli.demo_ocr import ocr_demo

        ocr_demo(out)
    else:
        zoo_demo(out, model, runs)


def zoo_demo(out: Path, model: str, runs: int = 20) -> None:
    """Build a zoo model, convert it with verification, optimize, quantize, analyze and profile it, serve it."""
    import slipway
    from slipway.analyze import analyze
    from slipway.analyze.machine import peaks
    from slipway.analyze.profile import profile
    from slipway.analyze.report import write_report
    from slipway.cli.analyze import print_analysis
    from slipway.convert import from_torch
    from slipway.zoo import build

    t0 = time.perf_counter()
    console.rule(f"1/9  build {model} in PyTorch")
    module, x = build(model)
    n_torch = sum(p.numel() for p in module.parameters())
    console.print(f"{type(module).__name__}: {n_torch:,} parameters (PyTorch), example input {list(x.shape)}")

    console.rule("2/9  convert to ONNX and verify against PyTorch")
    path = out / f"{model}.onnx"
    with console.status("torch.onnx.export (dynamo) + verification at several batch sizes..."):
        result = from_torch(module, (x,), path)
    rep = result.report
    for o in rep.outputs:
        console.print(f"output {o.name!r}: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g} "
                      f"(atol {rep.atol:g}, rtol {rep.rtol:g}) over batch sizes {rep.batch_sizes} -> "
                      + ("[green]ok[/]" if o.ok else "[red]FAILED[/]"))
    console.print(f"wrote {path} (errors recorded in its metadata_props)")

    console.rule("3/9  summary")
    m = slipway.load(path)
    s = slipway.summary(m)
    ops = ", ".join(f"{k} {v}" for k, v in list(s["op_histogram"].items())[:8])
    console.print(f"inputs {[(i['name'], i['shape']) for i in s['inputs']]}  outputs "
                  f"{[(o['name'], o['shape']) for o in s['outputs']]}")
    console.print(f"{s['nodes']} nodes ({ops}), {s['params']:,} parameters ({human(s['param_bytes'], 'B')}), "
                  f"file {human(s['file_bytes'], 'B')}; BatchNorm folded by the exporter: "
                  f"{n_torch - s['params']:,} fewer parameters than PyTorch")

    console.rule("4/9  optimize: fold, eliminate, fuse; verified and never slower")
    from slipway.optimize import optimize

    opt_path = out / f"{model}.opt.onnx"
    with console.status("optimizing...") as status:
        opt = optimize(path, opt_path, progress=lambda text: status.update(f"optimizing: {text}"))
    changed = ", ".join(f"{k} {v}" for k, v in opt.to_dict()["passes"].items() if v) or "nothing to change"
    d = opt.to_dict()["verification"]
    console.print(f"nodes {opt.nodes_before} -> {opt.nodes_after} ({changed}); verified at batch "
                  f"{opt.verification.batch_sizes}: max abs {d['max_abs']:.3g}")
    console.print(f"latency {opt.latency_before_ms:.2f} ms -> {opt.latency_after_ms:.2f} ms: {opt.decision}")
    console.print(f"wrote {opt_path}")
    m = slipway.load(opt_path)

    console.rule(f"5/9  quantize {model} to INT8: speed and fidelity to FP32")
    import numpy as np

    from slipway.quantize import quantize

    calib = np.random.default_rng(0).standard_normal((32, *x.shape[1:])).astype(np.float32)
    with console.status("calibrating, placing Q/DQ, comparing with FP32, timing FP32 vs INT8...") as status:
        q = quantize(opt_path, out / f"{model}.int8.onnx", calib=calib, method="entropy",
                     progress=lambda stage, done, total: status.update(f"quantizing: {stage} {done}/{total or '?'}"))
    sp, score = q.speed, q.score
    snr = f"output SNR {score.snr_db:.1f} dB vs FP32; " if score else ""
    speed = (f"latency {sp.latency_fp32_ms:.2f} ms FP32 -> {sp.latency_quant_ms:.2f} ms INT8 at batch 1 on {q.engine} "
             f"({_speedup(sp.speedup)})") if sp and sp.speedup else "latency not measured"
    console.print(f"INT8 {model} ({q.nodes_quantized()} nodes quantized; entropy calibration and comparison on "
                  f"{q.calib_samples} random inputs): {snr}{speed}")
    console.print(f"(with random weights {model}'s top-1 answers are noise, so INT8 accuracy is judged next on a "
                  "trained network, against true labels)")
    for w in q.all_warnings()[:3]:
        console.print(f"[yellow]note:[/] {w}")
    console.print(f"wrote {q.path}")

    console.rule("6/9  INT8 accuracy: a trained digits CNN, held-out images")
    try:
        with console.status("training a small CNN on sklearn's digits (CPU, seeded), converting, quantizing..."):
            digits = quantize_digits(out)
    except MissingDependencyError as e:
        console.print(f"[yellow]skipped:[/] {e}")
    else:
        console.print(f"digits CNN ({digits.params:,} parameters): trained in {digits.train_s:.1f} s on "
                      f"{digits.train_images:,} of sklearn's 8x8 digit images (upsampled to 16x16); "
                      f"held-out top-1 {digits.torch_top1:.1f}% in PyTorch")
        console.print(digits_line(digits))
        console.print(f"wrote {digits.fp32_path} and {digits.int8_path} (this step took {digits.seconds:.0f} s)")

    console.rule("7/9  this machine (measured once, then cached)")
    with console.status("measuring FP32/INT8 matmul peaks and memory bandwidth..."):
        machine = peaks()
    console.print(f"{machine.cpu}, {machine.threads} threads; FP32 {machine.fp32_gflops:,.1f} GFLOP/s, "
                  + (f"INT8 {machine.int8_gops:,.1f} GOP/s, " if machine.int8_gops else "")
                  + f"memory {machine.mem_bandwidth_gbs:,.1f} GB/s, ridge point {machine.ridge_point:.1f} FLOP/B")
    features = [k for k, v in machine.features.items() if v]
    console.print("CPU features: " + (", ".join(features) or "none detected"))

    console.rule("8/9  analyze + profile in onnxruntime")
    shapes = {"x": list(x.shape)}
    with console.status(f"static costs, then {runs} profiled runs..."):
        a = profile(m, analyze(m, shapes), runs=runs, machine=machine)
    print_analysis(a, top=10)
    report = write_report(a, out / "report.html")
    memory = sum(1 for n in a.nodes if n.bound == "memory")
    compute = sum(1 for n in a.nodes if n.bound == "compute")
    console.print(f"\n[bold]{model}[/]: {a.totals['macs'] / 1e9:.2f} GMACs, {a.totals['params']:,} params, "
                  f"{a.total_time_ms:.2f} ms/inference at batch 1 on {machine.threads} threads; "
                  f"{memory} memory-bound and {compute} compute-bound nodes")
    console.print(f"report: {report.resolve()}")

    console.rule("9/9  serve it (KServe v2 HTTP + gRPC) and call it with tritonclient")
    _serve(opt_path, out, model, x.numpy())
    console.print(f"(demo took {time.perf_counter() - t0:.0f} s)")


@dataclass
class DigitsInt8:
    """What :func:`quantize_digits` measured: top-1 in percent on the held-out images, true labels."""

    train_images: int
    test_images: int
    params: int
    train_s: float
    torch_top1: float  # the PyTorch model
    fp32_top1: float  # its ONNX export on onnxruntime
    int8_top1: float  # the INT8 model on onnxruntime
    agreement: float  # % of held-out images where INT8 and FP32 pick the same class
    fp32_path: Path
    int8_path: Path
    seconds: float  # train + convert + quantize

    @property
    def change(self) -> float:
        """INT8 minus FP32 top-1, in points (negative: INT8 lost accuracy)."""
        return self.int8_top1 - self.fp32_top1


def quantize_digits(out: Path, seed: int = 0) -> DigitsInt8:
    """Train the zoo's digits CNN, convert it (verified), quantize it to INT8 and score both on held-out images.

    Calibration: the training split; evaluation: the held-out split with its labels, ``metric="top1"``.
    No accuracy threshold is asserted here: the numbers are reported (CPUs round differently).
    """
    import torch

    from slipway.convert import from_torch
    from slipway.quantize import quantize
    from slipway.zoo.digits import accuracy, train_digits_cnn

    t = time.perf_counter()
    module, (x_train, _), (x_test, y_test) = train_digits_cnn(seed)
    train_s = time.perf_counter() - t
    fp32_path, int8_path = out / "digits_cnn.onnx", out / "digits_cnn.int8.onnx"
    from_torch(module, (torch.from_numpy(x_test[:2]),), fp32_path, input_names=["x"], output_names=["logits"])
    q = quantize(fp32_path, int8_path, calib={"x": x_train}, eval_data={"x": x_test, "labels": y_test},
                 metric="top1", method="entropy", speed_check=False)
    acc = q.accuracy()
    if acc is None or q.score is None:  # labels were given, so top-1 is always there
        raise RuntimeError("quantize did not report top-1 on the labelled held-out images")
    return DigitsInt8(train_images=len(x_train), test_images=q.eval_samples,
                      params=sum(p.numel() for p in module.parameters()), train_s=train_s,
                      torch_top1=accuracy(module, x_test, y_test), fp32_top1=float(acc["fp32"]),
                      int8_top1=float(acc["quantized"]), agreement=float(q.score.agreement or 0.0),
                      fp32_path=fp32_path, int8_path=q.path or int8_path, seconds=time.perf_counter() - t)


def digits_line(d: DigitsInt8) -> str:
    """The demo's INT8 accuracy line: held-out top-1 against true labels, INT8 and FP32 side by side."""
    change = "no change" if abs(d.change) < 0.05 else f"{d.change:+.1f} points"
    return (f"INT8 (digits CNN, {d.test_images} held-out images, true labels): top-1 {d.int8_top1:.1f}% vs FP32 "
            f"{d.fp32_top1:.1f}% ({change}); INT8 and FP32 pick the same class on {d.agreement:.1f}% of them")


def _speedup(x: float | None) -> str:
    if not x:
        return "speed not measured"
    return f"{x:.1f}x faster" if x >= 1 else f"{1 / x:.1f}x slower"


def _serve(model_path: Path, out: Path, name: str, x) -> None:
    """Serve the optimized model from a Triton-layout repository; call it over HTTP and gRPC."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    import slipway.backends
    from slipway.serve import Server

    repo = out / "repository"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / name / "1").mkdir(parents=True)
    shutil.copyfile(model_path, repo / name / "1" / "model.onnx")
    expected = slipway.backends.load(str(model_path), "ort").run({"x": x})
    with Server(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        console.print(f"serving {repo} on 127.0.0.1: HTTP {server.http_port}, gRPC {server.grpc_port}, "
                      f"metrics {server.metrics_port} (config completed from the ONNX model: dynamic batching on)")
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        for label, lib, client in (("HTTP", httpclient, http), ("gRPC", grpcclient, grpc)):
            inp = lib.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            t = time.perf_counter()
            got = client.infer(name, [inp]).as_numpy(next(iter(expected)))
            ms = (time.perf_counter() - t) * 1e3
            err = float(np.abs(got - next(iter(expected.values()))).max())
            console.print(f"tritonclient.{label.lower()}: output {list(got.shape)} in {ms:.1f} ms, "
                          f"max abs difference vs onnxruntime in-process {err:.2g}")

        def one(_: int) -> None:
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
            inp = grpcclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            for _ in range(4):
                c.infer(name, [inp])

        t = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(16)))
        wall = time.perf_counter() - t
        stats = grpc.get_inference_statistics(name, as_json=True)["model_stats"][0]
        sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
        console.print(f"16 concurrent clients x 4 requests: {64 / wall:.0f} req/s; the dynamic batcher ran "
                      + ", ".join(f"{n} batch(es) of {k}" for k, n in sorted(sizes.items())))
        http.close()
        grpc.close()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
