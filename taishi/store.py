"""The embedded store: one DuckDB file, ``<data_dir>/store.duckdb``.

Tables ``events``, ``alerts`` and ``deadletters`` have exactly the columns of
:data:`~taishi.schema.EVENT_SCHEMA`, :data:`~taishi.schema.ALERT_SCHEMA` and
:data:`~taishi.schema.DEADLETTER_SCHEMA` (same dotted names, quoted), keyed by
``event.id`` / ``id``. ``events`` and ``alerts`` also have ``event.ingested``,
set from the store's clock at write time: retention uses it, identity does not.
Dead letters age by their ``@timestamp`` (the time they were dead-lettered).

Writes are idempotent: a batch is appended with an anti-join on the key
(``INSERT ... WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.key = batch.key)``),
and duplicates inside a batch are dropped in Arrow first, so writing a batch
twice, or overlapping batches, stores each row once; the first version
written wins. The alternative, a PRIMARY KEY with ``INSERT OR IGNORE``, was
measured against it on 100k-row batches of the 130-column event schema, ten
batches into one file each, interleaved, on a shared 2-core box: PRIMARY KEY
~35k ev/s and a 197 MB file (the ART index on the 32-character ids is 2/3 of
it); anti-join ~70k ev/s and 63 MB; a plain append with no dedupe ~75k ev/s.
Re-writing an already stored 100k batch: 1.7 s vs 0.23 s. So the anti-join
is kept. Its probe (a hash join built on the batch, scanning the stored key
column) costs ~50 ms per million stored rows per batch, so it grows with the
table; uniqueness is enforced here (writes to one file are serialised), not
by a constraint. On a quiet box the store writes 100k-event batches at
~110-120k ev/s; what bounds it is DuckDB appending ~120 mostly-null columns
(2.5-4 ms per column per 100k rows), not the dedupe.

Events live in Parquet, not in a DuckDB table
----------------------------------------------
Events are the volume (alerts and dead letters are few), and DuckDB appends a
100k-row batch of the ~130-column schema at ~120k rows/s on one core while
pyarrow writes the same batch as Parquet at ~700k rows/s. So events are
stored as Parquet files under ``data_dir/events/ingest_date=YYYY-MM-DD/``,
one file per written batch, and queried through DuckDB's ``read_parquet``
(the SQL is the same; ``events`` is a relation, not a table). A zero-row
``events/_schema.parquet`` carrying the current schema makes every column
exist for the reader even when older files predate it.

Idempotence: the ids of stored events (with their ``@timestamp`` and
``event.ingested``) are kept in a narrow DuckDB table ``event_ids``; a batch
is anti-joined against the ids in the batch's own time range (so the probe
stays small as the store grows), the new rows are written to a Parquet file
named by the hash of their ids (a retry after a crash rewrites the same file),
and only then are their ids recorded. Retention drops whole ingest-date
partitions, so it is exact to the day.

Concurrency
-----------
DuckDB lets one *process* open a database file read-write, and while it does,
no other process can open it at all (not even read-only). ``taishi serve``
reads while ``taishi ingest`` writes from another process, so by default a
:class:`Store` opens a connection **per operation** and closes it at the end;
the file lock is held only for the length of one write or query. Opening
retries on lock conflicts ("Could not set lock") with exponential backoff for
up to ``lock_timeout`` seconds (10 s by default), so the two processes take
turns. Opening and closing cost a few milliseconds, small next to a batch of
thousands of rows.

``Store(..., keep_open=True)`` instead holds one connection until
:meth:`close` — for a single process that owns the file (bulk loads, tests,
``taishi run`` where ingest and serve share a process); other processes
then wait (and time out after ``lock_timeout``) until it closes. Threads may
share a Store either way. With per-operation connections, operations on one
file take turns within the process (DuckDB races when threads open and close
the same file concurrently); with ``keep_open`` reads run concurrently on
cursors of the one connection. Writes to one file are always serialised in
the process, which keeps the anti-join dedupe race-free.

Queries are the Lucene syntax of :mod:`taishi.query`; every value is a bound
parameter.
"""

from __future__ import annotations

import os
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import hashlib
import json
import shutil

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from taishi.query import (
    QueryError,
    compile_query,
    parse_time_value,
    quote_ident,
    register_functions,
    resolve_field,
)
from taishi.schema import ALERT_SCHEMA, DEADLETTER_SCHEMA, EVENT_SCHEMA, TS, conform

__all__ = ["Store", "StoreLockedError", "QueryError", "TABLES", "DEFAULT_FIELDS"]

INGESTED = "event.ingested"
TIME = "@timestamp"


@dataclass(frozen=True)
class _Table:
    name: str
    schema: pa.Schema  # the columns writes take and searches return
    key: str
    ingested: bool  # has "event.ingested"
    defaults: tuple[str, ...]  # fields bare query terms search

    @property
    def query_schema(self) -> pa.Schema:
        """What queries may name: the schema plus ``event.ingested``."""
        if self.ingested and INGESTED not in self.schema.names:
            return self.schema.append(pa.field(INGESTED, TS))
        return self.schema

    @property
    def retention_column(self) -> str:
        return INGESTED if self.ingested else TIME


TABLES: dict[str, _Table] = {
    "events": _Table(
        "events", EVENT_SCHEMA, "event.id", True, ("message", "event.original", "rule.name")
    ),
    "alerts": _Table(
        "alerts", ALERT_SCHEMA, "id", True, ("message", "rule.name", "rule.description")
    ),
    "deadletters": _Table(
        "deadletters", DEADLETTER_SCHEMA, "id", False, ("reason", "event.original", "taishi.source")
    ),
}
DEFAULT_FIELDS = {n: list(t.defaults) for n, t in TABLES.items()}


_PATH_LOCKS: dict[str, threading.RLock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _path_lock(path: Path) -> threading.RLock:
    key = str(path.resolve())
    with _PATH_LOCKS_GUARD:
        lock = _PATH_LOCKS.get(key)
        if lock is None:
            lock = _PATH_LOCKS[key] = threading.RLock()
        return lock


class StoreLockedError(RuntimeError):
    """Another process held the database file for longer than ``lock_timeout``."""


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _sql_type(t.value_type) + "[]"
    if pa.types.is_struct(t):  # e.g. source.geo.location {lat, lon}
        return "STRUCT(" + ", ".join(f"{quote_ident(f.name)} {_sql_type(f.type)}" for f in t) + ")"
    raise TypeError(f"no DuckDB type for {t}")


def _is_lock_error(e: Exception) -> bool:
    s = str(e)
    return "Could not set lock" in s or "Conflicting lock" in s


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class Store:
    """The embedded store over ``data_dir/store.duckdb`` (see module doc)."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        keep_open: bool = False,
        lock_timeout: float = 10.0,
        clock: Callable[[], datetime] | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "store.duckdb"
        self.lock_timeout = lock_timeout
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._keep_open = keep_open
        self._con: duckdb.DuckDBPyConnection | None = None
        self._closed = False
        self.events_dir = self.data_dir / "events"
        self._ensure_events_schema_file()
        if keep_open:
            self._con = self._open()
        with self._connect() as con:
            self._ensure_tables(con)

    # -- connections ------------------------------------------------------------
    def _open(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as e:
                if not _is_lock_error(e):
                    raise
                if time.monotonic() + delay > deadline:
                    raise StoreLockedError(
                        f"{self.path} stayed locked by another process for "
                        f"{self.lock_timeout:g} s: {e}"
                    ) from e
                time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: no lockstep
                delay = min(delay * 2, 0.25)
        try:
            con.execute("SET TimeZone = 'UTC'")
            register_functions(con)
        except Exception:
            con.close()
            raise
        return con

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._closed:
            raise RuntimeError("store is closed")
        if self._con is not None:
            cur = self._con.cursor()  # thread-safe handle onto the shared database
            try:
                cur.execute("SET TimeZone = 'UTC'")
                register_functions(cur)
                yield cur
            finally:
                cur.close()
            return
        # Per-operation connections to one file from several threads race in
        # DuckDB (an instance torn down while another thread opens it), so in
        # this mode operations on one file take turns within the process.
        with _path_lock(self.path):
            con = self._open()
            try:
                yield con
            finally:
                con.close()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        self._closed = True

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------
    def _ensure_events_schema_file(self) -> None:
        """The zero-row Parquet file that gives the events relation every current column."""
        path = self.events_dir / "_schema.parquet"
        schema = TABLES["events"].query_schema
        if path.exists():
            try:
                if pq.read_schema(path).equals(schema):
                    return
            except Exception:  # a torn file from a crash: rewrite it
                pass
        self.events_dir.mkdir(parents=True, exist_ok=True)
        _write_parquet(path, schema.empty_table())

    def _ensure_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            'CREATE TABLE IF NOT EXISTS event_ids ("event.id" VARCHAR, "@timestamp" TIMESTAMPTZ, '
            '"event.ingested" TIMESTAMPTZ)'
        ).fetchall()
        for t in TABLES.values():
            if t.name == "events":
                self._migrate_events_table(con)
                continue
            cols = [(f.name, _sql_type(f.type)) for f in t.schema]
            if t.ingested:
                cols.append((INGESTED, "TIMESTAMPTZ"))
            have = {
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = ? AND table_schema = 'main'",
                    [t.name],
                ).fetchall()
            }
            if not have:
                body = ", ".join(f"{quote_ident(n)} {typ}" for n, typ in cols)
                con.execute(f"CREATE TABLE IF NOT EXISTS {t.name} ({body})")
                continue
            for n, typ in cols:  # a newer Taishi added fields: add them
                if n not in have:
                    con.execute(f"ALTER TABLE {t.name} ADD COLUMN {quote_ident(n)} {typ}")
        self._ensure_incident_tables(con)

    def _migrate_events_table(self, con: duckdb.DuckDBPyConnection) -> None:
        """Move a ``events`` DuckDB table (older layout) into the Parquet store."""
        found = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'events' "
            "AND table_schema = 'main' AND table_type = 'BASE TABLE'"
        ).fetchall()[0][0]
        if not found:
            return
        old = con.sql("SELECT * FROM main.events").to_arrow_table()
        if old.num_rows:
            ingested = old.column(INGESTED) if INGESTED in old.column_names else None
            tbl = conform(old.drop_columns([c for c in old.column_names if c not in EVENT_SCHEMA.names]), EVENT_SCHEMA)
            now = _utc(self.clock())
            if ingested is None:
                ingested = pa.array([now] * old.num_rows, TS)
            ingested = pc.fill_null(ingested.cast(TS), pa.scalar(now, TS))
            self._append_events(con, tbl, ingested)
        con.execute("DROP TABLE main.events").fetchall()

    def _rel(self, t: _Table) -> str:
        """The SQL relation a table is read from (Parquet files for events)."""
        if t.name != "events":
            return t.name
        glob = str(self.events_dir / "**" / "*.parquet").replace("'", "''")
        return f"read_parquet('{glob}', union_by_name = true, hive_partitioning = false)"

    @staticmethod
    def _table(name: str) -> _Table:
        try:
            return TABLES[name]
        except KeyError:
            raise ValueError(f"unknown table {name!r}; one of {', '.join(TABLES)}") from None

    # -- writes -----------------------------------------------------------------------
    def write_events(self, tbl: pa.Table) -> int:
        """Store events not stored yet (by ``event.id``); returns how many were new."""
        return self._write(TABLES["events"], tbl)

    def write_alerts(self, tbl: pa.Table) -> int:
        """Store alerts not stored yet (by ``id``); returns how many were new."""
        return self._write(TABLES["alerts"], tbl)

    def write_deadletters(self, tbl: pa.Table) -> int:
        """Store dead letters not stored yet (by ``id``); returns how many were new."""
        return self._write(TABLES["deadletters"], tbl)

    def _write(self, t: _Table, tbl: pa.Table) -> int:
        """Append the rows whose key is not stored yet (anti-join on the key).

        Duplicates within one batch keep their first row. Rows with a null key
        are an error (a bug upstream: every record has a deterministic id).
        Writes to one file are serialised within the process (and across
        processes by DuckDB's file lock), so the anti-join cannot race.
        """
        if isinstance(tbl, pa.RecordBatch):
            tbl = pa.Table.from_batches([tbl])
        if tbl.num_rows == 0:
            return 0
        unknown = [c for c in tbl.column_names if c not in t.schema.names]
        if unknown:
            raise ValueError(f"columns not in the {t.name} schema: {', '.join(unknown)}")
        tbl = conform(tbl, t.schema)
        keys = tbl.column(t.key)
        if keys.null_count:
            raise ValueError(f"{keys.null_count} {t.name} rows have no {t.key}")
        if pc.count_distinct(keys).as_py() != tbl.num_rows:
            tbl = _first_per_key(tbl, t.key)
        if t.name == "events":
            return self._write_events(tbl)
        cols = ", ".join(quote_ident(n) for n in t.schema.names)
        key = quote_ident(t.key)
        view = f"_taishi_batch_{os.getpid()}_{threading.get_ident()}"
        select = (
            f"SELECT {cols}{{extra}} FROM {view} AS b WHERE NOT EXISTS "
            f"(SELECT 1 FROM {t.name} AS e WHERE e.{key} = b.{key})"
        )
        params: list[Any] = []
        if t.ingested:
            sql = f"INSERT INTO {t.name} ({cols}, {quote_ident(INGESTED)}) " + select.format(
                extra=", ?::TIMESTAMPTZ"
            )
            params.append(_utc(self.clock()))
        else:
            sql = f"INSERT INTO {t.name} ({cols}) " + select.format(extra="")
        with _path_lock(self.path), self._connect() as con:
            con.register(view, tbl)
            try:
                row = con.execute(sql, params).fetchone()
            finally:
                con.unregister(view)
        return int(row[0]) if row else 0

    def _write_events(self, tbl: pa.Table) -> int:
        now = _utc(self.clock())
        ts = tbl.column(TIME)
        lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
        view = f"_taishi_ids_{os.getpid()}_{threading.get_ident()}"
        with _path_lock(self.path), self._connect() as con:
            con.register(view, pa.table({"k": tbl.column("event.id")}))
            try:
                if lo is None:  # no timestamps at all: probe every stored id
                    cond, params = "TRUE", []
                else:
                    cond = '("@timestamp" BETWEEN ? AND ? OR "@timestamp" IS NULL)'
                    params = [lo, hi]
                if ts.null_count:
                    cond, params = "TRUE", []
                old = con.sql(
                    f'SELECT k FROM {view} WHERE k IN (SELECT "event.id" FROM event_ids WHERE {cond})',
                    params=params,
                ).to_arrow_table()
            finally:
                con.unregister(view)
            if old.num_rows:
                tbl = tbl.filter(pc.invert(pc.is_in(tbl.column("event.id"), value_set=old.column("k"))))
            if tbl.num_rows == 0:
                return 0
            self._append_events(con, tbl, pa.repeat(pa.scalar(now, TS), tbl.num_rows))
        return tbl.num_rows

    def _append_events(self, con: duckdb.DuckDBPyConnection, tbl: pa.Table, ingested: pa.Array) -> None:
        """Write new events as one Parquet file per ingest day, then record their ids.

        Columns that are null in every row of the file are left out of it
        (most of the ~130 fields are, for any one source, and writing their
        definition levels is a third of the write): the reader's
        ``union_by_name`` and ``_schema.parquet`` give them back as nulls.
        """
        tbl = tbl.append_column(pa.field(INGESTED, TS), ingested)
        lo, hi = pc.min_max(tbl.column(INGESTED)).values()
        if lo.as_py().date() == hi.as_py().date():  # the usual case: one write, one day
            parts = [(lo.as_py().strftime("%Y-%m-%d"), tbl)]
        else:
            days = pc.strftime(tbl.column(INGESTED), format="%Y-%m-%d")
            parts = [(d, tbl.filter(pc.equal(days, d))) for d in pc.unique(days).to_pylist()]
        for day, part in parts:
            digest = _ids_digest(part.column("event.id"))
            keep = [
                name
                for name, col in zip(part.column_names, part.columns)
                if col.null_count < part.num_rows or name in _ALWAYS_WRITTEN
            ]
            _write_parquet(self.events_dir / f"ingest_date={day}" / f"{digest}.parquet", part.select(keep))
            ids = part.select(["event.id", TIME, INGESTED])
            view = f"_taishi_new_{os.getpid()}_{threading.get_ident()}"
            con.register(view, ids)
            try:
                con.execute(f"INSERT INTO event_ids SELECT * FROM {view}").fetchall()
            finally:
                con.unregister(view)

    # -- reads ---------------------------------------------------------------------------
    def _where(
        self,
        t: _Table,
        query: str | None,
        since: datetime | str | None,
        until: datetime | str | None,
    ) -> tuple[str, list]:
        now = self.clock()
        where, params = compile_query(query or "", t.query_schema, t.defaults, now=now)
        clauses = [f"({where})"]
        if since is not None:
            clauses.append(f"{quote_ident(TIME)} >= ?")
            params.append(parse_time_value(since, now))
        if until is not None:
            clauses.append(f"{quote_ident(TIME)} < ?")
            params.append(parse_time_value(until, now))
        return " AND ".join(clauses), params

    def _select(self, t: _Table, sql: str, params: Sequence[Any]) -> pa.Table:
        with self._connect() as con:
            out = con.sql(sql, params=list(params)).to_arrow_table()
        return conform(out, t.schema)

    def _search(
        self,
        name: str,
        query: str | None,
        since: datetime | str | None,
        until: datetime | str | None,
        limit: int | None,
        order: str,
        offset: int,
    ) -> pa.Table:
        t = self._table(name)
        direction = {"desc": "DESC", "asc": "ASC"}.get(str(order).lower())
        if direction is None:
            raise ValueError("order must be 'asc' or 'desc'")
        where, params = self._where(t, query, since, until)
        cols = ", ".join(quote_ident(n) for n in t.schema.names)
        sql = (
            f"SELECT {cols} FROM {self._rel(t)} WHERE {where} ORDER BY "
            f"{quote_ident(TIME)} {direction} NULLS LAST, {quote_ident(t.key)} {direction}"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        if offset:
            sql += " OFFSET ?"
            params.append(max(0, int(offset)))
        return self._select(t, sql, params)

    def search_events(
        self,
        query: str | None = "",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = 100,
        order: str = "desc",
        offset: int = 0,
    ) -> pa.Table:
        """Events matching a Lucene ``query`` with ``since <= @timestamp < until``,
        newest first (``order="asc"``: oldest first), at most ``limit`` rows."""
        return self._search("events", query, since, until, limit, order, offset)

    def search_alerts(
        self,
        query: str | None = "",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = 100,
        order: str = "desc",
        offset: int = 0,
    ) -> pa.Table:
        return self._search("alerts", query, since, until, limit, order, offset)

    def search_deadletters(
        self,
        query: str | None = "",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = 100,
        order: str = "desc",
        offset: int = 0,
    ) -> pa.Table:
        return self._search("deadletters", query, since, until, limit, order, offset)

    def count(
        self,
        table: str,
        query: str | None = "",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> int:
        t = self._table(table)
        where, params = self._where(t, query, since, until)
        with self._connect() as con:
            return int(con.execute(f"SELECT count(*) FROM {self._rel(t)} WHERE {where}", params).fetchone()[0])

    def alert(self, id: str) -> dict | None:
        """One alert as a dict keyed by field name, or None."""
        t = TABLES["alerts"]
        cols = ", ".join(quote_ident(n) for n in t.schema.names)
        rows = self._select(t, f"SELECT {cols} FROM alerts WHERE id = ? LIMIT 1", [id]).to_pylist()
        return rows[0] if rows else None

    def events_by_ids(self, ids: Iterable[str]) -> pa.Table:
        """The stored events with these ids (unknown ids are skipped), oldest first."""
        t = TABLES["events"]
        ids = [i for i in dict.fromkeys(ids) if i is not None]
        if not ids:
            return conform(t.schema.empty_table(), t.schema)
        cols = ", ".join(quote_ident(n) for n in t.schema.names)
        sql = (
            f"SELECT {cols} FROM {self._rel(t)} WHERE {quote_ident(t.key)} IN "
            f"(SELECT unnest(?::VARCHAR[])) ORDER BY {quote_ident(TIME)} ASC NULLS LAST, "
            f"{quote_ident(t.key)}"
        )
        return self._select(t, sql, [ids])

    def aggregate(
        self,
        table: str,
        field: str,
        query: str | None = "",
        since: datetime | str | None = None,
        size: int = 10,
        until: datetime | str | None = None,
    ) -> list[tuple[Any, int]]:
        """Top ``size`` values of ``field`` among matching rows, most frequent first
        (ties by value). List fields count each element; nulls are not counted."""
        t = self._table(table)
        col = resolve_field(field, t.query_schema)
        typ = t.query_schema.field(col).type
        where, params = self._where(t, query, since, until)
        q = quote_ident(col)
        if pa.types.is_list(typ):
            inner = f"SELECT unnest({q}) AS v FROM {self._rel(t)} WHERE {where}"
        else:
            inner = f"SELECT {q} AS v FROM {self._rel(t)} WHERE {where}"
        sql = (
            f"SELECT v, count(*) AS n FROM ({inner}) WHERE v IS NOT NULL "
            f"GROUP BY v ORDER BY n DESC, v ASC LIMIT ?"
        )
        params.append(max(0, int(size)))
        with self._connect() as con:
            return [(v, int(n)) for v, n in con.execute(sql, params).fetchall()]

    def histogram(
        self,
        table: str,
        query: str | None = "",
        since: datetime | str | None = None,
        interval_s: int = 3600,
        until: datetime | str | None = None,
        fill: bool = True,
    ) -> list[tuple[datetime, int]]:
        """Row counts per ``interval_s``-second bucket of ``@timestamp``
        (buckets aligned on the epoch), oldest first. With ``fill``, empty
        buckets between ``since`` (or the first row) and ``until`` (or now if
        ``since`` was given, else the last row) are listed with count 0."""
        t = self._table(table)
        step = int(interval_s) * 1_000_000
        if step <= 0:
            raise ValueError("interval_s must be a positive number of seconds")
        now = self.clock()
        where, params = self._where(t, query, since, until)
        ts = quote_ident(TIME)
        sql = (
            f"SELECT (epoch_us({ts}) // ?) * ? AS b, count(*) FROM {self._rel(t)} "
            f"WHERE {where} AND {ts} IS NOT NULL GROUP BY b ORDER BY b"
        )
        with self._connect() as con:
            rows = {int(b): int(n) for b, n in con.execute(sql, [step, step, *params]).fetchall()}
        if not fill:
            return [(_from_us(b), n) for b, n in rows.items()]

        def floor_us(dt: datetime) -> int:
            return (_us(dt) // step) * step

        if since is not None:
            start = floor_us(parse_time_value(since, now))
        elif rows:
            start = min(rows)
        else:
            return []
        if until is not None:
            end = ((_us(parse_time_value(until, now)) - 1) // step) * step
        elif since is not None:
            end = max([floor_us(_utc(now))] + list(rows))
        else:
            end = max(rows)
        if (end - start) // step > 100_000:
            raise ValueError("histogram would have more than 100000 buckets; use a larger interval")
        return [(_from_us(b), rows.get(b, 0)) for b in range(start, end + 1, step)]

    def stats(self) -> dict[str, int]:
        """Row count per table."""
        with self._connect() as con:
            return {
                name: int(con.execute(f"SELECT count(*) FROM {'event_ids' if name == 'events' else name}").fetchone()[0])
                for name in TABLES
            }

    # -- retention -------------------------------------------------------------------------
    def apply_retention(self, max_age_days: dict[str, int | float | None]) -> dict[str, int]:
        """Delete rows older than ``max_age_days[table]`` days by the store's clock.

        Age is ``event.ingested`` for events and alerts (when the store wrote
        them, not when they happened: a replay of old logs is kept), and
        ``@timestamp`` for dead letters. A missing table, ``None`` or ``0``
        keeps rows forever. Returns the number of rows deleted per table.
        """
        out: dict[str, int] = {}
        now = _utc(self.clock())
        for name, days in max_age_days.items():
            t = self._table(name)
            if days is None or days <= 0:
                out[name] = 0
                continue
            cutoff = now - timedelta(days=float(days))
            if t.name == "events":
                out[name] = self._expire_events(cutoff)
                continue
            with self._connect() as con:
                row = con.execute(
                    f"DELETE FROM {t.name} WHERE {quote_ident(t.retention_column)} < ?", [cutoff]
                ).fetchone()
            out[name] = int(row[0]) if row else 0
        return out


    def _expire_events(self, cutoff: datetime) -> int:
        """Drop the ingest-date partitions before ``cutoff``'s day (exact to the day)."""
        day = cutoff.strftime("%Y-%m-%d")
        day_start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        with _path_lock(self.path), self._connect() as con:
            row = con.execute(
                f'DELETE FROM event_ids WHERE "{INGESTED}" < ?', [day_start]
            ).fetchone()
            for part in sorted(self.events_dir.glob("ingest_date=*")):
                if part.name.split("=", 1)[1] < day:
                    shutil.rmtree(part)
        return int(row[0]) if row else 0

    # -- incidents ------------------------------------------------------------------------
    # correlate.incidents builds them (pure); here they are stored, and the workflow
    # (status, assignee, notes) with its append-only history lives beside them.
    def _ensure_incident_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        cols = ", ".join(f"{quote_ident(f.name)} {_sql_type(f.type)}" for f in INCIDENT_QUERY_SCHEMA)
        con.execute(f"CREATE TABLE IF NOT EXISTS incidents ({cols}, doc VARCHAR, created TIMESTAMPTZ, "
                    "updated TIMESTAMPTZ)").fetchall()
        con.execute('CREATE TABLE IF NOT EXISTS incident_history ("incident.id" VARCHAR, seq BIGINT, '
                    '"at" TIMESTAMPTZ, "who" VARCHAR, "field" VARCHAR, "old" VARCHAR, "new" VARCHAR)').fetchall()

    def upsert_incidents(self, built: Iterable[dict], who: str = "taishi") -> int:
        """Store incidents as the builder made them (by ``id``); workflow fields are kept.

        A new incident starts as ``new`` (history: created). One that has new alerts
        while ``resolved`` is reopened (``acknowledged``), in the history as by ``who``.
        ``{"id", "merged_into"}`` marks an incident merged into another one. Returns
        how many incidents were new."""
        now = _utc(self.clock())
        with _path_lock(self.path), self._connect() as con:
            con.execute("BEGIN TRANSACTION").fetchall()  # one commit for the batch
            try:
                new = self._upsert_incidents(con, built, who, now)
                con.execute("COMMIT").fetchall()
            except Exception:
                con.execute("ROLLBACK").fetchall()
                raise
        return new

    def _upsert_incidents(self, con: duckdb.DuckDBPyConnection, built: Iterable[dict], who: str,
                          now: datetime) -> int:
        from correlate.incidents import apply_changes, upsert_changes

        new = 0
        names = [f.name for f in INCIDENT_QUERY_SCHEMA]
        for inc in built:
            iid = inc["id"]
            row = con.execute('SELECT status, "alert.count", merged_into FROM incidents WHERE id = ?',
                              [iid]).fetchone()
            stored = None if row is None else {"status": row[0], "alert.count": row[1], "merged_into": row[2]}
            action, changes = upsert_changes(stored, inc)  # the workflow's rules (correlate.incidents)
            if action == "skip":
                continue
            if action == "merge":
                con.execute("UPDATE incidents SET merged_into = ?, updated = ? WHERE id = ?",
                            [inc["merged_into"], now, iid]).fetchall()
            else:
                vals = _incident_columns(inc)
                doc = json.dumps({k: v for k, v in inc.items() if k not in ("status", "assignee", "history", "notes")},
                                 ensure_ascii=False, separators=(",", ":"))
                if action == "create":
                    vals.update({"status": "new", "assignee": None, "merged_into": None})
                    body = ", ".join(quote_ident(n) for n in names)
                    con.execute(f"INSERT INTO incidents ({body}, doc, created, updated) VALUES "
                                f"({', '.join('?' for _ in names)}, ?, ?, ?)",
                                [vals[n] for n in names] + [doc, now, now]).fetchall()
                    new += 1
                else:
                    built_names = [n for n in names if n not in ("status", "assignee", "merged_into")]
                    sets = ", ".join(f"{quote_ident(n)} = ?" for n in built_names)
                    con.execute(f"UPDATE incidents SET {sets}, doc = ?, updated = ? WHERE id = ?",
                                [vals[n] for n in built_names] + [doc, now, iid]).fetchall()
                    status, _, _ = apply_changes(row[0], None, None, changes)
                    if status != row[0]:
                        con.execute("UPDATE incidents SET status = ? WHERE id = ?", [status, iid]).fetchall()
            for field, old, new_value in changes:
                self._history(con, iid, now, who, field, old, new_value)
        return new

    @staticmethod
    def _history(con: duckdb.DuckDBPyConnection, iid: str, at: datetime, who: str, field: str,
                 old: Any, new: Any) -> None:
        con.execute(
            'INSERT INTO incident_history SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ?, ?, ? '
            'FROM incident_history WHERE "incident.id" = ?',
            [iid, at, who, field, None if old is None else str(old), None if new is None else str(new), iid],
        ).fetchall()

    def update_incident(self, iid: str, who: str, *, status: str | None = None, assignee: str | None = None,
                        set_assignee: bool = False, note: str | None = None) -> dict | None:
        """Apply a responder's change (status transition, assignee, note); None if no such
        incident. An illegal transition raises ``correlate.incidents.WorkflowError`` and
        changes nothing. Every change is appended to the incident's history."""
        from correlate.incidents import workflow_changes

        now = _utc(self.clock())
        with _path_lock(self.path), self._connect() as con:
            con.execute("BEGIN TRANSACTION").fetchall()  # read, check and write as one
            try:
                row = con.execute("SELECT status, assignee FROM incidents WHERE id = ?", [iid]).fetchone()
                if row is None:
                    con.execute("ROLLBACK").fetchall()
                    return None
                # the workflow's rules (correlate.incidents); an illegal transition raises here
                for field, old, new in workflow_changes(row[0], row[1], status=status, assignee=assignee,
                                                        set_assignee=set_assignee, note=note):
                    if field in ("status", "assignee"):
                        con.execute(f"UPDATE incidents SET {field} = ?, updated = ? WHERE id = ?",
                                    [new, now, iid]).fetchall()
                    self._history(con, iid, now, who, field, old, new)
                con.execute("COMMIT").fetchall()
            except Exception:
                con.execute("ROLLBACK").fetchall()
                raise
        return self.incident(iid)

    def incident(self, iid: str) -> dict | None:
        """One incident (built part, workflow, history, notes), or None."""
        rows = self._incident_rows("id = ?", [iid], None, include_merged=True)
        return rows[0] if rows else None

    def search_incidents(self, query: str | None = "", since: datetime | str | None = None,
                         status: str | Sequence[str] | None = None, limit: int | None = 100,
                         include_merged: bool = False) -> list[dict]:
        """Incidents matching a Lucene ``query`` over the incident fields (``title``, ``status``,
        ``severity``, ``risk_score``, ``threat.tactic.name``, ``entity.value``, ``alert.ids`` ...)
        last seen at or after ``since``, most recently active first."""
        now = self.clock()
        where, params = compile_query(query or "", INCIDENT_QUERY_SCHEMA, INCIDENT_DEFAULT_FIELDS, now=now)
        clauses = [f"({where})"]
        if since is not None:
            clauses.append("last_seen >= ?")
            params.append(parse_time_value(since, now))
        if status:
            sts = [status] if isinstance(status, str) else list(status)
            clauses.append("status IN (SELECT unnest(?::VARCHAR[]))")
            params.append(sts)
        return self._incident_rows(" AND ".join(clauses), params, limit, include_merged=include_merged)

    def _incident_rows(self, where: str, params: list, limit: int | None, include_merged: bool) -> list[dict]:
        from correlate.incidents import notes_of

        if not include_merged:
            where = f"({where}) AND merged_into IS NULL"
        sql = (f"SELECT id, status, assignee, merged_into, doc FROM incidents WHERE {where} "
               "ORDER BY last_seen DESC, id")
        if limit is not None:
            sql += " LIMIT ?"
            params = [*params, max(0, int(limit))]
        with self._connect() as con:
            rows = con.execute(sql, params).fetchall()
            ids = [r[0] for r in rows]
            hist = con.execute(
                'SELECT "incident.id", "at", "who", "field", "old", "new" FROM incident_history '
                'WHERE "incident.id" IN (SELECT unnest(?::VARCHAR[])) ORDER BY "incident.id", seq', [ids]
            ).fetchall() if ids else []
        by_id: dict[str, list] = {}
        for h in hist:
            by_id.setdefault(h[0], []).append(h[1:])
        out = []
        for iid, status, assignee, merged_into, doc in rows:
            inc = json.loads(doc)
            inc["status"], inc["assignee"] = status, assignee
            if merged_into:
                inc["merged_into"] = merged_into
            h = by_id.get(iid, [])
            inc["history"] = [{"at": _utc(at), "who": who, "field": f, "old": old, "new": new}
                              for at, who, f, old, new in h]
            inc["notes"] = notes_of(inc["history"])
            out.append(inc)
        return out

    def delete_unworked_incidents(self, keep: Iterable[str]) -> int:
        """Drop incidents nobody worked on (history holds only their creation) whose id
        is not in ``keep`` (a rebuild replaces them). Returns how many were dropped."""
        keep = list(keep)
        with _path_lock(self.path), self._connect() as con:
            doomed = [r[0] for r in con.execute(
                'SELECT id FROM incidents WHERE id NOT IN (SELECT unnest(?::VARCHAR[])) AND id NOT IN '
                '(SELECT "incident.id" FROM incident_history WHERE "field" <> \'status\' OR "new" <> \'new\' '
                'OR "old" IS NOT NULL)', [keep]).fetchall()]
            if doomed:
                con.execute("DELETE FROM incidents WHERE id IN (SELECT unnest(?::VARCHAR[]))", [doomed]).fetchall()
                con.execute('DELETE FROM incident_history WHERE "incident.id" IN (SELECT unnest(?::VARCHAR[]))',
                            [doomed]).fetchall()
        return len(doomed)

    def connections_between(self, ips: Sequence[str], since: datetime, until: datetime,
                            limit: int = 5000) -> list[dict]:
        """Observed connections (flow/conn events) whose both ends are in ``ips`` within
        ``[since, until]``, aggregated per (source, destination, port, protocol): first time,
        count, bytes. For traceback."""
        ips = sorted({i for i in ips if i})
        if len(ips) < 2:
            return []
        sql = (
            f'SELECT "source.ip", "destination.ip", "destination.port", '
            f'coalesce("network.transport", "network.protocol") AS proto, min("@timestamp") AS first, '
            f'count(*) AS n, sum(coalesce("network.bytes", coalesce("source.bytes", 0) + '
            f'coalesce("destination.bytes", 0))) AS bytes, min("event.id") AS eid '
            f"FROM {self._rel(TABLES['events'])} WHERE \"source.ip\" IN (SELECT unnest(?::VARCHAR[])) "
            f'AND "destination.ip" IN (SELECT unnest(?::VARCHAR[])) AND "source.ip" <> "destination.ip" '
            f'AND "@timestamp" BETWEEN ? AND ? AND "event.category" = \'network\' '
            f'AND ("event.type" IS NULL OR "event.type" = \'connection\') '
            f'GROUP BY 1, 2, 3, 4 ORDER BY first, 1, 2, 3 LIMIT ?'
        )
        with self._connect() as con:
            rows = con.execute(sql, [ips, ips, since, until, int(limit)]).fetchall()
        return [{"source.ip": s, "destination.ip": d, "destination.port": p, "network.protocol": proto,
                 "first": _utc(first), "count": int(n), "bytes": int(b or 0), "event.id": eid}
                for s, d, p, proto, first, n, b, eid in rows]

    def dataset_activity(self, since: datetime, until: datetime, lookback: datetime | None = None,
                         limit: int = 50) -> list[tuple[str | None, int, datetime | None, datetime | None]]:
        """Per ``event.dataset`` (None: events without one): the events with ``since <= @timestamp <
        until``, and the newest ``@timestamp`` and ``event.ingested`` of the events from ``lookback``
        (default ``since``) to ``until``; most events first, ties by dataset. The console's
        collector health (a source silent in the window still shows, with 0)."""
        t = TABLES["events"]
        where, params = self._where(t, "", min(lookback or since, since), until)
        sql = (f'SELECT "event.dataset", count(*) FILTER (WHERE "@timestamp" >= ?), max("@timestamp"), '
               f'max("event.ingested") FROM {self._rel(t)} WHERE {where} GROUP BY 1 '
               f'ORDER BY 2 DESC, 1 ASC NULLS LAST LIMIT ?')
        with self._connect() as con:
            rows = con.execute(sql, [since, *params, max(0, int(limit))]).fetchall()
        return [(ds, int(n), _utc(last) if last else None, _utc(ing) if ing else None) for ds, n, last, ing in rows]

    def last_seen(self, field: str, since: datetime | str | None = None, until: datetime | str | None = None,
                  limit: int = 10_000) -> dict[Any, datetime]:
        """The newest event ``@timestamp`` per value of ``field`` (a scalar event field; nulls left
        out), within the window if one is given: when an address or an asset was last seen."""
        t = TABLES["events"]
        col = resolve_field(field, t.query_schema)
        if pa.types.is_list(t.query_schema.field(col).type):
            raise ValueError(f"{col} is a list field")
        where, params = self._where(t, "", since, until)
        q = quote_ident(col)
        sql = (f'SELECT {q}, max("@timestamp") FROM {self._rel(t)} WHERE {where} AND {q} IS NOT NULL '
               f'GROUP BY 1 ORDER BY 1 LIMIT ?')
        with self._connect() as con:
            rows = con.execute(sql, [*params, max(0, int(limit))]).fetchall()
        return {v: _utc(last) for v, last in rows if last is not None}

    def flow_summary(self, query: str | None, since: datetime | str | None, until: datetime | str | None,
                     interval_s: int, top: int = 10, ports: int = 15, protocols: int = 15,
                     transports: int = 10) -> dict[str, Any]:
        """Figures of the events matching ``query`` in the window, for the flows view: ``totals``
        (rows, bytes, distinct source and destination addresses), ``volume`` [(bucket start in epoch
        seconds, rows, bytes)] per ``interval_s``, ``talkers`` [(source.ip, rows, bytes)] by bytes,
        ``ports`` [(destination.port, network.transport, rows, bytes)], ``protocols`` and
        ``transports`` [(value or "(unknown)", rows)]. Bytes: ``network.bytes``, else
        ``source.bytes + destination.bytes``. Ties by value; nulls last."""
        t = TABLES["events"]
        where, params = self._where(t, query, since, until)
        rel = self._rel(t)
        b = 'coalesce("network.bytes", coalesce("source.bytes", 0) + coalesce("destination.bytes", 0))'
        us = max(1, int(interval_s)) * 1_000_000
        with self._connect() as con:
            def q(select: str, tail: str, extra: list) -> list[tuple]:
                return con.execute(f"SELECT {select} FROM {rel} WHERE {where} {tail}", [*params, *extra]).fetchall()

            n, nb, ns, nd = q(f'count(*), coalesce(sum({b}), 0), count(DISTINCT "source.ip"), '
                              f'count(DISTINCT "destination.ip")', "", [])[0]
            vol = con.execute(f'SELECT (epoch_us("@timestamp") // ?) * ? // 1000000 AS b, count(*), '
                              f'coalesce(sum({b}), 0) FROM {rel} WHERE {where} AND "@timestamp" IS NOT NULL '
                              f'GROUP BY 1 ORDER BY 1', [us, us, *params]).fetchall()
            talk = q(f'"source.ip", count(*), coalesce(sum({b}), 0)',
                     'AND "source.ip" IS NOT NULL GROUP BY 1 ORDER BY 3 DESC, 2 DESC, 1 LIMIT ?', [int(top)])
            prt = q(f'"destination.port", "network.transport", count(*), coalesce(sum({b}), 0)',
                    'AND "destination.port" IS NOT NULL GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 NULLS LAST LIMIT ?',
                    [int(ports)])
            pro = q('coalesce("network.protocol", \'(unknown)\'), count(*)', "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
                    [int(protocols)])
            tra = q('coalesce("network.transport", \'(unknown)\'), count(*)', "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
                    [int(transports)])
        return {"totals": (int(n), int(nb), int(ns), int(nd)),
                "volume": [(int(x), int(c), int(y)) for x, c, y in vol],
                "talkers": [(ip, int(c), int(y)) for ip, c, y in talk],
                "ports": [(int(p), tr, int(c), int(y)) for p, tr, c, y in prt],
                "protocols": [(p, int(c)) for p, c in pro], "transports": [(p, int(c)) for p, c in tra]}

    def deadletter_summary(self, limit: int = 20) -> list[tuple[str | None, str | None, int]]:
        """Dead letters per (``taishi.source``, ``stage``), most first, ties by source and stage."""
        sql = (f'SELECT "taishi.source", "stage", count(*) FROM {self._rel(TABLES["deadletters"])} '
               f'GROUP BY 1, 2 ORDER BY 3 DESC, 1 ASC NULLS LAST, 2 ASC NULLS LAST LIMIT ?')
        with self._connect() as con:
            return [(s, g, int(n)) for s, g, n in con.execute(sql, [max(0, int(limit))]).fetchall()]

    def host_addresses(self, hosts: Sequence[str], since: datetime, until: datetime) -> dict[str, str]:
        """Resolve host names to addresses from the events: a host log line naming a client
        ``source.ip``/``source.port`` (sshd's "from A port P") pairs with the connection of that
        client port seen by a network sensor; the most frequent destination wins."""
        hosts = sorted({h for h in hosts if h})
        if not hosts:
            return {}
        rel = self._rel(TABLES["events"])
        sql = (
            f'WITH h AS (SELECT DISTINCT "host.name" AS host, "source.ip" AS sip, "source.port" AS sport '
            f'FROM {rel} WHERE "host.name" IN (SELECT unnest(?::VARCHAR[])) AND "source.ip" IS NOT NULL '
            f'AND "source.port" IS NOT NULL AND "@timestamp" BETWEEN ? AND ?), '
            f'c AS (SELECT "source.ip" AS sip, "source.port" AS sport, "destination.ip" AS dip FROM {rel} '
            f'WHERE "event.category" = \'network\' AND "destination.ip" IS NOT NULL AND "@timestamp" BETWEEN ? AND ?) '
            f'SELECT host, dip, count(*) AS n FROM h JOIN c USING (sip, sport) GROUP BY host, dip '
            f'ORDER BY host, n DESC, dip'
        )
        margin = timedelta(hours=1)
        with self._connect() as con:
            rows = con.execute(sql, [hosts, since - margin, until + margin, since - margin, until + margin]).fetchall()
        out: dict[str, str] = {}
        for host, dip, _ in rows:
            out.setdefault(host, dip)
        return out


_ALWAYS_WRITTEN = frozenset({"event.id", TIME, INGESTED})


def _ids_digest(ids: pa.ChunkedArray) -> str:
    """blake2b-96 of the ids joined by U+001F: names an events file by what it holds,
    so a retry after a crash rewrites the same file."""
    ids = ids.combine_chunks()
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(ids)], pa.int32()), ids), "\x1f")[0]
    return hashlib.blake2b(memoryview(joined.as_buffer()), digest_size=12).hexdigest()


def _write_parquet(path: Path, tbl: pa.Table) -> None:
    """Write a Parquet file atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(tbl, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _first_per_key(tbl: pa.Table, key: str) -> pa.Table:
    """``tbl`` without rows whose key already occurred earlier in it."""
    idx = pa.array(range(tbl.num_rows), pa.int64())
    firsts = (
        pa.table({"k": tbl.column(key), "i": idx})
        .group_by("k", use_threads=False)
        .aggregate([("i", "min")])
        .column("i_min")
    )
    return tbl.take(pc.take(firsts, pc.sort_indices(firsts)))


def _us(dt: datetime) -> int:
    dt = _utc(dt)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)


# -- incidents: the queryable columns (the whole incident is in ``doc``) ----------------------
INCIDENT_QUERY_SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("title", pa.string()),
    pa.field("status", pa.string()),
    pa.field("assignee", pa.string()),
    pa.field("severity", pa.string()),
    pa.field("risk_score", pa.int64()),
    pa.field("first_seen", TS),
    pa.field("last_seen", TS),
    pa.field("threat.tactic.name", pa.list_(pa.string())),
    pa.field("threat.technique.id", pa.list_(pa.string())),
    pa.field("rule.names", pa.list_(pa.string())),
    pa.field("entity.value", pa.list_(pa.string())),
    pa.field("alert.ids", pa.list_(pa.string())),
    pa.field("alert.count", pa.int64()),
    pa.field("closed", pa.bool_()),
    pa.field("merged_into", pa.string()),
])
INCIDENT_DEFAULT_FIELDS = ("title", "rule.names", "entity.value")


def _incident_columns(inc: dict) -> dict[str, Any]:
    from taishi.schema import parse_time

    return {
        "id": inc["id"], "title": inc.get("title"), "severity": inc.get("severity"),
        "risk_score": int(inc.get("risk_score") or 0),
        "first_seen": parse_time(inc["first_seen"]), "last_seen": parse_time(inc["last_seen"]),
        "threat.tactic.name": list(inc.get("threat.tactic.name") or []),
        "threat.technique.id": list(inc.get("threat.technique.id") or []),
        "rule.names": list(inc.get("rule.names") or []),
        "entity.value": [e["value"] for e in inc.get("entities") or []],
        "alert.ids": list(inc.get("alert.ids") or []),
        "alert.count": int(inc.get("alert.count") or 0),
        "closed": bool(inc.get("closed")),
    }
