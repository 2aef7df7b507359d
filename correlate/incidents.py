"""Incidents: alerts grouped by entity and time, following an attack as it moves.

Pure and streaming, like :mod:`correlate.sigma_correlation`:
``IncidentBuilder.process(alerts)`` takes a batch of alerts (ALERT_SCHEMA,
optionally with the ``taishi.{source,destination}.asset.*`` enrichment
columns) and returns the incidents it created or changed, as JSON-ready dicts
(the agreed incident shape minus the workflow fields, which the store owns).
``snapshot()`` / ``restore()`` carry the state, so a restart continues open
incidents; :func:`build` is the same thing as one function, state in,
alerts in -> state out, incidents out, for a Spark
``applyInPandasWithState`` job (one group: incidents link across entities).

Grouping
--------
Each alert has *actor* entities (``source.ip``, the source CII asset) and
*target* entities (``destination.ip``, the destination asset, ``host.name``
of host logs, the registered domain of a DNS question). User names are
recorded but never link on their own: ``root`` and ``admin`` are tried on
every host. An alert joins an open incident when

* its actor is an actor of the incident (the same attacker), or
* its actor is a *target* of the incident: the attack moved on (the
  brute-forced jump host now connects to the database server), or
* its target is an actor of the incident (a victim calling back), or
* it has no actor and its target is a target of the incident (a host log
  on a host already under attack: ``sudo`` on the jump host).

If an alert matches several open incidents they are merged into the oldest
(by first alert, then id); the others are emitted once with ``merged_into``.
An incident closes when nothing joined it for ``gap_s`` seconds of event time.

Time model (determinism)
------------------------
Alerts wait in a buffer until the watermark (max ``@timestamp`` seen minus
``allowed_lateness_s``) passes them and are applied in ``(@timestamp, id)``
order, so any cut of the same alerts into batches gives the same incidents
with the same ids. ``allowed_lateness_s = inf`` is bounded input: nothing
is applied before :meth:`IncidentBuilder.flush`. A late alert (older than the
watermark) is not lost: it is applied at once, in arrival order (counted in
``late_alerts``). Alerts seen already (a replay after a crash) are ignored.

Ids: ``incident id = H("in1", id of its first alert)`` (:func:`incident_id`);
a merged incident keeps the id of the oldest part.

Severity
--------
``risk_score`` (0-100) = highest rule level (critical 60, high 45, medium 30,
low 15, informational 5) + 6 per distinct kill-chain tactic (max 30) + the
criticality of the most protected CII asset involved (MLPS level 3: +10,
4: +15, 5: +20) + 2 x log2(alert count) (max 10). ``severity`` is the higher
of the score's band (>= 80 critical, >= 60 high, >= 35 medium, else low) and
the highest rule level; an asset of MLPS level 4 or 5 raises it one step.

Tactics come from the rules' ``attack.*`` tags (enterprise and ICS matrices)
and are listed in kill-chain order (:data:`KILL_CHAIN`).

State is bounded: at most ``max_open`` open incidents (the least recently
active closes first), ``MAX_ALERT_IDS`` alert ids and ``MAX_ENTITIES``
entities and ``MAX_EDGES`` graph edges (aggregated per source, target and
rule; the earliest kept, ``graph.truncated`` says so) per incident; counts
stay exact.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import pyarrow as pa

from taishi.ids import _digest
from taishi.schema import parse_time

SNAPSHOT_VERSION = 1
DEFAULT_GAP_S = 3600.0
MAX_ALERT_IDS = 5000
MAX_ENTITIES = 500
MAX_EDGES = 1000
MAX_OPEN = 50_000
MAX_SEEN = 262_144  # alert ids remembered against replays (see IncidentBuilder._forget)

# ATT&CK tactics, enterprise and ICS matrices merged, in kill-chain order.
KILL_CHAIN: tuple[str, ...] = (
    "Reconnaissance",
    "Resource Development",
    "Initial Access",
    "Execution",
    "Persistence",
    "Privilege Escalation",
    "Defense Evasion",
    "Evasion",  # ICS
    "Credential Access",
    "Discovery",
    "Lateral Movement",
    "Collection",
    "Command and Control",
    "Exfiltration",
    "Inhibit Response Function",  # ICS
    "Impair Process Control",  # ICS
    "Impact",
)
STAGE = {name: i for i, name in enumerate(KILL_CHAIN)}
_TAG_TACTIC = {name.lower().replace(" ", "-"): name for name in KILL_CHAIN}
_TAG_TACTIC.update({"command-control": "Command and Control"})

LEVEL_RANK = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_LEVEL_POINTS = {1: 5, 2: 15, 3: 30, 4: 45, 5: 60}
SEVERITIES = ("low", "medium", "high", "critical")
_ASSET_POINTS = {3: 10, 4: 15, 5: 20}

# workflow -----------------------------------------------------------------
STATUSES = ("new", "acknowledged", "in_progress", "resolved", "false_positive")
TRANSITIONS: dict[str, frozenset[str]] = {
    "new": frozenset({"acknowledged", "false_positive"}),
    "acknowledged": frozenset({"in_progress", "false_positive"}),
    "in_progress": frozenset({"resolved", "false_positive"}),
    "resolved": frozenset({"acknowledged"}),  # reopen
    "false_positive": frozenset({"acknowledged"}),  # reopen
}


class WorkflowError(ValueError):
    """A status change the workflow does not allow."""


def check_transition(old: str, new: str) -> None:
    """Raise :class:`WorkflowError` unless ``old -> new`` is allowed."""
    if new not in STATUSES:
        raise WorkflowError(f"unknown status {new!r}; one of {', '.join(STATUSES)}")
    if new == old:
        raise WorkflowError(f"incident is already {old}")
    if new not in TRANSITIONS.get(old, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(old, ()))) or "none"
        raise WorkflowError(f"cannot go from {old} to {new} (allowed from {old}: {allowed})")


# The workflow's rules, for every store (embedded DuckDB, the cluster's search node): a store
# reads what it holds, asks these functions what changes, and appends each (field, old, new)
# to the incident's history as one write.
Change = tuple[str, "str | None", "str | None"]  # (field, old, new): one history entry


def workflow_changes(old_status: str, old_assignee: str | None, *, status: str | None = None,
                     assignee: str | None = None, set_assignee: bool = False,
                     note: str | None = None) -> list[Change]:
    """A responder's change as history entries; raises :class:`WorkflowError` (and nothing
    changes) for an illegal status transition. ``set_assignee`` with ``assignee`` "" or None
    unassigns; assigning the current assignee again records nothing."""
    out: list[Change] = []
    if status is not None:
        check_transition(old_status, status)
        out.append(("status", old_status, status))
    if set_assignee and (assignee or None) != old_assignee:
        out.append(("assignee", old_assignee, assignee or None))
    if note:
        out.append(("note", None, note))
    return out


def upsert_changes(stored: dict | None, built: dict) -> tuple[str, list[Change]]:
    """What storing one builder output does to a stored incident (``stored``: its ``status``,
    ``alert.count`` and ``merged_into``, or None when not stored): ``(action, history)`` with
    action ``create`` (a new incident, ``new``), ``update`` (the built fields replaced, the
    workflow kept; new alerts reopen a resolved incident), ``merge`` (``merged_into`` set) or
    ``skip`` (a merge marker for an incident never stored, or one already recorded)."""
    if "merged_into" in built:
        if stored is None or stored.get("merged_into") == built["merged_into"]:
            return "skip", []
        return "merge", [("merged_into", stored.get("merged_into"), built["merged_into"])]
    if stored is None:
        return "create", [("status", None, "new")]
    if stored.get("status") == "resolved" and int(built.get("alert.count") or 0) > int(stored.get("alert.count") or 0):
        return "update", [("status", "resolved", "acknowledged")]
    return "update", []


def apply_changes(status: str | None, assignee: str | None, merged_into: str | None,
                  changes: list[Change]) -> tuple[str | None, str | None, str | None]:
    """The workflow fields after ``changes``: ``(status, assignee, merged_into)``."""
    for field, _old, new in changes:
        if field == "status":
            status = new
        elif field == "assignee":
            assignee = new
        elif field == "merged_into":
            merged_into = new
    return status, assignee, merged_into


def unworked(history: Iterable[dict]) -> bool:
    """Nobody worked on it: its history holds only its creation (a rebuild may drop it)."""
    return all(h["field"] == "status" and h["new"] == "new" and h["old"] is None for h in history)


def notes_of(history: Iterable[dict]) -> list[dict]:
    """The notes of a history: ``[{"at", "who", "text"}]`` in order."""
    return [{"at": h["at"], "who": h["who"], "text": h["new"]} for h in history if h["field"] == "note"]


# helpers ------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def incident_id(first_alert_id: str) -> str:
    """Id of the incident opened by alert ``first_alert_id``."""
    return _digest("in1", first_alert_id)


def iso_us(us: int) -> str:
    dt = _EPOCH + timedelta(microseconds=int(us))
    return dt.isoformat().replace("+00:00", "Z")


def _us(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        d = v - _EPOCH
        return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds
    if isinstance(v, (int, float)):
        return int(v)
    return None


def tactics_of(tags: Iterable[str] | None, names: Iterable[str] | None = None) -> list[str]:
    """Tactic names from ``attack.<tactic>`` tags (enterprise + ICS), in tag order;
    ``names`` (``threat.tactic.name``) fill in when no tag names a tactic."""
    out: list[str] = []
    for tag in tags or ():
        ns, _, name = str(tag).partition(".")
        if ns.lower() != "attack":
            continue
        t = _TAG_TACTIC.get(name.lower().replace("_", "-"))
        if t and t not in out:
            out.append(t)
    if not out:
        for n in names or ():
            t = n if n in STAGE else _TAG_TACTIC.get(str(n).lower().replace("_", "-").replace(" ", "-"))
            if t and t not in out:
                out.append(t)
    return out


@functools.lru_cache(maxsize=4096)
def _tactics(tags: tuple, names: tuple) -> tuple:
    return tuple(tactics_of(tags, names))


def kill_chain_sorted(tactics: Iterable[str]) -> list[str]:
    return sorted(set(tactics), key=lambda t: (STAGE.get(t, len(STAGE)), t))


_TWO_LEVEL_SUFFIXES = frozenset({"com.cn", "net.cn", "org.cn", "gov.cn", "edu.cn", "ac.cn", "co.uk", "org.uk",
                                 "com.au", "co.jp", "com.hk", "com.tw"})


def registered_domain(name: str) -> str:
    """``a.b.t.exfil-cdn.net`` -> ``exfil-cdn.net`` (a small public-suffix heuristic)."""
    labels = [x for x in name.lower().rstrip(".").split(".") if x]
    if len(labels) <= 2:
        return ".".join(labels)
    n = 3 if ".".join(labels[-2:]) in _TWO_LEVEL_SUFFIXES else 2
    return ".".join(labels[-n:])


def entity_key(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def _split(key: str) -> tuple[str, str]:
    kind, _, value = key.partition(":")
    return kind, value


# alerts -> compact records --------------------------------------------------
_ALERT_COLS = (
    "id", "@timestamp", "event.end", "event.start", "rule.id", "rule.name", "rule.level", "tags",
    "threat.tactic.name", "threat.technique.id", "source.ip", "destination.ip", "destination.port",
    "user.name", "host.name", "dns.question.name",
    "taishi.source.asset.id", "taishi.source.asset.system", "taishi.source.asset.level",
    "taishi.source.asset.sector", "taishi.destination.asset.id", "taishi.destination.asset.system",
    "taishi.destination.asset.level", "taishi.destination.asset.sector",
)


def _plain(v: Any) -> Any:
    """pandas/numpy cells as plain values: NaN/NaT -> None, arrays -> lists, Timestamps -> datetimes."""
    if v is None or (isinstance(v, float) and v != v) or type(v).__name__ == "NaTType":
        return None
    if hasattr(v, "to_pydatetime"):
        return v.to_pydatetime()
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return v.tolist()
    return v


def alert_records(alerts: Any) -> list[dict]:
    """Compact alert records (what the builder keeps) from an Arrow table, a pandas
    DataFrame (a Spark ``applyInPandasWithState`` batch) or dict rows."""
    if isinstance(alerts, pa.Table):
        cols = [c for c in _ALERT_COLS if c in alerts.column_names]
        rows = alerts.select(cols).to_pylist()
    elif hasattr(alerts, "to_dict") and hasattr(alerts, "columns"):
        rows = [{k: _plain(v) for k, v in r.items() if k in _ALERT_COLS} for r in alerts.to_dict("records")]
    else:
        rows = [{k: _plain(v) for k, v in r.items()} for r in alerts]
    out = []
    for r in rows:
        aid = r.get("id")
        ts = None
        for col in ("@timestamp", "event.end", "event.start"):
            v = r.get(col)
            if isinstance(v, str):  # JSON rows (e.g. from Spark): ISO text
                try:
                    v = parse_time(v)
                except ValueError:
                    v = None
            ts = _us(v)
            if ts is not None:
                break
        if not aid or ts is None:
            continue
        tags = r.get("tags")
        names = r.get("threat.tactic.name")
        rec: dict[str, Any] = {
            "id": str(aid),
            "ts": ts,
            "rule": r.get("rule.name") or r.get("rule.id") or "?",
            "rid": r.get("rule.id") or "",
            "lvl": LEVEL_RANK.get(str(r.get("rule.level") or "").lower(), 1),
            "tac": list(_tactics(tuple(tags) if tags else (), tuple(names) if names else ())),
            "tech": sorted(set(r.get("threat.technique.id") or ())),
        }
        for k, col in (("src", "source.ip"), ("dst", "destination.ip"), ("host", "host.name"),
                       ("user", "user.name"), ("dns", "dns.question.name"), ("dport", "destination.port")):
            if r.get(col) not in (None, ""):
                rec[k] = r[col]
        for side, s in (("sa", "source"), ("da", "destination")):
            aid_ = r.get(f"taishi.{s}.asset.id") or r.get(f"taishi.{s}.asset.system")
            if aid_:
                rec[side] = {
                    "id": r.get(f"taishi.{s}.asset.id"),
                    "system": r.get(f"taishi.{s}.asset.system"),
                    "level": r.get(f"taishi.{s}.asset.level"),
                    "sector": r.get(f"taishi.{s}.asset.sector"),
                }
        out.append(rec)
    return out


def _links(rec: dict) -> tuple[list[str], list[str]]:
    """(actor keys, target keys) of an alert record."""
    actors: list[str] = []
    targets: list[str] = []
    if "src" in rec:
        actors.append(entity_key("ip", rec["src"]))
    if rec.get("sa") and rec["sa"].get("id"):
        actors.append(entity_key("asset", rec["sa"]["id"]))
    if "dst" in rec:
        targets.append(entity_key("ip", rec["dst"]))
    if rec.get("da") and rec["da"].get("id"):
        targets.append(entity_key("asset", rec["da"]["id"]))
    if "host" in rec and rec.get("host") not in (rec.get("src"), rec.get("dst")):
        targets.append(entity_key("host", rec["host"]))
    if "dns" in rec:
        targets.append(entity_key("domain", registered_domain(rec["dns"])))
    return actors, targets


def _edge_ends(rec: dict) -> tuple[str, str]:
    """Graph edge of an alert: actor -> what it acted on (a DNS tunnel points at its domain)."""
    actors, targets = _links(rec)
    src = entity_key("ip", rec["src"]) if "src" in rec else None
    if "dns" in rec:
        dst = entity_key("domain", registered_domain(rec["dns"]))
    elif "dst" in rec:
        dst = entity_key("ip", rec["dst"])
    elif "host" in rec:
        dst = entity_key("host", rec["host"])
    else:
        dst = None
    if src is None:
        src = entity_key("user", rec["user"]) if "user" in rec and dst else dst
    if dst is None:
        dst = src
    return src or "?", dst or "?"


# the incident state --------------------------------------------------------
class _Incident:
    __slots__ = ("id", "first", "last", "count", "alerts", "actors", "targets", "ents", "lvl", "asset_lvl",
                 "tac", "tech", "rules", "edges", "edges_dropped", "merged", "closed", "dirty")

    def __init__(self, iid: str, ts: int) -> None:
        self.id = iid
        self.first = ts
        self.last = ts
        self.count = 0
        self.alerts: list[list] = []  # [ts, id], first MAX_ALERT_IDS in (ts, id) order
        self.actors: set[str] = set()
        self.targets: set[str] = set()
        self.ents: dict[str, dict] = {}  # key -> {"role", "first", "asset"}
        self.lvl = 1
        self.asset_lvl = 0
        self.tac: dict[str, list] = {}  # tactic -> [first ts, alerts]
        self.tech: set[str] = set()
        self.rules: dict[str, int] = {}  # rule name -> first ts
        self.edges: dict[str, dict] = {}  # "src|dst|rule id" -> edge, at most MAX_EDGES
        self.edges_dropped = 0
        self.merged: list[str] = []
        self.closed = False
        self.dirty = True

    # -- adding ------------------------------------------------------------
    def _entity(self, key: str, role: str, ts: int, asset: dict | None = None) -> None:
        e = self.ents.get(key)
        if e is None:
            if len(self.ents) >= MAX_ENTITIES:
                return
            self.ents[key] = e = {"role": role, "first": ts, "asset": None}
        elif e["role"] != role:
            e["role"] = "both"
        if asset and not e["asset"]:
            e["asset"] = asset

    def add(self, rec: dict) -> None:
        ts = rec["ts"]
        self.first = min(self.first, ts)
        self.last = max(self.last, ts)
        self.count += 1
        if len(self.alerts) < MAX_ALERT_IDS:
            self.alerts.append([ts, rec["id"]])
        actors, targets = _links(rec)
        self.actors.update(actors)
        self.targets.update(targets)
        for k in actors:
            self._entity(k, "source", ts, rec.get("sa") if k.startswith(("ip:", "asset:")) else None)
        for k in targets:
            self._entity(k, "target", ts, rec.get("da") if k.startswith(("ip:", "asset:")) else None)
        if "user" in rec:
            self._entity(entity_key("user", rec["user"]), "source", ts)
        self.lvl = max(self.lvl, rec["lvl"])
        for side in ("sa", "da"):
            lv = (rec.get(side) or {}).get("level")
            if isinstance(lv, int):
                self.asset_lvl = max(self.asset_lvl, lv)
        for t in rec["tac"]:
            slot = self.tac.setdefault(t, [ts, 0])
            slot[0] = min(slot[0], ts)
            slot[1] += 1
        self.tech.update(rec["tech"])
        if rec["rule"] not in self.rules or ts < self.rules[rec["rule"]]:
            self.rules[rec["rule"]] = ts
        src, dst = _edge_ends(rec)
        ek = f"{src}|{dst}|{rec['rid'] or rec['rule']}"
        edge = self.edges.get(ek)
        if edge is None and len(self.edges) >= MAX_EDGES:
            self.edges_dropped += 1
        elif edge is None:
            self.edges[ek] = {"source": src, "target": dst, "kind": "alert", "time": ts, "rule": rec["rule"],
                              "rule_id": rec["rid"], "tactic": rec["tac"][0] if rec["tac"] else None,
                              "alert_id": rec["id"], "count": 1, "level": rec["lvl"]}
        else:
            edge["count"] += 1
            if (ts, rec["id"]) < (edge["time"], edge["alert_id"]):
                edge["time"], edge["alert_id"] = ts, rec["id"]
        self.dirty = True

    def absorb(self, other: "_Incident") -> None:
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        self.count += other.count
        self.alerts = sorted(self.alerts + other.alerts)[:MAX_ALERT_IDS]
        self.actors |= other.actors
        self.targets |= other.targets
        for k, e in sorted(other.ents.items(), key=lambda kv: (kv[1]["first"], kv[0])):
            mine = self.ents.get(k)
            if mine is None:
                if len(self.ents) < MAX_ENTITIES:
                    self.ents[k] = dict(e)
            else:
                if mine["role"] != e["role"]:
                    mine["role"] = "both"
                mine["first"] = min(mine["first"], e["first"])
                mine["asset"] = mine["asset"] or e["asset"]
        self.lvl = max(self.lvl, other.lvl)
        self.asset_lvl = max(self.asset_lvl, other.asset_lvl)
        for t, (f, n) in other.tac.items():
            slot = self.tac.setdefault(t, [f, 0])
            slot[0] = min(slot[0], f)
            slot[1] += n
        self.tech |= other.tech
        for r, f in other.rules.items():
            self.rules[r] = min(f, self.rules.get(r, f))
        for k, e in other.edges.items():
            mine = self.edges.get(k)
            if mine is None:
                self.edges[k] = dict(e)
            else:
                mine["count"] += e["count"]
                if (e["time"], e["alert_id"]) < (mine["time"], mine["alert_id"]):
                    mine["time"], mine["alert_id"] = e["time"], e["alert_id"]
        self.edges_dropped += other.edges_dropped
        if len(self.edges) > MAX_EDGES:  # keep the earliest edges (the start of the attack)
            keep = sorted(self.edges.items(), key=lambda kv: (kv[1]["time"], kv[1]["alert_id"], kv[0]))
            self.edges_dropped += len(keep) - MAX_EDGES
            self.edges = dict(keep[:MAX_EDGES])
        self.merged = sorted(set(self.merged) | set(other.merged) | {other.id})
        self.dirty = True

    # -- scoring -----------------------------------------------------------
    def score(self) -> tuple[int, str]:
        pts = _LEVEL_POINTS[self.lvl]
        pts += min(30, 6 * len(self.tac))
        pts += _ASSET_POINTS.get(min(self.asset_lvl, 5), 0) if self.asset_lvl >= 3 else 0
        pts += min(10, round(2 * math.log2(max(1, self.count))))
        risk = max(0, min(100, pts))
        band = 3 if risk >= 80 else 2 if risk >= 60 else 1 if risk >= 35 else 0
        by_level = {5: 3, 4: 2, 3: 1}.get(self.lvl, 0)
        sev = max(band, by_level)
        if self.asset_lvl >= 4:
            sev = min(3, sev + 1)
        return risk, SEVERITIES[sev]

    # -- output -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        risk, sev = self.score()
        tactics = kill_chain_sorted(self.tac)
        ents = sorted(self.ents.items(), key=lambda kv: (kv[1]["first"], kv[0]))
        entities = []
        for k, e in ents:
            kind, value = _split(k)
            entities.append({"type": kind, "value": value, "role": e["role"], "asset": e["asset"]})
        nodes = []
        node_keys: set[str] = set()
        edges = sorted(self.edges.values(), key=lambda e: (e["time"], e["alert_id"], e["source"], e["target"]))
        for k, _ in ents:
            if not k.startswith(("user:", "asset:")):  # an asset is drawn as its address's node
                node_keys.add(k)
        for e in edges:
            node_keys.update((e["source"], e["target"]))
        first_of = {k: e["first"] for k, e in self.ents.items()}
        for k in sorted(node_keys, key=lambda k: (first_of.get(k, self.last), k)):
            kind, value = _split(k)
            ent = self.ents.get(k) or {}
            nodes.append({"id": k, "type": kind, "label": value, "role": ent.get("role", "target"),
                          "asset": ent.get("asset"), "stage": None})
        # a node's kill-chain stage: the earliest tactic of the alerts it acts in (else of those it suffers)
        acts: dict[str, int] = {}
        hit: dict[str, int] = {}
        for e in edges:
            s = STAGE.get(e["tactic"], len(STAGE)) if e["tactic"] else len(STAGE)
            acts[e["source"]] = min(acts.get(e["source"], s), s)
            hit[e["target"]] = min(hit.get(e["target"], s), s)
        for n in nodes:
            s = acts.get(n["id"], hit.get(n["id"]))
            n["stage"] = KILL_CHAIN[s] if s is not None and s < len(KILL_CHAIN) else None
        actor = next((_split(k)[1] for role in ("source", "both") for k, e in ents
                      if e["role"] == role and k.startswith("ip:")), None)
        victims = [_split(k)[1] for k, e in sorted(ents, key=lambda kv: kv[1]["role"] != "both")  # footholds first
                   if e["role"] in ("target", "both") and k.startswith(("ip:", "host:")) and _split(k)[1] != actor]
        head = tactics[-1] if tactics else "Alerts"
        who = actor or (victims[0] if victims else "unknown")
        what = (f" → {victims[0]}" + (f" and {len(victims) - 1} more" if len(victims) > 1 else "")) if victims and actor else ""
        title = f"{head}: {who}{what} ({len(tactics)} tactic{'s' if len(tactics) != 1 else ''}, {self.count} alert{'s' if self.count != 1 else ''})"
        return {
            "id": self.id,
            "title": title,
            "severity": sev,
            "risk_score": risk,
            "first_seen": iso_us(self.first),
            "last_seen": iso_us(self.last),
            "threat.tactic.name": tactics,
            "threat.technique.id": sorted(self.tech),
            "stages": [{"tactic": t, "first_seen": iso_us(self.tac[t][0]), "alerts": self.tac[t][1]} for t in tactics],
            "entities": entities,
            "alert.ids": [a[1] for a in self.alerts],
            "alert.count": self.count,
            "rule.names": [r for r, _ in sorted(self.rules.items(), key=lambda kv: (kv[1], kv[0]))],
            "graph": {"nodes": nodes, "edges": [
                {**{k: v for k, v in e.items() if k not in ("time", "level")}, "time": iso_us(e["time"]),
                 "level": next(lv for lv, r in LEVEL_RANK.items() if r == e["level"])}
                for e in edges], "truncated": self.edges_dropped > 0},
            "merged": list(self.merged),
            "closed": self.closed,
        }

    # -- state --------------------------------------------------------------
    def to_state(self) -> dict:
        return {"id": self.id, "first": self.first, "last": self.last, "count": self.count, "alerts": self.alerts,
                "actors": sorted(self.actors), "targets": sorted(self.targets), "ents": self.ents, "lvl": self.lvl,
                "asset_lvl": self.asset_lvl, "tac": self.tac, "tech": sorted(self.tech), "rules": self.rules,
                "edges": self.edges, "edges_dropped": self.edges_dropped, "merged": self.merged}

    @classmethod
    def from_state(cls, d: dict) -> "_Incident":
        inc = cls(d["id"], d["first"])
        inc.last, inc.count, inc.alerts = d["last"], d["count"], [list(a) for a in d["alerts"]]
        inc.actors, inc.targets = set(d["actors"]), set(d["targets"])
        inc.ents, inc.lvl, inc.asset_lvl = d["ents"], d["lvl"], d["asset_lvl"]
        inc.tac, inc.tech, inc.rules = d["tac"], set(d["tech"]), d["rules"]
        inc.edges, inc.merged = d["edges"], d["merged"]
        inc.edges_dropped = d.get("edges_dropped", 0)
        inc.dirty = False
        return inc


# the builder ---------------------------------------------------------------
class IncidentBuilder:
    """Streaming incident builder (see module doc). Not thread-safe."""

    def __init__(self, gap_s: float = DEFAULT_GAP_S, allowed_lateness_s: float = 600.0,
                 max_open: int = MAX_OPEN) -> None:
        self.gap_us = int(gap_s * 1_000_000)
        self.gap_s = float(gap_s)
        self.allowed_lateness_s = float(allowed_lateness_s)
        self.max_open = int(max_open)
        self.watermark = -(2**62)  # alerts with ts < watermark are applied (or late)
        self.max_ts = -(2**62)
        self.pending: list[dict] = []
        self.open: dict[str, _Incident] = {}
        self.by_actor: dict[str, set[str]] = {}
        self.by_target: dict[str, set[str]] = {}
        self.seen: dict[str, int] = {}  # alert id -> ts in arrival order, against replays (bounded)
        self.late_alerts = 0
        self.untimed_alerts = 0
        self.incidents_opened = 0
        self._heap: list[tuple[int, str]] = []  # (last + gap, id), lazily invalidated
        self._out: dict[str, Any] = {}  # id -> _Incident (changed) or {"id", "merged_into"}

    # -- public ---------------------------------------------------------------
    def process(self, alerts: Any) -> list[dict]:
        """Take a batch of alerts; return the incidents created, changed, merged or closed."""
        recs = alert_records(alerts)
        n_in = alerts.num_rows if isinstance(alerts, pa.Table) else None
        if n_in is not None:
            self.untimed_alerts += n_in - len(recs)
        late: list[dict] = []
        for r in recs:
            if r["id"] in self.seen:
                continue
            self.seen[r["id"]] = r["ts"]
            if r["ts"] < self.watermark:
                late.append(r)
            else:
                self.pending.append(r)
                self.max_ts = max(self.max_ts, r["ts"])
        for r in sorted(late, key=lambda r: (r["ts"], r["id"])):
            self.late_alerts += 1
            self._apply(r)
        if math.isfinite(self.allowed_lateness_s):
            self._advance(self.max_ts - int(self.allowed_lateness_s * 1_000_000))
        self._forget()
        return self._emit()

    def _forget(self) -> None:
        """Bound the replay guard: beyond :data:`MAX_SEEN` ids, forget the earliest arrivals that are
        far behind the watermark and in no open incident. A replay after a crash repeats only the
        latest arrivals (the store's uncommitted batch, seconds of re-detected events)."""
        if len(self.seen) <= MAX_SEEN:
            return
        lat = self.allowed_lateness_s if math.isfinite(self.allowed_lateness_s) else 0.0
        horizon = self.watermark - 2 * self.gap_us - int(lat * 1_000_000)
        keep = {a[1] for inc in self.open.values() for a in inc.alerts}
        excess = len(self.seen) - MAX_SEEN // 2
        drop = []
        for k, ts in self.seen.items():  # arrival order
            if len(drop) >= excess:
                break
            if ts < horizon and k not in keep:
                drop.append(k)
        for k in drop:
            del self.seen[k]

    def flush(self) -> list[dict]:
        """End of input: apply every buffered alert (incidents stay open; they close by event time)."""
        if self.pending:
            self._advance(self.max_ts + 1)
        return self._emit()

    def close_all(self) -> list[dict]:
        """Close every open incident (e.g. a one-off rebuild)."""
        self.flush()
        for iid in sorted(self.open):
            self._close(iid)
        return self._emit()

    @property
    def open_count(self) -> int:
        return len(self.open)

    def state_size(self) -> int:
        return len(self.pending) + sum(i.count for i in self.open.values())

    # -- core -----------------------------------------------------------------
    def _advance(self, wm: int) -> None:
        if wm <= self.watermark:
            return
        self.watermark = wm
        ready = [r for r in self.pending if r["ts"] < wm]
        if ready:
            self.pending = [r for r in self.pending if r["ts"] >= wm]
            ready.sort(key=lambda r: (r["ts"], r["id"]))
            for r in ready:
                self._apply(r)
        self._close_before(wm)

    def _close_before(self, t: int) -> None:
        while self._heap and self._heap[0][0] < t:
            deadline, iid = heapq.heappop(self._heap)
            inc = self.open.get(iid)
            if inc is not None and inc.last + self.gap_us == deadline:
                self._close(iid)

    def _close(self, iid: str) -> None:
        inc = self.open.pop(iid)
        self._unindex(inc)
        inc.closed = True
        self._out[iid] = inc  # materialised once, in _emit

    def _unindex(self, inc: _Incident) -> None:
        for k in inc.actors:
            s = self.by_actor.get(k)
            if s is not None:
                s.discard(inc.id)
                if not s:
                    del self.by_actor[k]
        for k in inc.targets:
            s = self.by_target.get(k)
            if s is not None:
                s.discard(inc.id)
                if not s:
                    del self.by_target[k]

    def _index(self, inc: _Incident, actors: Iterable[str], targets: Iterable[str]) -> None:
        for k in actors:
            self.by_actor.setdefault(k, set()).add(inc.id)
        for k in targets:
            self.by_target.setdefault(k, set()).add(inc.id)

    def _apply(self, r: dict) -> None:
        self._close_before(r["ts"])
        actors, targets = _links(r)
        found: set[str] = set()
        for k in actors:
            found |= self.by_actor.get(k, set())
            found |= self.by_target.get(k, set())
        for k in targets:
            found |= self.by_actor.get(k, set())
        if not actors:
            for k in targets:
                found |= self.by_target.get(k, set())
        if not found:
            if len(self.open) >= self.max_open:
                oldest = min(self.open.values(), key=lambda i: (i.last, i.id))
                self._close(oldest.id)
            inc = _Incident(incident_id(r["id"]), r["ts"])
            self.open[inc.id] = inc
            self.incidents_opened += 1
        else:
            parts = sorted((self.open[i] for i in found), key=lambda i: (i.first, i.id))
            inc = parts[0]
            for other in parts[1:]:
                self._unindex(other)
                del self.open[other.id]
                inc.absorb(other)
                self._index(inc, other.actors, other.targets)
                self._out[other.id] = {"id": other.id, "merged_into": inc.id}
        inc.add(r)
        self._index(inc, actors, targets)
        heapq.heappush(self._heap, (inc.last + self.gap_us, inc.id))

    def _emit(self) -> list[dict]:
        for inc in self.open.values():
            if inc.dirty:
                self._out[inc.id] = inc
                inc.dirty = False
        out = [v.to_dict() if isinstance(v, _Incident) else v for _, v in sorted(self._out.items())]
        self._out = {}
        return out

    # -- state ------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The whole state as JSON (pending alerts, open incidents, recently seen alert ids)."""
        self._emit_pending_dirty_guard()
        return json.dumps({
            "version": SNAPSHOT_VERSION,
            "gap_s": self.gap_s,
            "allowed_lateness_s": self.allowed_lateness_s if math.isfinite(self.allowed_lateness_s) else "inf",
            "max_open": self.max_open,
            "watermark": self.watermark,
            "max_ts": self.max_ts,
            "late_alerts": self.late_alerts,
            "untimed_alerts": self.untimed_alerts,
            "incidents_opened": self.incidents_opened,
            "pending": self.pending,
            "open": [self.open[k].to_state() for k in sorted(self.open)],
            "seen": self.seen,
        }, separators=(",", ":"), ensure_ascii=False).encode()

    def _emit_pending_dirty_guard(self) -> None:
        # dirty incidents not emitted yet would be lost from the output by a restore: the caller emits
        # (process/flush always end with _emit), so nothing is pending here; kept as an assertion.
        assert not self._out, "snapshot between apply and emit"

    @classmethod
    def restore(cls, data: bytes | str | dict, allowed_lateness_s: float | None = None,
                gap_s: float | None = None) -> "IncidentBuilder":
        st = data if isinstance(data, dict) else json.loads(data)
        if st.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown incident snapshot version {st.get('version')}")
        lat = st["allowed_lateness_s"]
        lat = float("inf") if lat == "inf" else float(lat)
        b = cls(gap_s if gap_s is not None else st["gap_s"],
                allowed_lateness_s if allowed_lateness_s is not None else lat, st.get("max_open", MAX_OPEN))
        b.watermark, b.max_ts = st["watermark"], st["max_ts"]
        b.late_alerts, b.untimed_alerts = st["late_alerts"], st["untimed_alerts"]
        b.incidents_opened = st["incidents_opened"]
        b.pending = st["pending"]
        b.seen = {k: int(v) for k, v in st["seen"].items()}
        for d in st["open"]:
            inc = _Incident.from_state(d)
            b.open[inc.id] = inc
            b._index(inc, inc.actors, inc.targets)
            heapq.heappush(b._heap, (inc.last + b.gap_us, inc.id))
        return b


def build(state: bytes | str | dict | None, alerts: Any, *, flush: bool = False,
          gap_s: float = DEFAULT_GAP_S, allowed_lateness_s: float = 600.0) -> tuple[bytes, list[dict]]:
    """State in, alerts in -> state out, incidents out (for grouped-state executors such as Spark).

    ``state`` is a previous output state (or None to start). ``flush`` applies
    every buffered alert (end of bounded input)."""
    b = (IncidentBuilder.restore(state, allowed_lateness_s=allowed_lateness_s) if state
         else IncidentBuilder(gap_s, allowed_lateness_s))
    out = b.process(alerts)
    if flush:
        out = _merge_outputs(out, b.flush())
    return b.snapshot(), out


def _merge_outputs(a: list[dict], b: list[dict]) -> list[dict]:
    """Later outputs of the same incident replace earlier ones (ids sorted)."""
    d = {x["id"]: x for x in a}
    d.update({x["id"]: x for x in b})
    return [d[k] for k in sorted(d)]


def merge_outputs(*outs: list[dict]) -> list[dict]:
    res: list[dict] = []
    for o in outs:
        res = _merge_outputs(res, o)
    return res
