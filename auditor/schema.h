/* The audit schema: versioned migrations (pg_migrate, component "audit") and the
 * grants to the runtime roles, which `auditor migrate` (re)applies on every run. */
#ifndef GW_SCHEMA_H
#define GW_SCHEMA_H

#include <libpq-fe.h>

/* The schema version this binary reads and writes. */
#define SCHEMA_VERSION 5

/* Checks that the roles exist, applies pending migrations (up to to_version when it is
 * positive: tests and staged upgrades; 0 = all) and, at the latest version, the grants.
 * Role names come from GW_AUDITOR_ROLE and GW_COMPLIANCE_ROLE. Returns 0 or -1 (logged,
 * saying what to fix). c must be connected as a role that may create schemas and grant. */
int schema_migrate(PGconn *c, int to_version);

#endif
