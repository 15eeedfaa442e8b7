"""slipway.pipeline.pages: pages rendered with known text, and the scores of what an OCR read on them."""

from __future__ import annotations

import numpy as np
import pytest

from slipway.pipeline.pages import (
    Page,
    char_accuracy,
    crop_text_metric,
    line_crops,
    line_of,
    random_page,
    read_accuracy,
    read_lines,
    render_lines,
    text_lines,
)


def _quad(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_render_lines_boxes_hold_the_ink() -> None:
    page = render_lines(["Hello World 42", "small print"], [34, 16], size=(400, 200), seed=3)
    assert isinstance(page, Page) and page.image.shape == (200, 400, 3) and page.image.dtype == np.uint8
    assert page.lines == ["Hello World 42", "small print"] and page.sizes == [34, 16]
    ink = page.image.min(axis=2) < 128
    inside = np.zeros_like(ink)
    for x0, y0, x1, y1 in page.boxes.astype(int):
        assert ink[y0:y1, x0:x1].sum() > 50  # every line is drawn inside its box
        inside[y0:y1, x0:x1] = True
    assert not (ink & ~inside).any()  # and nothing outside the boxes
    (_, _, _, b0), (_, t1, _, _) = page.boxes
    assert t1 > b0  # top to bottom, no overlap
    again = render_lines(["Hello World 42", "small print"], [34, 16], size=(400, 200), seed=3)
    np.testing.assert_array_equal(again.image, page.image)


def test_render_lines_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        render_lines(["a line far too long for this narrow page"], [30], size=(120, 80))
    with pytest.raises(ValueError, match="1 lines and 2 sizes"):
        render_lines(["one"], [20, 30])


def test_random_page_is_deterministic_and_varied() -> None:
    a, b = random_page(11), random_page(11)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.lines == text_lines(6, 11) and len(set(a.sizes)) > 1 and all(18 <= s <= 34 for s in a.sizes)
    assert random_page(12).lines != a.lines


def test_read_lines_places_found_text_on_the_drawn_lines() -> None:
    page = render_lines(["alpha beta", "gamma"], [30, 30], size=(400, 160), seed=0)
    (ax0, ay0, ax1, ay1), (gx0, gy0, gx1, gy1) = page.boxes.tolist()
    mid = (ax0 + ax1) / 2
    found = [{"text": "beta", "box": _quad(mid, ay0, ax1, ay1)},  # a line found in two parts, right one first
             {"text": "alpha", "box": _quad(ax0, ay0, mid, ay1)},
             {"text": "gamma", "box": _quad(gx0, gy0, gx1, gy1)},
             {"text": "noise", "box": _quad(300, 150, 320, 158)}]  # off every drawn line: not counted
    assert line_of(found[2]["box"], page) == 1 and line_of(found[3]["box"], page) is None
    assert read_lines(found, page) == ["alpha beta", "gamma"]
    assert read_accuracy(found, page) == 100.0
    assert read_accuracy(found[:2], page) == 50.0  # "gamma" read nowhere scores 0
    found[2]["text"] = "gamna"
    assert read_accuracy(found, page) == pytest.approx(100 * (1 + 0.8) / 2)


def test_char_accuracy() -> None:
    assert char_accuracy("Hello World", "Hello World") == 1.0
    assert char_accuracy("HelloWorld", "Hello World") == 1.0  # spaces ignored
    assert char_accuracy("Hel1o", "Hello") == pytest.approx(0.8)
    assert char_accuracy("", "abcd") == 0.0 and char_accuracy("", "") == 1.0
    assert char_accuracy("xxxxxxxxxx", "ab") == 0.0  # floored


def test_crop_text_metric_reads_one_array_or_per_batch_arrays() -> None:
    charset = ["a", "b", " "]

    def probs(classes: list[int]) -> np.ndarray:
        return np.eye(4, dtype=np.float32)[classes]

    ab, ba = probs([1, 0, 2, 2]), probs([2, 0, 1, 0])  # "ab" and "ba"
    metric = crop_text_metric(["ab", "ba"], charset)
    assert metric([np.stack([ab, ba])], np.array([0, 1])) == 100.0
    assert metric([np.stack([ab, ba])], np.array([1, 0])) == 0.0  # each text scored against its own label
    wide = probs([1, 0, 2, 2, 0, 0])  # another width: the outputs come as per-batch arrays
    assert metric([[ba[None], wide[None]]], np.array([1, 0])) == 100.0


def test_line_crops_are_single_lines_with_their_text() -> None:
    crops, texts = line_crops(5, seed=1)
    assert len(crops) == len(texts) == 5
    assert all(c.shape[0] == 48 and c.shape[1] <= 320 and c.dtype == np.uint8 for c in crops)
    assert all(t and len(t) <= 24 for t in texts)
