"""Error hierarchy.

Every error a user can cause is a :class:`UserError`; the CLI prints its message on one line
and exits with code 1, without a traceback.
"""

from __future__ import annotations

import re


class SlipwayError(Exception):
    """Base class of every error slipway raises on purpose."""


class UserError(SlipwayError):
    """Bad input: a missing or corrupt file, a wrong shape, an unsupported op or opset."""


class WriteError(UserError, OSError):
    """A file could not be written (read-only folder, full disk, a file where a folder should be).

    A ``UserError`` with a one-line message naming the path, and still an ``OSError`` for code
    that catches those.
    """


class VerificationError(SlipwayError):
    """A transformed model disagrees with its reference past tolerance.

    ``report`` carries the full verification report (per-output errors) when one exists.
    """

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class ServeError(SlipwayError):
    """An error that a server maps to an HTTP / gRPC status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class MissingDependencyError(UserError):
    """An optional extra (torch, openvino, ...) is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed; install it with: pip install 'slipway[{extra}]'")
        self.module = module
        self.extra = extra


def one_line(e: BaseException, *, typed: bool = False) -> str:
    """The first non-empty line of an exception's message (at most 300 characters), else its type name.

    onnxruntime's run errors nest ("... running If node ... Status Message: ... running Pad node ...
    Status Message: <why>"): only the innermost reason is kept. onnx's C++ assertion prefix
    ("... Assertion `false` failed: <why>") is dropped. ``typed`` prefixes the exception's type name
    ("ValueError: <why>"), for errors that are bugs rather than bad input.
    """
    text = str(e).strip()
    if "Status Message:" in text:
        text = text.rsplit("Status Message:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = _ASSERTION.sub("", lines[0])[:_LIMIT].strip() if lines else ""
    if not line:
        return type(e).__name__
    return f"{type(e).__name__}: {line}" if typed else line


_LIMIT = 300
_ASSERTION = re.compile(r"^.*?Assertion `false` failed: ")
