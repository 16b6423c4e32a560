#!/usr/bin/env bash
# ingress against the whole running pipeline (PostgreSQL, broker, mock endpoint, all five
# services): the OpenAI and FIRST routes, streaming, errors in OpenAI's shape, hostile
# framing and slow clients (raw sockets through gw-rawhttp), pipelining, CORS, cancels
# on disconnect, metrics. $1 = build directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STACK_BIN=$(cd "$1" && pwd)
STACK_DIR=$(mktemp -d /tmp/gw-ingress.XXXXXX)
STACK_FAST=1
GW_REQUEST_TIMEOUT=4
# Short limits so the slow-client checks finish quickly; the rest keep their defaults.
export GW_HEADER_TIMEOUT_MS=2000 GW_BODY_TIMEOUT_MS=2000 GW_MAX_JSON_DEPTH=32
export GW_MAX_BODY=1048576 GW_CORS_ORIGINS="https://app.example, https://other.example"
# Streams last ~2 s (400 tokens, 5 ms apart): long enough to leave one mid-way.
export GW_MOCK_TOKEN_MS=5 GW_MOCK_COMPLETION_TOKENS=400
# One principal with a one-request-a-minute limit, so authz's 429 and its retry time
# can be followed through ingress; nobody else is limited.
cat >"$STACK_DIR/policy.json" <<'JSON'
{"limits": {"principals": {"ingress-limited": {"requests_per_minute": 1}}}}
JSON
export GW_POLICY_FILE=$STACK_DIR/policy.json
. "$ROOT/deploy/local/stack.sh"
. "$HERE/ingress_lib.sh"
. "$ROOT/tests/lib/assert.sh"
RAW=$STACK_BIN/ingress/gw-rawhttp
CONSUME=$STACK_BIN/backup-agent/gw-consume
BG=()

cleanup() {
	for p in "${BG[@]}"; do kill "$p" 2>/dev/null; done
	ingress_cleanup ingress
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
URL=$INGRESS_URL
PORT=$HTTP_PORT
MOCK=http://127.0.0.1:$MOCK_PORT
AUTH=(-H "Authorization: Bearer $KEY")
JSON=(-H 'Content-Type: application/json')
T=$STACK_DIR/t
mkdir -p "$T"
export GW_KAFKA_BROKERS=$BROKERS GW_ENV_FILE=$STACK_DIR/env

status_of() { head -n1 "$1" | awk '{print $2}'; }
header_of() { grep -i "^$2:" "$1" | head -n1 | cut -d' ' -f2- | tr -d '\r'; }
# raw REQUEST [gw-rawhttp options]: sends printf-expanded REQUEST, prints the answer.
raw() {
	local req=$1
	shift
	printf "$req" | "$RAW" 127.0.0.1 "$PORT" "$@"
}
jqt() { jq -e "$@" >/dev/null 2>&1; }
raw_status() { head -n1 | awk '{print $2}' | tr -d '\r'; }
raw_body() { sed -n '/^\r$/,$p' | tail -n +2; }

# --- OpenAI routes ---
body='{"model":"mock-llm","messages":[{"role":"user","content":"ingress route test"}]}'
out=$(curl -sS -D "$T/h1" "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d "$body")
direct=$(curl -sS "$MOCK/v1/chat/completions" "${JSON[@]}" -d "$body")
check_eq "chat completion: 200" 200 "$(status_of "$T/h1")"
check_eq "chat completion: the endpoint's answer, untouched" "$direct" "$out"
check "every answer has a well-formed X-Request-Id" bash -c "[[ '$(header_of "$T/h1" X-Request-Id)' =~ ^[0-9a-f]{32}$ ]]"
check_eq "X-Content-Type-Options: nosniff" nosniff "$(header_of "$T/h1" X-Content-Type-Options)"
check_eq "Cache-Control: no-store" no-store "$(header_of "$T/h1" Cache-Control)"
check_eq "no HSTS over plain HTTP" "" "$(header_of "$T/h1" Strict-Transport-Security)"
rid=0123456789abcdef0123456789abcdef
curl -sS -o /dev/null -D "$T/h2" "$URL/v1/chat/completions/" "${AUTH[@]}" "${JSON[@]}" \
	-H "X-Request-Id: $rid" -d "$body"
check_eq "FIRST-style trailing slash: 200" 200 "$(status_of "$T/h2")"
check_eq "a well-formed client X-Request-Id is kept" "$rid" "$(header_of "$T/h2" X-Request-Id)"
curl -sS -o /dev/null -D "$T/h3" "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" \
	-H "X-Request-Id: NOT-HEX" -d "$body"
check "a malformed client X-Request-Id is replaced" bash -c "[[ '$(header_of "$T/h3" X-Request-Id)' =~ ^[0-9a-f]{32}$ ]]"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/embeddings/" "${AUTH[@]}" "${JSON[@]}" -d '{"model":"mock-embed","input":"x"}')
check_eq "embeddings (trailing slash): 200" 200 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/completions" "${AUTH[@]}" "${JSON[@]}" -d '{"model":"mock-llm","prompt":"x"}')
check_eq "completions: 200" 200 "$code"

# --- streaming ---
sbody='{"model":"mock-llm","stream":true,"messages":[{"role":"user","content":"ingress stream"}]}'
sse=$(curl -sS -N -D "$T/hs" "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d "$sbody")
check_contains "stream: text/event-stream" "$(header_of "$T/hs" Content-Type)" "text/event-stream"
check_contains "stream: ends with data: [DONE]" "$sse" "data: [DONE]"
check_eq "stream: identical to the endpoint's" "$(curl -sS -N "$MOCK/v1/chat/completions" "${JSON[@]}" -d "$sbody")" "$sse"
# The first chunk reaches the client long before the last one was generated (~2 s).
first=$(curl -sS -N -o /dev/null -w '%{time_starttransfer}' "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d "$sbody")
check "stream: relayed as it arrives (first byte after ${first}s, stream lasts ~2s)" \
	awk -v t="$first" 'BEGIN{exit !(t < 1.2)}'

# --- FIRST routes through the pipeline ---
code=$(curl -sS -o "$T/f1" -w '%{http_code}' "$URL/resource_server/local/other/v1/chat/completions/" \
	"${AUTH[@]}" "${JSON[@]}" -d "$body")
check_eq "FIRST base URL chat completion (cluster local, framework other): 200" 200 "$code"
check_eq "FIRST base URL: the endpoint's answer" "$direct" "$(cat "$T/f1")"
code=$(curl -sS -o "$T/f2" -w '%{http_code}' "$URL/resource_server/nowhere/vllm/v1/chat/completions" \
	"${AUTH[@]}" "${JSON[@]}" -d "$body")
check_eq "FIRST base URL, cluster with no such model: 404 (dispatcher)" 404 "$code"
code=$(curl -sS -o "$T/m1" -w '%{http_code}' "$URL/v1/models" "${AUTH[@]}")
check_eq "GET /v1/models: 200 (dispatcher)" 200 "$code"
check_eq "GET /v1/models: OpenAI list shape" list "$(jq -r .object "$T/m1" 2>/dev/null)"
check_contains "GET /v1/models: lists mock-llm" "$(jq -r '.data[].id' "$T/m1" 2>/dev/null)" mock-llm
code=$(curl -sS -o "$T/m2" -w '%{http_code}' "$URL/resource_server/local/other/v1/models/" "${AUTH[@]}")
check_eq "GET models under a FIRST base URL: 200" 200 "$code"
code=$(curl -sS -o "$T/le" -w '%{http_code}' "$URL/resource_server/list-endpoints" "${AUTH[@]}")
check_eq "GET /resource_server/list-endpoints: 200" 200 "$code"
check_contains "list-endpoints: FIRST shape with cluster local" "$(jq -c '.clusters.local.frameworks.other.models' "$T/le" 2>/dev/null)" mock-llm
code=$(curl -sS -o "$T/jobs" -w '%{http_code}' "$URL/resource_server/local/jobs" "${AUTH[@]}")
check_eq "GET /resource_server/local/jobs: 200" 200 "$code"
check_eq "jobs: the mock endpoint is running" mock "$(jq -r '.running[0].Endpoint' "$T/jobs" 2>/dev/null)"
code=$(curl -sS -o "$T/who" -w '%{http_code}' "$URL/resource_server/whoami/" "${AUTH[@]}")
check_eq "GET /resource_server/whoami: 200 (authz)" 200 "$code"
check_eq "whoami: principal dev" dev "$(jq -r .principal "$T/who" 2>/dev/null)"
check_not_contains "whoami: never echoes the secret" "$(cat "$T/who")" "${KEY#gw_*_}"
code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$URL/v1/models" "${AUTH[@]}")
check_eq "POST /v1/models: 405" 405 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/resource_server/bad%20name/jobs" "${AUTH[@]}")
check_eq "a cluster name outside [A-Za-z0-9._-]: 404" 404 "$code"

# What ingress put on gw.requests for those routes (the contract's table).
"$CONSUME" gw.requests >"$T/requests.jsonl" 2>/dev/null
route_msgs() { jq -c --arg r "$1" 'select(.headers["gw-route"]==$r)' "$T/requests.jsonl"; }
check "gw.requests: /v1/models travels with an empty body" jqt '.value == null or .value == ""' <<<"$(route_msgs /v1/models | head -n1)"
check_contains "gw.requests: list-endpoints route" "$(route_msgs /resource_server/list-endpoints | head -n1)" '"gw-route":"/resource_server/list-endpoints"'
check_contains "gw.requests: jobs carries gw-cluster" "$(route_msgs /resource_server/jobs | head -n1)" '"gw-cluster":"local"'
check_contains "gw.requests: whoami route" "$(route_msgs /resource_server/whoami | head -n1)" '"gw-route":"/resource_server/whoami"'
first_chat=$(jq -c 'select(.headers["gw-framework"]=="other")' "$T/requests.jsonl" | head -n1)
check_contains "gw.requests: FIRST chat carries gw-cluster" "$first_chat" '"gw-cluster":"local"'
check_contains "gw.requests: FIRST chat upstream route is /v1/chat/completions" "$first_chat" '"gw-route":"/v1/chat/completions"'
check_not_contains "gw.requests: the credential is sealed, never in clear" "$(cat "$T/requests.jsonl")" "${KEY#gw_*_}"

# --- bad requests: OpenAI's shape, with the request id ---
err_check() { # name expected-status curl-args...
	local name=$1 want=$2
	shift 2
	local code
	code=$(curl -sS -o "$T/e" -D "$T/eh" -w '%{http_code}' "$@")
	check_eq "$name: $want" "$want" "$code"
	check "$name: OpenAI error shape with request id" jqt \
		'(.error.message|type=="string") and (.error.type|type=="string") and has("request_id")' "$T/e"
}
err_check "no credential" 401 "$URL/v1/chat/completions" "${JSON[@]}" -d "$body"
err_check "unknown route" 404 "$URL/v1/nope" "${AUTH[@]}"
err_check "GET on a POST route" 405 "$URL/v1/chat/completions" "${AUTH[@]}"
check_eq "405 names the allowed method" POST "$(header_of "$T/eh" Allow)"
err_check "wrong content type" 415 "$URL/v1/chat/completions" "${AUTH[@]}" -H 'Content-Type: text/plain' -d "$body"
err_check "invalid JSON" 400 "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d '{"model":'
err_check "body not an object" 400 "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d '"hello"'
err_check "missing model" 400 "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d '{"messages":[]}'
err_check "model not a string" 400 "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d '{"model":42}'
err_check "stream not a boolean" 400 "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d '{"model":"mock-llm","stream":"yes"}'
printf '{"model":"mock-llm","messages":[{"role":"user","content":"\xff\xfe"}]}' >"$T/badutf8"
err_check "invalid UTF-8" 400 "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" --data-binary @"$T/badutf8"
deep='{"model":"mock-llm","x":'$(printf '[%.0s' $(seq 1 40))$(printf ']%.0s' $(seq 1 40))'}'
err_check "nesting deeper than GW_MAX_JSON_DEPTH (32)" 400 "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d "$deep"
check_eq "deep nesting: code json_too_deep" json_too_deep "$(jq -r .error.code "$T/e")"
head -c 1100000 /dev/zero | tr '\0' 'a' >"$T/big"
err_check "body over GW_MAX_BODY" 413 "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" --data-binary @"$T/big"

# --- hostile framing on raw sockets: answered in OpenAI's shape, connection closed ---
a=$(raw 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' --timeout-ms 3000)
rc=$?
check_eq "Content-Length with Transfer-Encoding: 400" 400 "$(raw_status <<<"$a")"
check_eq "Content-Length with Transfer-Encoding: connection closed" 0 "$rc"
check_eq "Content-Length with Transfer-Encoding: OpenAI shape" bad_framing "$(raw_body <<<"$a" | jq -r .error.code)"
a=$(raw 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello' --timeout-ms 3000)
rc=$?
check_eq "two differing Content-Lengths: 400" 400 "$(raw_status <<<"$a")"
check_eq "two differing Content-Lengths: connection closed" 0 "$rc"
a=$(raw 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n' --timeout-ms 3000)
rc=$?
check_eq "Content-Length over the limit: 413 before the body is sent" 413 "$(raw_status <<<"$a")"
check_eq "413: OpenAI shape" invalid_request_error "$(raw_body <<<"$a" | jq -r .error.type)"
check_eq "413: connection closed" 0 "$rc"
{
	printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n'
	for i in $(seq 1 20); do printf '10000\r\n'; head -c 65536 /dev/zero | tr '\0' 'a'; printf '\r\n'; done
	printf '0\r\n\r\n'
} >"$T/chunked"
a=$("$RAW" 127.0.0.1 "$PORT" --timeout-ms 3000 <"$T/chunked")
check_eq "chunked body over the limit: 413" 413 "$(raw_status <<<"$a")"
hdr=$(head -c 40000 /dev/zero | tr '\0' 'h')
a=$(raw "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: $hdr\r\n\r\n" --timeout-ms 3000)
check_eq "headers over GW_MAX_HEADER_BYTES: 431" 431 "$(raw_status <<<"$a")"
many=$(for i in $(seq 1 150); do printf 'X-H%d: v\\r\\n' "$i"; done)
a=$(raw "GET /v1/models HTTP/1.1\r\nHost: x\r\n${many}\r\n" --timeout-ms 3000)
check_eq "more headers than GW_MAX_HEADERS: 431" 431 "$(raw_status <<<"$a")"
a=$(raw 'BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n' --timeout-ms 3000)
check_eq "unknown method: 405 in OpenAI shape" method_not_allowed "$(raw_body <<<"$a" | jq -r .error.code)"
a=$(raw 'GET /v1/models HTTP/3.0\r\nHost: x\r\n\r\n' --timeout-ms 3000)
check_eq "unknown HTTP version: 505" 505 "$(raw_status <<<"$a")"
a=$(raw 'this is not http\r\n\r\n' --timeout-ms 3000)
check_eq "garbage request line: 400" 400 "$(raw_status <<<"$a")"

# --- slow clients ---
# Headers at one byte a second: cut at the header timeout (2 s here) with a 408,
# while everyone else is served in the meantime.
(raw 'GET /v1/models HTTP/1.1\r\nHost: slowloris\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n' \
	--delay-ms 1000 --timeout-ms 8000 >"$T/slow"; echo $? >"$T/slow.rc") &
BG+=($!)
sleep 0.5
t0=$(date +%s%N)
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d "$body")
check_eq "served normally while a slowloris client is connected" 200 "$code"
wait "${BG[-1]}"
check_eq "slowloris: 408 at the header timeout" 408 "$(raw_status <"$T/slow")"
check_eq "slowloris: connection closed by the server" 0 "$(cat "$T/slow.rc")"
a=$(raw 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":' --timeout-ms 6000)
rc=$?
check_eq "body never completed: 408 at the body timeout" 408 "$(raw_status <<<"$a")"
check_eq "body never completed: connection closed" 0 "$rc"
# Half-closed: a complete request then FIN is still answered; half a head then FIN is
# simply closed.
a=$(raw 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n' --shutdown --timeout-ms 3000)
check_eq "complete request then half-close: answered" 200 "$(raw_status <<<"$a")"
a=$(raw 'GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Partial: y' --shutdown --timeout-ms 3000)
rc=$?
check_eq "half a head then half-close: connection closed" 0 "$rc"
check_eq "half a head then half-close: nothing answered" "" "$a"

# --- pipelining: answers in request order ---
b1='{"model":"mock-llm","messages":[{"role":"user","content":"pipelined one"}]}'
b2='{"model":"mock-llm","messages":[{"role":"user","content":"pipelined two two"}]}'
d1=$(curl -sS "$MOCK/v1/chat/completions" "${JSON[@]}" -d "$b1" | jq -r .id)
d2=$(curl -sS "$MOCK/v1/chat/completions" "${JSON[@]}" -d "$b2" | jq -r .id)
preq() { printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' "$KEY" "${#1}" "$1"; }
{ preq "$b1"; preq "$b2"; printf 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n'; } >"$T/pipe"
"$RAW" 127.0.0.1 "$PORT" --timeout-ms 4000 <"$T/pipe" >"$T/pipe.out"
check_eq "pipelined: three answers" 3 "$(grep -ao 'HTTP/1.1 200' "$T/pipe.out" | wc -l)"
order=$(grep -o '"id":"chatcmpl-[0-9a-f]*"\|{"status":"ok"}' "$T/pipe.out" | tr '\n' ' ')
check_eq "pipelined: answered in order" "\"id\":\"$d1\" \"id\":\"$d2\" {\"status\":\"ok\"} " "$order"

{ preq "$b1"; printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'; } >"$T/pipe2"
"$RAW" 127.0.0.1 "$PORT" --timeout-ms 4000 <"$T/pipe2" >"$T/pipe2.out"
rc=$?
check_eq "pipelined, then a smuggling attempt: 200 first, then 400" "200 400 " \
	"$(grep -ao 'HTTP/1.1 [0-9]*' "$T/pipe2.out" | awk '{printf "%s ", $2}')"
check_contains "pipelined, then a smuggling attempt: the first answer is whole" "$(cat "$T/pipe2.out")" "\"id\":\"$d1\""
check_eq "pipelined, then a smuggling attempt: connection closed" 0 "$rc"

# --- CORS ---
curl -sS -o /dev/null -D "$T/c1" "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -H 'Origin: https://app.example' -d "$body"
check_eq "CORS: allowed origin echoed" https://app.example "$(header_of "$T/c1" Access-Control-Allow-Origin)"
curl -sS -o /dev/null -D "$T/c2" "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -H 'Origin: https://evil.example' -d "$body"
check_eq "CORS: nothing for another origin" "" "$(header_of "$T/c2" Access-Control-Allow-Origin)"
curl -sS -o /dev/null -D "$T/c3" -X OPTIONS "$URL/v1/chat/completions" -H 'Origin: https://other.example' \
	-H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: authorization, content-type'
check_eq "CORS preflight: 204" 204 "$(status_of "$T/c3")"
check_eq "CORS preflight: origin" https://other.example "$(header_of "$T/c3" Access-Control-Allow-Origin)"
check_contains "CORS preflight: methods" "$(header_of "$T/c3" Access-Control-Allow-Methods)" POST
check_contains "CORS preflight: headers" "$(header_of "$T/c3" Access-Control-Allow-Headers)" authorization
check_eq "CORS preflight: max age" 600 "$(header_of "$T/c3" Access-Control-Max-Age)"
curl -sS -o /dev/null -D "$T/c4" -X OPTIONS "$URL/v1/chat/completions" -H 'Origin: https://evil.example' \
	-H 'Access-Control-Request-Method: POST'
check_eq "CORS preflight from another origin: no CORS headers" "" "$(header_of "$T/c4" Access-Control-Allow-Origin)$(header_of "$T/c4" Access-Control-Allow-Methods)"

# --- a client that leaves mid-stream cancels upstream ---
cid=fedcba9876543210fedcba9876543210
curl -sS -N --max-time 0.8 -o "$T/partial" "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" \
	-H "X-Request-Id: $cid" -d "$sbody" 2>/dev/null
check "mid-stream: the client got part of the stream" grep -q '^data: {' "$T/partial"
cancel_sent() {
	"$CONSUME" gw.authorized 2>/dev/null | jq -c --arg id "$1" 'select(.key==$id and .headers["gw-cancel"]=="1")' | grep -q .
}
check "mid-stream disconnect: cancel keyed by the request id on gw.authorized" eventually 10 cancel_sent "$cid"
c=$("$CONSUME" gw.authorized 2>/dev/null | jq -c --arg id "$cid" 'select(.headers["gw-cancel"]=="1" and .key==$id)' | head -n1)
check "cancel: empty value" jqt '.value == null or .value == ""' <<<"$c"
check "cancel: carries gw-deadline" bash -c "[ -n '$(jq -r '.headers["gw-deadline"] // empty' <<<"$c")' ]"
check "cancel: same partition as the request on gw.authorized" bash -c \
	"[ \"\$('$CONSUME' gw.authorized 2>/dev/null | jq -r --arg id '$cid' 'select(.key==\$id) | .partition' | sort -u | wc -l)\" = 1 ]"
events_of() { "$STACK_BIN/auditor/auditor" query --request-id "$1" 2>/dev/null | jq -c .; }
cancelled_audited() { events_of "$cid" | grep -q '"outcome":"cancelled"'; }
check "mid-stream disconnect: the dispatcher audits the request as cancelled" eventually 10 cancelled_audited
closed_audited() { events_of "$cid" | grep -q '"outcome":"client_closed"'; }
check "mid-stream disconnect: ingress audits request.completed client_closed (499)" eventually 10 closed_audited
# Leave while the request is still in the pipeline, before any byte of the answer.
nid=00000000000000000000000000000abc
curl -sS --max-time 0.05 -o /dev/null "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" \
	-H "X-Request-Id: $nid" -d '{"model":"mock-llm","stream":true,"messages":[{"role":"user","content":"leave early"}]}' 2>/dev/null
check "disconnect before the first byte (streamed request): cancel sent" eventually 10 cancel_sent "$nid"

# --- a limit's retry time reaches the client: authz's 429 carries gw-retry-after on
# gw.replies, ingress answers it with Retry-After ---
LIMITED=$(stack_new_api_key)
env GW_ENV_FILE=/dev/null GW_DATABASE_URL="$PG_ADMIN_URL" GW_LIMITED_KEY="$LIMITED" \
	"$STACK_BIN/authz/authz" keys create --principal ingress-limited --key-from-env GW_LIMITED_KEY \
	>/dev/null 2>"$T/keys.log"
check "a second API key (principal ingress-limited) is created" test $? -eq 0
# authz learns of a new key through PostgreSQL; whoami is not rate limited, so it can
# wait for that without spending the one request the minute allows.
for _ in $(seq 1 100); do
	[ "$(curl -sS -o /dev/null -w '%{http_code}' "$URL/resource_server/whoami/" \
		-H "Authorization: Bearer $LIMITED")" = 200 ] && break
	sleep 0.1
done
limited() { # headers-file body-file: one request with the limited key, prints the status
	curl -sS -D "$1" -o "$2" -w '%{http_code}' "$URL/v1/chat/completions" \
		-H "Authorization: Bearer $LIMITED" "${JSON[@]}" -d "$body"
}
check_eq "requests_per_minute 1: the first request is served" 200 "$(limited "$T/hl1" "$T/bl1")"
check_eq "requests_per_minute 1: the second is refused with 429" 429 "$(limited "$T/hl2" "$T/bl2")"
ra=$(header_of "$T/hl2" Retry-After)
check "429: Retry-After is a number of seconds within the minute ($ra)" \
	bash -c "[[ '$ra' =~ ^[0-9]+$ ]] && [ '$ra' -ge 1 ] && [ '$ra' -le 60 ]"
check_eq "429: Retry-After equals the body's retry_after_s" "$ra" "$(jq -r .error.retry_after_s "$T/bl2")"
check_eq "429: OpenAI shape" rate_limit_error "$(jq -r .error.type "$T/bl2")"
check_contains "429: Retry-After is exposed to allowed browser origins" \
	"$(curl -sS -D - -o /dev/null "$URL/v1/chat/completions" -H 'Origin: https://app.example' \
		-H "Authorization: Bearer $LIMITED" "${JSON[@]}" -d "$body" | tr -d '\r')" \
	'Access-Control-Expose-Headers: X-Request-Id, Retry-After'
code=$(curl -sS -D "$T/hl3" -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d "$body")
check_eq "other principals are not limited, and get no Retry-After" "200 " "$code $(header_of "$T/hl3" Retry-After)"

# --- metrics ---
m=$(curl -sS "$URL/metrics")
check_contains "metrics: requests by route and status" "$m" 'gw_ingress_requests_total{route="/resource_server/{cluster}/{framework}/v1/chat/completions",code="200"}'
check_contains "metrics: latency histogram" "$m" 'gw_ingress_request_seconds_bucket'
check_contains "metrics: in flight" "$m" 'gw_ingress_inflight'
check_contains "metrics: open connections" "$m" 'gw_ingress_connections_open'
check_contains "metrics: streams open" "$m" 'gw_ingress_streams_open'
check_contains "metrics: cancels" "$m" 'gw_ingress_cancels_total'
check_contains "metrics: connection-layer rejections" "$m" 'gw_ingress_connections_rejected_total{reason="bad_framing"}'

# --- still serving after all that; SIGHUP without TLS is harmless ---
kill -HUP "$(stack_pid ingress)"
sleep 0.3
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions" "${AUTH[@]}" "${JSON[@]}" -d "$body")
check_eq "still serving after the hostile clients and a SIGHUP" 200 "$code"
rc=0
stack_stop_one ingress 30 || rc=$?
check_eq "ingress exits 0 on SIGTERM" 0 "$rc"
check_eq "the API key appears in no log" "" "$(grep -rl -F -- "${KEY#gw_*_}" "$STACK_DIR/logs" 2>/dev/null)"
check_eq "the limited API key appears in no log" "" "$(grep -rl -F -- "${LIMITED#gw_*_}" "$STACK_DIR/logs" 2>/dev/null)"

t_summary
