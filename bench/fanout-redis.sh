#!/usr/bin/env bash
# bench/fanout-redis.sh: the hub's fan-out across two nodes behind one Redis, next to one node
# with the in-memory broker (the same run, the same machine: the baseline).
#
#   bench/fanout-redis.sh            # full run (build not counted: several minutes on 2 cores)
#   bench/fanout-redis.sh --quick    # smoke run, a few minutes
#
# For each subscriber count N, with `duplex bench fanout` (N WebSocket subscribers on one
# channel, lock-stepped publications of 100 B of JSON data through POST /api/publish):
#   redis   a fresh redis-server (no persistence) and two nodes `duplex hub --broker redis://..`;
#           the subscribers are split evenly over the two nodes, the publisher talks to the
#           first: a publication goes node A -> Redis (one EVALSHA) -> pub/sub -> A and B.
#   memory  one node with the in-memory broker, all N subscribers on it.
# Per setup and N:
#   1. plain: time to the first/last subscriber p50/p99, deliveries/s, the HTTP publish reply
#      time, and (redis) over the measured window: Redis round trips per publish (the nodes'
#      own count, duplex_hub_broker_round_trip_seconds_count of /metrics, summed over the
#      nodes: every command a node sent, presence refreshes included) and the commands Redis
#      ran per publish (INFO commandstats after CONFIG RESETSTAT; the commands inside a
#      script count there too).
#   2. instructions (callgrind, user space): every node under callgrind with instrumentation
#      switched on only for the measured window (the generator stops at --sync-dir points with
#      nothing in flight, as in bench/fanout.sh); the sum over the nodes per delivery. The
#      target: redis within 10% of memory.
# Then publishes/s: back-to-back publications (`--interval-ms 0`: each request waits for its
# reply, one connection) to the first node, with RATE_SUBSCRIBERS (10) subscribed, so that
# the publish path, not the fan-out, is what is measured.
# Nodes and Redis run on CPU 0, the generator on CPU 1 (taskset), all on 127.0.0.1. Nodes run
# with `--compression off --join-leave false --ping-interval 0 --max-connections 30000`.
# The table goes to bench/results/fanout-redis-latest.md (and stdout); logs and dumps stay in
# bench/results/fanout-redis-*/.
#
# Options (environment variables of the same name work too):
#   --quick              fewer publications
#   --subscribers "A B"  subscriber counts (default "1000 10000")
#   --size BYTES         published data bytes (default 100)
#   --instr MODE         callgrind (default when valgrind is installed) or none
#   --no-build           use target/release/duplex as it is
set -euo pipefail
ARGS="$*"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=lib.sh
source "$HERE/lib.sh"

SUBSCRIBERS=${SUBSCRIBERS:-"1000 10000"}
SIZE=${SIZE:-100}
INSTR=${INSTR:-auto}
BUILD=${BUILD:-1}
PLAIN_PUBS_1000=${PLAIN_PUBS_1000:-500}
PLAIN_PUBS_10000=${PLAIN_PUBS_10000:-100}
CG_PUBS_1000=${CG_PUBS_1000:-100}
CG_PUBS_10000=${CG_PUBS_10000:-20}
RATE_PUBS=${RATE_PUBS:-3000}
RATE_SUBSCRIBERS=${RATE_SUBSCRIBERS:-10}
WARMUP_PUBS=${WARMUP_PUBS:-5}

while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1 ;;
    --subscribers) SUBSCRIBERS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --instr) INSTR=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
if [ "${QUICK:-0}" = 1 ]; then
    PLAIN_PUBS_1000=100 PLAIN_PUBS_10000=20 CG_PUBS_1000=20 CG_PUBS_10000=5 RATE_PUBS=1000 WARMUP_PUBS=2
fi
pubs() { # pubs plain|callgrind N
    local big=1000
    if [ "$2" -ge 5000 ]; then big=10000; fi
    case $1 in
    plain) eval echo "\$PLAIN_PUBS_$big" ;;
    callgrind) eval echo "\$CG_PUBS_$big" ;;
    esac
}
case $INSTR in
auto) if callgrind_usable; then INSTR=callgrind; else log "warning: valgrind missing: instructions not measured"; INSTR=none; fi ;;
callgrind) callgrind_usable || die "valgrind/callgrind_control not installed" ;;
none) ;;
*) die "--instr: callgrind or none" ;;
esac
"$ROOT/scripts/install-redis.sh" || die "redis-server is needed (scripts/install-redis.sh)"
REDIS_SERVER=${DUPLEX_REDIS_SERVER:-$(command -v redis-server)}
command -v redis-cli >/dev/null || die "redis-cli is needed (Debian: redis-tools, installed with redis-server)"

START=$SECONDS
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_run "$HERE/results/fanout-redis-$(date +%Y%m%d-%H%M%S)"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (nodes on CPU $SERVER_CPU, generator on CPU $CLIENT_CPU)"
# Every process this script starts, stopped by PID at exit (lib.sh's trap covers SERVER_PID,
# GEN_PID; the nodes and Redis are in PIDS).
PIDS=()
stop_all() {
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do stop_pid "$pid"; done
    PIDS=()
}
trap 'stop_all; run_cleanup' EXIT

max_n=0
for n in $SUBSCRIBERS; do [ "$n" -gt "$max_n" ] && max_n=$n; done
need=$((max_n + 1024))
if [ "$(ulimit -n)" -lt "$need" ]; then
    ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
[ "$(ulimit -n)" -ge "$need" ] || die "ulimit -n is $(ulimit -n); $need needed for $max_n subscribers"
log "instructions: $INSTR; subscribers: $SUBSCRIBERS; data: $SIZE B; ulimit -n $(ulimit -n)"

if [ "$BUILD" = 1 ]; then
    log "building duplex (release)"
    (cd "$ROOT" && cargo build --release -q -p duplex-cli) || die "duplex build failed"
fi
target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target" ] || target="$ROOT/target"
cp "$target/release/duplex" "$RUN/bin/duplex"
DUPLEX=$RUN/bin/duplex
"$DUPLEX" hub --help | grep -q -- '--broker' || die "this duplex has no --broker (RedisBroker not merged?)"
BUILD_SECS=$((SECONDS - START))

PORT=${PORT_BASE:-19600}
next_port() { PORT=$((PORT + 1)); }
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$RAW"; }
new_sync() { SYNC=$RUN/sync/$1; rm -rf "$SYNC"; mkdir -p "$SYNC"; }
NO_REP=glibc.cpu.x86_rep_movsb_threshold=1099511627776:glibc.cpu.x86_rep_stosb_threshold=1099511627776
HUB_FLAGS=(--compression off --join-leave false --ping-interval 0 --max-connections 30000)
if "$DUPLEX" hub --help 2>/dev/null | grep -q -- '--threads'; then HUB_FLAGS+=(--threads 1); fi

# start_redis: a redis-server on the next port, CPU 0; sets REDIS_PORT.
start_redis() {
    next_port
    REDIS_PORT=$PORT
    taskset -c "$SERVER_CPU" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no >"$RUN/logs/redis.$REDIS_PORT.log" 2>&1 &
    PIDS+=($!)
    local i
    for i in $(seq 100); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    die "redis-server did not answer on port $REDIS_PORT"
}

# healthy PORT: GET /healthz answers 200.
healthy() {
    local status
    status=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 &&
        printf 'GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n' >&3 && head -c 12 <&3" 2>/dev/null) || return 1
    [ "${status:9:3}" = 200 ]
}

# start_node LOG BROKER [WRAPPER...]: a node on the next port, CPU 0; appends its PID (the
# node itself: taskset and valgrind exec) to PIDS and NODE_PIDS, its port to NODE_PORTS.
start_node() {
    local logfile=$1 broker=$2
    shift 2
    next_port
    DUPLEX_LOG=warn taskset -c "$SERVER_CPU" "$@" "$DUPLEX" hub --listen "127.0.0.1:$PORT" \
        --broker "$broker" "${HUB_FLAGS[@]}" >"$logfile" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    NODE_PIDS+=("$pid")
    NODE_PORTS+=("$PORT")
    wait_port "$PORT" "$pid" || { tail -5 "$logfile" >&2; die "a node did not start on 127.0.0.1:$PORT"; }
    # Listening is not ready: /healthz says 200 once the broker is connected.
    local i
    for i in $(seq 300); do
        healthy "$PORT" && return 0
        sleep 0.1
    done
    die "the node on $PORT never became healthy ($logfile)"
}

# setup KIND ID [WRAPPER...]: redis (one Redis + two nodes) or memory (one node).
setup() {
    local kind=$1 id=$2 i
    shift 2
    NODE_PIDS=() NODE_PORTS=() REDIS_PORT=""
    case $kind in
    redis)
        start_redis
        for i in 0 1; do start_node "$RUN/logs/$id.node$i.log" "redis://127.0.0.1:$REDIS_PORT" "$@"; done
        ;;
    memory) start_node "$RUN/logs/$id.node0.log" memory "$@" ;;
    esac
}

# generator ID N PUBS [EXTRA...]: the generator against every node of the setup.
generator() {
    local id=$1 n=$2 m=$3 urls=() p
    shift 3
    for p in "${NODE_PORTS[@]}"; do urls+=("ws://127.0.0.1:$p/ws"); done
    new_sync "$id"
    gen "$RUN/logs/$id.gen.log" fanout "${urls[@]}" --subscribers "$n" --publishes "$m" \
        --size "$SIZE" --warmup "$WARMUP_PUBS" --concurrency 200 --timeout 30 --sync-dir "$SYNC" "$@"
}

# round_trips: the broker round trips every node of the setup counted so far.
round_trips() {
    local p n total=0
    for p in "${NODE_PORTS[@]}"; do
        n=$(timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p &&
            printf 'GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n' >&3 && cat <&3" 2>/dev/null |
            tr -d '\r' | awk '$1 == "duplex_hub_broker_round_trip_seconds_count" { print $2 }')
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

# redis_calls: commands Redis ran since the last CONFIG RESETSTAT (INFO and CONFIG excluded).
redis_calls() {
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
        awk -F'[:,=]' '/^cmdstat_/ && $1 != "cmdstat_info" && $1 != "cmdstat_config" { n += $3 } END { print n + 0 }'
}
# redis_calls_by_command: "evalsha=100 ping=2 ..." for the log.
redis_calls_by_command() {
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
        awk -F'[:,=]' '/^cmdstat_/ && $1 != "cmdstat_info" && $1 != "cmdstat_config" { sub("cmdstat_", "", $1); printf "%s=%s ", $1, $3 }'
}

measure_plain() {
    local kind=$1 n=$2 id="plain.$1.$2" m calls="" trips0="" trips=""
    m=$(pubs plain "$n")
    setup "$kind" "$id"
    generator "$id" "$n" "$m"
    if sync_wait "$SYNC/warm.ready"; then
        if [ -n "$REDIS_PORT" ]; then
            redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
            trips0=$(round_trips)
        fi
        touch "$SYNC/warm.go"
        if sync_wait "$SYNC/done.ready"; then
            if [ -n "$REDIS_PORT" ]; then
                trips=$(($(round_trips) - trips0))
                calls=$(redis_calls)
                log "  in the window: $trips broker round trips; Redis ran $(redis_calls_by_command)"
            fi
            touch "$SYNC/done.go"
        fi
    fi
    if gen_finish "$RUN/logs/$id.gen.log"; then
        local key
        for key in publishes deliveries deliveries_per_sec first_p50_us first_p99_us last_p50_us \
            last_p99_us reply_p50_us missing duplicate failed push_bytes; do
            record "$kind" "$n" "$key" "$(kv "$RESULT" "$key")"
        done
        if [ -n "$calls" ]; then
            record "$kind" "$n" redis_calls_per_publish \
                "$(awk -v c="$calls" -v p="$(kv "$RESULT" publishes)" 'BEGIN { printf "%.2f", c / p }')"
            record "$kind" "$n" round_trips_per_publish \
                "$(awk -v c="$trips" -v p="$(kv "$RESULT" publishes)" 'BEGIN { printf "%.2f", c / p }')"
        fi
    fi
    stop_all
}

measure_instr() {
    local kind=$1 n=$2 id="instr.$1.$2" m pid total=0 dump ok=1
    m=$(pubs callgrind "$n")
    setup "$kind" "$id" env "GLIBC_TUNABLES=$NO_REP" valgrind --tool=callgrind --dump-instr=no \
        --instr-atstart=no --callgrind-out-file="$RUN/cg/$id.%p.out"
    generator "$id" "$n" "$m"
    if sync_wait "$SYNC/warm.ready"; then
        for pid in "${NODE_PIDS[@]}"; do
            callgrind_control -i on "$pid" >/dev/null 2>&1
            callgrind_control -z "$pid" >/dev/null 2>&1
        done
        touch "$SYNC/warm.go"
        if sync_wait "$SYNC/done.ready"; then
            for pid in "${NODE_PIDS[@]}"; do
                callgrind_control -d "$pid" >/dev/null 2>&1
                dump=$(ls -v "$RUN/cg/$id.$pid.out."* 2>/dev/null | tail -1 || true)
                if [ -n "$dump" ]; then
                    total=$((total + $(callgrind_total "$dump")))
                    python3 "$HERE/callgrind_top.py" "$dump" 25 >"$dump.top.txt" 2>/dev/null || true
                else
                    ok=0
                fi
            done
        fi
        touch "$SYNC/done.go"
    fi
    if gen_finish "$RUN/logs/$id.gen.log" && [ "$ok" = 1 ] && [ "$total" -gt 0 ]; then
        local d
        d=$(kv "$RESULT" deliveries)
        record "$kind" "$n" instr_user "$((total / d))"
        record "$kind" "$n" instr_missing "$(kv "$RESULT" missing)"
    fi
    stop_all
}

measure_rate() {
    local kind=$1 n=$2 id="rate.$1.$2"
    setup "$kind" "$id"
    generator "$id" "$n" "$RATE_PUBS" --interval-ms 0
    if sync_wait "$SYNC/warm.ready"; then
        touch "$SYNC/warm.go"
        sync_wait "$SYNC/done.ready" && touch "$SYNC/done.go"
    fi
    if gen_finish "$RUN/logs/$id.gen.log"; then
        record "$kind" "$n" publishes_per_sec \
            "$(awk -v p="$(kv "$RESULT" publishes)" -v s="$(kv "$RESULT" secs)" 'BEGIN { printf "%.0f", p / s }')"
        record "$kind" "$n" rate_missing "$(kv "$RESULT" missing)"
    fi
    stop_all
}

for n in $SUBSCRIBERS; do
    for kind in redis memory; do
        log "$n subscribers, $kind: plain ($(pubs plain "$n") publications)"
        measure_plain "$kind" "$n"
        if [ "$INSTR" = callgrind ]; then
            log "$n subscribers, $kind: callgrind ($(pubs callgrind "$n") publications)"
            measure_instr "$kind" "$n"
        fi
    done
done
for kind in redis memory; do
    log "$RATE_SUBSCRIBERS subscribers, $kind: publishes/s ($RATE_PUBS back-to-back publications)"
    measure_rate "$kind" "$RATE_SUBSCRIBERS"
done

ELAPSED=$((SECONDS - START))
REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet -- crates 2>/dev/null || echo '+dirty')"
python3 - "$RAW" "$SIZE" <<EOF >"$RUN/report.md"
import sys
raw, size = sys.argv[1], sys.argv[2]
v = {}
for line in open(raw):
    kind, n, key, x = line.rstrip("\n").split("\t")
    if x != "":
        v.setdefault((kind, int(n)), {})[key] = float(x)
def g(kind, n, key, fmt="{:,.0f}", scale=1.0):
    x = v.get((kind, n), {}).get(key)
    return "n/a" if x is None else fmt.format(x * scale)
ns = sorted({n for (_, n), d in v.items() if "deliveries" in d})  # not the publishes/s runs
print(f"Hub fan-out over two nodes and one Redis vs one node with the in-memory broker; {size} B of "
      "data per publication, lock-step publications via POST /api/publish to the first node; "
      "nodes and Redis on CPU $SERVER_CPU, the generator on CPU $CLIENT_CPU.")
print()
print("| broker | subscribers | deliveries/s | time to last p50 / p99 | time to first p50 | publish reply p50 "
      "| Redis round trips / publish (target 1) | commands Redis ran / publish | user instr/delivery (all nodes) | ÷ memory (target ≤ 1.10) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in ns:
    for kind in ("redis", "memory"):
        if (kind, n) not in v:
            continue
        ms = lambda k: g(kind, n, k, "{:,.2f}", 1e-3)
        mine, base = v[(kind, n)].get("instr_user"), v.get(("memory", n), {}).get("instr_user")
        ratio = "n/a" if mine is None or not base else f"{mine / base:.2f}"
        nodes = "2 nodes + Redis" if kind == "redis" else "1 node, memory"
        print(f"| {nodes} | {n:,} | {g(kind, n, 'deliveries_per_sec')} | {ms('last_p50_us')} / {ms('last_p99_us')} ms "
              f"| {ms('first_p50_us')} ms | {ms('reply_p50_us')} ms "
              f"| {g(kind, n, 'round_trips_per_publish', '{:.2f}') if kind == 'redis' else '-'} "
              f"| {g(kind, n, 'redis_calls_per_publish', '{:.2f}') if kind == 'redis' else '-'} "
              f"| {g(kind, n, 'instr_user')} | {ratio if kind == 'redis' else '1'} |")
print()
for kind in ("redis", "memory"):
    for n in sorted({n for _, n in v}):
        if "publishes_per_sec" in v.get((kind, n), {}):
            print(f"Publishes/s over HTTP ({kind}, one keep-alive connection, back-to-back, {n:,} subscribers): "
                  f"{g(kind, n, 'publishes_per_sec')}.")
bad = [(k, n, key, x) for (k, n), d in v.items() for key, x in d.items()
       if key in ("missing", "duplicate", "failed", "instr_missing", "rate_missing") and x != 0]
print()
print("Missing/duplicate deliveries: " + ("none (offsets checked per subscriber)" if not bad else
      ", ".join(f"{k} {n}: {key}={x:.0f}" for k, n, key, x in bad)) + ".")
print("Round trips: the commands the nodes sent Redis in the measured window (their "
      "duplex_hub_broker_round_trip_seconds_count), per publication; commands Redis ran: INFO commandstats "
      "over the same window, the commands inside the publish script included (EVALSHA, TIME, HGET, HINCRBY, "
      "XADD, PUBLISH). Instructions: callgrind, user space, summed over the nodes, measured window only.")
print()
print("run: bench/fanout-redis.sh${ARGS:+ $ARGS}, $ELAPSED s (build $BUILD_SECS s), duplex $REV, "
      "$("$REDIS_SERVER" --version | cut -d' ' -f1-3), "
      "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), load average at start $LOADAVG_START")
EOF
cp "$RUN/report.md" "$HERE/results/fanout-redis-latest.md"
cat "$RUN/report.md"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s (build $BUILD_SECS s); logs and dumps in $RUN"
