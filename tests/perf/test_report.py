from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from slipway.perf import benchmark, write_report
from slipway.perf.report import Scale, frontier, render
from slipway.perf.runner import BenchResult
from tests.perf.models import matmul

VOID = {"meta", "br", "hr", "img", "input", "link", "circle", "line", "polyline", "rect", "path"}


class Balance(HTMLParser):
    """Checks that every non-void tag is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def result(backend: str, batch: int, p50: float, throughput: float, stable: bool = True) -> BenchResult:
    return BenchResult(backend, batch, 0, 1, p50, p50 * 1.2, p50 * 1.5, p50 * 1.1, throughput, 150.0, 100, stable)


def test_report_has_the_chart_and_table_and_is_balanced(tmp_path):
    results = benchmark(matmul(), backends=["ort"], batches=[1, 8], concurrency=[1, 2], warmup=1, min_time_s=0.05,
                        max_time_s=0.3)
    out = write_report(results, tmp_path / "sub" / "bench.html", model_name="m<1>.onnx", notes={"Inputs": "random"})
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<svg id="latency-throughput-chart"' in page
    assert page.count('<circle class="pt"') == 4 and page.count('<line class="whisker"') == 4
    assert page.count("<tr") == 4 + 1 + 1  # rows, header, the notes table
    assert "m&lt;1&gt;.onnx" in page and "m<1>" not in page
    assert "b8 c2" in page and "b1 c1" in page  # point labels
    assert not re.search(r"(src|href)=\"https?:", page)  # offline: nothing fetched
    parser = Balance()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    assert [p.name for p in out.parent.iterdir()] == ["bench.html"]  # atomic: no temp file left


def test_unstable_points_are_hollow_and_best_row_marked():
    page = render([result("ort", 1, 1.0, 1000.0), result("openvino", 8, 4.0, 2000.0, stable=False)])
    assert 'fill="#fff"' in page
    assert page.count('class="best"') == 1
    assert page.count('<polyline class="front"') == 2  # one series per backend


def test_frontier_keeps_configurations_nothing_beats():
    a, b, c, d = result("o", 1, 1.0, 100.0), result("o", 2, 2.0, 300.0), result("o", 4, 3.0, 200.0), result(
        "o", 8, 4.0, 400.0)
    assert frontier([d, c, b, a]) == [a, b, d]


@pytest.mark.parametrize("lo, hi, log", [(1.0, 10.0, False), (0.5, 200.0, True)])
def test_scale_is_linear_or_log_and_maps_ticks_inside(lo, hi, log):
    s = Scale(lo, hi, 0.0, 100.0)
    assert s.log == log
    ticks = s.ticks()
    assert ticks and all(-1e-6 <= s(t) <= 100 + 1e-6 for t in ticks)
    assert 0 <= s(lo) < s(hi) <= 100
