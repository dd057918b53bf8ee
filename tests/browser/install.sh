#!/usr/bin/env bash
# Installs what the browser interop tests need; a no-op when everything is there.
#   - Chromium from Debian's packages (/usr/bin/chromium), via apt as root.
#     Playwright never downloads a browser of its own here (no `playwright install`).
#   - playwright-core from npm, exactly as package-lock.json pins it, into
#     tests/browser/node_modules (re-installed when the lock file changed).
#   - redis-server (scripts/install-redis.sh): the many-node tests start their own.
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHROMIUM=${DUPLEX_CHROMIUM:-/usr/bin/chromium}

if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/browser/install.sh: $CHROMIUM missing; as root run: apt-get install -y chromium" >&2
        exit 2
    fi
    echo "tests/browser/install.sh: installing chromium (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq
    timeout 900 apt-get install -y -qq chromium >/dev/null
    [ -x "$CHROMIUM" ] || { echo "tests/browser/install.sh: $CHROMIUM still missing after apt" >&2; exit 2; }
fi

"$DIR/../../scripts/install-redis.sh"

command -v node >/dev/null || { echo "tests/browser/install.sh: node not found (Node >= 20 needed)" >&2; exit 2; }
command -v npm >/dev/null || { echo "tests/browser/install.sh: npm not found" >&2; exit 2; }

# node_modules is current when it was installed from this very lock file.
stamp="$DIR/node_modules/.duplex-lock.sha256"
want=$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -f "$DIR/node_modules/playwright-core/package.json" ]; then
    echo "tests/browser/install.sh: npm ci (playwright-core)" >&2
    (cd "$DIR" && timeout 600 npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" >"$stamp"
fi
