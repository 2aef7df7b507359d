"""Re-record the NetFlow fixtures in this directory (needs softflowd, nfcapd, nfdump).

    .venv/bin/python tests/data/netflow/record.py

For each (capture, version): softflowd reads the shared capture offline (-a:
capture time) and exports to nfcapd, which repeats every datagram to a local
socket; the datagrams are saved as ``<name>.dgrams`` (each: u16 big-endian
length, then the datagram) and nfdump's decoding of the same export as
``<name>.nfdump.csv`` (sa,da,sp,dp,proto,packets,bytes,out packets,out bytes).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent.parent.parent)]  # tests/, the repository

from test_collect_netflow import _free_udp_port, _nfdump_flows, _softflowd_export  # noqa: E402

SHARED = HERE.parent.parent.parent.parent / "shared" / "data"  # ../shared/data beside the repository
CASES = [
    ("ssh_bruteforce_v5", "pcap/bruteforce/ssh/slips_test19_ssh_bruteforce.pcap", "5", []),
    ("ssh_bruteforce_v9", "pcap/bruteforce/ssh/slips_test19_ssh_bruteforce.pcap", "9", []),
    ("ftp_bruteforce_ipfix", "pcap/bruteforce/ftp/zeek_ftp_bruteforce.pcap", "10", []),
    ("ftp_bruteforce_ipfix_biflow", "pcap/bruteforce/ftp/zeek_ftp_bruteforce.pcap", "10", ["-b"]),
]


def record(name: str, pcap: Path, version: str, extra: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nf-record-"))
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    r.settimeout(1.0)
    port = _free_udp_port()
    nf = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(tmp),
                           "-R", f"127.0.0.1/{r.getsockname()[1]}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    _softflowd_export(pcap, port, version, extra, tmp)
    time.sleep(0.3)
    nf.terminate()
    nf.wait(30)
    out = bytearray()
    try:
        while True:
            d = r.recv(65535)
            out += struct.pack("!H", len(d)) + d
    except socket.timeout:
        pass
    (HERE / f"{name}.dgrams").write_bytes(bytes(out))
    rows = list(_nfdump_flows(tmp).elements())  # one line per flow, repeats kept
    (HERE / f"{name}.nfdump.csv").write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
    print(name, len(out), "bytes,", len(rows), "flows")


if __name__ == "__main__":
    for name, rel, version, extra in CASES:
        record(name, SHARED / rel, version, extra)
