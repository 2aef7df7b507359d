"""Fuzzing the syslog path: random and mutated frames never crash the receiver
or the parser, and every record is either an event or a dead letter with a
reason — nothing vanishes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.collectors import Listener
from ingest.collectors.syslog import SyslogCollector
from ingest.parsers import RAW_SCHEMA, parse
from taishi.bus import Bus

VALID = [
    b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
    b"<165>1 2003-10-11T22:14:15.003Z host.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\"] An application event",
    b"Nov 29 10:00:00 jump01 sshd[77]: Failed password for root from 203.0.113.9 port 22 ssh2",
]


def _mutations() -> st.SearchStrategy[bytes]:
    def mutate(base: bytes, cuts: list[int], junk: bytes) -> bytes:
        out = bytearray(base)
        for c in cuts:
            if out:
                out[c % len(out)] = junk[c % len(junk)] if junk else 0
        return bytes(out)

    return st.builds(mutate, st.sampled_from(VALID), st.lists(st.integers(0, 500), max_size=8), st.binary(max_size=8))


frames = st.one_of(st.binary(max_size=400), _mutations(), st.sampled_from(VALID))


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, min_size=1, max_size=20))
def test_parser_accounts_for_every_record(lines: list[bytes]) -> None:
    texts = [b.decode("utf-8", "replace").replace("\n", " ") for b in lines]
    raw = pa.table({"taishi.source": ["fuzz"] * len(texts), "log.offset": list(range(len(texts))),
                    "log.file.path": [None] * len(texts), "hint": [None] * len(texts), "event.original": texts},
                   schema=RAW_SCHEMA)
    res = parse("syslog", raw)
    got = sorted(res.events.column("log.offset").to_pylist() + res.deadletters.column("log.offset").to_pylist())
    assert got == list(range(len(texts))), "each record is an event or a dead letter, exactly once"
    assert all(r for r in res.deadletters.column("reason").to_pylist())


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory):
    bus = Bus(tmp_path_factory.mktemp("bus"))
    col = SyslogCollector(bus, [Listener("udp", "127.0.0.1", 0), Listener("tcp", "127.0.0.1", 0)],
                          flush_interval=0.05).start()
    yield col
    col.stop()


def _settled(col: SyslogCollector, before: dict, sent_udp: int) -> bool:
    m = col.metrics()
    return (m["received"] + m["dropped"] + m["deadlettered"]) - (before["received"] + before["dropped"] + before["deadlettered"]) >= sent_udp


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(frames, min_size=1, max_size=10), st.booleans())
def test_receiver_survives_random_frames(receiver: SyslogCollector, payloads: list[bytes], octet_counted: bool) -> None:
    before = receiver.metrics()
    udp = receiver.bound["udp"][1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for p in payloads:
            u.sendto(p, ("127.0.0.1", udp))
    end = time.monotonic() + 5
    while time.monotonic() < end and not _settled(receiver, before, len(payloads)):
        time.sleep(0.01)
    assert _settled(receiver, before, len(payloads)), "every datagram is received, dropped or dead-lettered"
    # a TCP stream of the same frames, framed or deliberately not
    with socket.create_connection(receiver.bound["tcp"]) as s:
        for p in payloads:
            s.sendall((str(len(p)).encode() + b" " + p) if octet_counted else p + b"\n")
    # the receiver is still alive and serving after whatever it was sent
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        n = receiver.metrics()["received"]
        u.sendto(VALID[0], ("127.0.0.1", udp))
        end = time.monotonic() + 5
        while time.monotonic() < end and receiver.metrics()["received"] <= n:
            time.sleep(0.01)
    assert receiver.metrics()["received"] > n
