#!/usr/bin/env bash
# The walking skeleton end to end: every process started for real (PostgreSQL, the
# embedded broker, the mock endpoint, the five services), checked from a client's
# side and from the audit log. $1 = build directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STACK_BIN=$(cd "$1" && pwd)
STACK_DIR=$(mktemp -d /tmp/gw-e2e.XXXXXX)
STACK_FAST=1
GW_REQUEST_TIMEOUT=5
. "$ROOT/deploy/local/stack.sh"
. "$ROOT/tests/lib/assert.sh"

cleanup() {
	stack_stop >/dev/null 2>&1
	# Keep the logs of a failed run where CI and developers can read them.
	if [ "$T_FAIL" -gt 0 ]; then
		rm -rf "$STACK_BIN/test-logs/e2e" && mkdir -p "$STACK_BIN/test-logs" &&
			cp -r "$STACK_DIR/logs" "$STACK_BIN/test-logs/e2e" &&
			echo "logs kept in $STACK_BIN/test-logs/e2e"
	fi
	[ -n "${PGBASE:-}" ] && [ "${PGBASE#/var/lib/postgresql/gw-}" != "$PGBASE" ] && rm -rf "$PGBASE"
	rm -rf "$STACK_DIR"
}
trap cleanup EXIT

if ! stack_start 2>"$STACK_DIR/start.log"; then
	cat "$STACK_DIR/start.log"
	not_ok "stack starts"
	t_summary
	exit 1
fi
ok "stack starts: postgres, broker, mock endpoint and five services ready"
KEY=$DEV_KEY
URL=$INGRESS_URL
export GW_ENV_FILE=$STACK_DIR/env

# --- a chat completion succeeds ---
hdr=$(mktemp)
body=$(curl -sS -D "$hdr" "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' \
	-d '{"model":"mock-llm","messages":[{"role":"user","content":"Hello there gateway"}]}')
status=$(head -n1 "$hdr" | awk '{print $2}')
rid=$(grep -i '^x-request-id:' "$hdr" | tr -d '\r' | awk '{print $2}')
check_eq "chat completion answers 200" 200 "$status"
check "X-Request-Id is 32 hex digits" bash -c "[[ '$rid' =~ ^[0-9a-f]{32}$ ]]"
check_eq "the endpoint's answer comes back untouched (object)" "chat.completion" "$(jq -r .object <<<"$body")"
check "the answer has content" test -n "$(jq -r '.choices[0].message.content' <<<"$body")"
check_eq "usage: prompt tokens counted by the endpoint" 3 "$(jq -r .usage.prompt_tokens <<<"$body")"
direct=$(curl -sS "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" -H 'Content-Type: application/json' \
	-d '{"model":"mock-llm","messages":[{"role":"user","content":"Hello there gateway"}]}')
check_eq "gateway answer is byte-identical to the endpoint's" "$direct" "$body"

# --- its events are in the audit log ---
events_of() { "$STACK_BIN/auditor/auditor" query --request-id "$1" 2>/dev/null | jq -c .; }
has_types() { # id n
	[ "$(events_of "$1" | jq -r .type | sort -u | wc -l)" -ge "$2" ]
}
check "the request's events reach the audit log" eventually 20 has_types "$rid" 4
ev=$(events_of "$rid")
check_contains "audit: request.received" "$ev" '"type":"request.received"'
check_contains "audit: authz decision allowed" "$ev" '"outcome":"allowed"'
check_contains "audit: dispatch result with tokens" "$ev" '"type":"dispatch.result"'
check_contains "audit: request.completed with status 200" "$(jq -c 'select(.type=="request.completed")' <<<"$ev")" '"status":200'
check_contains "audit: principal recorded" "$ev" '"principal":"dev"'
check_not_contains "audit: the API key is not in the audit log" "$ev" "$KEY"

# --- streaming through the whole pipeline ---
sse=$(curl -sS -N "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' \
	-d '{"model":"mock-llm","stream":true,"messages":[{"role":"user","content":"stream please"}]}')
check_contains "stream ends with data: [DONE]" "$sse" "data: [DONE]"
check "stream carries many chunks" test "$(grep -c '^data: ' <<<"$sse")" -ge 10
direct_sse=$(curl -sS -N "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" -H 'Content-Type: application/json' \
	-d '{"model":"mock-llm","stream":true,"messages":[{"role":"user","content":"stream please"}]}')
check_eq "streamed answer arrives whole and in order" "$direct_sse" "$sse"

# --- a wrong key gets 401 and is audited as a denial ---
hdr2=$(mktemp)
body=$(curl -sS -D "$hdr2" "$URL/v1/chat/completions" -H "Authorization: Bearer gw_0000000000000000_wrongwrongwrongwrongwrongwrongwrongwrongwro" \
	-H 'Content-Type: application/json' -d '{"model":"mock-llm","messages":[]}')
check_eq "wrong key: 401" 401 "$(head -n1 "$hdr2" | awk '{print $2}')"
check_eq "wrong key: OpenAI error shape" "authentication_error" "$(jq -r .error.type <<<"$body")"
rid2=$(grep -i '^x-request-id:' "$hdr2" | tr -d '\r' | awk '{print $2}')
denied() { events_of "$rid2" | grep -q '"outcome":"denied"'; }
check "wrong key: audited as a denial" eventually 20 denied

# --- bad input ---
code=$(curl -sS -o /tmp/gw-e2e-body.$$ -w '%{http_code}' "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' -d 'this is not json')
check_eq "body that is not JSON: 400" 400 "$code"
check_eq "not JSON: OpenAI error shape" "invalid_request_error" "$(jq -r .error.type </tmp/gw-e2e-body.$$)"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' -d '[1,2]')
check_eq "body that is not an object: 400" 400 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' -d '{"messages":[]}')
check_eq "missing model: 400" 400 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions" -H 'Content-Type: application/json' -d '{"model":"mock-llm"}')
check_eq "no credential: 401" 401 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/nope" -H "Authorization: Bearer $KEY")
check_eq "unknown route: 404" 404 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY")
check_eq "GET on a POST route: 405" 405 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' -d '{"model":"no-such-model","messages":[]}')
check_eq "model no endpoint serves: 404" 404 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/health")
check_eq "ingress /health on the main port" 200 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/ready")
check_eq "ingress /ready on the main port" 200 "$code"
rm -f /tmp/gw-e2e-body.$$ "$hdr" "$hdr2"

# --- embeddings and completions routes ---
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/embeddings" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' -d '{"model":"mock-embed","input":"hello"}')
check_eq "embeddings: 200" 200 "$code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' -d '{"model":"mock-llm","prompt":"once upon"}')
check_eq "completions: 200" 200 "$code"

# --- metrics ---
m=$(curl -sS "$URL/metrics")
check_contains "ingress /metrics counts requests by route and status" "$m" 'gw_ingress_requests_total{route="/v1/chat/completions",code="200"}'

# --- backups ---
snap=$("$STACK_BIN/backup-agent/backup-agent" snapshot 2>"$STACK_DIR/snap.log")
check "backup-agent snapshot succeeds" test -n "$snap"
check_contains "backup-agent list shows it" "$("$STACK_BIN/backup-agent/backup-agent" list 2>/dev/null)" "$snap"
# The snapshot restores into a scratch database and the auditor's chains verify there.
vout=$("$STACK_BIN/backup-agent/backup-agent" verify "$snap" --format json 2>"$STACK_DIR/verify.log")
vrc=$?
check_eq "backup-agent verify: the snapshot restores and verifies" 0 "$vrc"
check_eq "backup-agent verify: the audit chains were checked" true "$(jq -r '.chain_checked' <<<"$vout" 2>/dev/null)"

# --- the credential never leaks ---
check_eq "the API key appears in no log" "" "$(grep -rl -F -- "${KEY#gw_*_}" "$STACK_DIR/logs" 2>/dev/null)"
dump=$("$PGBIN/pg_dump" -h "$PGSOCK" -p "$PGPORT" -U postgres gateway 2>/dev/null)
check_not_contains "the API key is in no database row" "$dump" "${KEY#gw_*_}"

# --- SIGTERM: every service exits 0 ---
for name in ingress dispatcher authz backup-agent auditor; do
	rc=0
	stack_stop_one "$name" 30 || rc=$?
	check_eq "$name exits 0 on SIGTERM" 0 "$rc"
done

t_summary
