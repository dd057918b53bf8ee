#!/usr/bin/env bash
# bench/soak.sh: the hub under a long, steady, mixed load: does it stay flat, is every stream exact?
#
#   bench/soak.sh              # 15,000 subscribers on 100 channels for 10 minutes (~12 min)
#   bench/soak.sh --quick      # 2,000 subscribers, 2 minutes (~3 min)
#
# Starts `duplex hub` (release build, pinned to CPU 0, --threads 1, an --api-key, ulimit -n up
# to 20,000) and `duplex bench soak` against it (pinned to CPU 1; see its --help): N
# clients subscribed evenly over C channels, R publications/s round robin over the channels via
# POST /api/publish, every minute 10% of the clients (random) close and come back with `since`
# (offline up to 3 s) and must recover exactly what they missed, 10 extra subscribe/unsubscribe
# pairs per second on random clients (half on a published channel, half on a fresh name). The
# generator checks every client's stream by offset and sequence number and prints a PROGRESS
# line every 30 s; at each line this script samples the hub: RSS (/proc/PID/status VmRSS), open
# descriptors (/proc/PID/fd) and CPU time (/proc/PID/stat utime+stime).
#
# Flat, defined: the samples from WARMUP seconds on (default 120 s: the first reconnect round
# and the channels' history filling up are behind by then; 60 s with --quick) are compared
# with the first of them: RSS flat if none is more than 10% above it, descriptors flat if all
# are within 2% of it, CPU flat if the busiest 60-s window after warm-up used at most 1.25x the
# CPU of the quietest (windows of one minute, so each holds one reconnect round). Exact:
# the generator found no gap, duplicate, out-of-order, mismatched or unexpected publication, no
# failed recovery, no dropped connection and nothing missing at the end (it exits non-zero
# otherwise).
#
# The table goes to bench/results/soak-latest.md (and stdout); logs stay in
# bench/results/soak-*/. Everything runs on 127.0.0.1; both processes are stopped by PID.
#
# Options (environment variables of the same name work too):
#   --connections N      subscribed clients (default 15000)
#   --channels C         channels (default 100)
#   --minutes M          minutes of steady load after subscribing (default 10)
#   --rate R             publications per second in all (default 200)
#   --quick              2,000 connections, 2 minutes, warm-up 60 s
#   --warmup S           seconds of the steady phase left out of the flatness verdicts
#   --report-every S     seconds between samples (default 30)
#   --hub-args "..."     extra `duplex hub` flags (for example limits a build adds)
#   --hub-env "K=V ..."  environment for the hub (for example MALLOC_ARENA_MAX=1)
#   --gen-args "..."     extra `duplex bench soak` flags (for example --reconnect-every 20,
#                        --reconnect-percent 0, --churn-rate 0: to bisect the load)
#   --seed N             the generator's seed (default: random, printed)
#   --no-build           use target/release/duplex as it is
#   --bin PATH           use this duplex binary (another build, for a before/after); implies
#                        --no-build
set -euo pipefail
ARGS="$*"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=lib.sh
source "$HERE/lib.sh"

CONNECTIONS=${CONNECTIONS:-15000}
CHANNELS=${CHANNELS:-100}
MINUTES=${MINUTES:-10}
RATE=${RATE:-200}
WARMUP=${WARMUP:-}
REPORT_EVERY=${REPORT_EVERY:-30}
HUB_ARGS=${HUB_ARGS:-}
HUB_ENV=${HUB_ENV:-}
GEN_ARGS_EXTRA=${GEN_ARGS_EXTRA:-}
SEED=${SEED:-}
BUILD=${BUILD:-1}
BIN=${BIN:-}
QUICK=0
while [ $# -gt 0 ]; do
    case $1 in
    --connections) CONNECTIONS=$2; shift ;;
    --channels) CHANNELS=$2; shift ;;
    --minutes) MINUTES=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --quick) QUICK=1 ;;
    --warmup) WARMUP=$2; shift ;;
    --report-every) REPORT_EVERY=$2; shift ;;
    --hub-args) HUB_ARGS=$2; shift ;;
    --hub-env) HUB_ENV=$2; shift ;;
    --gen-args) GEN_ARGS_EXTRA=$2; shift ;;
    --seed) SEED=$2; shift ;;
    --no-build) BUILD=0 ;;
    --bin) BIN=$2; BUILD=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    case " $ARGS " in *" --connections "*) ;; *) CONNECTIONS=2000 ;; esac
    case " $ARGS " in *" --minutes "*) ;; *) MINUTES=2 ;; esac
    [ -n "$WARMUP" ] || WARMUP=60
fi
[ -n "$WARMUP" ] || WARMUP=120

START=$SECONDS
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_run "$HERE/results/soak-$(date +%Y%m%d-%H%M%S)"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (hub on CPU $SERVER_CPU, generator on CPU $CLIENT_CPU)"

# Descriptors: one per client in the hub and one in the generator (both inherit this shell's
# limit), plus room for listeners, the publisher, reconnects whose old socket is not yet gone.
need=$((CONNECTIONS + 1024))
want=$((need > 20000 ? need : 20000))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then want=$hard; fi
ulimit -n "$want" 2>/dev/null || true
[ "$(ulimit -n)" -ge "$need" ] ||
    die "ulimit -n is $(ulimit -n) (hard limit $hard); $need needed for $CONNECTIONS connections"

if [ "$BUILD" = 1 ]; then
    log "building duplex (release)"
    (cd "$ROOT" && cargo build --release -q -p duplex-cli) || die "duplex build failed"
fi
target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target" ] || target="$ROOT/target"
# A copy, so that a rebuild elsewhere cannot swap the binary mid-run.
cp "${BIN:-$target/release/duplex}" "$RUN/bin/duplex"
DUPLEX=$RUN/bin/duplex
"$DUPLEX" bench soak --help >/dev/null 2>&1 || die "this duplex has no \`bench soak\`"
BUILD_SECS=$((SECONDS - START))

# A free loopback port (asked of the kernel, then handed to the hub).
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
API_KEY=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
HUB_FLAGS=(--listen "127.0.0.1:$PORT" --api-key "$API_KEY" --max-connections "$((CONNECTIONS + 2000))")
# One thread for a hub pinned to one core, when this build has the flag.
if "$DUPLEX" hub --help 2>/dev/null | grep -q -- '--threads'; then HUB_FLAGS+=(--threads 1); fi
# The soak is the backend publishing with the API key at --rate: the per-key HTTP publish
# limit (default 100/s, bursts of 200) would refuse it after the burst, so it is off here.
if "$DUPLEX" hub --help 2>/dev/null | grep -q -- '--http-publish-rate'; then
    HUB_FLAGS+=(--http-publish-rate 0)
fi
read -r -a EXTRA <<<"$HUB_ARGS"
HUB_FLAGS+=("${EXTRA[@]}")

log "soak: $CONNECTIONS connections, $CHANNELS channels, $MINUTES min, $RATE publications/s; warm-up $WARMUP s; ulimit -n $(ulimit -n)"
read -r -a HUB_ENV_LIST <<<"$HUB_ENV"
env DUPLEX_LOG=warn "${HUB_ENV_LIST[@]}" taskset -c "$SERVER_CPU" "$DUPLEX" hub "${HUB_FLAGS[@]}" >"$RUN/logs/hub.log" 2>&1 &
SERVER_PID=$!
if ! wait_port "$PORT" "$SERVER_PID"; then
    tail -5 "$RUN/logs/hub.log" >&2
    die "the hub did not start listening on 127.0.0.1:$PORT"
fi
CLK_TCK=$(getconf CLK_TCK)
SAMPLES=$RUN/samples.tsv
# sample LABEL [PROGRESS LINE]: one row of the hub's state, with the generator's counters.
# The hub's own counts come from /metrics (gauges: what it holds, to tell retention from the
# allocator's slack): name=value pairs in the sixth column, empty if /metrics did not answer
# within 2 s.
sample() {
    local label=$1 line=${2:-} fds counts
    fds=$(find "/proc/$SERVER_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    counts=$(curl -s --max-time 2 "http://127.0.0.1:$PORT/metrics" 2>/dev/null |
        sed -n 's/^duplex_hub_\(connections\|subscriptions\|channels\|history_bytes\) \([0-9-]*\)$/\1=\2/p' |
        tr '\n' ' ' || true)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$(rss_kib "$SERVER_PID")" "$fds" \
        "$(cpu_ticks "$SERVER_PID" | cut -d' ' -f1)" "$line" "$counts" >>"$SAMPLES"
}
: >"$SAMPLES"
sample idle

GEN_LOG=$RUN/logs/gen.log
GEN_ARGS=(bench soak "ws://127.0.0.1:$PORT/ws" --connections "$CONNECTIONS" --channels "$CHANNELS"
    --minutes "$MINUTES" --rate "$RATE" --report-every "$REPORT_EVERY" --api-key "$API_KEY"
    --sync-dir "$RUN/sync")
read -r -a GEN_EXTRA <<<"$GEN_ARGS_EXTRA"
GEN_ARGS+=("${GEN_EXTRA[@]}")
[ -z "$SEED" ] || GEN_ARGS+=(--seed "$SEED")
taskset -c "$CLIENT_CPU" "$DUPLEX" "${GEN_ARGS[@]}" >"$GEN_LOG" 2>&1 &
GEN_PID=$!

# Sample the hub at each PROGRESS line, as soon as it appears (polled every 0.2 s). Bounded:
# subscribing (60 s + 1 s per 50 clients), the steady phase, the drain (60 s), a margin.
deadline=$((SECONDS + 60 + CONNECTIONS / 50 + ${MINUTES%.*} * 60 + 60 + 120))
seen=0
while kill -0 "$GEN_PID" 2>/dev/null; do
    if [ "$SECONDS" -gt "$deadline" ]; then
        log "the generator overran its time bound: stopping it"
        kill -TERM "$GEN_PID" 2>/dev/null || true
        break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        log "the hub exited during the soak:"
        tail -5 "$RUN/logs/hub.log" >&2
        kill -TERM "$GEN_PID" 2>/dev/null || true
        break
    fi
    count=$(grep -c '^PROGRESS ' "$GEN_LOG" || true)
    while [ "$seen" -lt "$count" ]; do
        seen=$((seen + 1))
        sample progress "$(grep '^PROGRESS ' "$GEN_LOG" | sed -n "${seen}p")"
        log "$(grep '^PROGRESS ' "$GEN_LOG" | sed -n "${seen}p" | cut -d' ' -f2-9) | hub $(tail -1 "$SAMPLES" | cut -f2) KiB, $(tail -1 "$SAMPLES" | cut -f3) fds, $(tail -1 "$SAMPLES" | cut -f6)"
    done
    # The last line is sampled: the generator may close its connections.
    if [ -e "$RUN/sync/end.ready" ] && [ "$seen" -ge "$(grep -c '^PROGRESS ' "$GEN_LOG" || true)" ]; then
        touch "$RUN/sync/end.go"
    fi
    sleep 0.2
done
GEN_RC=0
wait "$GEN_PID" 2>/dev/null || GEN_RC=$?
# Lines printed just before the generator exited (sampled a little late, the hub still runs).
count=$(grep -c '^PROGRESS ' "$GEN_LOG" || true)
while [ "$seen" -lt "$count" ] && kill -0 "$SERVER_PID" 2>/dev/null; do
    seen=$((seen + 1))
    sample progress "$(grep '^PROGRESS ' "$GEN_LOG" | sed -n "${seen}p")"
done
GEN_PID=""
HUB_ALIVE=1
kill -0 "$SERVER_PID" 2>/dev/null || HUB_ALIVE=0
stop_pid "$SERVER_PID"
SERVER_PID=""
RESULT=$(grep '^RESULT ' "$GEN_LOG" | tail -1 || true)
[ -n "$RESULT" ] || { log "the generator ended without a result:"; tail -20 "$GEN_LOG" >&2; }

ELAPSED=$((SECONDS - START))
REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet -- crates 2>/dev/null || echo '+dirty')"
[ -z "$BIN" ] || REV="$BIN (--bin)"
python3 - "$SAMPLES" "$WARMUP" "$CLK_TCK" "$GEN_RC" "$HUB_ALIVE" "$RESULT" <<EOF >"$RUN/report.md"
import sys
samples, warmup, hz, gen_rc, hub_alive, result = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1", sys.argv[6]
def kv(line):
    return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
idle = None
rows = []
for line in open(samples):
    label, rss, fds, ticks, progress, counts = (line.rstrip("\n").split("\t") + [""] * 6)[:6]
    if label == "idle":
        idle = (int(rss), int(fds))
        continue
    p = kv(progress)
    rows.append(dict(t=float(p["t"]), rss=int(rss), fds=int(fds), cpu=int(ticks) / hz, p=p, m=kv("- " + counts)))
grid = rows
print(f"Hub soak: {int(float(kv(result).get('connections', 0)) if result else 0):,} subscribed connections on "
      f"{kv(result).get('channels', '?') if result else '?'} channels, {kv(result).get('rate', '?') if result else '?'} "
      f"publications/s via POST /api/publish, 10% reconnecting with since every minute, 10 subscribe/unsubscribe "
      f"pairs/s; hub on CPU $SERVER_CPU (--threads 1), generator on CPU $CLIENT_CPU.")
print()
print("| t (s) | hub RSS (MiB) | hub fds | hub CPU (s) | CPU % (interval) | open | published | checked | gaps / dup / out of order / mismatched / unexpected | reconnects | recoveries exact / failed | churn sub / unsub | dropped | hub channels / subscriptions / history (MiB) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
if idle:
    print(f"| idle | {idle[0] / 1024:,.1f} | {idle[1]:,} | | | | | | | | | | | |")
prev = None
for r in rows:
    p, m = r["p"], r["m"]
    pct = "" if prev is None or r["t"] <= prev["t"] else f"{100 * (r['cpu'] - prev['cpu']) / (r['t'] - prev['t']):.0f}"
    bad = " / ".join(p.get(k, "?") for k in ("gaps", "duplicates", "out_of_order", "mismatched", "unexpected"))
    print(f"| {r['t']:.0f} | {r['rss'] / 1024:,.1f} | {r['fds']:,} "
          f"| {r['cpu']:.1f} | {pct} | {int(p['open']):,} | {int(p['published']):,} | {int(p['checked']):,} | {bad} "
          f"| {int(p['reconnects']):,} | {p['recoveries_exact']} / {p['recoveries_failed']} "
          f"| {p['churn_subscribes']} / {p['churn_unsubscribes']} | {p['dropped']} "
          f"| {m.get('channels', '?')} / {m.get('subscriptions', '?')} / "
          f"{int(m.get('history_bytes', 0)) / 1048576:.2f} |")
    prev = r
print()
after = [r for r in grid if r["t"] >= warmup]
verdicts = []
if len(after) >= 2:
    ref = after[0]
    rss_max = max(r["rss"] for r in after[1:])
    rss_growth = 100 * (rss_max - ref["rss"]) / ref["rss"]
    rss_flat = rss_max <= 1.10 * ref["rss"]
    fds_dev = max(abs(r["fds"] - ref["fds"]) for r in after[1:]) / ref["fds"] * 100
    fds_flat = fds_dev <= 2.0
    last = after[-1]
    per_min = (last["rss"] - ref["rss"]) / 1024 / ((last["t"] - ref["t"]) / 60)
    verdicts.append(f"RSS flat after warm-up (every sample from t={ref['t']:.0f} s within +10% of its {ref['rss'] / 1024:,.1f} MiB): "
                    f"{'yes' if rss_flat else 'NO'} (highest {rss_max / 1024:,.1f} MiB, {rss_growth:+.1f}%; "
                    f"first to last {per_min:+,.2f} MiB/min)")
    verdicts.append(f"Descriptors flat after warm-up (within 2% of {ref['fds']:,}): {'yes' if fds_flat else 'NO'} (largest deviation {fds_dev:.1f}%)")
    # One-minute CPU windows from the reference sample on.
    windows = []
    i = 0
    while i < len(after):
        j = next((k for k in range(i + 1, len(after)) if after[k]["t"] - after[i]["t"] >= 60 - 1e-6), None)
        if j is None:
            break
        windows.append(100 * (after[j]["cpu"] - after[i]["cpu"]) / (after[j]["t"] - after[i]["t"]))
        i = j
    if len(windows) >= 2:
        cpu_flat = max(windows) <= 1.25 * min(windows)
        verdicts.append(f"CPU flat after warm-up (busiest one-minute window at most 1.25x the quietest): "
                        f"{'yes' if cpu_flat else 'NO'} ({', '.join(f'{w:.0f}%' for w in windows)})")
    elif windows:
        verdicts.append(f"CPU after warm-up: {windows[0]:.0f}% of one core (one one-minute window: no trend to judge)")
else:
    verdicts.append(f"Flatness not judged: fewer than 2 samples after the {warmup:.0f}-s warm-up (a longer --minutes or a shorter --warmup)")
if idle and rows:
    first = rows[0]
    n = int(first["p"]["open"]) or 1
    verdicts.append(f"Hub RSS per subscribed connection at t=0 (all subscribed, nothing published yet): "
                    f"({first['rss']:,} - {idle[0]:,} KiB idle) / {n:,} = {(first['rss'] - idle[0]) / n:.2f} KiB")
r = kv(result) if result else {}
exact = bool(result) and gen_rc == 0 and r.get("violations") == "0"
verdicts.append(
    "Every stream exact: " + ("yes" if exact else "NO") +
    (f" ({int(r['checked']):,} deliveries checked, {int(r['recovered_publications']):,} of them recovered; "
     f"{r['reconnects']} reconnects, {r['recoveries_exact']} recovered exactly, {r['recoveries_failed']} not; "
     f"gaps {r['gaps']}, duplicates {r['duplicates']}, out of order {r['out_of_order']}, mismatched {r['mismatched']}, "
     f"unexpected {r['unexpected']}, dropped {r['dropped']}, failures {r['failures']}, missing at the end {r['missing']})" if r else
     " (the generator gave no result)") + ("" if hub_alive else "; the hub EXITED during the run"))
for v in verdicts:
    print(f"- {v}")
print()
print("run: bench/soak.sh${ARGS:+ $ARGS}, $ELAPSED s (build $BUILD_SECS s), duplex $REV, "
      "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r), "
      "load average at start $LOADAVG_START")
EOF
cp "$RUN/report.md" "$HERE/results/soak-latest.md"
cat "$RUN/report.md"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s; logs in $RUN"
if [ "$GEN_RC" != 0 ] || [ "$HUB_ALIVE" != 1 ]; then exit 1; fi
