// Headless Chromium against `duplex hub`: the demo page (web/index.html) and its client
// (web/duplex.js), as the hub serves them, in real pages.
//
// This file starts the hub itself (node child_process, 127.0.0.1, a free port), because one
// test kills it and starts it again on the same port. The binary is $DUPLEX_HUB_BIN, else
// $CARGO_TARGET_DIR/release/duplex, else target/release/duplex (tests/browser/run.sh and
// run-hub.sh build it). Skipped when $DUPLEX_ECHO_CMD is set: run.sh is then testing another
// echo server, not duplex.
//
// A network drop is made with a TCP relay between one page and the hub: the page is loaded
// through the relay (so the WebSocket goes through it too: same origin), and the test
// destroys the relayed connections and refuses new ones for a while, as a dead link would.
//
// The many-node tests start a redis-server of their own (free port, no persistence; $DUPLEX_REDIS_SERVER
// or redis-server on PATH: scripts/install-redis.sh) and two hubs with `--broker redis://...`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const TARGET = path.resolve(ROOT, process.env.CARGO_TARGET_DIR || 'target');
const BIN = process.env.DUPLEX_HUB_BIN || path.join(TARGET, 'release/duplex');
const CHROMIUM = process.env.DUPLEX_CHROMIUM || '/usr/bin/chromium';
const SKIP = process.env.DUPLEX_ECHO_CMD ? 'DUPLEX_ECHO_CMD is set: testing another echo server, not the hub' : false;
const T = { timeout: 45_000, skip: SKIP };

let browser;
let hub; // the running hub process: { proc, port, log }
let relay; // TCP relay for the network-drop test
const extra = []; // redis-server and hub processes of the many-node tests, stopped in after()
const contexts = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tag = () => randomBytes(3).toString('hex');

// ---- the hub process ---------------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts `duplex hub` on 127.0.0.1:port (more flags in `args`); resolves once /healthz answers 200, rejects if it exits. */
async function startHub(port, ms = 15_000, args = []) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DUPLEX_')));
  env.RUST_LOG ||= 'info';
  const proc = spawn(BIN, ['hub', '--listen', `127.0.0.1:${port}`, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const h = { proc, port, log: [], exited: null, base: `http://127.0.0.1:${port}/` };
  const keep = (chunk) => {
    h.log.push(...chunk.toString().split('\n').filter(Boolean));
    if (h.log.length > 60) h.log.splice(0, h.log.length - 60);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  h.exit = new Promise((resolve) => proc.once('exit', (code, signal) => { h.exited = { code, signal }; resolve(h.exited); }));
  proc.once('error', (e) => { h.log.push(`spawn error: ${e.message}`); });
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (h.exited) break;
    try {
      const res = await fetch(`${h.base}healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok && (await res.text()).trim() === 'ok') return h;
    } catch { /* not yet */ }
    await sleep(100);
  }
  await stopHub(h, 'SIGKILL');
  throw new Error(`hub on port ${port} did not become healthy (${JSON.stringify(h.exited)}); log:\n  ${h.log.join('\n  ')}`);
}

/** Stops a hub we started, by its PID: `signal`, then SIGKILL after 5 s. */
async function stopHub(h, signal = 'SIGTERM') {
  if (!h || h.exited) return;
  h.proc.kill(signal);
  const done = await Promise.race([h.exit, sleep(5000).then(() => null)]);
  if (!done) {
    h.proc.kill('SIGKILL');
    await h.exit;
  }
}

/** A hub node with `args` on a free port (another port if it loses the race for one); stopped in after(). */
async function startNode(args) {
  for (let attempt = 1; ; attempt++) {
    try {
      const h = await startHub(await freePort(), 15_000, args);
      extra.push(h);
      return h;
    } catch (e) {
      if (attempt === 3) throw e;
    }
  }
}

/** A redis-server of our own on a free port (no persistence), ready when PING answers; stopped in after(). */
async function startRedis() {
  const bin = process.env.DUPLEX_REDIS_SERVER || 'redis-server';
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    const r = { proc, port, url: `redis://127.0.0.1:${port}`, exited: null };
    r.exit = new Promise((resolve) => proc.once('exit', (code, signal) => { r.exited = { code, signal }; resolve(r.exited); }));
    proc.once('error', (e) => { r.exited = { error: e.message }; });
    extra.push(r);
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && !r.exited) {
      const pong = await new Promise((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        s.setTimeout(1000, () => { s.destroy(); resolve(false); });
        s.on('error', () => resolve(false));
        s.on('connect', () => s.write('PING\r\n'));
        s.on('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')); });
      });
      if (pong) return r;
      await sleep(50);
    }
    await stopHub(r, 'SIGKILL');
    if (attempt === 3) throw new Error(`redis-server (${bin}) did not start: ${JSON.stringify(r.exited)}; install it with scripts/install-redis.sh`);
  }
}

async function api(pathAndQuery, body) {
  const res = await fetch(hub.base + pathAndQuery, {
    method: body === undefined ? 'GET' : 'POST',
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `${body === undefined ? 'GET' : 'POST'} /${pathAndQuery} ${JSON.stringify(body) ?? ''} → ${res.status} ${text}`);
  return JSON.parse(text);
}
const publish = (channel, data) => api('api/publish', { channel, data });

// ---- a TCP relay that can play dead ----------------------------------------------------------

async function startRelay(targetPort) {
  const pairs = new Set();
  let down = false;
  const server = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = [client, upstream];
    pairs.add(pair);
    const end = () => { pairs.delete(pair); client.destroy(); upstream.destroy(); };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    base: `http://127.0.0.1:${server.address().port}/`,
    /** Kills every relayed connection (both sides at once, no close handshake) and refuses new ones. */
    cut() {
      down = true;
      const n = pairs.size;
      for (const [a, b] of pairs) { a.resetAndDestroy?.() ?? a.destroy(); b.destroy(); }
      pairs.clear();
      return n;
    },
    restore() { down = false; },
    close() {
      for (const [a, b] of pairs) { a.destroy(); b.destroy(); }
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

// ---- pages ---------------------------------------------------------------------------------

/** A fresh page (its own context: its own localStorage) on the demo; `errors` collects page errors. */
async function openDemo(base = hub.base) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  contexts.push(context);
  const page = await context.newPage();
  page.errors = [];
  page.console = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.on('console', (m) => page.console.push(`${m.type()}: ${m.text()}`));
  await page.goto(base, { timeout: 10_000 });
  await page.waitForFunction(() => window.duplexDemo?.hub?.state === 'connected', null, { timeout: 10_000 });
  return page;
}

/** Enters `name` in the join form (click or Enter) and waits until the page is in #chat. */
async function join(page, name, how = 'click') {
  await page.fill('#name', name);
  if (how === 'click') await page.click('#join-btn');
  else await page.press('#name', 'Enter');
  await page.waitForFunction(
    () => window.duplexDemo.chat?.state === 'subscribed' && window.duplexDemo.hub.state === 'connected' && !document.querySelector('#send').disabled,
    null, { timeout: 10_000 });
}

/** Types a chat message and sends it with Enter; waits until the hub took it (input cleared). */
async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
  await page.waitForFunction(() => document.querySelector('#text').value === '', null, { timeout: 10_000 });
}

const texts = (page) => page.$$eval('#messages .msg .text', (nodes) => nodes.map((n) => n.textContent));
const online = (page) => page.$$eval('#online .user', (nodes) => nodes.map((n) => n.textContent).sort());

/** waitForFunction, with the page's state in the error. */
async function waitFor(page, fn, arg, ms, what) {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
  } catch (e) {
    const state = await page.evaluate(() => ({
      state: window.duplexDemo?.hub.state,
      states: window.duplexDemo?.states.slice(-12),
      stats: window.duplexDemo?.hub.stats,
      recoveries: window.duplexDemo?.recoveries,
      messages: [...document.querySelectorAll('#messages li')].slice(-12).map((n) => n.textContent),
    })).catch(() => 'page gone');
    e.message = `${what}: ${e.message}\npage: ${JSON.stringify(state)}\nconsole: ${page.console.slice(-10).join(' | ')}\nhub log:\n  ${hub?.log.slice(-10).join('\n  ')}`;
    throw e;
  }
}

function noPageErrors(...pages) {
  for (const p of pages) assert.deepEqual(p.errors, [], 'uncaught errors in the page');
}

before(async () => {
  if (SKIP) return;
  assert.ok(fs.existsSync(BIN), `${BIN} not found: build it (cargo build --release -p duplex-cli) or set DUPLEX_HUB_BIN`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    ],
  });
  for (let attempt = 1; ; attempt++) {
    try {
      hub = await startHub(await freePort());
      break;
    } catch (e) {
      if (attempt === 3) throw e; // a lost race for the port makes the hub exit: try another
    }
  }
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
  await relay?.close();
  await stopHub(hub);
  for (const p of extra.reverse()) await stopHub(p, 'SIGKILL');
});

// ---- tests -----------------------------------------------------------------------------------

test('hub serves the demo page and duplex.js', T, async () => {
  const page = await fetch(hub.base).then((r) => r.text());
  assert.match(page, /id="messages"/, 'GET / is web/index.html');
  const js = await fetch(`${hub.base}duplex.js`);
  assert.match(js.headers.get('content-type'), /javascript/);
  assert.match(await js.text(), /export class Hub/, 'GET /duplex.js is web/duplex.js');
});

test('chat: a message typed in one page appears in the other; presence shows both names', T, async () => {
  const [ada, grace] = [await openDemo(), await openDemo()];
  await join(ada, 'Ada', 'click');
  await join(grace, 'Grace', 'enter');
  for (const p of [ada, grace]) {
    await waitFor(p, () => [...document.querySelectorAll('#online .user')].map((n) => n.textContent).sort().join() === 'Ada,Grace', null, 10_000, 'presence lists Ada and Grace');
  }
  await waitFor(ada, () => [...document.querySelectorAll('#messages .sys')].some((n) => n.textContent === 'Grace joined'), null, 5000, 'Ada sees "Grace joined"');
  const graceSys = await grace.$$eval('#messages .sys', (nodes) => nodes.map((n) => n.textContent));
  assert.ok(!graceSys.includes('Ada joined'), `Ada was there before Grace: no "Ada joined" for Grace (${graceSys})`);
  const presence = await api('api/presence?channel=chat');
  assert.deepEqual(presence.clients.map((c) => c.user).sort(), ['Ada', 'Grace'], 'the hub sees both users by name (?user=)');

  const hello = `hello from Ada ${tag()}`;
  await say(ada, hello);
  await waitFor(grace, (t) => [...document.querySelectorAll('#messages .msg .text')].some((n) => n.textContent === t), hello, 5000, 'Grace sees Ada\'s message');
  const reply = `hi Ada, Grace here ${tag()}`;
  await grace.fill('#text', reply);
  await grace.click('#send');
  await waitFor(ada, (t) => [...document.querySelectorAll('#messages .msg .text')].some((n) => n.textContent === t), reply, 5000, 'Ada sees Grace\'s reply');

  // Same order on both pages, each message once; the author is shown.
  for (const p of [ada, grace]) {
    const mine = (await texts(p)).filter((t) => t === hello || t === reply);
    assert.deepEqual(mine, [hello, reply]);
  }
  const who = await grace.$$eval('#messages .msg', (nodes, t) => nodes.filter((n) => n.querySelector('.text').textContent === t).map((n) => n.querySelector('.who').textContent), hello);
  assert.deepEqual(who, ['Ada']);

  // Grace leaves: Ada's presence list follows.
  await grace.close();
  await waitFor(ada, () => [...document.querySelectorAll('#online .user')].map((n) => n.textContent).join() === 'Ada', null, 10_000, 'Grace leaves the online list');
  noPageErrors(ada);
  await ada.close();
});

test('ticker: values published with POST /api/publish show up live; the curl line works', T, async () => {
  const page = await openDemo();
  await page.waitForFunction(() => window.duplexDemo.ticker?.state === 'subscribed', null, { timeout: 10_000 });
  const sym = `T${tag()}`.toUpperCase().slice(0, 7);
  const offsets = [];
  for (const price of [10.5, 12.25, 11.75]) offsets.push((await publish('ticker', { symbol: sym, price })).offset);
  assert.deepEqual(offsets, [offsets[0], offsets[0] + 1, offsets[0] + 2], 'offsets of one channel go up by one');
  const tile = `#ticker .tile[data-symbol="${sym}"]`;
  await waitFor(page, (sel) => document.querySelector(`${sel} .price`)?.textContent === '11.75', tile, 5000, 'the tile shows the last price');
  assert.match(await page.textContent(`${tile} .chg`), /▼ 0\.50/, 'change against the previous tick');
  const feed = await page.$$eval('#ticker-feed li', (nodes) => nodes.slice(0, 3).map((n) => n.textContent));
  assert.deepEqual(feed.map((t) => t.match(/^#(\d+)/)[1]).map(Number), offsets.slice().reverse(), 'feed: newest first, by offset');

  // The page shows a runnable curl line for this very hub.
  const curl = await page.textContent('#curl');
  assert.ok(curl.includes(`${hub.base}api/publish`), `curl line names this hub: ${curl}`);
  let hasCurl = true;
  try { execFileSync('curl', ['--version'], { stdio: 'ignore' }); } catch { hasCurl = false; }
  if (hasCurl) {
    const out = execFileSync('bash', ['-c', curl.replace('curl ', 'curl -sS --max-time 5 ')], { encoding: 'utf8', timeout: 10_000 });
    assert.match(out, /"offset":\d+/, `curl line output: ${out}`);
    const price = JSON.parse(curl.match(/'(\{.*\})'/s)[1]).data.price;
    await waitFor(page, (p) => document.querySelector('#ticker .tile[data-symbol="DPLX"] .price')?.textContent === p.toFixed(2), price, 5000, 'the curl line\'s tick shows up');
  }
  noPageErrors(page);
  await page.close();
});

test('network drop: the page reconnects by itself and shows what it missed, once, in order', T, async (t) => {
  relay = await startRelay(hub.port);
  const carol = await openDemo(relay.base); // through the relay
  const dave = await openDemo(); // straight to the hub
  await join(carol, 'Carol');
  await join(dave, 'Dave');
  const warmup = `before the drop ${tag()}`;
  await say(dave, warmup);
  await waitFor(carol, (t) => [...document.querySelectorAll('#messages .msg .text')].some((n) => n.textContent === t), warmup, 5000, 'Carol is live');
  const before = await carol.evaluate(() => ({ ...window.duplexDemo.hub.stats }));
  const daveConnects = await dave.evaluate(() => window.duplexDemo.hub.stats.connects);

  const cut = relay.cut();
  assert.ok(cut >= 1, 'the relay carried the page\'s WebSocket');
  await waitFor(carol, () => window.duplexDemo.hub.state !== 'connected', null, 5000, 'Carol notices the drop');

  const run = tag();
  const sent = [1, 2, 3, 4, 5].map((i) => `missed ${run} #${i}`);
  for (const m of sent) await say(dave, m);
  await sleep(300);
  assert.deepEqual((await texts(carol)).filter((t) => t.includes(run)), [], 'nothing reached Carol while the link was down');
  relay.restore();
  const t0 = Date.now();

  // Keep publishing while Carol reconnects and resubscribes, until she has been back for five
  // more: publications land before, during and after her subscribe-with-since.
  const burst = [];
  let reconnectMs;
  for (let live = 0; live < 5 && burst.length < 60;) {
    const m = `burst ${run} #${burst.length}`;
    await publish('chat', { user: 'ops', text: m });
    burst.push(m);
    if (await carol.evaluate(() => window.duplexDemo.chat.state === 'subscribed')) {
      reconnectMs ??= Date.now() - t0;
      live++;
    }
    await sleep(40);
  }
  const all = [...sent, ...burst];
  await waitFor(carol, ([run, n]) => [...document.querySelectorAll('#messages .msg .text')].filter((n) => n.textContent.includes(run)).length >= n, [run, all.length], 20_000, 'Carol catches up');
  await sleep(500); // anything duplicated would arrive by now
  assert.deepEqual((await texts(carol)).filter((t) => t.includes(run)), all, 'every message exactly once, in order');
  const caughtUp = await carol.$$eval('#messages .msg.caught-up .text', (nodes, run) => nodes.map((n) => n.textContent).filter((t) => t.includes(run)), run);
  assert.deepEqual(caughtUp.slice(0, 5), sent, 'the messages published while she was away came from recovery (subscribe with since)');

  const after = await carol.evaluate(() => ({ ...window.duplexDemo.hub.stats }));
  assert.equal(after.connects, before.connects + 1, 'one reconnect');
  assert.equal(after.losses, before.losses, 'recovered: no history lost');
  assert.ok(after.recoveries >= before.recoveries + 2, 'chat and ticker recovered');
  assert.equal(await carol.isHidden('#banner'), true, 'no history-lost banner');
  assert.equal(await dave.evaluate(() => window.duplexDemo.hub.stats.connects), daveConnects, 'Dave (not behind the relay) did not reconnect');

  // Live again: a new message arrives once.
  const live = `after the drop ${run}`;
  await say(dave, live);
  await waitFor(carol, (t) => [...document.querySelectorAll('#messages .msg .text')].some((n) => n.textContent === t), live, 5000, 'Carol is live again');
  assert.deepEqual((await texts(carol)).filter((t) => t.includes(run)), [...all, live]);
  t.diagnostic(`resubscribed ${reconnectMs} ms after the link came back; ${caughtUp.length} recovered, ${all.length - caughtUp.length} live`);
  noPageErrors(carol, dave);
  await carol.close();
  await dave.close();
});

test('hub restart: the page reconnects, says history was lost, then receives new publications', T, async () => {
  const page = await openDemo();
  await join(page, 'Erin');
  const beforeText = `before restart ${tag()}`;
  const first = await publish('chat', { user: 'ops', text: beforeText });
  await waitFor(page, (t) => [...document.querySelectorAll('#messages .msg .text')].some((n) => n.textContent === t), beforeText, 5000, 'a message before the restart');
  assert.equal(await page.isHidden('#banner'), true);

  const port = hub.port;
  await stopHub(hub, 'SIGKILL'); // a crash: no close frames
  await waitFor(page, () => window.duplexDemo.hub.state !== 'connected', null, 5000, 'the page notices the hub is gone');
  let restarted;
  for (let attempt = 1; !restarted; attempt++) {
    try {
      restarted = await startHub(port); // the same port: the page's URL does not change
    } catch (e) {
      if (attempt === 5) throw e;
      await sleep(500);
    }
  }
  hub = restarted;

  await waitFor(page, () => !document.querySelector('#banner').hidden, null, 20_000, 'the history-lost banner shows');
  assert.match(await page.textContent('#banner'), /history lost: the hub restarted; you may have missed messages/i);
  const lost = await page.evaluate(() => window.duplexDemo.recoveries.filter((r) => !r.recovered));
  const chat = lost.find((r) => r.channel === 'chat');
  assert.ok(chat, `recovered:false reported for #chat: ${JSON.stringify(lost)}`);
  assert.equal(chat.previousEpoch, first.epoch);
  assert.ok(chat.epochChanged && chat.epoch !== first.epoch, 'a new epoch');
  assert.match(chat.reason, /epoch/);

  await waitFor(page, () => window.duplexDemo.chat.state === 'subscribed' && [...document.querySelectorAll('#online .user')].some((n) => n.textContent === 'Erin'), null, 10_000, 'back in #chat, present again');
  const afterText = `after restart ${tag()}`;
  const next = await publish('chat', { user: 'ops', text: afterText });
  assert.notEqual(next.epoch, first.epoch, 'the restarted hub has a new epoch');
  await waitFor(page, (t) => [...document.querySelectorAll('#messages .msg .text')].some((n) => n.textContent === t), afterText, 5000, 'a publication after the restart shows');
  assert.equal((await texts(page)).filter((t) => t === afterText).length, 1);
  noPageErrors(page);
  await page.close();
});

test('duplex.js: presence pushes (joins and leaves of a window) fire onJoin/onLeave once per client', T, async () => {
  const context = await browser.newContext();
  contexts.push(context);
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  await page.goto(`${hub.base}duplex.js`); // any page of the hub's origin; the script imports the module
  const channel = `room-${tag()}`;
  const result = await page.evaluate(async ({ url, channel }) => {
    const { Hub } = await import('/duplex.js');
    const until = async (fn, what) => {
      const deadline = Date.now() + 10_000;
      while (!fn()) {
        if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    const joins = [];
    const leaves = [];
    let presence = [];
    const watcher = new Hub(url, { user: 'watcher' });
    const sub = watcher.subscribe(channel, {
      onJoin: (c) => joins.push(c.user),
      onLeave: (c) => leaves.push(c.user),
      onPresence: (clients) => { presence = clients.map((c) => c.user).sort(); },
    });
    watcher.connect();
    await until(() => sub.state === 'subscribed' && presence.includes('watcher'), 'the watcher is subscribed and present');
    // Three clients subscribe at once: their joins share a window (default 100 ms).
    const others = ['ann', 'ben', 'cy'].map((user) => new Hub(url, { user }));
    for (const other of others) {
      other.subscribe(channel, {});
      other.connect();
    }
    await until(() => ['ann', 'ben', 'cy'].every((u) => joins.includes(u)), 'three joins');
    const joinedList = presence.slice();
    others[0].close();
    others[1].close();
    await until(() => leaves.length >= 2, 'two leaves');
    await until(() => presence.length === 2, 'two present');
    others[2].close();
    watcher.close();
    return { joins, leaves, joinedList, presence };
  }, { url: `ws://127.0.0.1:${hub.port}/ws`, channel });
  assert.deepEqual(result.joins.filter((u) => u !== 'watcher').sort(), ['ann', 'ben', 'cy'], 'onJoin once per client');
  assert.deepEqual(result.joinedList, ['ann', 'ben', 'cy', 'watcher']);
  assert.deepEqual(result.leaves.sort(), ['ann', 'ben'], 'onLeave once per client');
  assert.deepEqual(result.presence, ['cy', 'watcher']);
  assert.deepEqual(page.errors, []);
  await page.close();
});

// ---- many nodes: two hubs behind one Redis ------------------------------------------------

test('many nodes: two pages on two hub nodes behind one Redis chat and see each other\'s presence', T, async () => {
  const redis = await startRedis();
  const [a, b] = [await startNode(['--broker', redis.url]), await startNode(['--broker', redis.url])];
  const ada = await openDemo(a.base);
  const bob = await openDemo(b.base);
  await join(ada, 'Ada');
  await join(bob, 'Bob');
  for (const p of [ada, bob]) {
    await waitFor(p, () => [...document.querySelectorAll('#online .user')].map((n) => n.textContent).sort().join() === 'Ada,Bob', null, 10_000, 'presence lists Ada and Bob, across the nodes');
  }
  await waitFor(ada, () => [...document.querySelectorAll('#messages .sys')].some((n) => n.textContent === 'Bob joined'), null, 5000, 'Ada (on A) sees "Bob joined" (on B)');
  for (const node of [a, b]) {
    const presence = await fetch(`${node.base}api/presence?channel=chat`).then((r) => r.json());
    assert.deepEqual(presence.clients.map((c) => c.user).sort(), ['Ada', 'Bob'], `presence on ${node.base}`);
  }

  const hello = `hello from node A ${tag()}`;
  await say(ada, hello);
  await waitFor(bob, (t) => [...document.querySelectorAll('#messages .msg .text')].some((n) => n.textContent === t), hello, 5000, 'Bob (on B) sees Ada\'s message (on A)');
  const reply = `hi from node B ${tag()}`;
  await say(bob, reply);
  await waitFor(ada, (t) => [...document.querySelectorAll('#messages .msg .text')].some((n) => n.textContent === t), reply, 5000, 'Ada sees Bob\'s reply');
  for (const p of [ada, bob]) {
    assert.deepEqual((await texts(p)).filter((t) => t === hello || t === reply), [hello, reply], 'same order on both nodes, each once');
  }
  // The offsets are the broker's: both nodes gave the two messages consecutive ones.
  const history = await fetch(`${b.base}api/history?channel=chat&limit=2`).then((r) => r.json());
  assert.deepEqual(history.publications.map((p) => p.data.text), [hello, reply]);
  assert.equal(history.publications[1].offset, history.publications[0].offset + 1);

  await bob.close();
  await waitFor(ada, () => [...document.querySelectorAll('#online .user')].map((n) => n.textContent).join() === 'Ada', null, 10_000, 'Bob leaves Ada\'s online list');
  noPageErrors(ada);
  await ada.close();
});

test('many nodes: duplex.js with two URLs moves to the other node when its node dies (kill -9) and recovers exactly', T, async () => {
  const redis = await startRedis();
  const [a, b] = [await startNode(['--broker', redis.url]), await startNode(['--broker', redis.url])];
  const context = await browser.newContext();
  contexts.push(context);
  const page = await context.newPage();
  page.errors = [];
  page.console = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.on('console', (m) => page.console.push(`${m.type()}: ${m.text()}`));
  await page.goto(`${b.base}duplex.js`); // any page of B's origin; the script imports the module
  const urls = [a, b].map((n) => `ws://127.0.0.1:${n.port}/ws`);
  await page.evaluate(async (urls) => {
    const { Hub } = await import('/duplex.js');
    const got = [];
    const hub = new Hub(urls, { user: 'walker', minDelay: 50, maxDelay: 400 });
    const states = [];
    hub.on('state', (s, info) => states.push([s, info.url ?? null]));
    hub.subscribe('feed', { onPublication: (data, { offset }) => got.push([offset, data.n]) });
    window.t = { hub, got, states };
    hub.connect();
  }, urls);
  await waitFor(page, (u) => window.t.hub.state === 'connected' && window.t.hub.url === u && window.t.hub.subscription('feed').state === 'subscribed', urls[0], 10_000, 'connected to the first URL (node A)');

  const offsets = [];
  const publishTo = async (node, n) => {
    const res = await fetch(`${node.base}api/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ channel: 'feed', data: { n } }),
    });
    assert.equal(res.status, 200);
    offsets.push((await res.json()).offset);
  };
  for (let n = 0; n < 10; n++) await publishTo(b, n);
  await waitFor(page, () => window.t.got.length === 10, null, 5000, 'live on A');
  await stopHub(a, 'SIGKILL');
  for (let n = 10; n < 40; n++) { await publishTo(b, n); await sleep(10); }
  await waitFor(page, (u) => window.t.hub.state === 'connected' && window.t.hub.url === u, urls[1], 10_000, 'moved to the second URL (node B)');
  await waitFor(page, () => window.t.got.length >= 40, null, 10_000, 'caught up on B');
  await sleep(300); // anything duplicated would arrive by now
  const { got, stats } = await page.evaluate(() => ({ got: window.t.got, stats: window.t.hub.stats }));
  assert.deepEqual(got.map(([, n]) => n), [...Array(40).keys()], 'every publication once, in order');
  assert.deepEqual(got.map(([o]) => o), offsets, 'with the offsets the broker gave them');
  assert.equal(stats.losses, 0, 'recovered, nothing lost');
  assert.ok(stats.failovers >= 1 && stats.recoveries >= 1, JSON.stringify(stats));
  noPageErrors(page);
  await page.close();
});
