#!/usr/bin/env bash
# Run the Autobahn|Testsuite (wstest) against a WebSocket server or client,
# on loopback only, then summarize the report (last line: "N passed, N failed").
# Used by conformance/run-all.sh; see conformance/README.md.
set -uo pipefail
trap 'exit 130' INT; trap 'exit 143' TERM   # so the EXIT trap (client mode) runs

HERE=$(cd "$(dirname "$0")" && pwd)
WSTEST="${WSTEST:-${AUTOBAHN_HOME:-$HOME/.cache/autobahn-testsuite}/bin/wstest}"

usage() {
    cat >&2 <<'EOF'
usage: run.sh server URL [options]              test the server at URL (ws:// or wss://
                                                127.0.0.1:PORT/...; wss: any certificate)
       run.sh client [options] -- CLIENT_CMD... test a client: CLIENT_CMD must connect to
                                                ws://127.0.0.1:PORT ($AUTOBAHN_URL), read
                                                /getCaseCount, run /runCase?case=N&agent=A for
                                                each case, then call /updateReports?agent=A
options:
  --cases LIST          comma-separated case ids/patterns (default: "*", i.e. all)
  --exclude LIST        comma-separated patterns to skip, e.g. '9.*,12.*,13.*'
  --no-slow             skip 9.* (limits/performance: the slow part of the suite)
  --no-compression      skip 12.*,13.* (permessage-deflate)
  --agent NAME          agent name in the report (server: default "server";
                        client: only summarize this agent, exported as $AUTOBAHN_AGENT)
  --port PORT           client mode: fuzzing server port (default 9001)
  --out DIR             report folder (default ./autobahn-report/MODE)
  --allow-unimplemented count UNIMPLEMENTED cases as passed
  --strict              only OK/INFORMATIONAL behavior and closing behavior pass
                        (NON-STRICT, WRONG CODE, ... count as failed and are listed)
  --label TEXT          last line reads "TEXT: N passed, N failed"
  --timeout SECS        stop wstest (server mode) / the client command after SECS
                        (default 0: no limit); a timeout counts as a failure
  --verbose             show wstest output (default: only in DIR/wstest.log)
EOF
    exit 2
}
die() { echo "run.sh: ERROR: $*" >&2; exit 2; }
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }   # host port

mode=${1:-}; [ $# -gt 0 ] && shift
url=""
case "$mode" in
    server) url=${1:-}; [ -n "$url" ] || usage; shift ;;
    client) ;;
    *) usage ;;
esac

cases="*" exclude="" agent="" out="" port=9001 allow="" verbose="" strict="" label="" limit=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cases|--exclude|--agent|--out|--port|--label|--timeout)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --cases) cases=$2 ;; --exclude) exclude=${exclude:+$exclude,}$2 ;;
                --agent) agent=$2 ;; --out) out=$2 ;; --port) port=$2 ;;
                --label) label=$2 ;; --timeout) limit=$2 ;;
            esac
            shift 2 ;;
        --no-slow) exclude=${exclude:+$exclude,}9.*; shift ;;
        --no-compression) exclude=${exclude:+$exclude,}12.*,13.*; shift ;;
        --allow-unimplemented) allow=--allow-unimplemented; shift ;;
        --strict) strict=--strict; shift ;;
        --verbose) verbose=1; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ "$mode" = client ] && [ $# -eq 0 ] && die "client mode needs a command after --"
case "$limit" in ''|*[!0-9]*) die "--timeout needs a number of seconds (got '$limit')" ;; esac
# With a limit, run under timeout(1); --foreground keeps Ctrl-C working.
limited=(); [ "$limit" -gt 0 ] && limited=(timeout --foreground -k 10 "$limit")
[ -x "$WSTEST" ] || die "wstest not found at $WSTEST; run $HERE/install.sh first (or set WSTEST/AUTOBAHN_HOME)"
command -v python3 >/dev/null || die "python3 not found"

out=${out:-./autobahn-report/$mode}
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
# Drop the previous run's results so a stale report can never pass for this one.
rm -f "$out/index.json" "$out/index.html" "$out"/*_case_*.json "$out"/*_case_*.html
log="$out/wstest.log"

# Spec file for wstest. $1: fuzzingclient|fuzzingserver
write_spec() {
    python3 - "$1" "$out" "$cases" "$exclude" "$url" "${agent:-server}" "$port" > "$out/spec.json" <<'EOF'
import json, sys
kind, out, cases, exclude, url, agent, port = sys.argv[1:]
split = lambda s: [c.strip() for c in s.split(",") if c.strip()]
spec = {"outdir": out, "cases": split(cases), "exclude-cases": split(exclude),
        "exclude-agent-cases": {}}
if kind == "fuzzingclient":
    spec["servers"] = [{"agent": agent, "url": url}]
else:
    spec["url"] = "ws://127.0.0.1:%s" % port
print(json.dumps(spec, indent=2))
EOF
}

# Run wstest in the report folder, its output to the log (and the terminal with --verbose).
wstest() {
    if [ -n "$verbose" ]; then (cd "$out" && exec ${limited[@]+"${limited[@]}"} "$WSTEST" "$@") 2>&1 | tee "$log"
    else (cd "$out" && exec ${limited[@]+"${limited[@]}"} "$WSTEST" "$@") >"$log" 2>&1; fi
}

start=$(date +%s)
rc=0
if [ "$mode" = server ]; then
    # Loopback only: accept ws(s)://127.x.x.x, ws(s)://localhost, ws(s)://[::1]. wstest does not
    # check a wss:// server's certificate, so a self-signed one made for the run will do.
    hostport=$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(p.scheme, p.hostname or "", p.port or (443 if p.scheme == "wss" else 80))' "$url") \
        || die "cannot parse URL $url"
    read -r scheme host hport <<<"$hostport"
    case "$scheme" in ws|wss) ;; *) die "URL must start with ws:// or wss:// (got $url)" ;; esac
    case "$host" in 127.*|localhost|::1) ;; *) die "only loopback servers may be tested (got host '$host')" ;; esac
    [ "$host" = localhost ] && host=127.0.0.1
    listening "$host" "$hport" || die "nothing listens on $host:$hport; start the server first"
    write_spec fuzzingclient
    echo "run.sh: testing server $url (cases: $cases${exclude:+; excluded: $exclude}); log: $log"
    wstest -m fuzzingclient -s "$out/spec.json"
    rc=$?
    if [ $rc -eq 124 ] && [ "$limit" -gt 0 ]; then
        echo "run.sh: wstest did not finish within $limit s (server hung?); see $log" >&2
    elif [ $rc -ne 0 ]; then
        echo "run.sh: wstest exited with status $rc; see $log" >&2
    fi
else
    listening 127.0.0.1 "$port" && die "port $port is already in use on 127.0.0.1"
    write_spec fuzzingserver
    echo "run.sh: fuzzing server on ws://127.0.0.1:$port (cases: $cases${exclude:+; excluded: $exclude}); log: $log"
    (cd "$out" && exec "$WSTEST" -m fuzzingserver -s "$out/spec.json" -u 0) >"$log" 2>&1 &
    server_pid=$!
    trap 'kill "$server_pid" 2>/dev/null' EXIT
    for _ in $(seq 100); do
        listening 127.0.0.1 "$port" && break
        kill -0 "$server_pid" 2>/dev/null || die "wstest fuzzingserver exited early; see $log"
        sleep 0.2
    done
    listening 127.0.0.1 "$port" || die "wstest fuzzingserver did not listen on port $port within 20 s; see $log"
    clog="$out/client.log"
    echo "run.sh: running client: $*$([ -n "$verbose" ] || echo " (output: $clog)")"
    if [ -n "$verbose" ]; then
        AUTOBAHN_URL="ws://127.0.0.1:$port" AUTOBAHN_AGENT="$agent" ${limited[@]+"${limited[@]}"} "$@" 2>&1 | tee "$clog"
    else
        AUTOBAHN_URL="ws://127.0.0.1:$port" AUTOBAHN_AGENT="$agent" ${limited[@]+"${limited[@]}"} "$@" >"$clog" 2>&1
    fi
    rc=$?
    [ $rc -ne 0 ] && [ -z "$verbose" ] && { echo "run.sh: last lines of $clog:" >&2; tail -n 20 "$clog" >&2; }
    if [ $rc -eq 124 ] && [ "$limit" -gt 0 ]; then
        echo "run.sh: client command did not finish within $limit s" >&2
    elif [ $rc -ne 0 ]; then
        echo "run.sh: client command exited with status $rc" >&2
    fi
    sleep 0.5   # let the server finish writing the report
    kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null
    trap - EXIT
    [ -n "$verbose" ] && cat "$log"
fi
echo "run.sh: finished in $(( $(date +%s) - start )) s; report: $out/index.html"

python3 "$HERE/summarize.py" "$out" ${agent:+--agent "$agent"} $allow $strict ${label:+--label "$label"}
sum_rc=$?
[ $rc -eq 0 ] || exit $rc
exit $sum_rc
