"""Data passed between the quantization stages (calibrate -> place Q/DQ -> sensitivity -> budget).

* :class:`TensorStats` - what calibration streams out of the data for one tensor: running min/max
  and a histogram of absolute values (or of values, for asymmetric ranges) that merges when the
  range grows; never the activations themselves.
* :class:`Calibration` - the stats of every calibrated tensor plus where they came from; saved to
  and loaded from a cache file so another method re-uses the data pass.
* ``Ranges`` - tensor name -> (lo, hi): the clipping range a method chose for each activation;
  Q/DQ placement turns it into a scale and zero point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TensorStats", "Calibration", "Ranges", "METHODS"]

Ranges = dict[str, tuple[float, float]]
METHODS = ("minmax", "percentile", "entropy", "mse")


@dataclass
class TensorStats:
    name: str
    min: float
    max: float
    count: int  # values seen
    hist: np.ndarray | None = None  # counts over [0, hist_max] of |x| (len = bins)
    hist_max: float = 0.0


@dataclass
class Calibration:
    stats: dict[str, TensorStats]
    samples: int  # calibration samples (rows) seen
    model_digest: str = ""
    data_digest: str = ""
    notes: list[str] = field(default_factory=list)
