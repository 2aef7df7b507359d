"""The posture index (态势指数) as a time series on the search node, for the Grafana panels.

:func:`publish` reads the alerts from the search store, computes the index per
scope exactly as the console's situation view does (``taishi.api.routes.views``
over :mod:`taishi.posture`: same asset resolution, same look-back), and writes
one point per scope, key and step through :meth:`SearchStore.write_posture`:
``{"@timestamp", "scope": overall|asset|sector|region, "key", "name", "index",
"band"}``. ``taishi dashboards posture`` is the command; run it on a schedule
(every step) to keep the overview's posture panels current.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from taishi import posture as posture_mod

SCOPES = ("overall", "asset", "sector", "region")


def points(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for ``write_posture`` from a :func:`taishi.posture.compute` result (``times`` ISO or epoch)."""
    times = [t if isinstance(t, datetime) else
             (datetime.fromtimestamp(t, timezone.utc) if isinstance(t, (int, float))
              else datetime.fromisoformat(str(t).replace("Z", "+00:00")))
             for t in res["times"]]
    out = []
    for scope in SCOPES:
        rows = res.get(scope)
        if rows is None:
            continue
        for r in ([rows] if isinstance(rows, dict) else rows):
            for t, idx in zip(times, r["series"]):
                out.append({"@timestamp": t, "scope": scope, "key": r["key"], "name": r.get("name") or r["key"],
                            "index": float(idx), "band": posture_mod.band(idx)})
    return out


def publish(search, inventory, since: datetime, until: datetime, step_s: int = 900) -> int:
    """Compute the index every ``step_s`` seconds over [since, until] and write it; returns the points written."""
    from taishi.api.routes.views import _lookback, _posture  # the console's own computation

    alerts = search.search_alerts("", since=_lookback(since), until=until, limit=None, order="asc").to_pylist()
    res = _posture(inventory, alerts, since, until, step_s, SCOPES)
    return search.write_posture(points(res))
