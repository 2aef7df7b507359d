"""GeoIP for the map: where an address is, from an offline database.

Pure and offline: nothing is downloaded at run time. Public addresses are
looked up in the country database shipped inside the ``geoip2fast`` PyPI
package (IPv4 and IPv6, built by its author from MaxMind GeoLite2 Country
data; optional extra ``taishi[geo]``, ~10 MB). Without it every public
address is ``unknown`` with the reason ``GeoIP database not installed``:
the console's map degrades to its tables, nothing fails.

Every address gets exactly one ``kind``:

``internal``
    RFC 1918 / RFC 4193 private, loopback, link-local, CGNAT shared space
    (RFC 6598), or inside one of the site's own networks passed as
    ``internal_networks`` (e.g. the CII inventory's CIDRs, which may be
    public space). Placed at the site's ``home`` location if one is given.
``public``
    A global address found in the database: country code, English and
    Chinese country name, and the country's approximate centre as
    ``location`` (the database has no city level; points on the map are
    countries).
``unknown``
    Anything else, with a ``reason``: documentation ranges (RFC 5737 /
    RFC 3849: the demo's attacker 203.0.113.50), multicast, reserved,
    unspecified, not in the database, a country without a known centre, no
    database, or not an address at all. Never an exception.

Output keys follow ECS ``*.geo.*`` names without the side prefix::

    >>> GeoIP(db=None).lookup("10.20.0.10")["kind"]
    'internal'
    >>> GeoIP(db=None).lookup("203.0.113.50")["reason"]
    'documentation range'
    >>> GeoIP(db=None).lookup("not an ip")["kind"]
    'unknown'

The Grafana helper and the API share :func:`lookup` / :class:`GeoIP`.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["GeoIP", "lookup", "lookup_many", "classify", "COUNTRIES", "available", "aggregate_points"]

# ISO 3166-1 alpha-2 -> (latitude, longitude of an approximate centre, English name, Chinese name).
# Centres are rounded to a degree or so: good enough for a world map of attack sources.
COUNTRIES: dict[str, tuple[float, float, str, str]] = {
    "AE": (24.0, 54.0, "United Arab Emirates", "阿联酋"),
    "AR": (-34.0, -64.0, "Argentina", "阿根廷"),
    "AT": (47.5, 14.5, "Austria", "奥地利"),
    "AU": (-25.0, 134.0, "Australia", "澳大利亚"),
    "AZ": (40.3, 47.7, "Azerbaijan", "阿塞拜疆"),
    "BD": (24.0, 90.0, "Bangladesh", "孟加拉国"),
    "BE": (50.6, 4.6, "Belgium", "比利时"),
    "BG": (42.7, 25.3, "Bulgaria", "保加利亚"),
    "BR": (-10.0, -52.0, "Brazil", "巴西"),
    "BY": (53.5, 28.0, "Belarus", "白俄罗斯"),
    "CA": (56.0, -106.0, "Canada", "加拿大"),
    "CH": (46.8, 8.2, "Switzerland", "瑞士"),
    "CL": (-33.0, -71.0, "Chile", "智利"),
    "CN": (35.0, 104.0, "China", "中国"),
    "CO": (4.0, -73.0, "Colombia", "哥伦比亚"),
    "CY": (35.0, 33.2, "Cyprus", "塞浦路斯"),
    "CZ": (49.8, 15.5, "Czechia", "捷克"),
    "DE": (51.2, 10.4, "Germany", "德国"),
    "DK": (56.0, 10.0, "Denmark", "丹麦"),
    "DZ": (28.0, 3.0, "Algeria", "阿尔及利亚"),
    "EC": (-1.5, -78.0, "Ecuador", "厄瓜多尔"),
    "EE": (58.7, 25.5, "Estonia", "爱沙尼亚"),
    "EG": (26.5, 30.0, "Egypt", "埃及"),
    "ES": (40.2, -3.6, "Spain", "西班牙"),
    "FI": (64.0, 26.0, "Finland", "芬兰"),
    "FR": (46.6, 2.4, "France", "法国"),
    "GB": (54.0, -2.0, "United Kingdom", "英国"),
    "GE": (42.2, 43.5, "Georgia", "格鲁吉亚"),
    "GR": (39.0, 22.0, "Greece", "希腊"),
    "HK": (22.3, 114.2, "Hong Kong", "中国香港"),
    "HR": (45.2, 15.5, "Croatia", "克罗地亚"),
    "HU": (47.2, 19.5, "Hungary", "匈牙利"),
    "ID": (-2.5, 118.0, "Indonesia", "印度尼西亚"),
    "IE": (53.2, -8.0, "Ireland", "爱尔兰"),
    "IL": (31.4, 35.0, "Israel", "以色列"),
    "IN": (22.0, 79.0, "India", "印度"),
    "IQ": (33.0, 43.7, "Iraq", "伊拉克"),
    "IR": (32.5, 54.0, "Iran", "伊朗"),
    "IS": (65.0, -18.5, "Iceland", "冰岛"),
    "IT": (42.8, 12.5, "Italy", "意大利"),
    "JP": (36.5, 138.5, "Japan", "日本"),
    "KE": (0.2, 37.9, "Kenya", "肯尼亚"),
    "KG": (41.5, 74.8, "Kyrgyzstan", "吉尔吉斯斯坦"),
    "KH": (12.6, 105.0, "Cambodia", "柬埔寨"),
    "KP": (40.2, 127.3, "North Korea", "朝鲜"),
    "KR": (36.4, 127.9, "South Korea", "韩国"),
    "KZ": (48.0, 67.0, "Kazakhstan", "哈萨克斯坦"),
    "LA": (18.5, 103.0, "Laos", "老挝"),
    "LK": (7.8, 80.7, "Sri Lanka", "斯里兰卡"),
    "LT": (55.3, 23.9, "Lithuania", "立陶宛"),
    "LU": (49.8, 6.1, "Luxembourg", "卢森堡"),
    "LV": (56.9, 24.9, "Latvia", "拉脱维亚"),
    "MA": (31.8, -7.1, "Morocco", "摩洛哥"),
    "MD": (47.2, 28.5, "Moldova", "摩尔多瓦"),
    "MM": (21.0, 96.0, "Myanmar", "缅甸"),
    "MN": (46.9, 103.8, "Mongolia", "蒙古"),
    "MO": (22.2, 113.5, "Macao", "中国澳门"),
    "MX": (23.6, -102.5, "Mexico", "墨西哥"),
    "MY": (4.2, 102.0, "Malaysia", "马来西亚"),
    "NG": (9.1, 8.7, "Nigeria", "尼日利亚"),
    "NL": (52.2, 5.3, "Netherlands", "荷兰"),
    "NO": (61.0, 9.0, "Norway", "挪威"),
    "NP": (28.4, 84.1, "Nepal", "尼泊尔"),
    "NZ": (-41.0, 174.0, "New Zealand", "新西兰"),
    "PE": (-9.2, -75.0, "Peru", "秘鲁"),
    "PH": (12.9, 121.8, "Philippines", "菲律宾"),
    "PK": (30.4, 69.3, "Pakistan", "巴基斯坦"),
    "PL": (52.0, 19.1, "Poland", "波兰"),
    "PT": (39.6, -8.0, "Portugal", "葡萄牙"),
    "RO": (45.9, 25.0, "Romania", "罗马尼亚"),
    "RS": (44.0, 20.9, "Serbia", "塞尔维亚"),
    "RU": (60.0, 90.0, "Russia", "俄罗斯"),
    "SA": (24.0, 45.0, "Saudi Arabia", "沙特阿拉伯"),
    "SC": (-4.7, 55.5, "Seychelles", "塞舌尔"),
    "SE": (62.0, 15.0, "Sweden", "瑞典"),
    "SG": (1.35, 103.8, "Singapore", "新加坡"),
    "SK": (48.7, 19.7, "Slovakia", "斯洛伐克"),
    "SY": (35.0, 38.5, "Syria", "叙利亚"),
    "TH": (15.9, 101.0, "Thailand", "泰国"),
    "TR": (39.0, 35.2, "Türkiye", "土耳其"),
    "TW": (23.7, 121.0, "Taiwan", "中国台湾"),
    "UA": (49.0, 31.4, "Ukraine", "乌克兰"),
    "US": (39.8, -98.6, "United States", "美国"),
    "UZ": (41.4, 64.6, "Uzbekistan", "乌兹别克斯坦"),
    "VE": (7.0, -66.0, "Venezuela", "委内瑞拉"),
    "VN": (16.0, 107.8, "Vietnam", "越南"),
    "ZA": (-29.0, 24.7, "South Africa", "南非"),
}

# Special-purpose ranges that Python's ipaddress does not single out by name.
_DOC_NETS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20"))
_SHARED_NET = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
_BENCH_NET = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking


def classify(ip: str | None, internal_networks: Iterable[Any] = ()) -> tuple[str, str]:
    """``(kind, reason)`` from the address alone: kind is ``internal``, ``public``
    (a candidate for the database) or ``unknown``. Pure; never raises."""
    if not isinstance(ip, str) or not ip.strip():
        return "unknown", "no address"
    try:
        addr = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return "unknown", "not an IP address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for net in internal_networks:
        try:
            if addr in (net if isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                        else ipaddress.ip_network(str(net), strict=False)):
                return "internal", "site network"
        except (ValueError, TypeError):
            continue
    if addr.is_loopback:
        return "internal", "loopback"
    if addr.is_link_local:
        return "internal", "link-local"
    if addr in _SHARED_NET:
        return "internal", "shared address space (CGNAT)"
    if any(addr in n for n in _DOC_NETS if n.version == addr.version):
        return "unknown", "documentation range"
    if addr.is_multicast:
        return "unknown", "multicast"
    if addr.is_unspecified:
        return "unknown", "unspecified address"
    if addr.version == 4 and addr in _BENCH_NET:
        return "unknown", "benchmarking range"
    if addr.is_reserved:  # 240.0.0.0/4 and IPv6's unassigned space (Python counts 240/4 as private)
        return "unknown", "reserved range"
    if addr.is_private:  # RFC 1918, RFC 4193 ULA (documentation/benchmarks handled above)
        return "internal", "private network"
    if not addr.is_global:
        return "unknown", "reserved range"
    return "public", ""


@dataclass(frozen=True)
class Home:
    """Where the site's own (internal) addresses are drawn on the map."""

    lat: float
    lon: float
    name: str = ""


class GeoIP:
    """Address -> location with the database of ``geoip2fast``.

    ``db``: ``"auto"`` loads the package's IPv4+IPv6 country file on first use
    (about 0.3 s, ~60 MB resident); ``None`` means no database (every public
    address is ``unknown``); any other object with ``lookup(ip)`` returning an
    object with ``country_code`` is used as is (tests pass a fake).
    """

    def __init__(self, db: Any = "auto", internal_networks: Iterable[Any] = (), home: Home | None = None):
        self._db_spec = db
        self._db: Any = None
        self._db_error: str | None = None
        self._lock = threading.Lock()
        nets = []
        for n in internal_networks:
            try:
                nets.append(ipaddress.ip_network(str(n), strict=False))
            except ValueError:
                continue
        self.internal_networks = tuple(nets)
        self.home = home

    @property
    def db(self) -> Any:
        if self._db is None and self._db_error is None:
            with self._lock:
                if self._db is None and self._db_error is None:
                    self._db, self._db_error = _open_db(self._db_spec)
        return self._db

    @property
    def available(self) -> bool:
        return self.db is not None

    @property
    def source(self) -> str:
        """Where the data comes from (for the console's attribution line)."""
        if self.db is None:
            return f"no GeoIP database ({self._db_error})"
        return "geoip2fast (MaxMind GeoLite2 Country data)" if type(self.db).__name__ == "GeoIP2Fast" \
            else type(self.db).__name__

    def lookup(self, ip: str | None) -> dict[str, Any]:
        kind, reason = classify(ip, self.internal_networks)
        out: dict[str, Any] = {"ip": ip, "kind": kind, "reason": reason or None, "country_iso_code": None,
                               "country_name": None, "country_name_zh": None, "location": None}
        if kind == "internal":
            if self.home is not None:
                out["location"] = {"lat": self.home.lat, "lon": self.home.lon}
                out["site"] = self.home.name or None
            return out
        if kind == "unknown":
            return out
        db = self.db
        if db is None:
            out.update(kind="unknown", reason="GeoIP database not installed")
            return out
        try:
            addr = ipaddress.ip_address(str(ip).strip().split("%", 1)[0])
            mapped = getattr(addr, "ipv4_mapped", None)
            res = db.lookup(str(mapped or addr))
            cc = str(getattr(res, "country_code", "") or "").upper()
        except Exception:  # noqa: BLE001 - a bad record in the database is "unknown", not an error
            cc = ""
        if len(cc) != 2 or not cc.isalpha():
            out.update(kind="unknown", reason="not in the GeoIP database")
            return out
        out["country_iso_code"] = cc
        known = COUNTRIES.get(cc)
        if known is None:
            out["country_name"] = getattr(res, "country_name", None) or cc
            out["reason"] = "country centre not known: not drawn on the map"
            return out
        lat, lon, en, zh = known
        out.update(country_name=en, country_name_zh=zh, location={"lat": lat, "lon": lon})
        return out

    def lookup_many(self, ips: Iterable[str | None]) -> dict[str, dict[str, Any]]:
        """Each distinct address once."""
        return {ip: self.lookup(ip) for ip in dict.fromkeys(i for i in ips if i is not None)}


def _open_db(spec: Any) -> tuple[Any, str | None]:
    if spec is None:
        return None, "disabled"
    if spec != "auto":
        return spec, None
    try:
        from geoip2fast import GeoIP2Fast  # optional extra: taishi[geo]
    except ImportError:
        return None, "pip install 'taishi[geo]' for the geoip2fast country database"
    try:  # the IPv6 file holds IPv4 too
        return GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz", verbose=False), None
    except Exception as e:  # noqa: BLE001 - an unreadable database degrades the map, not the API
        try:
            return GeoIP2Fast(verbose=False), None
        except Exception:  # noqa: BLE001
            return None, f"{type(e).__name__}: {e}"


@functools.cache
def _default() -> GeoIP:
    return GeoIP()


def available() -> bool:
    """Whether the offline database is installed and loads."""
    return _default().available


def lookup(ip: str | None, internal_networks: Iterable[Any] = ()) -> dict[str, Any]:
    """:meth:`GeoIP.lookup` with the shared default database."""
    if internal_networks:
        kind, reason = classify(ip, internal_networks)
        if kind == "internal":
            return GeoIP(db=None, internal_networks=internal_networks).lookup(ip)
    return _default().lookup(ip)


def lookup_many(ips: Iterable[str | None], internal_networks: Iterable[Any] = ()) -> dict[str, dict[str, Any]]:
    nets = tuple(internal_networks)
    return {ip: lookup(ip, nets) for ip in dict.fromkeys(i for i in ips if i is not None)}


def aggregate_points(counts: Iterable[tuple[str, int]], geo: GeoIP | None = None) -> dict[str, Any]:
    """Map points from ``(ip, count)`` pairs: one point per country (public) and one
    for the site (internal, when ``geo.home`` is set), each with its count, its
    addresses (top 10) and a label in both languages; addresses that cannot be
    placed are counted per reason in ``unplaced``. Pure given ``geo``."""
    geo = geo or _default()
    points: dict[str, dict[str, Any]] = {}
    unplaced: dict[str, dict[str, Any]] = {}
    for ip, n in counts:
        g = geo.lookup(ip)
        n = int(n)
        if g["location"] is None:
            key = g["reason"] or g["kind"]
            u = unplaced.setdefault(key, {"reason": key, "kind": g["kind"], "count": 0, "ips": []})
            u["count"] += n
            if len(u["ips"]) < 10:
                u["ips"].append({"ip": ip, "count": n})
            continue
        key = g["country_iso_code"] or "internal"
        p = points.get(key)
        if p is None:
            p = points[key] = {
                "key": key, "kind": g["kind"], "country_iso_code": g["country_iso_code"],
                "name": g["country_name"] or g.get("site") or "internal",
                "name_zh": g["country_name_zh"] or ("受保护网络" if g["kind"] == "internal" else key),
                "lat": g["location"]["lat"], "lon": g["location"]["lon"], "count": 0, "ips": []}
        p["count"] += n
        if len(p["ips"]) < 10:
            p["ips"].append({"ip": ip, "count": n})
    return {"points": sorted(points.values(), key=lambda p: (-p["count"], p["key"])),
            "unplaced": sorted(unplaced.values(), key=lambda u: (-u["count"], u["reason"]))}
