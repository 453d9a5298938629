// The reviewer console in headless chromium (Debian's), driven by playwright-core. Run by
// tests/console.rs, which starts PostgreSQL, the OIDC provider and the console, and passes:
//   CONSOLE_URL     https://127.0.0.1:PORT (TLS with the test CA: certificate errors ignored)
//   PSQL_DSN        the gateway, for real psql sessions
//   CHROMIUM        the browser binary
//   SCREENSHOT_DIR  where to write the README's screenshots (optional)
// Prints one line per step, then `browser scenario passed`; any failure exits non-zero. A line
// `RELOAD <what>` asks the test to reload the configuration; it answers `reloaded` on stdin.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';

import { chromium } from 'playwright-core';

const base = process.env.CONSOLE_URL;
const dsn = process.env.PSQL_DSN;
const shots = process.env.SCREENSHOT_DIR || '';
const T = 20_000;

function step(what) { console.log(`ok - ${what}`); }

// The test's answers to `RELOAD` lines.
const control = readline.createInterface({ input: process.stdin });
const controlLines = control[Symbol.asyncIterator]();
async function reload(what) {
  console.log(`RELOAD ${what}`);
  const { value, done } = await controlLines.next();
  assert.ok(!done && value === 'reloaded', `reload ${what}: the test answered ${done ? 'nothing' : value}`);
}

// A real psql session; resolves when it exits.
function psql(sql) {
  const child = spawn('psql', [dsn, '-X', '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = ''; let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const done = new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

// Logs `account` in at the provider; resolves once the provider has sent the browser back to
// the console, with the status the console's callback answered.
async function providerLogin(browser, account, javaScriptEnabled = true) {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true, javaScriptEnabled, viewport: { width: 1280, height: 760 },
  });
  const page = await context.newPage();
  page.on('requestfailed', (r) => console.log(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) console.log(`  at ${f.url()}`); });
  const result = { context, page, callbackStatus: undefined };
  page.on('response', (r) => {
    if (r.url().startsWith(`${base}/auth/callback`)) result.callbackStatus = r.status();
  });
  await page.goto(`${base}/`);
  // Not logged in: the console sends the browser to the provider's login page.
  await page.waitForSelector('input[name=login]', { timeout: T });
  assert.ok(!page.url().startsWith(base), `expected the provider's page, at ${page.url()}`);
  await page.fill('input[name=login]', account);
  await page.fill('input[name=password]', 'any password');
  await Promise.all([page.waitForNavigation({ timeout: T }), page.click('button[type=submit]')]);
  // The provider asks for consent once per client and account; then it redirects back.
  for (let i = 0; i < 3 && !page.url().startsWith(base); i += 1) {
    const consent = page.locator('button[type=submit]');
    if (await consent.count() === 0) {
      throw new Error(`stuck at ${page.url()}: ${(await page.content()).slice(0, 2000)}`);
    }
    await Promise.all([page.waitForNavigation({ timeout: T }), consent.first().click()]);
  }
  return result;
}

async function login(browser, account, javaScriptEnabled = true) {
  const { context, page } = await providerLogin(browser, account, javaScriptEnabled);
  try {
    await page.waitForURL(`${base}/`, { timeout: T });
  } catch (e) {
    throw new Error(`login did not land on the inbox: ${page.url()}: ${(await page.content()).slice(0, 2000)}`);
  }
  await page.waitForSelector('#inbox', { timeout: T });
  assert.equal((await page.textContent('header .subject')).trim(), account);
  const cookies = await context.cookies(base);
  const session = cookies.find((c) => c.name === '__Host-airlock-session');
  assert.ok(session, `no session cookie: ${JSON.stringify(cookies)}`);
  assert.equal(session.httpOnly, true);
  assert.equal(session.secure, true);
  assert.equal(session.sameSite, 'Strict');
  return { context, page };
}

async function rowFor(page, text) {
  const row = page.locator('#inbox-rows tr', { hasText: text });
  await row.waitFor({ timeout: T });
  return { row, id: await row.getAttribute('data-id') };
}

// Submits the decide form with `button` and returns the page's notice (or throws with what
// the page said instead).
async function decide(page, button) {
  await Promise.all([page.waitForNavigation({ timeout: T }), page.click(button)]);
  if (await page.locator('#notice').count() === 0) {
    throw new Error(`no notice after ${button} at ${page.url()}: ${(await page.textContent('main')).replace(/\s+/g, ' ').slice(0, 600)}`);
  }
  return page.textContent('#notice');
}

async function openRequest(context, id) {
  const page = await context.newPage();
  await page.goto(`${base}/requests/${id}`);
  await page.waitForSelector('#command', { timeout: T });
  return page;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
    // Nothing but the test hosts: no name is resolved (the provider's login page asks for a
    // web font), so no request can leave the machine.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
});
try {
  // 1. Log in through the real provider.
  const alice = await login(browser, 'alice');
  const inbox = alice.page;
  step('alice logged in through the OIDC provider (authorization code + PKCE); cookie Secure, HttpOnly, SameSite=Strict');

  // 2. A command held by a real psql session appears live (no reload).
  await inbox.evaluate(() => { window.sameDocument = true; });
  const sqlApprove = 'UPDATE accounts SET balance = 42 WHERE id = 1';
  const t0 = Date.now();
  const held = psql(sqlApprove);
  const first = await rowFor(inbox, 'balance = 42');
  const appeared = Date.now() - t0;
  assert.equal(await inbox.evaluate(() => window.sameDocument), true, 'the inbox was reloaded');
  assert.ok(appeared < 1000, `the held command took ${appeared} ms to appear (psql start included)`);
  // Its age and the time left before the timeout (120 s) are shown.
  assert.match(await first.row.locator('.age').textContent(), /^\d+s$/);
  assert.match(await first.row.locator('.left').textContent(), /^([12]m \d+s|\d+s)$/);
  step(`held command appeared in the open inbox after ${appeared} ms (server-sent events, no reload), with its age and time left`);
  // A second held command, so the inbox shows more than one (and the order is oldest first).
  const sqlDeny = 'UPDATE accounts SET balance = 13 WHERE id = 1';
  const second = psql(sqlDeny);
  const denyRow = await rowFor(inbox, 'balance = 13');
  const ids = await inbox.$$eval('#inbox-rows tr', (trs) => trs.map((t) => t.dataset.id));
  assert.ok(ids.indexOf(first.id) < ids.indexOf(denyRow.id), `oldest first: ${ids}`);
  assert.equal((await inbox.textContent('#pending-count')).trim(), String(ids.length));
  if (shots) await inbox.screenshot({ path: path.join(shots, 'console-inbox.png') });

  // 3. The request page shows the exact command; approve with a reason; psql completes.
  const req = await openRequest(alice.context, first.id);
  assert.equal((await req.textContent('#command')).trim(), sqlApprove);
  assert.equal((await req.textContent('#subject')).trim(), 'unix:root');
  assert.match(await req.textContent('#quorum'), /0 of 1/);
  // The effect, from a dry run the gateway rolled back: one row, 100 before and 42 after.
  assert.match(await req.textContent('#dry-run-summary'), /^dry run: 1 row affected in public\.accounts, rolled back/);
  const cells = (table) => req.$$eval(`${table} tbody td`, (tds) => tds.map((t) => t.textContent));
  assert.deepEqual(await cells('#dry-run-before'), ['1', '100']);
  assert.deepEqual(await cells('#dry-run-after'), ['1', '42']);
  step('the request page shows the UPDATE\'s effect from a dry run rolled back (1 row, balance 100 before, 42 after)');
  if (shots) await req.screenshot({ path: path.join(shots, 'console-request.png'), fullPage: true });
  await req.fill('#reason', 'checked the ticket');
  await decide(req, '#approve');
  const approved = await held.done;
  assert.equal(approved.code, 0, `psql failed: ${approved.stderr}`);
  assert.match(approved.stdout + approved.stderr, /UPDATE 1/);
  assert.match(await req.textContent('#state'), /approved|used/);
  await first.row.waitFor({ state: 'detached', timeout: T });
  step('approved in the browser: the psql session completed, the row left the open inbox');

  // 4. Deny another with a reason; the client gets the refusal.
  const reqDeny = await openRequest(alice.context, denyRow.id);
  await reqDeny.fill('#reason', 'not during the freeze');
  await decide(reqDeny, '#deny');
  const denied = await second.done;
  assert.notEqual(denied.code, 0, 'the denied command must fail');
  assert.match(denied.stderr, /denied/);
  assert.match(denied.stderr, /not during the freeze/);
  await denyRow.row.waitFor({ state: 'detached', timeout: T });
  step(`denied in the browser: psql failed with "${denied.stderr.trim().split('\n')[0]}"`);

  // 5. A reviewer who is also the requester cannot approve. The command carries markup: it is
  // shown as text everywhere (escaped), never as elements.
  const markup = '<img src=x onerror=window.xss=1>';
  const sqlOwn = `UPDATE accounts SET balance = 7 WHERE id = 1 AND '${markup}' <> ''`;
  const third = psql(sqlOwn);
  const own = await rowFor(inbox, 'balance = 7');
  assert.equal(await own.row.locator('img').count(), 0, 'markup in a live inbox row became an element');
  assert.ok((await own.row.textContent()).includes(markup), 'the live row shows the command as text');
  const root = await login(browser, 'unix:root');
  const ownPage = await openRequest(root.context, own.id);
  assert.equal((await ownPage.textContent('#command')).trim(), sqlOwn);
  assert.equal(await ownPage.locator('main img').count(), 0, 'markup in the command became an element');
  assert.ok((await root.page.textContent('#inbox-rows')).includes(markup), 'the inbox page shows it as text');
  assert.equal(await root.page.locator('#inbox-rows img').count(), 0);
  assert.equal(await ownPage.evaluate(() => window.xss), undefined);
  step('a command with markup is shown as text in the live inbox, the inbox page and the request page');
  assert.ok(await ownPage.isVisible('#own-request'), 'the page says it is your own request');
  await Promise.all([ownPage.waitForNavigation({ timeout: T }), ownPage.click('#approve')]);
  await ownPage.waitForSelector('#error', { timeout: T });
  assert.match(await ownPage.textContent('#error'), /nobody approves their own request/);
  assert.equal((await ownPage.textContent('#state')).trim(), 'pending');
  step('the requester logged in as a reviewer and was refused approving their own request');

  // A reviewer outside the rule's approver groups (the token says `viewers`) may look, not decide.
  const viewer = await login(browser, 'viewer');
  const viewerPage = await openRequest(viewer.context, own.id);
  assert.ok(await viewerPage.isVisible('#not-approver'), 'the page says who may decide');
  assert.equal(await ownPage.locator('#not-approver').count(), 0, 'a dba member is an approver');
  await Promise.all([viewerPage.waitForNavigation({ timeout: T }), viewerPage.click('#approve')]);
  await viewerPage.waitForSelector('#error', { timeout: T });
  assert.match(await viewerPage.textContent('#error'), /only members of dba may decide/);
  assert.equal((await viewerPage.textContent('#state')).trim(), 'pending');
  step('a reviewer whose token groups are not the rule\'s approvers was refused');

  // Someone the provider logs in whose groups are among no reader groups (by default every
  // approver group of the policy: here `dba` and `viewers`) is refused at the callback, with
  // their groups named, and gets no session.
  const outsider = await providerLogin(browser, 'outsider');
  await outsider.page.waitForSelector('#message', { timeout: T });
  assert.equal(outsider.callbackStatus, 403, `the callback answered ${outsider.callbackStatus}`);
  assert.match(await outsider.page.textContent('#message'),
    /not a reviewer of this gateway: your groups \(contractors\) are not among the readers/);
  assert.equal((await outsider.context.cookies(base)).filter((c) => c.name === '__Host-airlock-session').length, 0,
    'a session cookie was set for a non-reader');
  const outsiderInbox = await outsider.context.request.get(`${base}/`, { maxRedirects: 0 });
  assert.equal(outsiderInbox.status(), 303, 'the refused login opened the inbox');
  await outsider.context.close();
  step('a login in no reader group was refused at the callback (403, "not a reviewer"), no session');

  // A reload that drops the only rule making `viewers` approvers ends the viewer's access,
  // without a new login: the open live inbox stops at its next event, every page, the stream
  // and a POST with a valid CSRF token answer 403; alice (dba) goes on.
  await viewer.page.waitForSelector('body[data-live=on]', { timeout: T, state: 'attached' });
  const viewerCsrf = await viewerPage.getAttribute('input[name=csrf]', 'value');
  await reload('without-viewers');
  const sqlAfterReload = 'UPDATE accounts SET balance = 5 WHERE id = 1';
  const fourth = psql(sqlAfterReload);
  const afterReload = await rowFor(inbox, 'balance = 5');
  await viewer.page.waitForSelector('body[data-live=reconnecting]', { timeout: T, state: 'attached' });
  assert.equal(await viewer.page.locator('#inbox-rows tr', { hasText: 'balance = 5' }).count(), 0,
    'a held command reached the live inbox of a reviewer no longer among the readers');
  for (const url of ['/', `/requests/${own.id}`, '/history', '/sessions', `/sessions/x/cast`, '/audit', '/policy', '/events']) {
    const r = await viewer.context.request.get(`${base}${url}`, { maxRedirects: 0 });
    assert.equal(r.status(), 403, `${url} answered ${r.status()} to a reviewer no longer among the readers`);
    if (url === '/history') assert.match(await r.text(), /your groups \(viewers\) are not among the readers/);
  }
  const viewerPost = await viewer.context.request.post(`${base}/requests/${afterReload.id}/decide`, {
    form: { action: 'deny', csrf: viewerCsrf }, maxRedirects: 0,
  });
  assert.equal(viewerPost.status(), 403, `the dropped reviewer's POST answered ${viewerPost.status()}`);
  await viewer.context.close();
  const reqAfterReload = await openRequest(alice.context, afterReload.id);
  assert.equal((await reqAfterReload.textContent('#state')).trim(), 'pending');
  await reqAfterReload.fill('#reason', 'readers test');
  await decide(reqAfterReload, '#deny');
  assert.notEqual((await fourth.done).code, 0);
  await reqAfterReload.close();
  step('after a reload removing its approver rule, a logged-in reviewer of `viewers` was refused everywhere (403), its live stream ended');

  // Reading works without JavaScript: login (the callback moves on by a meta refresh), the
  // inbox and the request page are rendered by the server.
  const plain = await login(browser, 'alice', false);
  assert.ok((await plain.page.textContent('#inbox-rows')).includes(markup), 'the inbox without JavaScript');
  const plainReq = await openRequest(plain.context, own.id);
  assert.equal((await plainReq.textContent('#command')).trim(), sqlOwn);
  await plain.context.close();
  step('without JavaScript: logged in, read the inbox and the request page');

  // The admin token is not a console login.
  const anon = await browser.newContext({ ignoreHTTPSErrors: true });
  const withAdmin = await anon.request.get(`${base}/`, {
    headers: { Authorization: `Bearer ${process.env.ADMIN_TOKEN}` }, maxRedirects: 0,
  });
  assert.equal(withAdmin.status(), 303, `the admin token opened the console: ${withAdmin.status()}`);
  assert.match(withAdmin.headers().location, /^\/login/);
  const adminPost = await anon.request.post(`${base}/requests/${own.id}/decide`, {
    headers: { Authorization: `Bearer ${process.env.ADMIN_TOKEN}` }, form: { action: 'approve' }, maxRedirects: 0,
  });
  assert.equal(adminPost.status(), 401, `the admin token decided in the console: ${adminPost.status()}`);
  await anon.close();
  step('the admin token neither opens the console nor decides in it');

  // 6. A POST without the CSRF token (or with a wrong one) is refused, with a valid session; so
  // is one with the right token from another origin.
  const csrf = await (await openRequest(alice.context, own.id)).getAttribute('input[name=csrf]', 'value');
  for (const [form, headers] of [
    [{ action: 'approve' }, {}],
    [{ action: 'approve', csrf: 'f'.repeat(64) }, {}],
    [{ action: 'approve', csrf }, { Origin: 'https://evil.example' }],
  ]) {
    const r = await alice.context.request.post(`${base}/requests/${own.id}/decide`, { form, headers, maxRedirects: 0 });
    assert.equal(r.status(), 403, `forged POST ${JSON.stringify({ form, headers })} answered ${r.status()}`);
  }
  const stillPending = await openRequest(alice.context, own.id);
  assert.equal((await stillPending.textContent('#state')).trim(), 'pending');
  step('POSTs without a valid CSRF token, or from another origin, were refused (403) and changed nothing');
  const reasonMarkup = '<script>window.xss=2</script>cleanup';
  await stillPending.fill('#reason', reasonMarkup);
  await decide(stillPending, '#deny');
  assert.ok((await stillPending.textContent('#votes')).includes(reasonMarkup), 'the reason is shown as text');
  assert.equal(await stillPending.locator('#votes script').count(), 0);
  assert.notEqual((await third.done).code, 0);

  // 7. History filters.
  const hist = await alice.context.newPage();
  await hist.goto(`${base}/history?outcome=denied&reviewer=alice`);
  const histText = await hist.textContent('#history');
  assert.match(histText, /balance = 13/);
  assert.doesNotMatch(histText, /balance = 42/);
  const rowsAt = async (query) => {
    await hist.goto(`${base}/history?${query}`);
    return hist.locator('#history tbody tr').count();
  };
  assert.equal(await rowsAt('target=demo-db&requester=unix%3Aroot&outcome=used'), 1, 'the approved one, used');
  assert.equal(await rowsAt('target=other-db'), 0, 'no request on another target');
  assert.equal(await rowsAt('requester=nobody'), 0, 'no request by another requester');
  assert.equal(await rowsAt('reviewer=viewer'), 0, 'the refused reviewer decided nothing');
  step('history filtered by outcome, reviewer, target and requester');
  const csp = (await alice.context.request.get(`${base}/history`)).headers()['content-security-policy'];
  assert.match(csp, /script-src 'self';/, `pages run only the daemon's scripts: ${csp}`);

  // 8. Sessions: search over commands, the transcript, and the player plays the recording.
  const sessions = await alice.context.newPage();
  sessions.on('console', (m) => console.log(`page console: ${m.text()}`));
  sessions.on('pageerror', (e) => console.log(`page error: ${e}`));
  await sessions.goto(`${base}/sessions?q=${encodeURIComponent('balance = 42')}`);
  const links = sessions.locator('#sessions tbody a');
  assert.equal(await links.count(), 1, 'one session ran that command');
  await links.first().click();
  await sessions.waitForSelector('#transcript', { timeout: T });
  const transcript = await sessions.textContent('#transcript');
  assert.match(transcript, /UPDATE accounts SET balance = 42/);
  assert.match(transcript, /review/);
  assert.match(transcript, /request \w+ (approved|used) by alice/);
  await sessions.waitForSelector('#player[data-ready=yes]', { timeout: T });
  // play() resolves only once playback ends: start it, do not wait for it.
  await sessions.evaluate(() => { window.consolePlayer.play(); return true; });
  try {
    await sessions.waitForFunction(
      () => document.querySelector('#player').textContent.includes('balance = 42'),
      null, { timeout: T },
    );
  } catch (e) {
    const html = await sessions.evaluate(() => document.querySelector('#player').outerHTML);
    throw new Error(`the player never showed the command: ${html.slice(0, 1500)}`);
  }
  const playedTo = await sessions.evaluate(() => window.consolePlayer.getCurrentTime());
  assert.ok(playedTo > 0, `player time ${playedTo}`);
  step('the replay page played the recorded session (asciinema-player, served by the daemon)');

  // 9. Audit: the log verifies and shows its last signed head.
  const audit = await alice.context.newPage();
  await audit.goto(`${base}/audit`);
  assert.match(await audit.textContent('#verdict'), /Verified/);
  assert.match(await audit.textContent('#signed-head'), /seq \d+/);
  step('audit page: the log verifies, with its signed head');

  // 10. Policy explain with a trace.
  const pol = await alice.context.newPage();
  await pol.goto(`${base}/policy`);
  await pol.selectOption('select[name=kind]', 'sql');
  await pol.fill('input[name=identity]', 'unix:root');
  await pol.fill('textarea[name=command]', 'DELETE FROM accounts');
  await pol.click('form.explain button');
  await pol.waitForSelector('#explain-action', { timeout: T });
  assert.match(await pol.textContent('#explain-action'), /review by rule write-review/);
  assert.match(await pol.textContent('#trace'), /reads/);
  step('policy explain shows the decision and the rules tried');

  // 11. Logging out needs the CSRF token too, and ends the session server-side.
  const forgedLogout = await alice.context.request.post(`${base}/logout`, { form: {}, maxRedirects: 0 });
  assert.equal(forgedLogout.status(), 403, `logout without CSRF answered ${forgedLogout.status()}`);
  const still = await alice.context.request.get(`${base}/history`, { maxRedirects: 0 });
  assert.equal(still.status(), 200, 'a forged logout ended the session');
  const before = (await alice.context.cookies(base)).filter((c) => c.name === '__Host-airlock-session');
  // A second tab keeps the live inbox open across the logout. Nothing is pending now: the
  // stream's first event (an empty `reset`) must still arrive.
  const watcher = await alice.context.newPage();
  await watcher.goto(`${base}/`);
  try {
    await watcher.waitForSelector('body[data-live=on]', { timeout: T, state: 'attached' });
  } catch (e) {
    throw new Error(`the watcher's stream never opened: live=${await watcher.evaluate(() => document.body.dataset.live)} at ${watcher.url()}`);
  }
  await inbox.click('header .who button');
  await inbox.waitForSelector('#message', { timeout: T });
  assert.equal((await alice.context.cookies(base)).filter((c) => c.name === '__Host-airlock-session').length, 0,
    'logout clears the cookie');
  // The old cookie, presented again, opens nothing: the session ended on the server.
  await alice.context.addCookies(before);
  const after = await alice.context.request.get(`${base}/history`, { maxRedirects: 0 });
  assert.equal(after.status(), 303);
  const stream = await alice.context.request.get(`${base}/events`, { maxRedirects: 0 });
  assert.equal(stream.status(), 401, 'the live stream still opens after logout');
  // Logging out of an ended session needs no token and clears the cookie.
  const again = await alice.context.request.post(`${base}/logout`, { form: {}, maxRedirects: 0 });
  assert.equal(again.status(), 200, `logout of an ended session answered ${again.status()}`);
  assert.match(again.headers()['set-cookie'] || '', /__Host-airlock-session=;/);
  // The stream that was open ends with the session: a command held now never reaches that tab.
  const late = psql('UPDATE accounts SET balance = 99 WHERE id = 1');
  await watcher.waitForSelector('body[data-live=reconnecting]', { timeout: T });
  assert.equal(await watcher.locator('#inbox-rows tr', { hasText: 'balance = 99' }).count(), 0,
    'a held command reached a logged-out tab');
  late.child.kill();
  await late.done;
  step('logged out: the session no longer opens pages or the live stream');

  console.log('browser scenario passed');
} finally {
  control.close();
  await browser.close();
}
