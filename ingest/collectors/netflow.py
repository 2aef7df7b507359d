"""NetFlow v5, v9 and IPFIX collector over UDP, feeding ``raw.netflow``.

Datagrams are binary, so they are decoded in the receive path
(:class:`FlowDecoder`) and every flow record travels on the bus as one compact
JSON object (the parser ``ingest.parsers.netflow`` maps it to ECS).

Raw representation (one ``RAW_SCHEMA`` row per decoded flow record):

* ``taishi.source`` = the collector's name (``netflow``), ``log.offset`` = the
  collector's record sequence number (continued across restarts from the bus
  frame meta, like the syslog receiver), ``hint`` = ``"netflow"``.
* ``event.original`` = JSON object, keys:

  - ``ver``: 5, 9 or 10 (IPFIX); ``exporter``: the sender's address;
    ``domain``: v9 source id / IPFIX observation domain
    (v5: ``engine_type << 8 | engine_id``); ``tid``: template id (v5: 0);
  - ``export_ms``: the export time of the datagram (unix ms);
    ``uptime_ms``: the exporter's sysUpTime (v5/v9), ``init_ms``: the
    exporter's ``systemInitTimeMilliseconds`` when an IPFIX options record
    announced it — what ``flowStart/EndSysUpTime`` are relative to;
  - the flow's information elements under their IANA IPFIX names
    (``sourceIPv4Address``, ``octetDeltaCount``, ``flowStartSysUpTime`` ...;
    v5's fixed record and v9 field types use the same names). Addresses are
    text, MACs ``aa:bb:..``, unsigned numbers ints, strings text, other
    octet arrays hex. RFC 5103 reverse elements (enterprise 29305) are
    named ``reverse<Name>`` (``reverseOctetDeltaCount``). Other
    enterprise-specific and unknown elements are skipped (counted per
    template in ``skipped_fields``).

v9/IPFIX templates are kept per (exporter, domain, template id). Data sets
that arrive before their template wait (bounded: ``max_pending_sets``) and are
decoded when the template arrives; what overflows, or is still waiting at
``stop()``, is dead-lettered. Options templates are parsed; their data records
are not flows but metadata (``options()``), e.g. ``systemInitTimeMilliseconds``.

Sequence numbers are checked per (exporter, version, domain): v5 and IPFIX
count flow records, v9 export packets; a forward jump is counted as loss
(``lost_records`` / ``lost_packets``, and per exporter/domain in
``loss()`` and the Prometheus text); a backward one (exporter restart,
reordering) is not. Exporters differ on what the number counts (RFC 7011:
records sent *before* this message; softflowd's IPFIX includes the message's
own records and leaves options records out), so the convention is learnt per
exporter: from its first message (numbered with its own record count: "post")
and from consecutive messages whose counts tell the conventions apart. A message whose record
count is unknown (data waiting for a template) resynchronises the check.

On the embedded bus a batch also carries ``netflow.decoded``: the same
records as one Arrow column per JSON key (a struct column), which the parser
maps instead of reading the JSON back; Kafka records carry the JSON only
(see :func:`raw_batch`). Both give the same events and ids.

Speed: the collector does not decode record by record. ``decode_sets`` parses
headers, templates and set structure per datagram and keeps each data set's
body; at flush, :func:`raw_batch` reads all sets of one fixed-length template
at once (numpy over the joined bodies, addresses/MACs/text converted once per
distinct value) and joins the JSON lines from those columns (Arrow string
kernels), byte for byte what the per-record path writes. Variable-length
templates are decoded record by record (compiled per template, cached), as is
``decode()`` (dicts, or JSON text with ``json_out=True``, without an
intermediate dict).

Metrics: ``metrics()`` / ``prometheus()``: datagrams, received (flow records),
dropped (buffer full), kernel_drops (the socket's receive queue overflowed —
read from /proc/net/udp), deadlettered (+ per reason), bytes, batches,
option_records, sequence_gaps, lost_records, lost_packets (+ per exporter),
skipped_fields, templates, waiting_sets, pending.

Malformed datagrams (truncated header, bad version, length mismatch, bad set
id or set length, template with zero fields, a record running past its set
...) never raise: the whole datagram is dead-lettered (stage ``read``,
``event.original`` = ``hex:`` + the datagram's bytes) with a specific reason
and counted in ``deadlettered`` and ``reasons``.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ingest.collectors import Collector, Listener, read_udp, udp_socket
from ingest.parsers import RAW_SCHEMA
from ingest.parsers.netflow import DECODED, U64_TIMES
from taishi import ids
from taishi.bus import TOPIC_DEADLETTER, Bus, raw_topic
from taishi.schema import deadletters_table

TOPIC = raw_topic("netflow")
HINT = "netflow"
REVERSE_PEN = 29305  # RFC 5103 reverse information elements
DEAD_KEEP_BYTES = 32 * 1024  # a dead datagram is kept (as hex) up to this size

# IANA IPFIX information elements we name: id -> (name, kind).
# kind: u unsigned int, ip4, ip6, mac, s string, b octets (hex), pad (skipped)
IE: dict[int, tuple[str, str]] = {
    1: ("octetDeltaCount", "u"), 2: ("packetDeltaCount", "u"), 3: ("deltaFlowCount", "u"),
    4: ("protocolIdentifier", "u"), 5: ("ipClassOfService", "u"), 6: ("tcpControlBits", "u"),
    7: ("sourceTransportPort", "u"), 8: ("sourceIPv4Address", "ip4"), 9: ("sourceIPv4PrefixLength", "u"),
    10: ("ingressInterface", "u"), 11: ("destinationTransportPort", "u"), 12: ("destinationIPv4Address", "ip4"),
    13: ("destinationIPv4PrefixLength", "u"), 14: ("egressInterface", "u"), 15: ("ipNextHopIPv4Address", "ip4"),
    16: ("bgpSourceAsNumber", "u"), 17: ("bgpDestinationAsNumber", "u"), 18: ("bgpNextHopIPv4Address", "ip4"),
    19: ("postMCastPacketDeltaCount", "u"), 20: ("postMCastOctetDeltaCount", "u"),
    21: ("flowEndSysUpTime", "u"), 22: ("flowStartSysUpTime", "u"),
    23: ("postOctetDeltaCount", "u"), 24: ("postPacketDeltaCount", "u"),
    25: ("minimumIpTotalLength", "u"), 26: ("maximumIpTotalLength", "u"),
    27: ("sourceIPv6Address", "ip6"), 28: ("destinationIPv6Address", "ip6"),
    29: ("sourceIPv6PrefixLength", "u"), 30: ("destinationIPv6PrefixLength", "u"), 31: ("flowLabelIPv6", "u"),
    32: ("icmpTypeCodeIPv4", "u"), 33: ("igmpType", "u"), 34: ("samplingInterval", "u"),
    35: ("samplingAlgorithm", "u"), 36: ("flowActiveTimeout", "u"), 37: ("flowIdleTimeout", "u"),
    38: ("engineType", "u"), 39: ("engineId", "u"), 40: ("exportedOctetTotalCount", "u"),
    41: ("exportedMessageTotalCount", "u"), 42: ("exportedFlowRecordTotalCount", "u"),
    52: ("minimumTTL", "u"), 53: ("maximumTTL", "u"), 54: ("fragmentIdentification", "u"),
    56: ("sourceMacAddress", "mac"), 57: ("postDestinationMacAddress", "mac"), 58: ("vlanId", "u"),
    59: ("postVlanId", "u"), 60: ("ipVersion", "u"), 61: ("flowDirection", "u"),
    62: ("ipNextHopIPv6Address", "ip6"), 63: ("bgpNextHopIPv6Address", "ip6"),
    80: ("destinationMacAddress", "mac"), 81: ("postSourceMacAddress", "mac"),
    82: ("interfaceName", "s"), 83: ("interfaceDescription", "s"),
    85: ("octetTotalCount", "u"), 86: ("packetTotalCount", "u"), 88: ("fragmentOffset", "u"),
    89: ("forwardingStatus", "u"), 94: ("applicationDescription", "s"), 95: ("applicationId", "b"),
    96: ("applicationName", "s"), 130: ("exporterIPv4Address", "ip4"), 131: ("exporterIPv6Address", "ip6"),
    136: ("flowEndReason", "u"), 137: ("commonPropertiesId", "u"), 138: ("observationPointId", "u"),
    139: ("icmpTypeCodeIPv6", "u"), 143: ("meteringProcessId", "u"), 144: ("exportingProcessId", "u"),
    148: ("flowId", "u"), 149: ("observationDomainId", "u"),
    150: ("flowStartSeconds", "u"), 151: ("flowEndSeconds", "u"),
    152: ("flowStartMilliseconds", "u"), 153: ("flowEndMilliseconds", "u"),
    154: ("flowStartMicroseconds", "u"), 155: ("flowEndMicroseconds", "u"),
    156: ("flowStartNanoseconds", "u"), 157: ("flowEndNanoseconds", "u"),
    158: ("flowStartDeltaMicroseconds", "u"), 159: ("flowEndDeltaMicroseconds", "u"),
    160: ("systemInitTimeMilliseconds", "u"), 161: ("flowDurationMilliseconds", "u"),
    162: ("flowDurationMicroseconds", "u"), 176: ("icmpTypeIPv4", "u"), 177: ("icmpCodeIPv4", "u"),
    178: ("icmpTypeIPv6", "u"), 179: ("icmpCodeIPv6", "u"), 184: ("tcpSequenceNumber", "u"),
    186: ("tcpWindowSize", "u"), 192: ("ipTTL", "u"), 210: ("paddingOctets", "pad"),
    225: ("postNATSourceIPv4Address", "ip4"), 226: ("postNATDestinationIPv4Address", "ip4"),
    227: ("postNAPTSourceTransportPort", "u"), 228: ("postNAPTDestinationTransportPort", "u"),
    239: ("biflowDirection", "u"), 256: ("ethernetType", "u"),
    300: ("observationDomainName", "s"), 302: ("selectorId", "u"), 304: ("selectorAlgorithm", "u"),
    305: ("samplingPacketInterval", "u"), 306: ("samplingPacketSpace", "u"),
}
# v5's fixed 48-byte record, in the same vocabulary
V5_HEADER = struct.Struct("!HHIIIIBBH")
V5_RECORD = struct.Struct("!4s4s4sHHIIIIHHxBBBHHBBxx")
V5_NAMES = ("sourceIPv4Address", "destinationIPv4Address", "ipNextHopIPv4Address", "ingressInterface",
            "egressInterface", "packetDeltaCount", "octetDeltaCount", "flowStartSysUpTime", "flowEndSysUpTime",
            "sourceTransportPort", "destinationTransportPort", "tcpControlBits", "protocolIdentifier",
            "ipClassOfService", "bgpSourceAsNumber", "bgpDestinationAsNumber", "sourceIPv4PrefixLength",
            "destinationIPv4PrefixLength")
_V5_JSON = "%s" + ",".join(f'"{k}":"%s"' if i < 3 else f'"{k}":%d' for i, k in enumerate(V5_NAMES)) + "}"


def _v5_plan() -> ColumnPlan:
    """V5_RECORD's layout as a column plan: addresses first, then unsigned numbers."""
    tokens = re.findall(r"\d*[a-zA-Z]", V5_RECORD.format[1:])
    fields, names = [], iter(V5_NAMES)
    for i, tok in enumerate(tokens):
        if tok[-1] != "x":
            off = struct.calcsize("!" + "".join(tokens[:i]))
            fields.append((next(names), "ip4" if tok[-1] == "s" else "u", off, struct.calcsize("!" + tok)))
    return ColumnPlan(tuple(fields), V5_RECORD.size)
V9_HEADER = struct.Struct("!HHIIII")
IPFIX_HEADER = struct.Struct("!HHIII")
SET_HEADER = struct.Struct("!HH")
U16 = struct.Struct("!H")
U16x2 = struct.Struct("!HH")
U16x3 = struct.Struct("!HHH")
U32 = struct.Struct("!I")

_ntoa = socket.inet_ntoa


def _ntop6(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, b)


def _mac(b: bytes) -> str:
    return b.hex(":")


def _text(b: bytes) -> str:
    return b.rstrip(b"\x00").decode("utf-8", "replace")


def _hex(b: bytes) -> str:
    return b.hex()


def _uint(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _jstr(b: bytes) -> str:
    return orjson.dumps(_text(b)).decode()


def _prefix(meta: dict) -> str:
    """'{"ver":..,' : a JSON record's opening, the header fields every record of a set shares."""
    return orjson.dumps(meta).decode()[:-1] + ","


class Malformed(Exception):
    """A datagram that cannot be decoded; the message is the dead-letter reason."""


@dataclass
class Template:
    tid: int
    fields: list[tuple[int, int, int]]  # (element id, length, enterprise number)
    options: bool
    scope_count: int
    decode: Callable[[bytes, dict], list[dict]]  # set body, header meta -> records
    min_len: int  # shortest record (fixed part)
    skipped: int  # enterprise/unknown elements skipped
    decode_json: Callable[[bytes, str], list[str]]  # set body, JSON prefix ('{"ver":..,') -> JSON lines
    plan: ColumnPlan | None = None  # how to read whole sets column-wise (fixed-length templates only)


@dataclass(frozen=True, eq=False)
class ColumnPlan:
    """A fixed-length record layout read column-wise (:func:`raw_batch`): each named
    element's (name, kind, byte offset, length) and the record size."""

    fields: tuple[tuple[str, str, int, int], ...]
    size: int


_V5_PLAN = _v5_plan()
# a data set as decode_sets() hands it on: (column plan or None, header meta, body, record count,
# JSON lines when the records were decoded one by one -- no plan -- else None)
DataSet = tuple["ColumnPlan | None", dict, Any, int, "list[str] | None"]


def _field_kind(ie: int, pen: int, scope: bool, version: int) -> tuple[str | None, str]:
    """(output name or None to skip, kind)."""
    if scope and version == 9:
        return None, "pad"  # v9 scope types are not IPFIX elements
    if pen == REVERSE_PEN:
        known = IE.get(ie)
        if known is None or known[1] == "pad":
            return None, "pad"
        return "reverse" + known[0][0].upper() + known[0][1:], known[1]
    if pen:
        return None, "pad"
    known = IE.get(ie)
    if known is None or known[1] == "pad":
        return None, "pad"
    return known


_INT_CODE = {1: "B", 2: "H", 4: "I", 8: "Q"}
_CONV = {"ip4": "_ntoa", "ip6": "_ntop6", "mac": "_mac", "s": "_text", "b": "_hex", "u": "_uint"}


_COMPILED: dict[tuple, Template] = {}


def compile_template(tid: int, fields: list[tuple[int, int, int]], options: bool, scope_count: int,
                     version: int) -> Template:
    """A decoder for the records of a template (cached: exporters resend templates often)."""
    key = (tid, tuple(fields), options, scope_count, version)
    t = _COMPILED.get(key)
    if t is None:
        if len(_COMPILED) > 4096:
            _COMPILED.clear()
        t = _COMPILED[key] = _compile(tid, fields, options, scope_count, version)
    return t


def _compile(tid: int, fields: list[tuple[int, int, int]], options: bool, scope_count: int,
             version: int) -> Template:
    skipped = 0
    if any(length == 0xFFFF for _, length, _ in fields):
        return _compile_varlen(tid, fields, options, scope_count, version)
    fmt = ["!"]
    items: list[str] = []
    jparts: list[tuple[str, str]] = []  # (JSON piece with one %-placeholder, value expression)
    cols: list[tuple[str, str, int, int]] = []  # (name, kind, offset, length) for the column plan
    offset = 0
    vi = 0
    for i, (ie, length, pen) in enumerate(fields):
        name, kind = _field_kind(ie, pen, i < scope_count, version)
        offset += length
        if name is None:
            skipped += kind == "pad" and (pen not in (0, REVERSE_PEN) or ie not in IE)
            fmt.append(f"{length}x")
            continue
        if (kind == "ip4" and length != 4) or (kind == "ip6" and length != 16) or (kind == "u" and length > 8):
            cols.append((name, "b", offset - length, length))
        else:
            cols.append((name, kind, offset - length, length))
        if kind == "u" and length in _INT_CODE:
            fmt.append(_INT_CODE[length])
            expr = f"v[{vi}]"
        else:
            if (kind == "ip4" and length != 4) or (kind == "ip6" and length != 16) or (kind == "u" and length > 8):
                kind = "b"
            fmt.append(f"{length}s")
            expr = f"{_CONV[kind]}(v[{vi}])"
        # JSON: numbers bare; addresses, MACs and hex never need escaping; text is escaped by orjson
        if kind == "u":
            jparts.append((f'"{name}":%d', expr))
        elif kind == "s":
            jparts.append((f'"{name}":%s', f"_jstr(v[{vi}])"))
        else:
            jparts.append((f'"{name}":"%s"', expr))
        items.append(f"{name!r}: {expr}")
        vi += 1
    st = struct.Struct("".join(fmt))
    size = st.size
    if size == 0:
        raise Malformed(f"bad field length: template {tid} has zero-length records")
    jfmt = "%s" + ",".join(f for f, _ in jparts) + "}"  # names are our own: no stray %
    jargs = ", ".join(e for _, e in jparts)
    src = (
        "def decode(body, meta):\n"
        f"    n = len(body) // {size}\n"
        f"    return [{{**meta, {', '.join(items)}}} for v in _iter(body[: n * {size}])]\n"
        "def decode_json(body, prefix):\n"
        f"    n = len(body) // {size}\n"
        + (f"    return [_JF % (prefix, {jargs}) for v in _iter(body[: n * {size}])]\n" if jparts else
           "    return [prefix[:-1] + '}'] * n\n")
    )
    ns: dict[str, Any] = {"_iter": st.iter_unpack, "_ntoa": _ntoa, "_ntop6": _ntop6, "_mac": _mac,
                          "_text": _text, "_hex": _hex, "_uint": _uint, "_jstr": _jstr, "_JF": jfmt}
    exec(src, ns)  # noqa: S102 - names and codes come from our own tables
    plan = ColumnPlan(tuple(cols), size) if len({c[0] for c in cols}) == len(cols) else None  # a repeated element: JSON only
    return Template(tid, fields, options, scope_count, ns["decode"], size, skipped, ns["decode_json"], plan)


_KIND_FN: dict[str, Callable[[bytes], Any]] = {"ip4": _ntoa, "ip6": _ntop6, "mac": _mac, "s": _text, "b": _hex, "u": _uint}
_VAR_SAFE: dict[str, Callable[[bytes], Any]] = {
    "ip4": lambda b: _ntoa(b) if len(b) == 4 else b.hex(),
    "ip6": lambda b: _ntop6(b) if len(b) == 16 else b.hex(),
    "u": lambda b: _uint(b) if len(b) <= 8 else b.hex(),
}


def _compile_varlen(tid: int, fields: list[tuple[int, int, int]], options: bool, scope_count: int,
                    version: int) -> Template:
    plan: list[tuple[str | None, Callable[[bytes], Any] | None, int]] = []
    skipped = 0
    min_len = 0
    for i, (ie, length, pen) in enumerate(fields):
        name, kind = _field_kind(ie, pen, i < scope_count, version)
        if name is None:
            skipped += pen not in (0, REVERSE_PEN) or ie not in IE
            plan.append((None, None, length))
        elif length == 0xFFFF and kind in _VAR_SAFE:  # the length is only known per record
            plan.append((name, _VAR_SAFE[kind], length))
        else:
            if (kind == "ip4" and length != 4) or (kind == "ip6" and length != 16) or (kind == "u" and length > 8):
                kind = "b"
            plan.append((name, _KIND_FN[kind], length))
        min_len += 1 if length == 0xFFFF else length

    def decode(body: bytes, meta: dict) -> list[dict]:
        out = []
        end = len(body)
        pos = 0
        while end - pos >= min_len:  # less than one record left: padding
            rec = dict(meta)
            for name, fn, length in plan:
                if length == 0xFFFF:
                    if pos >= end:
                        raise Malformed(f"record overrun: template {tid} variable-length field runs past the set")
                    length = body[pos]
                    pos += 1
                    if length == 255:
                        if pos + 2 > end:
                            raise Malformed(f"record overrun: template {tid} variable-length field runs past the set")
                        length = U16.unpack_from(body, pos)[0]
                        pos += 2
                if pos + length > end:
                    raise Malformed(f"record overrun: template {tid} record runs past the end of its set")
                if name is not None:
                    rec[name] = fn(body[pos:pos + length])  # type: ignore[misc]
                pos += length
            out.append(rec)
        return out

    def decode_json(body: bytes, prefix: str) -> list[str]:
        meta = orjson.loads(prefix[:-1] + "}")
        return [orjson.dumps(r).decode() for r in decode(body, meta)]

    return Template(tid, fields, options, scope_count, decode, min_len, skipped, decode_json)


@dataclass
class _Seq:
    prev: tuple[int, int, int] | None = None  # (sequence, records, flow records) of the last message
    dir: str | None = None  # "pre" / "post": the exporter's convention, once a message tells them apart
    cnt: str | None = None  # "all" / "flow": whether options records count
    lost: int = 0
    gaps: int = 0


# Exporters disagree on what the sequence number counts: RFC 7011/3954 say the
# records sent *before* this message ("pre"), some (softflowd's IPFIX) count
# this message's records too ("post"), and some leave options records out.
_SEQ_MODES = ("pre-all", "pre-flow", "post-all", "post-flow")


class FlowDecoder:
    """Stateful NetFlow v5/v9/IPFIX decoder: ``decode(datagram, exporter) -> records``.

    Records are dicts, or with ``json_out=True`` their compact JSON text (what the
    collector puts on the bus; built without the dict). Never raises on input: a malformed datagram gives no records and is put
    on ``dead`` as (exporter, reason, datagram bytes); ``reasons`` counts them.
    """

    def __init__(self, *, max_pending_sets: int = 1024, max_templates: int = 65536, json_out: bool = False) -> None:
        self.json_out = json_out  # records as JSON lines (the collector's hot path) instead of dicts
        # decode_sets() appends here instead of returning records: see there
        self.sets: list[DataSet] | None = None
        self._lazy = 0  # records decode_sets() appended to self.sets
        self.templates: dict[tuple[str, int, int], Template] = {}
        self.pending: dict[tuple[str, int, int], list[tuple[bytes, dict]]] = {}
        self.pending_sets = 0
        self.max_pending_sets = max_pending_sets
        self.max_templates = max_templates
        self.seq: dict[tuple[str, int, int], _Seq] = {}
        self.meta_options: dict[tuple[str, int], dict] = {}
        self.init_ms: dict[tuple[str, int], int] = {}
        self.dead: list[tuple[str, str, bytes]] = []
        self.reasons: Counter[str] = Counter()
        self.datagrams = 0
        self.records = 0
        self.option_records = 0
        self.lost_records = 0
        self.lost_packets = 0
        self.sequence_gaps = 0
        self.skipped_fields = 0

    # -- entry point ---------------------------------------------------------------
    def decode_sets(self, data: bytes, exporter: str, sets: list[DataSet]) -> int:
        """Like :meth:`decode` (JSON), but the datagram's flow records are appended to ``sets`` as
        data sets, (column plan, header meta, body, record count, JSON lines or None), to be
        turned into a raw batch by :func:`raw_batch` -- column-wise for the sets of fixed-length
        templates (their lines are left to it: None), line by line for the others. Returns the
        number of records appended (0 for a malformed datagram: nothing is appended)."""
        self.sets, self._lazy = sets, 0
        try:
            self.decode(data, exporter)
            n = self._lazy
        finally:
            self.sets, self._lazy = None, 0
        self.records += n
        return n

    def decode(self, data: bytes, exporter: str) -> list[Any]:  # dicts, or JSON text with json_out
        self.datagrams += 1
        mark = len(self.sets) if self.sets is not None else 0
        try:
            if len(data) < 4:
                raise Malformed(f"truncated header: {len(data)} bytes")
            version = (data[0] << 8) | data[1]
            if version == 5:
                out = self._v5(data, exporter)
            elif version == 9:
                out = self._v9_ipfix(data, exporter, 9)
            elif version == 10:
                out = self._v9_ipfix(data, exporter, 10)
            else:
                raise Malformed(f"unsupported version: {version}")
        except Malformed as exc:
            self._reject(exporter, str(exc), data)
            if self.sets is not None:
                del self.sets[mark:]
                self._lazy = 0
            return []
        except Exception as exc:  # noqa: BLE001 - defensive: a datagram never stops the collector
            self._reject(exporter, f"undecodable datagram: {type(exc).__name__}: {exc}"[:300], data)
            if self.sets is not None:
                del self.sets[mark:]
                self._lazy = 0
            return []
        self.records += len(out)
        return out

    def _reject(self, exporter: str, reason: str, data: bytes) -> None:
        self.dead.append((exporter, reason, data))
        self.reasons[reason.split(":")[0]] += 1

    def _check_seq(self, exporter: str, version: int, domain: int, seq: int,
                   counts: tuple[int, int] | None, unit: str) -> None:
        """Count a forward sequence jump as loss. ``counts`` = (records, flow records) of
        this message (None when unknown: data waiting for a template; the check resyncs)."""
        key = (exporter, version, domain)
        s = self.seq.get(key)
        if s is None:
            s = self.seq[key] = _Seq()
            if version == 10 and counts is not None and seq and seq in counts:
                # an exporter's first message numbered with its own record count: it counts "post"
                # (softflowd's IPFIX); RFC exporters start at 0
                s.dir = "post"
                if counts[0] != counts[1]:
                    s.cnt = "all" if seq == counts[0] else "flow"
        if s.prev is not None and counts is not None:
            pseq, pall, pflow = s.prev
            cands = {"pre-all": pseq + pall, "pre-flow": pseq + pflow,
                     "post-all": pseq + counts[0], "post-flow": pseq + counts[1]}
            allowed = [m for m in _SEQ_MODES
                       if (s.dir is None or m.startswith(s.dir)) and (s.cnt is None or m.endswith(s.cnt))]
            matching = [m for m in allowed if cands[m] & 0xFFFFFFFF == seq]
            if matching:  # in sequence; learn what the matches agree on (equal counts cannot tell pre from post)
                dirs = {m.split("-")[0] for m in matching}
                cnts = {m.split("-")[1] for m in matching}
                if len(dirs) == 1:
                    s.dir = dirs.pop()
                if len(cnts) == 1:
                    s.cnt = cnts.pop()
                gap = 0
            else:
                gap = (seq - cands[f"{s.dir or 'pre'}-{s.cnt or 'all'}"]) & 0xFFFFFFFF
            if 0 < gap < 0x80000000:  # forward jump: lost; a backward one is a reorder/restart
                s.lost += gap
                s.gaps += 1
                self.sequence_gaps += 1
                if unit == "packets":
                    self.lost_packets += gap
                else:
                    self.lost_records += gap
        s.prev = None if counts is None else (seq, counts[0], counts[1])

    # -- v5 ------------------------------------------------------------------------
    def _v5(self, data: bytes, exporter: str) -> list[dict]:
        if len(data) < V5_HEADER.size:
            raise Malformed(f"truncated header: v5 needs {V5_HEADER.size} bytes, got {len(data)}")
        _v, count, uptime, secs, nsecs, seq, etype, eid, _sampling = V5_HEADER.unpack_from(data)
        if not 1 <= count <= 30:
            raise Malformed(f"bad record count: v5 count {count} (1..30)")
        need = V5_HEADER.size + count * V5_RECORD.size
        if len(data) != need:
            raise Malformed(f"length mismatch: v5 with {count} records needs {need} bytes, got {len(data)}")
        domain = (etype << 8) | eid
        meta = {"ver": 5, "exporter": exporter, "domain": domain, "tid": 0,
                "export_ms": secs * 1000 + nsecs // 1_000_000, "uptime_ms": uptime}
        body = memoryview(data)[V5_HEADER.size:]
        if self.sets is not None:  # decode_sets
            self.sets.append((_V5_PLAN, meta, body, count, None))
            self._lazy += count
            out = []
        elif self.json_out:
            pre = _prefix(meta)
            out = [_V5_JSON % (pre, _ntoa(r[0]), _ntoa(r[1]), _ntoa(r[2]), *r[3:]) for r in V5_RECORD.iter_unpack(body)]
        else:
            out = [
                {**meta, "sourceIPv4Address": _ntoa(r[0]), "destinationIPv4Address": _ntoa(r[1]),
                 "ipNextHopIPv4Address": _ntoa(r[2]), "ingressInterface": r[3], "egressInterface": r[4],
                 "packetDeltaCount": r[5], "octetDeltaCount": r[6], "flowStartSysUpTime": r[7],
                 "flowEndSysUpTime": r[8], "sourceTransportPort": r[9], "destinationTransportPort": r[10],
                 "tcpControlBits": r[11], "protocolIdentifier": r[12], "ipClassOfService": r[13],
                 "bgpSourceAsNumber": r[14], "bgpDestinationAsNumber": r[15],
                 "sourceIPv4PrefixLength": r[16], "destinationIPv4PrefixLength": r[17]}
                for r in V5_RECORD.iter_unpack(body)
            ]
        self._check_seq(exporter, 5, domain, seq, (count, count), "records")
        return out

    # -- v9 / IPFIX ----------------------------------------------------------------
    def _v9_ipfix(self, data: bytes, exporter: str, version: int) -> list[dict]:
        n = len(data)
        if version == 9:
            if n < V9_HEADER.size:
                raise Malformed(f"truncated header: v9 needs {V9_HEADER.size} bytes, got {n}")
            _v, _count, uptime, secs, seq, domain = V9_HEADER.unpack_from(data)
            meta = {"ver": 9, "exporter": exporter, "domain": domain, "tid": 0,
                    "export_ms": secs * 1000, "uptime_ms": uptime}
            pos = V9_HEADER.size
            tmpl_set, opt_set = 0, 1
        else:
            if n < IPFIX_HEADER.size:
                raise Malformed(f"truncated header: IPFIX needs {IPFIX_HEADER.size} bytes, got {n}")
            _v, length, secs, seq, domain = IPFIX_HEADER.unpack_from(data)
            if length != n:
                raise Malformed(f"length mismatch: IPFIX header says {length} bytes, datagram has {n}")
            meta = {"ver": 10, "exporter": exporter, "domain": domain, "tid": 0, "export_ms": secs * 1000}
            init = self.init_ms.get((exporter, domain))
            if init is not None:
                meta["init_ms"] = init
            pos = IPFIX_HEADER.size
            tmpl_set, opt_set = 2, 3
        # pass 1: set structure
        sets: list[tuple[int, int, int]] = []
        while pos < n:
            if n - pos < 4:
                if version == 9 and not any(data[pos:]):
                    break  # v9 exporters may pad the packet
                raise Malformed(f"truncated set header: at byte {pos}")
            sid, slen = SET_HEADER.unpack_from(data, pos)
            if slen < 4:
                raise Malformed(f"bad set length: {slen} at byte {pos}")
            if pos + slen > n:
                raise Malformed(f"bad set length: set {sid} of {slen} bytes at byte {pos} runs past the datagram ({n})")
            if sid not in (tmpl_set, opt_set) and sid < 256:
                raise Malformed(f"bad set id: {sid} at byte {pos}")
            sets.append((sid, pos + 4, pos + slen))
            pos += slen
        # pass 2: templates first within the datagram order, data decoded as met
        out: list[dict] = []
        data_records = flow_records = 0
        countable = True
        new_pending: list[tuple[tuple[str, int, int], bytes, dict]] = []
        released: list[tuple[str, int, int]] = []
        for sid, start, end in sets:
            if sid == tmpl_set or sid == opt_set:
                for t in self._templates(data, start, end, version, sid == opt_set):
                    key = (exporter, domain, t.tid)
                    if key not in self.templates and len(self.templates) >= self.max_templates:
                        raise Malformed(f"too many templates: limit {self.max_templates}")
                    self.templates[key] = t
                    self.skipped_fields += t.skipped
                    if key in self.pending:
                        released.append(key)
                continue
            key = (exporter, domain, sid)
            t = self.templates.get(key)
            body = data[start:end]
            if t is None:
                countable = False
                new_pending.append((key, body, {**meta, "tid": sid}))
                continue
            if t.options:
                recs = t.decode(body, {**meta, "tid": sid})
                data_records += len(recs)
                self._options(exporter, domain, recs)
                if version == 10 and "init_ms" not in meta and (exporter, domain) in self.init_ms:
                    meta["init_ms"] = self.init_ms[(exporter, domain)]
                continue
            if self.sets is not None:  # decode_sets
                k = self._add_set(t, {**meta, "tid": sid}, body)
                data_records += k
                flow_records += k
                continue
            if self.json_out:
                recs = t.decode_json(body, _prefix({**meta, "tid": sid}))
            else:
                recs = t.decode(body, {**meta, "tid": sid})
            data_records += len(recs)
            flow_records += len(recs)
            out.extend(recs)
        # the datagram decoded: commit waiting data, release what its templates unlock
        for key in released:
            for body, m in self.pending.pop(key, []):
                self.pending_sets -= 1
                t = self.templates[key]
                if m["ver"] == 10 and "init_ms" not in m and (key[0], key[1]) in self.init_ms:
                    m["init_ms"] = self.init_ms[(key[0], key[1])]
                try:
                    if t.options:
                        self._options(key[0], key[1], t.decode(body, m))
                    elif self.sets is not None:
                        self._add_set(t, m, body)
                    elif self.json_out:
                        out.extend(t.decode_json(body, _prefix(m)))
                    else:
                        out.extend(t.decode(body, m))
                except Malformed as exc:
                    self._reject(exporter, f"{exc} (buffered data set)", body)
        for key, body, m in new_pending:
            if self.pending_sets >= self.max_pending_sets:
                self._reject(exporter, f"no template: data set for template {key[2]} (domain {key[1]}) dropped, "
                             f"{self.max_pending_sets} sets already wait for templates", body)
                continue
            self.pending.setdefault(key, []).append((body, m))
            self.pending_sets += 1
        if version == 9:
            self._check_seq(exporter, 9, domain, seq, (1, 1), "packets")
        else:
            self._check_seq(exporter, 10, domain, seq, (data_records, flow_records) if countable else None, "records")
        return out

    def _add_set(self, t: Template, meta: dict, body: bytes) -> int:
        """decode_sets: a fixed layout is read column-wise later, other records are decoded now."""
        if t.plan is not None:
            k = len(body) // t.plan.size
            self.sets.append((t.plan, meta, body, k, None))  # type: ignore[union-attr]
        else:
            lines = t.decode_json(body, _prefix(meta))
            k = len(lines)
            self.sets.append((None, meta, body, k, lines))  # type: ignore[union-attr]
        self._lazy += k
        return k

    def _templates(self, data: bytes, pos: int, end: int, version: int, options: bool) -> list[Template]:
        out = []
        ipfix = version == 10
        while end - pos >= 4:
            if options and not ipfix:
                if end - pos < 6:
                    break
                tid, scope_len, opt_len = U16x3.unpack_from(data, pos)
                pos += 6
                if tid < 256:
                    raise Malformed(f"bad template id: {tid} in options template")
                if scope_len % 4 or opt_len % 4:
                    raise Malformed(f"bad options template: {tid} scope/option lengths {scope_len}/{opt_len} not multiples of 4")
                count, scope_count = (scope_len + opt_len) // 4, scope_len // 4
            elif options:
                if end - pos < 6:
                    raise Malformed("truncated template: options template header")
                tid, count, scope_count = U16x3.unpack_from(data, pos)
                pos += 6
                if count and not 1 <= scope_count <= count:
                    raise Malformed(f"bad options template: {tid} has scope field count {scope_count} of {count} fields")
            else:
                tid, count = U16x2.unpack_from(data, pos)
                pos += 4
                scope_count = 0
            if tid < 256:
                raise Malformed(f"bad template id: {tid}")
            if count == 0:
                raise Malformed(f"zero-field template: template {tid} with zero fields")
            fields = []
            for _ in range(count):
                if pos + 4 > end:
                    raise Malformed(f"truncated template: template {tid} announces {count} fields")
                ie, length = U16x2.unpack_from(data, pos)
                pos += 4
                pen = 0
                if ipfix and ie & 0x8000:
                    if pos + 4 > end:
                        raise Malformed(f"truncated template: template {tid} enterprise number missing")
                    pen = U32.unpack_from(data, pos)[0]
                    pos += 4
                    ie &= 0x7FFF
                if length == 0xFFFF and not ipfix:
                    raise Malformed(f"bad field length: template {tid} variable length is IPFIX only")
                if length == 0 and not ipfix:
                    raise Malformed(f"bad field length: template {tid} field {ie} of length 0")
                fields.append((ie, length, pen))
            out.append(compile_template(tid, fields, options, scope_count, version))
        return out

    def _options(self, exporter: str, domain: int, recs: list[dict]) -> None:
        self.option_records += len(recs)
        store = self.meta_options.setdefault((exporter, domain), {})
        for r in recs:
            for k, v in r.items():
                if k not in ("ver", "exporter", "domain", "export_ms", "uptime_ms", "init_ms"):
                    store[k] = v
            init = r.get("systemInitTimeMilliseconds")
            if isinstance(init, int):
                self.init_ms[(exporter, domain)] = init

    # -- inspection ----------------------------------------------------------------
    def options(self, exporter: str, domain: int) -> dict:
        """What options data records said about (exporter, domain), newest value per element."""
        return dict(self.meta_options.get((exporter, domain), {}))

    def loss(self) -> dict[str, dict]:
        """Per ``exporter/vVERSION/domain``: sequence gaps and units lost (records; v9: packets)."""
        return {f"{e}/v{v}/{d}": {"gaps": s.gaps, "lost": s.lost, "unit": "packets" if v == 9 else "records"}
                for (e, v, d), s in self.seq.items()}

    def expire_pending(self) -> None:
        """Dead-letter every data set still waiting for its template."""
        for key, items in self.pending.items():
            for body, _m in items:
                self._reject(key[0], f"no template: template {key[2]} (domain {key[1]}) never arrived", body)
        self.pending.clear()
        self.pending_sets = 0


# -- raw batches -----------------------------------------------------------------------------

_META_TYPES = {"ver": pa.int64(), "exporter": pa.string(), "domain": pa.int64(), "tid": pa.int64(),
               "export_ms": pa.int64(), "uptime_ms": pa.int64(), "init_ms": pa.int64()}
_BYTES_FN: dict[str, Callable[[bytes], Any]] = {"ip4": _ntoa, "ip6": _ntop6, "mac": _mac, "s": _text, "b": _hex,
                                                "u": _uint}
_QUOTED = frozenset({"ip4", "ip6", "mac", "b"})  # JSON text between quotes, never needing escapes
_I64_MAX = np.uint64((1 << 63) - 1)
_EMPTY = pa.scalar("", pa.string())


def _read_sets(plan: ColumnPlan, sets: list[DataSet], members: list[int],
               counts: np.ndarray) -> tuple[dict[str, pa.Array] | None, pa.Array]:
    """The records of the data sets ``members`` (all of layout ``plan``), read at once with numpy
    over their joined bodies: (one column per element -- None when a number is beyond int64 --,
    their JSON lines, the text the template's ``decode_json`` writes). Addresses, MACs, text and
    hex are converted once per distinct value."""
    body = b"".join([sets[i][2][: sets[i][3] * plan.size] for i in members])
    m = len(body) // plan.size
    dtype = np.dtype({"names": [f[0] for f in plan.fields],
                      "formats": [f">u{f[3]}" if f[1] == "u" and f[3] in (1, 2, 4, 8) else ("u1", (f[3],))
                                  for f in plan.fields],
                      "offsets": [f[2] for f in plan.fields], "itemsize": plan.size})
    recs = np.frombuffer(body, dtype, m)
    cols: dict[str, pa.Array] | None = {}
    texts: list[pa.Array] = []
    for name, kind, _off, length in plan.fields:
        v = recs[name]
        if v.ndim == 1:  # an unsigned number of 1, 2, 4 or 8 bytes
            if length == 8 and (name in U64_TIMES or (m and v.max() > _I64_MAX)):
                a = pa.array(v.astype(np.uint64))
                if name not in U64_TIMES:
                    cols = None  # beyond int64: the parser reads the JSON (and takes it record by record)
            else:
                a = pa.array(v.astype(np.int64))
            texts.append(pc.cast(a, pa.string()))
        else:
            fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(length), m,
                                                         [None, pa.py_buffer(np.ascontiguousarray(v).tobytes())])
            enc = pc.dictionary_encode(fixed)
            uniq = [_BYTES_FN[kind](b) for b in enc.dictionary.to_pylist()]
            a = pa.array(uniq, pa.int64() if kind == "u" else pa.string()).take(enc.indices)
            if kind == "s":
                texts.append(pa.array([orjson.dumps(x).decode() for x in uniq], pa.string()).take(enc.indices))
            else:
                texts.append(pc.cast(a, pa.string()) if kind == "u" else a)
        if cols is not None:
            cols[name] = a
    k = counts[members]
    pre = pa.array([_prefix(sets[i][1]) for i in members], pa.string()).take(pa.array(np.repeat(np.arange(len(members)), k)))
    if not plan.fields:
        return cols, pc.binary_join_element_wise(pc.utf8_slice_codeunits(pre, 0, -1), "}", _EMPTY)
    parts: list[Any] = [pre]
    lit = ""
    for (name, kind, _off, _len), text in zip(plan.fields, texts):
        q = '"' if kind in _QUOTED else ""
        parts += [pa.scalar(f'{lit}"{name}":{q}', pa.string()), text]
        lit = q + ","
    parts.append(pa.scalar(lit[:-1] + "}", pa.string()))
    return cols, pc.binary_join_element_wise(*parts, _EMPTY)


def raw_batch(source: str, seq0: int, sets: list[DataSet], *, columns: bool = True) -> pa.Table:
    """The ``raw.netflow`` batch of the records in ``sets`` (:meth:`FlowDecoder.decode_sets`),
    numbered from ``seq0``: ``event.original`` = each record's JSON line, byte for byte what
    :meth:`FlowDecoder.decode` writes (so ids do not depend on the path).

    The sets of each fixed-length layout are read together, column-wise (:func:`_read_sets`),
    and their lines joined from those columns. With ``columns`` (the embedded bus, which stores
    Arrow batches) the batch also carries the records as one column per JSON key,
    ``netflow.decoded``: what the parser would read back from the lines (int64 numbers, text,
    null where a record lacks the key), so it need not. Left out (the parser reads the JSON)
    when a set has no fixed layout (variable-length fields, a repeated element), an element is
    a number in one template and text in another, or a number is beyond int64.
    """
    counts = np.fromiter((s[3] for s in sets), np.int64, len(sets))
    n = int(counts.sum())
    groups: dict[int | None, list[int]] = {}  # one per layout, in the order met; None: decoded one by one
    for i, st in enumerate(sets):
        if st[3]:
            groups.setdefault(None if st[0] is None else id(st[0]), []).append(i)
    line_parts: list[pa.Array] = []
    col_parts: list[dict[str, pa.Array] | None] = []
    for key, members in groups.items():
        if key is None:
            line_parts.append(pa.array([x for i in members for x in sets[i][4][: sets[i][3]]], pa.string()))
            col_parts.append(None)
        else:
            cols, lines = _read_sets(sets[members[0]][0], sets, members, counts)
            line_parts.append(lines)
            col_parts.append(cols)
    back = None
    if len(groups) > 1:  # groups were read one after the other: put the rows back in arrival order
        order = np.fromiter((i for members in groups.values() for i in members), np.int64)
        c = counts[order]
        # perm[row in group order] = its row in arrival order: shift each set's rows by where it starts
        perm = np.repeat((np.cumsum(counts) - counts)[order] - (np.cumsum(c) - c), c) + np.arange(int(c.sum()))
        back = pa.array(np.argsort(perm, kind="stable"))
    lines = pa.concat_arrays(line_parts) if line_parts else pa.array([], pa.string())
    if back is not None:
        lines = lines.take(back)
    table = pa.table(
        {
            "taishi.source": pa.repeat(pa.scalar(source, pa.string()), n),
            "log.offset": pa.array(np.arange(seq0, seq0 + n, dtype=np.int64)),
            "log.file.path": pa.nulls(n, pa.string()),
            "hint": pa.repeat(pa.scalar(HINT, pa.string()), n),
            "event.original": lines,
        },
        schema=RAW_SCHEMA,
    )
    if not columns or not n or any(c is None for c in col_parts):
        return table
    dec = _decoded(sets, counts, col_parts, [len(x) for x in line_parts], back)
    return table.append_column(DECODED, dec) if dec is not None else table


def _decoded(sets: list[DataSet], counts: np.ndarray, parts: list[dict[str, pa.Array]], sizes: list[int],
             back: pa.Array | None) -> pa.StructArray | None:
    """raw_batch's ``netflow.decoded`` column: the header fields and the groups' element columns."""
    out: dict[str, pa.Array] = {}
    row_set = pa.array(np.repeat(np.arange(len(sets)), counts))
    for key, typ in _META_TYPES.items():  # the header fields every record of a set shares
        vals = [st[1].get(key) for st in sets]
        if all(v is None for v in vals):
            continue
        if not all(v is None or type(v) is (str if typ == pa.string() else int) for v in vals):
            return None
        out[key] = pa.array(vals, typ).take(row_set)
    if any(st[1].keys() - _META_TYPES.keys() for st in sets):
        return None
    types: dict[str, pa.DataType] = {}
    for part in parts:
        for k, a in part.items():
            if types.setdefault(k, a.type) != a.type:
                return None  # a number in one template, text in another
    for k, typ in types.items():
        if len(parts) == 1:
            out[k] = parts[0][k]
        else:
            out[k] = pa.concat_arrays([p[k] if k in p else pa.nulls(size, typ)
                                       for p, size in zip(parts, sizes)]).take(back)
    return pa.StructArray.from_arrays(list(out.values()), names=list(out.keys()))


@dataclass
class Metrics:
    datagrams: int = 0
    received: int = 0  # flow records queued
    dropped: int = 0
    deadlettered: int = 0
    bytes: int = 0
    batches: int = 0
    by_version: dict[int, int] = field(default_factory=dict)


class NetflowCollector(Collector):
    """UDP listener(s) decoding NetFlow v5/v9/IPFIX into ``raw.netflow`` (see module doc)."""

    topic = TOPIC

    def __init__(
        self,
        bus: Bus,
        listeners: list[Listener],
        *,
        name: str = "netflow",
        max_pending: int = 200_000,
        batch_size: int = 8192,
        flush_interval: float = 0.5,
        max_pending_sets: int = 1024,
    ) -> None:
        super().__init__(bus, listeners, name)
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.decoder = FlowDecoder(max_pending_sets=max_pending_sets, json_out=True)
        # the embedded bus stores Arrow batches, so the records' column form rides along with their
        # JSON (raw_batch); a Kafka record is one row's JSON: the parser reads that instead
        self._columns = isinstance(bus, Bus)
        self.m = Metrics()
        self._sets: list[DataSet] = []  # decoded data sets waiting for the next batch
        self._pending = 0  # records in them
        self._dead: list[dict] = []
        self._lock = threading.Lock()
        self._inodes: list[tuple[int, bool]] = []  # (socket inode, ipv6) for the kernel's drop counter
        self._kernel_drops = 0

    async def _serve(self) -> None:
        closers = []
        for ls in self.listeners:
            if ls.proto != "udp":
                raise ValueError(f"NetFlow listens on UDP only, not {ls.proto!r}")
            sock = udp_socket(ls.host, ls.port)
            self._inodes.append((os.fstat(sock.fileno()).st_ino, sock.family == socket.AF_INET6))
            self.bound["udp"] = sock.getsockname()[:2]
            closers.append(read_udp(self._loop, sock, self.datagram))
        self._ready.set()
        flusher = asyncio.create_task(self._flush_loop())
        await self._stopping.wait()
        self.kernel_drops()  # remember the count before the sockets go
        for close in closers:
            close()
        flusher.cancel()
        self.decoder.expire_pending()  # data still waiting for a template: dead letters
        self._flush()

    # -- receiving -----------------------------------------------------------------
    def datagram(self, data: bytes, addr: tuple) -> None:
        """Decode one datagram from ``addr`` and queue its flow records."""
        self.m.datagrams += 1
        self.m.bytes += len(data)
        mark = len(self._sets)
        n = self.decoder.decode_sets(data, addr[0], self._sets)
        if n:
            room = max(self.max_pending - self._pending, 0)
            if room < n:  # the buffer is full: the datagram's records beyond it are dropped
                self.m.dropped += n - room
                n = room
                keep = room
                for i in range(mark, len(self._sets)):
                    plan, meta, body, k, lines = self._sets[i]
                    self._sets[i] = (plan, meta, body, min(k, keep), lines)
                    keep -= min(k, keep)
            self._pending += n
            self.m.received += n
            v = data[1]
            self.m.by_version[v] = self.m.by_version.get(v, 0) + n
        if self.decoder.dead:
            self._take_dead()
        if self._pending >= self.batch_size:
            self._flush()

    def _take_dead(self) -> None:
        now = datetime.now(timezone.utc)
        for exporter, reason, data in self.decoder.dead:
            text = "hex:" + data[:DEAD_KEEP_BYTES].hex()
            self._dead.append({
                "id": ids.deadletter_id(self.name, self._seq + len(self._dead), "read",
                                        f"{exporter}\x1f{time.time_ns()}\x1f{text}"),
                "@timestamp": now,
                "taishi.source": self.name,
                "log.offset": -1,
                "stage": "read",
                "reason": f"{reason} (from {exporter})",
                "event.original": text,
            })
            self.m.deadlettered += 1
        self.decoder.dead.clear()

    # -- delivery ------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            self._flush()

    def _flush(self) -> None:
        if self.decoder.dead:
            self._take_dead()
        if self._dead:
            self.bus.produce(TOPIC_DEADLETTER, deadletters_table(self._dead))
            self._dead = []
        if not self._pending:
            self._sets = []
            return
        sets, self._sets, self._pending = self._sets, [], 0
        table = raw_batch(self.name, self._seq, sets, columns=self._columns)
        self._seq += table.num_rows
        self.bus.produce(TOPIC, table, meta={"listener": self.name, "seq": self._seq - 1})
        self.m.batches += 1

    # -- metrics -------------------------------------------------------------------
    def metrics(self) -> dict:
        d = self.decoder
        return {
            "datagrams": self.m.datagrams,
            "received": self.m.received,
            "dropped": self.m.dropped,
            "deadlettered": self.m.deadlettered + len(d.dead),
            "bytes": self.m.bytes,
            "batches": self.m.batches,
            "option_records": d.option_records,
            "sequence_gaps": d.sequence_gaps,
            "lost_records": d.lost_records,
            "lost_packets": d.lost_packets,
            "skipped_fields": d.skipped_fields,
            "templates": len(d.templates),
            "waiting_sets": d.pending_sets,
            "pending": self._pending,
            "kernel_drops": self.kernel_drops(),
        }

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped on our sockets (receive buffer full): /proc/net/udp ``drops``."""
        if self._thread is not None and not self._thread.is_alive():
            return self._kernel_drops
        total = 0
        for inode, v6 in self._inodes:
            try:
                with open("/proc/net/udp6" if v6 else "/proc/net/udp") as f:
                    for line in f:
                        cols = line.split()
                        if len(cols) > 12 and cols[9] == str(inode):
                            total += int(cols[-1])
            except (OSError, ValueError):
                continue
        self._kernel_drops = max(self._kernel_drops, total)
        return self._kernel_drops

    def prometheus(self) -> str:
        """The metrics in Prometheus text exposition format."""
        gauges = {"templates", "waiting_sets", "pending"}  # kernel_drops is a counter (since the socket opened)
        out = []
        for key, value in self.metrics().items():
            kind = "gauge" if key in gauges else "counter"
            name = f"taishi_netflow_{key}" + ("_total" if kind == "counter" else "")
            out.append(f"# TYPE {name} {kind}")
            out.append(f'{name}{{collector="{self.name}"}} {value}')
        out.append("# TYPE taishi_netflow_sequence_lost_total counter")
        for (exp, ver, dom), s in sorted(self.decoder.seq.items()):
            out.append(f'taishi_netflow_sequence_lost_total{{collector="{self.name}",exporter="{exp}",'
                       f'version="{ver}",domain="{dom}"}} {s.lost}')
        out.append("# TYPE taishi_netflow_deadletter_reasons_total counter")
        for reason, n in sorted(self.decoder.reasons.items()):
            r = reason.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'taishi_netflow_deadletter_reasons_total{{collector="{self.name}",reason="{r}"}} {n}')
        return "\n".join(out) + "\n"
