"""Serve ONNX models with Triton Inference Server through PyTriton, for bench/serve.py.

Each ``--model NAME=PATH`` is bound as a PyTriton model with ``--instances`` model instances (a
list of infer callables: Triton's instance_group count), each running the ONNX file in its own
onnxruntime session of ``--threads`` intra-op threads, with Triton's dynamic batcher on
(``--max-batch-size``, ``--queue-delay-us``). Runs in bench/.venvs/pytriton (numpy<2), not in
slipway's venv; blocks until SIGINT/SIGTERM.

    python pytriton_server.py --model tiny=/tmp/tiny.onnx --http-port 8000 --grpc-port 8001 --metrics-port 8002
"""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
       "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def session(path: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def tensors(args) -> list[Tensor]:
    return [Tensor(name=a.name, dtype=_NP[a.type], shape=tuple(int(d) for d in a.shape[1:])) for a in args]


def infer_fn(sess: ort.InferenceSession):
    names = [o.name for o in sess.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(None, inputs), strict=True))

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH of an ONNX model")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads per instance (0 = all cores)")
    parser.add_argument("--instances", type=int, default=1, help="model instances, each with its own session")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--queue-delay-us", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, metrics_address="127.0.0.1", metrics_port=args.metrics_port,
                          allow_gpu_metrics=False, log_verbose=0)
    # statistics are a protected endpoint in PyTriton: a known token lets slipway perf read them (-H)
    security = TritonSecurityConfig(access_token=os.environ.get("PYTRITON_ACCESS_TOKEN") or None)
    with Triton(config=config, security_config=security) as triton:
        for spec in args.model:
            name, _, path = spec.partition("=")
            sessions = [session(path, args.threads) for _ in range(max(1, args.instances))]
            sess = sessions[0]
            triton.bind(model_name=name, infer_func=[infer_fn(s) for s in sessions], inputs=tensors(sess.get_inputs()),
                        outputs=tensors(sess.get_outputs()),
                        config=ModelConfig(batching=True, max_batch_size=args.max_batch_size,
                                           batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us)),
                        strict=True)
        triton.serve()


if __name__ == "__main__":
    main()
