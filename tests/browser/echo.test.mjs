// Headless Chromium against an echo server at $DUPLEX_ECHO_URL (tests/browser/run.sh
// starts `duplex serve --echo` and sets it). The browser's own WebSocket client does
// the talking; node only generates the data, drives the page and checks the results.
//
// The page comes from a tiny HTTP server on 127.0.0.1, not about:blank: Chromium's
// Local Network Access checks block ws://127.0.0.1 from an about:blank page
// (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS), but not from a loopback origin.
import { test, before, after } from 'node:test';
import http from 'node:http';
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { chromium } from 'playwright-core';

const URL = process.env.DUPLEX_ECHO_URL;
const CHROMIUM = process.env.DUPLEX_CHROMIUM || '/usr/bin/chromium';
const T = { timeout: 30_000 };

let browser;
let page;
let httpServer;
const consoleLines = []; // the page's console (Chromium reports WebSocket failures there)

before(async () => {
  assert.ok(URL && /^ws:\/\/127\.0\.0\.1:\d+$/.test(URL), `DUPLEX_ECHO_URL=${URL}: run via tests/browser/run.sh`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // Loopback only: no name resolves to anything but 127.0.0.1.
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    ],
  });
  httpServer = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', connection: 'close' });
    res.end('<!doctype html><meta charset="utf-8"><title>duplex browser interop</title>');
  });
  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(0, '127.0.0.1', resolve);
  });
  page = await browser.newPage();
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  await page.goto(`http://127.0.0.1:${httpServer.address().port}/`, { timeout: 10_000 });
  await page.evaluate(PAGE_HELPERS);
});

after(async () => {
  await browser?.close();
  httpServer?.closeAllConnections?.();
  await new Promise((resolve) => (httpServer ? httpServer.close(resolve) : resolve()));
});

/** page.evaluate, with what the page logged meanwhile added to an error. */
async function inPage(fn, arg) {
  const mark = consoleLines.length;
  try {
    return await page.evaluate(fn, arg);
  } catch (e) {
    const logged = consoleLines.slice(mark);
    if (logged.length) e.message += `\npage console:\n  ${logged.join('\n  ')}`;
    throw e;
  }
}

// Installed in the page once: open a socket, echo a list of messages through it.
// Binary crosses the page boundary as base64; text as it is.
const PAGE_HELPERS = `
window.duplex = {
  toB64(buf) {
    const bytes = new Uint8Array(buf);
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  },
  fromB64(b64) {
    const s = atob(b64);
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return bytes.buffer;
  },
  open(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      const timer = setTimeout(() => reject(new Error('no open event within 10 s')), 10000);
      ws.onopen = () => { clearTimeout(timer); ws.onerror = ws.onclose = null; resolve(ws); };
      ws.onerror = () => {};
      ws.onclose = (e) => { clearTimeout(timer); reject(new Error('closed before open: code ' + e.code + ' ' + e.reason)); };
    });
  },
  closed(ws, ms) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no close event within ' + ms + ' ms')), ms);
      ws.onclose = (e) => { clearTimeout(timer); resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean }); };
    });
  },
  // items: [{ text } | { b64 }]; resolves with what came back, in arrival order.
  async echo(url, items) {
    const ws = await this.open(url);
    const received = [];
    const done = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('echo: ' + received.length + '/' + items.length + ' messages back within 20 s')), 20000);
      ws.onmessage = (e) => {
        received.push(typeof e.data === 'string' ? { text: e.data } : { b64: this.toB64(e.data) });
        if (received.length === items.length) { clearTimeout(timer); resolve(); }
      };
      ws.onclose = (e) => {
        clearTimeout(timer);
        reject(new Error('closed after ' + received.length + '/' + items.length + ' messages: code ' + e.code + ' ' + e.reason));
      };
    });
    for (const item of items) ws.send(item.text !== undefined ? item.text : this.fromB64(item.b64));
    await done;
    const close = this.closed(ws, 10000);
    ws.close(1000);
    return { extensions: ws.extensions, received, close: await close };
  },
};
`;

/** Echo `items` (strings or Buffers) through one socket; returns what came back, decoded. */
async function echo(items) {
  const wire = items.map((m) => (typeof m === 'string' ? { text: m } : { b64: m.toString('base64') }));
  const out = await inPage(([url, wire]) => window.duplex.echo(url, wire), [URL, wire]);
  const received = out.received.map((m) => (m.text !== undefined ? m.text : Buffer.from(m.b64, 'base64')));
  return { ...out, received };
}

/** Asserts that one echoed message equals the sent one, without dumping 300 KB on failure. */
function assertSame(got, want, what) {
  assert.equal(typeof got, typeof want, `${what}: came back as ${Buffer.isBuffer(got) ? 'binary' : typeof got}`);
  assert.equal(got.length, want.length, `${what}: length ${got.length}, sent ${want.length}`);
  if (Buffer.isBuffer(want)) {
    assert.ok(Buffer.isBuffer(got), `${what}: came back as text, sent binary`);
    const i = want.findIndex((b, k) => got[k] !== b);
    assert.equal(i, -1, `${what}: first differing byte at ${i}`);
  } else {
    let i = 0;
    while (i < want.length && got[i] === want[i]) i++;
    assert.equal(i, want.length, `${what}: first differing UTF-16 unit at ${i}`);
  }
}

test('handshake completes and permessage-deflate is negotiated', T, async () => {
  const info = await inPage(async (url) => {
    const ws = await window.duplex.open(url);
    const r = { extensions: ws.extensions, protocol: ws.protocol, readyState: ws.readyState };
    ws.close(1000);
    return r;
  }, URL);
  assert.equal(info.readyState, 1, 'readyState after open is OPEN');
  // Chromium always offers permessage-deflate; the server is meant to accept it by default.
  assert.match(info.extensions, /(^|,\s*)permessage-deflate(;|,|$)/, `Sec-WebSocket-Extensions accepted by the server: "${info.extensions}"`);
});

test('text message echoes intact', T, async () => {
  const msg = `hello duplex ${randomBytes(8).toString('hex')}`;
  const { received, close } = await echo([msg]);
  assert.equal(received.length, 1);
  assert.equal(received[0], msg);
  assert.equal(close.code, 1000);
});

test('binary message (ArrayBuffer, random bytes) echoes byte for byte', T, async () => {
  const msg = randomBytes(1024 + randomInt(1024));
  const { received } = await echo([msg]);
  assert.equal(received.length, 1);
  assertSame(received[0], msg, 'binary');
});

test('empty text and empty binary messages echo', T, async () => {
  const { received } = await echo(['', Buffer.alloc(0)]);
  assert.equal(received.length, 2);
  assert.equal(received[0], '');
  assertSame(received[1], Buffer.alloc(0), 'empty binary');
});

test('300 KB text and 300 KB random binary echo intact', T, async () => {
  const size = 300 * 1024;
  let text = '';
  for (let i = 0; text.length < size; i++) {
    text += JSON.stringify({
      id: i,
      name: `item-${randomBytes(4).toString('hex')}`,
      tags: ['alpha', 'beta', 'gamma'].slice(0, 1 + (i % 3)),
      value: randomInt(1_000_000) / 1000,
      ok: i % 2 === 0,
    }) + ',\n';
  }
  text = text.slice(0, size);
  const binary = randomBytes(size);
  const { received } = await echo([text, binary]);
  assert.equal(received.length, 2);
  assertSame(received[0], text, '300 KB text');
  assertSame(received[1], binary, '300 KB binary');
});

test('unicode text (emoji, CJK, combining marks, astral plane) echoes intact', T, async () => {
  const samples = [
    'héllo wörld — “quotes” … ½ €',
    '😀👍🏽👨‍👩‍👧‍👦🏳️‍🌈🇯🇵',
    '漢字かなカナ한국어中文繁體',
    'e\u0301 a\u0308 Z\u0351\u0352\u0353 n\u0303 \u0915\u094D\u0937',
    '𝄞 𐍈 𠜎 🜁 𝕏 \u{10FFFD}',
    'مرحبا שלום \u200F\u200E \uFEFF zero\u200Bwidth \u0000nul',
  ];
  // One long message too, so multi-byte sequences straddle frame and buffer boundaries.
  let long = '';
  while (long.length < 100_000) long += samples[randomInt(samples.length)];
  const { received } = await echo([...samples, long]);
  assert.equal(received.length, samples.length + 1);
  samples.forEach((s, i) => assert.equal(received[i], s, `sample ${i}`));
  assertSame(received[samples.length], long, 'long unicode');
});

test('200 small messages in a burst come back in order', T, async () => {
  const sent = [];
  for (let i = 0; i < 200; i++) {
    sent.push(i % 5 === 4 ? Buffer.from(`bin-${i}-${randomBytes(3).toString('hex')}`) : `msg-${i}-${randomBytes(3).toString('hex')}`);
  }
  const { received } = await echo(sent);
  assert.equal(received.length, sent.length);
  const show = (m) => (Buffer.isBuffer(m) ? `<bin ${m.toString()}>` : m);
  assert.deepEqual(received.map(show), sent.map(show));
});

test('close(1000, "bye") gives a clean close event with code 1000', T, async () => {
  const ev = await inPage(async (url) => {
    const ws = await window.duplex.open(url);
    const closed = window.duplex.closed(ws, 10000);
    ws.close(1000, 'bye');
    return closed;
  }, URL);
  assert.equal(ev.wasClean, true, `wasClean (event: ${JSON.stringify(ev)})`);
  assert.equal(ev.code, 1000, `code (event: ${JSON.stringify(ev)})`);
});
