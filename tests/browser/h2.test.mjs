// Headless Chromium against `duplex hub --tls-cert --tls-key`: WebSockets over HTTP/2 (RFC 8441),
// proved rather than assumed.
//
// What Chromium does (issue 11): it sends an extended CONNECT (`:protocol websocket`) only on an
// HTTP/2 connection it already holds to the same origin whose SETTINGS carried
// SETTINGS_ENABLE_CONNECT_PROTOCOL; otherwise it opens an HTTP/1.1 connection and upgrades. So
// the page is loaded from the hub itself over TLS (ALPN h2), and then opens its WebSockets.
// Proof, twice: the hub's /metrics count the WebSockets under transport="h2" (and none under
// "h1"), and the devtools protocol reports each handshake with status 200 (HTTP/2), not 101.
//
// The certificate is self-signed (openssl, for 127.0.0.1) and trusted by this test only:
// Chromium runs with --ignore-certificate-errors and the context with ignoreHTTPSErrors.
// The hub binary is found as in hub.test.mjs ($DUPLEX_HUB_BIN, else target/release/duplex).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
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
let hub; // { proc, port, log, exited, exit, base }
let dir; // the certificate's temporary directory
let cert; // PEM, trusted by this test's own requests
let pageServer; // the HTTP/1.1 test's other origin

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

/** GET `p` from the hub over HTTPS (HTTP/1.1, trusting the test certificate): [status, body]. */
function get(p) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port: hub.port, path: p, ca: cert, timeout: 2000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve([res.statusCode, body]));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** The value of the metric line `name` (with labels) in the hub's /metrics. */
async function metric(name) {
  const [status, body] = await get('/metrics');
  assert.equal(status, 200);
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `${name} in\n${body}`);
  return Number(line.slice(name.length + 1));
}

async function startHub(port) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DUPLEX_')));
  env.RUST_LOG ||= 'info';
  const args = ['hub', '--listen', `127.0.0.1:${port}`, '--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem')];
  const proc = spawn(BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const h = { proc, port, log: [], exited: null, base: `https://127.0.0.1:${port}/` };
  const keep = (chunk) => {
    h.log.push(...chunk.toString().split('\n').filter(Boolean));
    if (h.log.length > 60) h.log.splice(0, h.log.length - 60);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  h.exit = new Promise((resolve) => proc.once('exit', (code, signal) => { h.exited = { code, signal }; resolve(h.exited); }));
  proc.once('error', (e) => { h.log.push(`spawn error: ${e.message}`); });
  hub = h;
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && !h.exited) {
    try {
      const [status, body] = await get('/healthz');
      if (status === 200 && body.trim() === 'ok') return h;
    } catch { /* not yet */ }
    await sleep(100);
  }
  await stopHub(h, 'SIGKILL');
  throw new Error(`hub on port ${port} did not become healthy (${JSON.stringify(h.exited)}); log:\n  ${h.log.join('\n  ')}`);
}

/** Stops the hub we started, by its PID: `signal`, then SIGKILL after 5 s. */
async function stopHub(h, signal = 'SIGTERM') {
  if (!h || h.exited) return;
  h.proc.kill(signal);
  const done = await Promise.race([h.exit, sleep(5000).then(() => null)]);
  if (!done) {
    h.proc.kill('SIGKILL');
    await h.exit;
  }
}

before(async () => {
  if (SKIP) return;
  assert.ok(fs.existsSync(BIN), `${BIN} not found: build it (cargo build --release -p duplex-cli) or set DUPLEX_HUB_BIN`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duplex-h2-'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
    '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'),
  ], { stdio: 'ignore' });
  cert = fs.readFileSync(path.join(dir, 'cert.pem'));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
      // The test's self-signed certificate: trusted here only.
      '--ignore-certificate-errors',
    ],
  });
  for (let attempt = 1; ; attempt++) {
    try {
      await startHub(await freePort());
      break;
    } catch (e) {
      if (attempt === 3) throw e; // a lost race for the port makes the hub exit: try another
    }
  }
  // Another origin for the HTTP/1.1 test: a page from here holds no HTTP/2 connection to the
  // hub's origin, so Chromium upgrades its WebSocket over HTTP/1.1 (under TLS).
  pageServer = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', connection: 'close' });
    res.end('<!doctype html><meta charset="utf-8"><title>the hub over HTTP/1.1</title>');
  });
  await new Promise((resolve, reject) => {
    pageServer.once('error', reject);
    pageServer.listen(0, '127.0.0.1', resolve);
  });
});

after(async () => {
  if (browser) await browser.close();
  await stopHub(hub);
  pageServer?.closeAllConnections?.();
  await new Promise((resolve) => (pageServer ? pageServer.close(resolve) : resolve()));
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('Chromium opens the hub\'s WebSockets over HTTP/2 (RFC 8441) and hub traffic works there', T, async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  try {
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const handshakes = [];
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response.status));
    const h1Before = await metric('duplex_hub_connections_total{transport="h1"}');
    const h2Before = await metric('duplex_hub_connections_total{transport="h2"}');

    const response = await page.goto(hub.base + 'healthz');
    assert.equal(response.status(), 200);
    const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
    assert.equal(protocol, 'h2', 'the page itself came over HTTP/2 (ALPN h2)');

    // Three WebSockets: two subscribe, the third publishes; each subscriber gets the publication.
    const result = await page.evaluate(async (url) => {
      const open = () => new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        const inbox = [];
        const waiting = [];
        ws.onmessage = (e) => {
          const m = JSON.parse(e.data);
          const i = waiting.findIndex((w) => w.want(m));
          if (i >= 0) waiting.splice(i, 1)[0].resolve(m); else inbox.push(m);
        };
        const next = (want) => {
          const i = inbox.findIndex(want);
          if (i >= 0) return Promise.resolve(inbox.splice(i, 1)[0]);
          return new Promise((r) => waiting.push({ want, resolve: r }));
        };
        ws.onopen = () => resolve({ ws, next, extensions: ws.extensions });
        ws.onerror = () => reject(new Error('websocket error'));
      });
      const call = async (c, id, command) => {
        c.ws.send(JSON.stringify({ id, ...command }));
        return c.next((m) => m.id === id);
      };
      const [a, b, p] = [await open(), await open(), await open()];
      const subA = await call(a, 1, { op: 'subscribe', channel: 'h2' });
      const subB = await call(b, 1, { op: 'subscribe', channel: 'h2' });
      const pub = await call(p, 1, { op: 'publish', channel: 'h2', data: { via: 'h2' } });
      const gotA = await a.next((m) => m.op === 'pub');
      const gotB = await b.next((m) => m.op === 'pub');
      const echo = await call(a, 2, { op: 'presence', channel: 'h2' });
      for (const c of [a, b, p]) c.ws.close(1000);
      return { subA, subB, pub, gotA, gotB, clients: echo.clients.length, extensions: a.extensions };
    }, hub.base.replace('https:', 'wss:') + 'ws?user=chromium');
    assert.equal(result.subA.ok, true, JSON.stringify(result));
    assert.equal(result.subB.ok, true, JSON.stringify(result));
    assert.equal(result.pub.ok, true, JSON.stringify(result));
    assert.deepEqual(result.gotA.data, { via: 'h2' });
    assert.deepEqual(result.gotB.data, { via: 'h2' });
    assert.equal(result.clients, 2, 'presence: the two subscribers');
    assert.match(result.extensions, /permessage-deflate/, 'deflate negotiated over HTTP/2');

    // The proof: the hub accepted the three WebSockets as extended CONNECTs, none as upgrades...
    assert.equal(await metric('duplex_hub_connections_total{transport="h2"}') - h2Before, 3);
    assert.equal(await metric('duplex_hub_connections_total{transport="h1"}') - h1Before, 0);
    // ...and devtools saw HTTP/2 handshakes (200), not HTTP/1.1 ones (101).
    assert.deepEqual(handshakes, [200, 200, 200]);
    assert.deepEqual(errors, [], 'uncaught errors in the page');
  } finally {
    await context.close();
  }
});

test('Chromium opens the hub\'s WebSockets over HTTP/1.1 under TLS (wss://, upgrade), on the same port', T, async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  try {
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const handshakes = [];
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response.status));
    const h1Before = await metric('duplex_hub_connections_total{transport="h1"}');
    const h2Before = await metric('duplex_hub_connections_total{transport="h2"}');
    await page.goto(`http://127.0.0.1:${pageServer.address().port}/`);
    const result = await page.evaluate(async (url) => {
      const open = () => new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        const inbox = [];
        const waiting = [];
        ws.onmessage = (e) => {
          const m = JSON.parse(e.data);
          const i = waiting.findIndex((w) => w.want(m));
          if (i >= 0) waiting.splice(i, 1)[0].resolve(m); else inbox.push(m);
        };
        const next = (want) => {
          const i = inbox.findIndex(want);
          if (i >= 0) return Promise.resolve(inbox.splice(i, 1)[0]);
          return new Promise((r) => waiting.push({ want, resolve: r }));
        };
        ws.onopen = () => resolve({ ws, next, extensions: ws.extensions });
        ws.onerror = () => reject(new Error('websocket error'));
      });
      const call = async (c, id, command) => {
        c.ws.send(JSON.stringify({ id, ...command }));
        return c.next((m) => m.id === id);
      };
      const [a, p] = [await open(), await open()];
      const sub = await call(a, 1, { op: 'subscribe', channel: 'h1-tls' });
      const pub = await call(p, 1, { op: 'publish', channel: 'h1-tls', data: { via: 'h1' } });
      const got = await a.next((m) => m.op === 'pub');
      for (const c of [a, p]) c.ws.close(1000);
      return { sub, pub, got, extensions: a.extensions };
    }, hub.base.replace('https:', 'wss:') + 'ws?user=chromium-h1');
    assert.equal(result.sub.ok, true, JSON.stringify(result));
    assert.equal(result.pub.ok, true, JSON.stringify(result));
    assert.deepEqual(result.got.data, { via: 'h1' });
    assert.match(result.extensions, /permessage-deflate/);
    // The proof, both ways: HTTP/1.1 upgrades (101) counted as h1, none as h2.
    assert.deepEqual(handshakes, [101, 101], 'HTTP/1.1 upgrades');
    assert.equal(await metric('duplex_hub_connections_total{transport="h1"}') - h1Before, 2);
    assert.equal(await metric('duplex_hub_connections_total{transport="h2"}') - h2Before, 0);
  } finally {
    await context.close();
  }
});
