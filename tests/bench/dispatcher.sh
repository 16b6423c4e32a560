#!/usr/bin/env bash
# Dispatcher figures (not a test: numbers only). With the embedded broker and two mock
# endpoints answering at once (GW_MOCK_LATENCY_MS=0):
#  - overhead: the dispatcher's own time per request (dispatch.result latency_us, from
#    taking the gw.authorized message to the last reply produced) next to the time of the
#    same call made directly with curl;
#  - failover: after SIGKILL of one endpoint, the dispatcher latency and attempts of the
#    next requests, and how long until its circuit is open.
# usage: tests/bench/dispatcher.sh BUILD_DIR [N]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "${1:?usage: dispatcher.sh BUILD_DIR [N]}" && pwd)
N=${2:-30}
D=$(mktemp -d /tmp/gw-dispatcher-bench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	[ -n "${KEEP:-}" ] && cp "$D/d.log" "$KEEP"
	rm -rf "$D"
}
trap cleanup EXIT
port() { local p; while :; do p=$((20000 + RANDOM % 40000)); (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo $p; return; }; done; }
A=$(port); B=$(port); ADM=$(port)
while [ "$B" = "$A" ]; do B=$(port); done
while [ "$ADM" = "$A" ] || [ "$ADM" = "$B" ]; do ADM=$(port); done
"$BIN/deploy/local/gw-broker" --bootstrap-file "$D/bs" >/dev/null 2>&1 &
PIDS+=($!)
while [ ! -s "$D/bs" ]; do sleep 0.1; done
export GW_KAFKA_BROKERS=$(cat "$D/bs") GW_ENV_FILE=/dev/null
for p in $A $B; do
	GW_MOCK_LISTEN=127.0.0.1:$p GW_MOCK_MODELS=m GW_MOCK_LATENCY_MS=0 "$BIN/deploy/local/gw-mock-endpoint" serve >/dev/null 2>&1 &
	PIDS+=($!)
done
APID=${PIDS[1]}
cat >"$D/e.json" <<EOF2
{"endpoints":[{"name":"a","url":"http://127.0.0.1:$A","models":["m"]},{"name":"b","url":"http://127.0.0.1:$B","models":["m"]}]}
EOF2
GW_ENDPOINTS_FILE=$D/e.json GW_ADMIN_LISTEN=127.0.0.1:$ADM GW_LOG_LEVEL=${LOG_LEVEL:-warn} \
	GW_DISPATCHER_HEALTH_INTERVAL_MS=1000 GW_DISPATCHER_CB_FAILURES=3 \
	"$BIN/dispatcher/dispatcher" serve 2>"$D/d.log" &
PIDS+=($!)
until curl -sf -o /dev/null "http://127.0.0.1:$ADM/ready"; do sleep 0.1; done
P=$BIN/dispatcher/gw-dispatch-probe
"$P" --model m --timeout-ms 30000 >/dev/null 2>&1
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
