"""Tests of slipway.stream.evaluate: TrackEval's HOTA / CLEAR / Identity on MOT rows, checked by hand and against
slipway.ops.clear_mot."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from slipway.errors import UserError
from slipway.ops.track import clear_mot
from slipway.stream.evaluate import MOT_DISTRACTORS, TrackScores, evaluate, evaluate_many, sequence_data
from slipway.stream.frames import Detections
from slipway.stream.mot import by_frame, tracks_rows, write_mot
from slipway.stream.synth import make_scene, noisy_detections
from slipway.stream.track import StreamTracker


def _rows(frame: int, oid: int, x: float, y: float = 0.0, w: float = 10.0, h: float = 10.0, consider: float = 1,
          cls: float = 1) -> list[float]:
    return [frame, oid, x, y, w, h, consider, cls, 1.0, -1]


def _two_objects(frames: int = 10) -> np.ndarray:
    """Objects 1 and 2, far apart, in every frame."""
    return np.array([r for f in range(1, frames + 1) for r in (_rows(f, 1, 0), _rows(f, 2, 100))], float)


def _per_frame(rows: np.ndarray, frames: int) -> list[np.ndarray]:
    return [np.concatenate([r[:, 2:4], r[:, 2:4] + r[:, 4:6], r[:, 1:2]], axis=1) for r in by_frame(rows, frames)]


# ---------------------------------------------------------------- hand-computed cases


def test_perfect_tracking_scores_one() -> None:
    gt = _two_objects()
    tracks = gt.copy()
    tracks[:, 1] = tracks[:, 1] * 10 + 5  # other ids, same identities
    s = evaluate(gt, tracks)
    assert isinstance(s, TrackScores)
    assert (s.idsw, s.fp, s.fn, s.num_gt, s.frames) == (0, 0, 0, 20, 10)
    for name in ("mota", "idf1", "hota", "deta", "assa", "motp"):
        assert getattr(s, name) == pytest.approx(1.0, abs=1e-12), name
    assert set(s.as_dict()) == {"mota", "idf1", "hota", "deta", "assa", "motp", "idsw", "fp", "fn", "num_gt", "frames"}


def test_one_id_switch_by_hand() -> None:
    gt = _two_objects()
    tracks = gt.copy()
    tracks[(tracks[:, 0] >= 6) & (tracks[:, 1] == 1), 1] = 3  # object 1 is track 1 for 5 frames, then track 3
    s = evaluate(gt, tracks)
    assert (s.idsw, s.fp, s.fn) == (1, 0, 0)
    assert s.mota == pytest.approx(1 - 1 / 20, abs=1e-12)
    # IDF1: the best one-to-one id assignment keeps 15 of 20 boxes: 2 * 15 / (20 + 20)
    assert s.idf1 == pytest.approx(0.75, abs=1e-12)
    # HOTA: every box is detected exactly (DetA 1); association: object 2's 10 matches score 1, object 1's 10 score
    # 5 / (5 + 5 + 0) = 0.5 each -> AssA 0.75, HOTA = sqrt(DetA * AssA)
    assert s.deta == pytest.approx(1.0, abs=1e-12)
    assert s.assa == pytest.approx(0.75, abs=1e-12)
    assert s.hota == pytest.approx(math.sqrt(0.75), abs=1e-12)


def test_all_misses_and_all_false_positives() -> None:
    gt = _two_objects()
    miss = evaluate(gt, np.empty((0, 10)))
    assert (miss.mota, miss.idf1, miss.hota) == (0.0, 0.0, 0.0)
    assert (miss.fn, miss.fp, miss.idsw, miss.num_gt) == (20, 0, 0, 20)
    far = gt.copy()
    far[:, 3] += 500  # every track box misses its object: 20 FN and 20 FP
    s = evaluate(gt, far)
    assert (s.fn, s.fp) == (20, 20) and s.mota == pytest.approx(-1.0) and s.idf1 == 0.0 and s.hota == 0.0


def test_iou_threshold_applies_to_clear_and_identity() -> None:
    gt = _two_objects()
    shifted = gt.copy()
    shifted[:, 2] += 2.5  # IoU with the object: 7.5 / 12.5 = 0.6
    loose, strict = evaluate(gt, shifted, iou=0.5), evaluate(gt, shifted, iou=0.7)
    assert loose.mota == 1.0 and loose.idf1 == 1.0 and loose.motp == pytest.approx(0.6)
    assert strict.mota == -1.0 and strict.idf1 == 0.0
    assert loose.hota == strict.hota  # HOTA averages over its own thresholds
    with pytest.raises(UserError, match="iou"):
        evaluate(gt, gt, iou=0)


# ---------------------------------------------------------------- ignored ground truth


def test_consider_flag_classes_and_distractors() -> None:
    gt = _two_objects(5)
    gt[gt[:, 1] == 2, 6] = 0  # object 2 is not to be considered
    gt[gt[:, 1] == 2, 7] = 7  # ... and is a static person (a MOTChallenge distractor class)
    tracks = _two_objects(5)
    plain = evaluate(gt, tracks)
    assert (plain.num_gt, plain.fp, plain.fn) == (5, 5, 0)  # the track on the ignored object is a false positive
    mot = evaluate(gt, tracks, distractors=MOT_DISTRACTORS)
    assert (mot.num_gt, mot.fp, mot.fn, mot.mota, mot.idf1) == (5, 0, 0, 1.0, 1.0)  # dropped, as MOTChallenge does
    gt2 = _two_objects(5)
    gt2[gt2[:, 1] == 2, 7] = 3  # a considered object of class 3
    only1 = evaluate(gt2, tracks, classes=[1])
    assert (only1.num_gt, only1.fp) == (5, 5)
    assert evaluate(gt2, tracks, classes=[1, 3]).mota == 1.0


def test_sequence_data_is_trackeval_shaped() -> None:
    gt = _two_objects(3)
    tracks = gt[gt[:, 1] == 2].copy()
    tracks[:, 1] = 42
    data = sequence_data(gt, tracks)
    assert data["num_timesteps"] == 3 and data["num_gt_ids"] == 2 and data["num_tracker_ids"] == 1
    assert data["num_gt_dets"] == 6 and data["num_tracker_dets"] == 3
    assert [ids.tolist() for ids in data["gt_ids"]] == [[0, 1]] * 3  # contiguous from 0
    assert [ids.tolist() for ids in data["tracker_ids"]] == [[0]] * 3
    np.testing.assert_allclose(data["similarity_scores"][0], [[0.0], [1.0]])


# ---------------------------------------------------------------- against slipway.ops.clear_mot


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mota_agrees_with_clear_mot_on_synthesized_scenes(seed: int) -> None:
    """Both implement TrackEval's CLEAR: the counts agree exactly, MOTA to float rounding. Jittery detections with
    many false positives and a SORT that reports every track at once give id switches and false positives to match."""
    scene = make_scene(frames=150, objects=12, seed=seed)
    dets = by_frame(noisy_detections(scene, seed=seed, sigma=0.08, miss=0.2, false_per_frame=2.0), scene.frames)
    seen = {"idsw": 0, "fp": 0}
    for kind, params in (("sort", {"min_hits": 1, "max_age": 2}), ("bytetrack", {"low_thresh": 0.05})):
        tracker, rows = StreamTracker(kind, **params), []
        for f, d in enumerate(dets, 1):
            boxes = np.concatenate([d[:, 2:4], d[:, 2:4] + d[:, 4:6]], axis=1)
            t = tracker.update(Detections(boxes, d[:, 6], d[:, 7].astype(np.int64)))
            rows.append(tracks_rows(f, t.boxes, t.ids, t.scores))
        tracks = np.concatenate(rows)
        ours = clear_mot(_per_frame(scene.gt, scene.frames), _per_frame(tracks, scene.frames))
        s = evaluate(scene.gt, tracks)
        assert (s.idsw, s.fp, s.fn, s.num_gt) == (ours.idsw, ours.fp, ours.fn, ours.num_gt)
        assert s.mota == pytest.approx(ours.mota, abs=1e-12)
        assert s.motp == pytest.approx(ours.motp, abs=1e-9)
        seen["idsw"] += s.idsw
        seen["fp"] += s.fp
    assert seen["idsw"] > 0 and seen["fp"] > 0  # the matching was exercised


# ---------------------------------------------------------------- several sequences


def test_evaluate_many_combines_counts() -> None:
    gt = _two_objects()
    perfect, missing = evaluate_many([(gt, gt)]), evaluate_many([(gt, np.empty((0, 10)))])
    assert perfect == evaluate(gt, gt) and missing.fn == 20
    both = evaluate_many([(gt, gt), (gt, np.empty((0, 10)), 10)])
    assert (both.num_gt, both.fn, both.frames) == (40, 20, 20)
    assert both.mota == pytest.approx(0.5) and both.idf1 == pytest.approx(2 * 20 / (40 + 20))
    assert both.assa == pytest.approx(1.0)  # association is weighted by true positives: only the perfect sequence
    assert both.deta == pytest.approx(0.5)
    with pytest.raises(UserError, match="no sequences"):
        evaluate_many([])
    with pytest.raises(UserError, match="sequence 0: expected"):
        evaluate_many([gt])


# ---------------------------------------------------------------- files and bad input


def test_files_and_seqinfo(tmp_path) -> None:
    gt = _two_objects(8)
    seq = tmp_path / "SEQ-01"
    write_mot(seq / "gt" / "gt.txt", gt)
    tracks = gt[gt[:, 0] <= 4].copy()
    write_mot(tmp_path / "tracks.txt", tracks)
    s = evaluate(seq / "gt" / "gt.txt", str(tmp_path / "tracks.txt"))
    assert (s.frames, s.fn, s.fp) == (8, 8, 0)
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=SEQ-01\nseqLength=12\n")
    assert evaluate(seq / "gt" / "gt.txt", tmp_path / "tracks.txt").frames == 12
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=SEQ-01\nseqLength=6\n")
    with pytest.raises(UserError, match=r"gt: has frame 8, past the sequence's 6 frames \(seqinfo.ini\)"):
        evaluate(seq / "gt" / "gt.txt", tmp_path / "tracks.txt")
    with pytest.raises(UserError, match="MOT file not found"):
        evaluate(tmp_path / "nope.txt", tmp_path / "tracks.txt")


def test_bad_rows_are_one_line_errors() -> None:
    gt = _two_objects(4)
    late = gt.copy()
    late[-1, 0] = 9
    with pytest.raises(UserError, match="tracks: run to frame 9 but the sequence has 4 frames") as e:
        evaluate(gt, late)
    assert "\n" not in str(e.value)
    assert evaluate(gt, late, frames=9).frames == 9
    dets = gt.copy()
    dets[:, 1] = -1
    with pytest.raises(UserError, match="tracks: bad MOT row .*id -1: a detections file"):
        evaluate(gt, dets)
    dup = gt.copy()
    dup[1, 1] = 1
    with pytest.raises(UserError, match="tracks: id 1 appears twice in frame 1"):
        evaluate(gt, dup)
    with pytest.raises(UserError, match=r"gt: expected MOT rows \[N, 6..10\], got shape \(4, 5\)"):
        evaluate(np.zeros((4, 5)), gt)
    nan = gt.copy()
    nan[2, 4] = np.nan
    with pytest.raises(UserError, match="gt: bad MOT row"):
        evaluate(nan, gt)
    with pytest.raises(UserError, match="gt: bad MOT row"):
        evaluate(np.array([[0.0, 1, 0, 0, 10, 10]]), gt)  # frames are 1-based
    with pytest.raises(UserError, match="frames: expected a non-negative integer"):
        evaluate(gt, gt, frames=2.5)
    assert evaluate(gt[:, :6], gt).mota == 1.0  # six columns are enough


def test_trackeval_is_imported_only_when_evaluating_and_prints_nothing(capsys) -> None:
    code = ("import sys; import slipway.stream, slipway.stream.evaluate, slipway.stream.track; "
            "assert 'trackeval' not in sys.modules, 'imported early'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    evaluate(_two_objects(2), _two_objects(2))
    assert capsys.readouterr().out == ""


def test_equals_trackeval_motchallenge_pipeline(tmp_path) -> None:
    """The same files through TrackEval's own MOTChallenge dataset (folder layout, seqinfo.ini, its preprocessing:
    distractor matches dropped, zero-marked rows ignored, pedestrians only) give the same scores, to float rounding."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import trackeval
    scene = make_scene(frames=120, objects=10, seed=3)
    gt = scene.gt.copy()
    gt[::17, 6] = 0  # rows not to be considered
    gt[5::23, 6:8] = [0, 7]  # static persons: a distractor class, zero-marked as in MOT17
    dets = by_frame(noisy_detections(scene, seed=3, sigma=0.06, false_per_frame=1.5), scene.frames)
    tracker, rows = StreamTracker("sort", min_hits=1, max_age=3), []
    for f, d in enumerate(dets, 1):
        boxes = np.concatenate([d[:, 2:4], d[:, 2:4] + d[:, 4:6]], axis=1)
        t = tracker.update(Detections(boxes, d[:, 6], d[:, 7].astype(np.int64)))
        rows.append(tracks_rows(f, t.boxes, t.ids, t.scores))
    seq = tmp_path / "gt" / "MOT17-train" / "SYN-01"
    write_mot(seq / "gt" / "gt.txt", gt)
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname=SYN-01\nseqLength={scene.frames}\n")
    (tmp_path / "gt" / "seqmaps").mkdir()
    (tmp_path / "gt" / "seqmaps" / "MOT17-train.txt").write_text("name\nSYN-01\n")
    tracks_file = write_mot(tmp_path / "trackers" / "MOT17-train" / "ours" / "data" / "SYN-01.txt",
                            np.concatenate(rows))
    config = trackeval.Evaluator.get_default_eval_config()
    config.update(PRINT_RESULTS=False, PRINT_CONFIG=False, OUTPUT_SUMMARY=False, OUTPUT_DETAILED=False,
                  PLOT_CURVES=False, TIME_PROGRESS=False, USE_PARALLEL=False)
    dataset = trackeval.datasets.MotChallenge2DBox.get_default_dataset_config()
    dataset.update(GT_FOLDER=str(tmp_path / "gt"), TRACKERS_FOLDER=str(tmp_path / "trackers"), BENCHMARK="MOT17",
                   SPLIT_TO_EVAL="train", TRACKERS_TO_EVAL=["ours"], PRINT_CONFIG=False,
                   OUTPUT_FOLDER=str(tmp_path / "out"))
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False})]
    with contextlib.redirect_stdout(io.StringIO()):
        res, _ = trackeval.Evaluator(config).evaluate([trackeval.datasets.MotChallenge2DBox(dataset)], metrics)
    ref = res["MotChallenge2DBox"]["ours"]["SYN-01"]["pedestrian"]
    s = evaluate(seq / "gt" / "gt.txt", tracks_file, classes=(1,), distractors=MOT_DISTRACTORS)
    assert (s.idsw, s.fp, s.fn) == (ref["CLEAR"]["IDSW"], ref["CLEAR"]["CLR_FP"], ref["CLEAR"]["CLR_FN"])
    assert s.idsw > 0 and s.fp > 0
    assert s.mota == pytest.approx(ref["CLEAR"]["MOTA"], abs=1e-12)
    assert s.idf1 == pytest.approx(ref["Identity"]["IDF1"], abs=1e-12)
    assert s.hota == pytest.approx(float(np.mean(ref["HOTA"]["HOTA"])), abs=1e-12)
    assert s.assa == pytest.approx(float(np.mean(ref["HOTA"]["AssA"])), abs=1e-12)
    plain = evaluate(seq / "gt" / "gt.txt", tracks_file)  # without the distractor rule: more false positives
    assert plain.fp > s.fp
