/**
 * duplex.js: the browser client of `duplex hub`. One dependency-free ES module.
 *
 * ```js
 * import { Hub } from '/duplex.js';
 *
 * const hub = new Hub('/ws', { user: 'alice' });           // or { token: jwt } / { token: async () => jwt }
 * // many hub nodes (one Redis behind them): new Hub(['wss://a.example/ws', 'wss://b.example/ws'])
 * hub.on('state', (state) => console.log(state));          // connecting | connected | disconnected | closed
 * const sub = hub.subscribe('chat', {
 *   onPublication: (data, { offset }) => console.log(offset, data),
 *   onRecovery: ({ recovered, reason }) => recovered || alert(`history lost: ${reason}`),
 * });
 * hub.connect();
 * const offset = await hub.publish('chat', { text: 'hello' });   // rejects with a DuplexError
 * ```
 *
 * What it does for the application
 * - Connects to the hub's `/ws` (a relative URL is resolved against the page: http → ws,
 *   https → wss), with `?user=` (hubs without auth) and/or `?token=` (HS256 JWT).
 * - Reconnects by itself: exponential backoff with full jitter (`minDelay` 500 ms doubling up
 *   to `maxDelay` 10 s; the delay is random in [0, that]); the backoff resets once a
 *   connection has stayed up for `stableAfter` (5 s). The browser's `online` event retries at
 *   once.
 * - Many nodes: given a list of URLs (hub nodes sharing one broker, e.g. Redis), it connects to
 *   one of them (the first, or a random one with `pick: 'random'`, to spread a crowd of
 *   clients) and, whenever a connection is lost or cannot be made, tries the next one in the
 *   list (round robin), with the same backoff. Offsets and epochs are the broker's, the same
 *   on every node, so the resubscribe with `since` below recovers exactly on another node.
 * - On reconnect it subscribes every channel again with `since: {epoch, offset}` of the last
 *   publication it delivered. Recovered publications are delivered in offset order, and no
 *   publication is ever delivered twice (dedupe by offset within an epoch).
 * - When the hub cannot recover (it restarted, so the epoch changed, or its history no longer
 *   reaches back far enough) `onRecovery({recovered: false, reason, epoch, previousEpoch})`
 *   is called, and the hub's `recovery` event fires, so the page can say what was lost. A
 *   `reset` or `gap` push (the hub's broker lost part of the stream) is handled the same way,
 *   and the subscription continues from the position the push gives.
 * - Commands (publish, presence, ping, ...) return promises. They reject with a `DuplexError`
 *   (`.code`, `.message`): the hub's error (`forbidden`, `rate_limited`, ...), or
 *   `not_connected`, `disconnected` (the connection dropped with the command in flight),
 *   `timeout`, `closed`.
 * - Keepalive: a `ping` command every `pingInterval` (20 s); no reply within `pongTimeout`
 *   (10 s) means the connection is dead (a half-open TCP connection, a sleeping laptop): it is
 *   dropped and re-established.
 *
 * API
 * - `new Hub(url = '/ws', options)`, `url` one URL or a non-empty array of them;
 *   `connect(url, options)` is `new Hub(...)` + `.connect()`.
 *   Options: `user`, `token` (string or (async) function, called before each connection),
 *   `minDelay`, `maxDelay`, `stableAfter`, `pick` ('first' | 'random': the URL tried first),
 *   `connectTimeout` (10 s), `commandTimeout` (10 s), `pingInterval` (0: off), `pongTimeout`,
 *   `WebSocket` (constructor, for non-browsers).
 * - `hub.connect()`, `hub.close()`, `hub.reconnect()`, `hub.setUser(name)`,
 *   `hub.setToken(token)` (both reconnect when connected), `hub.state`, `hub.stats`,
 *   `hub.urls` (the list), `hub.url` (the one in use or being tried).
 * - `hub.on(event, fn)` → unsubscribe function; `hub.off(event, fn)`. Events: `state`
 *   (state, info), `connecting` ({attempt, url}), `connected` ({attempt, url}),
 *   `disconnected` ({code, reason, retryIn, url, next}: `next` is the URL tried after
 *   `retryIn` ms), `recovery` (channel, info), `error` (DuplexError, context).
 * - `hub.subscribe(channel, handlers)` → `Subscription` ({channel, epoch, offset, state,
 *   unsubscribe(), presence()}). Handlers (all optional):
 *     onPublication(data, {channel, offset, epoch, recovered})   recovered: came in a reply
 *     onJoin({client, user}), onLeave({client, user})   once per client of a `presence` push
 *     onPresence(clients)     the full list, kept current from presence + join/leave (once
 *                             per push; no pushes on channels above the hub's
 *                             --join-leave-max-subscribers: call sub.presence() there)
 *     onSubscribed({epoch, offset, recovered, reason, resubscribed})  after every (re)subscribe
 *     onRecovery({recovered, reason, epoch, previousEpoch, count})   after every resubscribe
 *     onError(DuplexError)    the hub refused the subscription (forbidden: it is dropped)
 *   Options: `since: {epoch, offset}` to start from a known position (e.g. after reading
 *   `/api/history`).
 * - `hub.publish(channel, data)` → Promise<offset>; `hub.presence(channel)` →
 *   Promise<[{client, user}]>; `hub.ping()` → Promise<round trip in ms>.
 * - `hub.debug.drop()` drops the socket as a network failure would (tests, demos).
 *
 * SSE fallback (docs/hub.md, "duplex.js over SSE")
 * - Option `transport`: 'auto' (default), 'websocket' or 'sse'. With 'auto', after `sseAfter`
 *   (2) WebSocket attempts in a row that never opened, the client receives over an
 *   `EventSource` on the hub's `/sse` (option `sseUrl`; default: the hub URL with /ws → /sse)
 *   with every subscribed channel, resuming from the positions it holds (`?lastEventId=`); the
 *   browser then reconnects the stream by itself with `Last-Event-ID`. `hub.transport` is
 *   'websocket' or 'sse'; `hub.reconnect()` tries the WebSocket again.
 * - Over SSE: publications (recovered and live, deduplicated by offset), join/leave,
 *   onSubscribed/onRecovery work as over the WebSocket. `publish` and `presence` (and so
 *   `onPresence`) use the HTTP API only with the option `api: { key }` (string or (async)
 *   function; sent as `Authorization: Bearer`, the hub's `--api-key`; `url`, default
 *   '/api/' on the hub's origin); without it they reject with `not_supported`, as `ping` does.
 */

const DEFAULTS = {
  user: undefined,
  token: undefined,
  minDelay: 500,
  maxDelay: 10_000,
  stableAfter: 5_000,
  connectTimeout: 10_000,
  commandTimeout: 10_000,
  pingInterval: 20_000,
  pongTimeout: 10_000,
  pick: 'first',
  WebSocket: undefined,
  transport: 'auto',
  sseAfter: 2,
  sseUrl: undefined,
  api: undefined,
  EventSource: undefined,
};

/** Codes after which a subscription is not retried. */
const FATAL_SUBSCRIBE = new Set(['forbidden', 'bad_request', 'limit_exceeded']);

/** An error from the hub (its `code` and `message`) or from the client itself. */
export class DuplexError extends Error {
  constructor(code, message, extra) {
    super(message || code);
    this.name = 'DuplexError';
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

/** One channel subscription; made by `hub.subscribe`. */
export class Subscription {
  constructor(hub, channel, handlers) {
    this.hub = hub;
    this.channel = channel;
    this.handlers = handlers;
    /** Position of the last publication delivered (or of the stream when subscribed). */
    this.epoch = handlers.since?.epoch ?? null;
    this.offset = handlers.since?.offset ?? 0;
    /** pending | subscribed | unsubscribed | failed */
    this.state = 'pending';
    this._buffer = null; // pushes that arrive while a subscribe is in flight
    this._presence = null; // Map client → {client, user}, when onPresence is given
  }

  /** Leaves the channel; resolves when the hub confirmed (or at once when disconnected). */
  unsubscribe() {
    return this.hub._unsubscribe(this);
  }

  /** Who is subscribed to this channel right now. */
  presence() {
    return this.hub.presence(this.channel);
  }

  _call(name, ...args) {
    const fn = this.handlers[name];
    if (typeof fn !== 'function') return;
    try {
      fn(...args);
    } catch (e) {
      // An application bug must not break the connection's bookkeeping.
      setTimeout(() => { throw e; });
    }
  }
}

export class Hub {
  constructor(url = '/ws', options = {}) {
    const urls = Array.isArray(url) ? [...url] : [url];
    if (urls.length === 0 || urls.some((u) => typeof u !== 'string' && !(u instanceof URL))) {
      throw new DuplexError('bad_url', 'expected a hub URL or a non-empty array of them');
    }
    this.options = { ...DEFAULTS, ...options };
    /** Every node's URL; `url` is the one in use (or being tried). */
    this.urls = urls.map(String);
    this._urlIndex = this.options.pick === 'random' ? Math.floor(Math.random() * this.urls.length) : 0;
    this.url = this.urls[this._urlIndex];
    this.state = 'idle';
    this.stats = {
      connects: 0, // successful opens
      failovers: 0, // moves to the next URL of the list (lost or failed connections)
      disconnects: 0,
      received: 0, // publications delivered to the application
      recoveredPublications: 0, // of which in a subscribe reply
      duplicatesDropped: 0,
      gaps: 0, // live publication after a skipped offset (should stay 0)
      recoveries: 0, // resubscribes with recovered: true
      losses: 0, // resubscribes with recovered: false
    };
    this._ws = null;
    this._es = null; // the EventSource, on the SSE fallback
    /** 'websocket' or 'sse': what the client receives over. */
    this.transport = this.options.transport === 'sse' ? 'sse' : 'websocket';
    this._wsFailures = 0; // WebSocket attempts in a row that never opened
    this._subs = new Map();
    this._pending = new Map();
    this._nextId = 1;
    this._listeners = new Map();
    this._attempts = 0;
    this._timers = { retry: null, stable: null, ping: null, connect: null };
    this._wanted = false; // connect() called and not close()d
    this._generation = 0; // bumps on every new socket; stale async work checks it
    this.debug = {
      /** Drops the socket as a network failure would: no close handshake is awaited. */
      drop: () => this._drop('debug drop'),
      socket: () => this._ws,
      eventSource: () => this._es,
    };
    if (typeof addEventListener === 'function') {
      addEventListener('online', () => {
        if (this._wanted && this.state === 'disconnected') {
          this._attempts = 0;
          this._clearTimer('retry');
          this._open();
        }
      });
    }
  }

  // ---- events --------------------------------------------------------------------------

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try {
        fn(...args);
      } catch (e) {
        setTimeout(() => { throw e; });
      }
    }
  }

  _setState(state, info = {}) {
    if (this.state === state && state !== 'disconnected') return;
    this.state = state;
    this._emit('state', state, info);
    this._emit(state, info);
  }

  // ---- connection ----------------------------------------------------------------------

  /** Starts connecting (and reconnecting whenever the connection drops). */
  connect() {
    this._wanted = true;
    if (this.state === 'idle' || this.state === 'closed') this._open();
    return this;
  }

  /** Closes for good: no reconnects; in-flight commands reject with `closed`. */
  close() {
    this._wanted = false;
    this._clearTimer('retry');
    this._teardown(new DuplexError('closed', 'the client was closed'), 1000, 'bye');
    this._setState('closed');
  }

  /** Drops the connection (if any) and connects again at once. */
  reconnect() {
    this._wanted = true;
    this._wsFailures = 0;
    this._clearTimer('retry');
    this._teardown(new DuplexError('disconnected', 'reconnecting'), 1000, 'reconnect');
    this._open();
  }

  /** The user name sent as `?user=` (hubs without auth); reconnects when connected. */
  setUser(user) {
    this.options.user = user;
    if (this._wanted) this.reconnect();
  }

  /** The token sent as `?token=`; reconnects when connected. */
  setToken(token) {
    this.options.token = token;
    if (this._wanted) this.reconnect();
  }

  async _url() {
    const base = typeof location !== 'undefined' ? location.href : undefined;
    const url = new URL(this.url, base);
    if (url.protocol === 'http:') url.protocol = 'ws:';
    if (url.protocol === 'https:') url.protocol = 'wss:';
    const { user } = this.options;
    let { token } = this.options;
    if (typeof token === 'function') token = await token();
    if (user) url.searchParams.set('user', user);
    if (token) url.searchParams.set('token', token);
    return url.href;
  }

  async _open() {
    const generation = ++this._generation;
    this._setState('connecting', { attempt: this._attempts, url: this.url });
    let url;
    try {
      url = await this._url();
    } catch (e) {
      if (generation !== this._generation) return;
      this._emit('error', new DuplexError('token', `cannot get a token: ${e?.message || e}`), { phase: 'connect' });
      this._lost({ code: 1006, reason: 'no token' });
      return;
    }
    if (generation !== this._generation || !this._wanted) return;
    const { transport, sseAfter } = this.options;
    const ES = this.options.EventSource || globalThis.EventSource;
    if (transport === 'sse' || (transport === 'auto' && ES && this._wsFailures >= sseAfter)) {
      this._openSse(generation);
      return;
    }
    const WS = this.options.WebSocket || globalThis.WebSocket;
    let ws;
    try {
      ws = new WS(url);
    } catch (e) {
      this._emit('error', new DuplexError('connect', String(e?.message || e)), { phase: 'connect' });
      this._lost({ code: 1006, reason: 'bad url' });
      return;
    }
    this._ws = ws;
    let opened = false;
    this._timers.connect = setTimeout(() => {
      this._wsFailures++;
      this._drop('connect timeout');
    }, this.options.connectTimeout);
    ws.onopen = () => {
      opened = true;
      this._onOpen(ws);
    };
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onerror = () => {}; // a close event follows, with the details there are
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      if (!opened) this._wsFailures++;
      this._lost({ code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
    };
  }

  _onOpen(ws) {
    if (this._ws !== ws) return;
    this._clearTimer('connect');
    this._wsFailures = 0;
    this.transport = 'websocket';
    this.stats.connects++;
    const attempt = this._attempts;
    this._timers.stable = setTimeout(() => { this._attempts = 0; }, this.options.stableAfter);
    this._setState('connected', { attempt, url: this.url });
    if (this.options.pingInterval > 0) this._schedulePing();
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
  }

  _schedulePing() {
    this._clearTimer('ping');
    this._timers.ping = setTimeout(async () => {
      const ws = this._ws;
      try {
        await this._command({ op: 'ping' }, this.options.pongTimeout);
      } catch (e) {
        if (e.code === 'timeout' && this._ws === ws) {
          this._drop('keepalive: no reply to ping');
          return;
        }
      }
      if (this._ws === ws && this.state === 'connected') this._schedulePing();
    }, this.options.pingInterval);
  }

  /** Abandons the socket without waiting for a close handshake; treated as a lost connection. */
  _drop(reason) {
    if (this._es) {
      this._closeSse();
      this._lost({ code: 1006, reason, wasClean: false }, true);
      return;
    }
    if (!this._ws) return;
    const ws = this._ws;
    this._detach(ws);
    try {
      ws.close(4000, reason.slice(0, 100));
    } catch {
      /* already closing */
    }
    this._lost({ code: 1006, reason, wasClean: false }, true);
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (this._ws === ws) this._ws = null;
  }

  /** Ends the current socket (if any) and fails what was in flight; no reconnect scheduled. */
  _teardown(error, code, reason) {
    this._generation++;
    for (const name of ['stable', 'ping', 'connect']) this._clearTimer(name);
    const ws = this._ws;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(code, reason);
      } catch {
        /* already closed */
      }
    }
    this._closeSse();
    if (this.state === 'connected') this.stats.disconnects++;
    this._failPending(error);
    for (const sub of this._subs.values()) {
      sub._buffer = null;
      sub._presence = null;
      if (sub.state === 'subscribed') sub.state = 'pending';
    }
  }

  _lost(info, alreadyDetached = false) {
    if (!alreadyDetached && this._ws) this._detach(this._ws);
    this._teardown(new DuplexError('disconnected', `connection lost (${info.code}${info.reason ? ` ${info.reason}` : ''})`));
    if (!this._wanted) {
      this._setState('closed');
      return;
    }
    const ceiling = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this._attempts);
    const delay = Math.floor(Math.random() * ceiling); // full jitter
    this._attempts = Math.min(this._attempts + 1, 30);
    // The node may be gone for good (crashed, drained for a deploy): the next try goes to the
    // next node of the list. With one URL this is that URL again.
    const url = this.url;
    this._nextUrl();
    this._setState('disconnected', { ...info, retryIn: delay, url, next: this.url });
    this._clearTimer('retry');
    this._timers.retry = setTimeout(() => {
      this._timers.retry = null;
      if (this._wanted) this._open();
    }, delay);
  }

  /** Moves to the next URL of the list (round robin). */
  _nextUrl() {
    if (this.urls.length < 2) return;
    this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    this.url = this.urls[this._urlIndex];
    this.stats.failovers++;
  }

  _clearTimer(name) {
    if (this._timers[name]) {
      clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  // ---- commands ------------------------------------------------------------------------

  _command(body, timeout = this.options.commandTimeout) {
    const ws = this._ws;
    if (!ws || this.state !== 'connected') {
      return Promise.reject(new DuplexError('not_connected', 'not connected to the hub'));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new DuplexError('timeout', `no reply to ${body.op} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer, op: body.op });
      try {
        ws.send(JSON.stringify({ id, ...body }));
      } catch (e) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(new DuplexError('disconnected', String(e?.message || e)));
      }
    });
  }

  _failPending(error) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(error);
    }
  }

  /** Publishes `data` (any JSON) to `channel`; resolves with the publication's offset. */
  async publish(channel, data) {
    if (this.transport === 'sse') {
      const reply = await this._api('publish', { method: 'POST', body: JSON.stringify({ channel, data }) });
      return reply.offset;
    }
    const reply = await this._command({ op: 'publish', channel, data });
    return reply.offset;
  }

  /** The clients subscribed to `channel`: [{client, user}]. */
  async presence(channel) {
    if (this.transport === 'sse') {
      const reply = await this._api(`presence?channel=${encodeURIComponent(channel)}`, { method: 'GET' });
      return reply.clients || [];
    }
    const reply = await this._command({ op: 'presence', channel });
    return reply.clients || [];
  }

  /** Round trip of a `ping` command, in milliseconds. */
  async ping() {
    if (this.transport === 'sse') throw new DuplexError('not_supported', 'ping needs the WebSocket; this is the SSE fallback');
    const start = performance.now();
    await this._command({ op: 'ping' });
    return performance.now() - start;
  }

  // ---- subscriptions -------------------------------------------------------------------

  /** Subscribes to `channel` (now, and again after every reconnect). See the header. */
  subscribe(channel, handlers = {}) {
    if (this._subs.has(channel)) throw new DuplexError('already_subscribed', `already subscribed to ${JSON.stringify(channel)}`);
    const sub = new Subscription(this, channel, handlers);
    this._subs.set(channel, sub);
    if (this.transport === 'sse' && this._wanted) this._sseChannelsChanged();
    else if (this.state === 'connected') this._sendSubscribe(sub);
    return sub;
  }

  /** The subscription to `channel`, if any. */
  subscription(channel) {
    return this._subs.get(channel);
  }

  async _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    sub.state = 'unsubscribed';
    sub._buffer = null;
    if (this.transport === 'sse') {
      if (this._wanted) this._sseChannelsChanged();
      return;
    }
    if (this.state !== 'connected') return;
    try {
      // Commands run in order on the hub, so this follows a subscribe still in flight.
      await this._command({ op: 'unsubscribe', channel: sub.channel });
    } catch (e) {
      if (e.code !== 'not_subscribed' && e.code !== 'disconnected' && e.code !== 'not_connected') throw e;
    }
  }

  async _sendSubscribe(sub) {
    const resubscribed = sub._subscribedOnce === true;
    const previousEpoch = sub.epoch;
    const since = resubscribed ? { epoch: sub.epoch, offset: sub.offset } : undefined;
    sub.state = 'pending';
    sub._buffer = [];
    const generation = this._generation;
    let reply;
    try {
      reply = await this._command({ op: 'subscribe', channel: sub.channel, ...(since ? { since } : {}) });
    } catch (e) {
      if (this._subs.get(sub.channel) !== sub || generation !== this._generation) return;
      sub._buffer = null;
      if (e.code === 'disconnected' || e.code === 'not_connected' || e.code === 'closed') return;
      if (e.code === 'already_subscribed') {
        sub.state = 'subscribed';
        return;
      }
      sub._call('onError', e);
      this._emit('error', e, { channel: sub.channel, op: 'subscribe' });
      if (FATAL_SUBSCRIBE.has(e.code)) {
        this._subs.delete(sub.channel);
        sub.state = 'failed';
      } else {
        // internal, timeout: try again on this connection a little later
        setTimeout(() => {
          if (this._subs.get(sub.channel) === sub && generation === this._generation && sub.state === 'pending') {
            this._sendSubscribe(sub);
          }
        }, 1000 + Math.random() * 1000);
      }
      return;
    }
    if (this._subs.get(sub.channel) !== sub || generation !== this._generation) return;

    const buffered = sub._buffer || [];
    sub._buffer = null;
    sub.state = 'subscribed';
    sub._subscribedOnce = true;
    const info = { channel: sub.channel, epoch: reply.epoch, offset: reply.offset, resubscribed, recovered: reply.recovered, reason: reply.reason };
    if (reply.recovered === true) {
      const pubs = (reply.publications || []).slice().sort((a, b) => a.offset - b.offset);
      let count = 0;
      for (const p of pubs) if (this._deliver(sub, p, true)) count++;
      if (reply.offset > sub.offset) sub.offset = reply.offset;
      sub.epoch = reply.epoch;
      this.stats.recoveries++;
      const recovery = { recovered: true, epoch: reply.epoch, previousEpoch, count };
      sub._call('onSubscribed', info);
      sub._call('onRecovery', recovery);
      this._emit('recovery', sub.channel, recovery);
    } else {
      // A fresh subscription, or history lost: start from where the stream is now.
      sub.epoch = reply.epoch;
      sub.offset = reply.offset;
      sub._call('onSubscribed', info);
      if (reply.recovered === false) {
        this.stats.losses++;
        const recovery = { recovered: false, reason: reply.reason || 'history lost', epoch: reply.epoch, previousEpoch, count: 0, epochChanged: previousEpoch !== reply.epoch };
        sub._call('onRecovery', recovery);
        this._emit('recovery', sub.channel, recovery);
      }
    }
    for (const push of buffered) {
      if (push.op === 'pub') this._deliver(sub, push, false);
      else this._streamLost(sub, push);
    }
    if (sub.handlers.onPresence) this._refreshPresence(sub, generation);
  }

  async _refreshPresence(sub, generation) {
    // Until the reply, join/leave pushes are not applied: the reply reflects them already.
    sub._presence = null;
    let clients;
    try {
      clients = await this.presence(sub.channel);
    } catch (e) {
      if (e.code !== 'disconnected' && e.code !== 'not_connected') this._emit('error', e, { channel: sub.channel, op: 'presence' });
      return;
    }
    if (this._subs.get(sub.channel) !== sub || generation !== this._generation) return;
    // Pushes after the reply apply to it: the hub writes a reply before the pushes queued
    // behind it, and a push for an event the reply already reflects changes nothing.
    sub._presence = new Map(clients.map((c) => [c.client, c]));
    sub._call('onPresence', [...sub._presence.values()]);
  }

  /** Delivers one publication unless it was delivered already; true if delivered. */
  _deliver(sub, p, recovered) {
    if (p.offset <= sub.offset) {
      this.stats.duplicatesDropped++;
      return false;
    }
    if (!recovered && sub.offset > 0 && p.offset > sub.offset + 1) this.stats.gaps++;
    sub.offset = p.offset;
    this.stats.received++;
    if (recovered) this.stats.recoveredPublications++;
    sub._call('onPublication', p.data, { channel: sub.channel, offset: p.offset, epoch: sub.epoch, recovered });
    return true;
  }

  /**
   * A `reset` (the stream restarted in a new epoch) or `gap` (publications first..last lost)
   * push: a failed recovery, then on from the position it gives.
   */
  _streamLost(sub, msg) {
    const previousEpoch = sub.epoch;
    let reason;
    if (msg.op === 'reset') {
      sub.epoch = msg.epoch;
      sub.offset = msg.offset;
      reason = `the stream was reset (epoch ${msg.epoch}, continuing after offset ${msg.offset})`;
    } else {
      if (msg.epoch) sub.epoch = msg.epoch;
      if (msg.last > sub.offset) sub.offset = msg.last;
      reason = `publications ${msg.first}..${msg.last} were lost`;
    }
    this.stats.losses++;
    const recovery = { recovered: false, reason, epoch: sub.epoch, previousEpoch, count: 0, epochChanged: previousEpoch !== sub.epoch };
    sub._call('onRecovery', recovery);
    this._emit('recovery', sub.channel, recovery);
  }

  // ---- the SSE fallback ------------------------------------------------------------------

  /** The `/sse` URL: every subscribed channel, auth, and the positions held (lastEventId). */
  async _sseUrl() {
    const base = typeof location !== 'undefined' ? location.href : undefined;
    const url = new URL(this.options.sseUrl || this.url, base);
    if (url.protocol === 'ws:') url.protocol = 'http:';
    if (url.protocol === 'wss:') url.protocol = 'https:';
    if (!this.options.sseUrl) url.pathname = /\/ws$/.test(url.pathname) ? url.pathname.replace(/\/ws$/, '/sse') : '/sse';
    url.search = '';
    const { user } = this.options;
    let { token } = this.options;
    if (typeof token === 'function') token = await token();
    if (user) url.searchParams.set('user', user);
    if (token) url.searchParams.set('token', token);
    const entries = [];
    for (const sub of this._subs.values()) {
      url.searchParams.append('channel', sub.channel);
      // The hub's id format (docs/hub.md): epoch:channel:offset, channel percent-encoded.
      if (sub._subscribedOnce && sub.epoch) entries.push(`${encodeURIComponent(sub.epoch)}:${encodeURIComponent(sub.channel)}:${sub.offset}`);
    }
    if (entries.length) url.searchParams.set('lastEventId', entries.join(','));
    return url.href;
  }

  async _openSse(generation) {
    this.transport = 'sse';
    if (this._subs.size === 0) {
      // Nothing to receive: connected, without a stream until something is subscribed.
      this._setState('connected', { attempt: this._attempts, url: this.url, transport: 'sse' });
      return;
    }
    let url;
    try {
      url = await this._sseUrl();
    } catch (e) {
      if (generation !== this._generation) return;
      this._emit('error', new DuplexError('token', `cannot get a token: ${e?.message || e}`), { phase: 'connect' });
      this._lost({ code: 1006, reason: 'no token' });
      return;
    }
    if (generation !== this._generation || !this._wanted) return;
    const ES = this.options.EventSource || globalThis.EventSource;
    const es = new ES(url);
    this._es = es;
    this._timers.connect = setTimeout(() => this._drop('connect timeout'), this.options.connectTimeout);
    es.onopen = () => {
      if (this._es !== es) return;
      this._clearTimer('connect');
      this.stats.connects++;
      this._clearTimer('stable');
      this._timers.stable = setTimeout(() => { this._attempts = 0; }, this.options.stableAfter);
      this._setState('connected', { attempt: this._attempts, url: this.url, transport: 'sse' });
    };
    es.onerror = () => {
      if (this._es !== es) return;
      if (es.readyState === 2) {
        // Refused (401 after a token expired, 503...) or not an event stream: the browser
        // gives up; open a new one (fresh token, positions held) after the usual backoff.
        this._closeSse();
        this._lost({ code: 1006, reason: 'event stream failed' }, true);
        return;
      }
      // The browser reconnects by itself, sending Last-Event-ID.
      if (this.state === 'connected') {
        this.stats.disconnects++;
        for (const sub of this._subs.values()) if (sub.state === 'subscribed') sub.state = 'pending';
        this._setState('disconnected', { code: 1006, reason: this._sseClose?.reason || 'event stream lost', retryIn: null, url: this.url, next: this.url });
      }
    };
    const on = (name, fn) => es.addEventListener(name, (ev) => {
      if (this._es !== es) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        this._emit('error', new DuplexError('bad_message', 'the hub sent an event that is not JSON'), { text: ev.data });
        return;
      }
      fn(msg);
    });
    on('subscribed', (msg) => this._onSseSubscribed(msg, generation));
    on('pub', (msg) => {
      const sub = this._subs.get(msg.channel);
      if (!sub || sub.state !== 'subscribed') return;
      const recovered = sub._recovering > 0;
      if (recovered) sub._recovering--;
      this._deliver(sub, msg, recovered);
    });
    for (const name of ['presence', 'reset', 'gap']) on(name, (msg) => this._onMessage(JSON.stringify(msg)));
    on('close', (msg) => { this._sseClose = msg; });
  }

  /** A `subscribed` event: the stream's answer for one channel (the WebSocket reply's fields). */
  _onSseSubscribed(msg, generation) {
    const sub = this._subs.get(msg.channel);
    if (!sub) return;
    const resubscribed = sub._subscribedOnce === true;
    const previousEpoch = sub.epoch;
    sub.state = 'subscribed';
    sub._subscribedOnce = true;
    sub._recovering = 0;
    const info = { channel: sub.channel, epoch: msg.epoch, offset: msg.offset, resubscribed, recovered: msg.recovered, reason: msg.reason };
    sub.epoch = msg.epoch;
    if (msg.recovered === true) {
      // The recovered publications follow as `pub` events; the position moves with them.
      sub._recovering = msg.count || 0;
      this.stats.recoveries++;
      const recovery = { recovered: true, epoch: msg.epoch, previousEpoch, count: msg.count || 0 };
      sub._call('onSubscribed', info);
      sub._call('onRecovery', recovery);
      this._emit('recovery', sub.channel, recovery);
    } else {
      sub.offset = msg.offset;
      sub._call('onSubscribed', info);
      if (msg.recovered === false) {
        this.stats.losses++;
        const recovery = { recovered: false, reason: msg.reason || 'history lost', epoch: msg.epoch, previousEpoch, count: 0, epochChanged: previousEpoch !== msg.epoch };
        sub._call('onRecovery', recovery);
        this._emit('recovery', sub.channel, recovery);
      }
    }
    if (sub.handlers.onPresence && this.options.api) this._refreshPresence(sub, generation);
  }

  /** The channel list changed: a new stream with the new list, resuming from the positions held. */
  _sseChannelsChanged() {
    if (this._sseReopen) return;
    this._sseReopen = true;
    queueMicrotask(() => {
      this._sseReopen = false;
      if (!this._wanted || this.transport !== 'sse') return;
      this._clearTimer('retry');
      this._teardown(new DuplexError('disconnected', 'channels changed'));
      this._openSse(++this._generation);
    });
  }

  _closeSse() {
    const es = this._es;
    if (!es) return;
    this._es = null;
    es.onopen = es.onerror = null;
    es.close();
  }

  /** A request to the hub's HTTP API (the `api` option), for publish and presence over SSE. */
  async _api(path, init) {
    const { api } = this.options;
    if (!api) throw new DuplexError('not_supported', 'over the SSE fallback, publish and presence need the api option (the HTTP API)');
    let key = typeof api.key === 'function' ? await api.key() : api.key;
    const base = typeof location !== 'undefined' ? location.href : undefined;
    const hubUrl = new URL(this.url, base);
    if (hubUrl.protocol === 'ws:') hubUrl.protocol = 'http:';
    if (hubUrl.protocol === 'wss:') hubUrl.protocol = 'https:';
    const url = new URL(path, new URL(api.url || '/api/', hubUrl));
    const headers = { 'Content-Type': 'application/json' };
    if (key) headers.Authorization = `Bearer ${key}`;
    let res;
    try {
      res = await fetch(url, { ...init, headers, signal: AbortSignal.timeout(this.options.commandTimeout) });
    } catch (e) {
      throw new DuplexError(e?.name === 'TimeoutError' ? 'timeout' : 'disconnected', String(e?.message || e));
    }
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const code = { 400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 429: 'rate_limited', 500: 'internal', 503: 'broker_unavailable' }[res.status] || `http_${res.status}`;
      throw new DuplexError(code, body.error || `HTTP ${res.status}`);
    }
    return body;
  }

  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this._emit('error', new DuplexError('bad_message', 'the hub sent something that is not JSON'), { text });
      return;
    }
    if (msg.id !== undefined && msg.id !== null && msg.op === undefined) {
      const p = this._pending.get(msg.id);
      if (!p) return; // timed out already
      this._pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg);
      else p.reject(new DuplexError(msg.error?.code || 'error', msg.error?.message, { op: p.op }));
      return;
    }
    if (msg.id === null && msg.ok === false) {
      // An error the hub could not tie to a command (unparsable input).
      this._emit('error', new DuplexError(msg.error?.code || 'error', msg.error?.message), { reply: msg });
      return;
    }
    const sub = msg.channel !== undefined ? this._subs.get(msg.channel) : undefined;
    if (!sub) return;
    switch (msg.op) {
      case 'pub':
        if (sub._buffer) sub._buffer.push(msg);
        else if (sub.state === 'subscribed') this._deliver(sub, msg, false);
        break;
      case 'presence': {
        // One window's joins and leaves (docs/hub.md, "Presence events"): the two lists never
        // name the same client, so their order does not matter. Callbacks fire per client;
        // onPresence once per push.
        for (const c of msg.leave || []) {
          const client = { client: c.client, user: c.user };
          if (sub._presence) sub._presence.delete(c.client);
          sub._call('onLeave', client);
        }
        for (const c of msg.join || []) {
          const client = { client: c.client, user: c.user };
          if (sub._presence) sub._presence.set(c.client, client);
          sub._call('onJoin', client);
        }
        if (sub._presence) sub._call('onPresence', [...sub._presence.values()]);
        break;
      }
      case 'reset':
      case 'gap':
        if (sub._buffer) sub._buffer.push(msg);
        else if (sub.state === 'subscribed') this._streamLost(sub, msg);
        break;
      default:
        break;
    }
  }
}

/** `new Hub(url, options).connect()`. */
export function connect(url, options) {
  return new Hub(url, options).connect();
}

export { Hub as DuplexClient };
export default Hub;
