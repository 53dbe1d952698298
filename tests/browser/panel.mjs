// The status panel in headless Chromium (Debian's chromium, driven by
// playwright-core): a person's path through it, checked against what the
// Rust test wrote to the topic. Run by services/status/tests/panel.rs:
//
//   node panel.mjs --modules DIR --chromium /usr/bin/chromium --base URL \
//     --key K --other-key K2 --expect expect.json --out DIR
//
// expect.json: {"states": {"<event_id>": {"<platform>": [front_end, server_side, meaning fragment]}},
//               "rejected_meta": n, "other_ids": [...], "acme_total": n}
// Prints one line per check; exits 1 on the first failure (with a
// screenshot of the moment).
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { arg, launch } from "./chromium.mjs";

const base = arg("base");
const expect = JSON.parse(readFileSync(arg("expect"), "utf8"));
const out = arg("out");
mkdirSync(out, { recursive: true });

const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("response", (r) => {
  if (r.status() >= 400 && r.status() !== 401) problems.push(`HTTP ${r.status()} for ${r.url()}`);
});
// The wrong key's 401 is expected; any other error is a problem.
page.on("console", (m) => {
  if (m.type() === "error" && !/status of 401/.test(m.text())) problems.push(`console: ${m.text()} (${m.location().url})`);
});

let step = "start";
async function check(name, f) {
  step = name;
  await f();
  console.log(`ok: ${name}`);
}
function assert(cond, message) { if (!cond) throw new Error(message); }
const rowOf = (id) => page.locator(`#conversions tbody tr[data-event-id="${id}"]`);

try {
  await page.goto(`${base}/`);
  await check("a wrong key shows the API's refusal and no data", async () => {
    await page.fill("#key", "rk_wrong_0123456789abcdef");
    await page.click("#key-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("message").textContent.includes("401"));
    assert(await page.locator("#list-section").isHidden(), "the list is shown without a valid key");
  });

  await check("the key opens the summary and the first page", async () => {
    await page.fill("#key", arg("key"));
    await page.click("#key-form button[type=submit]");
    await page.waitForSelector("#conversions tbody tr[data-event-id]");
    await page.waitForSelector("#summary .card");
    const cards = await page.locator("#summary .card").count();
    assert(cards >= 2, `${cards} summary cards`);
    const meta = await page.locator('#summary .card[data-platform="meta"]').innerText();
    assert(/delivered\s+\d+/.test(meta), `meta card: ${meta}`);
    const rows = await page.locator("#conversions tbody tr[data-event-id]").count();
    assert(rows === Math.min(25, expect.acme_total), `${rows} rows on the first page (25 a page)`);
    await page.screenshot({ path: join(out, "panel-summary-and-list.png"), fullPage: true });
  });

  await check("each legend combination shows its front-end and server-side status", async () => {
    for (const [id, platforms] of Object.entries(expect.states)) {
      await page.selectOption("select[name=search_by]", "event_id");
      await page.fill("input[name=search]", id);
      await page.click("#filters button[type=submit]");
      await page.waitForFunction((id) => {
        const rows = [...document.querySelectorAll("#conversions tbody tr[data-event-id]")];
        return rows.length === 1 && rows[0].dataset.eventId === id;
      }, id);
      await rowOf(id).click();
      await page.waitForFunction((id) => !document.getElementById("detail").hidden &&
        document.querySelector("#detail-body h2")?.textContent.endsWith(id), id);
      for (const [platform, [frontEnd, serverSide, meaning]] of Object.entries(platforms)) {
        const card = page.locator(`#detail-body .platform[data-platform="${platform}"]`);
        const text = await card.innerText();
        assert(text.includes(`Front-end tracking: ${frontEnd.replace("_", " ")}`), `${id} ${platform}: ${text}`);
        assert(text.includes(`Server-side tracking: ${serverSide.replace("_", " ")}`), `${id} ${platform}: ${text}`);
        assert(text.includes(meaning), `${id} ${platform}: no "${meaning}" in ${text}`);
        assert(text.includes("Match keys:"), `${id} ${platform}: no match keys`);
        assert((await card.locator(".timeline li").count()) > 0, `${id} ${platform}: empty timeline`);
      }
      await page.screenshot({ path: join(out, `panel-detail-${id}.png`), fullPage: true });
      await page.click("#close");
    }
  });

  await check("a filter narrows the table", async () => {
    await page.click("#filters button[type=reset]");
    await page.selectOption("select[name=platform]", "meta");
    await page.selectOption("select[name=server_side]", "rejected");
    await page.click("#filters button[type=submit]");
    await page.waitForFunction((n) => document.querySelectorAll("#conversions tbody tr[data-event-id]").length === n, expect.rejected_meta);
    const states = await page.locator("#conversions tbody tr[data-event-id] td:nth-child(6)").allInnerTexts();
    assert(states.every((s) => s.includes("server side: rejected")), `meta column: ${states}`);
    await page.screenshot({ path: join(out, "panel-filtered.png"), fullPage: true });
  });

  await check("pages follow each other", async () => {
    await page.click("#filters button[type=reset]");
    await page.waitForFunction(() => !document.getElementById("next").disabled);
    const first = await page.locator("#conversions tbody tr[data-event-id]").first().getAttribute("data-event-id");
    await page.click("#next");
    await page.waitForFunction(() => document.getElementById("page-info").textContent === "page 2");
    const second = await page.locator("#conversions tbody tr[data-event-id]").first().getAttribute("data-event-id");
    assert(first !== second, "page 2 starts where page 1 did");
  });

  await check("another tenant's key sees only its own conversions", async () => {
    await Promise.all([page.waitForEvent("load"), page.click("#forget")]);
    await page.fill("#key", arg("other-key"));
    await page.click("#key-form button[type=submit]");
    await page.waitForSelector("#conversions tbody tr[data-event-id]");
    const ids = await page.locator("#conversions tbody tr[data-event-id]").evaluateAll((rows) => rows.map((r) => r.dataset.eventId));
    assert(JSON.stringify([...ids].sort()) === JSON.stringify([...expect.other_ids].sort()), `other sees ${ids}`);
    await page.screenshot({ path: join(out, "panel-other-tenant.png"), fullPage: true });
  });

  assert(problems.length === 0, problems.join("; "));
  console.log(`screenshots in ${out}`);
} catch (e) {
  await page.screenshot({ path: join(out, "panel-failure.png"), fullPage: true }).catch(() => {});
  console.error(`failed at "${step}": ${e.message}${problems.length ? `\n${problems.join("\n")}` : ""}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
