"""The embedded executor: collectors and stages over the embedded bus.

Topology (the same topics the cluster mode uses on Kafka)::

    files --collector--> raw.<format> --parse--> events --detect--> alerts
                                          \\            \\                \\
                                           deadletter    +--store--> DuckDB <--+

Each stage is a consumer group that reads a batch, writes its output to the
next topics, and only then commits its input offset. A crash between the two
re-runs the batch; outputs carry deterministic ids and the store upserts by
id, so a restart neither loses nor doubles anything (at-least-once delivery,
idempotent results).

The detect stage keeps correlation state. Its checkpoint holds that state
*and* the input offset it corresponds to, written atomically together, so
state and position can never disagree after a crash.

The stage functions hold no IO of their own beyond the bus and the store:
parsing is ``ingest.parsers``, detection ``detect.Detector``; the cluster
executor calls the same functions from Spark.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from detect import Detector
from detect.sigma import RuleSet
from ingest import files as ingest_files
from ingest.parsers import parse as parse_raw, set_hint
from ingest.sniff import sniff
from taishi import ids
from taishi.bus import (
    TOPIC_ALERTS,
    TOPIC_DEADLETTER,
    TOPIC_EVENTS,
    Bus,
    atomic_write,
    raw_topic,
)
from taishi.config import Config
from taishi.incidents import IncidentStage
from taishi.schema import EVENT_SCHEMA, deadletters_table
from taishi.store import Store

GROUP_PARSE = "parse"
GROUP_DETECT = "detect"
GROUP_STORE = "store"


@dataclass
class RunStats:
    """What one run did; the CLI prints it and ``--json`` emits it."""

    files: int = 0
    bytes_read: int = 0
    records: int = 0
    events: int = 0
    events_stored: int = 0
    alerts: int = 0
    alerts_stored: int = 0
    deadletters: int = 0
    late_events: int = 0
    by_level: Counter = field(default_factory=Counter)
    by_technique: Counter = field(default_factory=Counter)
    by_rule: Counter = field(default_factory=Counter)
    by_dataset: Counter = field(default_factory=Counter)
    deadletter_reasons: Counter = field(default_factory=Counter)
    alert_ids: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "bytes": self.bytes_read,
            "records": self.records,
            "events": self.events,
            "events_stored": self.events_stored,
            "alerts": len(self.alert_ids),
            "alerts_stored": self.alerts_stored,
            "deadletters": self.deadletters,
            "late_events": self.late_events,
            "alerts_by_level": dict(self.by_level),
            "alerts_by_technique": dict(self.by_technique),
            "alerts_by_rule": dict(self.by_rule),
            "events_by_dataset": dict(self.by_dataset),
            "deadletter_reasons": dict(self.deadletter_reasons),
            "seconds": round(self.seconds, 3),
        }


def _rules_fingerprint(ruleset: RuleSet) -> str:
    h = hashlib.sha256()
    for rid in sorted(r.id for r in ruleset.all_rules()):
        h.update(rid.encode())
    return h.hexdigest()[:16]


BOUNDED = float("inf")  # allowed lateness of a bounded run: windows close at the end of input
CHECKPOINT_EVERY_S = 30.0  # detect state; a crash replays at most this much (same alert ids)
STORE_BATCH = 131072  # rows per store write: fewer, larger Parquet files
# Raw records parsed as one batch (and so one events frame). Each batch pays
# fixed costs per column of the ~130-column event schema (building, LZ4 and
# IPC framing, an fsync, detection's per-batch set-up), so 64k-record batches
# cost about half as much per event as 8k ones.
PARSE_BATCH = 65536


class Pipeline:
    """The embedded executor.

    ``bounded=True`` is for finite input (``taishi ingest``, ``taishi demo``):
    correlation windows are evaluated in event-time order at the end of the
    run, so the order in which files are given does not matter and nothing is
    late. A streaming run (collectors tailing live input) uses the watermark
    with the configured allowed lateness instead.
    """

    def __init__(self, cfg: Config, ruleset: RuleSet | None = None, *, bounded: bool = False) -> None:
        self.cfg = cfg
        self.lateness = BOUNDED if bounded else float(cfg.allowed_lateness_s)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.bus = Bus(cfg.bus_dir)
        self.store = Store(cfg.data_dir, keep_open=True)
        self.ruleset = ruleset if ruleset is not None else RuleSet.load(cfg.rules)
        self.stats = RunStats()
        self._detect_ckpt = cfg.state_dir / "detect.ckpt"
        self._fingerprint = _rules_fingerprint(self.ruleset)
        self.detector, self._detect_offset = self._restore_detector()
        self._saved_at = time.monotonic()
        self.anomaly_models = _load_anomaly_models(cfg.data_dir / "models")
        self.anomaly = _anomaly_stage(self)  # None without models
        self._inventory, self._inventory_mtime = None, None
        self.incidents = IncidentStage(self.store, cfg.state_dir, self.lateness)  # alerts -> incidents

    # -- detect checkpoint: state and offset together ------------------------
    def _restore_detector(self) -> tuple[Detector, int]:
        lateness = self.lateness
        if self._detect_ckpt.exists():
            data = self._detect_ckpt.read_bytes()
            (hlen,) = struct.unpack(">I", data[:4])
            header = json.loads(data[4 : 4 + hlen])
            state = data[4 + hlen :]
            if header.get("rules") == self._fingerprint:
                det = Detector.restore(self.ruleset, state, allowed_lateness_s=lateness)
            else:  # another rule set: keep the position, start the windows afresh
                det = Detector(self.ruleset, allowed_lateness_s=lateness)
            return det, int(header["offset"])
        return Detector(self.ruleset, allowed_lateness_s=lateness), 0

    def _save_detector(self) -> None:
        header = json.dumps({"offset": self._detect_offset, "rules": self._fingerprint}).encode()
        atomic_write(self._detect_ckpt, struct.pack(">I", len(header)) + header + self.detector.snapshot())
        self._saved_at = time.monotonic()

    # -- collector ------------------------------------------------------------
    @staticmethod
    def file_key(path: Path) -> str:
        return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:24]

    def collect_file(
        self,
        path: Path,
        fmt: str = "auto",
        *,
        from_start: bool = False,
        progress: Callable[[int], None] | None = None,
        logsource: str | None = None,
    ) -> int:
        """Read a file onto ``raw.<format>``, resuming after what the bus already holds.

        The raw topic is the collector's checkpoint: every frame's meta names the
        file, a read *epoch* and the offset of the last record in it, written in
        the same fsync'd frame as the records. A restarted collector resumes
        after the newest such frame, so a crash at any point neither loses nor
        repeats a record. ``from_start`` opens a new epoch (a deliberate re-read;
        ids stay the same, so the store still holds each event once).

        ``logsource`` ("product/category/service") tags the file's events with
        a Sigma logsource, so rules for sources Taishi has no ECS mapping for
        (e.g. Windows process creation exported as JSON) apply to them.

        An unreadable file or an unknown format is a dead letter, not an error.
        """
        n = 0
        for n in self._collect(path, fmt, from_start=from_start, progress=progress, logsource=logsource):
            pass
        return n

    def _collect(
        self,
        path: Path,
        fmt: str = "auto",
        *,
        from_start: bool = False,
        progress: Callable[[int], None] | None = None,
        logsource: str | None = None,
    ) -> Iterator[int]:
        """``collect_file`` one frame at a time: yields the records produced so far
        after each frame, so a bounded run can parse a large file while reading it."""
        path = Path(path)
        self.stats.files += 1
        tag = set_hint({"taishi.logsource": check_logsource(logsource)}) if logsource else None
        try:
            st = path.stat()
            if fmt == "auto":
                fmt = sniff(path)
        except OSError as exc:
            self._deadletter_input(path, f"cannot read file: {exc}")
            yield 0
            return
        if fmt == "unknown":
            self._deadletter_input(path, "unknown format: no parser recognises this file (use --format)")
            yield 0
            return
        if fmt == "pcap":
            yield self._collect_pcap(path, st, from_start=from_start, progress=progress, logsource=logsource)
            return
        topic = raw_topic(fmt)
        key = self.file_key(path)
        prev = self.bus.last_meta(topic, "file", key)
        epoch = int(prev["epoch"]) if prev else 0
        last = int(prev["last"]) if prev else -1
        identity = f"{st.st_dev}:{st.st_ino}"
        replaced = prev is not None and (
            prev.get("inode", identity) != identity or (path.suffix != ".gz" and last >= st.st_size)
        )
        if prev and (from_start or replaced):  # a deliberate re-read, or a rotated/truncated file
            epoch, last = epoch + 1, -1
        n = 0
        try:
            for batch in ingest_files.read_records(path, fmt, start=max(last, 0), batch_size=self.cfg.batch_size):
                offsets = batch.column("log.offset")
                if last >= 0 and pc.min(offsets).as_py() <= last:  # the first batch after a resume
                    batch = batch.filter(pc.greater(offsets, last))
                    if batch.num_rows == 0:
                        continue
                    offsets = batch.column("log.offset")
                last = int(pc.max(offsets).as_py())
                if tag is not None:
                    if fmt == "zeek":
                        raise ValueError("--logsource does not apply to Zeek logs (their log type is their logsource)")
                    hints = batch.column("hint")
                    batch = batch.set_column(batch.schema.get_field_index("hint"), "hint", pc.fill_null(hints, tag))
                self.bus.produce(
                    topic, batch, meta={"file": key, "epoch": epoch, "last": last, "path": str(path), "inode": identity}
                )
                n += batch.num_rows
                if progress:
                    progress(last)
                yield n
        except OSError as exc:
            self._deadletter_input(path, f"read failed after {n} records: {exc}")
        self.stats.records += n
        self.stats.bytes_read += st.st_size
        yield n

    def _collect_pcap(
        self,
        path: Path,
        st: os.stat_result,
        *,
        from_start: bool = False,
        progress: Callable[[int], None] | None = None,
        logsource: str | None = None,
    ) -> int:
        """A packet capture: flow and application events straight onto ``events``.

        Packets are not text records, so there is no raw topic and no parse
        step: ``ingest.pcap.read_pcap`` (tshark) yields ECS event batches. The
        checkpoint is the events topic itself: the last frame written for a
        capture carries ``{"pcap": key, "done": true}``, and a finished capture
        (same device, inode and size) is not read again unless ``from_start``.
        A crash mid-capture re-reads it whole; event ids are deterministic and
        the store upserts by id, so nothing is doubled. Returns the packets read.
        """
        from ingest.pcap import read_pcap

        key = self.file_key(path)
        identity = f"{st.st_dev}:{st.st_ino}:{st.st_size}"
        prev = self.bus.last_meta(TOPIC_EVENTS, "pcap", key)
        if prev and prev.get("done") and prev.get("inode") == identity and not from_start:
            return 0
        tag = check_logsource(logsource) if logsource else None
        reader = read_pcap(path)
        meta = {"pcap": key, "path": str(path), "inode": identity, "done": False}
        for table in reader:
            if tag is not None:
                i = table.schema.get_field_index("taishi.logsource")
                table = table.set_column(i, "taishi.logsource", pa.repeat(pa.scalar(tag), table.num_rows))
            self.bus.produce(TOPIC_EVENTS, table, meta=meta)
            if progress:
                progress(reader.summary.packets)
        if reader.deadletters.num_rows:
            self.bus.produce(TOPIC_DEADLETTER, reader.deadletters)
        self.bus.produce(TOPIC_EVENTS, EVENT_SCHEMA.empty_table(), meta={**meta, "done": True})
        self.stats.records += reader.summary.packets
        self.stats.bytes_read += st.st_size
        return reader.summary.packets

    def _deadletter_input(self, path: Path, reason: str) -> None:
        now = datetime.now(timezone.utc)
        row = {
            "id": ids.deadletter_id(path.name, -1, "read", reason),
            "@timestamp": now,
            "taishi.source": path.name,
            "log.offset": -1,
            "stage": "read",
            "reason": reason,
            "event.original": str(path),
        }
        self.bus.produce(TOPIC_DEADLETTER, deadletters_table([row]))

    # -- stages ---------------------------------------------------------------
    def parse_position(self, topic: str) -> int:
        """Where parsing of ``topic`` resumes: after the newest events frame it produced.

        The events frame is written last (after the batch's dead letters) and
        carries the input offset it covers, so the events topic, not the
        committed offset alone, is the truth after a crash.
        """
        meta = self.bus.last_meta(TOPIC_EVENTS, "src", topic)
        return max(self.bus.committed(GROUP_PARSE, topic), int(meta["next"]) if meta else 0)

    def step_parse(self, max_records: int = PARSE_BATCH) -> int:
        """Parse up to about ``max_records`` raw records of each raw topic.

        Consecutive raw frames of one input are parsed together as one batch,
        which becomes one events frame whose meta names the input offset after
        it. Frames of different inputs are not mixed: a parser infers types
        over its batch (Zeek JSON), and one file's lines must not change how
        another's are read.
        """
        done = 0
        for topic in self.bus.topics():
            if not topic.startswith("raw."):
                continue
            fmt = topic[4:]
            tables: list[pa.Table] = []
            key = None
            end = None
            for batch in self.bus.read(topic, self.parse_position(topic), max_records):
                k = _input_key(batch.table)
                if tables and k != key:
                    self._parse_batch(topic, fmt, tables, end)
                    tables = []
                tables.append(batch.table)
                key = k
                end = batch.next_offset
                done += batch.table.num_rows
            if tables:
                self._parse_batch(topic, fmt, tables, end)
            if end is not None:  # progress is in the events frames' meta; the commit is for `taishi status`
                self.bus.commit(GROUP_PARSE, topic, end)
                self.bus.release(topic, end)
        return done

    def _parse_batch(self, topic: str, fmt: str, tables: list[pa.Table], end: int) -> None:
        raw = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        res = parse_raw(fmt, raw)
        self.bus.produce(TOPIC_DEADLETTER, res.deadletters)
        self.bus.produce(TOPIC_EVENTS, res.events, meta={"src": topic, "next": end})

    def step_detect(self) -> int:
        done = 0
        for batch in self.bus.read(TOPIC_EVENTS, self._detect_offset, PARSE_BATCH):
            self._detected(self.detector.process(batch.table))
            self._detect_offset = batch.next_offset
            done += batch.table.num_rows
            if time.monotonic() - self._saved_at > CHECKPOINT_EVERY_S:
                self._save_detector()
        if done:
            self._release_events()
        return done

    def _release_events(self) -> None:
        """Drop the bus's in-memory copies of events both detect and store are past."""
        self.bus.release(TOPIC_EVENTS, min(self._detect_offset, self.bus.committed(GROUP_STORE, TOPIC_EVENTS)))

    def step_anomaly(self) -> int:
        """Anomaly scoring on whole event-time windows (``detect.anomaly.windows``), its own checkpoint."""
        return self.anomaly.step() if self.anomaly is not None else 0

    def _detected(self, result) -> None:
        self.bus.produce(TOPIC_ALERTS, result.alerts)
        if result.late.num_rows:
            self.bus.produce(TOPIC_DEADLETTER, self._late_deadletters(result.late))

    def _late_deadletters(self, late: pa.Table) -> pa.Table:
        now = datetime.now(timezone.utc)
        wm = self.detector.watermark
        rows = []
        for ev in late.select(["event.id", "@timestamp", "taishi.source", "log.offset", "event.original"]).to_pylist():
            reason = (
                f"late event: @timestamp {ev['@timestamp']} is older than the correlation watermark "
                f"{wm} (allowed lateness {self.cfg.allowed_lateness_s}s); not counted in windows"
            )
            rows.append(
                {
                    "id": ids.deadletter_id(ev["taishi.source"] or "", ev["log.offset"] or 0, "correlate", ev["event.id"]),
                    "@timestamp": now,
                    "taishi.source": ev["taishi.source"],
                    "log.offset": ev["log.offset"],
                    "stage": "correlate",
                    "reason": reason,
                    "event.original": ev["event.original"],
                }
            )
        return deadletters_table(rows)

    def step_store(self) -> int:
        """Write what the topics hold to the store, in large batches, then commit."""
        done = 0
        for topic, write in (
            (TOPIC_EVENTS, self._store_events),
            (TOPIC_ALERTS, self._store_alerts),
            (TOPIC_DEADLETTER, self._store_deadletters),
        ):
            while True:
                tables, end = [], None
                for batch in self.bus.poll(GROUP_STORE, topic, STORE_BATCH):
                    tables.append(batch.table)
                    end = batch.next_offset
                if end is None:
                    break
                rows = sum(t.num_rows for t in tables)
                if rows:
                    write(pa.concat_tables(tables) if len(tables) > 1 else tables[0])
                self.bus.commit(GROUP_STORE, topic, end)
                if topic == TOPIC_EVENTS:
                    self._release_events()
                else:
                    self.bus.release(topic, end)
                done += rows
                if rows < STORE_BATCH:
                    break
        return done

    def _store_events(self, t: pa.Table) -> None:
        self.stats.events += t.num_rows
        t = self._enrich(t)
        self.stats.events_stored += self.store.write_events(t)
        for k, v in _value_counts(t, "event.dataset"):
            self.stats.by_dataset[k] += v

    def _enrich(self, t: pa.Table, *, alerts: bool = False) -> pa.Table:
        """Add the CII asset columns (``taishi.source.asset.*``, ``taishi.destination.asset.*``)
        once an inventory exists; it is re-read when its file changes. Alerts get
        :func:`taishi.enrich.enrich_alerts` (assets, source geo, risk score), as in cluster mode."""
        from compliance.inventory import Inventory, enrich
        from taishi.enrich import enrich_alerts

        try:
            mtime = Inventory.file(self.cfg.data_dir).stat().st_mtime_ns
        except FileNotFoundError:
            return enrich_alerts(t, None) if alerts else t
        if self._inventory_mtime != mtime:
            self._inventory, self._inventory_mtime = Inventory.open(self.cfg.data_dir), mtime
        return enrich_alerts(t, self._inventory) if alerts else enrich(t, self._inventory)

    def _store_alerts(self, t: pa.Table) -> None:
        t = self._enrich(t, alerts=True)  # stored, and grouped into incidents, with their assets
        self.stats.alerts_stored += self.store.write_alerts(t)
        self.incidents.process(t)  # checkpointed before the store commits this batch
        fresh = [i for i in t.column("id").to_pylist() if i not in self.stats.alert_ids]
        if not fresh:
            return
        self.stats.alert_ids.update(fresh)
        mask = pc.is_in(t.column("id"), value_set=pa.array(fresh))
        t = t.filter(mask)
        self.stats.alerts = len(self.stats.alert_ids)
        for k, v in _value_counts(t, "rule.level"):
            self.stats.by_level[k] += v
        for k, v in _value_counts(t, "rule.name"):
            self.stats.by_rule[k] += v
        for k, v in _value_counts(t, "threat.technique.id"):
            self.stats.by_technique[k] += v

    def _store_deadletters(self, t: pa.Table) -> None:
        self.stats.deadletters += t.num_rows
        self.store.write_deadletters(t)
        for reason in t.column("reason").to_pylist():
            self.stats.deadletter_reasons[_reason_kind(reason)] += 1
        self.stats.late_events += sum(1 for s in t.column("stage").to_pylist() if s == "correlate")

    def drain(self) -> None:
        """Run the stages until no topic has anything left to do."""
        while True:
            work = self.step_parse() + self.step_detect() + self.step_anomaly() + self.step_store()
            if not work:
                return

    def finish(self) -> None:
        """End of input: close every open correlation window, drain, apply retention."""
        self.drain()
        self._detected(self.detector.flush())
        if self.anomaly is not None:
            self.anomaly.finish()
        self._save_detector()
        self.drain()
        self.incidents.finish()
        self.retention_deleted = self.store.apply_retention(self.cfg.retention_days)

    def run_files(
        self,
        paths: Iterable[Path],
        fmt: str = "auto",
        *,
        from_start: bool = False,
        progress: Callable[[Path, int], None] | None = None,
        logsource: str | None = None,
    ) -> RunStats:
        t0 = time.perf_counter()
        pending = 0  # raw records collected since the last drain, over files: small files share batches
        for p in paths:
            seen = 0
            for n in self._collect(p, fmt, from_start=from_start, logsource=logsource,
                                   progress=(lambda pos, p=p: progress(p, pos)) if progress else None):
                pending += n - seen
                seen = n
                if pending >= PARSE_BATCH:  # parse while reading: raw frames are still in memory
                    self.drain()
                    pending = 0
        self.finish()  # drains the rest
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def close(self) -> None:
        self.store.close()


def _load_anomaly_models(model_dir: Path) -> list[tuple[str, object]]:
    """(model_version, AnomalyModel) for every artefact ``taishi model train`` left in ``model_dir``.

    Scoring is optional: without scikit-learn (the [anomaly] extra) or models, none are loaded.
    """
    sidecars = sorted(model_dir.glob("*.json")) if model_dir.is_dir() else []
    if not sidecars:
        return []
    try:
        from detect.anomaly.model import AnomalyModel
    except ImportError:
        return []
    out = []
    for side in sidecars:
        meta = json.loads(side.read_text())
        out.append((meta.get("model_version") or side.stem, AnomalyModel.load(side)))
    return out


def _anomaly_stage(p: "Pipeline"):
    if not p.anomaly_models:
        return None
    from detect.anomaly.windows import AnomalyStage

    return AnomalyStage(p.bus, p.anomaly_models, p.cfg.state_dir / "anomaly.ckpt", p.lateness,
                        start_offset=p._detect_offset, max_records=p.cfg.batch_size * 4)


def anomaly_alerts(model, events: pa.Table, version: str) -> pa.Table:
    from detect.anomaly.model import anomaly_alerts as _alerts

    return _alerts(model, events, version)


def _input_key(raw: pa.Table) -> tuple:
    """What a raw frame's records came from: its schema and first record's source and path."""
    first = raw.slice(0, 1).select([c for c in ("taishi.source", "log.file.path") if c in raw.column_names]).to_pylist()
    return (raw.schema, tuple(first[0].values()) if first else ())


def _value_counts(t: pa.Table, column: str) -> list[tuple[str, int]]:
    if column not in t.column_names or t.num_rows == 0:
        return []
    col = t.column(column)
    if pa.types.is_list(col.type):
        col = pc.list_flatten(col)
    vc = pc.value_counts(col)
    return [(v["values"], v["counts"]) for v in vc.to_pylist() if v["values"] is not None]


def _reason_kind(reason: str) -> str:
    """The reason's first clause ('invalid JSON', 'late event' ...), for summary counts."""
    return reason.split(":", 1)[0].strip()[:60]


_LOGSOURCE = re.compile(r"^[a-z0-9_.-]*/[a-z0-9_.-]*/[a-z0-9_.-]*$")


def check_logsource(text: str) -> str:
    """A Sigma logsource as ``product/category/service`` (parts may be empty)."""
    if not _LOGSOURCE.match(text):
        raise ValueError(f"logsource {text!r}: expected product/category/service, e.g. windows/process_creation/")
    return text


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files, and the files in directories (sorted, hidden and sidecar files skipped)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(
                f
                for f in sorted(p.rglob("*"))
                if f.is_file() and not f.name.startswith(".") and not f.name.endswith((".labels.json", ".md", ".config"))
            )
        else:
            out.append(p)
    return out
