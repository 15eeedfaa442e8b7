"""Bundles: a pipeline, every model it uses and golden inputs / outputs, in one folder or .zip.

:func:`bundle` writes::

    app/
      manifest.json        SHA-256 of every other file, slipway + engine versions, each model's
                           verification record (its ``slipway.*`` metadata), golden cases, tolerances
      pipeline.yaml        the pipeline, model paths (steps and op params) relative: models/...
      models/NAME.onnx     copies of every model (model steps and op params naming an .onnx file),
      models/NAME.tune.json  with the tuned settings beside them when the source had them
      golden/NAME.npz      one case per golden input: inputs and the outputs the pipeline gave

atomically (a temporary folder beside the target, renamed into place), never over an existing
path without ``force``. :func:`load_bundle` checks every hash (a changed, missing or extra file is
a one-line :class:`~slipway.errors.UserError` naming it, before anything runs), loads the pipeline
and runs the golden cases on the chosen engine (a mismatch names the output and the difference).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import weakref
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from slipway.errors import UserError, WriteError, one_line

__all__ = ["BUNDLE_FORMAT", "MANIFEST", "PIPELINE_FILE", "bundle", "load_bundle", "check_bundle"]

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
PIPELINE_FILE = "pipeline.yaml"
RTOL = 1e-3
ATOL = 1e-3


class BundleError(UserError):
    """A bundle that cannot be written, was changed, or fails its golden self-test."""


# ---------------------------------------------------------------------------------- writing


def bundle(pipeline: Any, output: str | os.PathLike, *, golden: Sequence[Any] = (), zip: bool = False,
           force: bool = False, rtol: float = RTOL, atol: float = ATOL, allow_python: bool = False) -> Path:
    """Write ``pipeline`` (a :class:`~slipway.pipeline.Pipeline` or a YAML file) as a bundle at ``output``.

    ``golden``: image files (read with OpenCV, BGR) or arrays fed to the pipeline's single input,
    or mappings of input name -> value; the pipeline runs on each now and its outputs are stored
    as expected values, compared later within ``rtol`` / ``atol`` (floats; ints and strings exact).
    ``zip=True`` writes one .zip file (``output`` gets the suffix when it lacks it). Returns the path.
    """
    from slipway.pipeline import Pipeline

    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline.from_file(pipeline, allow_python=allow_python)
    if rtol < 0 or atol < 0:
        raise BundleError(f"tolerances must be non-negative, got rtol={rtol}, atol={atol}")
    out = Path(output)
    if zip and out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    models = _models(pipeline)
    check_target(out, force, [m["source"] for m in models])
    feeds = [golden_feeds(pipeline, g, i) for i, g in enumerate(golden)]

    with staged(out, _zip_into if zip else move_into) as tmp:
        _fill(tmp, pipeline, models, feeds, golden, rtol, atol)
    return out


@contextmanager
def staged(out: Path, finish: Callable[[Path, Path], None] | None = None) -> Iterator[Path]:
    """A temporary folder beside ``out`` for the caller to fill, then ``finish(tmp, out)`` (default
    :func:`move_into`: the folder replaces ``out`` in one rename): ``out`` appears whole or not at all. An
    OSError is a one-line WriteError naming ``out``; the temporary folder is always removed."""
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as e:
        raise WriteError(f"cannot write {out}: {one_line(e)}") from e
    try:
        yield tmp
        (finish or move_into)(tmp, out)
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise WriteError(f"cannot write {out}: {one_line(e)}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_target(out: Path, force: bool, sources: list[Path]) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise BundleError(f"{out} already exists; pass force=True (--force) to replace it")
    resolved = out.resolve()
    for src in sources:
        if src == resolved or resolved in src.parents:
            raise BundleError(f"refusing to replace {out}: it holds {src}, which the pipeline uses")


def _models(pipeline: Any) -> list[dict[str, Any]]:
    """Every model file the pipeline uses: ``{"source", "file", "uses": [(step, param | None)]}``."""
    found: dict[Path, dict[str, Any]] = {}
    taken: set[str] = set()

    def add(path: Path, step: str, param: str | None) -> None:
        src = path.resolve()
        entry = found.get(src)
        if entry is None:
            name = src.name
            stem, suffix = (name[: -len(src.suffix)], src.suffix) if src.suffix else (name, "")
            k = 2
            while name.lower() in taken:
                name = f"{stem}_{k}{suffix}"
                k += 1
            taken.add(name.lower())
            entry = found[src] = {"source": src, "file": f"models/{name}", "uses": []}
        entry["uses"].append((step, param))

    for step in pipeline.steps:
        if step.kind == "model":
            add(pipeline.files()[(step.name, None)], step.name, None)
        else:
            for key, value in step.params.items():
                for path, where in _param_paths(value, key, pipeline.base):
                    add(path, step.name, where)
    return list(found.values())


def _param_paths(value: Any, where: str, base: Path | None) -> list[tuple[Path, str]]:
    """``(file, param path)`` for every string in a param that names an existing .onnx file."""
    if isinstance(value, str | os.PathLike):
        p = _as_model_path(value, base)
        return [(p, where)] if p is not None else []
    if isinstance(value, Mapping):
        return [x for k, v in value.items() for x in _param_paths(v, f"{where}.{k}", base)]
    if isinstance(value, list | tuple):
        return [x for i, v in enumerate(value) for x in _param_paths(v, f"{where}[{i}]", base)]
    return []


def _as_model_path(value: str | os.PathLike, base: Path | None) -> Path | None:
    text = os.fspath(value)
    if not text.lower().endswith(".onnx") or "\n" in text:
        return None
    p = Path(text)
    candidates = [p] if p.is_absolute() else ([base / p] if base is not None else []) + [p]
    return next((c for c in candidates if c.is_file()), None)


def external_files(path: Path) -> list[str]:
    """Relative locations of the external-data files an ONNX model reads."""
    if path.suffix.lower() != ".onnx":
        return []
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    m = onnx.load(str(path), load_external_data=False)
    locs = {e.value for t in _get_all_tensors(m) if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"}
    return sorted(locs)


def _verification(path: Path) -> dict[str, str]:
    if path.suffix.lower() != ".onnx":
        return {}
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props if p.key.startswith("slipway.")}


def _fill(root: Path, pipeline: Any, models: list[dict[str, Any]], feeds: list[dict[str, Any]],
          golden: Sequence[Any], rtol: float, atol: float) -> None:
    import yaml

    from slipway.settings import settings_path

    (root / "models").mkdir()
    model_records: dict[str, Any] = {}
    data_files: set[str] = set()
    for m in models:
        src: Path = m["source"]
        dst = root / m["file"]
        shutil.copy2(src, dst)
        for loc in external_files(src):
            rel = PurePosixPath("models") / PurePosixPath(loc)
            if ".." in rel.parts or PurePosixPath(loc).is_absolute() or str(rel) in data_files:
                raise BundleError(f"{src}: external data {loc!r} cannot be bundled (outside the model's folder "
                                  "or shared with another model)")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src.parent / loc, root / rel)
            data_files.add(str(rel))
        settings = settings_path(src)
        settings_file = None
        if settings.is_file():
            settings_file = settings_path(PurePosixPath(m["file"])).as_posix()
            shutil.copy2(settings, root / settings_file)
        model_records[m["file"]] = {
            "source": src.name,
            "used_by": [{"step": s, "param": p} if p else {"step": s} for s, p in m["uses"]],
            "settings": settings_file,
            "verification": _verification(src),
        }

    # the pipeline file, every model path pointing at the copy
    data = pipeline.to_dict(root)
    by_step: dict[str, dict[str, str]] = {}
    for m in models:
        for s, p in m["uses"]:
            by_step.setdefault(s, {})[p or ""] = m["file"]
    for d in data["steps"]:
        renames = by_step.get(d["name"], {})
        if "model" in d:
            d["model"] = renames[""]
        elif renames and "params" in d:
            d["params"] = {k: _rewrite(v, k, renames) for k, v in d["params"].items()}
    (root / PIPELINE_FILE).write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None),
                                      encoding="utf-8")

    cases = []
    if feeds:
        (root / "golden").mkdir()
        names: set[str] = set()
        for i, (feed, g) in enumerate(zip(feeds, golden, strict=True)):
            stem = Path(os.fspath(g)).stem if isinstance(g, str | os.PathLike) else f"case{i}"
            name, k = stem, 2
            while name in names:
                name, k = f"{stem}_{k}", k + 1
            names.add(name)
            try:
                outputs = pipeline.run(feed).outputs
            except UserError as e:
                raise BundleError(f"golden input {i} ({stem}): {one_line(e)}") from e
            arrays: dict[str, np.ndarray] = {}
            tree = {"inputs": _pack(feed, arrays, "inputs"), "outputs": _pack(outputs, arrays, "outputs")}
            arrays["__tree__"] = np.array(json.dumps(tree))
            rel = f"golden/{name}.npz"
            with open(root / rel, "wb") as f:
                np.savez_compressed(f, **arrays)
            cases.append({"file": rel, "source": stem, "inputs": list(feed), "outputs": list(outputs)})

    files = {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {
        "format": "slipway.bundle",
        "version": BUNDLE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pipeline": PIPELINE_FILE,
        "name": pipeline.name,
        "versions": _versions(),
        "files": files,
        "models": model_records,
        "golden": cases,
        "tolerance": {"rtol": float(rtol), "atol": float(atol), "exact": "ints, bools, strings"},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _rewrite(value: Any, where: str, renames: Mapping[str, str]) -> Any:
    if where in renames:
        return renames[where]
    if isinstance(value, Mapping):
        return {k: _rewrite(v, f"{where}.{k}", renames) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, f"{where}[{i}]", renames) for i, v in enumerate(value)]
    return value


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import slipway

    out = {"slipway": slipway.__version__}
    for dist in ("onnx", "onnxruntime", "openvino"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def golden_feeds(pipeline: Any, g: Any, i: int) -> dict[str, Any]:
    """The feeds of golden input ``i``: a mapping as it is, else an image (file or array) for the one input."""
    if isinstance(g, Mapping):
        return dict(g)
    if len(pipeline.inputs) != 1:
        raise BundleError(f"golden input {i}: the pipeline takes {len(pipeline.inputs)} inputs "
                          f"({', '.join(pipeline.inputs)}); pass a mapping of input name -> value")
    if isinstance(g, str | os.PathLike):
        import cv2

        path = Path(g)
        if not path.is_file():
            raise BundleError(f"golden image not found: {path}")
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise BundleError(f"golden image {path}: OpenCV cannot read it")
        g = img
    return {pipeline.inputs[0]: g}


def move_into(tmp: Path, out: Path) -> None:
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.rename(out, old / "x")
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / "x", out)
        raise
    finally:
        if (old / "x").exists() and out.exists():
            if (old / "x").is_dir() and not (old / "x").is_symlink():
                shutil.rmtree(old / "x", ignore_errors=True)
            else:
                (old / "x").unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)


def _zip_into(root: Path, out: Path) -> None:
    if out.is_dir() and not out.is_symlink():
        raise BundleError(f"{out} is a directory; the .zip bundle needs a file path")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(root).as_posix())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------- golden values


def _pack(value: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """A JSON skeleton of ``value``; its arrays and scalars go to ``arrays`` (no pickles)."""
    if value is None:
        return {"none": True}
    if isinstance(value, Mapping):
        return {"dict": {str(k): _pack(v, arrays, f"{where}.{k}") for k, v in value.items()}}
    if isinstance(value, list | tuple):
        if value and _numeric_nested(value):
            arr = np.asarray(value)
            if arr.dtype != object:
                return _leaf(arr, arrays, "list")
        return {"list": [_pack(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    arr = np.asarray(value)
    if arr.dtype == object:
        raise BundleError(f"golden {where}: a {type(value).__name__} cannot be stored (not an array, number, "
                          "string, list or dict)")
    return _leaf(arr, arrays, "scalar" if not isinstance(value, np.ndarray) else "array")


def _numeric_nested(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_numeric_nested(v) for v in value)
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _leaf(arr: np.ndarray, arrays: dict[str, np.ndarray], kind: str) -> dict[str, str]:
    key = f"a{len(arrays)}"
    arrays[key] = arr
    return {kind: key}


def _compare(skel: Any, actual: Any, arrays: Mapping[str, np.ndarray], where: str, rtol: float,
             atol: float) -> str | None:
    """The first difference between the stored value and ``actual``, as ``'where': why``; None when equal."""
    if "none" in skel:
        return None if actual is None else f"{where!r}: expected None, got {type(actual).__name__}"
    if "dict" in skel:
        if not isinstance(actual, Mapping):
            return f"{where!r}: expected a dict, got {type(actual).__name__}"
        want, got = set(skel["dict"]), {str(k) for k in actual}
        if want != got:
            return f"{where!r}: keys differ (missing {sorted(want - got)}, unexpected {sorted(got - want)})"
        byname = {str(k): v for k, v in actual.items()}
        for k, s in skel["dict"].items():
            why = _compare(s, byname[k], arrays, f"{where}.{k}" if where else k, rtol, atol)
            if why:
                return why
        return None
    if "list" in skel and isinstance(skel["list"], list):
        if not isinstance(actual, list | tuple):
            return f"{where!r}: expected a list, got {type(actual).__name__}"
        if len(actual) != len(skel["list"]):
            return f"{where!r}: {len(actual)} items, expected {len(skel['list'])}"
        for i, (s, a) in enumerate(zip(skel["list"], actual, strict=True)):
            why = _compare(s, a, arrays, f"{where}[{i}]", rtol, atol)
            if why:
                return why
        return None
    want = arrays[next(iter(skel.values()))]
    try:
        got = np.asarray(actual)
    except Exception:  # noqa: BLE001 - a ragged value is simply a mismatch
        return f"{where!r}: expected an array {want.dtype}{list(want.shape)}, got {type(actual).__name__}"
    if got.shape != want.shape:
        return f"{where!r}: shape {list(got.shape)}, expected {list(want.shape)}"
    if want.dtype.kind in "USO" or got.dtype.kind in "USO":
        if want.dtype.kind != got.dtype.kind or not np.array_equal(got, want):
            bad = _first_bad(got != want if want.dtype.kind == got.dtype.kind else np.ones(want.shape, bool))
            return f"{where!r}: expected {want[bad].item()!r}, got {got[bad].item()!r}" + (f" at {list(bad)}" if bad else "")
        return None
    if want.dtype.kind in "fc" or got.dtype.kind in "fc":
        w, g = want.astype(np.float64), got.astype(np.float64)
        ok = np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
        if not ok.all():
            diff = np.abs(g - w)
            diff[np.isnan(diff)] = np.inf
            bad = _first_bad(~ok)
            return (f"{where!r}: max abs difference {float(diff.max()):.4g} (rtol {rtol:g}, atol {atol:g}; "
                    f"{int((~ok).sum())} of {ok.size} values; expected {w[bad]:.6g}, got {g[bad]:.6g}"
                    + (f" at {list(bad)})" if bad else ")"))
        return None
    if not np.array_equal(got, want):
        bad = _first_bad(got != want)
        return (f"{where!r}: {int((got != want).sum())} of {want.size} values differ (exact); expected {want[bad].item()}, "
                f"got {got[bad].item()}" + (f" at {list(bad)}" if bad else ""))
    return None


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    idx = np.argwhere(np.asarray(mask))
    return tuple(int(i) for i in idx[0]) if idx.size else ()


def _unpack(skel: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if "none" in skel:
        return None
    if "dict" in skel:
        return {k: _unpack(v, arrays) for k, v in skel["dict"].items()}
    if "list" in skel and isinstance(skel["list"], list):
        return [_unpack(v, arrays) for v in skel["list"]]
    kind, key = next(iter(skel.items()))
    a = arrays[key]
    if kind == "list":
        return a.tolist()
    if kind == "scalar":
        return a.item() if a.dtype.kind not in "US" else str(a)
    return a


# ---------------------------------------------------------------------------------- reading


def check_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """Check every hash of the bundle folder ``path`` against its manifest; return the manifest."""
    root = Path(path)
    manifest = _read_manifest(root, (root / MANIFEST) if root.is_dir() else None)
    files: dict[str, str] = manifest["files"]
    for rel in sorted(files):
        p = root / rel
        if not p.is_file():
            raise BundleError(f"bundle {root}: file {rel} is missing")
    present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    for rel in present:
        if rel != MANIFEST and rel not in files:
            raise BundleError(f"bundle {root}: unexpected file {rel} (not in the manifest)")
    for rel, want in sorted(files.items()):
        if _sha256(root / rel) != want:
            raise BundleError(f"bundle {root}: file {rel} was changed (SHA-256 differs from the manifest)")
    return manifest


def _read_manifest(label: Path, path: Path | None, text: bytes | None = None) -> dict[str, Any]:
    try:
        if text is None:
            if path is None or not path.is_file():
                raise BundleError(f"not a slipway bundle: {label} (no {MANIFEST})")
            text = path.read_bytes()
        manifest = json.loads(text)
    except ValueError as e:
        raise BundleError(f"bundle {label}: {MANIFEST} is not valid JSON: {one_line(e)}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != "slipway.bundle":
        raise BundleError(f"not a slipway bundle: {label} ({MANIFEST} has no format 'slipway.bundle')")
    if manifest.get("version") != BUNDLE_FORMAT:
        raise BundleError(f"bundle {label}: unsupported version {manifest.get('version')!r} "
                          f"(this slipway reads {BUNDLE_FORMAT})")
    files = manifest.get("files")
    if not isinstance(files, dict) or PIPELINE_FILE not in files:
        raise BundleError(f"bundle {label}: {MANIFEST} lists no files (or not {PIPELINE_FILE})")
    for rel in files:
        pp = PurePosixPath(rel)
        if pp.is_absolute() or ".." in pp.parts or rel == MANIFEST:
            raise BundleError(f"bundle {label}: bad file name in {MANIFEST}: {rel!r}")
    return manifest


def load_bundle(path: str | os.PathLike, *, backend: str = "ort", self_test: bool = True,
                allow_python: bool = False) -> Any:
    """The :class:`~slipway.pipeline.Pipeline` of the bundle at ``path`` (a folder or a .zip).

    Every file's SHA-256 is checked against the manifest first: a changed, missing or extra file
    is a one-line :class:`UserError` naming it, and nothing runs. Every model (steps and ops) then
    runs on ``backend``; with ``self_test`` each golden case runs and must match its stored
    outputs within the manifest's tolerances (a mismatch names the output and the difference).
    A .zip is extracted to a temporary folder that lives as long as the returned pipeline.
    """
    src = Path(path)
    if not src.exists():
        raise BundleError(f"bundle not found: {src}")
    tmp: Path | None = None
    if src.is_dir():
        root = src
    else:
        tmp = _extract(src)
        root = tmp
    try:
        pipeline = _load(root, src, backend, self_test, allow_python)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tmp is not None:
        weakref.finalize(pipeline, shutil.rmtree, str(tmp), True)
    return pipeline


def _extract(src: Path) -> Path:
    try:
        z = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as e:
        raise BundleError(f"bundle {src}: not a folder or a readable .zip: {one_line(e)}") from e
    with z:
        names = [i.filename for i in z.infolist() if not i.is_dir()]
        if MANIFEST not in names:
            raise BundleError(f"not a slipway bundle: {src} (no {MANIFEST})")
        manifest = _read_manifest(src, None, z.read(MANIFEST))
        files = manifest["files"]
        for rel in sorted(files):
            if rel not in names:
                raise BundleError(f"bundle {src}: file {rel} is missing")
        for rel in names:
            if rel != MANIFEST and rel not in files:
                raise BundleError(f"bundle {src}: unexpected file {rel} (not in the manifest)")
        tmp = Path(tempfile.mkdtemp(prefix="slipway-bundle-"))
        try:
            for rel in names:  # every name is a manifest file (checked: relative, no '..') or the manifest
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                with z.open(rel) as fin, open(dst, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return tmp


def _load(root: Path, label: Path, backend: str, self_test: bool, allow_python: bool) -> Any:
    import yaml

    from slipway.pipeline import OPS, Pipeline

    try:
        manifest = check_bundle(root)
    except BundleError as e:
        raise BundleError(str(e).replace(str(root), str(label), 1)) from None
    data = yaml.safe_load((root / PIPELINE_FILE).read_text(encoding="utf-8"))
    bundled = {rel: str((root / rel).resolve()) for rel in manifest.get("models", {})}
    if isinstance(data, dict) and isinstance(data.get("steps"), list):
        for d in data["steps"]:
            if not isinstance(d, dict):
                continue
            params = d.get("params") if isinstance(d.get("params"), dict) else {}
            if "model" in d:
                d["params"] = {**params, "backend": backend}
            elif "op" in d and params is not None:
                params = {k: _absolute(v, bundled) for k, v in params.items()}
                spec = OPS.get(d["op"])
                if "backend" in params or (spec is not None and "backend" in _keywords(spec.fn)):
                    params["backend"] = backend
                if params:
                    d["params"] = params
    pipeline = Pipeline.from_dict(data, root, allow_python=allow_python, label=f"{label}/{PIPELINE_FILE}")
    if self_test:
        tol = manifest.get("tolerance", {})
        rtol, atol = float(tol.get("rtol", RTOL)), float(tol.get("atol", ATOL))
        for case in manifest.get("golden", []):
            _self_test(pipeline, root / case["file"], f"{label}: golden {case['file']}", rtol, atol, backend)
    return pipeline


def _absolute(value: Any, bundled: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return bundled.get(value, value)
    if isinstance(value, Mapping):
        return {k: _absolute(v, bundled) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute(v, bundled) for v in value]
    return value


def _keywords(fn: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _self_test(pipeline: Any, file: Path, label: str, rtol: float, atol: float, backend: str) -> None:
    with np.load(file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    tree = json.loads(str(arrays.pop("__tree__")))
    feeds = _unpack(tree["inputs"], arrays)
    try:
        outputs = pipeline.run(feeds).outputs
    except UserError as e:
        raise BundleError(f"{label}: self-test on {backend} failed to run: {one_line(e)}") from e
    why = _compare(tree["outputs"], outputs, arrays, "", rtol, atol)
    if why:
        raise BundleError(f"{label}: self-test on {backend} failed: output {why}")
