"""The detection stage: single-event Sigma rules + Sigma correlations, pure.

Batches and state in, batches and state out; the only IO is rule loading
(done before, in :meth:`detect.sigma.RuleSet.load`). The same object runs in
the embedded pipeline and inside Spark (``snapshot``/``restore`` carry the
correlation state between micro-batches or across a restart).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass

import pyarrow as pa

from correlate.sigma_correlation import CorrelationEngine
from detect.sigma import RuleSet
from taishi.schema import ALERT_SCHEMA


@dataclass
class DetectResult:
    alerts: pa.Table  # ALERT_SCHEMA: single-event alerts, then correlation alerts
    late: pa.Table  # input events that reached correlation behind the watermark


@dataclass
class DetectCounters:
    events: int = 0
    matches: int = 0
    alerts: int = 0
    correlation_alerts: int = 0
    late_events: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Detector:
    def __init__(self, ruleset: RuleSet, allowed_lateness_s: float = 60):
        self.ruleset = ruleset
        self.allowed_lateness_s = allowed_lateness_s
        self.engine = CorrelationEngine(ruleset.correlations, allowed_lateness_s)
        self.counters = DetectCounters()

    @property
    def watermark(self) -> datetime | None:
        """Correlation watermark (events older than this are late), or None before any event."""
        wm = self.engine.watermark_us
        return None if wm is None else datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=wm)

    def process(self, events: pa.Table) -> DetectResult:
        matches = self.ruleset.match(events)
        single = self.ruleset.to_alerts(events, matches)
        corr = self.engine.process(events, matches)
        c = self.counters
        c.batches += 1
        c.events += events.num_rows
        c.matches += matches.num_rows
        c.alerts += single.num_rows
        c.correlation_alerts += corr.alerts.num_rows
        c.late_events = self.engine.late_events + self.engine.untimed_events
        return DetectResult(pa.concat_tables([single, corr.alerts]), corr.late)

    def flush(self) -> DetectResult:
        corr = self.engine.flush()
        self.counters.correlation_alerts += corr.alerts.num_rows
        return DetectResult(corr.alerts, corr.late)

    def snapshot(self) -> bytes:
        # the engine's JSON is embedded as an object, not re-escaped as a string
        # (it can be tens of MB with a large bounded-mode buffer)
        counters = json.dumps(self.counters.as_dict()).encode()
        return b'{"counters":' + counters + b',"engine":' + self.engine.snapshot() + b"}"

    @classmethod
    def restore(cls, ruleset: RuleSet, data: bytes, allowed_lateness_s: float = 60) -> "Detector":
        state = json.loads(data)
        det = cls(ruleset, allowed_lateness_s)
        engine = state["engine"]  # an object; a string in snapshots before the embedding
        det.engine = CorrelationEngine.restore(
            ruleset.correlations, engine.encode() if isinstance(engine, str) else engine, allowed_lateness_s
        )
        det.counters = DetectCounters(**state["counters"])
        return det


__all__ = ["Detector", "DetectResult", "DetectCounters", "ALERT_SCHEMA"]
