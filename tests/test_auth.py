"""taishi.api.auth: users.json never holds a token, roles are data, the audit log."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from taishi.api.auth import (
    ADMIN_TOKEN_ENV,
    PERMISSIONS,
    ROLE_PERMISSIONS,
    ROLES,
    AuditLog,
    AuthError,
    User,
    UserDB,
)

# The least-privilege matrix, written out by hand. Changing ROLE_PERMISSIONS
# without changing this (i.e. without thinking about it) fails test_matrix_is_as_documented.
EXPECTED_ROLE_PERMISSIONS = {
    "analyst": {"health", "events:read", "alerts:read", "rules:read", "deadletters:read"},
    "responder": {"health", "events:read", "alerts:read", "rules:read", "deadletters:read", "alerts:triage"},
    "auditor": {"health", "events:read", "alerts:read", "rules:read", "deadletters:read", "audit:read", "users:read",
                "compliance:read"},
    "admin": {"health", "events:read", "alerts:read", "rules:read", "deadletters:read", "alerts:triage",
              "audit:read", "users:read", "users:manage", "rules:manage", "compliance:read", "inventory:manage"},
}
for _perms in EXPECTED_ROLE_PERMISSIONS.values():  # the situation views (posture, flows, assets, map): every role
    _perms.add("views:read")
for _role, _perms in EXPECTED_ROLE_PERMISSIONS.items():  # incidents: every role reads, responders work them
    _perms.add("incidents:read")
    if _role in ("responder", "admin"):
        _perms.add("incidents:triage")


@pytest.fixture
def db(data_dir: Path) -> UserDB:
    return UserDB(data_dir / "users.json")


@pytest.fixture(autouse=True)
def _no_env_admin(monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)


# ---------------------------------------------------------------- permission table
def test_matrix_is_as_documented():
    assert set(ROLES) == set(ROLE_PERMISSIONS) == set(EXPECTED_ROLE_PERMISSIONS)
    for role in ROLES:
        assert set(ROLE_PERMISSIONS[role]) == EXPECTED_ROLE_PERMISSIONS[role], role


def test_least_privilege_invariants():
    assert ROLE_PERMISSIONS["admin"] == frozenset(PERMISSIONS)
    assert ROLE_PERMISSIONS["analyst"] < ROLE_PERMISSIONS["responder"]
    for role in ("analyst", "auditor"):
        assert "alerts:triage" not in ROLE_PERMISSIONS[role]
        assert "incidents:triage" not in ROLE_PERMISSIONS[role]
    for role in ("analyst", "responder", "auditor"):  # only admin changes users or rules
        assert not {"users:manage", "rules:manage", "inventory:manage"} & ROLE_PERMISSIONS[role]
    assert not {p for p in ROLE_PERMISSIONS["auditor"] if not p.endswith(":read") and p != "health"}


def test_user_can():
    assert User("a", "responder").can("alerts:triage")
    assert not User("a", "analyst").can("alerts:triage")
    assert not User("a", "nosuchrole").can("health")


# ---------------------------------------------------------------- users.json
def test_add_and_authenticate(db: UserDB):
    token = db.add_user("alice", "analyst")
    assert db.authenticate(token) == User("alice", "analyst")
    assert db.authenticate(token + "x") is None
    assert db.authenticate(token[:-1]) is None
    assert db.authenticate("") is None
    assert db.authenticate(None) is None
    assert db.authenticate("x" * 10_000) is None
    kid, secret = token.split(".", 1)
    assert db.authenticate(f"{kid}.{'A' * len(secret)}") is None


def test_tokens_not_stored_in_clear(db: UserDB, data_dir: Path):
    tokens = [db.add_user(f"u{i}", role) for i, role in enumerate(ROLES)]
    raw = (data_dir / "users.json").read_text()
    doc = json.loads(raw)
    salts = set()
    for token in tokens:
        secret = token.split(".", 1)[1]
        assert token not in raw and secret not in raw and secret[:16] not in raw
    for rec in doc["users"]:
        assert rec["kdf"] == "scrypt" and len(bytes.fromhex(rec["hash"])) == 32
        salts.add(rec["salt"])
        assert "token" not in rec
    assert len(salts) == len(tokens)  # per-user salt
    mode = stat.S_IMODE(os.stat(data_dir / "users.json").st_mode)
    assert mode == 0o600


def test_same_token_different_salt_different_hash(db: UserDB, data_dir: Path, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "a-known-automation-token-0123456789")
    db.ensure_admin()
    h1 = json.loads((data_dir / "users.json").read_text())["users"][0]["hash"]
    db.remove_user("admin")
    db.ensure_admin()
    h2 = json.loads((data_dir / "users.json").read_text())["users"][0]["hash"]
    assert h1 != h2


def test_bad_names_roles_duplicates(db: UserDB):
    with pytest.raises(AuthError):
        db.add_user("bob", "root")
    for bad in ("", "-x", "a b", "x" * 65, "../etc", "名字"):
        with pytest.raises(AuthError):
            db.add_user(bad, "analyst")
    db.add_user("bob", "analyst")
    with pytest.raises(AuthError):
        db.add_user("bob", "admin")


def test_remove_and_rotate(db: UserDB):
    t1 = db.add_user("carol", "responder")
    assert db.authenticate(t1)  # now cached
    t2 = db.rotate("carol")
    assert db.authenticate(t1) is None
    assert db.authenticate(t2) == User("carol", "responder")
    assert db.remove_user("carol") is True
    assert db.authenticate(t2) is None
    assert db.remove_user("carol") is False
    with pytest.raises(AuthError):
        db.rotate("carol")


def test_changes_by_another_process_are_seen(db: UserDB, data_dir: Path):
    token = db.add_user("dave", "analyst")
    assert db.authenticate(token)
    other = UserDB(data_dir / "users.json")  # e.g. `taishi users` while the server runs
    other.remove_user("dave")
    assert db.authenticate(token) is None
    t2 = other.add_user("erin", "auditor")
    assert db.authenticate(t2) == User("erin", "auditor")


def test_list_users_has_no_secrets(db: UserDB):
    db.add_user("frank", "auditor", created_by="admin")
    users = db.list_users()
    assert [(u.name, u.role, u.created_by) for u in users] == [("frank", "auditor", "admin")]
    d = users[0].as_dict()
    assert set(d) == {"name", "role", "created", "created_by", "rotated"}


def test_ensure_admin_first_use(db: UserDB, data_dir: Path):
    assert not (data_dir / "users.json").exists()
    token = db.ensure_admin()
    assert token and db.authenticate(token) == User("admin", "admin")
    assert db.ensure_admin() is None  # shown once only
    assert token not in (data_dir / "users.json").read_text()


def test_ensure_admin_not_when_users_exist(db: UserDB):
    db.add_user("gina", "analyst")
    assert db.ensure_admin() is None
    assert [u.name for u in db.list_users()] == ["gina"]


def test_ensure_admin_env_token(db: UserDB, data_dir: Path, monkeypatch):
    known = "automation-token-abcdefghijklmnop"
    monkeypatch.setenv(ADMIN_TOKEN_ENV, known)
    assert db.ensure_admin() is None
    assert db.authenticate(known) == User("admin", "admin")
    assert known not in (data_dir / "users.json").read_text()
    # idempotent; a changed env token re-keys admin and the old one stops working
    assert db.ensure_admin() is None
    monkeypatch.setenv(ADMIN_TOKEN_ENV, known + "-2")
    db.ensure_admin()
    assert db.authenticate(known) is None
    assert db.authenticate(known + "-2") == User("admin", "admin")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "short")
    with pytest.raises(AuthError):
        db.ensure_admin()


# ---------------------------------------------------------------- audit log
def test_audit_log(data_dir: Path):
    log = AuditLog(data_dir / "audit.log")
    assert log.read() == []
    for i in range(5):
        log.append({"user": "u" if i % 2 else "v", "role": "admin", "method": "POST", "path": f"/p{i}", "status": 200})
    recs = log.read()
    assert [r["path"] for r in recs] == ["/p4", "/p3", "/p2", "/p1", "/p0"]
    assert all(r["time"].endswith("Z") for r in recs)
    assert [r["path"] for r in log.read(user="u")] == ["/p3", "/p1"]
    assert len(log.read(limit=2)) == 2
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert log.read(since=future) == []
    lines = (data_dir / "audit.log").read_text().splitlines()
    assert len(lines) == 5 and all(set(json.loads(x)) >= {"time", "user", "role", "method", "path", "status"} for x in lines)
