/* backup-agent: encrypted, verified PostgreSQL snapshots of the gateway's database.
 * Subcommands: serve, snapshot, list, verify, restore, decrypt, prune. */
#include <errno.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "audit.h"
#include "config.h"
#include "kafka.h"
#include "log.h"
#include "restore.h"
#include "retention.h"
#include "runtime.h"
#include "settings.h"
#include "snapshot.h"
#include "store.h"

#define SERVICE            "backup-agent"
#define CLI_AUDIT_FLUSH_MS 10000

static const char usage[] =
    "usage: backup-agent COMMAND\n"
    "\n"
    "  serve                       one active copy per database (advisory lock; others\n"
    "                              stand by): snapshot every GW_BACKUP_INTERVAL seconds\n"
    "                              and on gw.control {\"command\":\"backup\"}, verify\n"
    "                              each (GW_BACKUP_VERIFY), apply retention; admin on\n"
    "                              GW_ADMIN_LISTEN (default 127.0.0.1:9104)\n"
    "  snapshot                    take one encrypted snapshot now; prints its id\n"
    "  list [--format table|jsonl] list snapshots, newest first, checking each dump\n"
    "  verify ID [--format text|json] [--no-audit]\n"
    "                              check the checksum, decrypt, restore into a scratch\n"
    "                              database (GW_BACKUP_ADMIN_URL), compare the audit\n"
    "                              tables with the manifest, run `auditor verify` on it,\n"
    "                              drop it\n"
    "  restore ID [--target URL] [--force] [--no-owner]\n"
    "                              restore into URL (or GW_BACKUP_TARGET_URL[_FILE]);\n"
    "                              refuses a database with user tables without --force\n"
    "  decrypt ID > FILE.dump      write the plain pg_dump archive (for pg_restore)\n"
    "  prune                       apply GW_BACKUP_KEEP_LAST / GW_BACKUP_KEEP_DAYS now\n"
    "  --help                      this text\n"
    "\n"
    "Snapshots are pg_dump custom-format archives encrypted with AES-256-GCM (key in\n"
    "GW_BACKUP_KEY_FILE: 64 hex digits) in GW_BACKUP_DIR (default ./.run/backups), each\n"
    "<id>.dump with an <id>.json manifest. The database is GW_BACKUP_DATABASE_URL (or\n"
    "_FILE), else GW_DATABASE_URL. docs/backup-agent.md has every setting.\n";

static int usage_error(void)
{
	fputs(usage, stderr);
	return 2;
}

/* ---- snapshot ---- */

/* The CLI's run. Lives in static storage for the whole command. */
struct cli {
	struct runtime rt;
	struct snapshot snap;
	struct snapshot_result res;
	int have_res;
	struct kafka_producer producer;
	int producer_up;
	/* One done for every event: it only counts answers. */
	struct kafka_done audit_done;
	int audit_sent, audit_acked, audit_failed;
	char who[64];
};

static void cli_snapshot_done(void *arg, const struct snapshot_result *r)
{
	struct cli *c = arg;
	c->res = *r;
	c->have_res = 1;
	runtime_exit(&c->rt);
}

static void cli_stop(void *arg)
{
	struct cli *c = arg;
	snapshot_abort(&c->snap, "interrupted by a signal");
}

static void cli_audit_done(struct kafka_done *d, rd_kafka_resp_err_t err)
{
	struct cli *c = (struct cli *)((char *)d - offsetof(struct cli, audit_done));
	if (err)
		c->audit_failed++;
	else
		c->audit_acked++;
}

/* Opens the producer when GW_KAFKA_BROKERS is set; 0 also when it is not (then nothing is
 * audited, and cli_audit_close says so). c->rt must be initialised. */
static int cli_audit_open(struct cli *c)
{
	struct passwd *pw = getpwuid(geteuid());
	snprintf(c->who, sizeof c->who, "%s", pw && pw->pw_name ? pw->pw_name : "unknown");
	c->audit_done.fn = cli_audit_done;
	if (!config_str("GW_KAFKA_BROKERS", NULL))
		return 0;
	if (kafka_producer_init(&c->producer, c->rt.base, config_instance(SERVICE)) != 0) {
		kafka_producer_close(&c->producer, 0);
		return -1;
	}
	c->producer_up = 1;
	return 0;
}

static void cli_audit_emit(struct cli *c, struct audit_event *ev, const char *id)
{
	if (!c->producer_up)
		return;
	ev->principal = c->who;
	c->audit_sent++;
	if (audit_emit(&c->producer, ev, NULL, &c->audit_done) != 0) {
		c->audit_failed++;
		log_error("cannot emit the audit event", LS("type", ev->type),
			  LS("snapshot_id", id));
	}
}

/* Flushes; 0 when every event was acknowledged or no broker is configured. */
static int cli_audit_close(struct cli *c, const char *type, const char *id)
{
	if (!c->producer_up) {
		log_info("GW_KAFKA_BROKERS is not set: no audit event was written",
			 LS("type", type), LS("snapshot_id", id));
		return 0;
	}
	int left = kafka_producer_close(&c->producer, CLI_AUDIT_FLUSH_MS);
	c->producer_up = 0;
	if (left > 0 || c->audit_failed || c->audit_acked != c->audit_sent) {
		log_error("audit events were not delivered: check GW_KAFKA_BROKERS",
			  LS("type", type), LS("snapshot_id", id));
		return -1;
	}
	if (c->audit_sent)
		log_info("audit event delivered", LS("type", type), LS("snapshot_id", id),
			 LI("events", c->audit_sent));
	return 0;
}

/* The backup.snapshot event; 0 when it was acknowledged or no broker is configured. */
static int cli_audit(struct cli *c)
{
	if (cli_audit_open(c) != 0)
		return -1;
	if (c->producer_up) {
		c->audit_sent++;
		if (snapshot_audit(&c->producer, &c->res, "cli", c->who, &c->audit_done) != 0)
			c->audit_failed++;
	}
	return cli_audit_close(c, "backup.snapshot", c->res.id);
}

static int cmd_snapshot(int argc, char **argv)
{
	if (argc > 2)
		return usage_error();
	static struct cli c; /* static: the loop's callbacks point into it */
	struct settings cfg;
	struct store st = {.dirfd = -1};
	int rc = 1, snap_up = 0;
	if (runtime_setup_cli(SERVICE) != 0)
		return 1;
	if (settings_load(&cfg, SETTINGS_DB | SETTINGS_KEY) != 0 ||
	    runtime_init(&c.rt, SERVICE) != 0 || store_open(&st, cfg.dir, 1) != 0)
		goto out;
	snap_up = 1;
	if (snapshot_init(&c.snap, c.rt.base, &st, cfg.url, cfg.pg_dump, &cfg.key,
			  cli_snapshot_done, &c) != 0)
		goto out;
	c.rt.on_stop = cli_stop;
	c.rt.arg = &c;
	snapshot_start(&c.snap);
	if (runtime_run(&c.rt) != 0 || !c.have_res)
		goto out;
	/* The password is not needed any more. */
	settings_free(&cfg);
	if (c.res.ok) {
		if (printf("%s\n", c.res.id) < 0 || fflush(stdout) != 0) {
			log_error("cannot write the snapshot id to stdout",
				  LS("snapshot_id", c.res.id), LS("error", strerror(errno)));
			goto audit;
		}
		rc = 0;
	}
audit:
	if (cli_audit(&c) != 0)
		rc = 1;
out:
	if (snap_up)
		snapshot_free(&c.snap);
	settings_free(&cfg);
	store_close(&st);
	runtime_free(&c.rt);
	return rc;
}

/* ---- list ---- */

static void list_table(const struct store_entry *v, size_t n)
{
	printf("%-23s  %-20s  %14s  %-12s  %s\n", "ID", "CREATED_AT", "SIZE", "SHA256", "STATUS");
	for (size_t i = 0; i < n; i++) {
		const struct store_entry *e = &v[i];
		char size[32], sha[16];
		long long sz = e->has_manifest ? e->m.size : e->actual_size;
		if (sz >= 0)
			snprintf(size, sizeof size, "%lld", sz);
		else
			snprintf(size, sizeof size, "-");
		snprintf(sha, sizeof sha, "%.12s", e->has_manifest ? e->m.sha256 : "-");
		printf("%-23s  %-20s  %14s  %-12s  %s", e->id,
		       e->has_manifest ? e->m.created_at : "-", size, sha,
		       store_status_name(e->status));
		if (e->status == STORE_SIZE_MISMATCH)
			printf(" (file has %lld bytes)", e->actual_size);
		else if (e->status == STORE_CORRUPT)
			printf(" (%s)", e->why);
		putchar('\n');
	}
}

static int list_jsonl(const struct store_entry *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct store_entry *e = &v[i];
		json_t *o =
		    json_pack("{s:s,s:s}", "id", e->id, "status", store_status_name(e->status));
		if (!o)
			return -1;
		int bad = 0;
		if (e->has_manifest) {
			const struct manifest *m = &e->m;
			bad |= json_object_set_new(o, "created_at", json_string(m->created_at));
			bad |= json_object_set_new(o, "size", json_integer(m->size));
			bad |= json_object_set_new(o, "sha256", json_string(m->sha256));
			bad |= json_object_set_new(o, "database", json_string(m->database));
			bad |= json_object_set_new(o, "encrypted", json_boolean(m->encrypted));
		}
		bad |= json_object_set_new(o, "file_size",
					   e->actual_size >= 0 ? json_integer(e->actual_size)
							       : json_null());
		if (e->status == STORE_CORRUPT)
			bad |= json_object_set_new(o, "error", json_string(e->why));
		char *s = bad ? NULL : json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		json_decref(o);
		if (!s)
			return -1;
		puts(s);
		free(s);
	}
	return 0;
}

static int cmd_list(int argc, char **argv)
{
	const char *format = "table";
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--format") == 0 && i + 1 < argc)
			format = argv[++i];
		else if (strncmp(argv[i], "--format=", 9) == 0)
			format = argv[i] + 9;
		else
			return usage_error();
	}
	if (strcmp(format, "table") != 0 && strcmp(format, "jsonl") != 0)
		return usage_error();
	if (runtime_setup_cli(SERVICE) != 0)
		return 1;
	struct settings cfg;
	struct store st = {.dirfd = -1};
	struct store_entry *v = NULL;
	size_t n = 0;
	struct stat sb;
	int rc = 1;
	if (settings_load(&cfg, 0) != 0)
		goto out;
	/* No directory yet means no snapshot yet, not an error. */
	if (!(stat(cfg.dir, &sb) != 0 && errno == ENOENT)) {
		if (store_open(&st, cfg.dir, 0) != 0 || store_list(&st, &v, &n) != 0)
			goto out;
	}
	if (strcmp(format, "table") == 0)
		list_table(v, n);
	else if (list_jsonl(v, n) != 0) {
		log_error("cannot encode the listing");
		goto out;
	}
	if (fflush(stdout) != 0) {
		log_error("cannot write the listing", LS("error", strerror(errno)));
		goto out;
	}
	rc = 0;
out:
	free(v);
	store_close(&st);
	settings_free(&cfg);
	return rc;
}

/* ---- verify, restore, decrypt, prune ---- */

static void on_stop_signal(int sig)
{
	restore_stop = 1;
}

/* After runtime_init (whose evsignals only act inside the loop): SIGINT/SIGTERM stop the
 * blocking work at its next chunk, which then cleans up (kills pg_restore, drops the
 * scratch database) and exits 1. A dead pg_restore is an EPIPE, not a signal. */
static void cli_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static json_t *result_json(const char *id, const struct restore_result *r)
{
	json_t *o = json_pack("{s:s,s:s,s:I,s:I}", "id", id, "outcome", r->ok ? "ok" : "error",
			      "duration_ms", (json_int_t)r->duration_ms, "plain_size",
			      (json_int_t)r->plain_size);
	if (!o)
		return NULL;
	if (!r->ok)
		json_object_set_new(o, "error", json_string(r->error));
	if (r->chain[0])
		json_object_set_new(o, "chain", json_string(r->chain));
	json_object_set_new(o, "chain_checked", json_boolean(r->chain_checked));
	if (r->scratch[0]) {
		json_object_set_new(o, "scratch_database", json_string(r->scratch));
		json_object_set_new(o, "scratch_dropped", json_boolean(r->scratch_dropped));
	}
	return o;
}

/* A verified snapshot's chain heads (the manifest's, which verify just compared with the
 * restored copy) go into the result and the backup.verify event: the auditor's retention
 * drops a month only when a verified backup's heads cover every row of it. */
static void add_audit_heads(struct store *st, const char *id, json_t *o)
{
	struct manifest *m = malloc(sizeof *m);
	char why[256];
	json_error_t jerr;
	if (!m || store_read_manifest(st, id, m, why, sizeof why) != 0) {
		log_warn("verified, but the manifest cannot be read again for its audit heads",
			 LS("snapshot_id", id), LS("error", m ? why : "out of memory"));
		free(m);
		return;
	}
	json_t *audit = m->audit[0] ? json_loads(m->audit, 0, &jerr) : NULL;
	json_t *heads = json_object_get(audit, "heads");
	const char *source = json_string_value(json_object_get(audit, "source"));
	if (json_is_array(heads) && source && strcmp(source, "chain") == 0)
		json_object_set(o, "audit_heads", heads);
	json_decref(audit);
	free(m);
}

/* The audit event for a verify or restore from the command line. */
static int cli_audit_result(struct cli *c, const char *type, const char *id,
			    const struct restore_result *r, json_t *extra)
{
	if (cli_audit_open(c) != 0)
		return -1;
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = type;
	ev.outcome = r->ok ? "ok" : "error";
	ev.reason = r->ok ? NULL : r->error;
	ev.extra = extra;
	json_object_set_new(extra, "trigger", json_string("cli"));
	cli_audit_emit(c, &ev, id);
	return cli_audit_close(c, type, id);
}

static int cmd_verify(int argc, char **argv)
{
	const char *id = NULL, *format = "text";
	int audit = 1;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--format") == 0 && i + 1 < argc)
			format = argv[++i];
		else if (strcmp(argv[i], "--no-audit") == 0)
			audit = 0;
		else if (!id && argv[i][0] != '-')
			id = argv[i];
		else
			return usage_error();
	}
	if (!id || (strcmp(format, "text") != 0 && strcmp(format, "json") != 0))
		return usage_error();
	static struct cli c;
	struct settings cfg;
	struct store st = {.dirfd = -1};
	struct restore_result r;
	int rc = 1;
	memset(&r, 0, sizeof r);
	if (runtime_setup_cli(SERVICE) != 0)
		return 1;
	if (settings_load(&cfg, SETTINGS_KEY_OPT | SETTINGS_ADMIN | SETTINGS_RESTORE) != 0 ||
	    runtime_init(&c.rt, SERVICE) != 0 || store_open(&st, cfg.dir, 0) != 0)
		goto out;
	cli_signals();
	log_info("verifying", LS("snapshot_id", id), LS("pg_restore", cfg.pg_restore),
		 LS("auditor", cfg.auditor[0] ? cfg.auditor : "(none)"));
	restore_verify(&cfg, &st, id, &r);
	json_t *o = result_json(id, &r);
	if (!o) {
		log_error("out of memory", LS("snapshot_id", id));
		goto out;
	}
	if (r.ok)
		add_audit_heads(&st, id, o);
	if (strcmp(format, "json") == 0) {
		char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		if (s)
			puts(s);
		free(s);
	} else if (r.ok) {
		printf(
		    "snapshot %s verified: checksum ok, decrypted and restored (%lld bytes) into "
		    "%s, audit tables match the manifest; chain: %s; scratch database dropped\n",
		    id, r.plain_size, r.scratch, r.chain);
	} else {
		printf("%s\n", r.error);
	}
	if (fflush(stdout) != 0)
		log_error("cannot write to stdout", LS("error", strerror(errno)));
	if (r.ok)
		rc = 0;
	if (audit && cli_audit_result(&c, "backup.verify", id, &r, o) != 0)
		rc = 1;
	json_decref(o);
out:
	store_close(&st);
	settings_free(&cfg);
	runtime_free(&c.rt);
	return rc;
}

static int cmd_restore(int argc, char **argv)
{
	const char *id = NULL, *target = NULL;
	int force = 0, no_owner = 0;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--target") == 0 && i + 1 < argc)
			target = argv[++i];
		else if (strcmp(argv[i], "--force") == 0)
			force = 1;
		else if (strcmp(argv[i], "--no-owner") == 0)
			no_owner = 1;
		else if (!id && argv[i][0] != '-')
			id = argv[i];
		else
			return usage_error();
	}
	if (!id)
		return usage_error();
	static struct cli c;
	struct settings cfg;
	struct store st = {.dirfd = -1};
	struct restore_result r;
	char *env_target = NULL;
	int rc = 1;
	memset(&r, 0, sizeof r);
	if (runtime_setup_cli(SERVICE) != 0)
		return 1;
	if (settings_load(&cfg, SETTINGS_KEY_OPT | SETTINGS_RESTORE) != 0 ||
	    runtime_init(&c.rt, SERVICE) != 0 || store_open(&st, cfg.dir, 0) != 0)
		goto out;
	if (!target) {
		if (config_secret("GW_BACKUP_TARGET_URL", &env_target, NULL) != 0)
			goto out;
		target = env_target;
	} else {
		PQconninfoOption *opts = PQconninfoParse(target, NULL);
		for (PQconninfoOption *o = opts; o && o->keyword; o++)
			if (strcmp(o->keyword, "password") == 0 && o->val)
				log_warn(
				    "--target holds a password, which other users can see in ps: "
				    "prefer GW_BACKUP_TARGET_URL_FILE or PGPASSWORD");
		PQconninfoFree(opts);
	}
	if (!target) {
		log_error("no target: give --target URL or GW_BACKUP_TARGET_URL(_FILE)",
			  LS("snapshot_id", id));
		goto out;
	}
	cli_signals();
	restore_into(&cfg, &st, id, target, force, no_owner, &r);
	if (r.ok)
		printf("snapshot %s restored (%lld bytes of archive); audit tables match the "
		       "manifest\n",
		       id, r.plain_size);
	else
		printf("%s\n", r.error);
	if (fflush(stdout) != 0)
		log_error("cannot write to stdout", LS("error", strerror(errno)));
	rc = r.ok ? 0 : 1;
	json_t *o = result_json(id, &r);
	if (o) {
		json_object_set_new(o, "force", json_boolean(force));
		if (cli_audit_result(&c, "backup.restore", id, &r, o) != 0)
			rc = 1;
		json_decref(o);
	}
out:
	if (env_target) {
		explicit_bzero(env_target, strlen(env_target));
		free(env_target);
	}
	store_close(&st);
	settings_free(&cfg);
	runtime_free(&c.rt);
	return rc;
}

static int cmd_decrypt(int argc, char **argv)
{
	if (argc != 3 || argv[2][0] == '-')
		return usage_error();
	const char *id = argv[2];
	struct settings cfg;
	struct store st = {.dirfd = -1};
	struct restore_result r;
	int rc = 1;
	if (runtime_setup_cli(SERVICE) != 0)
		return 1;
	if (settings_load(&cfg, SETTINGS_KEY_OPT) != 0 || store_open(&st, cfg.dir, 0) != 0)
		goto out;
	cli_signals();
	if (restore_decrypt(&cfg, &st, id, STDOUT_FILENO, &r) == 0) {
		log_info("decrypted", LS("snapshot_id", id), LI("bytes", r.plain_size));
		rc = 0;
	}
out:
	store_close(&st);
	settings_free(&cfg);
	return rc;
}

static void prune_deleted(void *arg, const struct store_entry *e)
{
	struct cli *c = arg;
	json_t *extra = json_pack("{s:s,s:s,s:s}", "snapshot_id", e->id, "status",
				  store_status_name(e->status), "trigger", "cli");
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "backup.retention";
	ev.outcome = "ok";
	ev.reason = "deleted: beyond GW_BACKUP_KEEP_LAST and older than GW_BACKUP_KEEP_DAYS";
	ev.extra = extra;
	printf("deleted %s\n", e->id);
	cli_audit_emit(c, &ev, e->id);
	json_decref(extra);
}

/* Holds the backup lock while pruning, so it never races the active serve (which prunes
 * after each snapshot anyway). */
static int cmd_prune(int argc, char **argv)
{
	if (argc != 2)
		return usage_error();
	static struct cli c;
	struct settings cfg;
	struct store st = {.dirfd = -1};
	PGconn *lock = NULL;
	int rc = 1;
	if (runtime_setup_cli(SERVICE) != 0)
		return 1;
	if (settings_load(&cfg, SETTINGS_DB | SETTINGS_SERVE) != 0 ||
	    runtime_init(&c.rt, SERVICE) != 0 || store_open(&st, cfg.dir, 0) != 0)
		goto out;
	const char *keys[] = {"dbname", "fallback_application_name", "connect_timeout", NULL};
	const char *vals[] = {cfg.url, "backup-agent", "15", NULL};
	lock = PQconnectdbParams(keys, vals, 1);
	if (!lock || PQstatus(lock) != CONNECTION_OK) {
		log_error("cannot connect to take the backup lock",
			  LS("error", lock ? PQerrorMessage(lock) : "out of memory"));
		goto out;
	}
	char sql[96];
	snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%lld)", cfg.lock_key);
	PGresult *res = PQexec(lock, sql);
	int got = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
		  strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	if (!got) {
		log_error("another backup-agent holds the backup lock: it applies retention after "
			  "each snapshot; stop it to prune by hand");
		goto out;
	}
	if (cli_audit_open(&c) != 0)
		goto out;
	int n = retention_apply(&st, cfg.keep_last, cfg.keep_days, time(NULL), prune_deleted, &c);
	if (fflush(stdout) != 0)
		log_error("cannot write to stdout", LS("error", strerror(errno)));
	rc = n < 0 ? 1 : 0;
	log_info("prune done", LI("deleted", n), LI("keep_last", cfg.keep_last),
		 LI("keep_days", cfg.keep_days));
	if (cli_audit_close(&c, "backup.retention", "-") != 0)
		rc = 1;
out:
	PQfinish(lock);
	store_close(&st);
	settings_free(&cfg);
	runtime_free(&c.rt);
	return rc;
}

/* ---- serve ---- */

static int cmd_serve(int argc, char **argv)
{
	if (argc > 2)
		return usage_error();
	static struct runtime rt;
	static struct agent a;
	struct settings cfg;
	int rc = 1, agent_up = 0;
	memset(&cfg, 0, sizeof cfg);
	if (runtime_setup(&rt, SERVICE, "127.0.0.1:9104") != 0)
		goto out;
	if (settings_load(&cfg, SETTINGS_DB | SETTINGS_SERVE | SETTINGS_KEY) != 0)
		goto out;
	/* What each verify will need, checked now rather than after the first snapshot. */
	if (cfg.verify && settings_load_more(&cfg, SETTINGS_ADMIN | SETTINGS_RESTORE) != 0)
		goto out;
	agent_up = 1;
	if (agent_init(&a, &rt, &cfg) != 0)
		goto out;
	if (runtime_run(&rt) != 0)
		goto out;
	rc = 0;
out:
	if (agent_up)
		agent_free(&a);
	settings_free(&cfg);
	runtime_free(&rt);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage_error();
	const char *cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		fputs(usage, stdout);
		return 0;
	}
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0) {
			fputs(usage, stdout);
			return 0;
		}
	}
	if (strcmp(cmd, "serve") == 0)
		return cmd_serve(argc, argv);
	if (strcmp(cmd, "snapshot") == 0)
		return cmd_snapshot(argc, argv);
	if (strcmp(cmd, "list") == 0)
		return cmd_list(argc, argv);
	if (strcmp(cmd, "verify") == 0)
		return cmd_verify(argc, argv);
	if (strcmp(cmd, "restore") == 0)
		return cmd_restore(argc, argv);
	if (strcmp(cmd, "decrypt") == 0)
		return cmd_decrypt(argc, argv);
	if (strcmp(cmd, "prune") == 0)
		return cmd_prune(argc, argv);
	return usage_error();
}
