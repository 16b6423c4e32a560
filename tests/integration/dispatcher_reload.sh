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

DLIB_NAME=dispatcher_reload
. "$ROOT/tests/lib/dispatcher_lib.sh"
result() { jq -r '.audit[] | select(.type=="dispatch.result") | "\(.outcome) \(.endpoint)"' "$1"; }

free_port >/dev/null; A_PORT=$FP
free_port >/dev/null; B_PORT=$FP
free_port >/dev/null; ADMIN_PORT=$FP
ADMIN=http://127.0.0.1:$ADMIN_PORT

start_broker

# a answers after 8 s (streams: 40 tokens, 25 ms apart, after that): long enough for the
# five calls to be under way and the new ones answered on a loaded machine; b at once.
start_mock "$A_PORT" m 8000 25 a.log GW_MOCK_COMPLETION_TOKENS=40
start_mock "$B_PORT" m,m2 0 1 b.log
check "endpoint a starts" eventually 10 up "http://127.0.0.1:$A_PORT/v1/models"
check "endpoint b starts" eventually 10 up "http://127.0.0.1:$B_PORT/v1/models"

# Before: m only on a. After: a gone, m on b.
cat >"$D/endpoints.json" <<EOF2
{"endpoints":[
 {"name":"a","url":"http://127.0.0.1:$A_PORT","models":["m"],"max_concurrent":8},
 {"name":"b","url":"http://127.0.0.1:$B_PORT","models":["m2"],"max_concurrent":8}
]}
EOF2
serve_dispatcher dispatcher.log GW_LOG_LEVEL=info GW_DISPATCHER_HEALTH_INTERVAL_MS=300 GW_DISPATCHER_DRAIN_MS=1000
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
