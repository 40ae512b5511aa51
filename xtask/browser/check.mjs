// The browser checks of `cargo xtask browser`, in headless Chromium driven by playwright-core.
//
// usage: node check.mjs <tools-dir> <live-orders-url> <book-index.html>
// <tools-dir> holds the node_modules that xtask installed from package-lock.json. The browser is
// Debian's /usr/bin/chromium, started with a fresh profile; nothing is downloaded.
//
// 1. The live orders page (the realtime crate's `live_orders --serve`): place an order with the
//    page's button and see each of its statuses arrive, in order, over the WebSocket.
// 2. The built book: from index.html to the "Real-time channels" chapter, where the mermaid
//    diagram must have rendered to an <svg>, and the quiz must grade answers: every question
//    answered as its TOML keys it except the first, so the review must say (n-1)/n.
//
// Prints one `ok:` line per check; on the first failure prints `FAILED: ...` and exits 1.
// Every wait is bounded (WAIT ms) and waits for a condition, never for a fixed time.

import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [toolsDir, pageUrl, bookIndex] = process.argv.slice(2);
if (!toolsDir || !pageUrl || !bookIndex) {
  console.error("usage: node check.mjs <tools-dir> <live-orders-url> <book-index.html>");
  process.exit(2);
}
const require = createRequire(resolve(toolsDir, "package.json"));
const { chromium } = require("playwright-core");

const WAIT = 15_000;
const STATUSES = ["placed", "paid", "packed", "shipped", "delivered"];

function fail(message) {
  throw new Error(message);
}

async function livePage(context) {
  const page = await context.newPage();
  await page.goto(pageUrl);
  await page.locator("#state", { hasText: "live" }).waitFor({ timeout: WAIT });
  const rows = page.locator("#orders tr");
  const before = await rows.count();
  await page.locator("#place").click();
  await page.waitForFunction((n) => document.querySelectorAll("#orders tr").length > n,
    before, { timeout: WAIT });
  // The page puts the newest order first.
  const row = rows.first();
  const order = await row.getAttribute("data-order");
  for (const status of STATUSES) {
    await row.locator(`span[data-status="${status}"]`).waitFor({ timeout: WAIT });
  }
  const seen = await row.locator("span[data-status]").evaluateAll(
    (spans) => spans.map((s) => s.dataset.status));
  if (seen.join(",") !== STATUSES.join(",")) {
    fail(`order ${order} showed ${seen.join(", ")}, expected ${STATUSES.join(", ")}`);
  }
  console.log(`ok: live page: order ${order} showed ${seen.join(" -> ")} as it happened`);
  await page.close();
}

async function book(context) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(pathToFileURL(resolve(bookIndex)).href);
  await page.locator("a", { hasText: "Real-time channels" }).first().click();
  await page.waitForURL(/realtime\.html$/, { timeout: WAIT });

  await page.locator("pre.mermaid svg, .mermaid svg").first().waitFor({ timeout: WAIT });
  console.log("ok: book: the chapter's mermaid diagram rendered to an <svg>");

  const placeholder = page.locator(".quiz-placeholder").first();
  const questions = JSON.parse(await placeholder.getAttribute("data-quiz-questions")).questions;
  const quiz = page.locator(".mdbook-quiz").first();
  await quiz.locator("button.start").click({ timeout: WAIT });
  for (const [i, question] of questions.entries()) {
    const form = quiz.locator("form.response");
    await form.waitFor({ timeout: WAIT });
    const keyed = [question.answer.answer].flat();
    if (question.type === "ShortAnswer") {
      await form.locator("input[type=text], textarea").first()
        .fill(i === 0 ? "not the answer" : String(keyed[0]));
    } else {
      // The first question gets a distractor on purpose, the rest their keyed answers.
      const pick = i === 0 ? [question.prompt.distractors[0]] : keyed;
      for (const value of pick) {
        const choice = form.locator("input[type=radio], input[type=checkbox]")
          .and(page.locator(`[value="${CSS.escape(value)}"]`));
        await choice.click({ timeout: WAIT });
      }
    }
    await form.locator("input[type=submit]").click();
  }
  const total = questions.length;
  const expected = `You answered ${total - 1}/${total} questions correctly.`;
  await quiz.locator("h3", { hasText: "Answer Review" }).waitFor({ timeout: WAIT });
  const review = (await quiz.locator("section > p").first().innerText()).trim();
  if (review !== expected) fail(`quiz review says "${review}", expected "${expected}"`);
  const marks = await quiz.locator(".answer-row .md-flex").evaluateAll(
    (nodes) => nodes.map((n) => (n.classList.contains("correct") ? "correct" : "incorrect")));
  if (marks[0] !== "incorrect" || marks.slice(1).some((m) => m !== "correct")) {
    fail(`quiz marks: ${marks.join(", ")}`);
  }
  console.log(`ok: book: quiz answered, and graded "${review}"`);
  if (errors.length > 0) fail(`page errors: ${errors.join("; ")}`);
  await page.close();
}

// CSS.escape for attribute values, as browsers define it for the characters prompts use.
const CSS = {
  escape: (value) => value.replace(/["\\]/g, "\\$&").replace(/\n/g, "\\a "),
};

const profile = mkdtempSync(join(tmpdir(), "xtask-chromium-"));
let context;
let code = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
  context.setDefaultTimeout(WAIT);
  await livePage(context);
  await book(context);
} catch (e) {
  console.log(`FAILED: ${e.message.split("\n")[0]}`);
  code = 1;
} finally {
  await context?.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
