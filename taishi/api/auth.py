"""Token authentication, roles as data, and the API audit log.

Users and their tokens live in ``data_dir/users.json`` (mode 0600, created on
first use). Only a salted scrypt hash of each token is stored, never the token
itself; a token is shown exactly once, when it is made.

Token format
    ``<kid>.<secret>``: ``kid`` is a random public 12-hex-digit key id stored
    beside the hash, ``secret`` is ``secrets.token_urlsafe(32)`` (256 bits).
    The key id lets :meth:`UserDB.authenticate` verify a token with one scrypt
    call instead of one per user, so a flood of bad tokens cannot cost
    ``users x 65 ms`` of CPU each. A token set through ``TAISHI_ADMIN_TOKEN``
    may have any form (min. 24 characters); such tokens have no key id and are
    checked by scanning the (few) key-id-less users.
    Verified tokens are cached in memory only, keyed by their SHA-256, for
    :data:`CACHE_TTL_S` seconds; any change to users.json clears the cache, so
    a removed user or rotated token stops working within one request.

Transport
    ``Authorization: Bearer <token>`` on every request. The console keeps the
    token in ``sessionStorage`` (gone when the tab closes) and sends the same
    header. No cookies are used at all, so there is no CSRF surface; the
    console's strict Content-Security-Policy (no inline script, same-origin
    only) and text-only rendering are the XSS defence for the stored token.

Roles (least privilege; :data:`ROLE_PERMISSIONS` is the single source of truth
and the API's routes each name one permission)::

    permission        analyst responder auditor admin
    health               x        x        x      x   service health + store stats
    events:read          x        x        x      x
    alerts:read          x        x        x      x
    rules:read           x        x        x      x   rule list and rule check
    deadletters:read     x        x        x      x   raw input that failed to parse
    alerts:triage                 x               x   ack / close / assign / note
    audit:read                             x      x   the API audit log
    users:read                             x      x   user list (access review)
    users:manage                                  x   add / remove / rotate users
    rules:manage                                  x   reload rules
    compliance:read                        x      x   CII inventory, discovery, compliance report
    inventory:manage                              x   import into the CII inventory
    views:read           x        x        x      x   posture index, flows, asset risk, map
    incidents:read       x        x        x      x   incidents, their attack graph and history
    incidents:triage              x               x   incident workflow: status, assignee, notes

Dead letters hold raw input records, the same data class as an event's
``event.original`` that analysts already read, so they are readable by every
role that reads events (analysts need them to see what ingestion dropped).
The auditor reads everything and changes nothing: it can review who has
access (``users:read``) and what they did (``audit:read``) but cannot triage.

Audit log
    ``data_dir/audit.log``, JSON lines ``{time, user, role, method, path,
    status, client}``: every state-changing request (any method but GET, HEAD,
    OPTIONS), whatever its outcome, plus every request refused with 401 or 403.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

ROLES = ("analyst", "responder", "auditor", "admin")

PERMISSIONS: dict[str, str] = {
    "health": "read service health and store statistics",
    "events:read": "search and read events",
    "alerts:read": "search and read alerts and their triage state",
    "rules:read": "list detection rules and their check results",
    "deadletters:read": "read dead-lettered (unparseable) input",
    "alerts:triage": "acknowledge, close, assign and annotate alerts",
    "audit:read": "read the API audit log",
    "users:read": "list users and roles (never tokens)",
    "users:manage": "add, remove and rotate users",
    "rules:manage": "reload detection rules",
    "compliance:read": "read the CII inventory, passive discovery and compliance reports",
    "inventory:manage": "import systems and assets into the CII inventory",
    "views:read": "read the situation views: posture index, flows, asset status and risk, map",
    "incidents:read": "read incidents, their attack graph (traceback) and workflow history",
    "incidents:triage": "change an incident's status and assignee, add notes",
}

_READ = frozenset({"health", "events:read", "alerts:read", "rules:read", "deadletters:read", "views:read",
                   "incidents:read"})

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "analyst": _READ,
    "responder": _READ | {"alerts:triage", "incidents:triage"},
    "auditor": _READ | {"audit:read", "users:read", "compliance:read"},
    "admin": frozenset(PERMISSIONS),
}

ADMIN_TOKEN_ENV = "TAISHI_ADMIN_TOKEN"
MIN_ENV_TOKEN_LEN = 24
CACHE_TTL_S = 30.0
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_KID_RE = re.compile(r"^[0-9a-f]{12}$")

assert set(ROLE_PERMISSIONS) == set(ROLES)
assert all(p <= set(PERMISSIONS) for p in ROLE_PERMISSIONS.values())


class AuthError(ValueError):
    """A user-management request that cannot be done (bad name, unknown user ...)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def permissions(self) -> frozenset[str]:
        return ROLE_PERMISSIONS.get(self.role, frozenset())

    def can(self, permission: str) -> bool:
        return permission in self.permissions


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _hash(token: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(token.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)


def _credential(token: str, kid: str | None) -> dict[str, Any]:
    salt = secrets.token_bytes(16)
    return {
        "kid": kid,
        "kdf": "scrypt",
        **_SCRYPT,
        "salt": salt.hex(),
        "hash": _hash(token, salt, **_SCRYPT).hex(),
    }


def _verify(token: str, rec: dict[str, Any]) -> bool:
    try:
        digest = _hash(token, bytes.fromhex(rec["salt"]), int(rec["n"]), int(rec["r"]), int(rec["p"]))
        return hmac.compare_digest(digest, bytes.fromhex(rec["hash"]))
    except (KeyError, ValueError, TypeError):
        return False


def _new_token() -> tuple[str, str]:
    kid = secrets.token_hex(6)
    return kid, f"{kid}.{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class UserInfo:
    """What may be shown about a user: never its hash or token."""

    name: str
    role: str
    created: str | None = None
    created_by: str | None = None
    rotated: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "created": self.created,
                "created_by": self.created_by, "rotated": self.rotated}


class UserDB:
    """The users of one data directory, backed by ``users.json``.

    Safe to share between threads; writes take an exclusive ``flock`` so the
    CLI and a running server can both change users.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._users: dict[str, dict[str, Any]] = {}
        self._sig: tuple[int, int] | None = None
        self._cache: dict[bytes, tuple[str, float]] = {}

    # -- file handling -------------------------------------------------
    def _stat_sig(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        sig = self._stat_sig()
        if sig == self._sig and (sig is not None or not self._users):
            return
        users: dict[str, dict[str, Any]] = {}
        if sig is not None:
            doc = json.loads(self.path.read_text("utf-8") or "{}")
            for rec in doc.get("users", []):
                users[rec["name"]] = rec
        self._users, self._sig = users, sig
        self._cache.clear()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Read-modify-write users.json under an exclusive file lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._sig = None
                self._refresh()
                users = {k: dict(v) for k, v in self._users.items()}
                yield users
                doc = {"version": 1, "users": sorted(users.values(), key=lambda u: u["name"])}
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(doc, f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                os.chmod(self.path, 0o600)
                self._sig = None
                self._refresh()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- management ----------------------------------------------------
    def add_user(self, name: str, role: str, *, created_by: str | None = None) -> str:
        """Create ``name`` with ``role``; returns its token (shown only this once)."""
        if not _NAME_RE.match(name or ""):
            raise AuthError("user name must be 1-64 characters of A-Z a-z 0-9 . _ @ - (not starting with a symbol)")
        if role not in ROLES:
            raise AuthError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        kid, token = _new_token()
        with self._writing() as users:
            if name in users:
                raise AuthError(f"user {name!r} already exists")
            users[name] = {"name": name, "role": role, "created": _now(), "created_by": created_by,
                           **_credential(token, kid)}
        return token

    def rotate(self, name: str) -> str:
        """Give ``name`` a fresh token; the old one stops working at once."""
        kid, token = _new_token()
        with self._writing() as users:
            if name not in users:
                raise AuthError(f"no user {name!r}")
            users[name].update(_credential(token, kid), rotated=_now())
        return token

    def remove_user(self, name: str) -> bool:
        with self._writing() as users:
            return users.pop(name, None) is not None

    def list_users(self) -> list[UserInfo]:
        """Name, role and dates of every user, by name (never a hash or token)."""
        with self._lock:
            self._refresh()
            return [
                UserInfo(rec["name"], rec["role"], rec.get("created"), rec.get("created_by"), rec.get("rotated"))
                for rec in sorted(self._users.values(), key=lambda u: u["name"])
            ]

    def get(self, name: str) -> User | None:
        with self._lock:
            self._refresh()
            rec = self._users.get(name)
            return User(rec["name"], rec["role"]) if rec else None

    def ensure_admin(self) -> str | None:
        """Make sure someone can log in.

        With ``TAISHI_ADMIN_TOKEN`` set, the ``admin`` user is created or
        re-keyed to that token (automation knows it; returns None). Otherwise,
        when there are no users at all, an ``admin`` user is created and its
        fresh token returned, once, for ``taishi serve`` to print.
        """
        env = os.environ.get(ADMIN_TOKEN_ENV)
        if env:
            env = env.strip()
            if len(env) < MIN_ENV_TOKEN_LEN:
                raise AuthError(f"{ADMIN_TOKEN_ENV} must be at least {MIN_ENV_TOKEN_LEN} characters")
            with self._lock:
                self._refresh()
                rec = self._users.get("admin")
                if rec and rec.get("role") == "admin" and _verify(env, rec):
                    return None
            with self._writing() as users:
                rec = users.setdefault("admin", {"name": "admin", "created": _now(), "created_by": ADMIN_TOKEN_ENV})
                rec.update(role="admin", **_credential(env, None))
            return None
        with self._lock:
            self._refresh()
            if self._users:
                return None
        try:
            return self.add_user("admin", "admin", created_by="ensure_admin")
        except AuthError:  # another process got there first
            return None

    # -- authentication ------------------------------------------------
    def authenticate(self, token: str | None) -> User | None:
        if not token or len(token) > 512:
            return None
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            self._refresh()
            hit = self._cache.get(key)
            if hit and hit[1] > time.monotonic():
                rec = self._users.get(hit[0])
                return User(rec["name"], rec["role"]) if rec else None
            users = list(self._users.values())
        kid = token.split(".", 1)[0]
        candidates = [u for u in users if _KID_RE.match(kid) and u.get("kid") == kid]
        if not candidates:
            candidates = [u for u in users if not u.get("kid")]
        for rec in candidates:
            if _verify(token, rec) and rec.get("role") in ROLES:
                with self._lock:
                    if len(self._cache) > 1024:
                        self._cache.clear()
                    self._cache[key] = (rec["name"], time.monotonic() + CACHE_TTL_S)
                return User(rec["name"], rec["role"])
        return None


class AuditLog:
    """Append-only JSON-lines log of security-relevant API requests."""

    FIELDS = ("time", "user", "role", "method", "path", "status", "client")

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, entry: dict[str, Any]) -> None:
        rec = {"time": _now(), **entry}
        line = (json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def read(self, limit: int = 100, user: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
        """Newest first, at most ``limit`` entries, optionally of one user / after ``since``."""
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        cut = since.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z") if since else None
        for line in reversed(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if user is not None and rec.get("user") != user:
                continue
            if cut is not None and str(rec.get("time", "")) < cut:
                break
            out.append(rec)
            if len(out) >= limit:
                break
        return out
