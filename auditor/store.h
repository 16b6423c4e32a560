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
	char *buf; /* owned: the batch's id list, then its COPY stream; reused */
	size_t buflen, bufcap;
	char *scratch; /* owned: chain_hash_copy_line's */
	size_t scratchcap;
	/* Checkpoints: key borrowed from main, NULL when GW_AUDIT_SIGNING_KEY_FILE is unset. */
	const struct checkpoint_key *key;
	long long cp_events, cp_ms;
	long long checkpoints; /* signed so far, for the metric */
};

/* Takes ownership of url (may be NULL: pg_connect then reads GW_DATABASE_URL). */
void store_init(struct store *s, char *url, long long statement_timeout_ms);
/* Connects when disconnected, sets the statement timeout and checks that the audit
 * schema is at least SCHEMA_VERSION. STORE_OK when usable. */
enum store_result store_connect(struct store *s);
struct auditor_row;
struct checkpoint_key;
/* Writes rows (batch order = offset order per partition) in one transaction, each new
 * one linked into its partition's hash chain; events whose id is already stored (or
 * repeated in rows) are skipped and take no place in a chain. *inserted: new rows. */
enum store_result store_insert(struct store *s, struct auditor_row *const *rows, int n,
			       long long *inserted);
/* Signs the heads of chains idle for GW_AUDIT_CHECKPOINT_SECONDS since their last
 * checkpoint, so a quiet tail is covered too. STORE_OK when there was nothing to do. */
enum store_result store_checkpoint_idle(struct store *s);
/* A round trip on an idle connection, so /ready notices a database that went away. */
enum store_result store_ping(struct store *s);
void store_disconnect(struct store *s);
void store_free(struct store *s);

#endif
