"""``slipway stream``: video files, network streams, cameras and image folders through a pipeline.

decode -> pre-process -> infer (batched across frames and streams) -> post-process + track -> sinks,
each stage on its own thread joined by bounded queues, with an explicit overload policy.
"""

from slipway.stream.evaluate import TrackScores, evaluate, evaluate_many
from slipway.stream.frames import Detections, Frame, FrameResult, Tracks
from slipway.stream.mot import read_mot, write_mot
from slipway.stream.runner import StreamRun, run_stream
from slipway.stream.track import StreamTracker

__all__ = ["Detections", "Frame", "FrameResult", "StreamRun", "StreamTracker", "TrackScores", "Tracks", "evaluate",
           "evaluate_many", "read_mot", "run_stream", "write_mot"]
