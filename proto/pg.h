/* PostgreSQL connection helpers shared by authz, auditor and backup-agent. */
#ifndef GW_PG_H
#define GW_PG_H

#include <libpq-fe.h>

/* Connects with GW_DATABASE_URL (or GW_DATABASE_URL_FILE) unless url is given; sets
 * application_name to the service and a short connect timeout. NULL on failure (logged
 * without the password). */
PGconn *pg_connect(const char *url, const char *service);
/* The URL with any password replaced by "***", for logs. Static buffer. */
const char *pg_url_redacted(const char *url);
/* Runs a migration list inside one transaction, tracked in schema_migrations under
 * `component`. Each entry is one SQL script; applied in order, each once. */
struct pg_migration {
	int version;
	const char *sql;
};
int pg_migrate(PGconn *c, const char *component, const struct pg_migration *m, int n);
/* Latest applied version for component, 0 when none, -1 on error. */
int pg_schema_version(PGconn *c, const char *component);

#endif
