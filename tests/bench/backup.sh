#!/usr/bin/env bash
# Snapshot and verified-restore times of backup-agent for an audit database of about
# GW_BENCH_ROWS rows (default 750,000: about 1 GB on disk with the auditor's indexes),
# on a private PostgreSQL cluster. Prints the figures docs/backup-agent.md quotes as the
# RPO/RTO the defaults give. Not part of `make test`: it takes minutes.
# Usage: tests/bench/backup.sh BUILD_DIR
set -u

BUILD=$(cd "${1:?usage: backup.sh BUILD_DIR}" && pwd)
AGENT=$BUILD/backup-agent/backup-agent
ROWS=${GW_BENCH_ROWS:-750000}
PGBIN=/usr/lib/postgresql/15/bin
[ -x "$AGENT" ] || { echo "build backup-agent first: $AGENT" >&2; exit 1; }

T=$(mktemp -d /tmp/gw-backup-bench.XXXXXX)
chmod 755 "$T"
cleanup() {
	if [ -f "$T/pg/postmaster.pid" ]; then
		runuser -u postgres -- "$PGBIN/pg_ctl" -D "$T/pg" -m fast -w stop >/dev/null 2>&1
	fi
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

mkdir -p "$T/pg" "$T/sock"
chown postgres "$T/pg" "$T/sock"
runuser -u postgres -- "$PGBIN/initdb" -D "$T/pg" -U postgres -A trust >/dev/null || exit 1
# Stock settings but for the socket: the figures are what an untuned server gives.
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$T/pg" -l "$T/sock/pg.log" -w \
	-o "-c listen_addresses='' -c unix_socket_directories='$T/sock'" start >/dev/null || exit 1
psql_su() { runuser -u postgres -- psql -X -q -h "$T/sock" -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

psql_su -d postgres -c "CREATE DATABASE gateway"
# The auditor's table (auditor/schema.c, migration 1) and its indexes.
psql_su -d gateway <<'EOF'
CREATE SCHEMA audit;
CREATE TABLE audit.audit_events (
  event_id text NOT NULL, request_id text, event_type text NOT NULL,
  event_time timestamptz NOT NULL, service text, instance text, client_addr text,
  principal text, idp text, groups text, route text, model text, endpoint text,
  outcome text, status int, reason text, prompt_tokens bigint, completion_tokens bigint,
  total_tokens bigint, latency_us bigint, ttft_us bigint, body_sha256 text,
  body_size bigint, resp_sha256 text, resp_size bigint, kafka_partition int,
  kafka_offset bigint, inserted_at timestamptz NOT NULL DEFAULT now(), event jsonb NOT NULL,
  CONSTRAINT audit_events_event_id_key UNIQUE (event_id),
  CONSTRAINT audit_events_event_id_hex CHECK (event_id ~ '^[0-9a-f]{32}$'));
CREATE INDEX audit_events_request_id_idx ON audit.audit_events (request_id);
CREATE INDEX audit_events_principal_time_idx ON audit.audit_events (principal, event_time);
CREATE INDEX audit_events_time_idx ON audit.audit_events (event_time);
CREATE INDEX audit_events_model_time_idx ON audit.audit_events (model, event_time);
EOF
echo "generating $ROWS audit rows..." >&2
t0=$(now)
psql_su -d gateway <<EOF
INSERT INTO audit.audit_events
SELECT md5('e' || g), md5('r' || (g / 4)), (ARRAY['request.received','authz.decision',
  'dispatch.result','request.completed'])[g % 4 + 1],
  now() - make_interval(secs => g), (ARRAY['ingress','authz','dispatcher'])[g % 3 + 1],
  'host-' || (g % 7), '10.0.' || (g % 250) || '.' || (g % 200), 'user' || (g % 5000) ||
  '@example.org', 'globus', 'group-a,group-b', '/v1/chat/completions',
  'llama-3-70b', 'http://gpu' || (g % 16) || ':8000', 'ok', 200, NULL, 100 + g % 900,
  50 + g % 400, 150 + g % 1300, 1000 + g % 90000, 500 + g % 9000,
  encode(sha256(('b' || g)::bytea), 'hex'), 200 + g % 4000,
  encode(sha256(('p' || g)::bytea), 'hex'), 300 + g % 8000, g % 6, g / 6,
  now(), jsonb_build_object('event_id', md5('e' || g), 'type', 'request.completed',
  'request_id', md5('r' || (g / 4)), 'ts_us', 1763900000000000 + g, 'service', 'ingress',
  'principal', 'user' || (g % 5000) || '@example.org', 'model', 'llama-3-70b',
  'route', '/v1/chat/completions', 'status', 200, 'prompt_tokens', 100 + g % 900,
  'completion_tokens', 50 + g % 400, 'latency_us', 1000 + g % 90000,
  'body_sha256', encode(sha256(('b' || g)::bytea), 'hex'))
FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE audit.audit_events;
EOF
t1=$(now)
SIZE=$(psql_su -d gateway -Atc "SELECT pg_database_size('gateway')")
echo "generated in $(secs "$t0" "$t1") s; database size $SIZE bytes" >&2

openssl rand -hex 32 >"$T/key"
export GW_ENV_FILE=/dev/null GW_BACKUP_DIR=$T/backups GW_BACKUP_KEY_FILE=$T/key \
	GW_BACKUP_DATABASE_URL="postgresql://postgres@/gateway?host=$T/sock" \
	GW_BACKUP_ADMIN_URL="postgresql://postgres@/postgres?host=$T/sock" GW_LOG_LEVEL=warn

t0=$(now)
ID=$("$AGENT" snapshot) || exit 1
t1=$(now)
SNAP=$(secs "$t0" "$t1")
FILE=$(stat -c %s "$T/backups/$ID.dump")
"$AGENT" verify "$ID" >"$T/verify.out" || { cat "$T/verify.out"; exit 1; }
t2=$(now)
VERIFY=$(secs "$t1" "$t2")
psql_su -d postgres -c "CREATE DATABASE target"
"$AGENT" restore "$ID" --target "postgresql://postgres@/target?host=$T/sock" >"$T/restore.out" ||
	{ cat "$T/restore.out"; exit 1; }
t3=$(now)
RESTORE=$(secs "$t2" "$t3")
"$AGENT" decrypt "$ID" >/dev/null || exit 1
t4=$(now)
DECRYPT=$(secs "$t3" "$t4")

printf 'rows                 %s\n' "$ROWS"
printf 'database size        %s bytes (%.2f GB)\n' "$SIZE" "$(echo "$SIZE / 10^9" | bc -l)"
printf 'snapshot file        %s bytes (encrypted pg_dump -Fc)\n' "$FILE"
printf 'snapshot time        %.1f s  (%.1f MB/s of database)\n' "$SNAP" "$(echo "$SIZE / $SNAP / 10^6" | bc -l)"
printf 'verify time          %.1f s  (checksum, decrypt, restore to scratch, compare, drop)\n' "$VERIFY"
printf 'restore time         %.1f s  (into an empty database, checked against the manifest)\n' "$RESTORE"
printf 'decrypt time         %.1f s  (to /dev/null, two passes)\n' "$DECRYPT"
printf 'RPO (defaults)       GW_BACKUP_INTERVAL 3600 s + snapshot %.0f s = %.0f s\n' "$SNAP" "$(echo "3600 + $SNAP" | bc)"
printf 'RTO                  restore %.0f s\n' "$RESTORE"
