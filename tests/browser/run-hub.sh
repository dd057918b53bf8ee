#!/usr/bin/env bash
# The hub's browser tests alone: headless Chromium on the demo page (web/index.html) and the
# client (web/duplex.js) served by `duplex hub`, RFC 8441 under TLS (h2.test.mjs) and the /sse
# fallback (sse.test.mjs). Each file starts its hub itself on a free 127.0.0.1 port (one test
# restarts it on the same port) and stops it by PID.
# tests/browser/run.sh runs these too, with the echo tests; this is the quick loop for web/.
#
#   tests/browser/run-hub.sh                       build duplex-cli (release: web/ is embedded) and test
#   tests/browser/run-hub.sh --test-reporter=tap   extra arguments go to `node --test`
#
# Environment: DUPLEX_NO_BUILD=1 (use the binary as it is), CARGO_TARGET_DIR,
# DUPLEX_HUB_BIN (the binary to test), DUPLEX_BROWSER_TIMEOUT (seconds, default 120).
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$DIR/../.." && pwd)
cd "$ROOT"

die() { echo "tests/browser/run-hub.sh: $*" >&2; exit 2; }
[ -f "$DIR/node_modules/playwright-core/package.json" ] || die "playwright-core missing: run tests/browser/install.sh"
[ -x "${DUPLEX_CHROMIUM:-/usr/bin/chromium}" ] || die "${DUPLEX_CHROMIUM:-/usr/bin/chromium} missing: run tests/browser/install.sh"

if [ -z "${DUPLEX_HUB_BIN:-}" ] && [ "${DUPLEX_NO_BUILD:-0}" != 1 ]; then
    if ! command -v cargo >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    fi
    echo "browser: cargo build --release -p duplex-cli" >&2
    timeout 1800 cargo build --release -p duplex-cli </dev/null >&2 || die "cargo build --release -p duplex-cli failed"
fi

# The test is not about another echo server.
unset DUPLEX_ECHO_CMD
rc=0
timeout --kill-after=10 "${DUPLEX_BROWSER_TIMEOUT:-120}" \
    node --test --test-timeout=120000 "$@" "$DIR/hub.test.mjs" "$DIR/h2.test.mjs" "$DIR/sse.test.mjs" </dev/null || rc=$?
[ "$rc" -eq 124 ] && echo "browser: node --test timed out after ${DUPLEX_BROWSER_TIMEOUT:-120} s" >&2
exit "$rc"
