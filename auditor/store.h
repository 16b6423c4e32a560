/* The auditor's side of PostgreSQL: one connection, the idempotent batch INSERT, and
 * telling a database that is away (retry later) from rows it refuses (dead letter). */
#ifndef GW_STORE_H
#define GW_STORE_H

#include <libpq-fe.h>
#include <stddef.h>

enum store_result {
	STORE_OK,
	STORE_RETRY,    /* unreachable, restarting, misconfigured: keep the rows, retry */
	STORE_REJECTED, /* the rows themselves were refused (SQLSTATE class 22, 23, 54) */
};

/* Owned by the ingest object. libpq calls are synchronous: connect is bounded by
 * pg_connect's connect_timeout and every statement by statement_timeout. */
struct store {
	PGconn *conn; /* owned; NULL while disconnected */
	char *url;    /* owned; holds a credential, never logged (pg_url_redacted) */
	long long statement_timeout_ms;
	char why[256]; /* the last failure, for /ready and logs; "" when healthy */
	char sqlstate[6];
	int outdated; /* connected, but the audit schema is older than SCHEMA_VERSION */
	char begin_sql[320];
};

/* Takes ownership of url (may be NULL: pg_connect then reads GW_DATABASE_URL). */
void store_init(struct store *s, char *url, long long statement_timeout_ms);
/* Connects when disconnected, sets the statement timeout and checks that the audit
 * schema is at least SCHEMA_VERSION. STORE_OK when usable. */
enum store_result store_connect(struct store *s);
/* Writes rows (auditor_event_map lines, concatenated) in one transaction; events whose
 * id is already stored are skipped. *inserted: the new rows. */
enum store_result store_insert(struct store *s, const char *rows, size_t len, long long *inserted);
/* A round trip on an idle connection, so /ready notices a database that went away. */
enum store_result store_ping(struct store *s);
void store_disconnect(struct store *s);
void store_free(struct store *s);

#endif
