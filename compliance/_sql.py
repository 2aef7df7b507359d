"""Aggregate SQL over the store's relations with a Lucene filter.

The Store's public API has search/count/aggregate; discovery and the checks
also need GROUP BY over two columns and ``event.ingested`` (not in search
results). This helper reuses the store's own query compiler, relation and
connection handling (``Store._where``/``_rel``/``_connect``), so values stay
bound parameters and the per-operation lock discipline is kept. A public
``Store.sql_aggregate`` would remove the private access (see the integration
patch notes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa

from taishi.store import Store


def select(store: Store, table: str, select_sql: str, query: str | None = "",
           since: datetime | str | None = None, until: datetime | str | None = None,
           tail: str = "", params: list[Any] | None = None) -> pa.Table:
    """``SELECT <select_sql> FROM <table> WHERE <query and time> <tail>`` as Arrow.

    ``select_sql`` and ``tail`` are trusted SQL written in this package (quoted
    identifiers); the Lucene ``query`` and times are compiled to bound parameters.
    """
    t = store._table(table)
    where, wparams = store._where(t, query, since, until)
    sql = f"SELECT {select_sql} FROM {store._rel(t)} WHERE {where} {tail}"
    with store._connect() as con:
        return con.sql(sql, params=[*wparams, *(params or [])]).to_arrow_table()
