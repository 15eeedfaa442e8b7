"""``slipway stream eval``: MOTA, IDF1 and HOTA of tracks against MOTChallenge ground truth, computed by TrackEval.

TrackEval's metric classes (``HOTA``, ``CLEAR``, ``Identity``) run on the per-frame data dict its datasets build
(ids re-mapped to 0..n-1, IoU similarities); slipway builds that dict itself from MOT rows, so no TrackEval folder
layout or config is needed. TrackEval is imported on the first evaluation, not with this module.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.ops.track import iou_matrix, match
from slipway.stream.mot import COLUMNS, read_mot

# MOTChallenge's distractor classes (MOT17: person on vehicle, static person, distractor, reflection; MOT20 adds
# non-mot vehicle): TrackEval drops the tracker boxes matched to them.
MOT_DISTRACTORS = (2, 7, 8, 9, 12)

Source = str | os.PathLike | np.ndarray


@dataclass
class TrackScores:
    """Tracking quality of one sequence or several combined; the scores are fractions (1.0 = perfect).

    ``mota`` = 1 - (fn + fp + idsw) / num_gt and ``motp`` (mean IoU of the matches) are CLEAR's, ``idf1`` is the
    Identity metric's, ``hota`` / ``deta`` / ``assa`` are HOTA's (averaged over its 19 localization thresholds).
    ``num_gt`` counts the ground-truth boxes evaluated, ``frames`` the frames."""

    mota: float
    idf1: float
    hota: float
    deta: float
    assa: float
    motp: float
    idsw: int
    fp: int
    fn: int
    num_gt: int
    frames: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate(gt: Source, tracks: Source, *, iou: float = 0.5, frames: int | None = None,
             classes: Sequence[int] | None = None, distractors: Sequence[int] = ()) -> TrackScores:
    """Scores of ``tracks`` against ``gt``: each a MOTChallenge file or MOT rows [N, 6..10] (as ``read_mot`` returns).

    ``iou`` is the match threshold of CLEAR and Identity (HOTA averages over its own thresholds). ``frames``: the
    sequence's length; by default ``seqLength`` of the ``seqinfo.ini`` of a MOTChallenge folder (``SEQ/gt/gt.txt``),
    else the last frame of the ground truth; tracks past it are an error.

    Ignored ground truth: rows whose ``consider`` flag (column 7) is 0 are dropped, and so are rows whose class
    (column 8) is not in ``classes`` (None: every class). A track box on a dropped object counts as a false positive,
    unless that object's class is in ``distractors``: then, as in MOTChallenge, the track boxes matched to it (IoU >=
    0.5, Hungarian) are dropped first, so covering an ignored object neither helps nor hurts. MOTChallenge's own
    protocol is ``classes=(1,), distractors=MOT_DISTRACTORS``; the default takes every considered row and no
    distractors (a synthesized scene, a single-class dataset)."""
    return evaluate_many([(gt, tracks, frames)], iou=iou, classes=classes, distractors=distractors)


def evaluate_many(pairs: Iterable[tuple], *, iou: float = 0.5, classes: Sequence[int] | None = None,
                  distractors: Sequence[int] = ()) -> TrackScores:
    """Several sequences combined as TrackEval combines them (counts summed, HOTA's association weighted by its true
    positives): ``pairs`` of ``(gt, tracks)`` or ``(gt, tracks, frames)``, each as :func:`evaluate` takes them."""
    if not 0.0 < float(iou) <= 1.0:
        raise UserError(f"iou: expected a number in (0, 1], got {iou!r}")
    metrics = _metrics(float(iou))
    per_seq: dict[str, list[dict]] = {name: [] for name in metrics}
    total_frames = 0
    for n, pair in enumerate(pairs):
        if not isinstance(pair, tuple | list) or len(pair) not in (2, 3):
            raise UserError(f"evaluate: sequence {n}: expected (gt, tracks) or (gt, tracks, frames)")
        gt, tracks, length = (*pair, None) if len(pair) == 2 else pair
        data = sequence_data(gt, tracks, frames=length, classes=classes, distractors=distractors)
        total_frames += data["num_timesteps"]
        for name, metric in metrics.items():
            per_seq[name].append(metric.eval_sequence(data))
    if not per_seq["HOTA"]:
        raise UserError("evaluate: no sequences given")
    # combine_sequences also for one sequence: it equals eval_sequence's result, and computes the final fields that
    # eval_sequence leaves at 0 when the ground truth or the tracks are empty (MOTA = -FP / max(1, num_gt) ...).
    res = {name: metrics[name].combine_sequences(dict(enumerate(rs))) for name, rs in per_seq.items()}
    h, c, i = res["HOTA"], res["CLEAR"], res["Identity"]
    num_gt = int(c["CLR_TP"] + c["CLR_FN"])
    return TrackScores(mota=float(c["MOTA"]), idf1=float(i["IDF1"]), hota=float(np.mean(h["HOTA"])),
                       deta=float(np.mean(h["DetA"])), assa=float(np.mean(h["AssA"])), motp=float(c["MOTP"]),
                       idsw=int(c["IDSW"]), fp=int(c["CLR_FP"]), fn=int(c["CLR_FN"]), num_gt=num_gt,
                       frames=total_frames)


def _metrics(iou: float) -> dict[str, Any]:
    """TrackEval's metric objects, imported here so that importing slipway.stream costs nothing (its package
    __init__ prints a warning about an optional dependency: swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        from trackeval.metrics import CLEAR, HOTA, Identity
    config = {"THRESHOLD": iou, "PRINT_CONFIG": False}
    return {"HOTA": HOTA(), "CLEAR": CLEAR(dict(config)), "Identity": Identity(dict(config))}


def sequence_data(gt: Source, tracks: Source, *, frames: int | None = None, classes: Sequence[int] | None = None,
                  distractors: Sequence[int] = ()) -> dict[str, Any]:
    """The per-frame data dict TrackEval's metrics take (after the ground-truth filtering :func:`evaluate` describes):
    ``gt_ids`` / ``tracker_ids`` (contiguous 0..n-1), ``similarity_scores`` (IoU), counts, ``num_timesteps``."""
    g = _rows("gt", gt)
    t = _rows("tracks", tracks)
    n = _length(gt, g, t, frames)
    g_cut = np.searchsorted(g[:, 0], np.arange(1, n + 2))
    t_cut = np.searchsorted(t[:, 0], np.arange(1, n + 2))
    distract = np.asarray(distractors, dtype=np.float64)
    gt_ids, trk_ids, sims = [], [], []
    for f in range(n):
        gf, tf = g[g_cut[f]:g_cut[f + 1]], t[t_cut[f]:t_cut[f + 1]]
        gb, tb = _xyxy(gf), _xyxy(tf)
        if len(distract) and len(gf) and len(tf):
            pairs, _, _ = match(iou_matrix(gb, tb), 0.5)
            drop = pairs[np.isin(gf[pairs[:, 0], 7], distract), 1]
            keep_t = np.ones(len(tf), bool)
            keep_t[drop] = False
            tf, tb = tf[keep_t], tb[keep_t]
        keep_g = gf[:, 6] != 0
        if classes is not None:
            keep_g &= np.isin(gf[:, 7], np.asarray(classes, dtype=np.float64))
        gf, gb = gf[keep_g], gb[keep_g]
        gt_ids.append(gf[:, 1].astype(np.int64))
        trk_ids.append(tf[:, 1].astype(np.int64))
        sims.append(iou_matrix(gb, tb))
    data: dict[str, Any] = {"num_timesteps": n, "similarity_scores": sims}
    for key, ids in (("gt", gt_ids), ("tracker", trk_ids)):
        every = np.concatenate(ids) if ids else np.empty(0, np.int64)
        unique = np.unique(every)
        data[f"{key}_ids"] = [np.searchsorted(unique, i) for i in ids]
        data[f"num_{key}_ids"] = len(unique)
        data[f"num_{key}_dets"] = len(every)
    return data


def _rows(name: str, src: Source) -> np.ndarray:
    """MOT rows [N, 10] sorted by frame then id, checked: one line naming the first bad row."""
    if isinstance(src, str | os.PathLike):
        rows = read_mot(src)
    else:
        try:
            rows = np.asarray(src, dtype=np.float64)
        except (TypeError, ValueError):
            raise UserError(f"{name}: expected MOT rows (a numeric array [N, 6..10]) or a file path") from None
        if rows.size == 0:
            rows = rows.reshape(0, COLUMNS)
        if rows.ndim != 2 or not 6 <= rows.shape[1] <= COLUMNS:
            raise UserError(f"{name}: expected MOT rows [N, 6..10], got shape {tuple(rows.shape)}")
        rows = np.concatenate([rows, np.full((len(rows), COLUMNS - rows.shape[1]), -1.0)], axis=1)
        rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    bad = ~np.isfinite(rows[:, :6]).all(axis=1)
    bad |= (rows[:, 0] < 1) | (rows[:, 0] != np.round(rows[:, 0]))
    bad |= (rows[:, 1] < 0) | (rows[:, 1] != np.round(rows[:, 1]))
    bad |= (rows[:, 4] < 0) | (rows[:, 5] < 0)
    if bad.any():
        r = rows[np.argmax(bad)]
        raise UserError(f"{name}: bad MOT row [frame {r[0]:g}, id {r[1]:g}, {r[2]:g}, {r[3]:g}, {r[4]:g}, {r[5]:g}]: "
                        "frames are integers from 1, ids non-negative integers (id -1: a detections file?), "
                        "widths and heights finite and >= 0")
    dup = (np.diff(rows[:, 0]) == 0) & (np.diff(rows[:, 1]) == 0)
    if dup.any():
        r = rows[np.argmax(dup)]
        raise UserError(f"{name}: id {r[1]:g} appears twice in frame {r[0]:g}")
    return rows


def _length(gt: Source, g: np.ndarray, t: np.ndarray, frames: int | None) -> int:
    """The sequence's frame count: ``frames``, else seqinfo.ini's seqLength, else the ground truth's last frame."""
    source = "frames"
    if frames is None and isinstance(gt, str | os.PathLike):
        frames, source = _seq_length(Path(gt)), "seqinfo.ini"
    if frames is None:
        frames, source = (int(g[-1, 0]) if len(g) else int(t[-1, 0]) if len(t) else 0), "the ground truth"
    if int(frames) != frames or frames < 0:
        raise UserError(f"frames: expected a non-negative integer, got {frames!r}")
    if len(g) and g[-1, 0] > frames:
        raise UserError(f"gt: has frame {g[-1, 0]:g}, past the sequence's {int(frames)} frames ({source})")
    if len(t) and t[-1, 0] > frames:
        raise UserError(f"tracks: run to frame {t[-1, 0]:g} but the sequence has {int(frames)} frames (from {source}; "
                        "pass frames= when the ground truth ends early)")
    return int(frames)


def _seq_length(gt_path: Path) -> int | None:
    ini = gt_path.parent.parent / "seqinfo.ini"
    if not ini.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read(ini, encoding="utf-8")
        return int(parser["Sequence"]["seqLength"])
    except (configparser.Error, KeyError, ValueError):
        raise UserError(f"{ini}: no [Sequence] seqLength") from None


def _xyxy(rows: np.ndarray) -> np.ndarray:
    return np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
