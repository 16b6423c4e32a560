/* auditor: consumes gw.audit into the compliance log in PostgreSQL (`serve`), owns
 * the audit schema (`migrate`) and answers compliance queries (`query`). */
#include "api.h"
#include "checkpoint.h"
#include "config.h"
#include "ingest.h"
#include "log.h"
#include "pg.h"
#include "query.h"
#include "report.h"
#include "retention.h"
#include "runtime.h"
#include "schema.h"
#include "verify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
	fputs(
	    "usage: auditor serve | migrate | query | verify | report | retention [flags] | "
	    "--help\n"
	    "  serve    consume gw.audit into audit.audit_events (admin on GW_ADMIN_LISTEN,\n"
	    "           default 127.0.0.1:9103: /health /ready /metrics)\n"
	    "  migrate [--to VERSION]  create or upgrade the audit schema and grant the runtime\n"
	    "           roles (--to: stop at VERSION, no grants; for staged upgrades and tests)\n"
	    "  query    print stored events; `auditor query --help` for its flags\n"
	    "  verify   check every hash chain; `auditor verify --help` for its flags\n"
	    "  report   requests, denials, errors, tokens by principal|model|endpoint|day\n"
	    "  retention [--dry-run]  drop months past GW_AUDIT_RETENTION_DAYS that a verified\n"
	    "           backup covers; `auditor retention --help`\n"
	    "environment:\n"
	    "  GW_DATABASE_URL[_FILE]        libpq URL of the writer role (serve, query)\n"
	    "  GW_DATABASE_ADMIN_URL[_FILE]  migrations and partitions (migrate, retention; serve\n"
	    "           migrates first and runs the partition/retention job when set)\n"
	    "  GW_AUDIT_RETENTION_DAYS (0: keep forever), GW_AUDIT_RETENTION_INTERVAL_S (3600)\n"
	    "  GW_AUDITOR_ROLE, GW_COMPLIANCE_ROLE  roles granted INSERT+SELECT / SELECT\n"
	    "  GW_KAFKA_BROKERS, GW_KAFKA_PROPERTIES, GW_AUDITOR_GROUP (auditor),\n"
	    "  GW_AUDITOR_FETCH_WAIT_MS (50), GW_AUDIT_BATCH (1000), GW_AUDIT_FLUSH_MS (20),\n"
	    "  GW_AUDITOR_STATEMENT_TIMEOUT_MS (10000), GW_ADMIN_LISTEN, GW_LOG_LEVEL\n"
	    "  GW_AUDIT_SIGNING_KEY_FILE (Ed25519 PEM; unset: no checkpoints),\n"
	    "  GW_AUDIT_CHECKPOINT_EVENTS (10000), GW_AUDIT_CHECKPOINT_SECONDS (60)\n"
	    "  GW_AUDIT_VERIFY_KEY_FILE (verify; default: the signing key's public half)\n"
	    "  GW_AUDIT_API_KEY[_FILE] (enables GET /audit/events, /audit/report on the admin\n"
	    "  port), GW_AUDIT_API_DATABASE_URL[_FILE] (GW_DATABASE_URL), "
	    "GW_AUDIT_API_TIMEOUT_MS\n",
	    f);
}

/* Migrations run with the admin role, never the writer's. */
static int migrate_with(const char *url, int to_version)
{
	PGconn *c = pg_connect(url, "auditor");
	if (!c)
		return -1;
	int rc = schema_migrate(c, to_version);
	PQfinish(c);
	return rc;
}

static int admin_url(char **url)
{
	if (config_secret("GW_DATABASE_ADMIN_URL", url, NULL) != 0)
		return -1;
	return 0;
}

static int cmd_migrate(int argc, char **argv)
{
	char *url = NULL;
	int to = 0;
	if (argc == 4 && strcmp(argv[2], "--to") == 0) {
		char *end;
		long v = strtol(argv[3], &end, 10);
		if (*argv[3] == 0 || *end || v < 1 || v > 1000) {
			usage(stderr);
			return 2;
		}
		to = (int)v;
	} else if (argc != 2) {
		usage(stderr);
		return 2;
	}
	if (runtime_setup_cli("auditor") != 0 || admin_url(&url) != 0)
		return 1;
	if (!url && config_secret("GW_DATABASE_URL", &url, NULL) != 0)
		return 1;
	if (!url) {
		log_error("GW_DATABASE_ADMIN_URL (or GW_DATABASE_URL) is not set: give a libpq URL "
			  "of a role that may create the audit schema");
		return 1;
	}
	int rc = migrate_with(url, to);
	explicit_bzero(url, strlen(url));
	free(url);
	return rc == 0 ? 0 : 1;
}

static int read_config(struct ingest_config *cfg)
{
	long long batch, flush, wait, stmt, cpe, cps;
	if (config_int("GW_AUDIT_BATCH", 1000, 1, 100000, &batch) != 0 ||
	    config_int("GW_AUDIT_FLUSH_MS", 20, 0, 60000, &flush) != 0 ||
	    config_int("GW_AUDITOR_FETCH_WAIT_MS", 50, 0, 10000, &wait) != 0 ||
	    config_int("GW_AUDITOR_STATEMENT_TIMEOUT_MS", 10000, 100, 600000, &stmt) != 0 ||
	    config_int("GW_AUDIT_CHECKPOINT_EVENTS", 10000, 1, 100000000, &cpe) != 0 ||
	    config_int("GW_AUDIT_CHECKPOINT_SECONDS", 60, 1, 86400, &cps) != 0)
		return -1;
	cfg->cp_events = cpe;
	cfg->cp_ms = cps * 1000;
	cfg->batch_max = (int)batch;
	cfg->flush_ms = (int)flush;
	cfg->fetch_wait_ms = (int)wait;
	cfg->statement_ms = stmt;
	cfg->group = config_str("GW_AUDITOR_GROUP", "auditor");
	return 0;
}

static int cmd_serve(void)
{
	static struct runtime rt;
	static struct ingest in;
	static struct checkpoint_key key;
	static struct api api;
	static struct retention_janitor janitor;
	struct ingest_config cfg;
	char *url = NULL, *admin = NULL;
	int rc = 1;

	if (runtime_setup(&rt, "auditor", "127.0.0.1:9103") != 0 || read_config(&cfg) != 0 ||
	    admin_url(&admin) != 0 || config_secret("GW_DATABASE_URL", &url, NULL) != 0)
		goto out;
	if (api_init(&api, &rt) != 0)
		goto out;
	const char *keyfile = config_str("GW_AUDIT_SIGNING_KEY_FILE", NULL);
	if (keyfile && *keyfile) {
		if (checkpoint_key_load(&key, keyfile, 1) != 0)
			goto out;
		cfg.key = &key;
		log_info("signing checkpoints", LS("key_id", key.key_id),
			 LI("every_events", cfg.cp_events), LI("every_ms", cfg.cp_ms));
	} else {
		cfg.key = NULL;
		log_warn("GW_AUDIT_SIGNING_KEY_FILE is not set: no signed checkpoints, so rows cut "
			 "from a chain's tail cannot be detected");
	}
	if (!url) {
		log_error(
		    "GW_DATABASE_URL (or GW_DATABASE_URL_FILE) is not set: give the libpq URL "
		    "of the auditor's own role (gw_auditor)");
		goto out;
	}
	if (admin) {
		if (migrate_with(admin, 0) != 0) {
			log_error("cannot migrate the audit schema with GW_DATABASE_ADMIN_URL");
			goto out;
		}
		/* Partitions ahead and retention need the owner: the janitor keeps the URL. */
		int j = retention_janitor_start(&janitor, &rt, admin);
		admin = NULL;
		if (j != 0)
			goto out;
	} else {
		long long days = 0;
		if (retention_days_config(&days) != 0)
			goto out;
		if (days > 0)
			log_warn("GW_AUDIT_RETENTION_DAYS is set but GW_DATABASE_ADMIN_URL is not: "
				 "serve cannot drop partitions; run `auditor retention` with the "
				 "admin URL (cron)");
	}
	if (ingest_init(&in, &rt, &cfg, url) != 0) {
		url = NULL; /* owned by the store now */
		goto out;
	}
	url = NULL;
	rt.on_stop = ingest_stop;
	rt.ready = ingest_ready;
	rt.arg = &in;
	if (runtime_run(&rt) == 0)
		rc = 0;
out:
	retention_janitor_free(&janitor);
	ingest_free(&in);
	api_free(&api);
	checkpoint_key_free(&key);
	runtime_free(&rt);
	if (admin) {
		explicit_bzero(admin, strlen(admin));
		free(admin);
	}
	if (url) {
		explicit_bzero(url, strlen(url));
		free(url);
	}
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	if ((strcmp(cmd, "serve") == 0 || strcmp(cmd, "migrate") == 0) && argc == 3 &&
	    strcmp(argv[2], "--help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(cmd, "serve") == 0 && argc == 2)
		return cmd_serve();
	if (strcmp(cmd, "migrate") == 0)
		return cmd_migrate(argc, argv);
	if (strcmp(cmd, "query") == 0) {
		for (int i = 2; i < argc; i++)
			if (strcmp(argv[i], "--help") == 0)
				return query_main(argc - 1, argv + 1);
		if (runtime_setup_cli("auditor") != 0)
			return 1;
		return query_main(argc - 1, argv + 1);
	}
	if (strcmp(cmd, "report") == 0) {
		for (int i = 2; i < argc; i++)
			if (strcmp(argv[i], "--help") == 0)
				return report_main(argc - 1, argv + 1);
		if (runtime_setup_cli("auditor") != 0)
			return 1;
		return report_main(argc - 1, argv + 1);
	}
	if (strcmp(cmd, "verify") == 0) {
		for (int i = 2; i < argc; i++)
			if (strcmp(argv[i], "--help") == 0)
				return verify_main(argc - 1, argv + 1);
		if (runtime_setup_cli("auditor") != 0)
			return 3;
		return verify_main(argc - 1, argv + 1);
	}
	if (strcmp(cmd, "retention") == 0) {
		for (int i = 2; i < argc; i++)
			if (strcmp(argv[i], "--help") == 0)
				return retention_main(argc - 1, argv + 1);
		if (runtime_setup_cli("auditor") != 0)
			return 1;
		return retention_main(argc - 1, argv + 1);
	}
	usage(stderr);
	return 2;
}
