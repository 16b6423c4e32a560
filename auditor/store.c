/* The auditor's PostgreSQL writer: a batch is one transaction, COPY then one INSERT,
 * with no SQL ever built from event text. */
#include "store.h"
#include "log.h"
#include "pg.h"
#include "schema.h"
#include "auditor_event.h"
#include "chain.h"
#include "checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Rows arrive as COPY text in a temp table, then one INSERT .. SELECT .. ON CONFLICT
 * moves them, all in one transaction. Measured per 1000-row batch on this design's
 * bench (tests/bench/auditor.sh): COPY ~50 ms, one JSON array through
 * jsonb_to_recordset ~70 ms, json_to_recordset ~115 ms. The temp table is created in
 * the batch's own transaction (a no-op after the first) and nothing relies on session
 * state such as prepared statements, so a transaction-pooling PgBouncer works too. */
static const char begin_fmt[] =
    "BEGIN; SET LOCAL statement_timeout = %lld; "
    "CREATE TEMP TABLE IF NOT EXISTS audit_batch (LIKE audit.audit_events INCLUDING DEFAULTS) "
    "ON COMMIT DELETE ROWS";
#define COLUMNS AUDITOR_EVENT_COLUMNS ", chain_id, seq, prev_hash, hash"
static const char copy_sql[] = "COPY audit_batch (" COLUMNS ") FROM STDIN";
/* No ON CONFLICT: duplicates were left out before the chain was computed (a skipped
 * row must not hold a seq). A conflict here means a writer raced us outside the
 * chain lock; the batch then fails as rejected and is retried row by row, each row
 * checked again. */
static const char insert_sql[] =
    "INSERT INTO audit.audit_events (" COLUMNS ") SELECT " COLUMNS " FROM audit_batch";

void store_init(struct store *s, char *url, long long statement_timeout_ms)
{
	memset(s, 0, sizeof *s);
	s->url = url;
	s->statement_timeout_ms = statement_timeout_ms;
	snprintf(s->begin_sql, sizeof s->begin_sql, begin_fmt, statement_timeout_ms);
}

/* Notices ("relation already exists, skipping") are expected; keep them off stderr. */
static void on_notice(void *arg, const char *message)
{
	if (log_enabled(LOG_DEBUG)) {
		char m[256];
		snprintf(m, sizeof m, "%s", message);
		m[strcspn(m, "\n")] = 0;
		log_debug("PostgreSQL notice", LS("notice", m));
	}
}

void store_disconnect(struct store *s)
{
	if (s->conn)
		PQfinish(s->conn);
	s->conn = NULL;
}

void store_free(struct store *s)
{
	store_disconnect(s);
	free(s->buf);
	free(s->scratch);
	s->buf = s->scratch = NULL;
	s->buflen = s->bufcap = s->scratchcap = 0;
	if (s->url) {
		/* It holds a password: do not leave it in freed memory. */
		explicit_bzero(s->url, strlen(s->url));
		free(s->url);
	}
	s->url = NULL;
}

static void set_why(struct store *s, const char *what, const char *detail)
{
	snprintf(s->why, sizeof s->why, "%s%s%s", what, detail && *detail ? ": " : "",
		 detail ? detail : "");
	/* libpq messages end in a newline; /ready shows one line. */
	size_t n = strcspn(s->why, "\n");
	s->why[n] = 0;
}

static int exec_cmd(struct store *s, const char *sql, const char *step)
{
	PGresult *r = PQexec(s->conn, sql);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	if (!ok) {
		set_why(s, step, PQresultErrorMessage(r));
		log_error("database setup failed", LS("step", step),
			  LS("error", PQresultErrorMessage(r)));
	}
	PQclear(r);
	return ok ? 0 : -1;
}

enum store_result store_connect(struct store *s)
{
	if (s->conn && PQstatus(s->conn) == CONNECTION_OK)
		return STORE_OK;
	store_disconnect(s);
	s->outdated = 0;
	s->conn = pg_connect(s->url, "auditor");
	if (!s->conn) {
		set_why(s, "cannot connect", NULL);
		return STORE_RETRY;
	}
	PQsetNoticeProcessor(s->conn, on_notice, NULL);
	char sql[128];
	/* Rows are UTF-8 (jansson checked); say so whatever the server's default. */
	snprintf(sql, sizeof sql, "SET statement_timeout = %lld; SET client_encoding = 'UTF8'",
		 s->statement_timeout_ms);
	if (exec_cmd(s, sql, "session settings") != 0)
		goto fail;
	int v = pg_schema_version(s->conn, "audit");
	if (v < 0) {
		set_why(s, "cannot read the audit schema version", NULL);
		goto fail;
	}
	if (v < SCHEMA_VERSION) {
		char d[128];
		snprintf(d, sizeof d, "audit schema version %d, need %d: run `auditor migrate`", v,
			 SCHEMA_VERSION);
		set_why(s, d, NULL);
		s->outdated = 1;
		log_error("audit schema is too old: run `auditor migrate`", LI("have", v),
			  LI("need", SCHEMA_VERSION));
		goto fail;
	}
	s->why[0] = 0;
	log_info("connected to PostgreSQL", LI("schema_version", v));
	return STORE_OK;
fail:
	store_disconnect(s);
	return STORE_RETRY;
}

/* Rows the database refuses stay refused on every retry: data exceptions (22),
 * integrity violations (23) and limits such as an oversized index row (54). All
 * else (connection loss, shutdown, timeouts, permissions) may heal, so we retry. */
static int sqlstate_rejects(const char *st)
{
	return st && (strncmp(st, "22", 2) == 0 || strncmp(st, "23", 2) == 0 ||
		      strncmp(st, "54", 2) == 0);
}

static enum store_result failed(struct store *s, PGresult *r, const char *what)
{
	const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorMessage(r);
	if (!*msg)
		msg = PQerrorMessage(s->conn);
	snprintf(s->sqlstate, sizeof s->sqlstate, "%s", st ? st : "");
	if (PQstatus(s->conn) == CONNECTION_OK && sqlstate_rejects(st)) {
		set_why(s, "rows rejected", msg);
		return STORE_REJECTED;
	}
	set_why(s, msg, NULL);
	log_error(what, LS("sqlstate", s->sqlstate), LS("error", s->why));
	/* A fresh connection is the simplest way back to a known state. */
	store_disconnect(s);
	return STORE_RETRY;
}

/* Leaves the connection outside any transaction after a failure mid-batch. */
static void rollback(struct store *s)
{
	if (s->conn && PQstatus(s->conn) == CONNECTION_OK &&
	    PQtransactionStatus(s->conn) != PQTRANS_IDLE) {
		PGresult *r = PQexec(s->conn, "ROLLBACK");
		PQclear(r);
	}
}

/* Each chain is written by one transaction at a time: the consumer group gives a
 * partition one owner, and this lock holds even against a zombie owner that has not
 * yet noticed a rebalance. The key space is ours: 'audt' then the chain id. */
static const char lock_sql[] =
    "SELECT pg_advisory_xact_lock(1635083380, c) FROM unnest($1::int[]) AS c";
/* The committed head of each chain, read after the lock: restarts and rebalances need
 * no other state, and a rolled-back batch leaves nothing to undo in memory. */
#define HEADS_OF(chains)                                                                           \
	"SELECT c, h.seq, h.hash, k.seq, "                                                         \
	"(extract(epoch FROM clock_timestamp() - k.signed_at) * 1000)::bigint FROM " chains        \
	" LEFT JOIN LATERAL (SELECT seq, hash FROM audit.audit_events e WHERE e.chain_id = c "     \
	"ORDER BY seq DESC LIMIT 1) h ON true LEFT JOIN LATERAL (SELECT seq, signed_at FROM "      \
	"audit.checkpoints k WHERE k.chain_id = c ORDER BY seq DESC LIMIT 1) k ON true"
static const char heads_sql[] = HEADS_OF("unnest($1::int[]) AS c");
/* Every chain, found by skipping along the (chain_id, seq) index. */
static const char all_heads_sql[] =
    HEADS_OF("(WITH RECURSIVE r AS (SELECT min(chain_id) AS id FROM audit.audit_events UNION ALL "
	     "SELECT (SELECT min(chain_id) FROM audit.audit_events WHERE chain_id > r.id) FROM r "
	     "WHERE r.id IS NOT NULL) SELECT id AS c FROM r WHERE id IS NOT NULL) AS cs");
static const char checkpoint_sql[] =
    "INSERT INTO audit.checkpoints (chain_id, seq, hash, signed_at, key_id, signature) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
static const char exists_sql[] =
    "SELECT event_id FROM audit.audit_events WHERE event_id = ANY($1::text[])";

struct head {
	int32_t chain;
	long long seq;
	unsigned char hash[CHAIN_HASH_LEN];
	long long cp_seq;    /* the last checkpoint's seq, 0 when none */
	long long cp_age_ms; /* how long ago it was signed, -1 when none */
};

static void read_head(PGresult *r, int t, struct head *h)
{
	h->chain = (int32_t)strtol(PQgetvalue(r, t, 0), NULL, 10);
	h->seq = PQgetisnull(r, t, 1) ? 0 : strtoll(PQgetvalue(r, t, 1), NULL, 10);
	h->cp_seq = PQgetisnull(r, t, 3) ? 0 : strtoll(PQgetvalue(r, t, 3), NULL, 10);
	h->cp_age_ms = PQgetisnull(r, t, 4) ? -1 : strtoll(PQgetvalue(r, t, 4), NULL, 10);
}

/* Signs each head that is due: GW_AUDIT_CHECKPOINT_EVENTS rows since the last
 * checkpoint, or GW_AUDIT_CHECKPOINT_SECONDS since it (a chain without one is due at
 * once). In the caller's transaction, so a checkpoint never covers uncommitted rows.
 * Returns NULL, or the failed result (or the OOM/sign failure as a PGRES_EMPTY one). */
static PGresult *sign_due(struct store *s, const struct head *heads, int nheads)
{
	if (!s->key)
		return NULL;
	for (int i = 0; i < nheads; i++) {
		const struct head *h = &heads[i];
		if (h->seq <= h->cp_seq || (h->seq - h->cp_seq < s->cp_events &&
					    h->cp_age_ms >= 0 && h->cp_age_ms < s->cp_ms))
			continue;
		char hashhex[CHAIN_HEX_LEN + 1], at[40], msg[300], sig[CHECKPOINT_SIG_HEX + 1];
		char chain[16], seq[24];
		chain_hex(h->hash, hashhex);
		int n;
		if (auditor_event_time(wall_us(), at, sizeof at) != 0 ||
		    (n = checkpoint_message(msg, sizeof msg, h->chain, h->seq, hashhex, at)) < 0 ||
		    checkpoint_sign(s->key, msg, (size_t)n, sig) != 0) {
			set_why(s, "cannot sign a checkpoint", NULL);
			return PQmakeEmptyPGresult(s->conn, PGRES_EMPTY_QUERY);
		}
		snprintf(chain, sizeof chain, "%d", (int)h->chain);
		snprintf(seq, sizeof seq, "%lld", h->seq);
		const char *params[] = {chain, seq, hashhex, at, s->key->key_id, sig};
		PGresult *r = PQexecParams(s->conn, checkpoint_sql, 6, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			return r;
		PQclear(r);
		s->checkpoints++;
	}
	return NULL;
}

static int cmp_int32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return x < y ? -1 : x > y;
}

static struct auditor_row *const *sort_rows; /* qsort has no context argument */

static int cmp_row_id(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	int c = strcmp(sort_rows[x]->event_id, sort_rows[y]->event_id);
	return c ? c : (x > y) - (x < y);
}

static int buf_append(struct store *s, const char *p, size_t n)
{
	if (s->buflen + n + 1 > s->bufcap) {
		size_t cap = s->bufcap ? s->bufcap : 65536;
		while (cap < s->buflen + n + 1)
			cap *= 2;
		char *nb = realloc(s->buf, cap);
		if (!nb)
			return -1;
		s->buf = nb;
		s->bufcap = cap;
	}
	memcpy(s->buf + s->buflen, p, n);
	s->buflen += n;
	s->buf[s->buflen] = 0;
	return 0;
}

/* Marks skip[i] for rows whose event is stored already or repeated earlier in this
 * batch: those must not take a place in the chain. */
static PGresult *mark_duplicates(struct store *s, struct auditor_row *const *rows, int n,
				 int *order, char *skip)
{
	for (int i = 0; i < n; i++)
		order[i] = i;
	sort_rows = rows;
	qsort(order, (size_t)n, sizeof *order, cmp_row_id);
	s->buflen = 0;
	if (buf_append(s, "{", 1) != 0)
		return NULL;
	for (int k = 0; k < n; k++) {
		if (k && strcmp(rows[order[k]]->event_id, rows[order[k - 1]]->event_id) == 0)
			skip[order[k]] = 1;
		if ((k && buf_append(s, ",", 1) != 0) ||
		    buf_append(s, rows[order[k]]->event_id, strlen(rows[order[k]]->event_id)) != 0)
			return NULL;
	}
	if (buf_append(s, "}", 1) != 0)
		return NULL;
	const char *params[] = {s->buf};
	PGresult *r = PQexecParams(s->conn, exists_sql, 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		return r;
	for (int t = 0; t < PQntuples(r); t++) {
		const char *id = PQgetvalue(r, t, 0);
		int lo = 0, hi = n - 1;
		while (lo <= hi) { /* the first row with this id, in batch order */
			int mid = (lo + hi) / 2;
			int c = strcmp(rows[order[mid]]->event_id, id);
			if (c < 0)
				lo = mid + 1;
			else
				hi = mid - 1;
		}
		for (int k = lo; k < n && strcmp(rows[order[k]]->event_id, id) == 0; k++)
			skip[order[k]] = 1;
	}
	return r;
}

/* Locks the batch's chains and loads their heads (*ok 1). Otherwise returns the failed
 * result, or NULL when out of memory. */
static PGresult *load_heads(struct store *s, struct auditor_row *const *rows, int n,
			    struct head *heads, int *nheads, int *ok)
{
	int32_t *tmp = malloc((size_t)n * sizeof *tmp);
	*ok = 0;
	if (!tmp)
		return NULL;
	for (int i = 0; i < n; i++)
		tmp[i] = rows[i]->chain_id;
	qsort(tmp, (size_t)n, sizeof *tmp, cmp_int32);
	int m = 0;
	for (int i = 0; i < n; i++)
		if (m == 0 || tmp[i] != tmp[m - 1])
			tmp[m++] = tmp[i];
	s->buflen = 0;
	int bad = buf_append(s, "{", 1);
	for (int i = 0; i < m && !bad; i++) {
		char num[16];
		int k = snprintf(num, sizeof num, "%s%d", i ? "," : "", (int)tmp[i]);
		bad = buf_append(s, num, (size_t)k);
	}
	free(tmp);
	if (bad || buf_append(s, "}", 1) != 0)
		return NULL;
	const char *params[] = {s->buf};
	PGresult *r = PQexecParams(s->conn, lock_sql, 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		return r;
	PQclear(r);
	r = PQexecParams(s->conn, heads_sql, 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		return r;
	*nheads = PQntuples(r);
	for (int t = 0; t < *nheads; t++) {
		struct head *h = &heads[t];
		read_head(r, t, h);
		memset(h->hash, 0, sizeof h->hash);
		if (h->seq) {
			if (chain_unhex(PQgetvalue(r, t, 2), h->hash) != 0) {
				log_error("chain head has a malformed hash: run `auditor verify`",
					  LI("chain", h->chain), LI("seq", h->seq));
				return r; /* status TUPLES_OK, *ok 0: retried, visible */
			}
		}
	}
	PQclear(r);
	*ok = 1;
	return NULL;
}

/* Appends the chain columns to each new row, in batch order (which is offset order
 * within a partition), as the COPY stream in s->buf. Returns the new rows or -1. */
static long long chain_rows(struct store *s, struct auditor_row *const *rows, int n,
			    const char *skip, struct head *heads, int nheads)
{
	long long count = 0;
	s->buflen = 0;
	for (int i = 0; i < n; i++) {
		if (skip[i])
			continue;
		struct head *h = NULL;
		for (int k = 0; k < nheads; k++)
			if (heads[k].chain == rows[i]->chain_id)
				h = &heads[k];
		unsigned char hash[CHAIN_HASH_LEN];
		char prevhex[CHAIN_HEX_LEN + 1], hashhex[CHAIN_HEX_LEN + 1], tail[200];
		if (!h || chain_hash_copy_line(h->hash, h->chain, rows[i]->line, rows[i]->len,
					       &s->scratch, &s->scratchcap, hash) != 0)
			return -1;
		chain_hex(h->hash, prevhex);
		chain_hex(hash, hashhex);
		h->seq++;
		memcpy(h->hash, hash, sizeof hash);
		int k = snprintf(tail, sizeof tail, "\t%d\t%lld\t%s\t%s\n", (int)h->chain, h->seq,
				 prevhex, hashhex);
		if (buf_append(s, rows[i]->line, rows[i]->len - 1) != 0 ||
		    buf_append(s, tail, (size_t)k) != 0)
			return -1;
		count++;
	}
	return count;
}

enum store_result store_insert(struct store *s, struct auditor_row *const *rows, int n,
			       long long *inserted)
{
	*inserted = 0;
	if (store_connect(s) != STORE_OK)
		return STORE_RETRY;
	enum store_result res = STORE_OK;
	int *order = malloc((size_t)n * sizeof *order);
	char *skip = calloc((size_t)n, 1);
	struct head *heads = malloc((size_t)n * sizeof *heads);
	int nheads = 0, ok = 0;
	long long fresh = 0;
	PGresult *r = NULL;
	if (!order || !skip || !heads) {
		set_why(s, "out of memory", NULL);
		log_error("out of memory writing a batch", LI("events", n));
		res = STORE_RETRY;
		goto out;
	}
	r = PQexec(s->conn, s->begin_sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		goto failed;
	PQclear(r);
	r = load_heads(s, rows, n, heads, &nheads, &ok);
	if (!ok)
		goto failed_or_oom;
	r = mark_duplicates(s, rows, n, order, skip);
	if (!r || PQresultStatus(r) != PGRES_TUPLES_OK)
		goto failed_or_oom;
	PQclear(r);
	r = NULL;
	fresh = chain_rows(s, rows, n, skip, heads, nheads);
	if (fresh < 0)
		goto failed_or_oom;
	if (fresh > 0) {
		r = PQexec(s->conn, copy_sql);
		if (PQresultStatus(r) != PGRES_COPY_IN)
			goto failed;
		PQclear(r);
		/* A batch is at most BATCH_BYTES_MAX (16 MiB) of rows: well within an int. */
		if (PQputCopyData(s->conn, s->buf, (int)s->buflen) != 1 ||
		    PQputCopyEnd(s->conn, NULL) != 1) {
			set_why(s, PQerrorMessage(s->conn), NULL);
			log_error("audit COPY failed", LS("error", s->why));
			store_disconnect(s);
			res = STORE_RETRY;
			goto out;
		}
		r = PQgetResult(s->conn);
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			goto failed;
		PQclear(r);
		while ((r = PQgetResult(s->conn)) != NULL)
			PQclear(r);
		r = PQexec(s->conn, insert_sql);
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			goto failed;
		PQclear(r);
		if ((r = sign_due(s, heads, nheads)) != NULL)
			goto failed_or_oom;
	}
	r = PQexec(s->conn, "COMMIT");
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		goto failed;
	PQclear(r);
	*inserted = fresh;
	goto out;
failed_or_oom:
	if (!r) {
		set_why(s, "out of memory or malformed chain head", NULL);
		log_error("cannot chain a batch", LI("events", n));
		rollback(s);
		res = STORE_RETRY;
		goto out;
	}
	if (PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_EMPTY_QUERY) {
		/* a malformed head or a failed signature (which set why), logged */
		if (PQresultStatus(r) == PGRES_TUPLES_OK)
			set_why(s, "malformed chain head: run `auditor verify`", NULL);
		PQclear(r);
		rollback(s);
		res = STORE_RETRY;
		goto out;
	}
failed:
	/* A COPY refused mid-stream still has its error result to collect. */
	res = failed(s, r, "audit insert failed");
	PQclear(r);
	if (s->conn)
		while ((r = PQgetResult(s->conn)) != NULL)
			PQclear(r);
	rollback(s);
	*inserted = 0;
out:
	free(order);
	free(skip);
	free(heads);
	return res;
}

enum store_result store_checkpoint_idle(struct store *s)
{
	if (!s->key)
		return STORE_OK;
	if (store_connect(s) != STORE_OK)
		return STORE_RETRY;
	PGresult *r = PQexec(s->conn, s->begin_sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		goto failed;
	PQclear(r);
	r = PQexec(s->conn, all_heads_sql);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		goto failed;
	int n = PQntuples(r);
	struct head *heads = calloc((size_t)n + 1, sizeof *heads);
	if (!heads) {
		PQclear(r);
		rollback(s);
		return STORE_RETRY;
	}
	int m = 0;
	for (int t = 0; t < n; t++) {
		read_head(r, t, &heads[m]);
		/* Idle: only the time rule applies (the count rule ran with the batch). */
		if (heads[m].seq > heads[m].cp_seq &&
		    chain_unhex(PQgetvalue(r, t, 2), heads[m].hash) == 0 &&
		    (heads[m].cp_age_ms < 0 || heads[m].cp_age_ms >= s->cp_ms))
			m++;
	}
	PQclear(r);
	r = sign_due(s, heads, m);
	free(heads);
	if (r) {
		if (PQresultStatus(r) == PGRES_EMPTY_QUERY) {
			PQclear(r);
			rollback(s);
			return STORE_RETRY;
		}
		goto failed;
	}
	r = PQexec(s->conn, "COMMIT");
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		goto failed;
	PQclear(r);
	return STORE_OK;
failed:;
	enum store_result res = failed(s, r, "checkpoint failed");
	PQclear(r);
	rollback(s);
	return res == STORE_OK ? STORE_RETRY : res;
}

enum store_result store_ping(struct store *s)
{
	if (store_connect(s) != STORE_OK)
		return STORE_RETRY;
	PGresult *r = PQexec(s->conn, "SELECT 1");
	enum store_result res = STORE_OK;
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		res = failed(s, r, "database health check failed");
	PQclear(r);
	return res;
}
