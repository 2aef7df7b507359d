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
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
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
    # a dissector gave up on the frame ("[Malformed Packet: DNP 3.0]"): dead-lettered, still counted in its flow
    "_ws.malformed",
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


def field_args(decode_as: tuple[str, ...] = (), extra_args: tuple[str, ...] = ()) -> list[str]:
    """tshark arguments after the input: ``-T fields`` with :data:`FIELDS`, decode-as, extras."""
    cmd = ["-T", "fields", "-E", "header=n", "-E", "separator=/t", "-E", "quote=n", "-E", "occurrence=a",
           "-E", f"aggregator={AGG}"]
    cmd += list(PREFS)
    for spec in decode_as:
        cmd += ["-d", spec]
    cmd += list(extra_args)
    for f in FIELDS:
        cmd += ["-e", f]
    return cmd


def csv_options(block_size: int, invalid_row) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    """How pyarrow reads tshark's TSV: every field a string column but the frame number and length."""
    read = pacsv.ReadOptions(column_names=list(FIELDS), block_size=block_size, use_threads=False)
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                               newlines_in_values=False, invalid_row_handler=invalid_row)
    types = {f: (pa.int64() if f in INT_FIELDS else pa.string()) for f in FIELDS}
    conv = pacsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True, check_utf8=False)
    return read, parse, conv


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
        cmd = [exe, "-n", "-r", str(self.path), *field_args(self.decode_as, self.extra_args)]
        self._err = tempfile.TemporaryFile()
        env = dict(os.environ, LC_ALL="C.UTF-8")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, env=env)

    def _invalid_row(self, row: pacsv.InvalidRow) -> str:
        if len(self.bad_lines) < 100:
            self.bad_lines.append((row.text or "")[:500])
        return "skip"

    def batches(self) -> Iterator[pa.RecordBatch]:
        assert self.proc.stdout is not None
        read, parse, conv = csv_options(self.block_size, self._invalid_row)
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


def parse_tsv(data: bytes | bytearray | memoryview, invalid_row) -> pa.Table:
    """Complete lines of tshark's TSV (bytes in memory) -> a table of :data:`FIELDS`."""
    read, parse, conv = csv_options(max(1 << 20, len(data) + 1), invalid_row)
    return pacsv.read_csv(pa.BufferReader(pa.py_buffer(data)), read_options=read, parse_options=parse,
                          convert_options=conv)


_STATS = re.compile(r"Packets received/dropped on interface '[^']*': (\d+)/(\d+)")


class LiveTshark:
    """``dumpcap -i IFACE -f BPF -w - | tshark -r - -l -M N -T fields ...``: a live capture.

    dumpcap captures (with the BPF filter in the kernel) and writes pcapng to a pipe; tshark
    dissects it line-buffered (``-l``), so each packet's fields arrive as soon as it is seen.
    ``-M`` resets tshark's session every ``session_reset`` packets (frame numbers and
    ``tcp.stream`` restart at 1 / 0), so its memory stays bounded on an endless stream;
    nothing is written to disk (tshark's own live mode keeps a temporary capture file).
    :meth:`stop` asks dumpcap to finish (SIGTERM: it prints its receive/drop counts), tshark
    then reads to the end; :meth:`close` returns exit statuses and messages.
    """

    def __init__(self, interface: str, bpf: str = "", *, decode_as: tuple[str, ...] = (),
                 extra_args: tuple[str, ...] = (), session_reset: int = 500_000, snaplen: int = 0,
                 buffer_mb: int = 32) -> None:
        exe = tshark_path()
        dumpcap = os.environ.get("TAISHI_DUMPCAP") or shutil.which("dumpcap")
        if exe is None or dumpcap is None:
            raise FileNotFoundError("tshark/dumpcap not found (install wireshark's tshark or set TAISHI_TSHARK)")
        cap = [dumpcap, "-q", "-n", "-i", interface, "-B", str(buffer_mb), "-w", "-"]
        if snaplen:
            cap += ["-s", str(snaplen)]
        if bpf:
            cap += ["-f", bpf]
        env = dict(os.environ, LC_ALL="C.UTF-8")
        self.interface, self.bpf = interface, bpf
        self.cap = subprocess.Popen(cap, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    env=env)
        self._err = tempfile.TemporaryFile()
        cmd = [exe, "-n", "-r", "-", "-l", "-M", str(session_reset), *field_args(decode_as, extra_args)]
        self.proc = subprocess.Popen(cmd, stdin=self.cap.stdout, stdout=subprocess.PIPE, stderr=self._err, env=env)
        assert self.cap.stdout is not None and self.proc.stdout is not None
        self.cap.stdout.close()  # tshark holds the read end
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.cap_lines: list[str] = []
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._read_cap_stderr, daemon=True, name="taishi-dumpcap-stderr")
        self._reader.start()

    @property
    def fd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def _read_cap_stderr(self) -> None:
        assert self.cap.stderr is not None
        for raw in self.cap.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("Capturing on"):
                self.started.set()
            if line and len(self.cap_lines) < 200:
                self.cap_lines.append(line)
        self.started.set()  # exited (failure or end): nobody waits forever

    def wait_started(self, timeout: float = 15.0) -> None:
        """Return once dumpcap is capturing; raise with its message when it could not start."""
        self.started.wait(timeout)
        time.sleep(0.05)
        if self.cap.poll() is not None or not any(ln.startswith("Capturing on") for ln in self.cap_lines):
            self.stop()
            msg = "; ".join(ln for ln in self.cap_lines if "Capturing on" not in ln) or "no message"
            raise RuntimeError(f"cannot capture on {self.interface!r}: {msg}")

    def read(self) -> bytes | None:
        """What tshark has printed so far (b"" when nothing is waiting); None at its end."""
        assert self.proc.stdout is not None
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return b""
        return data or None

    def stop(self) -> None:
        if self.cap.poll() is None:
            self.cap.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        for p in (self.cap, self.proc):
            if p.poll() is None:
                p.kill()

    def close(self, timeout: float = 30.0) -> dict:
        """Wait for both processes: exit statuses, messages and dumpcap's packet counts."""
        self.stop()
        try:
            rc_cap = self.cap.wait(timeout)
        except subprocess.TimeoutExpired:
            self.cap.kill()
            rc_cap = self.cap.wait()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.seek(0)
        err = self._err.read().decode("utf-8", "replace")
        self._err.close()
        lines = [ln for ln in err.splitlines() if ln.strip() and not any(b in ln for b in _BENIGN)
                 and ln.strip() not in ("resetting session.", "tshark:")]
        received = dropped = captured = None
        for ln in self.cap_lines:
            m = _STATS.search(ln)
            if m:
                received, dropped = int(m.group(1)), int(m.group(2))
            elif ln.startswith("Packets captured:"):
                captured = int(ln.split(":")[1])
        cap_err = [ln for ln in self.cap_lines if not (ln.startswith(("Capturing on", "File:", "Packets")))]
        # dumpcap ends with status 0 on SIGTERM (or -SIGTERM when it had not set its handler yet)
        return {"tshark_status": rc, "tshark_stderr": "\n".join(lines), "dumpcap_status": rc_cap,
                "dumpcap_stderr": "\n".join(cap_err), "received": received, "captured": captured,
                "kernel_drops": dropped,
                # accepted by the kernel but still in its buffer when dumpcap stopped: never written
                "unread_at_stop": max(0, received - captured) if received is not None and captured is not None else 0}


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
