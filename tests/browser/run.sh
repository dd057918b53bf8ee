#!/usr/bin/env bash
# Browser interop: headless Chromium (driven by playwright-core) talks to
# `duplex serve --echo` on a free 127.0.0.1 port. Exits with node's test status.
# Every *.test.mjs runs, in one `node --test` (one TAP summary): hub.test.mjs starts
# `duplex hub` from the same build itself (it restarts it), and skips with DUPLEX_ECHO_CMD.
#
#   tests/browser/run.sh                         build duplex-cli (release) and test it
#   tests/browser/run.sh --test-reporter=tap     extra arguments go to `node --test`
#
# Environment:
#   DUPLEX_ECHO_CMD   server under test instead of duplex, e.g.
#                     '/work/target-tokio/release/examples/echo-server 127.0.0.1:{port}'
#                     ({port} is replaced by the chosen port; no cargo build then)
#   DUPLEX_NO_BUILD=1 skip `cargo build`; use the binary already in the target dir
#   CARGO_TARGET_DIR  where target/release/duplex is (default ./target)
#   DUPLEX_BROWSER_TIMEOUT  seconds for the whole node run (default 240)
# Run tests/browser/install.sh first (scripts/test does).
set -euo pipefail
trap 'exit 130' INT; trap 'exit 143' TERM   # run the EXIT trap on Ctrl-C / kill too

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$DIR/../.." && pwd)
cd "$ROOT"

say() { echo "browser: $*" >&2; }
die() { echo "tests/browser/run.sh: $*" >&2; exit 2; }

[ -f "$DIR/node_modules/playwright-core/package.json" ] || die "playwright-core missing: run tests/browser/install.sh"
[ -x "${DUPLEX_CHROMIUM:-/usr/bin/chromium}" ] || die "${DUPLEX_CHROMIUM:-/usr/bin/chromium} missing: run tests/browser/install.sh"

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
DUPLEX_BIN="$TARGET/release/duplex"

if [ -z "${DUPLEX_ECHO_CMD:-}" ]; then
    if [ "${DUPLEX_NO_BUILD:-0}" != 1 ]; then
        if ! command -v cargo >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
            PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        fi
        say "cargo build --release -p duplex-cli"
        timeout 1800 cargo build --release -p duplex-cli </dev/null >&2 || die "cargo build --release -p duplex-cli failed"
    fi
    [ -x "$DUPLEX_BIN" ] || die "$DUPLEX_BIN not found (build it, or unset DUPLEX_NO_BUILD)"
fi

log=$(mktemp "${TMPDIR:-/tmp}/duplex-browser-server.XXXXXX")
pid=""
stop_server() {   # SIGTERM, up to 5 s, then SIGKILL; only the PID we started
    [ -n "$pid" ] || return 0
    if kill -TERM "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    pid=""
}
trap 'stop_server; rm -f "$log"' EXIT

# A port free now (the kernel's choice, then released); if someone takes it before
# the server binds it, the server exits and we try another one.
free_port() {
    node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
# Is something listening on 127.0.0.1:$1 (or any address)? Read from /proc: no
# connection is made, so the server sees no half-open client.
listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

started=0
for try in 1 2 3 4 5; do
    port=$(free_port)
    if [ -n "${DUPLEX_ECHO_CMD:-}" ]; then
        cmd=${DUPLEX_ECHO_CMD//\{port\}/$port}
        say "starting server: $cmd"
        bash -c "exec $cmd" </dev/null >"$log" 2>&1 &
    else
        say "starting $DUPLEX_BIN serve --echo --listen 127.0.0.1:$port"
        "$DUPLEX_BIN" serve --echo --listen "127.0.0.1:$port" </dev/null >"$log" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 150); do   # up to 15 s
        kill -0 "$pid" 2>/dev/null || break
        listening "$port" && { started=1; break; }
        sleep 0.1
    done
    sleep 0.2   # still ours? (a lost bind race makes it exit)
    if [ "$started" = 1 ] && kill -0 "$pid" 2>/dev/null; then break; fi
    if kill -0 "$pid" 2>/dev/null; then
        say "server did not listen on 127.0.0.1:$port within 15 s (try $try)"
    else
        say "server exited before listening on 127.0.0.1:$port (try $try); log:"
        tail -n 20 "$log" >&2 || true
    fi
    started=0
    stop_server
done
[ "$started" = 1 ] || die "the echo server did not start"

rc=0
DUPLEX_ECHO_URL="ws://127.0.0.1:$port" timeout --kill-after=10 "${DUPLEX_BROWSER_TIMEOUT:-240}" \
    node --test --test-timeout=120000 "$@" "$DIR"/*.test.mjs </dev/null || rc=$?
[ "$rc" -eq 124 ] && say "node --test timed out after ${DUPLEX_BROWSER_TIMEOUT:-240} s"

if ! kill -0 "$pid" 2>/dev/null; then
    say "the echo server died during the tests; log:"
    tail -n 20 "$log" >&2 || true
    [ "$rc" -ne 0 ] || rc=1
elif [ "$rc" -ne 0 ]; then
    say "server log (last lines):"
    tail -n 20 "$log" >&2 || true
fi
exit "$rc"
