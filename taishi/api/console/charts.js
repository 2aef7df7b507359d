// Taishi console charts: plain SVG, no external code. Every function takes a container
// element, empties it and draws; text goes in with textContent only.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";

  function s(tag, attrs, parent) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    if (parent) parent.append(e);
    return e;
  }
  function text(parent, x, y, str, attrs) {
    const t = s("text", Object.assign({ x, y }, attrs || {}), parent);
    t.textContent = str;
    return t;
  }
  function title(node, str) { const t = s("title", {}, node); t.textContent = str; return node; }
  function svgFor(el, h) {
    el.textContent = "";
    const w = Math.max(200, Math.round(el.clientWidth || 600));
    const svg = s("svg", { viewBox: `0 0 ${w} ${h}`, width: "100%", height: h, class: "chart", preserveAspectRatio: "none" }, el);
    return { svg, w, h };
  }
  const BAND_COLOR = { calm: "#22c55e", guarded: "#eab308", elevated: "#f97316", severe: "#ef4444" };
  function bandOf(v) { return v >= 90 ? "calm" : v >= 75 ? "guarded" : v >= 50 ? "elevated" : "severe"; }

  // ---- posture gauge: a 240-degree arc coloured by band ----------------------------------
  function gauge(el, value, opts) {
    opts = opts || {};
    el.textContent = "";
    const W = 270, H = 205, cx = 135, cy = 132, r = 90;
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "gauge", role: "img" }, el);
    const a0 = Math.PI * (7 / 6), a1 = -Math.PI / 6; // 210deg .. -30deg
    const pt = (a, rr) => [cx + rr * Math.cos(a), cy - rr * Math.sin(a)];
    const arc = (from, to, rr) => {
      const [x0, y0] = pt(from, rr), [x1, y1] = pt(to, rr);
      const large = from - to > Math.PI ? 1 : 0;
      return `M${x0},${y0} A${rr},${rr} 0 ${large} 1 ${x1},${y1}`;
    };
    const at = (v) => a0 - (a0 - a1) * Math.max(0, Math.min(100, v)) / 100;
    // band segments on the rim
    for (const [lo, hi, b] of [[0, 50, "severe"], [50, 75, "elevated"], [75, 90, "guarded"], [90, 100, "calm"]]) {
      s("path", { d: arc(at(lo), at(hi), r + 14), stroke: BAND_COLOR[b], "stroke-width": 4, fill: "none", opacity: 0.85 }, svg);
    }
    s("path", { d: arc(a0, a1, r), stroke: "#1e2a44", "stroke-width": 18, fill: "none", "stroke-linecap": "round" }, svg);
    const v = value == null ? 0 : value;
    if (value != null) {
      s("path", { d: arc(a0, at(v), r), stroke: BAND_COLOR[bandOf(v)], "stroke-width": 18, fill: "none", "stroke-linecap": "round", class: "gauge-value" }, svg);
      const [nx, ny] = pt(at(v), r - 30);
      s("line", { x1: cx, y1: cy, x2: nx, y2: ny, stroke: "#cbd5e1", "stroke-width": 3, "stroke-linecap": "round" }, svg);
      s("circle", { cx, cy, r: 6, fill: "#cbd5e1" }, svg);
    }
    text(svg, cx, cy + 52, value == null ? "–" : (Math.round(v * 10) / 10).toFixed(1), { class: "gauge-num", "text-anchor": "middle", fill: BAND_COLOR[bandOf(v)] });
    if (opts.label) text(svg, cx, cy + 72, opts.label, { class: "gauge-label", "text-anchor": "middle" });
    for (const t of [0, 50, 75, 90, 100]) {
      const [x, y] = pt(at(t), r + 28);
      text(svg, x, y + 4, String(t), { class: "axis", "text-anchor": "middle" });
    }
  }

  // ---- time axis helpers ----------------------------------------------------------------
  function timeTicks(t0, t1, n) {
    const out = [];
    if (!(t1 > t0)) return out;
    for (let i = 0; i <= n; i++) out.push(t0 + (t1 - t0) * i / n);
    return out;
  }
  function fmtTick(ms, span, lang) {
    const d = new Date(ms);
    if (span > 2 * 86400e3) return d.toLocaleDateString(lang, { month: "2-digit", day: "2-digit" }) + " " + d.toLocaleTimeString(lang, { hour: "2-digit", hour12: false });
    return d.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit", hour12: false });
  }

  // ---- line / area over time ------------------------------------------------------------------
  function area(el, pts, opts) {
    opts = opts || {};
    const { svg, w, h } = svgFor(el, opts.height || 180);
    const L = 36, R = 10, T = 10, B = 22;
    if (!pts.length) return;
    const t0 = pts[0].t, t1 = pts[pts.length - 1].t;
    const vmax = opts.max != null ? opts.max : Math.max(1, ...pts.map((p) => p.v)) * 1.1;
    const vmin = opts.min != null ? opts.min : 0;
    const X = (t) => L + (w - L - R) * (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5);
    const Y = (v) => T + (h - T - B) * (1 - (v - vmin) / (vmax - vmin || 1));
    if (opts.bands) { // posture bands as a faint background
      for (const [lo, hi, b] of [[0, 50, "severe"], [50, 75, "elevated"], [75, 90, "guarded"], [90, 100, "calm"]]) {
        s("rect", { x: L, y: Y(hi), width: w - L - R, height: Y(lo) - Y(hi), fill: BAND_COLOR[b], opacity: 0.07 }, svg);
      }
    }
    const yt = opts.yticks || [vmin, (vmin + vmax) / 2, vmax];
    for (const v of yt) {
      s("line", { x1: L, x2: w - R, y1: Y(v), y2: Y(v), class: "grid" }, svg);
      text(svg, L - 6, Y(v) + 4, opts.fmtY ? opts.fmtY(v) : String(Math.round(v)), { class: "axis", "text-anchor": "end" });
    }
    for (const t of timeTicks(t0, t1, opts.xticks || 5)) {
      text(svg, X(t), h - 6, fmtTick(t, t1 - t0, opts.lang), { class: "axis", "text-anchor": "middle" });
    }
    const color = opts.color || "#38bdf8";
    const line = pts.map((p, i) => `${i ? "L" : "M"}${X(p.t).toFixed(1)},${Y(p.v).toFixed(1)}`).join("");
    const gid = "g" + Math.random().toString(36).slice(2, 8);
    const defs = s("defs", {}, svg);
    const lg = s("linearGradient", { id: gid, x1: 0, y1: 0, x2: 0, y2: 1 }, defs);
    s("stop", { offset: "0%", "stop-color": color, "stop-opacity": 0.45 }, lg);
    s("stop", { offset: "100%", "stop-color": color, "stop-opacity": 0.02 }, lg);
    s("path", { d: `${line}L${X(t1)},${Y(vmin)}L${X(t0)},${Y(vmin)}Z`, fill: `url(#${gid})` }, svg);
    s("path", { d: line, fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" }, svg);
    const last = pts[pts.length - 1];
    s("circle", { cx: X(last.t), cy: Y(last.v), r: 4, fill: color, class: "pulse" }, svg);
    for (const p of pts) {
      const hit = s("rect", { x: X(p.t) - 3, y: T, width: 6, height: h - T - B, fill: "transparent" }, svg);
      title(hit, `${new Date(p.t).toLocaleString(opts.lang, { hour12: false })}  ${opts.fmtY ? opts.fmtY(p.v) : p.v}`);
    }
  }

  // ---- stacked bars over time --------------------------------------------------------------------
  function stacked(el, buckets, keys, colors, opts) {
    opts = opts || {};
    const { svg, w, h } = svgFor(el, opts.height || 180);
    const L = 36, R = 10, T = 10, B = 22;
    if (!buckets.length) return;
    const tot = buckets.map((b) => keys.reduce((a, k) => a + (b.values[k] || 0), 0));
    const vmax = Math.max(1, ...tot);
    const n = buckets.length, bw = (w - L - R) / n;
    const Y = (v) => T + (h - T - B) * (1 - v / vmax);
    for (const v of [0, Math.round(vmax / 2), vmax]) {
      s("line", { x1: L, x2: w - R, y1: Y(v), y2: Y(v), class: "grid" }, svg);
      text(svg, L - 6, Y(v) + 4, String(v), { class: "axis", "text-anchor": "end" });
    }
    buckets.forEach((b, i) => {
      let acc = 0;
      const x = L + i * bw + Math.max(0.5, bw * 0.12);
      const g = s("g", {}, svg);
      for (const k of keys) {
        const v = b.values[k] || 0;
        if (!v) continue;
        s("rect", { x, y: Y(acc + v), width: Math.max(1, bw * 0.76), height: Y(acc) - Y(acc + v), fill: colors[k], rx: 1 }, g);
        acc += v;
      }
      if (acc) title(g, new Date(b.t).toLocaleString(opts.lang, { hour12: false }) + "\n" +
        keys.filter((k) => b.values[k]).map((k) => `${opts.label ? opts.label(k) : k}: ${b.values[k]}`).join("\n"));
    });
    const t0 = buckets[0].t, t1 = buckets[n - 1].t;
    for (let i = 0; i <= 4; i++) {
      const idx = Math.min(n - 1, Math.round((n - 1) * i / 4));
      text(svg, L + idx * bw + bw / 2, h - 6, fmtTick(buckets[idx].t, t1 - t0, opts.lang), { class: "axis", "text-anchor": "middle" });
    }
  }

  // ---- sparkline ------------------------------------------------------------------------------------
  function spark(el, values, opts) {
    opts = opts || {};
    el.textContent = "";
    const w = opts.width || 120, h = opts.height || 26;
    const svg = s("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, class: "spark" }, el);
    if (!values || !values.length) return;
    const min = opts.min != null ? opts.min : Math.min(...values), max = opts.max != null ? opts.max : Math.max(...values);
    const X = (i) => values.length > 1 ? 1 + (w - 2) * i / (values.length - 1) : w / 2;
    const Y = (v) => 2 + (h - 4) * (1 - (v - min) / ((max - min) || 1));
    const d = values.map((v, i) => `${i ? "L" : "M"}${X(i).toFixed(1)},${Y(v).toFixed(1)}`).join("");
    const c = opts.color || BAND_COLOR[bandOf(values[values.length - 1])];
    s("path", { d: `${d}L${X(values.length - 1)},${h}L${X(0)},${h}Z`, fill: c, opacity: 0.15 }, svg);
    s("path", { d, fill: "none", stroke: c, "stroke-width": 1.6 }, svg);
  }

  // ---- donut ---------------------------------------------------------------------------------------
  function donut(el, items, opts) {
    opts = opts || {};
    el.textContent = "";
    const W = 170, r = 62, cx = 85, cy = 85;
    const svg = s("svg", { viewBox: `0 0 ${W} ${W}`, class: "donut" }, el);
    const total = items.reduce((a, i) => a + i.value, 0);
    s("circle", { cx, cy, r, fill: "none", stroke: "#1e2a44", "stroke-width": 22 }, svg);
    let a = -Math.PI / 2;
    for (const it of items) {
      if (!it.value) continue;
      const da = 2 * Math.PI * it.value / total;
      const large = da > Math.PI ? 1 : 0;
      const x0 = cx + r * Math.cos(a), y0 = cy + r * Math.sin(a);
      const x1 = cx + r * Math.cos(a + da - 1e-4), y1 = cy + r * Math.sin(a + da - 1e-4);
      title(s("path", { d: `M${x0},${y0} A${r},${r} 0 ${large} 1 ${x1},${y1}`, stroke: it.color, "stroke-width": 22, fill: "none" }, svg), `${it.label}: ${it.value}`);
      a += da;
    }
    text(svg, cx, cy + 4, String(total), { class: "donut-num", "text-anchor": "middle" });
    if (opts.label) text(svg, cx, cy + 22, opts.label, { class: "axis", "text-anchor": "middle" });
  }

  // ---- world map: land dots, source points, arcs to the protected networks ------------------------------
  function worldMap(el, points, home, opts) {
    opts = opts || {};
    const world = window.TAISHI_WORLD;
    const { svg, w } = svgFor(el, opts.height || 300);
    const h = opts.height || 300;
    const top = world ? world.top : 84, bottom = world ? world.top - world.step * world.rows.length : -58;
    const X = (lon) => (lon + 180) / 360 * w;
    const Y = (lat) => (top - lat) / (top - bottom) * h;
    if (world) {
      const step = world.step, g = s("g", { class: "land" }, svg);
      const rr = Math.max(0.9, Math.min(w / 360 * step, h / (top - bottom) * step) * 0.36);
      world.rows.forEach((row, i) => {
        const lat = world.top - (i + 0.5) * step;
        for (let j = 0; j < row.length; j++) if (row.charCodeAt(j) === 49) s("circle", { cx: X(world.left + (j + 0.5) * step).toFixed(1), cy: Y(lat).toFixed(1), r: rr.toFixed(2) }, g);
      });
    }
    const maxc = Math.max(1, ...points.map((p) => p.count));
    const hx = home ? X(home.lon) : null, hy = home ? Y(home.lat) : null;
    const arcs = s("g", { class: "arcs" }, svg);
    for (const p of points) {
      if (p.kind === "internal" || !home) continue;
      const x = X(p.lon), y = Y(p.lat);
      const mx = (x + hx) / 2, my = Math.min(y, hy) - Math.abs(x - hx) * 0.25 - 20;
      s("path", { d: `M${x},${y} Q${mx},${my} ${hx},${hy}`, class: "arc" }, arcs);
    }
    if (home) {
      s("circle", { cx: hx, cy: hy, r: 14, class: "home-ring" }, svg);
      title(s("circle", { cx: hx, cy: hy, r: 6, class: "home" }, svg), opts.homeLabel || "home");
    }
    for (const p of points) {
      const x = X(p.lon), y = Y(p.lat), r = 4 + 10 * Math.sqrt(p.count / maxc);
      const g = s("g", { class: "pt " + (p.kind === "internal" ? "internal" : "public") }, svg);
      s("circle", { cx: x, cy: y, r: r + 5, class: "halo" }, g);
      s("circle", { cx: x, cy: y, r, class: "core" }, g);
      title(g, `${opts.name ? opts.name(p) : p.name}: ${p.count}\n${(p.ips || []).map((i) => `${i.ip} (${i.count})`).join("\n")}`);
      if (opts.labels !== false) text(svg, x + r + 4, y + 4, `${opts.name ? opts.name(p) : p.name} ${p.count}`, { class: "pt-label" });
    }
  }

  // ---- heat cells colour ---------------------------------------------------------------------------
  function heat(v, max) {
    if (!v) return "rgba(56,189,248,0.05)";
    const f = Math.min(1, Math.log(1 + v) / Math.log(1 + Math.max(1, max)));
    const r = Math.round(56 + (239 - 56) * f), g = Math.round(189 + (68 - 189) * f), b = Math.round(248 + (68 - 248) * f);
    return `rgba(${r},${g},${b},${0.25 + 0.65 * f})`;
  }

  // ---- traceback graph: layered left to right by the order of attack ---------------------------------
  const KIND_COLOR = { ip: "#38bdf8", host: "#a78bfa", user: "#f472b6", asset: "#22c55e", domain: "#fbbf24" };
  function graph(el, nodes, edges, opts) {
    opts = opts || {};
    el.textContent = "";
    if (!nodes || !nodes.length) return false;
    const ids = new Map(nodes.map((n, i) => [String(n.id), i]));
    const es = (edges || []).filter((e) => ids.has(String(e.source)) && ids.has(String(e.target)) && e.source !== e.target);
    // columns: the kill-chain stage of each node when the graph has them (the incident builder's
    // "stage"), else the longest time-ordered chain of edges reaching the node
    const layer = new Array(nodes.length).fill(0);
    const order = opts.stages || [];
    const staged = nodes.filter((n) => n.stage).length >= nodes.length / 2;
    let heads = null;
    if (staged) {
      const present = [...new Set(nodes.map((n) => n.stage).filter(Boolean))]
        .sort((a, b) => ((order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99)) || a.localeCompare(b));
      nodes.forEach((n, i) => { layer[i] = n.stage ? present.indexOf(n.stage) : -1; });
      nodes.forEach((n, i) => { // no stage: beside the node it is reached from
        if (layer[i] >= 0) return;
        const from = es.filter((e) => ids.get(String(e.target)) === i).map((e) => layer[ids.get(String(e.source))]).filter((x) => x >= 0);
        layer[i] = from.length ? Math.min(present.length - 1, Math.max(...from) + (from.length ? 0 : 0)) : 0;
      });
      heads = present;
    } else {
      const sorted = es.slice().sort((a, b) => String(a.time || "").localeCompare(String(b.time || "")));
      for (let pass = 0; pass < nodes.length; pass++) {
        let changed = false;
        for (const e of sorted) {
          const a = ids.get(String(e.source)), b = ids.get(String(e.target));
          if (layer[b] < layer[a] + 1 && layer[a] + 1 < nodes.length) { layer[b] = layer[a] + 1; changed = true; }
        }
        if (!changed) break;
      }
    }
    const nl = Math.max(...layer) + 1;
    const cols = Array.from({ length: nl }, () => []);
    nodes.forEach((n, i) => cols[layer[i]].push(i));
    // order within a column by the mean row of its predecessors (one sweep), then label
    const row = new Array(nodes.length).fill(0);
    cols.forEach((c, ci) => {
      c.sort((a, b) => {
        const pa = es.filter((e) => ids.get(String(e.target)) === a && layer[ids.get(String(e.source))] < ci).map((e) => row[ids.get(String(e.source))]);
        const pb = es.filter((e) => ids.get(String(e.target)) === b && layer[ids.get(String(e.source))] < ci).map((e) => row[ids.get(String(e.source))]);
        const ma = pa.length ? pa.reduce((x, y) => x + y, 0) / pa.length : 0, mb = pb.length ? pb.reduce((x, y) => x + y, 0) / pb.length : 0;
        return ma - mb || String(nodes[a].label || nodes[a].id).localeCompare(String(nodes[b].label || nodes[b].id));
      });
      c.forEach((i, k) => { row[i] = k; });
    });
    const maxRows = Math.max(...cols.map((c) => c.length));
    const TOP = heads ? 34 : 0;
    const W = Math.max(el.clientWidth || 900, 190 * nl), H = Math.max(260, 96 * maxRows + 50 + TOP);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", height: H, class: "tgraph" }, el);
    const defs = s("defs", {}, svg);
    for (const [k, c] of [["alert", "#f97316"], ["connection", "#64748b"], ["path", "#ef4444"]]) {
      const m = s("marker", { id: "arr-" + k, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, defs);
      s("path", { d: "M0,0 L10,5 L0,10 z", fill: c }, m);
    }
    const colW = W / nl;
    if (heads) heads.forEach((hd, i) => {
      s("rect", { x: colW * i + 6, y: 4, width: colW - 12, height: 22, rx: 4, class: "stage-head" }, svg);
      text(svg, colW * i + colW / 2, 19, opts.tactic ? opts.tactic(hd) : hd, { class: "stage-label", "text-anchor": "middle" });
      if (i) s("line", { x1: colW * i, x2: colW * i, y1: 30, y2: H - 4, class: "stage-sep" }, svg);
    });
    const pos = nodes.map((n, i) => {
      const c = cols[layer[i]];
      const gap = (H - TOP - 10) / (c.length + 1);
      return [colW * layer[i] + colW / 2, TOP + gap * (row[i] + 1)];
    });
    // edges: parallel ones between the same pair are bundled with a count
    const bundles = new Map();
    for (const e of es) {
      const key = `${e.source}\u0000${e.target}\u0000${e.kind || "alert"}`;
      const b = bundles.get(key) || { e, n: 0, rules: new Set(), tactics: new Set(), path: false };
      b.n += Number(e.count) || 1;
      b.path = b.path || !!e.on_path;
      if (e.rule) b.rules.add(e.rule);
      if (e.tactic) b.tactics.add(e.tactic);
      bundles.set(key, b);
    }
    const eg = s("g", {}, svg);
    const R = 18;
    for (const { e, n, rules, tactics, path } of bundles.values()) {
      const a = ids.get(String(e.source)), b = ids.get(String(e.target));
      let [x0, y0] = pos[a], [x1, y1] = pos[b];
      const dx = x1 - x0, dy = y1 - y0, len = Math.hypot(dx, dy) || 1;
      x0 += dx / len * R; y0 += dy / len * R; x1 -= dx / len * (R + 3); y1 -= dy / len * (R + 3);
      const kind = e.kind === "connection" ? "connection" : "alert";
      const bend = kind === "alert" ? 0.12 : -0.12;
      const mx = (x0 + x1) / 2 - dy * bend, my = (y0 + y1) / 2 + dx * bend;
      const p = s("path", { d: `M${x0},${y0} Q${mx},${my} ${x1},${y1}`, class: "edge " + kind + (path ? " on-path" : ""), "marker-end": `url(#arr-${path ? "path" : kind})`, "stroke-width": kind === "connection" ? 1 : Math.min(4, 1.2 + Math.log2(n) / 3) + (path ? 0.8 : 0) }, eg);
      title(p, [...rules].join("\n") + (tactics.size ? "\n[" + [...tactics].join(", ") + "]" : "") + (n > 1 ? `\n×${n}` : ""));
      const lab = [...tactics][0] || [...rules][0];
      if (lab && kind === "alert" && (path || !opts.pathLabelsOnly)) text(eg, mx, my - 4, (opts.tactic ? opts.tactic(lab) : lab) + (n > 1 ? ` ×${n}` : ""), { class: "edge-label", "text-anchor": "middle" });
    }
    const ng = s("g", {}, svg);
    nodes.forEach((n, i) => {
      const [x, y] = pos[i];
      const g = s("g", { class: "node", "data-id": n.id, tabindex: 0 }, ng);
      const col = KIND_COLOR[n.type] || "#94a3b8";
      if (n.asset && n.asset.id) s("circle", { cx: x, cy: y, r: R + 5, class: "asset-ring" + (Number(n.asset.level) >= 4 ? " l4" : "") }, g);
      s("circle", { cx: x, cy: y, r: R, fill: "#0f172a", stroke: col, "stroke-width": n.role === "source" ? 3.5 : 2 }, g);
      const short = { ip: "IP", host: "HOST", user: "USER", asset: "CII", domain: "DNS" }[n.type] || String(n.type || "?").slice(0, 4).toUpperCase();
      text(g, x, y + 4, short, { class: "node-type", "text-anchor": "middle", fill: col });
      const lbl = String(n.label || n.id), m = /^(.+) \((.+)\)$/.exec(lbl);
      text(g, x, y + R + 17, m ? m[1] : lbl, { class: "node-label", "text-anchor": "middle" });
      if (m) text(g, x, y + R + 30, m[2], { class: "node-sub", "text-anchor": "middle" });
      const extra = Object.entries(n).filter(([k]) => !["id", "label", "type"].includes(k)).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
      title(g, [String(n.label || n.id), n.type, ...extra].join("\n"));
    });
    return true;
  }

  window.TaishiCharts = { gauge, area, stacked, spark, donut, worldMap, graph, heat, bandOf, BAND_COLOR, KIND_COLOR };
})();
