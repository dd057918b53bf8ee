#!/usr/bin/env bash
# Runs every cargo-fuzz target of duplex for SECONDS each (default 5), two at a time, and
# prints per target the executions libFuzzer did. Exit status non-zero if any target crashed
# (or failed to build); the crash's input is in fuzz/artifacts/<target>/, and its path is
# printed. Ends with one line "fuzz: N passed, N failed" (one per target).
#
#   fuzz/run.sh                 every target, 5 s each
#   fuzz/run.sh 600             every target, 10 minutes each
#   fuzz/run.sh 60 inflate      only the named targets
#   FUZZ_JOBS=1 fuzz/run.sh     one target at a time (default 2)
#
# cargo-fuzz needs nightly features; this runs on a stable toolchain with RUSTC_BOOTSTRAP=1,
# and installs cargo-fuzz when `cargo fuzz` is missing.
set -euo pipefail

FUZZ=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$FUZZ"

seconds=${1:-5}
shift || true
case "$seconds" in
    ''|*[!0-9]*) echo "fuzz/run.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac
jobs=${FUZZ_JOBS:-2}

if ! command -v cargo >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build for every target (release, debug assertions and overflow checks, AddressSanitizer:
# cargo fuzz's defaults), so the runs below do not compile in parallel.
if ! cargo fuzz build 2>&1; then
    echo "fuzz/run.sh: build failed"
    echo "fuzz: 0 passed, ${#targets[@]} failed"
    exit 1
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Runs one target into $logs/<target>.log and records its exit status in $logs/<target>.rc.
run_one() {
    local target=$1 rc=0
    mkdir -p "corpus/$target" "artifacts/$target"
    # -timeout: an input that takes 10 s is a hang, reported like a crash. The outer timeout
    # only guards against a run that does not stop by itself.
    timeout --kill-after=10 $((seconds + 300)) \
        cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        -artifact_prefix="artifacts/$target/" \
        >"$logs/$target.log" 2>&1 </dev/null || rc=$?
    echo "$rc" >"$logs/$target.rc"
}

running=0
for target in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_one "$target" &
    running=$((running + 1))
done
wait || true

passed=0 failed=0
for target in "${targets[@]}"; do
    rc=$(cat "$logs/$target.rc" 2>/dev/null || echo 1)
    execs=$(grep -aoE 'stat::number_of_executed_units: *[0-9]+' "$logs/$target.log" | grep -oE '[0-9]+$' | tail -n1 || true)
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1))
        echo "fuzz: $target: ok, ${execs:-?} executions in ${seconds} s"
    else
        failed=$((failed + 1))
        echo "fuzz: $target: FAILED (exit status $rc) after ${execs:-?} executions; from its log:"
        # From the panic or sanitizer report on; the whole end when there is none (build error).
        # (`|| true`: head closing the pipe early is not an error here.)
        report=$(sed -n '/panicked at\|==ERROR\|ERROR: libFuzzer\|ALARM: working on the last Unit/,+30p' \
            "$logs/$target.log" | head -n 40 || true)
        [ -n "$report" ] || report=$(tail -n 40 "$logs/$target.log" || true)
        sed 's/^/    /' <<<"$report"
        artifact=$(grep -aoE '(Test unit written to|Running:) [^ ]*artifacts/[^ ]+' "$logs/$target.log" | tail -n1 | awk '{print $NF}' || true)
        if [ -n "$artifact" ]; then
            echo "fuzz: $target: crash input: fuzz/${artifact#"$FUZZ"/}"
            echo "fuzz: $target: reproduce with: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $target ${artifact#"$FUZZ"/})"
        fi
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
