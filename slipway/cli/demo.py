"""``slipway demo``: the whole front half of the job on a zoo model, start to finish.

Build a reference network in PyTorch, convert it to ONNX with verification, summarize it,
optimize it (verified, never slower), quantize it to INT8, measure this machine's peaks, analyze
and profile the optimized model against the roofline, and write the HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from slipway.cli.common import console, human


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="folder for the ONNX model and the report"),
    model: str = typer.Option("resnet18", "--model", help="zoo model: resnet18, mobilenetv2, repvgg, yolo, unet, pose"),
    runs: int = typer.Option(20, "--runs", help="profiled runs"),
) -> None:
    """Build a zoo model, convert it with verification, analyze and profile it, write the report."""
    import slipway
    from slipway.analyze import analyze
    from slipway.analyze.machine import peaks
    from slipway.analyze.profile import profile
    from slipway.analyze.report import write_report
    from slipway.cli.analyze import print_analysis
    from slipway.convert import from_torch
    from slipway.zoo import build

    t0 = time.perf_counter()
    console.rule(f"1/8  build {model} in PyTorch")
    module, x = build(model)
    n_torch = sum(p.numel() for p in module.parameters())
    console.print(f"{type(module).__name__}: {n_torch:,} parameters (PyTorch), example input {list(x.shape)}")

    console.rule("2/8  convert to ONNX and verify against PyTorch")
    path = out / f"{model}.onnx"
    with console.status("torch.onnx.export (dynamo) + verification at several batch sizes..."):
        result = from_torch(module, (x,), path)
    rep = result.report
    for o in rep.outputs:
        console.print(f"output {o.name!r}: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g} "
                      f"(atol {rep.atol:g}, rtol {rep.rtol:g}) over batch sizes {rep.batch_sizes} -> "
                      + ("[green]ok[/]" if o.ok else "[red]FAILED[/]"))
    console.print(f"wrote {path} (errors recorded in its metadata_props)")

    console.rule("3/8  summary")
    m = slipway.load(path)
    s = slipway.summary(m)
    ops = ", ".join(f"{k} {v}" for k, v in list(s["op_histogram"].items())[:8])
    console.print(f"inputs {[(i['name'], i['shape']) for i in s['inputs']]}  outputs "
                  f"{[(o['name'], o['shape']) for o in s['outputs']]}")
    console.print(f"{s['nodes']} nodes ({ops}), {s['params']:,} parameters ({human(s['param_bytes'], 'B')}), "
                  f"file {human(s['file_bytes'], 'B')}; BatchNorm folded by the exporter: "
                  f"{n_torch - s['params']:,} fewer parameters than PyTorch")

    console.rule("4/8  optimize: fold, eliminate, fuse; verified and never slower")
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

    console.rule("5/8  quantize to INT8 (entropy calibration), checked against FP32")
    import numpy as np

    from slipway.quantize import quantize

    calib = np.random.default_rng(0).standard_normal((32, *x.shape[1:])).astype(np.float32)
    with console.status("calibrating, placing Q/DQ, evaluating, timing FP32 vs INT8...") as status:
        q = quantize(opt_path, out / f"{model}.int8.onnx", calib=calib, method="entropy",
                     progress=lambda stage, done, total: status.update(f"quantizing: {stage} {done}/{total or '?'}"))
    qd = q.to_dict()
    console.print(f"INT8 ({qd.get('nodes_quantized', '?')} nodes quantized): output SNR {qd.get('snr_db'):.1f} dB vs "
                  f"FP32, top-1 agreement {qd['agreement']:.1f}% (random weights and inputs: near-tied logits); "
                  f"latency {qd['latency_fp32_ms']:.2f} ms FP32 -> {qd['latency_quant_ms']:.2f} ms INT8 on {qd['engine']}")
    for w in qd.get("warnings", [])[:3]:
        console.print(f"[yellow]note:[/] {w}")
    console.print(f"wrote {q.path}")

    console.rule("6/8  this machine (measured once, then cached)")
    with console.status("measuring FP32/INT8 matmul peaks and memory bandwidth..."):
        machine = peaks()
    console.print(f"{machine.cpu}, {machine.threads} threads; FP32 {machine.fp32_gflops:,.1f} GFLOP/s, "
                  + (f"INT8 {machine.int8_gops:,.1f} GOP/s, " if machine.int8_gops else "")
                  + f"memory {machine.mem_bandwidth_gbs:,.1f} GB/s, ridge point {machine.ridge_point:.1f} FLOP/B")
    features = [k for k, v in machine.features.items() if v]
    console.print("CPU features: " + (", ".join(features) or "none detected"))

    console.rule("7/8  analyze + profile in onnxruntime")
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

    console.rule("8/8  serve it (KServe v2 HTTP + gRPC) and call it with tritonclient")
    _serve(opt_path, out, model, x.numpy())
    console.print(f"(demo took {time.perf_counter() - t0:.0f} s)")


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
