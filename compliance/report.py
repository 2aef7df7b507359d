"""Compliance reports: per-control verdicts with evidence, and a summary per CII system.

:func:`build` evaluates the checks and returns a :class:`Report`;
:func:`to_html` renders a self-contained HTML page (no external assets, every
value escaped), :func:`to_csv` one row per verdict, :func:`to_pdf` the HTML through weasyprint
(optional). HTML and CSV rendering use only the standard library.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from compliance.checks import VERDICTS, Check, Verdict, evaluate, load_checks
from compliance.inventory import SECTORS, Inventory
from taishi.config import Config
from taishi.store import Store

VERDICT_LABEL = {"pass": "pass 符合", "fail": "fail 不符合", "not_applicable": "n/a 不适用",
                 "no_evidence": "no evidence 无证据"}


@dataclass
class Report:
    generated_at: datetime
    level: int
    systems: list[str]  # the CII systems reported on
    checks: list[Check]
    verdicts: list[Verdict]
    inventory: Inventory
    config_source: str = ""
    summary: dict[str, dict[str, int]] = field(default_factory=dict)  # system -> verdict -> n


def build(store: Store, inventory: Inventory, config: Config | None = None, *, level: int = 3,
          systems: Iterable[str] | None = None, checks: list[Check] | None = None,
          now: datetime | None = None) -> Report:
    config = config or Config()
    checks = checks if checks is not None else load_checks()
    sysids = sorted(systems) if systems is not None else sorted(inventory.systems)
    unknown = [s for s in sysids if s not in inventory.systems]
    if unknown:
        raise ValueError(f"no CII system {', '.join(unknown)} in the inventory")
    now = now or store.clock()
    verdicts = evaluate(store, inventory, config, level=level, systems=sysids, checks=checks, now=now)
    summary: dict[str, dict[str, int]] = {}
    for s in sysids:
        c = Counter(v.verdict for v in verdicts if v.system_id == s or v.scope == "global")
        summary[s] = {k: c.get(k, 0) for k in VERDICTS}
    return Report(now, level, sysids, [c for c in checks if c.level <= level], verdicts, inventory,
                  str(config.source or "(defaults)"), summary)


# ------------------------------------------------------------------------------ documents

def _counts(ev: dict[str, Any]) -> dict[str, Any] | None:
    """A verdict's counts; for a configuration check, the setting, its value and what was expected."""
    counts = ev.get("counts")
    if counts is None and "setting" in ev:
        counts = {"setting": ev["setting"], "value": ev["value"], "expected": ev["expected"]}
    return counts


def records(rep: Report) -> list[dict[str, Any]]:
    """The verdicts as flat documents for the search node's ``taishi-compliance`` index (``taishi
    compliance publish``, the Grafana MLPS dashboard): one per verdict and CII system it counts
    for -- a global verdict counts for every system, as in :attr:`Report.summary`, so counting
    documents per ``taishi.system.id`` and ``compliance.verdict`` gives the summary. ``id`` is
    :func:`taishi.ids.verdict_id`, so publishing again replaces each verdict with the latest."""
    from taishi.ids import verdict_id

    out = []
    for v in rep.verdicts:
        ev = v.evidence
        counts = _counts(ev)
        for s in (rep.systems if v.scope == "global" else [v.system_id]):
            sy = rep.inventory.systems[s]
            out.append({
                "id": verdict_id(v.check_id, v.target, s),
                "@timestamp": rep.generated_at,
                "compliance.check.id": v.check_id,
                "compliance.check.title": v.title,
                "compliance.control": v.gbt22239,
                "compliance.scope": v.scope,
                "compliance.target": v.target,
                "compliance.verdict": v.verdict,
                "compliance.reason": v.reason,
                "compliance.level": rep.level,
                "compliance.evidence.query": ev.get("query"),
                "compliance.evidence.counts": (json.dumps(counts, ensure_ascii=False, default=str)
                                               if counts is not None else None),
                "compliance.evidence.sample_event_ids": [str(x.get("event.id")) for x in ev.get("samples", [])
                                                         if x.get("event.id")],
                "taishi.system.id": s,
                "taishi.system.name": sy.name,
                "taishi.system.sector": sy.sector,
                "taishi.system.level": sy.mlps_level,
            })
    return out


# ------------------------------------------------------------------------------ CSV

CSV_COLUMNS = ["system_id", "system_name", "check_id", "gbt22239", "title", "scope", "target", "verdict",
               "reason", "query", "since", "until", "counts", "sample_event_ids"]


def to_csv(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for v in rep.verdicts:
        sysname = rep.inventory.systems[v.system_id].name if v.system_id in rep.inventory.systems else ""
        ev = v.evidence
        counts = _counts(ev)
        w.writerow([v.system_id or "*", sysname, v.check_id, v.gbt22239, v.title, v.scope, v.target,
                    v.verdict, v.reason, ev.get("query", ""), ev.get("since") or "", ev.get("until") or "",
                    json.dumps(counts, ensure_ascii=False, default=str) if counts is not None else "",
                    ";".join(str(s.get("event.id")) for s in ev.get("samples", []) if s.get("event.id"))])
    return buf.getvalue()


# ------------------------------------------------------------------------------ HTML

_CSS = """
@page{size:A4 landscape;margin:12mm;@bottom-right{content:"Taishi compliance report - " counter(page) " / " counter(pages);font-size:8pt}}
body{font-family:"Noto Sans CJK SC","Source Han Sans SC","WenQuanYi Micro Hei",sans-serif;font-size:10pt;margin:1.5em;color:#111}
h1{font-size:16pt}h2{font-size:13pt;margin-top:1.6em;border-bottom:1px solid #999}h3{font-size:11pt}
table{border-collapse:collapse;width:100%;margin:.4em 0}th,td{border:1px solid #bbb;padding:3px 5px;
vertical-align:top;text-align:left}th{background:#eee}
.v-pass{background:#d9f2d9}.v-fail{background:#f8d0d0}.v-not_applicable{background:#eee}
.v-no_evidence{background:#fff3c4}code{font-size:8.5pt;word-break:break-all}
.meta td:first-child{width:14em;font-weight:bold}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _evidence_html(v: Verdict) -> str:
    ev = v.evidence
    parts = []
    if ev.get("query"):
        parts.append(f"<div>query: <code>{_e(ev['query'])}</code></div>")
    if ev.get("since") or ev.get("until"):
        parts.append(f"<div>window: {_e(ev.get('since'))} &ndash; {_e(ev.get('until'))}</div>")
    if "setting" in ev:
        parts.append(f"<div>setting <code>{_e(ev['setting'])}</code> = {_e(ev['value'])} "
                     f"(expected {_e(ev['expected'])}; {_e(ev['config_file'])})</div>")
    if ev.get("counts"):
        counts = ev["counts"]
        if len(counts) == 1 or all(isinstance(k, str) and len(k) < 20 for k in counts):
            parts.append("<div>counts: " + ", ".join(f"{_e(k)}={_e(n)}" for k, n in counts.items()) + "</div>")
        else:
            parts.append("<div>counts:<ul>" + "".join(f"<li><code>{_e(k)}</code>: {_e(n)}</li>"
                                                       for k, n in counts.items()) + "</ul></div>")
    samples = ev.get("samples") or []
    if samples:
        keys = list(samples[0])
        rows = "".join("<tr>" + "".join(f"<td>{_e(s.get(k))}</td>" for k in keys) + "</tr>" for s in samples)
        label = ev.get("samples_are", "sample records")
        parts.append(f"<div>{_e(label)}:</div><table><tr>" + "".join(f"<th>{_e(k)}</th>" for k in keys)
                     + f"</tr>{rows}</table>")
    return "".join(parts)


def to_html(rep: Report) -> str:
    inv = rep.inventory
    out = [f"<!DOCTYPE html><html lang='zh-CN'><head><meta charset='utf-8'>"
           f"<title>Taishi compliance report (MLPS level {rep.level})</title><style>{_CSS}</style></head><body>",
           f"<h1>Compliance report &ndash; GB/T 22239-2019 level {rep.level}</h1>",
           f"<p>Generated {_e(rep.generated_at.isoformat(timespec='seconds'))} by Taishi from stored events; "
           f"configuration: {_e(rep.config_source)}. Verdicts are evidence from observed traffic and logs, "
           f"not a substitute for an MLPS assessment (测评).</p>",
           "<h2>Summary per CII system</h2><table><tr><th>CII system</th><th>sector</th><th>MLPS level</th>"
           + "".join(f"<th class='v-{k}'>{_e(VERDICT_LABEL[k])}</th>" for k in VERDICTS) + "</tr>"]
    for s in rep.systems:
        sy = inv.systems[s]
        counts = rep.summary[s]
        out.append(f"<tr><td>{_e(sy.cii_id)} {_e(sy.name)}</td><td>{_e(sy.sector)} {_e(SECTORS.get(sy.sector))}</td>"
                   f"<td>{sy.mlps_level}</td>" + "".join(f"<td>{counts[k]}</td>" for k in VERDICTS) + "</tr>")
    out.append("</table>")
    for s in rep.systems:
        sy = inv.systems[s]
        out.append(f"<h2>{_e(sy.cii_id)} &ndash; {_e(sy.name)}</h2><table class='meta'>")
        meta = [("Operator", f"{sy.operator} ({sy.credit_code})"), ("Sector", sy.sector),
                ("Protection department", sy.protection_dept), ("Key business", sy.key_business),
                ("Dependencies", " → ".join(sy.dependencies)), ("MLPS level / filing no.", f"{sy.mlps_level} / {sy.filing_no}"),
                ("Last assessment (测评)", f"{sy.last_assessment_date} {sy.last_assessment_result}"),
                ("Cryptography assessment (密评)", sy.crypto_assessment), ("Zone / CIDRs", f"{sy.zone} {', '.join(sy.cidrs)}"),
                ("Location", sy.location), ("Owner / security contacts", f"{sy.owner}; {', '.join(sy.security_contacts)}"),
                ("Re-identification pending", "YES - material change logged" if sy.reidentify else "no")]
        out += [f"<tr><td>{_e(k)}</td><td>{_e(val)}</td></tr>" for k, val in meta]
        out.append("</table>")
        for c in rep.checks:
            vs = [v for v in rep.verdicts if v.check_id == c.id and (v.system_id == s or v.scope == "global")]
            if not vs:
                continue
            out.append(f"<h3>{_e(c.gbt22239)} &ndash; {_e(c.title)}</h3><p>{_e(c.requirement)}</p>"
                       "<table><tr><th>target</th><th>verdict</th><th>reason</th><th>evidence</th></tr>")
            for v in vs:
                out.append(f"<tr><td>{_e(v.target)}</td><td class='v-{v.verdict}'>{_e(VERDICT_LABEL[v.verdict])}</td>"
                           f"<td>{_e(v.reason)}</td><td>{_evidence_html(v)}</td></tr>")
            out.append("</table>")
    out.append("</body></html>\n")
    return "\n".join(out)


def render(rep: Report, fmt: str) -> str | bytes:
    if fmt == "html":
        return to_html(rep)
    if fmt == "csv":
        return to_csv(rep)
    if fmt == "pdf":
        return to_pdf(rep)
    raise ValueError("format must be html, csv or pdf")


def to_pdf(rep: Report) -> bytes:
    """The HTML report as PDF via weasyprint (an optional dependency: ``pip install
    weasyprint``; Chinese text needs a CJK font, e.g. Debian ``fonts-wqy-microhei``)."""
    try:
        from weasyprint import HTML  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("PDF output needs weasyprint (pip install weasyprint)") from e
    return HTML(string=to_html(rep)).write_pdf()
