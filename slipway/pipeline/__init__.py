"""Whole applications as one checked pipeline: pre-process -> model(s) -> post-process.

``Pipeline(steps, inputs, outputs)`` wires :class:`Step` s (an ONNX model, a registered op or a
python callable) by tensor names, checks the wiring at construction and runs the steps in
topological order (:meth:`Pipeline.run` -> :class:`PipelineResult`); pipelines round-trip through
YAML files (:meth:`Pipeline.to_file` / :meth:`Pipeline.from_file`). Ops live in :data:`OPS`
(:func:`register_op`); the generic ones are in :mod:`slipway.pipeline.ops`, the task ones in
``slipway.pipeline.ocr`` and ``slipway.pipeline.detect``.
"""

from slipway.pipeline.core import (
    OPS,
    OpSpec,
    Pipeline,
    PipelineError,
    PipelineResult,
    Step,
    model_session,
    register_op,
)

# after the core names are bound: ops imports the task modules, which import them from here
from slipway.pipeline.ops import IMAGENET_MEAN, IMAGENET_STD, classify_pipeline  # noqa: E402

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPS",
    "OpSpec",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "Step",
    "classify_pipeline",
    "model_session",
    "register_op",
]
