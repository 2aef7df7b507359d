"""The incident stage of the embedded executor: :mod:`correlate.incidents` over the store.

The pipeline hands every alerts batch it stores to :meth:`IncidentStage.process`
(enriched with the CII asset columns); the built incidents are upserted into
the store (workflow fields untouched) and the builder's state is written to
``state_dir/incidents.ckpt`` (atomically) after each batch, before the store
stage commits its alerts offset. A crash before the checkpoint replays the
batch into the old state (same incidents, same ids); a crash after it
replays alerts the builder has seen already, which it ignores. So a restart
neither loses nor doubles an incident.

Streaming runs give the builder the detect stage's allowed lateness plus
:data:`SLACK_S` (correlation alerts are emitted when the detect watermark
passes their window, i.e. up to that much after single-event alerts of the
same time); bounded runs (``taishi ingest``) apply everything at the end.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pyarrow as pa

from correlate.incidents import DEFAULT_GAP_S, IncidentBuilder, merge_outputs
from taishi.bus import atomic_write

SLACK_S = 600.0
CHECKPOINT = "incidents.ckpt"


def builder_lateness(detect_lateness_s: float) -> float:
    return detect_lateness_s if not math.isfinite(detect_lateness_s) else detect_lateness_s + SLACK_S


class IncidentStage:
    def __init__(self, store, state_dir: Path, detect_lateness_s: float, gap_s: float = DEFAULT_GAP_S) -> None:
        self.store = store
        self.path = Path(state_dir) / CHECKPOINT
        lateness = builder_lateness(detect_lateness_s)
        self.builder = IncidentBuilder(gap_s, lateness)
        self.restore_error: str | None = None
        if self.path.exists():
            try:
                self.builder = IncidentBuilder.restore(self.path.read_bytes(), allowed_lateness_s=lateness)
            except (ValueError, KeyError, TypeError) as exc:  # an unreadable or foreign checkpoint: keep it
                # aside and start afresh (`taishi incidents rebuild` regroups the stored alerts)
                self.restore_error = f"{type(exc).__name__}: {exc}"
                self.path.replace(self.path.with_name(self.path.name + ".bad"))
        self.written = 0

    def process(self, alerts: pa.Table) -> int:
        """Group a batch of stored alerts into incidents; returns how many incidents changed."""
        out = self.builder.process(alerts)
        return self._write(out)

    def finish(self) -> int:
        """End of a bounded run: apply every buffered alert."""
        return self._write(self.builder.flush())

    def _write(self, out: list[dict]) -> int:
        if out:
            self.store.upsert_incidents(out)
            self.written += len(out)
        atomic_write(self.path, self.builder.snapshot())
        return len(out)


def rebuild(store, state_dir: Path, detect_lateness_s: float, enrich: Callable[[pa.Table], pa.Table] | None = None,
            gap_s: float = DEFAULT_GAP_S, progress: Callable[[int, int], None] | None = None,
            batch: int = 50_000) -> dict:
    """Rebuild every incident from the stored alerts (oldest first), keep the workflow of the
    incidents that survive, drop unworked ones that no longer exist, and replace the checkpoint."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    builder = IncidentBuilder(gap_s, builder_lateness(detect_lateness_s))
    total = store.count("alerts")
    done, outs = 0, []
    while True:
        t = store.search_alerts("", limit=batch, order="asc", offset=done)
        if t.num_rows == 0:
            break
        outs.append(builder.process(enrich(t) if enrich else t))
        done += t.num_rows
        if progress:
            progress(done, total)
        if t.num_rows < batch:
            break
    outs.append(builder.flush())
    out = merge_outputs(*outs)
    live = [i for i in out if "merged_into" not in i]
    new = store.upsert_incidents(out)
    dropped = store.delete_unworked_incidents([i["id"] for i in out])
    atomic_write(Path(state_dir) / CHECKPOINT, builder.snapshot())
    return {"alerts": done, "incidents": len(live), "new": new, "dropped": dropped,
            "open": builder.open_count, "late_alerts": builder.late_alerts}
