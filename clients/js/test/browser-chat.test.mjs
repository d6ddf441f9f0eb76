// The demo page (examples/chat) in a real headless Chromium against a real
// gateway: it connects, shows its state and presence, shows a message a
// backend published, and round-trips one typed into it.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launch } from "./support/browser.mjs";
import { startStatic } from "./support/static.mjs";
import { TestGateway, mint } from "./support/gateway.mjs";

let browser, server, site;
before(async () => {
  [browser, server, site] = await Promise.all([launch(), TestGateway.start(), startStatic()]);
});
after(async () => {
  await browser?.close();
  await server?.stop();
  await site?.close();
});

test("chat page: connects, shows presence, a published message arrives, a typed one round-trips", { timeout: 120_000 }, async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const token = mint("carol", { rooms: ["lobby", "random"], publish: ["lobby", "random"] });
  const q = new URLSearchParams({ url: server.ws, token, name: "carol", room: "lobby", connect: "1" });
  await page.goto(`${site.url}/examples/chat/?${q}`);

  await page.locator('#state[data-state="connected"]').waitFor();
  await page.locator("#presence", { hasText: "1 online" }).waitFor();

  await server.publish("room:lobby", { from: "backend", text: "hello from the backend" });
  const first = page.locator("#messages li", { hasText: "hello from the backend" });
  await first.waitFor();
  assert.equal(await first.getAttribute("data-offset"), "1");

  await page.fill("#text", "hi from carol");
  await page.click("#send button");
  await page.locator("#messages li", { hasText: "hi from carol" }).waitFor();
  assert.equal(await page.locator("#messages li").count(), 2);
  assert.equal(await page.inputValue("#text"), "", "the input clears once the gateway acknowledged");

  // The room picker: join another room; messages are per room.
  await page.fill("#new-room", "random");
  await page.click("#add-room button");
  await page.locator("#room-name", { hasText: "random" }).waitFor();
  await server.publish("room:random", { from: "backend", text: "in random" });
  await page.locator("#messages li", { hasText: "in random" }).waitFor();
  assert.equal(await page.locator("#messages li").count(), 1);
  assert.deepEqual(errors, []);
  await page.close();
});
