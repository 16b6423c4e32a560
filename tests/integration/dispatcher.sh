#!/usr/bin/env bash
# The dispatcher against the embedded broker and the mock endpoint: whole and streamed
# answers relayed untouched, gateway errors (404, 502, 504, 503), usage and audit
# events, expiry, de-duplication, dead letters, drain on SIGTERM. $1 = build directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$(cd "${1:?usage: dispatcher.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"

DLIB_NAME=dispatcher DLIB_TMP=gw-dispatcher-test
DLIB_HINT=": build the dispatcher, gw-dispatch-probe, gw-broker and gw-mock-endpoint targets"
. "$ROOT/tests/lib/dispatcher_lib.sh"

wait_http() { # url pid
	local i
	for i in $(seq 1 100); do
		kill -0 "$2" 2>/dev/null || return 1
		[ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
		sleep 0.1
	done
	return 1
}
# Waits for a pid that is not our child; echoes nothing, returns 0 once it is gone.
gone() { ! kill -0 "$1" 2>/dev/null; }

free_port >/dev/null; MOCK_PORT=$FP
free_port >/dev/null; SLOW_PORT=$FP
free_port >/dev/null; DOWN_PORT=$FP # nothing listens here
free_port >/dev/null; FAIL_PORT=$FP
free_port >/dev/null; BIG_PORT=$FP
free_port >/dev/null; FLAKY_PORT=$FP
free_port >/dev/null; ADMIN_PORT=$FP
MOCK_KEY="sk-mock-$RANDOM$RANDOM-secret"
printf '%s\n' "$MOCK_KEY" >"$D/mock.key"

# --- the command line, before anything runs ---
out=$("$DISPATCHER" --help)
check_eq "--help exits 0" 0 $?
check_contains "--help prints usage" "$out" "usage: dispatcher"
"$DISPATCHER" frobnicate >/dev/null 2>&1
check_eq "unknown subcommand exits 2" 2 $?

cat >"$D/endpoints.json" <<EOF
{"endpoints":[
 {"name":"mock","url":"http://127.0.0.1:$MOCK_PORT/","models":["mock-llm","mock-embed"],
  "cluster":"local","framework":"vllm","weight":1,"max_concurrent":8,"timeout_ms":30000,
  "api_key_file":"$D/mock.key"},
 {"name":"down","url":"http://127.0.0.1:$DOWN_PORT","models":["down-llm"]},
 {"name":"slow","url":"http://127.0.0.1:$SLOW_PORT","models":["slow-llm"],"max_concurrent":1},
 {"name":"failing","url":"http://127.0.0.1:$FAIL_PORT","models":["failing-llm"]},
 {"name":"big","url":"http://127.0.0.1:$BIG_PORT","models":["big-llm"]},
 {"name":"flaky","url":"http://127.0.0.1:$FLAKY_PORT","models":["flaky-llm"]}
]}
EOF
out=$("$DISPATCHER" endpoints --file "$D/endpoints.json" 2>"$D/cli.log")
check_eq "endpoints: valid file exits 0" 0 $?
check_contains "endpoints: table header" "$out" "NAME"
check_contains "endpoints: lists mock with its models" "$out" "mock-llm,mock-embed"
check_contains "endpoints: lists the url" "$out" "http://127.0.0.1:$MOCK_PORT"
check_eq "endpoints: one row per endpoint" 7 "$(wc -l <<<"$out")"
check_not_contains "endpoints: the API key is not printed" "$out$(cat "$D/cli.log")" "$MOCK_KEY"
out=$(GW_ADMIN_LISTEN=127.0.0.1:$(free_port) GW_ENDPOINTS_FILE=$D/endpoints.json "$DISPATCHER" endpoints 2>/dev/null)
check_contains "endpoints: no dispatcher answering -> reads GW_ENDPOINTS_FILE" "$out" "slow-llm"

echo '{"endpoints":[{"name":"a","url":"ftp://gpu.example.org","models":["m"]}]}' >"$D/https.json"
err=$("$DISPATCHER" endpoints --file "$D/https.json" 2>&1 >/dev/null)
check_eq "endpoints: bad scheme exits 1" 1 $?
check_contains "endpoints: bad scheme refused with a reason" "$err" "must start with http:// or https://"
echo '{"endpoints":[{"name":"a","url":"http://h:1","models":["m"],"modles":["x"]}]}' >"$D/unknown.json"
err=$("$DISPATCHER" endpoints --file "$D/unknown.json" 2>&1 >/dev/null)
check_eq "endpoints: unknown field exits 1" 1 $?
check_contains "endpoints: names the unknown field" "$err" 'unknown field \"modles\"'
err=$(env -u GW_ENDPOINTS_FILE GW_KAFKA_BROKERS=127.0.0.1:1 GW_ADMIN_LISTEN=off GW_ENV_FILE=/dev/null \
	"$DISPATCHER" serve 2>&1)
check_eq "serve without GW_ENDPOINTS_FILE exits 1" 1 $?
check_contains "serve without GW_ENDPOINTS_FILE says what to set" "$err" "GW_ENDPOINTS_FILE is not set"
err=$(GW_ENDPOINTS_FILE=$D/https.json GW_KAFKA_BROKERS=127.0.0.1:1 GW_ADMIN_LISTEN=off \
	GW_ENV_FILE=/dev/null "$DISPATCHER" serve 2>&1)
check_eq "serve with an invalid endpoints file exits 1" 1 $?
check_contains "serve names the bad field" "$err" "endpoints[0].url"

# --- broker, endpoints, dispatcher ---
start_broker
GW_MOCK_LISTEN=127.0.0.1:$MOCK_PORT GW_MOCK_TOKEN_MS=5 GW_MOCK_API_KEY_FILE=$D/mock.key \
	"$MOCK" serve >/dev/null 2>"$D/mock.log" &
PIDS+=($!)
MOCK_PID=$!
GW_MOCK_LISTEN=127.0.0.1:$SLOW_PORT GW_MOCK_MODELS=slow-llm GW_MOCK_LATENCY_MS=3000 \
	"$MOCK" serve >/dev/null 2>"$D/slow.log" &
PIDS+=($!)
SLOW_PID=$!
GW_MOCK_LISTEN=127.0.0.1:$FAIL_PORT GW_MOCK_MODELS=failing-llm GW_MOCK_FAIL_RATE=1 \
	"$MOCK" serve >/dev/null 2>"$D/failing.log" &
PIDS+=($!)
FAIL_PID=$!
GW_MOCK_LISTEN=127.0.0.1:$BIG_PORT GW_MOCK_MODELS=big-llm GW_MOCK_COMPLETION_TOKENS=3000 \
	"$MOCK" serve >/dev/null 2>"$D/big.log" &
PIDS+=($!)
BIG_PID=$!
GW_MOCK_LISTEN=127.0.0.1:$FLAKY_PORT GW_MOCK_MODELS=flaky-llm GW_MOCK_TOKEN_MS=300 \
	"$MOCK" serve >/dev/null 2>"$D/flaky.log" &
PIDS+=($!)
FLAKY_PID=$!
check "mock endpoint starts" wait_http "http://127.0.0.1:$MOCK_PORT/health" "$MOCK_PID"
check "slow mock endpoint starts" wait_http "http://127.0.0.1:$SLOW_PORT/health" "$SLOW_PID"
check "failing mock endpoint starts" wait_http "http://127.0.0.1:$FAIL_PORT/health" "$FAIL_PID"
check "big mock endpoint starts" wait_http "http://127.0.0.1:$BIG_PORT/health" "$BIG_PID"
check "flaky mock endpoint starts" wait_http "http://127.0.0.1:$FLAKY_PORT/health" "$FLAKY_PID"

# Circuits are tested in dispatcher_routing.sh. Here the never-started endpoint 'down'
# must answer 502 upstream_unavailable however long the run takes on a loaded machine,
# not 503 once enough 5 s health checks have failed to open its circuit.
start_dispatcher() { # drain_ms log
	serve_dispatcher "$2" GW_DISPATCHER_CB_FAILURES=1000 GW_DISPATCHER_CB_RATE_MIN=1000 \
		GW_DISPATCHER_ENDPOINT_QUEUE=1 GW_DISPATCHER_DRAIN_MS="$1" GW_LOG_LEVEL=info \
		GW_DISPATCHER_MAX_RESPONSE=8192
}
start_dispatcher 1000 dispatcher.log
check "dispatcher becomes ready" wait_http "http://127.0.0.1:$ADMIN_PORT/ready" "$DISP_PID"

# The first request waits for the consumer group to form.
warm=$(probe --model mock-llm --timeout-ms 30000)
check_eq "first request answered once the group has formed" 200 "$(jf .status "$warm")"

# --- a whole answer ---
BODY='{"model":"mock-llm","messages":[{"role":"user","content":"tell me about dispatch"}]}'
r=$(probe --model mock-llm --body "$BODY" --hint hint-42)
direct=$(curl -sS "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" -H 'Content-Type: application/json' \
	-H "Authorization: Bearer $MOCK_KEY" -d "$BODY")
id=$(jf .id "$r")
check_eq "completion: status 200" 200 "$(jf .status "$r")"
check_eq "completion: one message, seq 0" "[0]" "$(jq -c .seqs <<<"$r")"
check_eq "completion: final exactly once" 1 "$(jf .final "$r")"
check_eq "completion: content type of the endpoint" "application/json" "$(jf .ctype "$r")"
check_eq "completion: the endpoint's exact bytes" "$direct" "$(jf .body "$r")"
check_eq "completion: it is a chat.completion" "chat.completion" "$(jq -r .object <<<"$direct")"
pt=$(jq .usage.prompt_tokens <<<"$direct")
ct=$(jq .usage.completion_tokens <<<"$direct")
tt=$(jq .usage.total_tokens <<<"$direct")
check_eq "usage: one gw.usage message" 1 "$(jq '.usage | length' <<<"$r")"
check_eq "usage: keyed by gw-hint" "hint-42" "$(jf '.usage[0]._key' "$r")"
check_eq "usage: tokens from the endpoint's body" "$pt/$ct/$tt" \
	"$(jf '.usage[0] | "\(.prompt_tokens)/\(.completion_tokens)/\(.total_tokens)"' "$r")"
check_eq "usage: request id, principal, model, endpoint" "$id/probe-user/mock-llm/mock" \
	"$(jf '.usage[0] | "\(.request_id)/\(.principal)/\(.model)/\(.endpoint)"' "$r")"
a=$(jq -c '[.audit[] | select(.type=="dispatch.result")]' <<<"$r")
check_eq "audit: one dispatch.result" 1 "$(jq length <<<"$a")"
check_eq "audit: outcome ok, status 200, endpoint mock" "ok/200/mock" \
	"$(jq -r '.[0] | "\(.outcome)/\(.status)/\(.endpoint)"' <<<"$a")"
check_eq "audit: tokens" "$pt/$ct/$tt" \
	"$(jq -r '.[0] | "\(.prompt_tokens)/\(.completion_tokens)/\(.total_tokens)"' <<<"$a")"
check_eq "audit: principal, model, route" "probe-user/mock-llm//v1/chat/completions" \
	"$(jq -r '.[0] | "\(.principal)/\(.model)/\(.route)"' <<<"$a")"
check_eq "audit: resp_sha256 is the SHA-256 of the relayed bytes" "$(jf .body_sha256 "$r")" \
	"$(jq -r '.[0].resp_sha256' <<<"$a")"
check_eq "audit: resp_size" "$(jf .body_size "$r")" "$(jq -r '.[0].resp_size' <<<"$a")"
check "audit: latency_us and ttft_us" jqe '.[0].latency_us > 0 and .[0].ttft_us > 0 and .[0].ttft_us <= .[0].latency_us' <<<"$a"

# --- a streamed answer ---
SBODY='{"model":"mock-llm","stream":true,"messages":[{"role":"user","content":"stream this"}]}'
r=$(probe --model mock-llm --stream 1 --body "$SBODY")
direct=$(curl -sS -N "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" -H 'Content-Type: application/json' \
	-H "Authorization: Bearer $MOCK_KEY" -d "$SBODY")
n=$(jq '.seqs | length' <<<"$r")
check_eq "stream: status 200" 200 "$(jf .status "$r")"
check_eq "stream: content type text/event-stream" "text/event-stream" "$(jf .ctype "$r")"
check "stream: relayed in many messages ($n)" test "$n" -gt 5
check_eq "stream: seqs 0..n-1 in order" "$(jq -c '[range(0; .seqs | length)]' <<<"$r")" "$(jq -c .seqs <<<"$r")"
check_eq "stream: final exactly once" 1 "$(jf .final "$r")"
check_eq "stream: whole and in order, byte for byte" "$direct" "$(jf .body "$r")"
check "stream: ends with data: [DONE]" jqe '.body | endswith("data: [DONE]\n\n")' <<<"$r"
su=$(grep '"usage":{' <<<"$direct" | tail -n 1 | sed 's/^data: //' | jq -c '.usage | [.prompt_tokens, .completion_tokens, .total_tokens]')
check_eq "stream: usage from the last SSE usage block" "$su" \
	"$(jq -c '.usage[0] | [.prompt_tokens, .completion_tokens, .total_tokens]' <<<"$r")"
check_eq "stream: audit carries the same tokens" "$su" \
	"$(jq -c '.audit[] | select(.type=="dispatch.result") | [.prompt_tokens, .completion_tokens, .total_tokens]' <<<"$r")"
check_eq "stream: audit digest over the relayed stream" "$(jf .body_sha256 "$r")" \
	"$(jq -r '.audit[] | select(.type=="dispatch.result") | .resp_sha256' <<<"$r")"

# Streaming asked for, but the endpoint answers plain JSON: one whole reply.
EBODY='{"model":"mock-embed","input":"vectors please"}'
r=$(probe --model mock-embed --route /v1/embeddings --stream 1 --body "$EBODY")
check_eq "stream asked, JSON answered: one message" "[0]" "$(jq -c .seqs <<<"$r")"
check_eq "stream asked, JSON answered: status and type" "200 application/json" "$(jf '"\(.status) \(.ctype)"' "$r")"
check_eq "embeddings: usage has prompt tokens" "true" "$(jf '.usage[0].prompt_tokens > 0' "$r")"

# --- gateway errors ---
r=$(probe --model no-such-model)
id=$(jf .id "$r")
check_eq "unknown model: 404" 404 "$(jf .status "$r")"
check_eq "unknown model: code model_not_found" "model_not_found" "$(jf .body "$r" | jq -r .error.code)"
check_eq "unknown model: message" "model 'no-such-model' is not served by any endpoint" \
	"$(jf .body "$r" | jq -r .error.message)"
check_eq "unknown model: type" "invalid_request_error" "$(jf .body "$r" | jq -r .error.type)"
check_eq "unknown model: request id in the body" "$id" "$(jf .body "$r" | jq -r .request_id)"
check_eq "unknown model: audited as error 404" "error/404" \
	"$(jf '"\(.audit[] | select(.type=="dispatch.result") | .outcome)/\(.audit[] | select(.type=="dispatch.result") | .status)"' "$r")"
check_eq "unknown model: usage with zero tokens and outcome error (authz frees the slot)" "error/404/0/0" \
	"$(jf '.usage[0] | "\(.outcome)/\(.status)/\(.prompt_tokens)/\(.total_tokens)"' "$r")"

r=$(probe --model down-llm)
check_eq "endpoint down: 502" 502 "$(jf .status "$r")"
check_eq "endpoint down: upstream_unavailable" "upstream_unavailable" "$(jf .body "$r" | jq -r .error.code)"
check_eq "endpoint down: message names it" "endpoint 'down' unreachable" "$(jf .body "$r" | jq -r .error.message)"
check_eq "endpoint down: audited as error" "error" \
	"$(jf '.audit[] | select(.type=="dispatch.result") | .outcome' "$r")"

r=$(probe --model slow-llm --deadline-ms 1200)
check_eq "endpoint slower than the deadline: 504" 504 "$(jf .status "$r")"
check_eq "endpoint slower than the deadline: upstream_timeout" "upstream_timeout" "$(jf .body "$r" | jq -r .error.code)"
check "504 comes at the deadline, not after the endpoint's 3 s" \
	jqe '.audit[] | select(.type=="dispatch.result") | .latency_us < 2500000' <<<"$r"

# Endpoint full: slow serves one at a time and queues one; a third is refused at once
# with 429 and a retry hint (gw-retry-after, retry_after_s).
FULL=()
for i in 1 2 3; do
	probe --model slow-llm --deadline-ms 20000 --timeout-ms 20000 >"$D/full.$i" &
	FULL+=($!)
	sleep 0.2
done
wait "${FULL[@]}"
codes=$(for i in 1 2 3; do jq -r .status "$D/full.$i"; done | sort | tr '\n' ' ')
check_eq "endpoint full: two served, one refused" "200 200 429 " "$codes"
busy=$(for i in 1 2 3; do jq -r 'select(.status==429) | .body' "$D/full.$i"; done)
check_eq "endpoint full: endpoints_saturated" "endpoints_saturated" "$(jq -r .error.code <<<"$busy")"
check_contains "endpoint full: says when to retry" "$(jq -r .error.message <<<"$busy")" "retry after"
check_eq "endpoint full: retry_after_s in the error" 1 "$(jq -r .retry_after_s <<<"$busy")"
check_eq "endpoint full: gw-retry-after header" 1 \
	"$(for i in 1 2 3; do jq -r 'select(.status==429) | .headers["gw-retry-after"]' "$D/full.$i"; done)"

# An endpoint's own error is relayed as it is, status included.
FBODY='{"model":"failing-llm","messages":[{"role":"user","content":"fail"}]}'
r=$(probe --model failing-llm --body "$FBODY")
direct=$(curl -sS "http://127.0.0.1:$FAIL_PORT/v1/chat/completions" -H 'Content-Type: application/json' \
	-d "$FBODY")
check_eq "endpoint 503: relayed with its status" 503 "$(jf .status "$r")"
check_eq "endpoint 503: its body untouched" "$direct" "$(jf .body "$r")"
check_eq "endpoint 503: audited as error" "error/503/upstream_status" \
	"$(jf '.audit[] | select(.type=="dispatch.result") | "\(.outcome)/\(.status)/\(.reason)"' "$r")"

# A whole answer over GW_DISPATCHER_MAX_RESPONSE (8192 here) is refused; a stream is not bounded.
r=$(probe --model big-llm)
check_eq "answer too large: 502" 502 "$(jf .status "$r")"
check_eq "answer too large: code" "upstream_response_too_large" "$(jf .body "$r" | jq -r .error.code)"
BBODY='{"model":"big-llm","stream":true,"messages":[{"role":"user","content":"a long one"}]}'
r=$(probe --model big-llm --stream 1 --body "$BBODY")
check_eq "large stream: relayed" 200 "$(jf .status "$r")"
check "large stream: more than 8192 bytes, ends with [DONE]" \
	jqe '.body_size > 8192 and (.body | endswith("data: [DONE]\n\n"))' <<<"$r"
# The big mock sends its 3000 tokens without pause, one HTTP chunk each: coalesced
# (GW_DISPATCHER_COALESCE_MS=2 by default) into far fewer messages, whole and in order.
direct=$(curl -sS "http://127.0.0.1:$BIG_PORT/v1/chat/completions" -H 'Content-Type: application/json' -d "$BBODY")
events=$(jf .body "$r" | grep -c '^data: ')
n=$(jq '.seqs | length' <<<"$r")
check "large stream: small chunks coalesced ($n messages for $events events)" test "$n" -lt $((events / 4))
check_eq "large stream: seqs 0..n-1 in order" "$(jq -c '[range(0; .seqs | length)]' <<<"$r")" "$(jq -c .seqs <<<"$r")"
check_eq "large stream: coalesced stream byte for byte" "$direct" "$(jf .body "$r")"

# The endpoint dies mid-stream: the stream ends with an SSE error event, then final.
probe --model flaky-llm --stream 1 --timeout-ms 20000 >"$D/flaky.out" &
PP=$!
streaming() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^gw_dispatcher_inflight 1'; }
check "flaky stream in flight" eventually 10 streaming
sleep 1
{
	kill -KILL "$FLAKY_PID"
	wait "$FLAKY_PID"
} 2>/dev/null
wait "$PP"
r=$(cat "$D/flaky.out")
check_eq "broken stream: began as 200 SSE" "200 text/event-stream" "$(jf '"\(.status) \(.ctype)"' "$r")"
check "broken stream: some chunks arrived first" jqe '.seqs | length > 2' <<<"$r"
check_eq "broken stream: seqs still in order" "$(jq -c '[range(0; .seqs | length)]' <<<"$r")" "$(jq -c .seqs <<<"$r")"
check_eq "broken stream: final exactly once" 1 "$(jf .final "$r")"
last=$(jf .body "$r" | grep '^data: ' | tail -n 1 | sed 's/^data: //')
check_eq "broken stream: ends with an SSE error event" "upstream_error" "$(jq -r .error.code <<<"$last")"
check_eq "broken stream: the error event has the request id" "$(jf .id "$r")" "$(jq -r .request_id <<<"$last")"
check "broken stream: event framing intact" jqe '.body | endswith("\n\n")' <<<"$r"
check_eq "broken stream: audited as error" "error" \
	"$(jf '.audit[] | select(.type=="dispatch.result") | .outcome' "$r")"

# --- dropped work ---
r=$(probe --model mock-llm --deadline-ms -1000 --no-reply --timeout-ms 10000)
check_eq "expired: no reply" "[]" "$(jq -c .seqs <<<"$r")"
check_eq "expired: audited as expired" "expired" \
	"$(jf '.audit[] | select(.type=="dispatch.result") | .outcome' "$r")"
DUP=$(openssl rand -hex 16)
r=$(probe --model mock-llm --id "$DUP")
check_eq "first of a duplicate pair: answered" 200 "$(jf .status "$r")"
before=$(curl -s "http://127.0.0.1:$MOCK_PORT/mock/stats" | jq .requests)
r=$(probe --model mock-llm --id "$DUP" --from-beginning --no-reply --wait-audits 2 --settle-ms 1500 --timeout-ms 10000)
after=$(curl -s "http://127.0.0.1:$MOCK_PORT/mock/stats" | jq .requests)
check_eq "redelivered id: not sent to the endpoint again" "$before" "$after"
check_eq "redelivered id: audited as duplicate" "ok duplicate" \
	"$(jf '[.audit[] | select(.type=="dispatch.result") | .outcome] | join(" ")' "$r")"
check_eq "redelivered id: no second reply" "[0] 1" "$(jq -c .seqs <<<"$r") $(jf .final "$r")"

r=$(probe --model mock-llm --omit gw-model --no-reply --wait-deadletter --timeout-ms 10000)
check_eq "missing header: dead-lettered with the reason" "missing required header" \
	"$(jf '.deadletter[0].reason' "$r")"
check_eq "missing header: no reply, no dispatch.result" "0 0" \
	"$(jf '"\(.seqs | length) \([.audit[] | select(.type=="dispatch.result")] | length)"' "$r")"

# --- metrics ---
m=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")
check_contains "metrics: requests by endpoint and status" "$m" 'gw_dispatcher_requests_total{endpoint="mock",status="200"}'
check_contains "metrics: 404s counted" "$m" 'gw_dispatcher_requests_total{endpoint="",status="404"}'
check_contains "metrics: inflight gauge" "$m" "gw_dispatcher_inflight 0"
check_contains "metrics: upstream histogram" "$m" "gw_dispatcher_upstream_seconds_bucket"
check_contains "metrics: ttft histogram" "$m" "gw_dispatcher_ttft_seconds_count"

# --- SIGTERM with a call in flight: drain 1 s, then the call is cancelled with 503 ---
probe --model slow-llm --deadline-ms 20000 --timeout-ms 20000 >"$D/drain1" &
PP=$!
inflight() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^gw_dispatcher_inflight 1'; }
check "slow call in flight" eventually 10 inflight
kill -TERM "$DISP_PID"
wait "$DISP_PID"
check_eq "SIGTERM: exits 0 after the drain time" 0 $?
wait "$PP"
check_eq "SIGTERM: a call past the drain time is answered 503" 503 "$(jq -r .status "$D/drain1")"
check_eq "SIGTERM: code shutting_down" "shutting_down" "$(jq -r .body "$D/drain1" | jq -r .error.code)"
check_not_contains "the endpoint key never reaches the log" "$(cat "$D/dispatcher.log")" "$MOCK_KEY"

# --- SIGTERM with a call that finishes within the drain time ---
start_dispatcher 10000 dispatcher2.log
check "dispatcher restarts" wait_http "http://127.0.0.1:$ADMIN_PORT/ready" "$DISP_PID"
probe --model slow-llm --deadline-ms 30000 --timeout-ms 30000 >"$D/drain2" &
PP=$!
check "slow call in flight again" eventually 20 inflight
kill -TERM "$DISP_PID"
sleep 0.3
check_eq "draining: /ready answers 503" 503 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/ready")"
wait "$DISP_PID"
check_eq "SIGTERM: exits 0 once the call is done" 0 $?
wait "$PP"
check_eq "SIGTERM: the in-flight call completes normally" 200 "$(jq -r .status "$D/drain2")"
check_contains "SIGTERM: logged the stop" "$(cat "$D/dispatcher2.log")" '"msg":"dispatcher stopped"'

t_summary
