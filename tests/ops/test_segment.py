"""slipway.ops.segment: argmax, resize back through the letterbox, class masks, polygons."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slipway.errors import UserError
from slipway.ops import (
    class_masks,
    labels_to_original,
    labels_to_polygons,
    letterbox,
    logits_to_original,
    mask_to_polygons,
    segment_argmax,
    segmentation_to_original,
)

RNG = np.random.default_rng(6)


def test_argmax_matches_torch() -> None:
    logits = RNG.standard_normal((2, 5, 16, 20)).astype(np.float32)
    ref = torch.argmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_array_equal(segment_argmax(logits), ref)
    np.testing.assert_array_equal(segment_argmax(logits[0]), ref[0])
    assert segment_argmax(logits).dtype == np.int64


def test_logits_back_through_letterbox_match_torch_interpolate() -> None:
    # crop the letterbox padding, then bilinear (half-pixel, no antialias) to the original
    # size: torch F.interpolate is the reference. Both compute source positions in float32 but
    # in a different order: max abs diff <= 1e-4 on N(0, 1) logits (values up to ~5)
    _, tf = letterbox(np.zeros((300, 500, 3), np.uint8), (128, 128))
    top, left = int(tf.matrix[1, 2]), int(tf.matrix[0, 2])
    nh, nw = round(300 * tf.matrix[1, 1]), round(500 * tf.matrix[0, 0])
    logits = RNG.standard_normal((2, 4, 128, 128)).astype(np.float32)
    crop = torch.from_numpy(logits[:, :, top : top + nh, left : left + nw].copy())
    ref = F.interpolate(crop, size=(300, 500), mode="bilinear", align_corners=False).numpy()
    got = logits_to_original(logits, transform=tf)
    assert got.shape == (2, 4, 300, 500)
    assert np.abs(got - ref).max() <= 1e-4
    np.testing.assert_array_equal(segmentation_to_original(logits, transform=tf), segment_argmax(got))
    assert logits_to_original(logits[0], size=(64, 32)).shape == (4, 64, 32)


def test_labels_back_exact_for_integer_scale() -> None:
    # labels letterboxed by x2 nearest come back exactly; int64 ids beyond uint8 survive
    labels = RNG.integers(0, 1000, (2, 60, 30)).astype(np.int64)
    boxed = np.stack(
        [letterbox(lb[..., None].astype(np.float32), 120, method="cv2_nearest")[0][..., 0] for lb in labels]
    )
    _, tf = letterbox(np.zeros((60, 30, 1), np.float32), 120)
    back = labels_to_original(boxed.astype(np.int64), transform=tf)
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(labels_to_original(labels[0], size=(120, 60))[::2, ::2], labels[0])


def test_class_masks_are_one_hot() -> None:
    labels = RNG.integers(0, 4, (3, 10, 12))
    ref = F.one_hot(torch.from_numpy(labels), 4).permute(0, 3, 1, 2).bool().numpy()
    np.testing.assert_array_equal(class_masks(labels, 4), ref)
    assert class_masks(labels[0], 6).shape == (6, 10, 12)


def test_rectangle_polygon_is_its_corners() -> None:
    mask = np.zeros((50, 60), np.uint8)
    mask[10:30, 5:45] = 1  # cv2 contours run through the outer pixel centers
    polys = mask_to_polygons(mask)
    assert len(polys) == 1
    assert sorted(map(tuple, polys[0].tolist())) == sorted([(5, 10), (5, 29), (44, 29), (44, 10)])


def test_polygons_of_blobs_rasterize_back() -> None:
    # a disc (r=30) and a smaller disc: polygons sorted by area; filling the simplified polygon
    # gives IoU >= 0.95 with the mask (epsilon = 1 px removes at most a pixel-wide sliver)
    mask = np.zeros((120, 160), np.uint8)
    cv2.circle(mask, (50, 60), 30, 1, -1)
    cv2.circle(mask, (130, 40), 12, 1, -1)
    polys = mask_to_polygons(mask, epsilon=1.0)
    assert len(polys) == 2 and cv2.contourArea(polys[0]) > cv2.contourArea(polys[1])
    filled = np.zeros_like(mask)
    cv2.fillPoly(filled, [np.round(p).astype(np.int32) for p in polys], 1)
    inter, union = np.logical_and(filled, mask).sum(), np.logical_or(filled, mask).sum()
    assert inter / union >= 0.95
    assert len(polys[0]) < 40  # simplified (the raw contour has ~170 points)
    assert len(mask_to_polygons(mask, min_area=1000)) == 1


def test_holes_and_labels_to_polygons() -> None:
    mask = np.zeros((60, 60), np.uint8)
    mask[5:55, 5:55] = 1
    mask[20:40, 20:40] = 0
    assert len(mask_to_polygons(mask)) == 1
    assert len(mask_to_polygons(mask, holes=True)) == 2
    labels = np.zeros((40, 40), np.int64)
    labels[2:10, 2:10] = 3
    labels[20:30, 5:35] = 7
    polys = labels_to_polygons(labels)
    assert sorted(polys) == [3, 7] and len(polys[7]) == 1
    assert 0 not in polys


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: segment_argmax(np.zeros((4, 4))), "3 or 4-D"),
        (lambda: segment_argmax(np.full((2, 4, 4), np.nan)), "NaN"),
        (lambda: logits_to_original(np.zeros((2, 4, 4), np.float32)), "exactly one"),
        (lambda: class_masks(np.zeros((4, 4), np.int64), 0), "num_classes"),
        (lambda: class_masks(np.zeros((4, 4), np.float32), 2), "dtype"),
        (lambda: mask_to_polygons(np.zeros((2, 4, 4))), "2-D"),
        (lambda: mask_to_polygons(np.zeros((0, 4))), "empty"),
        (lambda: mask_to_polygons(np.zeros((4, 4)), epsilon=-1), "epsilon"),
    ],
)
def test_bad_inputs(call: object, match: str) -> None:
    with pytest.raises(UserError, match=match):
        call()
