"""``taishi dashboards check|push|provisioning``: the Grafana dashboards in ``dashboards/``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.table import Table

from taishi.cli import _cfg, console, dumps, err, main

_STYLE = {"created": "green", "updated": "yellow", "unchanged": "dim"}


@main.group()
def dashboards() -> None:
    """Grafana dashboards over the search node (dashboards/*.json)."""


@dashboards.command("check")
@click.option("--json", "as_json", is_flag=True)
def dashboards_check(as_json: bool) -> None:
    """Validate every dashboard: unique panel ids, datasource uid variables, supported
    aggregations, Lucene queries that parse. Exit status 1 on any problem."""
    import dashboards as dash_mod

    issues, count = [], {}
    for uid, dash in dash_mod.load_all().items():
        count[uid] = sum(1 for _ in dash_mod.panels(dash))
        issues += dash_mod.validate(dash)
    if as_json:
        click.echo(dumps({"dashboards": count, "issues": [str(i) for i in issues]}))
    else:
        for uid, n in count.items():
            console.print(f"{uid}: {n} panels")
        for i in issues:
            err.print(f"[red]{i}[/]")
        console.print(f"{len(issues)} problem(s)")
    sys.exit(1 if issues else 0)


@dashboards.command("push")
@click.option("--grafana-url", help="Grafana's URL (default cluster.grafana.url, http://127.0.0.1:3000).")
@click.option("--user", help="Grafana user (default cluster.grafana.user, admin).")
@click.option("--password", help="Password (default $TAISHI_GRAFANA_PASSWORD, cluster.grafana.password).")
@click.option("--token", help="A service account token instead of user/password ($TAISHI_GRAFANA_TOKEN).")
@click.option("--search-url", help="The search node's URL as Grafana reaches it (default cluster.search.url).")
@click.option("--flavor", type=click.Choice(["auto", "elasticsearch", "opensearch"]),
              help="Search node flavor; auto asks the node (default cluster.search.flavor, auto).")
@click.option("--only", multiple=True, help="Dashboard uid to push; repeat for several (default: all).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dashboards_push(ctx: click.Context, grafana_url, user, password, token, search_url, flavor, only, as_json) -> None:
    """Create or update the datasources, the Taishi folder and every dashboard in a running
    Grafana (idempotent: a second run reports everything unchanged)."""
    import dashboards as dash_mod
    from taishi.cluster import grafana

    cfg = _cfg(ctx)
    g = dict(cfg.cluster.get("grafana") or {})
    s = dict(cfg.cluster.get("search") or {})
    grafana_url = grafana_url or g.get("url") or "http://127.0.0.1:3000"
    search_url = search_url or s.get("url") or "http://127.0.0.1:9200"
    flavor = flavor or s.get("flavor") or "auto"
    prefix = s.get("index_prefix") or "taishi"
    version = None
    if flavor == "auto":
        try:
            flavor, version = grafana.detect_flavor(s.get("url") or search_url)
        except OSError as e:
            raise click.ClickException(f"cannot ask the search node which flavor it is ({e}); pass --flavor")
    issues = [i for d in dash_mod.load_all().values() for i in dash_mod.validate(d)]
    if issues:
        raise click.ClickException("dashboards do not validate: " + "; ".join(map(str, issues)))
    api = grafana.client(grafana_url, user or g.get("user") or "admin",
                         password or os.environ.get("TAISHI_GRAFANA_PASSWORD") or g.get("password") or "admin",
                         token or os.environ.get("TAISHI_GRAFANA_TOKEN") or g.get("token"))

    def show(a) -> None:
        if not as_json:
            console.print(f"[{_STYLE[a.result]}]{a.result:9}[/] {a.kind:10} {a.uid}  {a.title}")

    try:
        actions = grafana.push(api, search_url=search_url, flavor=flavor, prefix=prefix, version=version,
                               only=list(only) or None, report=show)
    except Exception as e:  # grafana_client raises its own and niquests' connection errors
        raise click.ClickException(f"push to {grafana_url} failed: {e}")
    if as_json:
        click.echo(dumps([a.__dict__ for a in actions]))
        return
    t = Table(title=f"Grafana {grafana_url} ({flavor} datasources)", title_justify="left")
    for col in ("kind", "created", "updated", "unchanged"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for kind in ("datasource", "folder", "dashboard"):
        t.add_row(kind, *(str(sum(1 for a in actions if a.kind == kind and a.result == r))
                          for r in ("created", "updated", "unchanged")))
    console.print(t)


@dashboards.command("provisioning")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write to (default: dashboards/ in the repository).")
@click.option("--search-url", default="${TAISHI_SEARCH_URL}", show_default=True,
              help="URL written into the datasources (Grafana expands ${VAR} from its environment).")
def dashboards_provisioning(out: Path | None, search_url: str) -> None:
    """Write Grafana's provisioning files: datasources (OpenSearch plugin by default, and an
    Elasticsearch variant) and the file provider for dashboards/*.json."""
    import dashboards as dash_mod

    root = out or dash_mod.DIR
    for rel, text in dash_mod.provisioning_files(search_url).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        console.print(f"wrote {path}")


@dashboards.command("posture")
@click.option("--since", default="24h", show_default=True, help="From when (24h, 7d or an ISO time).")
@click.option("--step", default="15m", show_default=True, help="One point per step (30s, 15m, 1h).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dashboards_posture(ctx: click.Context, since: str, step: str, as_json: bool) -> None:
    """Compute the posture index (态势指数) per scope from the alerts on the search node, as the
    console does, and write the series to <prefix>-posture for the Grafana posture panels.
    Run it every step (cron, systemd timer) to keep them current; points are replaced, not added."""
    from datetime import datetime, timezone

    from compliance.inventory import Inventory
    from taishi.cli import parse_since
    from taishi.cluster import posture_index
    from taishi.cluster.search import SearchStore, SearchStoreError

    m = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if not step[:-1].isdigit() or step[-1] not in m or int(step[:-1]) == 0:
        raise click.BadParameter(f"{step!r}: use N followed by s, m, h or d", param_hint="--step")
    cfg = _cfg(ctx)
    start, until = parse_since(since), datetime.now(timezone.utc)
    try:
        with SearchStore.from_config(cfg) as search:
            n = posture_index.publish(search, Inventory.open(cfg.data_dir), start, until, int(step[:-1]) * m[step[-1]])
            index = search.index_name("posture")
    except (SearchStoreError, OSError) as e:
        raise click.ClickException(f"posture to the search node failed: {e}")
    if as_json:
        click.echo(dumps({"index": index, "points": n, "since": start, "until": until}))
    else:
        console.print(f"wrote {n} posture points to {index} ({since} in steps of {step})")


@dashboards.command("probe")
@click.option("--since", default="24h", show_default=True, help="Time range of the queries (24h, 7d or an ISO time).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dashboards_probe(ctx: click.Context, since: str, as_json: bool) -> None:
    """Run every panel's query on the search node as Grafana would send it and show how many
    rows each returns, or the node's error (an unmapped field, a missing aggregation ...).
    Exit status 1 when any panel's query fails."""
    from datetime import datetime, timezone

    import dashboards as dash_mod
    from taishi.cli import parse_since
    from taishi.cluster.search import SearchStore, SearchStoreError

    cfg = _cfg(ctx)
    end = datetime.now(timezone.utc)
    start = parse_since(since)
    span_ms = (end - start).total_seconds() * 1000
    interval = next((iv for iv, ms in (("1m", 60_000), ("5m", 300_000), ("15m", 900_000), ("1h", 3_600_000),
                                       ("6h", 21_600_000)) if span_ms / ms <= 400), "1d")
    results = []
    try:
        with SearchStore.from_config(cfg) as search:
            for uid, dash in dash_mod.load_all().items():
                for p in dash_mod.panels(dash):
                    reqs = dash_mod.panel_requests(dash, p, start=int(start.timestamp() * 1000),
                                                   end=int(end.timestamp() * 1000), interval=interval,
                                                   prefix=search.prefix, now=int(end.timestamp() * 1000))
                    for r in reqs:
                        item = {"dashboard": uid, "panel": p["id"], "title": p["title"], "index": r["index"]}
                        try:
                            resp = search._req("POST", f"/{r['index']}/_search", r["body"])
                            item["rows"] = len(dash_mod.rows(r["target"], resp))
                        except SearchStoreError as e:
                            item["error"] = str(e).split(": ", 1)[-1]  # without "POST /index/_search"
                        results.append(item)
    except (SearchStoreError, OSError) as e:
        raise click.ClickException(f"cannot reach the search node: {e}")
    failed = [r for r in results if "error" in r]
    if as_json:
        click.echo(dumps(results))
    else:
        t = Table(title=f"Panel queries over the last {since} ({interval} buckets)", title_justify="left")
        for col in ("dashboard", "panel", "index", "rows / error"):
            t.add_column(col, overflow="fold")
        for r in results:
            t.add_row(r["dashboard"], f"{r['panel']} {r['title']}", r["index"],
                      f"[red]{r['error']}[/]" if "error" in r else str(r["rows"]))
        console.print(t)
        console.print(f"{len(results) - len(failed)} of {len(results)} queries ran")
    sys.exit(1 if failed else 0)
