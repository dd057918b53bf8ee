//! The Lua scripts: each broker operation on a channel is one script, so it costs one round
//! trip (EVALSHA) and runs atomically next to the data. A script is loaded once per server
//! (SCRIPT LOAD, by [`super::conn::Conn::eval`]) and reloaded when the server answers
//! NOSCRIPT (it restarted, or SCRIPT FLUSH).
//!
//! Key layout: [`super::keys`]; pub/sub frames: [`super::frame`]. Times are the Redis server's
//! (`TIME`), so every node expires presence and history by the same clock.
//!
//! Offsets are Lua numbers (doubles): exact up to 2^53, far beyond any channel's life.

use std::sync::OnceLock;

/// A Lua script and its SHA1 (learned from the first SCRIPT LOAD: the same on every server).
#[derive(Debug)]
pub(crate) struct Script {
    /// For logs and errors.
    pub(crate) name: &'static str,
    /// The Lua source.
    pub(crate) source: &'static str,
    /// Its SHA1 in hex, once a server told it.
    pub(crate) sha: OnceLock<String>,
}

impl Script {
    const fn new(name: &'static str, source: &'static str) -> Script {
        Script {
            name,
            source,
            sha: OnceLock::new(),
        }
    }
}

/// Shared by the scripts: the server's time in milliseconds.
macro_rules! lua_now_ms {
    () => {
        "local function now_ms()\n\
           local t = redis.call('TIME')\n\
           return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n\
         end\n"
    };
}

/// Publish. KEYS: stream, meta. ARGV: pub/sub channel, data, history size, history TTL in ms
/// (0: none), a fresh random epoch (used if the meta is missing). Returns `{offset, epoch}`.
///
/// The epoch lives in the meta hash beside the offset counter and is created with it: if
/// Redis lost the meta (restart without persistence, eviction, expiry), the channel starts a
/// new epoch at offset 1 and the old stream, whose ids would clash, is deleted. The entry id
/// is `<offset>-0`; `MAXLEN ~` trims cheaply (whole nodes), and readers clip to the exact
/// window ([`HISTORY`]). Then the frame goes out on pub/sub: after the entry is stored, so a
/// node that hears of offset N can always read N from the stream.
pub(crate) static PUBLISH: Script = Script::new(
    "publish",
    concat!(
        lua_now_ms!(),
        r#"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('DEL', KEYS[1])
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
local id = string.format('%d', offset)
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', size, id .. '-0',
    'd', ARGV[2], 't', string.format('%d', now_ms()))
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PUBLISH', ARGV[1], 'p' .. epoch .. ':' .. id .. ':' .. ARGV[2])
return {offset, epoch}
"#
    ),
);

/// History. KEYS: stream, meta. ARGV: since (`-`: the newest `limit`), limit, history size,
/// history TTL in ms (0: none), a fresh random epoch. Returns
/// `{epoch, top, earliest, offset1, data1, offset2, data2, ...}`.
///
/// A channel never published to gets its meta (epoch, offset 0) here, so that the epoch a
/// subscriber is told stays the one later publications use. `earliest` is the oldest offset
/// inside the window (the last `size` offsets, entries younger than the TTL) that the stream
/// still holds, or `top + 1`.
pub(crate) static HISTORY: Script = Script::new(
    "history",
    concat!(
        lua_now_ms!(),
        r#"
local size = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('DEL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
local top = tonumber(redis.call('HGET', KEYS[2], 'o') or '0')
local earliest = top + 1
if size > 0 and top > 0 then
  local from = top - size + 1
  if from < 1 then from = 1 end
  local oldest_kept = nil
  if ttl > 0 then oldest_kept = now_ms() - ttl end
  while earliest > top do
    local batch = redis.call('XRANGE', KEYS[1], string.format('%d', from), '+', 'COUNT', 64)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      local at = tonumber(entry[2][4])
      if oldest_kept == nil or at > oldest_kept then
        earliest = tonumber(string.match(entry[1], '^%d+'))
        break
      end
    end
    from = tonumber(string.match(batch[#batch][1], '^%d+')) + 1
  end
end
local out = {epoch, top, earliest}
local limit = tonumber(ARGV[2])
if limit > 0 and earliest <= top then
  local entries = {}
  if ARGV[1] == '-' then
    local newest = redis.call('XREVRANGE', KEYS[1], '+', string.format('%d', earliest),
      'COUNT', limit)
    for i = #newest, 1, -1 do entries[#entries + 1] = newest[i] end
  else
    local start = tonumber(ARGV[1]) + 1
    if start < earliest then start = earliest end
    if start <= top then
      entries = redis.call('XRANGE', KEYS[1], string.format('%d', start), '+', 'COUNT', limit)
    end
  end
  for _, entry in ipairs(entries) do
    out[#out + 1] = tonumber(string.match(entry[1], '^%d+'))
    out[#out + 1] = entry[2][2]
  end
end
return out
"#
    ),
);

/// Shared by the presence scripts: drops every client of the channel whose expiry passed and
/// announces each as a leave. KEYS: presence hash, expiry set; `channel`: the pub/sub channel.
macro_rules! lua_prune {
    () => {
        r#"
local function prune(channel, now)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, client in ipairs(expired) do
    local user = redis.call('HGET', KEYS[1], client)
    redis.call('HDEL', KEYS[1], client)
    redis.call('ZREM', KEYS[2], client)
    if user then
      redis.call('PUBLISH', channel, 'l' .. string.len(client) .. ':' .. client .. user)
    end
  end
end
"#
    };
}

/// Join. KEYS: presence hash, expiry set. ARGV: pub/sub channel, presence TTL in ms, client,
/// user, the join frame. The client expires after the TTL unless its node refreshes it
/// ([`REFRESH`]); the keys themselves expire with their last client.
pub(crate) static JOIN: Script = Script::new(
    "join",
    concat!(
        lua_now_ms!(),
        r#"
local ttl = tonumber(ARGV[2])
local now = now_ms()
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PUBLISH', ARGV[1], ARGV[5])
return 1
"#
    ),
);

/// Leave. KEYS: presence hash, expiry set. ARGV: pub/sub channel, client, the leave frame.
/// Announces the leave only if the client was present. Returns 1 if it was.
pub(crate) static LEAVE: Script = Script::new(
    "leave",
    r#"
if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[1], ARGV[3])
return 1
"#,
);

/// Refresh a node's clients of one channel. KEYS: presence hash, expiry set. ARGV: pub/sub
/// channel, presence TTL in ms, then client id and user of each of the node's clients. Pushes
/// the expiry of those still present (`ZADD XX`: a client that left meanwhile is not brought
/// back), then drops and announces the expired ones (a dead node's clients). If the channel's
/// presence is gone altogether (Redis restarted or evicted it), the node's clients are put
/// back, silently: nobody was told they left. Returns how many were dropped.
pub(crate) static REFRESH: Script = Script::new(
    "refresh",
    concat!(
        lua_now_ms!(),
        lua_prune!(),
        r#"
local ttl = tonumber(ARGV[2])
local now = now_ms()
local restore = redis.call('EXISTS', KEYS[1]) == 0
for i = 3, #ARGV - 1, 2 do
  if restore then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
  else
    redis.call('ZADD', KEYS[2], 'XX', now + ttl, ARGV[i])
  end
end
local before = redis.call('ZCARD', KEYS[2])
prune(ARGV[1], now)
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return before - redis.call('ZCARD', KEYS[2])
"#
    ),
);

/// Presence. KEYS: presence hash, expiry set. ARGV: pub/sub channel. Drops (and announces)
/// the expired clients first, then returns `{client1, user1, client2, user2, ...}`.
pub(crate) static PRESENCE: Script = Script::new(
    "presence",
    concat!(
        lua_now_ms!(),
        lua_prune!(),
        r#"
prune(ARGV[1], now_ms())
return redis.call('HGETALL', KEYS[1])
"#
    ),
);

/// Every script, for loading them up front.
pub(crate) static ALL: [&Script; 6] = [&PUBLISH, &HISTORY, &JOIN, &LEAVE, &REFRESH, &PRESENCE];
