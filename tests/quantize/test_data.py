"""Calibration data sources: arrays, .npy/.npz files and folders, images, iterables; checks and digests."""

from __future__ import annotations

import functools
import os

import cv2
import numpy as np
import onnx
import pytest
from onnx import helper

from slipway.errors import UserError
from slipway.quantize.data import ImageSpec, calibration_data
from tests.passes.util import make, tensor


def model(*dims, name: str = "x", dtype=onnx.TensorProto.FLOAT):
    dims = dims or ("batch", 3, 8, 8)
    return make([helper.make_node("Identity", [name], ["y"])], [tensor(name, list(dims), dtype)],
                [tensor("y", list(dims), dtype)])


def two_inputs():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    return make(nodes, [tensor("a", ["batch", 4]), tensor("b", ["batch", 4])], [tensor("y", ["batch", 4])])


def shapes(data) -> list[tuple[int, ...]]:
    return [tuple(f[data.specs[0].name].shape) for f in data]


def rand(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_npy_rows_batched_and_limited(tmp_path):
    x = rand(10, 3, 8, 8)
    np.save(tmp_path / "x.npy", x)
    data = calibration_data(tmp_path / "x.npy", model(), batch=4)
    assert len(data) == 10 and shapes(data) == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in data]), x)
    limited = calibration_data(tmp_path / "x.npy", model(), batch=4, limit=5)
    assert len(limited) == 5 and shapes(limited) == [(4, 3, 8, 8), (1, 3, 8, 8)]
    static = calibration_data(tmp_path / "x.npy", model(1, 3, 8, 8), batch=4)
    assert shapes(static) == [(1, 3, 8, 8)] * 10


def test_stacked_samples_for_a_model_without_batch_dim():
    x = rand(5, 3, 8, 8)
    data = calibration_data(x, model(3, 8, 8))
    assert len(data) == 5 and shapes(data) == [(3, 8, 8)] * 5
    stacked = calibration_data(rand(3, 2, 3, 8, 8), model())  # 3 whole inputs of batch 2
    assert len(stacked) == 6 and shapes(stacked) == [(2, 3, 8, 8)] * 3


def test_npz_and_folder_of_arrays(tmp_path):
    a, b = rand(6, 4), rand(6, 4, seed=1)
    np.savez(tmp_path / "one.npz", a=a, b=b)
    np.savez(tmp_path / "two.npz", a=a[:3], b=b[:3])
    data = calibration_data(tmp_path, two_inputs(), batch=4)
    assert len(data) == 9
    feeds = list(data)
    assert [f["a"].shape[0] for f in feeds] == [4, 2, 3]
    np.testing.assert_array_equal(feeds[1]["b"], b[4:])
    with pytest.raises(UserError, match="'c' is not a model input"):
        np.savez(tmp_path / "bad.npz", a=a, b=b, c=a)
        calibration_data(tmp_path / "bad.npz", two_inputs())
    np.savez(tmp_path / "missing.npz", a=a)
    with pytest.raises(UserError, match="no array for input 'b'"):
        calibration_data(tmp_path / "missing.npz", two_inputs())
    np.savez(tmp_path / "uneven.npz", a=a, b=b[:5])
    with pytest.raises(UserError, match="different numbers of samples: a has 6, b has 5"):
        calibration_data(tmp_path / "uneven.npz", two_inputs())
    np.save(tmp_path / "single.npy", a)
    with pytest.raises(UserError, match="a .npy file holds one array, but the model has inputs a, b"):
        calibration_data(tmp_path / "single.npy", two_inputs())
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read calibration data"):
        calibration_data(tmp_path / "junk.npz", two_inputs())


def test_shape_rank_and_dtype_errors_name_the_input():
    with pytest.raises(UserError, match=r"input 'x' expects samples of shape \[batch, 3, 8, 8\].*got shape \[5, 8, 8\]"):
        calibration_data(rand(5, 8, 8), model())
    with pytest.raises(UserError, match=r"item 0: input 'x' expects shape \[batch, 3, 8, 8\], got \[2, 3, 4, 4\]"):
        list(calibration_data([rand(2, 3, 4, 4)], model()))
    with pytest.raises(UserError, match=r"input 'x' expects rank 4 \[batch, 3, 8, 8\], got shape \[3, 8, 8\]"):
        list(calibration_data([rand(3, 8, 8)], model()))
    with pytest.raises(UserError, match="input 'x' has dtype uint8, the model expects float32"):
        list(calibration_data([np.zeros((1, 3, 8, 8), np.uint8)], model()))
    with pytest.raises(UserError, match="no value for input 'b'"):
        list(calibration_data([{"a": rand(1, 4)}], two_inputs()))
    with pytest.raises(UserError, match="'z' is not a model input"):
        list(calibration_data([{"a": rand(1, 4), "b": rand(1, 4), "z": rand(1)}], two_inputs()))
    with pytest.raises(UserError, match="dim 'batch' is 1 in one input but 2 in 'b'"):
        list(calibration_data([{"a": rand(1, 4), "b": rand(2, 4)}], two_inputs()))
    with pytest.raises(UserError, match="expected a dict of input arrays, got list"):
        list(calibration_data([[1, 2]], two_inputs()))
    feeds = list(calibration_data([np.zeros((1, 3, 8, 8))], model()))  # float64 is cast
    assert feeds[0]["x"].dtype == np.float32


def test_empty_sets():
    for source in ([], rand(0, 3, 8, 8)):
        with pytest.raises(UserError, match="calibration set is empty"):
            calibration_data(source, model())
    with pytest.raises(UserError, match="calibration set is empty"):
        list(calibration_data(iter([]), model()))
    with pytest.raises(UserError, match="calibration set is empty"):
        list(calibration_data(lambda: [], model()))


def test_empty_missing_and_mixed_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="calibration set is empty"):
        calibration_data(tmp_path, model())
    with pytest.raises(UserError, match="calibration data not found"):
        calibration_data(tmp_path / "nope", model())
    with pytest.raises(UserError, match="must be a folder, an image or a .npy/.npz file"):
        calibration_data(tmp_path / "notes.txt", model())
    np.save(tmp_path / "x.npy", rand(2, 3, 8, 8))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="both images and .npy/.npz files"):
        calibration_data(tmp_path, model())
    with pytest.raises(UserError, match="calibration data must be"):
        calibration_data(42, model())
    with pytest.raises(UserError, match="limit must be a positive integer"):
        calibration_data(rand(2, 3, 8, 8), model(), limit=0)


def write_images(folder, n: int, seed: int = 0) -> list[np.ndarray]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (20 + 4 * k, 30, 3), dtype=np.uint8) for k in range(n)]
    for k, im in enumerate(images):
        cv2.imwrite(str(folder / f"img{k}.{'png' if k % 2 else 'bmp'}"), im)
    return images


def test_images_resized_normalized_batched(tmp_path):
    images = write_images(tmp_path / "imgs", 5)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    data = calibration_data(tmp_path / "imgs", model(), preprocess=ImageSpec(mean=mean, std=std), batch=2)
    feeds = list(data)
    assert len(data) == 5 and [f["x"].shape for f in feeds] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    rgb = cv2.resize(images[0], (8, 8), interpolation=cv2.INTER_LINEAR)[..., ::-1].astype(np.float32)
    want = ((rgb / 255 - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)
    np.testing.assert_allclose(feeds[0]["x"][0], want, atol=1e-5)
    nhwc = calibration_data(tmp_path / "imgs", model("n", 8, 8, 3), preprocess={"rgb": False, "scale": 1.0})
    np.testing.assert_allclose(next(iter(nhwc))["x"][0], cv2.resize(images[0], (8, 8)).astype(np.float32))
    boxed = calibration_data(tmp_path / "imgs", model(1, 3, 8, 8), preprocess=ImageSpec(resize="letterbox"))
    first = next(iter(boxed))["x"][0]  # 20x30 -> 5x8 content centered in 8x8, pad 114
    assert np.allclose(first[:, 0], 114 / 255) and not np.allclose(first[:, 3], 114 / 255)


def test_images_gray_callable_and_errors(tmp_path):
    images = write_images(tmp_path / "imgs", 3)
    gray = calibration_data(tmp_path / "imgs", model("n", 1, 6, 6))
    assert shapes(gray) == [(3, 1, 6, 6)]

    def prep(image, size=8):
        return cv2.resize(image, (size, size)).transpose(2, 0, 1).astype(np.float32)

    feeds = list(calibration_data(tmp_path / "imgs", model(), preprocess=prep, batch=8))
    np.testing.assert_array_equal(feeds[0]["x"][0], prep(images[0]))
    with pytest.raises(UserError, match=r"gave shape \[3, 8, 8, 1\]; input 'x' takes \[3, 8, 8\] per image"):
        list(calibration_data(tmp_path / "imgs", model(), preprocess=lambda im: prep(im)[..., None]))
    with pytest.raises(UserError, match="dynamic height or width; give the image size"):
        calibration_data(tmp_path / "imgs", model("n", 3, "h", "w"))
    assert shapes(calibration_data(tmp_path / "imgs", model("n", 3, "h", "w"), preprocess={"size": (4, 6)})) == [
        (3, 3, 4, 6)]
    with pytest.raises(UserError, match="image pre-processing"):
        calibration_data(tmp_path / "imgs", model(), preprocess={"colour": 1})
    with pytest.raises(UserError, match="images feed a single-input model"):
        calibration_data(tmp_path / "imgs", two_inputs())
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        list(calibration_data(tmp_path / "imgs", model()))


def test_iterables_and_callables():
    items = [rand(2, 3, 8, 8, seed=k) for k in range(3)]
    data = calibration_data(items, model())
    assert len(data) == 6 and shapes(data) == [(2, 3, 8, 8)] * 3 and shapes(data) == [(2, 3, 8, 8)] * 3
    limited = calibration_data(items, model(), limit=3)
    assert len(limited) == 3 and shapes(limited) == [(2, 3, 8, 8), (1, 3, 8, 8)]
    pulled = []
    assert shapes(calibration_data((pulled.append(1) or x for x in items), model(), limit=2)) == [(2, 3, 8, 8)]
    assert len(pulled) == 1  # the limit stops before reading another item
    gen = calibration_data((x for x in items), model())
    with pytest.raises(TypeError):
        len(gen)
    assert len(list(gen)) == 3 and gen.digest() is None
    with pytest.raises(UserError, match="already consumed"):
        list(gen)
    fn = calibration_data(lambda: ({"x": x} for x in items), model())
    assert shapes(fn) == shapes(fn) == [(2, 3, 8, 8)] * 3
    assert fn.digest() == data.digest() is not None  # same arrays, same identity
    with pytest.raises(UserError, match="must return an iterable"):
        list(calibration_data(lambda: 3, model()))


def test_digests(tmp_path):
    x = rand(4, 3, 8, 8)
    m = model()
    assert calibration_data(x, m).digest() == calibration_data(x.copy(), m).digest()
    assert calibration_data(x, m).digest() != calibration_data(x + 1, m).digest()
    assert calibration_data(x, m).digest() != calibration_data(x, m, limit=2).digest()
    np.save(tmp_path / "x.npy", x)
    before = calibration_data(tmp_path, m).digest()
    assert calibration_data(tmp_path, m).digest() == before
    st = os.stat(tmp_path / "x.npy")
    os.utime(tmp_path / "x.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert calibration_data(tmp_path, m).digest() != before
    write_images(tmp_path / "imgs", 2)
    spec = calibration_data(tmp_path / "imgs", m, preprocess=ImageSpec(mean=0.5)).digest()
    assert spec != calibration_data(tmp_path / "imgs", m, preprocess=ImageSpec(mean=0.4)).digest()

    def prep(image, scale):
        return cv2.resize(image, (8, 8)).transpose(2, 0, 1).astype(np.float32) * scale

    one = calibration_data(tmp_path / "imgs", m, preprocess=functools.partial(prep, scale=1.0)).digest()
    assert one == calibration_data(tmp_path / "imgs", m, preprocess=functools.partial(prep, scale=1.0)).digest()
    assert one != calibration_data(tmp_path / "imgs", m, preprocess=functools.partial(prep, scale=2.0)).digest()
