"""Compliance checks as data, evaluated by one generic engine.

Each ``rules/compliance/*.yaml`` file is one check tied to a GB/T 22239-2019
item. The engine knows four *kinds* and nothing about individual checks:

``count``
    Ordered ``outcomes``: each a Lucene ``query`` (ANDed with the target's
    tie clause), a comparison of its count over the ``window`` (``op``:
    gt/gte/lt/lte/eq/ne against ``value``), and the verdict and reason when it
    holds. The first outcome that holds decides; ``otherwise`` when none does.
``coverage``
    Of the target's ``population`` records in the ``window``, the share that
    carry every one of ``required`` (an entry may be a list of alternatives:
    any one present will do) must be ``>= min_ratio``; an empty population is
    "no evidence".
``config``
    A setting of the running configuration (dotted path into
    :class:`taishi.config.Config`, e.g. ``retention_days.events``) compared
    with ``op``/``value``; ``scope: global``.
``time_delta``
    The median of ``a - b`` (two time fields, seconds) over the target's
    ``query`` records must lie within ``max_abs_seconds``; none -> "no evidence".

Common keys: ``id``, ``title``, ``gbt22239`` (the item, e.g. ``8.1.4.3 a``),
``requirement`` (its text), ``references``, ``level`` (the MLPS level the item
belongs to; targets in systems of a lower level are "not applicable"),
``scope`` (``asset``: tie on the asset's addresses / hostname; ``system``:
tie on the system's CIDRs; ``global``: no tie), ``match`` (the address fields
that tie an event to the target), ``match_hostname`` (fields compared with the
asset's hostname), ``applies_to`` (``roles``: asset roles it applies to),
``window`` (``24h``, ``7d``; ``null`` for none), ``sample_fields``.

Verdicts: ``pass``, ``fail``, ``not_applicable``, ``no_evidence``, each with
evidence: the full Lucene query, the time window, the counts and up to five
sample records (event id, time and the sample fields).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

import yaml

from compliance import _sql
from compliance.inventory import Asset, Inventory, System
from taishi.config import REPO_ROOT, Config
from taishi.store import Store

RULES_DIR = REPO_ROOT / "rules" / "compliance"
VERDICTS = ("pass", "fail", "not_applicable", "no_evidence")
KINDS = ("count", "coverage", "config", "time_delta")
SCOPES = ("asset", "system", "global")
OPS = {
    "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
}
SAMPLES = 5
_DEFAULT_SAMPLE_FIELDS = ("event.dataset", "source.ip", "destination.ip", "destination.port")


class CheckError(ValueError):
    pass


@dataclass
class Check:
    id: str
    title: str
    gbt22239: str
    kind: str
    scope: str
    level: int = 3
    requirement: str = ""
    references: list[str] = field(default_factory=list)
    match: list[str] = field(default_factory=list)
    match_hostname: list[str] = field(default_factory=list)
    applies_to: dict[str, Any] = field(default_factory=dict)
    window: str | None = None
    sample_fields: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)  # the kind's own keys
    path: str = ""


@dataclass
class Verdict:
    check_id: str
    title: str
    gbt22239: str
    scope: str
    target: str  # asset id, system id or "*"
    system_id: str | None
    verdict: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COMMON = {f for f in Check.__dataclass_fields__} - {"spec", "path"}
_KIND_KEYS = {
    "count": {"outcomes", "otherwise"},
    "coverage": {"population", "required", "min_ratio"},
    "config": {"setting", "op", "value"},
    "time_delta": {"query", "a", "b", "max_abs_seconds"},
}


def _parse_window(w: str | None) -> timedelta | None:
    if w in (None, ""):
        return None
    m = re.fullmatch(r"(\d+)\s*([smhd])", str(w).strip())
    if not m:
        raise CheckError(f"window {w!r}: expected N followed by s, m, h or d")
    return timedelta(seconds=int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


def _check_verdict(v: Any, where: str) -> None:
    if not isinstance(v, dict) or v.get("verdict") not in VERDICTS:
        raise CheckError(f"{where}: verdict must be one of {', '.join(VERDICTS)}")


def load_check(path: Path) -> Check:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise CheckError(f"{path}: expected a mapping")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise CheckError(f"{path}: kind must be one of {', '.join(KINDS)}")
    unknown = set(doc) - _COMMON - _KIND_KEYS[kind]
    if unknown:
        raise CheckError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    for k in ("id", "title", "gbt22239", "scope"):
        if not doc.get(k):
            raise CheckError(f"{path}: {k} is required")
    if doc["scope"] not in SCOPES:
        raise CheckError(f"{path}: scope must be one of {', '.join(SCOPES)}")
    _parse_window(doc.get("window"))
    spec = {k: doc[k] for k in _KIND_KEYS[kind] if k in doc}
    if kind == "count":
        if not spec.get("outcomes"):
            raise CheckError(f"{path}: outcomes are required")
        for i, o in enumerate(spec["outcomes"]):
            _check_verdict(o, f"{path}: outcome {i + 1}")
            if o.get("op", "gt") not in OPS or "query" not in o:
                raise CheckError(f"{path}: outcome {i + 1} needs a query and an op of {', '.join(OPS)}")
        _check_verdict(spec.get("otherwise", {"verdict": "no_evidence"}), f"{path}: otherwise")
    elif kind == "config" and spec.get("op") not in (*OPS, "exists"):
        raise CheckError(f"{path}: op must be one of {', '.join(OPS)}, exists")
    common = {k: doc[k] for k in _COMMON if k in doc}
    return Check(**common, spec=spec, path=str(path))


def load_checks(paths: Iterable[Path] | None = None) -> list[Check]:
    """Every check under ``rules/compliance`` (or the given files/dirs), by id."""
    files: list[Path] = []
    for p in (list(paths) if paths else [RULES_DIR]):
        p = Path(p)
        files.extend(sorted(p.glob("*.yaml")) if p.is_dir() else [p])
    checks = [load_check(f) for f in files]
    ids = [c.id for c in checks]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise CheckError(f"duplicate check id(s): {', '.join(sorted(dup))}")
    return sorted(checks, key=lambda c: c.id)


# ------------------------------------------------------------------------------ targets


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tie(check: Check, nets: list[str], hostname: str = "") -> str | None:
    """The Lucene clause tying an event to a target; None: nothing to tie on."""
    terms = [f"{f}:{_q(n)}" for f in check.match for n in nets]
    if hostname:
        terms += [f"{f}:{_q(hostname)}" for f in check.match_hostname]
    return " OR ".join(terms) if terms else None


def _and(*parts: str | None) -> str:
    ps = [p for p in parts if p and p.strip() not in ("", "*")]
    return " AND ".join(f"({p})" for p in ps) if ps else "*"


@dataclass
class _Target:
    name: str
    system: System | None
    asset: Asset | None
    tie: str | None


def _targets(check: Check, inv: Inventory, systems: set[str] | None) -> list[_Target]:
    sys_list = [s for s in sorted(inv.systems.values(), key=lambda s: s.cii_id)
                if systems is None or s.cii_id in systems]
    if check.scope == "global":
        return [_Target("*", None, None, None)]
    if check.scope == "system":
        return [_Target(s.cii_id, s, None, _tie(check, s.cidrs)) for s in sys_list]
    return [_Target(a.asset_id, s, a, _tie(check, a.ips, a.hostname))
            for s in sys_list for a in inv.assets_of(s.cii_id)]


# ------------------------------------------------------------------------------ evaluation


class Engine:
    def __init__(self, store: Store, inventory: Inventory, config: Config | None = None,
                 now: datetime | None = None):
        self.store, self.inv = store, inventory
        self.config = config or Config()
        self.now = now or store.clock()

    def evaluate(self, checks: list[Check], *, level: int = 3,
                 systems: Iterable[str] | None = None) -> list[Verdict]:
        """Verdicts of the ``checks`` whose item belongs to MLPS ``level`` or below,
        per target, in check order."""
        sysset = set(systems) if systems is not None else None
        out: list[Verdict] = []
        for c in checks:
            if c.level > level:
                continue
            for t in _targets(c, self.inv, sysset):
                out.append(self.evaluate_one(c, t))
        return out

    def evaluate_one(self, c: Check, t: _Target) -> Verdict:
        def v(verdict: str, reason: str, **evidence: Any) -> Verdict:
            return Verdict(c.id, c.title, c.gbt22239, c.scope, t.name,
                           t.system.cii_id if t.system else None, verdict, reason, evidence)

        if t.system is not None and t.system.mlps_level < c.level:
            return v("not_applicable", f"system {t.system.cii_id} is MLPS level {t.system.mlps_level}; "
                                       f"this is a level-{c.level} requirement")
        roles = c.applies_to.get("roles")
        if roles and t.asset is not None and t.asset.role not in roles:
            return v("not_applicable", f"asset role {t.asset.role or '(none)'!r} is not one of {', '.join(roles)}")
        if c.scope != "global" and t.tie is None:
            return v("no_evidence", "the target has no address or hostname to match events on")
        return getattr(self, f"_{c.kind}")(c, t, v)

    # -- helpers ---------------------------------------------------------------------------
    def _span(self, c: Check) -> tuple[datetime | None, datetime | None]:
        w = _parse_window(c.window)
        if w is None:
            return None, None
        return self.now - w, self.now + timedelta(microseconds=1)

    def _samples(self, query: str, since: datetime | None, until: datetime | None,
                 c: Check) -> list[dict[str, Any]]:
        rows = self.store.search_events(query, since, until, limit=SAMPLES).to_pylist()
        keep = ("event.id", "@timestamp", *(c.sample_fields or _DEFAULT_SAMPLE_FIELDS))
        return [{k: (r[k].isoformat() if isinstance(r.get(k), datetime) else r.get(k)) for k in keep}
                for r in rows]

    def _window_evidence(self, since: datetime | None, until: datetime | None) -> dict[str, Any]:
        return {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None}

    # -- kinds -----------------------------------------------------------------------------
    def _count(self, c: Check, t: _Target, v) -> Verdict:
        since, until = self._span(c)
        counts: dict[str, int] = {}
        for o in c.spec["outcomes"]:
            q = _and(t.tie, o["query"])
            n = self.store.count("events", q, since, until)
            counts[q] = n
            if OPS[o.get("op", "gt")](n, o.get("value", 0)):
                samples = self._samples(q, since, until, c) if n else []
                return v(o["verdict"], o.get("reason", "").format(count=n), query=q, counts=counts,
                         samples=samples, **self._window_evidence(since, until))
        other = c.spec.get("otherwise", {"verdict": "no_evidence", "reason": "no matching records"})
        return v(other["verdict"], other.get("reason", ""), query=_and(t.tie, c.spec["outcomes"][0]["query"]),
                 counts=counts, samples=[], **self._window_evidence(since, until))

    def _coverage(self, c: Check, t: _Target, v) -> Verdict:
        since, until = self._span(c)
        pop_q = _and(t.tie, c.spec.get("population", "*"))
        total = self.store.count("events", pop_q, since, until)
        req = [r if isinstance(r, list) else [r] for r in c.spec.get("required", [])]
        complete = " AND ".join("(" + " OR ".join(f"_exists_:{f}" for f in alts) + ")" for alts in req) or "*"
        ev = self._window_evidence(since, until)
        if total == 0:
            return v("no_evidence", "no records of the target in the window", query=pop_q,
                     counts={"population": 0}, samples=[], **ev)
        full_q = _and(pop_q, complete)
        full = self.store.count("events", full_q, since, until)
        ratio = full / total
        need = float(c.spec.get("min_ratio", 1.0))
        missing_q = f"({pop_q}) AND NOT ({complete})"
        samples = self._samples(missing_q, since, until, c) if full < total else []
        ok = ratio >= need
        reason = (f"{full} of {total} records ({ratio:.1%}) carry "
                  + ", ".join("/".join(a) for a in req) + f"; required {need:.0%}")
        return v("pass" if ok else "fail", reason, query=full_q, population_query=pop_q,
                 counts={"population": total, "complete": full, "ratio": round(ratio, 4)},
                 samples=samples, samples_are="records missing a required field", **ev)

    def _config(self, c: Check, t: _Target, v) -> Verdict:
        path = str(c.spec["setting"])
        cur: Any = self.config
        for part in path.split("."):
            if isinstance(cur, dict):
                cur = cur.get(part)
            else:
                cur = getattr(cur, part, None)
            if cur is None:
                break
        src = str(self.config.source) if self.config.source else "(defaults: no taishi.yaml)"
        op, want = c.spec["op"], c.spec.get("value")
        ev = {"setting": path, "value": cur, "expected": f"{op} {want}" if op != "exists" else "set",
              "config_file": src}
        if op == "exists":
            ok = cur not in (None, "", {}, [])
        else:
            ok = cur is not None and OPS[op](cur, want)
        reason = f"{path} = {cur!r} in {src}; required {op} {want}" if op != "exists" else f"{path} = {cur!r}"
        return v("pass" if ok else "fail", reason, **ev)

    def _time_delta(self, c: Check, t: _Target, v) -> Verdict:
        since, until = self._span(c)
        a, b = c.spec.get("a", "event.ingested"), c.spec.get("b", "@timestamp")
        q = _and(t.tie, c.spec.get("query", "*"), f"_exists_:{a}", f"_exists_:{b}")
        tbl = _sql.select(self.store, "events",
                          f'epoch_us("{a}") - epoch_us("{b}") AS d, "event.id" AS id', q, since, until,
                          f'ORDER BY "{b}" DESC LIMIT 10000')
        ev = self._window_evidence(since, until)
        deltas = [d / 1e6 for d in tbl.column("d").to_pylist() if d is not None]
        if not deltas:
            return v("no_evidence", f"no records of the target with both {a} and {b}", query=q,
                     counts={"records": 0}, samples=[], **ev)
        med = statistics.median(deltas)
        limit = float(c.spec.get("max_abs_seconds", 60))
        ok = abs(med) <= limit
        samples = [{"event.id": i, "delta_s": d / 1e6} for i, d in
                   zip(tbl.column("id").to_pylist()[:SAMPLES], tbl.column("d").to_pylist()[:SAMPLES])]
        reason = (f"median {a} - {b} = {med:+.1f} s over {len(deltas)} records; "
                  f"allowed +/-{limit:g} s")
        return v("pass" if ok else "fail", reason, query=q,
                 counts={"records": len(deltas), "median_s": round(med, 3),
                         "min_s": round(min(deltas), 3), "max_s": round(max(deltas), 3)},
                 samples=samples, **ev)


def evaluate(store: Store, inventory: Inventory, config: Config | None = None, *,
             level: int = 3, systems: Iterable[str] | None = None,
             checks: list[Check] | None = None, now: datetime | None = None) -> list[Verdict]:
    """Load the shipped checks (or use ``checks``) and evaluate them."""
    return Engine(store, inventory, config, now).evaluate(
        checks if checks is not None else load_checks(), level=level, systems=systems)
