#!/usr/bin/env bash
# backup-agent against a private PostgreSQL cluster and the embedded broker: snapshots
# that pg_restore reads, manifests that match sha256sum, the listing's verdicts, every
# failure leaving nothing under a final name, and `serve` answering gw.control.
# Usage: backup.sh BUILD_DIR
set -u

BUILD=$(cd "${1:?usage: backup.sh BUILD_DIR}" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/assert.sh"

AGENT=$BUILD/backup-agent/backup-agent
BROKER=$BUILD/deploy/local/gw-broker
CONSUME=$BUILD/backup-agent/gw-consume
PRODUCE=$(find "$BUILD" -name gw-produce -type f -perm -u+x 2>/dev/null | head -n 1)
PGBIN=/usr/lib/postgresql/15/bin
for f in "$AGENT" "$BROKER" "$CONSUME" "$PRODUCE" "$PGBIN/initdb"; do
	if [ ! -x "$f" ]; then
		echo "missing $f: build backup-agent, gw-consume, gw-broker and gw-produce first"
		echo "0 passed, 1 failed"
		exit 1
	fi
done

T=$(mktemp -d /tmp/gw-backup-test.XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	if [ -f "$T/pg/postmaster.pid" ]; then
		runuser -u postgres -- "$PGBIN/pg_ctl" -D "$T/pg" -m immediate -w stop >/dev/null 2>&1
	fi
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- PostgreSQL: a private cluster, unix socket only ----
mkdir -p "$T/pg" "$T/sock"
chown postgres "$T/pg" "$T/sock"
if ! runuser -u postgres -- "$PGBIN/initdb" -D "$T/pg" -U postgres -A trust --no-sync \
	>"$T/initdb.log" 2>&1; then
	cat "$T/initdb.log"
	echo "0 passed, 1 failed"
	exit 1
fi
# Password authentication for everyone but the superuser, so the test sees the
# password really travel from the URL to pg_dump.
cat >"$T/pg/pg_hba.conf" <<EOF
local all postgres trust
local all all scram-sha-256
EOF
if ! runuser -u postgres -- "$PGBIN/pg_ctl" -D "$T/pg" -l "$T/sock/pg.log" -w \
	-o "-c listen_addresses='' -c unix_socket_directories='$T/sock' -c fsync=off" \
	start >/dev/null; then
	cat "$T/sock/pg.log"
	echo "0 passed, 1 failed"
	exit 1
fi
psql_su() { runuser -u postgres -- psql -X -q -h "$T/sock" -v ON_ERROR_STOP=1 "$@"; }
PW='s3cret-Pw_42'
psql_su -d postgres -c "CREATE DATABASE gateway" &&
	psql_su -d gateway <<EOF
CREATE TABLE requests (id int PRIMARY KEY, note text NOT NULL);
INSERT INTO requests SELECT g, 'row ' || g FROM generate_series(1, 250) g;
CREATE ROLE gw_backup LOGIN PASSWORD '$PW';
GRANT pg_read_all_data TO gw_backup;
EOF
check "database gateway with a table and the gw_backup role" [ $? -eq 0 ]

URL="postgresql://gw_backup:$PW@/gateway?host=$T/sock"
printf '%s\n' "$URL" >"$T/url"
chmod 600 "$T/url"
B=$T/backups

# pg_dump wrapped to record how it was started, then exec'd as is.
cat >"$T/pg_dump" <<EOF
#!/bin/sh
if [ "\$1" != "--version" ]; then
	printf '%s\n' "\$@" >"$T/argv"
	env >"$T/env"
	[ -f "$T/slow" ] && sleep "\$(cat "$T/slow")"
fi
exec $PGBIN/pg_dump "\$@"
EOF
chmod 755 "$T/pg_dump"

# A fresh environment for each run: nothing inherited from the caller's shell.
run_agent() { # VAR=value... -- args
	local envs=()
	while [ "$1" != "--" ]; do envs+=("$1"); shift; done
	shift
	env -i PATH=/usr/bin:/bin HOME="$T" GW_ENV_FILE=/dev/null GW_BACKUP_DIR="$B" \
		GW_LOG_LEVEL=info "${envs[@]}" "$AGENT" "$@"
}
count() { find "$B" -maxdepth 1 -name "$1" 2>/dev/null | wc -l; }
json_field() { # file key
	python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(json.dumps(v) if isinstance(v,bool) else v)' "$1" "$2"
}

# ---- snapshot from the CLI ----
ID=$(run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_PG_DUMP="$T/pg_dump" -- snapshot \
	2>"$T/snap1.err")
rc=$?
check_eq "snapshot exits 0" 0 "$rc"
[ "$rc" -eq 0 ] || cat "$T/snap1.err"
check "snapshot prints its id" bash -c "[[ '$ID' =~ ^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$ ]]"
check "the dump is under its final name" [ -f "$B/$ID.dump" ]
check "the manifest is under its final name" [ -f "$B/$ID.json" ]
check_eq "no temporary file is left" 0 "$(count '.snap-*')"
check_eq "the backup directory is 0700" 700 "$(stat -c %a "$B")"
check_eq "the dump is 0600" 600 "$(stat -c %a "$B/$ID.dump")"
check_eq "manifest sha256 matches sha256sum" "$(sha256sum "$B/$ID.dump" | cut -d' ' -f1)" \
	"$(json_field "$B/$ID.json" sha256)"
check_eq "manifest size matches the file" "$(stat -c %s "$B/$ID.dump")" \
	"$(json_field "$B/$ID.json" size)"
check_eq "manifest id" "$ID" "$(json_field "$B/$ID.json" id)"
check_eq "manifest database (the name only)" gateway "$(json_field "$B/$ID.json" database)"
check_eq "manifest format" pg_dump-custom "$(json_field "$B/$ID.json" format)"
check_eq "manifest encrypted" false "$(json_field "$B/$ID.json" encrypted)"
check_eq "manifest server_version_num" \
	"$(psql_su -d gateway -Atc 'SHOW server_version_num')" \
	"$(json_field "$B/$ID.json" server_version_num)"
check_eq "manifest tool_version is pg_dump --version" "$($PGBIN/pg_dump --version)" \
	"$(json_field "$B/$ID.json" tool_version)"
check_contains "manifest created_at is RFC 3339 UTC" "$(json_field "$B/$ID.json" created_at)" Z
check_not_contains "the manifest holds no password" "$(cat "$B/$ID.json")" "$PW"
check "pg_restore --list reads the dump" "$PGBIN/pg_restore" --list "$B/$ID.dump" -f "$T/toc"
check_contains "the dump holds the table's data" "$(cat "$T/toc")" "TABLE DATA public requests"
psql_su -d postgres -c "CREATE DATABASE restored" &&
	runuser -u postgres -- "$PGBIN/pg_restore" -h "$T/sock" -d restored --no-owner \
		<"$B/$ID.dump" 2>"$T/restore.err"
check_eq "the dump restores with every row" 250 \
	"$(psql_su -d restored -Atc 'SELECT count(*) FROM requests' 2>&1)"
check_not_contains "the password is not in pg_dump's argv" "$(cat "$T/argv")" "$PW"
check_contains "the password reaches pg_dump in its environment" "$(cat "$T/env")" \
	"PGPASSWORD=$PW"
check_not_contains "no GW_ variable reaches pg_dump" "$(cat "$T/env")" "GW_"
check_not_contains "the log holds no password" "$(cat "$T/snap1.err")" "$PW"
check_contains "without brokers the CLI says no audit event was written" \
	"$(cat "$T/snap1.err")" "no backup.snapshot audit event was written"

# ---- list ----
OUT=$(run_agent -- list)
check_eq "list exits 0" 0 $?
LINE=$(grep "^$ID" <<<"$OUT")
check_contains "list shows the snapshot" "$LINE" "$ID"
check_contains "list shows it ok" "$LINE" " ok"
check_contains "list shows the sha256 prefix" "$LINE" "$(json_field "$B/$ID.json" sha256 | cut -c1-12)"
JL=$(run_agent -- list --format jsonl)
check_contains "list --format jsonl" "$JL" "\"id\":\"$ID\",\"status\":\"ok\""
check_eq "list --format bogus is a usage error" 2 \
	"$(run_agent -- list --format bogus >/dev/null 2>&1; echo $?)"
cp "$B/$ID.dump" "$T/saved.dump"
printf 'x' >>"$B/$ID.dump"
check_contains "a changed size is a mismatch" "$(run_agent -- list | grep "^$ID")" "SIZE MISMATCH"
mv "$B/$ID.dump" "$T/moved.dump"
check_contains "a missing dump is MISSING" "$(run_agent -- list | grep "^$ID")" "MISSING"
cp "$T/saved.dump" "$B/$ID.dump"
: >"$B/.snap-20000101T000000Z-000000.tmp"
check_not_contains "temporary files are not listed" "$(run_agent -- list)" "20000101T000000Z"
rm -f "$B/.snap-20000101T000000Z-000000.tmp"
check_contains "restored, it is ok again" "$(run_agent -- list | grep "^$ID")" " ok"

# ---- failures leave nothing under a final name ----
finals() { echo "$(count '*.dump') $(count '*.json')"; }
BEFORE=$(finals)

OUT=$(run_agent GW_BACKUP_DATABASE_URL="postgresql://gw_backup:$PW@/nosuchdb?host=$T/sock" \
	-- snapshot 2>"$T/fail1.err")
check_eq "a wrong database name exits 1" 1 $?
check_eq "  and prints no id" "" "$OUT"
check "  with an error naming the snapshot" \
	grep -Eq '"msg":"snapshot failed","snapshot_id":"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}"' "$T/fail1.err"
check_contains "  saying why" "$(cat "$T/fail1.err")" 'database \"nosuchdb\" does not exist'
check_not_contains "  without the password" "$(cat "$T/fail1.err")" "$PW"
check_eq "  and no new final file" "$BEFORE" "$(finals)"
check_eq "  and no temporary file" 0 "$(count '.snap-*')"

OUT=$(run_agent GW_BACKUP_DATABASE_URL="postgresql://gw_backup:wrong@/gateway?host=$T/sock" \
	-- snapshot 2>"$T/fail2.err")
check_eq "a wrong password exits 1" 1 $?
check_contains "  saying authentication failed" "$(cat "$T/fail2.err")" "authentication failed"

# pg_dump itself failing after some output: non-zero exit, then a signal.
cat >"$T/fail_dump" <<'EOF'
#!/bin/sh
[ "$1" = "--version" ] && { echo "pg_dump (PostgreSQL) 15.99"; exit 0; }
printf 'PGDMP partial output'
echo "pg_dump: error: query failed: simulated" >&2
[ -f "${0%/*}/fail_by_signal" ] && kill -9 $$
exit 3
EOF
chmod 755 "$T/fail_dump"
run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_PG_DUMP="$T/fail_dump" -- snapshot \
	>/dev/null 2>"$T/fail3.err"
check_eq "pg_dump exiting 3 after output exits 1" 1 $?
check_contains "  with pg_dump's status" "$(cat "$T/fail3.err")" "exited with status 3"
check_contains "  and its stderr" "$(cat "$T/fail3.err")" "query failed: simulated"
check_eq "  and no new final file" "$BEFORE" "$(finals)"
check_eq "  and no temporary file" 0 "$(count '.snap-*')"
touch "$T/fail_by_signal"
run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_PG_DUMP="$T/fail_dump" -- snapshot \
	>/dev/null 2>"$T/fail4.err"
check_eq "pg_dump killed by a signal exits 1" 1 $?
check_contains "  naming the signal" "$(cat "$T/fail4.err")" "killed by signal 9"
check_eq "  and no new final file" "$BEFORE" "$(finals)"
check_eq "  and no temporary file" 0 "$(count '.snap-*')"

# A write failure (RLIMIT_FSIZE stands in for a full disk: the write fails with EFBIG).
cat >"$T/big_dump" <<'EOF'
#!/bin/sh
[ "$1" = "--version" ] && { echo "pg_dump (PostgreSQL) 15.99"; exit 0; }
printf 'PGDMP'
exec head -c 4194304 /dev/zero
EOF
chmod 755 "$T/big_dump"
GW_BACKUP_DIR="$B" GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_PG_DUMP="$T/big_dump" \
	GW_ENV_FILE=/dev/null bash -c "trap '' XFSZ; ulimit -f 64; exec '$AGENT' snapshot" \
	>/dev/null 2>"$T/fail5.err"
check_eq "a failing write exits 1" 1 $?
check_contains "  saying why" "$(cat "$T/fail5.err")" "File too large"
check "  naming the snapshot and the file" \
	grep -Eq '"msg":"snapshot failed","snapshot_id":"[0-9T]+Z-[0-9a-f]{6}","error":"cannot write .*/\.snap-' \
	"$T/fail5.err"
check_eq "  and no new final file" "$BEFORE" "$(finals)"
check_eq "  and no temporary file" 0 "$(count '.snap-*')"

run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_PG_DUMP="$T/nonexistent" -- snapshot \
	>/dev/null 2>"$T/fail6.err"
check_eq "a GW_PG_DUMP that does not exist is a startup error" 1 $?
check_contains "  naming the variable" "$(cat "$T/fail6.err")" "GW_PG_DUMP"
run_agent -- snapshot >/dev/null 2>"$T/fail7.err"
check_eq "no database URL is a startup error" 1 $?
check_contains "  naming the variable" "$(cat "$T/fail7.err")" "GW_BACKUP_DATABASE_URL"

# SIGINT to the CLI while pg_dump runs: pg_dump is stopped, nothing is left behind.
echo 30 >"$T/slow"
env -i PATH=/usr/bin:/bin HOME="$T" GW_ENV_FILE=/dev/null GW_BACKUP_DIR="$B" \
	GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_PG_DUMP="$T/pg_dump" "$AGENT" snapshot \
	>/dev/null 2>"$T/fail8.err" &
CLI_PID=$!
PIDS+=("$CLI_PID")
eventually 20 grep -q '"pg_dump started"' "$T/fail8.err"
kill -INT "$CLI_PID"
wait "$CLI_PID"
check_eq "SIGINT during a CLI snapshot exits 1" 1 $?
check_contains "  saying it was interrupted" "$(cat "$T/fail8.err")" "aborted: interrupted"
check_eq "  and no new final file" "$BEFORE" "$(finals)"
check_eq "  and no temporary file" 0 "$(count '.snap-*')"
rm -f "$T/slow"

# ---- the embedded broker ----
"$BROKER" --bootstrap-file "$T/bootstrap" >"$T/broker.out" 2>"$T/broker.log" &
PIDS+=($!)
eventually 20 test -s "$T/bootstrap"
check "the broker is up" test -s "$T/bootstrap"
BROKERS=$(cat "$T/bootstrap" 2>/dev/null)
export GW_KAFKA_BROKERS=$BROKERS
audit_events() { "$CONSUME" gw.audit 2>/dev/null | grep '"type\\":\\"backup.snapshot'; }

ID2=$(run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_KAFKA_BROKERS="$BROKERS" -- snapshot \
	2>"$T/snap2.err")
check_eq "snapshot with brokers exits 0" 0 $?
check_contains "  and says its audit event was delivered" "$(cat "$T/snap2.err")" \
	"audit event delivered"
EV=$(audit_events | grep "$ID2")
check_contains "  the backup.snapshot event is on gw.audit" "$EV" "\\\"snapshot_id\\\":\\\"$ID2\\\""
check_contains "  with outcome ok" "$EV" '\"outcome\":\"ok\"'
check_contains "  with the dump's sha256" "$EV" "$(json_field "$B/$ID2.json" sha256)"
check_contains "  and trigger cli" "$EV" '\"trigger\":\"cli\"'
run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_KAFKA_BROKERS="$BROKERS" \
	GW_PG_DUMP="$T/fail_dump" -- snapshot >/dev/null 2>&1
check_contains "a failed snapshot is audited with outcome error" "$(audit_events)" \
	'\"outcome\":\"error\"'

# ---- serve ----
PORT=$((20000 + RANDOM % 20000))
SERVE_PID=
start_serve() { # log VAR=value...
	local log=$1
	shift
	# env execs the agent, so $! is the agent itself and SIGTERM reaches it.
	env -i PATH=/usr/bin:/bin HOME="$T" GW_ENV_FILE=/dev/null GW_BACKUP_DIR="$B" \
		GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_KAFKA_BROKERS="$BROKERS" \
		GW_PG_DUMP="$T/pg_dump" GW_BACKUP_INTERVAL=0 GW_ADMIN_LISTEN="127.0.0.1:$PORT" \
		GW_INSTANCE=backup-test "$@" "$AGENT" serve 2>"$log" &
	SERVE_PID=$!
	PIDS+=("$SERVE_PID")
	eventually 30 grep -q '"partition assigned"' "$log"
}
stop_serve() { # -> exit status
	kill -TERM "$SERVE_PID" 2>/dev/null
	wait "$SERVE_PID"
}
control() { printf '%s\n' "$@" | "$PRODUCE" --key backup gw.control >/dev/null 2>&1; }
snapshots_written() { grep -c '"snapshot written"' "$1"; }

start_serve "$T/serve1.log"
check "serve joins the gw.control group" grep -q '"partition assigned"' "$T/serve1.log"
check_eq "serve /health" 200 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")"
N0=$(count '*.dump')
control '{"command":"backup","requested_by":"integration-test"}'
eventually 30 grep -q '"snapshot written"' "$T/serve1.log"
check "a gw.control backup command takes a snapshot" grep -q '"snapshot written"' "$T/serve1.log"
check_eq "  one more dump" $((N0 + 1)) "$(count '*.dump')"
eventually 10 bash -c "'$CONSUME' gw.audit 2>/dev/null | grep -q integration-test"
check_contains "  audited with requested_by and trigger command" \
	"$(audit_events | grep integration-test)" '\"trigger\":\"command\"'
METRICS=$(curl -s "http://127.0.0.1:$PORT/metrics")
check_contains "metrics count the snapshot" "$METRICS" 'gw_backup_snapshots_total{outcome="ok"} 1'
check_contains "metrics: not running now" "$METRICS" "gw_backup_running 0"
check_contains "metrics: last success" "$METRICS" "gw_backup_last_success_timestamp_seconds"
check_contains "metrics: last duration" "$METRICS" "gw_backup_last_duration_seconds"

control 'not json' '{"command":"reboot"}'
eventually 15 bash -c "[ \$(grep -c 'message sent to dead letter' '$T/serve1.log') -ge 2 ]"
check_eq "undecodable and unknown commands go to gw.deadletter" 2 \
	"$(grep -c 'message sent to dead letter' "$T/serve1.log")"
# Logged when produced; on gw.deadletter once the broker acknowledged it.
eventually 10 bash -c "'$CONSUME' gw.deadletter 2>/dev/null | grep -q 'unknown command'"
DL=$("$CONSUME" gw.deadletter 2>/dev/null)
check_contains "  the dead letter keeps the value" "$DL" '"value":"not json"'
check_contains "  with the reason" "$DL" '"gw-reason":"unknown command"'
check_eq "  and no snapshot is taken for them" 1 "$(snapshots_written "$T/serve1.log")"

# Three commands while pg_dump is slow: one snapshot answers them all.
echo 2 >"$T/slow"
control '{"command":"backup","requested_by":"c1"}' '{"command":"backup","requested_by":"c2"}' \
	'{"command":"backup","requested_by":"c3"}'
eventually 30 bash -c "[ \$(grep -c '\"snapshot written\"' '$T/serve1.log') -ge 2 ]"
sleep 1
check_eq "commands during a snapshot are coalesced into it" 2 "$(snapshots_written "$T/serve1.log")"
check_eq "  (two were answered by the running one)" 2 \
	"$(grep -c 'answered by the snapshot running' "$T/serve1.log")"

# SIGTERM while pg_dump runs: it is waited for.
echo 2 >"$T/slow"
control '{"command":"backup","requested_by":"stop-wait"}'
eventually 20 bash -c "[ \$(grep -c '\"pg_dump started\"' '$T/serve1.log') -ge 3 ]"
stop_serve
check_eq "SIGTERM exits 0" 0 $?
check_eq "  after the running snapshot finished" 3 "$(snapshots_written "$T/serve1.log")"
check_contains "  having waited for it" "$(cat "$T/serve1.log")" "waiting for the running snapshot"
check_eq "  no temporary file" 0 "$(count '.snap-*')"
check_not_contains "  the serve log holds no password" "$(cat "$T/serve1.log")" "$PW"
rm -f "$T/slow"

# The handled commands' offsets were committed: a restart does not redo them.
start_serve "$T/serve2.log"
sleep 3
check_eq "a restart redoes no handled command" 0 "$(snapshots_written "$T/serve2.log")"
# SIGTERM with a pg_dump that outlives GW_BACKUP_STOP_WAIT_MS: killed, cleaned up.
stop_serve
echo 30 >"$T/slow"
start_serve "$T/serve3.log" GW_BACKUP_STOP_WAIT_MS=500
N1=$(count '*.dump')
control '{"command":"backup","requested_by":"killed"}'
eventually 20 grep -q '"pg_dump started"' "$T/serve3.log"
stop_serve
check_eq "SIGTERM past the stop wait exits 0" 0 $?
check_contains "  killing pg_dump" "$(cat "$T/serve3.log")" "killing pg_dump"
check_eq "  leaving no new dump" "$N1" "$(count '*.dump')"
check_eq "  and no temporary file" 0 "$(count '.snap-*')"
check_contains "  the aborted snapshot is audited as an error" \
	"$(audit_events | grep killed)" '\"outcome\":\"error\"'
rm -f "$T/slow"
# Its command was handed back, not stored: the next run takes that snapshot.
start_serve "$T/serve3b.log"
eventually 30 grep -q '"snapshot written"' "$T/serve3b.log"
check "the handed-back command is redone after a restart" \
	grep -q '"requested_by":"killed"' "$T/serve3b.log"
check_eq "  by one snapshot" 1 "$(snapshots_written "$T/serve3b.log")"
stop_serve
check_eq "  and SIGTERM exits 0" 0 $?

# GW_BACKUP_INTERVAL: with no recent snapshot of its own the timer fires at start.
rm -f "$B"/*.dump "$B"/*.json
start_serve "$T/serve4.log" GW_BACKUP_INTERVAL=3600
eventually 20 grep -q '"snapshot written"' "$T/serve4.log"
check "the interval timer takes a snapshot when none exists" \
	grep -q '"snapshot written"' "$T/serve4.log"
stop_serve
check_eq "  and SIGTERM exits 0" 0 $?
start_serve "$T/serve5.log" GW_BACKUP_INTERVAL=3600
sleep 2
check_eq "a restart within the interval takes none" 0 "$(snapshots_written "$T/serve5.log")"
check_contains "  and says when the first is due" "$(cat "$T/serve5.log")" '"first_in_s":35'
stop_serve
check_eq "  and SIGTERM exits 0" 0 $?

check_eq "unknown subcommand is a usage error" 2 "$("$AGENT" frobnicate >/dev/null 2>&1; echo $?)"
check_eq "--help exits 0" 0 "$("$AGENT" --help >/dev/null 2>&1; echo $?)"

# The sanitizer build reports here (it also fails the exit statuses checked above).
check "no sanitizer report in the agent's logs" \
	bash -c "! grep -lE 'AddressSanitizer|LeakSanitizer|runtime error:' '$T'/*.err '$T'/serve*.log"

t_summary
