// Taishi console shell. Plain JS, no build step, no external code.
// The API token lives in sessionStorage (this tab only) and goes out as
// "Authorization: Bearer"; no cookies are used. Server data is only ever put
// into the page with textContent, never as HTML.
"use strict";

(function () {
  const API = "/api/v1";
  const POLL_MS = 5000;
  const TOKEN_KEY = "taishi.token";
  const LANG_KEY = "taishi.lang";
  const LEVELS = ["critical", "high", "medium", "low", "informational"];

  const I18N = JSON.parse(document.getElementById("i18n").textContent);
  const $ = (id) => document.getElementById(id);

  const state = {
    lang: pickLang(),
    me: null,
    timer: null,
    live: true,
    selected: null,
    lastAlerts: [],
  };

  // ---- i18n ---------------------------------------------------------------
  function pickLang() {
    const saved = localStorage.getItem(LANG_KEY); // a preference, not a secret
    if (saved && saved in I18N) return saved;
    return (navigator.language || "").toLowerCase().startsWith("zh") ? "zh-CN" : "en";
  }
  function t(key, vars) {
    let s = (I18N[state.lang] && I18N[state.lang][key]) || I18N.en[key] || key;
    if (vars) for (const [k, v] of Object.entries(vars)) s = s.split("{" + k + "}").join(String(v));
    return s;
  }
  function applyLang() {
    document.documentElement.lang = state.lang;
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
    document.querySelectorAll("[data-i18n-title]").forEach((el) => { el.title = t(el.dataset.i18nTitle); });
    document.title = t("app.title") + " · " + t("app.subtitle");
    renderWho();
    renderLive();
    renderAlerts(state.lastAlerts);
  }

  // ---- API ------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }
  async function api(path, opts = {}) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    if (token) headers.Authorization = "Bearer " + token;
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(API + path, {
      method: opts.method || "GET",
      headers,
      body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
      credentials: "omit",
      cache: "no-store",
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

  // ---- login / logout ---------------------------------------------------------
  async function login(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    try {
      state.me = await api("/me", { login: true });
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      throw e;
    }
    showMain();
  }
  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    stopPolling();
    closeDetail();
    state.lastAlerts = [];
    $("main-view").hidden = true;
    $("logout").hidden = true;
    $("whoami").hidden = true;
    $("login-view").hidden = false;
    $("token").value = "";
    showError("login-error", message || "");
    $("token").focus();
  }
  function showMain() {
    $("login-view").hidden = true;
    $("main-view").hidden = false;
    $("logout").hidden = false;
    renderWho();
    refresh();
    startPolling();
  }
  function renderWho() {
    const el = $("whoami");
    el.textContent = "";
    if (!state.me) { el.hidden = true; return; }
    el.append(document.createTextNode(state.me.name));
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = t("role." + state.me.role);
    el.append(role);
    el.hidden = false;
  }

  // ---- polling ------------------------------------------------------------------
  function startPolling() {
    stopPolling();
    if (state.live) state.timer = setInterval(refresh, POLL_MS);
  }
  function stopPolling() {
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
  }
  function renderLive() {
    const b = $("live");
    b.classList.toggle("on", state.live);
    b.setAttribute("aria-pressed", String(state.live));
    $("live-label").textContent = t(state.live ? "live.on" : "live.off");
  }

  let inflight = false;
  async function refresh() {
    if (inflight || !state.me) return;
    inflight = true;
    const q = $("q").value.trim();
    const since = $("since").value;
    const params = new URLSearchParams({ since, limit: "200" });
    if (q) params.set("q", q);
    try {
      const [alerts, summary] = await Promise.all([
        api("/alerts?" + params.toString()),
        api("/summary?" + new URLSearchParams(q ? { since, q } : { since }).toString()),
      ]);
      showError("search-error", "");
      state.lastAlerts = alerts.items;
      renderAlerts(alerts.items);
      $("alerts-meta").textContent = t("alerts.shown", { n: alerts.count, total: alerts.total }) +
        " · " + t("live.updated") + " " + new Date().toLocaleTimeString(state.lang);
      renderSummary(summary);
    } catch (e) {
      if (e.status === 400) showError("search-error", t("error.query") + ": " + e.message);
      else if (e.status !== 401) showError("search-error", t("error.generic") + ": " + e.message);
    } finally {
      inflight = false;
    }
  }

  // ---- rendering ------------------------------------------------------------------
  function showError(id, msg) {
    const el = $(id);
    el.textContent = msg;
    el.hidden = !msg;
  }
  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(state.lang, { hour12: false });
  }
  function td(text, cls) {
    const c = document.createElement("td");
    if (cls) c.className = cls;
    c.textContent = text == null ? "" : String(text);
    return c;
  }
  function levelBadge(level) {
    const s = document.createElement("span");
    const lv = LEVELS.includes(level) ? level : "informational";
    s.className = "level " + lv;
    s.textContent = level ? t("level." + lv) : "";
    return s;
  }
  function endpoint(ip, port) {
    if (!ip) return "–";
    const v6 = ip.includes(":");
    return port == null ? ip : (v6 ? "[" + ip + "]" : ip) + ":" + port;
  }
  function renderAlerts(items) {
    const body = $("alerts-body");
    body.textContent = "";
    for (const a of items || []) {
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      if (a.id === state.selected) tr.classList.add("selected");
      const time = td(fmtTime(a["@timestamp"]), "time");
      time.title = a["@timestamp"] || "";
      const lvl = document.createElement("td");
      lvl.append(levelBadge(a["rule.level"]));
      const rule = td(a["rule.name"] || a["rule.id"]);
      rule.title = a["rule.id"] || "";
      const flow = td(endpoint(a["source.ip"], a["source.port"]) + " → " + endpoint(a["destination.ip"], a["destination.port"]), "flow");
      const tech = td((a["threat.technique.id"] || []).join(", "), "tech");
      tech.title = (a["threat.tactic.name"] || []).join(", ");
      const st = document.createElement("td");
      const badge = document.createElement("span");
      const status = a["taishi.triage.status"] || "open";
      badge.className = "status " + status;
      badge.textContent = t("status." + status);
      if (a["taishi.triage.assignee"]) badge.title = "→ " + a["taishi.triage.assignee"];
      st.append(badge);
      tr.append(time, lvl, rule, flow, tech, st);
      const open = () => openDetail(a.id);
      tr.addEventListener("click", open);
      tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
      body.append(tr);
    }
    $("alerts-empty").hidden = !!(items && items.length) || !state.me;
  }
  function renderSummary(s) {
    const fmt = (n) => (n == null ? "–" : Number(n).toLocaleString(state.lang));
    $("sum-alerts").textContent = fmt(s.alerts);
    $("sum-events").textContent = fmt(s.events);
    $("sum-deadletters").textContent = fmt(s.deadletters);
    for (const lv of LEVELS) $("sum-" + lv).textContent = fmt((s.alerts_by_level || {})[lv] || 0);
  }

  // ---- detail drawer -------------------------------------------------------------
  async function openDetail(id) {
    state.selected = id;
    renderAlerts(state.lastAlerts);
    $("detail").hidden = false;
    $("triage-form").hidden = !can("alerts:triage");
    $("triage-msg").textContent = "";
    try {
      const d = await api("/alerts/" + encodeURIComponent(id));
      if (state.selected !== id) return;
      $("detail-title").textContent = d.alert["rule.name"] || t("detail.title");
      $("detail-alert").textContent = JSON.stringify(d.alert, null, 2);
      $("detail-events-title").textContent = t("detail.events", { n: d.events.length });
      $("detail-events").textContent = JSON.stringify(d.events, null, 2);
      $("detail-truncated").hidden = !d.events_truncated;
      renderHistory(d.triage);
    } catch (e) {
      if (e.status !== 401) $("detail-alert").textContent = t("error.generic") + ": " + e.message;
    }
  }
  function renderHistory(hist) {
    const ul = $("detail-history");
    ul.textContent = "";
    if (!hist || !hist.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = t("detail.nohistory");
      ul.append(li);
      return;
    }
    for (const h of hist.slice().reverse()) {
      const li = document.createElement("li");
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = h.user;
      const parts = [fmtTime(h.time)];
      if (h.status) parts.push(t("status." + h.status));
      if ("assignee" in h) parts.push("→ " + (h.assignee || "∅"));
      li.append(who, document.createTextNode(" · " + parts.join(" · ")));
      if (h.note) {
        const note = document.createElement("div");
        note.textContent = h.note;
        li.append(note);
      }
      ul.append(li);
    }
  }
  function closeDetail() {
    state.selected = null;
    $("detail").hidden = true;
    renderAlerts(state.lastAlerts);
  }
  async function submitTriage(ev) {
    ev.preventDefault();
    const id = state.selected;
    if (!id) return;
    const body = {};
    const status = $("triage-status").value;
    const note = $("triage-note").value.trim();
    const assignee = $("triage-assignee").value.trim();
    if (status) body.status = status;
    if (note) body.note = note;
    if (assignee) body.assignee = assignee;
    if (!Object.keys(body).length) return;
    try {
      await api("/alerts/" + encodeURIComponent(id) + "/triage", { method: "POST", body });
      $("triage-msg").textContent = t("triage.done");
      $("triage-note").value = "";
      $("triage-status").value = "";
      $("triage-assignee").value = "";
      await openDetail(id);
      $("triage-msg").textContent = t("triage.done");
      refresh();
    } catch (e) {
      if (e.status === 403) $("triage-msg").textContent = t("error.forbidden");
      else if (e.status !== 401) $("triage-msg").textContent = t("error.generic") + ": " + e.message;
    }
  }

  // ---- wiring ----------------------------------------------------------------------
  function init() {
    applyLang();
    $("lang").addEventListener("click", () => {
      state.lang = state.lang === "zh-CN" ? "en" : "zh-CN";
      localStorage.setItem(LANG_KEY, state.lang);
      applyLang();
    });
    $("logout").addEventListener("click", () => logout(""));
    $("login-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      try {
        await login(token);
        $("token").value = "";
      } catch (e) {
        showError("login-error", e.status === 401 ? t("login.failed") : e.status ? t("error.generic") + ": " + e.message : t("login.unreachable"));
      }
    });
    $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
    $("since").addEventListener("change", refresh);
    $("clear").addEventListener("click", () => { $("q").value = ""; refresh(); });
    $("live").addEventListener("click", () => {
      state.live = !state.live;
      renderLive();
      if (state.live) { refresh(); startPolling(); } else stopPolling();
    });
    $("detail-close").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !$("detail").hidden) closeDetail(); });
    $("triage-form").addEventListener("submit", submitTriage);

    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) {
      api("/me", { login: true })
        .then((me) => { state.me = me; showMain(); })
        .catch(() => logout(""));
    } else {
      logout("");
    }
  }

  document.addEventListener("DOMContentLoaded", init);
})();
