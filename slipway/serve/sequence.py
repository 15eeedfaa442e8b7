"""Triton's sequence batching for stateful models: correlation IDs, start / end flags, idle timeout.

A model whose config has ``sequence_batching { max_sequence_idle_microseconds: N }`` (the pipeline
engine: a pipeline with a stateful op such as ``track``) keeps one state per sequence. Every request
to it carries the request parameters ``sequence_id`` (the correlation ID: an unsigned 64-bit integer or
a string; 0 and "" mean none), ``sequence_start`` and ``sequence_end`` (types checked by
:func:`slipway.serve.request.sequence_flags`). :class:`Sequences` (one per served version) applies
Triton's rules, each mistake a :class:`~slipway.serve.request.RequestError` (HTTP 400 / gRPC
INVALID_ARGUMENT, the same text) in Triton's words:

* no correlation ID (or 0 / ""): "must specify a non-zero or non-empty correlation ID";
* a request without ``sequence_start`` for a sequence that is not live (never started, ended, or
  released after its idle timeout): "must specify the START flag on the first request of the
  sequence", plus why (ended / idle for over N ms) while the ID is among the last 1024 released;
* ``sequence_start`` on a live sequence restarts it: a fresh state, after the requests of the old one
  already queued (Triton: "the previous sequence will be terminated early");
* ``sequence_end``: the sequence stops being live when that request arrives (a later request without
  START is refused); its state is freed once its last request is done;
* idle timeout: a live sequence with no request queued or running for ``max_sequence_idle_microseconds``
  (1 s when 0, as Triton) is released by a timer, its state freed. (Triton counts from the last
  request's arrival; here a request running longer than the timeout never loses its sequence.)

The requests of one sequence run one at a time in arrival order (each takes a :class:`Ticket` when it
arrives, synchronously, then waits for the one before it); different sequences run concurrently on the
model's instances. Triton's Direct / Oldest strategies decide how sequences share batch slots of one
model execution; a pipeline model runs one request per execution (``max_batch_size: 0``), so both are
accepted and run alike. The state is the model's own per sequence (a dict handed to the engine's run:
:meth:`slipway.pipeline.Pipeline.run`'s ``state``), not Triton's implicit state tensors or control inputs.

Ensembles: as Triton passes an ensemble request's correlation ID and flags on to its composing models,
:func:`reserve` (called by the data plane when a request with sequence parameters enters an
ensemble) takes each sequence-batched composing model's ticket at the ensemble's entry, so the frames of
a sequence reach the stateful step in the order they reached the ensemble even when the steps before
it (a dynamically batched detector) finish them out of order; the ensemble's composing requests find
their flags and tickets in a context variable.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from slipway.errors import ServeError
from slipway.serve.request import RequestError, SequenceFlags

__all__ = ["Sequences", "Ticket", "Reservation", "reserve", "DEFAULT_IDLE_US", "RECENT", "idle_microseconds"]

DEFAULT_IDLE_US = 1_000_000  # Triton's default max_sequence_idle_microseconds
RECENT = 1024  # released IDs remembered to say why a later request is refused


def idle_microseconds(config: Any) -> int:
    """The idle timeout of a config's ``sequence_batching`` (Triton's default when 0)."""
    return int(config.sequence_batching.max_sequence_idle_microseconds) or DEFAULT_IDLE_US


@dataclass(eq=False)
class _Sequence:
    """One live (or draining) sequence: its state and the tail of its queue of requests."""

    key: int | str
    state: dict[str, Any] = field(default_factory=dict)
    pending: int = 0  # requests admitted and not yet done
    tail: asyncio.Future | None = None  # done when the last admitted request is done
    timer: asyncio.TimerHandle | None = None


class Ticket:
    """One request's place in its sequence: ``await wait()`` for the requests before it, run with
    ``state``, then ``release()`` (always, also when it failed or never ran)."""

    __slots__ = ("_registry", "_seq", "_before", "_done", "end", "_released")

    def __init__(self, registry: Sequences, seq: _Sequence, before: asyncio.Future | None, done: asyncio.Future,
                 end: bool) -> None:
        self._registry, self._seq, self._before, self._done, self.end = registry, seq, before, done, end
        self._released = False

    @property
    def state(self) -> dict[str, Any]:
        return self._seq.state

    async def wait(self) -> None:
        if self._before is not None and not self._before.done():
            await asyncio.shield(self._before)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._before is None or self._before.done():
            self._done.set_result(None)
        else:  # cancelled while waiting: the next request still waits for the one before this
            self._before.add_done_callback(lambda _: self._done.done() or self._done.set_result(None))
        self._registry._finished(self._seq)


class Sequences:
    """The live sequences of one served model version (see the module docstring)."""

    def __init__(self, model: str, idle_us: int = DEFAULT_IDLE_US) -> None:
        self.model = model
        self.idle_us = int(idle_us) or DEFAULT_IDLE_US
        self._live: dict[int | str, _Sequence] = {}
        self._recent: OrderedDict[int | str, str] = OrderedDict()  # released id -> why
        self._closed = False
        self.counts = {"started": 0, "restarted": 0, "ended": 0, "timed_out": 0}

    @property
    def live(self) -> int:
        """Sequences started and not yet ended or timed out."""
        return len(self._live)

    def statistics(self) -> dict[str, int]:
        """Counts: live now; started, restarted, ended and timed out since the version loaded."""
        return {"live": self.live, **self.counts}

    # -- admission (synchronous: a request's place is the order it arrives in) ------------------

    def enter(self, flags: SequenceFlags | None) -> Ticket:
        """The ticket of a request to this model: reserved for it at its ensemble's entry, else admitted now
        with its own flags (or, inside an ensemble, the ensemble request's)."""
        ctx = _CONTEXT.get()
        if ctx is not None and (flags is None or flags == ctx.flags):
            ticket = ctx.tickets.pop(id(self), None)
            if ticket is not None:
                return ticket
            flags = ctx.flags
        return self.admit(flags)

    def admit(self, flags: SequenceFlags | None) -> Ticket:
        """Take a place in the sequence ``flags`` names; RequestError for a request Triton refuses."""
        if self._closed:
            raise ServeError(f"model {self.model} is unloading", 503)
        sid = None if flags is None else flags.id
        if sid is None or sid == 0 or sid == "":
            why = "request parameter 'sequence_id' is missing" if sid is None else f"sequence_id is {sid!r}"
            raise RequestError(f"inference request to model '{self.model}' must specify a non-zero or non-empty "
                               f"correlation ID ({why})")
        seq = self._live.get(sid)
        loop = asyncio.get_running_loop()
        if not flags.start and seq is None:
            why = self._recent.get(sid)
            raise RequestError(f"inference request for sequence {sid} to model '{self.model}' must specify the "
                               f"START flag on the first request of the sequence{f' ({why})' if why else ''}")
        if flags.start:
            self.counts["started"] += 1
            self._recent.pop(sid, None)
            if seq is not None:  # restart: a fresh state, after the old sequence's queued requests
                self.counts["restarted"] += 1
                self._cancel_timer(seq)
                if not seq.pending:
                    seq.state.clear()  # else freed with its last request (_finished)
                seq = _Sequence(sid, tail=seq.tail)
            else:
                seq = _Sequence(sid)
            self._live[sid] = seq
        self._cancel_timer(seq)
        seq.pending += 1
        before, done = seq.tail, loop.create_future()
        seq.tail = done
        if flags.end:
            self.counts["ended"] += 1
            del self._live[sid]
            self._remember(sid, "the sequence ended")
        return Ticket(self, seq, before, done, flags.end)

    # -- life cycle -----------------------------------------------------------------------------

    def _finished(self, seq: _Sequence) -> None:
        seq.pending -= 1
        if seq.pending > 0:
            return
        if self._live.get(seq.key) is seq and not self._closed:
            loop = asyncio.get_running_loop()
            seq.timer = loop.call_later(self.idle_us / 1e6, self._expire, seq)
        elif self._live.get(seq.key) is not seq:
            seq.state.clear()  # ended or restarted, nothing left to run with it: the state goes now

    def _expire(self, seq: _Sequence) -> None:
        seq.timer = None
        if self._live.get(seq.key) is not seq or seq.pending:
            return
        del self._live[seq.key]
        seq.state.clear()
        self.counts["timed_out"] += 1
        idle_ms = self.idle_us / 1000
        self._remember(seq.key, f"the sequence was idle for over {idle_ms:g} ms and was released "
                                f"(max_sequence_idle_microseconds {self.idle_us})")

    def _cancel_timer(self, seq: _Sequence) -> None:
        if seq.timer is not None:
            seq.timer.cancel()
            seq.timer = None

    def _remember(self, sid: int | str, why: str) -> None:
        self._recent[sid] = why
        self._recent.move_to_end(sid)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    def close(self) -> None:
        """Forget every sequence (the version is unloading): timers cancelled, states freed."""
        self._closed = True
        for seq in self._live.values():
            self._cancel_timer(seq)
            if not seq.pending:
                seq.state.clear()
        self._live.clear()


# ---------------------------------------------------------------------------------------------
# ensembles: the flags and tickets of an ensemble request, for its composing requests


@dataclass
class Reservation:
    flags: SequenceFlags
    tickets: dict[int, Ticket] = field(default_factory=dict)  # id(Sequences) -> its ticket

    def release(self) -> None:
        """Give back the tickets no step used (steps not needed, or a failure before them)."""
        for ticket in self.tickets.values():
            ticket.release()
        self.tickets.clear()


_CONTEXT: contextvars.ContextVar[Reservation | None] = contextvars.ContextVar("slipway_sequence", default=None)


def reserve(flags: SequenceFlags, registries: Iterable[Sequences]) -> tuple[Reservation, contextvars.Token]:
    """At an ensemble's entry: a ticket in each sequence-batched composing model (``registries``), in
    the order requests reach the ensemble, and the context its composing requests run in. The caller
    ends it with :func:`unreserve`. RequestError (nothing kept) when a composing model refuses the flags."""
    reservation = Reservation(flags)
    try:
        for registry in registries:
            if id(registry) not in reservation.tickets:
                reservation.tickets[id(registry)] = registry.admit(flags)
    except BaseException:
        reservation.release()
        raise
    return reservation, _CONTEXT.set(reservation)


def unreserve(reservation: Reservation, token: contextvars.Token) -> None:
    _CONTEXT.reset(token)
    reservation.release()
