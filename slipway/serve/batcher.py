"""Per-model dynamic batcher: a priority queue of requests, model instances in worker threads.

Everything but the engine run happens on the event loop, driven by callbacks (no polling):
an enqueue, a finished batch or a timer calls :meth:`Batcher._schedule`, which hands batches to
free instances. Each instance is one daemon thread that runs one batch at a time: concatenate
the feeds along axis 0, ``run(instance, feeds)``, split the outputs by the requests' row counts,
then post the result back with ``call_soon_threadsafe``.

Batch formation follows Triton's dynamic batcher: scan the queue in order (priority level 1 first;
inside a level, requests in arrival order, then the ones a DELAY policy has pushed back) and add
requests while their inputs have the same names, dtypes and non-batch shapes and the rows fit
``max_batch_size``; the scan stops at the first request that does not fit, so the queue order holds.
Preferred sizes (``[max_batch_size]`` when none are given, as Triton completes the config): as soon as
the candidate reaches one, the largest reached runs at once. Otherwise the batch runs when it can't
grow (next request doesn't fit or the largest preferred size is reached), when ``max_queue_delay_us``
is 0, or when its oldest request has waited that long; in the last case it runs with every row it
has, as Triton does.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from queue import SimpleQueue
from time import monotonic_ns

import numpy as np

from slipway.errors import ServeError, UserError, one_line
from slipway.serve.request import RequestError, batch_rows, priority_level
from slipway.serve.stats import ModelStats

__all__ = ["QueuePolicy", "BatchPolicy", "RunFn", "Batcher", "batch_policy", "check_policy"]

RunFn = Callable[[int, dict[str, np.ndarray]], dict[str, np.ndarray]]

_QUEUED, _RUNNING, _DONE, _LATE = 0, 1, 2, 3


@dataclass
class QueuePolicy:
    timeout_us: int = 0  # 0 = no timeout
    allow_timeout_override: bool = False  # request's own `timeout` may replace timeout_us
    max_queue_size: int = 0  # 0 = use the batcher's max_pending bound
    timeout_action: str = "REJECT"  # REJECT | DELAY (DELAY: timed-out requests stay, but go after others)


@dataclass
class BatchPolicy:
    max_batch_size: int = 0  # 0: the model has no batch dim; every request runs alone
    dynamic: bool = False  # config has dynamic_batching; False -> each request runs alone (no merging)
    preferred_batch_sizes: list[int] = field(default_factory=list)
    max_queue_delay_us: int = 0
    priority_levels: int = 0  # 0 = one level; else 1..N, 1 is highest
    default_priority: int | None = None  # Triton default_priority_level: the level of a request that says
    #                                      priority 0 (None with priority_levels N > 0: level N)
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    priority_queue_policy: dict[int, QueuePolicy] = field(default_factory=dict)


class _Request:
    __slots__ = ("feeds", "rows", "key", "level", "start_ns", "batch_ns", "future", "state", "delayed")

    def __init__(self, feeds: dict, rows: int, key: tuple | None, level: int, start_ns: int, future) -> None:
        self.feeds = feeds
        self.rows = rows
        self.key = key  # input names, dtypes and non-batch shapes; None: never merged
        self.level = level  # 0-based
        self.start_ns = start_ns  # infer() entered = enqueued
        self.batch_ns = 0
        self.future = future
        self.state = _QUEUED
        self.delayed = False


class Batcher:
    """Queues requests of one model version and runs them, batched, on ``instances`` worker threads.

    Use it from one event loop (the first ``infer`` binds it); ``close()`` it when done, which ends the threads.
    """

    def __init__(self, run: RunFn, instances: int, policy: BatchPolicy, stats: ModelStats, *,
                 max_pending: int = 1024, name: str = "model") -> None:
        self._run = run
        self._name = name
        self._stats = stats
        self._mbs = policy.max_batch_size
        self._merge = policy.dynamic and policy.max_batch_size > 0
        self._preferred = frozenset(policy.preferred_batch_sizes or [policy.max_batch_size])
        self._max_preferred = max(self._preferred)
        self._delay_ns = policy.max_queue_delay_us * 1000
        self._max_pending = max_pending
        check_policy(policy, name, instances=instances, max_pending=max_pending)
        self._levels, self._default_level, self._policies = _levels(policy, name)
        # queue 2*i: level i+1 in arrival order; 2*i+1: its requests pushed back by a DELAY timeout
        self._queues: list[deque[_Request]] = [deque() for _ in range(2 * len(self._policies))]
        self._level_queued = [0] * len(self._policies)
        self._queued = 0
        self._running = 0
        self._running_rows = 0
        self._instances = instances
        self._free = list(range(instances - 1, -1, -1))  # pop() takes instance 0 first
        self._given = [0] * instances  # batches handed to each instance, not yet finished (running + staged)
        self._began = [0] * instances  # when each busy instance's running batch was handed over
        self._staged: list[list[_Request] | None] = [None] * instances  # the batch waiting behind the running one
        # stage full batches behind running ones (see _schedule), unless a queue order or timeout could still
        # change what a staged request should see
        self._ahead = not policy.priority_levels and not any(
            p.timeout_us or p.allow_timeout_override for p in (policy.default_queue_policy,
                                                               *policy.priority_queue_policy.values()))
        self._jobs: list[SimpleQueue] = [SimpleQueue() for _ in range(instances)]
        self._threads: list[threading.Thread | None] = [None] * instances
        self._loop: asyncio.AbstractEventLoop | None = None
        self._soon = False  # a _schedule call is already queued on the loop
        self._wake: asyncio.TimerHandle | None = None  # max_queue_delay timer
        self._wake_at = 0
        self._deadlines: list[tuple[int, int, _Request]] = []  # heap of queue timeouts
        self._seq = itertools.count()
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = 0
        self._closing = False
        self._idle: list[asyncio.Future] = []

    @property
    def pending(self) -> int:
        """Requests queued or executing."""
        return self._queued + self._running

    async def infer(self, feeds: dict[str, np.ndarray], priority: int = 0, timeout_us: int = 0) -> dict[str, np.ndarray]:
        """Check, queue one request, wait for its batch to run, return its rows of every output.

        The server checks its requests beforehand (:func:`slipway.serve.request.check`) and calls
        :meth:`submit`; this is the same, with the batch and priority rules applied here.
        """
        start = monotonic_ns()
        try:
            rows = self._rows(feeds)
            level = priority_level(priority, self._levels, self._default_level, self._name)
        except ServeError:
            self._stats.request_done(False, monotonic_ns() - start, reason="OTHER")
            raise
        return await self.submit(feeds, rows, level, timeout_us, start)

    async def submit(self, feeds: dict[str, np.ndarray], rows: int, level: int, timeout_us: int = 0,
                     start: int = 0) -> dict[str, np.ndarray]:
        """Queue a checked request (``rows`` batch rows, 0-based queue ``level``) and wait for its rows."""
        start = start or monotonic_ns()
        if self._closing:
            self._stats.request_done(False, 0, reason="REJECTED")
            raise ServeError(f"model {self._name} is unloading", 503)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        key = self._key(feeds)
        policy = self._policies[level]
        if self._queued >= self._max_pending or 0 < policy.max_queue_size <= self._level_queued[level]:
            self._stats.request_done(False, monotonic_ns() - start, reason="REJECTED")
            raise ServeError(f"model {self._name}: queue full ({self.pending} requests pending)", 503)
        r = _Request(feeds, rows, key, level, start, loop.create_future())
        self._queues[2 * level].append(r)
        self._queued += 1
        self._level_queued[level] += 1
        timeout = timeout_us if policy.allow_timeout_override and timeout_us > 0 else policy.timeout_us
        if timeout > 0:
            self._add_deadline(r, start + timeout * 1000)
        if self._free or (self._ahead and 1 in self._given):  # a free instance, or a busy one to stage on
            if self._queued == 1:  # nothing to merge with yet: no reason to wait for the next loop turn
                self._schedule()
            elif not self._soon:  # requests arriving in this loop turn may join the batch
                self._soon = True
                loop.call_soon(self._schedule)
        try:
            return await r.future
        except asyncio.CancelledError:
            self._cancelled(r)
            raise

    async def close(self, drain: bool = True) -> None:
        """Refuse new requests; finish the queued ones (``drain``) or fail them with 503; stop the threads."""
        self._closing = True
        if not drain:
            self._fail_queued(f"model {self._name} is unloading")
        if self.pending:
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            self._schedule()  # a batch waiting for max_queue_delay goes now
            await waiter
        for i, t in enumerate(self._threads):
            if t is not None:
                self._jobs[i].put(None)
                self._threads[i] = None

    # ---- request checks -------------------------------------------------------------------------

    def _rows(self, feeds: dict[str, np.ndarray]) -> int:
        """Rows of an unchecked request (its first dim; 1 when the model has no batch dim)."""
        if self._mbs <= 0 or not feeds:
            return 1
        rows = -1
        first = ""
        for name, a in feeds.items():
            shape = a.shape
            if not shape:
                raise RequestError(f"input {name} of model {self._name} is a scalar; it needs a batch dimension")
            if rows < 0:
                rows, first = shape[0], name
            elif shape[0] != rows:
                raise RequestError(f"inputs of model {self._name} have different batch sizes: {first} has {rows}, "
                                   f"{name} has {shape[0]}")
        batch_rows(first, rows, self._mbs, self._name)
        return rows

    def _key(self, feeds: dict[str, np.ndarray]) -> tuple | None:
        """What requests must share to be merged: input names, dtypes and non-batch shapes (None: never)."""
        if not self._merge or not feeds:
            return None
        key = [(name, a.dtype, a.shape[1:]) for name, a in feeds.items()]
        if len(key) > 1:
            key.sort()  # names are unique: only they are compared
        return tuple(key)

    # ---- scheduling (event loop) ----------------------------------------------------------------

    def _schedule(self, at: int = 0) -> None:
        """Hand batches to free instances while there are both (``at``: a timer's due time, as a floor for now).

        When every instance is busy and the head of the queue is already a full batch (it reached the largest
        preferred size, or requests are not merged), that batch is staged behind the running batch of the
        instance that started first: waiting would not change it, and the instance's thread starts it the
        moment its batch ends, without a round trip through the event loop (which, busy with reading
        requests, would leave the engine idle between batches). One staged batch per instance at most; not
        with priority levels or queue timeouts, which could still reorder or reject a queued request.
        """
        self._soon = False
        while self._queued:
            free = bool(self._free)
            if not free and not (self._ahead and 1 in self._given):
                return
            now = max(monotonic_ns(), at)
            if self._deadlines and self._deadlines[0][0] <= now:
                self._expire(now)
                continue
            count, wait_ns, rows = self._next_batch(now)
            if free and count:
                self._launch(count, now, self._free.pop())
            elif free:
                self._wake_at_time(now + wait_ns)
                return
            elif count and (rows >= self._max_preferred or not self._merge):
                busy = [i for i, given in enumerate(self._given) if given == 1]
                self._launch(count, now, min(busy, key=self._began.__getitem__))
            else:
                return

    def _next_batch(self, now: int) -> tuple[int, int, int]:
        """(requests at the queue's head to run now, 0, their rows) or (0, ns to wait for more, 0)."""
        if not self._merge:
            return 1, 0, 0
        count = rows = best = 0
        key = None
        oldest = now
        full = False
        sizes: list[int] = []  # rows after each request taken
        for q in self._queues:
            for r in q:
                if count == 0:
                    if r.key is None:
                        return 1, 0, 0
                    key = r.key
                else:
                    total = rows + r.rows
                    if total > self._max_preferred and not best:
                        best = count
                    if total > self._mbs or r.key != key:
                        full = True
                        break
                count += 1
                rows += r.rows
                sizes.append(rows)
                oldest = min(oldest, r.start_ns)
                if rows in self._preferred:
                    best = count
            if full:
                break
        delay = self._delay_ns
        expired = self._closing or (delay > 0 and now - oldest >= delay)
        if best and not expired:
            return best, 0, sizes[best - 1]
        if delay == 0 and not self._closing and self._instances > 1:
            count = self._balanced(count, sizes)
            return count, 0, sizes[count - 1]
        if full or expired or delay == 0 or rows >= self._max_preferred:
            return count, 0, rows
        return 0, oldest + delay - now, 0

    def _balanced(self, count: int, sizes: list[int]) -> int:
        """With several instances and no queue delay, share the rows in the system between them.

        Pure greedy batching lets one instance take everything queued while the other runs a
        batch of one, and the imbalance persists (each instance's finish refills the queue for the
        other): large batches wait twice as long. Capping a batch at an even share of the rows
        queued and running keeps the instances' batches even at the same throughput.
        """
        share = -(-(sizes[-1] + self._running_rows) // self._instances)
        while count > 1 and sizes[count - 1] > share:
            count -= 1
        return count

    def _launch(self, count: int, now: int, instance: int) -> None:
        """Take ``count`` requests off the head of the queue and give them to ``instance`` (free, or busy: staged)."""
        batch = []
        taken = 0
        for q in self._queues:
            while q and taken < count:
                r = q.popleft()
                taken += 1
                self._level_queued[r.level] -= 1
                if r.future.done():  # its caller was cancelled; the cancel handler records it
                    r.state, r.feeds = _DONE, None
                else:
                    r.state = _RUNNING
                    batch.append(r)
            if taken == count:
                break
        self._queued -= taken
        if not batch:
            if not self._given[instance]:
                self._free.append(instance)
            return
        self._given[instance] += 1
        if self._given[instance] == 1:
            self._began[instance] = now
        else:
            self._staged[instance] = batch
        self._running += len(batch)
        self._running_rows += sum(r.rows for r in batch)
        if self._threads[instance] is None:
            t = threading.Thread(target=self._worker, args=(instance,), name=f"slipway-{self._name}-{instance}",
                                 daemon=True)
            t.start()
            self._threads[instance] = t
        self._jobs[instance].put(batch)

    def _finish(self, instance: int, batch: list[_Request], outs: list | None, error: ServeError | None,
                times: tuple[int, int, int]) -> None:
        """A batch came back from its worker: resolve the callers, record the stats."""
        now = monotonic_ns()
        self._given[instance] -= 1
        if self._given[instance]:
            self._began[instance] = now  # its staged batch is running now
            self._staged[instance] = None
        else:
            self._free.append(instance)
        self._running -= len(batch)
        self._running_rows -= sum(r.rows for r in batch)
        stats = self._stats
        if error is None:
            stats.execution_done(sum(r.rows for r in batch), *times)
        for i, r in enumerate(batch):
            r.state = _DONE
            r.feeds = None  # a deadline heap entry may outlive the request; its inputs need not
            if r.future.done():
                continue  # cancelled while running: result dropped
            if error is None:
                r.future.set_result(outs[i])
                stats.request_done(True, now - r.start_ns, r.rows, r.batch_ns - r.start_ns, *times)
            else:
                r.future.set_exception(error if i == 0 else ServeError(str(error), error.status))
                stats.request_done(False, now - r.start_ns, reason="BACKEND")
        self._schedule()
        self._check_idle()

    def _wake_at_time(self, at: int) -> None:
        if self._wake is not None:
            if self._wake_at <= at:
                return
            self._wake.cancel()
        self._wake_at = at
        self._wake = self._loop.call_later(max(at - monotonic_ns(), 0) / 1e9, self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        self._schedule(self._wake_at)

    # ---- timeouts, cancellation, closing --------------------------------------------------------

    def _add_deadline(self, r: _Request, deadline: int) -> None:
        heap = self._deadlines
        if len(heap) > 64 + 2 * self._queued:  # drop entries of requests that left the queue
            heap[:] = [e for e in heap if e[2].state == _QUEUED and not e[2].delayed]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, next(self._seq), r))
        if self._expiry is None or deadline < self._expiry_at:
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._deadlines:
            self._expiry_at = self._deadlines[0][0]
            delay = max(self._expiry_at - monotonic_ns(), 0) / 1e9
            self._expiry = self._loop.call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        at = self._expiry_at
        self._expire(max(monotonic_ns(), at))
        self._schedule(at)

    def _expire(self, now: int) -> None:
        """Apply the queue policy to every queued request whose deadline has passed."""
        heap = self._deadlines
        hit: list[_Request] = []
        while heap and heap[0][0] <= now:
            r = heapq.heappop(heap)[2]
            if r.state == _QUEUED and not r.delayed:
                hit.append(r)
        for r in hit:
            r.state = _LATE
        for level in sorted({r.level for r in hit}):
            live = self._queues[2 * level]
            self._queues[2 * level] = deque(r for r in live if r.state == _QUEUED)
            late = [r for r in live if r.state == _LATE]  # in arrival order
            if self._policies[level].timeout_action.upper() == "DELAY":
                for r in late:
                    r.state, r.delayed = _QUEUED, True
                self._queues[2 * level + 1].extend(late)
            else:
                self._level_queued[level] -= len(late)
                for r in late:
                    self._reject(r, now)
        self._queued = sum(self._level_queued)
        self._arm_expiry()
        self._check_idle()

    def _reject(self, r: _Request, now: int) -> None:
        r.state = _DONE
        r.feeds = None
        waited = (now - r.start_ns) / 1e6
        r.future.set_exception(ServeError(
            f"model {self._name}: request timed out after {waited:.1f} ms in the queue", 503))
        self._stats.request_done(False, now - r.start_ns, reason="REJECTED")

    def _cancelled(self, r: _Request) -> None:
        """The caller of infer() was cancelled: take its request out of the queue, record it."""
        if r.state == _QUEUED:
            q = self._queues[2 * r.level + r.delayed]
            q.remove(r)
            r.state = _DONE
            r.feeds = None
            self._level_queued[r.level] -= 1
            self._queued -= 1
        if r.future.cancelled():  # else the result was already recorded
            self._stats.request_done(False, monotonic_ns() - r.start_ns, reason="CANCELED")
        self._check_idle()

    def _fail_queued(self, message: str) -> None:
        """Fail every queued request, and the staged ones their instance has not started yet (it runs them
        still, for nobody, if it starts them meanwhile)."""
        now = monotonic_ns()
        for batch in self._staged:
            for r in batch or ():
                if not r.batch_ns and not r.future.done():
                    r.future.set_exception(ServeError(message, 503))
                    self._stats.request_done(False, now - r.start_ns, reason="REJECTED")
        for q in self._queues:
            while q:
                r = q.popleft()
                r.state = _DONE
                r.feeds = None
                if not r.future.done():
                    r.future.set_exception(ServeError(message, 503))
                    self._stats.request_done(False, now - r.start_ns, reason="REJECTED")
        self._level_queued = [0] * len(self._level_queued)
        self._queued = 0
        self._check_idle()

    def _check_idle(self) -> None:
        if self._closing and self._idle and not self.pending:
            for w in self._idle:
                if not w.done():
                    w.set_result(None)
            self._idle.clear()

    # ---- worker threads ---------------------------------------------------------------------------

    def _worker(self, instance: int) -> None:
        jobs = self._jobs[instance]
        while True:
            batch = jobs.get()
            if batch is None:
                return
            self._execute(instance, batch)

    def _execute(self, instance: int, batch: list[_Request]) -> None:
        """Run a batch in the instance's thread; post the result to the loop."""
        try:
            self._loop.call_soon_threadsafe(self._finish, instance, batch, *self._run_batch(instance, batch))
        except RuntimeError:  # the loop is closed; nobody waits for these
            pass

    def _run_batch(self, instance: int, batch: list[_Request]) -> tuple:
        """Concatenate, run, split: (outputs per request, error, (input, infer, output) ns)."""
        t0 = t1 = t2 = monotonic_ns()
        for r in batch:
            r.batch_ns = t0  # left the queue (a staged batch waited behind the running one until now)
        outs = error = None
        try:
            feeds = batch[0].feeds if len(batch) == 1 else _concat(batch)
            t1 = monotonic_ns()
            try:
                result = self._run(instance, feeds)
            finally:
                t2 = monotonic_ns()
            outs = self._split(result, batch)
        except BaseException as e:  # every failure goes back to its callers; the thread lives on
            error = self._error(e)
        return outs, error, (t1 - t0, t2 - t1, monotonic_ns() - t2)

    def _split(self, result: dict[str, np.ndarray], batch: list[_Request]) -> list[dict[str, np.ndarray]]:
        if self._mbs <= 0:
            return [result]
        total = sum(r.rows for r in batch)
        for name, a in result.items():
            if getattr(a, "ndim", 0) == 0 or a.shape[0] != total:
                raise ServeError(f"output {name} of model {self._name} does not have the batch dimension", 500)
        if len(batch) == 1:
            return [result]
        outs = []
        start = 0
        for r in batch:
            end = start + r.rows
            outs.append({name: a[start:end] for name, a in result.items()})
            start = end
        return outs

    def _error(self, e: BaseException) -> ServeError:
        if isinstance(e, ServeError):
            return e
        if isinstance(e, UserError):
            return ServeError(str(e), 400)
        return ServeError(f"model {self._name} failed: {one_line(e)}", 500)


def _concat(batch: list[_Request]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([r.feeds[name] for r in batch], axis=0) for name in batch[0].feeds}


def _levels(policy: BatchPolicy, name: str) -> tuple[int, int, list[QueuePolicy]]:
    """(priority levels, 0-based default level, queue policy per level) of a checked policy."""
    n = policy.priority_levels
    if n == 0:
        return 0, 0, [policy.default_queue_policy]
    default = policy.default_priority or n
    policies = [policy.priority_queue_policy.get(i + 1, policy.default_queue_policy) for i in range(n)]
    return n, default - 1, policies


def check_policy(policy: BatchPolicy, name: str, *, instances: int = 1, max_pending: int = 1) -> None:
    """THE batching-policy check (the repository checks a config with it, the batcher its policy).

    One-line UserError naming the model and the field.
    """
    if instances < 1:
        raise UserError(f"model {name!r}: needs at least one instance, got {instances}")
    if max_pending < 1:
        raise UserError(f"model {name!r}: max_pending must be >= 1, got {max_pending}")
    mbs = policy.max_batch_size
    if mbs < 0:
        raise UserError(f"model {name!r}: max_batch_size must be >= 0, got {mbs}")
    if policy.dynamic and mbs == 0:
        raise UserError(f"model {name!r}: dynamic_batching needs max_batch_size > 0")
    if policy.max_queue_delay_us < 0:
        raise UserError(f"model {name!r}: max_queue_delay_microseconds must be >= 0, got {policy.max_queue_delay_us}")
    for size in policy.preferred_batch_sizes:
        if not 0 < size <= max(mbs, 1):
            raise UserError(f"model {name!r}: preferred_batch_size {size} is not in 1..max_batch_size ({mbs})")
    levels, default = policy.priority_levels, policy.default_priority
    if levels < 0:
        raise UserError(f"model {name!r}: priority_levels must be >= 0, got {levels}")
    if levels == 0 and (default or policy.priority_queue_policy):
        raise UserError(f"model {name!r}: default_priority_level and priority_queue_policy need priority_levels")
    if levels and default is not None and not 1 <= default <= levels:
        raise UserError(f"model {name!r}: default_priority_level {default} is not in 1..priority_levels ({levels})")
    for level in policy.priority_queue_policy:
        if not 1 <= level <= levels:
            raise UserError(f"model {name!r}: priority_queue_policy level {level} is not in 1..{levels}")
    for qp in [policy.default_queue_policy, *policy.priority_queue_policy.values()]:
        if qp.max_queue_size < 0:
            raise UserError(f"model {name!r}: max_queue_size is negative")
        if qp.timeout_action.upper() not in ("REJECT", "DELAY"):
            raise UserError(f"model {name!r}: timeout_action must be REJECT or DELAY, got {qp.timeout_action!r}")


def batch_policy(config) -> BatchPolicy:
    """The policy of a Triton ``ModelConfig``: ``max_batch_size`` and ``dynamic_batching``."""
    if not config.HasField("dynamic_batching"):
        return BatchPolicy(max_batch_size=int(config.max_batch_size), dynamic=False)
    dyn = config.dynamic_batching
    return BatchPolicy(
        max_batch_size=int(config.max_batch_size),
        dynamic=True,
        preferred_batch_sizes=[int(x) for x in dyn.preferred_batch_size],
        max_queue_delay_us=int(dyn.max_queue_delay_microseconds),
        priority_levels=int(dyn.priority_levels),
        default_priority=int(dyn.default_priority_level),
        default_queue_policy=_queue_policy(dyn.default_queue_policy) if dyn.HasField("default_queue_policy")
        else QueuePolicy(),
        priority_queue_policy={int(k): _queue_policy(v) for k, v in dyn.priority_queue_policy.items()},
    )


def _queue_policy(p) -> QueuePolicy:
    from tritonclient.grpc import model_config_pb2 as mc

    return QueuePolicy(
        timeout_us=int(p.default_timeout_microseconds),
        allow_timeout_override=bool(p.allow_timeout_override),
        max_queue_size=int(p.max_queue_size),
        timeout_action=mc.ModelQueuePolicy.TimeoutAction.Name(p.timeout_action),
    )
