// The sample shop in headless Chromium (Debian's chromium, driven by
// playwright-core), with the browser tag the collector serves and the
// sandbox's stand-in pixels. Run by tests/tests/shop_to_panel.rs in two
// phases:
//
//   node shop.mjs shop  --modules DIR --chromium PATH --shop URL --out DIR --result FILE
//     a visitor per scenario: lands (with click ids or not), answers the
//     consent banner, buys; checks the tag's cookies and what it sent;
//     writes {scenario: {event_id, beacon}} to FILE.
//   node shop.mjs panel --modules DIR --chromium PATH --panel URL --key K --other-key K2
//                       --expect FILE --out DIR
//     the status panel: each purchase's detail shows the statuses FILE
//     expects; a filter narrows the table; another tenant's key sees none.
//
// Prints one line per check; exits 1 on the first failure (with a
// screenshot of the moment).
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { arg, launch } from "./chromium.mjs";

const phase = process.argv[2];
const out = arg("out");
mkdirSync(out, { recursive: true });
const browser = await launch();

let step = "start";
let page = null;
const problems = [];
async function check(name, f) {
  step = name;
  await f();
  console.log(`ok: ${name}`);
}
function assert(cond, message) { if (!cond) throw new Error(message); }

// A visitor: a fresh context (no cookies, no storage), every beacon to the
// collector recorded with its body and answer.
async function visitor(name, { block = [] } = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  for (const pattern of block) await context.route(pattern, (r) => r.abort("blockedbyclient"));
  const p = await context.newPage();
  const sent = [];
  p.on("pageerror", (e) => problems.push(`${name}: page error: ${e.message}`));
  p.on("console", (m) => {
    if (m.type() === "error" && !/ERR_BLOCKED_BY_CLIENT|ERR_FAILED|net::/.test(m.text())) {
      problems.push(`${name}: console: ${m.text()} (${m.location().url})`);
    }
  });
  p.on("requestfinished", async (r) => {
    if (!r.url().includes("/v1/collect")) return;
    const resp = await r.response();
    sent.push({ body: JSON.parse(r.postData() || "null"), status: resp ? resp.status() : 0 });
  });
  p.on("requestfailed", (r) => {
    if (r.url().includes("/v1/collect")) sent.push({ body: JSON.parse(r.postData() || "null"), status: 0 });
  });
  return { context, page: p, sent };
}

async function cookies(context) {
  return Object.fromEntries((await context.cookies()).map((c) => [c.name, c.value]));
}

async function buy(p, { email = "", serverReport = true } = {}) {
  await p.click("#buy");
  await p.waitForSelector("#place-order");
  if (email) await p.fill("#email", email);
  if (!serverReport) await p.uncheck("#server-report-box");
  await Promise.all([p.waitForURL(/\/thanks/), p.click("#place-order")]);
  return (await p.locator("#event-id").innerText()).trim();
}

async function waitForBeacon(sent, eventId, ok = true) {
  const deadline = Date.now() + 15000;
  for (;;) {
    const b = sent.find((s) => s.body && s.body.event_id === eventId && (!ok || s.status === 202));
    if (b) return b;
    if (Date.now() > deadline) {
      throw new Error(`no ${ok ? "accepted " : ""}beacon for ${eventId}; sent: ${JSON.stringify(sent.map((s) => [s.body?.event_id, s.status]))}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function shopPhase() {
  const shop = arg("shop");
  const result = {};
  const landing = `${shop}/?gclid=Cj0KCQ-test-gclid&fbclid=IwAR-test-fbclid&ttclid=E.C.P.test-ttclid`;

  await check("granted, every pixel present: click ids kept in first-party cookies and sent with the purchase", async () => {
    const v = visitor("granted");
    const { context, page: p, sent } = await v;
    page = p;
    await p.goto(landing);
    await p.click("#accept");
    const c = await cookies(context);
    assert(c._pb_gclid === "Cj0KCQ-test-gclid", `gclid cookie: ${JSON.stringify(c)}`);
    assert(/^fb\.1\.\d+\.IwAR-test-fbclid$/.test(c._pb_fbclid || ""), `fbclid cookie: ${c._pb_fbclid}`);
    assert(c._pb_ttclid === "E.C.P.test-ttclid", `ttclid cookie: ${c._pb_ttclid}`);
    const eventId = await buy(p, { email: "jane.doe@example.com" });
    const b = await waitForBeacon(sent, eventId);
    const e = b.body;
    assert(e.click_ids.gclid === "Cj0KCQ-test-gclid" && e.click_ids.ttclid === "E.C.P.test-ttclid", `click ids: ${JSON.stringify(e.click_ids)}`);
    assert(/IwAR-test-fbclid$/.test(e.click_ids.fbc) && e.click_ids.fbp && e.click_ids.ttp, `cookies of the pixels: ${JSON.stringify(e.click_ids)}`);
    assert(e.consent.ad_storage === "granted" && e.consent.ad_user_data === "granted", `consent: ${JSON.stringify(e.consent)}`);
    assert(JSON.stringify(e.pixels) === JSON.stringify({ meta: "fired", google_ads: "fired", tiktok: "fired" }), `pixels: ${JSON.stringify(e.pixels)}`);
    assert(e.order.order_id && e.order.currency === "EUR" && e.page.url.includes("/thanks"), `order/page: ${JSON.stringify(e)}`);
    await p.screenshot({ path: join(out, "shop-thanks-granted.png") });
    result.granted = { event_id: eventId, beacon: e };
    await context.close();
  });

  await check("granted, Meta's pixel blocked (an ad blocker): reported not fired, the others fired", async () => {
    const { context, page: p, sent } = await visitor("blocked", { block: ["**/en_US/fbevents.js"] });
    page = p;
    await p.goto(landing);
    await p.click("#accept");
    const eventId = await buy(p, { email: "blocked@example.com" });
    const e = (await waitForBeacon(sent, eventId)).body;
    assert(JSON.stringify(e.pixels) === JSON.stringify({ meta: "not_fired", google_ads: "fired", tiktok: "fired" }), `pixels: ${JSON.stringify(e.pixels)}`);
    assert(!e.click_ids.fbp, `no _fbp without Meta's pixel: ${JSON.stringify(e.click_ids)}`);
    assert(/IwAR-test-fbclid$/.test(e.click_ids.fbc || ""), `the tag's own fbc covers the blocked pixel: ${JSON.stringify(e.click_ids)}`);
    result.blocked = { event_id: eventId, beacon: e };
    await context.close();
  });

  await check("denied: no click-id cookie, Meta's and TikTok's pixels never load, consent denied is sent", async () => {
    const { context, page: p, sent } = await visitor("denied");
    page = p;
    await p.goto(landing);
    await p.click("#reject");
    const c = await cookies(context);
    const kept = Object.keys(c).filter((k) => k.startsWith("_pb_") || k === "_fbp" || k === "_ttp");
    assert(kept.length === 0, `cookies stored without consent: ${kept}`);
    const eventId = await buy(p);
    const e = (await waitForBeacon(sent, eventId)).body;
    assert(!e.click_ids || !e.click_ids.gclid, `a click id travelled without consent: ${JSON.stringify(e.click_ids)}`);
    assert(e.consent.ad_storage === "denied" && e.consent.ad_user_data === "denied", `consent: ${JSON.stringify(e.consent)}`);
    assert(JSON.stringify(e.pixels) === JSON.stringify({ meta: "not_fired", google_ads: "fired", tiktok: "not_fired" }), `pixels: ${JSON.stringify(e.pixels)}`);
    result.denied = { event_id: eventId, beacon: e };
    await context.close();
  });

  await check("an IAB TCF CMP: consent read through __tcfapi, its TC string sent", async () => {
    const { context, page: p, sent } = await visitor("tcf");
    page = p;
    await p.goto(`${landing}&cmp=tcf`);
    await p.click("#accept");
    const c = await cookies(context);
    assert(c._pb_gclid === "Cj0KCQ-test-gclid", `gclid cookie after TCF consent: ${JSON.stringify(c)}`);
    const eventId = await buy(p, { email: "tcf@example.com" });
    const e = (await waitForBeacon(sent, eventId)).body;
    assert(e.consent.tcf && e.consent.tcf.startsWith("CQJ"), `tcf: ${JSON.stringify(e.consent)}`);
    assert(e.consent.ad_storage === "granted" && e.consent.ad_user_data === "granted" && e.consent.ad_personalization === "granted", `TCF purposes as consent: ${JSON.stringify(e.consent)}`);
    result.tcf = { event_id: eventId, beacon: e };
    await context.close();
  });

  await check("a plain CMP, browser only; the send fails and the next page sends it", async () => {
    const { context, page: p, sent } = await visitor("retry");
    page = p;
    await p.goto(`${landing}&cmp=plain`);
    await p.click("#accept");
    // The collector is unreachable and the browser refuses beacons (as it
    // does past its quota): fetch is tried, fails, and the event is kept.
    await context.route("**/v1/collect**", (r) => r.abort("connectionrefused"));
    await p.click("#buy");
    await p.waitForSelector("#place-order");
    await p.addInitScript(() => {
      // Refused for the collector only: the pixels' own beacons still go.
      const send = navigator.sendBeacon.bind(navigator);
      navigator.sendBeacon = (url, body) => (String(url).includes("/v1/collect") ? false : send(url, body));
    });
    await p.uncheck("#server-report-box");
    await Promise.all([p.waitForURL(/\/thanks/), p.click("#place-order")]);
    const eventId = (await p.locator("#event-id").innerText()).trim();
    await waitForBeacon(sent, eventId, false);
    await p.waitForFunction((id) => (localStorage.getItem("_pb_outbox") || "").includes(id), eventId);
    await context.unroute("**/v1/collect**");
    await p.goto(shop + "/");
    const e = (await waitForBeacon(sent, eventId)).body;
    await p.waitForFunction(() => (localStorage.getItem("_pb_outbox") || "[]") === "[]");
    assert(e.consent.ad_storage === "granted", `plain consent: ${JSON.stringify(e.consent)}`);
    assert(e.click_ids.gclid === "Cj0KCQ-test-gclid", `click ids: ${JSON.stringify(e.click_ids)}`);
    result.retry = { event_id: eventId, beacon: e, attempts: sent.filter((s) => s.body?.event_id === eventId).map((s) => s.status) };
    await context.close();
  });

  assert(problems.length === 0, problems.join("; "));
  writeFileSync(arg("result"), JSON.stringify(result, null, 2));
}

async function panelPhase() {
  const base = arg("panel");
  const expect = JSON.parse(readFileSync(arg("expect"), "utf8"));
  page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  await page.goto(`${base}/`);
  await check("the key opens the shop's purchases", async () => {
    await page.fill("#key", arg("key"));
    await page.click("#key-form button[type=submit]");
    await page.waitForSelector("#conversions tbody tr[data-event-id]");
    const rows = await page.locator("#conversions tbody tr[data-event-id]").count();
    assert(rows === Object.keys(expect.states).length, `${rows} rows`);
    await page.screenshot({ path: join(out, "shop-panel-list.png"), fullPage: true });
  });
  await check("clicking each purchase opens its detail with its front-end and server-side statuses", async () => {
    for (const [id, platforms] of Object.entries(expect.states)) {
      await page.locator(`#conversions tbody tr[data-event-id="${id}"]`).click();
      await page.waitForFunction((id) => !document.getElementById("detail").hidden &&
        document.querySelector("#detail-body h2")?.textContent.endsWith(id), id);
      for (const [platform, [frontEnd, serverSide, meaning]] of Object.entries(platforms)) {
        const text = await page.locator(`#detail-body .platform[data-platform="${platform}"]`).innerText();
        assert(text.includes(`Front-end tracking: ${frontEnd.replace("_", " ")}`), `${id} ${platform}: ${text}`);
        assert(text.includes(`Server-side tracking: ${serverSide.replace("_", " ")}`), `${id} ${platform}: ${text}`);
        assert(text.includes(meaning), `${id} ${platform}: no "${meaning}" in ${text}`);
      }
      await page.screenshot({ path: join(out, `shop-panel-${expect.names[id]}.png`), fullPage: true });
      await page.click("#close");
    }
  });
  await check("a filter narrows the table", async () => {
    await page.selectOption("select[name=platform]", "meta");
    await page.selectOption("select[name=front_end]", "not_fired");
    await page.click("#filters button[type=submit]");
    const want = [...expect.meta_not_fired].sort();
    await page.waitForFunction((n) => document.querySelectorAll("#conversions tbody tr[data-event-id]").length === n, want.length);
    const ids = await page.locator("#conversions tbody tr[data-event-id]").evaluateAll((rows) => rows.map((r) => r.dataset.eventId));
    assert(JSON.stringify(ids.sort()) === JSON.stringify(want), `meta not fired: ${ids}`);
    await page.screenshot({ path: join(out, "shop-panel-filtered.png"), fullPage: true });
  });
  await check("another tenant's key sees none of them", async () => {
    await Promise.all([page.waitForEvent("load"), page.click("#forget")]);
    await page.fill("#key", arg("other-key"));
    await page.click("#key-form button[type=submit]");
    await page.waitForFunction(() => !document.getElementById("list-section").hidden);
    await page.waitForTimeout(500);
    const rows = await page.locator("#conversions tbody tr[data-event-id]").count();
    assert(rows === 0, `the other tenant sees ${rows} rows`);
    await page.screenshot({ path: join(out, "shop-panel-other-tenant.png"), fullPage: true });
  });
  assert(problems.length === 0, problems.join("; "));
}

try {
  if (phase === "shop") await shopPhase();
  else if (phase === "panel") await panelPhase();
  else throw new Error(`unknown phase ${phase}`);
  console.log(`screenshots in ${out}`);
} catch (e) {
  if (page) await page.screenshot({ path: join(out, `${phase}-failure.png`), fullPage: true }).catch(() => {});
  console.error(`failed at "${step}": ${e.message}${problems.length ? `\n${problems.join("\n")}` : ""}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
