"""Parse throughput: raw records -> ECS Arrow batches, on one core.

    .venv/bin/python bench/bench_parse.py [--records 500000]

Builds inputs from the real samples in ../shared/data (Zeek conn TSV from the
Stratosphere CTU set, Zeek DNS JSON from WRCCDC 2018, Suricata EVE from Slips,
sshd syslog from loghub), repeated to the requested size, frames them once
(not timed), warms up on one batch, then times ``ingest.parsers.parse`` alone
(steady state, as in a long-running collector). Prints records/s and peak
RSS. Target: >= 250k Zeek conn records/s.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED, peak_rss_mb, pin_one_core, report, timed  # noqa: E402


def _repeat_lines(src: Path, n: int, out: Path, keep_header: bool) -> Path:
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt") as f:
        lines = f.read().splitlines()
    header = [l for l in lines if l.startswith("#") and not l.startswith("#close")] if keep_header else []
    body = [l for l in lines if l and not l.startswith("#")]
    with open(out, "w") as f:
        if header:
            f.write("\n".join(header) + "\n")
        written = 0
        while written < n:
            chunk = body[: n - written]
            f.write("\n".join(chunk) + "\n")
            written += len(chunk)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=500_000)
    args = ap.parse_args()
    pin_one_core()
    from ingest.files import read_records
    from ingest.parsers import parse

    cases = [
        ("zeek_conn_tsv", "zeek", SHARED / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled", True, "conn.log"),
        ("zeek_dns_json", "zeek", SHARED / "zeek/wrccdc2018_zed/dns.json.gz", False, "dns.log"),
        ("suricata_eve", "suricata", SHARED / "suricata/slips_test6-malicious.suricata.json", False, "eve.json"),
        ("syslog_sshd", "syslog", SHARED / "logs/loghub/OpenSSH/OpenSSH_2k.log", False, "auth.log"),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-"))
    for name, fmt, src, header, fname in cases:
        if not src.exists():
            print(f"{name}: skipped, {src} not found (set TAISHI_SHARED_DATA)")
            continue
        path = _repeat_lines(src, args.records, tmp / fname, header)
        batches = list(read_records(path, fmt, batch_size=65536))
        n = sum(b.num_rows for b in batches)
        parse(fmt, batches[0])  # warm-up: the first large batch pays one-off allocation costs
        events = dead = 0
        with timed() as t:
            for b in batches:
                r = parse(fmt, b)
                events += r.events.num_rows
                dead += r.deadletters.num_rows
        report(f"parse.{name}", {"records": n, "events": events, "deadletters": dead,
                                 "records_per_s": round(n / t["seconds"]), "peak_rss_mb": round(peak_rss_mb())})


if __name__ == "__main__":
    main()
