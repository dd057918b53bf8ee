#!/usr/bin/env bash
# Autobahn|Testsuite conformance run for duplex, both roles:
#   server suite: `duplex serve --echo` (the engine) on a free 127.0.0.1 port, tested by wstest's
#                 fuzzing client; then the same without compression cases for the tokio server
#                 (`--runtime tokio`: the protocol core is shared, the I/O driver is not);
#                 and every case again for the engine over wss:// (a self-signed certificate
#                 made with openssl for the run, in a temporary folder removed at exit), in
#                 the background beside the other suites
#   client suite: the `autobahn-client` example, run against wstest's fuzzing server
# Reports: conformance/reports/{server,client}/index.html (and index.json).
# The last line is "conformance: N passed, N failed"; exit status 1 if anything failed.
set -euo pipefail
trap 'exit 130' INT; trap 'exit 143' TERM   # run the EXIT trap on Ctrl-C / kill too

usage() {
    cat >&2 <<'EOF'
usage: conformance/run-all.sh [options]
  --cases LIST        comma-separated case ids/patterns to run (default "*": all)
  --exclude LIST      more patterns to skip (added to the default exclusions)
  --no-compression    skip 12.*,13.* (permessage-deflate: about 6 of the 12 minutes)
  --all               no default exclusions (same as DUPLEX_AUTOBAHN_EXCLUDE=)
  --strict            every case must be OK (INFORMATIONAL allowed), closing behavior
                      too; every other case is listed and counted failed (the default)
  --no-strict         NON-STRICT / WRONG CODE etc. pass (the suite's own pass rule)
  --server-only       only the server suites     --client-only   only the client suite
  --no-tokio-server   skip the second server suite (the tokio runtime, cases 1-11)
  --no-wss-server     skip the third server suite (the engine over wss://, every case)
  --no-build          do not run cargo build; use the binaries already in the target dir
  --timeout SECS      limit for each suite (default $DUPLEX_AUTOBAHN_TIMEOUT or 1200)
  --server-cmd CMD    server under test instead of duplex; {port} is replaced by the port
  --client-cmd CMD    client under test instead of autobahn-client; {url} is replaced
                      by the fuzzing server's URL (its agent must be "duplex")
  --verbose           show wstest's output
environment:
  DUPLEX_AUTOBAHN_EXCLUDE   default exclusions (default: none, every case runs)
  DUPLEX_AUTOBAHN_TIMEOUT   default --timeout
  CARGO_TARGET_DIR          where the release binaries are (default ./target)
  WSTEST / AUTOBAHN_HOME    where wstest is (see conformance/install.sh)
self-test of this harness with wstest's own peers (no Rust needed):
  W=~/.cache/autobahn-testsuite/bin/wstest
  conformance/run-all.sh --server-cmd "$W -m echoserver -w ws://127.0.0.1:{port}" \
                         --client-cmd "$W -m testeeclient -w {url} -i duplex"
EOF
    exit 2
}
die() { echo "run-all.sh: ERROR: $*" >&2; exit 2; }
say() { echo "run-all.sh: $*"; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CONF="$ROOT/conformance"
REPORTS="$CONF/reports"
AGENT=duplex

cases="*"
exclude="${DUPLEX_AUTOBAHN_EXCLUDE-}"
strict=--strict
do_server=1 do_client=1 do_tokio=1 do_wss=1 build=1 verbose=""
limit="${DUPLEX_AUTOBAHN_TIMEOUT:-1200}"
server_cmd="" client_cmd=""
add_exclude() { exclude=${exclude:+$exclude,}$1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --cases|--exclude|--timeout|--server-cmd|--client-cmd)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --cases) cases=$2 ;; --exclude) add_exclude "$2" ;; --timeout) limit=$2 ;;
                --server-cmd) server_cmd=$2 ;; --client-cmd) client_cmd=$2 ;;
            esac
            shift 2 ;;
        --no-compression) add_exclude '12.*,13.*'; shift ;;
        --all) exclude=""; shift ;;
        --strict) strict=--strict; shift ;;
        --no-strict) strict=""; shift ;;
        --server-only) do_client=0; shift ;;
        --client-only) do_server=0; shift ;;
        --no-tokio-server) do_tokio=0; shift ;;
        --no-wss-server) do_wss=0; shift ;;
        --no-build) build=0; shift ;;
        --verbose) verbose=--verbose; shift ;;
        -h|--help) usage ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$limit" in ''|*[!0-9]*) die "--timeout needs a number of seconds (got '$limit')" ;; esac
# Remove duplicate patterns (e.g. --no-compression on top of the default).
exclude=$(printf '%s' "$exclude" | tr ',' '\n' | awk 'NF && !seen[$0]++' | paste -sd, -)

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
DUPLEX_BIN="$TARGET/release/duplex"
CLIENT_BIN="$TARGET/release/examples/autobahn-client"

# Processes this script started (only these are ever killed).
pids=()
# The wss:// suite's certificate and key: made at run time, never kept.
tls_dir=""
cleanup() {
    local pid
    [ -n "$tls_dir" ] && rm -rf "$tls_dir"
    for pid in ${pids[@]+"${pids[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
forget() {   # a reaped PID may be reused by someone else: never signal it again
    local p keep=()
    for p in ${pids[@]+"${pids[@]}"}; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=(${keep[@]+"${keep[@]}"})
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A port that is free now: bound by the kernel's choice, then released. If someone
# takes it before we bind it again, the start below notices and tries another one.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

"$CONF/install.sh" || die "conformance/install.sh failed"
command -v python3 >/dev/null || die "python3 not found"

total_passed=0 total_failed=0
recap=()
# Add a suite's counts from the "LABEL: N passed, N failed" line in file $2; $3 is
# the suite's exit status (non-zero with no failed case still counts one failure).
count() {
    local label=$1 file=$2 rc=$3 line p=0 f=1
    line=$(grep -aE "^$label: [0-9]+ passed, [0-9]+ failed$" "$file" | tail -n1 || true)
    if [ -n "$line" ]; then
        read -r p f <<<"$(sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/' <<<"$line")"
    fi
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
    total_passed=$((total_passed + p)); total_failed=$((total_failed + f))
    recap+=("$label: $p passed, $f failed")
}
fail_suite() {   # label, reason
    echo "run-all.sh: $1: $2" >&2
    total_failed=$((total_failed + 1)); recap+=("$1: 0 passed, 1 failed ($2)")
}

build_ok() {   # cargo build args...
    [ "$build" = 1 ] || return 0
    say "cargo build $*"
    cargo build "$@"
}

# A self-signed certificate for 127.0.0.1 in a fresh temporary folder ($tls_dir).
make_certificate() {
    command -v openssl >/dev/null || { echo "run-all.sh: openssl not found (apt-get install openssl)" >&2; return 1; }
    tls_dir=$(mktemp -d "${TMPDIR:-/tmp}/duplex-conformance-tls.XXXXXX") || return 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" >"$tls_dir/openssl.log" 2>&1 \
        || { cat "$tls_dir/openssl.log" >&2; return 1; }
}

# ---------------------------------------------------------------- server suite
# Args: label, report folder, runtime (engine or tokio), extra exclusions, scheme (ws or wss).
run_server_suite() {
    local label=$1 out=$2 runtime=$3 more_exclude=$4 scheme=${5:-ws} cmd port pid="" tries started=0 rc=0
    local tls_args=()
    if [ "$scheme" = wss ]; then
        make_certificate || { fail_suite "$label" "could not make a certificate"; return; }
        tls_args=(--tls-cert "$tls_dir/cert.pem" --tls-key "$tls_dir/key.pem")
    fi
    local excluded=$exclude
    [ -n "$more_exclude" ] && excluded=${excluded:+$excluded,}$more_exclude
    mkdir -p "$out"
    rm -f "$out/index.json" "$out/index.html" "$out/summary.txt"   # no stale results
    if [ -z "$server_cmd" ]; then
        build_ok --release -p duplex-cli || { fail_suite "$label" "cargo build -p duplex-cli failed"; return; }
        [ -x "$DUPLEX_BIN" ] || { fail_suite "$label" "$DUPLEX_BIN not found (build it or drop --no-build)"; return; }
    fi
    for tries in 1 2 3; do
        port=$(free_port)
        if [ -n "$server_cmd" ]; then
            cmd=${server_cmd//\{port\}/$port}
            say "starting server under test: $cmd"
            bash -c "exec $cmd" </dev/null >"$out/server.log" 2>&1 &
        else
            say "starting $DUPLEX_BIN serve --echo --runtime $runtime --listen 127.0.0.1:$port ${tls_args[*]}"
            "$DUPLEX_BIN" serve --echo --runtime "$runtime" --listen "127.0.0.1:$port" ${tls_args[@]+"${tls_args[@]}"} \
                </dev/null >"$out/server.log" 2>&1 &
        fi
        pid=$!; pids+=("$pid")
        for _ in $(seq 200); do   # up to 20 s
            kill -0 "$pid" 2>/dev/null || break
            listening "$port" && { started=1; break; }
            sleep 0.1
        done
        # Still ours? (a bind failure makes it exit, maybe just after someone else answered)
        sleep 0.2
        if [ "$started" = 1 ] && kill -0 "$pid" 2>/dev/null; then break; fi
        started=0
        if kill -0 "$pid" 2>/dev/null; then
            echo "run-all.sh: server did not listen on 127.0.0.1:$port within 20 s" >&2
        else
            wait "$pid" && rc=0 || rc=$?
            forget "$pid"
            echo "run-all.sh: server exited with status $rc before listening (try $tries); log:" >&2
            tail -n 20 "$out/server.log" >&2 || true
        fi
        cleanup_one "$pid"
    done
    [ "$started" = 1 ] || { fail_suite "$label" "server did not start; see $out/server.log"; return; }

    rc=0
    "$CONF/run.sh" server "$scheme://127.0.0.1:$port" --agent "$AGENT" --out "$out" \
        --cases "$cases" ${excluded:+--exclude "$excluded"} $strict $verbose \
        --timeout "$limit" --label "$label" 2>&1 | tee "$out/summary.txt" || rc=$?
    if ! kill -0 "$pid" 2>/dev/null; then
        local src=0; wait "$pid" || src=$?
        echo "run-all.sh: the server under test died during the suite (status $src); log: $out/server.log" >&2
        tail -n 20 "$out/server.log" >&2 || true
        forget "$pid"; rc=1
    else
        cleanup_one "$pid" || echo "run-all.sh: WARNING: the server did not stop on SIGTERM within 5 s (killed)" >&2
    fi
    count "$label" "$out/summary.txt" "$rc"
}

# Stop one process we started: SIGTERM, wait up to 5 s, then SIGKILL (returns 1 then).
cleanup_one() {
    local pid=$1 i
    forget "$pid"
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
}

# ---------------------------------------------------------------- client suite
run_client_suite() {
    local label="conformance client" out="$REPORTS/client" port rc=0 tries cmd
    mkdir -p "$out"
    rm -f "$out/index.json" "$out/index.html" "$out/summary.txt"   # no stale results
    if [ -z "$client_cmd" ]; then
        build_ok --release -p duplex --example autobahn-client \
            || { fail_suite "$label" "cargo build --example autobahn-client failed"; return; }
        [ -x "$CLIENT_BIN" ] || { fail_suite "$label" "$CLIENT_BIN not found (build it or drop --no-build)"; return; }
    fi
    for tries in 1 2 3; do
        port=$(free_port)
        if [ -n "$client_cmd" ]; then
            cmd=${client_cmd//\{url\}/ws://127.0.0.1:$port}
            set -- bash -c "exec $cmd"
        else
            set -- "$CLIENT_BIN" "ws://127.0.0.1:$port"
        fi
        rc=0
        "$CONF/run.sh" client --port "$port" --agent "$AGENT" --out "$out" \
            --cases "$cases" ${exclude:+--exclude "$exclude"} $strict $verbose \
            --timeout "$limit" --label "$label" -- "$@" </dev/null 2>&1 | tee "$out/summary.txt" || rc=$?
        # run.sh exits 2 before running anything when the fuzzing server cannot take the port.
        if [ "$rc" -eq 2 ] && grep -qE 'already in use|exited early|did not listen' "$out/summary.txt"; then
            echo "run-all.sh: fuzzing server could not use port $port; trying another" >&2
            continue
        fi
        break
    done
    count "$label" "$out/summary.txt" "$rc"
}

# ------------------------------------------------------- a suite in the background
# wstest's fuzzing client is one single-threaded Python process that spends much of each
# case waiting, so the wss:// suite runs beside the others (about 7 of the run's minutes
# saved on 2 cores). Its output goes to OUT/run.log (printed once it ends) and its counts to
# OUT/counts; its own EXIT trap stops the server it started and removes its certificate.
bg_pid="" bg_out="" bg_label=""
start_background_suite() {   # label, report folder, then run_server_suite's arguments
    bg_label=$1 bg_out=$2; shift 2
    mkdir -p "$bg_out"; rm -f "$bg_out/counts"
    (
        trap 'exit 143' TERM; trap cleanup EXIT
        pids=() tls_dir="" total_passed=0 total_failed=0 recap=()
        t=$(date +%s)
        run_server_suite "$@"
        say "$bg_label took $(( $(date +%s) - t )) s"
        echo "$total_passed $total_failed" >"$bg_out/counts"
    ) >"$bg_out/run.log" 2>&1 &
    bg_pid=$!; pids+=("$bg_pid")
}
finish_background_suite() {
    [ -n "$bg_pid" ] || return 0
    local rc=0 p f
    wait "$bg_pid" || rc=$?
    forget "$bg_pid"
    echo; say "== $bg_label (ran in the background; exit status $rc) =="
    cat "$bg_out/run.log"
    if [ -s "$bg_out/counts" ] && read -r p f <"$bg_out/counts"; then
        [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
        total_passed=$((total_passed + p)); total_failed=$((total_failed + f))
        recap+=("$bg_label: $p passed, $f failed")
    else
        fail_suite "$bg_label" "the background suite ended without counts (status $rc); see $bg_out/run.log"
    fi
}

start=$(date +%s)
say "cases: $cases; excluded: ${exclude:-none}; $([ -n "$strict" ] && echo 'strict: every case must be OK' || echo 'not strict')"
if [ "$do_server" = 1 ]; then
    if [ -z "$server_cmd" ]; then   # build once, before two suites could both try
        build_ok --release -p duplex-cli || die "cargo build -p duplex-cli failed"
    fi
    if [ "$do_wss" = 1 ] && [ -z "$server_cmd" ]; then
        say "server suite (engine over wss://) starts in the background"
        start_background_suite "conformance server-wss" "$REPORTS/server-wss" \
            "conformance server-wss" "$REPORTS/server-wss" engine "" wss
    fi
    t=$(date +%s); run_server_suite "conformance server" "$REPORTS/server" engine ""
    say "server suite took $(( $(date +%s) - t )) s"
    if [ "$do_tokio" = 1 ] && [ -z "$server_cmd" ]; then
        t=$(date +%s)
        run_server_suite "conformance server-tokio" "$REPORTS/server-tokio" tokio '12.*,13.*'
        say "server suite (tokio) took $(( $(date +%s) - t )) s"
    fi
fi
if [ "$do_client" = 1 ]; then
    t=$(date +%s); run_client_suite; say "client suite took $(( $(date +%s) - t )) s"
fi

finish_background_suite

echo
echo "== conformance summary ($(( $(date +%s) - start )) s) =="
for line in ${recap[@]+"${recap[@]}"}; do echo "  $line"; done
[ "$do_server" = 1 ] && [ -f "$REPORTS/server/index.json" ] && echo "  server report: $REPORTS/server/index.html"
[ "$do_server" = 1 ] && [ -f "$REPORTS/server-wss/index.json" ] && echo "  wss server report: $REPORTS/server-wss/index.html"
[ "$do_client" = 1 ] && [ -f "$REPORTS/client/index.json" ] && echo "  client report: $REPORTS/client/index.html"
echo "conformance: $total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
