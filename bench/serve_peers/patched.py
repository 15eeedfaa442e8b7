"""`slipway serve` with one part switched for a benchmark: ``python -m bench.serve_peers.patched MODE serve ...``.

MODE ``after``: slipway as it is. ``before``: the batcher without staging (every batch handed over by the event
loop when an instance is free: the server before the change). ``null``: the data plane answers every request
with the first answer it computed, so the server does everything but run the engine (the serving path's own
cost: transport, decode, checks, batcher, encode)."""

from __future__ import annotations

import sys


def patch(mode: str) -> None:
    if mode == "before":
        import slipway.serve.batcher as batcher

        init = batcher.Batcher.__init__

        def no_staging(self, *args, **kwargs) -> None:
            init(self, *args, **kwargs)
            self._ahead = False

        batcher.Batcher.__init__ = no_staging
    elif mode == "null":
        import slipway.serve.dataplane as dataplane

        infer = dataplane.DataPlane.infer
        first: dict = {}

        async def replay(self, request):
            if "answer" not in first:
                first["answer"] = await infer(self, request)
            return first["answer"]

        dataplane.DataPlane.infer = replay
    elif mode != "after":
        raise SystemExit(f"unknown mode {mode!r} (after, before, null)")


if __name__ == "__main__":
    patch(sys.argv.pop(1))
    from slipway.cli import main

    main(sys.argv[1:])
