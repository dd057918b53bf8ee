#!/usr/bin/env bash
# bench/fanout.sh: the hub's fan-out of one publication to 1,000 and 10,000 subscribers.
#
#   bench/fanout.sh            # full run, about 3 minutes on 2 cores (build not counted)
#   bench/fanout.sh --quick    # smoke run, about 1 minute
#   bench/fanout.sh --quick --hub-threads 2 --subscribers 10000   # the hub on both cores
#
# For each subscriber count, with `duplex bench fanout` (N WebSocket subscribers on one
# channel, lock-stepped publications of 100 B of JSON data through POST /api/publish):
#   1. plain (REPS times, medians reported): a fresh hub, no instrumentation: deliveries/s,
#      time until the first and the last subscriber has a publication (p50/p99), and the hub's
#      CPU time per delivery (/proc/PID/stat) over the exact publish phase;
#   2. instructions: a fresh hub under `perf stat -e instructions,instructions:u` (hardware
#      counters: total and user-space) or, where the counters are not available, under
#      callgrind (user-space only; started with instrumentation off and switched on with
#      callgrind_control around the window): instructions per delivery over the publish
#      phase only. The window is exact: the generator stops at --sync-dir points with every
#      subscriber idle before the first and after the last measured publication, so neither
#      handshakes nor subscribes nor closes are in it; the publications' HTTP requests are.
# The hub runs on CPU 0 and the generator on CPU 1 (taskset), everything on 127.0.0.1. The hub
# runs with `--compression off --join-leave false --ping-interval 0 --max-connections 30000`
# (and `--threads 1` where the build has it):
# plain fan-out, no presence pushes (with them every subscribe is pushed to every earlier
# subscriber: N^2/2 pushes while subscribing), no pings inside the window.
# With --hub-threads N (N > 1) the hub runs with `--threads N` instead (its default fan-out
# threads: one per core) on CPUs 0..N-1, the generator still on CPU 1, and a second table gives
# the CPU time each hub thread spent over the publish window of the plain runs (from
# /proc/PID/task/*/stat; threads of the same name summed), so it shows which threads wrote the
# deliveries.
# The table goes to bench/results/fanout-latest.md (and stdout); logs, callgrind dumps and
# per-function costs stay in bench/results/fanout-*/.
#
# Options (environment variables of the same name work too):
#   --quick              fewer publications, REPS=1
#   --reps R             plain runs per subscriber count (default 3)
#   --subscribers "A B"  subscriber counts (default "1000 10000")
#   --size BYTES         published data bytes (default 100)
#   --instr MODE         auto (default), perf, callgrind, none
#   --hub-threads N      the hub's --threads (default 1; see above)
#   --duplex PATH        measure this duplex binary (implies --no-build), e.g. a copy of the
#                        build before a change, for back-to-back comparisons
#   --no-build           use target/release/duplex as it is
set -euo pipefail
ARGS="$*"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=lib.sh
source "$HERE/lib.sh"

SUBSCRIBERS=${SUBSCRIBERS:-"1000 10000"}
SIZE=${SIZE:-100}
REPS=${REPS:-3}
INSTR=${INSTR:-auto}
BUILD=${BUILD:-1}
HUB_THREADS=${HUB_THREADS:-1}
DUPLEX_BIN=${DUPLEX_BIN:-}
QUICK=0
# Measured publications per subscriber count: plain runs, perf, callgrind (callgrind runs the
# hub ~30x slower; a publication to 10,000 subscribers is ~30 M user-space instructions).
PLAIN_PUBS_1000=${PLAIN_PUBS_1000:-500}
PLAIN_PUBS_10000=${PLAIN_PUBS_10000:-100}
PERF_PUBS_1000=${PERF_PUBS_1000:-500}
PERF_PUBS_10000=${PERF_PUBS_10000:-100}
CG_PUBS_1000=${CG_PUBS_1000:-100}
CG_PUBS_10000=${CG_PUBS_10000:-20}
WARMUP_PUBS=${WARMUP_PUBS:-5}
# Baselines (one core, 100 B messages, per delivery) from the issue.
FWS_USER=1020
UWS_USER=510
UWS_TOTAL=10000

while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1 ;;
    --reps) REPS=$2; REPS_SET=1; shift ;;
    --subscribers) SUBSCRIBERS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --instr) INSTR=$2; shift ;;
    --no-build) BUILD=0 ;;
    --hub-threads) HUB_THREADS=$2; shift ;;
    --duplex) DUPLEX_BIN=$2; BUILD=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    PLAIN_PUBS_1000=100 PLAIN_PUBS_10000=20 PERF_PUBS_1000=100 PERF_PUBS_10000=20
    CG_PUBS_1000=20 CG_PUBS_10000=5 WARMUP_PUBS=2
    [ -n "${REPS_SET:-}" ] || REPS=1
fi
# pubs KIND N: measured publications for a run of KIND (plain, perf, callgrind) with N
# subscribers (the 1000 setting below 5,000 subscribers, the 10000 one from there).
pubs() {
    local kind=$1 n=$2 big=1000
    if [ "$n" -ge 5000 ]; then big=10000; fi
    case $kind in
    plain) eval echo "\$PLAIN_PUBS_$big" ;;
    perf) eval echo "\$PERF_PUBS_$big" ;;
    callgrind) eval echo "\$CG_PUBS_$big" ;;
    esac
}

START=$SECONDS
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_run "$HERE/results/fanout-$(date +%Y%m%d-%H%M%S)"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (hub on CPU $SERVER_CPU, generator on CPU $CLIENT_CPU)"

# Every subscriber is a descriptor in the generator and one in the hub (both started from
# this shell, so they inherit the limit).
max_n=0
for n in $SUBSCRIBERS; do [ "$n" -gt "$max_n" ] && max_n=$n; done
need=$((max_n + 1024))
if [ "$(ulimit -n)" -lt "$need" ]; then
    ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
[ "$(ulimit -n)" -ge "$need" ] ||
    die "ulimit -n is $(ulimit -n) (hard limit $(ulimit -Hn)); $need needed for $max_n subscribers"

INSTR=$(choose_instr "$INSTR") || exit 1
log "instructions: $INSTR; subscribers: $SUBSCRIBERS; data: $SIZE B; ulimit -n $(ulimit -n)"

[[ "$HUB_THREADS" =~ ^[1-9][0-9]*$ ]] || die "--hub-threads wants a positive number"
[ "$HUB_THREADS" -le "$(nproc)" ] || die "--hub-threads $HUB_THREADS: only $(nproc) CPUs"
if [ "$BUILD" = 1 ]; then
    log "building duplex (release)"
    (cd "$ROOT" && cargo build --release -q -p duplex-cli) || die "duplex build failed"
fi
if [ -z "$DUPLEX_BIN" ]; then
    target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [ -n "$target" ] || target="$ROOT/target"
    DUPLEX_BIN=$target/release/duplex
fi
[ -x "$DUPLEX_BIN" ] || die "no duplex binary at $DUPLEX_BIN"
# A copy, so that a rebuild elsewhere cannot swap the binary mid-run.
cp "$DUPLEX_BIN" "$RUN/bin/duplex"
DUPLEX=$RUN/bin/duplex
BUILD_SECS=$((SECONDS - START))

PORT=${PORT_BASE:-19400}
next_port() { PORT=$((PORT + 1)); }
record() { printf '%s\t%s\t%s\n' "$@" >>"$RAW"; }
CLK_TCK=$(getconf CLK_TCK)
NO_REP=glibc.cpu.x86_rep_movsb_threshold=1099511627776:glibc.cpu.x86_rep_stosb_threshold=1099511627776
new_sync() { SYNC=$RUN/sync/$1; rm -rf "$SYNC"; mkdir -p "$SYNC"; }
HUB_FLAGS=(--compression off --join-leave false --ping-interval 0 --max-connections 30000)
# One thread for a hub pinned to one core, when this build has the flag; --hub-threads N: N
# threads on CPUs 0..N-1.
HUB_CPUS=$SERVER_CPU
if "$DUPLEX" hub --help 2>/dev/null | grep -q -- '--threads'; then
    HUB_FLAGS+=(--threads "$HUB_THREADS")
    if [ "$HUB_THREADS" -gt 1 ]; then HUB_CPUS="0-$((HUB_THREADS - 1))"; fi
elif [ "$HUB_THREADS" != 1 ]; then
    die "this duplex has no hub --threads flag"
fi

# thread_ticks PID: "NAME TICKS" per thread name of the process (utime+stime in clock ticks,
# threads of the same name summed, spaces in names as underscores).
thread_ticks() {
    local task name
    for task in /proc/"$1"/task/*; do
        name=$(tr ' ' _ <"$task/comm" 2>/dev/null) || continue
        # Fields after the "(comm)" one: utime and stime are the 12th and 13th.
        sed 's/^.*) //' "$task/stat" 2>/dev/null | awk -v n="$name" '{ print n, $12 + $13 }'
    done | awk '{ t[$1] += $2 } END { for (n in t) print n, t[n] }'
}

# start_hub PORT LOG [WRAPPER...]: the hub pinned to SERVER_CPU; sets SERVER_PID (the hub
# itself: taskset and valgrind exec).
start_hub() {
    local port=$1 logfile=$2
    shift 2
    DUPLEX_LOG=warn taskset -c "$HUB_CPUS" "$@" "$DUPLEX" hub --listen "127.0.0.1:$port" \
        "${HUB_FLAGS[@]}" >"$logfile" 2>&1 &
    SERVER_PID=$!
    if ! wait_port "$port" "$SERVER_PID"; then
        tail -5 "$logfile" >&2
        die "the hub did not start listening on 127.0.0.1:$port"
    fi
}

# fanout_gen ID N PUBS: the generator against the hub on PORT, stepping through SYNC.
fanout_gen() {
    local id=$1 n=$2 m=$3
    new_sync "$id"
    gen "$RUN/logs/$id.gen.log" fanout "ws://127.0.0.1:$PORT/ws" --subscribers "$n" \
        --publishes "$m" --size "$SIZE" --warmup "$WARMUP_PUBS" --concurrency 200 \
        --timeout 30 --sync-dir "$SYNC"
}

# --- 1. plain ------------------------------------------------------------------------------
measure_plain() {
    local n=$1 m id="plain.$1.$2" result t0="" t1="" c0="" c1="" th0="" th1=""
    m=$(pubs plain "$n")
    next_port
    start_hub "$PORT" "$RUN/logs/$id.hub.log"
    fanout_gen "$id" "$n" "$m"
    if sync_wait "$SYNC/warm.ready"; then
        t0=$(cpu_ticks "$SERVER_PID") c0=$(cpu_busy "$SERVER_CPU") th0=$(thread_ticks "$SERVER_PID")
        touch "$SYNC/warm.go"
        if sync_wait "$SYNC/done.ready"; then
            t1=$(cpu_ticks "$SERVER_PID") c1=$(cpu_busy "$SERVER_CPU") th1=$(thread_ticks "$SERVER_PID")
            touch "$SYNC/done.go"
        fi
    fi
    if gen_finish "$RUN/logs/$id.gen.log" && [ -n "$t1" ]; then
        result=$RESULT
        local key d secs
        for key in publishes deliveries deliveries_per_sec first_p50_us first_p99_us \
            last_p50_us last_p99_us missing duplicate failed push_bytes subscribe_secs; do
            record "$n" "$key" "$(kv "$result" "$key")"
        done
        d=$(kv "$result" deliveries) secs=$(kv "$result" secs)
        read -r a0 u0 s0 _ <<<"$t0"
        read -r a1 u1 s1 _ <<<"$t1"
        read -r b0 q0 <<<"$c0"
        read -r b1 q1 <<<"$c1"
        record "$n" cpu_ns_per_delivery \
            "$(awk -v t=$((a1 - a0)) -v d="$d" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t / hz * 1e9 / d }')"
        record "$n" cpu_user_ns_per_delivery \
            "$(awk -v t=$((u1 - u0)) -v d="$d" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t / hz * 1e9 / d }')"
        record "$n" cpu_pct \
            "$(awk -v t=$((a1 - a0)) -v s="$secs" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t / hz / s * 100 }')"
        record "$n" cpu0_softirq_pct \
            "$(awk -v q=$((q1 - q0)) -v s="$secs" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", q / hz / s * 100 }')"
        # CPU time per hub thread (name) over the window, in ms.
        local name ticks
        while read -r name ticks; do
            record "$n" "thread:$name" \
                "$(awk -v n="$name" -v t="$ticks" -v hz="$CLK_TCK" '$1 == n { printf "%.0f", (t - $2) / hz * 1000; f = 1 } END { if (!f) printf "%.0f", t / hz * 1000 }' <<<"$th0")"
        done <<<"$th1"
    fi
    GEN_PID=""
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

# --- 2. instructions -----------------------------------------------------------------------
measure_instr() {
    local n=$1 m id="instr.$1" result counts=""
    m=$(pubs "$INSTR" "$n")
    next_port
    case $INSTR in
    callgrind)
        # Instrumentation off until the window (valgrind's ~4x instead of callgrind's ~50x
        # while N subscribers connect). glibc's `rep movsb/stosb` count one per byte under
        # callgrind: use its vector loops, as bench/compare.sh does.
        start_hub "$PORT" "$RUN/logs/$id.hub.log" env "GLIBC_TUNABLES=$NO_REP" \
            valgrind --tool=callgrind --dump-instr=no --instr-atstart=no \
            --callgrind-out-file="$RUN/cg/$id.%p.out"
        ;;
    *) start_hub "$PORT" "$RUN/logs/$id.hub.log" ;;
    esac
    fanout_gen "$id" "$n" "$m"
    if sync_wait "$SYNC/warm.ready"; then
        case $INSTR in
        callgrind)
            callgrind_control -i on "$SERVER_PID" >/dev/null 2>&1
            callgrind_control -z "$SERVER_PID" >/dev/null 2>&1
            ;;
        perf)
            PERF_OUT=$RUN/logs/$id.perf.csv
            perf stat -x, -e instructions,instructions:u -p "$SERVER_PID" -o "$PERF_OUT" &
            PERF_PID=$!
            sleep 0.3 # perf attaches asynchronously
            ;;
        esac
        touch "$SYNC/warm.go"
        if sync_wait "$SYNC/done.ready"; then
            case $INSTR in
            callgrind)
                callgrind_control -d "$SERVER_PID" >/dev/null 2>&1
                local dump
                dump=$(ls -v "$RUN/cg/$id".*.out.* 2>/dev/null | tail -1 || true)
                if [ -n "$dump" ]; then counts="$(python3 "$HERE/callgrind_top.py" --mem "$dump" | cut -d' ' -f1) -"; fi
                ;;
            perf)
                kill -INT "$PERF_PID" 2>/dev/null
                wait "$PERF_PID" 2>/dev/null || true
                PERF_PID=""
                counts="$(perf_value "$PERF_OUT" instructions:u) $(perf_value "$PERF_OUT" instructions)"
                ;;
            esac
        fi
        touch "$SYNC/done.go"
    fi
    if gen_finish "$RUN/logs/$id.gen.log" && [ -n "$counts" ]; then
        result=$RESULT
        local user total d
        read -r user total <<<"$counts"
        d=$(kv "$result" deliveries)
        record "$n" instr_publishes "$(kv "$result" publishes)"
        record "$n" instr_missing "$(kv "$result" missing)"
        if [ -n "$user" ]; then record "$n" instr_user "$((user / d))"; fi
        if [ -n "$total" ] && [ "$total" != - ]; then record "$n" instr_total "$((total / d))"; fi
        if [ "$INSTR" = callgrind ] && [ -n "${dump:-}" ]; then
            python3 "$HERE/callgrind_top.py" "$dump" 30 --per "$d" >"$RUN/cg/$id.top.txt"
            categorize "$dump" "$d" >"$RUN/cg/$id.categories.txt"
        fi
    fi
    GEN_PID=""
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

# categorize DUMP DELIVERIES: self cost per delivery grouped by what it is for.
categorize() {
    python3 - "$HERE/callgrind_top.py" "$1" "$2" <<'EOF'
import re, subprocess, sys
top, dump, per = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = subprocess.run([sys.executable, top, dump, "100000"], capture_output=True, text=True).stdout
groups = [
    ("tokio: wake-ups, scheduling, task polls", r"tokio::runtime::(scheduler|task|context)|LocalKey|wake_by|schedule|worker_to_notify"),
    ("tokio: socket readiness (read and write interest)", r"tokio::runtime::io|poll_evented|PollEvented|ReadBuf|registration"),
    ("duplex: frames, write queue, flush (WebSocket core)", r"^duplex::|duplex_proto::"),
    ("hub: outbox (direct writes, queue, filters)", r"duplex_hub::(node|outbox)::|vec_deque|VecDeque|Arc<duplex_hub::node::Delivery>"),
    ("hub: connection task (session select loop, its future state machines)", r"duplex_hub::session|duplex_hub::http::serve|accept_loop|poll_fn::PollFn"),
    ("hub: publish (HTTP request, JSON, broker, envelope)", r"duplex_hub::(http|json|memory|broker|metrics)|serde_json|httparse|Fanout"),
    ("libc: system call wrappers", r"^(writev|write|read|readv|recv|send|epoll_wait|__pthread_(en|dis)able_asynccancel|syscall)"),
    ("allocation, copies", r"malloc|free|realloc|memcpy|memmove|memset|cfree|_int_"),
]
sums = {g: 0.0 for g, _ in groups}
other = 0.0
total = 0.0
for line in out.splitlines()[1:]:
    m = re.match(r"\s*([\d,]+)\s+[\d.]+%\s+(.*)", line)
    if not m:
        continue
    cost = int(m.group(1).replace(",", ""))
    name = m.group(2)
    total += cost
    for g, pat in groups:
        if re.search(pat, name):
            sums[g] += cost
            break
    else:
        other += cost
print(f"{total / per:,.0f} user-space instructions per delivery (self cost, grouped)")
for g, _ in groups:
    print(f"{sums[g] / per:8,.0f}  {100 * sums[g] / total:4.1f}%  {g}")
print(f"{other / per:8,.0f}  {100 * other / total:4.1f}%  other")
EOF
}

for n in $SUBSCRIBERS; do
    for rep in $(seq "$REPS"); do
        log "$n subscribers: plain $rep/$REPS ($(pubs plain "$n") publications)"
        measure_plain "$n" "$rep"
    done
    if [ "$INSTR" != none ]; then
        log "$n subscribers: instructions ($INSTR, $(pubs "$INSTR" "$n") publications)"
        measure_instr "$n"
    fi
done

ELAPSED=$((SECONDS - START))
REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet -- crates 2>/dev/null || echo '+dirty')"
python3 - "$RAW" "$INSTR" "$SIZE" <<EOF >"$RUN/report.md"
import sys
raw, instr, size = sys.argv[1], sys.argv[2], sys.argv[3]
lists = {}
for line in open(raw):
    n, key, v = line.rstrip("\n").split("\t")
    if v != "":
        lists.setdefault(int(n), {}).setdefault(key, []).append(float(v))
# Medians over the plain repetitions; the worst for the correctness counts.
vals = {}
for n, keys in lists.items():
    for key, xs in keys.items():
        xs = sorted(xs)
        worst = key in ("missing", "duplicate", "failed", "instr_missing")
        vals.setdefault(n, {})[key] = str(int(xs[-1]) if worst else xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2)
def f(n, key, fmt="{:,.0f}", scale=1.0):
    v = vals.get(n, {}).get(key)
    if v in (None, ""):
        return "n/a"
    return fmt.format(float(v) * scale)
def ratio(n, key, base):
    v = vals.get(n, {}).get(key)
    return "n/a" if v in (None, "") else f"{float(v) / base:.2f}"
print(f"Hub fan-out (--threads $HUB_THREADS), {size} B of data per publication (pushes with the JSON envelope: "
      f"{float(vals[min(vals)].get('push_bytes', 0)):.0f} B), lock-step publications via POST /api/publish; "
      f"hub on CPU $HUB_CPUS, generator on CPU $CLIENT_CPU; instructions: {instr}"
      + (" (user space only: total n/a)" if instr == "callgrind" else "") + ".")
print()
print("| subscribers | publishes | deliveries/s | time to first p50 / p99 | time to last p50 / p99 "
      "| hub CPU ns/delivery (user+sys) | user instr/delivery | total instr/delivery "
      "| user ÷ 1,020 (fastwebsockets) | user ÷ 510 (uWS; target ≤ 1) | total ÷ 10,000 (target ≤ 1) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in sorted(vals):
    v = vals[n]
    ms = lambda k: f(n, k, "{:,.2f}", 1e-3)
    print(f"| {n:,} | {f(n, 'publishes')} / {f(n, 'instr_publishes')} | {f(n, 'deliveries_per_sec')} "
          f"| {ms('first_p50_us')} / {ms('first_p99_us')} ms | {ms('last_p50_us')} / {ms('last_p99_us')} ms "
          f"| {f(n, 'cpu_ns_per_delivery')} ({f(n, 'cpu_user_ns_per_delivery')} user) "
          f"| {f(n, 'instr_user')} | {f(n, 'instr_total')} "
          f"| {ratio(n, 'instr_user', $FWS_USER)} | {ratio(n, 'instr_user', $UWS_USER)} | {ratio(n, 'instr_total', $UWS_TOTAL)} |")
print()
bad = [(n, k, v[k]) for n, v in vals.items() for k in ("missing", "duplicate", "failed", "instr_missing") if v.get(k, "0") not in ("0", "")]
print("Missing/duplicate deliveries: " + ("none (offsets checked per subscriber)" if not bad else ", ".join(f"{n}: {k}={x}" for n, k, x in bad)) + ".")
print("Publishes: per plain run / instrumented run; plain figures are medians of $REPS runs. Time to first/last: from writing the publish request to the first/last "
      "subscriber's receipt, plain run; on 2 cores, time to last is bounded by the generator reading N sockets.")
print("Hub CPU: utime+stime of the hub process over the plain publish phase (loopback receive processing of its "
      "writes included), per delivery.")
print()
threads = sorted({k[len("thread:"):] for v in vals.values() for k in v if k.startswith("thread:")})
if $HUB_THREADS > 1 and threads:
    print(f"Hub with --threads $HUB_THREADS on CPUs $HUB_CPUS: CPU time per thread over the publish window of the "
          "plain runs (utime+stime, ms, median of the runs; threads of the same name summed); "
          "duplex-fanout-* write the deliveries.")
    print()
    print("| subscribers | " + " | ".join(threads) + " |")
    print("|---:|" + "---:|" * len(threads))
    for n in sorted(vals):
        print(f"| {n:,} | " + " | ".join(f(n, "thread:" + t) for t in threads) + " |")
    print()
print("run: bench/fanout.sh${ARGS:+ $ARGS}, $ELAPSED s (build $BUILD_SECS s), duplex $REV, "
      "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r), "
      "load average at start $LOADAVG_START")
EOF
for f in "$RUN"/cg/*.categories.txt; do
    [ -e "$f" ] || continue
    {
        echo
        echo "Callgrind, $(basename "$f" .categories.txt | sed 's/^instr\.//') subscribers: self cost per delivery by group"
        echo
        echo '```text'
        cat "$f"
        echo '```'
    } >>"$RUN/report.md"
done
cp "$RUN/report.md" "$HERE/results/fanout-latest.md"
cat "$RUN/report.md"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s (build $BUILD_SECS s); logs and dumps in $RUN"
