# Shared by bench/compare.sh and bench/syscalls.sh (sourced, not run).
#
# Servers run pinned to CPU 0, generators to CPU 1; every process is started here and stopped
# by its PID, never by name. Everything talks over 127.0.0.1.

SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Binaries, set by build_all (copies, so a rebuild elsewhere cannot swap them mid-run).
DUPLEX=""
FWS=""
TUNG=""

# build_all ROOT BINDIR: release builds of duplex and the peers, copied into BINDIR.
build_all() {
    local root=$1 bindir=$2
    mkdir -p "$bindir"
    log "building duplex (release)"
    (cd "$root" && cargo build --release -q -p duplex-cli) || die "duplex build failed"
    log "building the peer echo servers (release)"
    (cd "$root/bench/peers" && cargo build --release --locked -q) || die "peer build failed"
    local target
    target=$(cd "$root" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [ -n "$target" ] || target="$root/target"
    cp "$target/release/duplex" "$bindir/duplex"
    cp "$root/bench/peers/target/release/fastwebsockets-echo" "$bindir/"
    cp "$root/bench/peers/target/release/tungstenite-echo" "$bindir/"
    DUPLEX=$bindir/duplex
    FWS=$bindir/fastwebsockets-echo
    TUNG=$bindir/tungstenite-echo
}

# The command line of server NAME on PORT.
server_cmd() {
    local name=$1 port=$2
    case $name in
    duplex)
        # `duplex serve` runs a multi-thread runtime by default; ask for one worker where the
        # flag exists. Pinned to one core either way.
        local threads=()
        if "$DUPLEX" serve --help 2>/dev/null | grep -q -- '--threads'; then threads=(--threads 1); fi
        echo "$DUPLEX" serve --echo --listen "127.0.0.1:$port" "${threads[@]}"
        ;;
    fastwebsockets) echo "$FWS" "127.0.0.1:$port" ;;
    tungstenite) echo "$TUNG" "127.0.0.1:$port" ;;
    *) die "unknown server $name" ;;
    esac
}

# wait_port PORT PID: until something accepts on 127.0.0.1:PORT (30 s; valgrind is slow).
wait_port() {
    local port=$1 pid=$2 i
    for i in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# start_server NAME PORT LOG [WRAPPER...]: starts it pinned to SERVER_CPU, sets SERVER_PID.
# The wrapper (valgrind, strace) goes between taskset and the server, so SERVER_PID is the
# measured process itself (taskset and valgrind exec).
start_server() {
    local name=$1 port=$2 logfile=$3
    shift 3
    local cmd
    read -r -a cmd <<<"$(server_cmd "$name" "$port")"
    DUPLEX_LOG=warn taskset -c "$SERVER_CPU" "$@" "${cmd[@]}" >"$logfile" 2>&1 &
    SERVER_PID=$!
    if ! wait_port "$port" "$SERVER_PID"; then
        tail -5 "$logfile" >&2
        die "$name did not start listening on 127.0.0.1:$port"
    fi
}

# stop_pid PID: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

# gen ARGS...: the generator pinned to CLIENT_CPU, in the background; sets GEN_PID.
gen() {
    local logfile=$1
    shift
    taskset -c "$CLIENT_CPU" "$DUPLEX" bench "$@" >"$logfile" 2>&1 &
    GEN_PID=$!
}

# sync_wait FILE: until FILE exists (the generator reached a sync point). Fails if the
# generator died or after 600 s.
sync_wait() {
    local file=$1 deadline=$((SECONDS + 600))
    while [ ! -e "$file" ]; do
        if ! kill -0 "$GEN_PID" 2>/dev/null; then return 1; fi
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.01
    done
}

# gen_finish LOG: waits for the generator (in this shell: it is our child), then sets RESULT
# to its RESULT line; fails without one.
gen_finish() {
    local logfile=$1
    wait "$GEN_PID" 2>/dev/null || true
    GEN_PID=""
    RESULT=$(grep '^RESULT ' "$logfile" | tail -1)
    if [ -z "$RESULT" ]; then
        log "generator failed ($logfile):"
        tail -5 "$logfile" >&2
        return 1
    fi
}

# kv LINE KEY: the value of KEY=value in a RESULT line.
kv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }

# cpu_busy CPU: ticks of one CPU so far (/proc/stat): "busy softirq" (busy includes softirq).
cpu_busy() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, $8 }' /proc/stat
}

# cpu_ticks PID: "utime+stime utime stime minflt" of the whole process (all threads), CPU
# time in clock ticks, minor page faults as a count.
cpu_ticks() { awk '{ print $14 + $15, $14, $15, $10 }' "/proc/$1/stat"; }

# rss_kib PID: resident set size in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# threads PID: how many threads the process has.
nthreads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }

# perf_usable: hardware instruction counters can be read here.
perf_usable() {
    command -v perf >/dev/null 2>&1 || return 1
    perf stat -x, -e instructions true 2>&1 >/dev/null | grep -qE '^[0-9]+,'
}

# callgrind_usable: valgrind with callgrind_control is installed.
callgrind_usable() {
    command -v valgrind >/dev/null 2>&1 && command -v callgrind_control >/dev/null 2>&1
}

# callgrind_total FILE: the instruction total (Ir) of a callgrind dump.
callgrind_total() { awk '/^summary:/ { print $2; exit }' "$1"; }

# perf_value FILE EVENT: the count of EVENT in `perf stat -x,` output (empty if not counted).
perf_value() { awk -F, -v ev="$2" '$3 == ev && $1 ~ /^[0-9]+$/ { print $1; exit }' "$1"; }

# start_run DIR: the run's folders and raw results file (RUN, RAW), and a trap that stops
# whatever the harness started (SERVER_PID, GEN_PID, PERF_PID), by PID, however it exits.
start_run() {
    RUN=$1
    mkdir -p "$RUN/logs" "$RUN/sync" "$RUN/cg" "$RUN/bin"
    RAW=$RUN/raw.tsv
    : >"$RAW"
    SERVER_PID="" GEN_PID="" PERF_PID=""
    trap run_cleanup EXIT
    trap 'exit 130' INT TERM
    command -v taskset >/dev/null || die "taskset (util-linux) is needed"
    command -v python3 >/dev/null || die "python3 is needed for the report"
}

run_cleanup() {
    [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null
    [ -n "$GEN_PID" ] && kill -TERM "$GEN_PID" 2>/dev/null
    [ -n "$SERVER_PID" ] && stop_pid "$SERVER_PID"
    true
}

# choose_instr auto|perf|callgrind|none: how instructions are counted here. `auto` takes
# hardware counters (perf) where they work, else callgrind, else nothing; prints the choice.
choose_instr() {
    case $1 in
    auto)
        if perf_usable; then echo perf
        elif callgrind_usable; then echo callgrind
        else log "warning: no perf counters and no valgrind: instructions not measured"; echo none
        fi ;;
    perf) perf_usable || die "perf cannot count instructions here"; echo perf ;;
    callgrind) callgrind_usable || die "valgrind/callgrind_control not installed"; echo callgrind ;;
    none) echo none ;;
    *) die "--instr: auto, perf, callgrind or none" ;;
    esac
}
