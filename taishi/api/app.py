"""Taishi's HTTP API and console.

``create_app(data_dir, rules_dirs, cfg=None)`` builds the FastAPI application:

* ``/api/v1/...``  the JSON API (OpenAPI spec at ``/openapi.json``, UI at ``/docs``)
* ``/``            the console: static files from ``taishi/api/console``

Every API route except ``GET /api/v1/health`` needs ``Authorization: Bearer
<token>`` and names exactly one permission of :data:`taishi.api.auth.PERMISSIONS`
(shown in the spec as ``x-permission``; ``authenticated`` means any valid
user). Missing/invalid token -> 401 with ``WWW-Authenticate``; missing
permission -> 403. State-changing requests and refusals go to the audit log.

User query strings (``q=``) go only to the store's Lucene compiler; a bad query
is a 400 with the compiler's message. Responses use ECS field names; times are
ISO-8601 UTC with a ``Z``.

Routes (all JSON; ``x-permission`` in brackets)::

    GET    /api/v1/health                   liveness, no auth            [public]
    GET    /api/v1/health/detail            store stats, rule counts     [health]
    GET    /api/v1/me                       name, role, permissions      [authenticated]
    GET    /api/v1/roles                    the role -> permission table [authenticated]
    GET    /api/v1/events?q&since&until&limit&order                      [events:read]
    GET    /api/v1/events/{id}                                           [events:read]
    GET    /api/v1/alerts?q&since&until&limit&order  (+ taishi.triage.*) [alerts:read]
    GET    /api/v1/alerts/{id}              alert, its events, triage    [alerts:read]
    POST   /api/v1/alerts/{id}/triage       {status, note, assignee}     [alerts:triage]
    GET    /api/v1/deadletters?q&since&until&limit&order                 [deadletters:read]
    GET    /api/v1/summary?since&q          counts for the console strip [alerts:read]
    GET    /api/v1/rules                    loaded rules and load errors [rules:read]
    GET    /api/v1/rules/check              RuleSet.check() issues       [rules:read]
    POST   /api/v1/rules/reload             re-read rule files           [rules:manage]
    GET    /api/v1/users                    users and roles, no secrets  [users:read]
    POST   /api/v1/users                    {name, role} -> token (once) [users:manage]
    POST   /api/v1/users/{name}/token       rotate -> new token (once)   [users:manage]
    DELETE /api/v1/users/{name}             (not the last admin)         [users:manage]
    GET    /api/v1/audit?limit&user&since   the audit log, newest first  [audit:read]
    GET    /api/v1/compliance/inventory     CII systems and assets       [compliance:read]
    GET    /api/v1/compliance/inventory/changes  change log, newest 1st  [compliance:read]
    POST   /api/v1/compliance/inventory/import  {format, kind, content}  [inventory:manage]
    GET    /api/v1/compliance/discovery?days    unknown hosts/services   [compliance:read]
    GET    /api/v1/compliance/report?level&system&format=json|html|csv   [compliance:read]

``since``/``until`` take ``15m``, ``24h``, ``7d``, ``2w`` (ago), ``now``,
ISO-8601 or epoch seconds. Events leave null fields out; alerts keep every
ALERT_SCHEMA column.

Triage state lives beside the store in ``data_dir/triage.jsonl``: an
append-only JSON-lines history (who, when, status, note, assignee); an
alert's current state is the fold of its history.

Modes: with a ``cfg`` whose ``mode`` is ``cluster`` the store is the search
node's (:class:`taishi.cluster.search.SearchStore`, same methods, opened on
first use and closed on shutdown); users, tokens, the audit log, triage and
the CII inventory stay in ``data_dir`` in both modes. Routes that need the
embedded store's SQL (``/compliance/discovery``, ``/compliance/report``)
answer 501 in cluster mode
(:func:`embedded_only`); ``GET /health`` names the mode and, in cluster mode,
whether the search node answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import json
import math
import os
import re
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import pyarrow as pa
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from taishi import __version__
from taishi.api.auth import (
    PERMISSIONS,
    ROLE_PERMISSIONS,
    ROLES,
    AuditLog,
    AuthError,
    User,
    UserDB,
)
from detect.sigma import RuleSet
from taishi.query import QueryError
from taishi.schema import LEVELS, parse_time
from taishi.store import Store, StoreLockedError


API = "/api/v1"
CONSOLE_DIR = Path(__file__).resolve().parent / "console"
PUBLIC_PATHS = frozenset({f"{API}/health"})
AUTHENTICATED = "authenticated"  # x-permission of routes any valid user may call
MAX_LIMIT = 1000
MAX_ALERT_EVENTS = 500
TRIAGE_STATUSES = ("open", "acknowledged", "closed", "false_positive")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_AUDIT_KEY = "taishi.audit"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# --------------------------------------------------------------------------
# helpers: time, JSON
# --------------------------------------------------------------------------
_REL = re.compile(r"^(\d{1,9})\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str | None, name: str = "since", now: datetime | None = None) -> datetime | None:
    """``24h`` / ``7d`` / ``15m`` / ``2w`` (ago), ``now``, ISO-8601 or epoch seconds -> UTC datetime."""
    if text is None or not text.strip():
        return None
    s = text.strip()
    now = now or datetime.now(timezone.utc)
    try:
        if s.lower() == "now":
            return now
        m = _REL.match(s.lower())
        if m:
            return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        return parse_time(s)
    except (ValueError, OverflowError):
        raise HTTPException(400, f"bad {name} {text!r}: use e.g. 15m, 24h, 7d, 2w, now or an ISO-8601 time") from None


def iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, datetime):
        return iso(v)
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, enum.Enum):
        return jsonable(v.value) if isinstance(v.value, (str, int)) else v.name.lower()
    if isinstance(v, Path):
        return str(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return jsonable(dataclasses.asdict(v))
    return str(v)


def table_rows(tbl: pa.Table, drop_nulls: bool = False) -> list[dict[str, Any]]:
    rows = [{k: jsonable(v) for k, v in r.items()} for r in tbl.to_pylist()]
    if drop_nulls:
        rows = [{k: v for k, v in r.items() if v is not None} for r in rows]
    return rows


# --------------------------------------------------------------------------
# triage
# --------------------------------------------------------------------------
class TriageLog:
    """Append-only triage history in a JSON-lines file; current state = fold of history."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._offset = 0
        self._ino: int | None = None

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._history, self._offset, self._ino = {}, 0, None
            return
        if st.st_ino != self._ino or st.st_size < self._offset:
            self._history, self._offset, self._ino = {}, 0, st.st_ino
        if st.st_size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # only complete lines
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                self._history.setdefault(rec["alert.id"], []).append(rec)
            except (ValueError, KeyError, TypeError):
                continue
        self._offset += end

    def record(self, alert_id: str, user: User, *, status: str | None, note: str | None,
               assignee: str | None, set_assignee: bool) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "time": iso(datetime.now(timezone.utc)),
            "alert.id": alert_id,
            "user": user.name,
            "role": user.role,
            "status": status,
            "note": note,
        }
        if set_assignee:
            rec["assignee"] = assignee
        line = (json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return rec

    def history(self, alert_id: str) -> list[dict[str, Any]]:
        with self._lock:
            self._refresh()
            return list(self._history.get(alert_id, []))

    @staticmethod
    def fold(history: list[dict[str, Any]]) -> dict[str, Any]:
        state: dict[str, Any] = {"status": "open", "assignee": None, "updated": None, "user": None, "notes": 0}
        for rec in history:
            if rec.get("status"):
                state["status"] = rec["status"]
            if "assignee" in rec:
                state["assignee"] = rec["assignee"]
            if rec.get("note"):
                state["notes"] += 1
            state["updated"], state["user"] = rec.get("time"), rec.get("user")
        return state

    def states(self, alert_ids: list[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            self._refresh()
            return {a: self.fold(self._history.get(a, [])) for a in alert_ids}


def workflow_change(body: Any, users: Any) -> tuple[bool, str | None]:
    """Validate a triage/workflow body (``status``, ``note``, ``assignee``): whether it sets the
    assignee, and to whom (None = unassign); 422 when it changes nothing or names no known user."""
    set_assignee = "assignee" in body.model_fields_set
    if body.status is None and not body.note and not set_assignee:
        raise HTTPException(422, "give at least one of status, note, assignee")
    assignee = body.assignee or None
    if assignee is not None and users.get(assignee) is None:
        raise HTTPException(422, f"no user {assignee!r} to assign to")
    return set_assignee, assignee


def _with_triage(alert: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    alert["taishi.triage.status"] = state["status"]
    alert["taishi.triage.assignee"] = state["assignee"]
    alert["taishi.triage.updated"] = state["updated"]
    alert["taishi.triage.user"] = state["user"]
    return alert


# --------------------------------------------------------------------------
# rules (detect.sigma.RuleSet, coded against a small protocol)
# --------------------------------------------------------------------------
def _get(obj: Any, *names: str) -> Any:
    for n in names:
        v = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if v is not None:
            return v
    return None


def _level(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, enum.Enum):
        return v.name.lower()
    return str(v).lower()


def _logsource(v: Any) -> dict[str, Any] | str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items() if x is not None}
    out = {k: getattr(v, k, None) for k in ("product", "category", "service")}
    return {k: str(x) for k, x in out.items() if x is not None}


def _path(r: Any) -> str | None:
    p = _get(r, "path", "source_path", "filename")
    if p is None:
        src = _get(r, "source")
        p = getattr(src, "path", None) if src is not None and not isinstance(src, str) else src
    return str(p) if p is not None else None


def rule_info(r: Any, kind: str) -> dict[str, Any]:
    """A rule or correlation as JSON: works for detect.sigma's Rule / CorrelationSpec,
    pySigma objects and plain dicts (anything with title, id, level, tags, logsource, path)."""
    tags = _get(r, "tags") or []
    out = {
        "id": jsonable(_get(r, "id")),
        "title": jsonable(_get(r, "title", "name")),
        "name": jsonable(_get(r, "name")),
        "level": _level(_get(r, "level")),
        "type": kind,
        "description": jsonable(_get(r, "description")),
        "tags": [str(t) for t in tags],
        "threat.technique.id": jsonable(_get(r, "techniques") or []),
        "threat.tactic.name": jsonable(_get(r, "tactics") or []),
        "logsource": _logsource(_get(r, "logsource")),
        "path": _path(r),
    }
    if kind == "sigma_correlation":
        out["correlation"] = {
            "type": jsonable(_get(r, "type")),
            "rules": jsonable(_get(r, "rule_ids") or _get(r, "rule_refs") or []),
            "group_by": jsonable(_get(r, "group_by") or []),
            "timespan_s": jsonable(_get(r, "timespan_s")),
        }
    else:
        gen = _get(r, "generate")
        out["generate"] = bool(gen) if gen is not None else True
    return out


def _issue(i: Any) -> Any:
    """An Issue dataclass, a (path, reason) tuple, a message or an exception -> JSON."""
    if isinstance(i, (str, dict)) or (dataclasses.is_dataclass(i) and not isinstance(i, type)):
        return jsonable(i)
    if isinstance(i, BaseException):
        return f"{type(i).__name__}: {i}"
    if isinstance(i, tuple) and len(i) == 2:
        return {"path": jsonable(i[0]), "reason": jsonable(i[1])}
    if isinstance(i, tuple):
        return [jsonable(x) for x in i]
    return str(i)


def load_ruleset(dirs: list[Path]) -> Any:
    return RuleSet.load(dirs)


# --------------------------------------------------------------------------
# request / response models
# --------------------------------------------------------------------------
class Health(BaseModel):
    status: str
    version: str
    mode: str = "embedded"
    search: str | None = Field(None, description="cluster mode: 'ok' when the search node answers, else 'unreachable'")


class Me(BaseModel):
    name: str
    role: str
    permissions: list[str]


class TriageIn(BaseModel):
    status: Literal["open", "acknowledged", "closed", "false_positive"] | None = Field(
        None, description="new workflow status; omit to only add a note or (re)assign")
    note: str | None = Field(None, max_length=4000)
    assignee: str | None = Field(None, description="an existing user name; null or \"\" unassigns")


class UserIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=64)
    role: Literal["analyst", "responder", "auditor", "admin"]


class UserOut(BaseModel):
    name: str
    role: str
    created: str | None = None
    created_by: str | None = None
    rotated: str | None = None


class TokenOut(BaseModel):
    name: str
    role: str
    token: str = Field(..., description="shown only this once; store it safely")


# --------------------------------------------------------------------------
# auth dependencies
# --------------------------------------------------------------------------
bearer = HTTPBearer(auto_error=False, description="Taishi API token: `Authorization: Bearer <token>`")


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    hdr = 'Bearer realm="taishi"' + (f', error="{error}"' if error else "")
    return HTTPException(401, detail, headers={"WWW-Authenticate": hdr})


def current_user(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> User:
    if creds is None or not creds.credentials:
        raise _unauthorized("missing bearer token")
    user = request.app.state.users.authenticate(creds.credentials)
    if user is None:
        raise _unauthorized("invalid token", "invalid_token")
    ctx = request.scope.get(_AUDIT_KEY)
    if ctx is not None:
        ctx["user"], ctx["role"] = user.name, user.role
    return user


@functools.cache
def require(permission: str) -> Callable[..., User]:
    """Dependency: an authenticated user holding ``permission`` (one callable per permission)."""
    if permission != AUTHENTICATED and permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def dependency(user: User = Depends(current_user)) -> User:
        if permission != AUTHENTICATED and not user.can(permission):
            raise HTTPException(403, f"role {user.role!r} lacks permission {permission!r}")
        return user

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency


def perm(permission: str) -> dict[str, Any]:
    """Route kwargs: enforce ``permission`` and publish it in the spec as ``x-permission``."""
    return {"dependencies": [Depends(require(permission))], "openapi_extra": {"x-permission": permission}}


# --------------------------------------------------------------------------
# middleware: audit log + security headers (pure ASGI)
# --------------------------------------------------------------------------
class AuditMiddleware:
    def __init__(self, app: Any, audit: AuditLog):
        self.app = app
        self.audit = audit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx: dict[str, Any] = {"user": None, "role": None, "status": 500}
        scope[_AUDIT_KEY] = ctx
        path = scope.get("path", "")
        docs = path.startswith(("/docs", "/redoc"))

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                ctx["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                if not docs:  # FastAPI's /docs page loads Swagger UI from a CDN
                    headers.append((b"content-security-policy", CSP.encode()))
                if path.startswith(API):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope.get("method", "")
            if method not in SAFE_METHODS or ctx["status"] in (401, 403):
                client = scope.get("client")
                try:
                    self.audit.append({
                        "user": ctx["user"], "role": ctx["role"], "method": method, "path": path,
                        "status": ctx["status"], "client": client[0] if client else None,
                    })
                except OSError:  # never turn a served request into an error because of the log
                    pass


# --------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------
class InventoryImport(BaseModel):
    """A CII inventory import: YAML (systems and assets) or CSV rows of one kind."""

    format: Literal["yaml", "csv"]
    kind: Literal["system", "asset"] | None = None
    content: str = Field(max_length=20_000_000)


@dataclasses.dataclass(frozen=True)
class RouteContext:
    """What a route module in :mod:`taishi.api.routes` gets from the app."""

    data_dir: Path
    store: Callable[[], Any]  # the shared embedded Store (opened lazily)
    ruleset: Callable[[], Any]
    inventory: Callable[[], Any]  # compliance.inventory.Inventory for data_dir
    search: Callable[..., tuple[list[dict[str, Any]], int]]  # (table, q, since, until, limit, order)
    window: Callable[[str | None, str | None], tuple[datetime | None, datetime | None]]
    mode: str = "embedded"  # "cluster": store() is the search node's SearchStore


CLUSTER_UNAVAILABLE = ("not available in cluster mode: {what} needs the embedded store's SQL; "
                       "use mode: embedded (or --mode embedded) on a data directory for it")


def embedded_only(mode: str, what: str) -> None:
    """Refuse a route that has no search-node implementation: 501 with a message the console shows."""
    if mode == "cluster":
        raise HTTPException(501, CLUSTER_UNAVAILABLE.format(what=what))


def _register_route_modules(app: FastAPI, ctx: RouteContext) -> None:
    import importlib
    import pkgutil

    import taishi.api.routes as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"{pkg.__name__}.{m.name}").register(app, ctx)


def _store_factory(cfg: Any, data_dir: Path) -> tuple[str, Callable[[], Any]]:
    """(mode, a function opening the store): the search node's in cluster mode, else the embedded one."""
    mode = getattr(cfg, "mode", None) or "embedded"
    if mode == "cluster":
        def open_search() -> Any:
            from taishi.cluster.search import SearchStore

            return SearchStore.from_config(cfg)

        return mode, open_search
    return mode, lambda: Store(data_dir)


def create_app(data_dir: Path, rules_dirs: list[Path] | None = None, cfg: Any = None) -> FastAPI:
    """The API and console over ``data_dir``; ``cfg`` (a :class:`taishi.config.Config`) picks the mode:
    ``cluster`` serves the search node named by ``cfg.cluster.search`` (module doc)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    mode, open_store = _store_factory(cfg, data_dir)
    if rules_dirs is None:
        from taishi.config import DEFAULT_RULES

        rules_dirs = [DEFAULT_RULES]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if app.state.store is not None:
            with contextlib.suppress(Exception):
                app.state.store.close()

    app = FastAPI(
        title="Taishi API",
        version=__version__,
        description=(
            "Taishi (态势) network-security situational awareness. All `/api/v1` routes except "
            "`/health` need `Authorization: Bearer <token>`; each names the permission it needs as "
            "`x-permission`. Queries (`q`) are Lucene query strings over ECS field names."
        ),
        lifespan=lifespan,
    )
    st = app.state
    st.data_dir = data_dir
    st.rules_dirs = [Path(p) for p in rules_dirs]
    st.users = UserDB(data_dir / "users.json")
    st.audit = AuditLog(data_dir / "audit.log")
    st.triage = TriageLog(data_dir / "triage.jsonl")
    st.store = None
    st.mode = mode
    st.ruleset = None
    st.ruleset_error = None
    st.lock = threading.RLock()
    app.add_middleware(AuditMiddleware, audit=st.audit)

    @app.exception_handler(StoreLockedError)
    async def _store_locked(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"store busy, retry: {exc}"}, status_code=503,
                            headers={"Retry-After": "2"})

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": f"bad query: {exc}"}, status_code=400)

    if mode == "cluster":
        from taishi.cluster.search import SearchStoreError

        @app.exception_handler(SearchStoreError)
        async def _search_error(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": f"search node not available: {exc}"}, status_code=503,
                                headers={"Retry-After": "5"})

    def store() -> Any:
        if st.store is None:
            with st.lock:
                if st.store is None:
                    try:
                        st.store = open_store()
                    except Exception as e:  # noqa: BLE001 - the search node is away: say so, retry next time
                        if mode != "cluster":
                            raise
                        raise HTTPException(503, f"search node not available: {e}",
                                            headers={"Retry-After": "5"}) from None
        return st.store

    def ruleset() -> Any:
        if st.ruleset is None:
            with st.lock:
                if st.ruleset is None:
                    try:
                        st.ruleset = load_ruleset(st.rules_dirs)
                        st.ruleset_error = None
                    except Exception as e:  # noqa: BLE001 - report, don't crash the API
                        st.ruleset_error = f"{type(e).__name__}: {e}"
                        raise HTTPException(503, f"rules not available: {st.ruleset_error}") from None
        return st.ruleset

    def search(table: str, q: str, since: str | None, until: str | None, limit: int, order: str,
               drop_nulls: bool = False) -> tuple[list[dict[str, Any]], int]:
        """One page of ``table`` matching ``q`` in the window, as JSON rows, and the total."""
        s, u = window(since, until)
        tbl = getattr(store(), f"search_{table}")(q, since=s, until=u, limit=limit, order=order)
        return table_rows(tbl, drop_nulls=drop_nulls), store().count(table, q, since=s, until=u)

    def window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
        s, u = parse_when(since, "since"), parse_when(until, "until")
        if s and u and s > u:
            raise HTTPException(400, "since is after until")
        return s, u

    Q = Query("", max_length=4000, description="Lucene query over ECS field names; empty = everything")
    SINCE = Query(None, description="start: 15m, 24h, 7d, 2w (ago), now, or ISO-8601 / epoch")
    UNTIL = Query(None, description="end: same forms as since")
    LIMIT = Query(100, ge=1, le=MAX_LIMIT)
    ORDER = Query("desc", pattern="^(asc|desc)$")

    # ---- health ---------------------------------------------------------
    @app.get(f"{API}/health", response_model=Health, tags=["health"], openapi_extra={"x-permission": "public"})
    def health() -> dict[str, Any]:
        """Liveness, the mode and (cluster mode) whether the search node answers; no authentication."""
        if mode != "cluster":
            return {"status": "ok", "version": __version__, "mode": mode}
        try:
            store().stats()
            return {"status": "ok", "version": __version__, "mode": mode, "search": "ok"}
        except Exception:  # noqa: BLE001 - reported, not raised; no details to anonymous callers
            return {"status": "degraded", "version": __version__, "mode": mode, "search": "unreachable"}

    @app.get(f"{API}/health/detail", tags=["health"], **perm("health"))
    def health_detail() -> dict[str, Any]:
        """Store statistics and rule-set state."""
        out: dict[str, Any] = {"status": "ok", "version": __version__, "mode": mode}
        try:
            out["store"] = jsonable(store().stats())
        except Exception as e:  # noqa: BLE001 - a health page reports, it does not fail
            out["status"], out["store"] = "degraded", {"error": getattr(e, "detail", None) or str(e)}
        try:
            rs = ruleset()
            out["rules"] = {"rules": len(rs.rules),
                            "correlations": len(rs.correlations),
                            "errors": len(rs.errors)}
        except Exception as e:  # noqa: BLE001
            out["status"], out["rules"] = "degraded", {"error": getattr(e, "detail", None) or str(e)}
        return out

    @app.get(f"{API}/me", response_model=Me, tags=["users"], **perm(AUTHENTICATED))
    def me(user: User = Depends(require(AUTHENTICATED))) -> dict[str, Any]:
        """Who the token belongs to and what it may do (the console shows/hides actions by this)."""
        return {"name": user.name, "role": user.role, "permissions": sorted(user.permissions)}

    # ---- events ---------------------------------------------------------
    @app.get(f"{API}/events", tags=["events"], **perm("events:read"))
    def events(q: str = Q, since: str | None = SINCE, until: str | None = UNTIL,
               limit: int = LIMIT, order: str = ORDER) -> dict[str, Any]:
        """Search events. Null fields are left out of each event."""
        rows, total = search("events", q, since, until, limit, order, drop_nulls=True)
        return {"total": total, "count": len(rows), "items": rows}

    @app.get(f"{API}/events/{{event_id}}", tags=["events"], **perm("events:read"))
    def event(event_id: str) -> dict[str, Any]:
        rows = table_rows(store().events_by_ids([event_id]), drop_nulls=True)
        if not rows:
            raise HTTPException(404, "no such event")
        return rows[0]

    # ---- alerts ---------------------------------------------------------
    @app.get(f"{API}/alerts", tags=["alerts"], **perm("alerts:read"))
    def alerts(q: str = Q, since: str | None = SINCE, until: str | None = UNTIL,
               limit: int = LIMIT, order: str = ORDER) -> dict[str, Any]:
        """Search alerts; each carries its triage state as ``taishi.triage.*``."""
        rows, total = search("alerts", q, since, until, limit, order)
        states = st.triage.states([r.get("id") for r in rows])
        items = [_with_triage(r, states[r.get("id")]) for r in rows]
        return {"total": total, "count": len(items), "items": items}

    @app.get(f"{API}/alerts/{{alert_id}}", tags=["alerts"], **perm("alerts:read"))
    def alert(alert_id: str) -> dict[str, Any]:
        """One alert, the events that raised it (at most 500) and its triage history."""
        a = store().alert(alert_id)
        if a is None:
            raise HTTPException(404, "no such alert")
        a = jsonable(dict(a))
        ids = list(a.get("event.ids") or [])
        evs = table_rows(store().events_by_ids(ids[:MAX_ALERT_EVENTS]), drop_nulls=True) if ids else []
        hist = st.triage.history(alert_id)
        return {"alert": _with_triage(a, TriageLog.fold(hist)), "events": evs,
                "events_truncated": len(ids) > MAX_ALERT_EVENTS, "triage": hist}

    @app.post(f"{API}/alerts/{{alert_id}}/triage", tags=["alerts"], **perm("alerts:triage"))
    def triage(alert_id: str, body: TriageIn = Body(...),
               user: User = Depends(require("alerts:triage"))) -> dict[str, Any]:
        """Set status, add a note and/or (un)assign. Appended to the alert's history with who and when."""
        set_assignee, assignee = workflow_change(body, st.users)
        if store().alert(alert_id) is None:
            raise HTTPException(404, "no such alert")
        rec = st.triage.record(alert_id, user, status=body.status, note=body.note or None,
                               assignee=assignee, set_assignee=set_assignee)
        hist = st.triage.history(alert_id)
        return {"alert.id": alert_id, "entry": rec, "state": TriageLog.fold(hist)}

    # ---- dead letters -----------------------------------------------------
    @app.get(f"{API}/deadletters", tags=["deadletters"], **perm("deadletters:read"))
    def deadletters(q: str = Q, since: str | None = SINCE, until: str | None = UNTIL,
                    limit: int = LIMIT, order: str = ORDER) -> dict[str, Any]:
        """Input that could not be read, parsed, detected or stored, with where and why."""
        rows, total = search("deadletters", q, since, until, limit, order)
        return {"total": total, "count": len(rows), "items": rows}

    # ---- summary --------------------------------------------------------
    @app.get(f"{API}/summary", tags=["alerts"], **perm("alerts:read"))
    def summary(since: str | None = Query("24h", description="window start (default 24h)"),
                q: str = Query("", max_length=4000, description="Lucene filter on the alert figures")) -> dict[str, Any]:
        """Counts for the console's strip: events, alerts by level, top rules and sources, dead letters."""
        now = datetime.now(timezone.utc)
        s = parse_when(since, "since", now=now)
        db = store()
        by_level = {lvl: 0 for lvl in LEVELS}
        for value, n in db.aggregate("alerts", "rule.level", q, s, len(LEVELS) + 5):
            by_level[str(value)] = int(n)
        span = (now - s).total_seconds() if s else 7 * 86400
        interval = next((i for i in (60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400)
                         if span / i <= 60), 86400 * max(1, math.ceil(span / 86400 / 60)))
        top = lambda table, field, query: [{"value": jsonable(v), "count": int(n)}  # noqa: E731
                                            for v, n in db.aggregate(table, field, query, s, 10)]
        return {
            "since": iso(s) if s else None,
            "until": iso(now),
            "events": db.count("events", "", since=s),
            "alerts": db.count("alerts", q, since=s),
            "alerts_by_level": by_level,
            "top_rules": top("alerts", "rule.name", q),
            "top_source_ips": top("alerts", "source.ip", q),
            "top_event_source_ips": top("events", "source.ip", ""),
            "deadletters": db.count("deadletters", "", since=s),
            "alerts_histogram": {"interval_s": interval,
                                 "buckets": [{"time": jsonable(t), "count": int(n)}
                                             for t, n in db.histogram("alerts", q, s, interval)]},
        }

    # ---- rules ----------------------------------------------------------
    @app.get(f"{API}/rules", tags=["rules"], **perm("rules:read"))
    def rules() -> dict[str, Any]:
        """Loaded detection and correlation rules, and files that failed to load."""
        rs = ruleset()
        items = [rule_info(r, "sigma") for r in rs.rules]
        items += [rule_info(r, "sigma_correlation") for r in rs.correlations]
        return {"count": len(items), "items": items,
                "errors": [_issue(e) for e in rs.errors]}

    @app.get(f"{API}/rules/check", tags=["rules"], **perm("rules:read"))
    def rules_check() -> dict[str, Any]:
        """Static checks of the rule set (unknown fields, duplicate ids ...)."""
        rs = ruleset()
        issues = [_issue(i) for i in rs.check()]
        errors = [_issue(e) for e in rs.errors]
        return {"ok": not issues and not errors, "issues": issues, "errors": errors}

    @app.post(f"{API}/rules/reload", tags=["rules"], **perm("rules:manage"))
    def rules_reload() -> dict[str, Any]:
        """Reload rule files from disk for this API (the pipeline reloads on its own restart)."""
        with st.lock:
            st.ruleset = None
        rs = ruleset()
        return {"rules": len(rs.rules),
                "correlations": len(rs.correlations),
                "errors": [_issue(e) for e in rs.errors]}

    # ---- users ------------------------------------------------------------
    @app.get(f"{API}/users", response_model=list[UserOut], tags=["users"], **perm("users:read"))
    def users() -> list[dict[str, Any]]:
        """Users and roles; never tokens or hashes."""
        return [u.as_dict() for u in st.users.list_users()]

    @app.post(f"{API}/users", response_model=TokenOut, status_code=201, tags=["users"], **perm("users:manage"))
    def add_user(body: UserIn, user: User = Depends(require("users:manage"))) -> dict[str, Any]:
        """Create a user; the response holds its token, shown this once only."""
        try:
            token = st.users.add_user(body.name, body.role, created_by=user.name)
        except AuthError as e:
            raise HTTPException(409 if "exists" in str(e) else 422, str(e)) from None
        return {"name": body.name, "role": body.role, "token": token}

    @app.post(f"{API}/users/{{name}}/token", response_model=TokenOut, tags=["users"], **perm("users:manage"))
    def rotate_token(name: str) -> dict[str, Any]:
        """Issue a new token for ``name``; the old one stops working at once."""
        target = st.users.get(name)
        if target is None:
            raise HTTPException(404, "no such user")
        return {"name": name, "role": target.role, "token": st.users.rotate(name)}

    @app.delete(f"{API}/users/{{name}}", status_code=204, tags=["users"], **perm("users:manage"))
    def remove_user(name: str) -> Response:
        target = st.users.get(name)
        if target is None:
            raise HTTPException(404, "no such user")
        if target.role == "admin" and sum(u.role == "admin" for u in st.users.list_users()) <= 1:
            raise HTTPException(409, "cannot remove the last admin")
        st.users.remove_user(name)
        return Response(status_code=204)

    @app.get(f"{API}/roles", tags=["users"], **perm(AUTHENTICATED))
    def roles() -> dict[str, Any]:
        """The role -> permission table (data, not code)."""
        return {"roles": {r: sorted(ROLE_PERMISSIONS[r]) for r in ROLES}, "permissions": PERMISSIONS}

    # ---- audit ------------------------------------------------------------
    @app.get(f"{API}/audit", tags=["audit"], **perm("audit:read"))
    def audit(limit: int = Query(100, ge=1, le=10000), user: str | None = None,
              since: str | None = SINCE) -> dict[str, Any]:
        """The API audit log, newest first: state-changing requests and refused (401/403) requests."""
        items = st.audit.read(limit=limit, user=user, since=parse_when(since, "since"))
        return {"count": len(items), "items": items}

    # ---- compliance (CII inventory, discovery, GB/T 22239 report) --------------
    def inventory() -> Any:
        from compliance.inventory import Inventory

        return Inventory.open(data_dir)

    @app.get(f"{API}/compliance/inventory", tags=["compliance"], **perm("compliance:read"))
    def compliance_inventory() -> dict[str, Any]:
        """CII systems and their assets."""
        inv = inventory()
        return {"systems": [dataclasses.asdict(s) for s in sorted(inv.systems.values(), key=lambda s: s.cii_id)],
                "assets": [dataclasses.asdict(a) for a in sorted(inv.assets.values(), key=lambda a: a.asset_id)]}

    @app.get(f"{API}/compliance/inventory/changes", tags=["compliance"], **perm("compliance:read"))
    def compliance_inventory_changes(limit: int = Query(1000, ge=1, le=100000)) -> dict[str, Any]:
        """The inventory change log, newest first (who, when, field, old, new, material)."""
        items = list(reversed(inventory().history()))[:limit]
        return {"count": len(items), "items": items}

    @app.post(f"{API}/compliance/inventory/import", tags=["compliance"], **perm("inventory:manage"))
    def compliance_inventory_import(body: InventoryImport,
                                    user: User = Depends(require("inventory:manage"))) -> dict[str, Any]:
        """Import systems/assets; bad rows come back as errors (row, field, reason), good rows are applied."""
        from compliance.inventory import Inventory

        if body.format == "csv" and body.kind is None:
            raise HTTPException(422, "kind (system or asset) is required for CSV")
        with Inventory.editing(data_dir) as inv:  # locked from read to write (CLI may edit too)
            if body.format == "yaml":
                res = inv.import_yaml(body.content, who=user.name)
            else:
                res = inv.import_csv(body.content, body.kind, who=user.name)
        return {"added": res.added, "updated": res.updated, "unchanged": len(res.unchanged),
                "errors": [dataclasses.asdict(e) for e in res.errors]}

    @app.get(f"{API}/compliance/discovery", tags=["compliance"], **perm("compliance:read"))
    def compliance_discovery(days: float = Query(7, gt=0, le=3650)) -> dict[str, Any]:
        """Hosts not in the inventory, undeclared services and silent assets, from stored events."""
        from compliance import discovery

        embedded_only(mode, "discovery")
        inv = inventory()
        return jsonable({"unknown_hosts": discovery.as_rows(discovery.unknown_hosts(store(), inv, days=days)),
                         "undeclared_services": discovery.as_rows(discovery.undeclared_services(store(), inv, days=days)),
                         "silent_assets": discovery.as_rows(discovery.silent_assets(store(), inv, days=days))})

    @app.get(f"{API}/compliance/report", tags=["compliance"], **perm("compliance:read"))
    def compliance_report(level: int = Query(3, ge=1, le=5), system: list[str] | None = Query(None),
                          format: Literal["json", "html", "csv"] = "json") -> Any:
        """Per-control verdicts with evidence and a summary per CII system."""
        from compliance.report import build, to_csv, to_html
        from taishi.config import Config

        embedded_only(mode, "the compliance report")
        cfg = Config(data_dir=data_dir)  # defaults, unless a taishi.yaml is found as the CLI finds it
        with contextlib.suppress(Exception):
            from taishi import config as config_mod

            cfg = config_mod.load(data_dir=data_dir)
        try:
            rep = build(store(), inventory(), cfg, level=level, systems=system)
        except ValueError as e:
            raise HTTPException(404, str(e)) from None
        if format == "html":
            return Response(to_html(rep), media_type="text/html; charset=utf-8")
        if format == "csv":
            return Response(to_csv(rep), media_type="text/csv; charset=utf-8")
        return jsonable({"level": rep.level, "generated_at": rep.generated_at, "summary": rep.summary,
                         "verdicts": [v.to_dict() for v in rep.verdicts]})

    # ---- route groups in taishi.api.routes ---------------------------------
    ctx = RouteContext(data_dir=data_dir, store=store, ruleset=ruleset, inventory=inventory,
                       search=search, window=window, mode=mode)
    _register_route_modules(app, ctx)

    # ---- console ------------------------------------------------------------
    if CONSOLE_DIR.is_dir():
        app.mount("/", StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
    else:  # pragma: no cover
        @app.get("/", include_in_schema=False)
        def _root() -> RedirectResponse:
            return RedirectResponse("/docs")

    return app
