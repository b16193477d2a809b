#!/usr/bin/env bash
# Run every fuzz target for a bounded time and report executions and coverage; exit 1 if any target crashed.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]       (default 60)
#
# Environment: FUZZ_TARGETS (default: all five), FUZZ_WORK (work directory; default: a new temp dir),
# PYTHON (default python3), IOTDTLS_NO_ATHERIS=1 forces the fallback fuzzer.
# Each target starts from its committed seeds (fuzz/corpus/<target>, read-only here) plus whatever an earlier run
# left in $FUZZ_WORK/corpus/<target>; new inputs go to the latter. Crashing inputs are written to
# $FUZZ_WORK/crashes/<target>-crash-<sha1>; replay one with: python3 fuzz/<target>.py --replay FILE
set -uo pipefail

cd "$(dirname "$0")/.."
SECS="${1:-60}"
TARGETS="${FUZZ_TARGETS:-fuzz_record fuzz_handshake_messages fuzz_server fuzz_client fuzz_resumption}"
PY="${PYTHON:-python3}"
WORK="${FUZZ_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/iotdtls-fuzz.XXXXXX")}"
mkdir -p "$WORK/crashes"
export PYTHONDONTWRITEBYTECODE=1

declare -A MODULES=(
    [fuzz_record]="iotdtls/record.py"
    [fuzz_handshake_messages]="iotdtls/messages.py,iotdtls/pkmessages.py,iotdtls/reassembly.py,iotdtls/buffer.py,iotdtls/handshake_ext.py"
    [fuzz_server]="iotdtls/server.py,iotdtls/fairness.py,iotdtls/connection.py,iotdtls/handshake.py,iotdtls/handshake_pk.py,iotdtls/handshake_ext.py,iotdtls/transport.py,iotdtls/cookie.py,iotdtls/cid_routes.py"
    [fuzz_client]="iotdtls/connection.py,iotdtls/handshake.py,iotdtls/handshake_pk.py,iotdtls/handshake_ext.py,iotdtls/transport.py,iotdtls/reassembly.py"
    [fuzz_resumption]="iotdtls/sessions.py,iotdtls/tickets.py"
)

if [ -z "${IOTDTLS_NO_ATHERIS:-}" ] && "$PY" -c 'import atheris' 2>/dev/null; then
    DRIVER="atheris $("$PY" -c 'import importlib.metadata as m; print(m.version("atheris"))')"
else
    DRIVER="fallback (coverage-guided mutation loop, fuzz/_harness.py)"
fi
HAVE_COVERAGE=0
if "$PY" -c 'import coverage' 2>/dev/null; then HAVE_COVERAGE=1; fi

echo "fuzz: driver $DRIVER, $SECS s per target, work directory $WORK"
FAILED=0
SUMMARY=()
for t in $TARGETS; do
    corpus="$WORK/corpus/$t"
    mkdir -p "$corpus" "$WORK/crashes/earlier"
    # Crashes of an earlier run in the same work directory are kept aside, not counted again.
    find "$WORK/crashes" -maxdepth 1 -type f -name "$t-*" -exec mv -t "$WORK/crashes/earlier" {} + 2>/dev/null
    log="$WORK/$t.log"
    "$PY" "fuzz/$t.py" "$corpus" "fuzz/corpus/$t" \
        -max_total_time="$SECS" -print_final_stats=1 -max_len=4096 -timeout=25 -rss_limit_mb=2048 \
        -dict=fuzz/dtls.dict -artifact_prefix="$WORK/crashes/$t-" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    edges=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
    [ -n "$edges" ] || edges="arcs: $(sed -n 's/^stat::arcs_covered: *//p' "$log" | tail -n 1)"
    inputs=$(find "$corpus" "fuzz/corpus/$t" -type f | wc -l)
    cover="n/a (pip install coverage)"
    if [ "$HAVE_COVERAGE" = 1 ]; then
        data="$WORK/.coverage.$t"
        rm -f "$data"
        "$PY" -m coverage run --branch --data-file="$data" --include='iotdtls/*' \
            "fuzz/$t.py" --replay "$corpus" "fuzz/corpus/$t" >"$WORK/$t.replay.log" 2>&1
        "$PY" -m coverage report --data-file="$data" --include="${MODULES[$t]:-iotdtls/*}" >"$WORK/$t.coverage.txt" 2>&1
        cover="$(awk '/^TOTAL/ {print $NF}' "$WORK/$t.coverage.txt") of ${MODULES[$t]:-iotdtls/*} (lines+branches)"
    fi
    status=ok
    if [ "$rc" -ne 0 ] || ls "$WORK/crashes/$t-"* >/dev/null 2>&1; then
        status="CRASH (exit $rc)"
        FAILED=1
        echo "---- $t: last 40 lines of $log" >&2
        tail -n 40 "$log" >&2
        ls -l "$WORK/crashes/$t-"* >&2 2>/dev/null
    fi
    line="$t: $status; ${execs:-?} executions (${rate:-?}/s); ${edges}; corpus $inputs inputs; coverage $cover"
    echo "$line"
    [ "$HAVE_COVERAGE" = 1 ] && sed 's/^/    /' "$WORK/$t.coverage.txt"
    SUMMARY+=("$line")
done
echo
echo "fuzz summary ($DRIVER, $SECS s per target):"
printf '  %s\n' "${SUMMARY[@]}"
exit "$FAILED"
