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

DLIB_NAME=dispatcher_pool DLIB_BINS="DISPATCHER PROBE BROKER"
. "$ROOT/tests/lib/dispatcher_lib.sh"
conns() { curl -sk "https://127.0.0.1:$1/count" | jq -r '._connections'; }
count_of() { curl -sk "https://127.0.0.1:$1/count" | jq -r ".[\"$2\"] // 0"; }

free_port >/dev/null; T_PORT=$FP
free_port >/dev/null; I_PORT=$FP
free_port >/dev/null; ADMIN_PORT=$FP
ADMIN=http://127.0.0.1:$ADMIN_PORT

start_broker

# A private CA and a certificate it signed for "localhost": verification is real.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/ca.key" -out "$D/ca.crt" -days 1 \
	-subj /CN=gw-test-ca >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -keyout "$D/tls.key" -out "$D/tls.csr" -subj /CN=localhost \
	>/dev/null 2>&1
printf 'subjectAltName=DNS:localhost\n' >"$D/ext"
openssl x509 -req -in "$D/tls.csr" -CA "$D/ca.crt" -CAkey "$D/ca.key" -CAcreateserial \
	-out "$D/tls.crt" -days 1 -extfile "$D/ext" >/dev/null 2>&1
# t keeps connections open; i closes them after 0.3 s idle.
start_fake "$T_PORT" fake-t.log "$D/tls.crt" "$D/tls.key"
FAKE_IDLE_S=0.3 start_fake "$I_PORT" fake-i.log "$D/tls.crt" "$D/tls.key"
check "tls endpoint t starts" eventually 10 up "https://127.0.0.1:$T_PORT/v1/models"
check "tls endpoint i starts" eventually 10 up "https://127.0.0.1:$I_PORT/v1/models"

cat >"$D/endpoints.json" <<EOF2
{"endpoints":[
 {"name":"t","url":"https://localhost:$T_PORT","models":["tls-llm","drop-reused"],"max_concurrent":4},
 {"name":"i","url":"https://localhost:$I_PORT","models":["tls-idle"],"max_concurrent":4}
]}
EOF2

serve_dispatcher dispatcher.log GW_LOG_LEVEL=debug \
	GW_DISPATCHER_HEALTH_INTERVAL_MS=1000 GW_DISPATCHER_CB_FAILURES=2 GW_DISPATCHER_POOL_IDLE_MS=2500 \
	GW_DISPATCHER_CA_FILE="$D/ca.crt" GW_DISPATCHER_DRAIN_MS=1000
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
