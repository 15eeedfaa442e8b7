"""The tables of bench/serve.py: load cells with their ratios, raw onnxruntime, targets, memory.

Rows of the load table carry a ``layout`` (instances x intra-op threads, e.g. "2x1"): ratios to
Triton are taken in the same layout; MLServer runs one layout only, so every layout is compared
with it. The targets take each server's best layout in a cell (its highest req/s there).
"""

from __future__ import annotations

from typing import Any

from bench.common import fmt
from bench.serve_peers.raw import overall

LABELS = {"slipway": "slipway", "triton": "Triton (PyTriton)", "mlserver": "MLServer"}
MODELS = ("tiny", "mobilenetv2")
PROTOCOLS = ("http", "grpc")
BATCHES = (1, 2, 4, 8, 16, 32)
CELL = ("model", "protocol", "concurrency")


def cell_of(rows: list[dict[str, Any]], r: dict[str, Any], server: str, layout: str | None = None) -> dict[str, Any]:
    """The row of ``server`` in r's cell (in ``layout`` if given, else its only or best layout); {} if none."""
    found = [o for o in rows if all(o[k] == r[k] for k in CELL) and o["server"] == server
             and (layout is None or o.get("layout") == layout) and "reason" not in o]
    return max(found, key=lambda o: o["rps"]) if found else {}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def xfmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x" if x >= 0.01 else f"{x:.2g}x"


def raw_best(raw: dict[str, Any], model: str) -> float | None:
    return overall(raw[model])["rows_per_s"] if raw.get(model) else None


def load_table(rows: list[dict[str, Any]], missing: dict[str, str], raw: dict[str, Any]) -> list[list[str]]:
    body = []
    for r in rows:
        head = [r["model"], r["protocol"], str(r["concurrency"]), LABELS[r["server"]], r["layout"]]
        if "reason" in r:
            body.append(head + [f"failed: {r['reason']}"] + ["-"] * 10)
            continue
        triton = cell_of(rows, r, "triton", r["layout"])
        errors = r["failed"] + r["wrong"]
        unstable = "*" if r.get("unstable_runs") else ""
        body.append(head + [fmt(r["rps"]) + unstable, fmt(r["p50_ms"]), fmt(r["p90_ms"]), fmt(r["p99_ms"]),
                            str(errors), str(r["wrong"]), f"{r['client_cpu_pct']:.0f}%", xfmt(ratio(r["rps"], triton.get("rps"))),
                            xfmt(ratio(r["rps"], cell_of(rows, r, "mlserver").get("rps"))),
                            xfmt(ratio(r["p99_ms"], triton.get("p99_ms"))),
                            xfmt(ratio(r["rps"], raw_best(raw, r["model"])))])
    for key, why in missing.items():
        name, _, layout = key.partition(" ")
        body.append(["all", "all", "-", LABELS[name], layout, f"not available: {why}"] + ["-"] * 10)
    return body


def raw_table(raw: dict[str, Any]) -> list[list[str]]:
    body = []
    for m, layouts in raw.items():
        top = overall(layouts)["layout"]
        for key, v in layouts.items():
            best = f"{fmt(v['best_rows_per_s'])} (batch {v['best_batch']})" + (" **raw best**" if key == top else "")
            body.append([m, key] + [fmt(v["rows_per_s"][b]) for b in BATCHES] + [best])
    return body


def cross_table(cross: dict[str, Any] | None) -> list[list[str]]:
    """The cross-check point: the old generator's and slipway perf's numbers, and their req/s ratio."""
    if not cross:
        return [["-", "-", "-", "-", "not measured"] + ["-"] * 8]

    def side(r: dict[str, Any]) -> list[str]:
        if "reason" in r:
            return [f"failed: {r['reason']}", "-", "-", "-"]
        return [fmt(r["rps"]), fmt(r["p50_ms"]), fmt(r["p99_ms"]), f"{r['failed'] + r['wrong']} ({r['wrong']} wrong)"]

    return [[cross["model"], cross["protocol"], str(cross["concurrency"]), cross["server"], *side(cross["old"]),
             *side(cross["perf"]), "-" if cross["ratio"] is None else f"{cross['ratio']:.3f}"]]


def targets(rows: list[dict[str, Any]], raw: dict[str, Any], cross: dict[str, Any] | None = None) -> list[list[str]]:
    def get(model: str, protocol: str, server: str) -> dict[str, Any]:
        return cell_of(rows, {"model": model, "protocol": protocol, "concurrency": 16}, server)

    def lay(r: dict[str, Any]) -> str:
        return r.get("layout", "-")

    out = []

    def add(name: str, value: float | None, goal: float, higher: bool = True) -> None:
        ok = "-" if value is None else ("pass" if (value >= goal if higher else value <= goal) else "FAIL")
        out.append([name, xfmt(value), f"{'>=' if higher else '<='} {goal:g}x", ok])

    if raw.get("mobilenetv2"):
        top = overall(raw["mobilenetv2"])
        for p in PROTOCOLS:
            s = get("mobilenetv2", p, "slipway")
            add(f"mobilenetv2 {p} c16: slipway ({lay(s)}) rows/s vs raw onnxruntime best ({top['layout']}, "
                f"batch {top['batch']})", ratio(s.get("rps"), top["rows_per_s"]), 0.9)
    for p in PROTOCOLS:
        s, t, m = (get("tiny", p, n) for n in ("slipway", "triton", "mlserver"))
        add(f"tiny {p} c16: slipway ({lay(s)}) req/s vs Triton ({lay(t)})", ratio(s.get("rps"), t.get("rps")), 1.0)
        add(f"tiny {p} c16: slipway ({lay(s)}) req/s vs MLServer ({lay(m)})", ratio(s.get("rps"), m.get("rps")), 3.0)
    for model in MODELS:
        for p in PROTOCOLS:
            s, t = get(model, p, "slipway"), get(model, p, "triton")
            add(f"{model} {p} c16: slipway ({lay(s)}) p99 / Triton ({lay(t)}) p99",
                ratio(s.get("p99_ms"), t.get("p99_ms")), 1.0, False)
    if cross:
        r = cross["ratio"]
        ok = "-" if r is None else ("pass" if abs(r - 1) <= 0.05 else "FAIL")
        out.append([f"cross-check {cross['model']} {cross['protocol']} c{cross['concurrency']} ({cross['server']}): "
                    "slipway perf req/s / old generator req/s", xfmt(r) if r is None else f"{r:.3f}x",
                    "1 ± 0.05", ok])
    return out


def memory_table(long: dict[str, Any] | None, rss: dict[str, dict[str, int]]) -> list[list[str]]:
    body = []
    if long:
        b, a = long["before_kib"], long["after_kib"]
        body.append([f"slipway {long.get('layout', '')}, {long['requests']:,} tiny requests ({long['errors']} errors)",
                     fmt(b.get("VmRSS", 0) // 1024), fmt(a.get("VmRSS", 0) // 1024),
                     "-" if long["rss_change_pct"] is None else f"{long['rss_change_pct']:+.1f}%",
                     fmt(a.get("VmHWM", 0) // 1024)])
    for key, r in rss.items():
        name, _, layout = key.partition(" ")
        body.append([f"{LABELS[name]} {layout} after the load runs (whole process tree: "
                     f"{fmt(r.get('tree_VmRSS', 0) // 1024)})",
                     "-", fmt(r.get("VmRSS", 0) // 1024), "-", fmt(r.get("VmHWM", 0) // 1024)])
    return body
