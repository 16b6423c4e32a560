/* The auditor's PostgreSQL writer: a batch is one transaction, COPY then one INSERT,
 * with no SQL ever built from event text. */
#include "store.h"
#include "log.h"
#include "pg.h"
#include "schema.h"
#include "auditor_event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
static const char copy_sql[] = "COPY audit_batch (" AUDITOR_EVENT_COLUMNS ") FROM STDIN";
static const char insert_sql[] =
    "INSERT INTO audit.audit_events (" AUDITOR_EVENT_COLUMNS ") SELECT " AUDITOR_EVENT_COLUMNS
    " FROM audit_batch ON CONFLICT (event_id) DO NOTHING";

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

enum store_result store_insert(struct store *s, const char *rows, size_t len, long long *inserted)
{
	*inserted = 0;
	if (store_connect(s) != STORE_OK)
		return STORE_RETRY;
	enum store_result res = STORE_OK;
	PGresult *r = PQexec(s->conn, s->begin_sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		goto failed;
	PQclear(r);
	r = PQexec(s->conn, copy_sql);
	if (PQresultStatus(r) != PGRES_COPY_IN)
		goto failed;
	PQclear(r);
	/* A batch is at most BATCH_BYTES_MAX (16 MiB) of rows: well within an int. */
	if (PQputCopyData(s->conn, rows, (int)len) != 1 || PQputCopyEnd(s->conn, NULL) != 1) {
		set_why(s, PQerrorMessage(s->conn), NULL);
		log_error("audit COPY failed", LS("error", s->why));
		store_disconnect(s);
		return STORE_RETRY;
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
	*inserted = strtoll(PQcmdTuples(r), NULL, 10);
	PQclear(r);
	r = PQexec(s->conn, "COMMIT");
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		goto failed;
	PQclear(r);
	return STORE_OK;
failed:
	/* A COPY refused mid-stream still has its error result to collect. */
	res = failed(s, r, "audit insert failed");
	PQclear(r);
	if (s->conn)
		while ((r = PQgetResult(s->conn)) != NULL)
			PQclear(r);
	rollback(s);
	*inserted = 0;
	return res;
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
