"""slipway.ops.resize against the libraries whose semantics it names: OpenCV, PIL, torch."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from slipway.errors import UserError
from slipway.ops import resize

RNG = np.random.default_rng(0)
SIZES = [((17, 23), (40, 31)), ((40, 31), (17, 23)), ((64, 48), (21, 64)), ((9, 50), (9, 13)), ((33, 7), (5, 40))]
PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "box": Image.BOX,
    "bilinear": Image.BILINEAR,
    "hamming": Image.HAMMING,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def _smooth_u8(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack(
        [128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0), 128 + 90 * np.cos((xx + yy) / 17.0), xx * 2.0], -1
    )
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _torch_ref(x: np.ndarray, size: tuple[int, int], mode: str, **kw: object) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    return F.interpolate(t, size=size, mode=mode, **kw)[0].numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("method,flag", [("cv2_nearest", 0), ("cv2_linear", 1), ("cv2_cubic", 2), ("cv2_area", 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_cv2_methods_equal_cv2_resize_and_batch(method: str, flag: int, dtype: type) -> None:
    # exact (max abs diff 0): the cv2 methods are cv2.resize; the batch path loops per image
    batch = (RNG.random((3, 37, 29, 3)) * 255).astype(dtype)
    got = resize(batch, (20, 45), method)
    for i in range(3):
        np.testing.assert_array_equal(got[i], cv2.resize(batch[i], (45, 20), interpolation=flag))


def test_cv2_handles_dtypes_and_many_channels() -> None:
    # int64 labels go through float64 (exact for nearest); 600 channels are resized in 128-channel chunks (OpenCV 5 limit)
    labels = RNG.integers(0, 1000, (15, 20)).astype(np.int64)
    got = resize(labels, (30, 40), "cv2_nearest")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(
        got, cv2.resize(labels.astype(np.float64), (40, 30), interpolation=0).astype(np.int64)
    )
    many = RNG.random((12, 10, 600)).astype(np.float32)
    got = resize(many, (6, 5), "cv2_area")
    for c in (0, 128, 512):  # exact per 128-channel chunk; 1e-6 vs. one channel (SIMD path)
        chunk = cv2.resize(np.ascontiguousarray(many[..., c : c + 128]), (5, 6), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(got[..., c : c + 128], chunk)
        single = cv2.resize(np.ascontiguousarray(many[..., c]), (5, 6), interpolation=cv2.INTER_AREA)
        assert np.abs(got[..., c] - single).max() <= 1e-6
    assert got.shape == (6, 5, 600)


def test_cv2_linear_is_torch_bilinear_half_pixel() -> None:
    # OpenCV INTER_LINEAR and torch bilinear (align_corners=False, no antialias) name the same
    # map; float32 rounding order differs, so max abs diff <= 1e-5 on values in [0, 1]
    x = RNG.random((19, 27, 2)).astype(np.float32)
    for size in [(40, 50), (10, 13), (19, 60)]:
        ref = _torch_ref(x, size, "bilinear", align_corners=False)
        assert np.abs(resize(x, size, "cv2_linear") - ref).max() <= 1e-5


@pytest.mark.parametrize("name", list(PIL_FILTERS))
@pytest.mark.parametrize("src,dst", SIZES)
def test_pil_float_images(name: str, src: tuple[int, int], dst: tuple[int, int]) -> None:
    # mode "F" (float32): PIL accumulates in double like us; max abs diff <= 1e-5 (float32 storage)
    x = RNG.random(src).astype(np.float32)
    ref = np.asarray(Image.fromarray(x, mode="F").resize(dst[::-1], PIL_FILTERS[name]))
    assert np.abs(resize(x, dst, "pil_" + name) - ref).max() <= 1e-5


@pytest.mark.parametrize("name", list(PIL_FILTERS))
def test_pil_uint8_single_axis_exact(name: str) -> None:
    # one-axis resizes of RGB uint8: exact (22-bit fixed-point weights, PIL rounding and clipping)
    x = RNG.integers(0, 256, (23, 41, 3), dtype=np.uint8)
    for dst in [(23, 17), (23, 90), (9, 41), (60, 41)]:
        ref = np.asarray(Image.fromarray(x).resize(dst[::-1], PIL_FILTERS[name]))
        np.testing.assert_array_equal(resize(x, dst, "pil_" + name), ref)


@pytest.mark.parametrize("name", list(PIL_FILTERS))
def test_pil_uint8_two_axes(name: str) -> None:
    # both axes: horizontal then vertical pass with uint8 rounding in between (classic Pillow).
    # Recent Pillow sometimes runs the vertical pass first; the intermediate rounding then
    # differs, so on a natural image: exact for nearest and box, max abs diff <= 2 otherwise
    x = _smooth_u8(97, 131)
    tol = 0 if name in ("nearest", "box") else 2
    for dst in [(48, 64), (200, 50), (31, 260), (150, 170)]:
        ref = np.asarray(Image.fromarray(x).resize(dst[::-1], PIL_FILTERS[name])).astype(int)
        assert np.abs(resize(x, dst, "pil_" + name).astype(int) - ref).max() <= tol


def test_pil_nearest_exact_ties() -> None:
    # PIL NEAREST walks the grid by repeated addition; on exact-integer ties it lands one pixel
    # lower than floor((i + 0.5) * in/out). Index parity is exact over many size pairs
    for n_in, n_out in [(190, 163), (118, 257), (138, 299), (144, 127), (1000, 999)]:
        x = np.arange(n_in, dtype=np.float32)[None, :]
        ref = np.asarray(Image.fromarray(x, mode="F").resize((n_out, 1), Image.NEAREST))
        np.testing.assert_array_equal(resize(x, (1, n_out), "pil_nearest"), ref)


TORCH_CASES = [
    ("nearest", {}),
    ("nearest_exact", {}),
    ("area", {}),
    ("bilinear", {"align_corners": False}),
    ("bilinear", {"align_corners": True}),
    ("bicubic", {"align_corners": False}),
    ("bicubic", {"align_corners": True}),
    ("bilinear", {"align_corners": False, "antialias": True}),
    ("bilinear", {"align_corners": True, "antialias": True}),
    ("bicubic", {"align_corners": False, "antialias": True}),
]


@pytest.mark.parametrize("mode,kw", TORCH_CASES)
@pytest.mark.parametrize("src,dst", SIZES)
def test_torch_interpolate(mode: str, kw: dict, src: tuple[int, int], dst: tuple[int, int]) -> None:
    # float32 in [0, 1]: nearest modes exact; interpolating modes max abs diff <= 1e-5 (torch
    # computes weights and sums in float32 in its own order). Output sizes of 1 are avoided for
    # antialias: torch 2.x returns inconsistent values there (its aa kernel mis-strides)
    x = RNG.random(src + (3,)).astype(np.float32)
    ref = _torch_ref(x, dst, mode.replace("_", "-"), **kw)
    got = resize(x, dst, "torch_" + mode, **kw)
    tol = 0.0 if mode.startswith("nearest") else 1e-5
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= tol


def test_torch_methods_on_uint8_round_and_keep_dtype() -> None:
    # uint8 in: float math, then round-half-even and clip; equals rounding torch's float result
    # except where the float result sits within 1e-3 of .5 (max abs diff <= 1)
    x = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    got = resize(x, (13, 41), "torch_bicubic")
    ref = np.clip(np.rint(_torch_ref(x.astype(np.float32), (13, 41), "bicubic")), 0, 255)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - ref).max() <= 1


def test_batched_and_2d_shapes() -> None:
    batch = RNG.random((2, 10, 12, 3)).astype(np.float32)
    out = resize(batch, (5, 6), "torch_bilinear", antialias=True)
    assert out.shape == (2, 5, 6, 3)
    np.testing.assert_allclose(out[1], resize(batch[1], (5, 6), "torch_bilinear", antialias=True))
    assert resize(batch[0, ..., 0], 7, "pil_bicubic").shape == (7, 7)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((np.zeros((4, 4, 3)), (2, 2), "cubic"), {}, "unknown resize method"),
        ((np.zeros((4, 4, 3)), (2, 2), "cv2_linear"), {"align_corners": True}, "torch_"),
        ((np.zeros((4, 4, 3)), (2, 2), "torch_nearest"), {"align_corners": True}, "align_corners"),
        ((np.zeros((4, 4, 3)), (2, 2), "torch_area"), {"antialias": True}, "antialias"),
        ((np.zeros(4), (2, 2)), {}, "2 or 3 or 4-D"),
        ((np.zeros((0, 4, 3)), (2, 2)), {}, "empty"),
        ((np.full((4, 4), np.nan), (2, 2)), {}, "NaN"),
        ((np.zeros((4, 4)), (0, 2)), {}, "positive"),
    ],
)
def test_bad_inputs(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        resize(*args, **kwargs)
