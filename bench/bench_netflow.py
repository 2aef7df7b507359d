"""NetFlow/IPFIX decode and parse throughput on one core.

    .venv/bin/python bench/bench_netflow.py [--records 300000]

Input: real export datagrams. softflowd reads shared captures
(../shared/data/pcap: an nmap SYN scan and a C2 beacon capture) and exports
them as NetFlow v5, v9, IPFIX and IPFIX biflows to a local socket (not
timed); the datagrams are then replayed, repeated to the requested record
count, through

* ``decode``: ``FlowDecoder(json_out=True).decode`` — datagram -> the JSON
  lines the collector puts on ``raw.netflow`` (what the receive path does);
* ``parse``: ``ingest.parsers.parse("netflow", ...)`` — raw batch -> ECS;
* ``udp`` (v9 only): the collector itself on a UDP socket, fed by a sender
  process pacing datagrams at ``--udp-rate`` records/s, decode + bus writes
  included; reports what arrived, what was dropped (kernel or buffer) and
  the collector thread's CPU per record.

Reports records/s of wall time and of process CPU time (the per-core figure
when the machine is shared). Target: decode >= 200k records/s per core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED, peak_rss_mb, pin_one_core, report  # noqa: E402

PCAPS = ["pcap/scan/evilfingers_nmap/TCP_SYN_SCAN.pcap", "pcap/c2_beacon/slips_test-cc-capture-1.pcap"]
VARIANTS = [("v5", "5", []), ("v9", "9", []), ("ipfix", "10", []), ("ipfix_biflow", "10", ["-b"])]


def softflowd_datagrams(pcap: Path, version: str, extra: list[str]) -> list[bytes]:
    """Everything softflowd exports for ``pcap`` (see tests/test_collect_netflow.py for the recipe)."""
    tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-nf-"))
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    r.bind(("127.0.0.1", 0))
    r.settimeout(1.0)
    ctl = tmp / "sf.ctl"
    proc = subprocess.Popen(["softflowd", "-r", str(pcap), "-n", f"127.0.0.1:{r.getsockname()[1]}", "-v", version,
                             "-d", "-a", "-p", str(tmp / "sf.pid"), "-c", str(ctl), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 15
        while subprocess.run(["softflowctl", "-c", str(ctl), "statistics"], capture_output=True).returncode:
            if time.monotonic() > end:
                raise RuntimeError("softflowd did not start")
            time.sleep(0.05)
        subprocess.run(["softflowctl", "-c", str(ctl), "shutdown"], capture_output=True)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = []
    try:
        while True:
            out.append(r.recv(65535))
    except socket.timeout:
        pass
    r.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--udp-rate", type=int, default=150_000, help="records/s the UDP sender aims at")
    args = ap.parse_args()
    if not shutil.which("softflowd"):
        print("netflow: skipped, softflowd not installed")
        return
    pin_one_core()
    import pyarrow as pa

    from ingest.collectors.netflow import FlowDecoder
    from ingest.parsers import RAW_SCHEMA, parse
    import ingest.parsers.netflow  # noqa: F401 - registers the parser

    for name, version, extra in VARIANTS:
        dgrams = [d for p in PCAPS if (SHARED / p).exists() for d in softflowd_datagrams(SHARED / p, version, extra)]
        if not dgrams:
            print(f"netflow.{name}: skipped, no export (shared data missing?)")
            continue
        probe = FlowDecoder(json_out=True)  # one decoder: data sets need the templates sent before them
        per_pass = sum(len(probe.decode(d, "127.0.0.1")) for d in dgrams)
        reps = max(1, -(-args.records // per_pass))
        feed = dgrams * reps
        dec = FlowDecoder(json_out=True)
        lines = []
        w0, c0 = time.perf_counter(), time.process_time()
        for d in feed:
            lines.extend(dec.decode(d, "127.0.0.1"))
        lines = lines[: args.records]  # whole passes were decoded; parse exactly --records
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        n = len(lines)
        report(f"netflow.decode.{name}", {
            "datagrams": len(feed), "records": n, "deadletters": len(dec.dead),
            "records_per_s": round(n / wall), "records_per_cpu_s": round(n / cpu),
            "datagrams_per_cpu_s": round(len(feed) / cpu), "peak_rss_mb": round(peak_rss_mb()),
        })
        raw = pa.table({"taishi.source": ["netflow"] * n, "log.offset": list(range(n)), "log.file.path": [None] * n,
                        "hint": ["netflow"] * n, "event.original": lines}, schema=RAW_SCHEMA)
        batches = [raw.slice(i, 65536) for i in range(0, n, 65536)]
        events = dead = 0
        w0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            res = parse("netflow", b)
            events += res.events.num_rows
            dead += res.deadletters.num_rows
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        report(f"netflow.parse.{name}", {
            "records": n, "events": events, "deadletters": dead,
            "records_per_s": round(n / wall), "records_per_cpu_s": round(n / cpu),
            "peak_rss_mb": round(peak_rss_mb()),
        })
        if name == "v9":
            udp_bench(feed, per_pass * reps, args.udp_rate)


def udp_bench(feed: list[bytes], records: int, rate: int) -> None:
    """The collector on 127.0.0.1 receiving ``feed`` from another process at about ``rate`` records/s."""
    import pickle

    from ingest.collectors.netflow import NetflowCollector
    from ingest.collectors.syslog import Listener
    from taishi.bus import Bus

    tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-nf-bus-"))
    col = NetflowCollector(Bus(tmp / "bus"), [Listener("udp", "127.0.0.1", 0)], flush_interval=0.2).start()
    port = col.bound["udp"][1]
    per_dgram = records / len(feed)
    (tmp / "feed.pkl").write_bytes(pickle.dumps(feed))
    sender = (
        "import pickle, socket, sys, time\n"
        f"feed = pickle.load(open({str(tmp / 'feed.pkl')!r}, 'rb'))\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"gap = {per_dgram / rate!r}\n"
        "t0 = time.perf_counter()\n"
        "for i, d in enumerate(feed):\n"
        "    while time.perf_counter() - t0 < i * gap:\n"
        "        pass\n"
        f"    s.sendto(d, ('127.0.0.1', {port}))\n"
    )
    tid = col._thread.native_id if col._thread else None

    def thread_cpu() -> float:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    c0, w0 = thread_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", sender], check=True)
    end = time.monotonic() + 30
    last = -1
    while time.monotonic() < end:  # until the collector has taken in everything that reached it
        now = col.metrics()["datagrams"]
        if now == last:
            break
        last = now
        time.sleep(0.5)
    wall, cpu = time.perf_counter() - w0, thread_cpu() - c0
    col.stop()
    m = col.metrics()
    report("netflow.udp.v9", {
        "datagrams_sent": len(feed), "datagrams_received": m["datagrams"], "records": m["received"],
        "records_lost": records - m["received"], "dropped_by_buffer": m["dropped"],
        "datagrams_dropped_by_kernel": m["kernel_drops"],
        "target_records_per_s": rate, "collector_records_per_cpu_s": round(m["received"] / cpu) if cpu > 0 else None,
        "wall_s": round(wall, 2),
    })
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
