"""The incident workflow rules both stores apply (correlate.incidents: workflow_changes,
upsert_changes, apply_changes, unworked, notes_of), and the embedded store applying them."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from correlate.incidents import (
    TRANSITIONS,
    WorkflowError,
    apply_changes,
    notes_of,
    unworked,
    upsert_changes,
    workflow_changes,
)


def test_every_allowed_transition_and_no_other():
    statuses = list(TRANSITIONS)
    for old in statuses:
        for new in statuses:
            if new in TRANSITIONS[old]:
                assert workflow_changes(old, None, status=new) == [("status", old, new)]
            else:
                with pytest.raises(WorkflowError):
                    workflow_changes(old, None, status=new)
    with pytest.raises(WorkflowError, match="unknown status"):
        workflow_changes("new", None, status="closed")


def test_a_refused_transition_refuses_the_whole_change():
    with pytest.raises(WorkflowError, match="cannot go from new to resolved"):
        workflow_changes("new", None, status="resolved", assignee="alice", set_assignee=True, note="n")


def test_assignee_and_note_changes():
    assert workflow_changes("new", None, assignee="alice", set_assignee=True, note="look") == [
        ("assignee", None, "alice"), ("note", None, "look")]
    assert workflow_changes("new", "alice", assignee="alice", set_assignee=True) == []  # no change, no entry
    assert workflow_changes("new", "alice", assignee="", set_assignee=True) == [("assignee", "alice", None)]
    assert workflow_changes("new", "alice", assignee="bob") == []  # set_assignee=False leaves it
    assert workflow_changes("new", None, note="") == []


def test_upsert_changes():
    built = {"id": "i1", "alert.count": 3}
    assert upsert_changes(None, built) == ("create", [("status", None, "new")])
    assert upsert_changes({"status": "in_progress", "alert.count": 2}, built) == ("update", [])
    assert upsert_changes({"status": "resolved", "alert.count": 3}, built) == ("update", [])  # nothing new
    assert upsert_changes({"status": "resolved", "alert.count": 2}, built) == (
        "update", [("status", "resolved", "acknowledged")])  # new alerts reopen
    assert upsert_changes({"status": "false_positive", "alert.count": 1}, built) == ("update", [])
    marker = {"id": "i2", "merged_into": "i1"}
    assert upsert_changes(None, marker) == ("skip", [])
    assert upsert_changes({"status": "new", "merged_into": "i1"}, marker) == ("skip", [])
    assert upsert_changes({"status": "new", "merged_into": None}, marker) == ("merge", [("merged_into", None, "i1")])


def test_apply_changes_unworked_and_notes():
    changes = [("status", "new", "acknowledged"), ("assignee", None, "bob"), ("note", None, "x"),
               ("merged_into", None, "i9")]
    assert apply_changes("new", None, None, changes) == ("acknowledged", "bob", "i9")
    at = datetime(2026, 3, 14, tzinfo=timezone.utc)
    created = [{"at": at, "who": "taishi", "field": "status", "old": None, "new": "new"}]
    assert unworked([]) and unworked(created)
    noted = created + [{"at": at, "who": "bob", "field": "note", "old": None, "new": "x"}]
    assert not unworked(noted)
    assert not unworked(created + [{"at": at, "who": "taishi", "field": "merged_into", "old": None, "new": "i9"}])
    assert notes_of(noted) == [{"at": at, "who": "bob", "text": "x"}]


def test_embedded_store_applies_the_rules(tmp_path):
    from taishi.store import Store

    t = "2026-03-14T02:00:00Z"
    inc = {"id": "i1", "title": "t", "severity": "low", "risk_score": 1, "first_seen": t, "last_seen": t,
           "threat.tactic.name": [], "threat.technique.id": [], "entities": [], "alert.ids": ["a"],
           "alert.count": 1, "rule.names": [], "graph": {"nodes": [], "edges": []}}
    with Store(tmp_path) as store:
        assert store.upsert_incidents([inc]) == 1
        store.update_incident("i1", "bob", status="acknowledged", assignee="bob", set_assignee=True, note="n")
        with pytest.raises(WorkflowError):
            store.update_incident("i1", "bob", status="new")
        for st in ("in_progress", "resolved"):
            store.update_incident("i1", "bob", status=st)
        assert store.upsert_incidents([dict(inc, **{"alert.count": 2})]) == 0
        got = store.incident("i1")
        assert (got["status"], got["assignee"]) == ("acknowledged", "bob")
        assert [(h["who"], h["field"], h["old"], h["new"]) for h in got["history"]] == [
            ("taishi", "status", None, "new"), ("bob", "status", "new", "acknowledged"),
            ("bob", "assignee", None, "bob"), ("bob", "note", None, "n"),
            ("bob", "status", "acknowledged", "in_progress"), ("bob", "status", "in_progress", "resolved"),
            ("taishi", "status", "resolved", "acknowledged")]
        assert [n["text"] for n in got["notes"]] == ["n"]
