"""Incident building throughput and state size, on one core.

    .venv/bin/python bench/bench_incidents.py [--alerts 100000] [--actors 2000] [--hosts 5000]

Synthetic alerts over six hours: --actors sources (a fifth of them internal hosts, so attacks
pivot and incidents merge) against --hosts targets, four tactics, in batches of 5k with a few
seconds of disorder. Times ``IncidentBuilder.process`` + ``flush`` streaming (660 s lateness, the
pipeline's for a 60 s detect lateness) and bounded; then the snapshot (size, time), a restore,
and writing the incidents into a fresh store (``Store.upsert_incidents``).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import peak_rss_mb, pin_one_core, report  # noqa: E402


def alerts(n: int, actors: int, hosts: int, seed: int = 1):
    from taishi.schema import alerts_table

    rng = random.Random(seed)
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    ext = [f"198.51.{i // 250}.{i % 250}" for i in range(actors - actors // 5)]
    internal = [f"10.{i // 65000}.{(i // 250) % 260}.{i % 250}" for i in range(hosts)]
    srcs = ext + internal[: actors // 5]
    tags = ["attack.discovery", "attack.credential-access", "attack.lateral-movement", "attack.exfiltration"]
    rows = []
    for i in range(n):
        ts = t0 + timedelta(seconds=6 * 3600 * i / n + rng.uniform(-5, 5))
        rows.append({"id": f"a{i:08d}", "@timestamp": ts, "rule.id": f"r{rng.randrange(15)}",
                     "rule.name": f"rule {rng.randrange(15)}", "rule.level": rng.choice(["low", "medium", "high"]),
                     "tags": [rng.choice(tags)], "source.ip": rng.choice(srcs), "destination.ip": rng.choice(internal)})
    return [alerts_table(rows[k:k + 5000]) for k in range(0, n, 5000)]


def run(batches, lateness: float) -> dict:
    from correlate.incidents import IncidentBuilder, merge_outputs

    b = IncidentBuilder(allowed_lateness_s=lateness)
    t = time.perf_counter()
    outs = [b.process(x) for x in batches]
    mid_state = b.state_size()
    outs.append(b.flush())
    secs = time.perf_counter() - t
    out = merge_outputs(*outs)
    live = [i for i in out if "merged_into" not in i]
    t = time.perf_counter()
    snap = b.snapshot()
    snap_s = time.perf_counter() - t
    t = time.perf_counter()
    IncidentBuilder.restore(snap)
    restore_s = time.perf_counter() - t
    n = sum(x.num_rows for x in batches)
    return {"alerts_per_s": n / secs, "incidents": len(live), "open": b.open_count, "state_alerts": mid_state,
            "snapshot_bytes": len(snap), "snapshot_s": round(snap_s, 3), "restore_s": round(restore_s, 3),
            "out": live}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=100_000)
    ap.add_argument("--actors", type=int, default=2000)
    ap.add_argument("--hosts", type=int, default=5000)
    args = ap.parse_args()
    pin_one_core()
    from taishi.store import Store

    batches = alerts(args.alerts, args.actors, args.hosts)
    for name, lateness in (("streaming", 660.0), ("bounded", float("inf"))):
        res = run(batches, lateness)
        out = res.pop("out")
        if name == "bounded":
            with tempfile.TemporaryDirectory() as d:
                store = Store(d, keep_open=True)
                t = time.perf_counter()
                store.upsert_incidents(out)
                res["store_incidents_per_s"] = len(out) / (time.perf_counter() - t)
                store.close()
        res["peak_rss_mb"] = round(peak_rss_mb(), 1)
        report(f"incidents.{name}", res)


if __name__ == "__main__":
    main()
