// Drives Debian's chromium (never a downloaded browser) against a running plcbridge dashboard.
//
//   node dashboard.mjs --url http://127.0.0.1:PORT/ --screenshot out.png --profile DIR
//                      [--chromium /usr/bin/chromium] [--token TOKEN] [--expect-event]
//
// Exits 0 when the page shows what a running bridge must show, 1 with the reason otherwise.
// Prints one JSON line with what it saw, for the pytest side to check and report.
import { chromium } from "playwright-core";

function options(argv) {
  const out = { chromium: "/usr/bin/chromium", token: null, expectEvent: false, timeout: 25000 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (key === "--expect-event") out.expectEvent = true;
    else if (key === "--url") out.url = argv[++i];
    else if (key === "--screenshot") out.screenshot = argv[++i];
    else if (key === "--profile") out.profile = argv[++i];
    else if (key === "--chromium") out.chromium = argv[++i];
    else if (key === "--token") out.token = argv[++i];
    else if (key === "--timeout") out.timeout = Number(argv[++i]);
    else throw new Error(`unknown argument ${key}`);
  }
  for (const key of ["url", "screenshot", "profile"]) {
    if (!out[key]) throw new Error(`--${key} is required`);
  }
  return out;
}

const opts = options(process.argv.slice(2));
const context = await chromium.launchPersistentContext(opts.profile, {
  executablePath: opts.chromium,
  headless: true,
  // Offline and quiet: no first-run UI, no update or sync traffic, no QUIC probes.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 1100 },
});
const errors = [];
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(opts.timeout);
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => {
    // With --token the API's 401s are expected: they are what shows the form (a 401 after the
    // token was entered would keep the form up, and the wait for it to hide fails instead).
    const expected = opts.token && message.text().includes("401");
    if (message.type() === "error" && !expected) errors.push(message.text());
  });
  await page.goto(opts.url);

  let tokenForm = false;
  if (opts.token) {
    await page.locator("#token-form").waitFor({ state: "visible" });
    tokenForm = true;
    await page.fill("#token", opts.token);
    await page.click("#token-form button[type=submit]");
    await page.locator("#token-form").waitFor({ state: "hidden" });
  }

  await page.locator('#devices tr[data-device="plant"][data-connected="true"]').waitFor();
  await page.locator('#tags tr[data-tag="pressure"][data-quality="good"]').waitFor();
  await page.waitForFunction(() => {
    const canvas = document.querySelector('.model[data-model="pump"] canvas');
    return canvas && Number(canvas.dataset.points) >= 5;
  });
  if (opts.expectEvent) {
    await page.locator("#events tbody tr").first().waitFor();
    await page.waitForFunction(() => Number(document.querySelector('.model[data-model="pump"] canvas')
      .dataset.points) >= 5 && document.body.dataset.refreshes >= 2);
  }
  const seen = await page.evaluate(() => ({
    title: document.title,
    devices: [...document.querySelectorAll("#devices tbody tr")].map((tr) => tr.innerText),
    tags: document.querySelectorAll("#tags tbody tr").length,
    badTags: document.querySelectorAll("#tags tbody tr.bad").length,
    points: Number(document.querySelector('.model[data-model="pump"] canvas').dataset.points),
    events: [...document.querySelectorAll("#events tbody tr")].map((tr) => tr.innerText),
    status: document.getElementById("status").textContent,
  }));
  // A canvas that has a points count but no pixels would be a broken chart.
  const inked = await page.evaluate(() => {
    const canvas = document.querySelector('.model[data-model="pump"] canvas');
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let count = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count++;
    return count;
  });
  await page.screenshot({ path: opts.screenshot, fullPage: true });
  if (errors.length) throw new Error("page errors: " + errors.join(" | "));
  console.log(JSON.stringify({ ...seen, inked, tokenForm }));
} catch (error) {
  console.error(String(error && error.stack ? error.stack : error));
  if (errors.length) console.error("page errors: " + errors.join(" | "));
  process.exitCode = 1;
} finally {
  await context.close();
}
