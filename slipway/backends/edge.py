"""Verified, cached conversion of an ONNX model to an edge engine's own files (MNN's .mnn, ncnn's .param/.bin).

The engines that do not read ONNX (:mod:`slipway.backends.mnn`, :mod:`slipway.backends.ncnn`) run a model
only through :func:`convert`, which gives a cache entry: a directory holding the engine's files and a
``manifest.json`` (the ONNX file's SHA-256, the engine's version, the conversion options, each file's
SHA-256 and size, the inputs and outputs, the verification record).

* **Keyed** by the SHA-256 of the ONNX model, the engine's version (its packages' versions) and the
  conversion options; the entry lives in ``$SLIPWAY_CACHE/engines/<engine>/<key>`` (default
  ``~/.cache/slipway/engines/...``). An entry whose manifest does not match (engine upgraded, model
  changed, a file missing or resized, a manifest from another format) is rebuilt, never used.
* **Isolated**: the converter and the first runs happen in a child process (``python -m
  slipway.backends.edge``), so a converter or engine that crashes on a model (both can) is a one-line
  error here, not a dead server.
* **Verified**: the child runs the converted files on the inputs every command runs a model on
  (:func:`slipway.verify.probe.plan_inputs`: two or more shapes, the batch among them), the parent compares
  them with onnxruntime (optimizations off, :func:`slipway.verify.compare_runs`); past tolerance it is a
  :class:`~slipway.errors.VerificationError` and nothing is cached.
* **Bad input, one line, nothing written**: an op the engine cannot take is a ``UserError`` naming the
  engine, the op and the node (the engine module reads the op types from its converter's output).
* **Atomic**: the entry is built in a temporary directory beside its final place and renamed into place
  under a per-key lock (several processes converting one model convert it once).

An engine module gives a :class:`Converter` (name, version, the checks before converting, convert in the
child, run in the child, the op types its converter could not take).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnx_ir as ir

from slipway.backends.base import Options, TensorInfo, check_options, onnx_source
from slipway.errors import MissingDependencyError, UserError, VerificationError, one_line

__all__ = ["Converter", "EdgeBackend", "valid", "tensor_info", "package_version", "ConversionMismatch", "Converted", "convert", "cache_root", "digest", "node_of", "quiet_stdout", "io_specs",
           "cpu_flags", "cpu_has_fp16"]

FORMAT = 1  # of the cache entries: a change here invalidates every entry
MANIFEST = "manifest.json"
BATCH_SIZES = (1, 2)  # the verification's batch sizes (the issue: outputs compared at two or more shapes)
TIMEOUT_S = 900  # one conversion + verification in the child


class ConversionMismatch(VerificationError, UserError):
    """The converted model disagrees with onnxruntime: a verification failure, and bad input for the engine
    (so every command that skips an engine it cannot use, tune's search, skips it with this line)."""


class Converter(Protocol):
    name: str  # the engine's name (its cache folder)
    target: str  # "module:attribute" of this object, which the child imports

    def version(self) -> str:
        """The engine's version (its packages'), part of the cache key."""
        ...

    def check(self, model: ir.Model) -> None:
        """Refuse, before anything is written, a model the engine cannot take (one-line UserError)."""
        ...

    def convert(self, source: Path, out: Path, options: Mapping[str, Any], shapes: list[list[list[int]]]) -> None:
        """In the child: write the engine's files for ``source`` into ``out`` (``shapes``: each verification
        run's input shapes, in input order)."""
        ...

    def run_files(self, out: Path, options: Mapping[str, Any], inputs: list[TensorInfo],
                  outputs: list[TensorInfo]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """A runner of the converted files (in the child, for the verification runs)."""
        ...

    def unsupported(self, out: Path, log: str) -> list[str]:
        """The ONNX op types the conversion could not take, from its files and output ``log``."""
        ...


@dataclass
class Converted:
    """One cache entry: its directory and manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def inputs(self) -> list[TensorInfo]:
        return [tensor_info(t) for t in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [tensor_info(t) for t in self.manifest["outputs"]]

    def file(self, name: str) -> Path:
        return self.path / name


class EdgeBackend:
    """What the converted engines' backends share: availability (their imports), options checked, the model
    converted (verified, cached) before the sessions are made from the cache entry. A subclass gives
    ``imports()`` (raising MissingDependencyError), ``fp16()`` and ``sessions(entry, options, instances)``."""

    def __init__(self, converter: Converter, settings: Mapping[str, tuple[Any, ...]]) -> None:
        self.name = converter.name
        self.converter = converter
        self.settings: dict[str, tuple[Any, ...]] = dict(settings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def precisions(self) -> tuple[str, ...]:
        return ("fp32", "fp16") if self.fp16() else ("fp32",)

    def available(self) -> str | None:
        try:
            self.imports()
        except MissingDependencyError as e:
            return str(e)
        return None

    def load(self, model: Any, options: Options | None = None, *, instances: int = 1) -> list[Any]:
        why = self.available()
        if why:
            raise UserError(f"backend {self.name!r} is not available: {why}")
        opts = check_options(self.name, options, self.precisions, self.settings, instances)
        from slipway.backends.export import exported, is_export

        entry = exported(self.converter, model) if is_export(model) else convert(self.converter, model)
        return self.sessions(entry, opts, instances)

    def imports(self) -> None:
        raise NotImplementedError

    def fp16(self) -> bool:
        raise NotImplementedError

    def sessions(self, entry: Converted, options: Options, instances: int) -> list[Any]:
        raise NotImplementedError


def package_version(*packages: str, extra: str = "edge") -> str:
    """The installed versions of ``packages`` ("1.0 (pnnx 2.0)" for two), part of a conversion's cache key."""
    try:
        found = [importlib.metadata.version(p) for p in packages]
    except importlib.metadata.PackageNotFoundError as e:
        raise MissingDependencyError(str(e.name or packages[0]), extra) from None
    return found[0] + "".join(f" ({p} {v})" for p, v in zip(packages[1:], found[1:], strict=True))


def cache_root() -> Path:
    """Where converted models are cached: ``$SLIPWAY_CACHE/engines`` or ``~/.cache/slipway/engines``."""
    root = os.environ.get("SLIPWAY_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "slipway") / "engines"


def digest(source: bytes | str) -> str:
    """SHA-256 of an ONNX model's bytes, or of the file a path names."""
    h = hashlib.sha256()
    if isinstance(source, bytes):
        h.update(source)
    else:
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def convert(converter: Converter, model: Any, options: Mapping[str, Any] | None = None) -> Converted:
    """The verified cache entry of ``model`` (path, bytes, ``ModelProto`` or ``onnx_ir.Model``) converted by
    ``converter`` with ``options`` (JSON values): read from the cache when its manifest matches, else built."""
    opts = dict(sorted((options or {}).items()))
    with onnx_source(model) as source:
        return cached(converter.name, converter.version(), digest(source), opts,
                      lambda entry, key: _build(converter, model, source, entry, key))


def cached(engine: str, version: str, sha: str, opts: dict[str, Any],
           build: Callable[[Path, dict[str, Any]], Converted]) -> Converted:
    """THE cache lookup of the edge engines (conversions and their INT8): the entry of (engine, version, source
    SHA-256, options) when its manifest matches, else ``build(entry, manifest key)`` under a per-entry lock
    (re-checked inside it: another process may have built it meanwhile)."""
    key = hashlib.sha256(json.dumps([FORMAT, engine, version, sha, opts]).encode()).hexdigest()[:32]
    base = cache_root() / engine
    entry = base / key
    found = valid(entry, engine, version, sha, opts)
    if found is not None:
        return found
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the {engine} cache {base}: {one_line(e)}") from None
    with locked(base / f".{key}.lock"):
        found = valid(entry, engine, version, sha, opts)
        if found is not None:
            return found
        return build(entry, {"format": FORMAT, "engine": engine, "engine_version": version, "source_sha256": sha,
                             "options": opts})


def valid(entry: Path, engine: str, version: str, sha: str, opts: dict) -> Converted | None:
    """The entry when its manifest matches what is asked and its files are there at their sizes; else None."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    want = {"format": FORMAT, "engine": engine, "engine_version": version, "source_sha256": sha, "options": opts}
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in want.items()):
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for name, info in files.items():
        try:
            if (entry / name).stat().st_size != info["bytes"]:
                return None
        except (OSError, TypeError, KeyError):
            return None
    return Converted(entry, manifest)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` while the block runs (one builder per cache entry, across processes)."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(converter: Converter, model: Any, source: bytes | str, entry: Path, key: dict[str, Any]) -> Converted:
    """Convert in a child process, verify against onnxruntime, write the manifest, rename into place."""
    from slipway.verify import VerifyReport, compare_runs, describe, engine_name, ort_runner
    from slipway.verify.probe import plan_inputs

    m = _ir(model, source)
    converter.check(m)
    inputs, outputs = io_specs(m)
    reference = ort_runner(m)
    plan = plan_inputs(m, reference, batch_sizes=BATCH_SIZES)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=entry.parent))
    try:
        work = tmp / "work"
        out = tmp / "entry"
        work.mkdir()
        out.mkdir()
        onnx_path = _child_source(m, source, work)
        np.savez(work / "feeds.npz", **{f"{i}/{k}": v for i, f in enumerate(plan.feeds) for k, v in f.items()})
        spec = {"engine": converter.name, "converter": converter.target, "source": str(onnx_path),
                "out": str(out), "work": str(work), "options": key["options"], "runs": len(plan.feeds),
                "shapes": [[list(f[t.name].shape) for t in inputs] for f in plan.feeds],
                "inputs": [_spec(t) for t in inputs], "outputs": [_spec(t) for t in outputs]}
        (work / "spec.json").write_text(json.dumps(spec))
        start = time.perf_counter()
        _child(converter, m, out, work)
        seconds = time.perf_counter() - start
        got = np.load(work / "outputs.npz")
        results = {id(f): {t.name: got[f"{i}/{t.name}"] for t in outputs} for i, f in enumerate(plan.feeds)}
        atol, rtol = 1e-4, 1e-3  # verify's defaults: the bar every slipway conversion meets
        checks, failure = compare_runs(reference, lambda feeds: results[id(feeds)], plan.feeds, atol=atol, rtol=rtol)
        batches = sorted({int(f[inputs[0].name].shape[0]) for f in plan.feeds if inputs and f[inputs[0].name].ndim})
        report = VerifyReport(checks, atol, rtol, batches, [describe(f) for f in plan.feeds],
                              "the ONNX model in " + engine_name(), f"{converter.name} {key['engine_version']}",
                              failure, list(plan.notes))
        if not report.ok:
            raise ConversionMismatch(f"{converter.name}: the converted model disagrees with onnxruntime: "
                                    f"{report.failure or next(o.note for o in report.outputs if not o.ok)}", report)
        files = {p.name: {"sha256": digest(str(p)), "bytes": p.stat().st_size} for p in sorted(out.iterdir())}
        manifest = {**key, "files": files, "inputs": spec["inputs"], "outputs": spec["outputs"],
                    "verification": report.to_dict(), "conversion_s": round(seconds, 3),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
        replace_dir(out, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Converted(entry, manifest)


def _ir(model: Any, source: bytes | str) -> ir.Model:
    if isinstance(model, ir.Model):
        return model
    if isinstance(source, bytes):
        return ir.serde.deserialize_model(onnx.load_from_string(source))
    from slipway.model import load

    return load(source)


def _child_source(m: ir.Model, source: bytes | str, work: Path) -> Path:
    """An ONNX file the child's converters read: the user's file as it is when they can (IR <= 10),
    else a copy with the IR version lowered (pnnx's onnxruntime reads IR 10 at most; the opsets decide
    what the graph means)."""
    if isinstance(source, str) and m.ir_version <= 10:
        return Path(source)
    proto = ir.serde.serialize_model(m)
    proto.ir_version = min(proto.ir_version, 10)
    path = work / "model.onnx"
    onnx.save(proto, str(path), save_as_external_data=proto.ByteSize() > 1_800_000_000)
    return path


def run_child(module: str, work: Path, what: str, timeout_s: float = TIMEOUT_S) -> tuple[int, str]:
    """``python -m module WORK`` with this slipway importable (an engine that crashes takes only the child
    down): its return code and output; a one-line UserError naming ``what`` past ``timeout_s``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[2]),
                                                                    os.environ.get("PYTHONPATH")) if p)}
    try:
        done = subprocess.run([sys.executable, "-m", module, str(work)], capture_output=True,
                              text=True, errors="replace", timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} took over {timeout_s:g} s") from None
    return done.returncode, done.stdout + done.stderr


def _child(converter: Converter, m: ir.Model, out: Path, work: Path) -> None:
    """Run the child; its failure as a one-line UserError naming the engine (and the op and node it could
    not take)."""
    code, log = run_child("slipway.backends.edge", work, f"{converter.name}: converting and verifying the model")
    if code == 0 and (work / "outputs.npz").is_file():
        return
    ops = converter.unsupported(out, log)
    if ops:
        raise UserError(f"{converter.name} cannot convert op {ops[0]} (node {node_of(m, ops[0])!r})"
                        + (f" nor {', '.join(ops[1:])}" if len(ops) > 1 else ""))
    error = work / "error.txt"
    if error.is_file():
        raise UserError(f"{converter.name}: {error.read_text().strip()}")
    if code < 0:
        raise UserError(f"{converter.name} crashed (signal {-code}) converting or running the model")
    tail = [ln.strip() for ln in log.splitlines() if ln.strip()]
    raise UserError(f"{converter.name} could not convert the model: {tail[-1][:300] if tail else 'no output'}")


def node_of(model: ir.Model, op_type: str) -> str:
    """The name of the first node of ``op_type`` in ``model`` (subgraphs included), else ``?``."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == op_type:
            return node.name or "?"
    return "?"


def replace_dir(new: Path, entry: Path) -> None:
    """Rename ``new`` to ``entry``, an older (stale) entry there moved aside first and removed after."""
    old = None
    if entry.exists():
        old = entry.with_name(f".stale-{entry.name}-{os.getpid()}")
        os.rename(entry, old)
    os.rename(new, entry)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def io_specs(m: ir.Model) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs (initializers left out) and outputs as TensorInfo."""
    def info(v: ir.Value) -> TensorInfo:
        shape = tuple(d if isinstance(d, int) else d.value for d in v.shape) if v.shape is not None else ()
        dtype = np.dtype(v.dtype.numpy()) if v.dtype is not None else np.dtype(object)
        return TensorInfo(v.name, shape, dtype)

    inputs = [info(v) for v in m.graph.inputs if v.name not in m.graph.initializers]
    return inputs, [info(v) for v in m.graph.outputs]


def _spec(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "shape": list(t.shape) if t.shape is not None else None, "dtype": str(t.dtype)}


def tensor_info(d: Mapping[str, Any], kind: str = "") -> TensorInfo:
    dtype = np.dtype(d["dtype"])
    return TensorInfo(d["name"], tuple(d["shape"]) if d["shape"] is not None else None, dtype,
                      f"{kind} type {dtype}" if kind else "")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (x86 ``flags``, ARM ``Features``); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    found = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE)
    return frozenset(found.group(1).split()) if found else frozenset()


def cpu_has_fp16() -> bool:
    """The CPU computes in FP16 (ARMv8.2 half-precision arithmetic), where MNN's and ncnn's FP16 modes pay."""
    return platform.machine().lower() in ("aarch64", "arm64") and "asimdhp" in cpu_flags()


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """File descriptor 1 sent to /dev/null (engines that print from C at import or load, MNN's "The device
    supports ..."), so that a command's own output (JSON, tables) stays clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# ---------------------------------------------------------------------------------------------
# the child: python -m slipway.backends.edge WORK


def _main(work: Path) -> int:
    spec = json.loads((work / "spec.json").read_text())
    module, attr = spec["converter"].split(":")
    converter = getattr(importlib.import_module(module), attr)
    out = Path(spec["out"])
    try:
        converter.convert(Path(spec["source"]), out, spec["options"], spec["shapes"])
        run = converter.run_files(out, spec["options"], [tensor_info(t) for t in spec["inputs"]],
                                  [tensor_info(t) for t in spec["outputs"]])
        feeds = np.load(work / "feeds.npz")
        results: dict[str, np.ndarray] = {}
        for i in range(spec["runs"]):
            got = run({t["name"]: feeds[f"{i}/{t['name']}"] for t in spec["inputs"]})
            results.update({f"{i}/{k}": v for k, v in got.items()})
    except UserError as e:
        (work / "error.txt").write_text(str(e))
        return 2
    np.savez(work / "outputs.npz", **results)
    return 0


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1])))
