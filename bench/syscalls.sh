#!/usr/bin/env bash
# bench/syscalls.sh: system calls per echoed message for each server, from `strace -f -p PID`
# attached over an exact window of N echoes (the generator's --sync-dir points, as in
# compare.sh), and the average bytes each read/write-family call moved.
#
#   bench/syscalls.sh [--no-build] [--servers "duplex fastwebsockets tungstenite"]
#                     [--scenarios "100x20B 100x1KiB 10x64KiB 1000x20B"] [--messages N]
#
# strace stops the server at every system call, so the server runs many times slower than
# the generator: more messages are waiting per epoll_wait than in a free run, and calls that
# depend on batching (epoll_wait, EAGAIN reads) are undercounted. Read and write calls per
# message are what to compare.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=lib.sh
source "$HERE/lib.sh"

SERVERS=${SERVERS:-"duplex fastwebsockets tungstenite"}
SCENARIOS=${SCENARIOS:-"100x20B 100x1KiB 10x64KiB 1000x20B"}
MESSAGES=${MESSAGES:-5000}
PAYLOAD=${PAYLOAD:-binary}
BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
    --servers) SERVERS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --messages) MESSAGES=$2; shift ;;
    --text) PAYLOAD=text ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1" ;;
    esac
    shift
done
command -v strace >/dev/null || die "strace is needed (apt-get install strace)"

RUN=$HERE/results/syscalls-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN/logs" "$RUN/sync" "$RUN/bin"
SERVER_PID="" GEN_PID="" STRACE_PID=""
cleanup() {
    [ -n "$STRACE_PID" ] && kill -INT "$STRACE_PID" 2>/dev/null
    [ -n "$GEN_PID" ] && kill -TERM "$GEN_PID" 2>/dev/null
    [ -n "$SERVER_PID" ] && stop_pid "$SERVER_PID"
    true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$BUILD" = 1 ]; then
    build_all "$ROOT" "$RUN/bin"
else
    cp "$ROOT/target/release/duplex" "$ROOT/bench/peers/target/release/fastwebsockets-echo" \
        "$ROOT/bench/peers/target/release/tungstenite-echo" "$RUN/bin/"
    DUPLEX=$RUN/bin/duplex FWS=$RUN/bin/fastwebsockets-echo TUNG=$RUN/bin/tungstenite-echo
fi
BINARY_FLAG=()
if [ "$PAYLOAD" = binary ]; then BINARY_FLAG=(--binary); fi

# strace_window TRACEFILE STRACE-ARGS...: attach over the generator's warm..done window.
strace_window() {
    local out=$1
    shift
    sync_wait "$SYNC/warm.ready" || return 1
    strace -f -p "$SERVER_PID" -o "$out" "$@" 2>"$out.attach" &
    STRACE_PID=$!
    local i
    for i in $(seq 100); do
        grep -q "attached" "$out.attach" 2>/dev/null && break
        sleep 0.05
    done
    sleep 0.2
    touch "$SYNC/warm.go"
    sync_wait "$SYNC/done.ready" || return 1
    kill -INT "$STRACE_PID" 2>/dev/null
    wait "$STRACE_PID" 2>/dev/null || true
    STRACE_PID=""
    touch "$SYNC/done.go"
}

PORT=${PORT_BASE:-19500}
: >"$RUN/summary.tsv"
for scenario in $SCENARIOS; do
    conns=${scenario%%x*}
    s=${scenario#*x}
    case $s in *KiB) size=$((${s%KiB} * 1024)) ;; *B) size=${s%B} ;; esac
    for server in $SERVERS; do
        PORT=$((PORT + 1))
        id=$server.$scenario
        log "$id"
        start_server "$server" "$PORT" "$RUN/logs/$id.server.log"
        for pass in count sizes; do
            SYNC=$RUN/sync/$id.$pass
            mkdir -p "$SYNC"
            gen "$RUN/logs/$id.$pass.gen.log" echo "ws://127.0.0.1:$PORT/" --connections "$conns" \
                --size "$size" --warmup 0.5 --messages "$MESSAGES" --duration 600 \
                "${BINARY_FLAG[@]}" --sync-dir "$SYNC"
            if [ $pass = count ]; then
                strace_window "$RUN/$id.count" -c -S calls || true
            else
                strace_window "$RUN/$id.trace" -qq -e trace=read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg || true
            fi
            gen_finish "$RUN/logs/$id.$pass.gen.log" >/dev/null || true
        done
        stop_pid "$SERVER_PID"
        SERVER_PID=""
        msgs=$(kv "$RESULT" msgs)
        # strace -c table rows: % time, seconds, usecs/call, calls, [errors], syscall.
        awk -v srv="$server" -v sc="$scenario" -v n="$MESSAGES" '
            $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
                calls = $4; errors = (NF == 6) ? $5 : 0
                printf "%s\t%s\tcalls\t%s\t%.3f\t%.3f\n", srv, sc, $NF, calls / n, errors / n
            }' "$RUN/$id.count" >>"$RUN/summary.tsv"
        # Bytes per successful read/write-family call, and how many came back EAGAIN.
        awk -v srv="$server" -v sc="$scenario" -v n="$MESSAGES" '
            {
                line = $0; sub(/^[0-9]+ +/, "", line)
                name = line; sub(/\(.*/, "", name)
                if (line ~ /= -1 EAGAIN/) { eagain[name]++; next }
                if (match(line, /= [0-9]+$/)) {
                    v = substr(line, RSTART + 2) + 0; ok[name]++; bytes[name] += v
                }
            }
            END {
                for (k in ok) printf "%s\t%s\tbytes\t%s\t%.1f\t%.3f\n", srv, sc, k, bytes[k] / ok[k], ok[k] / n
                for (k in eagain) printf "%s\t%s\teagain\t%s\t%.3f\t0\n", srv, sc, k, eagain[k] / n
            }' "$RUN/$id.trace" >>"$RUN/summary.tsv"
    done
done

python3 - "$RUN/summary.tsv" "$MESSAGES" <<'EOF' | tee "$RUN/report.md"
import sys
from collections import defaultdict
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
n = sys.argv[2]
calls = defaultdict(dict); sizes = defaultdict(dict); eagain = defaultdict(dict)
order_s, order_sc = [], []
for srv, sc, kind, name, a, b in rows:
    if srv not in order_s: order_s.append(srv)
    if sc not in order_sc: order_sc.append(sc)
    if kind == "calls": calls[(srv, sc)][name] = (float(a), float(b))
    elif kind == "bytes": sizes[(srv, sc)][name] = (float(a), float(b))
    else: eagain[(srv, sc)][name] = float(a)
print(f"# System calls per echoed message ({n} echoes per window, strace -f)\n")
for sc in order_sc:
    print(f"## {sc}\n")
    print("| server | syscalls / msg | breakdown (calls / msg; errors) | bytes per read / write call |")
    print("|---|---|---|---|")
    for srv in order_s:
        c = calls.get((srv, sc), {})
        total = sum(v[0] for v in c.values())
        parts = ", ".join(
            f"{k} {v[0]:.2f}" + (f" ({v[1]:.2f} err)" if v[1] else "")
            for k, v in sorted(c.items(), key=lambda kv: -kv[1][0]) if v[0] >= 0.005)
        sz = ", ".join(f"{k} {v[0]:,.0f} B x {v[1]:.2f}" for k, v in sorted(sizes.get((srv, sc), {}).items()))
        ea = ", ".join(f"{k} EAGAIN {v:.2f}" for k, v in sorted(eagain.get((srv, sc), {}).items()))
        print(f"| {srv} | {total:.2f} | {parts} | {sz}{'; ' + ea if ea else ''} |")
    print()
EOF
log "raw strace output in $RUN"
