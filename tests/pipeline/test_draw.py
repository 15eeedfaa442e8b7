"""slipway.pipeline.draw: what is drawn is picked by the outputs' keys; the input is never changed."""

from __future__ import annotations

import numpy as np
import pytest

from slipway.errors import UserError
from slipway.pipeline.draw import draw


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=-1)


def test_ocr_lines_are_drawn_around_their_quads():
    img = np.full((200, 300, 3), 255, np.uint8)
    before = img.copy()
    out = draw(img, {"lines": [{"text": "héllo", "score": 0.9, "box": [[50, 100], [250, 100], [250, 140], [50, 140]]}]})
    np.testing.assert_array_equal(img, before)  # a copy is drawn on
    changed = _changed(out, img)
    assert changed[100, 50:250].mean() > 0.9 and changed[100:140, 250].mean() > 0.9  # the quad's edges
    assert changed[170:, :].sum() == 0  # nothing far below it


def test_detection_boxes_and_labels():
    img = np.zeros((300, 400), np.uint8)  # grayscale in, BGR out
    out = draw(img, {"boxes": np.array([[20, 40, 200, 250]], np.float32), "scores": np.array([0.8]),
                     "labels": ["table"]})
    assert out.shape == (300, 400, 3)
    changed = np.any(out != 0, axis=-1)
    assert changed[40:250, 20].mean() > 0.9 and changed[40:250, 200].mean() > 0.9
    assert changed[260:, 210:].sum() == 0
    same = draw(img, {"boxes": np.array([[20, 40, 200, 250]]), "scores": [0.8], "labels": ["table"]})
    np.testing.assert_array_equal(out, same)  # colors are stable


def test_classification_labels_in_the_corner():
    img = np.full((224, 224, 3), 128, np.uint8)
    out = draw(img, {"labels": np.array([[3, 1]]), "scores": np.array([[0.7, 0.2]])})
    changed = _changed(out, img)
    assert changed[:60, :120].any() and not changed[150:, :].any()


def test_nothing_to_draw_is_one_line():
    with pytest.raises(UserError, match=r"^draw: nothing to draw in outputs \['x'\]"):
        draw(np.zeros((4, 4, 3), np.uint8), {"x": 1})
