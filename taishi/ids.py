"""Deterministic identities.

An event's id depends only on where it came from and what it said, so the
same input read twice (a restart, a replay, the other execution mode) gives
the same id. An alert's id depends only on the rule and the events (or, for
correlation rules, the group and window) that raised it.
"""

from __future__ import annotations

import hashlib
from typing import Iterable


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


def event_id(source: str, offset: int, original: str) -> str:
    """Id of the record at ``offset`` of input ``source`` whose raw text is ``original``.

    ``source`` is the input's stable name (a file's base name, a listener's
    name), not an absolute path, so moving a file does not change its ids.

    >>> event_id("conn.log", 0, "x") == event_id("conn.log", 0, "x")
    True
    >>> event_id("conn.log", 0, "x") == event_id("conn.log", 1, "x")
    False
    """
    return _digest("ev1", source, str(offset), original)


def alert_id(rule_id: str, event_ids: Iterable[str]) -> str:
    """Id of the alert ``rule_id`` raised on exactly these events (order-free)."""
    return _digest("al1", rule_id, *sorted(set(event_ids)))


def correlation_alert_id(rule_id: str, group: str, window_start_us: int) -> str:
    """Id of a correlation alert: the rule, the group-by values, the window it opened."""
    return _digest("ac1", rule_id, group, str(window_start_us))


def deadletter_id(source: str, offset: int, stage: str, original: str) -> str:
    return _digest("dl1", source, str(offset), stage, original)


def verdict_id(check_id: str, target: str, system_id: str) -> str:
    """Id of a compliance verdict as published to the search node: the latest verdict of a
    check on a target, counted for a CII system, replaces the previous one."""
    return _digest("cv1", check_id, target, system_id)
