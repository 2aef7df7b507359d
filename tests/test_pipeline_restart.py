"""A restart neither loses nor doubles anything.

``taishi ingest`` is killed with SIGKILL at several points of a real run and
started again; the store must then hold exactly what one uninterrupted run
stores: the same event ids and the same alert ids, each once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taishi.store import Store

pytestmark = pytest.mark.slow


def _taishi(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "taishi.cli", "--data-dir", str(data_dir), *args]


def _ids(data_dir: Path) -> tuple[list[str], list[str], int]:
    store = Store(data_dir)
    try:
        stats = store.stats()
        events = store.search_events("", limit=10_000_000).column("event.id").to_pylist()
        alerts = store.search_alerts("", limit=1_000_000).column("id").to_pylist()
    finally:
        store.close()
    assert stats["events"] == len(events)
    return sorted(events), sorted(alerts), stats["deadletters"]


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> list[Path]:
    """~70k real Zeek conn records plus the loghub sshd log (brute force) and a bad line."""
    d = tmp_path_factory.mktemp("input")
    conn = (shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled").read_text()
    header = [l for l in conn.splitlines() if l.startswith("#") and not l.startswith("#close")]
    body = [l for l in conn.splitlines() if l and not l.startswith("#")]
    out = d / "conn.log"
    with open(out, "w") as f:
        f.write("\n".join(header) + "\n")
        for _ in range(6):
            f.write("\n".join(body) + "\n")
        f.write("this line is not zeek\n")
    auth = d / "auth.log"
    auth.write_text((shared_data / "logs/loghub/OpenSSH/OpenSSH_2k.log").read_text())
    return [out, auth]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, big_input: list[Path]) -> tuple[list[str], list[str], int]:
    d = tmp_path_factory.mktemp("reference")
    subprocess.run(_taishi(d, "ingest", "--json", *map(str, big_input)), check=True, capture_output=True)
    return _ids(d)


def test_reference_run_has_events_alerts_and_deadletters(reference, big_input: list[Path]) -> None:
    events, alerts, deadletters = reference
    conn_records = sum(1 for l in big_input[0].read_text().splitlines() if l and not l.startswith("#"))
    auth_lines = sum(1 for l in big_input[1].read_text().splitlines() if l.strip())
    # every record is an event or a dead letter; the one bad conn line is the dead letter
    assert len(events) + deadletters >= conn_records + auth_lines - 1
    assert deadletters >= 1
    assert len(set(events)) == len(events)
    assert alerts, "the sshd brute force in the loghub sample raises alerts"


@pytest.mark.parametrize("kill_after_s", [0.4, 1.0, 2.0, 3.5])
def test_sigkill_mid_ingest_then_restart_equals_one_clean_run(
    tmp_path: Path, big_input: list[Path], reference, kill_after_s: float
) -> None:
    d = tmp_path / "data"
    proc = subprocess.Popen(_taishi(d, "ingest", "--json", *map(str, big_input)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after_s)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # restart: the same command resumes from the file checkpoints and stage offsets
    subprocess.run(_taishi(d, "ingest", "--json", *map(str, big_input)), check=True, capture_output=True)
    events, alerts, deadletters = _ids(d)
    ref_events, ref_alerts, ref_dl = reference
    assert events == ref_events, "no event lost, none doubled"
    assert alerts == ref_alerts, "the same alerts, with the same ids"
    assert deadletters == ref_dl
