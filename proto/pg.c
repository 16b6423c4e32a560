/* PostgreSQL helpers: connecting with the service's own role, and versioned
 * migrations recorded per component. */
#include "pg.h"
#include "config.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *pg_url_redacted(const char *url)
{
	static char out[512];
	if (!url)
		return "";
	snprintf(out, sizeof out, "%s", url);
	/* postgresql://user:password@host -> postgresql://user:***@host */
	char *scheme = strstr(out, "://");
	if (scheme) {
		char *at = strchr(scheme + 3, '@');
		char *colon = strchr(scheme + 3, ':');
		if (at && colon && colon < at) {
			char rest[512];
			snprintf(rest, sizeof rest, "%s", at);
			snprintf(colon + 1, sizeof out - (size_t)(colon + 1 - out), "***%s", rest);
		}
	}
	/* key=value form: password=... */
	char *pw = strstr(out, "password=");
	if (pw) {
		char *end = strchr(pw, ' ');
		char rest[512] = "";
		if (end)
			snprintf(rest, sizeof rest, "%s", end);
		snprintf(pw + 9, sizeof out - (size_t)(pw + 9 - out), "***%s", rest);
	}
	return out;
}

PGconn *pg_connect(const char *url, const char *service)
{
	char *owned = NULL;
	if (!url) {
		if (config_secret("GW_DATABASE_URL", &owned, NULL) != 0)
			return NULL;
		url = owned;
	}
	if (!url) {
		log_error("GW_DATABASE_URL (or GW_DATABASE_URL_FILE) is not set: give a libpq "
			  "connection string; `make run` writes it to .run/env");
		return NULL;
	}
	/* Defaults first: anything the URL says overrides them. */
	const char *keys[] = {"application_name", "connect_timeout", "dbname", NULL};
	const char *vals[] = {service, "3", url, NULL};
	PGconn *c = PQconnectdbParams(keys, vals, 1);
	if (!c || PQstatus(c) != CONNECTION_OK) {
		log_error("cannot connect to PostgreSQL", LS("url", pg_url_redacted(url)),
			  LS("error", c ? PQerrorMessage(c) : "out of memory"));
		if (c)
			PQfinish(c);
		c = NULL;
	}
	free(owned);
	return c;
}

static int exec_ok(PGconn *c, const char *sql, const char *what)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);
	int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
	if (!ok)
		log_error("SQL failed", LS("step", what), LS("error", PQresultErrorMessage(r)));
	PQclear(r);
	return ok ? 0 : -1;
}

int pg_schema_version(PGconn *c, const char *component)
{
	const char *params[] = {component};
	PGresult *r = PQexecParams(
	    c,
	    "SELECT coalesce(max(version), 0) FROM public.schema_migrations WHERE component = $1",
	    1, NULL, params, NULL, NULL, 0);
	int v = -1;
	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
		v = atoi(PQgetvalue(r, 0, 0));
	else if (strstr(PQresultErrorMessage(r), "does not exist"))
		v = 0;
	else
		log_error("cannot read schema version", LS("component", component),
			  LS("error", PQresultErrorMessage(r)));
	PQclear(r);
	return v;
}

int pg_migrate(PGconn *c, const char *component, const struct pg_migration *m, int n)
{
	if (exec_ok(c,
		    "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
		    " component text NOT NULL, version int NOT NULL,"
		    " applied_at timestamptz NOT NULL DEFAULT now(),"
		    " PRIMARY KEY (component, version))",
		    "create schema_migrations") != 0)
		return -1;
	for (int i = 0; i < n; i++) {
		/* The advisory lock serialises concurrent migrators (two copies starting). */
		if (exec_ok(c, "BEGIN", "begin") != 0 ||
		    exec_ok(c, "SELECT pg_advisory_xact_lock(hashtext('gw-migrate'))", "lock") != 0)
			return -1;
		int have = pg_schema_version(c, component);
		if (have < 0) {
			exec_ok(c, "ROLLBACK", "rollback");
			return -1;
		}
		if (m[i].version <= have) {
			exec_ok(c, "COMMIT", "commit");
			continue;
		}
		char ver[16];
		snprintf(ver, sizeof ver, "%d", m[i].version);
		const char *params[] = {component, ver};
		PGresult *r = PQexec(c, m[i].sql);
		ExecStatusType st = PQresultStatus(r);
		if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
			log_error("migration failed", LS("component", component),
				  LI("version", m[i].version),
				  LS("error", PQresultErrorMessage(r)));
			PQclear(r);
			exec_ok(c, "ROLLBACK", "rollback");
			return -1;
		}
		PQclear(r);
		r = PQexecParams(c,
				 "INSERT INTO public.schema_migrations (component, version) VALUES "
				 "($1, $2::int)",
				 2, NULL, params, NULL, NULL, 0);
		st = PQresultStatus(r);
		PQclear(r);
		if (st != PGRES_COMMAND_OK || exec_ok(c, "COMMIT", "commit") != 0) {
			exec_ok(c, "ROLLBACK", "rollback");
			return -1;
		}
		log_info("migration applied", LS("component", component),
			 LI("version", m[i].version));
	}
	return 0;
}
