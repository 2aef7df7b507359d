"""Traceback (溯源): an incident's attack graph and the path the attack took.

The builder (:mod:`correlate.incidents`) already gives each incident a graph
of its alerts: entities as nodes, one edge per (actor, target, rule) with its
first time. :func:`attack_graph` completes it from the store:

* **host names resolved to addresses** -- a host log says ``jump01``, the
  network sensor says ``10.10.1.20``. The CII inventory's hostname/IP pairs
  are used first, then the events themselves (a host log line naming the
  client's address and port, as sshd does, pairs with the sensor's record of
  that client port, see :meth:`taishi.store.Store.host_addresses`). The two
  nodes become one (``jump01 (10.10.1.20)``).
* **observed connections** -- flow/conn events between the incident's
  addresses in its time span (plus :data:`MARGIN`), one ``connection`` edge
  per (source, destination) with its first time, count and ports.

:func:`attack_path` reconstructs the path: alert edges are walked in time
order and a node is *reached* by the first alert edge from an already
reached node (time-respecting, so a later foothold cannot explain an earlier
hop); the start is the first actor that no alert acted on (the outside
attacker). The path
ends at the alert of the most advanced kill-chain stage (latest on a tie) and
is read back through the reaching edges. Each hop lists its evidence: the
alert edges between the two nodes and the connections between them seen
after the source was reached. Connections never *reach* a node on their own
(ordinary traffic between servers would otherwise invent paths); they
corroborate hops.

:func:`draw` renders the graph with matplotlib: nodes left to right by kill-
chain stage (the earliest tactic a node acts in; a pure target sits just
right of its first attacker), alert edges labelled with time and rule, the
path in bold, connections dashed. PNG or SVG by the file suffix.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

from correlate.incidents import KILL_CHAIN, STAGE

MARGIN = timedelta(minutes=10)
MAX_CONNECTION_EDGES = 400


def _time(s: str | datetime) -> datetime:
    if isinstance(s, datetime):
        return s if s.tzinfo else s.replace(tzinfo=timezone.utc)
    from taishi.schema import parse_time

    return parse_time(s)


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return False


def inventory_hosts(inventory: Any) -> dict[str, str]:
    """hostname -> address from a CII inventory's assets (single addresses only)."""
    out: dict[str, str] = {}
    for a in sorted(getattr(inventory, "assets", {}).values(), key=lambda a: a.asset_id) if inventory else ():
        ips = [i for i in (a.ips or []) if _is_ip(i)]
        if a.hostname and ips:
            out.setdefault(a.hostname, ips[0])
            out.setdefault(a.hostname.split(".")[0], ips[0])
    return out


def merge_hosts(graph: dict, host_ip: dict[str, str]) -> dict:
    """Graph with ``host:NAME`` nodes folded into ``ip:ADDR`` nodes where the address is known."""
    ren = {}
    for n in graph["nodes"]:
        if n["type"] == "host" and n["label"] in host_ip:
            ren[n["id"]] = f"ip:{host_ip[n['label']]}"
    if not ren:
        return graph
    nodes: dict[str, dict] = {}
    for n in graph["nodes"]:
        nid = ren.get(n["id"], n["id"])
        cur = nodes.get(nid)
        if cur is None:
            cur = nodes[nid] = dict(n, id=nid, aliases=list(n.get("aliases") or []))
            if nid != n["id"]:
                cur.update(type="ip", label=nid[3:])
        else:
            if cur.get("role") != n.get("role"):
                cur["role"] = "both"
            cur["asset"] = cur.get("asset") or n.get("asset")
            if n.get("stage") and (not cur.get("stage") or STAGE.get(n["stage"], 99) < STAGE.get(cur["stage"], 99)):
                cur["stage"] = n["stage"]
        if nid != n["id"]:
            cur["aliases"] = sorted(set(cur["aliases"]) | {n["label"]})
    for n in nodes.values():
        if n.get("aliases"):
            n["label"] = f"{n['aliases'][0]} ({n['id'][3:]})" if n["type"] == "ip" else n["label"]
    edges = [dict(e, source=ren.get(e["source"], e["source"]), target=ren.get(e["target"], e["target"]))
             for e in graph["edges"]]
    return {"nodes": list(nodes.values()), "edges": edges}


def connection_edges(store: Any, graph: dict, first_seen: str, last_seen: str) -> list[dict]:
    """One ``connection`` edge per (source, destination) among the graph's addresses."""
    ips = [n["id"][3:] for n in graph["nodes"] if n["id"].startswith("ip:")]
    rows = store.connections_between(ips, _time(first_seen) - MARGIN, _time(last_seen) + MARGIN)
    pairs: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["source.ip"], r["destination.ip"])
        e = pairs.get(key)
        port = f"{r['network.protocol'] or '?'}/{r['destination.port']}" if r["destination.port"] is not None \
            else (r["network.protocol"] or "?")
        if e is None:
            pairs[key] = e = {"source": f"ip:{key[0]}", "target": f"ip:{key[1]}", "kind": "connection",
                              "time": r["first"], "rule": None, "tactic": None, "alert_id": None,
                              "event_id": r["event.id"], "count": 0, "bytes": 0, "ports": []}
        e["count"] += r["count"]
        e["bytes"] += r["bytes"]
        if r["first"] < e["time"]:
            e["time"], e["event_id"] = r["first"], r["event.id"]
        if port not in e["ports"]:
            e["ports"].append(port)
    out = sorted(pairs.values(), key=lambda e: (e["time"], e["source"], e["target"]))[:MAX_CONNECTION_EDGES]
    for e in out:
        e["time"] = _iso(e["time"])
        if len(e["ports"]) > 12:
            e["ports"] = e["ports"][:12] + [f"+{len(e['ports']) - 12} more"]
    return out


def attack_graph(incident: dict, store: Any = None, inventory: Any = None) -> dict:
    """The incident's graph with host names resolved and observed connections added."""
    graph = {"nodes": [dict(n) for n in incident["graph"]["nodes"]],
             "edges": [dict(e) for e in incident["graph"]["edges"]]}
    hosts = sorted(n["label"] for n in graph["nodes"] if n["type"] == "host")
    host_ip = {h: ip for h, ip in inventory_hosts(inventory).items() if h in hosts}
    missing = [h for h in hosts if h not in host_ip]
    if store is not None and missing:
        host_ip.update(store.host_addresses(missing, _time(incident["first_seen"]), _time(incident["last_seen"])))
    graph = merge_hosts(graph, host_ip)
    names = {ip: h for h, ip in sorted(inventory_hosts(inventory).items(), key=lambda kv: (len(kv[0]), kv[0]),
                                         reverse=True)}
    for n in graph["nodes"]:  # an inventoried address is labelled with its host name
        if n["type"] == "ip" and n["label"] == n["id"][3:] and n["label"] in names:
            n["label"] = f"{names[n['label']]} ({n['label']})"
    if store is not None:
        conns = connection_edges(store, graph, incident["first_seen"], incident["last_seen"])
        known = {n["id"] for n in graph["nodes"]}
        graph["edges"] = sorted(graph["edges"] + [c for c in conns if c["source"] in known and c["target"] in known],
                                key=lambda e: (e["time"], e["kind"] != "alert", e["source"], e["target"],
                                               e.get("rule") or ""))
    path = attack_path(graph)
    on_path = {(h["source"], h["target"]) for h in path}
    for e in graph["edges"]:
        e["on_path"] = (e["source"], e["target"]) in on_path
    graph["path"] = path
    return graph


def _stage(e: dict) -> int:
    return STAGE.get(e.get("tactic") or "", -1)


def attack_path(graph: dict) -> list[dict]:
    """Hops from the first actor to the most advanced stage (see module doc)."""
    alerts = sorted((e for e in graph["edges"] if e["kind"] == "alert" and e["source"] != e["target"]),
                    key=lambda e: (e["time"], e.get("alert_id") or "", e["source"], e["target"]))
    if not alerts:
        return []
    hit = {e["target"] for e in alerts}
    # the root: the first actor nobody acted on (the outside attacker), else the first actor
    root = next((e["source"] for e in alerts if e["source"] not in hit), alerts[0]["source"])
    reached: dict[str, str] = {root: ""}  # node -> time reached ("" = from the start)
    pred: dict[str, dict] = {}
    for e in alerts:
        if e["source"] in reached and reached[e["source"]] <= e["time"] and e["target"] not in reached:
            reached[e["target"]] = e["time"]
            pred[e["target"]] = e
    candidates = [e for e in alerts if e["source"] in reached and reached[e["source"]] <= e["time"]]
    end = max(candidates, key=lambda e: (_stage(e), e["time"]))
    hops_rev = [end]
    node = end["source"]
    seen = {end["target"], node}
    while node in pred:
        e = pred[node]
        if e["source"] in seen:
            break
        hops_rev.append(e)
        node = e["source"]
        seen.add(node)
    hops = list(reversed(hops_rev))
    out = []
    for i, h in enumerate(hops):
        start = reached.get(h["source"], "")
        nxt = hops[i + 1]["time"] if i + 1 < len(hops) else None
        ev = [e for e in graph["edges"] if e["source"] == h["source"] and e["target"] == h["target"]
              and e["time"] >= start and (e["kind"] == "alert" or nxt is None or e["time"] <= nxt)]
        ev.sort(key=lambda e: (e["time"], e["kind"] != "alert", e.get("rule") or ""))
        tactics = []
        for e in ev:
            if e.get("tactic") and e["tactic"] not in tactics:
                tactics.append(e["tactic"])
        out.append({"source": h["source"], "target": h["target"], "time": ev[0]["time"] if ev else h["time"],
                    "tactics": tactics, "evidence": [_evidence(e) for e in ev]})
    return out


def _evidence(e: dict) -> dict:
    d = {"kind": e["kind"], "time": e["time"]}
    if e["kind"] == "alert":
        d.update(rule=e.get("rule"), tactic=e.get("tactic"), alert_id=e.get("alert_id"), count=e.get("count", 1))
    else:
        d.update(ports=e.get("ports", []), count=e.get("count", 1), event_id=e.get("event_id"))
    return d


def path_nodes(path: list[dict]) -> list[str]:
    return [path[0]["source"], *(h["target"] for h in path)] if path else []


def path_lines(graph: dict) -> list[str]:
    """The path as a readable, time-ordered chain (one line per hop and piece of evidence)."""
    labels = {n["id"]: n["label"] for n in graph["nodes"]}
    lines = []
    for i, h in enumerate(graph.get("path") or [], 1):
        tac = ", ".join(h["tactics"]) or "connection"
        lines.append(f"{i}. {labels.get(h['source'], h['source'])} → {labels.get(h['target'], h['target'])}  [{tac}]")
        for ev in h["evidence"]:
            t = ev["time"][11:19]
            if ev["kind"] == "alert":
                n = f" ×{ev['count']}" if ev.get("count", 1) > 1 else ""
                lines.append(f"     {t}  alert       {ev['rule']}{n}")
            else:
                lines.append(f"     {t}  connection  {', '.join(ev['ports'][:6])} ({ev['count']} flows)")
    return lines


# -- drawing ------------------------------------------------------------------------
_ROLE_COLOR = {"source": "#c0392b", "both": "#e67e22", "target": "#2e86c1"}
_TYPE_COLOR = {"domain": "#8e44ad", "user": "#7f8c8d"}


def _acting_stages(graph: dict) -> dict[str, float]:
    acts: dict[str, float] = {}
    for e in graph["edges"]:
        if e["kind"] == "alert" and e["source"] != e["target"]:
            s = float(STAGE.get(e.get("tactic") or "", len(KILL_CHAIN)))
            acts[e["source"]] = min(acts.get(e["source"], s), s)
    return acts


def column_stages(graph: dict) -> dict[str, str]:
    """node -> the kill-chain stage heading its column (actors only)."""
    return {n: KILL_CHAIN[int(s)] for n, s in _acting_stages(graph).items() if s < len(KILL_CHAIN)}


def layout(graph: dict) -> dict[str, tuple[float, float]]:
    """x by kill-chain stage (actors at the earliest tactic they act in, pure targets just right
    of their first attacker), y spread within a column; deterministic."""
    alerts = sorted((e for e in graph["edges"] if e["kind"] == "alert"), key=lambda e: (e["time"], e["source"]))
    acts = _acting_stages(graph)
    key: dict[str, tuple] = {}
    for n in sorted(acts):
        key[n] = (acts[n], 0)
    for e in alerts + [e for e in graph["edges"] if e["kind"] != "alert"]:
        t = e["target"]
        if t not in key and e["source"] in key:
            key[t] = (key[e["source"]][0], 1)
    for n in graph["nodes"]:
        key.setdefault(n["id"], (float(len(KILL_CHAIN) + 1), 1))
    cols = sorted(set(key.values()))
    col_of = {k: i for i, k in enumerate(cols)}
    members: dict[int, list[str]] = {}
    first = {n["id"]: i for i, n in enumerate(graph["nodes"])}
    for nid in sorted(key, key=lambda n: first.get(n, 0)):
        members.setdefault(col_of[key[nid]], []).append(nid)
    on_path = set(path_nodes(graph.get("path") or []))
    pos = {}
    for c, ids in members.items():  # the path runs along y = 0, the rest alternate above and below
        rest = [n for n in ids if n not in on_path]
        ys = [0.0] if len(rest) < len(ids) else []  # a path column holds y = 0; others keep it free
        k = 1
        while len(ys) < len(ids):
            ys += [float(k), float(-k)]
            k += 1
        ys = ys[:len(ids)]
        ordered = [n for n in ids if n in on_path] + rest
        for nid, y in zip(ordered, ys):
            pos[nid] = (float(c), y)
    return pos


def draw(graph: dict, out: Path | str, title: str = "") -> Path:
    """Draw the attack graph to ``out`` (.png or .svg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    out = Path(out)
    pos = layout(graph)
    nodes = {n["id"]: n for n in graph["nodes"]}
    ncols = max((p[0] for p in pos.values()), default=0) + 1
    nrows = max((sum(1 for p in pos.values() if p[0] == c) for c in {p[0] for p in pos.values()}), default=1)
    fig, ax = plt.subplots(figsize=(max(8.0, 2.6 * ncols), max(4.5, 1.15 * nrows + 1.5)))
    path_pairs = {(h["source"], h["target"]) for h in graph.get("path") or []}
    # edges: one drawn arrow per (source, target, kind); labels from the first alert
    pairs: dict[tuple[str, str, str], list[dict]] = {}
    for e in graph["edges"]:
        pairs.setdefault((e["source"], e["target"], e["kind"]), []).append(e)
    for (s, t, kind), es in sorted(pairs.items(), key=lambda kv: (kv[1][0]["time"], kv[0])):
        if s not in pos or t not in pos:
            continue
        es.sort(key=lambda e: e["time"])
        on = (s, t) in path_pairs
        if s == t:
            x, y = pos[s]
            ax.annotate(f"{es[0]['time'][11:16]} {es[0]['rule']}" + (f" (+{len(es) - 1})" if len(es) > 1 else ""),
                        (x, y - 0.22), ha="center", va="top", fontsize=6.5, color="#555")
            continue
        rad = 0.15 if kind == "alert" else -0.15
        color = "#c0392b" if on and kind == "alert" else ("#888" if kind == "connection" else "#34495e")
        arrow = FancyArrowPatch(pos[s], pos[t], arrowstyle="-|>", mutation_scale=12,
                                connectionstyle=f"arc3,rad={rad}", color=color,
                                lw=2.6 if on and kind == "alert" else 1.0,
                                linestyle="--" if kind == "connection" else "-", shrinkA=16, shrinkB=16, zorder=1)
        ax.add_patch(arrow)
        mx, my = (pos[s][0] + pos[t][0]) / 2, (pos[s][1] + pos[t][1]) / 2
        dy = 0.12 if kind == "alert" else -0.12
        if kind == "alert":
            rules = []
            for e in es:
                if e["rule"] not in rules:
                    rules.append(e["rule"])
            label = f"{es[0]['time'][11:16]} {rules[0][:34]}" + (f" (+{len(rules) - 1})" if len(rules) > 1 else "")
        elif on:
            label = f"{es[0]['time'][11:16]} {', '.join(es[0].get('ports', [])[:3])}"
        else:
            continue
        ax.text(mx, my + dy, label, ha="center", va="center", fontsize=6.5, color=color,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8}, zorder=3)
    for nid, (x, y) in pos.items():
        n = nodes.get(nid, {"type": nid.split(":")[0], "label": nid, "role": "target"})
        color = _TYPE_COLOR.get(n["type"], _ROLE_COLOR.get(n.get("role") or "target", "#2e86c1"))
        asset = n.get("asset") or {}
        level = asset.get("level") if isinstance(asset, dict) else None
        ax.scatter([x], [y], s=900, color=color, edgecolors="black" if level and level >= 3 else "white",
                   linewidths=2.5 if level and level >= 3 else 1.0, zorder=4)
        text = n["label"] + (f"\nMLPS L{level}" if level else "")
        ax.text(x, y + 0.3, text, ha="center", va="bottom", fontsize=8, fontweight="bold", zorder=5)
    stage_cols = {pos[nid][0]: st for nid, st in column_stages(graph).items() if nid in pos}
    top = max((p[1] for p in pos.values()), default=0) + 0.9
    for x, st in stage_cols.items():
        ax.text(x, top, st, ha="center", va="bottom", fontsize=8, color="#555", style="italic")
    ax.set_xlim(-0.7, ncols - 0.3)
    ax.set_ylim(min((p[1] for p in pos.values()), default=0) - 0.8, top + 0.5)
    ax.axis("off")
    ax.set_title(title or "attack graph", fontsize=10, loc="left")
    handles = [Line2D([], [], color="#c0392b", lw=2.6, label="attack path"),
               Line2D([], [], color="#34495e", lw=1, label="alert"),
               Line2D([], [], color="#888", lw=1, ls="--", label="observed connection")]
    handles += [Line2D([], [], marker="o", ls="", color=c, markersize=9, label=r)
                for r, c in (("attacker", _ROLE_COLOR["source"]), ("compromised", _ROLE_COLOR["both"]),
                             ("target", _ROLE_COLOR["target"]), ("domain", _TYPE_COLOR["domain"]))]
    ax.legend(handles=handles, loc="lower left", fontsize=7, frameon=False, ncol=4)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=out.suffix.lstrip(".").lower() or "png", dpi=130)
    plt.close(fig)
    return out


# -- the incident as the CLI and the API give it ------------------------------------------
def incident_view(store: Any, incident_id: str, inventory: Any = None, with_graph: bool = True) -> dict | None:
    """A stored incident with its traceback graph (``graph.nodes``, ``graph.edges``, ``graph.path``)."""
    inc = store.incident(incident_id)
    if inc is None:
        return None
    if with_graph and "merged_into" not in inc:
        inc["graph"] = attack_graph(inc, store, inventory)
    return inc


def with_paths(incidents: Iterable[dict]) -> list[dict]:
    """Incidents from a list query, each graph with its path (alert edges only, no store reads)."""
    out = []
    for inc in incidents:
        g = inc.get("graph") or {"nodes": [], "edges": []}
        g = dict(g)
        g["path"] = attack_path(g)
        inc = dict(inc, graph=g)
        out.append(inc)
    return out


def list_view(store: Any, query: str = "", since: Any = None, status: Any = None, limit: int = 100) -> dict:
    """The incident list as the CLI and the API give it: ``{"count", "items"}``."""
    items = with_paths(store.search_incidents(query, since=since, status=status, limit=limit))
    return {"count": len(items), "items": items}
