"""The embedded bus: order, durability, torn tails, consumer offsets."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pytest

from taishi.bus import HEADER, Bus


def _tbl(start: int, n: int) -> pa.Table:
    return pa.table({"n": list(range(start, start + n))})


def _all(bus: Bus, topic: str, offset: int = 0) -> list[int]:
    return [v for b in bus.read(topic, offset) for v in b.table.column("n").to_pylist()]


def test_offsets_count_records_and_reads_resume_mid_batch(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    assert bus.produce("events", _tbl(0, 5)) == (0, 5)
    assert bus.produce("events", _tbl(5, 3)) == (5, 8)
    assert bus.end_offset("events") == 8
    assert _all(bus, "events", 3) == [3, 4, 5, 6, 7]
    first = next(iter(bus.read("events", 3)))
    assert (first.offset, first.next_offset) == (3, 5)


def test_reopen_keeps_log_and_committed_offsets(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    bus.produce("raw.zeek", _tbl(0, 10))
    bus.commit("parse", "raw.zeek", 4)
    bus2 = Bus(tmp_path)
    assert bus2.end_offset("raw.zeek") == 10
    assert bus2.committed("parse", "raw.zeek") == 4
    assert bus2.lag("parse", "raw.zeek") == 6
    assert [v for b in bus2.poll("parse", "raw.zeek") for v in b.table.column("n").to_pylist()] == list(range(4, 10))


def test_torn_tail_is_cut_and_appends_continue(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    bus.produce("events", _tbl(0, 4))
    bus.produce("events", _tbl(4, 4))
    seg = next((tmp_path / "topics" / "events").glob("*.seg"))
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # a crash in the middle of writing the second frame
        f.truncate(size - 7)
    bus2 = Bus(tmp_path)
    assert _all(bus2, "events") == [0, 1, 2, 3]
    assert bus2._topic("events").truncated_bytes > 0
    assert bus2.produce("events", _tbl(100, 2)) == (4, 6)
    assert _all(Bus(tmp_path), "events") == [0, 1, 2, 3, 100, 101]


def test_corrupt_crc_in_tail_is_cut(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    bus.produce("events", _tbl(0, 2))
    bus.produce("events", _tbl(2, 2))
    seg = next((tmp_path / "topics" / "events").glob("*.seg"))
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert _all(Bus(tmp_path), "events") == [0, 1]


def test_bad_topic_names_rejected(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    for name in ["../x", "a/b", "", "x" * 300]:
        with pytest.raises(ValueError):
            bus.produce(name, _tbl(0, 1))


def test_segments_roll_and_compact_after_all_groups_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("taishi.bus.SEGMENT_BYTES", 1)  # every frame opens a new segment
    bus = Bus(tmp_path)
    for i in range(4):
        bus.produce("events", _tbl(i * 10, 10))
    assert len(list((tmp_path / "topics" / "events").glob("*.seg"))) == 4
    bus.commit("store", "events", 25)
    bus.commit("detect", "events", 40)
    assert bus.compact() == {"events": 2}  # segments [0,10) and [10,20) are below min(25, 40)
    assert _all(Bus(tmp_path), "events", 20) == list(range(20, 40))


def _producer(root: str, n_batches: int) -> None:
    bus = Bus(Path(root))
    for i in range(n_batches):
        bus.produce("events", _tbl(i * 100, 100))


def test_killed_producer_leaves_a_clean_prefix(tmp_path: Path) -> None:
    proc = mp.get_context("fork").Process(target=_producer, args=(str(tmp_path), 10_000))
    proc.start()
    deadline = time.time() + 20
    while time.time() < deadline:
        segs = list((tmp_path / "topics" / "events").glob("*.seg")) if (tmp_path / "topics" / "events").exists() else []
        if segs and segs[0].stat().st_size > 50 * HEADER.size:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    values = _all(Bus(tmp_path), "events")
    assert values, "the producer wrote something before it was killed"
    assert values == list(range(len(values))), "what survives is an exact, ordered prefix"
    assert len(values) % 100 == 0


def test_meta_survives_reopen_and_last_meta_finds_newest(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    bus.produce("events", _tbl(0, 2), meta={"src": "raw.zeek", "next": 10})
    bus.produce("events", _tbl(2, 2), meta={"src": "raw.syslog", "next": 4})
    bus.produce("events", _tbl(4, 0), meta={"src": "raw.zeek", "next": 12})  # progress, no records
    bus.produce("events", _tbl(4, 0))  # no meta, nothing written
    bus2 = Bus(tmp_path)
    assert bus2.end_offset("events") == 4
    assert bus2.last_meta("events", "src", "raw.zeek") == {"src": "raw.zeek", "next": 12}
    assert bus2.last_meta("events", "src", "raw.syslog") == {"src": "raw.syslog", "next": 4}
    assert bus2.last_meta("events", "src", "raw.cef") is None
    assert _all(bus2, "events") == [0, 1, 2, 3]


def test_recent_frames_are_served_from_memory_and_read_the_same_as_the_log(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    bus.produce("events", _tbl(0, 5))
    bus.produce("events", _tbl(5, 5))
    cache = bus._cache
    assert cache.get("events", 0) is not None and cache.get("events", 5) is not None
    # the same records, offsets and slicing as a bus that reads everything from the segments
    cold = Bus(tmp_path, cache_bytes=0)
    assert cold._cache is None
    for offset in (0, 3, 5, 7):
        assert [(b.offset, b.table.to_pylist()) for b in bus.read("events", offset)] == [
            (b.offset, b.table.to_pylist()) for b in cold.read("events", offset)
        ]
    # release drops what every consumer has passed; reads then come from the log
    bus.release("events", 5)
    assert cache.get("events", 0) is None and cache.get("events", 5) is not None
    assert _all(bus, "events") == list(range(10))
    bus.release("events", 10)
    assert cache.used == 0 and not cache.tables
    assert _all(bus, "events", 2) == list(range(2, 10))


def test_cache_keeps_newest_frames_within_its_budget(tmp_path: Path) -> None:
    frame = _tbl(0, 100)
    size = frame.get_total_buffer_size()
    bus = Bus(tmp_path, cache_bytes=2 * size)
    for i in range(4):
        bus.produce("events", _tbl(i * 100, 100))
    assert sorted(base for _topic, base in bus._cache.tables) == [200, 300]
    assert bus._cache.used <= 2 * size
    assert _all(bus, "events") == list(range(400)), "evicted frames are read from the log"
    tiny = Bus(tmp_path / "tiny", cache_bytes=size // 2)
    tiny.produce("events", frame)
    assert not tiny._cache.tables, "a frame larger than the budget is not kept"
    assert _all(tiny, "events") == list(range(100))
