"""Packet-capture throughput: pcap -> flow + application ECS events, on one core.

    .venv/bin/python bench/bench_pcap.py [--repeat 3] [--big]

Reads real captures from ../shared/data/pcap with ``ingest.pcap.read_pcap``
(``--decoder auto``, the default: Taishi's numpy header decoder -> flows, Modbus/TCP and TLS
hellos decoded in Taishi, tshark -T fields only over the other application packets;
``--decoder tshark``: tshark -T fields over every frame -> pyarrow.csv -> vectorised flows /
app events) and prints, per capture, packets/s three ways:

* ``wall_pps``   packets / wall-clock seconds (tshark and Python pinned to the
  same single core: the child inherits the affinity);
* ``cpu_pps``    packets / (CPU seconds of tshark + Python) - what one dedicated
  core would do; unlike wall time it is not inflated by other load on the box;
* ``python_pps`` packets / Python CPU seconds alone (the part this module owns:
  TSV parsing, flow aggregation, event building).

``--big`` also unzips the 54 MB QUT DNP3 attacker capture (303k frames, mostly
IEC 61850 GOOSE) to a temp dir and runs it with and without
``--disable-protocol goose`` (GOOSE is not mapped to events; skipping its BER
dissection is the single biggest tshark saving there), and concatenates the IP
captures above (``mergecap -a``) into a ~340k-frame TCP/Modbus/TLS mix.
``--live`` (root: a network namespace and a veth pair) measures the live
path instead: ``CaptureCollector`` (dumpcap | tshark -T fields | the same
flow/app code) on the host end of a veth pair while ``tcpreplay --topspeed``
(on the other core) sends the SYN-flood and Modbus captures from the
namespace end at ``--live-pps`` packets/s (0: top speed), ``--live-loops``
times; reports packets sent and captured, kernel drops (dumpcap's count) and
interface drops (the veth's receive queue), and packets per CPU second of
the collector, tshark and dumpcap together.
``--tshark-modes`` prints what tshark alone costs per packet on each capture
(CPU µs, pinned): dissection without a tree (``-q``), ``-T fields`` with
one field, and with all of ``ingest.pcap.tshark.FIELDS`` -- the floor any
path that prints fields for every packet pays.
Target: >= 50k packets/s.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED, peak_rss_mb, pin_one_core, report  # noqa: E402

CASES = [
    ("synflood_tcp", "pcap/dos/stopddos_pkt.TCP.synflood.spoofed.pcap", ()),
    ("modbus_iti", "pcap/ics/iti_ModbusTCP.pcap", ()),
    ("modbus_cset", "pcap/ics/modbus_cset2016/characterization_modbus_6RTU_with_operate.pcap", ()),
    ("tls_beacon", "pcap/c2_beacon/slips_test-cc-capture-1.pcap", ()),
    ("udp_isakmp_amp", "pcap/dos/stopddos_amp.UDP.isakmp.pcap", ()),
]


def _cpu() -> tuple[float, float]:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


def run_one(path: Path, tshark_args: tuple[str, ...] = ()) -> dict:
    from ingest.pcap import read_pcap

    py0, ch0 = _cpu()
    t0 = time.perf_counter()
    r = read_pcap(path, tshark_args=tshark_args)  # decoder: TAISHI_PCAP_DECODER, set in main
    events = 0
    for t in r:
        events += t.num_rows
    wall = time.perf_counter() - t0
    py1, ch1 = _cpu()
    s = r.summary
    py, ts = py1 - py0, ch1 - ch0
    return {
        "packets": s.packets,
        "flows": s.flows,
        "events": events,
        "wall_s": round(wall, 3),
        "tshark_cpu_s": round(ts, 3),
        "python_cpu_s": round(py, 3),
        "wall_pps": s.packets / wall,
        "cpu_pps": s.packets / max(py + ts, 1e-9),
        "python_pps": s.packets / max(py, 1e-9),
        "decoder": s.decoder,
        "tshark_packets": s.tshark_packets,
    }


def live(loops: int, rate: int) -> None:
    """The live capture path on a veth pair (see the module doc)."""
    from ingest.collectors.capture import CaptureCollector
    from taishi.bus import Bus

    if os.geteuid() != 0 or not shutil.which("tcpreplay"):
        print("pcap_live: skipped (needs root and tcpreplay)")
        return
    ns, host_if, ns_if = f"tb{os.getpid()}", f"tbh{os.getpid() % 10**6}", f"tbn{os.getpid() % 10**6}"
    sh = lambda *c: subprocess.run(c, capture_output=True, text=True)  # noqa: E731
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        Path(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6").write_text("1")
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "link", "set", host_if, "mtu", "16000", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "mtu", "16000", "up")
        others = sorted(os.sched_getaffinity(0) - {sorted(os.sched_getaffinity(0))[0]}) if hasattr(os, "sched_getaffinity") else []
        tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-live-"))
        for name, rel in (("synflood_tcp", CASES[0][1]), ("modbus_iti", CASES[1][1])):
            path = SHARED / rel
            if not path.exists():
                continue
            col = CaptureCollector(Bus(tmp / name / "bus"), host_if, flush_interval=0.5).start()
            py0, ch0 = _cpu()
            t0 = time.perf_counter()
            speed = ["--topspeed"] if rate <= 0 else ["--pps", str(rate)]
            cmd = ["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", ns_if, *speed, "-l", str(loops), str(path)]
            if others:
                cmd = ["taskset", "-c", str(others[0]), *cmd]
            sent = subprocess.run(cmd, capture_output=True, text=True).stdout
            n_sent = next((int(x.split()[1]) for x in sent.splitlines() if x.strip().startswith("Actual:")), 0)
            end = time.monotonic() + 300
            while col.metrics()["received"] < n_sent and time.monotonic() < end:  # until the capture caught up
                time.sleep(0.2)
            col.stop()
            wall = time.perf_counter() - t0
            py1, ch1 = _cpu()
            m = col.metrics()
            cpu = (py1 - py0) + (ch1 - ch0)
            report(f"pcap_live_{name}", {
                "packets_sent": n_sent, "packets_captured": m["received"], "kernel_drops": m["kernel_drops"], "dropped": m["dropped"],
                "interface_drops": m["interface_drops"], "target_pps": rate or "topspeed",
                "flows": m["flows"], "events": m["parsed"], "wall_s": round(wall, 2), "cpu_s": round(cpu, 3),
                "cpu_pps": m["received"] / max(cpu, 1e-9), "peak_rss_mb": round(peak_rss_mb(), 1),
            })
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        sh("ip", "link", "del", host_if)
        sh("ip", "netns", "del", ns)


def tshark_modes(cases: list) -> None:
    from ingest.pcap.tshark import field_args, tshark_path

    exe = tshark_path()
    for name, path, _ in cases:
        if not path.exists():
            continue
        out = {}
        for mode, extra in (("q", ["-q"]), ("one_field", ["-T", "fields", "-e", "frame.number"]),
                            ("all_fields", field_args())):
            best = None
            for _ in range(3):
                _, c0 = _cpu()
                subprocess.run([exe, "-n", "-r", str(path), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _, c1 = _cpu()
                best = c1 - c0 if best is None else min(best, c1 - c0)
            out[mode] = best
        n = run_one(path)["packets"]
        report(f"tshark_{name}", {"packets": n, **{f"{k}_us_per_packet": round(v * 1e6 / n, 1) for k, v in out.items()}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="runs per capture; the fastest (by CPU) is reported")
    ap.add_argument("--big", action="store_true", help="also the 303k-frame QUT DNP3/GOOSE capture (unzipped to /tmp)")
    ap.add_argument("--live", action="store_true", help="the live capture path on a veth pair (root)")
    ap.add_argument("--live-loops", type=int, default=5, help="tcpreplay loops per capture with --live")
    ap.add_argument("--live-pps", type=int, default=20000, help="tcpreplay packets/s with --live (0: top speed)")
    ap.add_argument("--tshark-modes", action="store_true", help="tshark's own cost per packet, by output mode")
    ap.add_argument("--decoder", choices=("auto", "tshark"), default="auto",
                    help="auto: Taishi's header decoder + tshark on the application packets; tshark: tshark alone")
    args = ap.parse_args()
    os.environ["TAISHI_PCAP_DECODER"] = args.decoder  # PcapReader's default decoder
    pin_one_core()
    if args.tshark_modes:
        tshark_modes([(n, SHARED / rel, a) for n, rel, a in CASES])
        return
    if args.live:
        live(args.live_loops, args.live_pps)
        return
    cases = [(n, SHARED / rel, a) for n, rel, a in CASES]
    if args.big:
        z = SHARED / "pcap/ics/qut_dnp3/training_infrequent/attacker.pcap.zip"
        if z.exists():
            tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-pcap-"))
            with zipfile.ZipFile(z) as zf:
                zf.extractall(tmp)
            big = next(tmp.rglob("*.pcap"))
            cases += [("qut_dnp3_goose", big, ()), ("qut_dnp3_goose_disabled", big, ("--disable-protocol", "goose"))]
        mix = [SHARED / rel for _, rel, _ in CASES[:4]]
        if all(p.exists() for p in mix) and shutil.which("mergecap"):
            tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-pcap-"))
            out = tmp / "ipmix.pcap"
            order = mix * 3 + [mix[0], mix[1], mix[3]] * 2  # ~340k IP frames: TCP flood, Modbus, TLS
            subprocess.run(["mergecap", "-F", "pcap", "-a", "-w", str(out), *map(str, order)], check=True,
                           capture_output=True)
            cases.append(("ip_mix", out, ()))
    for name, path, targs in cases:
        if not path.exists():
            print(f"pcap_{name}: skipped, {path} not found (set TAISHI_SHARED_DATA)")
            continue
        best = None
        for _ in range(max(1, args.repeat)):
            res = run_one(path, targs)
            if best is None or res["cpu_pps"] > best["cpu_pps"]:
                best = res
        assert best is not None
        best["peak_rss_mb"] = round(peak_rss_mb(), 1)
        report(f"pcap_{name}", best)


if __name__ == "__main__":
    main()
