/* The audit schema. Migrations are fixed SQL so every deployment records the same
 * DDL under the same version; role names vary per deployment, so the grants are a
 * separate idempotent step run after them. Later features (hash chains, signed
 * checkpoints, monthly partitions, retention) arrive as new entries in `migrations`. */
#include "schema.h"
#include "auditor_event.h"
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

/* Monthly partitions (docs/auditor.md, "Partitions"). The table is rebuilt: a plain table
 * cannot become partitioned in place. Rows move into one partition per UTC month, then
 * the old table is dropped, all in this migration's transaction. Uniqueness must include
 * the partition key: (event_id, event_time) keeps ingestion idempotent because an event
 * always carries the same time. (chain_id, seq) is indexed per partition, not unique:
 * the writer's chain lock gives each seq once and verify names a duplicate. The regex
 * CHECKs of versions 1 and 2 are gone (they cost every insert); the writer validates
 * event ids and hashes in C (auditor_event.c, chain.c) and cheap length checks remain.
 * There is no DEFAULT partition: a row for a month without one fails and the writer
 * creates it with audit.ensure_month_partition, so no catch-all ever holds rows that
 * would stop that month's partition being created. */
static const char migration_4[] =
    "ALTER TABLE audit.audit_events RENAME TO audit_events_v3;\n"
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
    "  event             json NOT NULL,\n"
    "  chain_id          int,\n"
    "  seq               bigint,\n"
    "  prev_hash         text,\n"
    "  hash              text,\n"
    "  CONSTRAINT audit_events_event_id_len CHECK (octet_length(event_id) = 32),\n"
    "  CONSTRAINT audit_events_chain_complete CHECK ((chain_id IS NULL AND seq IS NULL AND "
    "prev_hash IS NULL AND hash IS NULL) OR (chain_id IS NOT NULL AND seq >= 1 AND "
    "octet_length(prev_hash) = 64 AND octet_length(hash) = 64))\n"
    ") PARTITION BY RANGE (event_time);\n"
    /* Creating a partition with PARTITION OF would take ACCESS EXCLUSIVE on the parent
     * (waiting for every open reader, such as a long verify); CREATE + ATTACH takes only
     * SHARE UPDATE EXCLUSIVE there, which concurrent inserts and selects do not block.
     * The advisory lock makes two concurrent callers create it once. */
    "CREATE FUNCTION audit.ensure_month_partition(ts timestamptz) RETURNS void\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE\n"
    "  m    timestamp := date_trunc('month', ts AT TIME ZONE 'UTC');\n"
    "  part text := 'audit_events_' || to_char(m, 'YYYY_MM');\n"
    "  lo   text := to_char(m, 'YYYY-MM-DD') || ' 00:00:00+00';\n"
    "  hi   text := to_char(m + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00';\n"
    "BEGIN\n"
    "  IF ts IS NULL THEN\n"
    "    RAISE EXCEPTION 'audit.ensure_month_partition: ts is NULL';\n"
    "  END IF;\n"
    "  IF to_regclass('audit.' || part) IS NOT NULL THEN\n"
    "    RETURN;\n"
    "  END IF;\n"
    "  PERFORM pg_advisory_xact_lock(hashtext('gw-audit-partition'));\n"
    "  IF to_regclass('audit.' || part) IS NOT NULL THEN\n"
    "    RETURN;\n"
    "  END IF;\n"
    "  EXECUTE format('CREATE TABLE audit.%I (LIKE audit.audit_events INCLUDING DEFAULTS "
    "INCLUDING CONSTRAINTS)', part);\n"
    "  EXECUTE format('ALTER TABLE audit.audit_events ATTACH PARTITION audit.%I "
    "FOR VALUES FROM (%L) TO (%L)', part, lo, hi);\n"
    "END\n"
    "$f$;\n"
    "REVOKE ALL ON FUNCTION audit.ensure_month_partition(timestamptz) FROM PUBLIC;\n"
    "SELECT audit.ensure_month_partition(m) FROM (SELECT DISTINCT date_trunc('month', "
    "event_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS m FROM audit.audit_events_v3 "
    "UNION SELECT now() + make_interval(months => i) FROM generate_series(0, 2) AS i) AS ms;\n"
    "INSERT INTO audit.audit_events (" AUDITOR_EVENT_COLUMNS
    ", inserted_at, chain_id, seq, prev_hash, hash) SELECT " AUDITOR_EVENT_COLUMNS
    ", inserted_at, chain_id, seq, prev_hash, hash FROM audit.audit_events_v3;\n"
    "DROP TABLE audit.audit_events_v3;\n"
    /* Indexes after the rows: one build per partition instead of per-row maintenance. */
    "ALTER TABLE audit.audit_events ADD CONSTRAINT audit_events_event_id_key "
    "UNIQUE (event_id, event_time);\n"
    "CREATE INDEX audit_events_chain_seq_idx ON audit.audit_events (chain_id, seq);\n"
    "CREATE INDEX audit_events_unchained_idx ON audit.audit_events (event_id) "
    "WHERE chain_id IS NULL;\n"
    "CREATE INDEX audit_events_request_id_idx ON audit.audit_events (request_id);\n"
    "CREATE INDEX audit_events_principal_time_idx ON audit.audit_events (principal, event_time);\n"
    "CREATE INDEX audit_events_time_idx ON audit.audit_events (event_time);\n"
    "CREATE INDEX audit_events_model_time_idx ON audit.audit_events (model, event_time);\n"
    "COMMENT ON TABLE audit.audit_events IS 'The compliance log: one row per gw.audit event, "
    "written by the auditor (INSERT only, idempotent on (event_id, event_time)); partitioned "
    "by UTC month of event_time, partitions named audit_events_YYYY_MM';\n"
    "COMMENT ON COLUMN audit.audit_events.event_time IS 'When it happened (the event ts_us, "
    "UTC); the partition key';\n"
    "COMMENT ON COLUMN audit.audit_events.event IS 'The original event as received, verbatim "
    "(the hash covers it)';\n"
    "COMMENT ON COLUMN audit.audit_events.hash IS 'SHA-256(prev_hash || canonical row), hex: "
    "one chain per gw.audit partition (chain_id), seq from 1; see docs/auditor.md';\n"
    "COMMENT ON FUNCTION audit.ensure_month_partition(timestamptz) IS 'Creates the partition "
    "of the UTC month of ts if missing; idempotent, safe concurrently; the auditor calls it "
    "for each new month it writes';\n";

/* Retention (retention.h, docs/auditor.md "Retention"). Each dropped month is one cut;
 * per chain it records the seqs that went and the hash of the last one, so verify can
 * continue the chain at last_seq + 1 from that hash. Only the owner writes them. The
 * partial index finds the newest verified backup without scanning the log. */
static const char migration_5[] =
    "CREATE TABLE audit.retention_cuts (\n"
    "  cut_id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
    "  month              date NOT NULL,\n"
    "  partition_name     text NOT NULL,\n"
    "  dropped_at         timestamptz NOT NULL DEFAULT now(),\n"
    "  rows               bigint NOT NULL,\n"
    "  unchained_rows     bigint NOT NULL,\n"
    "  retention_days     int NOT NULL,\n"
    "  backup_snapshot_id text NOT NULL,\n"
    "  backup_event_id    text NOT NULL,\n"
    "  event_id           text NOT NULL\n"
    ");\n"
    "CREATE TABLE audit.retention_chain_cuts (\n"
    "  cut_id    bigint NOT NULL REFERENCES audit.retention_cuts,\n"
    "  chain_id  int NOT NULL,\n"
    "  first_seq bigint NOT NULL,\n"
    "  last_seq  bigint NOT NULL,\n"
    "  last_hash text NOT NULL,\n"
    "  rows      bigint NOT NULL,\n"
    "  PRIMARY KEY (cut_id, chain_id)\n"
    ");\n"
    "CREATE INDEX retention_chain_cuts_chain_idx ON audit.retention_chain_cuts "
    "(chain_id, last_seq);\n"
    "CREATE INDEX audit_events_backup_verify_idx ON audit.audit_events (event_time) "
    "WHERE event_type = 'backup.verify';\n"
    "COMMENT ON TABLE audit.retention_cuts IS 'Monthly partitions dropped by auditor retention: "
    "which, when, how many rows, the verified backup that covered them, the audit.retention "
    "event';\n"
    "COMMENT ON TABLE audit.retention_chain_cuts IS 'Per cut and chain: the seqs dropped and "
    "the hash of the last, where auditor verify continues the chain';\n";

static const struct pg_migration migrations[] = {
    {1, migration_1}, {2, migration_2}, {3, migration_3}, {4, migration_4}, {5, migration_5},
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
	    "REVOKE ALL ON audit.audit_events, audit.chain_start, audit.checkpoints, "
	    "audit.retention_cuts, audit.retention_chain_cuts FROM PUBLIC, %1$s, %2$s;\n"
	    "GRANT USAGE ON SCHEMA audit TO %1$s, %2$s;\n"
	    "GRANT INSERT, SELECT ON audit.audit_events, audit.checkpoints TO %1$s;\n"
	    "GRANT SELECT ON audit.checkpoints TO %2$s;\n"
	    "GRANT SELECT ON audit.audit_events, audit.chain_start, audit.retention_cuts, "
	    "audit.retention_chain_cuts TO %1$s, %2$s;\n"
	    /* pg_schema_version() at `auditor serve` start runs as the writer role. */
	    "GRANT SELECT ON public.schema_migrations TO %1$s, %2$s;\n"
	    /* The writer COPYs straight into audit_events now: take back the temp-table
	     * right older versions granted it. */
	    "REVOKE TEMPORARY ON DATABASE %3$s FROM %1$s;\n"
	    /* The writer creates a month's partition through the owner's function; the
	     * partitions themselves carry no grants, so nobody but the owner touches them
	     * except through the parent (INSERT + SELECT above). */
	    "REVOKE ALL ON FUNCTION audit.ensure_month_partition(timestamptz) "
	    "FROM PUBLIC, %1$s, %2$s;\n"
	    "GRANT EXECUTE ON FUNCTION audit.ensure_month_partition(timestamptz) TO %1$s;\n"
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

int schema_migrate(PGconn *c, int to_version)
{
	const char *auditor = config_str("GW_AUDITOR_ROLE", "gw_auditor");
	const char *compliance = config_str("GW_COMPLIANCE_ROLE", "gw_compliance");
	int n = (int)(sizeof migrations / sizeof migrations[0]);
	int latest = migrations[n - 1].version;
	if (to_version > 0 && to_version < latest) {
		while (n > 0 && migrations[n - 1].version > to_version)
			n--;
	}
	if (role_exists(c, auditor, "GW_AUDITOR_ROLE") != 0 ||
	    role_exists(c, compliance, "GW_COMPLIANCE_ROLE") != 0)
		return -1;
	if (pg_migrate(c, "audit", migrations, n) != 0) {
		log_error("audit migrations failed: nothing after the failed one was applied");
		return -1;
	}
	int v = pg_schema_version(c, "audit");
	if (v < 0)
		return -1;
	/* The grants name objects of the latest version: a partial upgrade stops before. */
	if (v < latest) {
		log_warn(
		    "audit schema left below the latest version on request: no grants applied, "
		    "and the auditor will not write until `auditor migrate` completes it",
		    LI("version", v), LI("latest", latest));
		return 0;
	}
	if (grant(c, auditor, compliance) != 0)
		return -1;
	log_info("audit schema ready", LI("version", v), LS("auditor_role", auditor),
		 LS("compliance_role", compliance));
	return 0;
}
