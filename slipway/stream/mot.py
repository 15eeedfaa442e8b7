"""MOTChallenge text files: ``frame, id, left, top, width, height, conf, x, y, z`` per line (1-based frames).

Ground truth uses columns 7-9 as ``consider, class, visibility``; detections files have ``id = -1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from slipway.errors import UserError

COLUMNS = 10


def read_mot(path: str | os.PathLike) -> np.ndarray:
    """Rows [N, 10] float64 of a MOTChallenge file (missing trailing columns are -1), sorted by frame then id.

    A line that is not 6 to 10 comma-separated numbers is a one-line error naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: MOT file not found")
    rows = []
    with p.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.replace(" ", "").split(",")
            try:
                vals = [float(x) for x in parts]
            except ValueError:
                raise UserError(f"{p}:{n}: not a MOTChallenge line (numbers separated by commas): {line[:60]!r}") from None
            if not 6 <= len(vals) <= COLUMNS:
                raise UserError(f"{p}:{n}: a MOTChallenge line has 6 to 10 values, this one has {len(vals)}")
            if vals[0] < 1 or vals[0] != int(vals[0]):
                raise UserError(f"{p}:{n}: frame numbers are integers from 1, got {parts[0]}")
            if vals[4] < 0 or vals[5] < 0:
                raise UserError(f"{p}:{n}: negative box width or height")
            rows.append(vals + [-1.0] * (COLUMNS - len(vals)))
    out = np.array(rows, dtype=np.float64).reshape(-1, COLUMNS)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def write_mot(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """Write rows [N, >= 6] as MOTChallenge text (frame and id as integers, boxes with 2 decimals); atomic."""
    p = Path(path)
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1] if np.ndim(rows) == 2 else COLUMNS)
    if rows.shape[1] < 6:
        raise UserError(f"{p}: MOT rows need at least 6 columns, got {rows.shape[1]}")
    full = np.full((len(rows), COLUMNS), -1.0)
    full[:, : min(COLUMNS, rows.shape[1])] = rows[:, :COLUMNS]
    if rows.shape[1] < 7:
        full[:, 6] = 1.0
    tmp = p.with_name(f".{p.name}.tmp")
    p.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(mot_line(r) for r in full)
    os.replace(tmp, p)
    return p


def mot_line(row: np.ndarray) -> str:
    """One row of 10 values as a MOTChallenge line: frame and id as integers, the box with 2 decimals."""
    r = row
    return (f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},{_num(r[6])},{_num(r[7])},"
            f"{_num(r[8])},{_num(r[9])}\n")


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else f"{v:.4g}"


def by_frame(rows: np.ndarray, frames: int | None = None) -> list[np.ndarray]:
    """Rows grouped per frame: element ``f`` holds the rows of frame ``f + 1`` (``frames`` long, or up to the last)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, COLUMNS)
    n = int(rows[:, 0].max()) if len(rows) else 0
    n = max(n, frames or 0)
    order = np.argsort(rows[:, 0], kind="stable")
    rows = rows[order]
    cuts = np.searchsorted(rows[:, 0], np.arange(1, n + 2))
    return [rows[cuts[i]:cuts[i + 1]] for i in range(n)]


def tracks_rows(frame: int, boxes: np.ndarray, ids: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """MOT rows of one frame's tracks: [frame, id, left, top, width, height, score, -1, -1, -1]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.full((len(boxes), COLUMNS), -1.0)
    out[:, 0] = frame
    out[:, 1] = ids
    out[:, 2:4] = boxes[:, :2]
    out[:, 4:6] = boxes[:, 2:] - boxes[:, :2]
    out[:, 6] = 1.0 if scores is None else scores
    return out
