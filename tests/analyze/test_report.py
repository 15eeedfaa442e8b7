"""The HTML report: self-contained, one roofline point per profiled node, one table row per node."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from slipway.analyze import report
from slipway.analyze.types import Analysis, MachinePeaks, NodeCost

M = MachinePeaks(cpu="Test CPU", cores=4, threads=4, features={"avx2": True, "avx512f": False},
                 fp32_gflops=100.0, int8_gops=250.0, mem_bandwidth_gbs=10.0,
                 methods={"fp32": "MatMul 1024", "int8_isa": "AVX2 (no int8 dot-product instruction)"})
EVIL = '<img src="https://evil.example/x.png" onerror="alert(1)">&'


def nodes() -> list[NodeCost]:
    def n(name, op, flops, read, written, t, counted=True, src="a", ran_as=()):
        return NodeCost(name, op, [src], [name + "_out"], None if flops is None else flops // 2, flops,
                        params=10, bytes_read=read, bytes_written=written, counted=counted, time_ms=t,
                        ran_as=list(ran_as))

    return [
        n("conv0", "Conv", 2 * 10**8, 10**6, 10**6, 2.5, ran_as=["k0"]),  # intensity 100
        n("relu0", "Relu", 10**6, 10**6, 10**6, 0.2, src="conv0_out", ran_as=["k0"]),  # fused into k0
        n(EVIL, "MatMul", 4 * 10**7, 10**6, 10**6, 1.0),  # intensity 20
        n("reshape", "Reshape", 0, 10**6, 10**6, 0.05),  # no arithmetic: not plotted
        n("custom", "MyOp", None, 10**5, 10**5, 0.3, counted=False),  # not counted: not plotted
        n("folded", "Shape", 0, 16, 16, 0.0),  # not executed
    ]


def profiled_analysis() -> Analysis:
    from slipway.analyze import roofline

    a = Analysis("/models/net.onnx", {"x": [1, 3, 224, 224]}, nodes(), 4 * 2**20, profiled=True, total_time_ms=4.5)
    a.engine_nodes = [NodeCost("ReorderOutput", "ReorderOutput", ["t"], ["y"], None, None, counted=False,
                               note="added by onnxruntime", time_ms=0.1)]
    return roofline.apply(a, M)


def assert_self_contained(text: str) -> None:
    lowered = text.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert not re.search(r"<(script|img|link|iframe)[^>]*\s(src|href)\s*=", lowered)
    assert "@import" not in lowered and "url(" not in lowered
    assert "<script" in lowered and "<style" in lowered  # sorting script and CSS are inline


def svgs(text: str) -> dict[str, ET.Element]:
    """Every inline SVG by id, parsed as XML (so it must be well-formed)."""
    out = {}
    for match in re.finditer(r"<svg id=\"([\w-]+)\".*?</svg>", text, re.S):
        out[match.group(1)] = ET.fromstring(match.group(0))
    return out


def test_profiled_report(tmp_path):
    a = profiled_analysis()
    path = report.write_report(a, tmp_path / "sub" / "report.html")
    assert path == tmp_path / "sub" / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # Names are escaped: the hostile node name appears only as text.
    assert EVIL not in text and "&lt;img src=&quot;https://evil.example/x.png&quot;" in text
    assert_self_contained(text.replace("https://evil.example", ""))
    charts = svgs(text)
    assert set(charts) == {"roofline-chart", "optime-chart"}
    points = charts["roofline-chart"].findall("circle")
    assert sorted(p.get("data-node") for p in points) == sorted(["conv0", "relu0", EVIL])
    cx = {p.get("data-node"): float(p.get("cx")) for p in points}
    cy = {p.get("data-node"): float(p.get("cy")) for p in points}
    # Conv + Relu ran as one kernel: one roofline point, 2.01e8 FLOPs over 2 MB (conv0_out stays inside)
    # at 2.01e8 / 2.7 ms = 74 GFLOP/s; the MatMul is at intensity 20, 40 GFLOP/s. y grows upward.
    assert (cx["conv0"], cy["conv0"]) == (cx["relu0"], cy["relu0"])
    assert cx[EVIL] < cx["conv0"] and cy["conv0"] < cy[EVIL]
    assert "fused: 2 nodes ran as k0; kernel intensity 100 FLOP/B" in text
    # One polyline per roof (FP32 and INT8), labeled with the peaks.
    assert len(charts["roofline-chart"].findall("polyline")) == 2
    assert "FP32 100 GFLOP/s" in text and "INT8 250 GOP/s" in text and "memory 10.0 GB/s" in text
    # The table: a row per node plus the engine node, with time columns.
    body = re.search(r"<tbody>(.*)</tbody>", text, re.S).group(1)
    assert body.count("<tr") == len(a.nodes) + 1
    assert "time (ms)" in text and "% of roofline" in text and 'class="engine"' in text
    # Time per op type: bars sorted by time, Conv first.
    bars = [t.text for t in charts["optime-chart"].findall("text") if t.get("text-anchor") == "end"]
    assert bars[:3] == ["Conv", "MatMul", "MyOp"] and "ReorderOutput (engine)" in bars
    # Summary: MACs and FLOPs labeled, latency, machine peaks.
    for label in ("MACs (multiply-accumulates)", "FLOPs (2 per MAC)", "Peak activation memory",
                  "4.00 MiB", "Measured latency", "4.500 ms", "100.0 GFLOP/s", "250.0 GOP/s", "10.0 GB/s"):
        assert label in text, label


def test_static_report_without_profile_or_machine(tmp_path):
    ns = nodes()
    for n in ns:
        n.time_ms = None
    a = Analysis(None, {"x": [1, 8]}, ns, 1024)
    text = report.write_report(a, tmp_path / "static.html").read_text(encoding="utf-8")
    assert_self_contained(text.replace("https://evil.example", ""))
    assert "time (ms)" not in text and "Static analysis only" in text
    charts = svgs(text)
    points = charts["roofline-chart"].findall("circle")
    assert sorted(p.get("data-node") for p in points) == sorted(["conv0", "relu0", EVIL])  # FLOPs > 0
    assert charts["roofline-chart"].findall("polyline") == []  # no machine: no roofs
    assert "FLOPs per op type" in text
    body = re.search(r"<tbody>(.*)</tbody>", text, re.S).group(1)
    assert body.count("<tr") == len(ns) and "not counted" in body


def test_sorting_script_and_sort_keys(tmp_path):
    text = report.render(profiled_analysis())
    head = re.search(r"<thead>(.*)</thead>", text, re.S).group(1)
    assert head.count("<th") == 15  # 9 cost columns, 5 measured, note
    # Numeric cells carry raw values for sorting; "not counted" FLOPs sort as missing.
    assert 'data-v="200000000">200 M</td>' in text
    assert re.search(r'data-v="">not counted</td>', text)
    assert "addEventListener(\"click\"" in text


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("old")

    def broken(analysis):
        raise RuntimeError("boom")

    monkeypatch.setattr(report, "render", broken)
    with pytest.raises(RuntimeError):
        report.write_report(profiled_analysis(), out)
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_number_formats():
    assert report.si(1_820_000_000) == "1.82 G"
    assert report.si(None) == "-"
    assert report.binary(3 * 2**20) == "3.00 MiB"
    assert Path(report.__file__).with_name("report.html").exists()
