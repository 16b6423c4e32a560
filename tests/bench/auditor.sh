#!/usr/bin/env bash
# Bulk-insert throughput of the auditor: N audit events are produced to gw.audit first,
# then `auditor serve` drains them into a private PostgreSQL cluster (default settings,
# fsync on). gw.audit gets 64 partitions here because the mock broker keeps only the
# newest 5 MB of each partition. Prints events/s measured in the database itself
# (first to last batch's inserted_at) and per batch while writing, how long the admin
# listener takes to answer during the drain, and where the time went (by stage). Then,
# as the baseline of the same run, the same rows are written again by psql alone: one
# `\copy` per GW_AUDIT_BATCH rows, each its own transaction, into the emptied table
# (what PostgreSQL itself manages here, without Kafka, JSON or hashing).
# Usage: tests/bench/auditor.sh BUILD_DIR [N]   (BENCH_AUDIT_BATCH: GW_AUDIT_BATCH, 1000)
set -u
BUILD=$(cd "${1:?usage: auditor.sh BUILD_DIR [N]}" && pwd) || exit 2
N=${2:-200000}
AUDITOR=$BUILD/auditor/auditor
PRODUCE=$BUILD/auditor/gw-produce
BROKER=$BUILD/deploy/local/gw-broker
PGBIN=${GW_PG_BIN:-/usr/lib/postgresql/15/bin}
BATCH=${BENCH_AUDIT_BATCH:-1000}

for v in $(compgen -e | grep '^GW_'); do unset "$v"; done
export GW_ENV_FILE=/dev/null GW_LOG_LEVEL=warn

TMP=$(mktemp -d /tmp/gw-auditor-bench.XXXXXX) || exit 1
chmod 755 "$TMP"
PGDIR=$TMP/pg
PGDATA=$PGDIR/data
PORT=5432
APORT=$((10000 + RANDOM % 22000))
BROKER_PID=
AUDITOR_PID=
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); else AS_PG=(); fi

cleanup() {
	[ -n "$AUDITOR_PID" ] && kill -TERM "$AUDITOR_PID" 2>/dev/null && wait "$AUDITOR_PID"
	[ -n "$BROKER_PID" ] && kill -TERM "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID"
	[ -f "$PGDATA/postmaster.pid" ] &&
		"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
	if [ -n "${KEEP_TMP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM
die() { echo "bench: $*" >&2; exit 1; }
sql() { psql -X -q -At -h "$PGDIR" -p "$PORT" -U postgres -d gateway -c "$1"; }
metric() { awk -v n="$1" '$1 == n { print $2 }' "$TMP/metrics"; }

mkdir -p "$PGDIR"
[ "$(id -u)" = 0 ] && chown postgres: "$PGDIR"
chmod 700 "$PGDIR"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C \
	--no-sync >/dev/null 2>&1 || die "initdb failed"
printf "listen_addresses = ''\nunix_socket_directories = '%s'\nport = %s\n" "$PGDIR" "$PORT" \
	>>"$PGDATA/postgresql.conf"
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDIR/log" -w start >/dev/null || die "pg start"
psql -X -q -h "$PGDIR" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE gateway" &&
	sql "CREATE ROLE gw_auditor LOGIN; CREATE ROLE gw_compliance LOGIN" || die "db setup"
GW_DATABASE_ADMIN_URL="host=$PGDIR port=$PORT dbname=gateway user=postgres" "$AUDITOR" migrate ||
	die "migrate failed"

(cd "$TMP" && GW_BROKER_PARTITIONS=64 exec "$BROKER" --bootstrap-file "$TMP/bootstrap") >/dev/null 2>"$TMP/broker.log" &
BROKER_PID=$!
for _ in $(seq 100); do [ -s "$TMP/bootstrap" ] && break; sleep 0.1; done
BROKERS=$(cat "$TMP/bootstrap") || die "no broker"

# Realistic events (~750 bytes: ids, principal, groups, model, hashes, tokens).
# (%.0f for ts_us: mawk's %d is 32-bit.)
awk -v n="$N" -v now="$(date +%s%6N)" 'BEGIN {
	srand(1)
	sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	for (i = 0; i < n; i++) {
		printf "{\"event_id\":\"%08x%08x%016x\",\"ts\":\"2024-05-01T12:00:00.000000Z\",", int(rand() * 2147483647), int(rand() * 2147483647), i
		printf "\"ts_us\":%.0f,\"type\":\"dispatch.result\",\"service\":\"dispatcher\",", now + i * 1000
		printf "\"instance\":\"dispatcher-host-1234\",\"request_id\":\"%032x\",", i
		printf "\"outcome\":\"ok\",\"status\":200,\"principal\":\"user%d@example.org\",", i % 500
		printf "\"groups\":\"hpc-users,project-%d\",\"idp\":\"globus\",\"client\":\"10.1.%d.%d\",", i % 40, i % 250, i % 200
		printf "\"route\":\"/v1/chat/completions\",\"model\":\"meta-llama/Llama-3.1-8B-Instruct\","
		printf "\"endpoint\":\"vllm-a\",\"prompt_tokens\":%d,\"completion_tokens\":%d,", 100 + i % 900, 10 + i % 300
		printf "\"total_tokens\":%d,\"latency_us\":%d,\"ttft_us\":%d,", 110 + i % 900 + i % 300, 250000 + i % 100000, 40000 + i % 9000
		printf "\"body_sha256\":\"%s\",\"body_size\":%d,\"resp_sha256\":\"%s\",\"resp_size\":%d}\n", sha, 500 + i % 4000, sha, 800 + i % 9000
	}
}' >"$TMP/events"
echo "bench: $N events, $(($(wc -c <"$TMP/events") / N)) bytes each on average; load: $(uptime | sed 's/.*load/load/')"

t_prod=$(date +%s.%N)
GW_KAFKA_BROKERS=$BROKERS "$PRODUCE" gw.audit <"$TMP/events" 2>/dev/null || die "produce failed"
t_produced=$(date +%s.%N)

(cd "$TMP" && exec env GW_DATABASE_URL="host=$PGDIR port=$PORT dbname=gateway user=gw_auditor" \
	GW_KAFKA_BROKERS="$BROKERS" GW_ADMIN_LISTEN="127.0.0.1:$APORT" GW_AUDIT_BATCH="$BATCH" \
	GW_LOG_LEVEL=info "$AUDITOR" serve) 2>"$TMP/auditor.log" &
AUDITOR_PID=$!
# The admin listener shares the event loop: how long does /health take mid-drain?
for _ in $(seq 600); do [ "$(sql "SELECT count(*) > 0 FROM audit.audit_events")" = t ] && break; sleep 0.1; done
scrape=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$APORT/health")
last_w=0
last_change=$SECONDS
: >"$TMP/scrapes"
while :; do
	w=$(curl -s -o "$TMP/m" -w '%{time_total}\n' "http://127.0.0.1:$APORT/metrics" 2>/dev/null >>"$TMP/scrapes"
		awk '$1 == "gw_auditor_events_written_total" { print $2 }' "$TMP/m")
	w=${w:-0}
	[ "$w" = "$N" ] && break

	[ "$w" != "$last_w" ] && last_w=$w && last_change=$SECONDS
	if [ $((SECONDS - last_change)) -gt 30 ]; then
		curl -s "http://127.0.0.1:$APORT/metrics" | grep -v '^#' | grep -v _bucket >&2
		tail -n 20 "$TMP/auditor.log" >&2
		echo "partitions read from a later offset than 0 (mock retention), rows per partition max/min:" >&2
		sql "SELECT count(*) FILTER (WHERE lo > 0), max(n), min(n) FROM (SELECT kafka_partition, min(kafka_offset) lo, count(*) n FROM audit.audit_events GROUP BY 1) t" >&2
		die "stuck at $w of $N events written"
	fi
	kill -0 "$AUDITOR_PID" 2>/dev/null || die "auditor died: $(tail -n 5 "$TMP/auditor.log")"
	sleep 0.05
done
curl -s "http://127.0.0.1:$APORT/metrics" >"$TMP/metrics"
# CPU seconds (user + system) each process used so far: who competes for the 2 cores.
cpu() { for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null; done |
	awk -v hz="$(getconf CLK_TCK)" '{ t += $14 + $15 } END { printf "%.1f", t / hz }'; }
backends=$(sql "SELECT pid FROM pg_stat_activity WHERE usename = 'gw_auditor'")
echo "bench: CPU seconds used: auditor $(cpu "$AUDITOR_PID"), its PostgreSQL backends $(cpu $backends), broker $(cpu "$BROKER_PID"), wall $(awk -v a="$t_produced" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
batches=$(metric gw_auditor_batches_total)
bsum=$(metric gw_auditor_batch_seconds_sum)
db=$(sql "SELECT round($N / extract(epoch FROM max(inserted_at) - min(inserted_at))) FROM audit.audit_events")
echo "bench: wrote $N events in $batches batches (GW_AUDIT_BATCH=$BATCH)"
awk -v n="$N" -v p0="$t_prod" -v p1="$t_produced" -v bs="$bsum" \
	-v nb="$batches" -v db="$db" -v sc="${scrape:-}" 'BEGIN {
	printf "bench: producing them took %.2f s\n", p1 - p0
	printf "bench: a /health request sent once the first rows were in took %s s\n", sc
	printf "bench: database, first to last batch inserted_at: %s events/s\n", db
	printf "bench: mean batch (COPY + COMMIT) %.1f ms = %.0f events/s while writing\n", 1000 * bs / nb, n / bs
}'
sort -n "$TMP/scrapes" | awk '{ t[NR] = $1 } END {
	printf "bench: /metrics during the drain (%d scrapes): median %.3f s, max %.3f s\n", NR, t[int((NR + 1) / 2)], t[NR] }'
# Where the time went: gw_auditor_write_seconds_total{stage=...}, per 1000 events.
awk -v n="$N" -F'[ "]' '$1 ~ /^gw_auditor_write_seconds_total/ { st[$2] = $4; tot += $4; order[++k] = $2 }
END {
	printf "bench: auditor time per 1000 events by stage (ms):"
	for (i = 1; i <= k; i++) printf " %s %.1f", order[i], 1e6 * st[order[i]] / n
	printf " | total %.1f\n", 1e6 * tot / n
}' "$TMP/metrics"

# The baseline: the same rows, psql alone, the same transaction size, same table.
kill -TERM "$AUDITOR_PID" 2>/dev/null && wait "$AUDITOR_PID"
AUDITOR_PID=
COLS="event_id, request_id, event_type, event_time, service, instance, client_addr, principal,
 idp, groups, route, model, endpoint, outcome, status, reason, prompt_tokens, completion_tokens,
 total_tokens, latency_us, ttft_us, body_sha256, body_size, resp_sha256, resp_size,
 kafka_partition, kafka_offset, event, chain_id, seq, prev_hash, hash"
COLS=$(echo $COLS)
sql "\copy (SELECT $COLS FROM audit.audit_events ORDER BY inserted_at, chain_id, seq) TO '$TMP/rows'" ||
	die "cannot export the rows"
mkdir "$TMP/chunks"
split -l "$BATCH" -a 5 "$TMP/rows" "$TMP/chunks/c" || die "split failed"
for f in "$TMP"/chunks/c*; do echo "\copy audit.audit_events ($COLS) FROM '$f'"; done >"$TMP/copy.sql"
sql "TRUNCATE audit.audit_events" && sql "CHECKPOINT" || die "cannot empty the table"
t0=$(date +%s.%N)
psql -X -q -v ON_ERROR_STOP=1 -h "$PGDIR" -p "$PORT" -U postgres -d gateway -f "$TMP/copy.sql" ||
	die "baseline COPY failed"
t1=$(date +%s.%N)
[ "$(sql "SELECT count(*) FROM audit.audit_events")" = "$N" ] || die "baseline wrote a different count"
awk -v n="$N" -v t0="$t0" -v t1="$t1" -v db="$db" -v b="$BATCH" 'BEGIN {
	base = n / (t1 - t0)
	printf "bench: baseline, psql \\copy of the same rows, %d per transaction: %.0f events/s\n", b, base
	printf "bench: auditor / baseline = %.2f\n", db / base
}'
echo "bench: load at the end: $(uptime | sed 's/.*load/load/')"
