"""Per-group window state for the metric and temporal Sigma correlation types.

Used by :mod:`correlate.sigma_correlation` for ``temporal``, ``temporal_ordered``,
``value_sum``, ``value_avg`` and ``value_percentile``. Every state is a pure
function of the records currently in the group's window (added in evaluation
order, removed oldest first), so eviction timing -- which depends on when the
watermark moves, i.e. on batching -- never changes a result, and a snapshot
only needs the window's records (the state is rebuilt by replaying them).

* sum / avg: the exact sum of the window's values is kept as an integer
  multiple of 2**-1074 (every finite float is one), so adding and removing in
  any order gives the same bits; the reported value is that exact sum (or the
  exact sum divided by the count) correctly rounded, i.e. ``math.fsum``.
* percentile: the window's values sorted; numpy's default ``linear`` method
  (Hyndman & Fan type 7): virtual index ``(n - 1) * p / 100``, interpolated
  as numpy's ``_lerp`` does, so the result equals ``numpy.percentile(values, p)``.
* temporal: how many of the referenced rules matched in the window.
* temporal_ordered: the longest prefix of the rule list matched in order
  (strictly increasing @timestamp) within the timespan.

Values that are missing, not numeric or not finite are not aggregated (as SQL
aggregates skip NULL); a window without any value has no metric (no alert).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from typing import Any

_SCALE_BITS = 1074  # 2**-1074: the smallest subnormal double; every finite float is k * 2**-1074
_SCALE = 1 << _SCALE_BITS


def exact_units(x: float) -> int:
    """``x`` as an exact integer multiple of 2**-1074."""
    n, d = float(x).as_integer_ratio()
    return n << (_SCALE_BITS - (d.bit_length() - 1))


def percentile_linear(sorted_vals: list[float], p: float) -> float:
    """``numpy.percentile(sorted_vals, p)`` (method ``linear``) of an ascending list."""
    n = len(sorted_vals)
    vi = (n - 1) * (p / 100.0)
    lo = math.floor(vi)
    if lo < 0:
        lo = 0
    if lo >= n - 1:
        return float(sorted_vals[n - 1])
    g = vi - lo
    a = sorted_vals[lo]
    b = sorted_vals[lo + 1]
    d = b - a
    if g >= 0.5:
        return float(b - d * (1 - g))
    return float(a + d * g)


class SumState:
    """Exact sum (and count) of the window's numeric values."""

    __slots__ = ("total", "n", "avg")

    def __init__(self, avg: bool = False) -> None:
        self.total = 0
        self.n = 0
        self.avg = avg

    def add(self, t: int, v: float) -> None:
        self.total += exact_units(v)
        self.n += 1

    def remove(self, t: int, v: float) -> None:
        self.total -= exact_units(v)
        self.n -= 1

    def clear(self) -> None:
        self.total = 0
        self.n = 0

    def value(self, t: int, span: int) -> float | None:
        if not self.n:
            return None
        return self.total / (_SCALE * self.n if self.avg else _SCALE)


class PercentileState:
    """The window's numeric values, sorted."""

    __slots__ = ("vals", "p")

    def __init__(self, p: float) -> None:
        self.vals: list[float] = []
        self.p = p

    def add(self, t: int, v: float) -> None:
        insort(self.vals, v)

    def remove(self, t: int, v: float) -> None:
        del self.vals[bisect_left(self.vals, v)]

    def clear(self) -> None:
        self.vals.clear()

    def value(self, t: int, span: int) -> float | None:
        return percentile_linear(self.vals, self.p) if self.vals else None


class RulesState:
    """temporal: per referenced rule (a bit), how many window events matched it."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, t: int, bits: int) -> None:
        c = self.counts
        while bits:
            b = bits & -bits
            c[b] = c.get(b, 0) + 1
            bits ^= b

    def remove(self, t: int, bits: int) -> None:
        c = self.counts
        while bits:
            b = bits & -bits
            k = c[b] - 1
            if k:
                c[b] = k
            else:
                del c[b]
            bits ^= b

    def clear(self) -> None:
        self.counts.clear()

    def value(self, t: int, span: int) -> float | None:
        return len(self.counts)


class OrderedState:
    """temporal_ordered: for each stage k of the rule list, the latest start time of a
    chain ``rule[0] < rule[1] < ... < rule[k]`` (strictly increasing @timestamp) seen.

    The latest start dominates (any later event can extend it and it stays in the
    timespan longest), so one number per stage suffices. Chains ending at the current
    timestamp are *staged* and become extendable only by a later timestamp. Removing
    old records needs no work: a chain starting before the window cannot fit any
    future event into the timespan, and :meth:`value` ignores it.
    """

    __slots__ = ("stage_bits", "L", "staged", "cur", "start")

    def __init__(self, stage_bits: list[int]) -> None:
        self.stage_bits = stage_bits
        n = len(stage_bits)
        self.L: list[int | None] = [None] * n
        self.staged: list[int | None] = [None] * n
        self.cur: int | None = None
        self.start: int | None = None  # start of the chain behind the last value()

    def add(self, t: int, bits: int) -> None:
        L, st = self.L, self.staged
        if self.cur is None or t > self.cur:
            for k, s in enumerate(st):
                if s is not None:
                    if L[k] is None or s > L[k]:
                        L[k] = s
                    st[k] = None
            self.cur = t
        for k, b in enumerate(self.stage_bits):
            if bits & b:
                cand = t if k == 0 else L[k - 1]
                if cand is not None and (st[k] is None or cand > st[k]):
                    st[k] = cand

    def remove(self, t: int, bits: int) -> None:
        pass

    def clear(self) -> None:
        n = len(self.stage_bits)
        self.L = [None] * n
        self.staged = [None] * n
        self.cur = None
        self.start = None

    def value(self, t: int, span: int) -> float | None:
        lo = t - span
        best = 0
        self.start = None
        for k in range(len(self.stage_bits)):
            a, b = self.L[k], self.staged[k]
            s = a if b is None else (b if a is None or b > a else a)
            if s is None or s < lo:
                break
            best = k + 1
            self.start = s
        return best


def new_state(kind: str, stage_bits: list[int] | None = None, percentile: float | None = None) -> Any:
    if kind == "value_sum":
        return SumState()
    if kind == "value_avg":
        return SumState(avg=True)
    if kind == "value_percentile":
        return PercentileState(float(percentile))  # type: ignore[arg-type]
    if kind == "temporal":
        return RulesState()
    if kind == "temporal_ordered":
        return OrderedState(stage_bits or [])
    raise NotImplementedError(kind)
