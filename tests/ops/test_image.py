"""slipway.ops.image: letterbox (+ inverse), fused preprocess, crops, normalize, layout, dtype."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from slipway.errors import UserError
from slipway.ops import (
    bgr_to_rgb,
    center_crop,
    chw_to_hwc,
    convert_dtype,
    hwc_to_chw,
    letterbox,
    normalize,
    preprocess,
    resize,
    resize_shorter,
    rgb_to_bgr,
    unletterbox,
)

RNG = np.random.default_rng(1)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _ultralytics_letterbox(img: np.ndarray, new: tuple[int, int], color: int = 114) -> np.ndarray:
    """The hand-written YOLO letterbox most deployments copy (independent oracle)."""
    h, w = img.shape[:2]
    r = min(new[0] / h, new[1] / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    dw, dh = (new[1] - nw) / 2, (new[0] - nh) / 2
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(color,) * 3)


@pytest.mark.parametrize("shape,size", [((1080, 1920), (640, 640)), ((480, 333), (640, 640)), ((97, 201), (320, 256))])
def test_letterbox_matches_hand_written_chain(shape: tuple[int, int], size: tuple[int, int]) -> None:
    # exact (max abs diff 0): same resize call and the same padding arithmetic
    img = RNG.integers(0, 256, shape + (3,), dtype=np.uint8)
    out, tf = letterbox(img, size)
    np.testing.assert_array_equal(out, _ultralytics_letterbox(img, size))
    assert tf.src_size == shape and tf.dst_size == size


def test_letterbox_transform_maps_boxes_and_points_back() -> None:
    img = np.zeros((400, 700, 3), np.uint8)
    box = np.array([[100.0, 50.0, 300.0, 350.0]])
    img[50:350, 100:300] = 255
    out, tf = letterbox(img, 640)
    # the white rectangle's bounding box in the letterboxed image maps back within 1 input
    # pixel = 1/scale original pixels (the resize smears one pixel at each edge)
    ys, xs = np.nonzero(out[..., 0] > 127)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
    back = tf.to_original(found)
    assert np.abs(back - box).max() <= 1 / tf.matrix[0, 0] + 1e-9
    # round trips are exact up to float64 rounding; extra columns (score, class) are kept
    dets = np.array([[120.0, 60.0, 280.0, 300.0, 0.9, 3.0]])
    np.testing.assert_allclose(tf.to_original(tf.to_input(dets, kind="boxes"), kind="boxes"), dets, atol=1e-9)
    kps = np.array([[[10.0, 20.0, 0.5], [650.0, 390.0, 0.7]]])
    np.testing.assert_allclose(tf.to_original(tf.to_input(kps)), kps, atol=1e-9)
    # boxes are clipped to the original image by default, points are not
    assert tf.to_original(np.array([[-50.0, -50.0, 700.0, 700.0]]))[0].tolist() == [0, 0, 700, 400]


def test_letterbox_batch_scaleup_and_color() -> None:
    batch = RNG.integers(0, 256, (2, 50, 100, 3), dtype=np.uint8)
    out, tf = letterbox(batch, (128, 128), scaleup=False, color=(1, 2, 3))
    assert out.shape == (2, 128, 128, 3) and tf.matrix[0, 0] == 1.0  # no upscaling
    np.testing.assert_array_equal(out[1, 39:89, 14:114], batch[1])
    assert out[0, 0, 0].tolist() == [1, 2, 3]


def test_preprocess_equals_chain_and_torch() -> None:
    # fused path vs (letterbox → BGR→RGB → /255 → (x-mean)/std → CHW) computed by torch in
    # float64: max abs diff <= 1e-5 (float32 multiply-add with folded constants)
    img = RNG.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    blob, tf = preprocess(img, 640, mean=MEAN, std=STD)
    boxed, tf2 = letterbox(img, 640)
    t = torch.from_numpy(boxed.astype(np.float64)).flip(-1).permute(2, 0, 1)[None]
    ref = (
        (t / 255.0 - torch.tensor(MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(STD)[:, None, None]
    ).numpy()
    assert blob.shape == (1, 3, 640, 640) and blob.dtype == np.float32
    assert np.abs(blob - ref).max() <= 1e-5
    np.testing.assert_array_equal(tf.matrix, tf2.matrix)
    ours = hwc_to_chw(normalize(bgr_to_rgb(boxed), MEAN, STD, 1 / 255))[None]
    assert np.abs(blob - ours).max() <= 1e-5


def test_preprocess_batch_no_swap_gray() -> None:
    batch = RNG.integers(0, 256, (2, 30, 40), dtype=np.uint8)[..., None]
    blob, _ = preprocess(batch, (32, 48), swap_rb=False, scale=1.0)
    boxed, _ = letterbox(batch, (32, 48))
    np.testing.assert_allclose(blob, boxed.transpose(0, 3, 1, 2).astype(np.float32), atol=1e-4)


def test_unletterbox_inverts_exact_upscale() -> None:
    # a x2 nearest upscale followed by a x2 nearest downscale returns the original exactly
    mask = RNG.integers(0, 5, (100, 50)).astype(np.uint8)
    boxed, tf = letterbox(mask[..., None], 200, method="cv2_nearest")
    assert tf.matrix[0, 0] == 2.0
    np.testing.assert_array_equal(unletterbox(boxed, tf, "cv2_nearest")[..., 0], mask)


def test_center_crop_torchvision_semantics() -> None:
    img = RNG.integers(0, 256, (11, 16, 3), dtype=np.uint8)
    # torchvision: top = int(round((11 - 4) / 2)) = 4 (round half to even: 3.5 -> 4), left = 6
    np.testing.assert_array_equal(center_crop(img, (4, 4)), img[4:8, 6:10])
    out, tf = center_crop(img, (5, 3), return_transform=True)
    np.testing.assert_array_equal(out, img[3:8, 6:9])  # round(3.0) = 3, round(6.5) = 6
    np.testing.assert_allclose(tf.to_input(np.array([[6.0, 3.0]])), [[0.0, 0.0]])
    # larger than the image: zero padding split left/top = diff // 2, as torchvision pads
    big = center_crop(img, (15, 20))
    assert big.shape == (15, 20, 3)
    np.testing.assert_array_equal(big[2:13, 2:18], img)
    assert big[:2].sum() == 0 and big[:, :2].sum() == 0


def test_resize_shorter_size_rule() -> None:
    img = RNG.random((300, 451, 3)).astype(np.float32)
    out = resize_shorter(img, 256)  # torchvision: long = int(256 * 451 / 300) = 384
    assert out.shape == (256, 384, 3)
    np.testing.assert_array_equal(out, resize(img, (256, 384), "pil_bilinear"))


def test_normalize_against_torch() -> None:
    # float32 folded multiply-add vs float64 torch: max abs diff <= 1e-5 on [0, 255] inputs
    img = RNG.integers(0, 256, (2, 8, 9, 3), dtype=np.uint8)
    ref = ((torch.from_numpy(img).double() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)).numpy()
    got = normalize(img, MEAN, STD, 1 / 255)
    assert got.dtype == np.float32 and np.abs(got - ref).max() <= 1e-5
    chw = normalize(img.transpose(0, 3, 1, 2), MEAN, STD, 1 / 255, channel_axis=1)
    assert np.abs(chw - ref.transpose(0, 3, 1, 2)).max() <= 1e-5
    np.testing.assert_allclose(normalize(img, 127.5, 127.5), img / 127.5 - 1, atol=1e-6)


def test_layout_and_channel_order() -> None:
    img = RNG.integers(0, 256, (2, 5, 7, 4), dtype=np.uint8)
    chw = hwc_to_chw(img)
    np.testing.assert_array_equal(chw, torch.from_numpy(img).permute(0, 3, 1, 2).numpy())
    assert chw.flags.c_contiguous
    np.testing.assert_array_equal(chw_to_hwc(chw), img)
    np.testing.assert_array_equal(bgr_to_rgb(img[..., :3]), img[..., 2::-1])
    np.testing.assert_array_equal(rgb_to_bgr(img)[..., 3], img[..., 3])  # alpha stays last
    np.testing.assert_array_equal(bgr_to_rgb(chw[:, :3], channel_axis=1), chw[:, 2::-1])


def test_convert_dtype_values() -> None:
    u8 = np.array([0, 1, 127, 128, 255], np.uint8)
    np.testing.assert_allclose(convert_dtype(u8, np.float32), u8 / 255.0, rtol=1e-7)
    f = np.array([-0.2, 0.0, 0.5, 0.502, 1.0, 1.7], np.float32)
    # round(x * 255) with round-half-even (0.5 * 255 = 127.5 -> 128), clipped to [0, 255]
    assert convert_dtype(f, np.uint8).tolist() == [0, 0, 128, 128, 255, 255]
    u16 = np.array([0, 257, 65535], np.uint16)
    assert convert_dtype(u16, np.uint8).tolist() == [0, 1, 255]
    assert convert_dtype(np.array([0, 1], np.uint8), np.uint16).tolist() == [0, 257]
    assert convert_dtype(np.array([True, False]), np.uint8).tolist() == [255, 0]


@pytest.mark.parametrize(
    "fn,args,match",
    [
        (letterbox, (np.zeros((5,)), 64), "2 or 3 or 4-D"),
        (letterbox, (np.zeros((0, 5, 3)), 64), "empty"),
        (letterbox, (np.full((5, 5, 3), np.nan), 64), "NaN"),
        (letterbox, (np.zeros((5, 5, 3)), (64, -1)), "positive"),
        (preprocess, (np.zeros((5, 5, 3)), 64), None),
        (normalize, (np.zeros((5, 5, 3)), [1, 2], [1, 1, 1]), "mean/std"),
        (normalize, (np.zeros((5, 5, 3)), 0, 0), "std"),
        (hwc_to_chw, (np.zeros((5, 5)),), "3 or 4-D"),
        (bgr_to_rgb, (np.zeros((5, 5, 2)),), "3 or 4 channels"),
        (convert_dtype, (np.zeros(3), object), "numeric dtype"),
        (center_crop, (np.zeros((5, 5, 3)), (0, 2)), "positive"),
    ],
)
def test_bad_inputs(fn: object, args: tuple, match: str | None) -> None:
    if match is None:  # a valid call: must not raise
        fn(*args)
        return
    with pytest.raises(UserError, match=match):
        fn(*args)
