// gatehouse status page: polls /api/status, /api/routes and /api/upstreams every 2 s and
// renders them with textContent only (nothing from the API is parsed as HTML).
"use strict";

const POLL_MS = 2000;
const PER_PAGE = 50;
const state = { page: 1, q: "", token: sessionStorage.getItem("gatehouse-token") || "" };
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, cls) {
  const tr = el("tr", null, cls);
  for (const c of cells) {
    if (c instanceof Node) {
      const td = el("td");
      td.appendChild(c);
      tr.appendChild(td);
    } else if (c && typeof c === "object") {
      tr.appendChild(el("td", c.text, c.cls));
    } else {
      tr.appendChild(el("td", c));
    }
  }
  return tr;
}

function fill(tbody, rows, empty) {
  const body = $(tbody);
  body.replaceChildren(...rows);
  if (rows.length === 0 && empty) {
    const tr = row([empty]);
    tr.firstChild.colSpan = body.parentElement.querySelectorAll("thead th").length;
    body.appendChild(tr);
  }
}

const fmt = {
  num: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en")),
  rate: (n) => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2)),
  pct: (n) => (n === null || n === undefined ? "–" : (n * 100).toFixed(n < 0.1 ? 2 : 1) + " %"),
  ms: (n) => (n === null || n === undefined ? "–" : n < 10 ? n.toFixed(2) + " ms" : n.toFixed(0) + " ms"),
  bytes: (n) => {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  },
  ago: (ms) => {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  },
  duration: (s) => {
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
  },
  time: (ms) => new Date(ms).toLocaleTimeString(),
};

// A sparkline of `values` (null: no data), scaled to its own maximum.
function spark(values, label, cls) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 26");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const vs = values.map((v) => (v === null || v === undefined ? 0 : v));
  const max = Math.max(...vs, 1e-9);
  const step = vs.length > 1 ? 120 / (vs.length - 1) : 0;
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", vs.map((v, i) => (i * step).toFixed(1) + "," + (24 - (v / max) * 22).toFixed(1)).join(" "));
  if (cls) line.setAttribute("class", cls);
  svg.appendChild(line);
  const title = document.createElementNS(ns, "title");
  title.textContent = label;
  svg.appendChild(title);
  return svg;
}

async function api(path) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw { unauthorized: true };
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function matchText(m) {
  if (!m || typeof m !== "object") return "any";
  const parts = [];
  for (const [k, v] of Object.entries(m)) parts.push(k + ": " + (Array.isArray(v) ? v.join(", ") : typeof v === "object" ? JSON.stringify(v) : v));
  return parts.join("; ") || "any";
}

function renderStatus(s) {
  $("version").textContent = "v" + s.version;
  $("uptime").textContent = fmt.duration(s.uptime_s);
  $("config").textContent = "version " + s.config.version + ", sha256 " + s.config.sha256.slice(0, 12) + "…, " + s.config.file;
  const rl = s.last_reload;
  const reload = $("reload");
  const err = $("reload-error");
  if (!rl) {
    reload.textContent = "none since start";
    reload.className = "";
    err.hidden = true;
  } else {
    reload.textContent = (rl.result === "ok" ? "applied" : "FAILED, kept version " + rl.version) + " (" + rl.trigger + ", " + fmt.ago(rl.at_ms) + ")";
    reload.className = rl.result === "ok" ? "state good" : "state bad";
    err.hidden = rl.result === "ok";
    err.textContent = rl.error || "";
  }
  fill("listeners", s.listeners.map((l) => row([
    { text: l.addr, cls: "mono" },
    l.tls ? "HTTPS (h2, HTTP/1.1)" : l.h2c ? "HTTP/1.1, h2c" : "HTTP/1.1",
    l.certificates.length ? l.certificates.map((c) => c.name + ": " + c.days_left + " days left").join("; ") : "–",
  ])));
  const tiers = [["memory", s.cache.memory]];
  if (s.cache.disk) tiers.push(["disk", s.cache.disk]);
  fill("cache-rows", tiers.map(([name, t]) => row([
    name, fmt.bytes(t.bytes), fmt.num(t.objects), fmt.pct(t.hit_ratio), fmt.num(t.evictions),
    t.available === undefined ? "–" : t.available ? { text: "writable", cls: "state good" } : { text: "unavailable (memory only)", cls: "state bad" },
  ])));
  fill("limited-rows", s.limited.map((l) => row([l.route, { text: l.client, cls: "mono" }, fmt.num(l.count)])), "no 429s since start");
  fill("error-rows", s.errors.map((e) => row([fmt.time(e.at_ms), { text: e.status, cls: "bad" }, e.route || "–", e.reason, { text: e.request_id, cls: "mono" }])), "no errors since start");
}

function renderRoutes(r) {
  const pages = Math.max(1, Math.ceil(r.total / r.per_page));
  $("page-info").textContent = "page " + r.page + " of " + pages + " (" + r.total + " routes)";
  $("prev").disabled = r.page <= 1;
  $("next").disabled = r.page >= pages;
  fill("route-rows", r.routes.map((rt) => {
    const h = rt.history;
    const last = h.length ? h[h.length - 1] : null;
    const plugins = el("span", null, "plugins");
    for (const p of rt.plugins) plugins.appendChild(el("span", p));
    const sparks = el("div");
    sparks.appendChild(spark(h.map((p) => p.rps), "requests per second, last " + h.length + " samples"));
    const tr = row([
      { text: rt.id, cls: "mono" }, matchText(rt.match), rt.upstream, plugins,
      { text: fmt.num(rt.requests_total), cls: "num" },
      { text: last ? fmt.rate(last.rps) : "–", cls: "num" },
      last && last.error_rate > 0 ? { text: fmt.pct(last.error_rate), cls: "bad" } : (last ? fmt.pct(0) : "–"),
      last ? fmt.ms(last.p50_ms) + " / " + fmt.ms(last.p99_ms) : "–",
      sparks,
    ]);
    tr.dataset.route = rt.id;
    return tr;
  }), "no route matches");
}

function renderUpstreams(u) {
  const rows = [];
  for (const g of u.upstreams) {
    for (const b of g.backends) {
      const health = !b.healthy
        ? { text: "unhealthy since " + fmt.ago(b.since_ms), cls: "state bad" }
        : g.health_checked
          ? { text: "healthy since " + fmt.ago(b.since_ms), cls: "state good" }
          : { text: "serving (no health check)", cls: "state warn" };
      const breaker = b.breaker === null ? "–"
        : { text: b.breaker.replace("_", "-"), cls: "state " + (b.breaker === "closed" ? "good" : b.breaker === "open" ? "bad" : "warn") };
      const tr = row([g.name, { text: b.addr, cls: "mono" }, health, breaker,
        { text: fmt.num(b.in_flight), cls: "num" }, { text: fmt.rate(b.rps), cls: "num" },
        b.error_rate > 0 ? { text: fmt.pct(b.error_rate), cls: "bad" } : fmt.pct(0),
        { text: fmt.num(b.attempts_total), cls: "num" }], b.healthy ? "" : "down");
      tr.dataset.backend = g.name + "/" + b.addr;
      tr.dataset.health = b.healthy ? "healthy" : "unhealthy";
      rows.push(tr);
    }
  }
  fill("backend-rows", rows, "no upstreams");
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  try {
    const q = "?page=" + state.page + "&per_page=" + PER_PAGE + "&q=" + encodeURIComponent(state.q);
    const [s, r, u] = await Promise.all([api("/api/status"), api("/api/routes" + q), api("/api/upstreams")]);
    $("login").hidden = true;
    $("main").hidden = false;
    renderStatus(s);
    renderRoutes(r);
    renderUpstreams(u);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString() + ", every " + POLL_MS / 1000 + " s";
    document.body.dataset.loaded = "1";
  } catch (e) {
    if (e && e.unauthorized) {
      $("main").hidden = true;
      $("login").hidden = false;
      $("login-error").textContent = state.token ? "That token was not accepted." : "";
      $("updated").textContent = "";
      document.body.dataset.login = "1";
      return; // no polling until a token is given
    }
    $("updated").textContent = "cannot reach the admin API (" + (e.message || e) + "), retrying";
  }
  timer = setTimeout(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value;
    sessionStorage.setItem("gatehouse-token", state.token);
    refresh();
  });
  let debounce = null;
  $("route-search").addEventListener("input", (ev) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { state.q = ev.target.value; state.page = 1; refresh(); }, 250);
  });
  $("prev").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); refresh(); });
  $("next").addEventListener("click", () => { state.page += 1; refresh(); });
  refresh();
});
