#!/usr/bin/env bash
# backup-agent against a private PostgreSQL cluster and the embedded broker: encrypted
# snapshots whose manifests match the file and the audit tables, decrypt for a plain
# pg_restore, verify into a scratch database that is always dropped, restore refusing a
# non-empty target, a wrong key / a flipped byte / a truncated file each failing cleanly
# with nothing written, retention keeping exactly the right set, pg_dump failures leaving
# nothing under a final name, and two `serve` copies of which exactly one snapshots.
# Usage: backup.sh BUILD_DIR
set -u

BUILD=$(cd "${1:?usage: backup.sh BUILD_DIR}" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/assert.sh"
. "$HERE/../../deploy/local/stack.sh"

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
# An audit table shaped like the auditor's (the columns this agent reads), before the
# auditor keeps hash chains: heads are per-partition offsets.
psql_su -d postgres -c "CREATE DATABASE gateway" &&
	psql_su -d gateway <<EOF
CREATE TABLE requests (id int PRIMARY KEY, note text NOT NULL);
INSERT INTO requests SELECT g, 'row ' || g FROM generate_series(1, 250) g;
CREATE SCHEMA audit;
CREATE TABLE audit.audit_events (event_id text PRIMARY KEY, kafka_partition int,
  kafka_offset bigint, event jsonb NOT NULL);
INSERT INTO audit.audit_events SELECT md5(g::text), g % 3, g, jsonb_build_object('n', g)
  FROM generate_series(1, 300) g;
-- Incompressible enough that the dump spans several 1 MiB encryption segments.
CREATE TABLE blobs (id int PRIMARY KEY, data text NOT NULL);
INSERT INTO blobs SELECT g, (SELECT string_agg(md5(random()::text || g || i), '')
  FROM generate_series(1, 100) i) FROM generate_series(1, 800) g;
CREATE ROLE gw_backup LOGIN PASSWORD '$PW';
GRANT pg_read_all_data TO gw_backup;
EOF
check "database gateway with tables and the gw_backup role" [ $? -eq 0 ]

URL="postgresql://gw_backup:$PW@/gateway?host=$T/sock"
printf '%s\n' "$URL" >"$T/url"
ADMIN_URL="postgresql://postgres@/postgres?host=$T/sock"
chmod 600 "$T/url"
openssl rand -hex 32 >"$T/key"
openssl rand -hex 32 >"$T/otherkey"
chmod 600 "$T/key" "$T/otherkey"
KEY_ID=$(python3 -c 'import hashlib,sys; print(hashlib.sha256(bytes.fromhex(open(sys.argv[1]).read().strip())).hexdigest()[:16])' "$T/key")
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
		GW_LOG_LEVEL=info GW_BACKUP_KEY_FILE="$T/key" GW_BACKUP_ADMIN_URL="$ADMIN_URL" \
		GW_AUDITOR_BIN=/nonexistent/auditor "${envs[@]}" "$AGENT" "$@"
}
count() { find "$B" -maxdepth 1 -name "$1" 2>/dev/null | wc -l; }
scratch_dbs() { psql_su -d postgres -Atc "SELECT count(*) FROM pg_database WHERE datname LIKE 'gw_verify_%'"; }
user_tables() { # db
	psql_su -d "$1" -Atc "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
}

# ---- snapshot from the CLI: encrypted, with the audit state in the manifest ----
ID=$(run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_PG_DUMP="$T/pg_dump" -- snapshot \
	2>"$T/snap1.err")
rc=$?
check_eq "snapshot exits 0" 0 "$rc"
[ "$rc" -eq 0 ] || cat "$T/snap1.err"
M=$B/$ID.json
check "snapshot prints its id" bash -c "[[ '$ID' =~ ^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$ ]]"
check "the dump and manifest are under their final names" [ -f "$B/$ID.dump" -a -f "$M" ]
check_eq "no temporary file is left" 0 "$(count '.snap-*')"
check_eq "the backup directory is 0700" 700 "$(stat -c %a "$B")"
check_eq "the dump is 0600" 600 "$(stat -c %a "$B/$ID.dump")"
# The manifest, flattened once (python is slow to start on a busy machine).
declare -A MF
while IFS='=' read -r k v; do MF[$k]=$v; done < <(python3 -c 'import json,sys
m=json.load(open(sys.argv[1]))
for k,v in m.items():
    if k!="audit": print("%s=%s" % (k, json.dumps(v) if isinstance(v,bool) else v))
a=m["audit"]
print("rows=%s" % a["tables"]["audit.audit_events"])
print("source=%s" % a["source"])
print("heads=%s" % " ".join("%s:%s:%s" % (h["partition"],h["max_offset"],h["rows"]) for h in a["heads"]))' "$M")
check_eq "manifest sha256 matches sha256sum" "$(sha256sum "$B/$ID.dump" | cut -d' ' -f1)" "${MF[sha256]}"
check_eq "manifest size matches the file" "$(stat -c %s "$B/$ID.dump")" "${MF[size]}"
check_eq "manifest encrypted" true "${MF[encrypted]}"
check_eq "manifest encryption scheme" gw-aes-256-gcm-seg-v1 "${MF[encryption]}"
check_eq "manifest key_id is SHA-256(key)[0:8] in hex" "$KEY_ID" "${MF[key_id]}"
check_eq "the file starts with the encryption header" GWBKENC1 "$(head -c 8 "$B/$ID.dump")"
check_eq "no plaintext table data in the file" 0 "$(grep -c 'row 17' "$B/$ID.dump")"
check_eq "manifest: audit table row count" 300 "${MF[rows]}"
check_eq "manifest: heads are partition offsets (no chain columns yet)" partition_offsets \
	"${MF[source]}"
check_eq "manifest: one head per partition: partition, max offset, rows" \
	"0:300:100 1:298:100 2:299:100" "${MF[heads]}"
check_contains "manifest: agent version" "${MF[agent_version]}" "backup-agent"
check_eq "manifest database (the name only)" gateway "${MF[database]}"
check_eq "manifest tool_version is pg_dump --version" "$($PGBIN/pg_dump --version)" \
	"${MF[tool_version]}"
check_not_contains "the manifest holds no password" "$(cat "$M")" "$PW"
check_not_contains "the manifest holds no key" "$(cat "$M")" "$(cat "$T/key")"
check_contains "pg_dump imported the snapshot the counts were taken in" "$(cat "$T/argv")" \
	"--snapshot="
check_not_contains "the password is not in pg_dump's argv" "$(cat "$T/argv")" "$PW"
check_contains "the password reaches pg_dump in its environment" "$(cat "$T/env")" \
	"PGPASSWORD=$PW"
check_not_contains "no GW_ variable (the key) reaches pg_dump" "$(cat "$T/env")" "GW_"
check_not_contains "the log holds no password" "$(cat "$T/snap1.err")" "$PW"
check_contains "without brokers the CLI says no audit event was written" \
	"$(cat "$T/snap1.err")" "no audit event was written"

# ---- decrypt: a standard pg_restore reads the result ----
run_agent -- decrypt "$ID" >"$T/plain.dump" 2>"$T/decrypt.err"
check_eq "decrypt exits 0" 0 $?
check_eq "  the output is a pg_dump archive" PGDMP "$(head -c 5 "$T/plain.dump")"
check_eq "  of the size in the manifest" "${MF[plain_size]}" "$(stat -c %s "$T/plain.dump")"
psql_su -d postgres -c "CREATE DATABASE plain_restore" &&
	runuser -u postgres -- "$PGBIN/pg_restore" -h "$T/sock" -d plain_restore --no-owner \
		<"$T/plain.dump" 2>"$T/plain_restore.err"
check_eq "  pg_restore of it gives every row" 300 \
	"$(psql_su -d plain_restore -Atc 'SELECT count(*) FROM audit.audit_events' 2>&1)"
check_eq "decrypt to a terminal is refused" 1 \
	"$(script -qec "env -i GW_ENV_FILE=/dev/null GW_BACKUP_DIR=$B GW_BACKUP_KEY_FILE=$T/key $AGENT decrypt $ID" /dev/null >/dev/null 2>&1; echo $?)"

# ---- verify: scratch database, audit state compared, auditor verify, dropped ----
# A stand-in auditor with the `verify` subcommand the auditor is getting: it checks the
# database it is pointed at through GW_DATABASE_URL.
cat >"$T/auditor" <<EOF
#!/bin/sh
case "\$1" in
--help) echo "usage: auditor serve | migrate | query | verify"; exit 0;;
verify)
	echo "\$GW_DATABASE_URL" >"$T/auditor_url"
	[ -f "$T/auditor_fails" ] && { echo "chain 0 broken at seq 7" >&2; exit 1; }
	psql -X -q -At "\$GW_DATABASE_URL" -c 'SELECT count(*) FROM audit.audit_events' >"$T/auditor_rows" || exit 1
	exit 0;;
esac
exit 2
EOF
chmod 755 "$T/auditor"
OUT=$(run_agent -- verify "$ID" 2>"$T/verify1.err")
check_eq "verify exits 0" 0 $?
check_contains "  saying so" "$OUT" "snapshot $ID verified"
check_contains "  and that the chain check did not run (no auditor)" "$OUT" "not run: no auditor"
check_eq "  no scratch database is left" 0 "$(scratch_dbs)"
OUT=$(run_agent GW_AUDITOR_BIN="$T/auditor" -- verify "$ID" --format json 2>"$T/verify2.err")
check_eq "verify with an auditor that has verify exits 0" 0 $?
check_contains "  reporting it passed" "$OUT" '"chain":"auditor verify passed","chain_checked":true'
check_eq "  auditor verify saw the restored rows" 300 "$(cat "$T/auditor_rows" 2>/dev/null)"
check_contains "  in the scratch database" "$(cat "$T/auditor_url")" "dbname='gw_verify_"
check_contains "  reported dropped" "$OUT" '"scratch_dropped":true'
check_eq "  and it is gone" 0 "$(scratch_dbs)"
touch "$T/auditor_fails"
OUT=$(run_agent GW_AUDITOR_BIN="$T/auditor" -- verify "$ID" 2>"$T/verify3.err")
check_eq "a failing auditor verify fails verify" 1 $?
check_contains "  with its message" "$OUT" "chain 0 broken at seq 7"
check_eq "  and the scratch database is dropped" 0 "$(scratch_dbs)"
rm -f "$T/auditor_fails"
# This database's audit schema is made by hand above, without the auditor's
# migrations, so the real `auditor verify` cannot judge it. The real pairing (a
# snapshot of an auditor-migrated database whose chains verify after the restore)
# is checked by tests/integration/e2e.sh.

# ---- restore ----
psql_su -d postgres -c "CREATE DATABASE target"
OUT=$(run_agent -- restore "$ID" --target "postgresql://postgres@/target?host=$T/sock" 2>"$T/restore1.err")
check_eq "restore into an empty database exits 0" 0 $?
check_eq "  every audit row is back" 300 "$(psql_su -d target -Atc 'SELECT count(*) FROM audit.audit_events')"
check_eq "  and every request row" 250 "$(psql_su -d target -Atc 'SELECT count(*) FROM requests')"
OUT=$(run_agent -- restore "$ID" --target "postgresql://postgres@/target?host=$T/sock" 2>"$T/restore2.err")
check_eq "restore into a non-empty database exits 1" 1 $?
check_contains "  refusing, naming the snapshot and --force" "$OUT" "snapshot $ID: refusing to restore into database target: it is not empty"
psql_su -d target -c "DELETE FROM requests WHERE id > 10"
OUT=$(run_agent -- restore "$ID" --force --target "postgresql://postgres@/target?host=$T/sock" 2>"$T/restore3.err")
check_eq "restore --force exits 0" 0 $?
check_eq "  and replaces what the snapshot holds" 250 "$(psql_su -d target -Atc 'SELECT count(*) FROM requests')"

# ---- a wrong key, a flipped byte, a truncated file: clean failures, nothing written ----
psql_su -d postgres -c "CREATE DATABASE empty_target"
ET="postgresql://postgres@/empty_target?host=$T/sock"
fails_cleanly() { # name expected-text VAR=value... (runs verify, restore, decrypt)
	local name=$1 text=$2 out
	shift 2
	out=$(run_agent "$@" -- verify "$ID" 2>"$T/f-$name-v.err")
	check_eq "$name: verify exits 1" 1 $?
	check_contains "  naming the snapshot" "$out" "snapshot $ID: "
	check_contains "  and why" "$out" "$text"
	check_eq "  no scratch database is left" 0 "$(scratch_dbs)"
	out=$(run_agent "$@" -- restore "$ID" --target "$ET" 2>"$T/f-$name-r.err")
	check_eq "$name: restore exits 1" 1 $?
	check_contains "  naming the snapshot" "$out" "snapshot $ID: "
	check_contains "  and why" "$out" "$text"
	check_eq "  nothing is written to the target" 0 "$(user_tables empty_target)"
	run_agent "$@" -- decrypt "$ID" >"$T/f-$name.out" 2>"$T/f-$name-d.err"
	check_eq "$name: decrypt exits 1" 1 $?
	check_contains "  naming the snapshot" "$(cat "$T/f-$name-d.err")" "\"snapshot_id\":\"$ID\""
	check_eq "  and writes nothing" 0 "$(stat -c %s "$T/f-$name.out")"
}
fails_cleanly wrong-key "wrong key: it is encrypted with key id $KEY_ID" GW_BACKUP_KEY_FILE="$T/otherkey"
fails_cleanly no-key "it is encrypted with key id $KEY_ID and no key is set" GW_BACKUP_KEY_FILE=
cp "$B/$ID.dump" "$T/good.dump"
SIZE=$(stat -c %s "$T/good.dump")
python3 -c 'import sys
f=open(sys.argv[1],"r+b"); n=int(sys.argv[2])//2; f.seek(n); b=f.read(1); f.seek(n); f.write(bytes([b[0]^0x40]))' \
	"$B/$ID.dump" "$SIZE"
fails_cleanly flipped-byte "the file is damaged: its SHA-256 is"
truncate -s $((SIZE - 100)) "$B/$ID.dump"
fails_cleanly truncated "the file is truncated: $((SIZE - 100)) bytes, the manifest says $SIZE"
# Past the checksum (a manifest rewritten to match): the segment tags still catch a
# flipped byte, and pg_restore, fed the good segments before it, commits nothing.
cp "$T/good.dump" "$B/$ID.dump"
cp "$M" "$T/good.json"
python3 -c 'import sys
f=open(sys.argv[1],"r+b"); n=int(sys.argv[2])-200; f.seek(n); b=f.read(1); f.seek(n); f.write(bytes([b[0]^0x01]))' \
	"$B/$ID.dump" "$SIZE"
python3 -c 'import json,sys,hashlib
m=json.load(open(sys.argv[1])); m["sha256"]=hashlib.sha256(open(sys.argv[2],"rb").read()).hexdigest()
json.dump(m,open(sys.argv[1],"w"),indent=2)' "$M" "$B/$ID.dump"
fails_cleanly forged-manifest "failed authentication: the file is damaged or was altered"
check_contains "  (pg_restore had been fed the good segments before it)" \
	"$(cat "$T/f-forged-manifest-r.err")" "pg_restore was stopped, nothing was committed"
python3 -c 'import json,sys,hashlib
m=json.load(open(sys.argv[1])); m["size"]-=300; m["plain_size"]-=300
d=open(sys.argv[2],"rb").read()[:-300]; open(sys.argv[2],"wb").write(d)
m["sha256"]=hashlib.sha256(d).hexdigest(); json.dump(m,open(sys.argv[1],"w"),indent=2)' "$M" "$B/$ID.dump"
fails_cleanly forged-truncation "truncated: the file ends inside a segment"
cp "$T/good.dump" "$B/$ID.dump"
cp "$T/good.json" "$M"
run_agent -- verify "$ID" >/dev/null 2>&1
check_eq "put back, the snapshot verifies again" 0 $?

# ---- failures while snapshotting leave nothing under a final name ----
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
check_contains "  with pg_dump's status and stderr" "$(cat "$T/fail3.err")" "exited with status 3: pg_dump: error: query failed: simulated"
check_eq "  and no new final file" "$BEFORE" "$(finals)"
check_eq "  and no temporary file" 0 "$(count '.snap-*')"
touch "$T/fail_by_signal"
run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_PG_DUMP="$T/fail_dump" -- snapshot \
	>/dev/null 2>"$T/fail4.err"
check_eq "pg_dump killed by a signal exits 1" 1 $?
check_contains "  naming the signal" "$(cat "$T/fail4.err")" "killed by signal 9"
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
	GW_BACKUP_KEY_FILE="$T/key" GW_ENV_FILE=/dev/null \
	bash -c "trap '' XFSZ; ulimit -f 64; exec '$AGENT' snapshot" >/dev/null 2>"$T/fail5.err"
check_eq "a failing write (disk full) exits 1" 1 $?
check_contains "  saying why" "$(cat "$T/fail5.err")" "File too large"
check_eq "  and no new final file" "$BEFORE" "$(finals)"
check_eq "  and no temporary file" 0 "$(count '.snap-*')"

run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_BACKUP_KEY_FILE= -- snapshot >/dev/null 2>"$T/fail6.err"
check_eq "no key is a startup error" 1 $?
check_contains "  naming the variable" "$(cat "$T/fail6.err")" "GW_BACKUP_KEY_FILE"
echo 1234 >"$T/shortkey"
run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_BACKUP_KEY_FILE="$T/shortkey" -- snapshot >/dev/null 2>"$T/fail7.err"
check_eq "a malformed key is a startup error" 1 $?
check_contains "  saying what a key looks like" "$(cat "$T/fail7.err")" "64 hex digits"
check_not_contains "  without printing it" "$(cat "$T/fail7.err")" "1234"

# SIGINT to the CLI while pg_dump runs: pg_dump is stopped, nothing is left behind.
echo 30 >"$T/slow"
env -i PATH=/usr/bin:/bin HOME="$T" GW_ENV_FILE=/dev/null GW_BACKUP_DIR="$B" \
	GW_BACKUP_KEY_FILE="$T/key" GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_PG_DUMP="$T/pg_dump" \
	"$AGENT" snapshot >/dev/null 2>"$T/fail8.err" &
CLI_PID=$!
PIDS+=("$CLI_PID")
eventually 20 grep -q '"pg_dump started"' "$T/fail8.err"
kill -INT "$CLI_PID"
wait "$CLI_PID"
check_eq "SIGINT during a CLI snapshot exits 1" 1 $?
check_eq "  and no temporary file" 0 "$(count '.snap-*')"
rm -f "$T/slow"

# ---- list ----
LINE=$(run_agent -- list | grep "^$ID")
check_contains "list shows the snapshot ok" "$LINE" " ok"
check_contains "list --format jsonl" "$(run_agent -- list --format jsonl)" "\"id\":\"$ID\",\"status\":\"ok\""

# ---- once the audit table has hash-chain columns, the chain heads are what is kept ----
psql_su -d gateway -c "ALTER TABLE audit.audit_events ADD COLUMN chain_id int,
	ADD COLUMN seq bigint, ADD COLUMN hash text;
	UPDATE audit.audit_events SET chain_id = kafka_partition, seq = kafka_offset,
	hash = event_id"
IDC=$(run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" -- snapshot 2>"$T/snapc.err")
check_eq "a snapshot with chain columns exits 0" 0 $?
check_eq "  its manifest records each chain's last (chain_id, seq, hash)" \
	"chain 0:300:$(printf 300 | md5sum | cut -c1-32) 1:298:$(printf 298 | md5sum | cut -c1-32) 2:299:$(printf 299 | md5sum | cut -c1-32)" \
	"$(python3 -c 'import json,sys
a=json.load(open(sys.argv[1]))["audit"]
print(a["source"], " ".join("%s:%s:%s" % (h["chain_id"],h["seq"],h["hash"]) for h in a["heads"]))' "$B/$IDC.json")"
OUT=$(run_agent -- verify "$IDC" 2>"$T/verifyc.err")
check_eq "  and it verifies (heads recomputed on the restored copy)" 0 $?

# ---- the embedded broker ----
"$BROKER" --bootstrap-file "$T/bootstrap" >"$T/broker.out" 2>"$T/broker.log" &
PIDS+=($!)
eventually 20 test -s "$T/bootstrap"
check "the broker is up" test -s "$T/bootstrap"
BROKERS=$(cat "$T/bootstrap" 2>/dev/null)
export GW_KAFKA_BROKERS=$BROKERS # for gw-consume and gw-produce
events() { "$CONSUME" gw.audit 2>/dev/null | grep "\"type\\\\\":\\\\\"$1"; }

ID2=$(run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_KAFKA_BROKERS="$BROKERS" -- snapshot \
	2>"$T/snap2.err")
check_eq "snapshot with brokers exits 0" 0 $?
EV=$(events backup.snapshot | grep "$ID2")
check_contains "  the backup.snapshot event is on gw.audit" "$EV" '\"outcome\":\"ok\"'
check_contains "  with the key id" "$EV" "$KEY_ID"
run_agent GW_KAFKA_BROKERS="$BROKERS" -- verify "$ID2" >/dev/null 2>&1
check_contains "verify from the CLI is audited as backup.verify" "$(events backup.verify | grep "$ID2")" '\"outcome\":\"ok\"'
run_agent GW_KAFKA_BROKERS="$BROKERS" GW_BACKUP_KEY_FILE="$T/otherkey" -- verify "$ID2" >/dev/null 2>&1
check_contains "  a failed one with outcome error and the reason" \
	"$(events backup.verify | grep "$ID2" | grep error)" "wrong key"

# ---- retention: keep the newest KEEP_LAST good ones and all younger than KEEP_DAYS ----
# Snapshots aged 0 (ID2, the newest), 1, 2, 4 (damaged manifest), 5, 10 and 20 days,
# made from ID2's files with their ids and times rewritten.
rm -f "$B"/*.dump "$B"/*.json
ID2=$(run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" -- snapshot 2>/dev/null)
read -r D1 D2 D4 D5 D10 D20 < <(python3 - "$B" "$ID2" <<'EOF'
import json, sys, shutil, datetime, random
b, src = sys.argv[1], sys.argv[2]
ids = []
for days in (1, 2, 4, 5, 10, 20):
    t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days, hours=1)
    fid = t.strftime("%Y%m%dT%H%M%SZ") + "-%06x" % random.randrange(1 << 24)
    m = json.load(open(f"{b}/{src}.json"))
    m["id"], m["created_at"] = fid, t.strftime("%Y-%m-%dT%H:%M:%SZ")
    shutil.copy(f"{b}/{src}.dump", f"{b}/{fid}.dump")
    json.dump(m, open(f"{b}/{fid}.json", "w"))
    ids.append(fid)
print(" ".join(ids))
EOF
)
echo '{"broken":' >"$B/$D4.json"
OUT=$(run_agent GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_KAFKA_BROKERS="$BROKERS" \
	GW_BACKUP_KEEP_LAST=4 GW_BACKUP_KEEP_DAYS=3 -- prune 2>"$T/prune.err")
check_eq "prune exits 0" 0 $?
LEFT=$(run_agent -- list | awk 'NR > 1 { printf "%s%s", sep, $1; sep = " " }')
check_eq "retention keeps exactly the right set (4 newest good + younger than 3 days)" \
	"$ID2 $D1 $D2 $D5" "$LEFT"
check_eq "  dumps and manifests of the others are gone" "4 4" "$(finals)"
check_eq "  each deletion is audited as backup.retention" 3 \
	"$(events backup.retention | grep -cE "$D4|$D10|$D20")"
check_contains "  prune prints what it deleted" "$OUT" "deleted $D20"

# ---- serve: two copies, one active (advisory lock), verify after each snapshot ----
: >"$B/.snap-20000101T000000Z-000000.tmp"
start_serve() { # name VAR=value...  -> pid in SERVE_PID, port in PORT_<name>
	local name=$1 port
	shift
	port=$(stack_free_port)
	eval "PORT_$name=$port"
	env -i PATH=/usr/bin:/bin HOME="$T" GW_ENV_FILE=/dev/null GW_BACKUP_DIR="$B" \
		GW_BACKUP_DATABASE_URL_FILE="$T/url" GW_KAFKA_BROKERS="$BROKERS" \
		GW_BACKUP_KEY_FILE="$T/key" GW_BACKUP_ADMIN_URL="$ADMIN_URL" \
		GW_AUDITOR_BIN="$T/auditor" GW_PG_DUMP="$T/pg_dump" GW_BACKUP_INTERVAL=0 \
		GW_BACKUP_LOCK_RETRY_S=1 GW_ADMIN_LISTEN="127.0.0.1:$port" GW_INSTANCE="backup-$name" \
		GW_KAFKA_PROPERTIES="session.timeout.ms=6000;heartbeat.interval.ms=500" \
		"$@" "$AGENT" serve 2>"$T/serve-$name.log" &
	SERVE_PID=$!
	PIDS+=("$SERVE_PID")
}
control() { printf '%s\n' "$@" | "$PRODUCE" --key backup gw.control >/dev/null 2>&1; }
written() { grep -c '"snapshot written"' "$T/serve-$1.log"; }
ready() { curl -s "http://127.0.0.1:$1/ready"; }

start_serve a GW_BACKUP_KEEP_LAST=2 GW_BACKUP_KEEP_DAYS=0
PID_A=$SERVE_PID
eventually 30 grep -q '"holding the backup lock' "$T/serve-a.log"
check "the first serve takes the lock" grep -q '"holding the backup lock' "$T/serve-a.log"
start_serve b GW_BACKUP_KEEP_LAST=2 GW_BACKUP_KEEP_DAYS=0
PID_B=$SERVE_PID
eventually 30 grep -q 'standing by' "$T/serve-b.log"
check "the second stands by" grep -q 'standing by' "$T/serve-b.log"
check_eq "the active one removed the stale temporary file" 0 "$(count '.snap-*')"
check_eq "  and applied retention on taking over (keep last 2)" "2 2" "$(finals)"
eventually 30 grep -q '"partition assigned"' "$T/serve-a.log"
check_contains "/ready of the standby says standby" "$(ready "$PORT_b")" "standby"
check_contains "metrics: gw_backup_active 1 on the active" \
	"$(curl -s "http://127.0.0.1:$PORT_a/metrics")" "gw_backup_active 1"
check_contains "metrics: gw_backup_active 0 on the standby" \
	"$(curl -s "http://127.0.0.1:$PORT_b/metrics")" "gw_backup_active 0"
control '{"command":"backup","requested_by":"two-agents"}'
eventually 60 grep -q '"snapshot verified"' "$T/serve-a.log"
check_eq "exactly one of the two snapshots: the active" "1 0" "$(written a) $(written b)"
check "  and verifies it" grep -q '"snapshot verified"' "$T/serve-a.log"
check_eq "  leaving no scratch database" 0 "$(scratch_dbs)"
eventually 10 bash -c "curl -s http://127.0.0.1:$PORT_a/metrics | grep -q 'gw_backup_verify_total{outcome=\"ok\"} 1'"
check_contains "  metered" "$(curl -s "http://127.0.0.1:$PORT_a/metrics")" 'gw_backup_verify_total{outcome="ok"} 1'
eventually 10 bash -c "'$CONSUME' gw.audit 2>/dev/null | grep -q 'trigger.....serve'"
check_contains "  audited as backup.verify" "$(events backup.verify | grep serve)" 'auditor verify passed'
check_eq "  and retention keeps the last 2" "2 2" "$(finals)"
kill -9 "$PID_A"
wait "$PID_A" 2>/dev/null
eventually 30 grep -q '"holding the backup lock' "$T/serve-b.log"
check "killing the active one, the standby takes over" grep -q '"holding the backup lock' "$T/serve-b.log"
eventually 30 grep -q '"partition assigned"' "$T/serve-b.log"
control '{"command":"backup","requested_by":"after-takeover"}'
eventually 60 grep -q '"snapshot verified"' "$T/serve-b.log"
check_eq "  and snapshots from then on" 1 "$(written b)"
# The server ends the lock's session (a restart, a failover, pg_terminate_backend): the
# copy notices, stands by, and takes the lock again once it is free.
psql_su -d gateway -Atc "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'" >/dev/null
eventually 20 grep -q 'lost the database connection holding the backup lock' "$T/serve-b.log"
check "a terminated lock session is noticed" \
	grep -q 'lost the database connection holding the backup lock' "$T/serve-b.log"
eventually 20 bash -c "[ \$(grep -c '\"holding the backup lock' '$T/serve-b.log') -ge 2 ]"
check_eq "  and the lock is taken again" 2 "$(grep -c '"holding the backup lock' "$T/serve-b.log")"
eventually 30 bash -c "curl -s http://127.0.0.1:$PORT_b/ready | grep -q '\"ready\"'"
echo 3 >"$T/slow"
control '{"command":"backup","requested_by":"stop-wait"}'
eventually 20 bash -c "[ \$(grep -c '\"pg_dump started\"' '$T/serve-b.log') -ge 2 ]"
kill -TERM "$PID_B"
wait "$PID_B"
check_eq "SIGTERM exits 0" 0 $?
check_eq "  after the running snapshot finished" 2 "$(written b)"
check_eq "  no temporary file" 0 "$(count '.snap-*')"
check_eq "  no scratch database" 0 "$(scratch_dbs)"
check_not_contains "the serve logs hold no password" "$(cat "$T"/serve-*.log)" "$PW"
check_not_contains "  nor the key" "$(cat "$T"/serve-*.log)" "$(cat "$T/key")"
rm -f "$T/slow"

check_eq "unknown subcommand is a usage error" 2 "$("$AGENT" frobnicate >/dev/null 2>&1; echo $?)"
check_eq "--help exits 0" 0 "$("$AGENT" --help >/dev/null 2>&1; echo $?)"
check_eq "verify without an id is a usage error" 2 "$("$AGENT" verify >/dev/null 2>&1; echo $?)"

# The sanitizer build reports here (it also fails the exit statuses checked above).
check "no sanitizer report in the agent's logs" \
	bash -c "! grep -lE 'AddressSanitizer|LeakSanitizer|runtime error:' '$T'/*.err '$T'/serve-*.log"

t_summary
