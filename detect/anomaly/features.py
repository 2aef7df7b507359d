"""Feature extraction for anomaly scoring: pure functions over one event batch.

Input is any ECS event batch (``pyarrow.Table`` / ``RecordBatch`` with the
dotted names of :mod:`taishi.schema`, or a pandas ``DataFrame`` with the same
column names, as Spark ``mapInPandas`` hands over). Output is a float64 matrix
whose columns are named by :data:`FLOW_FEATURES` / :data:`DNS_FEATURES`, plus
an entity class per row (the baseline a row's explanation is compared to).
Missing columns become neutral values, so the same code serves Zeek conn logs,
CIC-IDS2017 flows mapped to ECS, or Suricata flow events.

Entity/window features are defined on event-time tumbling windows keyed by
entity: the *window* of a row is ``floor(@timestamp in µs / window_us)``
(:func:`window_index`, integer arithmetic, so every executor agrees on the
boundaries), its *entity* is ``source.ip``. A row's window features are a
function of the rows sharing its ``(source.ip, window)`` and nothing else
(:func:`window_features`), so any call given whole ``(source.ip, window)``
groups computes the same values, however the stream was cut into batches.
Both executors make sure a call sees whole groups: the embedded pipeline holds
rows until their window closes (:mod:`detect.anomaly.windows`), Spark groups
by ``(window, entity bucket)`` before scoring (:mod:`detect.anomaly.spark`).

>>> import pyarrow as pa
>>> X, cls = flow_features(pa.table({"source.ip": ["10.0.0.1"], "destination.port": [443]}))
>>> X.shape == (1, len(FLOW_FEATURES)), cls.tolist()
(True, ['internal'])
>>> q = qname_features(["www.google.com.", "a9x0q2z7k3.example.org."])
>>> float(q[0, DNS_FEATURES.index("label_count")]), bool(q[1, DNS_FEATURES.index("digit_ratio")] > 0.2)
(3.0, True)
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CONN_STATES = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH")
FAILED_STATES = ("S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR", "OTH")

FLOW_BASE = [
    "log_duration_s",
    "log_src_bytes",
    "log_dst_bytes",
    "log_src_pkts",
    "log_dst_pkts",
    "log_bytes_ratio",  # log1p(src bytes) - log1p(dst bytes)
    "log_pkts_ratio",
    "log_src_bytes_per_pkt",
    "log_dst_bytes_per_pkt",
    "dport_wellknown",  # < 1024
    "dport_registered",  # 1024..49151
    "dport_dynamic",  # >= 49152
    "proto_tcp",
    "proto_udp",
    "proto_icmp",
]
FLOW_STATE = [f"state_{s}" for s in CONN_STATES]
FLOW_WINDOW = [
    "win_log_flows",  # flows of this source.ip in the window
    "win_log_distinct_dst",  # distinct destination.ip
    "win_log_distinct_dport",  # distinct destination.port
    "win_failed_ratio",  # share of flows in a failed conn_state
    "pair_log_flows",  # flows of this (source.ip, destination.ip) in the window
    "pair_periodicity",  # 1/(1+CV) of inter-arrival times of the pair (0 if < 3 flows)
]
FLOW_FEATURES: list[str] = FLOW_BASE + FLOW_STATE + FLOW_WINDOW

DNS_FEATURES: list[str] = [
    "length",
    "label_count",
    "longest_label",
    "digit_ratio",
    "upper_ratio",
    "symbol_ratio",  # not [a-z0-9.-]
    "vowel_ratio",
    "entropy",  # Shannon entropy (bits/char) of the name without dots
    "bigram_rarity",  # mean -log2 P(bigram) under the shipped prior
    "unseen_bigram_ratio",  # share of bigrams absent from the prior
    "max_consonant_run",
]

_DATA = Path(__file__).resolve().parent / "data"
DEFAULT_WINDOW_S = 300.0


# ---------------------------------------------------------------------------
# batch access


def as_table(batch: Any) -> pa.Table:
    """A ``pa.Table`` from a Table, RecordBatch or pandas DataFrame."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        return pa.Table.from_pandas(batch, preserve_index=False)
    raise TypeError(f"not an event batch: {type(batch).__name__}")


def _num(t: pa.Table, name: str) -> np.ndarray:
    if name not in t.column_names:
        return np.zeros(t.num_rows)
    col = t.column(name)
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.int64())
    return np.nan_to_num(col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False), nan=0.0)


def _str(t: pa.Table, name: str) -> np.ndarray:
    if name not in t.column_names:
        return np.full(t.num_rows, "", dtype=object)
    return np.asarray(pc.fill_null(pc.cast(t.column(name), pa.string()), "").to_pylist(), dtype=object)


def _ts_micros(t: pa.Table) -> np.ndarray:
    """Epoch microseconds of ``@timestamp`` as int64 (a missing or null time is 0)."""
    if "@timestamp" not in t.column_names:
        return np.zeros(t.num_rows, np.int64)
    col = pc.cast(pc.cast(t.column("@timestamp"), pa.timestamp("us", tz="UTC")), pa.int64())
    return pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def window_index(batch: Any, window_s: float = DEFAULT_WINDOW_S) -> np.ndarray:
    """Tumbling event-time window of each row: ``floor(µs / window_us)`` (int64).

    >>> import pyarrow as pa
    >>> from datetime import datetime, timezone
    >>> ts = [datetime(2024, 1, 1, 0, 4, 59, 999999, tzinfo=timezone.utc), datetime(2024, 1, 1, 0, 5, tzinfo=timezone.utc)]
    >>> w = window_index(pa.table({"@timestamp": pa.array(ts, pa.timestamp("us", tz="UTC"))}), 300)
    >>> int(w[1] - w[0])
    1
    """
    return np.floor_divide(_ts_micros(as_table(batch)), window_us(window_s))


def window_us(window_s: float) -> int:
    w = int(round(float(window_s) * 1e6))
    if w <= 0:
        raise ValueError(f"window must be positive, got {window_s!r} s")
    return w


def _ts_seconds(t: pa.Table) -> np.ndarray:
    if "@timestamp" not in t.column_names:
        return np.zeros(t.num_rows)
    col = pc.cast(t.column("@timestamp"), pa.timestamp("us", tz="UTC"))
    us = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
    return np.nan_to_num(us.astype(np.float64), nan=0.0) / 1e6


@functools.lru_cache(maxsize=65536)
def _ip_class(ip: str) -> str:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown"
    if a.is_private or a.is_link_local or a.is_loopback or a.is_multicast:
        return "internal"
    return "external"


def entity_classes(t: pa.Table) -> np.ndarray:
    """Baseline class of each row's entity (``source.ip``): internal / external / unknown."""
    src = _str(t, "source.ip")
    uniq, inv = np.unique(src.astype(str), return_inverse=True)
    return np.array([_ip_class(u) for u in uniq], dtype=object)[inv]


# ---------------------------------------------------------------------------
# flow features


def _group_ids(*keys: np.ndarray) -> np.ndarray:
    """Dense group id per row for the tuple of key columns."""
    codes = []
    for k in keys:
        _, inv = np.unique(k.astype(str) if k.dtype == object else k, return_inverse=True)
        codes.append(inv.astype(np.int64))
    if len(codes) == 1:
        return codes[0]
    _, g = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    return g.reshape(-1).astype(np.int64)


def _distinct_per_group(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    pair = _group_ids(g, v)
    first = np.unique(pair, return_index=True)[1]
    return np.bincount(g[first], minlength=g.max() + 1 if len(g) else 0)


def _periodicity(g: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per-row 1/(1+CV) of inter-arrival times within the row's group (0 when < 3 flows)."""
    n = len(g)
    if n == 0:
        return np.zeros(0)
    order = np.lexsort((ts, g))
    gs, tss = g[order], ts[order]
    d = np.diff(tss)
    same = gs[1:] == gs[:-1]
    ng = g.max() + 1
    cnt = np.bincount(gs[1:][same], minlength=ng).astype(float)
    s1 = np.bincount(gs[1:][same], weights=d[same], minlength=ng)
    s2 = np.bincount(gs[1:][same], weights=d[same] ** 2, minlength=ng)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        var = np.maximum(s2 / cnt - mean**2, 0.0)
        cv = np.sqrt(var) / mean
        per = np.where((cnt >= 2) & (mean > 0), 1.0 / (1.0 + cv), 0.0)
    return np.nan_to_num(per)[g]


def flow_features(
    batch: Any, window_s: float = DEFAULT_WINDOW_S, window: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(X[n, len(FLOW_FEATURES)], entity class[n]) for a batch of flow events.

    ``window=False`` leaves the entity/window columns at 0 (for data, such as
    per-class random samples, where co-occurrence in a batch means nothing).
    """
    t = as_table(batch)
    n = t.num_rows
    dur = _num(t, "event.duration") / 1e9
    sb, db = _num(t, "source.bytes"), _num(t, "destination.bytes")
    sp, dp = _num(t, "source.packets"), _num(t, "destination.packets")
    sb, db, sp, dp, dur = (np.maximum(a, 0.0) for a in (sb, db, sp, dp, dur))
    port = _num(t, "destination.port") if "destination.port" in t.column_names else np.full(n, -1.0)
    has_port = np.zeros(n, bool)
    if "destination.port" in t.column_names:
        has_port = pc.is_valid(t.column("destination.port")).to_numpy(zero_copy_only=False)
    proto = np.char.lower(_str(t, "network.transport").astype(str))
    state = _str(t, "event.action").astype(str)

    cols = [
        np.log1p(dur),
        np.log1p(sb),
        np.log1p(db),
        np.log1p(sp),
        np.log1p(dp),
        np.log1p(sb) - np.log1p(db),
        np.log1p(sp) - np.log1p(dp),
        np.log1p(sb / np.maximum(sp, 1.0)),
        np.log1p(db / np.maximum(dp, 1.0)),
        (has_port & (port < 1024)).astype(float),
        (has_port & (port >= 1024) & (port < 49152)).astype(float),
        (has_port & (port >= 49152)).astype(float),
        (proto == "tcp").astype(float),
        (proto == "udp").astype(float),
        np.isin(proto, ["icmp", "ipv6-icmp", "icmp6"]).astype(float),
    ]
    cols += [(state == s).astype(float) for s in CONN_STATES]

    if n and window:
        cols.append(_window_columns(t, window_s, port, state))
    else:
        cols.append(np.zeros((n, len(FLOW_WINDOW))))
    X = np.column_stack(cols) if n else np.zeros((0, len(FLOW_FEATURES)))
    return X.astype(np.float64), entity_classes(t)


def window_features(batch: Any, window_s: float = DEFAULT_WINDOW_S) -> np.ndarray:
    """X[n, len(FLOW_WINDOW)]: the entity/window features of each row.

    Row ``i``'s values depend only on the rows with the same ``source.ip`` and
    :func:`window_index` (all sums run over rows sorted within that group), so
    they are the same in any call that holds the whole group, whatever else
    the call holds or in which order.
    """
    t = as_table(batch)
    if t.num_rows == 0:
        return np.zeros((0, len(FLOW_WINDOW)))
    port = _num(t, "destination.port") if "destination.port" in t.column_names else np.full(t.num_rows, -1.0)
    return _window_columns(t, window_s, port, _str(t, "event.action").astype(str))


def _window_columns(t: pa.Table, window_s: float, port: np.ndarray, state: np.ndarray) -> np.ndarray:
    ts = _ts_seconds(t)
    src = _str(t, "source.ip")
    dst = _str(t, "destination.ip")
    win = window_index(t, window_s)
    g = _group_ids(src, win)
    flows = np.bincount(g).astype(float)
    ndst = _distinct_per_group(g, dst)
    nport = _distinct_per_group(g, port.astype(np.int64))
    failed = np.isin(state, FAILED_STATES).astype(float)
    fratio = np.bincount(g, weights=failed) / flows
    gp = _group_ids(src, dst, win)
    pflows = np.bincount(gp).astype(float)
    return np.column_stack(
        [
            np.log1p(flows[g]),
            np.log1p(ndst[g]),
            np.log1p(nport[g]),
            fratio[g],
            np.log1p(pflows[gp]),
            _periodicity(gp, ts),
        ]
    )


# ---------------------------------------------------------------------------
# DNS query-name features


@functools.lru_cache(maxsize=1)
def bigram_prior() -> tuple[dict[str, float], float]:
    """(bigram -> -log2 P, cost of an unseen bigram) from ``data/prior_words.txt``."""
    words: list[str] = []
    for line in (_DATA / "prior_words.txt").read_text().splitlines():
        if not line.startswith("#"):
            words += line.lower().split()
    c: Counter[str] = Counter()
    for w in words:
        w = f"^{w}$"
        c.update(w[i : i + 2] for i in range(len(w) - 1))
    total = sum(c.values())
    vocab = 38 * 38  # a-z 0-9 - and the two boundary marks
    cost = {b: -math.log2((k + 1) / (total + vocab)) for b, k in c.items()}
    return cost, -math.log2(1 / (total + vocab))


def _strip_qname(q: str) -> str:
    return q.rstrip(".")


def qname_row(q: str) -> list[float]:
    q = _strip_qname(q or "")
    labels = [x for x in q.split(".") if x] or [""]
    flat = q.replace(".", "")
    n = max(len(flat), 1)
    low = flat.lower()
    digits = sum(ch.isdigit() for ch in flat)
    upper = sum(ch.isupper() for ch in flat)
    symbols = sum(not (ch.isdigit() or ("a" <= ch <= "z") or ch == "-") for ch in low)
    vowels = sum(ch in "aeiou" for ch in low)
    counts = Counter(low)
    ent = -sum((k / n) * math.log2(k / n) for k in counts.values()) if flat else 0.0
    cost, unseen = bigram_prior()
    costs = []
    miss = 0
    for lab in labels:
        w = f"^{lab.lower()}$"
        for i in range(len(w) - 1):
            b = w[i : i + 2]
            cb = cost.get(b)
            if cb is None:
                miss += 1
                cb = unseen
            costs.append(cb)
    run = best = 0
    for ch in low:
        if "a" <= ch <= "z" and ch not in "aeiou":
            run += 1
            best = max(best, run)
        else:
            run = 0
    return [
        float(len(q)),
        float(len(labels)),
        float(max(len(x) for x in labels)),
        digits / n,
        upper / n,
        symbols / n,
        vowels / n,
        ent,
        float(np.mean(costs)) if costs else 0.0,
        miss / max(len(costs), 1),
        float(best),
    ]


def qname_features(names: Sequence[str | None]) -> np.ndarray:
    """X[n, len(DNS_FEATURES)] for a sequence of query names."""
    if len(names) == 0:
        return np.zeros((0, len(DNS_FEATURES)))
    return np.array([qname_row(q or "") for q in names], dtype=np.float64)


def dns_features(batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """(X, entity class) for a batch of DNS events (``dns.question.name``)."""
    t = as_table(batch)
    return qname_features(list(_str(t, "dns.question.name"))), entity_classes(t)


EXTRACTORS = {"flow": (FLOW_FEATURES, flow_features), "dns": (DNS_FEATURES, dns_features)}


def extract(kind: str, batch: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``kind`` ("flow" or "dns") for a batch."""
    return EXTRACTORS[kind][1](batch, **kw)
