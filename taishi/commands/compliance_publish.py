"""``taishi compliance publish``: the compliance report's verdicts to the search node (Grafana MLPS dashboard)."""

from __future__ import annotations

import click

from taishi.cli import _cfg, build_compliance_report, compliance, console, dumps, err


@compliance.command("publish")
@click.option("--level", type=click.IntRange(1, 5), default=3, show_default=True, help="MLPS level to report against.")
@click.option("--system", "systems", multiple=True, help="CII system id; repeat for several (default: all).")
@click.option("--search-url", help="The search node (default cluster.search.url, http://127.0.0.1:9200).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def compliance_publish(ctx: click.Context, level: int, systems: tuple[str, ...], search_url: str | None,
                       as_json: bool) -> None:
    """Evaluate the checks as `taishi compliance report` does and write the verdicts to the
    search node's <prefix>-compliance index (one document per verdict and CII system; a second
    publish replaces them), where the Grafana MLPS dashboard reads them."""
    from collections import Counter

    from compliance.report import records
    from taishi.cluster import compliance_index
    from taishi.cluster.search import SearchStore, SearchStoreError

    cfg = _cfg(ctx)
    if cfg.mode == "cluster":
        err.print("[yellow]note:[/] the checks read the embedded store (as `taishi compliance report` does); "
                  "events that only reached the search node are not evaluated yet")
    rep = build_compliance_report(cfg, level, systems)
    docs = records(rep)
    if search_url:
        cfg.cluster = {**cfg.cluster, "search": {**(cfg.cluster.get("search") or {}), "url": search_url}}
    try:
        with SearchStore.from_config(cfg) as search:
            n = compliance_index.publish(search, docs)
            index = compliance_index.index_name(search)
    except (SearchStoreError, OSError) as e:
        raise click.ClickException(f"publishing to the search node failed: {e}")
    verdicts = Counter(d["compliance.verdict"] for d in docs)
    out = {"index": index, "documents": n, "systems": rep.systems, "verdicts": dict(verdicts),
           "generated_at": rep.generated_at}
    if as_json:
        click.echo(dumps(out))
    else:
        console.print(f"published {n} verdict documents for {len(rep.systems)} CII system(s) to {index}: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
