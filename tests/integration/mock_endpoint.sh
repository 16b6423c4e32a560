#!/usr/bin/env bash
# Integration test of the development programs: gw-mock-endpoint checked over HTTP
# with curl and jq, and gw-broker's bootstrap file and shutdown.
# Usage: mock_endpoint.sh BUILD_DIR   (binaries in BUILD_DIR/deploy/local)
set -euo pipefail

BUILD=${1:?usage: mock_endpoint.sh BUILD_DIR}
MOCK=$BUILD/deploy/local/gw-mock-endpoint
BROKER=$BUILD/deploy/local/gw-broker
for f in "$MOCK" "$BROKER"; do
	[ -x "$f" ] || { echo "not built: $f"; exit 1; }
done
for tool in curl jq; do
	command -v "$tool" >/dev/null || { echo "this test needs $tool"; exit 1; }
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do
		kill -KILL "$p" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
# A clean environment: no inherited GW_* settings, no .run/env picked up from the cwd.
cd "$WORK"
CLEANENV=(env -i "PATH=$PATH" "HOME=${HOME:-/tmp}" "ASAN_OPTIONS=${ASAN_OPTIONS:-}"
	"UBSAN_OPTIONS=${UBSAN_OPTIONS:-}" "LSAN_OPTIONS=${LSAN_OPTIONS:-}")

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
# check NAME COMMAND...: passes when COMMAND succeeds.
check() {
	local name=$1
	shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}

free_port() {
	local p
	for _ in $(seq 1 200); do
		p=$((20000 + (RANDOM * 32768 + RANDOM) % 40001))
		if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

# start_mock NAME [VAR=value...]: starts gw-mock-endpoint on a free port with those
# settings; sets PORT and MOCK_PID. Retries another port if the bind loses a race.
start_mock() {
	local name=$1
	shift
	for _ in 1 2 3; do
		PORT=$(free_port)
		"${CLEANENV[@]}" "$@" GW_MOCK_LISTEN=127.0.0.1:$PORT "$MOCK" serve \
			>"$WORK/$name.out" 2>"$WORK/$name.log" &
		MOCK_PID=$!
		PIDS+=("$MOCK_PID")
		for _ in $(seq 1 100); do
			if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/health"; then
				return 0
			fi
			kill -0 "$MOCK_PID" 2>/dev/null || break
			sleep 0.05
		done
		kill -KILL "$MOCK_PID" 2>/dev/null || true
		wait "$MOCK_PID" 2>/dev/null || true
	done
	echo "gw-mock-endpoint ($name) did not start; its log:"
	cat "$WORK/$name.log"
	return 1
}

# stop_pid PID: SIGTERM, then the exit status (killed after 10 s).
stop_pid() {
	local pid=$1 rc=0
	kill -TERM "$pid"
	for _ in $(seq 1 200); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" || rc=$?
	return $rc
}

# req METHOD PATH [BODY] [curl args...]: sets CODE; body in $WORK/out, headers in $WORK/hdr.
req() {
	local method=$1 path=$2 data=${3-}
	shift 2
	[ $# -gt 0 ] && shift
	local args=(-sS -X "$method" -o "$WORK/out" -D "$WORK/hdr" -w '%{http_code}' --max-time 10)
	[ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary "$data")
	CODE=$(curl "${args[@]}" "$@" "http://127.0.0.1:$PORT$path" 2>"$WORK/curl.err") || CODE=000
}
# jqe FILTER: the last body satisfies FILTER.
jqe() { jq -e "$1" "$WORK/out" >/dev/null 2>&1; }
header_has() { grep -qi "^$1" "$WORK/hdr"; }
is_error_shape() {
	jqe '(.error.message|type=="string") and (.error.type|type=="string") and
	     (.error|has("code"))'
}
stat_is() { # stat_is FIELD N: GET /mock/stats has FIELD == N
	curl -s --max-time 5 "http://127.0.0.1:$PORT/mock/stats" | jq -e ".$1 == $2" >/dev/null
}
wait_stat() { # wait_stat FIELD N: polls up to 5 s
	for _ in $(seq 1 100); do
		stat_is "$1" "$2" && return 0
		sleep 0.05
	done
	return 1
}
sse_content_chunks() { # content chunks in an SSE body
	grep '^data: {' "$1" | sed 's/^data: //' |
		jq -s '[.[] | select(.choices[0].delta.content != null)] | length'
}

# --- command line --------------------------------------------------------------------
check "gw-mock-endpoint --help exits 0" "$MOCK" --help >/dev/null
rc=0; "$MOCK" bogus >/dev/null 2>&1 || rc=$?
check "gw-mock-endpoint with an unknown subcommand exits 2" [ "$rc" = 2 ]
check "gw-broker --help exits 0" "$BROKER" --help >/dev/null
rc=0; "$BROKER" --bogus >/dev/null 2>&1 || rc=$?
check "gw-broker with an unknown flag exits 2" [ "$rc" = 2 ]
rc=0; "${CLEANENV[@]}" GW_MOCK_FAIL_RATE=2 "$MOCK" >/dev/null 2>&1 || rc=$?
check "a bad GW_MOCK_FAIL_RATE stops startup with 1" [ "$rc" = 1 ]

# --- the main instance -----------------------------------------------------------------
start_mock main GW_MOCK_COMPLETION_TOKENS=7 GW_MOCK_MODELS="mock-llm,mock-embed,other-model"
CHAT='{"model":"mock-llm","messages":[{"role":"system","content":"be  brief"},{"role":"user","content":"hello there\nkenobi"}]}'

req POST /v1/chat/completions "$CHAT"
check "chat completion answers 200 JSON" [ "$CODE" = 200 ]
check "chat completion content type is JSON" header_has 'Content-Type: application/json'
check "chat completion has OpenAI's shape" jqe '
	(.id|startswith("chatcmpl-")) and .object=="chat.completion" and (.created|type=="number")
	and .model=="mock-llm" and (.choices|length)==1 and .choices[0].index==0
	and .choices[0].message.role=="assistant" and (.choices[0].message.content|type=="string")
	and .choices[0].finish_reason=="stop"'
check "chat completion has GW_MOCK_COMPLETION_TOKENS words" \
	jqe '(.choices[0].message.content|split(" ")|length)==7'
check "chat usage counts prompt words, completion and total" \
	jqe '.usage.prompt_tokens==5 and .usage.completion_tokens==7 and .usage.total_tokens==12'
cp "$WORK/out" "$WORK/first"
CONTENT=$(jq -r '.choices[0].message.content' "$WORK/first")

req POST /v1/chat/completions "$CHAT"
check "the same body gives the identical answer" cmp -s "$WORK/out" "$WORK/first"
req POST /v1/chat/completions '{"model":"mock-llm","messages":[{"role":"user","content":"other"}]}'
check "another body gives another answer" jqe ".choices[0].message.content != \"$CONTENT\""
check "prompt_tokens is at least 1" jqe '.usage.prompt_tokens==1'
req POST /v1/chat/completions '{"model":"mock-llm"}'
check "a body without messages still counts one prompt token" jqe '.usage.prompt_tokens==1'

req POST /v1/completions '{"model":"other-model","prompt":"one two three"}'
check "text completion has OpenAI's shape" jqe '
	(.id|startswith("cmpl-")) and .object=="text_completion" and .model=="other-model"
	and (.choices[0].text|split(" ")|length)==7 and .choices[0].finish_reason=="stop"
	and .usage.prompt_tokens==3 and .usage.total_tokens==10'

# Streaming.
STREAM='{"model":"mock-llm","stream":true,"messages":[{"role":"user","content":"stream it"}]}'
req POST /v1/chat/completions "$STREAM"
cp "$WORK/out" "$WORK/stream1"
check "stream answers 200" [ "$CODE" = 200 ]
check "stream is text/event-stream" header_has 'Content-Type: text/event-stream'
check "stream ends with data: [DONE]" [ "$(grep -v '^$' "$WORK/stream1" | tail -1)" = "data: [DONE]" ]
check "stream has GW_MOCK_COMPLETION_TOKENS content chunks" \
	[ "$(sse_content_chunks "$WORK/stream1")" = 7 ]
check "stream chunks are chat.completion.chunk with one id, role first" \
	bash -c "grep '^data: {' '$WORK/stream1' | sed 's/^data: //' | jq -se '
		all(.[]; .object==\"chat.completion.chunk\") and ([.[].id]|unique|length)==1
		and .[0].choices[0].delta.role==\"assistant\"' >/dev/null"
check "stream's last chunk says stop and carries usage" \
	bash -c "grep '^data: {' '$WORK/stream1' | tail -1 | sed 's/^data: //' | jq -e '
		.choices[0].finish_reason==\"stop\" and .usage.prompt_tokens==2
		and .usage.completion_tokens==7 and .usage.total_tokens==9' >/dev/null"
check "every SSE event is followed by a blank line" \
	bash -c "[ \"\$(grep -c '^data: ' '$WORK/stream1')\" = \"\$(grep -c '^\$' '$WORK/stream1')\" ]"
req POST /v1/chat/completions "$STREAM"
check "the same streamed body gives the identical stream" cmp -s "$WORK/out" "$WORK/stream1"
req POST /v1/completions '{"model":"mock-llm","stream":true,"prompt":"x"}'
check "text completion streams text chunks then [DONE]" \
	bash -c "[ \"\$(grep '^data: {' '$WORK/out' | sed 's/^data: //' | jq -s '[.[] | select(.object==\"text_completion\" and .choices[0].finish_reason==null)] | length')\" = 7 ] && grep -qx 'data: \[DONE\]' '$WORK/out'"

# Embeddings and models.
req POST /v1/embeddings '{"model":"mock-embed","input":["a b","c"]}'
check "embeddings have OpenAI's list shape, dimension 8" jqe '
	.object=="list" and (.data|length)==2 and all(.data[]; .object=="embedding"
	and (.embedding|length)==8) and .data[1].index==1 and .model=="mock-embed"
	and .usage.prompt_tokens==3 and .usage.total_tokens==3'
req GET /v1/models
check "/v1/models lists GW_MOCK_MODELS" \
	jqe '.object=="list" and ([.data[].id]==["mock-llm","mock-embed","other-model"]) and all(.data[]; .object=="model")'

# Errors.
req POST /v1/chat/completions '{"model":"no-such-model","messages":[]}'
check "an unknown model gives 404" [ "$CODE" = 404 ]
check "the 404 is in OpenAI's error shape" is_error_shape
check "the 404 code is model_not_found" jqe '.error.code=="model_not_found" and .error.type=="invalid_request_error"'
req POST /v1/chat/completions '{"model":"mock-llm",'
check "bad JSON gives 400" [ "$CODE" = 400 ]
check "the 400 is in OpenAI's error shape" is_error_shape
req POST /v1/chat/completions '[1,2]'
check "a non-object body gives 400" [ "$CODE" = 400 ]
req POST /v1/chat/completions '{"messages":[]}'
check "a missing model gives 400 in error shape" bash -c "[ $CODE = 400 ] && jq -e '.error.message' '$WORK/out' >/dev/null"
req POST /v1/embeddings '{"model":"mock-embed"}'
check "embeddings without input give 400" [ "$CODE" = 400 ]
req GET /v1/nothing
check "an unknown route gives 404 in error shape" bash -c "[ $CODE = 404 ] && jq -e '.error.code==\"unknown_url\"' '$WORK/out' >/dev/null"
req GET /v1/chat/completions
check "a wrong method gives 405 in error shape" bash -c "[ $CODE = 405 ] && jq -e '.error.type' '$WORK/out' >/dev/null"
check "the 405 says what is allowed" header_has 'Allow: POST'
head -c 9000000 /dev/zero | tr '\0' 'a' >"$WORK/big"
CODE=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --data-binary @"$WORK/big" \
	"http://127.0.0.1:$PORT/v1/chat/completions" 2>/dev/null) || CODE=000
check "a body over 8 MiB is refused" bash -c "[ $CODE = 413 ] || [ $CODE = 400 ] || [ $CODE = 000 ]"

req GET /health
check "/health answers 200 ok" bash -c "[ $CODE = 200 ] && [ \"\$(cat '$WORK/out')\" = ok ]"
req GET /mock/stats
check "/mock/stats counts what reached the endpoint" \
	jqe '.requests==14 and .streams==3 and .cancelled==0 and .failed==0 and .rejected==5'
check "gw-mock-endpoint exits 0 on SIGTERM" stop_pid "$MOCK_PID"
check "nothing was logged at error level" bash -c "! grep -q '\"level\":\"error\"' '$WORK/main.log'"

# --- failures ----------------------------------------------------------------------------
start_mock fail GW_MOCK_FAIL_RATE=1
req POST /v1/chat/completions '{"model":"mock-llm"}'
check "GW_MOCK_FAIL_RATE=1 gives 503" [ "$CODE" = 503 ]
check "the 503 is in OpenAI's error shape" is_error_shape
req POST /v1/chat/completions '{"model":"mock-llm","stream":true}'
check "GW_MOCK_FAIL_RATE=1 fails streams too" [ "$CODE" = 503 ]
check "/mock/stats counts the failures" wait_stat failed 2
check "gw-mock-endpoint (fail) exits 0 on SIGTERM" stop_pid "$MOCK_PID"

start_mock half GW_MOCK_FAIL_RATE=0.5
codes=""
for _ in 1 2 3 4; do
	req POST /v1/completions '{"model":"mock-llm","prompt":"p"}'
	codes="$codes$CODE "
done
check "GW_MOCK_FAIL_RATE=0.5 fails every other request ($codes)" \
	[ "$(echo "$codes" | tr ' ' '\n' | grep -c 503)" = 2 ]
check "gw-mock-endpoint (half) exits 0 on SIGTERM" stop_pid "$MOCK_PID"

# --- API key -------------------------------------------------------------------------------
printf 'sk-test-123\n' >"$WORK/key"
start_mock key GW_MOCK_API_KEY_FILE="$WORK/key"
req POST /v1/chat/completions '{"model":"mock-llm"}'
check "no Authorization gives 401 in error shape" bash -c "[ $CODE = 401 ] && jq -e '.error.code==\"invalid_api_key\"' '$WORK/out' >/dev/null"
req POST /v1/chat/completions '{"model":"mock-llm"}' -H 'Authorization: Bearer sk-test-12'
check "a wrong key gives 401" [ "$CODE" = 401 ]
req POST /v1/chat/completions '{"model":"mock-llm"}' -H 'Authorization: Bearer sk-test-123'
check "the right key gives 200" [ "$CODE" = 200 ]
req GET /health
check "/health needs no key" [ "$CODE" = 200 ]
check "the key is never logged" bash -c "! grep -q 'sk-test-123' '$WORK/key.log'"
check "gw-mock-endpoint (key) exits 0 on SIGTERM" stop_pid "$MOCK_PID"

# --- latency, token pacing, cancellation, stop during a stream ------------------------------
start_mock slow GW_MOCK_LATENCY_MS=300 GW_MOCK_TOKEN_MS=100 GW_MOCK_COMPLETION_TOKENS=7
T=$(curl -s -o "$WORK/out" -w '%{time_total}' --max-time 10 -d '{"model":"mock-llm"}' \
	"http://127.0.0.1:$PORT/v1/chat/completions") || T=0
check "GW_MOCK_LATENCY_MS delays the answer (${T}s)" \
	bash -c "awk -v t='$T' 'BEGIN { exit !(t >= 0.29) }' && jq -e '.object==\"chat.completion\"' '$WORK/out' >/dev/null"
T=$(curl -s -N -o "$WORK/out" -w '%{time_total}' --max-time 10 \
	-d '{"model":"mock-llm","stream":true}' "http://127.0.0.1:$PORT/v1/chat/completions") || T=0
N=$(sse_content_chunks "$WORK/out" 2>/dev/null) || N=0
check "GW_MOCK_TOKEN_MS spaces the stream (${T}s >= 0.3 + 6 x 0.1, $N chunks)" \
	bash -c "awk -v t='$T' 'BEGIN { exit !(t >= 0.88) }' && [ '$N' = 7 ]"
curl -s -N -o "$WORK/cut" --max-time 0.55 -d '{"model":"mock-llm","stream":true}' \
	"http://127.0.0.1:$PORT/v1/chat/completions" || true
check "a client leaving mid-stream is counted as cancelled" wait_stat cancelled 1
check "the cancelled stream is released" wait_stat inflight 0
check "the cut stream had begun" grep -q '"role":"assistant"' "$WORK/cut"
curl -s -N -o "$WORK/open" --max-time 10 -d '{"model":"mock-llm","stream":true}' \
	"http://127.0.0.1:$PORT/v1/chat/completions" &
CURL_PID=$!
sleep 0.5
check "SIGTERM during an open stream exits 0" stop_pid "$MOCK_PID"
wait "$CURL_PID" || true
check "the open stream was finished with all chunks and [DONE]" \
	bash -c "[ \"\$(grep -c '\"content\"' '$WORK/open')\" = 7 ] && grep -qx 'data: \[DONE\]' '$WORK/open'"

# --- gw-broker --------------------------------------------------------------------------
BOOT=$WORK/run/bootstrap
mkdir -p "$WORK/run"
"${CLEANENV[@]}" GW_BROKER_PARTITIONS=3 GW_BROKER_REPLY_PARTITIONS=2 \
	"$BROKER" --bootstrap-file "$BOOT" >"$WORK/broker.out" 2>"$WORK/broker.log" &
BROKER_PID=$!
PIDS+=("$BROKER_PID")
for _ in $(seq 1 200); do
	[ -s "$BOOT" ] && break
	kill -0 "$BROKER_PID" 2>/dev/null || break
	sleep 0.05
done
check "gw-broker writes the bootstrap file" [ -s "$BOOT" ]
BS=$(cat "$BOOT" 2>/dev/null || true)
check "the bootstrap file holds 127.0.0.1:PORT ($BS)" bash -c "[[ '$BS' =~ ^127\.0\.0\.1:[0-9]+$ ]]"
check "no temporary file is left beside it" [ ! -e "$BOOT.tmp" ]
check "stdout carries the same bootstrap string" bash -c "[ \"\$(head -1 '$WORK/broker.out')\" = '$BS' ]"
check "the log names the bootstrap" grep -q "\"bootstrap\":\"$BS\"" "$WORK/broker.log"
BPORT=${BS##*:}
check "the broker accepts connections on that port" \
	bash -c "(exec 3<>/dev/tcp/127.0.0.1/$BPORT) 2>/dev/null"
check "gw-broker exits 0 on SIGTERM" stop_pid "$BROKER_PID"
check "gw-broker removes its bootstrap file on exit" [ ! -e "$BOOT" ]
rc=0
"${CLEANENV[@]}" "$BROKER" --bootstrap-file "$WORK/no/such/dir/bootstrap" >/dev/null 2>&1 || rc=$?
check "an unwritable bootstrap file stops gw-broker with 1" [ "$rc" = 1 ]

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
