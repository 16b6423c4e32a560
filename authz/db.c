/* authz's schema, grants and SQL. The key query is paged in (updated_at, key_id) order
 * and serves both the blocking start-up load and the non-blocking refresh. */
#include "db.h"
#include "limiter.h"
#include "log.h"
#include "pg.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char migration_1[] =
    "CREATE SCHEMA IF NOT EXISTS authz;"
    "CREATE TABLE authz.api_keys ("
    " key_id text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),"
    " key_hash text NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),"
    " principal text NOT NULL CHECK (principal <> ''),"
    " groups text[] NOT NULL DEFAULT '{}',"
    " models text[] NOT NULL DEFAULT '{}',"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " expires_at timestamptz,"
    " revoked_at timestamptz,"
    " updated_at timestamptz NOT NULL DEFAULT now());"
    /* (updated_at, key_id): the refresh reads in that order, keyset-paged. */
    "CREATE INDEX api_keys_updated_at ON authz.api_keys (updated_at, key_id);"
    /* Any UPDATE, also one typed by hand, must reach the caches of running copies. */
    "CREATE FUNCTION authz.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS"
    " $$BEGIN NEW.updated_at := now(); RETURN NEW; END$$;"
    "CREATE TRIGGER api_keys_touch BEFORE UPDATE ON authz.api_keys"
    " FOR EACH ROW EXECUTE FUNCTION authz.touch_updated_at();"
    "CREATE TABLE authz.usage ("
    " principal text NOT NULL,"
    " day date NOT NULL,"
    " tokens bigint NOT NULL DEFAULT 0,"
    " PRIMARY KEY (principal, day));";

/* Group day/month quotas: every copy adds the usage of the group's members it counted
 * (each member's usage is counted by one copy, the group's by all of them). */
static const char migration_2[] = "CREATE TABLE authz.group_usage ("
				  " grp text NOT NULL,"
				  " day date NOT NULL,"
				  " tokens bigint NOT NULL DEFAULT 0,"
				  " PRIMARY KEY (grp, day));";

static const struct pg_migration migrations[] = {
    {1, migration_1},
    {2, migration_2},
};

/* Rows younger than 2 s are re-read every pass (see struct db_cursor). */
const char DB_SQL_KEYS_PAGE[] =
    "SELECT key_id, key_hash, principal, to_json(groups)::text, to_json(models)::text,"
    " coalesce((extract(epoch FROM expires_at) * 1000)::bigint, 0),"
    " (revoked_at IS NOT NULL)::int,"
    " (extract(epoch FROM updated_at) * 1000000)::bigint,"
    " (updated_at < now() - interval '2 seconds')::int"
    " FROM authz.api_keys"
    " WHERE (updated_at, key_id) > (timestamptz 'epoch'"
    " + ($1::bigint / 1000000) * interval '1 second'"
    " + ($1::bigint % 1000000) * interval '1 microsecond', $2::text)"
    " ORDER BY updated_at, key_id LIMIT $3::int";

const char DB_SQL_USAGE_UPSERT[] =
    "WITH p AS (INSERT INTO authz.usage AS u (principal, day, tokens)"
    " SELECT principal, day, tokens FROM json_to_recordset($1::json)"
    " AS x(principal text, day date, tokens bigint)"
    " ON CONFLICT (principal, day) DO UPDATE SET tokens = u.tokens + EXCLUDED.tokens)"
    " INSERT INTO authz.group_usage AS g (grp, day, tokens)"
    " SELECT principal, day, tokens FROM json_to_recordset($2::json)"
    " AS x(principal text, day date, tokens bigint)"
    " ON CONFLICT (grp, day) DO UPDATE SET tokens = g.tokens + EXCLUDED.tokens";

const char DB_SQL_GROUP_QUOTA_LOAD[] =
    "SELECT g.grp, coalesce(sum(u.tokens) FILTER (WHERE u.day = $2::date), 0)::bigint,"
    " coalesce(sum(u.tokens), 0)::bigint"
    " FROM json_array_elements_text($1::json) AS g(grp)"
    " LEFT JOIN authz.group_usage u ON u.grp = g.grp"
    " AND u.day >= date_trunc('month', $2::date)::date AND u.day <= $2::date"
    " GROUP BY g.grp";

/* Today's and this month's tokens of one principal ($2 = today, UTC). The month is the
 * sum of its day rows, so no second table has to be kept in step. */
const char DB_SQL_QUOTA_LOAD[] =
    "SELECT coalesce(sum(tokens) FILTER (WHERE day = $2::date), 0)::bigint,"
    " coalesce(sum(tokens), 0)::bigint FROM authz.usage"
    " WHERE principal = $1 AND day >= date_trunc('month', $2::date)::date AND day <= $2::date";

static int exec_cmd(PGconn *c, const char *sql, int n, const char *const *params, const char *what)
{
	PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(r);
	int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
	if (!ok)
		log_error("SQL failed", LS("step", what), LS("error", PQresultErrorMessage(r)));
	PQclear(r);
	return ok ? 0 : -1;
}

int db_migrate(PGconn *c, const char *role)
{
	const char *params[] = {role};
	PGresult *r = PQexecParams(c, "SELECT 1 FROM pg_roles WHERE rolname = $1", 1, NULL, params,
				   NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		log_error("cannot look up the runtime role", LS("role", role),
			  LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		return -1;
	}
	int exists = PQntuples(r) == 1;
	PQclear(r);
	if (!exists) {
		log_error("the runtime role does not exist: create it first (the deployment does, "
			  "e.g. deploy/local/db-init.sql: CREATE ROLE gw_authz LOGIN) or set "
			  "GW_AUTHZ_ROLE",
			  LS("role", role));
		return -1;
	}
	if (pg_migrate(c, "authz", migrations, (int)(sizeof migrations / sizeof migrations[0])) !=
	    0)
		return -1;
	/* Grants are re-applied on every run (idempotent), so a changed GW_AUTHZ_ROLE or a
	 * table added by a later migration is covered without a migration of its own. */
	char *ident = PQescapeIdentifier(c, role, strlen(role));
	if (!ident) {
		log_error("cannot quote the role name", LS("role", role),
			  LS("error", PQerrorMessage(c)));
		return -1;
	}
	char sql[512];
	int rc = 0;
	snprintf(sql, sizeof sql, "GRANT USAGE ON SCHEMA authz TO %s", ident);
	rc |= exec_cmd(c, sql, 0, NULL, "grant schema usage");
	/* No DELETE: keys are revoked, never removed, so the audit trail can name them. */
	snprintf(sql, sizeof sql,
		 "GRANT SELECT, INSERT, UPDATE ON authz.api_keys, authz.usage, authz.group_usage"
		 " TO %s",
		 ident);
	rc |= exec_cmd(c, sql, 0, NULL, "grant table rights");
	PQfreemem(ident);
	if (rc == 0)
		log_info("grants applied", LS("role", role));
	return rc ? -1 : 0;
}

void db_cursor_pass(struct db_cursor *cur)
{
	cur->read_us = cur->settled_us;
	memcpy(cur->read_id, cur->settled_id, sizeof cur->read_id);
}

void db_page_params(const struct db_cursor *cur, struct db_page_params *p)
{
	snprintf(p->us, sizeof p->us, "%lld", (long long)cur->read_us);
	snprintf(p->id, sizeof p->id, "%s", cur->read_id);
	snprintf(p->limit, sizeof p->limit, "%d", DB_KEYS_PAGE);
	p->values[0] = p->us;
	p->values[1] = p->id;
	p->values[2] = p->limit;
}

/* A JSON array of strings from to_json(text[]); the pointers borrow from *root. */
static int json_strings(const char *text, json_t **root, const char ***out, int *n)
{
	*root = json_loads(text, 0, NULL);
	*out = NULL;
	*n = 0;
	if (!*root || !json_is_array(*root))
		return -1;
	size_t len = json_array_size(*root);
	if (len == 0)
		return 0;
	*out = calloc(len, sizeof **out);
	if (!*out)
		return -1;
	for (size_t i = 0; i < len; i++) {
		const char *s = json_string_value(json_array_get(*root, i));
		if (!s)
			return -1;
		(*out)[i] = s;
	}
	*n = (int)len;
	return 0;
}

static int apply_row(const PGresult *r, int i, struct key_cache *c)
{
	struct key_row row = {0};
	json_t *gj = NULL, *mj = NULL;
	const char **groups = NULL, **models = NULL;
	int rc = -1;
	row.id = PQgetvalue(r, i, 0);
	row.principal = PQgetvalue(r, i, 2);
	row.expires_ms = strtoll(PQgetvalue(r, i, 5), NULL, 10);
	row.revoked = atoi(PQgetvalue(r, i, 6)) != 0;
	if (apikey_hash_unhex(PQgetvalue(r, i, 1), row.hash) == 0 &&
	    json_strings(PQgetvalue(r, i, 3), &gj, &groups, &row.ngroups) == 0 &&
	    json_strings(PQgetvalue(r, i, 4), &mj, &models, &row.nmodels) == 0) {
		row.groups = groups;
		row.models = models;
		rc = keys_put(c, &row);
	}
	free(groups);
	free(models);
	json_decref(gj);
	json_decref(mj);
	return rc;
}

int db_keys_apply(const PGresult *r, struct key_cache *c, struct db_cursor *cur, int *refused)
{
	*refused = 0;
	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQnfields(r) != 9)
		return -1;
	int n = PQntuples(r);
	const char *first_refused = NULL;
	for (int i = 0; i < n; i++) {
		if (apply_row(r, i, c) != 0) {
			if (!first_refused)
				first_refused = PQgetvalue(r, i, 0);
			(*refused)++;
		}
		/* The cursor moves past refused rows too: they are retried when next updated. */
		const char *id = PQgetvalue(r, i, 0);
		int64_t us = strtoll(PQgetvalue(r, i, 7), NULL, 10);
		cur->read_us = us;
		snprintf(cur->read_id, sizeof cur->read_id, "%s", id);
		if (atoi(PQgetvalue(r, i, 8))) {
			cur->settled_us = us;
			snprintf(cur->settled_id, sizeof cur->settled_id, "%s", id);
		}
	}
	if (*refused)
		log_error("keys not cached: malformed row or GW_AUTHZ_MAX_KEYS reached",
			  LI("refused", *refused), LS("first_key_id", first_refused),
			  LI("cached", c->count), LI("max", c->max));
	return n;
}

int db_group_quotas_load(PGconn *conn, struct limiter *l, int64_t now_ms)
{
	char *json = NULL;
	int32_t day = usage_day(now_ms);
	int n = limiter_group_sync_begin(l, day, &json);
	if (n < 0) {
		log_error("out of memory loading the group quotas");
		return -1;
	}
	if (n == 0)
		return 0;
	char today[16];
	usage_day_str(day, today, sizeof today);
	const char *params[] = {json, today};
	PGresult *r = PQexecParams(conn, DB_SQL_GROUP_QUOTA_LOAD, 2, NULL, params, NULL, NULL, 0);
	free(json);
	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQnfields(r) != 3) {
		log_error("cannot load the group quota totals: has `authz migrate` run (table "
			  "authz.group_usage), and does the role have SELECT on it?",
			  LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		limiter_group_sync_end(l, 0, day);
		return -1;
	}
	for (int i = 0; i < PQntuples(r); i++)
		limiter_group_synced(l, PQgetvalue(r, i, 0), strtoll(PQgetvalue(r, i, 1), NULL, 10),
				     strtoll(PQgetvalue(r, i, 2), NULL, 10));
	PQclear(r);
	limiter_group_sync_end(l, 1, day);
	log_info("group quota totals loaded", LI("groups", n), LS("day", today));
	return 0;
}

long db_keys_load(PGconn *conn, struct key_cache *c, struct db_cursor *cur)
{
	long total = 0;
	db_cursor_pass(cur);
	for (;;) {
		struct db_page_params p;
		db_page_params(cur, &p);
		PGresult *r =
		    PQexecParams(conn, DB_SQL_KEYS_PAGE, 3, NULL, p.values, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			log_error("cannot load API keys", LS("error", PQresultErrorMessage(r)));
			PQclear(r);
			return -1;
		}
		int refused;
		int n = db_keys_apply(r, c, cur, &refused);
		PQclear(r);
		total += n;
		if (n < DB_KEYS_PAGE)
			return total;
	}
}

int db_key_insert(PGconn *c, const struct db_new_key *k, int *existed,
		  unsigned char hash_out[APIKEY_HASH_LEN])
{
	char expires[24];
	snprintf(expires, sizeof expires, "%lld", (long long)k->expires_ms);
	const char *params[] = {k->id, k->hash_hex, k->principal, k->groups, k->models, expires};
	*existed = 0;
	PGresult *r = PQexecParams(
	    c,
	    "INSERT INTO authz.api_keys (key_id, key_hash, principal, groups, models, expires_at)"
	    " VALUES ($1, $2, $3,"
	    " coalesce(string_to_array(nullif($4, ''), ','), '{}'),"
	    " coalesce(string_to_array(nullif($5, ''), ','), '{}'),"
	    " CASE WHEN $6::bigint = 0 THEN NULL ELSE timestamptz 'epoch'"
	    " + ($6::bigint / 1000) * interval '1 second'"
	    " + ($6::bigint % 1000) * interval '1 millisecond' END)"
	    " ON CONFLICT (key_id) DO NOTHING",
	    6, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		log_error("cannot store the API key", LS("key_id", k->id),
			  LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		return -1;
	}
	int inserted = atoi(PQcmdTuples(r));
	PQclear(r);
	if (inserted == 1)
		return 0;
	*existed = 1;
	const char *idp[] = {k->id};
	r = PQexecParams(c, "SELECT key_hash FROM authz.api_keys WHERE key_id = $1", 1, NULL, idp,
			 NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 ||
	    apikey_hash_unhex(PQgetvalue(r, 0, 0), hash_out) != 0) {
		log_error("cannot read the existing API key", LS("key_id", k->id),
			  LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		return -1;
	}
	PQclear(r);
	return 0;
}

static const char *or_dash(const char *s, const char *dash)
{
	return (s && *s) ? s : dash;
}

int db_key_list(PGconn *c)
{
	PGresult *r =
	    PQexec(c, "SELECT key_id, principal, array_to_string(groups, ','),"
		      " array_to_string(models, ','),"
		      " to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
		      " to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
		      " to_char(revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
		      " FROM authz.api_keys ORDER BY created_at, key_id");
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		log_error("cannot list API keys", LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		return -1;
	}
	static const char *const head[] = {"ID",      "PRINCIPAL", "GROUPS", "MODELS",
					   "CREATED", "EXPIRES",   "REVOKED"};
	/* Empty groups print as "-", empty models as "*" (any model). */
	static const char *const dash[] = {"-", "-", "-", "*", "-", "-", "-"};
	int w[7];
	int n = PQntuples(r);
	for (int f = 0; f < 7; f++) {
		w[f] = (int)strlen(head[f]);
		for (int i = 0; i < n; i++) {
			int l = (int)strlen(or_dash(PQgetvalue(r, i, f), dash[f]));
			if (l > w[f])
				w[f] = l;
		}
	}
	for (int f = 0; f < 7; f++)
		printf("%-*s%s", f < 6 ? w[f] : 0, head[f], f < 6 ? "  " : "\n");
	for (int i = 0; i < n; i++)
		for (int f = 0; f < 7; f++)
			printf("%-*s%s", f < 6 ? w[f] : 0, or_dash(PQgetvalue(r, i, f), dash[f]),
			       f < 6 ? "  " : "\n");
	PQclear(r);
	if (fflush(stdout) != 0) {
		log_error("cannot write the key list to stdout");
		return -1;
	}
	return 0;
}

int db_key_revoke(PGconn *c, const char *id, char *principal_out, size_t cap)
{
	const char *params[] = {id};
	principal_out[0] = 0;
	PGresult *r =
	    PQexecParams(c,
			 "UPDATE authz.api_keys SET revoked_at = now(), updated_at = now()"
			 " WHERE key_id = $1 AND revoked_at IS NULL RETURNING principal",
			 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		log_error("cannot revoke the API key", LS("key_id", id),
			  LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		return -1;
	}
	if (PQntuples(r) == 1) {
		snprintf(principal_out, cap, "%s", PQgetvalue(r, 0, 0));
		PQclear(r);
		return 0;
	}
	PQclear(r);
	r = PQexecParams(c, "SELECT principal FROM authz.api_keys WHERE key_id = $1", 1, NULL,
			 params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		log_error("cannot look up the API key", LS("key_id", id),
			  LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		return -1;
	}
	int rc = 2;
	if (PQntuples(r) == 1) {
		snprintf(principal_out, cap, "%s", PQgetvalue(r, 0, 0));
		rc = 1;
	}
	PQclear(r);
	return rc;
}
