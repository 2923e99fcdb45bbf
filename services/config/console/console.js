// GTM console: the access domains and one domain's pools over REST API v1, kept live by SSE.
// Every text goes into the page through textContent / attributes (the h() helper), never parsed as HTML.
"use strict";

const API = "/api/v1";
const MODES = ["auto", "manual_available", "manual_unavailable"];
const SEQUENCE_MODES = ["preemptive", "non_preemptive"];
const TOKEN_KEY = "gtm-token";

// ---- DOM helpers ------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);

function flash(message) {
  $("flash").textContent = message || "";
  $("flash").hidden = !message;
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace("Z", " UTC") : "";
}

function clock(iso) {
  return iso ? iso.slice(11, 23) : ""; // the time of day (UTC) of an ISO 8601 string
}

// ---- API token: ?token= in the page URL or the login form; kept in sessionStorage ---------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("forget-token").hidden = !value;
}

function takeTokenFromUrl() {
  const url = new URL(location.href);
  if (!url.searchParams.has("token")) return;
  setToken(url.searchParams.get("token"));
  url.searchParams.delete("token"); // keep it out of the address bar and history
  history.replaceState(null, "", url.pathname + url.search + url.hash);
}

class Unauthorized extends Error {}

async function api(method, path, body, revision) {
  const headers = { "X-GTM-Via": "console" }; // the operation log says a write came through the console
  if (token()) headers.Authorization = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (revision !== undefined) headers["If-Match"] = '"' + revision + '"';
  const resp = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (resp.status === 401) {
    $("login").hidden = false;
    throw new Unauthorized("an API token is needed");
  }
  if (!resp.ok) throw new Error((data && data.error && data.error.message) || resp.status + " " + resp.statusText);
  return data;
}

const enc = encodeURIComponent;

// ---- live updates: any event (and every (re)connect) re-fetches what the page shows ---------------

let live = null;
let generation = 0; // bumped on navigation: a late refresh of an old page draws nothing

function follow(domain, refresh) {
  if (live) live.close();
  const query = new URLSearchParams();
  if (domain) query.set("domain", domain);
  if (token()) query.set("token", token()); // EventSource cannot send headers
  live = new EventSource(API + "/stream?" + query);
  live.onopen = () => setLive(true);
  live.onerror = () => setLive(false);
  live.onmessage = coalesce(refresh);
}

function setLive(on) {
  $("live").textContent = on ? "live" : "offline";
  $("live").className = "live " + (on ? "on" : "off");
}

function coalesce(refresh) {
  // Several events in a burst give one re-fetch; an event during a re-fetch gives one more after it.
  let timer = null, running = false, again = false;
  const run = async () => {
    if (running) { again = true; return; }
    running = true;
    try { await refresh(); } finally {
      running = false;
      if (again) { again = false; run(); }
    }
  };
  return () => { clearTimeout(timer); timer = setTimeout(run, 30); };
}

async function guarded(draw) {
  try {
    await draw();
  } catch (err) {
    if (!(err instanceof Unauthorized)) flash(err.message);
  }
}

// ---- health indicators ---------------------------------------------------------------------------

function addressHealth(a) {
  if (a.available === false) return ["red", "unavailable" + (a.waiting ? " (" + a.waiting + ")" : "")];
  if (a.available === null || a.available === undefined) return ["orange", "no state yet"];
  if (a.warming) return ["orange", "warming up: waiting for its first checks"];
  if (a.waiting) return ["orange", "available, waiting on a threshold: " + a.waiting];
  if (a.mode === "auto" && a.checks.some((c) => !c.ok)) return ["orange", "degraded: some checks fail"];
  return ["green", "available"];
}

function poolHealth(p) {
  if (p.available === false) return ["red", "unavailable"];
  if (p.available === null || p.available === undefined) return ["orange", "no state yet"];
  if (p.warming) return ["orange", "warming up"];
  if (p.addresses.some((a) => addressHealth(a)[0] !== "green")) return ["orange", "available, degraded"];
  return ["green", "available"];
}

function headRow(titles) {
  return h("thead", {}, h("tr", {}, titles.map((t) => h("th", {}, t))));
}

function enabledBadge(enabled, attrs) {
  return h("span", { ...attrs, class: "badge " + (enabled ? "on" : "off") }, enabled ? "enabled" : "disabled");
}

function dot([color, text]) {
  return h("span", { class: "dot " + color, "data-health": color, title: text, role: "img", "aria-label": text });
}

// ---- domains page --------------------------------------------------------------------------------

async function showDomains() {
  const gen = generation;
  const refresh = () => guarded(async () => {
    const { domains } = await api("GET", "/domains");
    const statuses = await Promise.all(domains.map((d) => api("GET", "/domains/" + enc(d.name) + "/status")));
    if (gen === generation) drawDomains(domains, statuses);
  });
  follow("", refresh);
  await refresh();
}

function drawDomains(domains, statuses) {
  const rows = domains.map((d, i) => {
    const answer = d.enabled ? statuses[i].answer : null;
    return h("tr", { "data-domain": d.name },
      h("td", {}, h("a", { href: "#/domains/" + enc(d.name) }, d.name)),
      h("td", {}, enabledBadge(d.enabled)),
      h("td", {}, d.record_type),
      h("td", {}, d.lb_strategy + (d.lb_strategy === "sequence" ? " · " + d.sequence_mode : "")),
      h("td", { class: "answer-pool" }, answer ? answer.pool : "—",
        answer && answer.fallback ? h("span", { class: "badge warn" }, "fallback") : null),
      h("td", { class: "answer-records mono" }, answer ? answer.records.join(", ") : ""));
  });
  $("main").replaceChildren(
    h("h1", {}, "Access domains"),
    domains.length === 0
      ? h("p", { class: "muted" }, "No access domain yet: create one with PUT /api/v1/domains/{fqdn} or gtmctl apply.")
      : h("table", { id: "domains", class: "grid" },
        headRow(["Domain", "State", "Type", "Strategy", "Answer pool", "Records"]),
        h("tbody", {}, rows)));
}

// ---- domain page ---------------------------------------------------------------------------------

async function showDomain(fqdn) {
  const gen = generation;
  const refresh = () => guarded(async () => {
    const path = "/domains/" + enc(fqdn);
    const [domain, status, events] = await Promise.all([
      api("GET", path), api("GET", path + "/status"),
      api("GET", "/events?kind=switch&limit=20&domain=" + enc(fqdn)),
    ]);
    const changes = await changeLog(domain); // the domain's and its pools' operations
    if (gen === generation) drawDomain(domain, status, events.events, changes, refresh);
  });
  follow(fqdn, refresh);
  await refresh();
}

// Actions read the resource afresh and PATCH the change they mean with its revision (If-Match):
// a click on a page drawn a moment ago does not fail, and a concurrent write is never overwritten.
async function changeResource(path, change) {
  const current = await api("GET", path);
  const body = change(current);
  if (body) await api("PATCH", path, body, current.revision);
}

function inSequence(pools) {
  return pools.map((ref, i) => ({ ref, i })).sort((a, b) => a.ref.sequence - b.ref.sequence || a.i - b.i)
    .map(({ ref }) => ref);
}

function movePool(name, delta) {
  return (domain) => {
    const order = inSequence(domain.pools);
    const from = order.findIndex((ref) => ref.pool === name), to = from + delta;
    if (from < 0 || to < 0 || to >= order.length) return null;
    [order[from], order[to]] = [order[to], order[from]];
    return { pools: order.map((ref, n) => ({ ...ref, sequence: n + 1 })) };
  };
}

function setAddressMode(address, mode) {
  return (pool) => ({ addresses: pool.addresses.map((a) => (a.name === address ? { ...a, mode } : a)) });
}

async function changeLog(domain) {
  const logs = await Promise.all([["domain", domain.name], ...domain.pools.map((ref) => ["pool", ref.pool])]
    .map(([resource, name]) => api("GET", "/events?kind=operation&limit=10&resource=" + resource + "&name=" + enc(name))));
  return logs.flatMap((l) => l.events).sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0)).slice(0, 10);
}

function drawDomain(domain, status, switches, changes, refresh) {
  const act = (path, change) => () => guarded(async () => {
    flash("");
    await changeResource(path, change);
    await refresh();
  });
  const path = "/domains/" + enc(domain.name);
  const answer = status.answer;
  const refs = inSequence(domain.pools);
  const statusOf = Object.fromEntries(status.pools.map((p) => [p.name, p]));

  $("main").replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← Access domains")),
    h("section", { class: "domain-head" },
      h("h1", {}, domain.name, " ",
        enabledBadge(domain.enabled, { id: "domain-enabled" }),
        " ", h("span", { id: "domain-phase", class: "muted small" }, status.status || "")),
      h("dl", { class: "facts" },
        h("dt", {}, "Type"), h("dd", {}, domain.record_type),
        h("dt", {}, "TTL"), h("dd", {}, domain.ttl + " s"),
        h("dt", {}, "Strategy"), h("dd", {}, domain.lb_strategy),
        h("dt", {}, "Answer"), h("dd", { id: "answer" }, drawAnswer(domain, answer))),
      h("div", { class: "actions" },
        h("button", { id: "toggle-enabled", type: "button", onclick: act(path, () => ({ enabled: !domain.enabled })) },
          domain.enabled ? "Disable domain" : "Enable domain"),
        h("label", {}, "Sequence mode ",
          h("select", { id: "sequence-mode", onchange: (e) => act(path, () => ({ sequence_mode: e.target.value }))() },
            SEQUENCE_MODES.map((m) => h("option", { value: m, selected: m === domain.sequence_mode }, m)))))),
    h("h2", {}, "Pools"),
    h("div", { id: "pools" }, refs.map((ref, index) => drawPool(ref, statusOf[ref.pool], {
      up: index > 0 ? act(path, movePool(ref.pool, -1)) : null,
      down: index < refs.length - 1 ? act(path, movePool(ref.pool, +1)) : null,
      setMode: (address, mode) => act("/pools/" + enc(ref.pool), setAddressMode(address, mode))(),
    }))),
    h("h2", {}, "Switch log"),
    drawSwitches(switches),
    h("h2", {}, "Change log"),
    drawChanges(changes));
}

function drawAnswer(domain, answer) {
  if (!domain.enabled) return h("span", { id: "answer-pool", class: "muted" }, "none: disabled, the edges refuse it");
  if (!answer) return h("span", { id: "answer-pool", class: "muted" }, "nothing published yet");
  return [h("b", { id: "answer-pool" }, answer.pool || "—"), " ",
    h("span", { id: "answer-records", class: "mono" }, answer.records.join(", ") || "(no records)"),
    answer.fallback ? h("span", { class: "badge warn" }, "fallback: no pool available") : null];
}

function drawPool(ref, pool, actions) {
  pool = pool || { name: ref.pool, available: null, addresses: [] };
  const health = poolHealth(pool);
  return h("article", { class: "pool", "data-pool": ref.pool },
    h("header", {},
      dot(health), h("span", { class: "seq" }, "#" + ref.sequence), h("h3", {}, ref.pool),
      h("span", { class: "muted small" }, health[1]),
      h("span", { class: "spacer" }),
      moveButton("up", "↑", actions.up), moveButton("down", "↓", actions.down)),
    h("table", { class: "grid addresses" },
      headRow(["", "Address", "Value", "Mode", "Latest checks"]),
      h("tbody", {}, pool.addresses.map((a) => drawAddress(a, actions.setMode)))));
}

function moveButton(direction, label, onclick) {
  const attrs = { type: "button", "data-action": direction, title: "Move " + direction, disabled: !onclick, onclick };
  return h("button", attrs, label);
}

function drawAddress(a, setMode) {
  const health = addressHealth(a);
  return h("tr", { "data-address": a.name },
    h("td", {}, dot(health)),
    h("td", {}, a.name, h("div", { class: "muted small health-text" }, health[1])),
    h("td", { class: "mono" }, a.address),
    h("td", {}, h("select", { class: "mode", onchange: (e) => setMode(a.name, e.target.value) },
      MODES.map((m) => h("option", { value: m, selected: m === a.mode }, m)))),
    h("td", {}, a.checks.length === 0 ? h("span", { class: "muted" }, "no checks") : h("table", { class: "checks" },
      h("tbody", {}, a.checks.map((c) => h("tr", { class: c.ok ? "ok" : "fail" },
        h("td", {}, c.region), h("td", {}, c.ok ? "ok" : "fail"),
        h("td", { class: "mono" }, c.rtt_ms === null ? "" : c.rtt_ms.toFixed(1) + " ms"),
        h("td", {}, c.error),
        h("td", { class: "muted small", title: when(c.at) + " by " + c.prober }, clock(c.at))))))));
}

function drawSwitches(events) {
  if (events.length === 0) return h("p", { id: "switch-log", class: "muted" }, "No switch yet.");
  return h("table", { id: "switch-log", class: "grid" },
    headRow(["At", "From", "To", "Reason", "Records"]),
    h("tbody", {}, events.map((e) => h("tr", {},
      h("td", { class: "small nowrap" }, when(e.at)),
      h("td", { class: "nowrap" }, e.from_pool || "—"), h("td", { class: "nowrap" }, e.to_pool || "—"),
      h("td", {}, e.reason), h("td", { class: "mono" }, e.before.join(", ") + " → " + e.after.join(", "))))));
}

function shown(value) {
  if (value === null || value === undefined) return "—";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function describeChange(c) {
  const keys = ["added", "removed", "changed"].filter((k) => c[k]).map((k) => k + " " + c[k].join(", "));
  return c.field + ": " + shown(c.before) + " → " + shown(c.after) + (keys.length ? " (" + keys.join("; ") + ")" : "");
}

function drawChanges(events) {
  if (events.length === 0) return h("p", { id: "change-log", class: "muted" }, "No change recorded yet.");
  return h("table", { id: "change-log", class: "grid" },
    headRow(["At", "What", "Who", "Via", "Changes"]),
    h("tbody", {}, events.map((e) => h("tr", {},
      h("td", { class: "small nowrap" }, when(e.at)),
      h("td", { class: "nowrap" }, e.method + " " + e.resource + " " + e.name),
      h("td", { class: "nowrap" }, e.who || "—"), h("td", { class: "nowrap" }, e.via || "—"),
      h("td", { class: "mono small" }, (e.changes || []).map(describeChange).join("; "))))));
}

// ---- start ---------------------------------------------------------------------------------------

function route() {
  generation += 1;
  flash("");
  const match = location.hash.match(/^#\/domains\/(.+)$/);
  if (match) showDomain(decodeURIComponent(match[1]));
  else showDomains();
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromUrl();
  $("forget-token").hidden = !token();
  $("forget-token").addEventListener("click", () => { setToken(""); $("login").hidden = false; route(); });
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    setToken($("token-input").value.trim());
    $("token-input").value = "";
    $("login").hidden = true;
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
