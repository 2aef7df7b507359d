"""The posture index (态势指数): 0-100 per asset, sector, region and overall, over time.

100 is calm; the index falls as alerts touch the scope and recovers as they
age. Pure functions over plain values (no store, no I/O), so the embedded API
and the cluster jobs (and the Grafana ``taishi-posture`` index) compute the
same numbers.

Formula
-------
Each alert *a* has a **weight**::

    w(a) = S[level(a)] x L[mlps_level(asset)]

    S = {informational: 0, low: 1, medium: 3, high: 7, critical: 15}
    L = {1: 0.6, 2: 0.8, 3: 1.0, 4: 1.5, 5: 2.0}   (no inventoried asset: level 3, 1.0)

The **pressure** on a scope at time *t* sums the weights of the alerts that
touch the scope and are not later than *t*, each decayed by its age with a
half-life *H* (default 6 h)::

    P(t) = sum over alerts a touching the scope, t_a <= t, of  w(a) x 2^(-(t - t_a) / H)

and the **index** is::

    index(t) = 100 x exp(-P(t) / K)            K = 30 (default)

So one fresh critical alert on a level-3 asset gives 61, a high one 79, a
medium one 90; ten fresh high alerts on a level-4 system give 3; six hours
later they count half. Bands: >= 90 calm (优), 75-90 guarded (良), 50-75
elevated (中), < 50 severe (差).

An alert **touches** the asset of its ``source.ip`` and of its
``destination.ip`` (both, for lateral movement); for a sector or region it
touches the group if it touches any of its assets, and counts **once** per
group. The MLPS level in the weight is the highest level of the assets the
alert touches within the scope. The overall index uses every alert, at the
highest level it touches (level 3 if none). Alerts on addresses no inventory
asset covers count for the overall index and for their address as an
``ip:`` scope, so the per-asset view still shows uninventoried hosts.

The same parameters can be changed in one :class:`Params` value; every
result echoes the parameters it used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Params", "AssetRef", "AlertPoint", "weight", "pressure", "index_from_pressure", "band",
           "series", "alert_points", "compute", "DEFAULT"]

LEVEL_WEIGHT = {"informational": 0.0, "low": 1.0, "medium": 3.0, "high": 7.0, "critical": 15.0}
MLPS_FACTOR = {1: 0.6, 2: 0.8, 3: 1.0, 4: 1.5, 5: 2.0}
BANDS = ((90.0, "calm"), (75.0, "guarded"), (50.0, "elevated"), (0.0, "severe"))


@dataclass(frozen=True)
class Params:
    half_life_h: float = 6.0
    scale: float = 30.0  # K
    level_weight: Mapping[str, float] = field(default_factory=lambda: dict(LEVEL_WEIGHT))
    mlps_factor: Mapping[int, float] = field(default_factory=lambda: dict(MLPS_FACTOR))
    default_mlps: int = 3

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["level_weight"], d["mlps_factor"] = dict(self.level_weight), {str(k): v for k, v in self.mlps_factor.items()}
        return d


DEFAULT = Params()


@dataclass(frozen=True)
class AssetRef:
    """What the index needs to know about an inventoried asset."""

    asset_id: str
    system_id: str | None = None
    mlps_level: int | None = None
    sector: str | None = None
    region: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class AlertPoint:
    """An alert reduced to what the index uses."""

    time: float  # epoch seconds
    level: str
    assets: tuple[AssetRef, ...] = ()
    ips: tuple[str, ...] = ()  # addresses of the alert no asset covers
    id: str | None = None


def weight(level: str | None, mlps_level: int | None, params: Params = DEFAULT) -> float:
    """``S[level] x L[mlps level]``; unknown levels weigh as informational (0)."""
    s = params.level_weight.get(str(level or "").lower(), 0.0)
    lv = mlps_level if mlps_level in params.mlps_factor else params.default_mlps
    return float(s) * float(params.mlps_factor.get(lv, 1.0))


def index_from_pressure(p: float, params: Params = DEFAULT) -> float:
    """``100 x exp(-P / K)``, rounded to one decimal."""
    return round(100.0 * math.exp(-max(0.0, p) / params.scale), 1)


def band(index: float) -> str:
    """calm / guarded / elevated / severe."""
    return next(name for lo, name in BANDS if index >= lo)


def _epoch(t: Any) -> float:
    if isinstance(t, (int, float)):
        return float(t)
    if isinstance(t, datetime):
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    return datetime.fromisoformat(str(t).replace("Z", "+00:00")).timestamp()


def pressure(times: Sequence[float], weights: Sequence[float], at: Sequence[float] | float,
             params: Params = DEFAULT) -> np.ndarray:
    """P at each time of ``at`` from alerts at ``times`` (epoch s) with ``weights``."""
    at_arr = np.atleast_1d(np.asarray(at, dtype=float))
    if len(times) == 0:
        return np.zeros(len(at_arr))
    t = np.asarray(times, dtype=float)
    w = np.asarray(weights, dtype=float)
    age = at_arr[:, None] - t[None, :]  # (points, alerts)
    decay = np.where(age >= 0, np.exp2(-np.clip(age, 0, None) / (params.half_life_h * 3600.0)), 0.0)
    return decay @ w


def series(times: Sequence[float], weights: Sequence[float], at: Sequence[float],
           params: Params = DEFAULT) -> list[float]:
    """The index at each time of ``at``."""
    return [index_from_pressure(float(p), params) for p in pressure(times, weights, at, params)]


def alert_points(alerts: Iterable[Mapping[str, Any]], assets_by_ip: Mapping[str, AssetRef]) -> list[AlertPoint]:
    """Alerts (dicts with ``@timestamp``, ``rule.level``, ``source.ip``, ``destination.ip``,
    ``id``) -> :class:`AlertPoint` with the assets they touch (``assets_by_ip``: address ->
    asset, for the addresses the inventory covers). Alerts without a time are skipped."""
    out = []
    for a in alerts:
        ts = a.get("@timestamp")
        if ts is None:
            continue
        refs: list[AssetRef] = []
        ips: list[str] = []
        for side in ("source.ip", "destination.ip"):
            ip = a.get(side)
            if not ip:
                continue
            ref = assets_by_ip.get(ip)
            if ref is not None:
                if ref not in refs:
                    refs.append(ref)
            elif ip not in ips:
                ips.append(ip)
        out.append(AlertPoint(time=_epoch(ts), level=str(a.get("rule.level") or ""), assets=tuple(refs),
                              ips=tuple(ips), id=a.get("id")))
    return out


def _scope_weights(points: Sequence[AlertPoint], member: Callable[[AssetRef], bool] | None,
                   ip: str | None, params: Params) -> tuple[list[float], list[float]]:
    times, weights = [], []
    for p in points:
        if member is None and ip is None:  # overall
            lv = max((r.mlps_level or params.default_mlps for r in p.assets), default=params.default_mlps)
        elif ip is not None:
            if ip not in p.ips:
                continue
            lv = params.default_mlps
        else:
            touched = [r for r in p.assets if member(r)]
            if not touched:
                continue
            lv = max(r.mlps_level or params.default_mlps for r in touched)
        w = weight(p.level, lv, params)
        if w > 0:
            times.append(p.time)
            weights.append(w)
    return times, weights


def compute(points: Sequence[AlertPoint], at: Sequence[Any], params: Params = DEFAULT,
            assets: Iterable[AssetRef] = (), by: Sequence[str] = ("overall", "asset", "sector", "region"),
            top_ips: int = 20) -> dict[str, Any]:
    """The index now (at the last time of ``at``) and over ``at`` for each scope.

    ``assets``: every inventoried asset, so calm ones are listed at 100 too.
    Returns ``{"params", "times", "overall": {...}, "asset": [...], "sector": [...],
    "region": [...]}``; each scope is ``{"key", "name", "index", "band", "pressure",
    "alerts", "series"}`` (``alerts``: how many alerts touched it up to now), lists
    ordered worst first.
    """
    at_s = [_epoch(t) for t in at]
    if not at_s:
        raise ValueError("give at least one time")
    now = at_s[-1]

    def scope(key: str, name: str | None, member: Callable[[AssetRef], bool] | None = None,
              ip: str | None = None, **extra: Any) -> dict[str, Any]:
        times, weights = _scope_weights(points, member, ip, params)
        p = pressure(times, weights, at_s, params)
        idx = [index_from_pressure(float(x), params) for x in p]
        return {"key": key, "name": name or key, "index": idx[-1], "band": band(idx[-1]),
                "pressure": round(float(p[-1]), 3), "alerts": int(sum(1 for t in times if t <= now)),
                "series": idx, **extra}

    def worst_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda r: (r["index"], -r["alerts"], r["key"]))

    known = {r.asset_id: r for r in assets}
    for p in points:
        for r in p.assets:
            known.setdefault(r.asset_id, r)
    out: dict[str, Any] = {"params": params.as_dict(), "times": at_s}
    if "overall" in by:
        out["overall"] = scope("overall", "overall")
    if "asset" in by:
        rows = [scope(r.asset_id, r.name or r.asset_id, lambda x, r=r: x.asset_id == r.asset_id,
                      system=r.system_id, mlps_level=r.mlps_level, sector=r.sector, region=r.region)
                for r in known.values()]
        counts: dict[str, int] = {}
        for p in points:
            for ip in p.ips:
                counts[ip] = counts.get(ip, 0) + 1
        for ip, _n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_ips]:
            rows.append(scope(f"ip:{ip}", ip, ip=ip, system=None, mlps_level=None, sector=None, region=None))
        out["asset"] = worst_first(rows)
    for kind in ("sector", "region"):
        if kind not in by:
            continue
        groups = sorted({getattr(r, kind) for r in known.values() if getattr(r, kind)})
        out[kind] = worst_first([scope(g, g, lambda x, g=g, kind=kind: getattr(x, kind) == g) for g in groups])
    return out
