"""slipway.ops.geometry: Transform algebra and OpenCV warps with inverse point mapping."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slipway.errors import UserError
from slipway.ops import Transform, scale_transform, warp_affine, warp_perspective

H, W = 60, 80
YY, XX = np.mgrid[0:H, 0:W].astype(np.float32)
RAMPS = np.stack([XX, YY], -1)  # each pixel holds its own (x, y)
AFFINE = cv2.getRotationMatrix2D((40.0, 30.0), 17.0, 1.3) + np.array([[0, 0, 5.5], [0, 0, -3.25]])
HOMOGRAPHY = np.array([[1.1, 0.05, 3.0], [-0.04, 0.95, 6.0], [0.0008, -0.0005, 1.0]])


def _inside(src_xy: np.ndarray) -> np.ndarray:
    return (src_xy[..., 0] >= 1) & (src_xy[..., 0] <= W - 2) & (src_xy[..., 1] >= 1) & (src_xy[..., 1] <= H - 2)


@pytest.mark.parametrize("warp,matrix", [(warp_affine, AFFINE), (warp_perspective, HOMOGRAPHY)])
def test_warp_inverse_maps_pixels_to_their_source(warp: object, matrix: np.ndarray) -> None:
    # a warped coordinate ramp holds, at each output pixel, the source point it was sampled
    # from; transform.to_original must return that point. OpenCV quantizes sample positions to
    # 1/32 pixel (INTER_BITS = 5), so max abs diff <= 1/32 px
    out, tf = warp(RAMPS, matrix, (H, W), return_transform=True)
    uv = np.stack(np.meshgrid(np.arange(W), np.arange(H)), -1).astype(np.float64)
    src = tf.to_original(uv.reshape(-1, 2)).reshape(H, W, 2)
    ok = _inside(src)
    assert ok.mean() > 0.5
    assert np.abs(out[ok] - src[ok]).max() <= 1 / 32
    # and forward: to_input of the source point returns the output pixel (float64 round trip)
    np.testing.assert_allclose(tf.to_input(src[ok]), uv[ok], atol=1e-9)


def test_warp_affine_matches_torch_grid_sample() -> None:
    # independent bilinear reference: torch grid_sample at M^-1 (u, v), align_corners=True maps
    # -1..1 onto pixel centers 0..W-1 (OpenCV's convention). Smooth image (|grad| <= 0.2/px):
    # max abs diff <= 0.2 / 32 from OpenCV's 1/32-px sample quantization
    img = (np.sin(XX / 5.0) * np.cos(YY / 7.0)).astype(np.float32)
    out, tf = warp_affine(img, AFFINE, (H, W), return_transform=True)
    uv = np.stack(np.meshgrid(np.arange(W), np.arange(H)), -1).reshape(-1, 2).astype(np.float64)
    src = tf.to_original(uv).reshape(H, W, 2)
    grid = torch.from_numpy(np.stack([src[..., 0] / (W - 1) * 2 - 1, src[..., 1] / (H - 1) * 2 - 1], -1))[None]
    ref = F.grid_sample(torch.from_numpy(img.astype(np.float64))[None, None], grid, align_corners=True)[0, 0].numpy()
    ok = _inside(src)
    assert np.abs(out[ok] - ref[ok]).max() <= 0.2 / 32


def test_warp_batch_channels_and_border() -> None:
    batch = np.random.default_rng(0).random((2, 20, 30, 3)).astype(np.float32)
    m = np.array([[0.5, 0, 100.0], [0, 0.5, 0]])  # everything lands outside: all border
    out = warp_affine(batch, m, (10, 12), border_value=(7, 8, 9))
    assert out.shape == (2, 10, 12, 3)
    assert np.all(out[..., 0] == 7) and np.all(out[..., 2] == 9)
    gray = warp_perspective(batch[0, ..., :1], np.eye(3), (20, 30))
    assert gray.shape == (20, 30, 1)
    # the identity warp returns the image up to float32 rounding, not bit for bit: OpenCV's
    # bilinear warp weights and sums the 4 neighbours in float32 along a CPU-dependent SIMD path
    # (6e-8 off with AVX-512). A few ulps of the value range [0, 1): 4 x 2**-23
    np.testing.assert_allclose(gray, batch[0, ..., :1], rtol=0, atol=4 * np.finfo(np.float32).eps)


def test_transform_compose_and_inverse() -> None:
    a = scale_transform((100, 200), (50, 50))
    b = Transform(np.array([[1.0, 0, 10], [0, 1, 20], [0, 0, 1]]), (50, 50), (80, 80))
    ab = a.then(b)
    pts = np.array([[0.0, 0.0], [200.0, 100.0], [37.5, 12.25]])
    np.testing.assert_allclose(ab.to_input(pts), b.to_input(a.to_input(pts)))
    np.testing.assert_allclose(ab.inverse().to_input(ab.to_input(pts)), pts, atol=1e-12)
    assert ab.src_size == (100, 200) and ab.dst_size == (80, 80)
    # a rotated box maps to the axis-aligned hull of its 4 mapped corners
    rot = Transform(np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), (10, 10), (10, 10))
    np.testing.assert_allclose(rot.to_input(np.array([[1.0, 2.0, 4.0, 3.0]]), kind="boxes"), [[-3, 1, -2, 4]])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: warp_affine(np.zeros((5, 5)), np.eye(2), (5, 5)), "shape"),
        (lambda: warp_perspective(np.zeros((5, 5)), np.zeros((3, 3)), (5, 5)), "singular"),
        (lambda: warp_affine(np.zeros((5, 5)), AFFINE, (5, 5), border="wrap"), "border"),
        (lambda: warp_affine(np.zeros((5, 5), np.int64), AFFINE, (5, 5)), "dtype"),
        (lambda: warp_affine(np.zeros((5, 5)), np.full((2, 3), np.nan), (5, 5)), "NaN"),
        (lambda: scale_transform((5, 5), (5, 5)).to_original(np.zeros((3, 5))), "ambiguous"),
        (lambda: scale_transform((5, 5), (5, 5)).to_original(np.zeros((3, 2)), kind="box"), "kind"),
    ],
)
def test_bad_inputs(call: object, match: str) -> None:
    with pytest.raises(UserError, match=match):
        call()
