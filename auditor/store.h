/* The auditor's side of PostgreSQL: one connection, the idempotent batch INSERT, and
 * telling a database that is away (retry later) from rows it refuses (dead letter). */
#ifndef GW_STORE_H
#define GW_STORE_H

#include <event2/event.h>
#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

struct metric;

/* Where a batch's time goes, for gw_auditor_write_seconds_total{stage=...}. */
enum store_stage {
	STORE_STAGE_DECODE,    /* ingest: JSON validation and the COPY line */
	STORE_STAGE_PARTITION, /* audit.ensure_month_partition for a month not seen yet */
	STORE_STAGE_LOCK,      /* BEGIN, the chains' locks and heads */
	STORE_STAGE_LOOKUP,    /* the stored-event lookup of possible redeliveries */
	STORE_STAGE_CHAIN,     /* hashing and the COPY stream, in the auditor */
	STORE_STAGE_COPY,
	STORE_STAGE_CHECKPOINT,
	STORE_STAGE_COMMIT,
	STORE_NSTAGES
};
extern const char *const store_stage_names[STORE_NSTAGES];

#define STORE_MONTHS 16

enum store_result {
	STORE_OK,
	STORE_RETRY,    /* unreachable, restarting, misconfigured: keep the rows, retry */
	STORE_REJECTED, /* the rows themselves were refused (SQLSTATE class 22, 23, 54) */
	STORE_PENDING,  /* store_insert_start: the rest is in flight, see store_insert_step */
};

/* Where a started write is. */
enum store_phase { STORE_IDLE, STORE_COPYING, STORE_COMMITTING };

/* A write in flight that the server does not answer for statement_timeout plus this
 * long is abandoned (the connection dropped, so the server rolls it back). */
#define STORE_STALL_SLACK_MS 5000

struct store_head;

/* Owned by the ingest object. libpq calls are synchronous: connect is bounded by
 * pg_connect's connect_timeout and every statement by statement_timeout. */
struct store {
	PGconn *conn; /* owned; NULL while disconnected */
	char *url;    /* owned; holds a credential, never logged (pg_url_redacted) */
	long long statement_timeout_ms;
	char why[256]; /* the last failure, for /ready and logs; "" when healthy */
	char sqlstate[6];
	int unchained;        /* rows from before the chains began exist (audit.chain_start) */
	int outdated;         /* connected, but the audit schema is older than SCHEMA_VERSION */
	char begin_sql[96];   /* BEGIN; SET LOCAL statement_timeout (one simple query) */
	char timeout_sql[64]; /* the SET LOCAL alone, for the pipelined BEGIN */
	char *buf; /* owned: the batch's id and chain lists, then its COPY stream; reused */
	size_t buflen, bufcap;
	char *scratch; /* owned: chain_hash_copy_line's */
	size_t scratchcap;
	/* Checkpoints: key borrowed from main, NULL when GW_AUDIT_SIGNING_KEY_FILE is unset. */
	const struct checkpoint_key *key;
	long long cp_events, cp_ms;
	long long checkpoints;               /* signed so far, for the metric */
	struct metric *stage[STORE_NSTAGES]; /* registry-owned; NULL: not measured */
	/* UTC months (year * 12 + month - 1) whose partition is known to exist; a ring. */
	int32_t months[STORE_MONTHS];
	int nmonths, nextmonth;
	/* The write in flight (store_insert_start .. store_insert_step). */
	enum store_phase phase;
	struct store_head *heads; /* owned: the batch's chain heads; reused */
	int nheads, headscap;
	PGresult *result; /* owned: the first result of the command being read */
	long long fresh;  /* rows the write inserts (the last one's, once it is OK) */
	int64_t t;        /* the current stage's start, for stage[] */
};

/* Takes ownership of url (may be NULL: pg_connect then reads GW_DATABASE_URL). */
void store_init(struct store *s, char *url, long long statement_timeout_ms);
/* Connects when disconnected, sets the statement timeout and checks that the audit
 * schema is at least SCHEMA_VERSION. STORE_OK when usable. */
enum store_result store_connect(struct store *s);
struct auditor_row;
struct checkpoint_key;
/* How store_insert finds the events already stored. */
enum store_dups {
	/* Only rows at or below their chain's head offset (redeliveries after a crash or a
	 * rebalance) are looked up; a duplicate at a new offset (a producer that sent an
	 * event twice) is caught by the unique key: the batch is then STORE_REJECTED with
	 * SQLSTATE 23505, and the caller retries it with STORE_DUPS_ALL. */
	STORE_DUPS_REDELIVERED,
	STORE_DUPS_ALL, /* every row is looked up */
};

/* Writes rows (batch order = offset order per partition) in one transaction, each new
 * one linked into its partition's hash chain; events whose id is already stored (or
 * repeated in rows) are skipped and take no place in a chain. *inserted: new rows.
 * Blocks until the transaction is over. */
enum store_result store_insert(struct store *s, struct auditor_row *const *rows, int n,
			       enum store_dups dups, long long *inserted);
/* The same without waiting for PostgreSQL to take the rows: the short steps (partitions,
 * locks, heads, lookup, chain) run now, then the COPY data and the COMMIT are left in
 * flight and STORE_PENDING is returned (rows are not used after this call; their offsets
 * must not be stored before the write is OK). Any other result is final, as for
 * store_insert. */
enum store_result store_insert_start(struct store *s, struct auditor_row *const *rows, int n,
				     enum store_dups dups, long long *inserted);
/* Advances the write in flight when store_socket(s) is ready for *want (EV_READ and/or
 * EV_WRITE): STORE_PENDING while it goes on, else the outcome (STORE_OK: s->fresh rows
 * are committed). */
enum store_result store_insert_step(struct store *s, short *want);
/* Gives up the write in flight (a stall): drops the connection, so nothing of it commits
 * unless the COMMIT already had; a retry's lookup then skips what did. */
void store_insert_abort(struct store *s, const char *why);
int store_socket(const struct store *s);
/* Signs the heads of chains idle for GW_AUDIT_CHECKPOINT_SECONDS since their last
 * checkpoint, so a quiet tail is covered too. STORE_OK when there was nothing to do. */
enum store_result store_checkpoint_idle(struct store *s);
/* A round trip on an idle connection, so /ready notices a database that went away. */
enum store_result store_ping(struct store *s);
void store_disconnect(struct store *s);
void store_free(struct store *s);

#endif
