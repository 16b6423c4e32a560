/* The auditor's PostgreSQL writer: a batch is one transaction, COPY then one INSERT,
 * with no SQL ever built from event text. */
#include "store.h"
#include "log.h"
#include "pg.h"
#include "schema.h"
#include "auditor_event.h"
#include "chain.h"
#include "checkpoint.h"
#include "metrics.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const store_stage_names[STORE_NSTAGES] = {
    "decode", "partition", "lock", "lookup", "chain", "copy", "checkpoint", "commit",
};

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Charges the time since *t to stage st and restarts the clock. */
static void stage_end(struct store *s, enum store_stage st, int64_t *t)
{
	int64_t now = mono_ns();
	metric_add(s->stage[st], (double)(now - *t) / 1e9);
	*t = now;
}

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A batch is one transaction that COPYs its rows straight into audit.audit_events (each
 * lands in its month's partition). No staging table and no ON CONFLICT: duplicates are
 * left out before the chain is computed (a skipped row must not hold a seq), so a
 * conflict here means a writer raced us outside the chain lock or an event was produced
 * twice; the batch then fails as rejected (23505) and the caller retries it with every
 * row looked up. Staging through a temp table and INSERT .. SELECT cost twice the COPY
 * (tests/bench/auditor.sh, docs/auditor.md). Nothing relies on session state such as
 * prepared statements, so a transaction-pooling PgBouncer works too. */
static const char begin_fmt[] = "BEGIN; SET LOCAL statement_timeout = %lld";
static const char timeout_fmt[] = "SET LOCAL statement_timeout = %lld";
#define COLUMNS AUDITOR_EVENT_COLUMNS ", chain_id, seq, prev_hash, hash"
static const char copy_sql[] = "COPY audit.audit_events (" COLUMNS ") FROM STDIN";
/* There is no DEFAULT partition: a month is created before its first row is written. */
static const char ensure_sql[] = "SELECT audit.ensure_month_partition($1::timestamptz)";

void store_init(struct store *s, char *url, long long statement_timeout_ms)
{
	memset(s, 0, sizeof *s);
	s->url = url;
	s->statement_timeout_ms = statement_timeout_ms;
	snprintf(s->begin_sql, sizeof s->begin_sql, begin_fmt, statement_timeout_ms);
	snprintf(s->timeout_sql, sizeof s->timeout_sql, timeout_fmt, statement_timeout_ms);
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
	PQclear(s->result);
	s->result = NULL;
	s->phase = STORE_IDLE;
}

void store_free(struct store *s)
{
	store_disconnect(s);
	free(s->buf);
	free(s->scratch);
	free(s->heads);
	s->heads = NULL;
	s->nheads = s->headscap = 0;
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
	/* Rows stored before the chains began (migration 2) are the only ones a chain
	 * without rows may already hold: without any, its first batch needs no lookup. */
	PGresult *r = PQexec(s->conn, "SELECT coalesce(sum(unchained_rows), 0) > 0 FROM "
				      "audit.chain_start");
	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
		set_why(s, "cannot read audit.chain_start", PQresultErrorMessage(r));
		log_error("cannot read audit.chain_start", LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		goto fail;
	}
	s->unchained = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
	PQclear(r);
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
/* The committed head of each chain, read after the lock (a statement of its own, so its
 * snapshot sees what the previous lock holder committed): restarts and rebalances need
 * no other state, and a rolled-back batch leaves nothing to undo in memory. A chain whose
 * rows retention has all dropped continues after its last cut, as verify expects; its
 * head offset is then unknown (NULL), so every row of the batch is looked up. */
#define HEADS_OF(chains)                                                                           \
	"SELECT c, coalesce(h.seq, x.last_seq), coalesce(h.hash, x.last_hash), k.seq, "            \
	"(extract(epoch FROM clock_timestamp() - k.signed_at) * 1000)::bigint, h.kafka_offset "    \
	"FROM " chains " LEFT JOIN LATERAL (SELECT seq, hash, kafka_offset FROM "                  \
	"audit.audit_events e WHERE e.chain_id = c ORDER BY seq DESC LIMIT 1) h ON true "          \
	"LEFT JOIN LATERAL (SELECT last_seq, last_hash FROM audit.retention_chain_cuts x WHERE "   \
	"x.chain_id = c AND h.seq IS NULL ORDER BY last_seq DESC LIMIT 1) x ON true "              \
	"LEFT JOIN LATERAL (SELECT seq, signed_at FROM audit.checkpoints k WHERE k.chain_id = c "  \
	"ORDER BY seq DESC LIMIT 1) k ON true"
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

struct store_head {
	int32_t chain;
	long long seq;
	long long offset; /* the head row's kafka_offset; -1 when the chain is empty */
	unsigned char hash[CHAIN_HASH_LEN];
	long long cp_seq;    /* the last checkpoint's seq, 0 when none */
	long long cp_age_ms; /* how long ago it was signed, -1 when none */
};

static void read_head(PGresult *r, int t, struct store_head *h)
{
	h->chain = (int32_t)strtol(PQgetvalue(r, t, 0), NULL, 10);
	h->seq = PQgetisnull(r, t, 1) ? 0 : strtoll(PQgetvalue(r, t, 1), NULL, 10);
	h->cp_seq = PQgetisnull(r, t, 3) ? 0 : strtoll(PQgetvalue(r, t, 3), NULL, 10);
	h->cp_age_ms = PQgetisnull(r, t, 4) ? -1 : strtoll(PQgetvalue(r, t, 4), NULL, 10);
	h->offset = PQgetisnull(r, t, 5) ? -1 : strtoll(PQgetvalue(r, t, 5), NULL, 10);
}

/* Signs each head that is due: GW_AUDIT_CHECKPOINT_EVENTS rows since the last
 * checkpoint, or GW_AUDIT_CHECKPOINT_SECONDS since it (a chain without one is due at
 * once). In the caller's transaction, so a checkpoint never covers uncommitted rows.
 * Returns NULL, or the failed result (or the OOM/sign failure as a PGRES_EMPTY one). */
static PGresult *sign_due(struct store *s, const struct store_head *heads, int nheads)
{
	if (!s->key)
		return NULL;
	for (int i = 0; i < nheads; i++) {
		const struct store_head *h = &heads[i];
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

static int cmp_head(const void *a, const void *b)
{
	return cmp_int32(&((const struct store_head *)a)->chain,
			 &((const struct store_head *)b)->chain);
}

static struct store_head *find_head(struct store_head *heads, int nheads, int32_t chain)
{
	struct store_head key = {.chain = chain};
	return bsearch(&key, heads, (size_t)nheads, sizeof *heads, cmp_head);
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

static int heads_reserve(struct store *s, int n)
{
	if (n <= s->headscap)
		return 0;
	struct store_head *h = realloc(s->heads, (size_t)n * sizeof *h);
	if (!h)
		return -1;
	s->heads = h;
	s->headscap = n;
	return 0;
}

/* ---- partitions ---- */

static int month_known(const struct store *s, int32_t m)
{
	for (int i = 0; i < s->nmonths; i++)
		if (s->months[i] == m)
			return 1;
	return 0;
}

/* Creates (if missing) the partition of every month in rows not yet known to exist, each
 * in its own short transaction before the batch's: a partition outlives a batch that
 * rolls back, and the batch's transaction takes no DDL lock. A month is remembered only
 * once its call succeeded; the memory is dropped whenever a batch fails, in case
 * retention dropped a partition since. */
static enum store_result ensure_months(struct store *s, struct auditor_row *const *rows, int n)
{
	for (int i = 0; i < n; i++) {
		int32_t m = rows[i]->month;
		if (month_known(s, m))
			continue;
		char ts[32];
		snprintf(ts, sizeof ts, "%04d-%02d-01T00:00:00Z", (int)(m / 12), (int)(m % 12 + 1));
		const char *params[] = {ts};
		PGresult *r = PQexecParams(s->conn, ensure_sql, 1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			enum store_result res = failed(s, r, "cannot create the month's partition");
			if (res == STORE_REJECTED)
				log_error("the database refuses a month's partition",
					  LS("month", ts), LS("event_id", rows[i]->event_id),
					  LS("error", s->why));
			PQclear(r);
			return res;
		}
		PQclear(r);
		s->months[s->nextmonth] = m;
		s->nextmonth = (s->nextmonth + 1) % STORE_MONTHS;
		if (s->nmonths < STORE_MONTHS)
			s->nmonths++;
	}
	return STORE_OK;
}

/* ---- one batch ---- */

/* BEGIN, the chains' locks and their heads, pipelined: one round trip. heads[] gets one
 * entry per chain, sorted by chain. Returns STORE_OK; otherwise the failure is logged,
 * the transaction rolled back (or the connection dropped). */
static enum store_result lock_heads(struct store *s, struct auditor_row *const *rows, int n,
				    struct store_head *heads, int *nheads)
{
	int32_t *tmp = malloc((size_t)n * sizeof *tmp);
	if (!tmp)
		goto oom;
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
	tmp = NULL;
	if (bad || buf_append(s, "}", 1) != 0)
		goto oom;

	const char *params[] = {s->buf};
	static const ExecStatusType want[] = {PGRES_COMMAND_OK, PGRES_COMMAND_OK, PGRES_TUPLES_OK,
					      PGRES_TUPLES_OK};
	PGresult *res[4] = {NULL};
	if (PQenterPipelineMode(s->conn) != 1 ||
	    PQsendQueryParams(s->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) != 1 ||
	    PQsendQueryParams(s->conn, s->timeout_sql, 0, NULL, NULL, NULL, NULL, 0) != 1 ||
	    PQsendQueryParams(s->conn, lock_sql, 1, NULL, params, NULL, NULL, 0) != 1 ||
	    PQsendQueryParams(s->conn, heads_sql, 1, NULL, params, NULL, NULL, 0) != 1 ||
	    PQpipelineSync(s->conn) != 1)
		goto lost;
	/* Each query's results end with a NULL; then comes the sync. A failed query makes
	 * the rest PGRES_PIPELINE_ABORTED. */
	int failed_at = -1;
	for (int q = 0; q < 4; q++) {
		PGresult *r;
		if (!(res[q] = PQgetResult(s->conn)))
			goto lost;
		while ((r = PQgetResult(s->conn)) != NULL)
			PQclear(r);
		if (failed_at < 0 && PQresultStatus(res[q]) != want[q])
			failed_at = q;
	}
	PGresult *sync = PQgetResult(s->conn);
	int synced = PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
	PQclear(sync);
	if (!synced || PQexitPipelineMode(s->conn) != 1)
		goto lost;
	if (failed_at >= 0) {
		enum store_result rc = failed(s, res[failed_at], "cannot lock the audit chains");
		for (int q = 0; q < 4; q++)
			PQclear(res[q]);
		rollback(s);
		return rc == STORE_OK ? STORE_RETRY : rc;
	}
	PGresult *r = res[3];
	*nheads = PQntuples(r);
	int malformed = 0;
	for (int t = 0; t < *nheads && !malformed; t++) {
		struct store_head *h = &heads[t];
		read_head(r, t, h);
		memset(h->hash, 0, sizeof h->hash);
		if (h->seq && chain_unhex(PQgetvalue(r, t, 2), h->hash) != 0) {
			log_error("chain head has a malformed hash: run `auditor verify`",
				  LI("chain", h->chain), LI("seq", h->seq));
			set_why(s, "malformed chain head: run `auditor verify`", NULL);
			malformed = 1;
		}
	}
	for (int q = 0; q < 4; q++)
		PQclear(res[q]);
	if (malformed) {
		rollback(s);
		return STORE_RETRY;
	}
	qsort(heads, (size_t)*nheads, sizeof *heads, cmp_head);
	return STORE_OK;
lost:
	for (int q = 0; q < 4; q++)
		PQclear(res[q]);
	set_why(s, PQerrorMessage(s->conn), NULL);
	log_error("cannot lock the audit chains", LS("error", s->why));
	store_disconnect(s);
	return STORE_RETRY;
oom:
	free(tmp);
	set_why(s, "out of memory", NULL);
	log_error("out of memory locking the audit chains", LI("events", n));
	return STORE_RETRY;
}

/* Marks skip[i] for rows whose event is stored already or repeated earlier in this
 * batch: those must not take a place in the chain. In the batch's transaction, under
 * the chains' locks. With STORE_DUPS_REDELIVERED only rows that may have been written
 * before are looked up: those at or below their chain's head offset (a redelivery after
 * a crash between COMMIT and the offset commit, or after a rebalance), every row of a
 * chain continued from a retention cut (its offset is unknown), and every row of a chain
 * without rows yet when rows from before the chains began exist. A row above the head's
 * offset is a message this chain has never seen. */
static enum store_result mark_duplicates(struct store *s, struct auditor_row *const *rows, int n,
					 enum store_dups dups, struct store_head *heads, int nheads,
					 int *order, char *skip)
{
	for (int i = 0; i < n; i++)
		order[i] = i;
	sort_rows = rows;
	qsort(order, (size_t)n, sizeof *order, cmp_row_id);
	s->buflen = 0;
	int asked = 0;
	if (buf_append(s, "{", 1) != 0)
		goto oom;
	for (int k = 0; k < n; k++) {
		const struct auditor_row *row = rows[order[k]];
		if (k && strcmp(row->event_id, rows[order[k - 1]]->event_id) == 0) {
			skip[order[k]] = 1;
			continue;
		}
		const struct store_head *h = find_head(heads, nheads, row->chain_id);
		if (dups == STORE_DUPS_REDELIVERED && h &&
		    ((h->offset >= 0 && row->offset > h->offset) || (h->seq == 0 && !s->unchained)))
			continue;
		if ((asked && buf_append(s, ",", 1) != 0) ||
		    buf_append(s, row->event_id, strlen(row->event_id)) != 0)
			goto oom;
		asked++;
	}
	if (buf_append(s, "}", 1) != 0)
		goto oom;
	if (!asked)
		return STORE_OK;
	const char *params[] = {s->buf};
	PGresult *r = PQexecParams(s->conn, exists_sql, 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		enum store_result rc = failed(s, r, "cannot look up stored events");
		PQclear(r);
		rollback(s);
		return rc == STORE_OK ? STORE_RETRY : rc;
	}
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
	PQclear(r);
	return STORE_OK;
oom:
	set_why(s, "out of memory", NULL);
	log_error("out of memory looking up stored events", LI("events", n));
	rollback(s);
	return STORE_RETRY;
}

/* Appends the chain columns to each new row, in batch order (which is offset order
 * within a partition), as the COPY stream in s->buf. Returns the new rows or -1. */
static long long chain_rows(struct store *s, struct auditor_row *const *rows, int n,
			    const char *skip, struct store_head *heads, int nheads)
{
	long long count = 0;
	s->buflen = 0;
	for (int i = 0; i < n; i++) {
		if (skip[i])
			continue;
		struct store_head *h = find_head(heads, nheads, rows[i]->chain_id);
		unsigned char hash[CHAIN_HASH_LEN];
		char prevhex[CHAIN_HEX_LEN + 1], hashhex[CHAIN_HEX_LEN + 1], tail[200];
		if (!h || chain_hash_copy_line(h->hash, h->chain, rows[i]->line, rows[i]->len,
					       &s->scratch, &s->scratchcap, hash) != 0)
			return -1;
		chain_hex(h->hash, prevhex);
		chain_hex(hash, hashhex);
		h->seq++;
		h->offset = rows[i]->offset;
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

/* ---- the asynchronous tail: COPY data, its result, checkpoints, COMMIT ---- */

/* Ends a started write: rolls back what is open and forgets the in-flight state. */
static enum store_result write_failed(struct store *s, PGresult *r, const char *what)
{
	enum store_result res;
	if (!s->conn || PQstatus(s->conn) != CONNECTION_OK) {
		set_why(s,
			r && *PQresultErrorMessage(r) ? PQresultErrorMessage(r)
			: s->conn                     ? PQerrorMessage(s->conn)
						      : "connection lost",
			NULL);
		log_error(what, LS("error", s->why));
		store_disconnect(s);
		res = STORE_RETRY;
	} else if (PQsetnonblocking(s->conn, 0) != 0) {
		set_why(s, PQerrorMessage(s->conn), NULL);
		log_error(what, LS("error", s->why));
		store_disconnect(s);
		res = STORE_RETRY;
	} else {
		res = failed(s, r, what);
		/* A COPY refused mid-stream still has its results to collect. */
		PGresult *x;
		while (s->conn && (x = PQgetResult(s->conn)) != NULL)
			PQclear(x);
		rollback(s);
	}
	PQclear(r);
	s->phase = STORE_IDLE;
	s->nmonths = 0; /* a partition may have been dropped: ask again */
	return res == STORE_OK ? STORE_RETRY : res;
}

/* Collects the current command's results without blocking. Returns 1 when it is
 * complete (*r: its first result, which the caller clears), 0 while more must be read,
 * -1 when the connection failed. */
static int collect(struct store *s, PGresult **r)
{
	if (PQconsumeInput(s->conn) != 1)
		return -1;
	while (!PQisBusy(s->conn)) {
		PGresult *x = PQgetResult(s->conn);
		if (!x)
			return 1;
		if (!*r)
			*r = x;
		else
			PQclear(x);
	}
	return 0;
}

enum store_result store_insert_step(struct store *s, short *want)
{
	PGresult *r = NULL;
	*want = 0;
	if (s->phase == STORE_IDLE || !s->conn)
		return write_failed(s, NULL, "audit write lost its connection");
	/* Everything queued must reach the server before its answer can come. */
	int f = PQflush(s->conn);
	if (f < 0)
		return write_failed(s, NULL, "audit COPY failed");
	if (f > 0) {
		/* Read too: the server may answer (an error) before taking all the data. */
		*want = EV_WRITE | EV_READ;
		if (PQconsumeInput(s->conn) != 1)
			return write_failed(s, NULL, "audit COPY failed");
		return STORE_PENDING;
	}
	r = s->result;
	s->result = NULL;
	int done = collect(s, &r);
	if (done < 0)
		return write_failed(s, r, "audit write failed");
	if (!done) {
		s->result = r;
		*want = EV_READ;
		return STORE_PENDING;
	}
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		return write_failed(s, r,
				    s->phase == STORE_COPYING ? "audit insert failed"
							      : "audit commit failed");
	PQclear(r);
	if (s->phase == STORE_COPYING) {
		stage_end(s, STORE_STAGE_COPY, &s->t);
		/* Checkpoints are few (one per chain per GW_AUDIT_CHECKPOINT_EVENTS): they
		 * are written synchronously, in the batch's transaction. */
		if (PQsetnonblocking(s->conn, 0) != 0)
			return write_failed(s, NULL, "audit write failed");
		if ((r = sign_due(s, s->heads, s->nheads)) != NULL) {
			if (PQresultStatus(r) != PGRES_EMPTY_QUERY)
				return write_failed(s, r, "checkpoint failed");
			PQclear(r); /* a failed signature, which set why */
			rollback(s);
			s->phase = STORE_IDLE;
			return STORE_RETRY;
		}
		stage_end(s, STORE_STAGE_CHECKPOINT, &s->t);
		if (PQsetnonblocking(s->conn, 1) != 0 ||
		    PQsendQueryParams(s->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) != 1)
			return write_failed(s, NULL, "audit commit failed");
		s->phase = STORE_COMMITTING;
		return store_insert_step(s, want);
	}
	stage_end(s, STORE_STAGE_COMMIT, &s->t);
	s->phase = STORE_IDLE;
	if (PQsetnonblocking(s->conn, 0) != 0) {
		/* Committed all the same; the next use reconnects. */
		store_disconnect(s);
	}
	return STORE_OK;
}

void store_insert_abort(struct store *s, const char *why)
{
	if (s->phase == STORE_IDLE)
		return;
	set_why(s, why, NULL);
	log_error("audit write abandoned: reconnecting", LS("error", why));
	PQclear(s->result);
	s->result = NULL;
	store_disconnect(s); /* the server rolls back whatever did not commit */
	s->phase = STORE_IDLE;
	s->nmonths = 0;
}

int store_socket(const struct store *s)
{
	return s->conn ? PQsocket(s->conn) : -1;
}

enum store_result store_insert_start(struct store *s, struct auditor_row *const *rows, int n,
				     enum store_dups dups, long long *inserted)
{
	*inserted = 0;
	if (s->phase != STORE_IDLE) {
		log_error("audit write started while one is in flight", LI("events", n));
		return STORE_RETRY;
	}
	if (store_connect(s) != STORE_OK)
		return STORE_RETRY;
	enum store_result res = STORE_OK;
	int *order = malloc((size_t)n * sizeof *order);
	char *skip = calloc((size_t)n, 1);
	long long fresh = 0;
	s->fresh = 0;
	PGresult *r = NULL;
	if (!order || !skip || heads_reserve(s, n) != 0) {
		set_why(s, "out of memory", NULL);
		log_error("out of memory writing a batch", LI("events", n));
		res = STORE_RETRY;
		goto out;
	}
	s->t = mono_ns();
	if ((res = ensure_months(s, rows, n)) != STORE_OK)
		goto out;
	stage_end(s, STORE_STAGE_PARTITION, &s->t);
	if ((res = lock_heads(s, rows, n, s->heads, &s->nheads)) != STORE_OK)
		goto out;
	stage_end(s, STORE_STAGE_LOCK, &s->t);
	res = mark_duplicates(s, rows, n, dups, s->heads, s->nheads, order, skip);
	if (res != STORE_OK)
		goto out;
	stage_end(s, STORE_STAGE_LOOKUP, &s->t);
	fresh = chain_rows(s, rows, n, skip, s->heads, s->nheads);
	if (fresh < 0) {
		set_why(s, "out of memory or a malformed row", NULL);
		log_error("cannot chain a batch", LI("events", n));
		rollback(s);
		res = STORE_RETRY;
		goto out;
	}
	stage_end(s, STORE_STAGE_CHAIN, &s->t);
	if (fresh == 0) {
		/* Only duplicates: nothing to write, nothing to sign. */
		r = PQexec(s->conn, "COMMIT");
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			res = failed(s, r, "audit commit failed");
			rollback(s);
		}
		PQclear(r);
		goto out;
	}
	r = PQexec(s->conn, copy_sql);
	if (PQresultStatus(r) != PGRES_COPY_IN) {
		s->phase = STORE_COPYING;
		res = write_failed(s, r, "audit insert failed");
		goto out;
	}
	PQclear(r);
	/* From here the loop goes on while PostgreSQL takes the rows: libpq queues them
	 * (a batch is at most BATCH_BYTES_MAX, twice that after a failed write is merged
	 * back: well within an int) and store_insert_step sends them as the socket allows. */
	s->phase = STORE_COPYING;
	if (PQsetnonblocking(s->conn, 1) != 0 ||
	    PQputCopyData(s->conn, s->buf, (int)s->buflen) != 1 ||
	    PQputCopyEnd(s->conn, NULL) != 1) {
		res = write_failed(s, NULL, "audit COPY failed");
		goto out;
	}
	s->fresh = fresh;
	res = STORE_PENDING;
out:
	if (res == STORE_OK)
		*inserted = fresh;
	else if (res != STORE_PENDING)
		s->nmonths = 0; /* a partition may have been dropped: ask again */
	free(order);
	free(skip);
	return res;
}

enum store_result store_insert(struct store *s, struct auditor_row *const *rows, int n,
			       enum store_dups dups, long long *inserted)
{
	enum store_result r = store_insert_start(s, rows, n, dups, inserted);
	while (r == STORE_PENDING) {
		short want = 0;
		r = store_insert_step(s, &want);
		if (r != STORE_PENDING)
			break;
		struct pollfd p = {
		    store_socket(s),
		    (short)((want & EV_READ ? POLLIN : 0) | (want & EV_WRITE ? POLLOUT : 0)), 0};
		int timeout = (int)(s->statement_timeout_ms + STORE_STALL_SLACK_MS);
		int k = poll(&p, 1, timeout);
		if (k == 0 || (k < 0 && errno != EINTR)) {
			store_insert_abort(s, k == 0 ? "no answer from the database"
						     : "cannot wait for the database");
			return STORE_RETRY;
		}
	}
	if (r == STORE_OK)
		*inserted = s->fresh;
	return r;
}

enum store_result store_checkpoint_idle(struct store *s)
{
	if (!s->key || s->phase != STORE_IDLE)
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
	struct store_head *heads = calloc((size_t)n + 1, sizeof *heads);
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
	if (s->phase != STORE_IDLE)
		return STORE_OK; /* a write is in flight: that is the round trip */
	if (store_connect(s) != STORE_OK)
		return STORE_RETRY;
	PGresult *r = PQexec(s->conn, "SELECT 1");
	enum store_result res = STORE_OK;
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		res = failed(s, r, "database health check failed");
	PQclear(r);
	return res;
}
