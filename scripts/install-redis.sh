#!/usr/bin/env bash
# Installs redis-server (Debian's package, Redis 7.x) when it is missing; a no-op when
# `redis-server` is on PATH (or $DUPLEX_REDIS_SERVER points at one). The many-node tests
# (crates/duplex-cli/tests/nodes) and bench/fanout-redis.sh start their own redis-server
# processes on free ports: nothing is started here, and the package's own service (if apt
# starts one on 6379) is never used by them.
set -euo pipefail

if [ -n "${DUPLEX_REDIS_SERVER:-}" ]; then
    [ -x "$DUPLEX_REDIS_SERVER" ] || { echo "scripts/install-redis.sh: DUPLEX_REDIS_SERVER=$DUPLEX_REDIS_SERVER is not executable" >&2; exit 2; }
    exit 0
fi
command -v redis-server >/dev/null && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/install-redis.sh: redis-server missing; as root run: apt-get install -y redis-server" >&2
    exit 2
fi
command -v apt-get >/dev/null || { echo "scripts/install-redis.sh: redis-server missing and no apt-get: install Redis 7 yourself" >&2; exit 2; }
echo "scripts/install-redis.sh: installing redis-server (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
timeout 600 apt-get update -qq </dev/null
# policy-rc.d-less containers cannot start the service; that is fine (the tests start their own).
timeout 900 apt-get install -y -qq redis-server </dev/null >/dev/null
command -v redis-server >/dev/null || { echo "scripts/install-redis.sh: redis-server still missing after apt" >&2; exit 2; }
