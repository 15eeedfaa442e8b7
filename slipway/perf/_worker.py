"""One benchmark configuration in a fresh process: ``python -m slipway.perf._worker SPEC.json``.

The spec (written by :class:`slipway.perf.runner._Isolated`) names the model file, the
configuration, an ``.npz`` of feeds, the budget and the engine settings; the result (or a
user error's message) is written as JSON to the spec's ``result`` path. ``rss_mb`` is this
process's high-water mark, which covers this configuration only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from slipway.errors import UserError
from slipway.perf.runner import Config, run_config
from slipway.perf.stats import Budget


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["result"])
    try:
        with np.load(spec["feeds"], allow_pickle=False) as npz:
            feeds = {name: npz[f"arr_{i}"] for i, name in enumerate(spec["names"])}
        result = run_config(spec["model"], Config(**spec["config"]), feeds, Budget(**spec["budget"]),
                            spec["settings"], peak="process")
        out.write_text(json.dumps(result.to_dict()))
    except UserError as e:
        out.write_text(json.dumps({"error": str(e)}))


if __name__ == "__main__":
    main(sys.argv[1])
