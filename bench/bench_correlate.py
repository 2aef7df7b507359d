"""Sigma correlation throughput and state size, on one core.

    .venv/bin/python bench/bench_correlate.py [--events 300000] [--ips 5000] [--engine PATH]

Times ``CorrelationEngine.process`` + ``flush`` alone (single-event matching is
done once beforehand, untimed) on:

* ``synthetic``: --events Zeek-like events (85 % conn, 15 % ssh) from --ips
  source addresses over one hour, a few heavy sources scanning many ports, in
  batches of 32k with a few seconds of disorder; rules: the shipped port-scan
  value_count (distinct destination.port / source.ip / 5m >= 20) and the Zeek
  SSH brute-force event_count (failures / source.ip / 5m >= 10). Run streaming
  (60 s allowed lateness) and bounded (infinite lateness: all pending until
  flush, the pipeline's file mode).
* ``zeek_conn``: 100k real Zeek conn records (Stratosphere CTU) against every
  shipped rule (skipped when ../shared/data is missing).
* ``keys_100k``: 100k distinct group keys (two events per source address, nothing
  fires), for the state: snapshot bytes and state memory right before flush
  (Python heap by tracemalloc + Arrow buffers, in a second untimed run).

For each: correlated events/s, alerts, snapshot size (bytes) and time taken
right before flush (the largest state), a second snapshot's time (nothing new
buffered: what the pipeline's periodic snapshot costs), restore time. ``--engine`` runs another
copy of ``correlate/sigma_correlation.py`` (e.g. the previous version) for a
before/after comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, peak_rss_mb, pin_one_core, report  # noqa: E402

BATCH = 32_768
T0_US = 1_795_000_000 * 1_000_000
RULE_FILES = [
    REPO / "rules/sigma/network/discovery_network_port_scan_value_count.yml",
    REPO / "rules/sigma/network/credential_access_ssh_brute_force_zeek_event_count.yml",
]


def _engine_module(path: str | None):
    if not path:
        import correlate.sigma_correlation as mod

        return mod
    spec = importlib.util.spec_from_file_location("bench_engine_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _table(cols: dict, n: int):
    import pyarrow as pa

    from taishi.schema import EVENT_SCHEMA

    arrays = [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in EVENT_SCHEMA]
    return pa.Table.from_arrays([pa.array(a, f.type) if not isinstance(a, pa.Array) else a.cast(f.type)
                                 for a, f in zip(arrays, EVENT_SCHEMA)], schema=EVENT_SCHEMA)


def synthetic(n: int, ips: int, seed: int = 7, seconds: float = 3600.0, jitter_s: float = 5.0):
    """Zeek-like conn + ssh events, sorted by time up to ``jitter_s`` of disorder."""
    import numpy as np
    import pyarrow as pa

    rnd = np.random.default_rng(seed)
    # heavy-tailed sources: a few very active (scanners, brute forcers), most quiet
    src_idx = np.minimum((rnd.pareto(1.2, n) * ips / 50).astype(np.int64), ips - 1)
    src = np.array([f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(ips)], dtype=object)[src_idx]
    ts = np.sort(rnd.uniform(0, seconds, n)) + rnd.uniform(0, jitter_s, n)
    ts_us = (T0_US + ts * 1e6).astype(np.int64)
    is_ssh = rnd.random(n) < 0.15
    heavy = src_idx < 50
    common_ports = np.array([22, 25, 53, 80, 123, 443, 445, 993, 3389, 8080])
    dport = np.where(heavy, rnd.integers(1, 65536, n), common_ports[rnd.integers(0, 10, n)])
    dport = np.where(is_ssh, 22, dport)
    actions = np.array(["S0", "REJ", "SF", "RSTO", "SH"], dtype=object)[rnd.choice(5, n, p=[0.5, 0.15, 0.25, 0.05, 0.05])]
    outcome = np.where(is_ssh, np.where(rnd.random(n) < 0.6, "failure", "success"), None).astype(object)
    cols = {
        "@timestamp": pa.array(ts_us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "event.id": [f"ev{i:012x}" for i in range(n)],
        "event.module": ["zeek"] * n,
        "event.dataset": np.where(is_ssh, "zeek.ssh", "zeek.conn").tolist(),
        "event.category": ["network"] * n,
        "event.action": np.where(is_ssh, None, actions).tolist(),
        "event.outcome": outcome.tolist(),
        "network.transport": ["tcp"] * n,
        "source.ip": src.tolist(),
        "source.port": rnd.integers(1024, 65536, n).tolist(),
        "destination.ip": [f"192.168.{i % 4}.{i % 250 + 1}" for i in rnd.integers(0, 1000, n).tolist()],
        "destination.port": dport.tolist(),
    }
    return _table(cols, n)


def keys_100k(n_keys: int = 100_000):
    """Two failed attempts per source, n_keys sources, over ten minutes: nothing fires, all is state."""
    import numpy as np
    import pyarrow as pa

    n = 2 * n_keys
    ts_us = T0_US + np.sort(np.random.default_rng(3).uniform(0, 600, n) * 1e6).astype(np.int64)
    cols = {
        "@timestamp": pa.array(ts_us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "event.id": [f"ev{i:012x}" for i in range(n)],
        "event.module": ["zeek"] * n,
        "event.dataset": ["zeek.conn"] * n,
        "event.action": ["S0"] * n,
        "network.transport": ["tcp"] * n,
        "source.ip": [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in np.random.default_rng(4).permutation(n) % n_keys],
        "source.port": [40000] * n,
        "destination.ip": ["192.168.0.1"] * n,
        "destination.port": (np.arange(n) % 7 + 20).tolist(),
    }
    return _table(cols, n)


def zeek_conn(records: int = 100_000):
    from bench.bench_parse import _repeat_lines
    from ingest.files import read_records
    from ingest.parsers import parse

    src = SHARED / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"
    if not src.exists():
        return None
    path = _repeat_lines(src, records, Path(tempfile.mkdtemp(prefix="taishi-bench-")) / "conn.log", True)
    return [parse("zeek", b).events for b in read_records(path, "zeek", batch_size=BATCH)]


def _feed(mod, rs, batches, matches, lateness):
    eng = mod.CorrelationEngine(rs.correlations, allowed_lateness_s=lateness)
    alerts = 0
    for b, m in zip(batches, matches):
        alerts += eng.process(b, m).alerts.num_rows
    return eng, alerts


def run(mod, rs, batches, lateness: float, name: str, keys: int | None = None) -> None:
    import pyarrow as pa

    matches = [rs.match(b) for b in batches]  # untimed: single-event matching is not under test
    n = sum(b.num_rows for b in batches)
    nm = sum(m.num_rows for m in matches)
    t0 = time.perf_counter()
    eng, alerts = _feed(mod, rs, batches, matches, lateness)
    t_proc = time.perf_counter() - t0
    state = eng.state_size()
    t1 = time.perf_counter()
    snap = eng.snapshot()
    t_snap = time.perf_counter() - t1
    t1 = time.perf_counter()
    eng.snapshot()  # the pipeline snapshots every few seconds: the next one, nothing new buffered
    t_snap2 = time.perf_counter() - t1
    t1 = time.perf_counter()
    mod.CorrelationEngine.restore(rs.correlations, snap)
    t_restore = time.perf_counter() - t1
    t1 = time.perf_counter()
    alerts += eng.flush().alerts.num_rows
    t_flush = time.perf_counter() - t1
    secs = t_proc + t_flush
    figures = {
        "events": n, "matched": nm, "alerts": alerts,
        "process_s": round(t_proc, 3), "flush_s": round(t_flush, 3),
        "events_per_s": round(n / secs), "state_events": state,
        "snapshot_bytes": len(snap), "snapshot_ms": round(t_snap * 1000, 1),
        "snapshot_again_ms": round(t_snap2 * 1000, 1), "restore_ms": round(t_restore * 1000, 1),
    }
    if keys is not None:
        # state memory right before flush, in a second untimed run: Python heap (tracemalloc) + Arrow buffers
        del eng
        arrow0 = pa.total_allocated_bytes()
        tracemalloc.start()
        eng, _ = _feed(mod, rs, batches, matches, lateness)
        py = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        mem = py + pa.total_allocated_bytes() - arrow0
        figures["state_mb"] = round(mem / 2**20, 1)
        figures["state_bytes_per_key"] = round(mem / keys)
        figures["snapshot_bytes_per_key"] = round(len(snap) / keys)
    figures["peak_rss_mb"] = round(peak_rss_mb())
    report(f"correlate.{name}", figures)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--ips", type=int, default=5000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--engine", help="path of another sigma_correlation.py to measure instead")
    ap.add_argument("--only", help="comma-separated cases: synthetic,zeek_conn,keys")
    args = ap.parse_args()
    pin_one_core()
    from detect.sigma import RuleSet

    mod = _engine_module(args.engine)
    only = set(args.only.split(",")) if args.only else {"synthetic", "zeek_conn", "keys"}
    rs = RuleSet.load(RULE_FILES)
    if "synthetic" in only:
        ev = synthetic(args.events, args.ips)
        batches = [ev.slice(i, BATCH) for i in range(0, ev.num_rows, BATCH)]
        run(mod, rs, batches, 60, "synthetic.streaming")
        run(mod, rs, batches, float("inf"), "synthetic.bounded")
    if "zeek_conn" in only:
        zb = zeek_conn()
        if zb is None:
            print("correlate.zeek_conn: skipped, Zeek sample not found (set TAISHI_SHARED_DATA)")
        else:
            run(mod, RuleSet.load([REPO / "rules/sigma"]), zb, float("inf"), "zeek_conn.bounded")
    if "keys" in only:
        kt = keys_100k(args.keys)
        run(mod, rs, [kt], float("inf"), f"keys_{args.keys // 1000}k.bounded", keys=args.keys)
        run(mod, rs, [kt], 60, f"keys_{args.keys // 1000}k.streaming", keys=args.keys)


if __name__ == "__main__":
    main()
