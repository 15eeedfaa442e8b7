"""Conversion to ONNX with verification.

* :func:`from_torch` - an ``nn.Module``, ``ExportedProgram`` or TorchScript module;
* :func:`from_sklearn` - a fitted scikit-learn estimator or pipeline;
* :func:`from_file` - a file holding either (what ``slipway convert`` runs).

Each exports, verifies the ONNX model against the source framework in onnxruntime at two or
more batch sizes (see :mod:`slipway.verify`), records the errors in the model's
``metadata_props`` and only then writes it atomically; a failed verification raises
``VerificationError`` and writes nothing. Each returns a :class:`VerifiedModel` (``model``,
``report``, ``path``). torch, scikit-learn and skl2onnx are imported only when used.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slipway.convert.sklearn import from_sklearn
from slipway.convert.torch import DynamicDims, from_torch, input_names_of, quiet, require_torch
from slipway.errors import MissingDependencyError, UserError, one_line
from slipway.model import check_output
from slipway.verify import DEFAULT_BATCH_SIZES, VerifiedModel, VerifyReport
from slipway.verify.inputs import load_inputs, random_array

__all__ = ["from_torch", "from_sklearn", "from_file", "detect_format", "VerifiedModel", "VerifyReport", "FORMATS"]

FORMATS = {
    "exported_program": "torch.export ExportedProgram",
    "torchscript": "TorchScript module",
    "sklearn": "pickled scikit-learn estimator",
}
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib"}
_COMPRESSED = (b"\x1f\x8b", b"x\x01", b"x\x5e", b"x\x9c", b"x\xda", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00")
# Parts of a torch.export archive that torch loads with pickle (or as native code) rather than as raw tensors.
_PT2_CODE_DIR = "/data/aotinductor/"
_PT2_PICKLED_OBJECTS = ("custom_obj_", "opaque_obj_")


def untrusted_pickle(p: Path, what: str) -> UserError:
    """The one-line error for a file whose loading would run code from it."""
    return UserError(f"{p} {what}: loading it would run code from the file; if you trust where it comes from, "
                     "pass --trust-pickle (trust_pickle=True in Python)")


def detect_format(path: str | os.PathLike) -> str:
    """The kind of model file, told by its content: a key of :data:`FORMATS`.

    Raises ``UserError`` for a missing, empty or unreadable file, an ONNX model, a state dict
    or a whole pickled torch module (``torch.save``), and anything else.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"model file not found: {p}")
    if p.is_dir():
        raise UserError(f"expected a model file, got a directory: {p}")
    try:
        head = p.open("rb").read(8)
    except OSError as e:
        raise UserError(f"cannot read {p}: {e.strerror or e}") from None
    if not head:
        raise UserError(f"{p} is empty, not a model")
    if zipfile.is_zipfile(p):
        return _zip_format(p)
    if head.startswith(b"\x80") or (p.suffix in _PICKLE_SUFFIXES and head.startswith(_COMPRESSED)):
        return "sklearn"
    if head[:1] == b"\x08":
        raise UserError(f"{p} is already an ONNX model; see it with: slipway info {p}")
    raise UserError(f"{p} is not a model slipway can convert: expected a torch.export program (.pt2), "
                    "a TorchScript file (.pt) or a pickled scikit-learn estimator (.pkl/.joblib)")


def _zip_format(p: Path) -> str:
    try:
        names = zipfile.ZipFile(p).namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{p} is a damaged zip archive: {e}") from None
    if any(n.endswith("/archive_format") or (n.count("/") == 2 and "/models/" in n) for n in names):
        return "exported_program"
    if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/data.pkl") for n in names):
        _reject_torch_pickle(p)
    raise UserError(f"{p} is a zip archive but not a torch.export program or a TorchScript file")


def _reject_torch_pickle(p: Path) -> None:
    """A ``torch.save`` checkpoint: explain why it cannot be converted."""
    torch = require_torch()
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        raise UserError(f"{p} is a pickled Python object (torch.save of a whole module?); slipway converts "
                        "torch.export.save (.pt2) and torch.jit.save (.pt) files, or an nn.Module in Python "
                        "with slipway.convert.from_torch") from None
    what = "a state dict (weights only)" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise UserError(f"{p} holds {what}: a state dict has no graph to convert; load it into your nn.Module in "
                    "Python and call slipway.convert.from_torch(module, example_inputs), or save the model with "
                    "torch.export.save / torch.jit.save")


def from_file(
    path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    dtypes: Mapping[str, str] | None = None,
    dynamic_dims: DynamicDims | None = None,
    dim_sizes: Mapping[str, Sequence[int]] | None = None,
    sample: Any = None,
    opset: int | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seed: int = 0,
    trust_pickle: bool = False,
    data: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
) -> VerifiedModel:
    """Convert a model file (see :func:`detect_format`) to ONNX with verification.

    ``shapes`` give example input shapes (``{"x": [1, 3, 224, 224]}``): required for
    TorchScript, optional for an ExportedProgram (default: the inputs saved in it); for
    scikit-learn, the last number is the feature count. ``dtypes`` set TorchScript input dtypes
    (default float32). ``sample`` (an array or a ``.npy`` path) holds the rows a scikit-learn
    model is verified on; without it, random normal rows are used. ``data`` (a dict or an ``.npz``
    of arrays by input name, ``--data``) gives real inputs instead: a torch model's example inputs,
    a scikit-learn model's rows. The input file is never overwritten.

    Unpickling runs code from the file, so a pickle (a scikit-learn ``.pkl``/``.joblib``, or a
    ``.pt2`` whose weights, constants or example inputs need more than torch's weights-only
    loader) is refused unless ``trust_pickle=True``. TorchScript files load without Python pickle.
    """
    p = Path(path)
    fmt = detect_format(p)
    check_output(output_path, p, create_dirs=True)
    common = {"atol": atol, "rtol": rtol, "batch_sizes": batch_sizes, "opset": opset, "seed": seed}
    arrays = _data_arrays(data, shapes, sample)
    if fmt == "sklearn":
        if arrays is not None:
            if len(arrays) != 1:
                raise UserError(f"--data for a scikit-learn model holds one array of rows, got {sorted(arrays)}")
            sample = next(iter(arrays.values()))
        if dynamic_dims or dtypes:
            raise UserError("dynamic dims and dtypes do not apply to scikit-learn models (input X is float32 "
                            "[batch, n_features])")
        if not trust_pickle:
            raise untrusted_pickle(p, "is a Python pickle")
        estimator = _load_pickle(p)
        X = _sklearn_sample(estimator, shapes, sample, seed)
        result = from_sklearn(estimator, X, output_path, source=p.name, **common)
        if sample is None:
            result.report.notes.append("verified on random normal rows; give real rows (sample, --sample) "
                                       "for a check on the data the model sees")
        return result
    if sample is not None:
        raise UserError("a sample (--sample) applies to scikit-learn models only; torch models take --shape")
    torch = require_torch()
    model = _load_torch(p, fmt, torch, trust_pickle)
    args = _torch_inputs(p, model, fmt, shapes or {}, dtypes or {}, seed, torch, arrays)
    return from_torch(model, args, output_path, dynamic_dims=dynamic_dims, dim_sizes=dim_sizes,
                      source=p.name, **common)


def _load_torch(p: Path, fmt: str, torch: Any, trust_pickle: bool) -> Any:
    """Load a .pt2 (without pickle unless trusted) or a TorchScript file (its unpickler builds no Python objects)."""
    if fmt == "exported_program" and not trust_pickle:
        why = pt2_pickled_parts(p)
        if why:
            raise untrusted_pickle(p, why)
    try:
        with _weights_only(fmt == "exported_program" and not trust_pickle), quiet():
            if fmt == "exported_program":
                return torch.export.load(str(p))
            return torch.jit.load(str(p), map_location="cpu")
    except pickle.UnpicklingError:
        if trust_pickle:
            raise UserError(f"cannot load {p} as a {FORMATS[fmt]}: its pickled data is unreadable") from None
        raise untrusted_pickle(p, "holds pickled objects that are not plain tensors") from None
    except Exception as e:
        raise UserError(f"cannot load {p} as a {FORMATS[fmt]}: {one_line(e)}") from None


def pt2_pickled_parts(p: Path) -> str:
    """What in a torch.export archive torch would load with pickle or as native code ("" if nothing).

    Plain tensors are stored raw; pickle is used for tensor subclasses, script and opaque objects,
    and legacy ``.pt`` weight files (example inputs are read with the weights-only loader, forced on).
    """
    try:
        with zipfile.ZipFile(p) as z:
            names = ["/" + n for n in z.namelist()]
            configs = {n: z.read(n[1:]) for n in names if n.endswith("_config.json") and "/data/" in n}
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{p} is a damaged zip archive: {e}") from None
    if any(_PT2_CODE_DIR in n for n in names):
        return "holds compiled code (an AOTInductor package)"
    if any(("/data/weights/" in n or "/data/constants/" in n) and n.endswith(".pt") for n in names):
        return "stores its weights in the legacy pickled format"
    for name, raw in configs.items():
        try:
            entries = json.loads(raw).get("config", {}).values()
        except (ValueError, AttributeError):
            return f"has an unreadable payload config ({name})"
        for e in entries:
            if not isinstance(e, dict) or e.get("use_pickle") or str(e.get("path_name", "")).startswith(
                    _PT2_PICKLED_OBJECTS):
                return "stores pickled weights or objects (tensor subclasses, script objects)"
    return ""


@contextlib.contextmanager
def _weights_only(on: bool) -> Iterator[None]:
    """Make every ``torch.load`` weights-only (tensors and plain containers, no code), even where torch
    passes ``weights_only=False`` (its .pt2 loader does so for pickled payloads and as a fallback)."""
    if not on:
        yield
        return
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _data_arrays(data: Mapping[str, np.ndarray] | str | os.PathLike | None, shapes: Mapping | None,
                 sample: Any) -> dict[str, np.ndarray] | None:
    if data is None:
        return None
    if shapes or sample is not None:
        raise UserError("give either --data or --shape / --sample, not both (the data has its shapes)")
    return load_inputs(data)[0]


def _torch_inputs(p: Path, model: Any, fmt: str, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str],
                  seed: int, torch: Any, data: Mapping[str, np.ndarray] | None = None) -> tuple | None:
    """Example inputs: ``data`` by input name, else the program's own with any ``shapes`` replaced by
    random tensors."""
    kind = "ExportedProgram" if fmt == "exported_program" else "TorchScript"
    names = input_names_of(model, kind)
    if data is not None:
        missing, extra = [n for n in names if n not in data], sorted(set(data) - set(names))
        if missing or extra:
            raise UserError(f"--data must hold the model inputs {names}: "
                            + (f"{missing[0]!r} is missing" if missing else f"{extra[0]!r} is not an input"))
        return tuple(torch.from_numpy(np.ascontiguousarray(data[n])) for n in names)
    stored = None
    if fmt == "exported_program" and model.example_inputs is not None:
        stored = model.example_inputs[0]
    unknown = sorted(set(shapes) - set(names)) + sorted(set(dtypes) - set(names))
    if unknown:
        raise UserError(f"no model input named {unknown[0]!r}; the inputs are {names}")
    rng = np.random.default_rng(seed)
    args = []
    for i, name in enumerate(names):
        if name not in shapes:
            if stored is None:
                raise UserError(f"give the shape of input {name!r} with --shape {name}=D0,D1,... "
                                f"({p.name} keeps no example inputs)")
            args.append(stored[i])
            continue
        dtype = _torch_dtype(dtypes.get(name), stored[i].dtype if stored is not None else None, torch)
        args.append(_random_tensor(list(shapes[name]), dtype, rng, torch))
    return tuple(args)


def _torch_dtype(name: str | None, default: Any, torch: Any) -> Any:
    if name is None:
        return default if default is not None else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"unknown dtype {name!r} (for example float32, float16, int64, bool)")
    return dtype


def _random_tensor(shape: list[int], dtype: Any, rng: np.random.Generator, torch: Any) -> Any:
    """:func:`slipway.verify.inputs.random_array` drawn in a numpy dtype, then cast (torch has dtypes numpy lacks)."""
    if dtype == torch.bool:
        drawn = np.bool_
    else:
        drawn = np.float32 if dtype.is_floating_point else np.int64
    return torch.from_numpy(random_array(shape, drawn, rng)).to(dtype)


def _load_pickle(p: Path) -> Any:
    try:
        import joblib
    except ImportError:
        raise MissingDependencyError("joblib", "sklearn") from None
    try:
        obj = joblib.load(p)
    except Exception as e:
        raise UserError(f"cannot unpickle {p}: {type(e).__name__}: {str(e)[:200]}") from None
    if not (hasattr(obj, "fit") and hasattr(obj, "get_params")):
        raise UserError(f"{p} holds a {type(obj).__name__}, not a scikit-learn estimator or pipeline")
    return obj


def _sklearn_sample(estimator: Any, shapes: Mapping[str, Sequence[int]] | None, sample: Any, seed: int) -> np.ndarray:
    if sample is not None:
        if isinstance(sample, (str, os.PathLike)):
            try:
                sample = np.load(sample, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read the sample {sample}: {e}") from None
        return np.asarray(sample)
    dims = list(next(iter(shapes.values()))) if shapes else []
    features = dims[-1] if dims else getattr(estimator, "n_features_in_", None)
    if features is None:
        raise UserError("give the feature count with --shape X=N_FEATURES (the estimator does not record it)")
    rows = dims[0] if len(dims) >= 2 and dims[0] > 1 else 64
    return random_array((rows, features), np.float32, np.random.default_rng(seed))
