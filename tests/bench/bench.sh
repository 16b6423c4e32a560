#!/usr/bin/env bash
# `make bench`: throughput and latency through the whole gateway beside the mock
# endpoint alone, measured in the same run on the same machine, with wrk.
# $1 = build directory. Tunables: BENCH_SECONDS (default 15), BENCH_CONNECTIONS (32),
# BENCH_THREADS (2), BENCH_STREAM=1 adds a streamed run.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STACK_BIN=$(cd "${1:-$ROOT/build}" && pwd)
STACK_DIR=$(mktemp -d /tmp/gw-bench.XXXXXX)
STACK_FAST=${STACK_FAST:-1}
SECONDS_RUN=${BENCH_SECONDS:-15}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
GW_LOG_LEVEL=warn
. "$ROOT/deploy/local/stack.sh"

cleanup() {
	stack_stop >/dev/null 2>&1
	[ -n "${PGBASE:-}" ] && [ "${PGBASE#/var/lib/postgresql/gw-}" != "$PGBASE" ] && rm -rf "$PGBASE"
	rm -rf "$STACK_DIR"
}
trap cleanup EXIT

stack_start 2>"$STACK_DIR/start.log" || { cat "$STACK_DIR/start.log"; exit 1; }

lua=$STACK_DIR/post.lua
cat >"$lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $DEV_KEY"
wrk.body = '{"model":"mock-llm","messages":[{"role":"user","content":"Benchmark prompt with a handful of words in it"}]}'
LUA

# Prints "rps p50_ms p99_ms errors" from wrk's --latency output.
run_wrk() { # url
	local out
	out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_RUN}s" --latency -s "$lua" "$1" 2>&1)
	local rps p50 p99 errs non2xx
	rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
	p50=$(awk '$1=="50%" {print $2}' <<<"$out")
	p99=$(awk '$1=="99%" {print $2}' <<<"$out")
	errs=$(awk '/Socket errors/ {print $0}' <<<"$out")
	non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
	echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${non2xx:-0} ${errs:+socket-errors}"
}

to_ms() { # wrk prints 1.23ms, 456.00us, 1.20s
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
		else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
		else print "?" }'
}

echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk: $THREADS threads, $CONNS connections, ${SECONDS_RUN}s per run, non-streamed chat completion"
# Warm-up so both runs start from a steady state.
wrk -t1 -c4 -d2s -s "$lua" "$INGRESS_URL/v1/chat/completions" >/dev/null 2>&1
read -r e_rps e_p50 e_p99 e_bad _ < <(run_wrk "http://127.0.0.1:$MOCK_PORT/v1/chat/completions")
read -r g_rps g_p50 g_p99 g_bad _ < <(run_wrk "$INGRESS_URL/v1/chat/completions")
printf '\n%-22s %12s %10s %10s %8s\n' "target" "req/s" "p50 ms" "p99 ms" "non-2xx"
printf '%-22s %12s %10s %10s %8s\n' "endpoint alone" "$e_rps" "$e_p50" "$e_p99" "$e_bad"
printf '%-22s %12s %10s %10s %8s\n' "through gateway" "$g_rps" "$g_p50" "$g_p99" "$g_bad"
awk -v g="$g_rps" -v e="$e_rps" -v gp="$g_p50" -v ep="$e_p50" 'BEGIN {
	if (e > 0) printf "\ngateway/endpoint throughput ratio: %.3f\n", g / e
	printf "added p50 latency: %.3f ms\n", gp - ep }'
audit_rows=$("$PGBIN/psql" -X -tA -h "$PGSOCK" -p "$PGPORT" -U postgres -d gateway -c "select count(*) from audit.audit_events" 2>/dev/null)
echo "audit rows written during the run: ${audit_rows:-?}"
