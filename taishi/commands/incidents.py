"""``taishi incidents list|show|set|rebuild``: the incidents a responder works from.

``list`` and ``show`` with ``--json`` print exactly what the API returns
(``GET /api/v1/incidents`` and ``GET /api/v1/incidents/{id}``).

Both modes: embedded reads the DuckDB store, cluster (``--mode cluster``, on
``taishi`` or on ``taishi incidents``) the search node's ``taishi-incidents``
and ``taishi-events`` (:class:`taishi.cluster.search.SearchStore`, the same
methods); the output is the same for the same data.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
from rich.table import Table

from taishi import config as config_mod
from taishi.cli import _cfg, _fmt_time, _require_embedded, _who, console, dumps, err, main, parse_since

SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan"}
STATUS_STYLE = {"new": "bold", "acknowledged": "yellow", "in_progress": "cyan", "resolved": "green",
                "false_positive": "dim"}
_ID_PREFIX = re.compile(r"^[0-9a-f]{4,32}$")


def _inventory(cfg):
    try:
        from compliance.inventory import Inventory

        inv = Inventory.open(cfg.data_dir)
        return inv if getattr(inv, "assets", None) else None
    except Exception:  # noqa: BLE001 - no inventory (or an unreadable one) only means no host names
        return None


def _store(ctx: click.Context):
    """The configured mode's store: the embedded DuckDB store, or the search node in cluster mode."""
    cfg = _cfg(ctx)
    if cfg.mode == "cluster":
        from taishi.cluster.search import SearchStore, SearchStoreError

        try:
            return cfg, SearchStore.from_config(cfg)
        except SearchStoreError as exc:
            err.print(f"[red]error:[/] {exc}")
            sys.exit(1)
    from taishi.store import Store

    _require_embedded(cfg)
    return cfg, Store(cfg.data_dir)


def resolve_id(store, text: str) -> str | None:
    """An incident id, or a unique prefix of one (at least 4 hex digits)."""
    if store.incident(text) is not None:
        return text
    if not _ID_PREFIX.match(text):
        return None
    hits = [i["id"] for i in store.search_incidents(f"id:{text}*", limit=2, include_merged=True)]
    return hits[0] if len(hits) == 1 else None


@main.group()
@click.option("--mode", type=click.Choice(config_mod.MODES),
              help="Override the configured mode (as taishi --mode): embedded store or the cluster's search node.")
@click.pass_context
def incidents(ctx: click.Context, mode: str | None) -> None:
    """Incidents: alerts grouped by entity and time, with their attack path and workflow."""
    if mode is not None:
        ctx.obj["mode"] = mode


@incidents.command("list")
@click.argument("query", required=False, default="")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["new", "acknowledged", "in_progress", "resolved", "false_positive"]),
              help="Only these workflow states (repeatable).")
@click.option("--since", default="all", show_default=True, help="Last seen this far back (24h, 7d, ISO time, or 'all').")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def incidents_list(ctx: click.Context, query: str, statuses: tuple[str, ...], since: str, limit: int,
                   as_json: bool) -> None:
    """List incidents matching a Lucene QUERY (e.g. 'severity:critical AND entity.value:10.20.0.40'),
    most recently active first."""
    from correlate.traceback import list_view
    from taishi.query import QueryError

    _, store = _store(ctx)
    try:
        out = list_view(store, query, since=None if since == "all" else parse_since(since),
                        status=list(statuses) or None, limit=limit)
    except QueryError as exc:
        err.print(f"[red]query error:[/] {exc}")
        sys.exit(2)
    finally:
        store.close()
    if as_json:
        click.echo(dumps(out))
        return
    t = Table(title=f"{out['count']} incident(s)", title_justify="left")
    for col in ("id", "severity", "risk", "status", "assignee", "last seen", "title", "tactics (kill chain)"):
        t.add_column(col, overflow="fold")
    for i in out["items"]:
        sev = i["severity"]
        t.add_row(i["id"][:12], f"[{SEVERITY_STYLE.get(sev, '')}]{sev}[/]", str(i["risk_score"]),
                  f"[{STATUS_STYLE.get(i['status'], '')}]{i['status']}[/]", i.get("assignee") or "",
                  i["last_seen"][:19].replace("T", " "), i["title"], " → ".join(i["threat.tactic.name"]))
    console.print(t)


@incidents.command("show")
@click.argument("incident_id")
@click.option("--graph", "graph", is_flag=True, help="Draw the attack graph as an image.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Image file (.png or .svg; implies --graph; default incident-<id>.png).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def incidents_show(ctx: click.Context, incident_id: str, graph: bool, out: Path | None, as_json: bool) -> None:
    """One incident: its stages in kill-chain order, entities, the attack path as a
    time-ordered chain, and its workflow history."""
    from correlate.traceback import draw, incident_view, path_lines

    cfg, store = _store(ctx)
    try:
        iid = resolve_id(store, incident_id)
        inc = incident_view(store, iid, _inventory(cfg)) if iid else None
    finally:
        store.close()
    if inc is None:
        err.print(f"[red]no such incident:[/] {incident_id}")
        sys.exit(1)
    image = None
    if graph or out is not None:
        image = draw(inc["graph"], out or Path(f"incident-{inc['id'][:12]}.png"), inc["title"])
    if as_json:
        click.echo(dumps(inc))
        if image:
            err.print(f"wrote {image}")
        return
    if "merged_into" in inc:
        console.print(f"incident {inc['id']} was merged into [bold]{inc['merged_into']}[/]")
        return
    sev = inc["severity"]
    head = Table(show_header=False, title=inc["title"], title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    head.add_row("id", inc["id"])
    head.add_row("status", f"[{STATUS_STYLE.get(inc['status'], '')}]{inc['status']}[/]"
                 + (f"  (assignee {inc['assignee']})" if inc.get("assignee") else ""))
    head.add_row("severity", f"[{SEVERITY_STYLE.get(sev, '')}]{sev}[/]  risk {inc['risk_score']}/100")
    head.add_row("seen", f"{inc['first_seen'][:19].replace('T', ' ')} → {inc['last_seen'][:19].replace('T', ' ')}"
                 + ("" if inc.get("closed") else "  (open)"))
    head.add_row("alerts", f"{inc['alert.count']} from {len(inc['rule.names'])} rule(s)")
    head.add_row("kill chain", " → ".join(f"{s['tactic']} [dim]{s['first_seen'][11:19]}[/]"
                                          for s in inc.get("stages", [])))
    head.add_row("techniques", ", ".join(inc["threat.technique.id"]))
    console.print(head)
    ents = Table(title="Entities", title_justify="left")
    for col in ("type", "value", "role", "CII asset"):
        ents.add_column(col)
    for e in inc["entities"]:
        a = e.get("asset") or {}
        ents.add_row(e["type"], e["value"], e["role"],
                     f"{a.get('id') or ''} {a.get('system') or ''} L{a.get('level')}".strip() if a else "")
    console.print(ents)
    console.print("[bold]Attack path[/] (time-ordered)")
    for line in path_lines(inc["graph"]) or ["  (no path: the alerts do not connect entities)"]:
        console.print(line, markup=False, highlight=False)
    if inc["history"]:
        h = Table(title="History", title_justify="left")
        for col in ("at", "who", "field", "old", "new"):
            h.add_column(col, overflow="fold")
        for r in inc["history"]:
            h.add_row(_fmt_time(r["at"]), r["who"] or "", r["field"], r["old"] or "", r["new"] or "")
        console.print(h)
    if image:
        console.print(f"graph drawn to [bold]{image}[/]")


@incidents.command("set")
@click.argument("incident_id")
@click.option("--status", type=click.Choice(["new", "acknowledged", "in_progress", "resolved", "false_positive"]),
              help="new → acknowledged → in_progress → resolved | false_positive; resolved/false_positive → acknowledged reopens.")
@click.option("--assignee", default=None, help="Assign to this user ('' unassigns).")
@click.option("--note", default=None, help="Add a note.")
@click.option("--who", default=None, help="Recorded in the history (default $TAISHI_USER or $USER).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def incidents_set(ctx: click.Context, incident_id: str, status: str | None, assignee: str | None, note: str | None,
                  who: str | None, as_json: bool) -> None:
    """Change an incident's status, assignee or add a note (appended to its history)."""
    from correlate.incidents import WorkflowError

    if status is None and assignee is None and not note:
        raise click.UsageError("give at least one of --status, --assignee, --note")
    _, store = _store(ctx)
    try:
        iid = resolve_id(store, incident_id)
        if iid is None:
            err.print(f"[red]no such incident:[/] {incident_id}")
            sys.exit(1)
        inc = store.update_incident(iid, who or _who(), status=status, assignee=assignee,
                                    set_assignee=assignee is not None, note=note)
    except WorkflowError as exc:
        err.print(f"[red]refused:[/] {exc}")
        sys.exit(2)
    finally:
        store.close()
    if as_json:
        click.echo(dumps({"id": inc["id"], "status": inc["status"], "assignee": inc["assignee"],
                          "history": inc["history"], "notes": inc["notes"]}))
    else:
        console.print(f"{inc['id']}: status [bold]{inc['status']}[/], assignee {inc['assignee'] or '-'}, "
                      f"{len(inc['notes'])} note(s)")


@incidents.command("rebuild")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def incidents_rebuild(ctx: click.Context, as_json: bool) -> None:
    """Rebuild the incidents from the stored alerts (after a rule change or an upgrade).

    Workflow, notes and history of incidents that still exist are kept; incidents
    nobody worked on that no longer exist are dropped. Do not run it while
    `taishi run` is writing to the same data directory.

    In cluster mode the alerts index is regrouped by the same builder and the
    incidents index updated the same way; the Spark incidents job keeps its own
    state (its checkpoint), so incidents still open there continue from it when
    their next alerts arrive."""
    import tempfile

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from taishi.incidents import rebuild

    cfg, store = _store(ctx)
    cluster = cfg.mode == "cluster"
    # embedded: the incident stage's checkpoint is replaced by the rebuilt state; cluster: the
    # builder state is the Spark job's, so this run's snapshot is not kept
    tmp = tempfile.TemporaryDirectory(prefix="taishi-rebuild-") if cluster else None
    state_dir = Path(tmp.name) if tmp else cfg.state_dir
    inv = _inventory(cfg)
    enrich = None
    if inv is not None:
        from compliance.inventory import enrich as _enrich

        def enrich(t):
            return _enrich(t, inv)

    lateness = float(cfg.allowed_lateness_s)
    try:
        if as_json:
            res = rebuild(store, state_dir, lateness, enrich)
        else:
            with Progress(TextColumn("[bold blue]rebuilding incidents"), BarColumn(), MofNCompleteColumn(),
                          console=err, transient=True) as prog:
                task = prog.add_task("alerts", total=None)
                res = rebuild(store, state_dir, lateness, enrich,
                              progress=lambda done, total: prog.update(task, completed=done, total=total))
    finally:
        store.close()
        if tmp is not None:
            tmp.cleanup()
    if as_json:
        click.echo(dumps(res))
    else:
        console.print(f"{res['alerts']:,} alerts → {res['incidents']:,} incidents ({res['new']} new, "
                      f"{res['dropped']} dropped, {res['open']} still open)")
        if cluster:
            err.print("[dim]the Spark incidents job keeps its own state (its checkpoint under the state "
                      "directory): incidents still open there continue from it when their next alerts arrive[/]")
