"""Single-event Sigma matching throughput, on one core.

    .venv/bin/python bench/bench_detect.py [--records 200000]

Events: real Zeek conn/dns/ssl and sshd records from ../shared/data, parsed
to ECS and repeated to --records. Rule sets: 1 rule, the shipped rules,
100 rules and all rules (the shipped ones plus every SigmaHQ rule in
../shared/data/rules/sigma).
Prints events/s for ``RuleSet.match`` (correlation excluded; see
bench_correlate.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, peak_rss_mb, pin_one_core, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    args = ap.parse_args()
    pin_one_core()
    import pyarrow as pa

    from detect.sigma import RuleSet
    from ingest.files import read_records
    from ingest.parsers import parse

    sources = [
        ("zeek", SHARED / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"),
        ("zeek", SHARED / "zeek/stratosphere_sdt/005-simda/dns.log"),
        ("zeek", SHARED / "zeek/slips/test9-mixed/ssl.log"),
        ("syslog", SHARED / "logs/loghub/OpenSSH/OpenSSH_2k.log"),
    ]
    parts = [parse(fmt, b).events for fmt, p in sources if p.exists() for b in read_records(p, fmt)]
    if not parts:
        print("skipped: ../shared/data not found (set TAISHI_SHARED_DATA)")
        return
    base = pa.concat_tables(parts)
    reps = -(-args.records // base.num_rows)
    events = pa.concat_tables([base] * reps).slice(0, args.records).combine_chunks()
    shipped = RuleSet.load([REPO / "rules" / "sigma"])
    everything = RuleSet.load([p for p in (REPO / "rules" / "sigma", SHARED / "rules" / "sigma") if p.exists()])
    # the shipped rules first (they fire on these events), then SigmaHQ's, in file order
    ordered = [r.id for r in shipped.rules] + [r.id for r in everything.rules if r.id not in shipped._by_id]
    sets = {
        "1_rule": everything.subset(ordered[:1]),
        "shipped": shipped,
        "100_rules": everything.subset(ordered[:100]),
        "all_rules": everything,
    }
    for name, rs in sets.items():
        rs.match(events.slice(0, 1000))  # warm-up
        t0 = time.perf_counter()
        m = rs.match(events)
        dt = time.perf_counter() - t0
        report(f"detect.match.{name}", {"rules": len(rs.rules), "events": events.num_rows, "matches": m.num_rows,
                                         "events_per_s": round(events.num_rows / dt), "peak_rss_mb": round(peak_rss_mb())})


if __name__ == "__main__":
    main()
