#!/usr/bin/env bash
# bench/compare.sh: duplex against fastwebsockets and tokio-tungstenite on this machine.
#
#   bench/compare.sh            # full run (R=3 repetitions), about 12 minutes on 2 cores
#   bench/compare.sh --quick    # smoke run, 2-3 minutes
#
# For each repetition, for each server (order rotated every repetition):
#   1. idle memory: fresh server, `duplex bench idle` opens N upgraded connections; server
#      VmRSS after minus before, divided by N;
#   2. throughput (no instrumentation): handshakes/s (sequential connect, upgrade, close),
#      then each echo scenario: msgs/s, round-trip p50/p99, and the server's CPU time per
#      message from /proc/PID/stat over the exact measured window;
#   3. instructions: a fresh server under perf stat (hardware counters: total and user-space
#      instructions) or, where the counters are not available, under callgrind (user-space
#      instructions only): instructions per handshake and per echoed message over an exact
#      window, `duplex bench --sync-dir` stopping the generator, all its connections idle, at
#      both ends of the window (no handshakes, warm-up or closes inside it).
# Servers run on CPU 0 and the generator on CPU 1 (taskset); traffic stays on 127.0.0.1.
# Medians over the repetitions go to bench/results/latest.md (and stdout); raw numbers and
# logs stay in bench/results/run-*/.
#
# Options (environment variables of the same name work too):
#   --quick            R=1, short windows, 2,000 idle connections
#   --reps R           repetitions (default 3)
#   --duration S       seconds per throughput window (default 5)
#   --idle N           idle connections (default 10000)
#   --text             text messages (the servers validate UTF-8) instead of binary
#   --servers "A B"    subset of: duplex fastwebsockets tungstenite
#   --scenarios "..."  subset of: 100x20B 100x1KiB 10x64KiB 1000x20B
#   --instr MODE       auto (default), perf, callgrind, none
#   --no-build         use the binaries already built
set -euo pipefail
ARGS="$*"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=lib.sh
source "$HERE/lib.sh"

REPS=${REPS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
IDLE=${IDLE:-10000}
PAYLOAD=${PAYLOAD:-binary}
SERVERS=${SERVERS:-"duplex fastwebsockets tungstenite"}
SCENARIOS=${SCENARIOS:-"100x20B 100x1KiB 10x64KiB 1000x20B"}
INSTR=${INSTR:-auto}
BUILD=${BUILD:-1}
QUICK=0
# Handshakes: sequential count for handshakes/s, and inside the instruction window.
HS_COUNT=${HS_COUNT:-2000}
# Messages inside the instruction window (callgrind runs the server ~50x slower).
CG_SMALL=${CG_SMALL:-20000}
CG_LARGE=${CG_LARGE:-2000}
CG_HS=${CG_HS:-300}
PERF_SMALL=${PERF_SMALL:-200000}
PERF_LARGE=${PERF_LARGE:-20000}
PERF_HS=${PERF_HS:-2000}

while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1 ;;
    --reps) REPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --idle) IDLE=$2; shift ;;
    --text) PAYLOAD=text ;;
    --servers) SERVERS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --instr) INSTR=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    REPS=1 DURATION=2 WARMUP=0.5 IDLE=2000 HS_COUNT=500
    CG_SMALL=5000 CG_LARGE=500 CG_HS=100 PERF_SMALL=50000 PERF_LARGE=5000 PERF_HS=500
fi

START=$SECONDS
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_run "$HERE/results/run-$(date +%Y%m%d-%H%M%S)"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (server on CPU $SERVER_CPU, generator on CPU $CLIENT_CPU)"

# Every idle connection is a descriptor in the generator and one in the server.
need=$((IDLE + 1024))
if [ "$(ulimit -n)" -lt "$need" ]; then
    ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
if [ "$(ulimit -n)" -lt "$need" ]; then
    IDLE=$(($(ulimit -n) - 1024))
    log "warning: ulimit -n is $(ulimit -n): idle test with $IDLE connections"
fi

INSTR=$(choose_instr "$INSTR") || exit 1
log "instructions: $INSTR; payload: $PAYLOAD; reps: $REPS; window: ${DURATION}s; idle: $IDLE"

if [ "$BUILD" = 1 ]; then
    build_all "$ROOT" "$RUN/bin"
else
    cp "$ROOT/target/release/duplex" "$ROOT/bench/peers/target/release/fastwebsockets-echo" \
        "$ROOT/bench/peers/target/release/tungstenite-echo" "$RUN/bin/"
    DUPLEX=$RUN/bin/duplex FWS=$RUN/bin/fastwebsockets-echo TUNG=$RUN/bin/tungstenite-echo
fi
BUILD_SECS=$((SECONDS - START))

BINARY_FLAG=()
if [ "$PAYLOAD" = binary ]; then BINARY_FLAG=(--binary); fi
PORT=${PORT_BASE:-19100}
next_port() { PORT=$((PORT + 1)); }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RAW"; }
scenario_conns() { echo "${1%%x*}"; }
scenario_size() {
    local s=${1#*x}
    case $s in
    *KiB) echo $((${s%KiB} * 1024)) ;;
    *B) echo "${s%B}" ;;
    *) die "scenario $1: expected CONNSxSIZE with SIZE in B or KiB" ;;
    esac
}
CLK_TCK=$(getconf CLK_TCK)
NO_REP=glibc.cpu.x86_rep_movsb_threshold=1099511627776:glibc.cpu.x86_rep_stosb_threshold=1099511627776
# A fresh sync directory for one generator run.
new_sync() { SYNC=$RUN/sync/$1; rm -rf "$SYNC"; mkdir -p "$SYNC"; }

# --- 1. idle memory ------------------------------------------------------------------------
measure_idle() {
    local server=$1 rep=$2 id="$1.idle.$2"
    next_port
    start_server "$server" "$PORT" "$RUN/logs/$id.server.log"
    sleep 0.5
    local before after result opened
    before=$(rss_kib "$SERVER_PID")
    new_sync "$id"
    gen "$RUN/logs/$id.gen.log" idle "ws://127.0.0.1:$PORT/" --connections "$IDLE" --hold 600 \
        --sync-dir "$SYNC"
    if sync_wait "$SYNC/open.ready"; then
        sleep 1 # let the server finish with the last upgrades
        after=$(rss_kib "$SERVER_PID")
        touch "$SYNC/open.go"
    fi
    if gen_finish "$RUN/logs/$id.gen.log"; then result=$RESULT
        opened=$(kv "$result" opened)
        if [ -n "${after:-}" ] && [ "${opened:-0}" -gt 0 ]; then
            record "$server" idle kib_per_conn "$rep" \
                "$(awk -v a="$after" -v b="$before" -v n="$opened" 'BEGIN { printf "%.3f", (a - b) / n }')"
            record "$server" idle opened "$rep" "$opened"
            record "$server" idle failed "$rep" "$(kv "$result" failed)"
            record "$server" idle conns_per_sec "$rep" "$(kv "$result" conns_per_sec)"
        fi
    fi
    GEN_PID=""
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

# --- 2. throughput, no instrumentation -----------------------------------------------------
measure_throughput() {
    local server=$1 rep=$2 id="$1.plain.$2" result scenario
    next_port
    start_server "$server" "$PORT" "$RUN/logs/$id.server.log"
    record "$server" all threads "$rep" "$(nthreads "$SERVER_PID")"
    gen "$RUN/logs/$id.handshake.gen.log" handshake "ws://127.0.0.1:$PORT/" --count "$HS_COUNT" \
        --warmup-count 20
    if gen_finish "$RUN/logs/$id.handshake.gen.log"; then result=$RESULT
        record "$server" handshake per_sec "$rep" "$(kv "$result" per_sec)"
    fi
    for scenario in $SCENARIOS; do
        local conns size t0 t1 sid="$id.$scenario"
        conns=$(scenario_conns "$scenario") size=$(scenario_size "$scenario")
        new_sync "$sid"
        gen "$RUN/logs/$sid.gen.log" echo "ws://127.0.0.1:$PORT/" --connections "$conns" \
            --size "$size" --warmup "$WARMUP" --duration "$DURATION" "${BINARY_FLAG[@]}" \
            --sync-dir "$SYNC"
        t0="" t1="" c0="" c1=""
        if sync_wait "$SYNC/warm.ready"; then
            t0=$(cpu_ticks "$SERVER_PID") c0=$(cpu_busy "$SERVER_CPU")
            touch "$SYNC/warm.go"
            if sync_wait "$SYNC/done.ready"; then
                t1=$(cpu_ticks "$SERVER_PID") c1=$(cpu_busy "$SERVER_CPU")
                touch "$SYNC/done.go"
            fi
        fi
        if gen_finish "$RUN/logs/$sid.gen.log" && [ -n "$t1" ]; then result=$RESULT
            local msgs secs
            msgs=$(kv "$result" msgs) secs=$(kv "$result" secs)
            record "$server" "$scenario" msgs_per_sec "$rep" "$(kv "$result" msgs_per_sec)"
            record "$server" "$scenario" p50_us "$rep" "$(kv "$result" p50_us)"
            record "$server" "$scenario" p99_us "$rep" "$(kv "$result" p99_us)"
            read -r a0 u0 s0 f0 <<<"$t0"
            read -r a1 u1 s1 f1 <<<"$t1"
            record "$server" "$scenario" minflt_per_msg "$rep" \
                "$(awk -v f=$((f1 - f0)) -v n="$msgs" 'BEGIN { printf "%.3f", f / n }')"
            record "$server" "$scenario" cpu_ns_per_msg "$rep" \
                "$(awk -v d=$((a1 - a0)) -v n="$msgs" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", d / hz * 1e9 / n }')"
            record "$server" "$scenario" cpu_user_ns_per_msg "$rep" \
                "$(awk -v d=$((u1 - u0)) -v n="$msgs" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", d / hz * 1e9 / n }')"
            record "$server" "$scenario" cpu_pct "$rep" \
                "$(awk -v d=$((a1 - a0)) -v s="$secs" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", d / hz / s * 100 }')"
            # CPU 0 outside the server process: softirqs (the loopback packets it sends are
            # processed there), and anything else (other processes: noise).
            read -r b0 q0 <<<"$c0"
            read -r b1 q1 <<<"$c1"
            record "$server" "$scenario" cpu0_softirq_pct "$rep" \
                "$(awk -v q=$((q1 - q0)) -v s="$secs" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", q / hz / s * 100 }')"
            record "$server" "$scenario" cpu0_other_pct "$rep" \
                "$(awk -v b=$((b1 - b0 - (q1 - q0) - (a1 - a0))) -v s="$secs" -v hz="$CLK_TCK" 'BEGIN { v = b / hz / s * 100; printf "%.0f", v < 0 ? 0 : v }')"
        fi
        GEN_PID=""
    done
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

# --- 3. instructions over exact windows ----------------------------------------------------
# instr_begin / instr_end bracket a window on SERVER_PID; instr_end prints "USER TOTAL MEM":
# user-space and total instructions, and the user-space ones spent in libc's memcpy/memmove/
# memset ("-" where not known: total under callgrind, which sees user space only; mem under
# perf).
instr_begin() {
    case $INSTR in
    callgrind) callgrind_control -z "$SERVER_PID" >/dev/null 2>&1 ;;
    perf)
        PERF_OUT=$RUN/logs/perf.$SERVER_PID.$RANDOM.csv
        perf stat -x, -e instructions,instructions:u,cycles -p "$SERVER_PID" -o "$PERF_OUT" &
        PERF_PID=$!
        sleep 0.3 # perf attaches asynchronously
        ;;
    esac
}
instr_end() {
    case $INSTR in
    callgrind)
        callgrind_control -d "$SERVER_PID" >/dev/null 2>&1
        local dump
        dump=$(ls -v "$RUN/cg/$CG_PREFIX".*.out.* 2>/dev/null | tail -1)
        if [ -n "$dump" ]; then
            local cg
            read -r -a cg <<<"$(python3 "$HERE/callgrind_top.py" --mem "$dump")"
            echo "${cg[0]} - ${cg[1]}"
        fi
        ;;
    perf)
        kill -INT "$PERF_PID" 2>/dev/null
        wait "$PERF_PID" 2>/dev/null || true
        PERF_PID=""
        echo "$(perf_value "$PERF_OUT" instructions:u) $(perf_value "$PERF_OUT" instructions) -"
        ;;
    esac
}

measure_instructions() {
    local server=$1 rep=$2 id="$1.instr.$2" result counts user total mem
    next_port
    CG_PREFIX=$id
    case $INSTR in
    callgrind)
        # glibc copies and fills large blocks with `rep movsb`/`rep stosb`: one instruction for
        # hardware counters, one per byte for callgrind. Make it use its vector loops instead
        # (one count per 32 bytes), and report what went into mem* separately.
        start_server "$server" "$PORT" "$RUN/logs/$id.server.log" env "GLIBC_TUNABLES=$NO_REP" \
            valgrind --tool=callgrind --dump-instr=no \
            --callgrind-out-file="$RUN/cg/$id.%p.out"
        ;;
    *) start_server "$server" "$PORT" "$RUN/logs/$id.server.log" ;;
    esac
    local hs=$CG_HS small=$CG_SMALL large=$CG_LARGE
    if [ "$INSTR" = perf ]; then hs=$PERF_HS small=$PERF_SMALL large=$PERF_LARGE; fi

    new_sync "$id.handshake"
    gen "$RUN/logs/$id.handshake.gen.log" handshake "ws://127.0.0.1:$PORT/" --count "$hs" \
        --warmup-count 20 --sync-dir "$SYNC"
    counts=""
    if sync_wait "$SYNC/warm.ready"; then
        instr_begin
        touch "$SYNC/warm.go"
        if sync_wait "$SYNC/done.ready"; then counts=$(instr_end); fi
        touch "$SYNC/done.go"
    fi
    if gen_finish "$RUN/logs/$id.handshake.gen.log" && [ -n "$counts" ]; then result=$RESULT
        read -r user total mem <<<"$counts"
        if [ -n "$user" ]; then record "$server" handshake instr_user "$rep" "$((user / hs))"; fi
        if [ -n "$total" ] && [ "$total" != - ]; then
            record "$server" handshake instr_total "$rep" "$((total / hs))"
        fi
        if [ -n "$mem" ] && [ "$mem" != - ]; then
            record "$server" handshake instr_mem "$rep" "$((mem / hs))"
        fi
    fi
    GEN_PID=""

    for scenario in $SCENARIOS; do
        local conns size msgs sid="$id.$scenario"
        conns=$(scenario_conns "$scenario") size=$(scenario_size "$scenario")
        msgs=$small
        if [ "$size" -ge 65536 ]; then msgs=$large; fi
        new_sync "$sid"
        gen "$RUN/logs/$sid.gen.log" echo "ws://127.0.0.1:$PORT/" --connections "$conns" \
            --size "$size" --warmup "$WARMUP" --messages "$msgs" --duration 600 \
            "${BINARY_FLAG[@]}" --sync-dir "$SYNC"
        counts=""
        if sync_wait "$SYNC/warm.ready"; then
            instr_begin
            touch "$SYNC/warm.go"
            if sync_wait "$SYNC/done.ready"; then counts=$(instr_end); fi
            touch "$SYNC/done.go"
        fi
        if gen_finish "$RUN/logs/$sid.gen.log" && [ -n "$counts" ]; then result=$RESULT
            read -r user total mem <<<"$counts"
            msgs=$(kv "$result" msgs)
            if [ -n "$user" ]; then record "$server" "$scenario" instr_user "$rep" "$((user / msgs))"; fi
            if [ -n "$total" ] && [ "$total" != - ]; then
                record "$server" "$scenario" instr_total "$rep" "$((total / msgs))"
            fi
            if [ -n "$mem" ] && [ "$mem" != - ]; then
                record "$server" "$scenario" instr_mem "$rep" "$((mem / msgs))"
            fi
        fi
        GEN_PID=""
    done
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

read -r -a server_list <<<"$SERVERS"
for rep in $(seq "$REPS"); do
    n=${#server_list[@]}
    for i in $(seq 0 $((n - 1))); do
        server=${server_list[$(((i + rep - 1) % n))]}
        log "rep $rep/$REPS: $server: idle ($IDLE connections)"
        measure_idle "$server" "$rep"
        log "rep $rep/$REPS: $server: throughput"
        measure_throughput "$server" "$rep"
        if [ "$INSTR" != none ]; then
            log "rep $rep/$REPS: $server: instructions ($INSTR)"
            measure_instructions "$server" "$rep"
        fi
    done
done

ELAPSED=$((SECONDS - START))
{
    echo "instr=$INSTR"
    echo "payload=$PAYLOAD"
    echo "reps=$REPS"
    echo "duration=$DURATION"
    echo "warmup=$WARMUP"
    echo "idle=$IDLE"
    echo "hs_count=$HS_COUNT"
    if [ "$INSTR" = perf ]; then
        echo "instr_msgs=$PERF_SMALL/$PERF_LARGE" && echo "instr_hs=$PERF_HS"
    else
        echo "instr_msgs=$CG_SMALL/$CG_LARGE" && echo "instr_hs=$CG_HS"
    fi
    echo "quick=$QUICK"
    echo "elapsed=$ELAPSED"
    echo "build_secs=$BUILD_SECS"
    echo "command=bench/compare.sh${ARGS:+ $ARGS}"
    echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "loadavg_start=$LOADAVG_START"
    echo "duplex_rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet -- crates 2>/dev/null || echo '+dirty')"
    echo "fastwebsockets=$(awk '/^name = "fastwebsockets"/ { getline; gsub(/[^0-9.]/, ""); print }' "$ROOT/bench/peers/Cargo.lock")"
    echo "tokio_tungstenite=$(awk '/^name = "tokio-tungstenite"/ { getline; gsub(/[^0-9.]/, ""); print }' "$ROOT/bench/peers/Cargo.lock")"
    echo "duplex_serve_threads_flag=$("$DUPLEX" serve --help 2>/dev/null | grep -q -- '--threads' && echo yes || echo no)"
} >"$RUN/meta.env"
python3 "$HERE/report.py" "$RUN" >"$RUN/report.md"
cp "$RUN/report.md" "$HERE/results/latest.md"
cat "$RUN/report.md"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s (builds $BUILD_SECS s); raw numbers in $RUN"
