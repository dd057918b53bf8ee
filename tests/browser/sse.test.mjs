// Headless Chromium against the hub's `/sse` (the WebSocket fallback): a real `EventSource`,
// a cut TCP connection, and the browser's own reconnect with `Last-Event-ID`; then duplex.js
// falling back to SSE when its WebSocket cannot open.
//
// This file starts its own hub (the binary as hub.test.mjs finds it) with a short `retry:`.
// The connection is cut by a TCP relay between the page and the hub: the page is loaded
// through the relay (so its EventSource goes through it too: same origin), and the test
// destroys the relayed connections and refuses new ones for a while, as a dead link would; the
// hub is never restarted (its epoch, and so recovery, survive).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const TARGET = path.resolve(ROOT, process.env.CARGO_TARGET_DIR || 'target');
const BIN = process.env.DUPLEX_HUB_BIN || path.join(TARGET, 'release/duplex');
const CHROMIUM = process.env.DUPLEX_CHROMIUM || '/usr/bin/chromium';
const SKIP = process.env.DUPLEX_ECHO_CMD ? 'DUPLEX_ECHO_CMD is set: testing another echo server, not the hub' : false;
const T = { timeout: 45_000, skip: SKIP };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser;
let hub; // { proc, base, log, exit }
const relays = [];
const contexts = [];

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

/** `duplex hub` on a free port with a short retry; resolves once /healthz answers. */
async function startHub() {
  const port = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DUPLEX_')));
  const proc = spawn(BIN, ['hub', '--listen', `127.0.0.1:${port}`, '--sse-retry-ms', '300'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const h = { proc, base: `http://127.0.0.1:${port}/`, log: [], exited: null };
  const keep = (chunk) => { h.log.push(...chunk.toString().split('\n').filter(Boolean)); h.log.splice(0, Math.max(0, h.log.length - 40)); };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  h.exit = new Promise((resolve) => proc.once('exit', (code, signal) => { h.exited = { code, signal }; resolve(); }));
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && !h.exited) {
    try {
      const res = await fetch(`${h.base}healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) return h;
    } catch { /* not yet */ }
    await sleep(100);
  }
  proc.kill('SIGKILL');
  throw new Error(`hub did not start: ${JSON.stringify(h.exited)}\n  ${h.log.join('\n  ')}`);
}

async function publish(channel, data) {
  const res = await fetch(`${hub.base}api/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data }),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text).offset;
}

/** A TCP relay to the hub that can cut every connection and refuse new ones. */
async function startRelay(targetPort) {
  const pairs = new Set();
  let down = false;
  let accepted = 0;
  const server = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    accepted++;
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
  const relay = {
    base: `http://127.0.0.1:${server.address().port}/`,
    accepted: () => accepted,
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
  relays.push(relay);
  return relay;
}

/** A blank page on the relay's origin (the hub's /healthz through it). */
async function openPage(base) {
  const context = await browser.newContext();
  contexts.push(context);
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  await page.goto(`${base}healthz`, { timeout: 10_000 });
  return page;
}

async function waitFor(page, fn, arg, ms, what) {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
  } catch (e) {
    const state = await page.evaluate(() => JSON.stringify(window.sseTest ?? null)).catch(() => 'page gone');
    e.message = `${what}: ${e.message}\npage: ${state.slice(0, 2000)}\nhub log:\n  ${hub.log.slice(-10).join('\n  ')}`;
    throw e;
  }
}

const metric = async (name) => {
  const text = await fetch(`${hub.base}metrics`).then((r) => r.text());
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
};

before(async () => {
  if (SKIP) return;
  assert.ok(fs.existsSync(BIN), `${BIN} not found: build it (cargo build --release -p duplex-cli) or set DUPLEX_HUB_BIN`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
  });
  hub = await startHub();
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
  for (const r of relays) await r.close();
  if (hub && !hub.exited) {
    hub.proc.kill('SIGTERM');
    await Promise.race([hub.exit, sleep(5000)]);
    if (!hub.exited) hub.proc.kill('SIGKILL');
  }
});

test('EventSource: a cut connection resumes from Last-Event-ID, every publication exactly once', T, async () => {
  const relay = await startRelay(new URL(hub.base).port);
  const page = await openPage(relay.base);
  const channels = ['sse-a', 'sse-b'];
  await page.evaluate((channels) => {
    const t = (window.sseTest = { got: {}, subscribed: [], opens: 0, errors: 0, lastId: null });
    const es = new EventSource(`/sse?${channels.map((c) => `channel=${c}`).join('&')}`);
    es.onopen = () => t.opens++;
    es.onerror = () => t.errors++;
    es.addEventListener('subscribed', (ev) => t.subscribed.push(JSON.parse(ev.data)));
    es.addEventListener('pub', (ev) => {
      const p = JSON.parse(ev.data);
      (t.got[p.channel] ||= []).push(p.data);
      t.lastId = ev.lastEventId;
    });
  }, channels);
  await waitFor(page, () => window.sseTest.subscribed.length === 2, null, 10_000, 'both channels subscribed');
  let n = 0;
  const burst = async (count) => {
    for (let i = 0; i < count; i++) {
      n++;
      await publish(channels[n % 2], n);
    }
  };
  await burst(10);
  await waitFor(page, () => Object.values(window.sseTest.got).flat().length === 10, null, 10_000, 'the first 10 live');
  const idBefore = await page.evaluate(() => window.sseTest.lastId);
  assert.match(idBefore, /^[0-9a-f]+:sse-a:\d+,:sse-b:\d+$/, 'the id carries both channels');

  assert.ok(relay.cut() >= 1, 'the stream was relayed');
  await waitFor(page, () => window.sseTest.errors >= 1, null, 10_000, 'the page saw the stream break');
  await burst(10); // published while the page is cut off
  relay.restore();
  await waitFor(page, () => Object.values(window.sseTest.got).flat().length >= 20, null, 15_000, 'the missed 10 recovered');
  await burst(5); // live again
  await waitFor(page, () => Object.values(window.sseTest.got).flat().length >= 25, null, 10_000, 'live after the reconnect');
  await sleep(300);
  const t = await page.evaluate(() => window.sseTest);
  const want = { 'sse-a': [], 'sse-b': [] };
  for (let i = 1; i <= n; i++) want[channels[i % 2]].push(i);
  assert.deepEqual(t.got, want, 'every publication once, in order, per channel');
  assert.ok(t.opens >= 2, 'the browser reconnected by itself');
  const resumed = t.subscribed.slice(2);
  assert.ok(resumed.length >= 2, `subscribed again: ${JSON.stringify(t.subscribed)}`);
  assert.ok(resumed.every((s) => s.recovered === true), `recovered: ${JSON.stringify(resumed)}`);
  assert.equal(resumed.slice(-2).reduce((sum, s) => sum + s.count, 0), 10, 'the 10 missed ones came as recovered publications');
  assert.ok((await metric('duplex_hub_connections_total{transport="sse"}')) >= 2);
  assert.deepEqual(page.errors, []);
});

test('duplex.js falls back to SSE when the WebSocket cannot open, and recovers after a cut', T, async () => {
  const relay = await startRelay(new URL(hub.base).port);
  const page = await openPage(relay.base);
  // The page gets the worktree's duplex.js even if the binary embeds an older one.
  const source = fs.readFileSync(path.join(ROOT, 'web/duplex.js'), 'utf8');
  await page.route('**/duplex.js', (route) => route.fulfill({ contentType: 'text/javascript', body: source }));
  await page.evaluate(async () => {
    const { Hub } = await import('/duplex.js');
    // A WebSocket that never opens, as behind a proxy that strips Upgrade.
    class Blocked {
      constructor() { setTimeout(() => this.onclose?.({ code: 1006, reason: 'blocked', wasClean: false }), 10); }
      send() { throw new Error('not open'); }
      close() {}
    }
    const t = (window.sseTest = { got: [], recoveries: [], states: [] });
    const hub = new Hub('/ws', { WebSocket: Blocked, minDelay: 20, maxDelay: 100, sseAfter: 2, user: 'sse-page' });
    t.hub = hub;
    hub.on('state', (s) => t.states.push(`${s}:${hub.transport}`));
    hub.subscribe('fallback', {
      onPublication: (data, { offset }) => t.got.push([offset, data]),
      onRecovery: (r) => t.recoveries.push(r),
    });
    hub.connect();
  });
  await waitFor(page, () => window.sseTest.hub.transport === 'sse' && window.sseTest.hub.state === 'connected'
    && window.sseTest.hub.subscription('fallback').state === 'subscribed', null, 10_000, 'on SSE, subscribed');
  for (let i = 1; i <= 5; i++) await publish('fallback', i);
  await waitFor(page, () => window.sseTest.got.length === 5, null, 10_000, '5 live over SSE');
  relay.cut();
  await waitFor(page, () => window.sseTest.hub.state === 'disconnected', null, 10_000, 'disconnected');
  for (let i = 6; i <= 10; i++) await publish('fallback', i);
  relay.restore();
  await waitFor(page, () => window.sseTest.got.length >= 10 && window.sseTest.hub.state === 'connected', null, 15_000, 'recovered');
  for (let i = 11; i <= 12; i++) await publish('fallback', i);
  await waitFor(page, () => window.sseTest.got.length >= 12, null, 10_000, 'live after');
  await sleep(300);
  const t = await page.evaluate(async () => ({
    got: window.sseTest.got,
    recoveries: window.sseTest.recoveries,
    stats: { ...window.sseTest.hub.stats },
    publish: await window.sseTest.hub.publish('fallback', 'x').then(() => 'ok', (e) => e.code),
  }));
  assert.deepEqual(t.got.map(([o]) => o), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 'each once, in order');
  assert.deepEqual(t.got.map(([, d]) => d), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  assert.equal(t.stats.gaps, 0);
  assert.ok(t.recoveries.some((r) => r.recovered === true && r.count === 5), JSON.stringify(t.recoveries));
  assert.equal(t.publish, 'not_supported', 'no api option: publishing over SSE is refused, not attempted');
  assert.deepEqual(page.errors, []);
});

test('duplex.js on SSE publishes and reads presence through the HTTP API when given one', T, async () => {
  const page = await openPage(hub.base);
  const source = fs.readFileSync(path.join(ROOT, 'web/duplex.js'), 'utf8');
  await page.route('**/duplex.js', (route) => route.fulfill({ contentType: 'text/javascript', body: source }));
  const t = await page.evaluate(async () => {
    const { Hub } = await import('/duplex.js');
    const got = [];
    let presence = null;
    // The hub has no --api-key: the API is open, so `api: {}` is enough.
    const hub = new Hub('/ws', { transport: 'sse', api: {}, user: 'api-page' });
    hub.subscribe('sse-api', {
      onPublication: (data) => got.push(data),
      onPresence: (clients) => { presence = clients.map((c) => c.user); },
    });
    hub.connect();
    const deadline = Date.now() + 10_000;
    while (hub.subscription('sse-api').state !== 'subscribed' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const offset = await hub.publish('sse-api', { hello: 'over http' });
    while (got.length < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    while (presence === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const ping = await hub.ping().then(() => 'ok', (e) => e.code);
    return { transport: hub.transport, offset, got, presence, ping };
  });
  assert.equal(t.transport, 'sse');
  assert.equal(t.offset, 1);
  assert.deepEqual(t.got, [{ hello: 'over http' }], 'its own publication came back over the stream');
  assert.deepEqual(t.presence, ['api-page'], 'the stream is in presence under its user');
  assert.equal(t.ping, 'not_supported');
  assert.deepEqual(page.errors, []);
});
