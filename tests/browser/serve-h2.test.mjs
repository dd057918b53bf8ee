// Headless Chromium against `duplex serve --echo --tls-cert --tls-key` (the engine, its default
// runtime): WebSockets over HTTP/2 (RFC 8441), proved rather than assumed, and over HTTP/1.1.
//
// The engine speaks HTTP/1.1 upgrades itself and hands connections that chose `h2` by ALPN to
// hyper on the same port (duplex::engine::Handoff). Chromium sends an extended CONNECT only on
// an HTTP/2 connection it already holds to the same origin (issue 11), so the page is loaded
// from `duplex serve` itself (a plain GET gets its tiny page) and then opens its WebSockets.
// Proof from the devtools protocol: the page's response came over protocol "h2", and each
// WebSocket handshake was answered with status 200 (HTTP/2), not 101.
// Then HTTP/1.1: a page from another origin (a node server) opens a WebSocket to the same
// port; Chromium has no HTTP/2 connection there, so it upgrades over HTTP/1.1 (status 101).
//
// The certificate is self-signed (openssl, for 127.0.0.1) and trusted by this test only:
// Chromium runs with --ignore-certificate-errors and the contexts with ignoreHTTPSErrors.
// The binary: $DUPLEX_SERVE_BIN, else target/release/duplex (tests/browser/run.sh builds it).
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
const BIN = process.env.DUPLEX_SERVE_BIN || path.join(TARGET, 'release/duplex');
const CHROMIUM = process.env.DUPLEX_CHROMIUM || '/usr/bin/chromium';
const SKIP = process.env.DUPLEX_ECHO_CMD ? 'DUPLEX_ECHO_CMD is set: testing another echo server' : false;
const T = { timeout: 45_000, skip: SKIP };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser;
let server; // { proc, port, log, exited, exit, base }
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

/** GET `/` from the server over HTTPS (node: HTTP/1.1): [status, body]. */
function get() {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port: server.port, path: '/', ca: cert, timeout: 2000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve([res.statusCode, body]));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

async function startServer(port) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DUPLEX_')));
  const args = ['serve', '--echo', '--runtime', 'engine', '--listen', `127.0.0.1:${port}`,
    '--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem')];
  const proc = spawn(BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const s = { proc, port, log: [], exited: null, base: `https://127.0.0.1:${port}/` };
  const keep = (chunk) => {
    s.log.push(...chunk.toString().split('\n').filter(Boolean));
    if (s.log.length > 60) s.log.splice(0, s.log.length - 60);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  s.exit = new Promise((resolve) => proc.once('exit', (code, signal) => { s.exited = { code, signal }; resolve(s.exited); }));
  proc.once('error', (e) => { s.log.push(`spawn error: ${e.message}`); });
  server = s;
  // Ready once it answers: the engine refuses a plain GET over HTTP/1.1 (400), any answer will do.
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && !s.exited) {
    try {
      await get();
      return s;
    } catch { /* not yet */ }
    await sleep(100);
  }
  await stopServer(s, 'SIGKILL');
  throw new Error(`duplex serve on port ${port} did not answer (${JSON.stringify(s.exited)}); log:\n  ${s.log.join('\n  ')}`);
}

/** Stops the server we started, by its PID: `signal`, then SIGKILL after 5 s. */
async function stopServer(s, signal = 'SIGTERM') {
  if (!s || s.exited) return;
  s.proc.kill(signal);
  const done = await Promise.race([s.exit, sleep(5000).then(() => null)]);
  if (!done) {
    s.proc.kill('SIGKILL');
    await s.exit;
  }
}

before(async () => {
  if (SKIP) return;
  assert.ok(fs.existsSync(BIN), `${BIN} not found: build it (cargo build --release -p duplex-cli) or set DUPLEX_SERVE_BIN`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duplex-serve-h2-'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
    '-addext', 'basicConstraints=critical,CA:FALSE',
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
      await startServer(await freePort());
      break;
    } catch (e) {
      if (attempt === 3) throw e; // a lost race for the port makes the server exit: try another
    }
  }
  pageServer = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', connection: 'close' });
    res.end('<!doctype html><meta charset="utf-8"><title>duplex serve over HTTP/1.1</title>');
  });
  await new Promise((resolve, reject) => {
    pageServer.once('error', reject);
    pageServer.listen(0, '127.0.0.1', resolve);
  });
});

after(async () => {
  if (browser) await browser.close();
  await stopServer(server);
  pageServer?.closeAllConnections?.();
  await new Promise((resolve) => (pageServer ? pageServer.close(resolve) : resolve()));
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** In the page: opens `count` WebSockets to `url`, echoes a text and a binary message through
 * each (all at once), closes them; returns what came back and the negotiated extensions. */
async function echoInPage(page, url, count) {
  return page.evaluate(async ({ url, count }) => {
    const one = (i) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      const got = [];
      const bytes = new Uint8Array(70_000).map((_, k) => (k * 7 + i) % 256);
      ws.onopen = () => {
        ws.send(`hello ${i}`);
        ws.send(bytes);
      };
      ws.onmessage = (e) => {
        got.push(e.data);
        if (got.length === 2) {
          const back = new Uint8Array(got[1]);
          const same = back.length === bytes.length && back.every((b, k) => b === bytes[k]);
          resolve({ text: got[0], binaryOk: same, extensions: ws.extensions });
          ws.close(1000);
        }
      };
      ws.onerror = () => reject(new Error(`websocket ${i}: error`));
    });
    return Promise.all([...Array(count).keys()].map(one));
  }, { url, count });
}

test('Chromium opens duplex serve\'s (engine) WebSockets over HTTP/2 (RFC 8441) under TLS, and echo works', T, async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  try {
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const handshakes = [];
    const protocols = [];
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response.status));
    cdp.on('Network.responseReceived', (e) => protocols.push([e.type, e.response.protocol, e.response.status]));

    const response = await page.goto(server.base);
    assert.equal(response.status(), 200, 'duplex serve answers a GET over HTTP/2 with its page');
    const nextHop = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
    assert.equal(nextHop, 'h2', 'the page itself came over HTTP/2 (ALPN h2, handed off by the engine)');
    assert.deepEqual(protocols.find(([type]) => type === 'Document'), ['Document', 'h2', 200]);

    const results = await echoInPage(page, server.base.replace('https:', 'wss:') + 'echo', 3);
    for (const [i, r] of results.entries()) {
      assert.equal(r.text, `hello ${i}`);
      assert.ok(r.binaryOk, `socket ${i}: the 70,000-byte binary message came back whole`);
      assert.match(r.extensions, /permessage-deflate/, 'deflate negotiated over HTTP/2');
    }
    // The proof: devtools saw HTTP/2 handshakes (200), not HTTP/1.1 ones (101).
    assert.deepEqual(handshakes, [200, 200, 200]);
    assert.deepEqual(errors, [], 'uncaught errors in the page');
  } finally {
    await context.close();
  }
});

test('Chromium opens a WebSocket to duplex serve (engine) over HTTP/1.1 under TLS, on the same port', T, async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  try {
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const handshakes = [];
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response.status));
    // Another origin: no HTTP/2 connection to the server's, so the WebSocket upgrades.
    await page.goto(`http://127.0.0.1:${pageServer.address().port}/`);
    const results = await echoInPage(page, server.base.replace('https:', 'wss:') + 'echo', 2);
    for (const [i, r] of results.entries()) {
      assert.equal(r.text, `hello ${i}`);
      assert.ok(r.binaryOk, `socket ${i}: the binary message came back whole`);
      assert.match(r.extensions, /permessage-deflate/);
    }
    assert.deepEqual(handshakes, [101, 101], 'HTTP/1.1 upgrades');
  } finally {
    await context.close();
  }
});
