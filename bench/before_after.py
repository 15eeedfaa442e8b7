"""Before / after a refactor: slipway's own optimize, quantize and serve numbers from two source trees.

A change that should not change speed (one that moves code) is checked by running the same benches
on the tree before it and the tree after it, on one machine, one after the other, and comparing
slipway's numbers only (the peers did not change). This reads the results the benches wrote in each
tree and writes ``bench/results/before_after.md`` (+ ``.json``):

- optimize (``bench/optimize.py``): node counts must be equal; optimize time and the optimized model's
  onnxruntime speedup over its input, per model and export;
- quantize (``bench/quantize.py``): quantize time, the INT8 / FP16 model's onnxruntime latency, its SNR
  and top-1 / agreement, per model and method (FP32's latency in the same run is the noise control);
- serve (``bench/serve.py --quick --servers slipway``, any number of runs per tree, their median):
  req/s and p99 per model, protocol, concurrency and layout.

Run the benches in each tree first (``cd TREE && PYTHONPATH=TREE .venv/bin/python -m bench.optimize``;
for serve copy each run's ``bench/results/serve.json`` aside), then::

    PYTHONPATH=. .venv/bin/python -m bench.before_after --before /tmp/base/bench/results \\
        --after bench/results --serve-before '/tmp/serve_base_*.json' --serve-after '/tmp/serve_head_*.json' \\
        --label-before 244954c --label-after 29e45c5
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path
from typing import Any

from bench.common import fmt, header, machine, markdown_table, print_table, versions, write_results


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def optimize_rows(a: dict, b: dict) -> tuple[list[list[str]], dict[str, float]]:
    key = lambda r: (r["model"], r["batch"])  # noqa: E731
    after = {key(r): r for r in b["rows"]}
    rows, times, speed, same = [], [], [], True
    for r in a["rows"]:
        s = after.get(key(r))
        if s is None:
            continue
        x, y = r["tools"]["slipway"], s["tools"]["slipway"]
        sx, sy = r["tools"]["input"]["ext_ms"] / x["ext_ms"], s["tools"]["input"]["ext_ms"] / y["ext_ms"]
        same &= x["nodes"] == y["nodes"]
        times.append(y["seconds"] / x["seconds"])
        speed.append(sy / sx)
        rows.append([r["model"], r["batch"], f"{x['nodes']} / {y['nodes']}", fmt(x["seconds"]), fmt(y["seconds"]),
                     f"{sx:.2f}x", f"{sy:.2f}x"])
    return rows, {"median_time_ratio": statistics.median(times), "median_speedup_ratio": statistics.median(speed),
                  "same_nodes": float(same)}


def quantize_rows(a: dict, b: dict) -> tuple[list[list[str]], dict[str, float]]:
    after = {r["model"]: r for r in b["rows"]}
    rows, times, lat = [], [], []
    for r in a["rows"]:
        s = after.get(r["model"])
        if s is None:
            continue
        fa, fb = r["variants"]["fp32"]["ort"]["ms"], s["variants"]["fp32"]["ort"]["ms"]
        for name, x in r["variants"].items():
            y = s["variants"].get(name)
            if not name.startswith("slipway") or y is None:
                continue
            qa, qb = x["ort"], y["ort"]
            acc = lambda q: q.get("top1", q.get("agreement"))  # noqa: E731
            if x["seconds"] > 0:
                times.append(y["seconds"] / x["seconds"])
            lat.append((qb["ms"] / fb) / (qa["ms"] / fa))
            rows.append([r["model"], name, fmt(x["seconds"]), fmt(y["seconds"]), fmt(qa["ms"]), fmt(qb["ms"]),
                         f"{qa['ms'] / fa:.2f} / {qb['ms'] / fb:.2f}", f"{qa['snr_db']:.1f} / {qb['snr_db']:.1f}",
                         f"{acc(qa):.1f} / {acc(qb):.1f}"])
    return rows, {"median_time_ratio": statistics.median(times), "median_latency_vs_fp32_ratio": statistics.median(lat)}


def _serve_runs(pattern: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for path in sorted(glob.glob(pattern)):
        for r in json.loads(Path(path).read_text())["rows"]:
            if r["server"] == "slipway":
                out.setdefault((r["model"], r["protocol"], r["concurrency"], r["layout"]), []).append(r)
    return out


def serve_rows(before: str, after: str) -> tuple[list[list[str]], dict[str, float]]:
    a, b = _serve_runs(before), _serve_runs(after)
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    rows, ratios, errors = [], [], 0
    for k, rs in a.items():
        if k not in b:
            continue
        x, y = med(rs, "rps"), med(b[k], "rps")
        ratios.append(y / x)
        errors += sum(r["failed"] + r["wrong"] for r in rs + b[k])
        rows.append([*map(str, k), f"{x:.0f}", f"{y:.0f}", f"{y / x:.2f}x", f"{med(rs, 'p99_ms'):.2f}",
                     f"{med(b[k], 'p99_ms'):.2f}"])
    return rows, {"median_rps_ratio": statistics.median(ratios) if ratios else float("nan"), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="bench/results of the tree before")
    parser.add_argument("--after", type=Path, default=Path("bench/results"), help="bench/results of the tree after")
    parser.add_argument("--serve-before", default="", help="glob of serve.json files of the tree before")
    parser.add_argument("--serve-after", default="", help="glob of serve.json files of the tree after")
    parser.add_argument("--label-before", default="before")
    parser.add_argument("--label-after", default="after")
    args = parser.parse_args()
    lb, la = args.label_before, args.label_after
    sections, data = [], {"before": lb, "after": la}
    opt = (_read(args.before / "optimize.json"), _read(args.after / "optimize.json"))
    if all(opt):
        rows, summary = optimize_rows(*opt)
        sections.append(("optimize: slipway's optimize time and the result's onnxruntime speedup over its input",
                         ["model", "export", "nodes", f"optimize s {lb}", f"optimize s {la}", f"speedup {lb}",
                          f"speedup {la}"], rows))
        data["optimize"] = summary
    qua = (_read(args.before / "quantize.json"), _read(args.after / "quantize.json"))
    if all(qua):
        rows, summary = quantize_rows(*qua)
        sections.append(("quantize: time, onnxruntime latency (ms, and over FP32's in the same run), SNR, accuracy",
                         ["model", "variant", f"quantize s {lb}", f"quantize s {la}", f"ms {lb}", f"ms {la}",
                          "x FP32 before / after", "SNR dB before / after", "top-1 or agreement % before / after"],
                         rows))
        data["quantize"] = summary
    if args.serve_before and args.serve_after:
        rows, summary = serve_rows(args.serve_before, args.serve_after)
        sections.append(("serve: slipway alone (--quick), median over runs",
                         ["model", "protocol", "concurrency", "layout", f"req/s {lb}", f"req/s {la}", "ratio",
                          f"p99 ms {lb}", f"p99 ms {la}"], rows))
        data["serve"] = summary
    md = header(f"Before / after: {lb} vs {la} (slipway's own numbers)", machine(), versions())
    for title, heads, rows in sections:
        print_table(title, heads, rows)
        md += f"\n## {title}\n\n" + markdown_table(heads, rows)
    md += "\n## Summary (after / before)\n\n" + "\n".join(
        f"- {bench}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items())
        for bench, summary in data.items() if isinstance(summary, dict)) + "\n"
    for p in write_results("before_after", md, data):
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
