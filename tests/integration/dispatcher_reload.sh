#!/usr/bin/env bash
# SIGHUP reload that removes an endpoint while calls to it are in flight: those calls
# (whole and streamed) finish and reach the client, new calls go only to the endpoints
# that remain, and the removed endpoint's object is released once its last call ended
# (run under the ASan build, a use-after-free aborts the dispatcher). $1 = build dir.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$(cd "${1:?usage: dispatcher_reload.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"

DISPATCHER=$BIN/dispatcher/dispatcher
PROBE=$BIN/dispatcher/gw-dispatch-probe
BROKER=$BIN/deploy/local/gw-broker
MOCK=$BIN/deploy/local/gw-mock-endpoint
for b in "$DISPATCHER" "$PROBE" "$BROKER" "$MOCK"; do
	if [ ! -x "$b" ]; then
		echo "missing $b"
		echo "0 passed, 1 failed"
		exit 1
	fi
done

D=$(mktemp -d /tmp/gw-dispatcher-reload.XXXXXX)
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
		rm -rf "$BIN/test-logs/dispatcher_reload" && mkdir -p "$BIN/test-logs/dispatcher_reload" &&
			cp "$D"/*.log "$BIN/test-logs/dispatcher_reload/" 2>/dev/null &&
			echo "logs kept in $BIN/test-logs/dispatcher_reload"
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
up() { curl -s -o /dev/null "$1"; }
jf() { jq -r "$1" <<<"$2"; }
probe() { "$PROBE" "$@" 2>>"$D/probe.log"; }
jqe() { jq -e "$@" >/dev/null; }
stat_of() { curl -s "http://127.0.0.1:$1/mock/stats" | jq -r ".$2"; }
epv() { curl -s "$ADMIN/endpoints" | jq -r ".endpoints[] | select(.name==\"$1\") | $2"; }
result() { jq -r '.audit[] | select(.type=="dispatch.result") | "\(.outcome) \(.endpoint)"' "$1"; }

free_port; A_PORT=$FP
free_port; B_PORT=$FP
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

# a answers after 8 s (streams: 40 tokens, 25 ms apart, after that): long enough for the
# five calls to be under way and the new ones answered on a loaded machine; b at once.
GW_MOCK_LISTEN=127.0.0.1:$A_PORT GW_MOCK_MODELS=m GW_MOCK_LATENCY_MS=8000 GW_MOCK_TOKEN_MS=25 \
	GW_MOCK_COMPLETION_TOKENS=40 "$MOCK" serve >/dev/null 2>"$D/a.log" &
PIDS+=($!)
GW_MOCK_LISTEN=127.0.0.1:$B_PORT GW_MOCK_MODELS=m,m2 GW_MOCK_LATENCY_MS=0 GW_MOCK_TOKEN_MS=1 \
	"$MOCK" serve >/dev/null 2>"$D/b.log" &
PIDS+=($!)
check "endpoint a starts" eventually 10 up "http://127.0.0.1:$A_PORT/v1/models"
check "endpoint b starts" eventually 10 up "http://127.0.0.1:$B_PORT/v1/models"

# Before: m only on a. After: a gone, m on b.
cat >"$D/endpoints.json" <<EOF2
{"endpoints":[
 {"name":"a","url":"http://127.0.0.1:$A_PORT","models":["m"],"max_concurrent":8},
 {"name":"b","url":"http://127.0.0.1:$B_PORT","models":["m2"],"max_concurrent":8}
]}
EOF2
GW_ENDPOINTS_FILE=$D/endpoints.json GW_ADMIN_LISTEN=127.0.0.1:$ADMIN_PORT GW_LOG_LEVEL=info \
	GW_DISPATCHER_HEALTH_INTERVAL_MS=300 GW_DISPATCHER_DRAIN_MS=1000 \
	"$DISPATCHER" serve 2>"$D/dispatcher.log" &
DISP_PID=$!
PIDS+=($DISP_PID)
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/ready")" = 200 ]; }
check "dispatcher ready" eventually 20 ready
warm=$(probe --model m2 --timeout-ms 30000)
check_eq "first request answered once the group has formed" 200 "$(jf .status "$warm")"

# --- calls in flight to a ---
a0=$(stat_of "$A_PORT" requests)
for i in 1 2 3; do
	probe --model m --timeout-ms 20000 >"$D/whole.$i" &
	W[$i]=$!
done
for i in 1 2; do
	probe --model m --stream 1 --timeout-ms 20000 >"$D/stream.$i" &
	S[$i]=$!
done
five() { [ "$(epv a .inflight)" = 5 ]; }
check "five calls in flight to a" eventually 10 five

# --- reload: a removed ---
cat >"$D/endpoints.json" <<EOF2
{"endpoints":[
 {"name":"b","url":"http://127.0.0.1:$B_PORT","models":["m","m2"],"max_concurrent":8}
]}
EOF2
kill -HUP "$DISP_PID"
gone() { [ "$(curl -s "$ADMIN/endpoints" | jq -r '[.endpoints[].name] | join(",")')" = b ]; }
check "reload: a leaves the registry at once" eventually 5 gone
check_contains "reload: logged that a finishes its calls first" "$(cat "$D/dispatcher.log")" \
	'"msg":"endpoint leaves the registry; its calls in flight finish first","endpoint":"a","inflight":5'
b0=$(stat_of "$B_PORT" requests)
for i in 1 2 3; do
	probe --model m --settle-ms 0 >"$D/new.$i" &
	N[$i]=$!
done
wait "${N[@]}"
check_eq "new calls: answered by b only" "ok b,ok b,ok b" \
	"$(for i in 1 2 3; do result "$D/new.$i"; done | paste -sd,)"
check_eq "new calls: b got them" 3 $(($(stat_of "$B_PORT" requests) - b0))
check_eq "new calls: a got only the five calls before the reload" 5 $(($(stat_of "$A_PORT" requests) - a0))
ts_of() { jq -r '.audit[] | select(.type=="dispatch.result") | .ts_us' "$@"; }

wait "${W[@]}" "${S[@]}"
for i in 1 2 3; do
	check_eq "in flight whole $i: reached the client from a" "200 ok a" \
		"$(jq -r .status "$D/whole.$i") $(result "$D/whole.$i")"
	check "in flight whole $i: a chat completion" jqe '.body | fromjson | .object == "chat.completion"' "$D/whole.$i"
done
for i in 1 2; do
	check_eq "in flight stream $i: streamed to the end from a" "200 ok a 1" \
		"$(jq -r '"\(.status) "' "$D/stream.$i")$(result "$D/stream.$i") $(jq -r .final "$D/stream.$i")"
	check "in flight stream $i: seqs contiguous" \
		jqe '.seqs == [range(0; .seqs | length)] and (.seqs | length) > 1' "$D/stream.$i"
	check_contains "in flight stream $i: whole stream ([DONE] at the end)" \
		"$(jq -r .body "$D/stream.$i" | tail -n 3)" "data: [DONE]"
	check "in flight stream $i: usage counted" jqe '.usage[0].completion_tokens == 40' "$D/stream.$i"
done
new_last=$(ts_of "$D"/new.* | sort -n | tail -n 1)
old_first=$(ts_of "$D"/whole.* "$D"/stream.* | sort -n | head -n 1)
check "new calls: answered while a's calls still ran" test "${new_last:-9}" -lt "${old_first:-0}"
released() { grep -q '"msg":"removed endpoint released: its last call ended","endpoint":"a"' "$D/dispatcher.log"; }
check "the removed endpoint is released after its last call" eventually 5 released
r=$(probe --model m --settle-ms 0)
check_eq "after the release: still served by b" "200 ok b" "$(jf .status "$r") $(result <(echo "$r"))"

kill -TERM "$DISP_PID"
wait "$DISP_PID"
check_eq "SIGTERM: exits 0 (no sanitizer abort)" 0 $?
check_not_contains "no sanitizer report" "$(cat "$D/dispatcher.log")" "Sanitizer"
t_summary
