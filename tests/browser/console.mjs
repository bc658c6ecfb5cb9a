// The console as a person uses it, in Debian's chromium driven by playwright-core.
// Started by tests/browser/test_console_browser.py, which parks the dead letters first and
// checks the mails after. In: CONSOLE_URL, CONSOLE_USER, CONSOLE_PASSWORD, GROUP_ID (the
// refused mails' group), SCREENSHOT_DIR. Out: one JSON line of what it saw; exit 1 on failure.
import { chromium } from "playwright-core";

const { CONSOLE_URL, CONSOLE_USER, CONSOLE_PASSWORD, GROUP_ID, SCREENSHOT_DIR } = process.env;
const seen = {};

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // Without credentials, or with a wrong password, the browser gets 401 (and, headless,
  // gives up the login with ERR_INVALID_AUTH_CREDENTIALS).
  for (const [name, credentials] of [["without_login", undefined],
                                     ["wrong_password", { username: CONSOLE_USER, password: "wrong" }]]) {
    const context = await browser.newContext({ httpCredentials: credentials });
    const page = await context.newPage();
    const statuses = [];
    page.on("response", (r) => statuses.push(r.status()));
    await page.goto(`${CONSOLE_URL}/groups`).catch(() => {});
    seen[name] = statuses;
    await context.close();
  }

  // Logged in (HTTP Basic, as the browser's login prompt sends it).
  const context = await browser.newContext({
    httpCredentials: { username: CONSOLE_USER, password: CONSOLE_PASSWORD },
    viewport: { width: 1400, height: 900 },
  });
  const page = await context.newPage();
  const groups = await page.goto(`${CONSOLE_URL}/groups`);
  seen.logged_in = groups.status();
  const row = page.locator(`tr.group[data-group="${GROUP_ID}"]`);
  await row.waitFor({ timeout: 30000 });
  seen.status_before = (await row.locator("td.status").textContent()).trim();
  await page.screenshot({ path: `${SCREENSHOT_DIR}/console-groups.png`, fullPage: true });

  // Replay the group at 5/s, as a person would: set the rate, click the button.
  await row.locator('input[name="rate_per_second"]').fill("5");
  await row.locator('input[name="batch"]').fill("2");
  await Promise.all([page.waitForURL(`${CONSOLE_URL}/groups`), row.locator("button", { hasText: "replay group" }).click()]);
  // The table refreshes itself (HTMX, every 2 s): wait for the row to say so.
  await page.locator(`tr.group[data-group="${GROUP_ID}"] td.status`, { hasText: "replayed" })
    .waitFor({ timeout: 60000 });
  seen.status_after = "replayed";
  await page.screenshot({ path: `${SCREENSHOT_DIR}/console-groups-replayed.png`, fullPage: true });

  // A form post without its CSRF token (taken out of the page's form) is refused.
  await page.evaluate(() => document.querySelectorAll('input[name="csrf_token"]').forEach((e) => e.remove()));
  const [forged] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/archive") && r.request().method() === "POST"),
    page.locator(`tr.group[data-group="${GROUP_ID}"] button`, { hasText: "archive group" }).click(),
  ]);
  seen.post_without_csrf = forged.status();

  // The audit trail page shows who replayed the group.
  await page.goto(`${CONSOLE_URL}/audit`);
  seen.audit = await page.locator("tbody tr").first().textContent();
  await context.close();
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
