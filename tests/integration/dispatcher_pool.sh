#!/usr/bin/env bash
# Keep-alive connection pools of the dispatcher, for https endpoints: sequential calls
# share a few verified TLS connections (counted on the endpoint's side), an endpoint that
# closes idle connections causes no client error, and one that drops a kept-alive
# connection as a request arrives costs a resend on a fresh connection, not a failure.
# $1 = build dir.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$(cd "${1:?usage: dispatcher_pool.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"

DISPATCHER=$BIN/dispatcher/dispatcher
PROBE=$BIN/dispatcher/gw-dispatch-probe
BROKER=$BIN/deploy/local/gw-broker
FAKE=$HERE/dispatcher_fake_endpoint.py
for b in "$DISPATCHER" "$PROBE" "$BROKER"; do
	if [ ! -x "$b" ]; then
		echo "missing $b"
		echo "0 passed, 1 failed"
		exit 1
	fi
done

D=$(mktemp -d /tmp/gw-dispatcher-pool.XXXXXX)
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null
	done
	if [ "$T_FAIL" -gt 0 ]; then
		rm -rf "$BIN/test-logs/dispatcher_pool" && mkdir -p "$BIN/test-logs/dispatcher_pool" &&
			cp "$D"/*.log "$BIN/test-logs/dispatcher_pool/" 2>/dev/null &&
			echo "logs kept in $BIN/test-logs/dispatcher_pool"
	fi
	rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USED_PORTS=" "
free_port() {
	local p
	for _ in $(seq 1 200); do
		p=$((10000 + RANDOM % 22000))
		case "$USED_PORTS" in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			USED_PORTS="$USED_PORTS$p "
			FP=$p
			return 0
		fi
	done
	return 1
}
wait_file() { local i; for i in $(seq 1 100); do [ -s "$1" ] && return 0; sleep 0.1; done; return 1; }
up() { curl -s -o /dev/null -k "$1"; }
jf() { jq -r "$1" <<<"$2"; }
probe() { "$PROBE" "$@" 2>>"$D/probe.log"; }
conns() { curl -sk "https://127.0.0.1:$1/count" | jq -r '._connections'; }
count_of() { curl -sk "https://127.0.0.1:$1/count" | jq -r ".[\"$2\"] // 0"; }
epv() { curl -s "$ADMIN/endpoints" | jq -r ".endpoints[] | select(.name==\"$1\") | $2"; }

free_port; T_PORT=$FP
free_port; I_PORT=$FP
free_port; ADMIN_PORT=$FP
ADMIN=http://127.0.0.1:$ADMIN_PORT

"$BROKER" --bootstrap-file "$D/bootstrap" >/dev/null 2>"$D/broker.log" &
PIDS+=($!)
if ! wait_file "$D/bootstrap"; then
	not_ok "broker starts"
	t_summary
	exit 1
fi
export GW_KAFKA_BROKERS=$(cat "$D/bootstrap")
export GW_ENV_FILE=/dev/null

# A private CA and a certificate it signed for "localhost": verification is real.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/ca.key" -out "$D/ca.crt" -days 1 \
	-subj /CN=gw-test-ca >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -keyout "$D/tls.key" -out "$D/tls.csr" -subj /CN=localhost \
	>/dev/null 2>&1
printf 'subjectAltName=DNS:localhost\n' >"$D/ext"
openssl x509 -req -in "$D/tls.csr" -CA "$D/ca.crt" -CAkey "$D/ca.key" -CAcreateserial \
	-out "$D/tls.crt" -days 1 -extfile "$D/ext" >/dev/null 2>&1
# t keeps connections open; i closes them after 0.3 s idle.
python3 "$FAKE" "$T_PORT" "$D/tls.crt" "$D/tls.key" >/dev/null 2>"$D/fake-t.log" &
PIDS+=($!)
FAKE_IDLE_S=0.3 python3 "$FAKE" "$I_PORT" "$D/tls.crt" "$D/tls.key" >/dev/null 2>"$D/fake-i.log" &
PIDS+=($!)
check "tls endpoint t starts" eventually 10 up "https://127.0.0.1:$T_PORT/v1/models"
check "tls endpoint i starts" eventually 10 up "https://127.0.0.1:$I_PORT/v1/models"

cat >"$D/endpoints.json" <<EOF2
{"endpoints":[
 {"name":"t","url":"https://localhost:$T_PORT","models":["tls-llm","drop-reused"],"max_concurrent":4},
 {"name":"i","url":"https://localhost:$I_PORT","models":["tls-idle"],"max_concurrent":4}
]}
EOF2

GW_ENDPOINTS_FILE=$D/endpoints.json GW_ADMIN_LISTEN=127.0.0.1:$ADMIN_PORT GW_LOG_LEVEL=debug \
	GW_DISPATCHER_HEALTH_INTERVAL_MS=1000 GW_DISPATCHER_CB_FAILURES=2 GW_DISPATCHER_POOL_IDLE_MS=2500 \
	GW_DISPATCHER_CA_FILE=$D/ca.crt GW_DISPATCHER_DRAIN_MS=1000 \
	"$DISPATCHER" serve 2>"$D/dispatcher.log" &
DISP_PID=$!
PIDS+=($DISP_PID)
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/ready")" = 200 ]; }
check "dispatcher ready" eventually 20 ready
warm=$(probe --model tls-llm --timeout-ms 30000)
check_eq "https: first request answered (verified against the private CA)" 200 "$(jf .status "$warm")"

# --- sequential calls share kept-alive TLS connections ---
N=12
c0=$(conns "$T_PORT")
codes=""
for i in $(seq 1 $N); do
	codes="$codes$(probe --model tls-llm --settle-ms 0 | jq -r .status) "
done
c1=$(conns "$T_PORT")
check_eq "pool: $N sequential https calls all answered" "200 " "$(tr ' ' '\n' <<<"$codes" | sort -u | grep . | tr '\n' ' ')"
echo "# pool: $N sequential https calls opened $((c1 - c0)) TLS connections (health checks included)"
check "pool: far fewer TLS connections than calls ($((c1 - c0)) for $N)" test $((c1 - c0)) -le 3
check "pool: the admin view counts reused connections" test "$(epv t .connections.reused)" -ge $((N - 3))

# --- an endpoint that closes idle connections: no client error ---
codes=""
for i in 1 2 3 4 5; do
	codes="$codes$(probe --model tls-idle --settle-ms 0 | jq -r .status) "
	sleep 0.5
done
check_eq "idle close: every call answered 200" "200 " "$(tr ' ' '\n' <<<"$codes" | sort -u | grep . | tr '\n' ' ')"
check_eq "idle close: no failure counted against the endpoint" "0 closed" "$(epv i '"\(.failures) \(.circuit)"')"
sleep 1.5
check_eq "idle close: health checks reconnect and pass" passing "$(epv i .health)"
check_not_contains "idle close: no endpoint unreachable logged" "$(grep '"endpoint":"i"' "$D/dispatcher.log")" '"msg":"endpoint unreachable"'

# --- a kept-alive connection dropped as the request arrives: resent, not a failure ---
probe --model tls-llm --settle-ms 0 >/dev/null # a kept-alive connection for the next call
r0=$(epv t .connections.resent)
d0=$(count_of "$T_PORT" drop-reused)
codes=""
for i in 1 2 3; do
	codes="$codes$(probe --model drop-reused --settle-ms 0 | jq -r .status) "
done
check_eq "dropped reuse: every call answered 200" "200 " "$(tr ' ' '\n' <<<"$codes" | sort -u | grep . | tr '\n' ' ')"
check_eq "dropped reuse: each call resent once on a fresh connection" 3 $(($(epv t .connections.resent) - r0))
check_eq "dropped reuse: the endpoint saw each request twice" 6 $(($(count_of "$T_PORT" drop-reused) - d0))
check_eq "dropped reuse: no failure counted, circuit closed" "0 closed" "$(epv t '"\(.failures) \(.circuit)"')"

# --- a reload keeps the kept-alive connections of endpoints that did not change ---
probe --model tls-llm --settle-ms 0 >/dev/null
kill -HUP "$DISP_PID"
reloaded() { grep -q '"msg":"endpoints reloaded"' "$D/dispatcher.log"; }
check "reload: done" eventually 5 reloaded
r=$(probe --model tls-llm --settle-ms 0)
check_eq "reload: call answered" 200 "$(jf .status "$r")"
check_eq "reload: it reused a connection from before the reload (opened reused)" "0 1" \
	"$(epv t '"\(.connections.opened) \(.connections.reused)"')"

# --- the gateway closes connections idle for GW_DISPATCHER_POOL_IDLE_MS (2500 here) ---
check "idle timeout: a kept connection is idle now" test "$(epv t .connections.idle)" -ge 1
idle_gone() { [ "$(epv t .connections.idle)" = 0 ]; }
check "idle timeout: closed by the janitor" eventually 6 idle_gone

kill -TERM "$DISP_PID"
wait "$DISP_PID"
check_eq "SIGTERM: exits 0" 0 $?
t_summary
