"""``taishi services up|down|status``: the cluster's Kafka broker and search node on loopback.

See :mod:`taishi.cluster.services` for where they come from and where they live.
"""

from __future__ import annotations

import click
from rich.table import Table

from taishi.cli import console, dumps, err, main


def _names(kafka: bool, search: bool) -> list[str]:
    if not kafka and not search:
        return ["kafka", "search"]
    return [n for n, on in (("kafka", kafka), ("search", search)) if on]


def _which(f):
    f = click.option("--search", is_flag=True, help="Only the search node (OpenSearch on 127.0.0.1:9200).")(f)
    return click.option("--kafka", is_flag=True, help="Only Kafka (KRaft broker on 127.0.0.1:9092).")(f)


@main.group()
def services() -> None:
    """Kafka and the search node for mode: cluster (fetched once from Maven Central, run on loopback)."""


@services.command()
@_which
@click.option("--json", "as_json", is_flag=True, help="Print what started as JSON.")
def up(kafka: bool, search: bool, as_json: bool) -> None:
    """Fetch (the first time), start and health-wait the services; running ones are reused."""
    from taishi.cluster import services as svc

    results = []
    try:
        for name in _names(kafka, search):
            if as_json:
                results.append(svc.up(name))
                continue
            with err.status(f"{svc.get(name).title}…", spinner="dots") as st:
                def report(msg: str, st=st) -> None:
                    st.update(msg)
                    if msg.startswith(("fetching", "formatting", "assembled")):  # the one-off steps stay on screen
                        err.print(f"[dim]{msg}[/]")
                r = svc.up(name, report)
            results.append(r)
            what = "started" if r["started"] else "already running"
            took = f" in {r['seconds']:.1f} s" if r.get("seconds") is not None else ""
            console.print(f"[green]✓[/] {svc.get(name).title} {what} on {r['endpoint']}{took}")
    except svc.ServiceError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise SystemExit(1)
    if as_json:
        click.echo(dumps(results))


@services.command()
@_which
def down(kafka: bool, search: bool) -> None:
    """Stop the services that `taishi services up` started."""
    from taishi.cluster import services as svc

    try:
        for name in _names(kafka, search):
            with err.status(f"stopping {svc.get(name).title}…", spinner="dots") as st:
                stopped = svc.down(name, lambda msg, st=st: st.update(msg))
            console.print(f"[green]✓[/] {svc.get(name).title} stopped" if stopped
                          else f"[dim]{svc.get(name).title} was not running under taishi[/]")
    except svc.ServiceError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise SystemExit(1)


@services.command()
@_which
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(kafka: bool, search: bool, as_json: bool) -> None:
    """What runs, where, and its log; exit status 3 when a service asked for is down."""
    from taishi.cluster import services as svc

    rows = svc.status(_names(kafka, search))
    if as_json:
        click.echo(dumps(rows))
    else:
        t = Table(title="Taishi services", title_justify="left")
        for col in ("service", "endpoint", "state", "pid", "version", "fetched"):
            t.add_column(col, no_wrap=True)
        t.add_column("log", overflow="fold")
        for r in rows:
            if r["healthy"]:
                state = "[green]up[/]" + (" [dim](external)[/]" if r["external"] else "")
            elif r["running"]:
                state = "[yellow]starting / not answering[/]"
            else:
                state = "[red]down[/]"
            t.add_row(r["title"], r["endpoint"], state, str(r["pid"] or "—"),
                      r["version"] + (f" ({r['flavor']})" if r.get("flavor") else ""),
                      "yes" if r["fetched"] else "no", r["log"])
        console.print(t)
    if not all(r["healthy"] for r in rows):
        raise SystemExit(3)
