/* authz's PostgreSQL schema and SQL: the migrations and grants, the admin statements of
 * `authz keys`, and the paged key query shared by the start-up load and the refresh. */
#ifndef GW_AUTHZ_DB_H
#define GW_AUTHZ_DB_H

#include "keys.h"

#include <libpq-fe.h>
#include <stdint.h>

/* Rows per page of the key query. */
#define DB_KEYS_PAGE 5000

/* Keyset position in (updated_at, key_id) order. Rows younger than the settle margin
 * are read on every pass, so a transaction that commits after a newer row was already
 * read is still seen; the pass after, the cursor moves past them. */
struct db_cursor {
	int64_t settled_us; /* where the next pass starts */
	char settled_id[APIKEY_ID_HEX + 1];
	int64_t read_us; /* where the next page of this pass starts */
	char read_id[APIKEY_ID_HEX + 1];
};

/* Parameters of the key query for the next page; bufs is caller storage. */
struct db_page_params {
	char us[24], limit[16], id[APIKEY_ID_HEX + 1];
	const char *values[3];
};

extern const char DB_SQL_KEYS_PAGE[];
/* $1 principal rows, $2 group rows (JSON arrays as usage_flush_begin builds them; "[]"
 * for none): both tables in one statement, so one commit covers the flushed messages. */
extern const char DB_SQL_USAGE_UPSERT[];
/* $1 JSON array of group names, $2 today: one row per group (name, day tokens, month
 * tokens). */
extern const char DB_SQL_GROUP_QUOTA_LOAD[];
/* $1 principal, $2 today (YYYY-MM-DD): one row (day tokens, month tokens). */
extern const char DB_SQL_QUOTA_LOAD[];

/* Applies migrations (component "authz") and then the grants to role (which must exist:
 * roles are created by the deployment). Returns 0 or -1 (logged). */
int db_migrate(PGconn *c, const char *role);

/* Starts a pass at the settled position. */
void db_cursor_pass(struct db_cursor *cur);
void db_page_params(const struct db_cursor *cur, struct db_page_params *p);

/* Puts the rows of one page into the cache and advances the cursor. Returns the number of
 * rows in the page (DB_KEYS_PAGE means another page follows), or -1 on a result that is
 * not the key query's. Rows the cache refuses are counted in *refused (and logged once
 * per call with the first id). */
int db_keys_apply(const PGresult *r, struct key_cache *c, struct db_cursor *cur, int *refused);

/* Blocking load of the group quota totals for start-up (no-op without quota groups).
 * Returns 0 or -1 (logged). */
struct limiter;
int db_group_quotas_load(PGconn *conn, struct limiter *l, int64_t now_ms);

/* Blocking full load for start-up. Returns the number of keys read or -1 (logged). */
long db_keys_load(PGconn *conn, struct key_cache *c, struct db_cursor *cur);

/* `authz keys` statements. Each returns 0 or -1 (logged). */
struct db_new_key {
	const char *id;
	const char *hash_hex;
	const char *principal;
	const char *groups; /* comma-separated, "" = none */
	const char *models; /* comma-separated, "" = any */
	int64_t expires_ms; /* 0 = never */
};
/* Inserts; *existed is set when the id was already there (nothing changed), and then
 * hash_out holds the stored hash so the caller can tell a re-registration. */
int db_key_insert(PGconn *c, const struct db_new_key *k, int *existed,
		  unsigned char hash_out[APIKEY_HASH_LEN]);
/* Prints the key table to stdout (never the hash). */
int db_key_list(PGconn *c);
/* 0 revoked now, 1 was already revoked, 2 no such key, -1 error. */
int db_key_revoke(PGconn *c, const char *id, char *principal_out, size_t cap);

#endif
