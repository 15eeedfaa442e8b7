"""Model files to every node: read once by the driver, shipped through Ray's object store, hash-checked where used.

:func:`ship` reads each file of a model folder (and, for an ensemble, of its composing models, recursively),
puts its bytes in the object store and keeps its SHA-256; a replica on any node calls :func:`unpack`, which
fetches the bytes, checks each digest and writes the folder under a private directory (a file whose bytes do
not hash to what the driver read is an error naming it, and the replica does not start). No shared file system
is needed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slipway.errors import UserError
from slipway.serve.ensemble import composing_models, is_ensemble
from slipway.serve.repository import Repository, model_files

__all__ = ["ModelFiles", "ship", "unpack", "closure"]


@dataclass(frozen=True)
class ModelFiles:
    """One model folder in the object store: (path relative to the folder, SHA-256, object ref) per file."""

    name: str
    files: tuple[tuple[str, str, Any], ...]

    @property
    def digest(self) -> str:
        """One digest of the folder's paths and contents (what changes when the model does)."""
        h = hashlib.sha256(self.name.encode())
        for rel, sha, _ in self.files:
            h.update(f"\0{rel}\0{sha}".encode())
        return h.hexdigest()


def closure(repo: Repository, name: str) -> list[str]:
    """``name`` and, for an ensemble, every model it calls (recursively), each once, ``name`` first."""
    out: list[str] = []
    todo = [name]
    while todo:
        n = todo.pop(0)
        if n in out:
            continue
        out.append(n)
        config = repo.config(n)
        if is_ensemble(config):
            todo += composing_models(config)
    return out


def ship(repo: Repository, name: str, put) -> ModelFiles:
    """Read model ``name``'s folder into the object store (``put``: ``ray.put``)."""
    folder = repo.path(name)
    files = []
    for rel in model_files(folder):
        data = (folder / rel).read_bytes()
        files.append((rel, hashlib.sha256(data).hexdigest(), put(data)))
    return ModelFiles(name, tuple(files))


def unpack(models: list[ModelFiles], root: Path, get) -> None:
    """Write ``models`` as folders of repository ``root`` (``get``: ``ray.get``), each file hash-checked."""
    for model in models:
        for rel, sha, ref in model.files:
            data = get(ref)
            got = hashlib.sha256(data).hexdigest()
            if got != sha:
                raise UserError(f"model {model.name}: file {rel} does not match the repository's (SHA-256 {got[:12]} "
                                f"here, {sha[:12]} read by the driver); refusing to load it")
            path = root / model.name / rel
            if root.resolve() not in path.resolve().parents:
                raise UserError(f"model {model.name}: file path {rel!r} leaves the model folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
