#!/usr/bin/env bash
# OAuth2 token introspection (RFC 7662) end to end against a local mock server
# (tests/tools/gw-introspect-mock): Globus-shaped answers (username, sub, exp,
# session_info.authentications[].idp, policy_evaluations), the cache (one call per
# token; inactive answers cached too), required policies and providers applied to the
# answer, 503 (not 401) for new tokens while the server is down with cached tokens still
# served, and a slow server never holding up other requests. $1 = build directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=$(cd "${1:?usage: authz_introspect.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"
. "$HERE/authz_env.sh"
MOCK=$B/authz/gw-introspect-mock

if ! env_setup 4; then
	not_ok "PostgreSQL, migrations and broker start"
	t_summary
	exit 1
fi
ok "PostgreSQL, migrations and broker start"

now=$(date +%s)
TA=$(openssl rand -hex 24)
TB=$(openssl rand -hex 24)
TC=$(openssl rand -hex 24)
TD=$(openssl rand -hex 24)
TI=$(openssl rand -hex 24)
answer() { # username idp policy-evaluation
	echo "{\"active\":true,\"scope\":\"inference\",\"client_id\":\"c\",\"sub\":\"$(cat /proc/sys/kernel/random/uuid)\",\"username\":\"$1\",\"exp\":$((now + 3600)),\"identity_set\":[\"x\"],\"session_info\":{\"session_id\":\"s\",\"authentications\":{\"x\":{\"idp\":\"$2\",\"auth_time\":$now}}},\"policy_evaluations\":{\"mfa-policy\":{\"evaluation\":$3}},\"groups\":[\"staff\"]}"
}
cat >"$T/tokens.json" <<JSON
{"$TA": $(answer alice@anl.gov anl.gov true),
 "$TB": $(answer bob@anl.gov anl.gov false),
 "$TC": $(answer carol@anl.gov anl.gov true),
 "$TD": $(answer dave@anl.gov anl.gov true)}
JSON
MPORT=$(free_port)
start_mock() { # delay-ms
	"$MOCK" "$MPORT" "$T/tokens.json" gw-client s3cret "${1:-0}" 2>>"$T/mock.log" &
	MOCK_PID=$!
	EXTRA_PIDS+=("$MOCK_PID")
	for i in $(seq 1 50); do curl -s "http://127.0.0.1:$MPORT/calls" >/dev/null && return 0; sleep 0.1; done
	return 1
}
calls() { curl -s "http://127.0.0.1:$MPORT/calls"; }
check "the mock introspection server starts" start_mock 0
echo s3cret >"$T/client.secret"
cat >"$T/policy.json" <<JSON
{"allowed_idps": ["anl.gov"], "required_policies": ["mfa-policy"]}
JSON
KEY=$(new_key keyuser)
start_authz 1 GW_POLICY_FILE="$T/policy.json" GW_INTROSPECTION_URL="http://127.0.0.1:$MPORT/" \
	GW_INTROSPECTION_CLIENT_ID=gw-client GW_INTROSPECTION_CLIENT_SECRET_FILE="$T/client.secret"
if ! eventually 30 ready_n 1; then
	tail -20 "$T/authz1.log"
	not_ok "authz with introspection becomes ready"
	t_summary
	exit 1
fi
ok "authz with introspection becomes ready"

r=$(probe "$TA" --model m)
check_eq "active token: forwarded, principal = username" "authorized alice@anl.gov" "$(status_of "$r") $(jq -r '.headers["gw-principal"]' <<<"$r")"
check_eq "groups and rule" "staff introspection" "$(jq -r '.headers | "\(.["gw-groups"]) \(.["gw-rule"])"' <<<"$r")"
check_eq "audit: the session's identity provider, credential type" "anl.gov introspection" "$(jq -r '"\(.audit.idp) \(.audit.extra.credential)"' <<<"$r")"
r=$(probe "$TA" --model m)
check_eq "the same token again: served from the cache (one call)" "authorized 1" "$(status_of "$r") $(calls)"
w=$(probe "$TA" --route /resource_server/whoami --model "" | jq -r .value)
check_eq "whoami: introspection identity" "alice@anl.gov|anl.gov|introspection|$((now + 3600))" \
	"$(jq -r '"\(.principal)|\(.idp)|\(.credential.type)|\(.credential.expires_at | fromdateiso8601)"' <<<"$w")"
r=$(probe "$TI" --model m)
check_eq "inactive token: 401" "401" "$(status_of "$r")"
check_contains "inactive token: says so" "$(err_of "$r")" "not active"
r=$(probe "$TI" --model m)
check_eq "inactive answer cached (no second call)" "401 2" "$(status_of "$r") $(calls)"
r=$(probe "$TB" --model m)
check_eq "policy evaluation false: 403 required policy" "403" "$(status_of "$r")"
check_contains "names the policy" "$(err_of "$r")" "mfa-policy"

# --- a slow introspection server does not hold up other requests ---
kill "$MOCK_PID"; wait "$MOCK_PID" 2>/dev/null
check "the mock restarts with a 2 s delay" start_mock 2000
probe "$TC" --model m >"$T/slow.out" &
SLOW=$!
sleep 0.3
t0=$(date +%s%N)
r=$(probe "$KEY" --model m)
t1=$(date +%s%N)
check_eq "an API key request during a slow introspection is answered" "authorized" "$(status_of "$r")"
check "... without waiting for it (under 1.5 s)" test $(((t1 - t0) / 1000000)) -lt 1500
wait "$SLOW"
check_eq "the slow token is decided once the answer comes" "authorized carol@anl.gov" \
	"$(status_of "$(cat "$T/slow.out")") $(jq -r '.headers["gw-principal"]' <"$T/slow.out")"

# --- introspection down ---
kill "$MOCK_PID"; wait "$MOCK_PID" 2>/dev/null
r=$(probe "$TA" --model m)
check_eq "server down: a cached identity keeps working" "authorized" "$(status_of "$r")"
r=$(probe "$TD" --model m)
check_eq "server down: a new token gets 503, not 401" "503" "$(status_of "$r")"
check_contains "503 says why" "$(err_of "$r")" "identity provider cannot be reached"
check "503 carries a retry time" test "$(jq -r '.headers["gw-retry-after"]' <<<"$r")" -ge 1
check "the failure is logged" grep -q '"msg":"introspection call failed' "$T/authz1.log"

# --- the tokens stay secret ---
stop_authz 1
"$PROBE" dump gw.authorized gw.replies gw.audit gw.deadletter gw.usage gw.requests >"$T/topics.dump" 2>/dev/null
dump=$(runuser -u postgres -- "$PGBIN/pg_dump" -h "$PGBASE" -d gateway 2>/dev/null)
leaks=0
for t in "$TA" "$TB" "$TC" "$TD" "$TI"; do
	grep -qF -- "$t" "$T/topics.dump" "$T"/authz*.log "$T/probe.log" && leaks=$((leaks + 1))
	grep -qF -- "$t" <<<"$dump" && leaks=$((leaks + 1))
done
check_eq "no opaque token in any topic, authz log or database row" 0 "$leaks"
finish_checks
t_summary
