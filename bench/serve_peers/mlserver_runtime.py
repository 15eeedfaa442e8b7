"""A minimal MLServer runtime that runs an ONNX model with onnxruntime (MLServer has no ONNX runtime).

Loaded by MLServer from ``model-settings.json`` (``"implementation": "mlserver_runtime.OnnxModel"``,
with this folder on PYTHONPATH). ``parameters.extra.intra_op_threads`` sets onnxruntime's
intra-op threads. The session runs in one worker thread (one model instance: MLServer has no
in-process instances, so the bench gives it only the 1 x all-threads layout), so the event loop keeps serving I/O while a batch runs; adaptive
batching (``max_batch_size`` / ``max_batch_time``) merges requests before ``predict``.
Runs in bench/.venvs/mlserver, not in slipway's venv.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        extra = (self._settings.parameters.extra if self._settings.parameters else None) or {}
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(extra.get("intra_op_threads", 0))
        so.inter_op_num_threads = 1
        self._session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ort")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self._session.run, None, feeds)
        outputs = [NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, results, strict=True)]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)
