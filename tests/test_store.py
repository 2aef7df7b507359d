"""The embedded DuckDB store: real files under tmp_path, real second processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from taishi.query import QueryError
from taishi.schema import (
    ALERT_SCHEMA,
    DEADLETTER_SCHEMA,
    EVENT_SCHEMA,
    alerts_table,
    deadletters_table,
    events_table,
)
from taishi.store import Store, StoreLockedError

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def ev(i: int, **kw) -> dict:
    row = {
        "event.id": f"e{i}",
        "@timestamp": T0 + timedelta(minutes=i),
        "source.ip": f"10.0.0.{i % 256}",
        "destination.port": 22 if i % 2 else 443,
        "message": f"event number {i}",
        "event.dataset": "zeek.conn",
        "related.ip": [f"10.0.0.{i % 256}", "192.168.1.1"],
    }
    row.update(kw)
    return row


def events(ids, **kw) -> pa.Table:
    return events_table([ev(i, **kw) for i in ids])


@pytest.fixture
def clock():
    return Clock(datetime(2024, 6, 1, tzinfo=timezone.utc))


@pytest.fixture
def store(data_dir, clock):
    s = Store(data_dir, clock=clock)
    yield s
    s.close()


def ids(tbl: pa.Table, col: str = "event.id") -> list[str]:
    return tbl.column(col).to_pylist()


# ----------------------------------------------------------------- writes


def test_creates_file_and_tables(data_dir, store):
    assert (data_dir / "store.duckdb").is_file()
    assert store.stats() == {"events": 0, "alerts": 0, "deadletters": 0}


def test_write_is_idempotent(store):
    batch = events(range(10))
    assert store.write_events(batch) == 10
    assert store.write_events(batch) == 0
    assert store.stats()["events"] == 10
    # overlapping batch: only the new half is stored
    assert store.write_events(events(range(5, 15))) == 5
    assert store.count("events") == 15
    # duplicates inside one batch are stored once
    assert store.write_events(events([20, 20, 21, 20])) == 2
    assert store.count("events") == 17
    assert sorted(ids(store.search_events(limit=None))) == sorted(
        f"e{i}" for i in [*range(15), 20, 21]
    )


def test_first_write_wins(store):
    store.write_events(events([1], message="first"))
    store.write_events(events([1], message="second"))
    assert store.search_events()["message"].to_pylist() == ["first"]
    batch = events_table([ev(2, message="a"), ev(3), ev(2, message="b"), ev(4), ev(3, message="c")])
    assert store.write_events(batch) == 3
    got = store.search_events("event.id:(e2 OR e3)", order="asc")
    assert got["message"].to_pylist() == ["a", "event number 3"]


def test_write_rejects_null_ids_and_unknown_columns(store):
    bad = events([1]).set_column(3, "event.id", pa.array([None], pa.string()))
    with pytest.raises(ValueError, match="no event.id"):
        store.write_events(bad)
    with pytest.raises(ValueError, match="not in the events schema"):
        store.write_events(pa.table({"event.id": ["x"], "bogus": [1]}))
    assert store.count("events") == 0


def test_partial_batches_are_conformed(store):
    # only some columns, types castable: missing ones become null
    tbl = pa.table({"event.id": ["p1"], "source.port": pa.array([22], pa.int32())})
    assert store.write_events(tbl) == 1
    row = store.search_events().to_pylist()[0]
    assert row["source.port"] == 22 and row["message"] is None
    assert store.write_events(events([])) == 0


def test_alerts_and_deadletters(store):
    alerts = alerts_table(
        [
            {
                "id": "a1",
                "@timestamp": T0,
                "rule.id": "r1",
                "rule.name": "SSH brute force",
                "event.severity": 4,
                "threat.technique.id": ["T1110", "T1110.001"],
                "event.ids": ["e1", "e2"],
                "source.ip": "10.0.0.1",
            },
            {"id": "a2", "@timestamp": T0 + timedelta(hours=1), "rule.name": "DNS tunnel",
             "event.severity": 2, "threat.technique.id": ["T1071"]},
        ]
    )
    assert store.write_alerts(alerts) == 2
    assert store.write_alerts(alerts) == 0
    a = store.alert("a1")
    assert a["rule.name"] == "SSH brute force"
    assert a["threat.technique.id"] == ["T1110", "T1110.001"]
    assert a["@timestamp"] == T0
    assert set(a) == set(ALERT_SCHEMA.names)
    assert store.alert("nope") is None
    assert store.alert("a1' OR '1'='1") is None
    assert ids(store.search_alerts("threat.technique.id:T1110*"), "id") == ["a1"]
    assert ids(store.search_alerts("brute"), "id") == ["a1"]
    assert ids(store.search_alerts("event.severity:>=3"), "id") == ["a1"]
    assert store.search_alerts().schema == ALERT_SCHEMA

    dl = deadletters_table(
        [{"id": "d1", "@timestamp": T0, "taishi.source": "conn.log", "log.offset": 7,
          "stage": "parse", "reason": "bad JSON: Expecting value", "event.original": "{oops"}]
    )
    assert store.write_deadletters(dl) == 1
    assert store.write_deadletters(dl) == 0
    assert ids(store.search_deadletters("json"), "id") == ["d1"]
    assert ids(store.search_deadletters("stage:parse AND log.offset:7"), "id") == ["d1"]
    assert store.search_deadletters().schema == DEADLETTER_SCHEMA
    assert store.stats() == {"events": 0, "alerts": 2, "deadletters": 1}


# ------------------------------------------------------------------ reads


def test_search_time_window_order_limit(store):
    store.write_events(events(range(10)))
    out = store.search_events()
    assert out.schema == EVENT_SCHEMA
    assert ids(out) == [f"e{i}" for i in reversed(range(10))]
    assert ids(store.search_events(order="asc", limit=3)) == ["e0", "e1", "e2"]
    assert ids(store.search_events(order="asc", limit=3, offset=3)) == ["e3", "e4", "e5"]
    since, until = T0 + timedelta(minutes=2), T0 + timedelta(minutes=5)
    assert ids(store.search_events(since=since, until=until, order="asc")) == ["e2", "e3", "e4"]
    assert ids(store.search_events(since="2024-01-01T00:08:00Z", order="asc")) == ["e8", "e9"]
    assert store.count("events", "destination.port:22", since=since, until=until) == 1
    assert ids(store.search_events("source.ip:10.0.0.0/30", order="asc")) == ["e0", "e1", "e2", "e3"]
    assert ids(store.search_events("related.ip:10.0.0.7")) == ["e7"]
    assert ids(store.search_events('"number 3"')) == ["e3"]
    with pytest.raises(ValueError):
        store.search_events(order="sideways")
    with pytest.raises(QueryError, match="did you mean source.ip"):
        store.search_events("source.iip:10.0.0.1")


def test_ingested_is_queryable_but_not_returned(store, clock):
    store.write_events(events([1]))
    clock.now += timedelta(hours=2)
    store.write_events(events([2]))
    assert ids(store.search_events("event.ingested:>now-1h")) == ["e2"]
    assert "event.ingested" not in store.search_events().column_names


def test_events_by_ids(store):
    store.write_events(events(range(5)))
    got = store.events_by_ids(["e3", "e1", "missing", "e3"])
    assert ids(got) == ["e1", "e3"] and got.schema == EVENT_SCHEMA
    assert store.events_by_ids([]).num_rows == 0


def test_aggregate_and_histogram(store):
    store.write_events(events(range(10)))
    store.write_events(events([100], **{"event.dataset": None, "tags": ["x", "y"]}))
    assert store.aggregate("events", "destination.port", size=5) == [(443, 6), (22, 5)]
    assert store.aggregate("events", "event.dataset") == [("zeek.conn", 10)]
    assert store.aggregate("events", "related.ip", size=1) == [("192.168.1.1", 11)]
    assert store.aggregate("events", "destination.port", "destination.port:22") == [(22, 5)]
    assert store.aggregate("events", "tags") == [("x", 1), ("y", 1)]
    with pytest.raises(QueryError):
        store.aggregate("events", "no.such.field")
    with pytest.raises(ValueError):
        store.aggregate("nosuchtable", "tags")

    h = store.histogram("events", "", since=T0, until=T0 + timedelta(minutes=10), interval_s=300)
    assert h == [(T0, 5), (T0 + timedelta(minutes=5), 5)]
    h = store.histogram("events", "destination.port:22", since=T0,
                        until=T0 + timedelta(minutes=15), interval_s=300)
    assert h == [(T0, 2), (T0 + timedelta(minutes=5), 3), (T0 + timedelta(minutes=10), 0)]
    h = store.histogram("events", "", interval_s=3600)
    assert h[0] == (T0, 10) and h[-1] == (T0 + timedelta(hours=1), 1) and len(h) == 2
    assert store.histogram("alerts", "", interval_s=60) == []


# -------------------------------------------------------------- injection


INJECTIONS = [
    "source.ip:\"1' OR 1=1 --\"",
    "\"'; DROP TABLE events; --\"",
    "message:\"'; DROP TABLE events; --\"",
    'source.ip") OR 1=1 --:x',
    "source.ip\\\"\\)\\ OR\\ 1=1\\ --:x",
    "user.name:\\\\",
    "user.name:\"a\\\\'b\"",
    "user.name:a\x00b",
    "message:\x00",
    "host.name:\u2028\u202e;--",
    "message:\"\\\"; DELETE FROM alerts; --\"",
    "'",
    "\\",
    "--",
    ";",
]


@pytest.mark.parametrize("q", INJECTIONS)
def test_injection_leaves_tables_intact(store, q):
    store.write_events(events(range(5)))
    store.write_alerts(alerts_table([{"id": "a1", "@timestamp": T0}]))
    before = store.stats()
    for table in ("events", "alerts", "deadletters"):
        try:
            n = store.count(table, q)
        except QueryError:
            n = 0
        assert n == 0, (table, q)
    try:
        assert store.search_events(q).num_rows == 0
    except QueryError:
        pass
    assert store.stats() == before
    with pytest.raises((QueryError, ValueError)):
        store.aggregate("events", 'tags" FROM events; DROP TABLE events; --')
    with pytest.raises(ValueError):
        store.count("events; DROP TABLE events", "")
    assert store.stats() == before


def test_nasty_values_round_trip(store):
    nasty = ["x'; DROP TABLE events; --", "a\\b", "nul\x00byte", "日本語", "%_\\", '"quoted"']
    store.write_events(events_table([ev(i, **{"user.name": v}) for i, v in enumerate(nasty)]))
    assert store.count("events") == len(nasty)
    for i, v in enumerate(nasty):
        esc = v.replace("\\", "\\\\").replace('"', '\\"')
        assert ids(store.search_events(f'user.name:"{esc}"')) == [f"e{i}"], v


# -------------------------------------------------------------- retention


def test_retention_deletes_only_old_rows(data_dir, clock):
    with Store(data_dir, clock=clock) as store:
        old_time = clock.now
        store.write_events(events(range(5)))
        store.write_alerts(alerts_table([{"id": "old", "@timestamp": T0}]))
        store.write_deadletters(
            deadletters_table([{"id": "d-old", "@timestamp": old_time, "reason": "x"}])
        )
        clock.now = old_time + timedelta(days=20)
        store.write_events(events(range(5, 8)))  # @timestamp is old, ingested is new
        store.write_alerts(alerts_table([{"id": "new", "@timestamp": T0}]))
        store.write_deadletters(
            deadletters_table([{"id": "d-new", "@timestamp": clock.now, "reason": "x"}])
        )
        clock.now = old_time + timedelta(days=31)
        got = store.apply_retention({"events": 30, "alerts": 30, "deadletters": 30})
        assert got == {"events": 5, "alerts": 1, "deadletters": 1}
        assert sorted(ids(store.search_events(limit=None))) == ["e5", "e6", "e7"]
        assert ids(store.search_alerts(), "id") == ["new"]
        assert ids(store.search_deadletters(), "id") == ["d-new"]
        # nothing more is old; None/0 mean keep forever
        assert store.apply_retention({"events": 30}) == {"events": 0}
        assert store.apply_retention({"events": None, "alerts": 0}) == {"events": 0, "alerts": 0}
        assert store.stats() == {"events": 3, "alerts": 1, "deadletters": 1}
        with pytest.raises(ValueError):
            store.apply_retention({"bogus": 1})
        # a deleted row may be written again later
        assert store.write_events(events([0])) == 1


# ------------------------------------------------------- persistence, schema


def test_reopen_keeps_data(data_dir, clock):
    with Store(data_dir, clock=clock) as s:
        s.write_events(events(range(3)))
    with Store(data_dir, clock=clock, keep_open=True) as s:
        assert s.count("events") == 3
        assert s.write_events(events(range(5))) == 2
    with pytest.raises(RuntimeError):
        s.count("events")
    with Store(data_dir) as s:
        assert s.stats()["events"] == 5


def test_old_events_table_migrates_to_parquet_with_every_column(data_dir):
    """A store from the older layout (events in a narrow DuckDB table) opens:
    its rows move into the Parquet store, gain every current column, keep
    their ids (so they are not written twice), and the old table is gone."""
    con = duckdb.connect(str(data_dir / "store.duckdb"))
    con.execute(
        'CREATE TABLE events ("event.id" VARCHAR PRIMARY KEY, "@timestamp" TIMESTAMPTZ, '
        '"message" VARCHAR)'
    )
    con.execute("INSERT INTO events VALUES ('old1', '2024-01-01 00:00:00+00', 'from v0')")
    con.close()
    with Store(data_dir) as s:
        cols = s.search_events().column_names
        assert cols == EVENT_SCHEMA.names
        assert s.search_events("message:v0").to_pylist()[0]["source.ip"] is None
        assert s.write_events(events_table([{"event.id": "old1", "@timestamp": "2024-01-01T00:00:00Z"}])) == 0
        assert s.write_events(events([1, 2])) == 2
        assert s.write_events(events([1])) == 0
        assert s.count("events", "source.ip:10.0.0.0/8") == 2
        assert s.count("events", "event.ingested:*") == 3  # migrated rows are stamped at migration
        assert s.stats()["events"] == 3
    con = duckdb.connect(str(data_dir / "store.duckdb"), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    con.close()
    assert "events" not in tables and "event_ids" in tables
    files = list((data_dir / "events").glob("ingest_date=*/*.parquet"))
    assert files, "events are Parquet files partitioned by ingest date"


def test_events_parquet_files_are_idempotent_and_schema_file_adds_new_columns(data_dir):
    with Store(data_dir) as s:
        s.write_events(events(range(4)))
    files = sorted((data_dir / "events").glob("ingest_date=*/*.parquet"))
    assert len(files) == 1
    # a file written by an older Taishi without some column still reads, with nulls
    import pyarrow.parquet as pq

    narrow = pq.read_table(files[0]).drop_columns(["message"])
    assert "dns.question.name" not in narrow.column_names  # null in every row: not written at all
    pq.write_table(narrow, files[0])
    (data_dir / "events" / "_schema.parquet").unlink()
    with Store(data_dir) as s:
        for field in ("message", "dns.question.name"):
            got = s.search_events(f"{field}:*", limit=None)
            assert got.num_rows == 0
            assert s.search_events(limit=None).column(field).null_count == 4
        assert s.count("events") == 4


def test_events_files_leave_out_all_null_columns_and_keep_their_names(data_dir):
    import hashlib

    import pyarrow.parquet as pq

    batch = events(range(3))
    with Store(data_dir) as s:
        assert s.write_events(batch) == 3
        files = sorted((data_dir / "events").glob("ingest_date=*/*.parquet"))
        assert len(files) == 1
        # the file is named by the hash of its ids, as before (a retry rewrites the same file)
        ids = "\x1f".join(batch.column("event.id").to_pylist()).encode()
        assert files[0].stem == hashlib.blake2b(ids, digest_size=12).hexdigest()
        cols = pq.read_schema(files[0]).names
        assert {"event.id", "@timestamp", "event.ingested", "source.ip"} <= set(cols)
        assert "dns.question.name" not in cols and len(cols) < len(EVENT_SCHEMA.names)
        got = s.search_events("", limit=None, order="asc")
        assert got.schema == EVENT_SCHEMA  # every column, with its type
        assert got.column("dns.question.name").null_count == 3
        assert got.column("source.ip").to_pylist() == batch.column("source.ip").to_pylist()
        assert s.count("events", "dns.question.name:*") == 0
        assert s.count("events", "NOT dns.question.name:*") == 3


@pytest.mark.parametrize("keep_open", [False, True])
def test_threads_share_a_store(data_dir, keep_open):
    import threading

    errors = []
    with Store(data_dir, keep_open=keep_open) as s:
        def work(k):
            try:
                for j in range(5):
                    s.write_events(events(range(k * 100 + j * 10, k * 100 + j * 10 + 10)))
                    s.count("events", "destination.port:22")
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert s.count("events") == 200


# ------------------------------------------------------- two processes

_CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timedelta, timezone
    from taishi.schema import events_table
    from taishi.store import Store
    data_dir, start, n, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    s = Store(data_dir)
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    total = 0
    for b in range(batches):
        rows = [{"event.id": f"c{start + b * n + i}", "@timestamp": t0 + timedelta(seconds=b * n + i),
                 "source.ip": "10.1.1.1", "message": "from child"} for i in range(n)]
        total += s.write_events(events_table(rows))
        time.sleep(0.01)
    print(total)
    """
)

_HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_second_process_writes_while_we_read(data_dir):
    store = Store(data_dir)  # per-operation connections: the default
    store.write_events(events(range(10)))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data_dir), "0", "2000", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    reads, seen = 0, []
    while child.poll() is None:
        seen.append(store.count("events", "message:child"))
        store.search_events("source.ip:10.0.0.0/8", limit=10)
        reads += 1
    out, err = child.communicate()
    assert child.returncode == 0, err
    assert int(out.strip()) == 20000
    assert reads > 0
    assert seen == sorted(seen)  # each read sees a committed state
    assert store.count("events", "message:child") == 20000
    assert store.count("events") == 20010
    store.close()


def test_waits_for_a_lock_then_proceeds(data_dir):
    Store(data_dir).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(data_dir / "store.duckdb"), "1.0"],
        stdout=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        t = time.monotonic()
        s = Store(data_dir, lock_timeout=10)
        assert s.write_events(events([1])) == 1
        assert time.monotonic() - t > 0.3  # it did wait for the other process
    finally:
        holder.wait(timeout=20)


def test_gives_up_after_lock_timeout(data_dir):
    Store(data_dir).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(data_dir / "store.duckdb"), "5"],
        stdout=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match="locked"):
            Store(data_dir, lock_timeout=0.3)
    finally:
        holder.kill()
        holder.wait(timeout=20)
