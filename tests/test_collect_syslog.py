"""The syslog receiver against real senders: util-linux `logger` (UDP, TCP,
newline and octet-counted framing, RFC 3164 and 5424) and a real TLS client;
malformed frames, floods and shutdown."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ingest.collectors import Listener
from ingest.collectors.syslog import SyslogCollector
from taishi.config import Config
from taishi.pipeline import Pipeline

from support import require_tool

LOGGER = shutil.which("logger") or "logger"


@pytest.fixture
def logger_tool() -> str:
    return require_tool("logger")


def _wait(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def pipe(tmp_path: Path):
    p = Pipeline(Config(data_dir=tmp_path / "data"))
    yield p
    p.close()


def _collect(pipe: Pipeline, *protos: str, **kw) -> SyslogCollector:
    return SyslogCollector(pipe.bus, [Listener(p, "127.0.0.1", 0) for p in protos], flush_interval=0.1, **kw).start()


def _events(pipe: Pipeline):
    pipe.drain()
    return pipe.store.search_events("event.module:system", limit=None, order="asc").to_pylist()


@pytest.mark.parametrize("proto, extra", [
    ("udp", ["--udp"]),
    ("tcp", ["--tcp"]),
    ("tcp", ["--tcp", "--octet-count"]),
])
def test_logger_rfc3164_and_rfc5424_arrive_parsed(pipe: Pipeline, proto: str, extra: list[str], logger_tool: str) -> None:
    col = _collect(pipe, proto)
    port = col.bound[proto][1]
    base = [LOGGER, "--server", "127.0.0.1", "--port", str(port), *extra]
    subprocess.run([*base, "--rfc3164", "-t", "sshd", "-i",
                    "Failed password for root from 203.0.113.9 port 4242 ssh2"], check=True)
    subprocess.run([*base, "--rfc5424", "-t", "sudo", "--msgid", "AUTH",
                    "alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/bash"], check=True)
    _wait(lambda: col.metrics()["received"] == 2)
    col.stop()
    evs = _events(pipe)
    assert len(evs) == 2
    failed = next(e for e in evs if e["process.name"] == "sshd")
    assert failed["event.outcome"] == "failure" and failed["source.ip"] == "203.0.113.9"
    assert failed["user.name"] == "root" and failed["observer.ip"] == "127.0.0.1"
    sudo = next(e for e in evs if e["process.name"] == "sudo")
    assert sudo["log.syslog.version"] == "1" and sudo["log.syslog.msgid"] == "AUTH"
    assert sudo["user.name"] == "alice" and sudo["user.effective.name"] == "root"
    assert sudo["process.command_line"] == "/bin/bash"
    assert all(e["taishi.source"] == f"syslog-{proto}" for e in evs)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    c, k = tmp / "tls.crt", tmp / "tls.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def test_tls_octet_counted_frames_from_a_real_tls_client(pipe: Pipeline, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    col = _collect(pipe, "tls", certfile=cert, keyfile=key)
    port = col.bound["tls"][1]
    ctx = ssl.create_default_context(cafile=str(cert))
    msgs = [
        "<38>1 2026-11-29T10:00:00Z jump01 sshd 77 - - Accepted password for ops from 203.0.113.50 port 5050 ssh2",
        "<86>Nov 29 10:00:01 jump01 sudo: ops : TTY=pts/1 ; PWD=/home/ops ; USER=root ; COMMAND=/bin/sh",
    ]
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        for m in msgs:
            b = m.encode()
            s.sendall(str(len(b)).encode() + b" " + b)
        # keep the session open until the receiver has the messages, as a real
        # sender does: closing with unread TLS 1.3 tickets makes the kernel
        # reset the connection, and a reset may discard what was not read yet
        _wait(lambda: col.metrics()["received"] == 2)
    col.stop()
    evs = _events(pipe)
    assert sorted(e["process.name"] for e in evs) == ["sshd", "sudo"]
    login = next(e for e in evs if e["process.name"] == "sshd")
    assert login["source.ip"] == "203.0.113.50" and login["host.name"] == "jump01"
    assert login["event.action"] == "ssh_login" and login["event.outcome"] == "success"


def test_malformed_frames_are_dead_lettered_and_the_receiver_keeps_going(pipe: Pipeline) -> None:
    col = _collect(pipe, "tcp", "udp")
    tcp, udp = col.bound["tcp"][1], col.bound["udp"][1]
    with socket.create_connection(("127.0.0.1", tcp)) as s:  # bad octet count: the stream cannot be trusted
        s.sendall(b"12x <13>hello\n")
    with socket.create_connection(("127.0.0.1", tcp)) as s:  # huge octet count
        s.sendall(b"99999999999 <13>x")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.sendto(b"", ("127.0.0.1", udp))
        u.sendto(b"<13>Nov 29 10:00:00 h app: still alive", ("127.0.0.1", udp))
    with socket.create_connection(("127.0.0.1", tcp)) as s:
        s.sendall(b"<13>Nov 29 10:00:00 h app: after the bad ones\n")
    _wait(lambda: col.metrics()["received"] == 2 and col.metrics()["deadlettered"] == 3)
    col.stop()
    assert sorted(e["message"] for e in _events(pipe)) == ["after the bad ones", "still alive"]
    dl = pipe.store.search_deadletters(limit=None).to_pylist()
    reasons = sorted(d["reason"].split(" (")[0] for d in dl)
    assert len(dl) == 3
    assert any("bad octet count" in r for r in reasons) and any("empty datagram" in r for r in reasons)
    assert all(d["stage"] == "read" and "127.0.0.1" in d["reason"] for d in dl)


def test_stream_frames_cut_anywhere_mixed_framing_and_a_last_line_without_newline(pipe: Pipeline) -> None:
    """One connection carries octet-counted and newline frames (RFC 6587 lets a sender mix them), sent
    in pieces that cut frames, counts and newlines at every place; then a line longer than a record may
    be closes a second connection with a dead letter, and a third ends on a line without a newline."""
    from ingest.parsers import MAX_RECORD_BYTES

    msgs = [f"<13>Nov 29 10:00:{i:02d} h app: message {i} \u6001\u52bf" for i in range(30)]
    wire = b""
    for i, m in enumerate(msgs):
        b = m.encode()
        wire += (str(len(b)).encode() + b" " + b) if i % 3 == 0 else (b + (b"\r\n" if i % 3 == 1 else b"\n"))
    col = _collect(pipe, "tcp")
    port = col.bound["tcp"][1]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for k in range(0, len(wire), 7):
            s.sendall(wire[k:k + 7])
            if k % 70 == 0:
                time.sleep(0.002)  # let the receiver see a cut frame
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"<13>" + b"x" * (MAX_RECORD_BYTES + 4096) + b"\n")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"<13>Nov 29 10:01:00 h app: the last one, no newline")
    _wait(lambda: col.metrics()["received"] == len(msgs) + 1 and col.metrics()["deadlettered"] == 1)
    col.stop()
    got = [e["message"] for e in _events(pipe)]
    assert sorted(got) == sorted([f"message {i} \u6001\u52bf" for i in range(30)] + ["the last one, no newline"])
    dl = pipe.store.search_deadletters(limit=None).to_pylist()
    assert len(dl) == 1 and dl[0]["reason"].startswith(f"frame exceeds {MAX_RECORD_BYTES} bytes")


def test_udp_flood_drops_are_counted_never_silent(pipe: Pipeline) -> None:
    col = _collect(pipe, "udp", max_pending=50, batch_size=10_000)
    col.flush_interval = 3600  # nothing leaves the buffer during the flood
    port = col.bound["udp"][1]
    sent = 2000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for i in range(sent):
            u.sendto(f"<13>Nov 29 10:00:00 h app: flood {i}".encode(), ("127.0.0.1", port))
    _wait(lambda: col.metrics()["received"] + col.metrics()["dropped"] == sent)
    m = col.metrics()
    assert m["received"] == 50 and m["dropped"] == sent - 50
    col.stop()  # shutdown flushes what was in flight
    assert len(_events(pipe)) == 50


def test_a_burst_queued_while_the_loop_is_busy_arrives_whole_and_in_order(pipe: Pipeline) -> None:
    from ingest.collectors import UDP_BURST

    col = _collect(pipe, "udp", "tcp")
    sent = 3 * UDP_BURST + 7  # more than one wake-up drains
    col._loop.call_soon_threadsafe(time.sleep, 1.0)  # the loop is busy while the burst is queued in the kernel
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for i in range(sent):
            u.sendto(f"<13>Nov 29 10:00:00 h app: burst {i}".encode(), ("127.0.0.1", col.bound["udp"][1]))
    with socket.create_connection(tuple(col.bound["tcp"])) as t:  # TCP is still served between the bursts
        t.sendall(b"<13>Nov 29 10:00:01 h app: over tcp\n")
    _wait(lambda: col.metrics()["received"] == sent + 1)
    col.stop()
    assert col.metrics()["dropped"] == 0
    udp = sorted((e["log.offset"], e["message"]) for e in _events(pipe) if e["taishi.source"] == "syslog-udp")
    texts = [m for _, m in udp]  # in the order received
    assert texts == [f"burst {i}" for i in range(sent)]


def test_restart_continues_the_sequence_so_ids_never_repeat(pipe: Pipeline) -> None:
    ids = []
    for round_ in range(2):
        col = _collect(pipe, "udp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"<13>Nov 29 10:00:00 h app: same text", ("127.0.0.1", col.bound["udp"][1]))
        _wait(lambda: col.metrics()["received"] == 1)
        col.stop()
        ids = [e["event.id"] for e in _events(pipe)]
        assert len(ids) == round_ + 1
    assert len(set(ids)) == 2, "the same text received twice is two events"


def test_prometheus_text(pipe: Pipeline) -> None:
    col = _collect(pipe, "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.sendto(b"<13>Nov 29 10:00:00 h app: x", ("127.0.0.1", col.bound["udp"][1]))
    _wait(lambda: col.metrics()["received"] == 1)
    text = col.prometheus()
    col.stop()
    assert 'taishi_syslog_received_total{collector="syslog"} 1' in text
    assert "# TYPE taishi_syslog_pending gauge" in text


def _free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_taishi_run_collects_serves_metrics_and_stops_cleanly(tmp_path: Path, logger_tool: str) -> None:
    import json
    import sys
    import urllib.request

    udp, metrics = _free_port(), _free_port(socket.SOCK_STREAM)
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "taishi.cli", "--data-dir", str(data), "run",
                             "--syslog-udp", f"127.0.0.1:{udp}", "--metrics", f"127.0.0.1:{metrics}", "--duration", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def metrics_text() -> str:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=1).read().decode()
            except OSError:
                return ""

        _wait(lambda: "taishi_syslog_received_total" in metrics_text(), 15)
        for i in range(5):
            subprocess.run([LOGGER, "--udp", "--server", "127.0.0.1", "--port", str(udp), "--rfc3164", "-t", "sshd",
                            f"Invalid user guest{i} from 198.51.100.{i + 1} port 22"], check=True)
        _wait(lambda: 'taishi_syslog_received_total{collector="syslog"} 5' in metrics_text(), 10)
        assert "taishi_bus_lag" in metrics_text()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out[out.index("{"):])
    assert summary["collector"]["received"] == 5 and summary["events"] == 5
    store_check = subprocess.run([sys.executable, "-m", "taishi.cli", "--data-dir", str(data), "search",
                                  "source.ip:198.51.100.0/24 AND event.outcome:failure", "--json"],
                                 capture_output=True, text=True, check=True)
    assert len(json.loads(store_check.stdout)) == 5
