#!/usr/bin/env bash
# Dispatcher figures (not a test: numbers only). With the embedded broker and two mock
# endpoints answering at once (GW_MOCK_LATENCY_MS=0):
#  - overhead: the dispatcher's own time per request (dispatch.result latency_us, from
#    taking the gw.authorized message to the last reply produced) next to the time of the
#    same call made directly with curl;
#  - failover: after SIGKILL of one endpoint, the dispatcher latency and attempts of the
#    next requests, and how long until its circuit is open;
#  - https keep-alive: requests/s through an https endpoint (the Python TLS test endpoint)
#    with the connection pool and with it off (GW_DISPATCHER_POOL_IDLE=0), same run;
#  - stream coalescing: gw.replies messages per streamed answer from a mock emitting small
#    chunks fast, with GW_DISPATCHER_COALESCE_MS=0 and at its default (2).
# usage: tests/bench/dispatcher.sh BUILD_DIR [N] [LOAD_N]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "${1:?usage: dispatcher.sh BUILD_DIR [N]}" && pwd)
N=${2:-30}
LOAD_N=${3:-400}
D=$(mktemp -d /tmp/gw-dispatcher-bench.XXXXXX)
PIDS=()
cleanup() {
	# The dispatcher first: its consumer close waits for the broker.
	[ -n "${DPID:-}" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	[ -n "${KEEP:-}" ] && cp "$D/d.log" "$KEEP"
	rm -rf "$D"
}
trap cleanup EXIT
port() { local p; while :; do p=$((10000 + RANDOM % 22000)); (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo $p; return; }; done; }
A=$(port); B=$(port); ADM=$(port); T=$(port); F=$(port); G=$(port)
while [ "$B" = "$A" ]; do B=$(port); done
while [ "$ADM" = "$A" ] || [ "$ADM" = "$B" ]; do ADM=$(port); done
while [ "$T" = "$A" ] || [ "$T" = "$B" ] || [ "$T" = "$ADM" ]; do T=$(port); done
while [ "$F" = "$A" ] || [ "$F" = "$B" ] || [ "$F" = "$ADM" ] || [ "$F" = "$T" ]; do F=$(port); done
while [ "$G" = "$A" ] || [ "$G" = "$B" ] || [ "$G" = "$ADM" ] || [ "$G" = "$T" ] || [ "$G" = "$F" ]; do G=$(port); done
"$BIN/deploy/local/gw-broker" --bootstrap-file "$D/bs" >/dev/null 2>&1 &
PIDS+=($!)
while [ ! -s "$D/bs" ]; do sleep 0.1; done
export GW_KAFKA_BROKERS=$(cat "$D/bs") GW_ENV_FILE=/dev/null
for p in $A $B; do
	GW_MOCK_LISTEN=127.0.0.1:$p GW_MOCK_MODELS=m GW_MOCK_LATENCY_MS=0 "$BIN/deploy/local/gw-mock-endpoint" serve >/dev/null 2>&1 &
	PIDS+=($!)
done
APID=${PIDS[1]}
# Small chunks, fast: 200 tokens with no pause between them.
GW_MOCK_LISTEN=127.0.0.1:$F GW_MOCK_MODELS=fast GW_MOCK_LATENCY_MS=0 GW_MOCK_TOKEN_MS=0 \
	GW_MOCK_COMPLETION_TOKENS=200 "$BIN/deploy/local/gw-mock-endpoint" serve >/dev/null 2>&1 &
PIDS+=($!)
# A token every millisecond.
GW_MOCK_LISTEN=127.0.0.1:$G GW_MOCK_MODELS=fast1 GW_MOCK_LATENCY_MS=0 GW_MOCK_TOKEN_MS=1 \
	GW_MOCK_COMPLETION_TOKENS=200 "$BIN/deploy/local/gw-mock-endpoint" serve >/dev/null 2>&1 &
PIDS+=($!)
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/tls.key" -out "$D/tls.crt" -days 1 \
	-subj /CN=localhost -addext subjectAltName=DNS:localhost >/dev/null 2>&1
python3 "$HERE/../integration/dispatcher_fake_endpoint.py" "$T" "$D/tls.crt" "$D/tls.key" >/dev/null 2>&1 &
PIDS+=($!)
cat >"$D/e.json" <<EOF2
{"endpoints":[{"name":"a","url":"http://127.0.0.1:$A","models":["m"]},{"name":"b","url":"http://127.0.0.1:$B","models":["m"]},
 {"name":"t","url":"https://localhost:$T","models":["tls-llm"]},{"name":"f","url":"http://127.0.0.1:$F","models":["fast"]},
 {"name":"g","url":"http://127.0.0.1:$G","models":["fast1"]}]}
EOF2
P=$BIN/dispatcher/gw-dispatch-probe
LOAD=$BIN/dispatcher/gw-dispatch-load
DPID=
start_dispatcher() { # extra env
	env GW_ENDPOINTS_FILE=$D/e.json GW_ADMIN_LISTEN=127.0.0.1:$ADM GW_LOG_LEVEL=${LOG_LEVEL:-warn} \
		GW_DISPATCHER_HEALTH_INTERVAL_MS=1000 GW_DISPATCHER_CB_FAILURES=3 \
		GW_DISPATCHER_CA_FILE=$D/tls.crt "$@" "$BIN/dispatcher/dispatcher" serve 2>>"$D/d.log" &
	DPID=$!
	PIDS+=($DPID)
	until curl -sf -o /dev/null "http://127.0.0.1:$ADM/ready"; do sleep 0.1; done
	"$P" --model m --timeout-ms 30000 >/dev/null 2>&1
}
stop_dispatcher() { kill -TERM "$DPID"; wait "$DPID" 2>/dev/null; }
until curl -skf -o /dev/null "https://127.0.0.1:$T/v1/models"; do sleep 0.1; done

load() { "$LOAD" "$@" 2>/dev/null; }
for pool in 64 0; do
	start_dispatcher GW_DISPATCHER_POOL_IDLE=$pool
	load --model tls-llm --requests 20 --concurrency 4 >/dev/null # warm
	c0=$(curl -sk "https://127.0.0.1:$T/count" | jq ._connections)
	r=$(load --model tls-llm --requests "$LOAD_N" --concurrency 4)
	c1=$(curl -sk "https://127.0.0.1:$T/count" | jq ._connections)
	echo "https endpoint, GW_DISPATCHER_POOL_IDLE=$pool, $LOAD_N requests, 4 in flight: $(jq -r '"\(.rps) req/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, errors \(.errors + .timed_out)"' <<<"$r"), TLS connections accepted: $((c1 - c0))"
	stop_dispatcher
done
for ms in 0 2; do
	start_dispatcher GW_DISPATCHER_COALESCE_MS=$ms
	load --model fast --stream 1 --requests 10 --concurrency 1 >/dev/null # warm
	r=$(load --model fast --stream 1 --requests 50 --concurrency 1)
	echo "stream of 200 tokens without pause, GW_DISPATCHER_COALESCE_MS=$ms: $(jq -r '"\(.messages_per_answer) gw.replies messages per answer, p50 \(.p50_ms) ms, errors \(.errors + .timed_out)"' <<<"$r")"
	r=$(load --model fast1 --stream 1 --requests 20 --concurrency 1)
	echo "stream of 200 tokens 1 ms apart, GW_DISPATCHER_COALESCE_MS=$ms: $(jq -r '"\(.messages_per_answer) gw.replies messages per answer, p50 \(.p50_ms) ms, errors \(.errors + .timed_out)"' <<<"$r")"
	stop_dispatcher
done

start_dispatcher
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for i in $(seq 1 "$N"); do
	"$P" --model m --settle-ms 50 2>/dev/null | jq -r '.audit[] | select(.type=="dispatch.result") | .latency_us'
done >"$D/lat"
BODY='{"model":"m","messages":[{"role":"user","content":"hello probe"}]}'
for i in $(seq 1 "$N"); do
	curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$A/v1/chat/completions" -d "$BODY"
done | awk '{print int($1 * 1000000)}' >"$D/direct"
echo "requests: $N"
echo "dispatcher time per request (median us, message taken -> last reply produced): $(med <"$D/lat")"
echo "direct curl to the mock (median us, includes curl's own connect): $(med <"$D/direct")"
kill -KILL "$APID"
t0=$(date +%s%3N)
for i in 1 2 3 4 5 6; do
	"$P" --model m --settle-ms 50 2>/dev/null |
		jq -r '.audit[] | select(.type=="dispatch.result") | "\(.status) \(.endpoint) \(.latency_us)us attempts=\(.extra.attempts)"'
done
until curl -s "http://127.0.0.1:$ADM/circuit-breakers" | jq -e '.circuit_breakers[] | select(.endpoint=="a" and .state=="open")' >/dev/null; do sleep 0.05; done
echo "circuit of the killed endpoint open $(( $(date +%s%3N) - t0 )) ms after SIGKILL (upper bound: checked after the requests above)"
