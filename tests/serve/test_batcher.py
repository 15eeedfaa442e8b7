"""The dynamic batcher: merging, preferred sizes, delays, bounds, timeouts, priorities, cancellation, closing."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from slipway.errors import ServeError, UserError
from slipway.serve.batcher import Batcher, BatchPolicy, QueuePolicy
from slipway.serve.stats import ModelStats

W = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


class Engine:
    """A run fn: y = x @ W. Records every batch it gets; ``hold`` keeps an instance busy until released."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.batches: list[tuple[int, dict[str, np.ndarray]]] = []
        self.released = threading.Event()
        self.released.set()
        self.started = threading.Event()
        self.sleep = sleep

    def hold(self) -> None:
        self.released.clear()
        self.started.clear()

    def __call__(self, instance: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append((instance, {k: v.copy() for k, v in feeds.items()}))
        self.started.set()
        self.released.wait(10)
        if self.sleep:
            time.sleep(self.sleep)
        return {"y": feeds["x"] @ W}

    def rows(self) -> list[int]:
        return [len(f["x"]) for _, f in self.batches]


def make(engine, *, instances: int = 1, max_pending: int = 1024, **policy) -> tuple[Batcher, ModelStats]:
    stats = ModelStats("m", "1")
    return Batcher(engine, instances, BatchPolicy(**policy), stats, max_pending=max_pending, name="m"), stats


def x(rows: int, value: float = 1.0, cols: int = 4, dtype=np.float32) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, cols), value, dtype)}


async def busy(b: Batcher, engine: Engine, rows: int = 1) -> asyncio.Task:
    """Occupy the only instance: a request whose run blocks until ``engine.released`` is set."""
    engine.hold()
    task = asyncio.create_task(b.infer(x(rows, -1.0)))
    assert await asyncio.to_thread(engine.started.wait, 5)
    return task


async def queued(b: Batcher, n: int) -> None:
    """Wait until ``n`` requests are pending (queued or running)."""
    for _ in range(1000):
        if b.pending >= n:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{b.pending} pending, expected {n}")


def test_merges_under_concurrency_and_every_result_is_its_own():
    async def main():
        engine = Engine()
        b, stats = make(engine, max_batch_size=8, dynamic=True)
        first = await busy(b, engine)
        rng = np.random.default_rng(1)
        feeds = [{"x": rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32)} for _ in range(20)]
        tasks = [asyncio.create_task(b.infer(f)) for f in feeds]
        await queued(b, 21)
        engine.released.set()
        outs = await asyncio.gather(*tasks)
        await first
        for f, out in zip(feeds, outs, strict=True):
            np.testing.assert_allclose(out["y"], f["x"] @ W, rtol=1e-5, atol=1e-6)
        rows = engine.rows()
        assert max(rows) > 1 and max(rows) <= 8
        assert sum(rows) == 1 + sum(len(f["x"]) for f in feeds)
        assert stats.execution_count == len(rows) < 21
        assert sum(n * b.compute_infer.count for n, b in stats.batches.items()) == sum(rows)
        await b.close()

    asyncio.run(main())


def _matmul_session() -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(W, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_onnxruntime_session_batched_equals_single():
    sess = _matmul_session()

    def run(instance: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(["y"], sess.run(None, feeds), strict=True))

    async def main():
        b, stats = make(run, max_batch_size=16, dynamic=True, max_queue_delay_us=20_000)
        rng = np.random.default_rng(2)
        feeds = [{"x": rng.standard_normal((1 + i % 2, 4)).astype(np.float32)} for i in range(32)]
        outs = await asyncio.gather(*[b.infer(f) for f in feeds])
        for f, out in zip(feeds, outs, strict=True):
            np.testing.assert_allclose(out["y"], sess.run(None, f)[0], rtol=1e-5, atol=1e-6)
        assert stats.execution_count < 32 and max(stats.batches) > 1
        await b.close()

    asyncio.run(main())


def test_preferred_size_runs_at_once_and_the_rest_waits_for_the_delay():
    async def main():
        engine = Engine()
        b, stats = make(engine, max_batch_size=8, dynamic=True, preferred_batch_sizes=[2, 4],
                        max_queue_delay_us=400_000)
        engine.hold()
        t0 = time.monotonic()
        first = asyncio.create_task(b.infer(x(2)))  # a preferred size: runs without waiting for the delay
        assert await asyncio.to_thread(engine.started.wait, 5)
        assert time.monotonic() - t0 < 0.35
        t1 = time.monotonic()
        tasks = [asyncio.create_task(b.infer(x(1, i))) for i in range(5)]
        await queued(b, 6)
        engine.released.set()
        await asyncio.gather(first, *tasks)
        assert time.monotonic() - t1 >= 0.39  # the leftover waited for max_queue_delay
        assert engine.rows() == [2, 4, 1]  # 5 queued: the largest preferred size went at once, one row stayed
        assert sorted(stats.batches) == [1, 2, 4]
        await b.close()

    asyncio.run(main())


def test_max_queue_delay_waits_then_runs_what_it_has():
    async def main():
        engine = Engine()
        b, _ = make(engine, max_batch_size=8, dynamic=True, max_queue_delay_us=150_000)
        t0 = time.monotonic()
        await b.infer(x(1))
        assert time.monotonic() - t0 >= 0.14
        engine.batches.clear()
        t0 = time.monotonic()
        tasks = []
        for i in range(3):
            tasks.append(asyncio.create_task(b.infer(x(1, i))))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        assert engine.rows() == [3]
        assert 0.14 <= time.monotonic() - t0 < 1.0
        await b.close()

    asyncio.run(main())


def test_max_batch_size_is_respected():
    async def main():
        engine = Engine()
        b, _ = make(engine, max_batch_size=4, dynamic=True)
        first = await busy(b, engine)
        tasks = [asyncio.create_task(b.infer(x(1 + i % 3))) for i in range(10)]
        await queued(b, 11)
        engine.released.set()
        await asyncio.gather(first, *tasks)
        assert max(engine.rows()) <= 4 and sum(engine.rows()) == 1 + sum(1 + i % 3 for i in range(10))
        with pytest.raises(ServeError, match="batch size 5") as e:
            await b.infer(x(5))
        assert e.value.status == 400
        await b.close()

    asyncio.run(main())


def test_different_shapes_or_dtypes_are_not_merged():
    def run(instance: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append((feeds["x"].shape, feeds["x"].dtype))
        engine.released.wait(10)
        return {"y": feeds["x"] * 2}

    seen: list = []
    engine = Engine()

    async def main():
        b, _ = make(run, max_batch_size=8, dynamic=True)
        engine.hold()
        first = asyncio.create_task(b.infer(x(1)))
        await queued(b, 1)
        kinds = [(4, np.float32), (4, np.float32), (5, np.float32), (5, np.float32), (4, np.float64), (4, np.float32)]
        tasks = [asyncio.create_task(b.infer(x(1, cols=c, dtype=d))) for c, d in kinds]
        await queued(b, 7)
        engine.released.set()
        outs = await asyncio.gather(first, *tasks)
        for (c, d), out in zip(kinds, outs[1:], strict=True):
            assert out["y"].shape == (1, c) and out["y"].dtype == d
        # the queue order holds: a batch ends at the first request that does not match
        assert seen[1:] == [((2, 4), np.float32), ((2, 5), np.float32), ((1, 4), np.float64), ((1, 4), np.float32)]
        await b.close()

    asyncio.run(main())


def test_full_queue_is_refused_at_once():
    async def main():
        engine = Engine()
        b, stats = make(engine, max_pending=4, max_batch_size=8, dynamic=True)
        first = await busy(b, engine)
        tasks = [asyncio.create_task(b.infer(x(1))) for _ in range(4)]
        await queued(b, 5)
        t0 = time.monotonic()
        with pytest.raises(ServeError, match=r"model m: queue full \(5 requests pending\)") as e:
            await b.infer(x(1))
        assert time.monotonic() - t0 < 0.05 and e.value.status == 503
        assert stats.failures["REJECTED"] == 1
        engine.released.set()
        await asyncio.gather(first, *tasks)
        await b.close()

    asyncio.run(main())


def test_per_level_max_queue_size():
    async def main():
        engine = Engine()
        b, _ = make(engine, max_batch_size=0, priority_levels=2, default_priority=2,
                    priority_queue_policy={1: QueuePolicy(max_queue_size=1)})
        first = await busy(b, engine)
        one = asyncio.create_task(b.infer(x(1), priority=1))
        await queued(b, 2)
        with pytest.raises(ServeError, match="queue full"):
            await b.infer(x(1), priority=1)
        two = asyncio.create_task(b.infer(x(1), priority=2))  # the other level still has room
        await queued(b, 3)
        engine.released.set()
        await asyncio.gather(first, one, two)
        await b.close()

    asyncio.run(main())


def test_timeout_reject_fails_a_queued_request_while_the_instance_is_busy():
    async def main():
        engine = Engine()
        policy = QueuePolicy(timeout_us=300_000, allow_timeout_override=True)
        b, stats = make(engine, max_batch_size=0, default_queue_policy=policy)
        first = await busy(b, engine)
        t0 = time.monotonic()
        with pytest.raises(ServeError, match=r"model m: request timed out after \d+\.\d ms in the queue") as e:
            await b.infer(x(1))
        assert e.value.status == 503 and 0.29 <= time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        with pytest.raises(ServeError, match="timed out"):
            await b.infer(x(1), timeout_us=10_000)  # the request's own timeout
        assert time.monotonic() - t0 < 0.25
        assert not engine.released.is_set() and b.pending == 1
        assert stats.failures["REJECTED"] == 2
        engine.released.set()
        await first
        await b.close()

    asyncio.run(main())


def test_timeout_delay_keeps_the_request_but_runs_it_after_the_others():
    async def main():
        engine = Engine()
        policy = QueuePolicy(allow_timeout_override=True, timeout_action="DELAY")
        b, stats = make(engine, max_batch_size=0, default_queue_policy=policy)
        first = await busy(b, engine)
        late = asyncio.create_task(b.infer(x(1, 7.0), timeout_us=10_000))
        await queued(b, 2)
        await asyncio.sleep(0.05)  # its deadline passes while it waits
        others = [asyncio.create_task(b.infer(x(1, v))) for v in (8.0, 9.0)]
        await queued(b, 4)
        engine.released.set()
        await asyncio.gather(first, late, *others)
        assert [float(f["x"][0, 0]) for _, f in engine.batches] == [-1.0, 8.0, 9.0, 7.0]
        assert not stats.failures
        await b.close()

    asyncio.run(main())


def test_priorities_run_highest_first():
    async def main():
        engine = Engine()
        b, _ = make(engine, max_batch_size=0, priority_levels=3, default_priority=2)
        first = await busy(b, engine)
        tasks = [asyncio.create_task(b.infer(x(1, p), priority=p)) for p in (3, 0, 2, 1, 3, 1)]
        await queued(b, 7)
        engine.released.set()
        await asyncio.gather(first, *tasks)
        assert [float(f["x"][0, 0]) for _, f in engine.batches] == [-1, 1, 1, 0, 2, 3, 3]
        with pytest.raises(ServeError, match="priority 4") as e:
            await b.infer(x(1), priority=4)
        assert e.value.status == 400
        await b.close()

    asyncio.run(main())


def test_default_priority_zero_is_the_lowest_level():
    async def main():
        engine = Engine()
        b, _ = make(engine, max_batch_size=0, priority_levels=2)
        first = await busy(b, engine)
        tasks = [asyncio.create_task(b.infer(x(1, p), priority=p)) for p in (0, 2, 1)]
        await queued(b, 4)
        engine.released.set()
        await asyncio.gather(first, *tasks)
        assert [float(f["x"][0, 0]) for _, f in engine.batches] == [-1, 1, 0, 2]
        await b.close()

    asyncio.run(main())


def test_cancelled_queued_request_never_runs():
    async def main():
        engine = Engine()
        b, stats = make(engine, max_batch_size=8, dynamic=True)
        first = await busy(b, engine)
        doomed = asyncio.create_task(b.infer(x(1, 42.0)))
        kept = asyncio.create_task(b.infer(x(1, 5.0)))
        await queued(b, 3)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert b.pending == 2
        engine.released.set()
        await asyncio.gather(first, kept)
        assert all(42.0 not in f["x"] for _, f in engine.batches)
        assert stats.failures["CANCELED"] == 1 and stats.success.count == 2
        # cancelled while running: the result is dropped, the batcher goes on
        engine.hold()
        running = asyncio.create_task(b.infer(x(1)))
        assert await asyncio.to_thread(engine.started.wait, 5)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert b.pending == 1
        engine.released.set()
        out = await b.infer(x(1, 2.0))
        np.testing.assert_allclose(out["y"], x(1, 2.0)["x"] @ W, rtol=1e-6)
        assert stats.failures["CANCELED"] == 2 and b.pending == 0
        await b.close()

    asyncio.run(main())


def test_run_errors_reach_every_caller_and_the_batcher_lives_on():
    mode = {"v": "ok"}

    def run(instance: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if mode["v"] == "crash":
            raise ValueError("boom\nsecond line")
        if mode["v"] == "user":
            raise UserError("input x has NaN")
        if mode["v"] == "serve":
            raise ServeError("payload too large", 413)
        if mode["v"] == "nobatch":
            return {"y": feeds["x"].sum(axis=0)[:3]}
        return {"y": feeds["x"] @ W}

    async def main():
        b, stats = make(run, max_batch_size=8, dynamic=True, max_queue_delay_us=5_000)
        cases = [("crash", 500, r"^model m failed: boom$"), ("user", 400, "^input x has NaN$"),
                 ("serve", 413, "^payload too large$"),
                 ("nobatch", 500, "^output y of model m does not have the batch dimension$")]
        for m, status, message in cases:
            mode["v"] = m
            results = await asyncio.gather(*[b.infer(x(2)) for _ in range(3)], return_exceptions=True)
            for r in results:
                assert isinstance(r, ServeError) and r.status == status, r
                assert re.match(message, str(r)), str(r)
        assert stats.failures["BACKEND"] == 12 and stats.execution_count == 0
        mode["v"] = "ok"
        out = await b.infer(x(2, 3.0))
        np.testing.assert_allclose(out["y"], x(2, 3.0)["x"] @ W, rtol=1e-6)
        assert b.pending == 0 and stats.success.count == 1
        await b.close()

    asyncio.run(main())


def test_close_drains_then_refuses():
    async def main():
        engine = Engine()
        b, _ = make(engine, instances=1, max_batch_size=2, dynamic=True, max_queue_delay_us=10_000_000)
        first = await busy(b, engine, rows=2)
        tasks = [asyncio.create_task(b.infer(x(1, i))) for i in range(5)]
        await queued(b, 6)
        closing = asyncio.create_task(b.close(drain=True))
        await asyncio.sleep(0.01)
        with pytest.raises(ServeError, match="model m is unloading") as e:
            await b.infer(x(1))
        assert e.value.status == 503 and not closing.done()
        engine.released.set()
        await asyncio.wait_for(closing, 5)  # the 10 s delay does not hold the drain
        assert engine.rows() == [2, 2, 2, 1]
        assert all(t.done() and t.exception() is None for t in tasks) and first.done()
        assert b.pending == 0
        await b.close()  # idempotent
        for _ in range(200):
            if not [t for t in threading.enumerate() if t.name.startswith("slipway-m-")]:
                break
            await asyncio.sleep(0.01)
        assert not [t for t in threading.enumerate() if t.name.startswith("slipway-m-")]

    asyncio.run(main())


def test_close_without_drain_fails_the_queued_and_finishes_the_running():
    async def main():
        engine = Engine()
        b, stats = make(engine, max_batch_size=0)
        first = await busy(b, engine)
        tasks = [asyncio.create_task(b.infer(x(1))) for _ in range(3)]
        await queued(b, 4)
        closing = asyncio.create_task(b.close(drain=False))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, ServeError) and r.status == 503 and "unloading" in str(r) for r in results)
        assert not closing.done()
        engine.released.set()
        await asyncio.wait_for(closing, 5)
        assert (await first)["y"].shape == (1, 3) and stats.failures["REJECTED"] == 3

    asyncio.run(main())


def test_instances_run_in_parallel():
    def timed(instances: int) -> tuple[float, set[int]]:
        engine = Engine(sleep=0.2)

        async def main():
            b, _ = make(engine, instances=instances, max_batch_size=0)
            t0 = time.monotonic()
            await asyncio.gather(*[b.infer(x(1)) for _ in range(4)])
            elapsed = time.monotonic() - t0
            await b.close()
            return elapsed

        return asyncio.run(main()), {i for i, _ in engine.batches}

    two, used = timed(2)
    assert used == {0, 1} and 0.35 <= two < 0.65
    one, used = timed(1)
    assert used == {0} and one >= 0.78


def test_stats_count_requests_rows_and_executions():
    async def main():
        engine = Engine()
        b, stats = make(engine, max_batch_size=8, dynamic=True)
        first = await busy(b, engine)
        tasks = [asyncio.create_task(b.infer(x(1 + i % 2))) for i in range(9)]
        await queued(b, 10)
        engine.released.set()
        await asyncio.gather(first, *tasks)
        rows = engine.rows()
        assert stats.success.count == stats.queue.count == stats.compute_infer.count == 10
        assert stats.inference_count == sum(rows) == 1 + sum(1 + i % 2 for i in range(9))
        assert stats.execution_count == len(rows) == sum(b.compute_infer.count for b in stats.batches.values())
        assert set(stats.batches) == set(rows)
        assert stats.compute_infer.ns > 0 and stats.queue.ns > 0 and not stats.failures
        await b.close()

    asyncio.run(main())


@pytest.mark.parametrize("policy, message", [
    (dict(max_batch_size=4, preferred_batch_sizes=[8]), "preferred_batch_size 8"),
    (dict(priority_levels=2, default_priority=3), "default_priority_level 3"),
    (dict(priority_levels=2, priority_queue_policy={5: QueuePolicy()}), "level 5"),
    (dict(default_queue_policy=QueuePolicy(timeout_action="DROP")), "REJECT or DELAY"),
])
def test_bad_policy_is_a_user_error(policy, message):
    with pytest.raises(UserError, match=message):
        make(Engine(), **policy)


def test_two_instances_share_the_rows_evenly():
    """Closed loop of 16 callers on 2 instances: batches stay near 8 + 8, not 15 + 1 (greedy ping-pong)."""
    engine = Engine(sleep=0.01)

    async def main() -> None:
        b, _ = make(engine, instances=2, max_batch_size=32, dynamic=True)
        engine.hold()
        first = asyncio.create_task(b.infer(x(1)))  # one instance starts on a batch of 1 ...
        assert await asyncio.to_thread(engine.started.wait, 5)
        engine.hold()

        async def caller() -> None:
            for _ in range(6):
                await b.infer(x(1))

        callers = [asyncio.create_task(caller()) for _ in range(15)]  # ... while 15 callers arrive
        await asyncio.sleep(0.05)
        engine.released.set()
        await asyncio.gather(first, *callers)
        await b.close()

    asyncio.run(main())
    late = engine.rows()[6:]  # after the start-up batches
    assert max(late) <= 9, engine.rows()  # no 15 + 1 ping-pong
    # batching at all (not 1 + 1 + ...): 8 on an idle machine, seen at 3.8 with the other test worker
    # starving the callers on 2 cores, so the bar is 3
    assert sum(late) / len(late) >= 3, engine.rows()


def _starts_while_the_loop_is_blocked(engine: Engine, seconds: float) -> bool:
    """Release the running batch while this (the loop's) thread blocks: does the next batch start meanwhile?"""
    engine.started.clear()
    engine.released.set()
    return engine.started.wait(seconds)


def test_a_full_batch_is_staged_behind_the_running_one_and_starts_without_the_loop():
    async def main():
        engine = Engine()
        b, stats = make(engine, max_batch_size=2, dynamic=True)
        first = await busy(b, engine)
        rest = [asyncio.create_task(b.infer(x(1, v))) for v in (1.0, 2.0, 3.0)]
        await queued(b, 4)
        await asyncio.sleep(0.02)  # the loop turns: the full head batch (2 rows) is staged on the busy instance
        # the first batch ends; the staged one starts in the worker thread, with no turn of the (blocked) loop
        assert _starts_while_the_loop_is_blocked(engine, 2)
        results = await asyncio.gather(first, *rest)
        assert engine.rows() == [1, 2, 1]
        assert [float(r["y"][0, 0]) for r in results] == pytest.approx([v * W[:, 0].sum() for v in (-1, 1, 2, 3)])
        # a staged request's queue time runs until its batch starts (>= the 20 ms it waited staged), not until
        # it was staged
        assert stats.queue.count == 4 and stats.queue.ns >= 2 * 0.02e9
        await b.close()

    asyncio.run(main())


@pytest.mark.parametrize("policy", [
    {"max_batch_size": 4, "dynamic": True},  # the head (2 rows) could still grow: it waits for a free instance
    {"max_batch_size": 2, "dynamic": True, "priority_levels": 2},  # a later, higher request could go first
    {"max_batch_size": 0, "default_queue_policy": QueuePolicy(timeout_us=10_000_000)},  # it could still time out
])
def test_nothing_is_staged_while_the_batch_or_its_order_could_still_change(policy):
    async def main():
        engine = Engine()
        b, stats = make(engine, **policy)
        first = await busy(b, engine)
        rest = [asyncio.create_task(b.infer(x(1, v))) for v in (1.0, 2.0)]
        await queued(b, 3)
        await asyncio.sleep(0.02)
        assert not _starts_while_the_loop_is_blocked(engine, 0.3)
        await asyncio.gather(first, *rest)
        assert sum(engine.rows()) == 3 and not stats.failures
        await b.close()

    asyncio.run(main())
