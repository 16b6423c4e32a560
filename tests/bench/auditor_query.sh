#!/usr/bin/env bash
# Query latency of the compliance log at scale: N events (default 10 million) spread
# over one month are generated straight into audit.audit_events with generate_series
# (chain columns filled with placeholder values: this measures queries, not the chain),
# then the compliance queries run through the auditor binary and are timed.
# Usage: tests/bench/auditor_query.sh BUILD_DIR [N]
set -u
BUILD=$(cd "${1:?usage: auditor_query.sh BUILD_DIR [N]}" && pwd) || exit 2
N=${2:-10000000}
AUDITOR=$BUILD/auditor/auditor
PGBIN=${GW_PG_BIN:-/usr/lib/postgresql/15/bin}
for v in $(compgen -e | grep '^GW_'); do unset "$v"; done
export GW_ENV_FILE=/dev/null GW_LOG_LEVEL=warn

TMP=$(mktemp -d /tmp/gw-auditor-qbench.XXXXXX) || exit 1
chmod 755 "$TMP"
PGDIR=$TMP/pg
PGDATA=$PGDIR/data
PORT=5432
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); else AS_PG=(); fi
cleanup() {
	[ -f "$PGDATA/postmaster.pid" ] &&
		"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
	if [ -n "${KEEP_TMP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM
die() { echo "bench: $*" >&2; exit 1; }
sql() { psql -X -q -At -h "$PGDIR" -p "$PORT" -U postgres -d gateway -c "$1"; }

mkdir -p "$PGDIR"
[ "$(id -u)" = 0 ] && chown postgres: "$PGDIR"
chmod 700 "$PGDIR"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C \
	--no-sync >/dev/null 2>&1 || die "initdb failed"
printf "listen_addresses = ''\nunix_socket_directories = '%s'\nport = %s\nshared_buffers = 512MB\nmax_wal_size = 8GB\n" \
	"$PGDIR" "$PORT" >>"$PGDATA/postgresql.conf"
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDIR/log" -w start >/dev/null || die "pg start"
psql -X -q -h "$PGDIR" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE gateway" &&
	sql "CREATE ROLE gw_auditor LOGIN; CREATE ROLE gw_compliance LOGIN" || die "roles"
GW_DATABASE_ADMIN_URL="host=$PGDIR port=$PORT dbname=gateway user=postgres" "$AUDITOR" migrate ||
	die "migrate"

# 500 principals, 8 models, 4 endpoints, 1 % denied, 0.5 % errors, over October 2026
# (its monthly partition made the way the writer makes one; migrate makes only the
# current month and the next two).
sql "SELECT audit.ensure_month_partition('2026-10-15'), audit.ensure_month_partition('2026-11-01')" ||
	die "partitions"
t0=$(date +%s.%N)
sql "INSERT INTO audit.audit_events (event_id, request_id, event_type, event_time, service,
	principal, model, endpoint, outcome, status, total_tokens, latency_us, kafka_partition,
	kafka_offset, event, chain_id, seq, prev_hash, hash)
SELECT md5(i::text), md5((i / 3)::text),
	(ARRAY['request.received', 'authz.decision', 'dispatch.result'])[i % 3 + 1],
	timestamptz '2026-10-01 00:00:00+00' + (i::double precision / $N) * interval '31 days',
	'dispatcher', 'user' || (i::bigint * 7919 % 500) || '@example.org',
	'model-' || (i % 8), 'endpoint-' || (i % 4),
	CASE WHEN i % 100 = 0 THEN 'denied' WHEN i % 200 = 1 THEN 'error' ELSE 'ok' END,
	200, 100 + i % 900, 250000 + i % 100000, i % 64, i / 64,
	json_build_object('event_id', md5(i::text), 'n', i), i % 64, i / 64 + 1,
	repeat('0', 64), repeat('0', 64)
FROM generate_series(1, $N) AS i" || die "generate"
sql "ANALYZE audit.audit_events" || die analyze
t1=$(date +%s.%N)
echo "bench: generated $N events over October 2026 in $(echo "$t1 - $t0" | bc) s, table + indexes $(sql "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits WHERE inhparent = 'audit.audit_events'::regclass")"

export GW_DATABASE_URL="host=$PGDIR port=$PORT dbname=gateway user=gw_compliance"
timed() { # label command...
	local label=$1 s e out
	shift
	"$@" >/dev/null 2>&1 # warm the cache once: the figure is the second run
	s=$(date +%s.%N)
	out=$("$@" 2>&1 | wc -l)
	e=$(date +%s.%N)
	printf 'bench: %-62s %6.3f s (%s lines)\n' "$label" "$(echo "$e - $s" | bc)" "$out"
}
timed "query --principal P --since/--until (the month), limit 1000" \
	"$AUDITOR" query --principal user42@example.org --since 2026-10-01 --until 2026-11-01
timed "query --principal P --since/--until (one day)" \
	"$AUDITOR" query --principal user42@example.org --since 2026-10-15 --until 2026-10-16
timed "query --request-id R" \
	"$AUDITOR" query --request-id "$(sql "SELECT md5('1000'::text)")"
timed "query --model M --outcome denied --since/--until (one day)" \
	"$AUDITOR" query --model model-0 --outcome denied --since 2026-10-15 --until 2026-10-16
timed "report --by principal over one day" \
	"$AUDITOR" report --since 2026-10-15 --until 2026-10-16 --by principal --format csv
timed "report --by model over the month (full scan)" \
	"$AUDITOR" report --since 2026-10-01 --until 2026-11-01 --by model --format csv
