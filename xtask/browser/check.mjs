// The browser checks of `cargo xtask browser`, in headless Chromium driven by playwright-core.
//
// usage: node check.mjs <tools-dir> <live-orders-url> <book-index.html>
// <tools-dir> holds the node_modules that xtask installed from package-lock.json. The browser is
// Debian's /usr/bin/chromium, started with a fresh profile; nothing is downloaded.
//
// 1. The live orders page (the realtime crate's `live_orders --serve`): place an order with the
//    page's button and see each of its statuses arrive, in order, over the WebSocket.
// 2. The built book, from index.html, follows its link to the "Real-time channels" chapter.
// 3. Every page of the built book (every .html file under book/build), opened in turn:
//    - every mermaid diagram the page's HTML holds rendered to an <svg>, that <svg> is not
//      mermaid's error picture ("Syntax error in text"), and its text names every participant,
//      node or state that the diagram's source declares (an error picture names none of them);
//    - every quiz placeholder that mdbook-quiz wrote was replaced by the quiz widget, and the
//      quiz goes through all its questions: every question answered as its TOML keys it except
//      the first, so the review must say (n-1)/n and mark only the first one incorrect;
//    - the page threw no JavaScript error.
//
// Prints one `ok:` line per check to stdout. Every problem found is printed to stderr as a
// `FAILED:` line naming the page and the diagram or quiz, and the exit code is then 1.
// Every wait is bounded (WAIT ms) and waits for a condition, never for a fixed time.

import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
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
const bookDir = dirname(resolve(bookIndex));
// The chapters' sources, to point a failure at the line of its ```mermaid fence.
const srcDir = resolve(bookDir, "..", "src");

/// Everything that went wrong, each naming where; printed at the end.
const problems = [];

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

async function bookNavigation(context) {
  const page = await context.newPage();
  await page.goto(pathToFileURL(resolve(bookIndex)).href);
  await page.locator("a", { hasText: "Real-time channels" }).first().click();
  await page.waitForURL(/realtime\.html$/, { timeout: WAIT });
  console.log("ok: book: index.html links to the Real-time channels chapter");
  await page.close();
}

// ---------------------------------------------------------------------------------------------
// What the built HTML holds, read from the file (mermaid replaces its source once it runs).

/// Every .html file of the built book, sorted, relative to the book's directory.
function bookPages(dir) {
  const pages = [];
  const walk = (d) => {
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      const path = join(d, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith(".html")) pages.push(relative(dir, path));
    }
  };
  walk(dir);
  return pages.sort();
}

function decodeHtml(text) {
  return text
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&#(\d+);/g, (_, n) => String.fromCodePoint(Number(n)))
    .replace(/&#x([0-9a-f]+);/gi, (_, n) => String.fromCodePoint(parseInt(n, 16)))
    .replace(/&amp;/g, "&");
}

/// The source of every mermaid diagram in a page, as mdbook-mermaid wrote it.
function mermaidSources(html) {
  return [...html.matchAll(/<pre class="mermaid">([\s\S]*?)<\/pre>/g)]
    .map((m) => decodeHtml(m[1]));
}

/// The 1-based line of the n-th ```mermaid fence of a chapter's source, or null.
function fenceLine(page, n) {
  try {
    const lines = readFileSync(join(srcDir, page.replace(/\.html$/, ".md")), "utf8").split("\n");
    let seen = 0;
    for (const [i, line] of lines.entries()) {
      if (/^\s*```mermaid\s*$/.test(line) && seen++ === n) return i + 1;
    }
  } catch {
    // A page without a chapter of its own (print.html): no line to point at.
  }
  return null;
}

/// The names a rendered diagram must show: participants, nodes or states, by diagram type.
/// A diagram type this does not know is a problem to report, not a diagram to wave through.
function expectedNames(source) {
  const lines = source.split("\n").map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("%%"));
  const kind = (lines[0] ?? "").split(/\s+/)[0];
  const names = new Set();
  const label = (text) => text.trim().replace(/^"(.*)"$/, "$1").replace(/<br\s*\/?>/gi, " ");
  if (kind === "sequenceDiagram") {
    for (const line of lines.slice(1)) {
      const m = line.match(/^(?:participant|actor)\s+(.+?)(?:\s+as\s+(.+))?$/);
      if (m) names.add(label(m[2] ?? m[1]));
    }
    if (names.size === 0) {
      for (const line of lines.slice(1)) {
        const m = line.match(/^([^-+>:,;]+?)\s*-{1,2}(?:>>|>|x|\))[+-]?\s*([^:]+?)\s*:/);
        if (m) { names.add(m[1]); names.add(m[2]); }
      }
    }
  } else if (kind === "flowchart" || kind === "graph") {
    // `ID[label]`, `ID{label}`, `ID(label)`, `ID[(label)]`, `ID([label])`, `ID((label))`, ...
    const shape = /([A-Za-z0-9_]+)(\[\(|\(\[|\[\[|\(\(|\{\{|\[|\(|\{)/y;
    const closers = { "[(": ")]", "([": "])", "[[": "]]", "((": "))", "{{": "}}",
      "[": "]", "(": ")", "{": "}" };
    for (const line of lines.slice(1)) {
      // Edge labels (`-->|yes|`) are not nodes.
      const body = line.replace(/\|[^|]*\|/g, " ");
      let at = 0;
      while (at < body.length) {
        shape.lastIndex = at;
        const m = shape.exec(body);
        if (!m || (at > 0 && /[A-Za-z0-9_]/.test(body[at - 1]))) {
          at += 1;
          continue;
        }
        const start = at + m[0].length;
        const end = body.indexOf(closers[m[2]], start);
        if (end < 0) break;
        names.add(label(body.slice(start, end)));
        at = end + closers[m[2]].length;
      }
    }
  } else if (kind === "stateDiagram-v2" || kind === "stateDiagram") {
    for (const line of lines.slice(1)) {
      const m = line.match(/^(\S+)\s*-->\s*([^:\s]+)/);
      if (m) {
        for (const s of [m[1], m[2]]) if (s !== "[*]") names.add(s);
      }
      const d = line.match(/^state\s+"([^"]+)"\s+as\s+/);
      if (d) names.add(d[1]);
    }
  } else {
    return { kind, names: null };
  }
  return { kind, names: [...names] };
}

// ---------------------------------------------------------------------------------------------
// One page.

async function checkPage(context, file) {
  const html = readFileSync(join(bookDir, file), "utf8");
  const sources = mermaidSources(html);
  const placeholders = (html.match(/class="quiz-placeholder"/g) ?? []).length;
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(pathToFileURL(join(bookDir, file)).href);
  const before = problems.length;
  const done = [];
  if (sources.length > 0) done.push(await checkDiagrams(page, file, sources));
  if (placeholders > 0) done.push(await checkQuizzes(page, file, placeholders));
  if (errors.length > 0) problems.push(`${file}: JavaScript errors: ${errors.join("; ")}`);
  if (problems.length === before) {
    console.log(`ok: book: ${file}: ${done.length > 0 ? done.join("; ") : "opened"}`);
  }
  await page.close();
}

function describeDiagram(file, i, count, source) {
  const line = fenceLine(file, i);
  const where = line ? ` (book/src/${file.replace(/\.html$/, ".md")}:${line})` : "";
  const first = source.split("\n").map((l) => l.trim()).filter(Boolean).slice(0, 2).join(" / ");
  return `${file}: mermaid diagram ${i + 1} of ${count}${where}, "${first}"`;
}

async function checkDiagrams(page, file, sources) {
  // mermaid marks each <pre class="mermaid"> data-processed once it has tried it, whatever the
  // outcome.
  try {
    await page.waitForFunction((n) => {
      const pres = document.querySelectorAll("pre.mermaid");
      return pres.length >= n && [...pres].every((p) => p.getAttribute("data-processed"));
    }, sources.length, { timeout: WAIT });
  } catch {
    // Reported diagram by diagram below.
  }
  const drawn = await page.evaluate(() => [...document.querySelectorAll("pre.mermaid")].map(
    (pre) => {
      const svg = pre.querySelector("svg");
      return {
        processed: pre.getAttribute("data-processed") !== null,
        svg: svg !== null,
        error: svg?.getAttribute("aria-roledescription") === "error",
        text: svg?.textContent ?? "",
      };
    }));
  // An error picture anywhere else on the page counts too, should mermaid leave one outside
  // the <pre> it failed on.
  const strayErrors = await page.evaluate(() => [...document.querySelectorAll("svg")]
    .filter((svg) => svg.getAttribute("aria-roledescription") === "error"
      || /Syntax error in text/.test(svg.textContent)).length);
  if (drawn.length !== sources.length) {
    problems.push(`${file}: the HTML holds ${sources.length} mermaid diagrams, the page shows `
      + `${drawn.length}`);
    return "diagrams miscounted";
  }
  const squash = (text) => text.replace(/\s+/g, "");
  let good = 0;
  for (const [i, source] of sources.entries()) {
    const what = describeDiagram(file, i, sources.length, source);
    const d = drawn[i];
    const { kind, names } = expectedNames(source);
    let problem = null;
    if (names === null) {
      problem = `a ${kind} diagram, which this check cannot read names from `
        + "(teach expectedNames in xtask/browser/check.mjs)";
    } else if (names.length === 0) {
      problem = `no participant, node or state found in its source to look for`;
    } else if (!d.processed) {
      problem = `mermaid did not process it within ${WAIT / 1000}s`;
    } else if (!d.svg || d.error || /Syntax error in text/.test(d.text)) {
      const why = await page.evaluate(async (src) => {
        try {
          await window.mermaid.parse(src);
          return null;
        } catch (e) {
          return String(e?.message ?? e);
        }
      }, source);
      problem = (d.svg ? "mermaid drew its error picture instead" : "no <svg> in its place")
        + (why ? `; mermaid says: ${why.split("\n").slice(0, 4).join(" | ")}` : "");
    } else {
      const missing = names.filter((n) => !squash(d.text).includes(squash(decodeHtml(n))));
      if (missing.length > 0) {
        problem = `its <svg> does not show ${missing.map((n) => `"${n}"`).join(", ")}`;
      }
    }
    if (problem) problems.push(`${what}: ${problem}`);
    else good += 1;
  }
  if (strayErrors > 0 && good === sources.length) {
    problems.push(`${file}: mermaid drew ${strayErrors} error picture(s) on the page`);
  }
  return `${good} mermaid diagram(s) rendered, naming all they declare`;
}

async function checkQuizzes(page, file, count) {
  const placeholders = page.locator(".quiz-placeholder");
  const graded = [];
  for (let q = 0; q < count; q++) {
    const placeholder = placeholders.nth(q);
    const name = await placeholder.getAttribute("data-quiz-name").catch(() => null);
    const what = `${file}: quiz ${q + 1} of ${count} (${name ?? "unnamed"})`;
    try {
      const questions = JSON.parse(
        await placeholder.getAttribute("data-quiz-questions")).questions;
      const quiz = placeholder.locator(".mdbook-quiz");
      try {
        await quiz.waitFor({ timeout: WAIT });
      } catch {
        fail(`the quiz widget did not replace its placeholder within ${WAIT / 1000}s`);
      }
      graded.push(await answerQuiz(page, quiz, questions));
    } catch (e) {
      problems.push(`${what}: ${e.message.split("\n")[0]}`);
    }
  }
  return `${graded.length} quiz(zes) loaded and graded ${graded.join(", ")}`;
}

/// Answers every question (the first one wrongly on purpose) and checks the grading.
async function answerQuiz(page, quiz, questions) {
  if (questions.length === 0) fail("the quiz has no questions");
  await quiz.locator("button.start").click({ timeout: WAIT });
  for (const [i, question] of questions.entries()) {
    const form = quiz.locator("form.response");
    try {
      await form.waitFor({ timeout: WAIT });
    } catch {
      fail(`question ${i + 1} of ${questions.length} did not appear`);
    }
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
        try {
          await choice.click({ timeout: WAIT });
        } catch {
          fail(`question ${i + 1} offers no choice "${value.slice(0, 60)}"`);
        }
      }
    }
    await form.locator("input[type=submit]").click();
  }
  const total = questions.length;
  const expected = `You answered ${total - 1}/${total} questions correctly.`;
  await quiz.locator("h3", { hasText: "Answer Review" }).waitFor({ timeout: WAIT });
  const review = (await quiz.locator("section > p").first().innerText()).trim();
  if (review !== expected) fail(`the review says "${review}", expected "${expected}"`);
  // One review block per question. mdbook-quiz marks a wrong choice `.incorrect`, and under a
  // wrong answer of any type it adds "The correct answer is:".
  const marks = await quiz.locator(".answer").evaluateAll((blocks) => blocks.map((b) =>
    b.querySelector(".incorrect") || /The correct answer is/.test(b.textContent)
      ? "incorrect" : "correct"));
  if (marks.length !== total || marks[0] !== "incorrect"
    || marks.slice(1).some((m) => m !== "correct")) {
    fail(`the review marks ${marks.join(", ")}; expected the first of ${total} incorrect`);
  }
  return `${total - 1}/${total}`;
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
  // mdbook-quiz keeps answers in localStorage, shared by every file:// page: each page starts
  // with none, so a quiz seen on two pages (a chapter and print.html) starts afresh on both.
  await context.addInitScript(() => {
    if (!sessionStorage.getItem("xtask-cleared")) {
      localStorage.clear();
      sessionStorage.setItem("xtask-cleared", "1");
    }
  });
  await livePage(context);
  await bookNavigation(context);
  const pages = bookPages(bookDir);
  for (const file of pages) {
    try {
      await checkPage(context, file);
    } catch (e) {
      problems.push(`${file}: ${e.message.split("\n")[0]}`);
    }
  }
  if (problems.length === 0) console.log(`ok: book: all ${pages.length} pages checked`);
} catch (e) {
  problems.push(e.message.split("\n")[0]);
} finally {
  await context?.close();
  rmSync(profile, { recursive: true, force: true });
}
for (const problem of problems) console.error(`FAILED: ${problem}`);
if (problems.length > 0) code = 1;
process.exit(code);
