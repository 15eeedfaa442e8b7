"""Files the tests build once (trained and exported models) and every later session and xdist worker reuses."""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path


def build_once(path: Path, build: Callable[[Path], object]) -> Path:
    """``path``, made by ``build(path)`` only when it does not exist yet; a file lock beside it lets one worker
    build while the others wait (``build`` writes ``path`` whole or not at all)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            build(path)
    return path
