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

function flash(message, ...extra) {
  $("flash").replaceChildren(message || "", ...extra);
  $("flash").hidden = !message;
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace("Z", " UTC") : "";
}

function clock(iso) {
  return iso ? iso.slice(11, 23) : ""; // the time of day (UTC) of an ISO 8601 string
}

function localTime(iso) {
  // An RFC 3339 time in the browser's time zone (the page's other times are UTC and say so).
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
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

// An API error: its HTTP status and the error body's code and field (e.g. "addresses[0].address").
class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || "HTTP " + status);
    this.status = status;
    this.code = (error && error.code) || "";
    this.field = (error && error.field) || "";
  }
}

class ApiDown extends Error {}

// While the API is away: redraw the page when it is back, except a form being filled in, which
// keeps what was typed (only the API is probed; saving works again once the banner is gone).
function retryApi() {
  const editing = $("main").querySelector("form.form:not(#event-filters)");
  if (!editing) { route(true); return; }
  fetch(API + "/openapi.json").then((resp) => { if (resp.ok) apiDown(false); }, () => {});
}

function apiDown(down) {
  $("api-down").hidden = !down;
  $("main").inert = down; // every action is disabled while the API cannot be reached
  if (down && !apiDown.timer) apiDown.timer = setInterval(retryApi, 3000);
  if (!down && apiDown.timer) { clearInterval(apiDown.timer); apiDown.timer = null; }
}

async function api(method, path, body, revision) {
  const headers = { "X-GTM-Via": "console" }; // the operation log says a write came through the console
  if (token()) headers.Authorization = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (revision !== undefined) headers["If-Match"] = '"' + revision + '"';
  let resp;
  try {
    resp = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    apiDown(true);
    throw new ApiDown("The API cannot be reached: is the config service running?");
  }
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (resp.status >= 502 && resp.status <= 504) { apiDown(true); throw new ApiDown("The API cannot be reached"); }
  apiDown(false);
  if (resp.status === 401) {
    $("login").hidden = false;
    $("login-why").textContent = token() ? "The API refused this token: enter the right one." : "The API needs a token.";
    $("main").replaceChildren(h("p", { id: "need-token", class: "muted" },
      token() ? "The API token was refused (401): enter the right one above." : "Enter the API token above to continue."));
    throw new Unauthorized("an API token is needed");
  }
  if (!resp.ok) throw new ApiError(resp.status, data && data.error);
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
    showError(err);
  }
}

function showError(err) {
  if (err instanceof Unauthorized || err instanceof ApiDown) return;
  if (err instanceof ApiError && err.status === 412) {
    flash("Someone changed this meanwhile (412): your change was not saved.",
      h("button", { type: "button", id: "reload", onclick: () => route() }, "Reload"));
    return;
  }
  flash(err.message);
}

// ---- health indicators ---------------------------------------------------------------------------

function addressHealth(a) {
  if (a.available === false) return ["red", "unavailable" + (a.waiting ? " (" + a.waiting + ")" : "")];
  if (a.available === null || a.available === undefined) return ["orange", "no state yet"];
  if (a.warming) return ["orange", "warming up: waiting for its first checks"];
  const forced = (a.mode_in_force || a.mode) !== "auto"; // a manual mode or a maintenance window decides
  if (forced) return ["green", "available: " + (a.mode_in_force || a.mode)];
  if (a.waiting) return ["orange", "available, waiting on a threshold: " + a.waiting];
  if (a.checks.some((c) => !c.ok)) return ["orange", "degraded: some checks fail"];
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

// ---- request-source lines: chips on the pages, a comma-separated input with suggestions in the forms --

const DEFAULT_LINE = "default";
const NO_LINES = { kinds: [], continents: [], countries: [], regions: [] };
const LINE_LIST = "line-options";

function onlyDefault(lines) {
  return !lines || lines.length === 0 || (lines.length === 1 && lines[0] === DEFAULT_LINE);
}

function chip(line) {
  return h("span", { class: "chip", "data-line": line }, line);
}

function lineChips(lines, attrs) {
  return h("span", { class: "lines", ...attrs }, (lines || []).map(chip));
}

// "country:CN, continent:EU" -> ["country:CN", "continent:EU"]; nothing -> ["default"].
function parseLines(text) {
  const lines = String(text || "").split(",").map((l) => l.trim()).filter(Boolean);
  return lines.length ? lines : [DEFAULT_LINE];
}

function linesText(lines) {
  return onlyDefault(lines) ? "" : lines.join(", ");
}

// The <datalist> of GET /lines; one per form (the lines inputs of the form share it).
function lineSuggestions(catalog) {
  const all = [[DEFAULT_LINE, "every other client"],
    ...catalog.continents.map((c) => [c.line, c.name]),
    ...catalog.countries.map((c) => [c.line, c.name + (c.continent ? " · " + c.continent : "")]),
    ...catalog.regions.map((r) => ["region:" + r, "topology region"])];
  return h("datalist", { id: LINE_LIST }, all.map(([line, label]) => h("option", { value: line, label, "data-line": line })));
}

// A suggestion completes the line being typed: the options carry the lines already typed before it.
function suggestLines(e) {
  const list = $(LINE_LIST);
  if (!list) return;
  const before = e.target.value.includes(",") ? e.target.value.replace(/[^,]*$/, "").replace(/\s*$/, " ") : "";
  for (const o of list.options) o.value = before + o.dataset.line;
}

function linesInput(lines) {
  return textInput(linesText(lines), { list: LINE_LIST, autocomplete: "off", placeholder: DEFAULT_LINE,
    oninput: suggestLines, onfocus: suggestLines });
}

const ALL_DOWN = ["fail_open", "fail_closed", "fallback_pool"];

function describeAllDown(domain) {
  const policy = domain.all_down || "fail_open";
  if (policy === "fail_closed") return [h("b", {}, policy), ": answer nothing (an empty NOERROR)"];
  if (policy === "fallback_pool") {
    return [h("b", {}, policy), ": answer the pool ",
      h("a", { id: "fallback-pool", href: "#/pools/" + enc(domain.fallback_pool || "") }, domain.fallback_pool || "—")];
  }
  return [h("b", {}, policy), ": answer the first enabled pool's addresses, unchecked"];
}

// A live redraw replaces the page: the keyboard focus goes back to the same control in the new page.
function focusKey(el) {
  if (!el || el === document.body || !$("main").contains(el)) return null;
  if (el.id) return "#" + CSS.escape(el.id);
  const owner = el.closest("[data-address], [data-pool], [data-domain]");
  if (!owner) return null;
  const attr = ["address", "pool", "domain"].find((k) => owner.dataset[k] !== undefined);
  const own = el.dataset.action ? '[data-action="' + el.dataset.action + '"]' : el.className ? "." + el.className.split(" ")[0] : "";
  return "[data-" + attr + '="' + CSS.escape(owner.dataset[attr]) + '"] ' + el.tagName.toLowerCase() + own;
}

function keepFocus(draw) {
  const key = focusKey(document.activeElement);
  draw();
  if (!key) return;
  const again = $("main").querySelector(key);
  if (again) again.focus();
}

// ---- domains page --------------------------------------------------------------------------------

async function showDomains() {
  const gen = generation;
  const refresh = () => guarded(async () => {
    const { domains } = await api("GET", "/domains");
    const statuses = await Promise.all(domains.map((d) => api("GET", "/domains/" + enc(d.name) + "/status")));
    if (gen === generation) keepFocus(() => drawDomains(domains, statuses));
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
    h("div", { class: "title-row" }, h("h1", {}, "Access domains"),
      h("a", { class: "button primary", id: "new-domain", href: "#/domains/new" }, "New access domain")),
    domains.length === 0
      ? h("div", { class: "empty" }, h("p", {}, "No access domain yet. Create address pools (with their addresses and health checks), then an access domain that answers from them in order."),
        h("a", { class: "button primary", href: "#/pools/new" }, "Create an address pool"), " ",
        h("a", { class: "button", href: "#/domains/new" }, "Create an access domain"))
      : h("table", { id: "domains", class: "grid" },
        headRow(["Domain", "State", "Type", "Strategy", "Answer pool", "Records"]),
        h("tbody", {}, rows)));
}

// ---- domain page ---------------------------------------------------------------------------------

async function showDomain(fqdn) {
  const gen = generation;
  const refresh = () => guarded(async () => {
    const path = "/domains/" + enc(fqdn);
    let domain, status, events;
    try {
      [domain, status, events] = await Promise.all([
        api("GET", path), api("GET", path + "/status"),
        api("GET", "/events?kind=switch&limit=20&domain=" + enc(fqdn)),
      ]);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        if (gen === generation) { clearInterval(ticker); notFound("access domain", fqdn, "#/"); }
        return;
      }
      throw err;
    }
    const changes = await changeLog(domain); // the domain's and its pools' operations
    if (gen !== generation) return;
    keepFocus(() => drawDomain(domain, status, events.events, changes, refresh));
    if (historyOf) await loadHistory(); // an open history follows the page
  });
  follow(fqdn, refresh);
  // Checks are pushed only when their outcome changes: a periodic re-read keeps their times fresh.
  const ticker = setInterval(() => { if (gen !== generation) clearInterval(ticker); else if (!document.hidden) refresh(); }, 5000);
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

// Drop pool ``name`` where ``target`` is: the pools between move up or down one place.
function placePool(name, target) {
  return (domain) => {
    const order = inSequence(domain.pools);
    const from = order.findIndex((ref) => ref.pool === name), to = order.findIndex((ref) => ref.pool === target);
    if (from < 0 || to < 0 || from === to) return null;
    order.splice(to, 0, ...order.splice(from, 1));
    return { pools: order.map((ref, n) => ({ ...ref, sequence: n + 1 })) };
  };
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
  const act = (path, change, confirm) => () => guarded(async () => {
    flash("");
    if (confirm && !(await confirm())) { await refresh(); return; }
    await changeResource(path, change);
    await refresh();
  });
  const availableElsewhere = (pool, address) => status.pools.some((p) => p.addresses.some((a) =>
    !(p.name === pool && a.name === address) && a.available !== false && a.mode !== "manual_unavailable"));
  const confirmMode = (pool, address, mode) => async () => {
    if (mode !== "manual_unavailable" || availableElsewhere(pool, address)) return true;
    return ask("Take " + address + " out of service?", h("p", {},
      "It is the last available address of " + domain.name + ": no pool stays available, and the edges fall back " +
      "to answering the first enabled pool's addresses, unchecked."), "Make it unavailable");
  };
  const toggle = async () => {
    if (domain.enabled) {
      return ask("Disable " + domain.name + "?", h("p", {},
        "The DNS edges stop answering this name (REFUSED) as soon as you confirm."), "Disable domain");
    }
    return ask("Enable " + domain.name + "?", review(domain, status), "Enable domain");
  };
  const remove = () => guarded(async () => {
    const body = h("p", {}, "The edges stop answering " + domain.name + " (REFUSED) and its settings are deleted. " +
      "Its pools stay.");
    if (!(await ask("Delete " + domain.name + "?", body, "Delete domain"))) return;
    await api("DELETE", path, undefined, domain.revision);
    location.hash = "#/";
  });
  const path = "/domains/" + enc(domain.name);
  const answer = status.answer;
  const refs = inSequence(domain.pools);
  const statusOf = Object.fromEntries(status.pools.map((p) => [p.name, p]));
  // The fallback pool (all_down "fallback_pool") is shown after the pools when it is not one of them.
  const fallbackRef = domain.all_down === "fallback_pool" && domain.fallback_pool &&
    !refs.some((ref) => ref.pool === domain.fallback_pool) ? { pool: domain.fallback_pool, lines: [], fallback: true } : null;
  const shownRefs = fallbackRef ? [...refs, fallbackRef] : refs;

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
        h("dt", {}, "Answer"), h("dd", { id: "answer" }, drawAnswer(domain, answer)),
        h("dt", {}, "All pools down"), h("dd", { id: "all-down", "data-policy": domain.all_down || "fail_open" },
          describeAllDown(domain))),
      h("div", { class: "actions" },
        h("button", { id: "toggle-enabled", type: "button", class: domain.enabled ? "" : "primary",
          onclick: act(path, (d) => (d.enabled === domain.enabled ? { enabled: !domain.enabled } : null), toggle) },
        domain.enabled ? "Disable domain" : "Enable domain"),
        h("a", { class: "button", id: "edit-domain", href: "#/domains/" + enc(domain.name) + "/edit" }, "Edit"),
        h("button", { id: "delete-domain", type: "button", class: "danger", onclick: remove }, "Delete"),
        h("label", {}, "Sequence mode ",
          h("select", { id: "sequence-mode", onchange: (e) => act(path, () => ({ sequence_mode: e.target.value }))() },
            SEQUENCE_MODES.map((m) => h("option", { value: m, selected: m === domain.sequence_mode }, m)))))),
    h("h2", {}, "Orchestration"),
    diagram(domain, status, shownRefs, statusOf),
    h("h2", {}, "Pools"),
    h("div", { id: "pools" }, shownRefs.map((ref, index) => drawPool(ref, statusOf[ref.pool], {
      up: index > 0 && !ref.fallback ? act(path, movePool(ref.pool, -1)) : null,
      down: index < refs.length - 1 ? act(path, movePool(ref.pool, +1)) : null,
      drop: refs.length > 1 && !ref.fallback ? (dragged) => act(path, placePool(dragged, ref.pool))() : null,
      setMode: (address, mode) => act("/pools/" + enc(ref.pool), setAddressMode(address, mode),
        confirmMode(ref.pool, address, mode))(),
    }))),
    h("h2", {}, "Switch log"),
    drawSwitches(switches),
    h("h2", {}, "Change log"),
    drawChanges(changes));
}

function diagram(domain, status, refs, statusOf) {
  // Access domain → its pools in order (with the strategy) → their addresses, coloured by health; the answer
  // being served is marked. Redrawn with the page on every live event.
  const answer = domain.enabled ? status.answer : null;
  const served = new Set(answer ? answer.records : []);
  const strategy = domain.lb_strategy + (domain.lb_strategy === "sequence" ? " · " + domain.sequence_mode : "");
  return h("div", { id: "diagram", class: "diagram", role: "group", "aria-label": "Orchestration of " + domain.name },
    h("div", { class: "node domain-node" }, h("b", {}, domain.name), h("span", { class: "small" }, domain.record_type + " · TTL " + domain.ttl),
      h("span", { class: "small muted" }, domain.enabled ? "enabled" : "disabled")),
    h("div", { class: "edge" }, h("span", { class: "small" }, strategy), "→"),
    h("ol", { class: "pool-nodes" }, refs.map((ref) => {
      const p = statusOf[ref.pool] || { name: ref.pool, available: null, addresses: [] };
      const [color, label] = poolHealth(p);
      const serving = answer && answer.pool === ref.pool;
      return h("li", { class: "node pool-node " + color + (serving ? " serving" : ""), "data-pool": ref.pool,
        "data-serving": serving ? "true" : null },
      h("div", {}, h("span", { class: "seq" }, seqLabel(ref)), " ", h("b", {}, ref.pool),
        serving ? h("span", { class: "badge on" }, answer.fallback ? "serving (fallback)" : "serving") : null,
        (answer && answer.lines || []).filter((l) => l.pool === ref.pool)
          .map((l) => h("span", { class: "badge on", "data-serving-line": l.line }, "serving " + l.line))),
      ref.fallback ? null : lineChips(ref.lines, { title: "Lines of " + ref.pool }),
      h("span", { class: "small muted" }, label),
      h("ul", { class: "address-nodes" }, p.addresses.map((a) => {
        const [c, text] = addressHealth(a);
        const on = serving && served.has(a.address);
        return h("li", { class: "node address-node " + c + (on ? " serving" : ""), "data-address": a.name,
          "data-health": c, "data-serving": on ? "true" : null, title: text },
        dot([c, text]), " ", a.name, " ", h("span", { class: "mono small" }, a.address),
        onlyDefault(a.lines) ? null : lineChips(a.lines, { title: "Lines of " + a.name }));
      })));
    })));
}

function review(domain, status) {
  const refs = inSequence(domain.pools);
  const statusOf = Object.fromEntries(status.pools.map((p) => [p.name, p]));
  const none = refs.every((ref) => !statusOf[ref.pool] || statusOf[ref.pool].available === false);
  return h("div", { id: "review" },
    h("dl", { class: "facts" },
      h("dt", {}, "Record type"), h("dd", {}, domain.record_type),
      h("dt", {}, "TTL"), h("dd", {}, domain.ttl + " s"),
      h("dt", {}, "Strategy"), h("dd", {}, domain.lb_strategy + (domain.lb_strategy === "sequence" ? " · " + domain.sequence_mode : ""))),
    refs.length === 0 ? h("p", { class: "warn-text" }, "It has no pool: it would answer nothing.") :
      h("table", { class: "grid" }, headRow(["#", "Pool", "Lines", "Health", "Addresses"]),
        h("tbody", {}, refs.map((ref) => {
          const p = statusOf[ref.pool] || { name: ref.pool, available: null, addresses: [] };
          return h("tr", { "data-pool": ref.pool }, h("td", {}, ref.sequence), h("td", {}, ref.pool), h("td", {}, lineChips(ref.lines)),
            h("td", {}, dot(poolHealth(p)), " ", poolHealth(p)[1]),
            h("td", { class: "mono small" }, p.addresses.map((a) => a.address + " " + addressHealth(a)[1]).join("; ")));
        }))),
    none && refs.length ? h("p", { class: "warn-text" }, "No pool is available now: the edges would " +
      (domain.all_down === "fail_closed" ? "answer nothing (fail_closed)." : domain.all_down === "fallback_pool"
        ? "answer the fallback pool " + domain.fallback_pool + "." : "answer the first pool, unchecked (fallback).")) : null,
    h("p", {}, "Once enabled, the DNS edges answer " + domain.name + " at once."));
}

function drawAnswer(domain, answer) {
  if (!domain.enabled) return h("span", { id: "answer-pool", class: "muted" }, "none: disabled, the edges refuse it");
  if (!answer) return h("span", { id: "answer-pool", class: "muted" }, "nothing published yet");
  return [h("b", { id: "answer-pool" }, answer.pool || "—"), " ",
    h("span", { id: "answer-records", class: "mono" }, answer.records.join(", ") || "(no records)"),
    answer.fallback ? h("span", { class: "badge warn" }, "fallback: no pool available") : null,
    (answer.lines || []).length === 0 ? null : h("ul", { id: "line-answers", class: "line-answers" },
      answer.lines.map((l) => h("li", { "data-line": l.line }, "clients of ", chip(l.line), " get ",
        h("span", { class: "mono" }, l.records.join(", ") || "(no records)"), " from ", h("b", {}, l.pool))))];
}

function seqLabel(ref) {
  return ref.fallback ? "fallback" : "#" + ref.sequence;
}

function drawPool(ref, pool, actions) {
  pool = pool || { name: ref.pool, available: null, addresses: [] };
  const health = poolHealth(pool);
  // Drag a pool's card onto another to take its place in the sequence (the arrows are the keyboard way).
  const drag = actions.drop ? {
    draggable: "true",
    ondragstart: (e) => { e.dataTransfer.setData("text/plain", ref.pool); e.dataTransfer.effectAllowed = "move"; },
    ondragover: (e) => { e.preventDefault(); e.currentTarget.classList.add("drop-target"); },
    ondragleave: (e) => e.currentTarget.classList.remove("drop-target"),
    ondrop: (e) => {
      e.preventDefault();
      e.currentTarget.classList.remove("drop-target");
      const dragged = e.dataTransfer.getData("text/plain");
      if (dragged && dragged !== ref.pool) actions.drop(dragged);
    },
  } : {};
  return h("article", { class: "pool", "data-pool": ref.pool, ...drag },
    h("header", {},
      dot(health), h("span", { class: "seq" }, seqLabel(ref)),
      h("h3", {}, h("a", { href: "#/pools/" + enc(ref.pool) }, ref.pool)),
      ref.fallback || pool.fallback_pool ? h("span", { class: "badge warn" }, "fallback pool") : null,
      ref.fallback ? null : lineChips(ref.lines, { class: "lines pool-lines", title: "Lines of " + ref.pool }),
      h("span", { class: "muted small" }, health[1]),
      h("span", { class: "spacer" }),
      moveButton("up", "↑", actions.up), moveButton("down", "↓", actions.down)),
    h("table", { class: "grid addresses" },
      headRow(["", "Address", "Value", "Mode", "Latest checks"]),
      h("tbody", {}, pool.addresses.map((a) => drawAddress(a, actions.setMode, (address) => guarded(() => showHistory(ref.pool, address)))))));
}

function moveButton(direction, label, onclick) {
  const attrs = { type: "button", "data-action": direction, title: "Move " + direction, disabled: !onclick, onclick };
  return h("button", attrs, label);
}

function drawAddress(a, setMode, showHistory) {
  const health = addressHealth(a);
  return h("tr", { "data-address": a.name },
    h("td", {}, dot(health)),
    h("td", {}, a.name, onlyDefault(a.lines) ? null : h("div", {}, lineChips(a.lines, { class: "lines address-lines" })),
      h("div", { class: "muted small health-text" }, health[1]),
      h("div", { class: "mode-badges" }, modeBadges(a)),
      realHealth(a)),
    h("td", { class: "mono" }, a.address),
    h("td", {}, h("select", { class: "mode", "aria-label": "Mode of " + a.name, onchange: (e) => setMode(a.name, e.target.value) },
      MODES.map((m) => h("option", { value: m, selected: m === a.mode }, m))),
    h("div", {}, h("button", { type: "button", class: "history", "data-action": "history",
      "aria-label": "Health history of " + a.name, onclick: () => showHistory(a.name) }, "History"))),
    h("td", { class: "latest-checks" }, drawChecks(a)));
}

// The configured mode when not auto, and a maintenance window's mode while one is in force.
function modeBadges(a) {
  const inForce = a.mode_in_force;
  return [
    a.mode !== "auto" ? h("span", { class: "badge warn mode-badge", "data-mode": a.mode, title: "configured mode" }, a.mode) : null,
    inForce && inForce !== a.mode ? h("span", { class: "badge maint maintenance-badge", "data-mode": inForce,
      title: "a maintenance window: " + inForce + (a.maintenance_until ? " until " + when(a.maintenance_until) : "") },
    "maintenance" + (a.maintenance_until ? " until " + localTime(a.maintenance_until) : "") + ": " + inForce) : null,
  ];
}

// The real health from the checks, whatever the mode says (null until the scheduler publishes).
function realHealth(a) {
  if (a.healthy === null || a.healthy === undefined) return null;
  return h("div", { class: "small real-health " + (a.healthy ? "ok" : "fail"), "data-healthy": String(a.healthy) },
    "checks: " + (a.healthy ? "healthy" : "unhealthy") + (a.health_reason ? " — " + a.health_reason : ""));
}

// Each check's latest result per region, grouped by check (with the judgement when there are several).
function drawChecks(a) {
  if (a.checks.length === 0) return h("span", { class: "muted" }, "no checks");
  const groups = new Map();
  for (const c of a.checks) {
    const k = c.check === null || c.check === undefined ? 0 : c.check;
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(c);
  }
  const several = groups.size > 1;
  return [
    several ? h("div", { class: "small judgement", "data-judgement": a.judgement }, "judgement: ", h("b", {}, a.judgement),
      " of " + groups.size + " checks") : null,
    h("table", { class: "checks" }, [...groups.keys()].sort((x, y) => x - y).map((k) => h("tbody", { "data-check": k },
      several ? h("tr", { class: "check-head" }, h("th", { colspan: 6 }, "check #" + (k + 1) + " · " + (groups.get(k)[0].protocol || ""))) : null,
      groups.get(k).map((c) => h("tr", { class: c.ok ? "ok" : "fail", "data-region": c.region },
        h("td", {}, c.region), h("td", {}, c.ok ? "ok" : "fail"),
        h("td", { class: "mono" }, c.rtt_ms === null || c.rtt_ms === undefined ? "" : c.rtt_ms.toFixed(1) + " ms"),
        h("td", { class: "mono" }, c.loss_pct === null || c.loss_pct === undefined ? "" : "loss " + c.loss_pct + "%"),
        h("td", {}, c.error),
        h("td", { class: "muted small", title: when(c.at) + " by " + c.prober }, clock(c.at)))))))];
}

// ---- an address's health log, in a dialog kept fresh with the page ---------------------------------

let historyOf = null; // { pool, address } the history dialog shows, while it is open

function closeHistory() {
  historyOf = null;
  if ($("history").open) $("history").close();
}

async function showHistory(pool, address) {
  const dialog = $("history");
  historyOf = { pool, address };
  dialog.onclose = () => { historyOf = null; };
  dialog.replaceChildren(
    h("h2", { id: "history-title" }, "Health history of " + address, h("span", { class: "muted small" }, " in pool " + pool)),
    h("div", { id: "history-body" }, h("p", { class: "muted" }, "Loading…")),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "history-refresh", onclick: () => guarded(loadHistory) }, "Refresh"),
      h("button", { type: "button", id: "history-close", class: "primary", onclick: closeHistory }, "Close")));
  if (!dialog.open) dialog.showModal();
  $("history-close").focus();
  await loadHistory();
}

async function loadHistory() {
  if (!historyOf) return;
  const { pool, address } = historyOf;
  const { logs } = await api("GET", "/health-logs?pool=" + enc(pool) + "&address=" + enc(address) + "&limit=50");
  if (!historyOf || historyOf.pool !== pool || historyOf.address !== address) return;
  $("history-body").replaceChildren(drawHealthLog(logs));
}

function rttLoss(e) {
  return [e.rtt_ms === null || e.rtt_ms === undefined ? "" : e.rtt_ms.toFixed(1) + " ms",
    e.loss_pct === null || e.loss_pct === undefined ? "" : "loss " + e.loss_pct + "%"].filter(Boolean).join(" · ");
}

function describeLogEntry(e) {
  const what = e.kind === "address_changed" ? "" : "check #" + ((e.check || 0) + 1) + (e.protocol ? " " + e.protocol : "") + ": ";
  const text = e.message || e.error || (e.state ? "went " + e.state : "");
  return what + text + (e.message && e.error && !e.message.includes(e.error) ? " (" + e.error + ")" : "");
}

function drawHealthLog(logs) {
  if (logs.length === 0) {
    return h("p", { id: "health-log", class: "muted" }, "No entry yet: failed checks and region and address changes are logged here.");
  }
  const bad = (e) => e.ok === false || e.available === false || e.healthy === false || e.state === "down";
  return h("div", { class: "scroll" }, h("table", { id: "health-log", class: "grid" },
    headRow(["At", "Kind", "Region / prober", "What", "RTT / loss"]),
    h("tbody", {}, logs.map((e) => h("tr", { "data-kind": e.kind, class: bad(e) ? "fail" : "" },
      h("td", { class: "small nowrap", title: when(e.at) }, localTime(e.at)),
      h("td", { class: "nowrap" }, e.kind.replace(/_/g, " ")),
      h("td", { class: "small" }, [e.region, e.prober].filter(Boolean).join(" / ") || "—"),
      h("td", {}, describeLogEntry(e)),
      h("td", { class: "mono small nowrap" }, rttLoss(e)))))));
}

function drawSwitches(events, withDomain) {
  if (events.length === 0) return h("p", { id: "switch-log", class: "muted" }, "No switch yet.");
  return h("table", { id: "switch-log", class: "grid" },
    headRow([...(withDomain ? ["Domain"] : []), "At", "From", "To", "Reason", "Records"]),
    h("tbody", {}, events.map((e) => h("tr", {},
      withDomain ? h("td", { class: "nowrap" }, e.domain) : null,
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

// ---- confirmation dialog ---------------------------------------------------------------------------

function ask(title, body, okLabel) {
  // A modal <dialog>: resolves true when confirmed, false when cancelled (button or Escape).
  return new Promise((resolve) => {
    const dialog = $("confirm");
    const done = (answer) => { dialog.onclose = null; if (dialog.open) dialog.close(); resolve(answer); };
    dialog.replaceChildren(
      h("h2", { id: "confirm-title" }, title),
      h("div", { class: "confirm-body" }, body),
      h("div", { class: "actions" },
        h("button", { type: "button", id: "confirm-ok", class: "primary", onclick: () => done(true) }, okLabel),
        h("button", { type: "button", id: "confirm-cancel", onclick: () => done(false) }, "Cancel")));
    dialog.onclose = () => done(false);
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

// ---- forms: every input carries data-field = the API's field path, so an error lands beside it -----

const POOL_TYPES = ["ipv4", "ipv6", "domain"];
const HEALTH_CONDITIONS = ["any_ok", "p30_ok", "p50_ok", "p70_ok", "all_ok"];
const POOL_STRATEGIES = ["round_robin", "sequence", "weight", "source_nearest"];
const DOMAIN_STRATEGIES = ["sequence", "round_robin", "weight", "source_nearest"];
const RECORD_TYPES = ["A", "AAAA", "CNAME"];
const PROTOCOLS = ["http", "https", "tcp", "ping"];
const FAILURE_RATES = [20, 50, 80, 100];
const LOSS_RATES = [10, 30, 50, 80, 90, 100];
const WINDOW_MODES = ["manual_unavailable", "manual_available"];
const CHECK_DEFAULTS = { protocol: "http", port: "", path: "/", host: "", expected_codes: [200], interval_s: 15,
  timeout_s: 2, failures: 2, successes: 1, failure_rate: 50, packets: 1, loss_rate: 100 };
let fieldIds = 0;

function field(label, path, input, hint) {
  const id = "f-" + (++fieldIds);
  input.id = id;
  input.dataset.field = path;
  return h("div", { class: "field", "data-for": path },
    h("label", { for: id }, label), input,
    hint ? h("span", { class: "hint" }, hint) : null,
    h("span", { class: "field-error", role: "alert", hidden: true }));
}

function textInput(value, attrs) {
  return h("input", { type: "text", value: value === undefined || value === null ? "" : value, ...attrs });
}

function numberInput(value, min, max, attrs) {
  return h("input", { type: "number", value: value === undefined || value === null ? "" : value, min, max, ...attrs });
}

function choice(values, current, attrs) {
  return h("select", attrs || {}, values.map((v) => h("option", { value: v, selected: String(v) === String(current) }, v)));
}

function checkbox(checked, attrs) {
  return h("input", { type: "checkbox", checked: !!checked, ...attrs });
}

function clearFieldErrors(form) {
  for (const e of form.querySelectorAll(".field-error")) { e.textContent = ""; e.hidden = true; }
  for (const e of form.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
}

function fieldError(form, path, message) {
  // The deepest field the path names: "addresses[0].health_check.port", else "addresses[0]", ...
  for (let p = path; p; p = p.replace(/(\.[^.[\]]+|\[\d+\])$/, "") || "") {
    const input = [...form.querySelectorAll("[data-field]")].find((e) => e.dataset.field === p);
    if (input) {
      const box = input.closest(".field").querySelector(".field-error");
      box.textContent = message; box.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return true;
    }
    if (!/(\.[^.[\]]+|\[\d+\])$/.test(p)) break;
  }
  return false;
}

async function submitting(form, save) {
  clearFieldErrors(form);
  flash("");
  try {
    await save();
  } catch (err) {
    if (err instanceof ApiError && err.field && fieldError(form, err.field, err.message)) {
      flash("Not saved: " + err.message);
      return;
    }
    showError(err);
  }
}

function val(form, path) {
  const e = [...form.querySelectorAll("[data-field]")].find((x) => x.dataset.field === path);
  if (!e) return undefined;
  if (e.type === "checkbox") return e.checked;
  if (e.type === "number") return e.value === "" ? undefined : Number(e.value);
  return e.value;
}

function codes(text) {
  return String(text).split(/[\s,]+/).filter(Boolean).map((c) => (/^\d+$/.test(c) ? Number(c) : c));
}

function usersOf(domains, pool) {
  return domains.filter((d) => d.pools.some((ref) => ref.pool === pool)).map((d) => d.name);
}

// ---- pools ----------------------------------------------------------------------------------------

async function showPools() {
  const gen = generation;
  const [{ pools }, { domains }] = await Promise.all([api("GET", "/pools"), api("GET", "/domains")]);
  if (gen !== generation) return;
  $("main").replaceChildren(
    h("div", { class: "title-row" }, h("h1", {}, "Address pools"),
      h("a", { class: "button primary", id: "new-pool", href: "#/pools/new" }, "New address pool")),
    pools.length === 0
      ? h("div", { class: "empty" }, h("p", {}, "No address pool yet. A pool groups the addresses (servers) that answer; create one first, then an access domain that uses it."),
        h("a", { class: "button primary", href: "#/pools/new" }, "Create an address pool"))
      : h("table", { id: "pools-list", class: "grid" }, headRow(["Pool", "Type", "Strategy", "Condition", "Addresses", "Used by"]),
        h("tbody", {}, pools.map((p) => h("tr", { "data-pool": p.name },
          h("td", {}, h("a", { href: "#/pools/" + enc(p.name) }, p.name)), h("td", {}, p.type),
          h("td", {}, p.lb_strategy), h("td", {}, p.health_condition),
          h("td", { class: "mono small" }, p.addresses.map((a) => a.address).join(", ")),
          h("td", {}, usersOf(domains, p.name).join(", ") || h("span", { class: "muted" }, "no domain")))))));
}

async function showPoolForm(name) {
  const gen = generation;
  const isNew = name === null;
  let pool = { type: "ipv4", enabled: true, health_condition: "any_ok", lb_strategy: "round_robin",
    sequence_mode: "preemptive", remarks: "", addresses: [] };
  if (!isNew) {
    try { pool = await api("GET", "/pools/" + enc(name)); } catch (err) {
      if (err instanceof ApiError && err.status === 404) return notFound("address pool", name, "#/pools");
      throw err;
    }
  }
  const [{ domains }, { templates }, catalog] = await Promise.all([api("GET", "/domains"),
    api("GET", "/health-templates").catch(() => ({ templates: [] })), lineCatalog()]);
  if (gen !== generation) return;
  const rows = h("div", { id: "address-rows" });
  const original = pool.addresses;
  let count = 0;
  const addRow = (a) => rows.append(addressRow(count++, a || { name: "", address: "", enabled: true, mode: "auto",
    weight: 1, sequence: 1, health_check: { ...CHECK_DEFAULTS } }, templates));
  original.forEach(addRow);
  const form = h("form", { id: "pool-form", class: "form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Pool"),
      field("Name", "name", textInput(isNew ? "" : pool.name, { disabled: !isNew, required: true, placeholder: "Primary-DC" }),
        "1–64 of A–Z a–z 0–9 . _ -"),
      field("Type", "type", choice(POOL_TYPES, pool.type)),
      field("Enabled", "enabled", checkbox(pool.enabled)),
      field("Health condition", "health_condition", choice(HEALTH_CONDITIONS, pool.health_condition),
        "share of enabled addresses that must be available"),
      field("Strategy within the pool", "lb_strategy", choice(POOL_STRATEGIES, pool.lb_strategy)),
      field("Sequence mode", "sequence_mode", choice(SEQUENCE_MODES, pool.sequence_mode)),
      field("Remarks", "remarks", textInput(pool.remarks, { maxlength: 256 }))),
    h("fieldset", {}, h("legend", {}, "Addresses"), rows,
      h("button", { type: "button", id: "add-address", onclick: () => addRow() }, "+ Add address"),
      lineSuggestions(catalog)),
    h("div", { class: "actions" },
      h("button", { type: "submit", id: "save", class: "primary" }, isNew ? "Create pool" : "Save pool"),
      h("a", { href: isNew ? "#/pools" : "#/pools/" + enc(name) + "/", class: "button" }, "Cancel"),
      isNew ? null : h("button", { type: "button", id: "delete", class: "danger", onclick: () => deletePool(name, domains) }, "Delete pool")));
  if (original.length === 0) addRow();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(form, () => savePool(form, isNew, pool, domains));
  });
  $("main").replaceChildren(h("p", {}, h("a", { href: "#/pools" }, "← Address pools")),
    h("h1", {}, isNew ? "New address pool" : "Address pool " + name), form);
}

function checkFields(c, hc) {
  // packets and loss_rate are for ping checks only: shown when the protocol is ping.
  const ping = [
    field("Packets", c + "packets", numberInput(hc.packets === undefined ? 1 : hc.packets, 1, 100), "ping: echo requests per check"),
    field("Loss rate (%)", c + "loss_rate", choice(LOSS_RATES, hc.loss_rate === undefined ? 100 : hc.loss_rate),
      "ping: the loss at which it fails")];
  const showPing = (protocol) => ping.forEach((f) => { f.hidden = protocol !== "ping"; });
  showPing(hc.protocol);
  return [
    field("Protocol", c + "protocol", choice(PROTOCOLS, hc.protocol, { onchange: (e) => showPing(e.target.value) })),
    field("Port", c + "port", numberInput(hc.port, 1, 65535), "default for the protocol"),
    field("Path", c + "path", textInput(hc.path)),
    field("Host", c + "host", textInput(hc.host), "Host header and SNI"),
    field("Expected codes", c + "expected_codes", textInput((hc.expected_codes || []).join(", ")), "200, 2xx"),
    field("Interval (s)", c + "interval_s", numberInput(hc.interval_s, 1, 3600, { step: "any" })),
    field("Timeout (s)", c + "timeout_s", numberInput(hc.timeout_s, 0, 3600, { step: "any" })),
    field("Failures", c + "failures", numberInput(hc.failures, 1, 10), "to go down"),
    field("Successes", c + "successes", numberInput(hc.successes, 1, 10), "to come back"),
    field("Failure rate (%)", c + "failure_rate", choice(FAILURE_RATES, hc.failure_rate), "of regions"),
    ...ping];
}

// An address's checks: the health_checks list, or the one-check shorthand health_check.
function checksOf(a) {
  if (a.health_checks && a.health_checks.length) return a.health_checks;
  return a.health_check ? [a.health_check] : [];
}

// The API's path of check j of n: one check is the shorthand "health_check", several "health_checks[j]".
function checkPath(p, j, n) {
  return n === 1 ? p + ".health_check" : p + ".health_checks[" + j + "]";
}

// datetime-local values are local times: an RFC 3339 UTC time ("…Z") to send, and back for the input.
function utcTime(local) {
  const d = new Date(local);
  return isNaN(d) ? "" : d.toISOString().replace(/\.000Z$/, "Z");
}

function localInputTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d)) return "";
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

// Give the check and maintenance inputs of an address row the API's field paths (after an add or a removal).
function renumberAddress(row) {
  const p = "addresses[" + row.dataset.row + "]";
  const setPath = (e, path) => { e.dataset.field = path; e.closest(".field").dataset.for = path; };
  const boxes = [...row.querySelectorAll(".check-row")];
  boxes.forEach((box, j) => {
    const c = checkPath(p, j, boxes.length);
    for (const e of box.querySelectorAll("[data-field]")) setPath(e, c + "." + e.dataset.field.split(".").pop());
    box.querySelector("legend").textContent = "Check " + (j + 1) + (boxes.length === 1 ? "" : " of " + boxes.length);
    box.querySelector(".remove-check").setAttribute("aria-label", "Remove check " + (j + 1));
  });
  row.querySelector(".judgement-field").hidden = boxes.length < 2;
  [...row.querySelectorAll(".maintenance-row")].forEach((w, j) => {
    for (const e of w.querySelectorAll("[data-field]")) setPath(e, p + ".maintenance[" + j + "]." + e.dataset.field.split(".").pop());
    w.querySelector(".remove-window").setAttribute("aria-label", "Remove maintenance window " + (j + 1));
  });
}

function addressRow(i, a, templates) {
  const p = "addresses[" + i + "]";
  const checks = checksOf(a);
  const checkRows = h("div", { class: "check-rows" });
  const windowRows = h("div", { class: "maintenance-rows" });
  const hasCheck = checkbox(checks.length > 0, { onchange: (e) => {
    checkBox.hidden = !e.target.checked;
    if (e.target.checked && checkRows.children.length === 0) addCheck();
  } });
  const addCheck = (hc, before) => {
    const box = h("fieldset", { class: "check-fields check-row" }, h("legend", {}, "Check"),
      field("Template", "check.template", choice(["", ...templates.map((t) => t.name)], (hc && hc.template) || ""), "optional"),
      checkFields("check.", hc || { ...CHECK_DEFAULTS }),
      h("button", { type: "button", class: "remove-check", onclick: () => {
        box.remove();
        if (checkRows.children.length === 0) { hasCheck.checked = false; checkBox.hidden = true; }
        renumberAddress(row);
      } }, "Remove check"));
    box.original = before || null; // the check as saved: its template overrides are kept
    checkRows.append(box);
    renumberAddress(row);
  };
  const addWindow = (w) => {
    const from = localInputTime(w && w.from), until = localInputTime(w && w.until);
    const wrow = h("div", { class: "pool-row maintenance-row" },
      field("Maintenance from", "window.from", h("input", { type: "datetime-local", value: from }), "local time"),
      field("Until", "window.until", h("input", { type: "datetime-local", value: until }), "local time"),
      field("Mode during it", "window.mode", choice(WINDOW_MODES, w ? w.mode : "manual_unavailable")),
      h("button", { type: "button", class: "remove-window", onclick: () => { wrow.remove(); renumberAddress(row); } }, "Remove window"));
    wrow.original = w ? { ...w, shown: { from, until } } : null; // an unchanged time is sent as saved (seconds kept)
    windowRows.append(wrow);
    renumberAddress(row);
  };
  const checkBox = h("div", { class: "checks-box", hidden: checks.length === 0 },
    field("Judgement", p + ".judgement", choice(HEALTH_CONDITIONS, a.judgement || "all_ok"), "share of the checks that must pass"),
    checkRows,
    h("button", { type: "button", class: "add-check", "aria-label": "Add a check to " + (a.name || "address " + (i + 1)),
      onclick: () => addCheck() }, "+ Add check"));
  checkBox.querySelector(".field").classList.add("judgement-field");
  const row = h("div", { class: "address-row", "data-row": i },
    h("div", { class: "row-fields" },
      field("Address name", p + ".name", textInput(a.name, { placeholder: "Server-01" })),
      field("Value", p + ".address", textInput(a.address, { placeholder: "192.0.2.10" }), "IP or host name"),
      field("Weight", p + ".weight", numberInput(a.weight, 1, 100)),
      field("Sequence", p + ".sequence", numberInput(a.sequence, 1, 100)),
      field("Mode", p + ".mode", choice(MODES, a.mode)),
      field("Enabled", p + ".enabled", checkbox(a.enabled)),
      field("Lines", p + ".lines", linesInput(a.lines), "comma-separated; empty: default"),
      field("Health check", p + ".has_check", hasCheck),
      h("button", { type: "button", class: "remove-address", "aria-label": "Remove address " + (a.name || i + 1),
        onclick: () => row.remove() }, "Remove")),
    checkBox,
    h("div", { class: "maintenance" },
      h("span", { class: "hint" }, "Maintenance windows: the address behaves as their mode says, then goes back to its own."),
      windowRows,
      h("button", { type: "button", class: "add-window", "aria-label": "Add a maintenance window to " + (a.name || "address " + (i + 1)),
        onclick: () => addWindow() }, "+ Add maintenance window")));
  row.original = a; // fields the form does not show (region, remarks, ...) are kept
  checks.forEach((hc) => addCheck(hc, hc));
  (a.maintenance || []).forEach(addWindow);
  renumberAddress(row);
  return row;
}

function readCheckFields(form, c) {
  const values = {
    protocol: val(form, c + "protocol"), port: val(form, c + "port"), path: val(form, c + "path"),
    host: val(form, c + "host"), expected_codes: codes(val(form, c + "expected_codes")),
    interval_s: val(form, c + "interval_s"), timeout_s: val(form, c + "timeout_s"),
    failures: val(form, c + "failures"), successes: val(form, c + "successes"),
    failure_rate: Number(val(form, c + "failure_rate")),
  };
  if (values.protocol === "ping") { // other protocols keep the defaults (the API refuses anything else)
    values.packets = val(form, c + "packets");
    values.loss_rate = Number(val(form, c + "loss_rate"));
  }
  for (const k of Object.keys(values)) if (values[k] === undefined) delete values[k];
  return values;
}

function readCheck(form, c, before) {
  const values = readCheckFields(form, c + ".");
  const template = val(form, c + ".template");
  if (!template) return values;
  // With a template: only the fields set on the address itself (changed here or before) are sent.
  const base = before || {};
  const overrides = Object.keys(values).filter((k) => (base.overrides || []).includes(k) ||
    (base.template === template && JSON.stringify(values[k]) !== JSON.stringify(base[k])));
  const out = { template, overrides };
  for (const k of overrides) out[k] = values[k];
  return out;
}

function readPool(form, isNew, pool) {
  const body = { ...pool };
  delete body.revision; delete body.name;
  for (const k of ["type", "enabled", "health_condition", "lb_strategy", "sequence_mode", "remarks"]) body[k] = val(form, k);
  // The API's field paths count the rows sent: renumber after removals so errors land on the right row.
  [...form.querySelectorAll(".address-row")].forEach((row, n) => {
    for (const e of row.querySelectorAll("[data-field]")) {
      e.dataset.field = e.dataset.field.replace(/^addresses\[\d+\]/, "addresses[" + n + "]");
      e.closest(".field").dataset.for = e.dataset.field;
    }
    row.dataset.row = n;
    renumberAddress(row);
  });
  body.addresses = [...form.querySelectorAll(".address-row")].map((row) => {
    const p = "addresses[" + row.dataset.row + "]";
    const a = { ...row.original };
    for (const k of ["name", "address", "weight", "sequence", "mode", "enabled"]) a[k] = val(form, p + "." + k);
    a.lines = parseLines(val(form, p + ".lines"));
    const boxes = val(form, p + ".has_check") ? [...row.querySelectorAll(".check-row")] : [];
    const checks = boxes.map((box, j) => readCheck(form, checkPath(p, j, boxes.length), box.original));
    // Several checks: health_checks (and no health_check); one: the health_check shorthand, as before.
    delete a.health_check; delete a.health_checks;
    if (checks.length > 1) a.health_checks = checks;
    else a.health_check = checks[0] || null;
    a.judgement = val(form, p + ".judgement");
    a.maintenance = [...row.querySelectorAll(".maintenance-row")].map((w, j) => {
      const m = p + ".maintenance[" + j + "]";
      const time = (k) => {
        const shown = val(form, m + "." + k);
        if (!shown) throw new ApiError(400, { message: "a date and time is needed", field: m + "." + k });
        if (w.original && w.original.shown[k] === shown) return w.original[k];
        return utcTime(shown);
      };
      return { from: time("from"), until: time("until"), mode: val(form, m + ".mode") };
    });
    return a;
  });
  return body;
}

async function savePool(form, isNew, pool, domains) {
  const name = isNew ? val(form, "name").trim() : pool.name;
  const body = readPool(form, isNew, pool);
  const path = "/pools/" + enc(name);
  if (isNew) {
    if (!name) { fieldError(form, "name", "a name is required"); return; }
    const exists = await api("GET", path).then(() => true, (err) => {
      if (err instanceof ApiError && err.status === 404) return false;
      throw err;
    });
    if (exists) { fieldError(form, "name", "a pool called " + name + " already exists"); return; }
    await api("PUT", path, body);
  } else {
    const users = usersOf(domains, name);
    const down = body.addresses.every((a) => !a.enabled || a.mode === "manual_unavailable");
    if (users.length && !(await ask("Change pool " + name + "?", [
      h("p", {}, "This pool is used by " + users.join(", ") + ": their answers may change at once."),
      down ? h("p", { class: "warn-text", id: "pool-down-warning" }, "No address of it stays available: the pool goes down.") : null],
    "Save pool"))) return;
    await api("PUT", path, body, pool.revision);
  }
  location.hash = "#/pools";
}

async function deletePool(name, domains) {
  const users = usersOf(domains, name);
  const body = users.length
    ? h("p", {}, "It is used by " + users.join(", ") + ": the API refuses to delete it until it is removed from them.")
    : h("p", {}, "No access domain uses it. Its addresses stop being checked.");
  if (!(await ask("Delete pool " + name + "?", body, "Delete pool"))) return;
  await guarded(async () => { await api("DELETE", "/pools/" + enc(name)); location.hash = "#/pools"; });
}

// ---- access domain form ---------------------------------------------------------------------------

// GET /lines for the suggestions; a form still works (with no suggestions) if it fails.
function lineCatalog() {
  return api("GET", "/lines").catch((err) => {
    if (err instanceof ApiError) return NO_LINES;
    throw err;
  });
}

async function showDomainForm(fqdn) {
  const gen = generation;
  const isNew = fqdn === null;
  let domain = { record_type: "A", ttl: 30, enabled: false, remarks: "", pools: [], lb_strategy: "sequence",
    sequence_mode: "preemptive" };
  if (!isNew) {
    try { domain = await api("GET", "/domains/" + enc(fqdn)); } catch (err) {
      if (err instanceof ApiError && err.status === 404) return notFound("access domain", fqdn, "#/");
      throw err;
    }
  }
  const [{ pools }, catalog] = await Promise.all([api("GET", "/pools"), lineCatalog()]);
  if (gen !== generation) return;
  if (pools.length === 0) {
    $("main").replaceChildren(h("h1", {}, "New access domain"), h("div", { class: "empty" },
      h("p", {}, "An access domain answers with the addresses of its pools: create an address pool first."),
      h("a", { class: "button primary", href: "#/pools/new" }, "Create an address pool")));
    return;
  }
  const rows = h("ol", { id: "pool-rows" });
  const renumber = () => [...rows.children].forEach((li, n) => {
    for (const e of li.querySelectorAll("[data-field]")) {
      e.dataset.field = e.dataset.field.replace(/^pools\[\d+\]/, "pools[" + n + "]");
      e.closest(".field").dataset.for = e.dataset.field;
    }
    li.querySelector("[data-field$='.sequence']").value = n + 1;
    li.querySelector(".pool-up").disabled = n === 0;
    li.querySelector(".pool-down").disabled = n === rows.children.length - 1;
  });
  const addRow = (ref) => {
    const n = rows.children.length, p = "pools[" + n + "]";
    const li = h("li", { class: "pool-row" },
      field("Pool", p + ".pool", choice(pools.map((x) => x.name), ref ? ref.pool : pools[Math.min(n, pools.length - 1)].name)),
      field("Sequence", p + ".sequence", numberInput(n + 1, 1, 100, { readonly: true }), "order below"),
      field("Weight", p + ".weight", numberInput(ref ? ref.weight : 1, 1, 100)),
      field("Lines", p + ".lines", linesInput(ref ? ref.lines : null), "comma-separated; empty: default"),
      h("button", { type: "button", class: "pool-up", "aria-label": "Move up",
        onclick: () => { if (li.previousElementSibling) rows.insertBefore(li, li.previousElementSibling); renumber(); } }, "↑"),
      h("button", { type: "button", class: "pool-down", "aria-label": "Move down",
        onclick: () => { if (li.nextElementSibling) rows.insertBefore(li.nextElementSibling, li); renumber(); } }, "↓"),
      h("button", { type: "button", class: "remove-pool", onclick: () => { li.remove(); renumber(); } }, "Remove"));
    rows.append(li);
    renumber();
  };
  inSequence(domain.pools).forEach(addRow);
  const allDown = choice(ALL_DOWN, domain.all_down || "fail_open",
    { onchange: (e) => { fallbackField.hidden = e.target.value !== "fallback_pool"; } });
  const fallbackField = field("Fallback pool", "fallback_pool", choice(["", ...pools.map((x) => x.name)], domain.fallback_pool || ""),
    "answered when every pool is down (need not be one of the pools above)");
  fallbackField.hidden = (domain.all_down || "fail_open") !== "fallback_pool";
  const form = h("form", { id: "domain-form", class: "form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Access domain"),
      field("Domain name", "name", textInput(isNew ? "" : domain.name, { disabled: !isNew, placeholder: "www.example.com" })),
      field("Record type", "record_type", choice(RECORD_TYPES, domain.record_type),
        "A: ipv4 or domain pools, AAAA: ipv6 or domain, CNAME: domain"),
      field("TTL (s)", "ttl", numberInput(domain.ttl, 1, 86400)),
      isNew ? null : field("Enabled", "enabled", checkbox(domain.enabled, { disabled: true }), "use Enable / Disable on its page"),
      field("Strategy between pools", "lb_strategy", choice(DOMAIN_STRATEGIES, domain.lb_strategy), "sequence = global availability"),
      field("Sequence mode", "sequence_mode", choice(SEQUENCE_MODES, domain.sequence_mode)),
      field("Remarks", "remarks", textInput(domain.remarks, { maxlength: 256 }))),
    h("fieldset", {}, h("legend", {}, "Pools, in order"), rows,
      h("button", { type: "button", id: "add-pool", onclick: () => addRow() }, "+ Add pool"),
      h("p", { class: "hint" }, "Lines: which clients a pool answers (default: every client no other line takes), " +
        "e.g. country:CN, continent:EU, asn:4134, region:NAME."),
      lineSuggestions(catalog),
      field("When every pool is down", "all_down", allDown, "fail_open: answer the first pool anyway; " +
        "fail_closed: answer nothing; fallback_pool: answer the pool below"),
      fallbackField),
    h("p", { class: "hint" }, isNew ? "A new domain starts disabled: review and enable it on its page." : ""),
    h("div", { class: "actions" },
      h("button", { type: "submit", id: "save", class: "primary" }, isNew ? "Create access domain" : "Save access domain"),
      h("a", { href: isNew ? "#/" : "#/domains/" + enc(fqdn), class: "button" }, "Cancel")));
  if (domain.pools.length === 0) addRow();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(form, async () => {
      const name = isNew ? val(form, "name").trim().replace(/\.$/, "") : domain.name;
      if (!name) { fieldError(form, "name", "a domain name is required"); return; }
      const body = { ...domain };
      delete body.revision; delete body.name;
      for (const k of ["record_type", "ttl", "lb_strategy", "sequence_mode", "remarks"]) body[k] = val(form, k);
      body.pools = [...rows.children].map((li, n) => ({ pool: val(form, "pools[" + n + "].pool"), sequence: n + 1,
        weight: val(form, "pools[" + n + "].weight"), lines: parseLines(val(form, "pools[" + n + "].lines")) }));
      body.all_down = val(form, "all_down");
      body.fallback_pool = body.all_down === "fallback_pool" ? val(form, "fallback_pool") || null : null;
      const path = "/domains/" + enc(name);
      if (!isNew && domain.enabled && body.pools.length === 0 && !(await ask("Leave " + name + " with no pool?",
        h("p", {}, "It is enabled: with no pool it answers nothing."), "Save access domain"))) return;
      if (isNew) {
        const exists = await api("GET", path).then(() => true, (err) => {
          if (err instanceof ApiError && err.status === 404) return false;
          throw err;
        });
        if (exists) { fieldError(form, "name", "an access domain called " + name + " already exists"); return; }
        body.enabled = false;
        await api("PUT", path, body);
      } else {
        await api("PUT", path, body, domain.revision);
      }
      location.hash = "#/domains/" + enc(name);
    });
  });
  $("main").replaceChildren(h("p", {}, h("a", { href: "#/" }, "← Access domains")),
    h("h1", {}, isNew ? "New access domain" : "Edit " + fqdn), form);
}

function notFound(what, name, back) {
  if (live) { live.close(); live = null; }
  $("main").replaceChildren(h("section", { id: "not-found" },
    h("h1", {}, "Not found"),
    h("p", {}, "There is no " + what + " called " + name + " (deleted, or never created)."),
    h("a", { class: "button", href: back }, "Back to the list")));
}

// ---- settings: health templates, alert targets, topology ------------------------------------------

async function getOr404(path, fallback) {
  return api("GET", path).catch((err) => {
    if (err instanceof ApiError && err.status === 404) return fallback;
    throw err;
  });
}

async function showSettings() {
  const gen = generation;
  const [{ templates }, targets, topology] = await Promise.all([api("GET", "/health-templates"),
    api("GET", "/alert-targets"), getOr404("/topology", { entries: [] })]);
  if (gen !== generation) return;
  const list = (id, items, href, describe, what) => items.length === 0
    ? h("div", { class: "empty" }, h("p", {}, "No " + what + " yet."), h("a", { class: "button primary", href: href + "new" }, "Create one"))
    : h("table", { id, class: "grid" }, h("tbody", {}, items.map((t) => h("tr", { "data-name": t.name },
      h("td", {}, h("a", { href: href + enc(t.name) }, t.name)), h("td", { class: "small" }, describe(t))))));
  $("main").replaceChildren(
    h("div", { class: "title-row" }, h("h1", {}, "Health templates"),
      h("a", { class: "button primary", id: "new-template", href: "#/templates/new" }, "New health template")),
    list("templates-list", templates, "#/templates/", (t) => t.protocol + " port " + (t.port || "default") + " " + t.path +
      " every " + t.interval_s + " s", "health template (a reusable health check an address can refer to)"),
    h("div", { class: "title-row" }, h("h1", {}, "Alert targets"),
      h("a", { class: "button primary", id: "new-target", href: "#/alert-targets/new" }, "New alert target")),
    list("targets-list", targets.alert_targets, "#/alert-targets/", (t) => t.url + " · " + t.kinds.join(", ") +
      (t.enabled ? "" : " · disabled"), "alert target (a webhook told of every switch)"),
    h("h1", {}, "Topology"), topologyForm(topology));
}

function topologyForm(topology) {
  const rows = h("div", { id: "topology-rows" });
  const addRow = (e) => {
    const n = rows.children.length;
    const row = h("div", { class: "pool-row" },
      field("Client CIDR", "entries[" + n + "].cidr", textInput(e ? e.cidr : "", { placeholder: "192.0.2.0/24" })),
      field("Region", "entries[" + n + "].region", textInput(e ? e.region : "", { placeholder: "eu" })),
      h("button", { type: "button", onclick: () => { row.remove(); } }, "Remove"));
    rows.append(row);
  };
  topology.entries.forEach(addRow);
  const form = h("form", { id: "topology-form", class: "form", novalidate: true },
    h("p", { class: "hint" }, "Which region clients of a subnet are nearest to (for the source_nearest strategy)."),
    rows, h("button", { type: "button", id: "add-entry", onclick: () => addRow() }, "+ Add entry"),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "save-topology" }, "Save topology")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    [...rows.children].forEach((row, n) => row.querySelectorAll("[data-field]").forEach((e) => {
      e.dataset.field = e.dataset.field.replace(/^entries\[\d+\]/, "entries[" + n + "]");
    }));
    submitting(form, async () => {
      const entries = [...rows.children].map((_, n) => ({ cidr: val(form, "entries[" + n + "].cidr"),
        region: val(form, "entries[" + n + "].region") }));
      await api("PUT", "/topology", { entries }, topology.revision ? topology.revision : undefined); // 0: never written
      flash("");
      route();
    });
  });
  return form;
}

// The Save / Cancel / Delete row of a settings form; ``remove`` asks, deletes, and says whether it did.
function settingsActions(isNew, noun, remove) {
  return h("div", { class: "actions" },
    h("button", { type: "submit", class: "primary", id: "save" }, (isNew ? "Create " : "Save ") + noun),
    h("a", { class: "button", href: "#/settings" }, "Cancel"),
    isNew ? null : h("button", { type: "button", class: "danger", id: "delete", onclick: () => guarded(async () => {
      if (await remove()) location.hash = "#/settings";
    }) }, "Delete"));
}

// Submit a named settings form: the name (typed, for a new one) is required; ``save(name)`` says whether it saved.
function submitNamed(form, isNew, name, save) {
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(form, async () => {
      const n = isNew ? val(form, "name").trim() : name;
      if (!n) { fieldError(form, "name", "a name is required"); return; }
      if (await save(n)) location.hash = "#/settings";
    });
  });
}

async function showTemplateForm(name) {
  const gen = generation;
  const isNew = name === null;
  let t = { ...CHECK_DEFAULTS };
  if (!isNew) {
    t = await getOr404("/health-templates/" + enc(name), null);
    if (!t) return notFound("health template", name, "#/settings");
  }
  const { pools } = await api("GET", "/pools");
  if (gen !== generation) return;
  const users = pools.filter((p) => p.addresses.some((a) => checksOf(a).some((c) => c.template === name))).map((p) => p.name);
  const form = h("form", { id: "template-form", class: "form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Health template"),
      field("Name", "name", textInput(isNew ? "" : name, { disabled: !isNew })),
      h("div", { class: "check-fields" }, checkFields("", t))),
    settingsActions(isNew, "template", async () => {
      const body = h("p", {}, users.length ? "Pools using it: " + users.join(", ") + "." : "No address uses it.");
      if (!(await ask("Delete template " + name + "?", body, "Delete template"))) return false;
      await api("DELETE", "/health-templates/" + enc(name), undefined, t.revision);
      return true;
    }));
  submitNamed(form, isNew, name, async (n) => {
    if (!isNew && users.length && !(await ask("Change template " + name + "?",
      h("p", {}, "Addresses of " + users.join(", ") + " use it: their checks change at once."), "Save template"))) return false;
    await api("PUT", "/health-templates/" + enc(n), readCheckFields(form, ""), isNew ? undefined : t.revision);
    return true;
  });
  $("main").replaceChildren(h("p", {}, h("a", { href: "#/settings" }, "← Settings")),
    h("h1", {}, isNew ? "New health template" : "Health template " + name), form);
}

async function showTargetForm(name) {
  const gen = generation;
  const isNew = name === null;
  let t = { url: "", enabled: true, kinds: ["address", "pool", "domain"], remarks: "" };
  if (!isNew) {
    t = await getOr404("/alert-targets/" + enc(name), null);
    if (!t) return notFound("alert target", name, "#/settings");
  }
  if (gen !== generation) return;
  const form = h("form", { id: "target-form", class: "form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Alert target"),
      field("Name", "name", textInput(isNew ? "" : name, { disabled: !isNew })),
      field("Webhook URL", "url", textInput(t.url, { placeholder: "https://hooks.example.com/gtm" })),
      field("Enabled", "enabled", checkbox(t.enabled)),
      ["address", "pool", "domain"].map((k) => field("Alert on " + k + " switches", "kinds." + k, checkbox(t.kinds.includes(k)))),
      field("Remarks", "remarks", textInput(t.remarks, { maxlength: 256 }))),
    settingsActions(isNew, "alert target", async () => {
      if (!(await ask("Delete alert target " + name + "?", h("p", {}, "It will no longer be told of switches."), "Delete"))) return false;
      await api("DELETE", "/alert-targets/" + enc(name), undefined, t.revision);
      return true;
    }));
  submitNamed(form, isNew, name, async (n) => {
    const body = { ...t, url: val(form, "url"), enabled: val(form, "enabled"), remarks: val(form, "remarks"),
      kinds: ["address", "pool", "domain"].filter((k) => val(form, "kinds." + k)) };
    delete body.revision; delete body.name;
    await api("PUT", "/alert-targets/" + enc(n), body, isNew ? undefined : t.revision);
    return true;
  });
  $("main").replaceChildren(h("p", {}, h("a", { href: "#/settings" }, "← Settings")),
    h("h1", {}, isNew ? "New alert target" : "Alert target " + name), form);
}

// ---- logs: the switch log and the operation log, filtered ------------------------------------------

async function showEvents() {
  const gen = generation;
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const kind = params.get("kind") || "switch";
  const form = h("form", { id: "event-filters", class: "form inline" },
    field("Log", "kind", choice(["switch", "operation"], kind)),
    field("Domain", "domain", textInput(params.get("domain") || "")),
    field("Resource", "resource", choice(["", "domain", "pool", "template", "alert_target", "topology"], params.get("resource") || "")),
    field("Name", "name", textInput(params.get("name") || "")),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Filter")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const k of ["kind", "domain", "resource", "name"]) if (val(form, k)) q.set(k, val(form, k));
    location.hash = "#/events?" + q;
  });
  const q = new URLSearchParams({ kind, limit: "100" });
  for (const k of ["domain", "resource", "name"]) if (params.get(k)) q.set(k, params.get(k));
  const { events } = await api("GET", "/events?" + q);
  if (gen !== generation) return;
  $("main").replaceChildren(h("h1", {}, kind === "switch" ? "Switch log" : "Operation log"), form,
    kind === "switch" ? drawSwitches(events, true) : drawChanges(events));
}

// ---- start ---------------------------------------------------------------------------------------

function route(retry) {
  if (retry === true && $("api-down").hidden) return;
  generation += 1;
  if (retry !== true) flash("");
  if (retry !== true) closeHistory();
  const hash = location.hash;
  const streamed = hash === "" || hash === "#/" || (/^#\/domains\/[^/]+$/.test(hash) && hash !== "#/domains/new");
  if (live && !streamed) { live.close(); live = null; }
  if (!streamed) { $("live").textContent = "not live here"; $("live").className = "live off"; }
  const page = (show, ...args) => guarded(() => show(...args));
  let m;
  if (hash === "#/domains/new") page(showDomainForm, null);
  else if ((m = hash.match(/^#\/domains\/([^/]+)\/edit$/))) page(showDomainForm, decodeURIComponent(m[1]));
  else if ((m = hash.match(/^#\/domains\/([^/]+)$/))) page(showDomain, decodeURIComponent(m[1]));
  else if (hash === "#/pools") page(showPools);
  else if (hash === "#/pools/new") page(showPoolForm, null);
  else if ((m = hash.match(/^#\/pools\/([^/]+)\/?$/))) page(showPoolForm, decodeURIComponent(m[1]));
  else if (hash.startsWith("#/events")) page(showEvents);
  else if (hash === "#/settings") page(showSettings);
  else if (hash === "#/templates/new") page(showTemplateForm, null);
  else if ((m = hash.match(/^#\/templates\/([^/]+)$/))) page(showTemplateForm, decodeURIComponent(m[1]));
  else if (hash === "#/alert-targets/new") page(showTargetForm, null);
  else if ((m = hash.match(/^#\/alert-targets\/([^/]+)$/))) page(showTargetForm, decodeURIComponent(m[1]));
  else page(showDomains);
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
