"""Calibration data: a folder of images, ``.npy``/``.npz`` files, arrays or a Python iterable,
turned into a stream of feed dicts checked against the model's inputs.

:func:`calibration_data` builds a :class:`CalibrationData` from any of:

* a folder of images (``.jpg .jpeg .png .bmp``, searched recursively, sorted) or one image,
  read with OpenCV (BGR, HWC, uint8) and pre-processed by an :class:`ImageSpec` (resize or
  letterbox, BGR→RGB, ``(pixel * scale - mean) / std``, NCHW/NHWC) or a callable
  ``f(image) -> sample``; batches of ``batch`` images, split where the shape changes (a function
  that keeps each image's aspect ratio gives samples of several shapes);
* a ``.npy`` file (one array for a single-input model, first axis = samples), an ``.npz`` file
  (keys = input names), or a folder of them; an array or a dict of arrays in memory. Samples
  are rows of the batch axis (grouped in batches of ``batch``); arrays of one rank more than the
  input are a stack of whole inputs, fed one by one. A ``.npy`` file is memory-mapped (read a
  batch at a time); an ``.npz`` file is read whole when its turn comes;
* an iterable of feed dicts (or of arrays, for a single-input model) fed as they are, or a
  callable returning one (called again for every pass).

A sample is a row of the batch dim (dim 0 of the first input, when it is dynamic or 1); a model
without one counts each feed as one sample. ``limit`` caps the samples; ``len()`` is the number
of samples when it is known without reading the data. :meth:`CalibrationData.digest` names the
data for the calibration cache: file names, sizes and mtimes, or a hash of in-memory arrays,
plus the pre-processing; ``None`` for a one-shot iterator, whose content cannot be known
without consuming it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from slipway.errors import UserError, one_line
from slipway.model import ModelLike, as_model
from slipway.ops.image import bgr_to_rgb, hwc_to_chw, letterbox, normalize
from slipway.ops.resize import resize
from slipway.verify.inputs import Feeds, InputSpec, input_specs

__all__ = ["ImageSpec", "CalibrationData", "calibration_data", "IMAGE_SUFFIXES", "ARRAY_SUFFIXES", "EMPTY"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
ARRAY_SUFFIXES = (".npy", ".npz")
DEFAULT_BATCH = 8
EMPTY = "calibration set is empty"


@dataclass(frozen=True)
class ImageSpec:
    """How an image (BGR, HWC, uint8 as OpenCV reads it) becomes one sample of the model input.

    ``size`` (H, W) and ``layout`` default to what the model input's static dims say. ``resize``
    is ``"stretch"`` (to exactly ``size``) or ``"letterbox"`` (keep the aspect, pad with 114).
    Float inputs get ``(pixel * scale - mean) / std`` per channel (in RGB order when ``rgb``);
    integer inputs get the raw pixels.
    """

    size: tuple[int, int] | None = None
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    scale: float = 1 / 255
    layout: str | None = None
    rgb: bool = True
    resize: str = "stretch"


class CalibrationData:
    """Feed dicts for one model, checked (names, rank, static dims, dtype) and limited.

    Iterate it for the feeds; every pass re-reads the source (except a one-shot iterator,
    which can be read once).
    """

    def __init__(self, specs: Sequence[InputSpec], make: Callable[[], Iterable[Any]], label: str, *,
                 total: int | None = None, identity: Callable[[], str | None] | None = None,
                 limit: int | None = None, one_shot: bool = False) -> None:
        self.specs = list(specs)
        self.label = label
        self.limit = limit
        self._make = make
        self._identity = identity
        self._digest: str | None | bool = False  # False: not computed yet
        self._one_shot = one_shot
        self._used = False
        self.total = total if limit is None or total is None else min(total, limit)
        if self.total == 0:
            raise UserError(f"{EMPTY}: {label} has no samples")
        first = self.specs[0]
        d0 = first.dims[0] if first.dims else None
        self.batch_dim = d0 if isinstance(d0, str) or d0 == 1 else None

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError(f"the number of samples in {self.label} is not known before reading it")
        return self.total

    def rows(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Samples in one feed dict: its batch size, or 1 for a model without a batch dim."""
        return int(feeds[self.specs[0].name].shape[0]) if self.batch_dim is not None else 1

    def __iter__(self) -> Iterator[Feeds]:
        if self._one_shot and self._used:
            raise UserError(f"{self.label} was already consumed; pass a list, or a function that returns a new iterator")
        self._used = True
        seen = 0
        for k, item in enumerate(self._make()):
            feeds = check_feeds(item, self.specs, f"{self.label}, item {k}")
            n = self.rows(feeds)
            if self.limit is not None and seen + n > self.limit and isinstance(self.batch_dim, str):
                feeds = self._cut(feeds, self.limit - seen)
                n = self.limit - seen
            seen += n
            yield feeds
            if self.limit is not None and seen >= self.limit:
                return  # before reading another item
        if seen == 0:
            raise UserError(f"{EMPTY}: {self.label} gave no samples")

    def _cut(self, feeds: Feeds, rows: int) -> Feeds:
        return {s.name: feeds[s.name][:rows] if s.dims and s.dims[0] == self.batch_dim else feeds[s.name]
                for s in self.specs}

    def digest(self) -> str | None:
        """A name of the data's identity (for the calibration cache); None when it cannot be known."""
        if self._digest is False:
            ident = self._identity() if self._identity is not None else None
            self._digest = None if ident is None else hashlib.sha256(
                f"{ident}|limit={self.limit}".encode()).hexdigest()[:16]
        return self._digest  # type: ignore[return-value]


def calibration_data(source: Any, model: ModelLike, *, preprocess: ImageSpec | Mapping | Callable | None = None,
                     batch: int = DEFAULT_BATCH, limit: int | None = None) -> CalibrationData:
    """Calibration feeds for ``model`` from a path, array(s), iterable or callable (see the module doc)."""
    if isinstance(source, CalibrationData):
        return source
    if not isinstance(batch, int) or batch < 1:
        raise UserError(f"calibration batch must be a positive integer, got {batch!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f"calibration limit must be a positive integer, got {limit!r}")
    specs = input_specs(as_model(model))
    if not specs:
        raise UserError("the model has no inputs to feed calibration data to")
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source), specs, preprocess, batch, limit)
    if preprocess is not None:
        raise UserError("preprocess applies to images only; arrays and iterables are fed as they are")
    if isinstance(source, np.ndarray):
        if len(specs) != 1:
            raise UserError(f"one array feeds a single-input model; this model has inputs {_names(specs)}: "
                            f"give a dict of arrays")
        return _from_arrays({specs[0].name: source}, specs, batch, limit, "calibration array")
    if isinstance(source, Mapping):
        return _from_arrays(dict(source), specs, batch, limit, "calibration arrays")
    if callable(source):
        return CalibrationData(specs, lambda: _call(source), "calibration function",
                               identity=lambda: _hash_items(_call(source), specs), limit=limit)
    if isinstance(source, Iterable):
        return _from_iterable(source, specs, limit)
    raise UserError(f"calibration data must be a folder, an image, a .npy/.npz file, an array, a dict of arrays, "
                    f"an iterable of feeds or a function returning one; got {type(source).__name__}")


def _names(specs: Sequence[InputSpec]) -> str:
    return ", ".join(s.name for s in specs)


def _shape_text(dims: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


# ---------------------------------------------------------------------------------- checks


def check_feeds(item: Any, specs: Sequence[InputSpec], where: str) -> Feeds:
    """One feed dict (or an array for a single-input model) checked and cast to the model's dtypes."""
    if isinstance(item, Mapping):
        given = dict(item)
    elif len(specs) == 1 and hasattr(item, "shape") and hasattr(item, "dtype"):
        given = {specs[0].name: item}
    else:
        expected = "a dict of input arrays" + (" or an array" if len(specs) == 1 else "")
        raise UserError(f"{where}: expected {expected}, got {type(item).__name__}")
    names = [s.name for s in specs]
    for key in given:
        if key not in names:
            raise UserError(f"{where}: {key!r} is not a model input (inputs: {', '.join(names)})")
    sizes: dict[str, int] = {}
    out: Feeds = {}
    for s in specs:
        if s.name not in given:
            raise UserError(f"{where}: no value for input {s.name!r} (the model's inputs: {', '.join(names)})")
        out[s.name] = _check_array(np.asarray(given[s.name]), s, where, sizes)
    return out


def _check_array(x: np.ndarray, spec: InputSpec, where: str, sizes: dict[str, int]) -> np.ndarray:
    want = _shape_text(spec.dims)
    if x.ndim != len(spec.dims):
        raise UserError(f"{where}: input {spec.name!r} expects rank {len(spec.dims)} {want}, got shape {list(x.shape)}")
    for axis, d in enumerate(spec.dims):
        n = int(x.shape[axis])
        if isinstance(d, int) and n != d:
            raise UserError(f"{where}: input {spec.name!r} expects shape {want}, got {list(x.shape)} (dim {axis})")
        if n == 0:
            raise UserError(f"{where}: input {spec.name!r} is empty (shape {list(x.shape)})")
        if isinstance(d, str) and sizes.setdefault(d, n) != n:
            raise UserError(f"{where}: dim {d!r} is {sizes[d]} in one input but {n} in {spec.name!r}")
    if x.dtype == spec.dtype:
        return x
    same = x.dtype.kind == spec.dtype.kind or (x.dtype.kind in "iu" and spec.dtype.kind in "iu")
    if not same:
        raise UserError(f"{where}: input {spec.name!r} has dtype {x.dtype}, the model expects {spec.dtype}")
    return x.astype(spec.dtype)


def _batch_rows(spec: InputSpec, batch: int) -> int | None:
    """Rows per feed when samples are rows of dim 0; None when dim 0 is not a batch dim."""
    d0 = spec.dims[0] if spec.dims else None
    return batch if isinstance(d0, str) else 1 if d0 == 1 else None


# ---------------------------------------------------------------------------------- arrays


def _mode(shapes: Mapping[str, tuple[int, ...]], specs: Sequence[InputSpec], label: str) -> str:
    """``"stack"`` (a first axis of whole inputs), ``"rows"`` (samples are rows of the batch dim) or
    ``"whole"`` (the inputs share no batch dim - a scalar, a state batched on axis 1 - so the arrays are
    one feed dict, as given)."""
    rank = {s.name: len(s.dims) for s in specs}
    if all(len(shapes[n]) == rank[n] + 1 for n in rank):
        mode = "stack"
    elif all(len(shapes[n]) == rank[n] for n in rank) and all(_batch_rows(s, 1) for s in specs):
        mode = "rows"
    elif all(len(shapes[n]) == rank[n] for n in rank):
        return "whole"
    else:
        s = next((s for s in specs if len(shapes[s.name]) != len(s.dims)), specs[0])
        raise UserError(f"{label}: input {s.name!r} expects samples of shape {_shape_text(s.dims)} along a first "
                        f"axis, got shape {list(shapes[s.name])}")
    counts = {n: shapes[n][0] for n in rank}
    if len(set(counts.values())) > 1:
        raise UserError(f"{label}: the inputs have different numbers of samples: "
                        + ", ".join(f"{n} has {c}" for n, c in counts.items()))
    return mode


def _samples(shapes: Mapping[str, tuple[int, ...]], specs: Sequence[InputSpec], mode: str) -> int:
    if mode == "whole":
        return 1
    first = shapes[specs[0].name]
    if mode == "rows" or not specs[0].dims:
        return int(first[0])
    d0 = specs[0].dims[0]
    return int(first[0]) * (int(first[1]) if isinstance(d0, str) or d0 == 1 else 1)


def _split(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], mode: str, batch: int) -> Iterator[Feeds]:
    if mode == "whole":
        yield {k: np.asarray(a) for k, a in arrays.items()}
        return
    n = int(arrays[specs[0].name].shape[0])
    step = (_batch_rows(specs[0], batch) or 1) if mode == "rows" else 1
    for start in range(0, n, step):
        if mode == "rows":
            yield {k: np.ascontiguousarray(a[start : start + step]) for k, a in arrays.items()}
        else:
            yield {k: np.asarray(a[start]) for k, a in arrays.items()}


def _check_keys(keys: Iterable[str], specs: Sequence[InputSpec], label: str) -> None:
    names = [s.name for s in specs]
    for k in keys:
        if k not in names:
            raise UserError(f"{label}: {k!r} is not a model input (inputs: {', '.join(names)})")
    for n in names:
        if n not in keys:
            raise UserError(f"{label}: no array for input {n!r} (the model's inputs: {', '.join(names)})")


def _from_arrays(arrays: dict[str, Any], specs: Sequence[InputSpec], batch: int, limit: int | None,
                 label: str) -> CalibrationData:
    arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
    _check_keys(list(arrays), specs, label)
    shapes = {k: a.shape for k, a in arrays.items()}
    mode = _mode(shapes, specs, label)
    return CalibrationData(specs, lambda: _split(arrays, specs, mode, batch), label,
                           total=_samples(shapes, specs, mode), identity=lambda: _hash_arrays(arrays), limit=limit)


def _hash_arrays(arrays: Mapping[str, np.ndarray], h: Any = None) -> str:
    h = h or hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _file_shapes(path: Path, specs: Sequence[InputSpec]) -> dict[str, tuple[int, ...]]:
    """Array shapes from the .npy headers, without reading the data."""
    try:
        if path.suffix.lower() == ".npy":
            if len(specs) != 1:
                raise UserError(f"{path}: a .npy file holds one array, but the model has inputs {_names(specs)}; "
                                f"save an .npz with one array per input")
            with path.open("rb") as f:
                return {specs[0].name: _npy_header(f)}
        with zipfile.ZipFile(path) as z:
            shapes = {}
            for member in z.namelist():
                if member.endswith(".npy"):
                    with z.open(member) as f:
                        shapes[member[:-4]] = _npy_header(f)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read calibration data {path}: {one_line(e)}") from None
    _check_keys(list(shapes), specs, str(path))
    return shapes


def _npy_header(f: Any) -> tuple[int, ...]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return tuple(read(f)[0])


def _read_file(path: Path, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    try:
        if path.suffix.lower() == ".npy":
            return {specs[0].name: np.load(path, mmap_mode="r", allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read calibration data {path}: {one_line(e)}") from None


def _from_files(files: list[Path], specs: Sequence[InputSpec], batch: int, limit: int | None,
                label: str) -> CalibrationData:
    modes = []
    total = 0
    for f in files:
        shapes = _file_shapes(f, specs)
        modes.append(_mode(shapes, specs, str(f)))
        total += _samples(shapes, specs, modes[-1])

    def make() -> Iterator[Feeds]:
        for f, mode in zip(files, modes, strict=True):
            yield from _split(_read_file(f, specs), specs, mode, batch)

    return CalibrationData(specs, make, label, total=total, identity=lambda: _files_identity(files), limit=limit)


def _files_identity(files: Sequence[Path]) -> str:
    parts = []
    for f in files:
        st = f.stat()
        parts.append(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


def _from_path(p: Path, specs: Sequence[InputSpec], preprocess: Any, batch: int, limit: int | None) -> CalibrationData:
    if not p.exists():
        raise UserError(f"calibration data not found: {p}")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        arrays = [f for f in files if f.suffix.lower() in ARRAY_SUFFIXES]
        if images and arrays:
            raise UserError(f"{p} holds both images and .npy/.npz files; keep one kind of calibration data per folder")
        if not images and not arrays:
            raise UserError(f"{EMPTY}: {p} has no {'/'.join(IMAGE_SUFFIXES + ARRAY_SUFFIXES)} files")
    else:
        suffix = p.suffix.lower()
        if suffix not in IMAGE_SUFFIXES + ARRAY_SUFFIXES:
            raise UserError(f"{p}: calibration data must be a folder, an image or a .npy/.npz file")
        images, arrays = ([p], []) if suffix in IMAGE_SUFFIXES else ([], [p])
    if arrays:
        if preprocess is not None:
            raise UserError("preprocess applies to images only; .npy/.npz arrays are fed as they are")
        return _from_files(arrays, specs, batch, limit, str(p))
    return _from_images(images, specs, preprocess, batch, limit, str(p))


# ---------------------------------------------------------------------------------- images


def _from_images(files: list[Path], specs: Sequence[InputSpec], preprocess: Any, batch: int, limit: int | None,
                 label: str) -> CalibrationData:
    if len(specs) != 1:
        raise UserError(f"images feed a single-input model; this model has inputs {_names(specs)}")
    spec = specs[0]
    fn, ident, gray = _image_fn(spec, preprocess)
    step = _batch_rows(spec, batch)

    def make() -> Iterator[np.ndarray]:
        for start in range(0, len(files), step or 1):
            samples = [_image_sample(fn, f, spec, gray, step is not None) for f in files[start : start + (step or 1)]]
            yield from _stacks(samples) if step else samples[:1]

    return CalibrationData(specs, make, label, total=len(files), identity=lambda: _files_identity(files) + ident,
                           limit=limit)


def _stacks(samples: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Consecutive samples of one shape stacked into a batch (a pre-processing that keeps each image's aspect
    ratio gives samples of several shapes), in order."""
    start = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or samples[i].shape != samples[start].shape:
            yield np.stack(samples[start:i])
            start = i


def _image_sample(fn: Callable[[np.ndarray], Any], path: Path, spec: InputSpec, gray: bool, batched: bool) -> np.ndarray:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserError(f"cannot read image {path}: {one_line(e)}") from None
    image = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR) if raw.size else None
    if image is None:
        raise UserError(f"cannot read image {path}: not a valid image file")
    if gray:
        image = image[..., None]
    x = np.asarray(fn(image))
    rank = len(spec.dims) - (1 if batched else 0)
    if batched and x.ndim == rank + 1 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != rank:
        per = _shape_text(spec.dims[1:] if batched else spec.dims)
        raise UserError(f"pre-processing {path.name} gave shape {list(x.shape)}; input {spec.name!r} takes {per} per image")
    return x


def _image_fn(spec: InputSpec, preprocess: Any) -> tuple[Callable[[np.ndarray], Any], str, bool]:
    """The per-image function, its identity for the digest, and whether to read images as grayscale."""
    if callable(preprocess) and not isinstance(preprocess, ImageSpec):
        return preprocess, "|fn:" + _callable_identity(preprocess), False
    if preprocess is None:
        preprocess = ImageSpec()
    elif isinstance(preprocess, Mapping):
        try:
            preprocess = ImageSpec(**preprocess)
        except TypeError as e:
            raise UserError(f"image pre-processing: {one_line(e)}") from None
    if not isinstance(preprocess, ImageSpec):
        raise UserError(f"preprocess must be an ImageSpec, a dict of its fields or a function, "
                        f"got {type(preprocess).__name__}")
    layout, size, channels = _image_geometry(spec, preprocess)
    p = preprocess
    floats = spec.dtype.kind == "f"

    def fn(image: np.ndarray) -> np.ndarray:
        x = letterbox(image, size)[0] if p.resize == "letterbox" else resize(image, size, "cv2_linear")
        if x.ndim == 2:
            x = x[..., None]
        if channels == 3 and p.rgb:
            x = bgr_to_rgb(x)
        x = normalize(x, p.mean, p.std, p.scale) if floats else x
        return hwc_to_chw(x) if layout == "NCHW" else x

    return fn, f"|spec:{p!r}:{layout}:{size}", channels == 1


def _image_geometry(spec: InputSpec, p: ImageSpec) -> tuple[str, tuple[int, int], int]:
    if p.resize not in ("stretch", "letterbox"):
        raise UserError(f"image resize must be 'stretch' or 'letterbox', got {p.resize!r}")
    dims = spec.dims[1:] if _batch_rows(spec, 1) else spec.dims
    if len(dims) != 3:
        raise UserError(f"input {spec.name!r} {_shape_text(spec.dims)} is not an image input (expected N,C,H,W or N,H,W,C)")
    layout = p.layout
    if layout is None:
        layout = "NCHW" if dims[0] in (1, 3) else "NHWC" if dims[2] in (1, 3) else None
        if layout is None:
            raise UserError(f"cannot tell the layout of input {spec.name!r} {_shape_text(spec.dims)}; give layout NCHW or NHWC")
    if layout not in ("NCHW", "NHWC"):
        raise UserError(f"image layout must be 'NCHW' or 'NHWC', got {layout!r}")
    c, h, w = (dims[0], dims[1], dims[2]) if layout == "NCHW" else (dims[2], dims[0], dims[1])
    if c not in (1, 3):
        raise UserError(f"input {spec.name!r} {_shape_text(spec.dims)} has {c} channels in {layout}; images give 1 or 3")
    size = p.size
    if size is None:
        if not (isinstance(h, int) and isinstance(w, int)):
            raise UserError(f"input {spec.name!r} {_shape_text(spec.dims)} has a dynamic height or width; give the image size")
        size = (h, w)
    return layout, (int(size[0]), int(size[1])), int(c)


def _callable_identity(fn: Any) -> str:
    """Best-effort identity of a function: name, code, constants, defaults and captured values."""
    if isinstance(fn, functools.partial):
        parts = [_callable_identity(fn.func), repr(fn.args), repr(sorted(fn.keywords.items()))]
    else:
        code = getattr(fn, "__code__", None)
        parts = [getattr(fn, "__module__", "") or "", getattr(fn, "__qualname__", type(fn).__name__)]
        if code is None:
            parts.append(repr(getattr(fn, "__dict__", fn)))
        else:
            parts += [code.co_code.hex(), repr(code.co_consts), repr(getattr(fn, "__defaults__", None))]
            parts += [repr(c.cell_contents) for c in (fn.__closure__ or ()) if _has_contents(c)]
    return hashlib.sha256(re.sub(r" at 0x[0-9a-fA-F]+", "", "|".join(parts)).encode()).hexdigest()


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------- iterables


def _call(fn: Callable[[], Any]) -> Iterable[Any]:
    items = fn()
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes)):
        raise UserError(f"the calibration function must return an iterable of feeds, got {type(items).__name__}")
    return items


def _hash_items(items: Iterable[Any], specs: Sequence[InputSpec]) -> str:
    h = hashlib.sha256()
    for k, item in enumerate(items):
        _hash_arrays(check_feeds(item, specs, f"calibration item {k}"), h)
    return h.hexdigest()


def _from_iterable(items: Iterable[Any], specs: Sequence[InputSpec], limit: int | None) -> CalibrationData:
    one_shot = iter(items) is items
    label = "calibration iterator" if one_shot else "calibration items"
    total = None
    if isinstance(items, (list, tuple)):
        if not items:
            raise UserError(f"{EMPTY}: the list of calibration feeds is empty")
        rows = _batch_rows(specs[0], 1)
        first = specs[0].name
        total = sum(_item_rows(x, first) if rows else 1 for x in items)
    identity = None if one_shot else (lambda: _hash_items(items, specs))
    return CalibrationData(specs, lambda: items, label, total=total, identity=identity, limit=limit,
                           one_shot=one_shot)


def _item_rows(item: Any, first: str) -> int:
    x = item.get(first) if isinstance(item, Mapping) else item
    shape = getattr(x, "shape", None)
    return int(shape[0]) if shape else 1
