#!/usr/bin/env bash
# Integration test of the auditor: a private PostgreSQL cluster and the mock broker;
# migrate, serve, exactly-once rows, dead letters, queries, least privilege, a database
# outage, and graceful shutdown with unwritten events. Usage: auditor.sh BUILD_DIR
set -u
BUILD=$(cd "${1:?usage: auditor.sh BUILD_DIR}" && pwd) || exit 2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/assert.sh"

. "$HERE/../lib/auditor_lib.sh"
aud_init gw-auditor-test

new_id() { openssl rand -hex 16; }
event() { # event_id request_id [principal]
	printf '{"event_id":"%s","ts_us":%s,"type":"dispatch.result","service":"test",' \
		"$1" "$(date +%s%6N)"
	printf '"instance":"t-1","request_id":"%s","principal":"%s",' "$2" "${3:-alice@example.org}"
	printf '"outcome":"ok","status":200,"model":"m1","client":"127.0.0.1",'
	printf '"extra":{"note":"a \\"quoted\\" value, with a comma"}}\n'
}
produce() { # gw-produce args... < lines
	GW_KAFKA_BROKERS=$BROKERS GW_LOG_LEVEL=warn "$PRODUCE" "$@"
}
query() { GW_DATABASE_URL=$DB_URL "$AUDITOR" query "$@"; }
ready_code() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/ready"; }
metric() { curl -s "http://127.0.0.1:$APORT/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
metric_is() { [ "$(metric "$1")" = "$2" ]; }
rows() { sql "SELECT count(*) FROM audit.audit_events WHERE request_id = '$1'"; }
rows_are() { [ "$(rows "$1")" = "$2" ]; }
alive() { kill -0 "$AUDITOR_PID" 2>/dev/null; }
ready_is() { [ "$(ready_code)" = "$1" ]; }
denied() { # role sql: the statement must fail for lack of privilege
	local err
	err=$(psql_as "$1" -c "$2" 2>&1 >/dev/null) && return 1
	case "$err" in *"permission denied"*) return 0 ;; esac
	echo "     unexpected: $err"
	return 1
}

start_auditor() { # log env-assignments...
	local log=$1
	shift
	(cd "$TMP" && exec env "$@" GW_DATABASE_URL="$DB_URL" GW_KAFKA_BROKERS="$BROKERS" \
		GW_ADMIN_LISTEN="127.0.0.1:$APORT" "$AUDITOR" serve) 2>"$log" &
	AUDITOR_PID=$!
}

stop_auditor() { # SIGTERM; sets STOP_RC and STOP_SECS
	local t0=$SECONDS
	kill -TERM "$AUDITOR_PID"
	wait "$AUDITOR_PID"
	STOP_RC=$?
	STOP_SECS=$((SECONDS - t0))
	AUDITOR_PID=
}

# ---- the command line ----
"$AUDITOR" --help >/dev/null
check_eq "--help exits 0" 0 $?
"$AUDITOR" bogus 2>/dev/null
check_eq "unknown subcommand exits 2" 2 $?
"$AUDITOR" query 2>/dev/null
check_eq "query without a filter exits 2" 2 $?
"$AUDITOR" query --principal p --since yesterday 2>/dev/null
check_eq "query with a bad --since exits 2" 2 $?
"$AUDITOR" query --principal p --limit 0 2>/dev/null
check_eq "query with --limit 0 exits 2" 2 $?
"$AUDITOR" query --principal p --format xml 2>/dev/null
check_eq "query with an unknown --format exits 2" 2 $?
"$AUDITOR" query --request-id NOT-HEX 2>/dev/null
check_eq "query with a malformed request id exits 2" 2 $?

# ---- a private PostgreSQL cluster ----
aud_pg_init check

# ---- migrate ----
out=$(cd "$TMP" && GW_DATABASE_URL=$DB_URL GW_ADMIN_LISTEN=off timeout 30 "$AUDITOR" serve 2>&1)
check_eq "serve refuses an unmigrated database" 1 $?
check_contains "and says to run auditor migrate" "$out" 'run `auditor migrate`'

out=$(GW_DATABASE_ADMIN_URL=$ADMIN_URL GW_AUDITOR_ROLE=gw_nosuch "$AUDITOR" migrate 2>&1)
check_eq "migrate fails when a role is missing" 1 $?
check_contains "and names the role" "$out" gw_nosuch
check_eq "a failed migrate leaves no audit schema" 0 \
	"$(sql "SELECT count(*) FROM pg_namespace WHERE nspname = 'audit'")"

GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUDITOR" migrate 2>"$TMP/migrate.log"
check_eq "migrate exits 0" 0 $?
echo "$ADMIN_URL" >"$TMP/admin-url"
GW_DATABASE_ADMIN_URL_FILE=$TMP/admin-url "$AUDITOR" migrate 2>>"$TMP/migrate.log"
check_eq "migrate again, URL from a _FILE, exits 0 (idempotent)" 0 $?
check_eq "schema_migrations records audit versions 1..5" "1,2,3,4,5" \
	"$(sql "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations WHERE component = 'audit'")"
check_eq "event_time is timestamptz" "timestamp with time zone" \
	"$(sql "SELECT data_type FROM information_schema.columns WHERE table_schema = 'audit' AND table_name = 'audit_events' AND column_name = 'event_time'")"
check_eq "unique (event_id, event_time), (chain_id, seq), six more indexes" 8 \
	"$(sql "SELECT count(*) FROM pg_indexes WHERE schemaname = 'audit' AND tablename = 'audit_events'")"
check_eq "gw_auditor may INSERT and SELECT only" "INSERT,SELECT" \
	"$(sql "SELECT string_agg(DISTINCT privilege_type, ',' ORDER BY privilege_type) FROM information_schema.role_table_grants WHERE grantee = 'gw_auditor' AND table_schema = 'audit'")"
check_eq "gw_compliance may SELECT only" "SELECT" \
	"$(sql "SELECT string_agg(DISTINCT privilege_type, ',' ORDER BY privilege_type) FROM information_schema.role_table_grants WHERE grantee = 'gw_compliance' AND table_schema = 'audit'")"

# ---- broker and serve ----
aud_broker_start

# A small batch, so the outage below fills it and consumption has to pause.
AUD_ENV=(GW_AUDIT_BATCH=8 GW_AUDIT_FLUSH_MS=20 GW_AUDITOR_FETCH_WAIT_MS=10)
start_auditor "$TMP/auditor1.log" "${AUD_ENV[@]}"
require "auditor becomes ready" eventually 30 ready_is 200

# ---- exactly once, dead letters, and a bad message does not stop it ----
RID1=$(new_id)
: >"$TMP/batch1"
for i in $(seq 1 20); do event "$(new_id)" "$RID1" >>"$TMP/batch1"; done
FIRST=$(head -n 1 "$TMP/batch1")
FIRST_ID=$(printf '%s' "$FIRST" | sed 's/^{"event_id":"\([0-9a-f]*\)".*/\1/')
{
	echo "$FIRST" # the same event twice in a row...
	cat "$TMP/batch1"
	echo "this is not JSON"
	echo '{"type":"dispatch.result","ts_us":1}'
	echo "$FIRST" # ...and again later
} | produce --key k1 gw.audit
check_eq "produced the first events" 0 $?
event "$(new_id)" "$RID1" | produce --key k1 --no-version gw.audit
event "$(new_id)" "$RID1" | produce --key k1 --version 2.0 gw.audit
LAST_ID=$(new_id)
event "$LAST_ID" "$RID1" | produce --key k1 gw.audit

check "every valid event lands, after the bad ones too" eventually 30 rows_are "$RID1" 21
check_eq "the last event is there" 1 \
	"$(sql "SELECT count(*) FROM audit.audit_events WHERE event_id = '$LAST_ID'")"
check_eq "the duplicated event is stored once" 1 \
	"$(sql "SELECT count(*) FROM audit.audit_events WHERE event_id = '$FIRST_ID'")"
check "four messages went to gw.deadletter" eventually 10 metric_is gw_auditor_deadletter_total 4
check_eq "two duplicates were skipped" 2 "$(metric gw_auditor_duplicates_total)"
check_eq "21 events written" 21 "$(metric gw_auditor_events_written_total)"
check_eq "typed columns are filled" "alice@example.org|200|127.0.0.1|m1|dispatch.result" \
	"$(sql "SELECT principal || '|' || status || '|' || client_addr || '|' || model || '|' || event_type FROM audit.audit_events WHERE event_id = '$FIRST_ID'")"
check_eq "event_time has the event's microseconds" "$(printf '%s' "$FIRST" | sed 's/.*"ts_us":\([0-9]*\).*/\1/')" \
	"$(sql "SELECT (extract(epoch FROM event_time) * 1000000)::bigint FROM audit.audit_events WHERE event_id = '$FIRST_ID'")"
check_eq "the whole event is kept" "a \"quoted\" value, with a comma" \
	"$(sql "SELECT event->'extra'->>'note' FROM audit.audit_events WHERE event_id = '$FIRST_ID'")"
check "still running" alive

# ---- query ----
out=$(query --request-id "$RID1")
check_eq "query exits 0" 0 $?
check_eq "query prints one line per event" 21 "$(printf '%s\n' "$out" | grep -c .)"
# Verbatim: the event column keeps the message text as produced (json, not jsonb).
check_eq "lines are the stored events, verbatim" "$FIRST" "$(printf '%s\n' "$out" | head -n 1)"
check_eq "ordered by event time" "$LAST_ID" \
	"$(printf '%s\n' "$out" | tail -n 1 | sed 's/.*"event_id":"\([0-9a-f]*\)".*/\1/')"
out=$(query --request-id "$RID1" --format csv)
check_eq "csv: header plus 21 rows" 22 "$(printf '%s\n' "$out" | grep -c .)"
check_contains "csv header" "$(printf '%s\n' "$out" | head -n 1)" "event_id,event_time,event_type,request_id"
out=$(query --request-id "$RID1" --format table)
check_eq "table: header plus 21 rows" 22 "$(printf '%s\n' "$out" | grep -c .)"
out=$(query --request-id "$(new_id)")
rc=$?
check_eq "no match exits 0" 0 $rc
check_eq "no match prints nothing" "" "$out"
check_eq "--since 1h finds them" 21 "$(query --principal alice@example.org --since 1h | grep -c .)"
check_eq "--until 1h finds none" 0 "$(query --request-id "$RID1" --until 1h | grep -c .)"
check_eq "--limit bounds the output" 5 \
	"$(query --request-id "$RID1" --since 2000-01-01T00:00:00Z --limit 5 | grep -c .)"
echo "$DB_URL" >"$TMP/db-url"
check_eq "query reads GW_DATABASE_URL_FILE" 21 \
	"$(GW_DATABASE_URL_FILE=$TMP/db-url "$AUDITOR" query --request-id "$RID1" | grep -c .)"
check_eq "the compliance role may query" 21 \
	"$(GW_DATABASE_URL=$COMPLIANCE_URL "$AUDITOR" query --request-id "$RID1" | grep -c .)"
GW_DATABASE_URL="host=$PGDIR port=1 dbname=gateway user=gw_auditor" "$AUDITOR" query \
	--request-id "$RID1" >/dev/null 2>&1
check_eq "query exits 1 when the database is unreachable" 1 $?

# ---- least privilege ----
check "gw_auditor cannot UPDATE" denied gw_auditor "UPDATE audit.audit_events SET outcome = 'forged'"
check "gw_auditor cannot DELETE" denied gw_auditor "DELETE FROM audit.audit_events"
check "gw_auditor cannot TRUNCATE" denied gw_auditor "TRUNCATE audit.audit_events"
check "gw_compliance cannot INSERT" denied gw_compliance \
	"INSERT INTO audit.audit_events (event_id, event_type, event_time, event) VALUES (repeat('a', 32), 't', now(), '{}')"
check "gw_compliance cannot UPDATE" denied gw_compliance "UPDATE audit.audit_events SET outcome = 'forged'"
check_eq "gw_auditor may read" 21 "$(psql_as gw_auditor -c 'SELECT count(*) FROM audit.audit_events')"
check_eq "rows unchanged" "21|0" \
	"$(sql "SELECT count(*) || '|' || count(*) FILTER (WHERE outcome = 'forged') FROM audit.audit_events")"

# ---- a row the database refuses: only that one is dead-lettered ----
sql "ALTER TABLE audit.audit_events ADD CONSTRAINT test_no_mallory CHECK (principal <> 'mallory')"
RIDX=$(new_id)
{
	for i in 1 2; do event "$(new_id)" "$RIDX"; done
	event "$(new_id)" "$RIDX" mallory
	for i in 1 2; do event "$(new_id)" "$RIDX"; done
} | produce --key kx gw.audit
check "the other four events of that batch land" eventually 30 rows_are "$RIDX" 4
check "the refused one goes to gw.deadletter" eventually 10 metric_is gw_auditor_deadletter_total 5
check_eq "and is counted as rejected" 1 "$(metric gw_auditor_rejected_total)"
check_eq "the database stayed up for the auditor" 1 "$(metric gw_auditor_db_up)"
sql "ALTER TABLE audit.audit_events DROP CONSTRAINT test_no_mallory"

# ---- malformed optional members cost nothing but their typed column ----
RIDL=$(new_id)
LONG=$(head -c 5000 /dev/zero | tr '\0' m)
printf '{"event_id":"%s","ts_us":%s,"type":"request.received","request_id":"%s","model":"%s","status":"teapot","principal":{"sub":"x"}}\n' \
	"$(new_id)" "$(date +%s%6N)" "$RIDL" "$LONG" | produce --key kl gw.audit
check "an event with a 5000-byte model and a bad status lands" eventually 30 rows_are "$RIDL" 1
check_eq "its model column is cut, its event whole, bad members NULL" "1024|5000|true|true" \
	"$(sql "SELECT octet_length(model) || '|' || length(event->>'model') || '|' || (status IS NULL) || '|' || (principal IS NULL) FROM audit.audit_events WHERE request_id = '$RIDL'")"

# ---- a database outage ----
pg_stop
check_eq "PostgreSQL stopped" 0 $?
RID2=$(new_id)
: >"$TMP/batch2"
for i in $(seq 1 30); do event "$(new_id)" "$RID2" >>"$TMP/batch2"; done
{ cat "$TMP/batch2"; head -n 1 "$TMP/batch2"; } | produce --key k2 gw.audit
check_eq "produced during the outage" 0 $?
check "/ready turns 503" eventually 20 ready_is 503
check_contains "/ready says why" "$(curl -s "http://127.0.0.1:$APORT/ready")" "database unavailable"
check_eq "gw_auditor_db_up is 0" 0 "$(metric gw_auditor_db_up)"
check "the batch fills up to its bound" eventually 20 metric_is gw_auditor_pending_events 8
sleep 3 # several retries, and consumption stays paused
check_eq "and stays bounded" 8 "$(metric gw_auditor_pending_events)"
check "still running during the outage" alive
check "PostgreSQL starts again" pg_start
check "every event of the outage lands" eventually 40 rows_are "$RID2" 30
check "/ready is 200 again" eventually 20 ready_is 200
check_eq "gw_auditor_db_up is 1" 1 "$(metric gw_auditor_db_up)"
check_eq "56 rows, none duplicated" "56|56" \
	"$(sql "SELECT count(*) || '|' || count(DISTINCT event_id) FROM audit.audit_events")"

# ---- SIGTERM ----
stop_auditor
check_eq "SIGTERM exits 0" 0 "$STOP_RC"

# ---- SIGTERM with events it cannot write: they stay in Kafka ----
start_auditor "$TMP/auditor2.log" "${AUD_ENV[@]}"
require "auditor ready again" eventually 30 ready_is 200
pg_stop
RID3=$(new_id)
for i in $(seq 1 5); do event "$(new_id)" "$RID3"; done | produce --key k3 gw.audit
check "the five events wait in the batch" eventually 20 metric_is gw_auditor_pending_events 5
stop_auditor
check_eq "SIGTERM with the database down exits 0" 0 "$STOP_RC"
check "within the shutdown budget" test "$STOP_SECS" -le 15
check "PostgreSQL starts once more" pg_start
start_auditor "$TMP/auditor3.log" "${AUD_ENV[@]}" GW_DATABASE_ADMIN_URL="$ADMIN_URL"
check "the unwritten events land after a restart" eventually 40 rows_are "$RID3" 5
check_eq "nothing committed earlier was read again" 0 "$(metric gw_auditor_duplicates_total)"
check_contains "with GW_DATABASE_ADMIN_URL, serve migrated first" "$(cat "$TMP/auditor3.log")" \
	"audit schema ready"
check_eq "61 rows in all, none duplicated" "61|61" \
	"$(sql "SELECT count(*) || '|' || count(DISTINCT event_id) FROM audit.audit_events")"
stop_auditor
check_eq "final SIGTERM exits 0" 0 "$STOP_RC"
check_contains "the log says it stopped" "$(cat "$TMP/auditor3.log")" "auditor stopped"

t_summary
