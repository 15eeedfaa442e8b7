"""``slipway perf --report``: one offline HTML page (slipway/page.py's shell): the throughput-vs-latency
curve, a stacked breakdown bar per load level, and the results table."""

from __future__ import annotations

import os
from typing import Any

from slipway import page, svg
from slipway.loadgen.results import breakdown_us
from slipway.model import atomic_write_text
from slipway.perf.report import Scale

__all__ = ["write_report"]

FRAME = svg.Frame(720, 340, 70, 20, 16, 46)
PARTS = ("network", "queue", "compute_input", "compute_infer", "compute_output")


def write_report(result: Any, path: str | os.PathLike) -> os.PathLike:
    rows = [r for r in result.rows if r.get("requests")]
    mode = "request rate" if rows and rows[0]["mode"] == "request_rate" else "concurrency"
    html = page.render("slipway.loadgen", f"slipway perf: {result.model.name}",
                       f"{result.protocol} at {result.url}, batch {result.batch}", mode=mode,
                       summary=_summary(result), curve=_curve(rows), bars=_bars(rows), table=_table(result.rows))
    return atomic_write_text(path, html)


def _summary(result: Any) -> str:
    facts = {"Model": f"{result.model.name} ({result.model.platform})", "Server": f"{result.protocol}://{result.url}",
             "Requests": f"{result.client_sent} sent, {result.server_counted} counted by the server"}
    if result.model.steps:
        facts["Composing models"] = ", ".join(result.model.steps)
    rows = "".join(f"<tr><th>{page.escape(k)}</th><td>{page.escape(v)}</td></tr>" for k, v in facts.items())
    return f'<table class="facts">{rows}</table>'


def _curve(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>no level finished a request</p>"
    f = FRAME
    x = Scale(min(r["inferences_per_s"] for r in rows), max(r["inferences_per_s"] for r in rows), f.left,
              f.width - f.right)
    y = Scale(min(r["p50_us"] for r in rows) / 1e3, max(r["p99_us"] for r in rows) / 1e3, f.height - f.bottom, f.top)
    parts = svg.axes(f, svg.ticks(x, x.ticks(), lambda v: f"{v:g}"), svg.ticks(y, y.ticks(), lambda v: f"{v:g}"),
                     "inferences / s", "latency, ms")
    for key in ("p50", "p99"):
        pts = [(x(r["inferences_per_s"]), y(r[f"{key}_us"] / 1e3), r) for r in rows]
        parts.append(f'<polyline class="curve {key}" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b, _ in pts)}"/>')
        for a, b, r in pts:
            parts.append(f'<circle class="{key}" cx="{a:.1f}" cy="{b:.1f}" r="3.5"><title>{r["mode"]} {r["value"]:g}: '
                         f'{key} {r[f"{key}_us"] / 1e3:.3g} ms</title></circle>')
    legend = '<p class="legend"><span class="p50">&#9679; p50</span><span class="p99">&#9679; p99</span></p>'
    return f'<svg viewBox="0 0 {f.width} {f.height}" width="{f.width}">{"".join(parts)}</svg>{legend}'


def _bars(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    height, left, width = 22, 90, 600
    top = max(sum(breakdown_us(r)[p] for p in PARTS) for r in rows) or 1.0
    parts = []
    for i, r in enumerate(rows):
        b, x0, yy = breakdown_us(r), float(left), 8 + i * (height + 6)
        parts.append(f'<text x="{left - 8}" y="{yy + 15}" text-anchor="end">{r["value"]:g}</text>')
        for p in PARTS:
            w = b[p] / top * width
            parts.append(f'<rect class="{p}" x="{x0:.1f}" y="{yy}" width="{w:.1f}" height="{height}">'
                         f'<title>{p.replace("_", " ")}: {b[p]:.0f} µs</title></rect>')
            x0 += w
    h = 16 + len(rows) * (height + 6)
    legend = "".join(f'<span><svg width="10" height="10"><rect class="{p}" width="10" height="10"/></svg> '
                     f'{p.replace("_", " ")}</span>' for p in PARTS)
    return f'<svg viewBox="0 0 {left + width + 20} {h}" width="{left + width + 20}">{"".join(parts)}</svg>' \
           f'<p class="legend">{legend} (µs per request; bar length to scale)</p>'


def _table(rows: list[dict[str, Any]]) -> str:
    cols = [("value", "level"), ("inferences_per_s", "infer/s"), ("p50_us", "p50 µs"), ("p90_us", "p90 µs"),
            ("p99_us", "p99 µs"), ("avg_us", "avg µs"), ("server_queue_us", "queue µs"),
            ("server_compute_infer_us", "infer µs"), ("errors", "errors"), ("stable", "stable")]
    head = "".join(f"<th>{page.escape(t)}</th>" for _, t in cols)
    body = []
    for r in rows:
        cells = "".join(f'<td data-v="{r.get(k, "") if isinstance(r.get(k), (int, float)) else ""}">'
                        f'{page.escape(_fmt(r.get(k)))}</td>' for k, _ in cols)
        body.append(f'<tr class="{"failing" if r.get("errors") else ""}">{cells}</tr>')
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else ("yes" if v else "no")
    return f"{v:,.1f}" if isinstance(v, float) else str(v)
