// What the browser scripts share: their arguments, and Debian's chromium
// launched headless through playwright-core (no browser download).
import { join } from "node:path";
import { pathToFileURL } from "node:url";

export const arg = (name) => {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`missing --${name}`);
  return process.argv[i + 1];
};

export async function launch() {
  const { chromium } = await import(pathToFileURL(join(arg("modules"), "playwright-core/index.mjs")).href);
  return chromium.launch({
    executablePath: arg("chromium"),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
  });
}
