"""``slipway tune --server --report``: one offline HTML page (slipway/page.py's shell): the winner against the
baseline, every measured configuration as a point (inferences/s vs p99) and in a table, the written config."""

from __future__ import annotations

import os
from typing import Any

from slipway import page, svg
from slipway.model import atomic_write_text
from slipway.perf.report import Scale

__all__ = ["write_report"]

FRAME = svg.Frame(720, 340, 70, 20, 16, 46)


def write_report(result: Any, path: str | os.PathLike) -> os.PathLike:
    html = page.render("slipway.servertune", f"slipway tune --server: {result.model}",
                       f"{result.protocol}, concurrency {result.concurrency}, {result.cpus} CPUs",
                       summary=_summary(result), concurrency=str(result.concurrency), chart=_chart(result),
                       table=_table(result), config=page.escape(result.config_text))
    return atomic_write_text(path, html)


def _summary(r: Any) -> str:
    b, w = r.baseline, r.winner
    gain = f"{w.throughput / b.throughput:.2f}x the baseline" if w.throughput and b.throughput else "-"
    facts = {"Winner": w.describe(), "Throughput": f"{_f(w.throughput)} inferences/s ({gain})",
             "p99": f"{_f(w.p99_ms)} ms" + (f" (limit {r.max_p99_ms:g} ms)" if r.max_p99_ms else ""),
             "Baseline (the model's own config)": f"{b.describe()}: {_f(b.throughput)} inferences/s, "
                                                  f"p99 {_f(b.p99_ms)} ms",
             "Written": str(r.path) if r.path else "nothing (the baseline stays, or --no-write)"}
    rows = "".join(f"<tr><th>{page.escape(k)}</th><td>{page.escape(v)}</td></tr>" for k, v in facts.items())
    return f'<table class="facts">{rows}</table>'


def _chart(r: Any) -> str:
    pts = [p for p in r.points if p.throughput and p.p99_ms]
    if not pts:
        return "<p>no configuration finished a request</p>"
    f = FRAME
    x = Scale(min(p.throughput for p in pts), max(p.throughput for p in pts), f.left, f.width - f.right)
    top = max([p.p99_ms for p in pts] + ([r.max_p99_ms] if r.max_p99_ms else []))
    y = Scale(min(p.p99_ms for p in pts), top, f.height - f.bottom, f.top)
    parts = svg.axes(f, svg.ticks(x, x.ticks(), lambda v: f"{v:g}"), svg.ticks(y, y.ticks(), lambda v: f"{v:g}"),
                     "inferences / s", "p99 latency, ms")
    if r.max_p99_ms:
        parts.append(f'<line class="limit" x1="{f.left}" x2="{f.width - f.right}" y1="{y(r.max_p99_ms):.1f}" '
                     f'y2="{y(r.max_p99_ms):.1f}"/>')
    for p in pts:
        cls = "point" + ("" if p.feasible else " infeasible") + (" winner" if p.key == r.winner.key else "")
        parts.append(f'<circle class="{cls}" cx="{x(p.throughput):.1f}" cy="{y(p.p99_ms):.1f}" r="4.5"><title>'
                     f'{page.escape(p.stage)}: {page.escape(p.describe())}: {p.throughput:,.0f}/s, p99 '
                     f'{p.p99_ms:.3g} ms</title></circle>')
    return f'<svg viewBox="0 0 {f.width} {f.height}" width="{f.width}">{"".join(parts)}</svg>'


def _table(r: Any) -> str:
    cols = ("stage", "instances", "threads", "max batch", "delay µs", "infer/s", "p50 ms", "p99 ms", "errors",
            "note")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for p in r.points:
        vals = (p.stage, p.instances, p.threads, p.max_batch or "off", p.delay_us if p.max_batch else "-",
                p.throughput, p.p50_ms, p.p99_ms, p.errors, p.note)
        cells = "".join(f'<td data-v="{v if isinstance(v, (int, float)) and not isinstance(v, bool) else ""}">'
                        f'{page.escape(_f(v))}</td>' for v in vals)
        cls = "winner" if p.key == r.winner.key and p.stage == "confirm" else ("" if p.feasible else "infeasible")
        body.append(f'<tr class="{cls}">{cells}</tr>')
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _f(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.3g}" if isinstance(v, float) and v < 100 else (f"{v:,.0f}" if isinstance(v, float) else str(v))
