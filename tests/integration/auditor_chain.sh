#!/usr/bin/env bash
# Integration test of the auditor's hash chains: rows written by serve form one chain per
# gw.audit partition that survives restarts and duplicates; `auditor verify` passes on
# them and names each altered, deleted, inserted and reordered row (tampered as the
# superuser in copies of the database). Usage: auditor_chain.sh BUILD_DIR
set -u
BUILD=$(cd "${1:?usage: auditor.sh BUILD_DIR}" && pwd) || exit 2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/assert.sh"

. "$HERE/../lib/auditor_lib.sh"
aud_init gw-auditor-chain
LOAD_PID=
aud_cleanup_hook() {
	if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then
		kill "$LOAD_PID" 2>/dev/null
		wait "$LOAD_PID" 2>/dev/null
	fi
}

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

# ---- a private PostgreSQL cluster ----
aud_pg_init check

GW_DATABASE_ADMIN_URL=$ADMIN_URL "$AUDITOR" migrate 2>"$TMP/migrate.log"
require "migrate exits 0" test $? = 0

# ---- broker and serve ----
aud_broker_start
openssl genpkey -algorithm ed25519 -out "$TMP/sign.pem" 2>/dev/null &&
	openssl pkey -in "$TMP/sign.pem" -pubout -out "$TMP/verify.pem" 2>/dev/null &&
	openssl genpkey -algorithm ed25519 -out "$TMP/other.pem" 2>/dev/null
require "Ed25519 keys made" test -s "$TMP/other.pem"
# Checkpoints every 4 events or 1 s, so a few land in each chain.
AUD_ENV=(GW_AUDIT_BATCH=16 GW_AUDIT_FLUSH_MS=20 GW_AUDITOR_FETCH_WAIT_MS=10
	GW_AUDIT_SIGNING_KEY_FILE="$TMP/sign.pem" GW_AUDIT_CHECKPOINT_EVENTS=4
	GW_AUDIT_CHECKPOINT_SECONDS=1 GW_AUDIT_API_KEY_FILE="$TMP/api.key"
	GW_AUDIT_API_DATABASE_URL="$COMPLIANCE_URL")
API_KEY=$(openssl rand -hex 32)
printf '%s\n' "$API_KEY" >"$TMP/api.key"
start_auditor "$TMP/auditor1.log" "${AUD_ENV[@]}"
require "auditor becomes ready" eventually 30 ready_is 200

total() { sql "SELECT count(*) FROM audit.audit_events"; }
total_is() { [ "$(total)" = "$1" ]; }
verify_db() { # database [flags]: runs auditor verify, sets OUT and RC
	local db=$1
	shift
	OUT=$(GW_DATABASE_URL="host=$PGDIR port=$PORT dbname=$db user=gw_auditor" \
		GW_AUDIT_VERIFY_KEY_FILE="${VERIFY_KEY-$TMP/verify.pem}" "$AUDITOR" \
		verify "$@" 2>"$TMP/verify.log")
	RC=$?
}
findings() { printf '%s\n' "$OUT" | grep -vc '^OK\|^FAILED'; }
# Every chain numbered 1..n without a gap, n rows.
contiguous() {
	sql "SELECT count(*) FROM (SELECT chain_id FROM audit.audit_events GROUP BY chain_id HAVING min(seq) <> 1 OR max(seq) <> count(*) OR count(DISTINCT seq) <> count(*)) x"
}

# ---- phase 1: six keys (several partitions), each with a duplicate ----
for k in 1 2 3 4 5 6; do
	: >"$TMP/k$k"
	for i in $(seq 1 10); do event "$(new_id)" "$(new_id)" "user$k" >>"$TMP/k$k"; done
	{ head -n 3 "$TMP/k$k"; head -n 1 "$TMP/k$k"; tail -n 7 "$TMP/k$k"; } |
		produce --key "key$k" gw.audit || echo "produce failed for key$k"
done
check "60 events land" eventually 30 total_is 60
check_eq "every row is chained" 0 "$(sql "SELECT count(*) FROM audit.audit_events WHERE chain_id IS NULL OR hash IS NULL")"
check "more than one chain (one per partition)" test "$(sql "SELECT count(DISTINCT chain_id) FROM audit.audit_events")" -ge 2
check_eq "the chain is the partition" 0 "$(sql "SELECT count(*) FROM audit.audit_events WHERE chain_id <> kafka_partition")"
check_eq "seqs run 1..n in every chain: duplicates took no place" 0 "$(contiguous)"
check_eq "seq follows the Kafka offset" 0 \
	"$(sql "SELECT count(*) FROM (SELECT kafka_offset < lag(kafka_offset) OVER (PARTITION BY chain_id ORDER BY seq) AS back FROM audit.audit_events) x WHERE back")"
check_eq "each row links to the one before" 0 \
	"$(sql "SELECT count(*) FROM (SELECT prev_hash, lag(hash) OVER (PARTITION BY chain_id ORDER BY seq) AS h, seq FROM audit.audit_events) x WHERE seq > 1 AND prev_hash <> h")"
check_eq "six duplicates skipped" 6 "$(metric gw_auditor_duplicates_total)"
verify_db gateway
check_eq "verify exits 0 on intact chains" 0 "$RC"
check_contains "and says OK with the row count" "$OUT" "OK: 60 chained rows checked"
check_contains "with signed checkpoints checked" "$OUT" "signatures checked), 0 findings"
check_eq "the compliance role may verify" 0 \
	"$(GW_DATABASE_URL=$COMPLIANCE_URL "$AUDITOR" verify >/dev/null 2>&1; echo $?)"
sleep 0.2
SINCE=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
sleep 0.2

# ---- phase 2: a restart continues each chain; replays take no place ----
stop_auditor
check_eq "SIGTERM exits 0" 0 "$STOP_RC"
start_auditor "$TMP/auditor2.log" "${AUD_ENV[@]}"
require "auditor ready again" eventually 30 ready_is 200
for k in 1 2 3 4 5 6; do
	{
		for i in 1 2 3 4 5; do event "$(new_id)" "$(new_id)" "user$k"; done
		head -n 1 "$TMP/k$k" # an old event again
	} | produce --key "key$k" gw.audit || echo "produce failed for key$k"
done
check "30 more land" eventually 30 total_is 90
check "the six replays were skipped" eventually 10 metric_is gw_auditor_duplicates_total 6
check_eq "chains continue across the restart without a gap" 0 "$(contiguous)"
verify_db gateway
check_eq "verify exits 0 after the restart" 0 "$RC"
verify_db gateway --since "$SINCE"
check_eq "verify --since exits 0" 0 "$RC"
# The 30 new rows, plus each chain's row before them (the trusted anchor).
NCHAINS=$(sql "SELECT count(DISTINCT chain_id) FROM audit.audit_events")
check_contains "and walks only the newer rows" "$OUT" "OK: $((30 + NCHAINS)) chained rows checked"
GW_DATABASE_URL="host=$PGDIR port=1 dbname=gateway user=gw_auditor" "$AUDITOR" verify >/dev/null 2>&1
check_eq "verify exits 3 when the database is unreachable" 3 $?
"$AUDITOR" verify --since yesterday >/dev/null 2>&1
check_eq "verify with a bad --since exits 2" 2 $?
# ---- the compliance API on the admin port ----
api() { # path [key]
	curl -s -w '\n%{http_code}' -H "Authorization: Bearer ${2-$API_KEY}" "http://127.0.0.1:$APORT$1"
}
code_of() { printf '%s\n' "$1" | tail -n 1; }
body_of() { printf '%s\n' "$1" | sed '$d'; }
check_eq "API without a key: 401" 401 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/audit/events?principal=user1")"
check_eq "API with a wrong key: 401" 401 "$(code_of "$(api '/audit/events?principal=user1' wrongwrongwrongwrong)")"
out=$(api '/audit/events?principal=user1&limit=3')
check_eq "events: 200" 200 "$(code_of "$out")"
check_eq "events: limit honoured" 3 "$(body_of "$out" | grep -c '"principal":"user1"')"
check_eq "events: all of user1 since 1h" 15 "$(body_of "$(api '/audit/events?principal=user1&since=1h')" | grep -c .)"
check_eq "events without a filter or since: 400" 400 "$(code_of "$(api '/audit/events')")"
check_eq "events with limit 5000: 400" 400 "$(code_of "$(api '/audit/events?since=1h&limit=5000')")"
out=$(api '/audit/report?since=1h&by=principal')
check_eq "report: 200" 200 "$(code_of "$out")"
check_contains "report: user1 made 15 requests" "$(body_of "$out")" '{"key":"user1","requests":15,"denials":0,"errors":0,"tokens":0}'
check_eq "report with a bad by: 400" 400 "$(code_of "$(api '/audit/report?since=1h&by=colour')")"
check_eq "report without since: 400" 400 "$(code_of "$(api '/audit/report?by=day')")"

# ---- an outage under load: PostgreSQL stopped for AUDITOR_OUTAGE_SECONDS ----
# Default 5 s to keep `make test` short; the issue's minute: AUDITOR_OUTAGE_SECONDS=60.
OUTAGE=${AUDITOR_OUTAGE_SECONDS:-5}
BEFORE=$(total)
# ~50 events/s (10 every 0.2 s) from before the stop until 2 s after the restart:
# 60 s of it is ~1.2 MB, well under the mock broker's 5 MB per partition. Each
# delivered round of 10 is one line in load.count.
(
	r=0
	while [ ! -e "$TMP/stop-load" ]; do
		r=$((r + 1))
		# One read of /dev/urandom per round, not two openssl runs per event.
		ids=$(od -An -v -tx1 -N320 /dev/urandom | tr -d ' \n')
		for i in $(seq 0 9); do event "${ids:$((i * 64)):32}" "${ids:$((i * 64 + 32)):32}" load; done |
			produce --key "load$((r % 6))" gw.audit 2>>"$TMP/load.log" &&
			echo "$r" >>"$TMP/load.count" || echo "round $r failed" >>"$TMP/load.log"
		sleep 0.2
	done
) &
LOAD_PID=$!
sleep 1
pg_stop
check_eq "PostgreSQL stopped under load" 0 $?
check "/ready turns 503" eventually 20 ready_is 503
LAG1=$(metric gw_auditor_consumer_lag)
sleep "$OUTAGE"
LAG2=$(metric gw_auditor_consumer_lag)
check "the lag metric grows during the outage ($LAG1 -> $LAG2)" test "${LAG2%.*}" -gt "${LAG1%.*}"
check "still running after ${OUTAGE}s without the database" alive
check "PostgreSQL starts again" pg_start
sleep 2
touch "$TMP/stop-load"
wait "$LOAD_PID"
LOAD_PID=
check_eq "every load round was delivered to Kafka" "" "$(grep '^round' "$TMP/load.log")"
ROUNDS=$(wc -l <"$TMP/load.count")
check "every event of the load lands ($((ROUNDS * 10)))" eventually 60 total_is $((BEFORE + ROUNDS * 10))
check_eq "none duplicated" "$(total)" "$(sql "SELECT count(DISTINCT event_id) FROM audit.audit_events")"
check "/ready is 200 again" eventually 20 ready_is 200
check_eq "chains stay gapless through the outage" 0 "$(contiguous)"

heads_signed() { # chains whose last row is covered by a checkpoint, and chains
	sql "SELECT count(*) FILTER (WHERE k = h) || '/' || count(*) FROM (SELECT chain_id, max(seq) AS h FROM audit.audit_events GROUP BY chain_id) e LEFT JOIN (SELECT chain_id, max(seq) AS k FROM audit.checkpoints GROUP BY chain_id) c USING (chain_id)"
}
heads_all_signed() { local x; x=$(heads_signed); [ "${x%/*}" = "${x#*/}" ]; }
check "idle chains get their head signed within the interval" eventually 20 heads_all_signed
check "checkpoints were signed (metric)" test "$(metric gw_auditor_checkpoints_signed)" -ge 2
NCHAINS=$(sql "SELECT count(DISTINCT chain_id) FROM audit.audit_events")
check "checkpoints by count: more than one per chain" test \
	"$(sql "SELECT count(*) FROM audit.checkpoints")" -gt "$NCHAINS"
check_eq "gw_auditor cannot alter a checkpoint" 0 \
	"$(denied gw_auditor "UPDATE audit.checkpoints SET seq = 0" && echo 0)"
stop_auditor
verify_db gateway
check_eq "verify with the public key exits 0" 0 "$RC"
VERIFY_KEY=$TMP/sign.pem verify_db gateway
check_eq "the private key's public half verifies too" 0 "$RC"
VERIFY_KEY= verify_db gateway
check_eq "without a key: exit 0" 0 "$RC"
check_contains "but says the signatures were not checked" "$OUT" "signatures NOT checked"
VERIFY_KEY=$TMP/other.pem verify_db gateway
check_eq "another key: verify exits 1" 1 "$RC"
check_contains "and names the checkpoints" "$OUT" "bad-checkpoint chain="

# ---- tampering, each kind in its own copy of the database ----
C=$(sql "SELECT chain_id FROM audit.audit_events GROUP BY chain_id ORDER BY count(*) DESC, chain_id LIMIT 1")
C2=$(sql "SELECT chain_id FROM audit.audit_events WHERE chain_id <> $C GROUP BY chain_id ORDER BY chain_id LIMIT 1")
id_at() { sql "SELECT event_id FROM audit.audit_events WHERE chain_id = $1 AND seq = $2"; }
copy_db() { sql "CREATE DATABASE $1 TEMPLATE gateway" >/dev/null; }
sql_in() { psql -X -q -At -v ON_ERROR_STOP=1 -h "$PGDIR" -p "$PORT" -U postgres -d "$1" -c "$2"; }

copy_db t_alt
sql_in t_alt "UPDATE audit.audit_events SET principal = 'mallory' WHERE chain_id = $C AND seq = 3"
verify_db t_alt
check_eq "altered: verify exits 1" 1 "$RC"
check_contains "altered: names the row" "$OUT" "altered chain=$C seq=3 event_id=$(id_at "$C" 3)"
check_eq "altered: and only it" 1 "$(findings)"
verify_db t_alt --since "$SINCE"
check_eq "an alteration before --since is out of scope" 0 "$RC"
sql_in t_alt "UPDATE audit.audit_events SET event = '{\"forged\":1}' WHERE chain_id = $C AND seq = 5"
verify_db t_alt
check_contains "altered event column: named" "$OUT" "altered chain=$C seq=5 event_id=$(id_at "$C" 5)"

copy_db t_del
sql_in t_del "DELETE FROM audit.audit_events WHERE chain_id = $C AND seq = 4"
sql_in t_del "DELETE FROM audit.audit_events WHERE chain_id = $C2 AND seq = 1"
verify_db t_del
check_eq "deleted: verify exits 1" 1 "$RC"
check_contains "deleted: names the missing seq" "$OUT" "deleted chain=$C seq=4..4"
check_contains "deleted: a chain's first row too" "$OUT" "deleted chain=$C2 seq=1..1"
check_eq "deleted: and nothing else" 2 "$(findings)"

copy_db t_ins
FORGED=$(new_id)
sql_in t_ins "UPDATE audit.audit_events SET seq = seq + 1000000 WHERE chain_id = $C AND seq >= 3;
	UPDATE audit.audit_events SET seq = seq - 999999 WHERE chain_id = $C AND seq > 1000000;
	INSERT INTO audit.audit_events (event_id, request_id, event_type, event_time, principal, event, kafka_partition, chain_id, seq, prev_hash, hash)
	SELECT '$FORGED', request_id, event_type, event_time, 'mallory', event, kafka_partition, chain_id, 3, hash, md5('a') || md5('b')
	FROM audit.audit_events WHERE chain_id = $C AND seq = 2"
verify_db t_ins
check_eq "inserted: verify exits 1" 1 "$RC"
check_contains "inserted: names the forged row" "$OUT" "inserted chain=$C seq=3 event_id=$FORGED"
check_eq "inserted: and nothing else" 1 "$(findings)"

copy_db t_reo
A3=$(id_at "$C" 3)
A4=$(id_at "$C" 4)
sql_in t_reo "UPDATE audit.audit_events SET seq = 1000000 WHERE chain_id = $C AND seq = 3;
	UPDATE audit.audit_events SET seq = 3 WHERE chain_id = $C AND seq = 4;
	UPDATE audit.audit_events SET seq = 4 WHERE chain_id = $C AND seq = 1000000"
verify_db t_reo
check_eq "reordered: verify exits 1" 1 "$RC"
check_contains "reordered: names the first moved row" "$OUT" "reordered chain=$C seq=3 event_id=$A4"
check_contains "reordered: and the second" "$OUT" "reordered chain=$C seq=4 event_id=$A3"
check_eq "reordered: and nothing else" 2 "$(findings)"

copy_db t_tail
LAST=$(sql "SELECT max(seq) FROM audit.audit_events WHERE chain_id = $C")
sql_in t_tail "DELETE FROM audit.audit_events WHERE chain_id = $C AND seq >= $((LAST - 1))"
verify_db t_tail
check_eq "a cut tail: verify exits 1" 1 "$RC"
check_contains "the checkpoint names the missing rows" "$OUT" "deleted chain=$C seq=$((LAST - 1))..$LAST"
check_eq "a cut tail: and nothing else" 1 "$(findings)"

copy_db t_sig
sql_in t_sig "UPDATE audit.checkpoints SET seq = seq WHERE false; UPDATE audit.checkpoints SET signed_at = signed_at + interval '1 second' WHERE chain_id = $C AND seq = (SELECT max(seq) FROM audit.checkpoints WHERE chain_id = $C)"
verify_db t_sig
check_eq "a re-dated checkpoint: verify exits 1" 1 "$RC"
check_contains "and names it" "$OUT" "bad-checkpoint chain=$C seq=$LAST"

copy_db t_out
sql_in t_out "INSERT INTO audit.audit_events (event_id, event_type, event_time, event) VALUES ('$FORGED', 't', now(), '{}')"
verify_db t_out
check_eq "a row outside every chain: verify exits 1" 1 "$RC"
check_contains "and names it" "$OUT" "inserted chain=none count=1 event_id=$FORGED"

# ---- report: requests, denials, errors, tokens ----
copy_db t_rep
ins() { # type request principal model endpoint outcome tokens
	sql_in t_rep "INSERT INTO audit.audit_events (event_id, event_type, event_time, request_id, principal, model, endpoint, outcome, total_tokens, event)
		VALUES ('$(new_id)', '$1', now(), '$2', '$3', '$4', NULLIF('$5', ''), '$6', NULLIF('$7', '')::bigint, '{}')"
}
R1=$(new_id) R2=$(new_id) R3=$(new_id)
ins request.received "$R1" rep@x m2 "" "" ""
ins authz.decision "$R1" rep@x m2 "" denied ""
ins authz.decision "$R2" rep@x m2 "" allowed ""
ins dispatch.result "$R2" rep@x m2 e1 ok 30
ins dispatch.result "$R3" rep@x m2 e1 error ""
rep() { GW_DATABASE_URL="host=$PGDIR port=$PORT dbname=t_rep user=gw_compliance" "$AUDITOR" report "$@"; }
out=$(rep --since 1h --by principal --format csv)
check_eq "report exits 0" 0 $?
check_contains "csv by principal: requests, denials, errors, tokens" "$out" "rep@x,3,1,1,30"
check_contains "by model" "$(rep --since 1h --by model --format csv)" "m2,3,1,1,30"
check_contains "by endpoint" "$(rep --since 1h --by endpoint --format csv)" "e1,2,0,1,30"
check_contains "by day (UTC)" "$(rep --since 1h --by day --format jsonl)" "\"key\":\"$(date -u +%Y-%m-%d)\""
check_contains "table has a header" "$(rep --since 1h --by principal)" "requests  denials  errors  tokens"
check_eq "--until before the events: nothing" "principal,requests,denials,errors,tokens" \
	"$(rep --since 2h --until 1h --by principal --format csv)"
qry() { GW_DATABASE_URL="host=$PGDIR port=$PORT dbname=t_rep user=gw_compliance" "$AUDITOR" query "$@"; }
check_eq "query --model --outcome" 1 "$(qry --model m2 --outcome denied | grep -c .)"
check_eq "query --endpoint --event-type" 2 "$(qry --endpoint e1 --event-type dispatch.result | grep -c .)"
check_eq "query --principal --event-type --outcome" 1 \
	"$(qry --principal rep@x --event-type dispatch.result --outcome error | grep -c .)"
rep --since 1h --by colour >/dev/null 2>&1
check_eq "report --by colour exits 2" 2 $?
rep --by day >/dev/null 2>&1
check_eq "report without --since exits 2" 2 $?

t_summary
