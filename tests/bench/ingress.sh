#!/usr/bin/env bash
# Ingress figures with wrk on this machine: the connection layer's cost (/health on the
# client port, through the filter, beside the admin port without it), the rejection
# path (a 400 made by ingress alone), a chat completion through the whole pipeline,
# and memory per idle connection. $1 = build directory. BENCH_SECONDS (default 5),
# BENCH_CONNECTIONS (32), BENCH_IDLE (idle connections to hold, 1000).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STACK_BIN=$(cd "${1:-$ROOT/build}" && pwd)
STACK_DIR=$(mktemp -d /tmp/gw-bench-ingress.XXXXXX)
STACK_FAST=1
SECS=${BENCH_SECONDS:-5}
CONNS=${BENCH_CONNECTIONS:-32}
IDLE=${BENCH_IDLE:-1000}
GW_LOG_LEVEL=warn
# The idle-connection run holds BENCH_IDLE sockets from one address.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export GW_MAX_CONNECTIONS=100000 GW_MAX_CONNECTIONS_PER_IP=100000
. "$ROOT/deploy/local/stack.sh"
. "$ROOT/tests/integration/ingress_lib.sh"
T_FAIL=0
trap 'ingress_cleanup bench_ingress' EXIT
stack_start 2>"$STACK_DIR/start.log" || { cat "$STACK_DIR/start.log"; exit 1; }

mklua() { # file body
	cat >"$1" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $DEV_KEY"
wrk.body = '$2'
LUA
}
mklua "$STACK_DIR/chat.lua" '{"model":"mock-llm","messages":[{"role":"user","content":"Benchmark prompt with a handful of words in it"}]}'
mklua "$STACK_DIR/bad.lua" '{"model":'
run() { # name url [lua]
	local out
	out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" --latency ${3:+-s "$3"} "$2" 2>&1)
	printf '%-44s %10s req/s  p50 %8s  p99 %8s  %s\n' "$1" \
		"$(awk '/Requests\/sec/ {print $2}' <<<"$out")" "$(awk '$1=="50%" {print $2}' <<<"$out")" \
		"$(awk '$1=="99%" {print $2}' <<<"$out")" "$(grep -o 'Non-2xx or 3xx responses: [0-9]*' <<<"$out")"
}
echo "ingress bench: ${SECS}s per run, $CONNS connections, $(nproc) cores (shared)"
run "GET /health, admin port (plain evhttp)" "http://127.0.0.1:$INGRESS_ADMIN/health"
run "GET /health, client port (connection layer)" "$INGRESS_URL/health"
run "POST invalid JSON -> 400 (ingress alone)" "$INGRESS_URL/v1/chat/completions" "$STACK_DIR/bad.lua"
run "POST chat completion (whole pipeline)" "$INGRESS_URL/v1/chat/completions" "$STACK_DIR/chat.lua"

pid=$(stack_pid ingress)
rss0=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
FDS=()
for _ in $(seq 1 "$IDLE"); do
	exec {fd}<>"/dev/tcp/127.0.0.1/$HTTP_PORT" || break
	FDS+=("$fd")
done
sleep 1
rss1=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
open=$(curl -sS "$INGRESS_URL/metrics" | awk '/^gw_ingress_connections_open/ {print $2}')
echo "idle connections held: ${#FDS[@]} (gw_ingress_connections_open $open); RSS ${rss0} kB -> ${rss1} kB" \
	"($(((rss1 - rss0) * 1024 / (${#FDS[@]} > 0 ? ${#FDS[@]} : 1))) bytes each)"
run "POST chat completion with the idle ones open" "$INGRESS_URL/v1/chat/completions" "$STACK_DIR/chat.lua"
for fd in "${FDS[@]}"; do eval "exec $fd>&-"; done
