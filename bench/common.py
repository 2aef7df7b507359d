"""Helpers shared by the benchmark scripts: one-core pinning, peak RSS, printing."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TAISHI_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "bench" / "out"


def pin_one_core() -> None:
    """Run on one core: pin the process and keep Arrow/DuckDB to one thread."""
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    os.environ["TAISHI_DUCKDB_THREADS"] = "1"


def thread_cpu_s(tid: int | None) -> float:
    """CPU seconds (user + system) a thread of this process has used, from /proc (nan if unknown)."""
    try:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, TypeError):
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextmanager
def timed() -> Iterator[dict]:
    box: dict = {}
    t0 = time.perf_counter()
    yield box
    box["seconds"] = time.perf_counter() - t0


def report(name: str, figures: dict) -> None:
    """Print one benchmark's figures as a line a person reads and a JSON line a script reads."""
    pretty = ", ".join(f"{k}={v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 100 else f"{k}={v}" for k, v in figures.items())
    print(f"{name}: {pretty}")
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps({"bench": name, **figures}) + "\n")
    sys.stdout.flush()
