"""Differential test: the vectorised evaluator against a naive per-event Python reference,
on the real SigmaHQ rules that load and events built from the rules' own literals (random
case, prefixes and suffixes), so contains/startswith/endswith/wildcards/keywords really fire."""

from __future__ import annotations

import ipaddress
import random
import re
from pathlib import Path

import pytest
import yaml

from detect.compile import KEYWORD_FIELDS
from detect.logsource import DEFAULT_TABLE
from detect.rule_tests import events_from_dicts
from detect.sigma import RuleSet
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.types import (
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SpecialChars,
)


def _text(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _values(ev, f):
    v = ev.get(f)
    if v is None:
        return []
    return [x for x in v if x is not None] if isinstance(v, list) else [v]


def _str_re(s: SigmaString, cased: bool, wrap: bool = False) -> re.Pattern:
    parts = list(s.s)
    if wrap:
        parts = [SpecialChars.WILDCARD_MULTI, *parts, SpecialChars.WILDCARD_MULTI]
    rx = "".join(
        ".*" if p == SpecialChars.WILDCARD_MULTI else "." if p == SpecialChars.WILDCARD_SINGLE else re.escape(p.lower() if not cased else p)
        for p in parts
    )
    return re.compile(rx, re.S)


def ref_value(ev, f, v) -> bool:
    vals = _values(ev, f)
    if isinstance(v, SigmaExpansion):
        return any(ref_value(ev, f, x) for x in v.values)
    if isinstance(v, SigmaNull):
        return not vals
    if isinstance(v, SigmaExists):
        return bool(vals) == bool(v.exists)
    if isinstance(v, SigmaRegularExpression):
        flags = 0
        for fl in v.flags:
            flags |= {"IGNORECASE": re.I, "MULTILINE": re.M, "DOTALL": re.S}[fl.name]
        r = re.compile(v.regexp.to_plain(), flags)
        return any(r.search(_text(x)) for x in vals)
    if isinstance(v, SigmaCIDRExpression):
        out = False
        for x in vals:
            try:
                ip = ipaddress.ip_address(str(x).strip())
            except ValueError:
                continue
            out |= ip.version == v.network.version and ip in v.network
        return out
    if isinstance(v, SigmaCompareExpression):
        ops = {"LT": float.__lt__, "LTE": float.__le__, "GT": float.__gt__, "GTE": float.__ge__}
        out = False
        for x in vals:
            try:
                out |= ops[v.op.name](float(x), float(v.number.number))
            except ValueError:
                pass
        return out
    if isinstance(v, SigmaString):
        cased = isinstance(v, SigmaCasedString)
        r = _str_re(v, cased)
        return any(r.fullmatch(_text(x) if cased else _text(x).lower()) for x in vals)
    if isinstance(v, SigmaBool):
        return any(_text(x).lower() == ("true" if v.boolean else "false") for x in vals)
    if isinstance(v, SigmaNumber):
        return any((x == v.number) if isinstance(x, (int, float)) and not isinstance(x, bool) else _text(x) == str(v.number) for x in vals)
    raise AssertionError(type(v))


def ref_cond(ev, c) -> bool:
    if isinstance(c, ConditionAND):
        return all(ref_cond(ev, a) for a in c.args)
    if isinstance(c, ConditionOR):
        return any(ref_cond(ev, a) for a in c.args)
    if isinstance(c, ConditionNOT):
        return not ref_cond(ev, c.args[0])
    if isinstance(c, ConditionFieldEqualsValueExpression):
        return ref_value(ev, c.field, c.value)
    if isinstance(c, ConditionValueExpression):
        v = c.value
        if isinstance(v, SigmaNumber) and not isinstance(v, SigmaString):
            v = SigmaString(str(v.number))
        if isinstance(v, SigmaRegularExpression):
            return any(ref_value(ev, f, v) for f in KEYWORD_FIELDS)
        cased = isinstance(v, SigmaCasedString)
        r = _str_re(v, cased, wrap=True)
        return any(r.fullmatch(_text(x) if cased else _text(x).lower()) for f in KEYWORD_FIELDS for x in _values(ev, f))
    raise AssertionError(type(c))


def ref_logsource(ev, key, table) -> bool:
    if (ev.get("taishi.logsource") or "").lower() == key:
        return True
    if key not in table:  # unmapped logsource: tagged events only
        return False
    for f, cond in table[key].items():
        vals = _values(ev, f)
        if isinstance(cond, dict):
            if bool(vals) != cond["exists"]:
                return False
        else:
            want = {str(c).lower() for c in (cond if isinstance(cond, list) else [cond])}
            if not any(_text(x).lower() in want for x in vals):
                return False
    return True


def _literals(c, out):
    if isinstance(c, (ConditionAND, ConditionOR, ConditionNOT)):
        for a in c.args:
            _literals(a, out)
    elif isinstance(c, ConditionFieldEqualsValueExpression) and isinstance(c.value, SigmaString):
        out.setdefault(c.field, []).append("".join(p for p in c.value.s if isinstance(p, str)))
    elif isinstance(c, ConditionValueExpression) and isinstance(c.value, SigmaString):
        for f in KEYWORD_FIELDS:
            out.setdefault(f, []).append("".join(p for p in c.value.s if isinstance(p, str)))


def _mutate(rnd, s):
    s = "".join(ch.upper() if rnd.random() < 0.3 else ch for ch in s)
    r = rnd.random()
    if r < 0.3:
        return s
    if r < 0.5:
        return "xx " + s
    if r < 0.7:
        return s + " yy"
    if r < 0.8:
        return "a" + s + "b"
    return s[1:] if s else "z"


@pytest.mark.shared_data
def test_sigmahq_rules_vectorised_equals_reference(shared_data: Path):
    rs = RuleSet.load([shared_data / "rules" / "sigma"], field_mapping=False)  # the reference reads names as written
    table = yaml.safe_load(DEFAULT_TABLE.read_text())
    from sigma.collection import SigmaCollection

    # re-parse each loaded rule to get its condition trees for the reference
    trees = {}
    for f in sorted({r.path for r in rs.rules}):
        for sr in SigmaCollection.from_yaml(Path(f).read_text()).rules:
            if str(sr.id) in {r.id for r in rs.rules}:
                trees[str(sr.id)] = [c.parsed for c in sr.detection.parsed_condition]
    lits: dict[str, list[str]] = {}
    for ts in trees.values():
        for c in ts:
            _literals(c, lits)
    rnd = random.Random(7)
    keys = sorted({r.logsource for r in rs.rules})
    fields = sorted(lits)
    events = []
    for i in range(3000):
        ev = {"taishi.logsource": rnd.choice(keys) if rnd.random() < 0.8 else None,
              "event.dataset": rnd.choice(["system.auth", "system.syslog", "zeek.dns", "zeek.http", None]),
              "http.request.method": rnd.choice(["GET", None]), "dns.question.name": rnd.choice(["a.b", None])}
        for f in rnd.sample(fields, k=min(len(fields), rnd.randint(1, 6))):
            ev[f] = _mutate(rnd, rnd.choice(lits[f]))
        if "dns.answers.data" in ev:
            ev["dns.answers.data"] = [ev["dns.answers.data"], "other"]
        events.append(ev)
    t = events_from_dicts(events)
    got = {(m["rule.id"], m["event.row"]) for m in rs.match(t).to_pylist()}
    # reference on the table's own rows (types as coerced into the batch)
    rows = t.to_pylist()
    want = set()
    for r in rs.rules:
        for i, ev in enumerate(rows):
            if ref_logsource(ev, r.logsource, table) and any(ref_cond(ev, c) for c in trees[r.id]):
                want.add((r.id, i))
    print(f"\n{len(want)} matches of {len({rid for rid, _ in want})} rules")
    assert len(want) > 300, "the generated events should trigger many rules"
    assert len({rid for rid, _ in want}) > 40
    assert got == want
