"""NetFlow/IPFIX decode and parse throughput on one core.

    .venv/bin/python bench/bench_netflow.py [--records 300000]

Input: real export datagrams. softflowd reads shared captures
(../shared/data/pcap: an nmap SYN scan and a C2 beacon capture) and exports
them as NetFlow v5, v9, IPFIX and IPFIX biflows to a local socket (not
timed); the datagrams are then replayed, repeated to the requested record
count, through what the collector and the parse step do:

* ``decode``: ``FlowDecoder.decode_sets`` per datagram and ``raw_batch`` per
  8192 records (the collector's batch size) -- datagrams -> the ``raw.netflow``
  batches the collector puts on the embedded bus: the JSON lines
  (``event.original``) and the records' column form (``netflow.decoded``);
* ``parse``: ``ingest.parsers.parse("netflow", ...)`` on those batches, eight
  at a time (~64k records, as the pipeline's parse step concatenates frames)
  -> ECS event batches with their ids;
* ``e2e``: the two together, decoded datagrams -> ECS event batches: the
  figure the target is about (>= 200k records per CPU-second on one core);
* ``parse_json``: the same batches without the column form, i.e. the JSON
  lines read back (``pyarrow.json``): what cluster mode parses, Kafka records
  carrying one row's JSON each (information, no target);
* ``udp`` (v9 only): the collector itself on a UDP socket, fed by a sender
  process pacing datagrams at ``--udp-rate`` records/s, decode + bus writes
  included; reports what arrived, what was dropped (kernel or buffer) and
  the collector thread's CPU per record.

Each variant runs once on one parse batch first (warm-up, not reported).
Reports records/s of wall time and of process CPU time; the CPU figure is
the per-core one when the machine is shared (the load average is printed
first).
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
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED, peak_rss_mb, pin_one_core, report, thread_cpu_s  # noqa: E402

PCAPS = ["pcap/scan/evilfingers_nmap/TCP_SYN_SCAN.pcap", "pcap/c2_beacon/slips_test-cc-capture-1.pcap"]
VARIANTS = [("v5", "5", []), ("v9", "9", []), ("ipfix", "10", []), ("ipfix_biflow", "10", ["-b"])]
COLLECTOR_BATCH = 8192  # NetflowCollector's batch_size
PARSE_FRAMES = 8  # collector batches the parse step takes at once (~64k records)


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


def run(feed: list[bytes], records: int, keep_json: bool = False) -> dict:
    """The collector's path then the parse step's, on ``records`` records of ``feed``, timed apart.

    Streaming as the pipeline does, so memory stays bounded: datagrams -> raw batches of
    COLLECTOR_BATCH records (``FlowDecoder.decode_sets``, ``raw_batch``); every PARSE_FRAMES
    batches -> one ``parse``. With ``keep_json`` the same batches are also parsed without their
    column form (the JSON read back, as in cluster mode), timed on their own."""
    import pyarrow as pa

    from ingest.collectors.netflow import FlowDecoder, raw_batch
    from ingest.parsers import parse
    from ingest.parsers.netflow import DECODED

    dec = FlowDecoder(json_out=True)  # one decoder: data sets need the templates sent before them
    out = {"records": 0, "events": 0, "deadletters": 0, "batches": 0, "column_form": True,
           "decode": [0.0, 0.0], "parse": [0.0, 0.0], "parse_json": [0.0, 0.0]}

    def timed(key: str, fn, *a):
        w0, c0 = time.perf_counter(), time.process_time()
        r = fn(*a)
        out[key][0] += time.perf_counter() - w0
        out[key][1] += time.process_time() - c0
        return r

    def decode_some(it) -> list:
        batches, sets, pending = [], [], 0
        for d in it:
            pending += dec.decode_sets(d, "127.0.0.1", sets)
            if pending >= COLLECTOR_BATCH:
                batches.append(raw_batch("netflow", out["records"], sets))
                out["records"] += pending
                sets, pending = [], 0
                if len(batches) == PARSE_FRAMES or out["records"] >= records:
                    return batches
        if sets:
            batches.append(raw_batch("netflow", out["records"], sets))
            out["records"] += pending
        return batches

    def parse_all(batches: list):
        return parse("netflow", pa.concat_tables(batches) if len(batches) > 1 else batches[0])

    it = iter(feed)
    while out["records"] < records:
        batches = timed("decode", decode_some, it)
        if not batches:
            break
        out["batches"] += len(batches)
        out["column_form"] &= all(DECODED in b.column_names for b in batches)
        res = timed("parse", parse_all, batches)
        out["events"] += res.events.num_rows
        out["deadletters"] += res.deadletters.num_rows
        if keep_json:
            timed("parse_json", parse_all, [b.drop_columns([DECODED]) if DECODED in b.column_names else b
                                            for b in batches])
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
    from ingest.collectors.netflow import FlowDecoder

    print(f"netflow: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, one core, {args.records:,} records per variant")
    for name, version, extra in VARIANTS:
        dgrams = [d for p in PCAPS if (SHARED / p).exists() for d in softflowd_datagrams(SHARED / p, version, extra)]
        if not dgrams:
            print(f"netflow.{name}: skipped, no export (shared data missing?)")
            continue
        probe = FlowDecoder(json_out=True)
        per_pass = sum(len(probe.decode(d, "127.0.0.1")) for d in dgrams)
        reps = max(1, -(-args.records // per_pass))
        feed = dgrams * reps
        run(feed, PARSE_FRAMES * COLLECTOR_BATCH, keep_json=True)  # warm-up: one parse batch
        r = run(feed, args.records, keep_json=True)
        n = r["records"]
        (dwall, dcpu), (pwall, pcpu), (jwall, jcpu) = r["decode"], r["parse"], r["parse_json"]
        report(f"netflow.decode.{name}", {
            "datagrams": len(feed), "records": n, "batches": r["batches"], "column_form": r["column_form"],
            "records_per_s": round(n / dwall), "records_per_cpu_s": round(n / dcpu), "cpu_s": round(dcpu, 3),
        })
        report(f"netflow.parse.{name}", {
            "records": n, "events": r["events"], "deadletters": r["deadletters"],
            "records_per_s": round(n / pwall), "records_per_cpu_s": round(n / pcpu), "cpu_s": round(pcpu, 3),
        })
        report(f"netflow.e2e.{name}", {
            "records": n, "records_per_s": round(n / (dwall + pwall)),
            "records_per_cpu_s": round(n / (dcpu + pcpu)), "cpu_s": round(dcpu + pcpu, 3),
            "target": ">= 200k records/cpu-s", "peak_rss_mb": round(peak_rss_mb()),
        })
        report(f"netflow.parse_json.{name}", {
            "records": n, "records_per_s": round(n / jwall), "records_per_cpu_s": round(n / jcpu), "cpu_s": round(jcpu, 3),
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

    c0, w0 = thread_cpu_s(tid), time.perf_counter()
    subprocess.run([sys.executable, "-c", sender], check=True)
    end = time.monotonic() + 30
    last = -1
    while time.monotonic() < end:  # until the collector has taken in everything that reached it
        now = col.metrics()["datagrams"]
        if now == last:
            break
        last = now
        time.sleep(0.5)
    wall, cpu = time.perf_counter() - w0, thread_cpu_s(tid) - c0
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
