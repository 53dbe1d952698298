// The status panel: the status service's API (/v1/...) on one page, for a
// person. No framework and no build step; every value from the API is set
// as text, never as markup. The read key stays in this tab (sessionStorage).
"use strict";

const PLATFORMS = [["meta", "Meta"], ["google_ads", "Google Ads"], ["tiktok", "TikTok"]];
const PAGE = 25;
const $ = (id) => document.getElementById(id);
let cursors = [null]; // the cursor of every page seen, for "First page"
let page = 0;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

function key() { return sessionStorage.getItem("postback-read-key"); }

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${key()}` } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const where = body.field ? ` (${body.field})` : "";
    throw new Error(`${response.status}: ${body.message || response.statusText}${where}`);
  }
  return body;
}

function say(text) { $("message").textContent = text || ""; }

// UTC with milliseconds: a conversion's records are often within a second.
function time(ms) { return ms == null ? "" : new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC"); }

function pct(x) { return `${(100 * (x || 0)).toFixed(1)} %`; }

function name(s) { return (s || "unknown").replace("_", " "); }

async function loadSummary() {
  const range = Number($("range").value);
  const to = Date.now() + 1;
  const { summary } = await api(`/v1/summary?from=${to - range}&to=${to}`);
  $("totals").textContent = `${summary.conversions} conversions; ${summary.merged} reported by the browser and a server (${pct(summary.merge_rate)}).`;
  const cards = $("summary");
  cards.replaceChildren();
  for (const [id, label] of PLATFORMS) {
    const p = summary.platforms[id];
    if (!p) continue;
    const s = p.server_side || {};
    const rows = [
      ["conversions", p.conversions],
      ["delivered", s.delivered || 0],
      ["sent on, no outcome yet", s.eligible || 0],
      ["retrying", s.retrying || 0],
      ["rejected", s.rejected || 0],
      ...Object.entries(p.rejected_by_reason).map(([r, n]) => [`  rejected: ${r}`, n]),
      ["not eligible", s.not_eligible || 0],
      ...Object.entries(p.not_eligible_by_reason).map(([r, n]) => [`  not eligible: ${r}`, n]),
      ["expired", s.expired || 0],
      ["failed", s.failed || 0],
      ["duplicates dropped", p.duplicates],
      ["pixel fired", `${p.front_end_fired} (${pct(p.front_end_fired_rate)})`],
      ["event to delivered p50 / p95", p.delivered_latency_ms_p50 == null ? "–" : `${p.delivered_latency_ms_p50} / ${p.delivered_latency_ms_p95} ms`],
    ];
    const funnel = el("div", { class: "funnel" });
    for (const [k, v] of rows) funnel.append(el("span", {}, k), el("span", {}, String(v)));
    cards.append(el("div", { class: "card", "data-platform": id }, el("h3", {}, label), funnel));
  }
  if (!cards.children.length) cards.append(el("p", {}, "No conversion in this range."));
}

function listQuery(cursor) {
  const form = new FormData($("filters"));
  const q = new URLSearchParams({ limit: String(PAGE) });
  for (const f of ["platform", "front_end", "server_side", "event_name"]) {
    if (form.get(f)) q.set(f, form.get(f));
  }
  const search = (form.get("search") || "").trim();
  if (search) q.set(form.get("search_by"), search);
  if (cursor) q.set("cursor", cursor);
  return q;
}

function stateCell(state) {
  if (!state) return el("td", { class: "state" }, "–");
  return el("td", { class: "state" },
    el("span", {}, `front end: ${name(state.front_end)}`), el("br"),
    el("b", { class: state.server_side }, `server side: ${name(state.server_side)}`));
}

async function loadList() {
  const result = await api(`/v1/conversions?${listQuery(cursors[page])}`);
  const body = $("conversions").tBodies[0];
  body.replaceChildren();
  for (const c of result.conversions) {
    const row = el("tr", { "data-event-id": c.event_id },
      el("td", {}, time(c.event_time ?? c.first_seen)),
      el("td", {}, c.event_name),
      el("td", {}, c.event_id),
      el("td", {}, c.value ? `${c.value} ${c.currency || ""}` : ""),
      el("td", {}, c.sources.join(" + ")),
      ...PLATFORMS.map(([id]) => stateCell(c.platforms[id])));
    row.addEventListener("click", () => openDetail(c.event_name, c.event_id).catch((e) => say(e.message)));
    body.append(row);
  }
  if (!result.conversions.length) body.append(el("tr", {}, el("td", { colSpan: 8 }, "No conversion matches.")));
  cursors = cursors.slice(0, page + 1);
  if (result.next_cursor) cursors.push(result.next_cursor);
  $("next").disabled = !result.next_cursor;
  $("first").disabled = page === 0;
  $("page-info").textContent = `page ${page + 1}`;
}

async function openDetail(eventName, eventId) {
  const d = await api(`/v1/conversions/${encodeURIComponent(eventName)}/${encodeURIComponent(eventId)}`);
  const c = d.conversion;
  const body = $("detail-body");
  body.replaceChildren(
    el("h2", {}, `${c.event_name} ${c.event_id}`),
    el("p", {}, `Event time ${time(c.event_time)}; ${c.value ? `${c.value} ${c.currency || ""}; ` : ""}order ${c.order_id || "–"}; reported by ${c.sources.join(" + ") || "–"}.`));
  for (const [id, label] of PLATFORMS) {
    const s = c.platforms[id];
    if (!s) continue;
    const details = [s.reason && `reason ${s.reason}`, s.platform_request_id && `request id ${s.platform_request_id}`,
      s.attempt && `attempt ${s.attempt}`, s.next_attempt_at && `next attempt ${time(s.next_attempt_at)}`].filter(Boolean).join(", ");
    const timeline = el("ol", { class: "timeline" });
    for (const h of d.history.filter((h) => h.platform === id)) {
      const parts = [h.reason, h.attempt && `attempt ${h.attempt}`, h.platform_request_id && `request id ${h.platform_request_id}`,
        h.duplicate_of && `duplicate of ${h.duplicate_of}`, h.reported_by && `reported by ${h.reported_by}`].filter(Boolean);
      timeline.append(el("li", {}, `${time(h.time)} ${h.stage}: `, el("b", { class: h.server_side }, name(h.server_side)),
        parts.length ? ` (${parts.join(", ")})` : ""));
    }
    body.append(el("div", { class: "platform", "data-platform": id },
      el("h3", {}, label),
      el("div", {}, "Front-end tracking: ", el("b", {}, name(s.front_end))),
      el("div", {}, "Server-side tracking: ", el("b", { class: s.server_side }, name(s.server_side)), details ? ` (${details})` : ""),
      el("p", { class: "meaning" }, s.meaning),
      el("div", {}, `Match keys: ${s.match_keys.length ? s.match_keys.join(", ") : "none"}`),
      timeline));
  }
  $("detail").hidden = false;
}

async function load() {
  say("");
  $("forget").hidden = !key();
  if (!key()) return;
  // The table shows as soon as its page is there: the summary reads the
  // whole range and may take longer at a million conversions.
  try {
    await Promise.all([
      loadList().then(() => { $("list-section").hidden = false; }),
      loadSummary().then(() => { $("summary-section").hidden = false; }),
    ]);
  } catch (e) {
    $("summary-section").hidden = true;
    $("list-section").hidden = true;
    say(e.message);
  }
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("postback-read-key", $("key").value.trim());
  $("key").value = "";
  cursors = [null]; page = 0;
  load();
});
$("forget").addEventListener("click", () => { sessionStorage.removeItem("postback-read-key"); location.reload(); });
$("filters").addEventListener("submit", (e) => { e.preventDefault(); cursors = [null]; page = 0; loadList().catch((err) => say(err.message)); });
$("filters").addEventListener("reset", () => setTimeout(() => { cursors = [null]; page = 0; loadList().catch((err) => say(err.message)); }));
$("range").addEventListener("change", () => loadSummary().catch((e) => say(e.message)));
$("next").addEventListener("click", () => { page += 1; loadList().catch((e) => say(e.message)); });
$("first").addEventListener("click", () => { page = 0; loadList().catch((e) => say(e.message)); });
$("close").addEventListener("click", () => { $("detail").hidden = true; });
load();
