"""A self-contained HTML report of a benchmark: summary, latency-vs-throughput chart, result table.

Like :mod:`slipway.analyze.report` (whose look and helpers it shares), the page needs no
network: the CSS and the table-sorting script are inline and the chart is inline SVG.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from slipway import page, svg
from slipway.analyze.report import PALETTE, si
from slipway.cpus import usable_cpus
from slipway.model import atomic_write_text
from slipway.perf.runner import BenchResult

W, H = 900, 480
LEFT, RIGHT, TOP, BOTTOM = 76, 28, 22, 52
FRAME = svg.Frame(W, H, LEFT, RIGHT, TOP, BOTTOM)
ENGINE_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt")


def write_report(results: Sequence[BenchResult], path: str | os.PathLike, *, model_name: str = "model",
                 notes: Mapping[str, str] | None = None) -> Path:
    """Write the report for ``results`` to ``path`` (one HTML file, written atomically)."""
    return atomic_write_text(path, render(results, model_name=model_name, notes=notes))


def render(results: Sequence[BenchResult], *, model_name: str = "model", notes: Mapping[str, str] | None = None) -> str:
    """The report as one HTML string; ``notes`` (label -> text) are listed under the summary."""
    colors = backend_colors(results)
    return page.render(
        "slipway.perf",
        f"slipway bench: {model_name}",
        f"{len(results)} configuration(s) on {', '.join(colors) or 'no backend'}",
        summary=summary_html(results, notes or {}),
        chart=chart_svg(results, colors),
        table=table_html(results, colors),
    )


def backend_colors(results: Sequence[BenchResult]) -> dict[str, str]:
    names = list(dict.fromkeys(r.backend for r in results))
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def label(r: BenchResult) -> str:
    return r.config.label


def environment() -> dict[str, str]:
    """CPU, Python and engine versions of this host (no engine is imported)."""
    from slipway.analyze.machine import cpu_model  # imports onnxruntime

    versions = []
    for pkg in ENGINE_PACKAGES:
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            continue
    return {"CPU": f"{cpu_model()} ({usable_cpus()} cores)", "Python": platform.python_version(),
            "Engines": ", ".join(versions) or "-"}


def _kv(key: str, value: str, detail: str = "") -> str:
    d = f'<div class="d">{page.escape(detail)}</div>' if detail else ""
    return f'<div class="kv"><div class="k">{page.escape(key)}</div><div class="v">{page.escape(value)}</div>{d}</div>'


def summary_html(results: Sequence[BenchResult], notes: Mapping[str, str]) -> str:
    cards = [_kv("Configurations", str(len(results)), f"{sum(r.runs for r in results):,} timed requests")]
    if results:
        fast = max(results, key=lambda r: r.throughput)
        low = min(results, key=lambda r: r.p50_ms)
        cards += [
            _kv("Best throughput", f"{si(fast.throughput)} inf/s", f"{fast.backend} {label(fast)}, p50 {fast.p50_ms:.3g} ms"),
            _kv("Lowest p50 latency", f"{low.p50_ms:.3g} ms", f"{low.backend} {label(low)}, p99 {low.p99_ms:.3g} ms"),
        ]
        unstable = [r for r in results if not r.stable]
        cards.append(_kv("Unstable", str(len(unstable)), "median still moving at the time limit" if unstable
                         else "every median settled"))
    rows = "".join(f"<tr><th>{page.escape(k)}</th><td>{page.escape(v)}</td></tr>" for k, v in notes.items())
    facts = f'<table class="facts">{rows}</table>' if rows else ""
    return f'<div class="grid">{"".join(cards)}</div>{facts}'


class Scale:
    """Value -> pixel, logarithmic when the values span more than 20x, else linear from zero."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float) -> None:
        self.log = lo > 0 and hi / lo > 20
        if self.log:
            self.lo, self.hi = math.log10(lo / 1.3), math.log10(hi * 1.3)
        else:
            self.step = _nice(hi * 1.08 / 5) if hi > 0 else 0.2
            self.lo, self.hi = 0.0, math.ceil(hi * 1.08 / self.step - 1e-9) * self.step if hi > 0 else 1.0
        self.p0, self.p1 = p0, p1

    def __call__(self, v: float) -> float:
        f = ((math.log10(max(v, 1e-300)) if self.log else v) - self.lo) / (self.hi - self.lo)
        return self.p0 + f * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        if self.log:
            out = [m * 10.0**k for k in range(math.floor(self.lo), math.ceil(self.hi) + 1) for m in (1, 2, 5)]
            return [t for t in out if self.lo <= math.log10(t) <= self.hi]
        return [k * self.step for k in range(round(self.hi / self.step) + 1)]


def _nice(v: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above ``v``."""
    k = math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * 10.0**k >= v * (1 - 1e-9):
            return m * 10.0**k
    return 10.0 ** (k + 1)


def _axes(x: Scale, y: Scale, xlabel: str, ylabel: str) -> list[str]:
    return svg.axes(FRAME, svg.ticks(x, x.ticks(), _tick), svg.ticks(y, y.ticks(), _tick), xlabel, ylabel)


def _tick(v: float) -> str:
    return si(v, digits=3).replace(" ", "") if v >= 1000 or v == 0 else f"{v:g}"


def frontier(results: Sequence[BenchResult]) -> list[BenchResult]:
    """The Pareto front: configurations no other beats on both p50 latency and throughput."""
    out: list[BenchResult] = []
    for r in sorted(results, key=lambda r: (r.p50_ms, -r.throughput)):
        if not out or r.throughput > out[-1].throughput:
            out.append(r)
    return out


def chart_svg(results: Sequence[BenchResult], colors: Mapping[str, str]) -> str:
    """p50 latency (x) against throughput (y): a point per configuration, a whisker to p99, a
    dashed Pareto front and the point's batch/threads/concurrency beside it."""
    if not results:
        return '<p class="note">No configuration was measured.</p>'
    x = Scale(min(r.p50_ms for r in results), max(r.p99_ms for r in results), LEFT, W - RIGHT)
    y = Scale(min(r.throughput for r in results), max(r.throughput for r in results), H - BOTTOM, TOP)
    parts = _axes(x, y, "latency per request (ms): point = p50, whisker to p99", "throughput (inferences / s)")
    points: list[tuple[float, float, str]] = []
    for name, color in colors.items():
        series = [r for r in results if r.backend == name]
        front = " ".join(f"{x(r.p50_ms):.1f},{y(r.throughput):.1f}" for r in frontier(series))
        parts.append(f'<polyline class="front" stroke="{color}" points="{front}"/>')
        for r in series:
            px, py = x(r.p50_ms), y(r.throughput)
            parts.append(f'<line class="whisker" stroke="{color}" x1="{px:.1f}" y1="{py:.1f}" '
                         f'x2="{x(r.p99_ms):.1f}" y2="{py:.1f}"/>')
            fill = color if r.stable else "#fff"
            parts.append(f'<circle class="pt" cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{fill}" stroke="{color}">'
                         f'<title>{page.escape(_tooltip(r))}</title></circle>')
            points.append((px, py, label(r)))
    parts += _labels(points)
    legend = "".join(f'<span><i style="background:{c}"></i>{page.escape(n)}</span>' for n, c in colors.items())
    note = ('<p class="note">Labels: b = batch, t = intra-op threads (none: the engine\'s default), '
            'c = concurrent instances. Dashed: each backend\'s Pareto front. A hollow point did not settle '
            'within the time limit. Hover a point for details.</p>')
    svg = f'<svg id="latency-throughput-chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">'
    return svg + "".join(parts) + f'</svg><div class="legend">{legend}</div>' + note


def _labels(points: list[tuple[float, float, str]]) -> list[str]:
    """Each point's label at the first free spot around it; a label that fits nowhere is left out
    (the point's tooltip still has it)."""
    boxes = [(px - 5, py - 5, px + 5, py + 5) for px, py, _ in points]
    out = []
    for px, py, text in points:
        w, h = 6.0 * len(text), 11.0
        for dx, dy, anchor in ((7, -7, "start"), (7, 14, "start"), (-7, -7, "end"), (-7, 14, "end")):
            x0 = px + dx if anchor == "start" else px + dx - w
            box = (x0, py + dy - h + 2, x0 + w, py + dy + 2)
            inside = LEFT <= box[0] and box[2] <= W - RIGHT + 20 and TOP - 10 <= box[1] and box[3] <= H - BOTTOM
            if inside and not any(_overlap(box, b) for b in boxes):
                boxes.append(box)
                out.append(f'<text class="lbl" x="{px + dx:.1f}" y="{py + dy:.1f}" text-anchor="{anchor}">'
                           f'{page.escape(text)}</text>')
                break
    return out


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _tooltip(r: BenchResult) -> str:
    rss = "-" if r.rss_mb is None else f"{r.rss_mb:.0f} MB"
    return "\n".join([
        f"{r.backend} batch {r.batch}, threads {r.threads or 'auto'}, concurrency {r.concurrency}",
        f"p50 {r.p50_ms:.3f} ms, p90 {r.p90_ms:.3f} ms, p99 {r.p99_ms:.3f} ms, mean {r.mean_ms:.3f} ms",
        f"throughput {r.throughput:,.1f} inf/s, peak RSS {rss}",
        f"{r.runs} requests in {r.wall_s:.2f} s{'' if r.stable else ' (not stable)'}",
    ])


def _cell(text: str, value: float | int | str | None, cls: str = "") -> str:
    v = "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
    c = f' class="{cls}"' if cls else ""
    return f'<td{c} data-v="{page.escape(v)}">{page.escape(text)}</td>'


COLUMNS = ("backend", "batch", "threads", "concurrency", "p50 (ms)", "p90 (ms)", "p99 (ms)", "mean (ms)",
           "throughput (inf/s)", "peak RSS (MB)", "runs", "stable")


def table_html(results: Sequence[BenchResult], colors: Mapping[str, str]) -> str:
    """Every configuration, sortable by clicking a header; the best throughput is highlighted."""
    head = "".join(f'<th class="t">{c}</th>' if c == "backend" else f"<th>{page.escape(c)}</th>" for c in COLUMNS)
    best = max(results, key=lambda r: r.throughput) if results else None
    rows = []
    for r in results:
        dot = f'<span class="dot" style="background:{colors.get(r.backend, "#999")}"></span> '
        cells = [
            f'<td class="t" data-v="{page.escape(r.backend)}">{dot}{page.escape(r.backend)}</td>',
            _cell(str(r.batch), r.batch), _cell(str(r.threads or "auto"), r.threads),
            _cell(str(r.concurrency), r.concurrency),
            *(_cell(f"{v:.3f}", v) for v in (r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms)),
            _cell(f"{r.throughput:,.1f}", r.throughput),
            _cell("-" if r.rss_mb is None else f"{r.rss_mb:.0f}", r.rss_mb),
            _cell(str(r.runs), r.runs), _cell("yes" if r.stable else "no", int(r.stable)),
        ]
        cls = ' class="best"' if r is best else ""
        rows.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return f'<table id="benchtable" class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
