"""slipway.ops.pose: heatmap decoding (argmax, quarter offset, DARK) and top-down affine,
against plain-loop transcriptions of the reference algorithms and known sub-pixel peaks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from slipway.errors import UserError
from slipway.ops import (
    decode_heatmaps,
    heatmap_argmax,
    keypoints_to_image,
    refine_dark,
    refine_quarter_offset,
    top_down_transform,
    warp_affine,
)

RNG = np.random.default_rng(5)
HM_H, HM_W = 64, 48


def gaussian_heatmaps(centers: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """[N, K, H, W] unnormalized Gaussians at sub-pixel ``centers`` [N, K, 2] (x, y)."""
    yy, xx = np.mgrid[0:HM_H, 0:HM_W].astype(np.float64)
    d2 = (xx - centers[..., 0, None, None]) ** 2 + (yy - centers[..., 1, None, None]) ** 2
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def argmax_loop(hm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, k, h, w = hm.shape
    locs, vals = np.zeros((n, k, 2), np.float32), np.zeros((n, k), np.float32)
    for i in range(n):
        for j in range(k):
            y, x = divmod(int(np.argmax(hm[i, j])), w)
            vals[i, j] = hm[i, j, y, x]
            locs[i, j] = (x, y) if vals[i, j] > 0 else (-1, -1)
    return locs, vals


def quarter_loop(kps: np.ndarray, hm: np.ndarray) -> np.ndarray:
    """MMPose refine_keypoints, written as its loops."""
    kps = kps.copy()
    n, k, h, w = hm.shape
    for i in range(n):
        for j in range(k):
            x, y = int(kps[i, j, 0]), int(kps[i, j, 1])
            dx = hm[i, j, y, x + 1] - hm[i, j, y, x - 1] if 1 < x < w - 1 and 0 < y < h else 0.0
            dy = hm[i, j, y + 1, x] - hm[i, j, y - 1, x] if 1 < y < h - 1 and 0 < x < w else 0.0
            kps[i, j] += np.sign([dx, dy]) * 0.25
    return kps


def dark_loop(kps: np.ndarray, hm: np.ndarray, kernel: int = 11) -> np.ndarray:
    """DARK as in the paper / MMPose 1.x: pad, blur, rescale max, log, Newton step."""
    kps = kps.astype(np.float64).copy()
    n, k, h, w = hm.shape
    border = (kernel - 1) // 2
    for i in range(n):
        for j in range(k):
            pad = np.zeros((h + 2 * border, w + 2 * border), np.float32)
            pad[border:-border, border:-border] = hm[i, j]
            blur = cv2.GaussianBlur(pad, (kernel, kernel), 0)[border:-border, border:-border]
            blur = blur * (hm[i, j].max() / blur.max())
            lg = np.log(np.maximum(blur, 1e-10)).astype(np.float64)
            x, y = int(kps[i, j, 0]), int(kps[i, j, 1])
            if not (1 < x < w - 2 and 1 < y < h - 2):
                continue
            g = np.array([0.5 * (lg[y, x + 1] - lg[y, x - 1]), 0.5 * (lg[y + 1, x] - lg[y - 1, x])])
            dxx = 0.25 * (lg[y, x + 2] - 2 * lg[y, x] + lg[y, x - 2])
            dyy = 0.25 * (lg[y + 2, x] - 2 * lg[y, x] + lg[y - 2, x])
            dxy = 0.25 * (lg[y + 1, x + 1] - lg[y - 1, x + 1] - lg[y + 1, x - 1] + lg[y - 1, x - 1])
            hess = np.array([[dxx, dxy], [dxy, dyy]])
            if dxx * dyy - dxy**2 != 0:
                kps[i, j] -= np.linalg.inv(hess) @ g
    return kps


def test_argmax_matches_loop_and_marks_empty_maps() -> None:
    hm = RNG.random((3, 5, HM_H, HM_W)).astype(np.float32)
    hm[1, 2] = -1.0  # no positive response: location (-1, -1)
    locs, vals = heatmap_argmax(hm)
    ref_l, ref_v = argmax_loop(hm)
    np.testing.assert_array_equal(locs, ref_l)
    np.testing.assert_array_equal(vals, ref_v)
    assert locs[1, 2].tolist() == [-1, -1]
    l0, v0 = heatmap_argmax(hm[0])  # unbatched [K, H, W]
    np.testing.assert_array_equal(l0, ref_l[0])


def test_quarter_offset_matches_reference_loops() -> None:
    # exact: the same differences and signs; includes peaks on rows/columns 0, 1 and the edge
    centers = np.concatenate(
        [
            RNG.uniform(3, 40, (2, 6, 2)),
            [[[0.0, 5.0], [1.0, 1.0], [47.0, 63.0], [20.0, 1.2], [2.0, 30.0], [46.0, 62.0]]],
        ]
    )
    hm = gaussian_heatmaps(centers)
    locs, _ = heatmap_argmax(hm)
    np.testing.assert_array_equal(refine_quarter_offset(locs, hm), quarter_loop(locs, hm))


def test_dark_matches_reference_loops() -> None:
    # float32 vectorized vs float64 loops: max abs diff <= 1e-3 px
    centers = RNG.uniform(4, 42, (2, 5, 2))
    hm = gaussian_heatmaps(centers, sigma=2.0) + RNG.uniform(0, 0.02, (2, 5, HM_H, HM_W)).astype(np.float32)
    locs, _ = heatmap_argmax(hm)
    assert np.abs(refine_dark(locs, hm) - dark_loop(locs, hm)).max() <= 1e-3


def test_subpixel_accuracy_argmax_quarter_dark() -> None:
    # Gaussian peaks at random sub-pixel centers: the integer argmax is off by up to 0.5 px per
    # axis, the quarter offset by up to 0.25 px (the shift has the right sign), DARK recovers
    # the center to <= 0.01 px (measured: 3e-4 px; the log of a Gaussian is a quadratic)
    centers = RNG.uniform(8, 40, (4, 17, 2))
    hm = gaussian_heatmaps(centers, sigma=2.0)
    errs = {}
    for method in ("argmax", "quarter", "dark"):
        kp, scores = decode_heatmaps(hm, method)
        errs[method] = np.abs(kp - centers).max()
        assert scores.shape == (4, 17)
    assert errs["argmax"] <= 0.5 + 1e-6
    assert errs["quarter"] <= 0.25 + 1e-6
    assert errs["dark"] <= 0.01
    assert errs["dark"] < errs["quarter"] < errs["argmax"]


def mmpose_warp_matrix(
    center: np.ndarray, scale: np.ndarray, rot: float, out_wh: tuple[int, int], shift: np.ndarray
) -> np.ndarray:
    """MMPose get_warp_matrix: three point pairs → cv2.getAffineTransform (float32 points)."""

    def rotate(p: np.ndarray, a: float) -> np.ndarray:
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ p

    def third(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = a - b
        return b + np.array([-d[1], d[0]])

    r = np.deg2rad(rot)
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center + scale * shift
    src[1] = center + rotate(np.array([scale[0] * -0.5, 0.0]), r) + scale * shift
    dst[0] = [out_wh[0] * 0.5, out_wh[1] * 0.5]
    dst[1] = dst[0] + [out_wh[0] * -0.5, 0.0]
    src[2], dst[2] = third(src[0], src[1]), third(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


@pytest.mark.parametrize("rot", [0.0, 30.0, -75.0])
def test_top_down_transform_matches_mmpose_warp_matrix(rot: float) -> None:
    # MMPose builds the matrix from float32 points: max abs diff <= 1e-3 (entries ~ 1e2)
    center, scale, shift = np.array([321.5, 207.25]), np.array([150.0, 200.0]), np.array([0.05, -0.1])
    tf = top_down_transform(center, scale, (256, 192), rotation=rot, shift=shift)
    ref = mmpose_warp_matrix(center, scale, rot, (192, 256), shift)
    assert np.abs(tf.matrix[:2] - ref).max() <= 1e-3


def test_top_down_crop_and_back_projection() -> None:
    # a bright dot at a known image point lands at tf.to_input(point) in the crop, and the
    # MMPose linear back-projection equals the inverse affine (rotation 0, aspect 3:4 kept)
    img = np.zeros((480, 640), np.float32)
    point = np.array([[300.0, 200.0]])
    img[200, 300] = 1.0
    center, scale = np.array([320.0, 240.0]), np.array([240.0, 320.0])
    tf = top_down_transform(center, scale, (256, 192))
    crop = warp_affine(img, tf.matrix, (256, 192), interpolation=cv2.INTER_NEAREST)
    y, x = np.unravel_index(np.argmax(crop), crop.shape)
    assert np.abs(np.array([x, y]) - tf.to_input(point)[0]).max() <= 0.5
    hm_kp = RNG.uniform(0, 48, (1, 17, 2)).astype(np.float32)
    linear = keypoints_to_image(hm_kp, center[None], scale[None], (64, 48))
    exact = tf.to_original(hm_kp[0] * 4.0)  # heatmap → input pixels (x4), then inverse affine
    assert np.abs(linear[0] - exact).max() <= 1e-3


def test_keypoints_to_image_keeps_scores_and_batches() -> None:
    kp = np.array([[[24.0, 32.0, 0.9]], [[0.0, 0.0, 0.1]]], np.float32)
    out = keypoints_to_image(
        kp, np.array([[100.0, 50.0], [0.0, 0.0]]), np.array([[48.0, 64.0], [96.0, 128.0]]), (64, 48)
    )
    np.testing.assert_allclose(out, [[[100.0, 50.0, 0.9]], [[-48.0, -64.0, 0.1]]])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: heatmap_argmax(np.zeros((4, 4))), "3 or 4-D"),
        (lambda: heatmap_argmax(np.zeros((1, 0, 4, 4))), "empty"),
        (lambda: heatmap_argmax(np.full((1, 1, 4, 4), np.nan, np.float32)), "NaN"),
        (lambda: decode_heatmaps(np.zeros((1, 1, 4, 4), np.float32), "udp"), "method"),
        (lambda: refine_dark(np.zeros((1, 1, 2), np.float32), np.zeros((1, 1, 8, 8), np.float32), kernel=4), "odd"),
        (
            lambda: refine_quarter_offset(np.zeros((1, 1, 5), np.float32), np.zeros((1, 1, 8, 8), np.float32)),
            "last dimension",
        ),
        (lambda: top_down_transform([1, 2], [0, 5], (8, 8)), "positive"),
        (
            lambda: keypoints_to_image(np.zeros((2, 3, 2), np.float32), np.zeros((1, 2)), np.ones((2, 2)), 8),
            "batch sizes",
        ),
    ],
)
def test_bad_inputs(call: object, match: str) -> None:
    with pytest.raises(UserError, match=match):
        call()
