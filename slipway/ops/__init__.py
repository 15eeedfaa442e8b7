"""Pre- and post-processing ops: pure numpy / OpenCV functions, batched where it makes sense."""

from __future__ import annotations

__all__: list[str] = []

# ---- OCR / tracking (owned by the OCR/tracking agent: add imports and __all__ entries below) ----
