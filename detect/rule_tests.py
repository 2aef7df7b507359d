"""Rule tests kept beside the rules: ``foo.yml`` is tested by ``foo.tests.yml``.

Format::

    match:      # each case must raise the rule
      - {event.dataset: system.auth, event.outcome: failure}
    no_match:   # each case must not
      - {event.dataset: system.auth, event.outcome: success}

Events are dicts keyed by ECS dotted names (other keys become extra string
columns, for rules written against non-ECS fields). For a file whose rules
include a correlation, the correlation is the rule under test and each case
is a *list* of events (fed in order, then flushed). A case may also be
``{name: ..., event: {...}}`` / ``{name: ..., events: [...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import yaml

from correlate.sigma_correlation import CorrelationEngine
from detect.sigma import RuleSet
from taishi.schema import EVENT_FIELDS, EVENT_SCHEMA, _coerce


@dataclass
class RuleTestResult:
    rule: str  # rule file (and rule id)
    case: str  # "match[0]", "no_match[2]" or the case's name
    passed: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "case": self.case, "passed": self.passed, "detail": self.detail}


def events_from_dicts(rows: list[dict[str, Any]], prefix: str = "t") -> pa.Table:
    """ECS batch from dicts; unknown keys become string columns; missing event.id/@timestamp filled."""
    extra: list[str] = []
    for r in rows:
        for k in r:
            if k not in EVENT_FIELDS and k not in extra:
                extra.append(k)
    cols: dict[str, list] = {f.name: [None] * len(rows) for f in EVENT_SCHEMA}
    cols.update({k: [None] * len(rows) for k in extra})
    for i, r in enumerate(rows):
        for k, v in r.items():
            cols[k][i] = _coerce(v, EVENT_FIELDS[k]) if k in EVENT_FIELDS else (None if v is None else str(v))
        if cols["event.id"][i] is None:
            cols["event.id"][i] = f"{prefix}-{i}"
        if cols["@timestamp"][i] is None:
            cols["@timestamp"][i] = _coerce(1_700_000_000 + i, EVENT_FIELDS["@timestamp"])
    schema = pa.schema(list(EVENT_SCHEMA) + [pa.field(k, pa.string()) for k in extra])
    return pa.Table.from_pydict(cols, schema=schema)


def _cases(spec: dict, key: str) -> list[tuple[str, Any]]:
    out = []
    for i, c in enumerate(spec.get(key) or []):
        if isinstance(c, dict) and set(c) <= {"name", "event", "events"} and ("event" in c or "events" in c):
            out.append((str(c.get("name", f"{key}[{i}]")), c.get("events", c.get("event"))))
        else:
            out.append((f"{key}[{i}]", c))
    return out


def run_rule_tests(paths: Iterable[Path | str], ruleset: RuleSet | None = None) -> list[RuleTestResult]:
    """Run every ``*.tests.yml`` under ``paths`` against the rules loaded from ``paths``."""
    paths = [Path(p) for p in paths]
    rs = ruleset or RuleSet.load(paths)
    results: list[RuleTestResult] = []
    test_files: list[Path] = []
    for p in paths:
        cands = sorted(p.rglob("*")) if p.is_dir() else [p]
        test_files += [f for f in cands if f.name.lower().endswith((".tests.yml", ".tests.yaml"))]
    for tf in test_files:
        base = tf.name[: tf.name.lower().rindex(".tests.")]
        rule_file = next((c for c in (tf.with_name(base + ".yml"), tf.with_name(base + ".yaml")) if c.exists()), None)
        if rule_file is None:
            results.append(RuleTestResult(str(tf), "-", False, "no rule file beside the tests file"))
            continue
        try:
            spec = yaml.safe_load(tf.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            results.append(RuleTestResult(str(tf), "-", False, f"YAML error: {e}"))
            continue
        corrs = [c for c in rs.correlations if c.path == str(rule_file)]
        rules = [r for r in rs.rules if r.path == str(rule_file)]
        if not corrs and not rules:
            why = "; ".join(i.message for i in rs.check() if i.path == str(rule_file) and i.severity == "error")
            results.append(RuleTestResult(str(rule_file), "-", False, f"rule not loaded: {why}"))
            continue
        for key, want in (("match", True), ("no_match", False)):
            for name, case in _cases(spec, key):
                label = f"{rule_file}"
                try:
                    if corrs:
                        got, detail = _run_correlation_case(rs, corrs, case)
                    else:
                        got, detail = _run_rule_case(rs, [r.id for r in rules], case)
                except Exception as e:  # a broken case is a failed case, not a crash
                    results.append(RuleTestResult(label, name, False, f"{type(e).__name__}: {e}"))
                    continue
                ok = got == want
                results.append(
                    RuleTestResult(label, name, ok, "" if ok else f"expected {'a match' if want else 'no match'}, got {detail}")
                )
    return results


def _run_rule_case(rs: RuleSet, ids: list[str], case: Any) -> tuple[bool, str]:
    events = case if isinstance(case, list) else [case]
    t = events_from_dicts(events)
    m = rs.subset(ids).match(t)
    return m.num_rows > 0, f"{m.num_rows} match(es)"


def _run_correlation_case(rs: RuleSet, corrs: list, case: Any) -> tuple[bool, str]:
    if not isinstance(case, list):
        raise ValueError("a correlation test case is a list of events")
    t = events_from_dicts(case)
    eng = CorrelationEngine(corrs, allowed_lateness_s=0)
    needed = {rid for c in corrs for rid in c.rule_ids}
    sub = rs.subset(needed)
    m = sub.match(t)
    a = eng.process(t, m).alerts.num_rows + eng.flush().alerts.num_rows
    return a > 0, f"{a} correlation alert(s)"
