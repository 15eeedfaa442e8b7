"""A level's numbers from its last three windows, and the forms they are written in: perf_analyzer's
CSV (its column names, microseconds as it writes them) and plain dicts for ``--json``.

Requests are encoded once before the load (an amortized cost of ~0 per request) and sent as prebuilt
bytes whose write aiohttp / grpc.aio do not time apart from the wait for the reply, so "Client Send"
(perf_analyzer's per-request encode + write time) is 0 here. Replies are read without decoding, so
"Client Recv" is 0 too, except with ``--validate``: then every reply is decoded into arrays and that
decode time (mean µs per successful request) is "Client Recv" (the check against the expected
outputs that follows is not). The wire time is in "Network+Server Send/Recv" (the client's latency
less the server's queue and compute and the client's recv, never below 0). Errors (and, within them,
``wrong`` replies that failed validation) are counted over every window of the level, not only the
reported ones.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from slipway.loadgen.measure import Level
from slipway.loadgen.window import PHASES, server_times

__all__ = ["summarize", "to_csv", "CSV_COLUMNS", "PERCENTILES"]

PERCENTILES = (50, 90, 95, 99)
CSV_COLUMNS = ("Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
               "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv",
               *(f"p{p} latency" for p in PERCENTILES))
LATE_S = 0.001  # an open-loop send this much behind its intended time counts as late


def summarize(level: Level, model: str, steps: Sequence[str] = (), batch: int = 1) -> dict[str, Any]:
    """One row of results: client latencies (µs), throughput, server phases (µs per request), errors,
    CPU / RSS, schedule lag (open loop)."""
    used = level.windows[-3:]
    out: dict[str, Any] = {"mode": level.mode, "value": level.value, "stable": level.stable,
                           "windows": len(level.windows), "sent": level.sent}
    if not used:
        return out | {"requests": 0, "errors": 0, "wrong": 0, "error_messages": {}}
    seconds = sum(w.seconds for w in used)
    lat = np.concatenate([np.asarray(w.latencies, dtype=np.float64) for w in used]) * 1e6
    messages = Counter()
    for w in level.windows:
        messages.update(w.messages)
    recvs = [x for w in used for x in w.recvs]
    out.update(requests=int(lat.size), errors=sum(w.errors for w in level.windows),
               wrong=sum(w.wrong for w in level.windows), client_recv_us=1e6 * float(np.mean(recvs)) if recvs else 0.0,
               client_send_us=0.0,
               errors_reported=sum(w.errors for w in used), error_messages=dict(messages),
               seconds=seconds, throughput_rps=lat.size / seconds, inferences_per_s=lat.size * batch / seconds,
               client_cpu=sum(w.cpu1 - w.cpu0 for w in used) / seconds)
    for p in PERCENTILES:
        out[f"p{p}_us"] = float(np.percentile(lat, p)) if lat.size else None
    out["avg_us"] = float(lat.mean()) if lat.size else None
    first, last = used[0], used[-1]
    if model in first.stats0 and model in last.stats1:
        top = server_times(first.stats0[model], last.stats1[model])
        out["server_requests"] = top["success"]
        out["server_failures"] = top["fail"]
        if steps:
            parts = {m: server_times(first.stats0[m], last.stats1[m]) for m in steps if m in last.stats1}
            out["composing"] = parts
            n = top["success"] or lat.size
            for p in PHASES:  # the ensemble's phases: its composing models' time per ensemble request
                out[f"server_{p}_us"] = sum(v[f"{p}_us"] * v["success"] for v in parts.values()) / n if n else 0.0
        else:
            out.update({f"server_{p}_us": top[f"{p}_us"] for p in PHASES})
    elapsed = max(1e-9, last.end - first.start)
    cpu0, cpu1 = first.server0.get("process_cpu_seconds_total"), last.server1.get("process_cpu_seconds_total")
    out["server_cpu"] = (cpu1 - cpu0) / elapsed if cpu0 is not None and cpu1 is not None else None
    rss = [w.server1["process_resident_memory_bytes"] for w in used if "process_resident_memory_bytes" in w.server1]
    out["server_rss_mb"] = max(rss) / 2**20 if rss else None
    if level.mode == "request_rate":
        lags = np.concatenate([np.asarray(w.lags, dtype=np.float64) for w in used]) * 1e3
        finished = lat.size + sum(w.errors for w in used)
        out.update(lag_mean_ms=float(lags.sum() / finished) if finished else 0.0,
                   lag_max_ms=float(lags.max()) if lags.size else 0.0,
                   late=int((lags > LATE_S * 1e3).sum()), late_share=float((lags > LATE_S * 1e3).sum() / finished)
                   if finished else 0.0)
    return out


def breakdown_us(row: dict[str, Any]) -> dict[str, float]:
    """perf_analyzer's latency split (µs): client send, network + server send/recv, server phases, client recv."""
    server = {p: row.get(f"server_{p}_us") or 0.0 for p in PHASES}
    avg = row.get("avg_us") or 0.0
    send, recv = row.get("client_send_us") or 0.0, row.get("client_recv_us") or 0.0
    return {"send": send, "network": max(0.0, avg - sum(server.values()) - send - recv), **server, "recv": recv}


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """perf_analyzer's CSV: one line per level, latencies and times in whole microseconds."""
    first = "Request Rate" if rows and rows[0]["mode"] == "request_rate" else "Concurrency"
    f = io.StringIO()
    w = csv.writer(f, lineterminator="\n")
    w.writerow([first, *CSV_COLUMNS])
    for r in rows:
        b = breakdown_us(r)
        value = r["value"] if r["mode"] == "request_rate" else int(r["value"])
        w.writerow([value, f"{r.get('inferences_per_s', 0.0):g}",
                    *(round(b[k]) for k in ("send", "network", *PHASES, "recv")),
                    *(round(r.get(f"p{p}_us") or 0) for p in PERCENTILES)])
    return f.getvalue()
