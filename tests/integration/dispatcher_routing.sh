#!/usr/bin/env bash
# The dispatcher with several endpoints: load spread by outstanding requests, FIRST
# cluster routing, listings, a dead endpoint's circuit opening with no client errors,
# half-open recovery, retries within budget and deadline, 429 Retry-After, garbage and
# 4xx shaping, cancels reaching the endpoint, SIGHUP reload, https with verification,
# the admin views. Short health intervals and cooldowns are set here. $1 = build dir.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$(cd "${1:?usage: dispatcher_routing.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"

DLIB_NAME=dispatcher_routing
. "$ROOT/tests/lib/dispatcher_lib.sh"

free_port >/dev/null; A_PORT=$FP
free_port >/dev/null; B_PORT=$FP
free_port >/dev/null; C_PORT=$FP
free_port >/dev/null; F_PORT=$FP
free_port >/dev/null; L_PORT=$FP
free_port >/dev/null; X_PORT=$FP
free_port >/dev/null; T_PORT=$FP
free_port >/dev/null; ADMIN_PORT=$FP
ADMIN=http://127.0.0.1:$ADMIN_PORT

start_broker

start_mock "$A_PORT" m 400 1 a.log
A_PID=$LAST
start_mock "$B_PORT" m 400 1 b.log
start_mock "$C_PORT" m,m2 0 1 c.log
start_mock "$F_PORT" f 0 1 f.log GW_MOCK_FAIL_RATE=1
start_mock "$L_PORT" long 0 100 l.log GW_MOCK_COMPLETION_TOKENS=2000
# A TLS certificate for "localhost" only: https://127.0.0.1 must then fail the check.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/tls.key" -out "$D/tls.crt" -days 1 \
	-subj /CN=localhost -addext subjectAltName=DNS:localhost >/dev/null 2>&1
start_fake "$X_PORT" fake.log
start_fake "$T_PORT" faketls.log "$D/tls.crt" "$D/tls.key"
for p in $A_PORT $B_PORT $C_PORT $F_PORT $L_PORT $X_PORT; do
	check "endpoint on $p starts" eventually 10 up "http://127.0.0.1:$p/v1/models"
done
check "tls endpoint starts" eventually 10 up "https://127.0.0.1:$T_PORT/v1/models"

write_endpoints() { # extra entries
	cat >"$D/endpoints.json" <<EOF2
{"endpoints":[
 {"name":"a","url":"http://127.0.0.1:$A_PORT","models":["m"],"cluster":"polaris","framework":"vllm","max_concurrent":4,
  "connect_timeout_ms":500,"first_byte_timeout_ms":3000},
 {"name":"b","url":"http://127.0.0.1:$B_PORT","models":["m"],"cluster":"polaris","framework":"vllm","max_concurrent":4},
 {"name":"c","url":"http://127.0.0.1:$C_PORT","models":["m","m2","not-live"],"cluster":"sophia","framework":"llama.cpp","max_concurrent":2},
 {"name":"f","url":"http://127.0.0.1:$F_PORT","models":["f"],"cluster":"polaris","framework":"vllm"},
 {"name":"l","url":"http://127.0.0.1:$L_PORT","models":["long"],"cluster":"polaris","framework":"vllm"},
 {"name":"x","url":"http://127.0.0.1:$X_PORT","models":["garbage","ratelimited","plain4xx","badsse"],"cluster":"odd","framework":"other"},
 {"name":"tls","url":"https://localhost:$T_PORT","models":["tls-llm"],"cluster":"odd","framework":"other"},
 {"name":"tlsbad","url":"https://127.0.0.1:$T_PORT","models":["tls-bad"],"cluster":"odd","framework":"other"}$1
]}
EOF2
}
write_endpoints ""

serve_dispatcher dispatcher.log GW_LOG_LEVEL=info \
	GW_DISPATCHER_HEALTH_INTERVAL_MS=300 GW_DISPATCHER_HEALTH_TIMEOUT_MS=500 \
	GW_DISPATCHER_CB_FAILURES=3 GW_DISPATCHER_CB_COOLDOWN_MS=6000 GW_DISPATCHER_RETRY_BASE_MS=20 \
	GW_MAX_ATTEMPTS=3 GW_DISPATCHER_CA_FILE="$D/tls.crt" GW_DISPATCHER_DRAIN_MS=1000
check "dispatcher becomes ready" eventually 20 up "$ADMIN/ready"
check "dispatcher ready" eventually 20 ready
warm=$(probe --model m2 --timeout-ms 30000)
check_eq "first request answered once the group has formed" 200 "$(jf .status "$warm")"

# --- load spreads by outstanding requests ---
a0=$(stat_of "$A_PORT" requests)
b0=$(stat_of "$B_PORT" requests)
for i in 1 2 3 4 5 6; do
	probe --model m --cluster polaris --framework vllm >"$D/spread.$i" &
	SP[$i]=$!
done
wait "${SP[@]}"
a1=$(stat_of "$A_PORT" requests)
b1=$(stat_of "$B_PORT" requests)
codes=$(for i in 1 2 3 4 5 6; do jq -r .status "$D/spread.$i"; done | sort -u | tr '\n' ' ')
check_eq "spread: all answered 200" "200 " "$codes"
check_eq "spread: six calls reached a and b" 6 $((a1 - a0 + b1 - b0))
check "spread: both endpoints took a share (a $((a1 - a0)), b $((b1 - b0)))" \
	test $((a1 - a0)) -ge 2 -a $((b1 - b0)) -ge 2

# --- FIRST routes and listings ---
r=$(probe --model m --cluster sophia --framework llama.cpp)
check_eq "FIRST: routed to the named cluster's endpoint" "200 c" \
	"$(jf '"\(.status) \(.audit[] | select(.type=="dispatch.result") | .endpoint)"' "$r")"
r=$(probe --model m2 --cluster polaris --framework vllm)
check_eq "FIRST: model not in that cluster -> 404" 404 "$(jf .status "$r")"
check_contains "FIRST: the 404 names the cluster" "$(jf .body "$r" | jq -r .error.message)" "in cluster 'polaris'"
r=$(probe --model not-live)
check_eq "a model missing from the endpoint's /v1/models is not routed" "404 model_not_found" \
	"$(jf '"\(.status) \(.body | fromjson | .error.code)"' "$r")"
r=$(probe --model '' --route /v1/models --models 'm,m2,tls-llm' --body '')
check_eq "/v1/models: 200 list" "200 list" "$(jf '"\(.status) \(.body | fromjson | .object)"' "$r")"
check_eq "/v1/models: filtered by gw-models" '["m","m2","tls-llm"]' \
	"$(jf '[.body | fromjson | .data[].id] | sort' "$r" | jq -c .)"
check_eq "/v1/models: usage outcome ok, zero tokens" "ok 0" "$(jf '.usage[0] | "\(.outcome) \(.total_tokens)"' "$r")"
r=$(probe --model '' --route /v1/models --models '*' --cluster sophia --framework llama.cpp --body '')
check_eq "/v1/models under a FIRST base: that cluster only" '["m","m2"]' \
	"$(jf '[.body | fromjson | .data[].id] | sort' "$r" | jq -c .)"
r=$(probe --model '' --route /resource_server/list-endpoints --models 'm2' --body '')
check_eq "list-endpoints: shape and filter" '{"sophia":{"llama.cpp":["m2"]}}' \
	"$(jf '.body | fromjson | .clusters | map_values(.frameworks | map_values(.models))' "$r" | jq -c .)"
check_eq "list-endpoints: chat URL" "/resource_server/sophia/llama.cpp/v1/chat/completions/" \
	"$(jf '.body | fromjson | .clusters.sophia.frameworks["llama.cpp"].endpoints.chat' "$r")"
r=$(probe --model '' --route /resource_server/jobs --cluster polaris --models '*' --body '')
check_eq "jobs: running endpoints of the cluster" "a,b,f,l" \
	"$(jf '[.body | fromjson | .running[].Endpoint] | sort | join(",")' "$r")"

# --- errors shaped: garbage, broken SSE, plain 4xx, 429 with Retry-After ---
r=$(probe --model garbage)
check_eq "garbage JSON from the endpoint: 502" "502 upstream_invalid_response" \
	"$(jf '"\(.status) \(.body | fromjson | .error.code)"' "$r")"
check_eq "garbage: request id in the error" "$(jf .id "$r")" "$(jf '.body | fromjson | .request_id' "$r")"
check_eq "garbage: audited as error" "error upstream_invalid_response" \
	"$(jf '.audit[] | select(.type=="dispatch.result") | "\(.outcome) \(.reason)"' "$r")"
r=$(probe --model badsse --stream 1)
# Caught before anything was relayed: a plain 502; after: an SSE error event ends it.
if [ "$(jf .status "$r")" = 502 ]; then
	last=$(jf .body "$r")
else
	last=$(jf .body "$r" | grep '^data: ' | tail -n 1 | sed 's/^data: //')
fi
check_eq "broken SSE: 502 upstream_invalid_response (plain or as the last event)" \
	"upstream_invalid_response" "$(jq -r .error.code <<<"$last")"
check_not_contains "broken SSE: the garbage is not relayed" "$(jf .body "$r")" "<html>"
check_eq "broken SSE: final once" 1 "$(jf .final "$r")"
r=$(probe --model plain4xx)
check_eq "plain-text 4xx: status kept" 400 "$(jf .status "$r")"
check_eq "plain-text 4xx: wrapped in OpenAI's shape" "invalid_request_error" "$(jf '.body | fromjson | .error.type' "$r")"
check_contains "plain-text 4xx: endpoint text kept" "$(jf '.body | fromjson | .error.message' "$r")" "prompt too long"
c0=$(curl -s "http://127.0.0.1:$X_PORT/count" | jq '.ratelimited // 0')
r=$(probe --model ratelimited --deadline-ms 5000)
c1=$(curl -s "http://127.0.0.1:$X_PORT/count" | jq '.ratelimited // 0')
check_eq "429 with Retry-After 30 s beyond the deadline: not retried" 1 $((c1 - c0))
check_eq "429: the endpoint's answer passes through" "429 slow down" "$(jf '"\(.status) \(.body | fromjson | .error.message)"' "$r")"
check "429: answered at once, not after the deadline" jqe '.end_ms < 3000' <<<"$r"

# --- retries stay within budget and deadline ---
f0=$(stat_of "$F_PORT" requests)
r=$(probe --model f)
f1=$(stat_of "$F_PORT" requests)
check_eq "503 endpoint: exactly GW_MAX_ATTEMPTS=3 attempts" 3 $((f1 - f0))
check_eq "503 endpoint: its answer passes through after the last attempt" 503 "$(jf .status "$r")"
check_eq "503 endpoint: audit counts the attempts" 3 \
	"$(jf '.audit[] | select(.type=="dispatch.result") | .extra.attempts' "$r")"
circ() { curl -s "$ADMIN/circuit-breakers" | jq -r ".circuit_breakers[] | select(.endpoint==\"$1\") | .state"; }
check_eq "503 endpoint: 3 consecutive failures opened its circuit" open "$(circ f)"
r=$(probe --model f)
check_eq "circuit open: 503 at once with a clear message" "503 no_healthy_endpoint" \
	"$(jf '"\(.status) \(.body | fromjson | .error.code)"' "$r")"
check "circuit open: retry hint in body and header" \
	jqe '(.body | fromjson | .retry_after_s) >= 1 and .headers["gw-retry-after"] >= 1' <<<"$r"
f2=$(stat_of "$F_PORT" requests)
check_eq "circuit open: nothing sent to the endpoint" "$f1" "$f2"
m=$(curl -s "$ADMIN/metrics")
check_contains "gw_circuit_state metered" "$m" 'gw_circuit_state{endpoint="f"} 1'

# --- a dead endpoint: traffic moves with no client errors ---
kill -KILL "$A_PID"
wait "$A_PID" 2>/dev/null
b0=$(stat_of "$B_PORT" requests)
for i in 1 2 3 4 5 6; do
	probe --model m --cluster polaris >"$D/dead.$i"
done
codes=$(for i in 1 2 3 4 5 6; do jq -r .status "$D/dead.$i"; done | sort -u | tr '\n' ' ')
check_eq "a dead: every request still answered 200" "200 " "$codes"
check_eq "a dead: answered by b" "b" \
	"$(for i in 1 2 3 4 5 6; do jq -r '.audit[] | select(.type=="dispatch.result") | .endpoint' "$D/dead.$i"; done | sort -u | tr -d '\n')"
# On a loaded machine the 6 s cooldown may already have passed (half-open): what
# matters is that it opened and has not closed again.
check_eq "a dead: its circuit opened (once or more)" yes \
	"$(curl -s "$ADMIN/circuit-breakers" | jq -r '.circuit_breakers[] | select(.endpoint=="a") | if .opens >= 1 and (.state == "open" or .state == "half_open") then "yes" else "\(.opens) \(.state)" end')"
echo "# failover: dispatcher latency of the requests after the kill (ms, b answers in 400):" \
	"$(for i in 1 2 3 4 5 6; do jq -r '.audit[] | select(.type=="dispatch.result") | "\(.latency_us / 1000 | floor)/\(.extra.attempts)"' "$D/dead.$i"; done | tr '\n' ' ')"
check_contains "circuit change logged" "$(cat "$D/dispatcher.log")" '"msg":"circuit opened","endpoint":"a"'
r=$(probe --model '' --route /resource_server/jobs --cluster polaris --models '*' --body '')
check_eq "jobs: the dead endpoint is stopped" "a" "$(jf '[.body | fromjson | .stopped[].Endpoint] | sort | join(",")' "$r")"

# a comes back on the same port; its circuit stays open until the cooldown ends
# (checked at the end, after the other scenarios).
start_mock "$A_PORT" m 400 1 a.log
check "a restarts" eventually 10 up "http://127.0.0.1:$A_PORT/v1/models"

# --- cancels ---
c0=$(stat_of "$L_PORT" cancelled)
r=$(probe --model long --stream 1 --cancel-after-ms 1500 --no-reply --timeout-ms 20000)
check_eq "cancel: audited as cancelled" cancelled "$(jf '.audit[] | select(.type=="dispatch.result") | .outcome' "$r")"
check_eq "cancel: usage with outcome cancelled" cancelled "$(jf '.usage[0].outcome' "$r")"
check "cancel: some of the stream had been relayed" jqe '.seqs | length > 0' <<<"$r"
cancelled() { [ "$(stat_of "$L_PORT" cancelled)" -gt "$c0" ]; }
check "cancel: reached the endpoint (mock cancelled counter)" eventually 5 cancelled
l0=$(stat_of "$L_PORT" requests)
r=$(probe --model long --cancel-first --no-reply --timeout-ms 10000)
check_eq "cancel before the request: not sent upstream" "$l0" "$(stat_of "$L_PORT" requests)"
check_eq "cancel before the request: audited as cancelled, no reply" "cancelled []" \
	"$(jf '"\(.audit[] | select(.type=="dispatch.result") | .outcome) \(.seqs | tojson)"' "$r")"

# --- https ---
r=$(probe --model tls-llm)
check_eq "https: verified endpoint answers" "200 7" "$(jf '"\(.status) \(.usage[0].total_tokens)"' "$r")"
r=$(probe --model tls-bad)
check "https: certificate not valid for the host name -> refused (502/503)" \
	jqe '.status == 502 or .status == 503' <<<"$r"
check_contains "https: the verification failure is in the log" "$(cat "$D/dispatcher.log")" \
	'"endpoint":"tlsbad"'
check_eq "https: tlsbad health failing" failing \
	"$(curl -s "$ADMIN/endpoints" | jq -r '.endpoints[] | select(.name=="tlsbad") | .health')"

# --- admin views and the endpoints command ---
e=$(curl -s "$ADMIN/endpoints")
check_eq "/endpoints: every endpoint" 8 "$(jq '.endpoints | length' <<<"$e")"
check_eq "/endpoints: health and circuit of b" "passing closed" \
	"$(jq -r '.endpoints[] | select(.name=="b") | "\(.health) \(.circuit)"' <<<"$e")"
out=$("$DISPATCHER" endpoints --admin "127.0.0.1:$ADMIN_PORT" 2>/dev/null)
check_contains "dispatcher endpoints: table with circuit" "$out" "CIRCUIT"
check "dispatcher endpoints: f shows its circuit not closed" grep -Eq '^f +[a-z]+ +(open|half_open) ' <<<"$out"

# --- SIGHUP reload ---
write_endpoints ',
 {"name":"c2","url":"http://127.0.0.1:'"$C_PORT"'","models":["m2"],"cluster":"sophia","framework":"llama.cpp"}'
kill -HUP "$DISP_PID"
nine() { [ "$(curl -s "$ADMIN/endpoints" | jq '.endpoints | length')" = 9 ]; }
check "reload: the new endpoint appears" eventually 5 nine
echo '{"endpoints":[' >"$D/endpoints.json"
kill -HUP "$DISP_PID"
refused() { grep -q 'reload refused' "$D/dispatcher.log"; }
check "reload: a bad file is refused and logged" eventually 5 refused
check_eq "reload: the old registry stays" 9 "$(curl -s "$ADMIN/endpoints" | jq '.endpoints | length')"
r=$(probe --model m2)
check_eq "reload: requests still served" 200 "$(jf .status "$r")"

# --- half-open recovery: a comes back on the same port ---
halfopen() { [ "$(circ a)" = half_open ]; }
check "a: half-open after the cooldown" eventually 15 halfopen
a0=$(stat_of "$A_PORT" requests)
for i in 1 2 3 4; do
	probe --model m --cluster polaris >"$D/back.$i" &
	SP[$i]=$!
done
wait "${SP[1]}" "${SP[2]}" "${SP[3]}" "${SP[4]}"
check_eq "a: half-open probe succeeded, circuit closed" closed "$(circ a)"
check "a: traffic returns" test "$(stat_of "$A_PORT" requests)" -gt "$a0"

kill -TERM "$DISP_PID"
wait "$DISP_PID"
check_eq "SIGTERM: exits 0" 0 $?
t_summary
