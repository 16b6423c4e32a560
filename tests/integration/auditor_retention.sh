#!/usr/bin/env bash
# Integration test of the auditor's monthly partitions and retention: a schema-3 database
# with rows migrates into partitions without losing one; retention drops nothing without a
# verified backup, then (after a real backup-agent snapshot + verify) drops exactly the old
# months that backup covers, audits each drop, and `auditor verify` still passes; a month
# past retention written after the backup is kept; tampering after the cut is still found.
# Usage: auditor_retention.sh BUILD_DIR
set -u
BUILD=$(cd "${1:?usage: auditor_retention.sh BUILD_DIR}" && pwd) || exit 2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/assert.sh"

. "$HERE/../lib/auditor_lib.sh"
AGENT=$BUILD/backup-agent/backup-agent
AUD_TOOLS=("$AGENT" "$PGBIN/initdb" "$PGBIN/pg_dump" "$PGBIN/pg_restore" "$(command -v psql)"
	"$(command -v openssl)")
AUD_TOOL_NAMES="psql, openssl"
AUD_MISSING_HINT="build auditor, gw-produce, gw-broker and backup-agent first"
AUD_TAIL_GLOBS=('*.log' '*.err')
AUD_PG_CONF="fsync = off"
aud_init gw-auditor-retention

denied() { # role sql
	local err
	err=$(psql_as "$1" -c "$2" 2>&1 >/dev/null) && return 1
	case "$err" in *"permission denied"* | *"must be owner"*) return 0 ;; esac
	echo "     unexpected: $err"
	return 1
}

# Months relative to this one (UTC): M0 now, M1 one month ago, ...
THIS=$(date -u +%Y-%m-01)
month() { date -u -d "$THIS -$1 months" +%Y_%m; }
ts_us() { echo "$(date -u -d "$(date -u -d "$THIS -$1 months" +%Y-%m)-$2 12:00:00" +%s)000000"; }
part() { echo "audit_events_$(month "$1")"; }
has_part() { [ "$(sql "SELECT to_regclass('audit.$(part "$1")') IS NOT NULL")" = t ]; }
no_part() { [ "$(sql "SELECT to_regclass('audit.$(part "$1")') IS NULL")" = t ]; }

# ---- a private PostgreSQL cluster ----
aud_pg_init require

# ---- a database at schema version 3 that already holds rows ----
# Rows written at version 1 (before the chains) are what migration 2 counted in
# chain_start; they sit in an old month (M6) and in this one.
GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUDITOR" migrate --to 1 2>"$TMP/migrate1.log"
require "migrate --to 1 exits 0" test $? = 0
old_rows() { # months-ago count
	sql "INSERT INTO audit.audit_events (event_id, request_id, event_type, event_time, service,
	       principal, outcome, event)
	     SELECT md5('old-$1-' || i), md5('req-$1-' || i), 'request.completed',
	            to_timestamp($(ts_us "$1" 10) / 1e6) + i * interval '1 minute', 'ingress',
	            'alice@example.org', 'ok', '{\"old\":true}'
	     FROM generate_series(1, $2) AS i"
}
old_rows 6 7 && old_rows 0 3
require "rows written at version 1" test "$(sql 'SELECT count(*) FROM audit.audit_events')" = 10
GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUDITOR" migrate --to 3 2>"$TMP/migrate3.log"
check_eq "migrate --to 3 stops at version 3" 3 \
	"$(sql "SELECT max(version) FROM schema_migrations WHERE component = 'audit'")"
check_eq "version 3 is a plain table" r \
	"$(sql "SELECT relkind FROM pg_class WHERE oid = 'audit.audit_events'::regclass")"
BEFORE=$(sql "SELECT md5(string_agg(event_id || event_time || coalesce(principal, '') || inserted_at, ',' ORDER BY event_id)) FROM audit.audit_events")

GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUDITOR" migrate 2>"$TMP/migrate.log"
require "migrate to the latest version exits 0" test $? = 0
check_eq "audit_events is now partitioned" p \
	"$(sql "SELECT relkind FROM pg_class WHERE oid = 'audit.audit_events'::regclass")"
check_eq "every row survived the migration, unchanged" "$BEFORE" \
	"$(sql "SELECT md5(string_agg(event_id || event_time || coalesce(principal, '') || inserted_at, ',' ORDER BY event_id)) FROM audit.audit_events")"
check_eq "each row sits in its own month's partition" 0 \
	"$(sql "SELECT count(*) FROM audit.audit_events WHERE tableoid::regclass::text <> 'audit.audit_events_' || to_char(event_time AT TIME ZONE 'UTC', 'YYYY_MM')")"
check "the old month's partition holds its 7 rows" \
	test "$(sql "SELECT count(*) FROM audit.$(part 6)")" = 7
check "partitions for this month and the next two exist" \
	test "$(sql "SELECT count(*) FROM pg_class WHERE relnamespace = 'audit'::regnamespace AND relname IN ('$(part 0)', 'audit_events_$(date -u -d "$THIS +1 month" +%Y_%m)', 'audit_events_$(date -u -d "$THIS +2 months" +%Y_%m)')")" = 3
check_eq "no DEFAULT partition" 0 \
	"$(sql "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'audit.audit_events'::regclass AND partdefid <> 0")"
check_eq "no regex CHECK on the partitioned table" 0 \
	"$(sql "SELECT count(*) FROM pg_constraint WHERE conrelid = 'audit.audit_events'::regclass AND pg_get_constraintdef(oid) LIKE '%~%'")"
check_eq "unique on (event_id, event_time)" "UNIQUE (event_id, event_time)" \
	"$(sql "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'audit.audit_events'::regclass AND contype = 'u'")"

# ---- least privilege across partitions ----
check "the writer may create a month's partition (ensure function)" \
	psql_as gw_auditor -c "SELECT audit.ensure_month_partition(to_timestamp($(ts_us 5 1) / 1e6)); SELECT audit.ensure_month_partition(to_timestamp($(ts_us 5 2) / 1e6))"
check "... and it exists once, owned by the owner" \
	test "$(sql "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'audit.$(part 5)'::regclass")" = postgres
check "compliance may not call the ensure function" \
	denied gw_compliance "SELECT audit.ensure_month_partition(now())"
check "compliance may not read a partition directly (only through the parent)" \
	denied gw_compliance "SELECT count(*) FROM audit.$(part 6)"
check "the writer may not DELETE from a partition" denied gw_auditor "DELETE FROM audit.$(part 6)"
check "the writer may not UPDATE a partition" \
	denied gw_auditor "UPDATE audit.$(part 6) SET principal = 'mallory'"
check "the writer may not DELETE through the parent" denied gw_auditor "DELETE FROM audit.audit_events"
check "the writer may not DROP a partition" denied gw_auditor "DROP TABLE audit.$(part 6)"
check "the writer may not write retention cuts" \
	denied gw_auditor "DELETE FROM audit.retention_chain_cuts"

# ---- broker and serve (2 partitions of gw.audit = 2 chains) ----
aud_broker_start GW_BROKER_PARTITIONS=2
start_auditor() { # log
	(cd "$TMP" && exec env GW_DATABASE_URL="$DB_URL" GW_DATABASE_ADMIN_URL="$ADMIN_URL" \
		GW_KAFKA_BROKERS="$BROKERS" GW_ADMIN_LISTEN="127.0.0.1:$APORT" GW_AUDIT_FLUSH_MS=20 \
		GW_AUDITOR_FETCH_WAIT_MS=10 GW_AUDIT_RETENTION_DAYS=1 "$AUDITOR" serve) 2>"$1" &
	AUDITOR_PID=$!
	require "auditor becomes ready" eventually 30 \
		bash -c "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$APORT/ready | grep -q 200"
}
start_auditor "$TMP/auditor.log"
metric() { curl -s "http://127.0.0.1:$APORT/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
# serve ran its partition/retention job at start: two old months, no backup yet.
check_eq "serve meters the months retention keeps (gw_audit_retention_blocked)" 2 \
	"$(metric gw_audit_retention_blocked)"
check "... and when its job last ran" \
	test "$(metric gw_audit_retention_last_run_timestamp_seconds | cut -d. -f1)" -gt 0
check_contains "... and logs why" "$(cat "$TMP/auditor.log")" "no verified backup"

# Old months' partitions, made the way the writer does (for a month it has not seen).
for m in 5 4 3 2; do psql_as gw_auditor -c "SELECT audit.ensure_month_partition(to_timestamp($(ts_us $m 1) / 1e6))" >/dev/null; done

event() { # months-ago day n
	printf '{"event_id":"%s","ts_us":%s,"type":"dispatch.result","service":"test",' \
		"$(openssl rand -hex 16)" "$(ts_us "$1" "$2")"
	printf '"request_id":"%s","principal":"bob@example.org","outcome":"ok","status":200}\n' \
		"$(openssl rand -hex 16)"
}
produce() { GW_KAFKA_BROKERS=$BROKERS GW_LOG_LEVEL=warn "$PRODUCE" gw.audit; }
total() { sql "SELECT count(*) FROM audit.audit_events"; }
is() { [ "$("${@:2}")" = "$1" ]; } # expected command...: re-run on every try
part_rows() { sql "SELECT count(*) FROM audit.$(part "$1")"; }
total_is() { [ "$(total)" = "$1" ]; }

# Three old months, then this one: per chain the old rows come first.
for m in 5 4 3; do for d in 03 12 21; do for i in 1 2 3; do event $m $d; done; done; done >"$TMP/old.jsonl"
require "old months' events produced" produce <"$TMP/old.jsonl"
require "... and stored" eventually 30 total_is 37
for i in $(seq 1 16); do event 0 01; done | produce
require "this month's events stored" eventually 30 total_is 53
check_eq "both chains have rows in old months" 2 \
	"$(sql "SELECT count(DISTINCT chain_id) FROM audit.audit_events WHERE event_time < '$THIS' AND chain_id IS NOT NULL")"
check_eq "... and in this one" 2 \
	"$(sql "SELECT count(DISTINCT chain_id) FROM audit.audit_events WHERE event_time >= '$THIS'")"

# ---- retention without a verified backup: nothing goes ----
retention() { # args...: sets OUT, RC
	OUT=$(GW_DATABASE_ADMIN_URL=$ADMIN_URL GW_KAFKA_BROKERS=$BROKERS \
		GW_AUDIT_RETENTION_DAYS=${DAYS:-1} "$AUDITOR" retention "$@" 2>>"$TMP/retention.err")
	RC=$?
}
retention
check_eq "retention without a backup exits 0" 0 "$RC"
check_contains "... keeps the oldest month: no verified backup" "$OUT" \
	"kept $(month 6 | tr _ -) audit.$(part 6): no verified backup"
check_contains "... and says how many it kept" "$OUT" "done: 0 months dropped, 5 past retention kept"
check "... every old partition is still there" has_part 6
check_eq "... no cut recorded" 0 "$(sql 'SELECT count(*) FROM audit.retention_cuts')"
DAYS=0 retention
check_contains "GW_AUDIT_RETENTION_DAYS=0 keeps everything" "$OUT" "kept forever"

# ---- a real backup: snapshot, then verify (restore + auditor verify) ----
openssl rand -hex 32 >"$TMP/backup.key"
chmod 600 "$TMP/backup.key"
mkdir -m 700 "$TMP/backups"
agent() {
	env -i PATH=/usr/bin:/bin HOME="$TMP" GW_ENV_FILE=/dev/null GW_LOG_LEVEL=warn \
		GW_BACKUP_DIR="$TMP/backups" GW_BACKUP_KEY_FILE="$TMP/backup.key" \
		GW_BACKUP_DATABASE_URL="$ADMIN_URL" GW_BACKUP_ADMIN_URL="$ADMIN_URL" \
		GW_PG_DUMP="$PGBIN/pg_dump" GW_PG_RESTORE="$PGBIN/pg_restore" \
		GW_AUDITOR_BIN="$AUDITOR" GW_KAFKA_BROKERS="$BROKERS" "$AGENT" "$@"
}
SNAP=$(agent snapshot 2>"$TMP/snapshot.err")
require "backup-agent snapshot exits 0" test $? = 0 -a -n "$SNAP"
agent verify "$SNAP" >"$TMP/verify-backup.out" 2>"$TMP/verify-backup.err"
require "backup-agent verify passes (auditor verify on the restored copy)" test $? = 0
env_bv() { SNAP=$1 bv; }
bv() { sql "SELECT count(*) FROM audit.audit_events WHERE event_type = 'backup.verify' AND outcome = 'ok' AND coalesce(event->'extra'->>'snapshot_id', event->'extra'->>'id') = '$SNAP'"; }
require "the backup.verify event is stored" eventually 30 is 1 bv
check_eq "... carrying the snapshot's chain heads" 2 \
	"$(sql "SELECT count(*) FROM audit.audit_events e, json_array_elements(e.event->'extra'->'audit_heads') h WHERE e.event_type = 'backup.verify' AND h->>'chain_id' IS NOT NULL AND (h->>'seq')::int > 0")"

# A month past retention written after the backup: not covered, so kept.
for i in 1 2 3 4 5 6; do event 2 15; done | produce
require "a month written after the backup is stored" eventually 30 is 6 part_rows 2
N=$(total)

retention --dry-run
check_eq "dry run exits 0" 0 "$RC"
for m in 6 5 4 3; do
	check_contains "dry run would drop $(month $m)" "$OUT" "would-drop $(month $m | tr _ -) audit.$(part $m)"
done
check_contains "dry run keeps the month newer than the backup" "$OUT" \
	"kept $(month 2 | tr _ -) audit.$(part 2): not covered by the newest verified backup (snapshot $SNAP)"
check "dry run changes nothing" has_part 6

# ---- retention with the backup ----
OUT=$(GW_DATABASE_ADMIN_URL=$ADMIN_URL GW_AUDIT_RETENTION_DAYS=1 "$AUDITOR" retention 2>&1)
check_eq "without GW_KAFKA_BROKERS (the drop could not be audited) retention exits 1" 1 $?
check_contains "... saying why" "$OUT" "GW_KAFKA_BROKERS is not set"
check "... and drops nothing" has_part 6
# The CLI with a retention that reaches only the two oldest months...
D=$((($(date -u +%s) - $(date -u -d "$(date -u -d "$THIS -4 months" +%Y-%m-01)" +%s)) / 86400))
DAYS=$D retention
check_eq "retention exits 0" 0 "$RC"
check_contains "... reports its work" "$OUT" "done: 2 months dropped, 0 past retention kept"
for m in 6 5; do check "$(month $m) is dropped" no_part $m; done
check "$(month 4) is not past $D days: kept" has_part 4
# ... then serve (GW_AUDIT_RETENTION_DAYS=1) at its start drops the next two.
kill -TERM "$AUDITOR_PID"
wait "$AUDITOR_PID"
check_eq "auditor serve stops cleanly" 0 $?
start_auditor "$TMP/auditor2.log"
check_eq "serve dropped two months at start (gw_audit_retention_dropped_total)" 2 \
	"$(metric gw_audit_retention_dropped_total)"
check_eq "... and meters the one it keeps" 1 "$(metric gw_audit_retention_blocked)"
for m in 4 3; do check "$(month $m) is dropped" no_part $m; done
check "the month newer than the backup is kept" has_part 2
check "this month is kept" has_part 0
check_eq "exactly the dropped rows are gone (7 + 27)" $((N - 34)) \
	"$(sql "SELECT count(*) FROM audit.audit_events WHERE event_type <> 'audit.retention'")"
check_eq "four cuts recorded" 4 "$(sql 'SELECT count(*) FROM audit.retention_cuts')"
check_eq "... naming the backup" "$SNAP" \
	"$(sql "SELECT DISTINCT backup_snapshot_id FROM audit.retention_cuts")"
check_eq "... with the unchained rows of the oldest month" 7 \
	"$(sql "SELECT unchained_rows FROM audit.retention_cuts WHERE month = '$(month 6 | tr _ -)-01'")"
ret_events() { sql "SELECT count(*) FROM audit.audit_events WHERE event_type = 'audit.retention'"; }
require "an audit.retention event per dropped month is stored" eventually 30 is 4 ret_events
check_eq "... naming month, rows, chain heads and the backup" 1 \
	"$(sql "SELECT count(*) FROM audit.audit_events WHERE event_type = 'audit.retention' AND event->'extra'->>'month' = '$(month 3 | tr _ -)' AND (event->'extra'->>'rows')::int = 9 AND json_array_length(event->'extra'->'chains') >= 1 AND event->'extra'->>'backup_snapshot_id' = '$SNAP' AND event->'extra'->'chains'->0->>'last_hash' ~ '^[0-9a-f]{64}\$'")"
check_eq "... whose event ids the cuts record" 4 \
	"$(sql "SELECT count(*) FROM audit.retention_cuts c JOIN audit.audit_events e ON e.event_id = c.event_id")"

verify() { # db: sets OUT, RC
	OUT=$(GW_DATABASE_URL="host=$PGDIR port=$PORT dbname=$1 user=gw_compliance" \
		"$AUDITOR" verify 2>>"$TMP/verify.err")
	RC=$?
}
verify gateway
check_eq "auditor verify passes after the drop" 0 "$RC"
[ "$RC" = 0 ] || echo "$OUT" | head
check_contains "... over the remaining rows" "$OUT" "OK:"

retention
check_contains "a second run drops nothing more" "$OUT" "done: 0 months dropped, 1 past retention kept"
OUT=$(GW_DATABASE_URL=$COMPLIANCE_URL "$AUDITOR" verify --since "$(date -u -d "$THIS -4 months" +%Y-%m-%d)" 2>>"$TMP/verify.err")
check_eq "verify --since a dropped month passes too" 0 $?

# A late event for a dropped month: the writer recreates its partition and the chain
# goes on; even under a newer backup that month waits, since newer months hold rows
# older in the chain.
event 3 25 | produce
require "a late event recreates a dropped month" eventually 30 has_part 3
# A newer verified backup, as backup-agent reports it (produced the same way, to save
# a second restore): heads at the current chain heads.
HEADS=$(sql "SELECT json_agg(json_build_object('table', 'audit.audit_events', 'chain_id', chain_id::text, 'seq', s::text)) FROM (SELECT chain_id, max(seq) AS s FROM audit.audit_events WHERE chain_id IS NOT NULL GROUP BY chain_id) h")
printf '{"event_id":"%s","ts_us":%s,"type":"backup.verify","service":"backup-agent","outcome":"ok","extra":{"snapshot_id":"second","chain_checked":true,"audit_heads":%s}}\n' \
	"$(openssl rand -hex 16)" "$(date +%s%6N)" "$HEADS" | produce
require "a second verified backup is recorded" eventually 30 is 1 env_bv second
retention
check_contains "the late month is kept: rows of its chain in newer months" "$OUT" \
	"kept $(month 3 | tr _ -) audit.$(part 3): chain "
check_contains "... saying why" "$OUT" "arrived late"
check "... and is still there" has_part 3
verify gateway
check_eq "verify passes with the late row after the cut" 0 "$RC"

# ---- tampering after the cut is still found (copies of the database) ----
kill -TERM "$AUDITOR_PID"
wait "$AUDITOR_PID"
check_eq "auditor serve stops cleanly again" 0 $?
AUDITOR_PID=
copy() { sql "CREATE DATABASE $1 TEMPLATE gateway"; }
copy t_del && DB=t_del sql "DELETE FROM audit.$(part 2) WHERE (chain_id, seq) IN (SELECT chain_id, min(seq) FROM audit.$(part 2) GROUP BY chain_id HAVING count(*) >= 2 ORDER BY 1 LIMIT 1)"
verify t_del
check_eq "a row deleted from the oldest remaining month: verify exits 1" 1 "$RC"
check_contains "... and names it" "$OUT" "deleted chain="
OUT=$(GW_DATABASE_ADMIN_URL="host=$PGDIR port=$PORT dbname=t_del user=postgres" \
	GW_KAFKA_BROKERS=$BROKERS GW_AUDIT_RETENTION_DAYS=1 "$AUDITOR" retention 2>>"$TMP/retention.err")
check_contains "retention refuses to drop a month of a damaged chain" "$OUT" \
	"does not hold every seq"
check_contains "... and drops nothing" "$OUT" "done: 0 months dropped"
copy t_nocut && DB=t_nocut sql "DELETE FROM audit.retention_chain_cuts WHERE chain_id = (SELECT min(chain_id) FROM audit.retention_chain_cuts)"
verify t_nocut
check_eq "a chain starting late without a cut record: verify exits 1" 1 "$RC"
check_contains "... names the missing start" "$OUT" "deleted chain="
copy t_forged && DB=t_forged sql "UPDATE audit.retention_chain_cuts SET last_hash = repeat('0', 64) WHERE chain_id = (SELECT min(chain_id) FROM audit.retention_chain_cuts)"
verify t_forged
check_eq "a forged cut hash: verify exits 1" 1 "$RC"

t_summary
