"""Syslog receive and parse throughput on one core.

    .venv/bin/python bench/bench_syslog.py [--messages 200000] [--udp-rate 50000]

Input: real messages, the loghub OpenSSH and Linux samples in
../shared/data/logs (4,000 lines: sshd logins, PAM failures, su, kernel,
ftpd, ...), written as RFC 3164 (``<PRI>Mmm dd hh:mm:ss host tag[pid]: msg``)
and as RFC 5424 (``<PRI>1 ISO-TIME host app procid - - msg``), repeated to
the requested count. For each format:

* ``recv.udp``: ``SyslogCollector`` on a UDP socket on 127.0.0.1, fed by a
  sender process pacing one datagram per message at ``--udp-rate``
  messages/s; reports what arrived, what was dropped (buffer or kernel) and
  the collector thread's CPU per message (from /proc/self/task/<tid>/stat;
  framing, buffering and the bus writes included);
* ``recv.tcp`` / ``recv.tcp_octet``: the same over one TCP connection,
  newline framing / RFC 6587 octet counting, sent as fast as the receiver
  takes it (TCP has backpressure, nothing is dropped);
* ``parse``: ``ingest.parsers.parse("syslog", ...)`` on the raw batches the
  TCP receiver wrote to the bus, eight at a time (~64k messages, as the
  pipeline's parse step concatenates frames) -> ECS events with their ids;
* ``e2e``: receive (TCP, newline framing) + parse, messages per CPU-second
  of both together: the figure the target is about (>= 100k messages per
  CPU-second on one core).

Parse runs once on one batch first (warm-up, not reported). Per-core
figures are CPU-second based, since the machine is shared (the load average
is printed first).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED, peak_rss_mb, pin_one_core, report, thread_cpu_s  # noqa: E402

LOGS = ["logs/loghub/OpenSSH/OpenSSH_2k.log", "logs/loghub/Linux/Linux_2k.log"]
MONTHS = {m: i + 1 for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())}
PARSE_FRAMES = 8  # collector batches (8192 messages) the parse step takes at once


def messages(fmt: str) -> list[bytes]:
    """The loghub lines as RFC 3164 or RFC 5424 messages (authpriv.info: PRI 86)."""
    out = []
    for rel in LOGS:
        path = SHARED / rel
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            if fmt == "rfc3164":
                out.append(f"<86>{line}".encode())
                continue
            mon, day, hms, host, rest = (line.split(None, 4) + ["", "", "", "", ""])[:5]
            tag, _, msg = rest.partition(": ")
            app, _, pid = tag.partition("[")
            ts = f"2026-{MONTHS.get(mon, 1):02d}-{int(day) if day.isdigit() else 1:02d}T{hms}Z"
            out.append(f"<86>1 {ts} {host or '-'} {app or '-'} {pid.rstrip(']') or '-'} - - {msg}".encode())
    return out


SENDER = """
import pickle, socket, sys, time
proto, port, rate, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
feed = pickle.load(open(path, "rb"))
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.perf_counter()
    for i, d in enumerate(feed):
        if i % 64 == 0:
            while time.perf_counter() - t0 < i / rate:
                pass
        s.sendto(d, ("127.0.0.1", port))
else:
    s = socket.create_connection(("127.0.0.1", port))
    if proto == "tcp_octet":
        frames = [b"%d " % len(d) + d for d in feed]
    else:
        frames = [d + b"\\n" for d in feed]
    for i in range(0, len(frames), 256):
        s.sendall(b"".join(frames[i:i + 256]))
    s.close()
"""


def receive(proto: str, feed: list[bytes], rate: int, tmp: Path) -> tuple[dict, "object"]:
    """Run the collector on ``proto`` fed by a sender process; returns its figures and bus."""
    from ingest.collectors import Listener
    from ingest.collectors.syslog import SyslogCollector
    from taishi.bus import Bus

    bus = Bus(tmp / f"bus-{proto}")
    lproto = "udp" if proto == "udp" else "tcp"
    col = SyslogCollector(bus, [Listener(lproto, "127.0.0.1", 0)], flush_interval=0.2).start()
    port = col.bound[lproto][1]
    (tmp / "feed.pkl").write_bytes(pickle.dumps(feed))
    tid = col._thread.native_id if col._thread else None
    c0, w0 = thread_cpu_s(tid), time.perf_counter()
    subprocess.run([sys.executable, "-c", SENDER, proto, str(port), str(rate), str(tmp / "feed.pkl")], check=True)
    end = time.monotonic() + 60
    last = -1
    while time.monotonic() < end:  # until the collector has taken in everything that reached it
        now = col.metrics()["received"] + col.metrics()["dropped"]
        if now == last and (proto == "udp" or now >= len(feed)):
            break
        last = now
        time.sleep(0.3)
    wall, cpu = time.perf_counter() - w0, thread_cpu_s(tid) - c0  # before stop(): the thread's stat goes with it
    col.stop()
    m = col.metrics()
    return {
        "sent": len(feed), "received": m["received"], "lost": len(feed) - m["received"],
        "dropped_by_buffer": m["dropped"], "deadlettered": m["deadlettered"], "batches": m["batches"],
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 3),
        "messages_per_cpu_s": round(m["received"] / cpu) if cpu > 0 else None,
    }, bus


def parse_bus(bus) -> dict:
    """Parse what the receiver wrote to ``raw.syslog``, PARSE_FRAMES frames at a time."""
    import pyarrow as pa

    from ingest.collectors.syslog import TOPIC
    from ingest.parsers import parse

    frames = [b.table for b in bus.read(TOPIC, 0)]
    groups = [pa.concat_tables(frames[i:i + PARSE_FRAMES]) for i in range(0, len(frames), PARSE_FRAMES)]
    if not groups:
        return {"messages": 0}
    parse("syslog", groups[0].slice(0, 8192))  # warm-up
    n = events = dead = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for g in groups:
        r = parse("syslog", g)
        n += g.num_rows
        events += r.events.num_rows
        dead += r.deadletters.num_rows
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"messages": n, "events": events, "deadletters": dead, "messages_per_s": round(n / wall),
            "messages_per_cpu_s": round(n / cpu), "cpu_s": round(cpu, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--udp-rate", type=int, default=50_000, help="messages/s the UDP sender aims at")
    ap.add_argument("--formats", default="rfc3164,rfc5424")
    args = ap.parse_args()
    pin_one_core()
    print(f"syslog: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, one core, {args.messages:,} messages per format")
    for fmt in args.formats.split(","):
        base = messages(fmt)
        if not base:
            print(f"syslog.{fmt}: skipped, loghub samples not found (set TAISHI_SHARED_DATA)")
            return
        feed = (base * (-(-args.messages // len(base))))[: args.messages]
        tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-syslog-"))
        try:
            udp, _ = receive("udp", feed, args.udp_rate, tmp)
            report(f"syslog.recv.udp.{fmt}", {**udp, "target_messages_per_s": args.udp_rate})
            octet, _ = receive("tcp_octet", feed, 0, tmp)
            report(f"syslog.recv.tcp_octet.{fmt}", octet)
            tcp, bus = receive("tcp", feed, 0, tmp)
            report(f"syslog.recv.tcp.{fmt}", tcp)
            p = parse_bus(bus)
            report(f"syslog.parse.{fmt}", p)
            if tcp["messages_per_cpu_s"] and p.get("messages"):
                cpu = tcp["cpu_s"] * p["messages"] / tcp["received"] + p["cpu_s"]
                report(f"syslog.e2e.{fmt}", {
                    "messages": p["messages"], "messages_per_cpu_s": round(p["messages"] / cpu), "cpu_s": round(cpu, 3),
                    "target": ">= 100k messages/cpu-s", "peak_rss_mb": round(peak_rss_mb()),
                })
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
