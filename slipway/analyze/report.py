"""A self-contained HTML report of an analysis: summary, roofline chart, time per op type, node table.

The page needs no network: CSS and the small table-sorting script are inline and the charts
are inline SVG drawn here. It works without profiling too (no time columns; the chart then
shows each node's static intensity against its work).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from slipway import page, svg
from slipway.analyze import roofline
from slipway.analyze.types import Analysis, MachinePeaks, NodeCost
from slipway.model import atomic_write_text

PALETTE = (
    "#2f6fde", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#5c946e", "#d1495b", "#3d5a80",
    "#a05195", "#66a61e", "#e7298a", "#7f8c8d", "#1b9e77", "#b8860b", "#4b6cb7", "#c0392b",
)
OTHER_COLOR = "#9aa3b2"
W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 22, 52
FRAME = svg.Frame(W, H, LEFT, RIGHT, TOP, BOTTOM)


def write_report(analysis: Analysis, path: str | os.PathLike) -> Path:
    """Write the report for ``analysis`` to ``path`` (one HTML file, written atomically)."""
    return atomic_write_text(path, render(analysis))


def render(analysis: Analysis) -> str:
    """The report as one HTML string."""
    name = Path(analysis.model_path).name if analysis.model_path else "model"
    colors = op_colors(analysis)
    profiled = analysis.profiled and analysis.machine is not None
    shapes = ", ".join(f"{k}={list(v)}" for k, v in analysis.input_shapes.items())
    return page.render(
        "slipway.analyze",
        f"slipway analysis: {name}",
        f"{analysis.model_path or '(in-memory model)'}   inputs: {shapes or '-'}",
        summary=summary_html(analysis),
        roofline_title="Roofline (measured)" if profiled else "Arithmetic intensity (static)",
        roofline=roofline_svg(analysis, colors),
        optime_title="Time per op type" if analysis.profiled else "FLOPs per op type",
        optime=op_bars_svg(analysis, colors),
        table=table_html(analysis, colors),
        table_note=(" \"% of roofline\" is achieved FLOP/s over the attainable min(peak, intensity &times; "
                    "bandwidth), for fused nodes that of the kernel they ran in; above 100 means the data stayed "
                    "in cache (the memory roof is DRAM bandwidth)." if analysis.profiled else ""),
    )


def si(n: float | int | None, unit: str = "", digits: int = 3) -> str:
    """1234567 -> '1.23 M' (with ``unit``); None -> '-'."""
    if n is None:
        return "-"
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}g} {suffix}{unit}"
    return f"{n:.{digits}g} {unit}".rstrip()


def binary(n: int | None) -> str:
    """Bytes in KiB/MiB/GiB."""
    if n is None:
        return "-"
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


def op_colors(analysis: Analysis) -> dict[str, str]:
    """A color per op type, the heaviest op types (by time, else FLOPs) first."""
    weight: dict[str, float] = {}
    for n in analysis.nodes + analysis.engine_nodes:
        w = n.time_ms if analysis.profiled else (n.flops or 0)
        weight[n.op_type] = weight.get(n.op_type, 0.0) + (w or 0.0)
    ordered = sorted(weight, key=lambda op: (-weight[op], op))
    return {op: PALETTE[i] if i < len(PALETTE) else OTHER_COLOR for i, op in enumerate(ordered)}


def _kv(key: str, value: str, detail: str = "") -> str:
    d = f'<div class="d">{page.escape(detail)}</div>' if detail else ""
    return f'<div class="kv"><div class="k">{page.escape(key)}</div><div class="v">{page.escape(value)}</div>{d}</div>'


def summary_html(a: Analysis) -> str:
    """Totals, machine peaks and measured latency as a grid of cards."""
    t = a.totals
    bound = " (lower bound: trip count unknown in " + ", ".join(t["trip_count_unknown"]) + ")" \
        if t["trip_count_unknown"] else ""
    cards = [
        _kv("MACs (multiply-accumulates)", si(t["macs"]), f"{t['macs']:,}{bound}"),
        _kv("FLOPs (2 per MAC)", si(t["flops"]), f"{t['flops']:,}"),
        _kv("Parameters", si(t["params"]), f"{t['params']:,}"),
        _kv("Bytes read", binary(t["bytes_read"]), "input activations + weights"),
        _kv("Bytes written", binary(t["bytes_written"])),
        _kv("Peak activation memory", binary(t["peak_activation_bytes"]), "with buffer reuse, topological order"),
        _kv("Nodes", str(t["nodes"]), "not counted: " + (", ".join(t["not_counted"]) or "none")),
    ]
    if a.profiled:
        cards += _profile_cards(a)
    m = a.machine
    if m is not None:
        cards += _machine_cards(m)
    notes = ""
    if not a.profiled:
        notes = '<p class="note">Static analysis only: run <code>slipway analyze --profile</code> for measured times.</p>'
    if m is not None and m.methods:
        notes += '<p class="note">' + "<br>".join(page.escape(f"{k}: {v}") for k, v in m.methods.items()) + "</p>"
    return f'<div class="grid">{"".join(cards)}</div>{notes}'


def _profile_cards(a: Analysis) -> list[str]:
    total = a.totals["flops"]
    node_ms = sum(n.time_ms or 0.0 for n in a.nodes)
    engine_ms = sum(n.time_ms or 0.0 for n in a.engine_nodes)
    memory_ms = sum(n.time_ms or 0.0 for n in a.nodes if n.bound == "memory")
    cards = [_kv("Measured latency", f"{a.total_time_ms:.3f} ms", "median end-to-end onnxruntime run")]
    cards.append(_kv("Sum of node times", f"{node_ms:.3f} ms", f"+ {engine_ms:.3f} ms in engine-added nodes"))
    if a.total_time_ms:
        cards.append(_kv("Achieved", si(total / (a.total_time_ms * 1e-3), "FLOP/s"), "counted FLOPs / latency"))
    if node_ms > 0:
        cards.append(_kv("Memory-bound time", f"{100 * memory_ms / node_ms:.0f} %", "share of node time"))
    return cards


def _machine_cards(m: MachinePeaks) -> list[str]:
    feats = ", ".join(k for k, v in m.features.items() if v) or "none detected"
    int8 = f"{m.int8_gops:,.1f} GOP/s" if m.int8_gops else "-"
    return [
        _kv("CPU", m.cpu, f"{m.threads} threads of {m.cores}; {feats}"),
        _kv("FP32 matmul peak", f"{m.fp32_gflops:,.1f} GFLOP/s", "measured"),
        _kv("INT8 matmul peak", int8, m.methods.get("int8_isa", "")),
        _kv("Memory bandwidth", f"{m.mem_bandwidth_gbs:,.1f} GB/s", "measured, streaming"),
        _kv("Ridge point", f"{m.ridge_point:.1f} FLOP/B", "below: memory-bound"),
    ]


class LogScale:
    """Maps a positive value range to pixels on a log10 scale."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float) -> None:
        self.lo, self.hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        if self.hi <= self.lo:
            self.hi = self.lo + 1
        self.p0, self.p1 = p0, p1

    def __call__(self, v: float) -> float:
        f = (math.log10(v) - self.lo) / (self.hi - self.lo)
        return self.p0 + f * (self.p1 - self.p0)

    def decades(self) -> list[float]:
        return [10.0**k for k in range(self.lo, self.hi + 1)]

    def low(self) -> float:
        return 10.0**self.lo

    def high(self) -> float:
        return 10.0**self.hi


def _tick(v: float) -> str:
    if v < 0.01:
        return f"1e{round(math.log10(v))}"
    return si(v, digits=3).replace(" ", "")


def _axes(x: LogScale, y: LogScale, xlabel: str, ylabel: str) -> list[str]:
    return svg.axes(FRAME, svg.ticks(x, x.decades(), _tick), svg.ticks(y, y.decades(), _tick), xlabel, ylabel)


def chart_points(a: Analysis) -> list[tuple[NodeCost, float, float, roofline.Point]]:
    """(node, x = intensity, y, roofline point) for every node the chart plots.

    Profiled: nodes with a measured time and counted FLOPs > 0 at their roofline point (a fused
    kernel's point for fused nodes), y = achieved GFLOP/s. Static: nodes with FLOPs > 0, y =
    attainable GFLOP/s when machine peaks are known, else their FLOPs.
    """
    pts = roofline.points(a)
    out = []
    for n in a.nodes:
        p = pts[id(n)] if a.profiled else roofline.node_point(n)
        i = p.intensity
        if i is None or i <= 0:
            continue
        if a.profiled:
            y = p.flops / (p.time_ms * 1e6) if p.time_ms else None
        elif a.machine is not None:
            y = roofline.attainable_gflops(i, roofline.peak_for(n, a.machine), a.machine.mem_bandwidth_gbs)
        else:
            y = float(n.flops)
        if y and y > 0:
            out.append((n, i, y, p))
    return out


def roofline_svg(a: Analysis, colors: dict[str, str]) -> str:
    """Log-log roofline: memory and compute roofs of the machine and one circle per node."""
    pts = chart_points(a)
    m = a.machine
    if not pts:
        return '<p class="note">No node has counted FLOPs and a measured time to plot.</p>'
    xs = [p[1] for p in pts] + ([m.ridge_point] if m else [])
    ys = [p[2] for p in pts] + [v for v in ((m.fp32_gflops, m.int8_gops) if m else ()) if v]
    x = LogScale(min(xs) / 1.5, max(xs) * 1.5, LEFT, W - RIGHT)
    y = LogScale(min(ys) / 1.5, max(ys) * 1.5, H - BOTTOM, TOP)
    ylabel = "GFLOP/s" if (a.profiled or m) else "FLOPs per node (work)"
    parts = _axes(x, y, "arithmetic intensity (FLOP / byte)", ylabel)
    if m is not None:
        parts += _roof(x, y, m.fp32_gflops, m.mem_bandwidth_gbs, "roof", f"FP32 {m.fp32_gflops:,.0f} GFLOP/s", 15)
        if m.int8_gops:
            parts += _roof(x, y, m.int8_gops, m.mem_bandwidth_gbs, "roof8", f"INT8 {m.int8_gops:,.0f} GOP/s", -6)
        parts.append(_bandwidth_label(x, y, m.mem_bandwidth_gbs))
    total_ms = sum(n.time_ms or 0.0 for n in a.nodes) or 1.0
    for n, i, v, p in sorted(pts, key=lambda q: -(q[0].time_ms or 0.0)):
        r = 3.5 + 9 * math.sqrt((n.time_ms or 0.0) / total_ms) if a.profiled else 4.5
        tip = page.escape(_tooltip(n, i, v, p, a.profiled))
        color = colors.get(n.op_type, OTHER_COLOR)
        parts.append(f'<circle class="pt" cx="{x(i):.1f}" cy="{y(v):.1f}" r="{r:.1f}" fill="{color}" '
                     f'data-node="{page.escape(n.name)}"><title>{tip}</title></circle>')
    skipped = len(a.nodes) - len(pts)
    legend = "".join(f'<span><i style="background:{c}"></i>{page.escape(op)}</span>'
                     for op, c in colors.items() if any(p[0].op_type == op for p in pts))
    why = "no counted FLOPs, zero FLOPs (data movement) or no measured time"
    how = ("Circle area grows with the node's share of time; fused nodes share their kernel's point" if a.profiled
           else "Static view: no measured time; run with <code>--profile</code> for the measured roofline")
    note = f'<p class="note">{skipped} node(s) not plotted: {page.escape(why)}. {how}; hover a point for details.</p>'
    svg = f'<svg id="roofline-chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">'
    return svg + "".join(parts) + f'</svg><div class="legend">{legend}</div>' + note


def _roof(x: LogScale, y: LogScale, peak: float, bw: float, cls: str, label: str, dy: float) -> list[str]:
    """The roof min(peak, I x bw) as a polyline, labeled at its right end (``dy`` px below the line)."""
    ridge = peak / bw
    x0 = max(x.low(), y.low() / bw)
    pts = [(x0, x0 * bw), (ridge, peak), (x.high(), peak)]
    path = " ".join(f"{x(px):.1f},{y(py):.1f}" for px, py in pts if px >= x0)
    return [f'<polyline class="{cls}" points="{path}"/>',
            f'<text x="{W - RIGHT - 4}" y="{y(peak) + dy:.1f}" text-anchor="end">{page.escape(label)}</text>']


def _bandwidth_label(x: LogScale, y: LogScale, bw: float) -> str:
    px = max(x.low(), y.low() / bw) * 1.6
    angle = math.degrees(math.atan2(y(px * 10 * bw) - y(px * bw), x(px * 10) - x(px)))
    return (f'<text transform="translate({x(px):.1f} {y(px * bw) - 8:.1f}) rotate({angle:.1f})">'
            f'memory {bw:,.1f} GB/s</text>')


def _tooltip(n: NodeCost, i: float, v: float, p: roofline.Point, profiled: bool) -> str:
    lines = [f"{n.name} ({n.op_type})", f"FLOPs {si(n.flops)}, intensity {n.intensity:.3g} FLOP/B"]
    if profiled:
        if p.group:
            lines.append(f"fused: {p.members} nodes ran as {p.group}; kernel intensity {i:.3g} FLOP/B")
        lines += [f"achieved {v:.3g} GFLOP/s", f"time {n.time_ms:.4f} ms"]
        if n.roofline_fraction is not None:
            lines.append(f"{n.bound}-bound, {100 * n.roofline_fraction:.1f}% of roofline")
    return "\n".join(lines)


def op_bars_svg(a: Analysis, colors: dict[str, str]) -> str:
    """Horizontal bars: total time per op type (profiled) or FLOPs per op type (static)."""
    totals: dict[str, float] = {}
    engine = {id(n) for n in a.engine_nodes}
    for n in a.nodes + (a.engine_nodes if a.profiled else []):
        v = (n.time_ms or 0.0) if a.profiled else float(n.flops or 0)
        label = n.op_type + (" (engine)" if id(n) in engine else "")
        totals[label] = totals.get(label, 0.0) + v
    rows = sorted(((k, v) for k, v in totals.items() if v > 0), key=lambda kv: -kv[1])
    if not rows:
        return '<p class="note">Nothing to show.</p>'
    top, rest = rows[:18], rows[18:]
    if rest:
        top.append((f"{len(rest)} other op types", sum(v for _, v in rest)))
    whole = sum(v for _, v in rows)
    label_w, row_h, width = 190, 24, 560
    height = row_h * len(top) + 10
    bar_max = width - label_w - 130
    parts = []
    for k, (op, v) in enumerate(top):
        yy = 5 + k * row_h
        bw = max(1.0, bar_max * v / top[0][1])
        color = colors.get(op.replace(" (engine)", ""), OTHER_COLOR)
        value = f"{v:.3f} ms" if a.profiled else si(v, "FLOP")
        short = op if len(op) <= 28 else op[:27] + "\u2026"
        parts.append(f'<text x="{label_w - 8}" y="{yy + 15}" text-anchor="end">{page.escape(short)}</text>')
        parts.append(f'<rect x="{label_w}" y="{yy + 3}" width="{bw:.1f}" height="{row_h - 8}" rx="2" fill="{color}">'
                     f'<title>{page.escape(op)}: {page.escape(value)}</title></rect>')
        parts.append(f'<text x="{label_w + bw + 6:.1f}" y="{yy + 15}">{page.escape(value)} ({100 * v / whole:.1f}%)</text>')
    svg = f'<svg id="optime-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
    return svg + "".join(parts) + "</svg>"


def _cell(text: str, value: float | int | str | None, cls: str = "") -> str:
    v = "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
    c = f' class="{cls}"' if cls else ""
    return f'<td{c} data-v="{page.escape(v)}">{page.escape(text)}</td>'


def table_html(a: Analysis, colors: dict[str, str]) -> str:
    """The per-node table (engine-added nodes last), sortable by clicking a header."""
    heads = ["#", "name", "op type", "MACs", "FLOPs", "params", "bytes read", "bytes written", "intensity"]
    if a.profiled:
        heads += ["time (ms)", "% time", "GFLOP/s", "bound", "% of roofline"]
    heads.append("note")
    left = {"name", "op type", "note", "bound"}
    head = "".join(f'<th class="t">{page.escape(h)}</th>' if h in left else f"<th>{page.escape(h)}</th>" for h in heads)
    total_ms = sum(n.time_ms or 0.0 for n in a.nodes + a.engine_nodes) or 1.0
    rows = [_row(k, n, a.profiled, total_ms, colors) for k, n in enumerate(a.nodes)]
    rows += [_row(len(a.nodes) + k, n, True, total_ms, colors, engine=True) for k, n in enumerate(a.engine_nodes)]
    return f'<table id="nodetable" class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _row(k: int, n: NodeCost, profiled: bool, total_ms: float, colors: dict[str, str], engine: bool = False) -> str:
    intensity = n.intensity
    dot = f'<span class="bar" style="width:8px;height:8px;border-radius:50%;background:{colors.get(n.op_type, OTHER_COLOR)}"></span> '
    cells = [
        _cell(str(k), k),
        _cell(n.name, n.name, "t name").replace("<td", f'<td title="{page.escape(n.name)}"', 1),
        f'<td class="t op" data-v="{page.escape(n.op_type)}">{dot}{page.escape(n.op_type)}</td>',
        _cell(si(n.macs) if n.counted else "not counted", n.macs),
        _cell(si(n.flops) if n.counted else "not counted", n.flops),
        _cell(si(n.params), n.params),
        _cell(binary(n.bytes_read), n.bytes_read),
        _cell(binary(n.bytes_written), n.bytes_written),
        _cell("-" if intensity is None else f"{intensity:.3g}", intensity),
    ]
    if profiled:
        t = n.time_ms
        share = None if t is None else 100 * t / total_ms
        bar = "" if share is None else f'<span class="bar" style="width:{max(1, round(share * 0.6))}px"></span> '
        gflops = roofline.achieved_gflops(n)
        tag = f'<span class="tag {n.bound}">{n.bound}</span>' if n.bound else "-"
        frac = n.roofline_fraction
        cells += [
            _cell("-" if t is None else f"{t:.4f}", t),
            f'<td data-v="{"" if share is None else f"{share:.6g}"}">{bar}{"-" if share is None else f"{share:.1f}"}</td>',
            _cell("-" if gflops is None else f"{gflops:.3g}", gflops),
            f'<td class="t" data-v="{page.escape(n.bound or "")}">{tag}</td>',
            _cell("-" if frac is None else f"{100 * frac:.1f}", None if frac is None else 100 * frac),
        ]
    cells.append(f'<td class="notecell" data-v="{page.escape(n.note)}"><div>{page.escape(n.note)}</div></td>')
    cls = "engine" if engine else ("nc" if not n.counted else "")
    return f'<tr class="{cls}">' + "".join(cells) + "</tr>"
