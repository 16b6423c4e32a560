/* The audit schema. Migrations are fixed SQL so every deployment records the same
 * DDL under the same version; role names vary per deployment, so the grants are a
 * separate idempotent step run after them. Later features (hash chains, signed
 * checkpoints, monthly partitions, retention) arrive as new entries in `migrations`. */
#include "schema.h"
#include "config.h"
#include "log.h"
#include "pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Columns follow NIST SP 800-53 AU-3 (what, when, where, source, outcome, identity)
 * and the event members of docs/CONTRACT.md; `event` keeps the whole original. */
static const char migration_1[] =
    "CREATE SCHEMA audit;\n"
    "REVOKE ALL ON SCHEMA audit FROM PUBLIC;\n"
    "CREATE TABLE audit.audit_events (\n"
    "  event_id          text NOT NULL,\n"
    "  request_id        text,\n"
    "  event_type        text NOT NULL,\n"
    "  event_time        timestamptz NOT NULL,\n"
    "  service           text,\n"
    "  instance          text,\n"
    "  client_addr       text,\n"
    "  principal         text,\n"
    "  idp               text,\n"
    "  groups            text,\n"
    "  route             text,\n"
    "  model             text,\n"
    "  endpoint          text,\n"
    "  outcome           text,\n"
    "  status            int,\n"
    "  reason            text,\n"
    "  prompt_tokens     bigint,\n"
    "  completion_tokens bigint,\n"
    "  total_tokens      bigint,\n"
    "  latency_us        bigint,\n"
    "  ttft_us           bigint,\n"
    "  body_sha256       text,\n"
    "  body_size         bigint,\n"
    "  resp_sha256       text,\n"
    "  resp_size         bigint,\n"
    "  kafka_partition   int,\n"
    "  kafka_offset      bigint,\n"
    "  inserted_at       timestamptz NOT NULL DEFAULT now(),\n"
    "  event             jsonb NOT NULL,\n"
    "  CONSTRAINT audit_events_event_id_key UNIQUE (event_id),\n"
    "  CONSTRAINT audit_events_event_id_hex CHECK (event_id ~ '^[0-9a-f]{32}$')\n"
    ");\n"
    "CREATE INDEX audit_events_request_id_idx ON audit.audit_events (request_id);\n"
    "CREATE INDEX audit_events_principal_time_idx ON audit.audit_events (principal, event_time);\n"
    "CREATE INDEX audit_events_time_idx ON audit.audit_events (event_time);\n"
    "CREATE INDEX audit_events_model_time_idx ON audit.audit_events (model, event_time);\n"
    "COMMENT ON TABLE audit.audit_events IS 'The compliance log: one row per gw.audit event, "
    "written by the auditor (INSERT only, idempotent on event_id)';\n"
    "COMMENT ON COLUMN audit.audit_events.event_time IS 'When it happened (the event ts_us, "
    "UTC)';\n"
    "COMMENT ON COLUMN audit.audit_events.event IS 'The original event as received. The typed "
    "columns index it: text there is capped (principal, model 1024 bytes) and a malformed "
    "member is NULL, never the record lost';\n";

/* The hash chains (chain.h, docs/auditor.md). event becomes json: it keeps the message
 * text verbatim, which the chain hashes; jsonb would reformat it. Rows already stored
 * keep no chain; chain_start records how many, so verify can tell them from rows put in
 * later. hash and prev_hash are lower-case hex: readable in psql and manifests. */
static const char migration_2[] =
    "ALTER TABLE audit.audit_events\n"
    "  ALTER COLUMN event TYPE json USING event::json,\n"
    "  ADD COLUMN chain_id  int,\n"
    "  ADD COLUMN seq       bigint,\n"
    "  ADD COLUMN prev_hash text,\n"
    "  ADD COLUMN hash      text,\n"
    "  ADD CONSTRAINT audit_events_chain_seq_key UNIQUE (chain_id, seq),\n"
    "  ADD CONSTRAINT audit_events_chain_complete CHECK ((chain_id IS NULL AND seq IS NULL "
    "AND prev_hash IS NULL AND hash IS NULL) OR (chain_id IS NOT NULL AND seq >= 1 AND "
    "prev_hash ~ '^[0-9a-f]{64}$' AND hash ~ '^[0-9a-f]{64}$'));\n"
    /* verify lists unchained rows; only those are in this index, so it stays tiny. */
    "CREATE INDEX audit_events_unchained_idx ON audit.audit_events (event_id) "
    "WHERE chain_id IS NULL;\n"
    "CREATE TABLE audit.chain_start AS SELECT now() AS migrated_at, count(*) AS unchained_rows "
    "FROM audit.audit_events;\n"
    "COMMENT ON COLUMN audit.audit_events.hash IS 'SHA-256(prev_hash || canonical row), hex: "
    "one chain per gw.audit partition (chain_id), seq from 1; see docs/auditor.md';\n"
    "COMMENT ON TABLE audit.chain_start IS 'Rows stored before the hash chains began "
    "(migration 2): auditor verify counts the unchained rows against it';\n";

/* Signed chain heads (checkpoint.h). The signature covers chain_id, seq, hash and
 * signed_at as text (checkpoint_message); key_id names the key that made it. */
static const char migration_3[] =
    "CREATE TABLE audit.checkpoints (\n"
    "  chain_id  int NOT NULL,\n"
    "  seq       bigint NOT NULL,\n"
    "  hash      text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),\n"
    "  signed_at timestamptz NOT NULL,\n"
    "  key_id    text NOT NULL,\n"
    "  signature text NOT NULL CHECK (signature ~ '^[0-9a-f]{128}$'),\n"
    "  PRIMARY KEY (chain_id, seq)\n"
    ");\n"
    "COMMENT ON TABLE audit.checkpoints IS 'Ed25519-signed chain heads, written by the auditor "
    "every GW_AUDIT_CHECKPOINT_EVENTS events or GW_AUDIT_CHECKPOINT_SECONDS; checked by auditor "
    "verify';\n";

static const struct pg_migration migrations[] = {
    {1, migration_1},
    {2, migration_2},
    {3, migration_3},
};

static int role_exists(PGconn *c, const char *role, const char *setting)
{
	const char *params[] = {role};
	PGresult *r = PQexecParams(c, "SELECT 1 FROM pg_roles WHERE rolname = $1", 1, NULL, params,
				   NULL, NULL, 0);
	int rc = -1;
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		log_error("cannot look up role", LS("role", role),
			  LS("error", PQresultErrorMessage(r)));
	else if (PQntuples(r) == 0)
		log_error("role does not exist: create it first (deploy/local/db-init.sql does "
			  "locally), or name another with the setting",
			  LS("role", role), LS("setting", setting));
	else
		rc = 0;
	PQclear(r);
	return rc;
}

static int exec_ok(PGconn *c, const char *sql, const char *step)
{
	PGresult *r = PQexec(c, sql);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	if (!ok)
		log_error("audit schema step failed", LS("step", step),
			  LS("error", PQresultErrorMessage(r)));
	PQclear(r);
	return ok ? 0 : -1;
}

/* Least privilege, stated in full every run so a drifted grant is put back: the writer
 * may only add and read rows, compliance may only read. Nobody but the owner may
 * change a row (DESIGN.md, security invariants). */
static int grant(PGconn *c, const char *auditor, const char *compliance)
{
	char *a = PQescapeIdentifier(c, auditor, strlen(auditor));
	char *q = PQescapeIdentifier(c, compliance, strlen(compliance));
	char *db = PQescapeIdentifier(c, PQdb(c), strlen(PQdb(c)));
	char *sql = NULL;
	int rc = -1;
	if (!a || !q || !db) {
		log_error("cannot quote role name", LS("error", PQerrorMessage(c)));
		goto out;
	}
	const char *fmt =
	    "BEGIN;\n"
	    "REVOKE ALL ON audit.audit_events, audit.chain_start, audit.checkpoints "
	    "FROM PUBLIC, %1$s, %2$s;\n"
	    "GRANT USAGE ON SCHEMA audit TO %1$s, %2$s;\n"
	    "GRANT INSERT, SELECT ON audit.audit_events, audit.checkpoints TO %1$s;\n"
	    "GRANT SELECT ON audit.checkpoints TO %2$s;\n"
	    "GRANT SELECT ON audit.audit_events, audit.chain_start TO %1$s, %2$s;\n"
	    /* pg_schema_version() at `auditor serve` start runs as the writer role. */
	    "GRANT SELECT ON public.schema_migrations TO %1$s, %2$s;\n"
	    /* The writer stages each batch in a temp table (COPY, then INSERT). */
	    "GRANT TEMPORARY ON DATABASE %3$s TO %1$s;\n"
	    "COMMIT;";
	if (asprintf(&sql, fmt, a, q, db) < 0) {
		sql = NULL;
		goto out;
	}
	if (exec_ok(c, sql, "grant") != 0) {
		exec_ok(c, "ROLLBACK", "rollback");
		goto out;
	}
	rc = 0;
out:
	free(sql);
	PQfreemem(a);
	PQfreemem(q);
	PQfreemem(db);
	return rc;
}

int schema_migrate(PGconn *c)
{
	const char *auditor = config_str("GW_AUDITOR_ROLE", "gw_auditor");
	const char *compliance = config_str("GW_COMPLIANCE_ROLE", "gw_compliance");
	if (role_exists(c, auditor, "GW_AUDITOR_ROLE") != 0 ||
	    role_exists(c, compliance, "GW_COMPLIANCE_ROLE") != 0)
		return -1;
	if (pg_migrate(c, "audit", migrations, sizeof migrations / sizeof migrations[0]) != 0) {
		log_error("audit migrations failed: nothing after the failed one was applied");
		return -1;
	}
	if (grant(c, auditor, compliance) != 0)
		return -1;
	int v = pg_schema_version(c, "audit");
	if (v < 0)
		return -1;
	log_info("audit schema ready", LI("version", v), LS("auditor_role", auditor),
		 LS("compliance_role", compliance));
	return 0;
}
