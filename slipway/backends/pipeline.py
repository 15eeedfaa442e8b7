"""The "pipeline" engine: a pipeline file (``pipeline.yaml``, :mod:`slipway.pipeline`) served as one model.

A Triton-layout repository serves ``MODEL/VERSION/pipeline.yaml`` with its models beside it (the
paths in the file are relative to it, as ``Pipeline.to_file`` and ``slipway bundle`` write them)
under ``backend: "slipway_pipeline"``. Every instance is its own :class:`~slipway.pipeline.Pipeline`
(its model sessions created on load), and a request is one ``Pipeline.run``.

* Inputs and outputs are declared in config.pbtxt: a pipeline file names its inputs and outputs but
  gives them no types or shapes (:func:`pipeline_io` reads the names, and the server checks the
  config's against them). ``max_batch_size: 0``: one request is one run (one image).
* An image input is sent either as raw pixels (``TYPE_UINT8``, ``dims: [ -1, -1, 3 ]``, HWC, in the
  channel order the pipeline takes: BGR for the OCR and layout pipelines) or encoded
  (``TYPE_STRING``, ``dims: [ 1 ]``: one JPEG / PNG / ... file, decoded here with
  ``cv2.imdecode`` into BGR). A BYTES input is an encoded image unless its first element starts
  with ``{`` or ``[`` (which no image format does): then every element is JSON, read back into one
  object when there is one element, else a list (what :func:`to_tensor` writes, and how a dict
  crosses between the composing models of an ensemble, :mod:`slipway.pipeline.triton`). An image
  that does not decode, or JSON that does not parse, is a one-line 400 error naming the input.
* Outputs: numpy arrays pass as they are; a list of dicts (the OCR pipeline's ``lines``) becomes a
  BYTES tensor of JSON strings, one element per item (arrays inside as nested lists); a list of
  strings a BYTES tensor; a lone dict one JSON string.
* ``python`` steps are refused outright (the file is read with ``allow_python=False``): a served
  pipeline runs registered ops and models only, so it needs no ``--allow-python-models``.
* A step that fails on the request's data (a one-line ``UserError``) is a 400 naming the step; one
  that crashes is a 500.
* State: a pipeline with stateful ops (``track``) keeps their state per sequence when its config has
  ``sequence_batching``: the server hands ``run`` the sequence's ``state`` (:mod:`slipway.serve.sequence`,
  made at ``sequence_start``, freed at the end or idle timeout); :attr:`PipelineSession.stateful` names
  those steps (the server refuses to serve them without sequence batching).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slipway.backends.base import UNTYPED, ConfigDeclared, FileBackend, Options, TensorInfo
from slipway.errors import UserError

__all__ = ["PipelineBackend", "PipelineSession", "PIPELINE", "decode_input", "decode_image", "to_tensor",
           "pipeline_io"]


def pipeline_io(path: Path, label: str) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The input and output names of a pipeline file, untyped (:data:`~slipway.backends.base.UNTYPED`)."""
    import yaml

    from slipway.pipeline import Pipeline

    try:
        pipeline = Pipeline.from_file(path, allow_python=False)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{label}: {e}") from None
    except UserError as e:
        raise UserError(f"{label}: {e}") from None

    def untyped(names: list[str]) -> list[TensorInfo]:
        return [TensorInfo(n, None, None, UNTYPED) for n in names]

    return untyped(pipeline.inputs), untyped(pipeline.outputs)


class PipelineBackend(FileBackend):
    name = "pipeline"
    file = "a pipeline.yaml file"

    def load(self, model: Any, options: Options | None = None, *, instances: int = 1) -> list[PipelineSession]:
        """``instances`` sessions, each its own pipeline read from the file ``model`` (python steps refused)."""
        from slipway.pipeline import Pipeline

        opts = self._options(model, options, instances)
        sessions = []
        try:
            for _ in range(instances):
                pipeline = Pipeline.from_file(model, allow_python=False)
                sessions.append(PipelineSession(pipeline, opts))
                _confined(pipeline, Path(model))
                for step in pipeline.steps:  # create the model sessions now, not on the first request
                    if step.kind == "model":
                        pipeline.session(step.name)
        except BaseException:
            for s in sessions:
                s.close()
            raise
        return sessions


def _confined(pipeline: Any, file: Path) -> None:
    """Every file a served pipeline reads lies in its own version folder (a repository's pipeline file
    must not reach other models or the server's files through absolute or ``..`` paths)."""
    folder = file.resolve().parent
    for (step, param), path in pipeline.files().items():
        if not path.resolve().is_relative_to(folder):
            what = f"params {param!r}" if param else "model"
            raise UserError(f"{file.name}: step {step!r} {what} reads a file outside its folder: "
                            f"{path.name} (keep the pipeline's models beside it)")


def decode_input(name: str, value: Any) -> Any:
    """A request tensor as the pipeline takes it: arrays as they are, BYTES as JSON or an encoded image."""
    if not isinstance(value, np.ndarray) or value.dtype != object:
        return value
    flat = value.reshape(-1)
    first = flat[0] if flat.size else b""
    head = (first.encode() if isinstance(first, str) else bytes(first)).lstrip()[:1]
    if head not in (b"{", b"["):
        return decode_image(name, value)
    items = []
    for i, x in enumerate(flat):
        try:
            items.append(json.loads(x))
        except (ValueError, TypeError) as e:
            raise UserError(f"input {name!r}: element {i} is not JSON ({e})") from None
    return items[0] if len(items) == 1 else items


def decode_image(name: str, value: np.ndarray) -> np.ndarray:
    """The HWC uint8 BGR image encoded in the BYTES tensor ``value`` (one element); a one-line UserError
    naming the input when it holds no single decodable image."""
    import cv2

    flat = np.asarray(value, dtype=object).reshape(-1)
    if flat.size != 1:
        raise UserError(f"input {name!r}: expected one encoded image, got {flat.size} elements")
    data = flat[0]
    if isinstance(data, str):
        data = data.encode("latin-1", "replace")
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if image is None:
        raise UserError(f"input {name!r}: not a decodable image ({buf.size} bytes; send a JPEG or PNG file, "
                        f"or raw UINT8 HWC pixels)")
    return image


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", "replace")
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def _json(x: Any) -> bytes:
    return json.dumps(x, default=_json_default, ensure_ascii=False).encode()


def to_tensor(name: str, value: Any) -> np.ndarray:
    """A pipeline output as a tensor: arrays as they are, a list of dicts as JSON strings (one per item)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Mapping):
        return np.array([_json(value)], dtype=object)
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (Mapping, list, tuple)) for v in value):
            out = np.empty(len(value), dtype=object)
            out[:] = [_json(v) for v in value]
            return out
        if all(isinstance(v, (str, bytes)) for v in value):
            out = np.empty(len(value), dtype=object)
            out[:] = [v.encode() if isinstance(v, str) else v for v in value]
            return out
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as e:
        raise UserError(f"output {name!r}: a {type(value).__name__} is not a tensor ({e})") from None


class PipelineSession(ConfigDeclared):
    backend = "pipeline"

    def __init__(self, pipeline: Any, options: Options) -> None:
        self.pipeline = pipeline
        self.options = options

    @property
    def stateful(self) -> list[str]:
        """The steps that keep state between runs (stateful ops), in run order."""
        return self.pipeline.stateful_steps

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None, *,
            state: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """One pipeline run; ``state``: the stateful ops' state for this request's sequence (None: the
        pipeline's own)."""
        from slipway.pipeline import PipelineError

        values = {name: decode_input(name, a) for name, a in feeds.items()}
        try:
            result = self.pipeline.run(values, state=state)
        except PipelineError as e:
            cause = e.__cause__
            if cause is not None and not isinstance(cause, UserError):
                raise RuntimeError(str(e)) from e  # a crash, not the request's fault: 500
            raise
        names = list(result.outputs) if outputs is None else list(outputs)
        return {name: to_tensor(name, result.outputs[name]) for name in names}

    def close(self) -> None:
        self.pipeline.close()


PIPELINE = PipelineBackend()
