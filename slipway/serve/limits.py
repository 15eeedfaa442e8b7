"""What one client may make the server spend: THE limits both transports enforce.

A server on a network must not let a request decide how much memory or time it costs. Every
limit here is a ``slipway serve`` option (``--help`` shows the defaults) and applies alike over
HTTP and gRPC; a request past one is refused with a one-line 4xx naming the limit and the option
that raises it, before anything the size of the request is allocated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields

from slipway.errors import ServeError, UserError

__all__ = ["Limits", "too_many_tensors", "LogLimiter", "error_kind"]



@dataclass(frozen=True)
class Limits:
    body_bytes: int = 64 << 20  # a request body (after decompression) / a gRPC message
    inputs: int = 256  # input and requested-output tensors in one request
    elements: int = 1 << 26  # elements of one tensor (a BYTES element costs an object, ~50 bytes)
    json_depth: int = 32  # nesting of a JSON body (a tensor's nested data lists included)
    header_seconds: float = 10.0  # to send the request line and headers (slow clients are closed)
    body_seconds: float = 60.0  # to send the body once the headers are in
    connections: int = 1000  # open client connections per port (more are answered 503 / refused and closed)
    metrics_auth: bool = False  # with a token: /metrics asks for it too

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type != "bool" and not value > 0:  # also refuses NaN
                raise UserError(f"serve limit {f.name} must be > 0, got {value}")

    @property
    def body_mib(self) -> float:
        return self.body_bytes / (1 << 20)


class LogLimiter:
    """Rate-limited log lines: one line per kind per ``interval`` seconds, the rest counted.

    A client can send thousands of bad requests a second; the log must not grow with them. The
    first line of a kind is written, repeats within ``interval`` are counted and the next line of
    that kind says how many were left out. ``at_most`` lines per interval in all bounds the volume
    when every request is a new kind (varied names in the messages).
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, at_most: int = 100) -> None:
        self.logger, self.interval, self.at_most = logger, interval, at_most
        self._last: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}
        self._window = 0.0
        self._lines = 0
        self._dropped = 0

    def log(self, level: int, kind: object, message: str, *args: object, exc_info: object = None) -> bool:
        """Write the line unless ``kind`` was written within the interval; True if written."""
        now = time.monotonic()
        if now - self._window >= self.interval:
            if self._dropped:
                self.logger.warning("%d more log lines left out in the last %.0f s (too many distinct errors)",
                                    self._dropped, self.interval)
            self._window, self._lines, self._dropped = now, 0, 0
            if len(self._last) > 10_000:  # forget old kinds (memory bounded too)
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
                self._suppressed = {k: n for k, n in self._suppressed.items() if k in self._last}
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        if self._lines >= self.at_most:
            self._dropped += 1
            return False
        self._last[kind] = now
        self._lines += 1
        repeats = self._suppressed.pop(kind, 0)
        if repeats:
            message += f" (and {repeats} like it in the last {self.interval:.0f} s)"
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True


def error_kind(exc: BaseException) -> tuple[str, str, int]:
    """An unexpected exception's kind: its type and the line that raised it."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("", 0)
    return type(exc).__name__, *where


def too_many_tensors(count: int, limit: int) -> ServeError:
    """THE message of a request with too many tensors (HTTP 413, gRPC RESOURCE_EXHAUSTED)."""
    return ServeError(f"the request names {count} input and output tensors, over the limit of {limit} "
                      "(--max-inputs)", 413)
