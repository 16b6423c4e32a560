#!/usr/bin/env bash
# The compliance API runs its queries asynchronously: while slow API queries run, /health
# answers, events keep being ingested, a query over GW_AUDIT_API_MAX_QUERIES gets 503 +
# Retry-After at once, and the slow queries then answer correctly. Also: a client that
# leaves mid-query, statement_timeout (504), and the database down (503).
# The slowness is made in the test database only: a row-level security policy for the
# API's role (gw_compliance) that sleeps test.slow.seconds once per query; the writer's
# role bypasses it (BYPASSRLS: the writer uses COPY). No product code path can sleep. Usage: auditor_api.sh BUILD_DIR
set -u
BUILD=$(cd "${1:?usage: auditor_api.sh BUILD_DIR}" && pwd) || exit 2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/assert.sh"

. "$HERE/../lib/auditor_lib.sh"
aud_init gw-auditor-api
BG=()
aud_cleanup_hook() {
	local p
	for p in "${BG[@]}"; do kill "$p" 2>/dev/null; done
}

new_id() { openssl rand -hex 16; }
event() { # principal
	printf '{"event_id":"%s","ts_us":%s,"type":"dispatch.result","service":"test",' \
		"$(new_id)" "$(date +%s%6N)"
	printf '"instance":"t-1","request_id":"%s","principal":"%s",' "$(new_id)" "$1"
	printf '"outcome":"ok","status":200,"model":"m1","client":"127.0.0.1"}\n'
}
produce() { GW_KAFKA_BROKERS=$BROKERS GW_LOG_LEVEL=warn "$PRODUCE" "$@"; }
total() { sql "SELECT count(*) FROM audit.audit_events"; }
total_is() { [ "$(total)" = "$1" ]; }
code() { curl -s -o /dev/null -w '%{http_code}' --max-time "${2:-5}" "http://127.0.0.1:$APORT$1"; }
ready_is() { [ "$(code /ready)" = "$1" ]; }
metric() { curl -s "http://127.0.0.1:$APORT/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
metric_is() { [ "$(metric "$1")" = "$2" ]; }
api() { # path [curl args...]: prints the body, then the status on its own line
	local p=$1
	shift
	curl -s -D "$TMP/last.h" -w '\n%{http_code}' -H "Authorization: Bearer $API_KEY" \
		"$@" "http://127.0.0.1:$APORT$p"
}
code_of() { printf '%s\n' "$1" | tail -n 1; }
body_of() { printf '%s\n' "$1" | sed '$d'; }
start_auditor() { # log env-assignments...
	local log=$1
	shift
	(cd "$TMP" && exec env "$@" GW_DATABASE_URL="$DB_URL" GW_KAFKA_BROKERS="$BROKERS" \
		GW_ADMIN_LISTEN="127.0.0.1:$APORT" GW_AUDIT_API_KEY_FILE="$TMP/api.key" \
		GW_AUDIT_API_DATABASE_URL="$COMPLIANCE_URL" GW_AUDIT_FLUSH_MS=20 \
		GW_AUDITOR_FETCH_WAIT_MS=10 "$AUDITOR" serve) 2>"$log" &
	AUDITOR_PID=$!
}
stop_auditor() {
	kill -TERM "$AUDITOR_PID"
	wait "$AUDITOR_PID"
	STOP_RC=$?
	AUDITOR_PID=
}
slow() { sql "UPDATE test.slow SET seconds = $1" >/dev/null; } # seconds per API query
api_sleeping() { # n: API queries sleeping in the policy right now
	[ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'auditor-api' AND wait_event = 'PgSleep'")" = "$1" ]
}

# ---- PostgreSQL, schema, broker, serve ----
aud_pg_init require
GW_DATABASE_ADMIN_URL="host=$PGDIR port=$PORT dbname=gateway user=postgres" "$AUDITOR" migrate \
	2>"$TMP/migrate.log"
require "migrate exits 0" test $? = 0
sql "CREATE SCHEMA test; CREATE TABLE test.slow (seconds float8 NOT NULL);
	INSERT INTO test.slow VALUES (0);
	GRANT USAGE ON SCHEMA test TO gw_compliance; GRANT SELECT ON test.slow TO gw_compliance;
	ALTER ROLE gw_auditor BYPASSRLS;
	CREATE POLICY test_slow ON audit.audit_events FOR SELECT TO gw_compliance
		USING ((SELECT pg_sleep(seconds) FROM test.slow) IS NOT NULL);
	ALTER TABLE audit.audit_events ENABLE ROW LEVEL SECURITY" >/dev/null
require "test-only slow-query policy for the API's role" test $? = 0
aud_broker_start
API_KEY=$(openssl rand -hex 32)
printf '%s\n' "$API_KEY" >"$TMP/api.key"
start_auditor "$TMP/auditor1.log" GW_AUDIT_API_MAX_QUERIES=2 GW_AUDIT_API_TIMEOUT_MS=20000
require "auditor becomes ready" eventually 30 ready_is 200
for i in $(seq 1 12); do event "user$((i % 3))"; done | produce gw.audit
check "12 events land" eventually 30 total_is 12

# ---- the asynchronous path answers as the synchronous one did ----
out=$(api '/audit/events?principal=user1&since=1h')
check_eq "events: 200" 200 "$(code_of "$out")"
check_eq "events: the four events of user1" 4 "$(body_of "$out" | grep -c '"principal":"user1"')"
check_eq "events: application/x-ndjson" "application/x-ndjson" \
	"$(grep -i '^content-type:' "$TMP/last.h" | cut -d' ' -f2 | tr -d '\r')"
out=$(api '/audit/report?since=1h&by=principal')
check_eq "report: 200" 200 "$(code_of "$out")"
check_eq "report: user1 made 4 requests" 4 \
	"$(body_of "$out" | jq -r '.rows[] | select(.key == "user1") | .requests')"
out=$(api '/audit/events?principal=user2&limit=2')
check_eq "a kept connection serves the next query: limit 2 honoured" 2 "$(body_of "$out" | grep -c .)"
check_eq "bad input is still refused before any query: 400" 400 \
	"$(code_of "$(api '/audit/events?request_id=NOT-HEX')")"
check_eq "an inverted time range: 400" 400 \
	"$(code_of "$(api '/audit/events?since=1h&until=2h')")"
check_eq "queries counted" 3 "$(metric 'gw_auditor_api_queries_total{result="ok"}')"

# ---- slow queries do not hold up the service ----
slow 6
api '/audit/report?since=1h&by=principal' >"$TMP/held1" &
BG+=($!)
H1=$!
api '/audit/events?since=1h&limit=1000' >"$TMP/held2" &
BG+=($!)
H2=$!
require "two API queries are running (sleeping in PostgreSQL)" eventually 5 api_sleeping 2
t0=$(date +%s%N)
check_eq "while they run: /health answers" 200 "$(code /health 3)"
check_eq "while they run: /metrics answers, two queries running" 2 \
	"$(metric gw_auditor_api_queries_running)"
out=$(api '/audit/events?principal=user1' --max-time 3)
ms=$((($(date +%s%N) - t0) / 1000000))
check_eq "a third query with GW_AUDIT_API_MAX_QUERIES=2: 503" 503 "$(code_of "$out")"
check_eq "503 says when to come back: Retry-After: 1" 1 \
	"$(grep -i '^retry-after:' "$TMP/last.h" | cut -d' ' -f2 | tr -d '\r')"
for i in $(seq 1 6); do event "user9"; done | produce gw.audit
check "while they run: ingest goes on (6 more events land)" eventually 5 total_is 18
check "...and the slow queries are still running: nothing above waited for them" \
	bash -c "kill -0 $H1 && kill -0 $H2"
echo "     (/health, /metrics and the 503 answered in $ms ms while two queries ran)"
wait "$H1" "$H2"
slow 0
check_eq "the slow report answers 200" 200 "$(code_of "$(cat "$TMP/held1")")"
check_eq "...with every principal in it" "user0 user1 user2" \
	"$(body_of "$(cat "$TMP/held1")" | jq -r '[.rows[].key] | sort | join(" ")')"
check_eq "the slow events query answers 200 with the 12 events of its snapshot" "200 12" \
	"$(code_of "$(cat "$TMP/held2")") $(body_of "$(cat "$TMP/held2")" | grep -c .)"
check "the slots are free again" eventually 5 metric_is gw_auditor_api_queries_running 0

# ---- a client that leaves mid-query ----
slow 4
api '/audit/events?since=1h' --max-time 1 >/dev/null
check "a client gave up after 1 s; its query still runs" api_sleeping 1
check_eq "the service still answers" 200 "$(code /health 3)"
slow 0
check "its slot frees when the query ends (result dropped)" eventually 10 metric_is gw_auditor_api_queries_running 0
check "auditor still running" kill -0 "$AUDITOR_PID"
out=$(api '/audit/events?principal=user0')
check_eq "and serves the next query" 200 "$(code_of "$out")"
stop_auditor
check_eq "SIGTERM exits 0" 0 "$STOP_RC"

# ---- statement_timeout still bounds each query; a database that is down ----
start_auditor "$TMP/auditor2.log" GW_AUDIT_API_TIMEOUT_MS=1000
require "auditor ready again" eventually 30 ready_is 200
slow 5
out=$(api '/audit/events?since=1h' --max-time 10)
check_eq "a query running past GW_AUDIT_API_TIMEOUT_MS (1 s): 504" 504 "$(code_of "$out")"
check_contains "504 says what to do" "$(body_of "$out")" "narrow the filters"
slow 0
check_eq "then queries work again" 200 "$(code_of "$(api '/audit/events?principal=user0')")"
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 restart -l "$PGDIR/log" -s >/dev/null
check_eq "PostgreSQL restarted: the first query answers 200 (the dead kept connection was dropped)" \
	200 "$(code_of "$(api '/audit/events?principal=user0' --max-time 10)")"
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
out=$(api '/audit/events?principal=user0' --max-time 10)
check_eq "PostgreSQL down: 503" 503 "$(code_of "$out")"
check_eq "PostgreSQL down: /health still answers" 200 "$(code /health 3)"
out=$(api '/audit/events?principal=user0' --max-time 10)
check_eq "PostgreSQL down: a fresh connection attempt is also a clean 503" 503 "$(code_of "$out")"
check_eq "the API key appears in no log" "" "$(grep -l -F -- "$API_KEY" "$TMP"/*.log)"
stop_auditor
check_eq "SIGTERM exits 0 with PostgreSQL down" 0 "$STOP_RC"
t_summary
