"""Run ``tshark -T fields`` over a capture and stream its TSV as Arrow batches.

One tshark process dissects the whole capture once and prints one line per
frame with the fields in :data:`FIELDS` (tab separated, every occurrence of a
field joined with :data:`AGG`, an ASCII group separator that never occurs in
dissected text, so commas in user agents or TXT records stay intact).
``pyarrow.csv.open_csv`` reads its stdout in blocks of a few MiB straight into
columns: no Python object is made per packet.

tshark's stderr goes to a temporary file (no pipe deadlock); its exit status
and stderr are returned by :meth:`TsharkRun.close` so a truncated or
unreadable capture is reported, not hidden.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

AGG = "\x1d"  # aggregator between occurrences of one field in a frame

# Every field tshark prints, in order. Names are Wireshark 4.x field names
# (checked with ``tshark -G fields``).
FIELDS: tuple[str, ...] = (
    # frame / link / network / transport
    "frame.number",
    "frame.time_epoch",
    "frame.len",
    "eth.src",
    "eth.dst",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.nxt",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags",
    "tcp.stream",
    "udp.srcport",
    "udp.dstport",
    "icmp.type",
    "icmpv6.type",
    # dns
    "dns.id",
    "dns.flags.response",
    "dns.flags.rcode",
    "dns.qry.name",
    "dns.qry.type",
    "dns.a",
    "dns.aaaa",
    "dns.cname",
    "dns.ptr.domain_name",
    "dns.ns",
    "dns.mx.mail_exchange",
    "dns.txt",
    # http
    "http.request.method",
    "http.host",
    "http.request.uri",
    "http.request.version",
    "http.user_agent",
    "http.referer",
    "http.response.code",
    "http.response_for.uri",
    "http.content_type",
    "http.content_length",
    # tls
    "tls.handshake.type",
    "tls.handshake.version",
    "tls.handshake.extensions.supported_version",
    "tls.handshake.extensions_server_name",
    "tls.handshake.ciphersuite",
    "tls.handshake.extensions_alpn_str",
    "tls.handshake.ja3",
    "tls.handshake.ja3s",
    # ssh
    "ssh.protocol",
    # ics
    "mbtcp.trans_id",
    "mbtcp.unit_id",
    "modbus.func_code",
    "modbus.exception_code",
    "dnp3.src",
    "dnp3.dst",
    "dnp3.al.func",
    "enip.command",
    "enip.session",
    "cip.service",
    "cip.sc",
    "cip.class",
)

INT_FIELDS = frozenset({"frame.number", "frame.len"})

BLOCK_SIZE = 4 << 20  # bytes of TSV per Arrow batch (~20-40k frames)

# tshark preferences beyond its defaults. TCP sequence analysis stays on although no mapped
# field comes from it: with it, retransmitted segments are not handed to the application
# dissectors again, so a retransmitted Modbus request is not a second event.
PREFS: tuple[str, ...] = ()

# stderr lines that are not errors
_BENIGN = ("Running as user", "This could be dangerous")


def tshark_path() -> str | None:
    return os.environ.get("TAISHI_TSHARK") or shutil.which("tshark")


@dataclass
class TsharkRun:
    """A running ``tshark -T fields``; iterate :meth:`batches`, then :meth:`close`."""

    path: Path
    decode_as: tuple[str, ...] = ()
    block_size: int = BLOCK_SIZE
    extra_args: tuple[str, ...] = ()
    bad_lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        exe = tshark_path()
        if exe is None:
            raise FileNotFoundError("tshark not found (install wireshark's tshark or set TAISHI_TSHARK)")
        cmd = [exe, "-n", "-r", str(self.path), "-T", "fields", "-E", "header=n", "-E", "separator=/t",
               "-E", "quote=n", "-E", "occurrence=a", "-E", f"aggregator={AGG}"]
        cmd += list(PREFS)
        for spec in self.decode_as:
            cmd += ["-d", spec]
        cmd += list(self.extra_args)
        for f in FIELDS:
            cmd += ["-e", f]
        self._err = tempfile.TemporaryFile()
        env = dict(os.environ, LC_ALL="C.UTF-8")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, env=env)

    def _invalid_row(self, row: pacsv.InvalidRow) -> str:
        if len(self.bad_lines) < 100:
            self.bad_lines.append((row.text or "")[:500])
        return "skip"

    def batches(self) -> Iterator[pa.RecordBatch]:
        assert self.proc.stdout is not None
        read = pacsv.ReadOptions(column_names=list(FIELDS), block_size=self.block_size, use_threads=False)
        parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                   newlines_in_values=False, invalid_row_handler=self._invalid_row)
        types = {f: (pa.int64() if f in INT_FIELDS else pa.string()) for f in FIELDS}
        conv = pacsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True,
                                    check_utf8=False)
        try:
            reader = pacsv.open_csv(self.proc.stdout, read_options=read, parse_options=parse, convert_options=conv)
        except pa.ArrowInvalid as exc:
            if "Empty CSV" in str(exc):
                return
            raise
        for batch in reader:
            if batch.num_rows:
                yield batch

    def close(self) -> tuple[int, str]:
        """Wait for tshark; (exit status, stderr without the benign root warning)."""
        if self.proc.stdout is not None:
            try:
                while self.proc.stdout.read(1 << 20):
                    pass
            except (OSError, ValueError):
                pass
            self.proc.stdout.close()
        rc = self.proc.wait()
        self._err.seek(0)
        err = self._err.read().decode("utf-8", "replace")
        self._err.close()
        lines = [ln for ln in err.splitlines() if ln.strip() and not any(b in ln for b in _BENIGN)]
        return rc, "\n".join(lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


# --- column helpers ----------------------------------------------------------


def valid_utf8(arr: pa.Array) -> pa.Array:
    """``arr`` (read without UTF-8 checks) with invalid sequences replaced."""
    try:
        arr.validate(full=True)
        return arr
    except pa.ArrowInvalid:
        vals = [None if v is None else v.decode("utf-8", "replace") for v in arr.cast(pa.binary()).to_pylist()]
        return pa.array(vals, pa.string())


def first(arr: pa.Array) -> pa.Array:
    """First occurrence of each multi-occurrence value (``a<AGG>b`` -> ``a``)."""
    if arr.null_count == len(arr) or not pc.any(pc.match_substring(arr, AGG)).as_py():
        return arr
    return pc.replace_substring_regex(arr, AGG + ".*$", "")


def last(arr: pa.Array) -> pa.Array:
    """Last occurrence of each multi-occurrence value (``a<AGG>b`` -> ``b``)."""
    if arr.null_count == len(arr) or not pc.any(pc.match_substring(arr, AGG)).as_py():
        return arr
    return pc.replace_substring_regex(arr, "^.*" + AGG, "")


def split(arr: pa.Array) -> pa.Array:
    """Occurrences as a list per row (null stays null)."""
    return pc.split_pattern(arr, AGG)


def to_int(arr: pa.Array) -> pa.Array:
    """Decimal text -> int64 (first occurrence)."""
    return pc.cast(first(arr), pa.int64())


def hex_to_int(arr: pa.Array) -> pa.Array:
    """``0x..`` text -> int64 (first occurrence); converts each distinct value once."""
    a = first(arr)
    if a.null_count == len(a):
        return pa.nulls(len(a), pa.int64())
    d = pc.dictionary_encode(a)
    vals = [int(v, 16) for v in d.dictionary.to_pylist()]
    return pc.take(pa.array(vals, pa.int64()), d.indices)


def map_values(arr: pa.Array, fn, typ: pa.DataType = pa.string()) -> pa.Array:
    """Apply python ``fn`` to each *distinct* value of ``arr`` (null stays null)."""
    if len(arr) == 0:
        return pa.array([], typ)
    if arr.null_count == len(arr):
        return pa.nulls(len(arr), typ)
    d = pc.dictionary_encode(arr)
    vals = [fn(v) for v in d.dictionary.to_pylist()]
    return pc.take(pa.array(vals, typ), d.indices)
