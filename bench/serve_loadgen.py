"""Closed-loop load generator for ``bench/serve.py``: N concurrent tritonclient clients against one model.

Runs in its own process so that the client's CPU (measured here with ``os.times``) is not charged
to the server and the server's to it. Each of ``--concurrency`` clients sends its next request as
soon as the previous one answered. Every reply is checked against the expected output of the
input it was sent for (a pool of different inputs, so a server that mixes up rows between
batched requests is caught); a reply that fails the check counts as ``wrong``, one that raises as
``failed``.

Two client styles: ``aio`` (``tritonclient.http.aio`` / ``tritonclient.grpc.aio`` on one uvloop
event loop) and ``threads`` (one synchronous client per thread). ``--json`` sends and asks for
JSON tensors (``binary_data=False``) for servers that speak only JSON (MLServer).

Prints one JSON object: requests, failed, wrong, seconds, rps, latency percentiles (ms), client
CPU seconds per wall second, the first error messages; ``--latencies F.npy`` saves every latency.

    python -m bench.serve_loadgen --url 127.0.0.1:8000 --protocol http --model tiny \
        --data pool.npz --concurrency 16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WARM_LIMIT_S = 120.0  # open the window after this long even if some client never had a reply


class Pool:
    """Inputs (``K`` samples per input name) and, per sample, the expected outputs and their tolerances."""

    def __init__(self, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], rtol: float,
                 atol: float) -> None:
        self.inputs = inputs
        self.size = len(next(iter(inputs.values())))
        self.expected = list(expected)
        # per sample: name -> (expected [1, ...], its bytes, allowed |difference|)
        self.samples = [{n: (e[i:i + 1], e[i:i + 1].tobytes(), atol + rtol * np.abs(e[i:i + 1]))
                         for n, e in expected.items()} for i in range(self.size)]


@dataclass
class Tally:
    """What the clients saw inside the measurement window."""

    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    wrong: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, message: str, wrong: bool) -> None:
        if wrong:
            self.wrong += 1
        else:
            self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(message[:300])


def load_pool(path: str, rtol: float, atol: float) -> Pool:
    data = np.load(path)
    inputs = {k[3:]: data[k] for k in data.files if k.startswith("in:")}
    expected = {k[4:]: data[k] for k in data.files if k.startswith("out:")}
    return Pool(inputs, expected, rtol, atol)


def check(pool: Pool, index: int, result: Any) -> str:
    """'' when every expected output of sample ``index`` is in ``result``; else what was wrong.

    Cheap on purpose (it runs for every reply, in the client's CPU budget): an exact byte match,
    else ``|got - want| <= atol + rtol * |want|`` elementwise with the bound precomputed."""
    for name, (want, raw, bound) in pool.samples[index].items():
        got = result.as_numpy(name)
        if got is None:
            return f"output {name} missing from the reply"
        if got.shape != want.shape:
            return f"output {name} has shape {list(got.shape)}, expected {list(want.shape)}"
        if got.dtype == want.dtype and got.tobytes() == raw:
            continue
        diff = np.abs(got.astype(want.dtype, copy=False) - want)
        if not (diff <= bound).all():
            return f"output {name} differs from the expected values (max abs {np.max(diff):.3g})"
    return ""


def make_requests(module: Any, http: bool, pool: Pool, binary: bool) -> tuple[list[list[Any]], list[Any]]:
    """Prebuilt InferInput lists (one per sample) and the requested outputs; reused by every request."""
    requests = []
    for i in range(pool.size):
        one = []
        for name, data in pool.inputs.items():
            x = np.ascontiguousarray(data[i:i + 1])
            inp = module.InferInput(name, list(x.shape), triton_datatype(x))
            if http:
                inp.set_data_from_numpy(x, binary_data=binary)
            else:
                inp.set_data_from_numpy(x)
            one.append(inp)
        requests.append(one)
    if http:
        outputs = [module.InferRequestedOutput(n, binary_data=binary) for n in pool.expected]
    else:
        outputs = [module.InferRequestedOutput(n) for n in pool.expected]
    return requests, outputs


def triton_datatype(x: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(x.dtype)


class Window:
    """The measurement window [start, end) in perf_counter time, with the CPU times at both ends.

    It opens after the warm-up once every client has had at least one reply (so slow requests do
    not leave the window empty) and lasts ``duration`` seconds; a request counts when its reply
    arrives inside it. With ``total`` > 0 it opens at once and the clients send ``total`` requests.
    """

    def __init__(self, duration: float, total: int, concurrency: int) -> None:
        self.duration, self.total, self.concurrency = duration, total, concurrency
        self.start = self.end = float("inf")
        self.issued = 0
        self.answered: set[int] = set()
        self.cpu0 = self.cpu1 = os.times()
        self.t0 = self.t1 = 0.0
        self.lock = threading.Lock()

    def next(self) -> bool:
        """Whether a client may send another request."""
        if self.total:
            with self.lock:
                if self.issued >= self.total:
                    return False
                self.issued += 1
            return True
        return time.perf_counter() < self.end

    def record(self, tally: Tally, client: int, t0: float, t1: float, problem: str, replied: bool) -> None:
        self.answered.add(client)
        if not self.start <= t1 < self.end:
            return
        with self.lock:
            if problem:
                tally.error(problem, wrong=replied)
            else:
                tally.latencies.append(t1 - t0)

    def warm(self) -> bool:
        return len(self.answered) >= self.concurrency

    def open(self) -> None:
        self.cpu0, self.t0 = os.times(), time.perf_counter()
        self.start = self.t0
        self.end = self.start + self.duration if not self.total else float("inf")

    def close(self) -> None:
        self.cpu1, self.t1 = os.times(), time.perf_counter()


async def aio_client(client: Any, model: str, requests: list[list[Any]], outputs: list[Any], pool: Pool,
                     window: Window, tally: Tally, me: int, headers: dict[str, str] | None) -> None:
    i = me
    while window.next():
        k = i % pool.size
        i += 1
        t0 = time.perf_counter()
        try:
            result = await client.infer(model, requests[k], outputs=outputs, headers=headers)
            problem, replied = check(pool, k, result), True
        except Exception as e:  # any client-side exception is a failed request
            problem, replied = f"{type(e).__name__}: {e}", False
        window.record(tally, me, t0, time.perf_counter(), problem, replied)


def aio_http_headers(args: argparse.Namespace) -> dict[str, str]:
    """aiohttp asks for gzip by default and tritonclient's aio client then cannot read a gzipped reply
    (MLServer compresses): ask for none, as the synchronous client does. aiohttp also labels the body
    application/octet-stream, which MLServer (FastAPI) then does not parse as JSON: say it is JSON."""
    headers = {"Accept-Encoding": "identity"}
    if args.json:
        headers["Content-Type"] = "application/json"
    return headers


async def run_aio(args: argparse.Namespace, pool: Pool, tally: Tally) -> Window:
    if args.protocol == "http":
        import tritonclient.http.aio as module

        client = module.InferenceServerClient(args.url, conn_limit=max(100, args.concurrency), conn_timeout=600.0)
    else:
        import tritonclient.grpc.aio as module

        client = module.InferenceServerClient(args.url)
    requests, outputs = make_requests(module, args.protocol == "http", pool, not args.json)
    window = Window(args.duration, args.requests, args.concurrency)
    headers = aio_http_headers(args) if args.protocol == "http" else None
    try:
        if args.requests:
            window.open()
        else:
            clock = asyncio.create_task(aio_clock(window, args.warmup))
        await asyncio.gather(*(aio_client(client, args.model, requests, outputs, pool, window, tally, c, headers)
                               for c in range(args.concurrency)))
        if args.requests:
            window.close()
        else:
            await clock
    finally:
        await client.close()
    return window


async def aio_clock(window: Window, warmup: float) -> None:
    await asyncio.sleep(warmup)
    deadline = time.perf_counter() + WARM_LIMIT_S
    while not window.warm() and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    window.open()
    await asyncio.sleep(window.duration)
    window.close()


def run_threads(args: argparse.Namespace, pool: Pool, tally: Tally) -> Window:
    if args.protocol == "http":
        import tritonclient.http as module

        def make() -> Any:
            return module.InferenceServerClient(args.url, concurrency=1, connection_timeout=600.0,
                                                network_timeout=600.0)
    else:
        import tritonclient.grpc as module

        def make() -> Any:
            return module.InferenceServerClient(args.url)
    requests, outputs = make_requests(module, args.protocol == "http", pool, not args.json)
    window = Window(args.duration, args.requests, args.concurrency)

    def worker(me: int) -> None:
        client = make()
        i = me
        while window.next():
            k = i % pool.size
            i += 1
            t0 = time.perf_counter()
            try:
                result = client.infer(args.model, requests[k], outputs=outputs)
                problem, replied = check(pool, k, result), True
            except Exception as e:  # any client-side exception is a failed request
                problem, replied = f"{type(e).__name__}: {e}", False
            window.record(tally, me, t0, time.perf_counter(), problem, replied)
        client.close()

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(args.concurrency)]
    if args.requests:
        window.open()
    for t in threads:
        t.start()
    if not args.requests:
        time.sleep(args.warmup)
        deadline = time.perf_counter() + WARM_LIMIT_S
        while not window.warm() and time.perf_counter() < deadline:
            time.sleep(0.01)
        window.open()
        time.sleep(window.duration)
        window.close()
    for t in threads:
        t.join()
    if args.requests:
        window.close()
    return window


def summary(args: argparse.Namespace, window: Window, tally: Tally) -> dict[str, Any]:
    seconds = max(1e-9, window.t1 - window.t0)
    cpu = (window.cpu1.user + window.cpu1.system) - (window.cpu0.user + window.cpu0.system)
    lat = np.asarray(tally.latencies) * 1e3
    pct = {f"p{q}_ms": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 90, 99)}
    done = len(lat)
    return {"protocol": args.protocol, "model": args.model, "concurrency": args.concurrency,
            "client": args.client, "json": args.json, "requests": done, "failed": tally.failed,
            "wrong": tally.wrong, "seconds": seconds, "rps": done / seconds, **pct,
            "mean_ms": float(lat.mean()) if done else None, "client_cpu_s": cpu,
            "client_cpu_per_s": cpu / seconds, "errors": tally.errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="host:port of the server's HTTP or gRPC endpoint")
    parser.add_argument("--protocol", choices=["http", "grpc"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help=".npz with in:NAME inputs and out:NAME expected outputs")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before the window")
    parser.add_argument("--requests", type=int, default=0, help="send exactly this many requests instead")
    parser.add_argument("--client", choices=["aio", "threads"], default="aio")
    parser.add_argument("--json", action="store_true", help="JSON tensors (binary_data=False), HTTP only")
    parser.add_argument("--rtol", type=float, default=1e-3)
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--latencies", help="save every measured latency (seconds) to this .npy file")
    args = parser.parse_args()
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    pool = load_pool(args.data, args.rtol, args.atol)
    tally = Tally()
    if args.client == "aio":
        try:
            import uvloop

            window = uvloop.run(run_aio(args, pool, tally))
        except ImportError:
            window = asyncio.run(run_aio(args, pool, tally))
    else:
        window = run_threads(args, pool, tally)
    if args.latencies:
        np.save(args.latencies, np.asarray(tally.latencies))
    print(json.dumps(summary(args, window, tally)), flush=True)


if __name__ == "__main__":
    main()
