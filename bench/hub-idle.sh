#!/usr/bin/env bash
# bench/hub-idle.sh: what `duplex hub` holds per idle WebSocket connection, subscribed or not.
#
#   bench/hub-idle.sh                      # 10,000 connections on 100 channels, 3 repetitions
#   bench/hub-idle.sh --channels 0         # upgraded but not subscribed
#   bench/hub-idle.sh --quick              # 2,000 connections, 1 repetition
#
# Each repetition: a fresh `duplex hub --threads 1` (pinned to CPU 0, limits raised past N),
# `duplex bench idle --hub-channels C` (CPU 1) opens N upgraded connections and subscribes
# connection i to channel `idle-{i % C}`, waiting for each reply; once every connection is
# open and subscribed (and the hub has had a second to settle), the hub's VmRSS minus its
# VmRSS before the first connection, divided by N, is the figure. Printed per repetition and
# as the median; raw logs stay in bench/results/hub-idle-*/.
#
# Options (environment variables of the same name work too):
#   --connections N    connections (default 10000)
#   --channels C       channels to spread them over (default 100; 0: no subscribe)
#   --join-leave B     the hub's --join-leave (default true, the hub's default)
#   --reps R           repetitions (default 3)
#   --quick            N=2000, R=1
#   --no-build         use target/release/duplex as it is
#   --binary PATH      measure this duplex binary instead (another build, for before/after)
set -euo pipefail
ARGS="$*"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=lib.sh
source "$HERE/lib.sh"

CONNECTIONS=${CONNECTIONS:-10000}
CHANNELS=${CHANNELS:-100}
JOIN_LEAVE=${JOIN_LEAVE:-true}
REPS=${REPS:-3}
BUILD=${BUILD:-1}
BINARY=${BINARY:-}

while [ $# -gt 0 ]; do
    case $1 in
    --connections) CONNECTIONS=$2; shift ;;
    --channels) CHANNELS=$2; shift ;;
    --join-leave) JOIN_LEAVE=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --quick) CONNECTIONS=2000 REPS=1 ;;
    --no-build) BUILD=0 ;;
    --binary) BINARY=$2; BUILD=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

start_run "$HERE/results/hub-idle-$(date +%Y%m%d-%H%M%S)"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (hub on CPU $SERVER_CPU, generator on CPU $CLIENT_CPU)"

# Every connection is a descriptor in the generator and one in the hub.
need=$((CONNECTIONS + 1024))
if [ "$(ulimit -n)" -lt "$need" ]; then
    ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
[ "$(ulimit -n)" -ge "$need" ] || die "ulimit -n is $(ulimit -n); $CONNECTIONS connections need $need"

if [ "$BUILD" = 1 ]; then
    log "building duplex (release)"
    (cd "$ROOT" && cargo build --release -q -p duplex-cli) || die "duplex build failed"
fi
cp "${BINARY:-$ROOT/target/release/duplex}" "$RUN/bin/duplex"
DUPLEX=$RUN/bin/duplex

PORT=${PORT_BASE:-19400}
figures=()
for rep in $(seq "$REPS"); do
    PORT=$((PORT + 1))
    id="rep$rep"
    DUPLEX_LOG=warn taskset -c "$SERVER_CPU" "$DUPLEX" hub --listen "127.0.0.1:$PORT" \
        --threads 1 --max-connections $((CONNECTIONS * 2)) --join-leave "$JOIN_LEAVE" \
        >"$RUN/logs/$id.hub.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$PORT" "$SERVER_PID" || die "the hub did not start (see $RUN/logs/$id.hub.log)"
    sleep 0.5
    before=$(rss_kib "$SERVER_PID")
    SYNC=$RUN/sync/$id
    mkdir -p "$SYNC"
    gen "$RUN/logs/$id.gen.log" idle "ws://127.0.0.1:$PORT/ws" --connections "$CONNECTIONS" \
        --hub-channels "$CHANNELS" --hold 600 --sync-dir "$SYNC"
    after=""
    if sync_wait "$SYNC/open.ready"; then
        sleep 1 # the last subscribes' presence pushes
        after=$(rss_kib "$SERVER_PID")
        touch "$SYNC/open.go"
    fi
    if gen_finish "$RUN/logs/$id.gen.log" && [ -n "$after" ]; then
        opened=$(kv "$RESULT" opened)
        figure=$(awk -v a="$after" -v b="$before" -v n="$opened" 'BEGIN { printf "%.3f", (a - b) / n }')
        figures+=("$figure")
        log "rep $rep: before $before KiB, after $after KiB, $opened connections: $figure KiB each"
    else
        log "rep $rep: failed (see $RUN/logs/$id.gen.log)"
    fi
    stop_pid "$SERVER_PID"
    SERVER_PID=""
done
[ ${#figures[@]} -gt 0 ] || die "no repetition succeeded"
median=$(printf '%s\n' "${figures[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
rev="$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet -- crates || echo '+dirty')"
if [ -n "$BINARY" ]; then rev=$BINARY; fi
echo "hub idle: $CONNECTIONS connections, channels $CHANNELS, join-leave $JOIN_LEAVE, duplex $rev:" \
    "${figures[*]} KiB per connection (median $median)" | tee "$RUN/result.txt"
