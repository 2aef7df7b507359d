// Taishi console. Plain JS, no build step, no external code.
// The API token lives in sessionStorage (this tab only) and goes out as
// "Authorization: Bearer"; no cookies are used. Server data is only ever put
// into the page with textContent (or SVG attributes), never as HTML.
//
// Pages (hash routes): #/overview, #/alerts, #/incidents[/ID], #/flows, #/assets, #/compliance.
// Each page has mount() (static skeleton) and load() (fetch + fill); the live timer re-runs
// load() of the page on screen. What a role may do comes from GET /me's permissions.
"use strict";

(function () {
  const API = "/api/v1";
  const POLL_MS = 10000;
  const TOKEN_KEY = "taishi.token";
  const LANG_KEY = "taishi.lang";
  const LEVELS = ["critical", "high", "medium", "low", "informational"];
  const LEVEL_COLOR = { critical: "#ef4444", high: "#f97316", medium: "#eab308", low: "#3b82f6", informational: "#64748b" };
  const TRIAGE = ["open", "acknowledged", "closed", "false_positive"];
  const INC_STATUS = ["new", "acknowledged", "in_progress", "resolved", "false_positive"];
  const TACTICS = ["Reconnaissance", "Resource Development", "Initial Access", "Execution", "Persistence", "Privilege Escalation",
    "Defense Evasion", "Credential Access", "Discovery", "Lateral Movement", "Collection", "Command and Control", "Exfiltration", "Impact"];
  const I18N = JSON.parse(document.getElementById("i18n").textContent);
  const C = window.TaishiCharts;
  const $ = (id) => document.getElementById(id);

  const state = {
    lang: pickLang(), me: null, timer: null, live: true, since: "24h",
    page: null, arg: null, view: null, gen: 0, compTab: "report", alertQ: "", alertLevel: "", alertStatus: "",
  };

  // ---- i18n ------------------------------------------------------------------------------------
  function pickLang() {
    const saved = localStorage.getItem(LANG_KEY); // a preference, not a secret
    if (saved && saved in I18N) return saved;
    return (navigator.language || "").toLowerCase().startsWith("zh") ? "zh-CN" : "en";
  }
  function t(key, vars) {
    let s = (I18N[state.lang] && I18N[state.lang][key]) || I18N.en[key];
    if (s === undefined) s = key.includes(".") ? key.slice(key.indexOf(".") + 1) : key;
    if (vars) for (const [k, v] of Object.entries(vars)) s = s.split("{" + k + "}").join(String(v));
    return s;
  }
  const has = (key) => !!(I18N[state.lang] && I18N[state.lang][key]) || !!I18N.en[key];
  function applyStatic() {
    document.documentElement.lang = state.lang;
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.title = t("app.title") + " · " + t("app.subtitle");
    renderWho();
    renderLive();
  }
  const tactic = (name) => (has("tactic." + name) ? t("tactic." + name) : name);
  const sector = (name) => (name && has("sector." + name) ? t("sector." + name) : name || "–");

  // ---- DOM helpers --------------------------------------------------------------------------------
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k === "style") e.style.cssText = v; // CSSOM, which the CSP (style-src 'self') allows; a style attribute it would block
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of kids.flat(Infinity)) if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }
  const num = (n) => (n == null ? "–" : Number(n).toLocaleString(state.lang));
  function bytes(n) {
    if (n == null) return "–";
    const u = ["B", "KB", "MB", "GB", "TB"];
    let i = 0, v = Number(n);
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : String(v)) + " " + u[i];
  }
  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString(state.lang, { hour12: false, month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  function level(lv) {
    const l = LEVELS.includes(lv) ? lv : "informational";
    return h("span", { class: "level " + l, text: t("level." + l) });
  }
  const status = (st) => h("span", { class: "status " + st, text: t("status." + st) });
  const bandBadge = (b) => h("span", { class: "band " + b, text: t("band." + b) });
  function indexCell(v, band) {
    return h("span", { class: "idx " + (band || C.bandOf(v)) }, h("b", { text: v == null ? "–" : Number(v).toFixed(1) }));
  }
  function card(titleKey, body, opts) {
    opts = opts || {};
    return h("div", { class: "card " + (opts.cls || ""), id: opts.id },
      h("div", { class: "card-head" }, h("h2", { text: t(titleKey) }), opts.extra || null), body);
  }
  function empty(key) { return h("p", { class: "muted empty", text: t(key || "misc.none") }); }
  function table(cols, rows, opts) {
    opts = opts || {};
    const head = h("tr", {}, cols.map((c) => h("th", { class: c.cls || "", text: t(c.key) })));
    const body = h("tbody");
    for (const r of rows) {
      const tr = h("tr", opts.onclick ? { tabindex: 0, class: "clickable" } : {});
      for (const c of cols) {
        const v = c.render ? c.render(r) : r[c.field];
        tr.append(h("td", { class: c.cls || "" }, v instanceof Node ? v : (v == null ? "–" : String(v))));
      }
      if (opts.onclick) {
        tr.addEventListener("click", () => opts.onclick(r));
        tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") opts.onclick(r); });
      }
      if (opts.rowClass) tr.className += " " + opts.rowClass(r);
      body.append(tr);
    }
    const tbl = h("table", { class: "data " + (opts.cls || "") }, h("thead", {}, head), body);
    return rows.length ? tbl : h("div", {}, tbl, empty(opts.emptyKey));
  }
  function bars(items, opts) { // horizontal bar list: [{label, value, sub, color}]
    opts = opts || {};
    const max = Math.max(1, ...items.map((i) => i.value));
    return h("div", { class: "bars" }, items.map((i) => h("div", { class: "bar-row", title: i.title || "" },
      h("span", { class: "bar-label" }, i.label instanceof Node ? i.label : h("span", { text: i.label })),
      h("span", { class: "bar-track" }, h("span", { class: "bar-fill", style: `width:${(100 * i.value / max).toFixed(1)}%;background:${i.color || "#38bdf8"}` })),
      h("span", { class: "bar-value", text: opts.fmt ? opts.fmt(i.value) : num(i.value) }))));
  }
  function kpi(labelKey, value, cls, sub) {
    return h("div", { class: "kpi " + (cls || "") }, h("span", { class: "kpi-label", text: t(labelKey) }),
      h("span", { class: "kpi-value", text: value }), sub ? h("span", { class: "kpi-sub", text: sub }) : null);
  }
  function geoText(g) {
    if (!g) return "–";
    if (g.kind === "public" && g.country_iso_code) return (state.lang === "zh-CN" ? g.country_name_zh || g.country_name : g.country_name) + " (" + g.country_iso_code + ")";
    return t("geo." + g.kind) + (g.reason ? " · " + g.reason : "");
  }
  function showError(id, msg) { const el = $(id); el.textContent = msg || ""; el.hidden = !msg; }

  // ---- API ------------------------------------------------------------------------------------------
  class ApiError extends Error { constructor(status, detail) { super(detail); this.status = status; } }
  async function api(path, opts = {}) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    if (token) headers.Authorization = "Bearer " + token;
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(API + path, {
      method: opts.method || "GET", headers, credentials: "omit", cache: "no-store",
      body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
    });
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty body */ }
    if (res.status === 401 && !opts.login) { logout(t("login.expired")); throw new ApiError(401, "unauthorized"); }
    if (!res.ok) {
      let detail = data && data.detail;
      if (typeof detail !== "string") detail = detail ? JSON.stringify(detail) : res.statusText;
      throw new ApiError(res.status, detail);
    }
    return data;
  }
  const can = (perm) => !!(state.me && state.me.permissions.includes(perm));
  function canIncidentWorkflow() {
    const p = (state.me && state.me.permissions) || [];
    const inc = p.filter((x) => x.startsWith("incidents:"));
    if (inc.length) return inc.some((x) => !x.endsWith(":read"));
    return can("alerts:triage");
  }
  const qs = (o) => new URLSearchParams(Object.entries(o).filter(([, v]) => v !== "" && v != null)).toString();

  // ---- session ------------------------------------------------------------------------------------------
  async function login(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    try { state.me = await api("/me", { login: true }); } catch (e) { sessionStorage.removeItem(TOKEN_KEY); throw e; }
    showApp();
  }
  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    stopPolling();
    closeDrawer();
    $("page").hidden = true; $("nav").hidden = true; $("logout").hidden = true; $("whoami").hidden = true;
    $("login-view").hidden = false;
    $("token").value = "";
    showError("login-error", message || "");
    $("token").focus();
  }
  function showApp() {
    $("login-view").hidden = true;
    $("nav").hidden = false; $("page").hidden = false; $("logout").hidden = false;
    renderWho();
    route();
    startPolling();
  }
  function renderWho() {
    const el = $("whoami");
    el.textContent = "";
    if (!state.me) { el.hidden = true; return; }
    el.append(document.createTextNode(state.me.name), h("span", { class: "role", text: t("role." + state.me.role) }));
    el.hidden = false;
  }
  function renderLive() {
    const b = $("live");
    b.classList.toggle("on", state.live);
    b.setAttribute("aria-pressed", String(state.live));
    $("live-label").textContent = t(state.live ? "live.on" : "live.off");
  }
  function stamp() { $("updated").textContent = t("live.updated", { t: new Date().toLocaleTimeString(state.lang, { hour12: false }) }); }
  function startPolling() {
    stopPolling();
    // the live refresh skips a beat while a request is still out (a slow server is not flooded)
    if (state.live) state.timer = setInterval(() => { if (state.view && state.view.live && !document.hidden && !state.inflight) reload(); }, POLL_MS);
  }
  function stopPolling() { if (state.timer) clearInterval(state.timer); state.timer = null; }

  // ---- router -----------------------------------------------------------------------------------------------
  function route() {
    if (!state.me) return;
    const m = /^#\/([a-z]+)(?:\/(.+))?$/.exec(location.hash || "");
    const page = m && PAGES[m[1]] ? m[1] : "overview";
    state.page = page;
    state.arg = m && m[2] ? decodeURIComponent(m[2]) : null;
    document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
    mount();
  }
  function mount() {
    const root = $("page");
    root.textContent = "";
    showError("page-error", "");
    state.gen += 1;
    state.view = PAGES[state.page](state.arg);
    root.dataset.page = state.page;
    root.append(state.view.el);
    reload();
  }
  // Each load has a sequence number: only the newest one may draw, so a slow answer to an older
  // request (the live refresh, a previous search) never overwrites a newer one.
  async function reload() {
    const gen = state.gen, view = state.view, seq = (state.seq = (state.seq || 0) + 1);
    const current = () => gen === state.gen && seq === state.seq;
    state.inflight = (state.inflight || 0) + 1;
    try {
      await view.load(current);
      if (current()) { stamp(); showError("page-error", ""); }
    } catch (e) {
      if (!current() || e.status === 401) return;
      showError("page-error", (e.status === 400 ? t("error.query") : t("error.generic")) + ": " + e.message);
    } finally {
      state.inflight -= 1;
    }
  }
  function fill(id, ...kids) {
    const el = document.getElementById(id);
    if (!el) return null;
    el.textContent = "";
    el.append(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
    return el;
  }

  // ==========================================================================================================
  // Overview
  // ==========================================================================================================
  function overviewPage() {
    const el = h("div", { class: "overview" },
      h("div", { class: "kpis", id: "ov-kpis" }),
      h("div", { class: "grid g-posture" },
        card("ov.posture", h("div", {}, h("div", { id: "ov-gauge", class: "gauge-box" }), h("p", { class: "muted small", text: t("ov.posture.help") })), { cls: "posture-card" }),
        card("ov.trend", h("div", { id: "ov-trend" }), { extra: h("span", { id: "ov-trend-sub", class: "muted" }) }),
        card("ov.worst", h("div", { id: "ov-worst" }))),
      h("div", { class: "grid g-2-1" },
        card("ov.severity", h("div", {}, h("div", { id: "ov-sev" }), h("div", { id: "ov-sev-legend", class: "legend" }))),
        card("ov.mix", h("div", { class: "donut-box" }, h("div", { id: "ov-donut" }), h("div", { id: "ov-donut-legend", class: "legend col" })), { cls: "donut-card" })),
      h("div", { class: "grid g-2-1" },
        card("ov.map", h("div", {}, h("div", { id: "ov-map", class: "map" }), h("div", { id: "ov-map-note", class: "map-note" }))),
        card("ov.sources", h("div", { id: "ov-sources" }))),
      h("div", { class: "grid g-1" }, card("ov.heat", h("div", { id: "ov-heat", class: "heat-wrap" }))),
      h("div", { class: "grid g-3" },
        card("ov.targets", h("div", { id: "ov-targets" })),
        card("ov.sectors", h("div", {}, h("div", { id: "ov-sectors" }), h("h3", { text: t("ov.regions") }), h("div", { id: "ov-regions" }))),
        card("ov.collectors", h("div", { id: "ov-collectors" }))));
    async function load(current) {
      const [d, inc] = await Promise.all([
        api("/views/overview?" + qs({ since: state.since })),
        api("/incidents?" + qs({ limit: 500 })).catch(() => null),
      ]);
      if (!current()) return;
      const lv = d.alerts_by_level;
      const openInc = inc && inc.items ? inc.items.filter((i) => !["resolved", "false_positive"].includes(i.status)).length : null;
      const worst = d.posture.worst_assets.filter((a) => !String(a.key).startsWith("ip:"));
      const atRisk = worst.filter((a) => a.index < 75).length;
      fill("ov-kpis",
        kpi("ov.posture", Number(d.posture.index).toFixed(1), "band-" + d.posture.band, t("band." + d.posture.band)),
        kpi("kpi.alerts", num(d.totals.alerts)),
        kpi("kpi.critical_high", num((lv.critical || 0) + (lv.high || 0)), "crit"),
        kpi("kpi.incidents", openInc == null ? "–" : num(openInc), openInc ? "warn" : ""),
        kpi("kpi.assets_risk", num(atRisk), atRisk ? "warn" : ""),
        kpi("kpi.events", num(d.totals.events)),
        kpi("kpi.deadletters", num(d.totals.deadletters)));
      C.gauge($("ov-gauge"), d.posture.index, { label: t("band." + d.posture.band) });
      C.area($("ov-trend"), d.posture.series.map((p) => ({ t: Date.parse(p.time), v: p.index })),
        { min: 0, max: 100, bands: true, yticks: [0, 50, 75, 90, 100], lang: state.lang, color: "#38bdf8", fmtY: (v) => Number(v).toFixed(0), height: 200 });
      const lows = d.posture.series.reduce((m, p) => (p.index < m.index ? p : m), d.posture.series[0] || { index: 100 });
      $("ov-trend-sub").textContent = lows && lows.time ? `min ${Number(lows.index).toFixed(1)} @ ${fmtTime(lows.time)}` : "";
      fill("ov-worst", worst.length ? table([
        { key: "col.asset", render: (r) => h("a", { href: "#/assets", text: r.name }) },
        { key: "col.mlps", render: (r) => (r.mlps_level ? "L" + r.mlps_level : "–") },
        { key: "col.alerts", field: "alerts", cls: "num" },
        { key: "col.index", render: (r) => indexCell(r.index, r.band), cls: "num" },
      ], worst, { cls: "compact" }) : empty());
      const buckets = d.alerts_histogram.buckets.map((b) => ({ t: Date.parse(b.time), values: b }));
      C.stacked($("ov-sev"), buckets, LEVELS.slice().reverse(), LEVEL_COLOR, { lang: state.lang, label: (k) => t("level." + k), height: 200 });
      fill("ov-sev-legend", LEVELS.map((l) => h("span", { class: "lg" }, h("i", { style: `background:${LEVEL_COLOR[l]}` }), `${t("level." + l)} ${num(lv[l] || 0)}`)));
      C.donut($("ov-donut"), LEVELS.map((l) => ({ label: t("level." + l), value: lv[l] || 0, color: LEVEL_COLOR[l] })), { label: t("kpi.alerts") });
      fill("ov-donut-legend", LEVELS.filter((l) => lv[l]).map((l) => h("span", { class: "lg" }, h("i", { style: `background:${LEVEL_COLOR[l]}` }), `${t("level." + l)}  ${num(lv[l])}`)));
      const mp = d.map;
      C.worldMap($("ov-map"), mp.points, mp.home, { height: 300, homeLabel: t("map.internal"),
        name: (p) => (p.kind === "internal" ? t("map.internal") : (state.lang === "zh-CN" ? p.name_zh : p.name)) });
      fill("ov-map-note",
        mp.unplaced.length ? h("span", { class: "muted" }, t("map.unplaced") + ": ",
          mp.unplaced.map((u) => h("span", { class: "chip", title: u.ips.map((i) => i.ip).join(", ") }, `${u.reason} · ${u.ips.map((i) => i.ip).slice(0, 3).join(", ")} (${num(u.count)})`))) : null,
        mp.available ? null : h("span", { class: "muted" }, " " + t("map.nodb")),
        h("span", { class: "muted tiny attribution", text: mp.source }));
      fill("ov-sources", d.top_sources.length ? table([
        { key: "col.ip", render: (r) => h("a", { class: "mono", href: "#/alerts", onclick: () => { state.alertQ = `source.ip:"${r.ip}"`; }, text: r.ip }) },
        { key: "col.where", render: (r) => h("span", { class: "geo " + (r.geo ? r.geo.kind : "") }, r.asset ? (r.asset.hostname || r.asset.asset_id) + " · " + t("geo.internal") : geoText(r.geo)) },
        { key: "col.count", field: "count", cls: "num" },
      ], d.top_sources, { cls: "compact" }) : empty());
      renderHeat(d.attack_matrix);
      fill("ov-targets", d.top_targets.length ? bars(d.top_targets.map((r) => ({
        label: h("span", {}, h("b", { text: r.asset.hostname || r.asset.asset_id || r.ip }), h("span", { class: "muted", text: ` ${r.ip} · L${r.asset.mlps_level || "?"} · ${sector(r.asset.sector)}` })),
        value: r.count, color: "#f97316" }))) : empty());
      const postureBars = (rows, nameFn) => (rows.length ? bars(rows.map((r) => ({
        label: nameFn(r), value: r.index, color: C.BAND_COLOR[r.band], title: `${r.alerts} alerts` })), { fmt: (v) => Number(v).toFixed(1) }) : empty());
      fill("ov-sectors", postureBars(d.posture.sectors, (r) => sector(r.name)));
      fill("ov-regions", postureBars(d.posture.regions, (r) => r.name));
      const col = d.collectors;
      fill("ov-collectors",
        table([
          { key: "col.dataset", field: "dataset", cls: "mono" },
          { key: "col.events", field: "events", cls: "num", render: (r) => num(r.events) },
          { key: "col.last_event", render: (r) => fmtTime(r.last_event) },
          { key: "col.status", render: (r) => h("span", { class: "health " + (r.events ? "ok" : "idle"), text: r.events ? "ok" : "silent" }) },
        ], col.sources.slice(0, 8), { cls: "compact" }),
        table([
          { key: "col.topic", field: "topic", cls: "mono" },
          { key: "col.records", render: (r) => num(r.records), cls: "num" },
          { key: "col.lag", render: (r) => Object.entries(r.lag).map(([g, n]) => `${g}:${n}`).join(" ") || "–" },
          { key: "col.status", render: (r) => h("span", { class: "health " + r.status, text: r.status }) },
        ], col.topics, { cls: "compact" }));
    }
    function renderHeat(m) {
      const cols = m.order.filter((tn) => m.tactics.some((x) => x.tactic === tn) || ["Initial Access", "Execution", "Persistence", "Impact"].includes(tn));
      const byT = Object.fromEntries(m.tactics.map((x) => [x.tactic, x]));
      const max = Math.max(1, ...m.tactics.flatMap((x) => x.techniques.map((te) => te.count)));
      const grid = h("div", { class: "heat", style: `grid-template-columns: repeat(${cols.length}, minmax(92px, 1fr))` });
      for (const tn of cols) {
        const x = byT[tn];
        grid.append(h("div", { class: "heat-col" + (x ? " hit" : "") },
          h("div", { class: "heat-head", title: tn }, h("span", { text: tactic(tn) }), h("b", { text: x ? num(x.count) : "0" })),
          (x ? x.techniques : []).map((te) => h("div", { class: "heat-cell", style: `background:${C.heat(te.count, max)}`, title: `${tn} · ${te.id}: ${te.count}` },
            h("span", { class: "mono", text: te.id }), h("b", { text: num(te.count) })))));
      }
      fill("ov-heat", grid);
    }
    return { el, load, live: true };
  }

  // ==========================================================================================================
  // Alerts
  // ==========================================================================================================
  function alertsPage() {
    const q = h("input", { type: "search", id: "alerts-q", class: "mono", spellcheck: "false", placeholder: t("alerts.placeholder"), value: state.alertQ });
    const lvSel = h("select", { id: "alerts-level", class: "ctl" }, h("option", { value: "", text: "≥ " + t("level.informational") }),
      LEVELS.slice(0, 4).map((l) => h("option", { value: l, text: "≥ " + t("level." + l), selected: state.alertLevel === l })));
    const stSel = h("select", { id: "alerts-status", class: "ctl" }, h("option", { value: "", text: t("alerts.allstatus") }),
      TRIAGE.map((s) => h("option", { value: s, text: t("status." + s), selected: state.alertStatus === s })));
    const form = h("form", { class: "toolbar", id: "alerts-form", onsubmit: (ev) => { ev.preventDefault(); state.alertQ = q.value.trim(); reload(); } },
      q, lvSel, stSel, h("button", { type: "submit", class: "btn btn-primary", text: t("search.submit") }),
      h("button", { type: "button", class: "btn", text: t("search.clear"), onclick: () => { q.value = ""; state.alertQ = ""; lvSel.value = ""; stSel.value = ""; state.alertLevel = ""; state.alertStatus = ""; reload(); } }));
    lvSel.addEventListener("change", () => { state.alertLevel = lvSel.value; reload(); });
    stSel.addEventListener("change", () => { state.alertStatus = stSel.value; reload(); });
    const el = h("div", {}, form, h("div", { class: "level-strip", id: "alerts-strip" }),
      card("alerts.title", h("div", { id: "alerts-table" }), { extra: h("span", { class: "muted", id: "alerts-meta" }) }));
    async function load(current) {
      const parts = [];
      if (state.alertQ) parts.push("(" + state.alertQ + ")");
      if (state.alertLevel) parts.push("rule.level:(" + LEVELS.slice(0, LEVELS.indexOf(state.alertLevel) + 1).join(" OR ") + ")");
      const d = await api("/alerts?" + qs({ since: state.since, q: parts.join(" AND "), limit: 500 }));
      if (current && !current()) return;
      let items = d.items;
      if (state.alertStatus) items = items.filter((a) => (a["taishi.triage.status"] || "open") === state.alertStatus);
      const counts = {};
      for (const a of d.items) counts[a["rule.level"]] = (counts[a["rule.level"]] || 0) + 1;
      fill("alerts-strip", LEVELS.map((l) => h("span", { class: "lvl-count " + l }, h("i"), t("level." + l) + " ", h("b", { text: num(counts[l] || 0) }))));
      $("alerts-meta").textContent = t("alerts.shown", { n: items.length, total: d.total });
      fill("alerts-table", table([
        { key: "col.time", render: (a) => fmtTime(a["@timestamp"]), cls: "time" },
        { key: "col.level", render: (a) => level(a["rule.level"]) },
        { key: "col.rule", render: (a) => h("span", { title: a["rule.id"] || "", text: a["rule.name"] || a["rule.id"] }) },
        { key: "col.flow", render: (a) => endpoint(a["source.ip"], a["source.port"]) + " → " + endpoint(a["destination.ip"], a["destination.port"]), cls: "mono" },
        { key: "col.technique", render: (a) => h("span", { title: (a["threat.tactic.name"] || []).map(tactic).join(", "), text: (a["threat.technique.id"] || []).join(", ") }), cls: "mono" },
        { key: "col.status", render: (a) => h("span", {}, status(a["taishi.triage.status"] || "open"), a["taishi.triage.assignee"] ? h("span", { class: "muted small", text: " → " + a["taishi.triage.assignee"] }) : null) },
      ], items, { onclick: (a) => openAlert(a.id), emptyKey: "alerts.none", cls: "alerts" }));
    }
    return { el, load, live: true };
  }
  function endpoint(ip, port) {
    if (!ip) return "–";
    return port == null ? ip : (ip.includes(":") ? "[" + ip + "]" : ip) + ":" + port;
  }

  // ---- alert drawer ------------------------------------------------------------------------------------------
  async function openAlert(id) {
    $("drawer").hidden = false;
    $("drawer").dataset.alert = id;
    $("drawer-title").textContent = t("detail.alert");
    const body = fill("drawer-body", h("p", { class: "muted", text: t("misc.loading") }));
    let d;
    try { d = await api("/alerts/" + encodeURIComponent(id)); } catch (e) { if (e.status !== 401) fill("drawer-body", h("p", { class: "error", text: t("error.generic") + ": " + e.message })); return; }
    if ($("drawer").dataset.alert !== id) return;
    const a = d.alert;
    $("drawer-title").textContent = a["rule.name"] || t("detail.alert");
    const kv = (k, v) => [h("dt", { text: k }), h("dd", {}, v instanceof Node ? v : String(v == null ? "–" : v))];
    const inc = h("div", { id: "alert-incident", class: "incident-link" }, h("span", { class: "muted", text: t("misc.loading") }));
    body.textContent = "";
    body.append(
      h("dl", { class: "kv" },
        kv(t("col.level"), level(a["rule.level"])), kv(t("col.status"), status(a["taishi.triage.status"] || "open")),
        kv(t("col.time"), fmtTime(a["@timestamp"])), kv(t("col.flow"), endpoint(a["source.ip"], a["source.port"]) + " → " + endpoint(a["destination.ip"], a["destination.port"])),
        kv("ATT&CK", (a["threat.technique.id"] || []).join(", ") + "  " + (a["threat.tactic.name"] || []).map(tactic).join(" · ")),
        kv(t("col.assignee"), a["taishi.triage.assignee"] || "–"), kv("id", h("span", { class: "mono small", text: a.id }))),
      a["rule.description"] ? h("p", { class: "desc", text: a["rule.description"] }) : null,
      h("h3", { text: t("detail.incident") }), inc,
      triageForm(a),
      h("h3", { text: t("detail.history") }), history(d.triage),
      h("details", {}, h("summary", { text: t("detail.events", { n: d.events.length }) }),
        d.events_truncated ? h("p", { class: "muted", text: t("detail.truncated") }) : null,
        h("pre", { class: "json", text: JSON.stringify(d.events, null, 2) })),
      h("details", {}, h("summary", { text: "JSON" }), h("pre", { class: "json", text: JSON.stringify(a, null, 2) })));
    try {
      const list = await api("/incidents?" + qs({ q: `alert.ids:"${id.replace(/["\\]/g, "\\$&")}"`, limit: 20 }));
      const hits = (list.items || []).filter((i) => (i["alert.ids"] || []).includes(id));
      fill("alert-incident", hits.length ? hits.map((i) => h("a", { class: "btn btn-link", href: "#/incidents/" + encodeURIComponent(i.id), onclick: () => closeDrawer() },
        level(i.severity), " " + (i.title || i.id) + " ", h("span", { class: "muted", text: t("detail.open_incident") }))) : h("span", { class: "muted", text: t("detail.noincident") }));
    } catch (e) {
      fill("alert-incident", h("span", { class: "muted", text: e.status === 404 ? t("inc.unavailable") : t("error.generic") + ": " + e.message }));
    }
  }
  function history(hist) {
    if (!hist || !hist.length) return h("p", { class: "muted", text: t("detail.nohistory") });
    return h("ul", { class: "history" }, hist.slice().reverse().map((x) => h("li", {},
      h("span", { class: "who", text: x.user || x.who || "" }),
      " · " + [fmtTime(x.time || x.at), x.status ? t("status." + x.status) : null, "assignee" in x ? "→ " + (x.assignee || "∅") : null,
        x.field ? `${x.field}: ${x.old == null ? "∅" : x.old} → ${x.new == null ? "∅" : x.new}` : null].filter(Boolean).join(" · "),
      x.note || x.text ? h("div", { class: "note", text: x.note || x.text }) : null)));
  }
  function triageForm(a) {
    if (!can("alerts:triage")) return h("p", { class: "readonly", id: "triage-readonly", text: t("triage.readonly", { role: t("role." + state.me.role) }) });
    const st = h("select", { id: "triage-status", class: "ctl" }, h("option", { value: "", text: t("triage.nochange") }), TRIAGE.map((s) => h("option", { value: s, text: t("status." + s) })));
    const asg = h("input", { type: "text", id: "triage-assignee", spellcheck: "false" });
    const note = h("textarea", { id: "triage-note", rows: 2, maxlength: 4000 });
    const msg = h("span", { id: "triage-msg", class: "muted" });
    const form = h("form", { id: "triage-form", class: "card triage" },
      h("h3", { text: t("triage.title") }),
      h("div", { class: "row" }, h("label", {}, h("span", { text: t("triage.status") }), st), h("label", {}, h("span", { text: t("triage.assignee") }), asg)),
      h("label", {}, h("span", { text: t("triage.note") }), note),
      h("div", { class: "row" }, h("button", { type: "submit", class: "btn btn-primary", text: t("triage.submit") }), msg));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {};
      if (st.value) body.status = st.value;
      if (note.value.trim()) body.note = note.value.trim();
      if (asg.value.trim()) body.assignee = asg.value.trim();
      if (!Object.keys(body).length) return;
      try {
        await api("/alerts/" + encodeURIComponent(a.id) + "/triage", { method: "POST", body });
        await openAlert(a.id);
        const m = $("triage-msg"); if (m) m.textContent = t("triage.done");
        if (state.page === "alerts") reload();
      } catch (e) {
        msg.textContent = e.status === 403 ? t("error.forbidden") : e.status === 401 ? "" : t("error.generic") + ": " + e.message;
      }
    });
    return form;
  }
  function closeDrawer() { $("drawer").hidden = true; delete $("drawer").dataset.alert; }

  // ==========================================================================================================
  // Incidents
  // ==========================================================================================================
  function incidentsPage(arg) {
    if (arg) return incidentDetail(arg);
    const el = h("div", {}, h("div", { class: "kpis", id: "inc-kpis" }),
      card("inc.title", h("div", { id: "inc-table" }), { extra: h("span", { class: "muted", id: "inc-meta" }) }),
      h("div", { class: "grid g-1" }, card("inc.preview", h("div", {}, h("div", { id: "inc-preview-title", class: "muted" }), h("div", { id: "inc-preview", class: "graph-box" })))));
    let previewed = null;
    async function load(current) {
      let d;
      try { d = await api("/incidents?" + qs({ since: state.since, limit: 500 })); } catch (e) {
        if (e.status === 404) { fill("inc-table", h("p", { class: "muted", text: t("inc.unavailable") })); return; }
        throw e;
      }
      if (!current()) return;
      $("inc-meta").textContent = num(d.count);
      const items = d.items || [];
      const by = (f) => items.filter(f).length;
      fill("inc-kpis", kpi("kpi.incidents", num(by((i) => !["resolved", "false_positive"].includes(i.status))), "warn"),
        kpi("status.new", num(by((i) => i.status === "new"))), kpi("status.in_progress", num(by((i) => ["acknowledged", "in_progress"].includes(i.status)))),
        kpi("level.critical", num(by((i) => i.severity === "critical")), "crit"),
        kpi("col.risk", items.length ? String(Math.round(Math.max(...items.map((i) => i.risk_score || 0)))) : "–"),
        kpi("col.alerts", num(items.reduce((a, i) => a + (i["alert.count"] || 0), 0))));
      const top = items.slice().sort((a, b) => (b.risk_score || 0) - (a.risk_score || 0) || String(b.last_seen).localeCompare(String(a.last_seen)))[0];
      if (top && previewed !== top.id + state.lang) {
        const full = await api("/incidents/" + encodeURIComponent(top.id)).catch(() => null);
        if (full && current()) {
          fill("inc-preview-title", h("a", { href: "#/incidents/" + encodeURIComponent(top.id) }, level(top.severity), " " + (top.title || top.id)));
          const g = full.graph || { nodes: [], edges: [] };
          C.graph($("inc-preview"), g.nodes, g.edges, { tactic, stages: TACTICS, pathLabelsOnly: g.edges.some((e) => e.on_path) });
          previewed = top.id + state.lang;
        }
      } else if (!top) fill("inc-preview", empty("inc.none"));
      fill("inc-table", table([
        { key: "col.severity", render: (i) => level(i.severity) },
        { key: "col.title", render: (i) => h("a", { href: "#/incidents/" + encodeURIComponent(i.id), text: i.title || i.id }) },
        { key: "col.status", render: (i) => status(i.status || "new") },
        { key: "col.risk", render: (i) => riskCell(i.risk_score), cls: "num" },
        { key: "col.tactics", render: (i) => chain(i["threat.tactic.name"] || [], true) },
        { key: "col.alerts", render: (i) => num(i["alert.count"]), cls: "num" },
        { key: "col.assignee", render: (i) => i.assignee || "–" },
        { key: "col.last_seen", render: (i) => fmtTime(i.last_seen), cls: "time" },
      ], d.items || [], { onclick: (i) => { location.hash = "#/incidents/" + encodeURIComponent(i.id); }, emptyKey: "inc.none" }));
    }
    return { el, load, live: true };
  }
  function riskCell(v) {
    const n = Number(v || 0);
    return h("span", { class: "risk" }, h("span", { class: "risk-bar" }, h("i", { style: `width:${Math.min(100, n)}%;background:${n >= 75 ? "#ef4444" : n >= 50 ? "#f97316" : n >= 25 ? "#eab308" : "#3b82f6"}` })), h("b", { text: String(Math.round(n)) }));
  }
  function chain(tactics, compact) {
    return h("span", { class: "chain" + (compact ? " compact" : "") }, tactics.map((x, i) => [i ? h("span", { class: "chain-sep", text: "›" }) : null, h("span", { class: "chain-step", text: tactic(x) })]));
  }
  function incidentDetail(id) {
    const el = h("div", { class: "incident" }, h("a", { href: "#/incidents", class: "back", text: t("inc.back") }), h("div", { id: "inc-head" }),
      h("div", { class: "grid g-1" },
        card("inc.graph", h("div", {}, h("div", { id: "inc-graph", class: "graph-box" }), h("div", { class: "legend", id: "inc-legend" })))),
      h("div", { class: "grid g-2" }, h("div", { id: "inc-workflow" }), card("inc.entities", h("div", { id: "inc-entities", class: "scroll" }))),
      h("div", { class: "grid g-2-1" }, card("inc.alerts", h("div", { id: "inc-alerts" })),
        card("inc.history", h("div", {}, h("div", { id: "inc-history" }), h("h3", { text: t("inc.notes") }), h("div", { id: "inc-notes" })))));
    let lastDrawn = null;
    async function load(current) {
      let inc;
      try { inc = await api("/incidents/" + encodeURIComponent(id)); } catch (e) {
        if (e.status === 404) { fill("inc-head", h("p", { class: "error", text: e.message === "Not Found" ? t("inc.unavailable") : e.message })); return; }
        throw e;
      }
      if (!current()) return;
      fill("inc-head", h("div", { class: "inc-head" },
        h("div", {}, h("h1", {}, level(inc.severity), " ", inc.title || inc.id),
          h("div", { class: "muted" }, h("span", { class: "mono", text: inc.id }), ` · ${fmtTime(inc.first_seen)} – ${fmtTime(inc.last_seen)}`)),
        h("div", { class: "inc-facts" }, kpi("col.status", t("status." + (inc.status || "new"))), kpi("col.risk", String(Math.round(inc.risk_score || 0)), (inc.risk_score || 0) >= 75 ? "crit" : ""),
          kpi("col.alerts", num(inc["alert.count"])), kpi("col.assignee", inc.assignee || "–"))),
        h("div", { class: "killchain" }, h("span", { class: "muted", text: t("inc.killchain") + ": " }), chain(inc["threat.tactic.name"] || []),
          h("span", { class: "mono muted", text: "  " + (inc["threat.technique.id"] || []).join(" ") })));
      const g = inc.graph || { nodes: [], edges: [] };
      const sig = JSON.stringify([g.nodes.length, g.edges.length, state.lang]);
      if (sig !== lastDrawn) {
        const ok = C.graph($("inc-graph"), g.nodes, g.edges, { tactic, stages: TACTICS, pathLabelsOnly: g.edges.some((e) => e.on_path) });
        if (!ok) fill("inc-graph", empty("inc.graph.empty"));
        fill("inc-legend", Object.entries(C.KIND_COLOR).map(([k, c]) => h("span", { class: "lg" }, h("i", { style: `background:${c}` }), k)),
          h("span", { class: "lg" }, h("i", { class: "line path" }), t("inc.legend.path")),
          h("span", { class: "lg" }, h("i", { class: "line alert" }), t("inc.legend.alert")), h("span", { class: "lg" }, h("i", { class: "line connection" }), t("inc.legend.connection")),
          h("span", { class: "lg" }, h("i", { class: "ring" }), t("inc.legend.asset")));
        lastDrawn = sig;
      }
      // the form is drawn once: the live refresh must not wipe what a responder is typing
      if (!$("workflow-form") && !$("workflow-readonly")) fill("inc-workflow", workflowForm(inc));
      fill("inc-entities", table([
        { key: "col.role", render: (e) => h("span", { class: "ent " + e.role, text: e.role }) },
        { key: "col.name", render: (e) => h("span", { class: "mono", text: e.value }) },
        { key: "col.asset", render: (e) => (e.asset ? `${e.asset.hostname || e.asset.asset_id || e.asset.id || ""}${e.asset.level || e.asset.mlps_level ? " · L" + (e.asset.level || e.asset.mlps_level) : ""}` : "–") },
        { key: "col.id", render: (e) => e.type },
      ], inc.entities || [], { cls: "compact" }));
      const ids = inc["alert.ids"] || [];
      let alerts = [];
      if (ids.length) {
        const quoted = ids.slice(0, 200).map((x) => `"${String(x).replace(/["\\]/g, "\\$&")}"`).join(" OR ");
        alerts = (await api("/alerts?" + qs({ q: `id:(${quoted})`, limit: 500, order: "asc" })).catch(() => ({ items: [] }))).items;
      }
      if (!current()) return;
      fill("inc-alerts", table([
        { key: "col.time", render: (a) => fmtTime(a["@timestamp"]), cls: "time" },
        { key: "col.level", render: (a) => level(a["rule.level"]) },
        { key: "col.rule", field: "rule.name" },
        { key: "col.flow", render: (a) => endpoint(a["source.ip"], a["source.port"]) + " → " + endpoint(a["destination.ip"], a["destination.port"]), cls: "mono" },
        { key: "col.tactics", render: (a) => (a["threat.tactic.name"] || []).map(tactic).join(", ") },
      ], alerts, { onclick: (a) => openAlert(a.id), cls: "compact alerts" }));
      fill("inc-history", history(inc.history || []));
      fill("inc-notes", (inc.notes || []).length ? h("ul", { class: "history" }, inc.notes.slice().reverse().map((n) => h("li", {}, h("span", { class: "who", text: n.who }), " · " + fmtTime(n.at), h("div", { class: "note", text: n.text })))) : empty());
    }
    function workflowForm(inc) {
      if (!canIncidentWorkflow()) return h("p", { class: "readonly", id: "workflow-readonly", text: t("inc.readonly", { role: t("role." + state.me.role) }) });
      const st = h("select", { id: "wf-status", class: "ctl" }, h("option", { value: "", text: t("triage.nochange") }), INC_STATUS.map((s) => h("option", { value: s, text: t("status." + s), selected: false })));
      const asg = h("input", { type: "text", id: "wf-assignee", spellcheck: "false", placeholder: inc.assignee || "" });
      const note = h("textarea", { id: "wf-note", rows: 2, maxlength: 4000 });
      const msg = h("span", { id: "wf-msg", class: "muted" });
      const form = h("form", { id: "workflow-form", class: "card triage" }, h("h3", { text: t("inc.workflow") }),
        h("div", { class: "row" }, h("label", {}, h("span", { text: t("triage.status") }), st), h("label", {}, h("span", { text: t("triage.assignee") }), asg)),
        h("label", {}, h("span", { text: t("triage.note") }), note),
        h("div", { class: "row" }, h("button", { type: "submit", class: "btn btn-primary", text: t("triage.submit") }), msg));
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const body = {};
        if (st.value) body.status = st.value;
        if (asg.value.trim()) body.assignee = asg.value.trim();
        if (note.value.trim()) body.note = note.value.trim();
        if (!Object.keys(body).length) return;
        try {
          await api("/incidents/" + encodeURIComponent(inc.id) + "/workflow", { method: "POST", body });
          st.value = ""; asg.value = ""; note.value = "";
          msg.textContent = t("triage.done");
          await load(() => true);
        } catch (e) { msg.textContent = e.status === 403 ? t("error.forbidden") : t("error.generic") + ": " + e.message; }
      });
      return form;
    }
    return { el, load, live: true };
  }

  // ==========================================================================================================
  // Flows
  // ==========================================================================================================
  function flowsPage() {
    const el = h("div", {}, h("div", { class: "kpis", id: "fl-kpis" }),
      h("div", { class: "grid g-1" }, card("flows.volume", h("div", {}, h("div", { id: "fl-volume" }), h("div", { id: "fl-flows" })))),
      h("div", { class: "grid g-2" }, card("flows.talkers", h("div", { id: "fl-talkers" })), card("flows.ports", h("div", { id: "fl-ports" }))),
      h("div", { class: "grid g-2" }, card("flows.protocols", h("div", {}, h("div", { id: "fl-protocols" }), h("h3", { text: t("flows.transports") }), h("div", { id: "fl-transports" }))),
        card("flows.anomaly", h("div", { id: "fl-anomaly" }))));
    async function load(current) {
      const d = await api("/views/flows?" + qs({ since: state.since }));
      if (!current()) return;
      fill("fl-kpis", kpi("kpi.flows", num(d.totals.flows)), kpi("kpi.bytes", bytes(d.totals.bytes)), kpi("kpi.sources", num(d.totals.sources)), kpi("kpi.destinations", num(d.totals.destinations)));
      C.area($("fl-volume"), d.volume.map((p) => ({ t: Date.parse(p.time), v: p.bytes })), { lang: state.lang, color: "#22d3ee", fmtY: bytes, height: 190 });
      C.stacked($("fl-flows"), d.volume.map((p) => ({ t: Date.parse(p.time), values: { flows: p.flows } })), ["flows"], { flows: "#6366f1" }, { lang: state.lang, height: 110, label: () => t("col.flows") });
      fill("fl-talkers", table([
        { key: "col.ip", render: (r) => h("span", { class: "mono", text: r.ip }) },
        { key: "col.where", render: (r) => (r.asset ? `${r.asset.hostname || r.asset.asset_id || r.asset.system_id} · ${t("geo.internal")}` : geoText(r.geo)) },
        { key: "col.flows", render: (r) => num(r.flows), cls: "num" },
        { key: "col.bytes", render: (r) => h("span", { class: "cellbar" }, h("i", { style: `width:${(100 * r.bytes / Math.max(1, d.top_talkers[0].bytes)).toFixed(1)}%` }), h("b", { text: bytes(r.bytes) })), cls: "num" },
      ], d.top_talkers, { cls: "compact" }));
      fill("fl-ports", bars(d.ports.map((p) => ({ label: h("span", { class: "mono", text: `${p.port}/${p.transport || "?"}` }), value: p.flows, color: "#a78bfa", title: bytes(p.bytes) }))));
      fill("fl-protocols", bars(d.protocols.map((p) => ({ label: p.protocol, value: p.flows, color: "#22d3ee" }))));
      fill("fl-transports", bars(d.transports.map((p) => ({ label: p.transport, value: p.flows, color: "#38bdf8" }))));
      const an = d.anomalies;
      fill("fl-anomaly", an.items.length ? table([
        { key: "col.time", render: (a) => fmtTime(a.time), cls: "time" },
        { key: "col.flow", render: (a) => `${a["source.ip"] || "–"} → ${a["destination.ip"] || "–"}`, cls: "mono" },
        { key: "col.score", render: (a) => h("b", { text: a.score == null ? "–" : a.score.toFixed(3) }), cls: "num" },
        { key: "col.rule", field: "rule" },
      ], an.items, { onclick: (a) => openAlert(a.id), cls: "compact" }) : h("p", { class: "muted", text: t(an.models.length ? "flows.noanomaly" : "flows.nomodel") }));
    }
    return { el, load, live: true };
  }

  // ==========================================================================================================
  // CII assets
  // ==========================================================================================================
  function assetsPage() {
    const el = h("div", {}, h("div", { id: "as-systems", class: "systems" }),
      card("assets.title", h("div", { id: "as-table" }), { extra: h("span", { class: "muted", id: "as-meta" }) }),
      card("assets.unknown", h("div", { id: "as-unknown" })));
    async function load(current) {
      const d = await api("/views/assets?" + qs({ since: state.since }));
      if (!current()) return;
      fill("as-systems", d.systems.map((s) => {
        const mine = d.items.filter((a) => a.system_id === s.cii_id);
        const worst = mine.reduce((m, a) => Math.min(m, a.index), 100);
        return h("div", { class: "sys card band-" + C.bandOf(worst) },
          h("div", { class: "sys-head" }, h("b", { text: s.name }), h("span", { class: "mlps", text: "L" + s.mlps_level })),
          h("div", { class: "muted small", text: `${s.cii_id} · ${sector(s.sector)} · ${s.region || "–"} · ${s.zone || ""}` }),
          h("div", { class: "sys-foot" }, indexCell(worst), h("span", { class: "muted", text: t("assets.n", { n: s.assets }) }),
            mine.filter((a) => a.status === "at_risk").length ? h("span", { class: "astatus at_risk", text: `${mine.filter((a) => a.status === "at_risk").length} ${t("astatus.at_risk")}` }) : null));
      }));
      $("as-meta").textContent = t("assets.n", { n: d.count });
      fill("as-table", d.items.length ? table([
        { key: "col.status", render: (a) => h("span", { class: "astatus " + a.status, text: t("astatus." + a.status) }) },
        { key: "col.asset", render: (a) => h("span", {}, h("b", { text: a.hostname || a.asset_id }), h("div", { class: "muted small mono", text: (a.ips || []).join(", ") })) },
        { key: "col.role", render: (a) => a.role || "–" },
        { key: "col.system", render: (a) => h("span", { title: a.system_id, text: a.system_name || a.system_id }) },
        { key: "col.mlps", render: (a) => (a.mlps_level ? h("span", { class: "mlps", text: "L" + a.mlps_level }) : "–") },
        { key: "col.sector", render: (a) => sector(a.sector) },
        { key: "col.region", render: (a) => a.region || "–" },
        { key: "col.last_seen", render: (a) => fmtTime(a.last_seen), cls: "time" },
        { key: "col.alerts", render: (a) => h("span", {}, num(a.alerts), a.open_alerts ? h("span", { class: "muted small", text: ` (${a.open_alerts} ${t("col.open")})` }) : null), cls: "num" },
        { key: "col.index", render: (a) => { const w = h("span", { class: "idx-spark" }); C.spark(w, a.series, { min: 0, max: 100 }); return h("span", { class: "idx-wrap" }, w, indexCell(a.index, a.band)); } },
      ], d.items, { rowClass: (a) => "st-" + a.status }) : empty("assets.none"));
      fill("as-unknown", d.uninventoried.length ? table([
        { key: "col.ip", render: (r) => h("span", { class: "mono", text: r.name }) },
        { key: "col.alerts", field: "alerts", cls: "num" },
        { key: "col.index", render: (r) => indexCell(r.index, r.band), cls: "num" },
      ], d.uninventoried, { cls: "compact" }) : empty());
    }
    return { el, load, live: true };
  }

  // ==========================================================================================================
  // Compliance (auditors, admins)
  // ==========================================================================================================
  function compliancePage() {
    if (!can("compliance:read")) {
      return { el: card("comp.title", h("p", { class: "readonly", id: "comp-forbidden", text: t("comp.forbidden", { role: t("role." + state.me.role) }) })), load: async () => {}, live: false };
    }
    const tabs = h("div", { class: "tabs", role: "tablist" }, ["report", "discovery", "inventory"].map((k) =>
      h("button", { type: "button", class: "tab" + (state.compTab === k ? " active" : ""), dataset: { tab: k }, text: t("comp." + k),
        onclick: () => { state.compTab = k; mount(); } })));
    const el = h("div", { class: "compliance" }, tabs, h("div", { id: "comp-body" }));
    async function load(current) {
      const body = $("comp-body");
      if (body && !body.childElementCount) fill("comp-body", h("p", { class: "muted loading", text: t("misc.loading") }));
      if (state.compTab === "report") return loadReport(current);
      if (state.compTab === "discovery") return loadDiscovery(current);
      return loadInventory(current);
    }
    async function loadReport(current) {
      // the report evaluates every check over the store (seconds to a minute): kept for 5 minutes in this tab
      const fresh = state.compReport && Date.now() - state.compReport.at < 300e3;
      const r = fresh ? state.compReport.data : await api("/compliance/report?" + qs({ level: 3 }));
      if (!fresh) state.compReport = { data: r, at: Date.now() };
      if (!current()) return;
      const order = { fail: 0, no_evidence: 1, pass: 2, not_applicable: 3 };
      const systems = Object.entries(r.summary || {});
      const sysSel = h("select", { class: "ctl", id: "comp-system" }, h("option", { value: "", text: t("comp.allsystems") }), systems.map(([k]) => h("option", { value: k, text: k })));
      const verdictSel = h("select", { class: "ctl", id: "comp-verdict" }, h("option", { value: "", text: t("comp.allverdicts") }), Object.keys(order).map((v) => h("option", { value: v, text: t("verdict." + v) })));
      const list = h("div", { id: "comp-verdicts" });
      const draw = () => {
        const vs = r.verdicts.filter((v) => (!sysSel.value || v.system_id === sysSel.value) && (!verdictSel.value || v.verdict === verdictSel.value))
          .sort((a, b) => (order[a.verdict] - order[b.verdict]) || String(a.gbt22239).localeCompare(String(b.gbt22239)) || String(a.target).localeCompare(String(b.target)));
        list.textContent = "";
        list.append(h("table", { class: "data verdicts" },
          h("thead", {}, h("tr", {}, ["col.verdict", "col.control", "col.check", "col.system", "col.target", "col.reason"].map((k) => h("th", { text: t(k) })))),
          h("tbody", {}, vs.map((v) => verdictRows(v)))));
      };
      sysSel.addEventListener("change", draw);
      verdictSel.addEventListener("change", draw);
      fill("comp-body",
        h("div", { class: "grid g-3" }, systems.map(([k, s]) => {
          const tot = Object.values(s).reduce((a, b) => a + b, 0) || 1;
          return h("div", { class: "card sys-verdicts" }, h("div", { class: "sys-head" }, h("b", { text: k })),
            h("div", { class: "stackbar" }, ["pass", "fail", "no_evidence", "not_applicable"].map((v) => h("i", { class: "v-" + v, style: `width:${(100 * (s[v] || 0) / tot).toFixed(1)}%`, title: `${t("verdict." + v)} ${s[v] || 0}` }))),
            h("div", { class: "legend" }, ["pass", "fail", "no_evidence", "not_applicable"].map((v) => h("span", { class: "lg" }, h("i", { class: "v-" + v }), `${t("verdict." + v)} ${s[v] || 0}`))));
        })),
        card("comp.report", h("div", {}, h("div", { class: "toolbar" }, sysSel, verdictSel,
          h("span", { class: "muted", text: `GB/T 22239-2019 · L${r.level} · ${fmtTime(r.generated_at)}` })), list)));
      draw();
    }
    function verdictRows(v) {
      const ev = v.evidence || {};
      const detail = h("tr", { class: "evidence", hidden: true }, h("td", { colspan: 6 },
        h("div", { class: "ev" }, h("div", {}, h("b", { text: t("comp.query") + ": " }), h("code", { text: ev.query || "–" })),
          ev.counts ? h("div", {}, h("b", { text: t("comp.counts") + ": " }), h("code", { text: JSON.stringify(ev.counts) })) : null,
          (ev.samples || []).length ? h("details", { open: true }, h("summary", { text: `${t("comp.samples")} (${ev.samples.length})` }), h("pre", { class: "json", text: JSON.stringify(ev.samples, null, 2) })) : null,
          h("details", {}, h("summary", { text: t("comp.evidence") + " JSON" }), h("pre", { class: "json", text: JSON.stringify(ev, null, 2) })))));
      const row = h("tr", { class: "clickable", tabindex: 0, onclick: () => { detail.hidden = !detail.hidden; } },
        h("td", {}, h("span", { class: "verdict v-" + v.verdict, text: t("verdict." + v.verdict) })),
        h("td", { class: "mono", text: v.gbt22239 || "–" }), h("td", { text: v.title || v.check_id }),
        h("td", { class: "mono", text: v.system_id || "–" }), h("td", { class: "mono", text: v.target || "–" }), h("td", { class: "reason", text: v.reason || "" }));
      return [row, detail];
    }
    async function loadDiscovery(current) {
      const d = await api("/compliance/discovery?" + qs({ days: 7 }));
      if (!current()) return;
      const gen = (rows) => {
        if (!rows.length) return empty();
        const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
        return h("table", { class: "data compact nowrap" }, h("thead", {}, h("tr", {}, keys.map((k) => h("th", { text: has("col." + k) ? t("col." + k) : k })))),
          h("tbody", {}, rows.map((r) => h("tr", {}, keys.map((k) => h("td", { class: /time|seen/.test(k) ? "time" : "", text: /time|seen/.test(k) ? fmtTime(r[k]) : (Array.isArray(r[k]) ? r[k].join(", ") : (r[k] == null ? "–" : String(r[k]))) }))))));
      };
      fill("comp-body", h("div", { class: "grid g-2" },
        card("comp.unknown_hosts", h("div", { class: "scroll tall" }, gen(d.unknown_hosts)), { extra: h("span", { class: "count", text: num(d.unknown_hosts.length) }) }),
        h("div", { class: "stack" },
          card("comp.undeclared_services", h("div", { class: "scroll" }, gen(d.undeclared_services)), { extra: h("span", { class: "count", text: num(d.undeclared_services.length) }) }),
          card("comp.silent_assets", h("div", { class: "scroll" }, gen(d.silent_assets)), { extra: h("span", { class: "count", text: num(d.silent_assets.length) }) }))));
    }
    async function loadInventory(current) {
      const [inv, ch] = await Promise.all([api("/compliance/inventory"), api("/compliance/inventory/changes?limit=50")]);
      if (!current()) return;
      fill("comp-body",
        card("assets.systems", table([
          { key: "col.id", field: "cii_id", cls: "mono" }, { key: "col.name", field: "name" }, { key: "col.sector", render: (s) => sector(s.sector) },
          { key: "col.mlps", render: (s) => h("span", { class: "mlps", text: "L" + s.mlps_level }) }, { key: "col.zone", field: "zone" },
          { key: "col.region", field: "location" }, { key: "col.filing", render: (s) => s.filing_no || "–", cls: "mono" },
          { key: "col.assessment", render: (s) => `${s.last_assessment_date || "–"} ${s.last_assessment_result || ""} · ${s.crypto_assessment}` },
        ], inv.systems, { cls: "compact" })),
        card("assets.title", table([
          { key: "col.id", field: "asset_id", cls: "mono" }, { key: "col.system", field: "system_id", cls: "mono" },
          { key: "col.ip", render: (a) => (a.ips || []).join(", "), cls: "mono" }, { key: "col.role", field: "role" },
          { key: "col.criticality", field: "criticality" }, { key: "col.services", render: (a) => (a.services || []).join(" "), cls: "mono" },
        ], inv.assets, { cls: "compact" })),
        card("comp.changes", table([
          { key: "col.time", render: (c) => fmtTime(c.at || c.time), cls: "time" }, { key: "col.who", render: (c) => c.who || "–" },
          { key: "col.id", render: (c) => c.record || c.id || "–", cls: "mono" },
          { key: "col.change", render: (c) => {
            const short = (v) => { const x = typeof v === "string" ? v : JSON.stringify(v); return x && x.length > 80 ? x.slice(0, 77) + "…" : x; };
            const what = c.field === "*" || !c.field ? (c.old == null ? t("comp.created") : c.new == null ? t("comp.removed") : t("comp.changed"))
              : `${c.field}: ${short(c.old) ?? "∅"} → ${short(c.new) ?? "∅"}`;
            return h("span", {}, c.material ? h("span", { class: "astatus at_risk", text: t("comp.material") }) : null, " " + what);
          } },
        ], ch.items, { cls: "compact" })));
    }
    return { el, load, live: false };
  }

  const PAGES = { overview: overviewPage, alerts: alertsPage, incidents: incidentsPage, flows: flowsPage, assets: assetsPage, compliance: compliancePage };

  // ---- wiring -----------------------------------------------------------------------------------------------
  function init() {
    applyStatic();
    $("since").value = state.since;
    $("lang").addEventListener("click", () => {
      state.lang = state.lang === "zh-CN" ? "en" : "zh-CN";
      localStorage.setItem(LANG_KEY, state.lang);
      applyStatic();
      if (state.me) mount();
      closeDrawer();
    });
    $("logout").addEventListener("click", () => logout(""));
    $("since").addEventListener("change", () => { state.since = $("since").value; if (state.me) mount(); });
    $("live").addEventListener("click", () => {
      state.live = !state.live;
      renderLive();
      if (state.live) { reload(); startPolling(); } else stopPolling();
    });
    $("drawer-close").addEventListener("click", closeDrawer);
    document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !$("drawer").hidden) closeDrawer(); });
    window.addEventListener("hashchange", () => { closeDrawer(); route(); });
    $("login-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      try { await login(token); $("token").value = ""; } catch (e) {
        showError("login-error", e.status === 401 ? t("login.failed") : e.status ? t("error.generic") + ": " + e.message : t("login.unreachable"));
      }
    });
    let resize = null;
    window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(() => { if (state.me && state.view) reload(); }, 250); });
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) api("/me", { login: true }).then((me) => { state.me = me; showApp(); }).catch(() => logout(""));
    else logout("");
  }
  document.addEventListener("DOMContentLoaded", init);
})();
