"""Live capture on a real interface (ingest.collectors.capture), against real packets.

Each test builds a network namespace joined to the host by a veth pair
(``ip netns`` / ``ip link``; IPv6 off so the kernel adds no neighbour-discovery
chatter), runs the capture collector on the host end, and drives real traffic:

* ``tcpreplay`` sends the shared captures from the namespace end; what the
  collector makes of them must equal what the capture-file path
  (``ingest.pcap.read_pcap``, itself checked against tshark's conversation
  tables in test_ingest_pcap.py) makes of the same file: flows (5-tuple,
  per-direction packets and bytes, TCP flags, conn state), DNS, HTTP and TLS
  metadata. The replay compresses time, so the file side runs without
  timeouts (these captures have no 60 s silence inside a conversation);
* ``nmap`` scans a namespace host with three listening ports; the flows must
  show exactly the ports nmap reports open as answered (RSTO) and the others
  as rejected (REJ), and the streaming pipeline must raise the shipped port-scan
  rule (rules/sigma/network/discovery_network_port_scan_value_count.yml) for
  the scanner.

Root, iproute2, tshark/dumpcap, tcpreplay and nmap are needed (``make
system-deps``); under CI=true a missing tool fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from support import require_tool
from ingest.collectors.capture import CaptureCollector
from ingest.pcap import read_pcap
from taishi.bus import TOPIC_DEADLETTER, TOPIC_EVENTS, Bus
from taishi.config import Config
from taishi.pipeline import Pipeline
from taishi.schema import EVENT_SCHEMA

pytestmark = pytest.mark.integration

HTTP = "pcap/benign/zeek_wikipedia.pcap"
TLS = "pcap/c2_beacon/slips_test-cc-capture-1.pcap"
DNS = "pcap/dns_tunnel/iodine_elastic.pcap"
OPEN_PORTS = (22, 80, 8443)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


@dataclass
class Net:
    ns: str
    host_if: str  # in the test's namespace: where the collector captures
    ns_if: str
    host_ip: str = "10.77.0.1"
    ns_ip: str = "10.77.0.2"

    def in_ns(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True, text=True, **kw)


@pytest.fixture
def net() -> Iterator[Net]:
    for tool in ("ip", "tshark", "dumpcap"):
        require_tool(tool)
    if os.geteuid() != 0:
        msg = "live capture tests need root (network namespaces, raw capture)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    tag = f"{os.getpid() % 100000}{int(time.time() * 1000) % 1000}"
    n = Net(f"taishi-t{tag}", f"tsh{tag}", f"tsn{tag}")
    sh("ip", "netns", "add", n.ns)
    try:
        n.in_ns("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", check=True)
        sh("ip", "link", "add", n.host_if, "type", "veth", "peer", "name", n.ns_if)
        Path(f"/proc/sys/net/ipv6/conf/{n.host_if}/disable_ipv6").write_text("1")
        sh("ip", "link", "set", n.ns_if, "netns", n.ns)
        sh("ip", "link", "set", n.host_if, "mtu", "16000", "up")  # the captures hold frames up to 2.7 kB
        sh("ip", "addr", "add", f"{n.host_ip}/24", "dev", n.host_if)
        n.in_ns("ip", "link", "set", "lo", "up", check=True)
        n.in_ns("ip", "link", "set", n.ns_if, "mtu", "16000", "up", check=True)
        n.in_ns("ip", "addr", "add", f"{n.ns_ip}/24", "dev", n.ns_if, check=True)
        yield n
    finally:
        sh("ip", "link", "del", n.host_if, check=False)
        sh("ip", "netns", "del", n.ns, check=False)


def frames(path: Path) -> int:
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.split())


def captured(bus: Bus, net: Net, work: Callable[[], int], **kw) -> tuple[CaptureCollector, pa.Table, pa.Table]:
    """Run the collector on the host end while ``work()`` sends traffic; ``work`` returns how many
    packets it expects captured (0: unknown). Returns the collector, its events and dead letters."""
    col = CaptureCollector(bus, net.host_if, flush_interval=0.2, **kw).start()
    try:
        want = work()
        end = time.monotonic() + 60
        while want and col.metrics()["received"] < want and time.monotonic() < end:
            time.sleep(0.1)
        seen, still = -1, 0
        while still < 8 and time.monotonic() < end:  # the capture has caught up: nothing new for 1.6 s
            now = col.metrics()["received"]
            still = still + 1 if now == seen else 0
            seen = now
            time.sleep(0.2)
    finally:
        col.stop()
    ev = [b.table for b in bus.read(TOPIC_EVENTS, 0)]
    dl = [b.table for b in bus.read(TOPIC_DEADLETTER, 0)]
    events = pa.concat_tables(ev) if ev else EVENT_SCHEMA.empty_table()
    for t in ev:
        assert t.schema.equals(EVENT_SCHEMA, check_metadata=False)
    return col, events, (pa.concat_tables(dl) if dl else None)


def replay(net: Net, paths: list[Path]) -> Callable[[], int]:
    def work() -> int:
        require_tool("tcpreplay")
        total = 0
        for p in paths:
            r = net.in_ns("tcpreplay", "-i", net.ns_if, "--pps", "10000", str(p))
            assert r.returncode == 0, r.stderr
            assert "Failed packets:            0" in r.stdout, r.stdout
            total += frames(p)
        return total
    return work


def dataset(t: pa.Table, name: str) -> pa.Table:
    return t.filter(pc.equal(t["event.dataset"], name))


def flow_view(t: pa.Table) -> Counter:
    """Flows without their times: what must not depend on when the packets were sent."""
    out: Counter = Counter()
    for r in dataset(t, "pcap.flow").to_pylist():
        x = json.loads(r["taishi.extra"]) if r["taishi.extra"] else {}
        out[(r["network.transport"], r["source.ip"], r["source.port"], r["destination.ip"], r["destination.port"],
             r["source.packets"], r["source.bytes"], r["destination.packets"], r["destination.bytes"],
             r["event.action"], x.get("tcp.flags"), x.get("tcp.orig_flags"), x.get("tcp.resp_flags"))] += 1
    return out


def app_view(t: pa.Table) -> dict[str, Counter]:
    fields = {
        "pcap.dns": ("dns.type", "dns.id", "dns.question.name", "dns.question.type", "dns.response_code",
                     "dns.answers.data", "source.ip", "destination.ip"),
        "pcap.http": ("event.action", "http.request.method", "url.original", "url.domain", "user_agent.original",
                      "http.response.status_code", "source.ip", "destination.port"),
        "pcap.tls": ("tls.client.server_name", "tls.version", "tls.version_protocol", "tls.cipher",
                     "tls.client.ja3", "tls.server.ja3s", "source.ip", "destination.port"),
    }
    out = {}
    for ds, cols in fields.items():
        rows = dataset(t, ds).select(list(cols)).to_pylist()
        out[ds] = Counter(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return out


def file_events(paths: list[Path]) -> pa.Table:
    parts = [read_pcap(p, idle_timeout=float("inf"), active_timeout=float("inf")).read_all() for p in paths]
    return pa.concat_tables(parts)


# ---------------------------------------------------------------------------------- replay


def test_replayed_captures_give_the_file_paths_flows_and_metadata(net: Net, shared_data: Path, tmp_path: Path) -> None:
    paths = [shared_data / HTTP, shared_data / TLS, shared_data / DNS]
    bus = Bus(tmp_path / "bus")
    col, live, dl = captured(bus, net, replay(net, paths), bpf="not port 22")
    theirs = file_events(paths)
    m = col.metrics()
    assert m["received"] == sum(frames(p) for p in paths)  # every replayed frame, nothing else
    assert m["kernel_drops"] == 0 and m["deadlettered"] == 0 and dl is None
    assert m["open_flows"] == 0  # stop() flushed every open flow
    assert flow_view(live) == flow_view(theirs)
    assert m["flows"] == dataset(theirs, "pcap.flow").num_rows
    ours_apps, their_apps = app_view(live), app_view(theirs)
    for ds in ("pcap.dns", "pcap.http", "pcap.tls"):
        assert sum(their_apps[ds].values()) > 0, ds
        assert ours_apps[ds] == their_apps[ds], ds
    # live events describe the interface, and their ids are unique
    assert set(live["observer.name"].to_pylist()) == {net.host_if}
    assert set(live["taishi.source"].to_pylist()) == {f"capture-{net.host_if}"}
    assert len(pc.unique(live["event.id"])) == live.num_rows
    assert "taishi_capture_received_total" in col.prometheus()


def test_bpf_filter_is_applied_in_the_capture(net: Net, shared_data: Path, tmp_path: Path) -> None:
    paths = [shared_data / HTTP, shared_data / DNS]
    bus = Bus(tmp_path / "bus")
    theirs = file_events(paths)

    def not53(t: pa.Table) -> pa.Table:
        on53 = pc.or_(pc.equal(t["source.port"], 53), pc.equal(t["destination.port"], 53))
        return t.filter(pc.invert(pc.fill_null(on53, False)))

    kept = dataset(not53(theirs), "pcap.flow")
    work = replay(net, paths)
    col, live, _ = captured(bus, net, lambda: (work(), int(pc.sum(kept["network.packets"]).as_py()))[1],
                            bpf="not port 53")
    ports = set(live["source.port"].to_pylist()) | set(live["destination.port"].to_pylist())
    assert 53 not in ports
    assert dataset(theirs, "pcap.dns").num_rows > dataset(live, "pcap.dns").num_rows  # only mDNS/LLMNR left
    assert app_view(live)["pcap.dns"] == app_view(not53(theirs))["pcap.dns"]
    assert flow_view(live) == flow_view(kept)
    assert col.metrics()["received"] >= int(pc.sum(kept["network.packets"]).as_py())  # + ARP frames


def test_restart_continues_the_packet_sequence(net: Net, shared_data: Path, tmp_path: Path) -> None:
    bus = Bus(tmp_path / "bus")
    p = [shared_data / HTTP]
    captured(bus, net, replay(net, p))
    _, both, _ = captured(bus, net, replay(net, p))  # same packets again, a new collector on the same bus
    flows = dataset(both, "pcap.flow")
    assert flows.num_rows == 2 * dataset(read_pcap(p[0]).read_all(), "pcap.flow").num_rows
    assert len(pc.unique(both["event.id"])) == both.num_rows  # offsets continued: no id repeats
    offs = sorted(set(both["log.offset"].to_pylist()))
    assert offs[-1] < 2 * frames(p[0])


# ---------------------------------------------------------------------------------- nmap


@pytest.fixture
def listeners(net: Net) -> Iterator[tuple[int, ...]]:
    """TCP listeners on OPEN_PORTS inside the namespace."""
    code = ("import socket, time\n"
            "ss = []\n"
            f"for p in {OPEN_PORTS!r}:\n"
            "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"    s.bind(({net.ns_ip!r}, p)); s.listen(128); ss.append(s)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen(["ip", "netns", "exec", net.ns, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield OPEN_PORTS
    finally:
        proc.kill()
        proc.wait()


def nmap_open_ports(xml: str) -> set[int]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    return {int(p.get("portid")) for p in root.iter("port") if p.find("state").get("state") == "open"}


@pytest.mark.parametrize("scan", ["-sS", "-sT"])
def test_nmap_scan_flows_and_port_scan_alert(net: Net, listeners: tuple[int, ...], tmp_path: Path, scan: str) -> None:
    require_tool("nmap")
    cfg = Config(data_dir=tmp_path / "data")
    pipe = Pipeline(cfg)
    result: dict[str, str] = {}

    def work() -> int:
        r = sh("nmap", scan, "-n", "-Pn", "-T4", "-p", "1-1000,8443", "--max-retries", "0", "-oX", "-", net.ns_ip)
        result["xml"] = r.stdout
        return 2 * 1001  # at least a probe and an answer per port: wait until the capture has them

    try:
        col, live, _ = captured(pipe.bus, net, work, bpf=f"host {net.ns_ip}")
        nmap_open = nmap_open_ports(result["xml"])
        assert nmap_open == set(listeners)  # nmap's own view: the ground truth for the scan
        flows = dataset(live, "pcap.flow").filter(pc.equal(dataset(live, "pcap.flow")["network.transport"], "tcp"))
        rows = flows.to_pylist()
        assert {r["source.ip"] for r in rows} == {net.host_ip}  # the scanner initiates every flow
        assert {r["destination.ip"] for r in rows} == {net.ns_ip}
        scanned = set(range(1, 1001)) | {8443}
        assert {r["destination.port"] for r in rows} == scanned
        by_state: dict[str, set[int]] = {}
        for r in rows:
            by_state.setdefault(r["event.action"], set()).add(r["destination.port"])
        # open ports: SYN, SYN/ACK, then the scanner resets (RSTO); closed ones answer SYN with RST (REJ)
        assert by_state.get("RSTO") == nmap_open
        assert by_state.get("REJ") == scanned - nmap_open
        assert set(by_state) == {"RSTO", "REJ"}
        # the streaming pipeline raises the shipped port-scan rule for the scanner
        pipe.drain()
        pipe.finish()
        alerts = pipe.store.search_alerts('rule.name:"Network Port Scan From a Single Source"', limit=None).to_pylist()
        assert [a["source.ip"] for a in alerts] == [net.host_ip]
        ev = pipe.store.search_events("event.dataset:pcap.flow", limit=None)
        assert ev.num_rows == dataset(live, "pcap.flow").num_rows
        assert set(alerts[0]["event.ids"]) <= set(ev["event.id"].to_pylist())
    finally:
        pipe.close()


# ---------------------------------------------------------------------------------- taishi run


def test_taishi_run_starts_the_capture_from_taishi_yaml(net: Net, shared_data: Path, tmp_path: Path) -> None:
    import signal
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "taishi.yaml"
    cfg.write_text(json.dumps({  # YAML is a superset of JSON
        "data_dir": str(tmp_path / "data"),
        "collectors": {"capture": {"interface": net.host_if, "bpf": "not port 22", "idle_timeout": 60,
                                   "active_timeout": 300},
                       "metrics": f"127.0.0.1:{port}"},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "taishi.cli", "--config", str(cfg), "run", "--duration", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def metric(name: str) -> int | None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + "{"):
                return int(float(line.rsplit(" ", 1)[1]))
        return None

    def wait(cond, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.2)

    path = shared_data / HTTP
    try:
        wait(lambda: metric("taishi_capture_received_total") is not None, 60)
        replay(net, [path])()
        wait(lambda: (metric("taishi_capture_received_total") or 0) >= frames(path), 30)
        proc.send_signal(signal.SIGINT)  # stop: the collector flushes its open flows
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out[out.index("{"):])
    cap = summary["collector"]
    assert cap["received"] == frames(path) and cap["open_flows"] == 0 and cap["deadlettered"] == 0
    theirs = read_pcap(path).read_all()
    assert cap["flows"] == dataset(theirs, "pcap.flow").num_rows
    assert summary["events"] == theirs.num_rows  # every flow and app event reached the store
    from taishi.store import Store

    store = Store(tmp_path / "data")
    try:
        stored = store.search_events("event.module:pcap", limit=None)
    finally:
        store.close()
    assert flow_view(stored) == flow_view(theirs)
    assert app_view(stored) == app_view(theirs)


# ---------------------------------------------------------------------------------- bad input


def test_unreadable_tshark_output_is_dead_lettered_not_a_crash(tmp_path: Path) -> None:
    """What the collector does with tshark output it cannot read (no capture needed: the decoding step
    is fed directly): every bad line is a dead letter with the reason, good lines still become events."""
    from ingest.pcap.tshark import FIELDS

    bus = Bus(tmp_path / "bus")
    col = CaptureCollector(bus, "lo")  # not started: no capture process
    good = ["" for _ in FIELDS]
    good[FIELDS.index("frame.number")], good[FIELDS.index("frame.time_epoch")] = "1", f"{time.time():.9f}"
    good[FIELDS.index("frame.len")] = "60"
    for f, v in (("ip.src", "10.0.0.1"), ("ip.dst", "10.0.0.2"), ("ip.proto", "17"), ("udp.srcport", "5000"),
                 ("udp.dstport", "53"), ("dns.id", "0x1234"), ("dns.flags.response", "0"), ("dns.qry.name", "a.example"),
                 ("dns.qry.type", "1")):
        good[FIELDS.index(f)] = v
    col._buf += ("\t".join(good) + "\n").encode()
    col._buf += b"too\tfew\tcolumns\n"
    col._buf += b"\xff\xfe not even text"  # no end of line when the capture ends
    col._process(final=True)
    col._flush()
    dl = pa.concat_tables([b.table for b in bus.read(TOPIC_DEADLETTER, 0)]).to_pylist()
    reasons = sorted(d["reason"] for d in dl)
    assert len(reasons) == 2
    assert reasons[0].startswith("tshark output cut short") and reasons[1].startswith("unparseable tshark output line")
    ev = pa.concat_tables([b.table for b in bus.read(TOPIC_EVENTS, 0)])
    assert sorted(ev["event.dataset"].to_pylist()) == ["pcap.dns", "pcap.flow"]
    assert col.metrics()["deadlettered"] == 2 and col.metrics()["received"] == 1


def test_stop_right_after_traffic_loses_nothing_silently(net: Net, shared_data: Path, tmp_path: Path) -> None:
    """stop() straight after the replay: the capture catches up first, and whatever the kernel still
    held is counted as dropped, so every frame sent is either decoded or counted."""
    path = shared_data / HTTP
    bus = Bus(tmp_path / "bus")
    col = CaptureCollector(bus, net.host_if, flush_interval=0.2).start()
    replay(net, [path])()
    col.stop()  # no waiting
    m = col.metrics()
    assert m["received"] + m["dropped"] == frames(path)
    assert m["open_flows"] == 0
    flows = dataset(pa.concat_tables([b.table for b in bus.read(TOPIC_EVENTS, 0)]), "pcap.flow")
    assert int(pc.sum(flows["network.packets"]).as_py()) <= m["received"]
