#!/usr/bin/env bash
# authz end to end against a private PostgreSQL cluster and the embedded broker:
# migrations and grants, `authz keys`, then `authz serve` driven by gw-authz-probe
# (sealed credentials on gw.requests, answers on gw.authorized / gw.replies, audit
# events, usage written behind to authz.usage, a database outage, SIGTERM).
# $1 = build directory. Prints "N passed, N failed"; exit 1 on any failure.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=$(cd "${1:?usage: authz.sh BUILD_DIR}" && pwd)
. "$ROOT/tests/lib/assert.sh"

AUTHZ=$B/authz/authz
PROBE=$B/authz/gw-authz-probe
BROKER=$B/deploy/local/gw-broker
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
T=$(mktemp -d /tmp/gw-authz-test.XXXXXX)
chmod 755 "$T"
PGBASE=$T/pg
PGDATA_DIR=$PGBASE/data
BROKER_PID=
AUTHZ_PID=

pg_up() {
	runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGBASE/postgres.log" \
		-o "-c listen_addresses='' -c unix_socket_directories='$PGBASE' -c fsync=off" \
		-w -t 60 start >/dev/null
}
pg_down() {
	[ -f "$PGDATA_DIR/postmaster.pid" ] || return 0
	runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null 2>&1
}
stop_pid() { # pid: SIGTERM, then SIGKILL after 20 s
	local p=$1 i
	[ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
	kill -TERM "$p" 2>/dev/null
	for i in $(seq 1 200); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
	kill -KILL "$p" 2>/dev/null
}
cleanup() {
	stop_pid "$AUTHZ_PID"
	stop_pid "$BROKER_PID"
	pg_down
	# GW_TEST_KEEP=1 keeps the logs for a post-mortem.
	if [ "${GW_TEST_KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Admin commands must not pick up a developer's .run/env.
cd "$T" || exit 1
export GW_ENV_FILE=/dev/null GW_LOG_LEVEL=info
ADMIN_URL="host=$PGBASE dbname=gateway user=postgres"
APP_URL="host=$PGBASE dbname=gateway user=gw_authz"
psql_admin() { "$PGBIN/psql" -X -q -tA -v ON_ERROR_STOP=1 -h "$PGBASE" -U postgres -d gateway "$@"; }
psql_app() { "$PGBIN/psql" -X -q -tA -v ON_ERROR_STOP=1 -h "$PGBASE" -U gw_authz -d gateway "$@"; }
new_key() { echo "gw_$(openssl rand -hex 8)_$(openssl rand 32 | base64 -w0 | tr '+/' '-_' | tr -d '=')"; }
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
secret_of() { echo "${1#gw_*_}"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- a private cluster ---
mkdir -p "$PGBASE" && chown postgres:postgres "$PGBASE" && chmod 700 "$PGBASE"
if ! runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 \
	--locale=C.UTF-8 >"$T/initdb.log" 2>&1 || ! pg_up; then
	cat "$T/initdb.log" "$PGBASE/postgres.log" 2>/dev/null | tail -20
	not_ok "private PostgreSQL cluster starts"
	t_summary
	exit 1
fi
"$PGBIN/psql" -X -q -h "$PGBASE" -U postgres -d postgres -c "CREATE DATABASE gateway" >/dev/null
psql_admin -c "CREATE ROLE gw_authz LOGIN; GRANT CONNECT ON DATABASE gateway TO gw_authz" >/dev/null
ok "private PostgreSQL cluster starts"

# --- migrate ---
out=$(GW_DATABASE_ADMIN_URL=$ADMIN_URL GW_AUTHZ_ROLE=gw_nosuch "$AUTHZ" migrate 2>&1)
check_eq "migrate with a missing role fails" 1 "$?"
check_contains "missing role: the error says what to do" "$out" "does not exist"
check_eq "missing role: nothing was created" "" "$(psql_admin -c "SELECT to_regclass('authz.api_keys')")"
GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUTHZ" migrate 2>"$T/migrate.log"
check_eq "migrate succeeds" 0 "$?"
GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUTHZ" migrate 2>>"$T/migrate.log"
check_eq "migrate is idempotent" 0 "$?"
check_eq "migrations recorded" 2 "$(psql_admin -c "SELECT max(version) FROM schema_migrations WHERE component='authz'")"
check_eq "runtime role may read keys" 0 "$(psql_app -c 'SELECT count(*) FROM authz.api_keys')"
check_eq "runtime role may read group usage" 0 "$(psql_app -c 'SELECT count(*) FROM authz.group_usage')"
out=$(psql_app -c 'DELETE FROM authz.group_usage' 2>&1)
check_contains "runtime role may not DELETE group usage" "$out" "permission denied"
out=$(psql_app -c 'DELETE FROM authz.api_keys' 2>&1)
check_contains "runtime role may not DELETE keys" "$out" "permission denied"
out=$(psql_app -c 'DELETE FROM authz.usage' 2>&1)
check_contains "runtime role may not DELETE usage" "$out" "permission denied"

# --- keys create / list ---
export GW_DATABASE_ADMIN_URL=$ADMIN_URL
KEY=$("$AUTHZ" keys create --principal alice --groups staff,hpc --models mock-small \
	--expires 2099-01-01T00:00:00Z 2>"$T/create.log")
check_eq "keys create succeeds" 0 "$?"
check "keys create prints exactly the key" bash -c "[[ '$KEY' =~ ^gw_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$ ]]"
KID=$(cut -d_ -f2 <<<"$KEY")
check_eq "keys create logs the id as JSON on stderr" "$KID" "$(jq -r 'select(.msg=="API key created") | .key_id' "$T/create.log")"
check_not_contains "keys create does not log the key" "$(cat "$T/create.log")" "$(secret_of "$KEY")"
"$AUTHZ" keys create --principal mallory --key "$KEY" >/dev/null 2>"$T/argv.log"
check_eq "a key on argv is refused (exit 2)" 2 "$?"
check_not_contains "the refusal does not echo the key" "$(cat "$T/argv.log")" "$(secret_of "$KEY")"
"$AUTHZ" keys create --principal x --expires 2001-01-01T00:00:00Z >/dev/null 2>&1
check_eq "an expiry in the past is refused" 2 "$?"
"$AUTHZ" keys create --groups a >/dev/null 2>&1
check_eq "a missing --principal is refused" 2 "$?"

DEV_KEY=$(new_key)
DEV_ID=$(cut -d_ -f2 <<<"$DEV_KEY")
GW_DEV_API_KEY=$DEV_KEY "$AUTHZ" keys create --principal dev --key-from-env GW_DEV_API_KEY >"$T/dev.out" 2>"$T/dev.log"
check_eq "--key-from-env registers the given key" 0 "$?"
check_eq "--key-from-env prints nothing on stdout" "" "$(cat "$T/dev.out")"
printf '%s\n' "$DEV_KEY" >"$T/dev.key"
GW_DEV_API_KEY_FILE=$T/dev.key "$AUTHZ" keys create --principal dev --key-from-env GW_DEV_API_KEY 2>>"$T/dev.log" >/dev/null
check_eq "--key-from-env is idempotent (and reads VAR_FILE)" 0 "$?"
OTHER="gw_${DEV_ID}_$(secret_of "$(new_key)")"
GW_DEV_API_KEY=$OTHER "$AUTHZ" keys create --principal dev --key-from-env GW_DEV_API_KEY 2>>"$T/dev.log" >/dev/null
check_eq "--key-from-env refuses another secret under a registered id" 1 "$?"
GW_DEV_API_KEY=not-a-key "$AUTHZ" keys create --principal dev --key-from-env GW_DEV_API_KEY >/dev/null 2>&1
check_eq "--key-from-env refuses a malformed key" 1 "$?"

list=$("$AUTHZ" keys list 2>/dev/null)
check_eq "keys list succeeds" 0 "$?"
check_contains "keys list shows the key id" "$list" "$KID"
check_contains "keys list shows principal, groups, models" "$(grep "$KID" <<<"$list" | tr -s ' ')" "alice staff,hpc mock-small"
check_contains "keys list shows the expiry" "$(grep "$KID" <<<"$list")" "2099-01-01T00:00:00Z"
check_contains "keys list shows the dev key" "$list" "$DEV_ID"
check_not_contains "keys list never shows the hash" "$list" "$(sha256 "$KEY")"
check_not_contains "keys list never shows the secret" "$list" "$(secret_of "$KEY")"
check_eq "the database holds the SHA-256 of the key" "$(sha256 "$KEY")" \
	"$(psql_admin -c "SELECT key_hash FROM authz.api_keys WHERE key_id='$KID'")"

# --- serve: fails fast on missing configuration ---
BROKERS_FILE=$T/bootstrap
# A private copy, so a neighbour's `pkill gw-broker` cannot take this run's broker away.
cp "$BROKER" "$T/authz-test-broker"
"$T/authz-test-broker" --bootstrap-file "$BROKERS_FILE" >"$T/broker.out" 2>"$T/broker.log" &
BROKER_PID=$!
for i in $(seq 1 100); do [ -s "$BROKERS_FILE" ] && break; sleep 0.1; done
export GW_KAFKA_BROKERS=$(cat "$BROKERS_FILE" 2>/dev/null)
check "embedded broker starts" test -n "$GW_KAFKA_BROKERS"
SEAL=$(openssl rand -hex 32)
ADMIN_PORT=$(free_port)
unset GW_DATABASE_ADMIN_URL
out=$(GW_DATABASE_URL=$APP_URL GW_ADMIN_LISTEN=off timeout 20 "$AUTHZ" serve 2>&1)
check_eq "serve without a seal key exits 1" 1 "$?"
check_contains "serve without a seal key says what to set" "$out" "GW_SEAL_KEY"
out=$(GW_DATABASE_URL="host=$T/nowhere dbname=gateway user=gw_authz" GW_SEAL_KEY=$SEAL \
	GW_ADMIN_LISTEN=off timeout 20 "$AUTHZ" serve 2>&1)
check_eq "serve with PostgreSQL unreachable exits 1" 1 "$?"

# --- serve ---
GW_DATABASE_URL=$APP_URL GW_SEAL_KEY=$SEAL GW_ADMIN_LISTEN=127.0.0.1:$ADMIN_PORT \
	GW_AUTHZ_USAGE_FLUSH_MS=300 GW_KAFKA_FETCH_WAIT_MS=2 GW_INSTANCE=authz-test \
	"$AUTHZ" serve 2>"$T/authz.log" &
AUTHZ_PID=$!
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/ready")" = 200 ]; }
if ! eventually 30 ready; then
	tail -20 "$T/authz.log"
	not_ok "authz serve becomes ready"
	t_summary
	exit 1
fi
ok "authz serve becomes ready"
export GW_SEAL_KEY=$SEAL
probe() { GW_PROBE_KEY=$1 "$PROBE" request "${@:2}" 2>>"$T/probe.log"; }
BODY='{"model":"mock-small","messages":[{"role":"user","content":"hello"}]}'

r=$(probe "$KEY" --model mock-small)
check_eq "valid key: forwarded to gw.authorized" "gw.authorized" "$(jq -r .topic <<<"$r")"
check_eq "valid key: gw-principal" "alice" "$(jq -r '.headers["gw-principal"]' <<<"$r")"
check_eq "valid key: gw-groups" "staff,hpc" "$(jq -r '.headers["gw-groups"]' <<<"$r")"
check_eq "valid key: gw-rule names the key" "api-key:$KID" "$(jq -r '.headers["gw-rule"]' <<<"$r")"
check_eq "valid key: gw-hint is the gw.requests key" "$KID" "$(jq -r '.headers["gw-hint"]' <<<"$r")"
check_eq "valid key: no gw-cred downstream" "false" "$(jq -r '.headers | has("gw-cred")' <<<"$r")"
check_eq "valid key: the message passes the contract decoder" "true" "$(jq -r .decodes <<<"$r")"
check_eq "valid key: keyed by request id" "$(jq -r .id <<<"$r")" "$(jq -r .key <<<"$r")"
check_eq "valid key: body untouched" "$BODY" "$(jq -r .value <<<"$r")"
check_eq "valid key: route, model, client, stream carried" "/v1/chat/completions mock-small 127.0.0.1 0" \
	"$(jq -r '.headers | "\(.["gw-route"]) \(.["gw-model"]) \(.["gw-client"]) \(.["gw-stream"])"' <<<"$r")"
check "valid key: deadline and reply partition carried" \
	jq -e '.headers["gw-deadline"] != null and .headers["gw-reply"] == "0"' <<<"$r"
check_eq "valid key: audited as allowed" "allowed" "$(jq -r .audit.outcome <<<"$r")"
check_eq "audit: principal and groups" "alice staff,hpc" "$(jq -r '"\(.audit.principal) \(.audit.groups)"' <<<"$r")"
check_eq "audit: body_sha256 of the request body" "$(sha256 "$BODY")" "$(jq -r .audit.body_sha256 <<<"$r")"
check_eq "audit: body_size" "${#BODY}" "$(jq -r .audit.body_size <<<"$r")"

r=$(probe "$DEV_KEY" --model anything)
check_eq "dev key (registered from env): gw-principal dev" "dev" "$(jq -r '.headers["gw-principal"]' <<<"$r")"
check_eq "dev key: no gw-cred" "false" "$(jq -r '.headers | has("gw-cred")' <<<"$r")"
check_eq "dev key: no groups, an empty gw-groups" "" "$(jq -r '.headers["gw-groups"]' <<<"$r")"
check_eq "dev key: the message passes the contract decoder" "true" "$(jq -r .decodes <<<"$r")"
r=$(probe "Bearer $DEV_KEY" --model anything)
check_eq "a credential with its Bearer prefix is accepted" "gw.authorized" "$(jq -r .topic <<<"$r")"

denied() { # description json status
	check_eq "$1: answered on gw.replies" "gw.replies" "$(jq -r .topic <<<"$2")"
	check_eq "$1: status $3" "$3" "$(jq -r '.headers["gw-status"]' <<<"$2")"
	check_eq "$1: seq 0, final, JSON" "0 1 application/json" \
		"$(jq -r '.headers | "\(.["gw-seq"]) \(.["gw-final"]) \(.["gw-ctype"])"' <<<"$2")"
	check_eq "$1: audited as denied" "denied $3" "$(jq -r '"\(.audit.outcome) \(.audit.status)"' <<<"$2")"
	check_eq "$1: the reply passes the contract decoder" "true" "$(jq -r .decodes <<<"$2")"
}
r=$(probe "$OTHER" --model mock-small)
denied "wrong secret" "$r" 401
check_eq "wrong secret: OpenAI error shape" "authentication_error|invalid API key|$(jq -r .id <<<"$r")" \
	"$(jq -r '.value | fromjson | "\(.error.type)|\(.error.message)|\(.request_id)"' <<<"$r")"
r=$(probe "$(new_key)" --model mock-small)
denied "unknown key id" "$r" 401
check_eq "unknown key id: same message as a wrong secret" "invalid API key" "$(jq -r '.value | fromjson | .error.message' <<<"$r")"
r=$(probe "" --no-cred)
denied "no credential" "$r" 401
r=$(probe "$KEY" --tamper)
denied "credential that does not unseal" "$r" 401
r=$(probe "$KEY" --model gpt-4)
denied "model not allowed" "$r" 403
check_contains "model not allowed: the message names the rule" "$(jq -r '.value | fromjson | .error.message' <<<"$r")" "api-key:$KID"
check_eq "model not allowed: permission_error" "permission_error" "$(jq -r '.value | fromjson | .error.type' <<<"$r")"
r=$(probe "$KEY" --reply-partition 3 --model gpt-4)
check_eq "a denial goes to the request's reply partition" "3" "$(jq -r .partition <<<"$r")"

r=$(probe "$KEY" --malformed)
check_eq "undecodable request: sent to gw.deadletter" "gw.deadletter" "$(jq -r .topic <<<"$r")"
check_eq "undecodable request: with the reason" "invalid header value" "$(jq -r '.headers["gw-reason"]' <<<"$r")"
check_eq "undecodable request: without the sealed credential" "false" "$(jq -r '.headers | has("gw-cred")' <<<"$r")"
check_eq "undecodable request: body kept" "$BODY" "$(jq -r .value <<<"$r")"

r=$(probe "$KEY" --expired)
check_eq "expired request: no answer" "null" "$(jq -r .topic <<<"$r")"
check_eq "expired request: audited as expired" "expired" "$(jq -r .audit.outcome <<<"$r")"

# --- changes reach the running cache within about a second ---
NEW=$(GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUTHZ" keys create --principal bob 2>/dev/null)
SHORT_EXP=$(($(date +%s) + 8))
SHORT=$(GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUTHZ" keys create --principal carol \
	--expires "$(date -u -d "@$SHORT_EXP" +%Y-%m-%dT%H:%M:%SZ)" 2>/dev/null)
sleep 1.5
r=$(probe "$NEW" --model mock-small)
check_eq "a key created while serving is accepted within ~1.5 s" "bob" "$(jq -r '.headers["gw-principal"]' <<<"$r")"
r=$(probe "$SHORT" --model mock-small)
check_eq "a key before its expiry is accepted" "carol" "$(jq -r '.headers["gw-principal"]' <<<"$r")"
GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUTHZ" keys revoke "$KID" 2>"$T/revoke.log"
check_eq "keys revoke succeeds" 0 "$?"
audit_dump=$("$PROBE" dump gw.audit 2>/dev/null)
check "admin.key_revoked audited on gw.audit with the key id and principal" \
	grep -q "\"type\":\"admin.key_revoked\".*\"principal\":\"alice\".*\"key_id\":\"$KID\"" <<<"$audit_dump"
NEW_ID=$(cut -d_ -f2 <<<"$NEW")
check "admin.key_created audited on gw.audit" \
	grep -q "\"type\":\"admin.key_created\".*\"principal\":\"bob\".*\"key_id\":\"$NEW_ID\"" <<<"$audit_dump"
check_not_contains "admin audit events never carry the key" "$audit_dump" "$(secret_of "$NEW")"
t0=$(date +%s%N)
revoked() { [ "$(probe "$KEY" --model mock-small | jq -r '.headers["gw-status"]')" = 401 ]; }
eventually 5 revoked
t1=$(date +%s%N)
check "revoked key: 401 within 2 s of the revoke" test $(((t1 - t0) / 1000000)) -le 2000
r=$(probe "$KEY" --model mock-small)
denied "revoked key" "$r" 401
check_eq "revoked key: the audit names why and who" "key revoked alice" "$(jq -r '"\(.audit.reason) \(.audit.principal)"' <<<"$r")"
revoked_col=$(GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUTHZ" keys list 2>/dev/null | grep "$KID" | awk '{print $NF}')
check "keys list shows when the key was revoked" bash -c "[[ '$revoked_col' =~ ^20[0-9-]+T[0-9:]+Z$ ]]"
GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUTHZ" keys revoke 0000000000000000 2>/dev/null
check_eq "revoking an unknown id fails" 1 "$?"
while [ "$(date +%s)" -le "$SHORT_EXP" ]; do sleep 0.2; done
r=$(probe "$SHORT" --model mock-small)
denied "a key past its expiry" "$r" 401
check_eq "expired key: the audit names why" "key expired" "$(jq -r .audit.reason <<<"$r")"

# --- usage: counted, written behind to authz.usage ---
"$PROBE" usage --principal alice --tokens 40 >/dev/null 2>>"$T/probe.log"
"$PROBE" usage --principal alice --tokens 2 >/dev/null 2>>"$T/probe.log"
usage_is() { [ "$(psql_admin -c "SELECT tokens FROM authz.usage WHERE principal='alice' AND day=(now() AT TIME ZONE 'UTC')::date")" = "$1" ]; }
check "usage is written to authz.usage" eventually 10 usage_is 42
"$PROBE" usage --raw 'not json' >/dev/null 2>>"$T/probe.log"
dl() { grep -q '"msg":"message sent to dead letter".*"topic":"gw.usage"' "$T/authz.log"; }
check "an undecodable usage message goes to the dead letter topic" eventually 5 dl
m=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")
check_contains "metrics: usage tokens" "$m" "gw_authz_usage_tokens_total 42"
check_contains "metrics: keys cached" "$m" "gw_authz_keys_cached 4"
check_contains "metrics: db up" "$m" "gw_authz_db_up 1"
metric() { awk -v k="$1" '$1 == k {print $2}' <<<"$m"; }
check "metrics: allowed decisions counted (at least 5)" test "$(metric 'gw_authz_decisions_total{outcome="allowed"}')" -ge 5
check "metrics: denied decisions counted" grep -qE '^gw_authz_decisions_total\{outcome="denied"\} [0-9]+' <<<"$m"
check "metrics: expired decisions counted" grep -qE '^gw_authz_decisions_total\{outcome="expired"\} 1' <<<"$m"

# --- PostgreSQL down: decisions continue from the cache, usage waits in memory ---
pg_down
db_down() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^gw_authz_db_up 0'; }
check "database outage: gw_authz_db_up drops to 0" eventually 10 db_down
r=$(probe "$DEV_KEY" --model mock-small)
check_eq "database outage: a cached key is still accepted" "dev" "$(jq -r '.headers["gw-principal"]' <<<"$r")"
"$PROBE" usage --principal alice --tokens 8 >/dev/null 2>>"$T/probe.log"
sleep 2
check_eq "database outage: logged once, not every tick" 1 "$(grep -c '"msg":"database unreachable' "$T/authz.log")"
check "database outage: /ready stays 200 (cache serves)" ready
pg_up
check "database back: usage kept in memory is written" eventually 15 usage_is 50
db_up() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^gw_authz_db_up 1'; }
check "database back: gw_authz_db_up returns to 1" eventually 10 db_up

# --- secrets stay secret ---
for k in "$KEY" "$DEV_KEY" "$OTHER" "$NEW" "$SHORT"; do
	s=$(secret_of "$k")
	check_eq "no secret in the authz log (${k:0:19}...)" "" "$(grep -F -- "$s" "$T/authz.log" "$T"/*.log 2>/dev/null | head -1)"
done
dump=$(runuser -u postgres -- "$PGBIN/pg_dump" -h "$PGBASE" -d gateway 2>/dev/null)
check_contains "pg_dump works" "$dump" "api_keys"
for k in "$KEY" "$DEV_KEY" "$NEW" "$SHORT"; do
	check_not_contains "no raw key in the database (${k:0:19}...)" "$dump" "$(secret_of "$k")"
done

# --- SIGTERM ---
kill -TERM "$AUTHZ_PID"
rc=124
for i in $(seq 1 200); do
	if ! kill -0 "$AUTHZ_PID" 2>/dev/null; then wait "$AUTHZ_PID"; rc=$?; break; fi
	sleep 0.1
done
check_eq "authz exits 0 on SIGTERM" 0 "$rc"
[ "$rc" = 0 ] || tail -20 "$T/authz.log"
AUTHZ_PID=

# --- restart: offsets were committed; SIGTERM writes the usage still in memory ---
start_authz() { # log extra-env...
	local log=$1
	shift
	env GW_DATABASE_URL="$APP_URL" GW_SEAL_KEY="$SEAL" GW_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
		GW_KAFKA_FETCH_WAIT_MS=2 GW_INSTANCE=authz-test "$@" "$AUTHZ" serve 2>"$log" &
	AUTHZ_PID=$!
}
start_authz "$T/authz2.log" GW_AUTHZ_USAGE_FLUSH_MS=600000
check "authz restarts and becomes ready" eventually 30 ready
"$PROBE" usage --principal alice --tokens 5 >/dev/null 2>>"$T/probe.log"
counted() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^gw_authz_usage_tokens_total 5$'; }
check "restart: only the new usage message is counted (earlier offsets were committed)" eventually 10 counted
m=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")
check "restart: no request is decided twice (their offsets were committed)" \
	grep -qE '^gw_authz_decisions_total\{outcome="allowed"\} 0$' <<<"$m"
check_eq "restart: usage not yet written (long flush interval)" 50 \
	"$(psql_admin -c "SELECT tokens FROM authz.usage WHERE principal='alice' AND day=(now() AT TIME ZONE 'UTC')::date")"
kill -TERM "$AUTHZ_PID"
rc=124
for i in $(seq 1 200); do
	if ! kill -0 "$AUTHZ_PID" 2>/dev/null; then wait "$AUTHZ_PID"; rc=$?; break; fi
	sleep 0.1
done
AUTHZ_PID=
check_eq "restart: exits 0 on SIGTERM" 0 "$rc"
check "SIGTERM writes the usage still in memory" usage_is 55

t_summary
