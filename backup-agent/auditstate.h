/* The audit log's state as one snapshot sees it: row counts of every table in the audit
 * schema and the hash-chain heads (or, before the auditor keeps chains, each gw.audit
 * partition's highest offset and row count). Written into the manifest at snapshot time
 * and recomputed on the restored copy by verify, with the same SQL. */
#ifndef BACKUP_AUDITSTATE_H
#define BACKUP_AUDITSTATE_H

#include <libpq-fe.h>

/* Lists the audit tables with their row counts and which kind of head they carry. */
const char *auditstate_catalog_sql(void);

/* From the catalog query's result: the heads query (malloc'd, caller frees; NULL when
 * there is nothing to ask) and the source name ("chain", "partition_offsets", "none").
 * -1 on allocation failure. */
int auditstate_heads_sql(const PGresult *catalog, char **sql, const char **source);

/* The manifest's audit section as compact JSON (malloc'd, caller frees); heads may be
 * NULL when there was no heads query. NULL on allocation failure. */
char *auditstate_json(const PGresult *catalog, const PGresult *heads, const char *source);

/* Compares the "tables" and "heads" of two audit sections. 0 when equal; else -1 with
 * what differs in why. */
int auditstate_compare(const char *expected, const char *actual, char *why, size_t whycap);

#endif
