"""slipway: take trained neural networks to production.

Public API, grouped by stage.
"""

from __future__ import annotations

from slipway.errors import MissingDependencyError, ServeError, SlipwayError, UserError, VerificationError
from slipway.model import load, save, summary

__version__ = "0.1.0"

__all__ = [
    # errors
    "SlipwayError",
    "UserError",
    "VerificationError",
    "ServeError",
    "MissingDependencyError",
    # model I/O
    "load",
    "save",
    "summary",
]
