#!/usr/bin/env bash
# authz policy, models and limits end to end: GW_POLICY_FILE (groups, '<' '>' usernames,
# per-group model lists, SIGHUP and on-change reloads, a bad file kept out), gw-models,
# FIRST cluster/framework headers, the whoami answer, 429s with their retry time for
# requests/tokens per minute, concurrency (slots freed by gw.usage), group limits, and a
# daily token quota that survives a restart (loaded from authz.usage) and a PostgreSQL
# outage. $1 = build directory. Prints "N passed, N failed"; exit 1 on any failure.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=$(cd "${1:?usage: authz_policy.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"
. "$HERE/authz_env.sh"

if ! env_setup 4; then
	not_ok "PostgreSQL, migrations and broker start"
	t_summary
	exit 1
fi
ok "PostgreSQL, migrations and broker start"

POLICY=$T/policy.json
write_policy() { # extra allowed group
	cat >"$POLICY.tmp" <<JSON
{
  "comment": "authz_policy.sh",
  "allowed_groups": ["staff", "hpc", "students"$1],
  "allowed_idps": ["anl.gov"],
  "models_by_group": {"staff": ["mock-small", "mock-large"], "students": ["mock-small"],
                      "hpc": ["*"]},
  "limits": {
    "principals": {"rpm-user": {"requests_per_minute": 5}, "conc-user": {"concurrent": 2},
                   "tok-user": {"tokens_per_minute": 100},
                   "quota-user": {"tokens_per_day": 100, "tokens_per_month": 1000}},
    "groups": {"students": {"requests_per_minute": 4}}
  }
}
JSON
	mv "$POLICY.tmp" "$POLICY"
}
write_policy ""

ALICE=$(new_key alice --groups staff --models mock-small,other)
ALICE_ID=$(cut -d_ -f2 <<<"$ALICE")
OUTSIDER=$(new_key outsider --groups visitors)
BADNAME=$(new_key 'bad<user>' --groups staff)
RPM=$(new_key rpm-user --groups hpc)
CONC=$(new_key conc-user --groups hpc)
CONC_ID=$(cut -d_ -f2 <<<"$CONC")
TOK=$(new_key tok-user --groups hpc)
TOK_ID=$(cut -d_ -f2 <<<"$TOK")
QUOTA=$(new_key quota-user --groups hpc)
QUOTA_ID=$(cut -d_ -f2 <<<"$QUOTA")
STU1=$(new_key stu1 --groups students)
STU2=$(new_key stu2 --groups students)

start_authz 1 GW_POLICY_FILE="$POLICY" GW_AUTHZ_USAGE_FLUSH_MS=300 GW_AUTHZ_DB_TIMEOUT_MS=1000
if ! eventually 30 ready_n 1; then
	tail -20 "$T/authz1.log"
	not_ok "authz with a policy file becomes ready"
	t_summary
	exit 1
fi
ok "authz with a policy file becomes ready"
check_contains "the policy load is logged" "$(cat "$T/authz1.log")" '"msg":"policy loaded"'

# --- models and contract headers ---
r=$(probe "$ALICE" --model mock-small --cluster polaris --framework vllm)
check_eq "allowed: forwarded" "authorized" "$(status_of "$r")"
check_eq "gw-models: the key's list intersected with the group's" "mock-small" "$(jq -r '.headers["gw-models"]' <<<"$r")"
check_eq "gw-cluster and gw-framework copied" "polaris vllm" "$(jq -r '.headers | "\(.["gw-cluster"]) \(.["gw-framework"])"' <<<"$r")"
check_eq "the message passes the contract decoder (gw-models required)" "true" "$(jq -r .decodes <<<"$r")"
r=$(probe "$RPM" --model anything)
check_eq "a group allowed every model: gw-models *" "*" "$(jq -r '.headers["gw-models"]' <<<"$r")"
r=$(probe "$ALICE" --model mock-large)
check_eq "a model the key does not list: 403" "403" "$(status_of "$r")"
r=$(probe "$ALICE" --model other)
check_eq "a model the group list does not have: 403" "403" "$(status_of "$r")"
check_contains "model refusal: names the model and rule" "$(err_of "$r")" "model 'other' is not allowed"
r=$(probe "$ALICE" --route /v1/models --model "")
check_eq "/v1/models: no model check, forwarded" "authorized" "$(status_of "$r")"
check_eq "/v1/models: gw-models for the dispatcher's filter" "mock-small" "$(jq -r '.headers["gw-models"]' <<<"$r")"
r=$(probe "$ALICE" --route /resource_server/list-endpoints --model "")
check_eq "list-endpoints: forwarded" "authorized" "$(status_of "$r")"

# --- whoami ---
r=$(probe "$ALICE" --route /resource_server/whoami --model "")
check_eq "whoami: answered by authz on gw.replies" "gw.replies 200" "$(jq -r '"\(.topic) \(.headers["gw-status"])"' <<<"$r")"
w=$(jq -r .value <<<"$r")
check_eq "whoami: principal, groups, credential, models" "alice|staff|api_key|$ALICE_ID|mock-small" \
	"$(jq -r '"\(.principal)|\(.groups|join(","))|\(.credential.type)|\(.credential.id)|\(.models|join(","))"' <<<"$w")"
check_not_contains "whoami: never the key" "$w" "${ALICE#gw_*_}"
check_eq "whoami: audited as allowed" "allowed whoami answered" "$(jq -r '"\(.audit.outcome) \(.audit.reason)"' <<<"$r")"

# --- admission ---
r=$(probe "$OUTSIDER" --model mock-small)
check_eq "a group outside allowed_groups: 403" "403" "$(status_of "$r")"
check_contains "403 names the rule" "$(err_of "$r")" "rule policy:allowed_groups"
check_eq "403 audited with the rule" "denied|policy: allowed_groups|outsider" "$(jq -r '"\(.audit.outcome)|\(.audit.reason)|\(.audit.principal)"' <<<"$r")"
r=$(probe "$BADNAME" --model mock-small)
check_eq "a username with '<' or '>': 403" "403" "$(status_of "$r")"
check_contains "username refusal names the rule" "$(err_of "$r")" "username_characters"

# --- requests per minute ---
for i in 1 2 3 4 5; do probe "$RPM" --model m >/dev/null; done
r=$(probe "$RPM" --model m)
check_eq "6th request in a minute with requests_per_minute 5: 429" "429" "$(status_of "$r")"
check_eq "429: rate_limit_error, code" "rate_limit_error rate_limit_exceeded" "$(jq -r '.value | fromjson | "\(.error.type) \(.error.code)"' <<<"$r")"
ra=$(jq -r '.value | fromjson | .error.retry_after_s' <<<"$r")
check "429: retry_after_s in the body (1..60)" test "$ra" -ge 1 -a "$ra" -le 60
check_eq "429: gw-retry-after header equals the body" "$ra" "$(jq -r '.headers["gw-retry-after"]' <<<"$r")"
check_contains "429: the message names the limit" "$(err_of "$r")" "requests_per_minute"
check_eq "429: audited as denied with the limit" "denied 429 requests_per_minute" \
	"$(jq -r '"\(.audit.outcome) \(.audit.status) \(.audit.extra.limit)"' <<<"$r")"

# --- group limit: students share 4 per minute ---
for i in 1 2 3; do probe "$STU1" --model mock-small >/dev/null; done
r=$(probe "$STU2" --model mock-small)
check_eq "group limit: 4th request of the group allowed" "authorized" "$(status_of "$r")"
r=$(probe "$STU2" --model mock-small)
check_eq "group limit: 5th request of the group refused" "429" "$(status_of "$r")"
check_contains "group limit: names the group" "$(err_of "$r")" "group:students"

# --- concurrency: a slot is held until the request's gw.usage arrives ---
r1=$(probe "$CONC" --model m)
r2=$(probe "$CONC" --model m)
r3=$(probe "$CONC" --model m)
check_eq "concurrent 2: two allowed, the third refused" "authorized authorized 429" "$(status_of "$r1") $(status_of "$r2") $(status_of "$r3")"
check_contains "concurrency refusal names the limit" "$(err_of "$r3")" "concurrent"
"$PROBE" usage --principal conc-user --tokens 0 --request-id "$(jq -r .id <<<"$r1")" --hint "$CONC_ID" >/dev/null 2>>"$T/probe.log"
freed() { [ "$(status_of "$(probe "$CONC" --model m)")" = authorized ]; }
check "a gw.usage message frees the slot" eventually 5 freed
r=$(probe "$CONC" --model m --deadline-ms 1500)
check_eq "both slots busy again" "429" "$(status_of "$r")"
# The slot taken by a request with a short deadline is freed by the janitor.
"$PROBE" usage --principal conc-user --tokens 0 --request-id "$(jq -r .id <<<"$r2")" --hint "$CONC_ID" >/dev/null 2>>"$T/probe.log"
rs=$(probe "$CONC" --model m --deadline-ms 1500)
check_eq "a short-deadline request takes the freed slot" "authorized" "$(status_of "$rs")"
sleep 2.5
r=$(probe "$CONC" --model m)
check_eq "its slot expired with its deadline (no usage ever came)" "authorized" "$(status_of "$r")"
check "metrics: slots expired by deadline counted" bash -c "curl -s http://127.0.0.1:$PORT_1/metrics | grep -qE '^gw_authz_slots_expired_total [1-9]'"

# --- tokens per minute (fed by gw.usage) ---
probe "$TOK" --model m >/dev/null
"$PROBE" usage --principal tok-user --tokens 150 --hint "$TOK_ID" >/dev/null 2>>"$T/probe.log"
tpm() { [ "$(status_of "$(probe "$TOK" --model m)")" = 429 ]; }
check "tokens_per_minute 100 after 150 tokens: 429" eventually 5 tpm

# --- daily quota, kept in PostgreSQL ---
probe "$QUOTA" --model m >/dev/null
"$PROBE" usage --principal quota-user --tokens 120 --hint "$QUOTA_ID" >/dev/null 2>>"$T/probe.log"
quota_429() { [ "$(status_of "$(probe "$QUOTA" --model m)")" = 429 ]; }
check "tokens_per_day 100 after 120 tokens: 429" eventually 5 quota_429
r=$(probe "$QUOTA" --model m)
check_contains "quota refusal names the limit" "$(err_of "$r")" "tokens_per_day"
ra=$(jq -r '.headers["gw-retry-after"]' <<<"$r")
to_midnight=$((86400 - $(date -u +%s) % 86400))
check "quota: retry after is the time to UTC midnight" test "$ra" -ge $((to_midnight - 5)) -a "$ra" -le $((to_midnight + 5))
in_db() { [ "$(psql_admin -c "SELECT tokens FROM authz.usage WHERE principal='quota-user'")" = 120 ]; }
check "quota usage written to authz.usage" eventually 10 in_db

# --- reloads ---
kill -HUP "${AUTHZ_PIDS[1]}"
write_policy ', "visitors"'
kill -HUP "${AUTHZ_PIDS[1]}"
allowed_now() { [ "$(status_of "$(probe "$OUTSIDER" --route /v1/models --model "")")" = authorized ]; }
check "SIGHUP reloads the policy (a newly allowed group passes)" eventually 5 allowed_now
echo '{"allowed_groups": ["staff"], "oops": 1}' >"$POLICY.tmp" && mv "$POLICY.tmp" "$POLICY"
kill -HUP "${AUTHZ_PIDS[1]}"
rejected() { grep -q '"msg":"policy file rejected: keeping the policy in force".*unknown field' "$T/authz1.log"; }
check "a bad policy file is rejected and says why" eventually 5 rejected
r=$(probe "$OUTSIDER" --route /v1/models --model "")
check_eq "the policy in force is kept" "authorized" "$(status_of "$r")"
write_policy ""
gone() { [ "$(status_of "$(probe "$OUTSIDER" --route /v1/models --model "")")" = 403 ]; }
check "a changed file is reloaded without a signal" eventually 5 gone

# --- restart: the quota comes back from PostgreSQL ---
stop_authz 1
start_authz 1 GW_POLICY_FILE="$POLICY" GW_AUTHZ_USAGE_FLUSH_MS=300 GW_AUTHZ_DB_TIMEOUT_MS=1000
check "authz restarts" eventually 30 ready_n 1
probe "$QUOTA" --model m >/dev/null # first sight: the quota load starts
check "after a restart the day's usage is loaded: 429" eventually 5 quota_429

# --- PostgreSQL down: quotas and limits keep working from memory ---
pg_down
db_down() { metrics_n 1 | grep -q '^gw_authz_db_up 0'; }
check "database outage seen" eventually 10 db_down
r=$(probe "$QUOTA" --model m)
check_eq "database down: the quota still refuses" "429" "$(status_of "$r")"
r=$(probe "$ALICE" --model mock-small)
check_eq "database down: keys still served" "authorized" "$(status_of "$r")"
"$PROBE" usage --principal alice --tokens 7 --hint "$ALICE_ID" >/dev/null 2>>"$T/probe.log"
pg_up
alice_db() { [ "$(psql_admin -c "SELECT tokens FROM authz.usage WHERE principal='alice'")" = 7 ]; }
check "database back: the usage counted meanwhile is written" eventually 15 alice_db

# --- no credential anywhere ---
for k in "$ALICE" "$OUTSIDER" "$RPM" "$CONC" "$TOK" "$QUOTA" "$STU1" "$STU2"; do
	s=${k#gw_*_}
	check_eq "no secret in any log (${k:0:19}...)" "" "$(grep -rF -- "$s" "$T"/*.log 2>/dev/null | head -1)"
done
check "authz exits 0 on SIGTERM" bash -c "kill -TERM ${AUTHZ_PIDS[1]}; for i in \$(seq 1 200); do kill -0 ${AUTHZ_PIDS[1]} 2>/dev/null || exit 0; sleep 0.1; done; exit 1"
finish_checks
t_summary
