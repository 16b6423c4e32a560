#!/usr/bin/env bash
# ingress at scale and under faults: two copies side by side under concurrent load
# (each client must get its own answer, checked by content), the broker taken down and
# brought back (503 with Retry-After fast, /ready, recovery by itself), connection
# limits (total, per address) and the keep-alive idle timeout. $1 = build directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STACK_BIN=$(cd "$1" && pwd)
STACK_DIR=$(mktemp -d /tmp/gw-ingress-faults.XXXXXX)
STACK_FAST=1
GW_REQUEST_TIMEOUT=10
. "$ROOT/deploy/local/stack.sh"
. "$HERE/ingress_lib.sh"
. "$ROOT/tests/lib/assert.sh"
# The broker's admin listener takes POST /mock/brokers/down|up (deploy/local/broker.c).
BROKER_ADMIN=$(stack_free_port)
eval "orig2_$(declare -f stack_spawn)"
stack_spawn() {
	if [ "$1" = broker ]; then
		shift
		orig2_stack_spawn broker env GW_ADMIN_LISTEN="127.0.0.1:$BROKER_ADMIN" "$@"
		return
	fi
	orig2_stack_spawn "$@"
}
FDS=()
cleanup() {
	for fd in "${FDS[@]}"; do eval "exec $fd>&-" 2>/dev/null; done
	ingress_cleanup ingress_faults
}
trap cleanup EXIT

if ! stack_start 2>"$STACK_DIR/start.log"; then
	cat "$STACK_DIR/start.log"
	not_ok "stack starts"
	t_summary
	exit 1
fi
ok "stack starts"
KEY=$DEV_KEY
T=$STACK_DIR/t
mkdir -p "$T"
P2=$(stack_free_port)
ingress_spawn ingress-2 "$P2" 1
check "second ingress copy (reply partition 1) starts" eventually 20 curl -fsS -o /dev/null "http://127.0.0.1:$P2/ready"

# --- two copies under load: every client gets its own answer ---
N=${INGRESS_LOAD_N:-80}
one() { # i port
	local b="{\"model\":\"mock-llm\",\"messages\":[{\"role\":\"user\",\"content\":\"load test client $1\"}]}"
	curl -sS --max-time 20 "http://127.0.0.1:$2/v1/chat/completions" -H "Authorization: Bearer $KEY" \
		-H 'Content-Type: application/json' -d "$b" >"$T/got.$1" 2>/dev/null
	curl -sS "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" -H 'Content-Type: application/json' \
		-d "$b" >"$T/want.$1"
}
export -f one
export KEY T MOCK_PORT
t0=$(date +%s%N)
seq 1 "$N" | awk -v a="$HTTP_PORT" -v b="$P2" '{print $1, ($1 % 2 ? a : b)}' |
	xargs -P 16 -n 2 bash -c 'one "$0" "$1"'
t1=$(date +%s%N)
same=0
for i in $(seq 1 "$N"); do cmp -s "$T/got.$i" "$T/want.$i" && same=$((same + 1)); done
check_eq "two copies, $N concurrent clients (16 at a time): every answer is the client's own" "$N" "$same"
echo "     ($N requests in $(((t1 - t0) / 1000000)) ms through two copies)"
late=$(curl -sS "http://127.0.0.1:$P2/metrics" | awk '/^gw_ingress_late_replies_total/ {print $2}')
check_eq "copy 2 received no reply meant for copy 1" 0 "${late:-missing}"

# --- broker unreachable ---
body='{"model":"mock-llm","messages":[]}'
check "broker admin hook: brokers down" curl -fsS -X POST -o /dev/null "http://127.0.0.1:$BROKER_ADMIN/mock/brokers/down"
not_ready() { [ "$(curl -sS -o /dev/null -w '%{http_code}' "$INGRESS_URL/ready")" = 503 ]; }
check "broker down: /ready fails" eventually 5 not_ready
check_contains "broker down: /ready says why" "$(curl -sS "$INGRESS_URL/ready")" "broker unreachable"
out=$(curl -sS -D "$T/h503" -o "$T/b503" -w '%{http_code} %{time_total}' --max-time 5 "$INGRESS_URL/v1/chat/completions" \
	-H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$body")
check_eq "broker down: new requests get 503" 503 "${out% *}"
check "broker down: answered within a second (${out#* }s)" awk -v t="${out#* }" 'BEGIN{exit !(t < 1)}'
check "broker down: Retry-After" grep -qi '^retry-after: [0-9]' "$T/h503"
check_eq "broker down: OpenAI shape" broker_unavailable "$(jq -r .error.code "$T/b503")"
check "broker admin hook: brokers up" curl -fsS -X POST -o /dev/null "http://127.0.0.1:$BROKER_ADMIN/mock/brokers/up"
ready() { [ "$(curl -sS -o /dev/null -w '%{http_code}' "$INGRESS_URL/ready")" = 200 ]; }
check "broker back: /ready recovers by itself" eventually 20 ready
served() { [ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$INGRESS_URL/v1/chat/completions" \
	-H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$body")" = 200 ]; }
check "broker back: requests served again" eventually 20 served

# --- connection limits ---
P3=$(stack_free_port)
ingress_spawn ingress-3 "$P3" 2 GW_MAX_CONNECTIONS_PER_IP=2 GW_KEEPALIVE_TIMEOUT_MS=1000
P4=$(stack_free_port)
ingress_spawn ingress-4 "$P4" 3 GW_MAX_CONNECTIONS=2
check "limited copies start" eventually 20 bash -c "curl -fsS -o /dev/null http://127.0.0.1:$P3/health && curl -fsS -o /dev/null http://127.0.0.1:$P4/health"
hold() { # port: opens an idle connection kept until the end
	local fd
	exec {fd}<>"/dev/tcp/127.0.0.1/$1"
	FDS+=("$fd")
}
hold "$P3"
hold "$P3"
sleep 0.3
a=$(printf 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n' | "$STACK_BIN/ingress/gw-rawhttp" 127.0.0.1 "$P3" --timeout-ms 3000)
check_eq "a third connection from one address (limit 2): 429" 429 "$(head -n1 <<<"$a" | awk '{print $2}')"
check_contains "per-address limit: OpenAI shape" "$a" '"code":"too_many_connections_from_address"'
served3() { [ "$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P3/health")" = 200 ]; }
check "idle connections closed after GW_KEEPALIVE_TIMEOUT_MS (1 s): served again" eventually 5 served3
t0=$(date +%s%N)
printf 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n' | "$STACK_BIN/ingress/gw-rawhttp" 127.0.0.1 "$P3" --timeout-ms 5000 >/dev/null
rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
check_eq "keep-alive idle connection closed by the server" 0 "$rc"
check "keep-alive closed after about a second (${ms} ms)" test "$ms" -lt 3500
hold "$P4"
hold "$P4"
sleep 0.3
a=$(printf 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n' | "$STACK_BIN/ingress/gw-rawhttp" 127.0.0.1 "$P4" --timeout-ms 3000)
check_eq "connections over GW_MAX_CONNECTIONS (2): 503" 503 "$(head -n1 <<<"$a" | awk '{print $2}')"
check "over GW_MAX_CONNECTIONS: Retry-After" grep -qi '^retry-after:' <<<"$a"
for fd in "${FDS[@]}"; do eval "exec $fd>&-"; done
FDS=()
freed() { [ "$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P4/health")" = 200 ]; }
check "connections closed: served again" eventually 5 freed

for name in ingress-2 ingress-3 ingress-4 ingress; do
	rc=0
	stack_stop_one "$name" 30 || rc=$?
	check_eq "$name exits 0 on SIGTERM" 0 "$rc"
done
t_summary
