"""The CII inventory: systems, their assets, and a change log.

Fields follow the CII Security Protection Regulations (2021, arts. 9-11) and
GB/T 39204-2022: who operates the system (name + unified social credit code,
GB 32100-2015 check digit verified), its sector and protection department,
its key business and what that depends on, its MLPS level and filing
(备案) number, the last MLPS assessment (测评) and cryptography assessment
(密评), and where it lives on the network. Assets are the hosts of a system.

Storage
-------
A JSON document at ``<data_dir>/compliance/inventory.json`` (written atomically:
temp file, fsync, rename, under an ``fcntl`` lock; :meth:`Inventory.editing`
holds the lock from read to write, so concurrent editors do not lose changes)
and an append-only JSON-lines change log beside it, ``inventory_changes.jsonl``. Not a table in
``store.duckdb``: that file is held by one process at a time (the store opens
it per operation and ingest keeps it busy), an inventory is a few thousand rows
at most, read whole by every user (enrichment, discovery, checks), and the
auditors want a file they can diff, back up and hand over. The change log is
append-only so history is never rewritten.

Import / export
---------------
CSV (one kind of record per file: ``system`` or ``asset``; list fields are
``;``-separated) and YAML (``{systems: [...], assets: [...]}``). Each row is
validated on its own; a bad row is reported as a :class:`RowError` (row
number, field, reason) and skipped, every valid row is applied.

Change log
----------
Each changed field of an existing record is one entry (who, when, record,
field, old, new). A change of a *material* field (``sector``, ``mlps_level``,
``key_business``, ``cidrs``) sets ``reidentify`` on the system: art. 11 of the
Regulations has the operator report such changes so the protection department
re-identifies the system. :meth:`Inventory.clear_reidentify` records who
cleared it.

Enrichment
----------
:func:`enrich` adds, for ``source.ip`` and ``destination.ip``, the columns in
:data:`ENRICH_FIELDS`. The most specific network wins (an asset's ``/32``
beats its system's ``/24``; a ``/25`` beats an overlapping ``/16``); an asset
match gives the asset and its system, otherwise a system CIDR match gives
only the system.
"""

from __future__ import annotations

import csv
import fcntl
import io
import ipaddress
import json
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

__all__ = [
    "SECTORS", "MATERIAL_FIELDS", "ENRICH_FIELDS", "System", "Asset", "RowError",
    "ImportResult", "Inventory", "credit_code_valid", "credit_code_check_char", "enrich",
    "NetworkIndex",
]

# ---------------------------------------------------------------------------- vocabularies

SECTORS: dict[str, str] = {
    # canonical -> Chinese name (both are accepted on import)
    "communications": "公共通信和信息服务",
    "energy": "能源",
    "transport": "交通",
    "water": "水利",
    "finance": "金融",
    "public_services": "公共服务",
    "e_government": "电子政务",
    "defence_industry": "国防科技工业",
}
_SECTOR_ALIASES = {v: k for k, v in SECTORS.items()} | {
    "通信": "communications", "公共通信": "communications", "水": "water",
    "e-government": "e_government", "egovernment": "e_government", "public services": "public_services",
    "defence industry": "defence_industry", "defense_industry": "defence_industry",
}
# MLPS assessment conclusion (GB/T 28449 / 测评报告 since 2021: 优 良 中 差)
ASSESSMENT_RESULTS = {"excellent": "优", "good": "良", "fair": "中", "poor": "差"}
_RESULT_ALIASES = {v: k for k, v in ASSESSMENT_RESULTS.items()}
CRYPTO_STATUSES = ("passed", "basically_passed", "failed", "in_progress", "not_assessed")
CRITICALITIES = ("low", "medium", "high", "critical")
MATERIAL_FIELDS = frozenset({"sector", "mlps_level", "key_business", "cidrs"})

# Enrichment columns, name -> arrow type (for taishi/schema.py EVENT_FIELDS).
ENRICH_FIELDS: dict[str, pa.DataType] = {}
for _side in ("source", "destination"):
    ENRICH_FIELDS[f"taishi.{_side}.asset.id"] = pa.string()
    ENRICH_FIELDS[f"taishi.{_side}.asset.system"] = pa.string()  # CII system id
    ENRICH_FIELDS[f"taishi.{_side}.asset.level"] = pa.int64()  # MLPS level 1-5
    ENRICH_FIELDS[f"taishi.{_side}.asset.sector"] = pa.string()

# ---------------------------------------------------------------------------- credit code

_CC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100-2015: no I O S V Z
_CC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_CC_RE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}$")


def credit_code_check_char(first17: str) -> str:
    """The 18th character of a unified social credit code (GB 32100-2015 §5)."""
    total = sum(_CC_CHARS.index(c) * w for c, w in zip(first17.upper(), _CC_WEIGHTS))
    return _CC_CHARS[(31 - total % 31) % 31]


def credit_code_valid(code: str) -> tuple[bool, str]:
    """(ok, reason): 18 characters of the code set, digits 3-8 an administrative
    division code, and the check character right."""
    c = (code or "").strip().upper()
    if len(c) != 18:
        return False, f"must be 18 characters, got {len(c)}"
    bad = sorted({ch for ch in c if ch not in _CC_CHARS})
    if bad:
        return False, f"characters not allowed by GB 32100-2015: {''.join(bad)}"
    if not _CC_RE.match(c):
        return False, "characters 3-8 must be digits (administrative division code)"
    want = credit_code_check_char(c[:17])
    if c[17] != want:
        return False, f"check character is {c[17]}, should be {want}"
    return True, ""


# ---------------------------------------------------------------------------- records


@dataclass
class System:
    cii_id: str
    name: str
    operator: str
    credit_code: str
    sector: str
    protection_dept: str = ""
    key_business: str = ""
    dependencies: list[str] = field(default_factory=list)  # the key business's dependency chain
    mlps_level: int = 3
    filing_no: str = ""
    last_assessment_date: str = ""  # ISO date
    last_assessment_result: str = ""  # excellent / good / fair / poor
    crypto_assessment: str = "not_assessed"
    zone: str = ""
    cidrs: list[str] = field(default_factory=list)
    location: str = ""
    owner: str = ""
    security_contacts: list[str] = field(default_factory=list)
    reidentify: bool = False  # a material change awaits re-identification

    @property
    def id(self) -> str:
        return self.cii_id


@dataclass
class Asset:
    asset_id: str
    system_id: str
    hostname: str = ""
    ips: list[str] = field(default_factory=list)  # addresses or CIDRs
    role: str = ""
    criticality: str = "medium"
    services: list[str] = field(default_factory=list)  # declared: "tcp/443", "udp/53", "443"

    @property
    def id(self) -> str:
        return self.asset_id


_LIST_FIELDS = {"dependencies", "cidrs", "security_contacts", "ips", "services"}
SYSTEM_FIELDS = [f.name for f in fields(System)]
ASSET_FIELDS = [f.name for f in fields(Asset)]
_REQUIRED = {
    "system": ("cii_id", "name", "operator", "credit_code", "sector", "mlps_level"),
    "asset": ("asset_id", "system_id"),
}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class RowError:
    row: int  # CSV: line number in the file (header is line 1); YAML: 1-based position in its list
    field: str
    reason: str
    kind: str = "system"

    def __str__(self) -> str:
        return f"{self.kind} row {self.row}: {self.field}: {self.reason}"


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class _Invalid(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _as_list(v: Any) -> list[str]:
    if v is None or v == "":
        return []
    if isinstance(v, (list, tuple)):
        return [str(x).strip() for x in v if x is not None and str(x).strip()]
    return [x.strip() for x in str(v).split(";") if x.strip()]


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text.strip(), strict=True)


def _validate_system(raw: dict[str, Any]) -> System:
    unknown = sorted(set(raw) - set(SYSTEM_FIELDS))
    if unknown:
        raise _Invalid(unknown[0], "unknown field")
    v = {k: ("" if raw.get(k) is None else raw.get(k)) for k in raw}
    for k in _REQUIRED["system"]:
        if str(v.get(k, "")).strip() == "":
            raise _Invalid(k, "required")
    out: dict[str, Any] = {}
    for k in SYSTEM_FIELDS:
        if k not in v:
            continue
        out[k] = _as_list(v[k]) if k in _LIST_FIELDS else v[k]
        if isinstance(out[k], str):
            out[k] = out[k].strip()
    if not _ID_RE.match(out["cii_id"]):
        raise _Invalid("cii_id", "letters, digits, '.', '_' or '-', at most 64")
    ok, why = credit_code_valid(str(out["credit_code"]))
    if not ok:
        raise _Invalid("credit_code", why)
    out["credit_code"] = str(out["credit_code"]).upper()
    sec = str(out["sector"]).strip()
    sec = sec if sec in SECTORS else _SECTOR_ALIASES.get(sec.lower(), _SECTOR_ALIASES.get(sec))
    if sec is None:
        raise _Invalid("sector", f"one of {', '.join(SECTORS)} (or its Chinese name), not {out['sector']!r}")
    out["sector"] = sec
    try:
        lvl = int(str(out["mlps_level"]).strip())
    except ValueError:
        raise _Invalid("mlps_level", f"an integer 1-5, not {out['mlps_level']!r}") from None
    if not 1 <= lvl <= 5:
        raise _Invalid("mlps_level", f"must be 1-5, not {lvl}")
    out["mlps_level"] = lvl
    if out.get("last_assessment_date"):
        try:
            d = date.fromisoformat(str(out["last_assessment_date"]))
        except ValueError:
            raise _Invalid("last_assessment_date", f"an ISO date (YYYY-MM-DD), not {out['last_assessment_date']!r}") from None
        if d > datetime.now(timezone.utc).date():
            raise _Invalid("last_assessment_date", "is in the future")
        out["last_assessment_date"] = d.isoformat()
    if out.get("last_assessment_result"):
        r = str(out["last_assessment_result"]).strip()
        r = r.lower() if r.lower() in ASSESSMENT_RESULTS else _RESULT_ALIASES.get(r)
        if r is None:
            raise _Invalid("last_assessment_result", f"one of {', '.join(ASSESSMENT_RESULTS)} (优/良/中/差)")
        out["last_assessment_result"] = r
    if out.get("crypto_assessment", "") != "":
        if out["crypto_assessment"] not in CRYPTO_STATUSES:
            raise _Invalid("crypto_assessment", f"one of {', '.join(CRYPTO_STATUSES)}")
    else:
        out.pop("crypto_assessment", None)
    cidrs = []
    for c in out.get("cidrs", []):
        try:
            cidrs.append(str(_net(c)))
        except ValueError as e:
            raise _Invalid("cidrs", f"{c!r}: {e}") from None
    out["cidrs"] = cidrs
    if "reidentify" in out:
        out["reidentify"] = str(out["reidentify"]).strip().lower() in ("1", "true", "yes")
    return System(**out)


_SERVICE_RE = re.compile(r"^(?:(tcp|udp|sctp|icmp)/)?(\d{1,5})$")


def _validate_asset(raw: dict[str, Any], system_ids: set[str]) -> Asset:
    unknown = sorted(set(raw) - set(ASSET_FIELDS))
    if unknown:
        raise _Invalid(unknown[0], "unknown field")
    for k in _REQUIRED["asset"]:
        if str(raw.get(k) or "").strip() == "":
            raise _Invalid(k, "required")
    out: dict[str, Any] = {}
    for k in ASSET_FIELDS:
        if k in raw and raw[k] is not None:
            out[k] = _as_list(raw[k]) if k in _LIST_FIELDS else str(raw[k]).strip()
    if not _ID_RE.match(out["asset_id"]):
        raise _Invalid("asset_id", "letters, digits, '.', '_' or '-', at most 64")
    if out["system_id"] not in system_ids:
        raise _Invalid("system_id", f"no CII system {out['system_id']!r} in the inventory")
    ips = []
    for a in out.get("ips", []):
        try:
            ips.append(str(ipaddress.ip_address(a)) if "/" not in a else str(_net(a)))
        except ValueError as e:
            raise _Invalid("ips", f"{a!r}: {e}") from None
    out["ips"] = ips
    crit = out.get("criticality") or "medium"
    if crit not in CRITICALITIES:
        raise _Invalid("criticality", f"one of {', '.join(CRITICALITIES)}, not {crit!r}")
    out["criticality"] = crit
    svcs = []
    for s in out.get("services", []):
        m = _SERVICE_RE.match(s.lower())
        if not m or not 0 < int(m.group(2)) < 65536:
            raise _Invalid("services", f"{s!r}: expected PORT or PROTO/PORT (tcp/443)")
        svcs.append(f"{m.group(1) or 'tcp'}/{int(m.group(2))}")
    out["services"] = svcs
    return Asset(**out)


# ---------------------------------------------------------------------------- the inventory


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Inventory:
    """Systems and assets in memory; :meth:`load` / :meth:`save` persist them.

    ``Inventory.open(data_dir)`` reads ``<data_dir>/compliance/inventory.json``
    (empty if absent) and remembers where to save and log changes. An
    inventory made with ``Inventory()`` keeps its change log in memory only.
    """

    def __init__(self, path: Path | None = None):
        self.systems: dict[str, System] = {}
        self.assets: dict[str, Asset] = {}
        self.path = path
        self.changes: list[dict[str, Any]] = []  # changes made through this object
        self._index: tuple[NetworkIndex, NetworkIndex] | None = None

    # -- persistence ----------------------------------------------------------------
    @staticmethod
    def file(data_dir: Path | str) -> Path:
        """Where the inventory of ``data_dir`` lives."""
        return Path(data_dir) / "compliance" / "inventory.json"

    @classmethod
    def open(cls, data_dir: Path | str) -> "Inventory":
        """The inventory of ``data_dir`` as it is now (for reading; to change it
        from several processes safely, use :meth:`editing`)."""
        inv = cls(cls.file(data_dir))
        inv._load()
        return inv

    @classmethod
    @contextmanager
    def editing(cls, data_dir: Path | str) -> Iterator["Inventory"]:
        """Read, change and save under the file lock, so concurrent editors (CLI,
        API) never lose each other's changes: ``with Inventory.editing(d) as inv: ...``.
        Saved when the block ends without an exception."""
        inv = cls(cls.file(data_dir))
        with inv._locked():
            inv._load()
            inv._holding_lock = True
            try:
                yield inv
                inv._write()
            finally:
                inv._holding_lock = False

    def _load(self) -> None:
        assert self.path is not None
        self.systems, self.assets, self._index = {}, {}, None
        if self.path.exists():
            doc = json.loads(self.path.read_text())
            self.systems = {s["cii_id"]: System(**s) for s in doc.get("systems", [])}
            self.assets = {a["asset_id"]: Asset(**a) for a in doc.get("assets", [])}

    @property
    def changelog_path(self) -> Path | None:
        return self.path.with_name("inventory_changes.jsonl") if self.path else None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(".inventory.lock"), "w") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

    def save(self) -> None:
        """Write the whole inventory (last writer wins; see :meth:`editing`)."""
        if self.path is None:
            raise ValueError("this inventory has no file; use Inventory.open(data_dir)")
        if getattr(self, "_holding_lock", False):
            self._write()
            return
        with self._locked():
            self._write()

    def _write(self) -> None:
        assert self.path is not None
        doc = {"systems": [asdict(s) for s in sorted(self.systems.values(), key=lambda s: s.cii_id)],
               "assets": [asdict(a) for a in sorted(self.assets.values(), key=lambda a: a.asset_id)]}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{id(self)}.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def history(self) -> list[dict[str, Any]]:
        """Every change ever logged (from the file), oldest first."""
        p = self.changelog_path
        if p is None or not p.exists():
            return list(self.changes)
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def _log(self, entries: list[dict[str, Any]]) -> None:
        self.changes.extend(entries)
        p = self.changelog_path
        if p is None or not entries:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a") as f:
            for e in entries:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- edits ----------------------------------------------------------------------------
    def _upsert(self, kind: str, rec: System | Asset, who: str) -> str:
        table: dict[str, Any] = self.systems if kind == "system" else self.assets
        old = table.get(rec.id)
        at = _now()
        if old is None:
            table[rec.id] = rec
            self._log([{"at": at, "who": who, "kind": kind, "id": rec.id, "field": "*",
                        "old": None, "new": asdict(rec), "material": False}])
            self._index = None
            return "added"
        entries, material = [], False
        for f in fields(rec):
            if f.name == "reidentify":
                continue
            a, b = getattr(old, f.name), getattr(rec, f.name)
            if a != b:
                mat = kind == "system" and f.name in MATERIAL_FIELDS
                material |= mat
                entries.append({"at": at, "who": who, "kind": kind, "id": rec.id, "field": f.name,
                                "old": a, "new": b, "material": mat})
        if not entries:
            return "unchanged"
        if kind == "system":
            rec.reidentify = old.reidentify or material
            if material and not old.reidentify:
                entries.append({"at": at, "who": who, "kind": kind, "id": rec.id, "field": "reidentify",
                                "old": False, "new": True, "material": True})
        table[rec.id] = rec
        self._log(entries)
        self._index = None
        return "updated"

    def put_system(self, data: dict[str, Any] | System, who: str) -> str:
        """Validate and add/update a system; returns 'added', 'updated' or 'unchanged'.
        Raises ValueError with the field and reason on bad data."""
        raw = asdict(data) if isinstance(data, System) else dict(data)
        try:
            rec = _validate_system(raw)
        except _Invalid as e:
            raise ValueError(str(e)) from None
        return self._upsert("system", rec, who)

    def put_asset(self, data: dict[str, Any] | Asset, who: str) -> str:
        raw = asdict(data) if isinstance(data, Asset) else dict(data)
        try:
            rec = _validate_asset(raw, set(self.systems))
        except _Invalid as e:
            raise ValueError(str(e)) from None
        return self._upsert("asset", rec, who)

    def clear_reidentify(self, cii_id: str, who: str) -> None:
        s = self.systems[cii_id]
        if s.reidentify:
            s.reidentify = False
            self._log([{"at": _now(), "who": who, "kind": "system", "id": cii_id, "field": "reidentify",
                        "old": True, "new": False, "material": False}])

    def assets_of(self, cii_id: str) -> list[Asset]:
        return sorted((a for a in self.assets.values() if a.system_id == cii_id), key=lambda a: a.asset_id)

    # -- import / export --------------------------------------------------------------------
    def _import_rows(self, kind: str, rows: Iterable[tuple[int, dict[str, Any]]], who: str,
                     result: ImportResult) -> None:
        seen: set[str] = set()
        key = "cii_id" if kind == "system" else "asset_id"
        for rowno, raw in rows:
            try:
                if None in raw:  # csv.DictReader: more cells than header columns
                    raise _Invalid("(row)", f"{len(raw[None])} cell(s) more than the header has")
                rid = str(raw.get(key) or "").strip()
                if rid and rid in seen:
                    raise _Invalid(key, f"duplicate {rid!r} in this import")
                rec = (_validate_system(raw) if kind == "system"
                       else _validate_asset(raw, set(self.systems)))
            except _Invalid as e:
                result.errors.append(RowError(rowno, e.field, e.reason, kind))
                continue
            seen.add(rec.id)
            what = self._upsert(kind, rec, who)
            {"added": result.added, "updated": result.updated, "unchanged": result.unchanged}[what].append(rec.id)

    def import_csv(self, text_or_path: str | Path, kind: str, who: str) -> ImportResult:
        """Import ``system`` or ``asset`` rows from CSV (header row of field names,
        list fields ``;``-separated). Bad rows are reported, good rows applied."""
        if kind not in ("system", "asset"):
            raise ValueError("kind must be 'system' or 'asset'")
        text = Path(text_or_path).read_text(encoding="utf-8-sig") if isinstance(text_or_path, Path) else text_or_path
        reader = csv.DictReader(io.StringIO(text))
        result = ImportResult()
        rows = ((reader.line_num, {k: v for k, v in r.items()}) for r in reader)
        self._import_rows(kind, rows, who, result)
        return result

    def import_yaml(self, text_or_path: str | Path, who: str) -> ImportResult:
        """Import ``{systems: [...], assets: [...]}``; systems first, so assets may
        refer to systems in the same file."""
        text = Path(text_or_path).read_text(encoding="utf-8") if isinstance(text_or_path, Path) else text_or_path
        doc = yaml.safe_load(text) or {}
        result = ImportResult()
        if not isinstance(doc, dict):
            result.errors.append(RowError(0, "(document)", "expected a mapping with systems / assets"))
            return result
        for kind, section in (("system", "systems"), ("asset", "assets")):
            items = doc.get(section) or []
            rows = []
            for i, item in enumerate(items, 1):
                if not isinstance(item, dict):
                    result.errors.append(RowError(i, "(row)", "expected a mapping", kind))
                    continue
                rows.append((i, {str(k): (v.isoformat() if isinstance(v, date) else v) for k, v in item.items()}))
            self._import_rows(kind, rows, who, result)
        return result

    def export_csv(self, kind: str) -> str:
        names = SYSTEM_FIELDS if kind == "system" else ASSET_FIELDS
        recs = sorted((self.systems if kind == "system" else self.assets).values(), key=lambda r: r.id)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        w.writeheader()
        for r in recs:
            d = asdict(r)
            w.writerow({k: ";".join(d[k]) if k in _LIST_FIELDS else d[k] for k in names})
        return buf.getvalue()

    def export_yaml(self) -> str:
        doc = {"systems": [asdict(s) for s in sorted(self.systems.values(), key=lambda s: s.cii_id)],
               "assets": [asdict(a) for a in sorted(self.assets.values(), key=lambda a: a.asset_id)]}
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)

    # -- lookups ------------------------------------------------------------------------------
    def indexes(self) -> tuple["NetworkIndex", "NetworkIndex"]:
        """(asset index, system index): networks -> asset id / system id."""
        if self._index is None:
            a = NetworkIndex([(ip, a.asset_id) for a in self.assets.values() for ip in a.ips])
            s = NetworkIndex([(c, s.cii_id) for s in self.systems.values() for c in s.cidrs])
            self._index = (a, s)
        return self._index

    def lookup(self, ips: pa.Array | pa.ChunkedArray | list[str | None]) -> dict[str, pa.Array]:
        """For each address: asset id, system id, MLPS level, sector (nulls if unknown)."""
        arr = pa.array(ips, pa.string()) if isinstance(ips, list) else ips
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        aidx, sidx = self.indexes()
        asset = aidx.lookup(arr)
        sys_of = {k: a.system_id for k, a in self.assets.items()}
        sys_from_asset = _map(asset, sys_of, pa.string())
        system = pc.coalesce(sys_from_asset, sidx.lookup(arr))
        level = _map(system, {k: s.mlps_level for k, s in self.systems.items()}, pa.int64())
        sector = _map(system, {k: s.sector for k, s in self.systems.items()}, pa.string())
        return {"asset.id": asset, "asset.system": system, "asset.level": level, "asset.sector": sector}


def _map(arr: pa.Array, mapping: dict[str, Any], typ: pa.DataType) -> pa.Array:
    """Vectorised dict lookup over a string array (nulls and unknowns -> null)."""
    if not mapping:
        return pa.nulls(len(arr), typ)
    keys = pa.array(list(mapping), pa.string())
    vals = pa.array(list(mapping.values()), typ)
    return pc.take(vals, pc.index_in(arr, value_set=keys))


# ---------------------------------------------------------------------------- CIDR lookup

_V4_RE = r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$"


class NetworkIndex:
    """Longest-prefix match of addresses against a set of networks.

    Networks are nested or disjoint (CIDRs never partially overlap), so the
    boundaries of all networks cut the address line into elementary segments,
    each owned by the most specific network covering it: networks are painted
    onto the segments from the widest to the narrowest. A lookup is then one
    ``searchsorted`` over the boundaries. IPv4 is an int64 numpy array
    (vectorised over the distinct addresses of a column); IPv6 uses Python ints
    in an object array (IPv4-mapped IPv6 addresses are looked up as IPv4).
    Equal networks: the later one in the input wins.
    """

    def __init__(self, entries: Iterable[tuple[str, str]]):
        per: dict[int, list[tuple[int, int, int, str]]] = {4: [], 6: []}
        for order, (text, payload) in enumerate(entries):
            net = ipaddress.ip_network(text, strict=False)
            per[net.version].append((net.prefixlen, order, int(net.network_address),
                                     int(net.broadcast_address), payload))  # type: ignore[arg-type]
        self._tables = {v: self._build(per[v], v) for v in (4, 6)}

    @staticmethod
    def _build(nets: list, version: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        dtype = np.int64 if version == 4 else object
        if not nets:
            return np.array([], dtype=dtype), np.array([], dtype=np.int64), []
        nets.sort(key=lambda n: (n[0], n[1]))  # widest first, then input order
        bounds = np.array(sorted({n[2] for n in nets} | {n[3] + 1 for n in nets}), dtype=dtype)
        owner = np.full(len(bounds), -1, dtype=np.int64)
        payloads = []
        for i, (_plen, _order, lo, hi, payload) in enumerate(nets):
            a = np.searchsorted(bounds, np.array([lo], dtype=dtype))[0]
            b = np.searchsorted(bounds, np.array([hi + 1], dtype=dtype))[0]
            owner[a:b] = i
            payloads.append(payload)
        return bounds, owner, payloads

    def _find(self, version: int, keys: np.ndarray) -> list[str | None]:
        bounds, owner, payloads = self._tables[version]
        if len(bounds) == 0 or len(keys) == 0:
            return [None] * len(keys)
        pos = np.searchsorted(bounds, keys, side="right") - 1
        own = np.where(pos >= 0, owner[np.clip(pos, 0, None)], -1)
        return [payloads[o] if o >= 0 else None for o in own.tolist()]

    def lookup(self, ips: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Payload of the most specific network containing each address (null if none)."""
        if isinstance(ips, pa.ChunkedArray):
            ips = ips.combine_chunks()
        if len(ips) == 0:
            return pa.array([], pa.string())
        enc = pc.dictionary_encode(ips)
        uniq: pa.Array = enc.dictionary
        out: list[str | None] = [None] * len(uniq)
        is4 = pc.fill_null(pc.match_substring_regex(uniq, _V4_RE), False)
        idx4 = np.flatnonzero(is4.to_numpy(zero_copy_only=False))
        if len(idx4):
            v4 = pc.take(uniq, pa.array(idx4))
            octets = pc.list_flatten(pc.split_pattern(v4, ".")).cast(pa.int64()).to_numpy().reshape(-1, 4)
            keys = octets @ np.array([1 << 24, 1 << 16, 1 << 8, 1], dtype=np.int64)
            for i, p in zip(idx4.tolist(), self._find(4, keys)):
                out[i] = p
        rest = np.flatnonzero(~is4.to_numpy(zero_copy_only=False))
        k4, i4, k6, i6 = [], [], [], []
        for i in rest.tolist():
            s = uniq[i].as_py()
            try:
                addr = ipaddress.ip_address(s.split("%", 1)[0])
            except (ValueError, AttributeError):
                continue
            n = int(addr)
            if addr.version == 4:
                k4.append(n); i4.append(i)
            elif n >> 32 == 0xFFFF:  # ::ffff:a.b.c.d
                k4.append(n & 0xFFFFFFFF); i4.append(i)
            else:
                k6.append(n); i6.append(i)
        if k4:
            for i, p in zip(i4, self._find(4, np.array(k4, dtype=np.int64))):
                out[i] = p
        if k6:
            arr = np.empty(len(k6), dtype=object)
            arr[:] = k6
            for i, p in zip(i6, self._find(6, arr)):
                out[i] = p
        return pc.take(pa.array(out, pa.string()), enc.indices)


def enrich(events: pa.Table, inventory: Inventory) -> pa.Table:
    """``events`` plus :data:`ENRICH_FIELDS` for ``source.ip`` and ``destination.ip``
    (an existing column of that name is replaced)."""
    out = events
    for side in ("source", "destination"):
        col = f"{side}.ip"
        ips = events.column(col) if col in events.column_names else pa.nulls(events.num_rows, pa.string())
        res = inventory.lookup(ips)
        for suffix, arr in res.items():
            name = f"taishi.{side}.{suffix}"
            fld = pa.field(name, ENRICH_FIELDS[name])
            if name in out.column_names:
                out = out.set_column(out.column_names.index(name), fld, arr)
            else:
                out = out.append_column(fld, arr)
    return out
