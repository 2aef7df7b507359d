"""Sigma rules over ECS Arrow batches.

pySigma parses the rules; :mod:`detect.compile` turns each detection into a
vectorised predicate, compiled once at load time. ``RuleSet.match`` runs every
rule on a batch and returns ``(rule.id, event.row)`` pairs; ``to_alerts``
turns them into ALERT_SCHEMA rows. Sigma filter documents (spec v2.1) in any loaded file are ANDed to the rules they
name (pySigma semantics, :class:`FilterSpec`); ``|expand`` placeholders take their
values from ``detect/placeholders.yaml``. A rule whose logsource has no entry in
``detect/logsources.yaml`` matches only events tagged with it in ``taishi.logsource``.
Correlation rules are parsed here into
:class:`correlate.sigma_correlation.CorrelationSpec` and run by
:class:`correlate.sigma_correlation.CorrelationEngine`.

>>> rs = RuleSet.from_yaml('''
... title: SSH login failure
... id: 5b3a4e2c-0000-4000-8000-000000000001
... logsource: {product: linux, service: auth}
... detection:
...   sel: {event.outcome: failure}
...   condition: sel
... ''')
>>> from taishi.schema import events_table
>>> t = events_table([{"event.id": "a", "event.dataset": "system.auth", "event.outcome": "FAILURE"}])
>>> rs.match(t).to_pylist()
[{'rule.id': '5b3a4e2c-0000-4000-8000-000000000001', 'event.row': 0}]

Field names: before compiling, every rule goes through a pySigma processing
pipeline (``field_mapping_pipeline``, one FieldMappingTransformation per
logsource from ``detect/fieldmap.yaml``) that renames Sigma's native field
names (Zeek's ``query``, proxy ``c-uri`` ...) to the ECS fields Taishi's
parsers produce, so SigmaHQ rules run unmodified.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from sigma.collection import SigmaCollection
from sigma.processing.conditions import LogsourceCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import FieldMappingTransformation
from sigma.conditions import ConditionFieldEqualsValueExpression
from sigma.correlations import SigmaCorrelationRule
from sigma.filters import SigmaFilter
from sigma.modifiers import reverse_modifier_mapping
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import Placeholder, SigmaExpansion, SigmaString

from correlate.sigma_correlation import (
    ENGINE_CORRELATION_TYPES,
    NUMERIC_TYPES,
    TEMPORAL_TYPES,
    CorrelationSpec,
    parse_condition_ex,
)
from detect.compile import SUPPORTED_MODIFIERS, BatchContext, Node, Unsupported, compile_condition
from detect.logsource import LogsourceTable, logsource_key
from taishi.ids import alert_id
from taishi.schema import ALERT_SCHEMA, EVENT_FIELDS, LEVEL_SEVERITY

DEFAULT_PLACEHOLDERS = Path(__file__).with_name("placeholders.yaml")
DEFAULT_FIELDMAP = Path(__file__).with_name("fieldmap.yaml")


def field_mapping_pipeline(path: Path = DEFAULT_FIELDMAP) -> ProcessingPipeline:
    """The pySigma processing pipeline that renames Sigma fields to Taishi's ECS
    fields, one FieldMappingTransformation per logsource in detect/fieldmap.yaml."""
    table = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    items = []
    for key, mapping in table.items():
        product, category, service = (part or None for part in str(key).split("/"))
        items.append(ProcessingItem(
            identifier=f"taishi-ecs-{key}",
            transformation=FieldMappingTransformation(dict(mapping)),
            rule_conditions=[LogsourceCondition(product=product, category=category, service=service)],
        ))
    return ProcessingPipeline(name="Taishi ECS field mapping", priority=20, items=items)

MATCH_SCHEMA = pa.schema([pa.field("rule.id", pa.string()), pa.field("event.row", pa.int64())])

#: event fields copied onto a single-event alert
ALERT_COPY_FIELDS = (
    "source.ip", "source.port", "destination.ip", "destination.port",
    "user.name", "host.name", "dns.question.name", "event.dataset",
)

TACTICS = {
    t.replace("-", "_"): name
    for t, name in {
        "reconnaissance": "Reconnaissance",
        "resource-development": "Resource Development",
        "initial-access": "Initial Access",
        "execution": "Execution",
        "persistence": "Persistence",
        "privilege-escalation": "Privilege Escalation",
        "defense-evasion": "Defense Evasion",
        "credential-access": "Credential Access",
        "discovery": "Discovery",
        "lateral-movement": "Lateral Movement",
        "collection": "Collection",
        "command-and-control": "Command and Control",
        "exfiltration": "Exfiltration",
        "impact": "Impact",
    }.items()
}
_TECHNIQUE = re.compile(r"^t(\d{4})(?:\.(\d{3}))?$", re.I)


def threat_from_tags(tags: Iterable[str]) -> tuple[list[str], list[str]]:
    """ATT&CK technique ids and tactic names from Sigma tags (``attack.t1110.001`` ...)."""
    techniques: list[str] = []
    tactics: list[str] = []
    for tag in tags:
        ns, _, name = tag.partition(".")
        if ns.lower() != "attack":
            continue
        m = _TECHNIQUE.match(name)
        if m:
            tid = "T" + m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
            if tid not in techniques:
                techniques.append(tid)
            continue
        tactic = TACTICS.get(name.lower().replace("-", "_"))
        if tactic and tactic not in tactics:
            tactics.append(tactic)
    return techniques, tactics


@dataclass(frozen=True)
class Issue:
    path: str
    severity: str  # "error" | "warning"
    message: str
    rule: str = ""  # rule id or title, when the issue is about one rule

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "severity": self.severity, "message": self.message, "rule": self.rule}


@dataclass
class Rule:
    """A compiled single-event rule."""

    id: str
    title: str
    name: str | None
    level: str | None
    description: str | None
    tags: list[str]
    path: str
    logsource: str
    predicate: Node
    logsource_filter: Node
    generate: bool = True  # False: only feeds correlations (Sigma v2 generate: false)
    techniques: list[str] = field(default_factory=list)
    tactics: list[str] = field(default_factory=list)
    filters: list[str] = field(default_factory=list)  # ids of the Sigma filters applied
    logsource_parts: tuple[str, str, str] = ("", "", "")  # product, category, service (lower)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id, "title": self.title, "name": self.name, "level": self.level, "type": "sigma",
            "description": self.description, "tags": self.tags, "techniques": self.techniques,
            "tactics": self.tactics, "logsource": self.logsource, "path": self.path, "generate": self.generate,
            "filters": self.filters,
        }

    def mask(self, ctx: BatchContext) -> np.ndarray:
        ls = self.logsource_filter.eval(ctx)
        if not ls.any():
            return ctx.false
        if ls.all():
            return self.predicate.eval(ctx)
        # Evaluate on the rows of this logsource only. The sub-batch is shared by every
        # rule with the same logsource filter, so their common sub-expressions and
        # per-field dictionaries are still computed once -- over fewer rows.
        sub, rows = ctx.subset(("logsource", self.logsource_parts), ls)
        out = np.zeros(ctx.n, dtype=bool)
        out[rows[self.predicate.eval(sub)]] = True
        return out


@dataclass
class FilterSpec:
    """A Sigma filter document (spec v2.1 "global filter"), compiled.

    As in pySigma (``SigmaFilter.apply_on_rule``), the filter's condition is ANDed to the
    condition of every rule it applies to -- so an exclusion is written ``condition: not
    selection``. It applies to the rules named in ``filter.rules`` (id or name; ``any`` or an
    empty list: every rule) whose logsource is within the filter's logsource (each part the
    filter sets must equal the rule's).
    """

    id: str
    title: str
    path: str
    rules: list[str] | None  # None: any rule
    logsource: tuple[str, str, str]  # product, category, service; "" = any
    node: Node
    applied_to: list[str] = field(default_factory=list)

    def applies(self, rule: "Rule") -> bool:
        if any(f and f != r for f, r in zip(self.logsource, rule.logsource_parts)):
            return False
        return self.rules is None or rule.id in self.rules or (rule.name is not None and rule.name in self.rules)


def _rule_id(rule: Any, path: str, index: int) -> str:
    if getattr(rule, "id", None):
        return str(rule.id)
    if getattr(rule, "name", None):
        return str(rule.name)
    h = hashlib.blake2b(f"{path}#{index}#{rule.title}".encode(), digest_size=8).hexdigest()
    return f"noid-{h}"


def _iter_items(det: SigmaDetection | SigmaDetectionItem) -> Iterable[SigmaDetectionItem]:
    if isinstance(det, SigmaDetectionItem):
        yield det
    else:
        for d in det.detection_items:
            yield from _iter_items(d)


def _unsupported_modifiers(detection: Any) -> list[str]:
    """Modifiers of a rule's or filter's detections that the evaluator does not know."""
    bad: list[str] = []
    for det in detection.detections.values():
        for item in _iter_items(det):
            for m in item.modifiers:
                name = reverse_modifier_mapping.get(m.__name__, m.__name__)
                if name not in SUPPORTED_MODIFIERS and name not in bad:
                    bad.append(name)
    return bad


def _expand_placeholders(tree: Any, values: dict[str, list[str]]) -> None:
    """Replace ``|expand`` placeholders in a parsed condition by the values from
    detect/placeholders.yaml (an OR of the expanded strings). Unknown name: Unsupported."""
    stack = [tree]
    while stack:
        c = stack.pop()
        if isinstance(c, ConditionFieldEqualsValueExpression):
            v = c.value
            if isinstance(v, SigmaString) and v.contains_placeholder():
                missing = sorted({p.name for p in v.s if isinstance(p, Placeholder) and p.name not in values})
                if missing:
                    raise Unsupported(
                        "placeholder(s) " + ", ".join(f"%{m}%" for m in missing)
                        + " (|expand) have no values in detect/placeholders.yaml"
                    )
                expanded = v.replace_placeholders(lambda p: [SigmaString(str(x)) for x in values[p.name]])
                c.value = expanded[0] if len(expanded) == 1 else SigmaExpansion(expanded)
            continue
        stack.extend(getattr(c, "args", None) or [])


def load_placeholders(path: Path = DEFAULT_PLACEHOLDERS) -> dict[str, list[str]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of placeholder name -> list of values")
    out: dict[str, list[str]] = {}
    for k, v in data.items():
        vals = v if isinstance(v, list) else [v]
        out[str(k)] = [str(x) for x in vals if x is not None]
    return out


def _split_range_conditions(doc: dict) -> tuple[dict, dict | None]:
    """pySigma accepts one operator per correlation condition; Taishi also allows ranges
    (``gte: 5, lt: 10``). Keep the full condition aside and give pySigma the first operator."""
    corr = doc.get("correlation")
    if not isinstance(corr, dict) or not isinstance(corr.get("condition"), dict):
        return doc, None
    cond = dict(corr["condition"])
    ops = [k for k in cond if k in ("gt", "gte", "lt", "lte", "eq", "neq")]
    if len(ops) <= 1:
        return doc, cond
    doc = copy.deepcopy(doc)
    doc["correlation"]["condition"] = {k: v for k, v in cond.items() if k not in ops[1:]}
    return doc, cond


class RuleSet:
    """Loaded rules. ``rules``: compiled single-event rules; ``correlations``: correlation
    specs; ``errors``: (path, reason) of files/documents that did not load; ``issues``: what
    :meth:`check` reports."""

    def __init__(
        self,
        logsources: LogsourceTable | None = None,
        placeholders: dict[str, list[str]] | None = None,
        field_mapping: bool = True,
    ):
        self.logsources = logsources or LogsourceTable.load()
        self.placeholders = load_placeholders() if placeholders is None else placeholders
        # field_mapping=False compiles rules with their field names as written (the
        # differential test compares against pySigma's SQLite backend that way)
        self.field_mapping = field_mapping
        self._pipeline = field_mapping_pipeline() if field_mapping else None
        self.rules: list[Rule] = []
        self.correlations: list[CorrelationSpec] = []
        self.filters: list[FilterSpec] = []
        self.errors: list[tuple[str, str]] = []
        self.issues: list[Issue] = []
        self.files: list[str] = []
        self._by_id: dict[str, Rule] = {}

    # ------------------------------------------------------------------ loading

    @staticmethod
    def rule_files(paths: Iterable[Path | str]) -> list[Path]:
        out: list[Path] = []
        for p in map(Path, paths):
            cands = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
            for f in cands:
                n = f.name.lower()
                if n.endswith((".tests.yml", ".tests.yaml")):
                    continue
                if n.endswith((".yml", ".yaml")):
                    out.append(f)
        return out

    @classmethod
    def load(
        cls,
        paths: Iterable[Path | str],
        logsources: LogsourceTable | None = None,
        placeholders: dict[str, list[str]] | None = None,
        field_mapping: bool = True,
    ) -> "RuleSet":
        rs = cls(logsources, placeholders, field_mapping)
        for f in cls.rule_files(paths):
            try:
                text = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                rs._error(str(f), f"cannot read: {e}")
                continue
            rs._add_text(text, str(f))
        rs._finish()
        return rs

    @classmethod
    def from_yaml(
        cls,
        text: str,
        path: str = "<string>",
        logsources: LogsourceTable | None = None,
        placeholders: dict[str, list[str]] | None = None,
        field_mapping: bool = True,
    ) -> "RuleSet":
        rs = cls(logsources, placeholders, field_mapping)
        rs._add_text(text, path)
        rs._finish()
        return rs

    def _error(self, path: str, reason: str, rule: str = "") -> None:
        self.errors.append((path, reason))
        self.issues.append(Issue(path, "error", reason, rule))

    def _add_text(self, text: str, path: str) -> None:
        self.files.append(path)
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            self._error(path, f"YAML error: {e}")
            return
        if not all(isinstance(d, dict) for d in docs):
            self._error(path, "not a Sigma rule: a YAML document is not a mapping")
            return
        conditions: list[dict | None] = []
        fixed = []
        for d in docs:
            d2, cond = _split_range_conditions(d)
            fixed.append(d2)
            if "correlation" in d:
                conditions.append(cond)
        try:
            # collect_filters: filters apply across all loaded files, in _finish
            coll = SigmaCollection.from_dicts(
                fixed, collect_errors=True, resolve_references=False, collect_filters=True
            )
        except Exception as e:  # pySigma raises many types; keep them per file
            self._error(path, f"pySigma: {type(e).__name__}: {e}")
            return
        for err in coll.errors:
            self._error(path, f"pySigma: {type(err).__name__}: {err}")
        if coll.errors:
            return
        for i, flt in enumerate(coll.filters):
            self._add_filter(flt, path, i)
        corr_i = 0
        for i, r in enumerate(coll.rules):
            if isinstance(r, SigmaCorrelationRule):
                self._add_correlation(r, conditions[corr_i], path, i)
                corr_i += 1
            elif isinstance(r, SigmaRule):
                self._add_rule(r, path, i)
            else:
                self.issues.append(
                    Issue(path, "error", f"{type(r).__name__} documents are not supported", r.title)
                )

    def _add_rule(self, r: SigmaRule, path: str, index: int) -> None:
        rid = _rule_id(r, path, index)
        label = f"{rid} ({r.title})"
        if rid in self._by_id or any(c.id == rid for c in self.correlations):
            self.issues.append(Issue(path, "error", f"duplicate rule id {rid}; rule not loaded", label))
            return
        ls = r.logsource
        key = logsource_key(ls.product, ls.category, ls.service)
        try:
            if self._pipeline is not None:
                self._pipeline.apply(r)  # Sigma field names -> ECS (detect/fieldmap.yaml)
            nodes = self._compile(r.detection)
        except Unsupported as e:
            self.issues.append(Issue(path, "error", f"{e}; rule not loaded", label))
            return
        except Exception as e:  # condition errors surface when parsed
            self.issues.append(Issue(path, "error", f"{type(e).__name__}: {e}; rule not loaded", label))
            return
        ls_node = self.logsources.node(key)
        mapped = ls_node is not None
        if ls_node is None:
            # "Any logsource": no ECS routing, so the rule runs on events the producer tagged with
            # its logsource, with fields as named in those events.
            ls_node = self.logsources.tag_node(key)
            self.issues.append(
                Issue(
                    path,
                    "warning",
                    f"no ECS mapping for logsource {key!r} (not in detect/logsources.yaml): "
                    "matches only events tagged with it (taishi.logsource)",
                    label,
                )
            )
        pred = nodes[0] if len(nodes) == 1 else Node("or", nodes)
        for fld in sorted(pred.all_fields()) if mapped else ():
            if fld not in EVENT_FIELDS:
                self.issues.append(
                    Issue(
                        path,
                        "warning",
                        f"field {fld} is not an ECS field Taishi produces; it will match fields as "
                        "named in the event only if present",
                        label,
                    )
                )
        tags = [str(t) for t in (r.tags or [])]
        tech, tac = threat_from_tags(tags)
        rule = Rule(
            id=rid,
            title=r.title,
            name=r.name,
            level=str(r.level) if r.level else None,
            description=r.description,
            tags=tags,
            path=path,
            logsource=key,
            predicate=pred,
            logsource_filter=ls_node,
            techniques=tech,
            tactics=tac,
            logsource_parts=tuple(key.split("/")),  # type: ignore[arg-type]
        )
        self.rules.append(rule)
        self._by_id[rid] = rule

    def _compile(self, detection: Any) -> list[Node]:
        """The condition trees of a rule's or filter's detection, placeholders expanded,
        compiled to predicates; Unsupported for what the evaluator cannot run."""
        bad = _unsupported_modifiers(detection)
        if bad:
            raise Unsupported(f"unsupported modifier(s): {', '.join(bad)}")
        conds = [c.parsed for c in detection.parsed_condition]
        for c in conds:
            _expand_placeholders(c, self.placeholders)
        return [compile_condition(c) for c in conds]

    def _add_filter(self, f: SigmaFilter, path: str, index: int) -> None:
        fid = _rule_id(f, path, index)
        label = f"{fid} ({f.title})"
        if any(x.id == fid for x in self.filters):
            self.issues.append(Issue(path, "error", f"duplicate filter id {fid}; filter not loaded", label))
            return
        g = f.filter
        try:
            nodes = self._compile(g)
        except Unsupported as e:
            self.issues.append(Issue(path, "error", f"Sigma filter: {e}; filter not applied", label))
            return
        except Exception as e:
            self.issues.append(Issue(path, "error", f"Sigma filter: {type(e).__name__}: {e}; filter not applied", label))
            return
        ls = f.logsource
        parts = tuple((x or "").strip().lower() for x in (ls.product, ls.category, ls.service))
        rules = None if isinstance(g.rules, str) else [ref.reference for ref in g.rules]
        node = nodes[0] if len(nodes) == 1 else Node("and", nodes)
        self.filters.append(FilterSpec(fid, f.title, path, rules, parts, node))  # type: ignore[arg-type]

    def _add_correlation(self, r: SigmaCorrelationRule, cond: dict | None, path: str, index: int) -> None:
        rid = _rule_id(r, path, index)
        label = f"{rid} ({r.title})"
        ctype = r.type.name.lower() if hasattr(r.type, "name") else str(r.type)
        if ctype not in ENGINE_CORRELATION_TYPES:
            self.issues.append(
                Issue(path, "error", f"correlation type {ctype} is not supported yet; rule not loaded", label)
            )
            return
        try:
            conditions, fieldref, percentile = parse_condition_ex(cond or {})
            if not conditions and ctype not in TEMPORAL_TYPES:
                raise ValueError("correlation condition has no operator")
            if ctype in NUMERIC_TYPES and not fieldref:
                raise ValueError(f"{ctype} needs a condition field")
            if ctype == "value_percentile" and percentile is None:
                raise ValueError("value_percentile needs a condition percentile (0..100)")
            if percentile is not None and ctype != "value_percentile":
                raise ValueError(f"condition percentile is only for value_percentile, not {ctype}")
        except ValueError as e:
            self.issues.append(Issue(path, "error", f"{e}; rule not loaded", label))
            return
        # group-by alias -> {rule reference as written -> event field}; resolved to rule ids in _finish
        aliases = {a.alias: {ref.reference: str(fld) for ref, fld in a.mapping.items()} for a in (r.aliases or [])}
        tags = [str(t) for t in (r.tags or [])]
        tech, tac = threat_from_tags(tags)
        spec = CorrelationSpec(
            id=rid,
            title=r.title,
            type=ctype,
            rule_refs=[ref.reference for ref in (r.rules or [])],
            group_by=list(r.group_by or []),
            timespan_s=int(r.timespan.seconds),
            conditions=conditions,
            field=fieldref,
            generate=bool(r.generate),
            level=str(r.level) if r.level else None,
            description=r.description,
            tags=tags,
            techniques=tech,
            tactics=tac,
            path=path,
            name=r.name,
            percentile=percentile,
            aliases=aliases,
        )
        self.correlations.append(spec)

    def _finish(self) -> None:
        """Apply Sigma filters; resolve correlation references (name or id) and base rules' ``generate``."""
        for flt in self.filters:
            for r in self.rules:
                if flt.applies(r):
                    r.predicate = Node("and", [r.predicate, flt.node])
                    r.filters.append(flt.id)
                    flt.applied_to.append(r.id)
            known = {r.id for r in self.rules} | {r.name for r in self.rules if r.name}
            missing = [x for x in (flt.rules or []) if x not in known]
            label = f"{flt.id} ({flt.title})"
            if missing:
                self.issues.append(
                    Issue(flt.path, "warning", f"Sigma filter references unknown or not-loaded rule(s): {', '.join(missing)}", label)
                )
            if not flt.applied_to:
                self.issues.append(Issue(flt.path, "warning", "Sigma filter applies to no loaded rule", label))
        by_name = {r.name: r for r in self.rules if r.name}
        ok: list[CorrelationSpec] = []
        for c in self.correlations:
            resolved, missing = [], []
            for ref in c.rule_refs:
                rule = self._by_id.get(ref) or by_name.get(ref)
                if rule is None:
                    missing.append(ref)
                else:
                    resolved.append(rule.id)
            if missing:
                known_corr = {x.id for x in self.correlations} | {x.name for x in self.correlations if x.name}
                why = (
                    "references correlation rules (chaining is not supported)"
                    if all(m in known_corr for m in missing)
                    else "references unknown or not-loaded rule(s)"
                )
                self.issues.append(
                    Issue(c.path, "error", f"correlation {why}: {', '.join(missing)}; rule not loaded", f"{c.id} ({c.title})")
                )
                continue
            c.rule_ids = resolved
            alias_errors = self._resolve_aliases(c, by_name)
            if alias_errors:
                for msg in alias_errors:
                    self.issues.append(Issue(c.path, "error", f"{msg}; rule not loaded", f"{c.id} ({c.title})"))
                continue
            ok.append(c)
        self.correlations = ok
        # A base rule alerts on its own unless every correlation using it says generate: false.
        users: dict[str, list[bool]] = {}
        for c in ok:
            for rid in c.rule_ids:
                users.setdefault(rid, []).append(c.generate)
        for r in self.rules:
            if r.id in users:
                r.generate = any(users[r.id])

    def _resolve_aliases(self, c: CorrelationSpec, by_name: dict[str, Rule]) -> list[str]:
        """Key ``c.aliases`` by resolved rule id; what is wrong with them."""
        errors: list[str] = []
        resolved: dict[str, dict[str, str]] = {}
        for alias, mapping in c.aliases.items():
            m: dict[str, str] = {}
            for ref, fld in mapping.items():
                rule = self._by_id.get(ref) or by_name.get(ref)
                if rule is None or rule.id not in c.rule_ids:
                    errors.append(f"correlation alias {alias} maps {ref}, which the correlation does not reference")
                else:
                    m[rule.id] = fld
            if alias in c.group_by or alias == c.field:
                lacking = [ref for ref, rid in zip(c.rule_refs, c.rule_ids) if rid not in m]
                if lacking:
                    errors.append(f"correlation alias {alias} has no field for rule(s) {', '.join(dict.fromkeys(lacking))}")
            resolved[alias] = m
        c.aliases = resolved
        return errors

    # ------------------------------------------------------------------ checking

    def check(self) -> list[Issue]:
        """Everything unsupported, unknown or suspicious, errors first."""
        return sorted(self.issues, key=lambda i: (i.severity != "error", i.path, i.rule, i.message))

    def all_rules(self) -> list[Rule | CorrelationSpec]:
        """Loaded single-event rules, then loaded correlation rules."""
        return [*self.rules, *self.correlations]

    def rule(self, rule_id: str) -> Rule:
        return self._by_id[rule_id]

    def subset(self, rule_ids: Iterable[str]) -> "RuleSet":
        """A RuleSet sharing these compiled rules (and the correlations over them)."""
        ids = set(rule_ids)
        rs = RuleSet(self.logsources, self.placeholders, self.field_mapping)
        rs.rules = [r for r in self.rules if r.id in ids]
        rs._by_id = {r.id: r for r in rs.rules}
        rs.correlations = [c for c in self.correlations if set(c.rule_ids) <= ids]
        return rs

    # ------------------------------------------------------------------ matching

    def match(self, events: pa.Table) -> pa.Table:
        """``(rule.id, event.row)`` for every single-event rule match in ``events``."""
        ctx = BatchContext(events)
        ids: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for i, rule in enumerate(self.rules):
            m = rule.mask(ctx)
            hit = np.flatnonzero(m)
            if len(hit):
                rows.append(hit.astype(np.int64))
                ids.append(np.full(len(hit), i, dtype=np.int64))
        if not rows:
            return MATCH_SCHEMA.empty_table()
        rule_idx = np.concatenate(ids)
        row = np.concatenate(rows)
        names = pa.array([r.id for r in self.rules], pa.string())
        return pa.Table.from_arrays([pc.take(names, pa.array(rule_idx)), pa.array(row, pa.int64())], schema=MATCH_SCHEMA)

    def to_alerts(self, events: pa.Table, matches: pa.Table) -> pa.Table:
        """ALERT_SCHEMA rows for ``matches`` of rules that generate alerts."""
        if matches.num_rows == 0:
            return ALERT_SCHEMA.empty_table()
        # only the matches of generating rules are looked at row by row (correlation bases are often
        # the most frequent matches, and generate nothing themselves)
        gen = [rid for rid, r in self._by_id.items() if r.generate]
        if not gen:
            return ALERT_SCHEMA.empty_table()
        if len(gen) < len(self._by_id):
            matches = matches.filter(pc.fill_null(pc.is_in(matches.column("rule.id"), value_set=pa.array(gen, pa.string())), False))
        mids = matches.column("rule.id").to_pylist()
        mrows = matches.column("event.row").to_pylist()
        keep = [i for i, rid in enumerate(mids) if rid in self._by_id and self._by_id[rid].generate]
        if not keep:
            return ALERT_SCHEMA.empty_table()
        rules = [self._by_id[mids[i]] for i in keep]
        rows = pa.array([mrows[i] for i in keep], pa.int64())
        n = len(rules)

        def ev(name: str, typ: pa.DataType) -> pa.Array:
            if name in events.column_names:
                col = pc.take(events.column(name), rows)
                return col.cast(typ) if col.type != typ else col
            return pa.nulls(n, typ)

        event_ids = ev("event.id", pa.string()).to_pylist()
        cols: dict[str, Any] = {
            "id": pa.array([alert_id(r.id, [e or ""]) for r, e in zip(rules, event_ids)], pa.string()),
            "@timestamp": ev("@timestamp", ALERT_SCHEMA.field("@timestamp").type),
            "event.kind": pa.array(["alert"] * n, pa.string()),
            "event.severity": pa.array([LEVEL_SEVERITY.get(r.level or "", None) for r in rules], pa.int64()),
            "rule.id": pa.array([r.id for r in rules], pa.string()),
            "rule.name": pa.array([r.title for r in rules], pa.string()),
            "rule.level": pa.array([r.level for r in rules], pa.string()),
            "rule.description": pa.array([r.description for r in rules], pa.string()),
            "rule.type": pa.array(["sigma"] * n, pa.string()),
            "threat.technique.id": pa.array([r.techniques for r in rules], pa.list_(pa.string())),
            "threat.tactic.name": pa.array([r.tactics for r in rules], pa.list_(pa.string())),
            "tags": pa.array([r.tags for r in rules], pa.list_(pa.string())),
            "event.count": pa.array([1] * n, pa.int64()),
            "event.ids": pa.array([[e] if e is not None else [] for e in event_ids], pa.list_(pa.string())),
            "message": pa.array([r.title for r in rules], pa.string()),
        }
        for f in ALERT_COPY_FIELDS:
            cols[f] = ev(f, ALERT_SCHEMA.field(f).type)
        arrays = [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in ALERT_SCHEMA]
        return pa.Table.from_arrays(arrays, schema=ALERT_SCHEMA)
