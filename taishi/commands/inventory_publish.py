"""``taishi inventory publish``: the CII inventory to the search node (cluster mode's copy).

In cluster mode ``taishi inventory import`` publishes after every import too, so the
``<prefix>-assets`` index (Grafana's *CII assets* dashboard) follows the inventory file.
"""

from __future__ import annotations

import click

from taishi.cli import _cfg, console, dumps, inventory


def publish_inventory(cfg) -> tuple[int, str]:
    """Index every asset of ``cfg``'s inventory (one document per asset, id = asset id, replaced
    on each publish); returns (documents written, index name)."""
    from compliance.inventory import Inventory
    from taishi.cluster.search import SearchStore, SearchStoreError

    inv = Inventory.open(cfg.data_dir)
    try:
        with SearchStore.from_config(cfg) as search:
            return search.write_assets(inv), search.index_name("assets")
    except (SearchStoreError, OSError) as e:
        raise click.ClickException(f"publishing the inventory to the search node failed: {e}")


@inventory.command("publish")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def inventory_publish(ctx: click.Context, as_json: bool) -> None:
    """Write the CII inventory's assets (with their system) to the search node's assets index."""
    n, index = publish_inventory(_cfg(ctx))
    if as_json:
        click.echo(dumps({"index": index, "documents": n}))
    else:
        console.print(f"published {n} CII assets to {index}")
