"""A pipeline as a Triton ensemble: ``slipway bundle P.yaml --triton -o REPO`` writes a model repository.

The pipeline's steps are cut into composing models, in the order they run:

* every ``model`` step is its own composing model (``REPO/<name>_<step>/1/model.onnx``, its external
  data and tuned settings beside it, ``backend: "onnxruntime"``; the server completes its inputs,
  outputs and dynamic batching from the file, so it batches the requests of concurrent ensemble
  requests as any model does);
* each run of consecutive ``op`` steps is one ``slipway_pipeline`` composing model whose version
  folder is a bundle of those steps (:func:`slipway.pipeline.bundle.bundle`: the sub-pipeline's
  file, the model files its ops read, and a manifest of their SHA-256 hashes);
* ``REPO/<name>/config.pbtxt`` is the ensemble (``platform: "ensemble"``) whose steps map each
  composing model's inputs and outputs to the pipeline's own tensor names.

Between composing models a tensor travels as a KServe tensor: arrays as they are (their datatype and
rank read from one traced run on ``sample``, every size -1), a dict as one JSON string in a BYTES
tensor (the pipeline engine reads it back). A tensor of any other kind (a list of crops, say) cannot
cross between two composing models: that is a one-line error naming it. The pipeline's outputs may be
anything the pipeline engine sends (a list of dicts: one JSON string per item). The image input is
declared encoded (``TYPE_STRING [1]``: a JPEG / PNG file) or raw (``TYPE_UINT8 [-1, -1, 3]``).

Python steps are refused: a served repository runs registered ops and models only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from slipway.errors import UserError
from slipway.pipeline.bundle import bundle, check_target, external_files, staged
from slipway.pipeline.core import Pipeline, PipelineError, Step
from slipway.serve.tensors import config_type, datatype_of

__all__ = ["to_repository", "segments"]

IMAGE_INPUTS = ("encoded", "raw")


def segments(pipeline: Pipeline) -> list[list[Step]]:
    """The steps in run order, cut into composing models: each model step alone, each run of ops together."""
    by_name = {s.name: s for s in pipeline.steps}
    out: list[list[Step]] = []
    for name in pipeline.order:
        step = by_name[name]
        if step.kind == "python":
            raise UserError(f"step {step.name!r}: python steps cannot be served; use registered ops")
        if step.kind == "op" and out and out[-1][0].kind == "op":
            out[-1].append(step)
        else:
            out.append([step])
    return out


def to_repository(pipeline: Pipeline | str | os.PathLike, output: str | os.PathLike, *, sample: Mapping[str, Any],
                  name: str | None = None, image_input: str = "encoded", instances: int = 1,
                  force: bool = False) -> Path:
    """Write ``pipeline`` as a Triton model repository at ``output`` (see the module docstring).

    ``sample``: pipeline inputs for one traced run (the types of the tensors between composing
    models come from it). ``name``: the ensemble's name (default: the pipeline's). ``image_input``:
    how an image input (a uint8 HWC array in ``sample``) is declared: "encoded" or "raw". ``instances``:
    the instance count of each run of ops (concurrent requests run that many at once; the model steps
    keep one instance with dynamic batching).
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline.from_file(pipeline)
    if not isinstance(instances, int) or instances < 1:
        raise UserError(f"instances: expected a positive integer, got {instances!r}")
    if image_input not in IMAGE_INPUTS:
        raise UserError(f"image_input: expected one of {', '.join(IMAGE_INPUTS)}, got {image_input!r}")
    name = name or pipeline.name
    parts = segments(pipeline)
    out = Path(output)
    check_target(out, force, [p for p in pipeline.files().values()])
    try:
        trace = pipeline.run(dict(sample), trace=True).trace or {}
    except PipelineError as e:
        raise UserError(f"sample run: {e}") from e
    types = {t: _declared(t, v, t in pipeline.inputs, image_input) for t, v in trace.items()}
    with staged(out) as tmp:
        steps = []
        for i, part in enumerate(parts):
            model = f"{name}_{part[0].name}"
            reads = _reads(part)
            writes = _writes(part, parts[i + 1:], pipeline.outputs)
            for t in reads + writes:
                _crossable(t, trace[t], t in pipeline.outputs and t not in reads, types[t])
            if part[0].kind == "model":
                _model_step(tmp / model, pipeline, part[0])
                steps.append((model, dict(part[0].inputs), dict(part[0].outputs)))
            else:
                sub = Pipeline(part, inputs=reads, outputs=writes, name=model, base=pipeline.base)
                bundle(sub, tmp / model / "1")
                # a stateful op (the tracker) keeps its state per sequence: the ensemble is then called with
                # sequence_id / sequence_start / sequence_end, Triton's sequence batching
                stateful = "sequence_batching { max_sequence_idle_microseconds: 60000000 }\n" \
                    if sub.stateful_steps else ""
                (tmp / model / "config.pbtxt").write_text(
                    _config(model, 'backend: "slipway_pipeline"', 0, [(t, types[t]) for t in reads],
                            [(t, types[t]) for t in writes])
                    + f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n" + stateful, encoding="utf-8")
                steps.append((model, {t: t for t in reads}, {t: t for t in writes}))
        ensemble = _config(name, 'platform: "ensemble"', 0, [(t, types[t]) for t in pipeline.inputs],
                           [(t, types[t]) for t in pipeline.outputs])
        ensemble += "ensemble_scheduling {\n  step [\n" + ",\n".join(_step_text(*s) for s in steps) + "\n  ]\n}\n"
        (tmp / name / "1").mkdir(parents=True)
        (tmp / name / "config.pbtxt").write_text(ensemble, encoding="utf-8")
    return out


def _reads(part: list[Step]) -> list[str]:
    """Tensors the segment reads from outside itself, in first-use order."""
    written = {t for s in part for t in s.outputs.values()}
    return list(dict.fromkeys(t for s in part for t in s.inputs.values() if t not in written))


def _writes(part: list[Step], later: list[list[Step]], outputs: list[str]) -> list[str]:
    """Tensors the segment writes that a later segment reads or the pipeline returns."""
    wanted = {t for p in later for s in p for t in s.inputs.values()} | set(outputs)
    return [t for s in part for t in s.outputs.values() if t in wanted]


def _declared(tensor: str, value: Any, is_input: bool, image_input: str) -> tuple[str, list[int]]:
    """(config TYPE_*, dims) of a tensor as it travels (see the module docstring)."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        if is_input and value.dtype == np.uint8 and value.ndim == 3 and image_input == "encoded":
            return "TYPE_STRING", [1]
        return config_type(datatype_of(value.dtype)), [-1] * max(value.ndim, 1)
    if isinstance(value, np.generic | int | float | bool):
        return config_type(datatype_of(np.asarray(value).dtype)), [1]
    return "TYPE_STRING", [-1]


def _crossable(tensor: str, value: Any, output_only: bool, declared: tuple[str, list[int]]) -> None:
    if output_only or isinstance(value, np.ndarray | np.generic | int | float | bool | Mapping):
        return
    raise UserError(f"tensor {tensor!r} (a {type(value).__name__}) cannot pass between composing models: only "
                    "arrays and dicts can; keep the steps that use it in one run of ops")


def _model_step(folder: Path, pipeline: Pipeline, step: Step) -> None:
    from slipway.settings import settings_path

    src = pipeline.files()[(step.name, None)]
    version = folder / "1"
    version.mkdir(parents=True)
    dst = version / "model.onnx"
    shutil.copy2(src, dst)
    for loc in external_files(src):
        target = (version / loc).resolve()
        if not target.is_relative_to(version.resolve()):
            raise UserError(f"{src.name}: external data {loc!r} lies outside the model's folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.parent / loc, target)
    if settings_path(src).is_file():
        shutil.copy2(settings_path(src), settings_path(dst))
    params = {k: v for k, v in step.params.items() if k in ("backend", "threads") and v not in ("ort", 0, "0")}
    text = 'backend: "onnxruntime"\n'
    for key, value in params.items():
        text += f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
    (folder / "config.pbtxt").write_text(f'name: "{folder.name}"\n' + text, encoding="utf-8")


def _config(name: str, kind: str, max_batch_size: int, inputs: list[tuple[str, tuple[str, list[int]]]],
            outputs: list[tuple[str, tuple[str, list[int]]]]) -> str:
    def tensors(items: list[tuple[str, tuple[str, list[int]]]]) -> str:
        return ",\n".join(f'  {{ name: "{t}" data_type: {ty} dims: [ {", ".join(map(str, dims))} ] }}'
                          for t, (ty, dims) in items)

    return (f'name: "{name}"\n{kind}\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n")


def _step_text(model: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> str:
    lines = [f'      model_name: "{model}"', "      model_version: -1"]
    lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return "    {\n" + "\n".join(lines) + "\n    }"
