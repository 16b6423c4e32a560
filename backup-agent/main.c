/* backup-agent: PostgreSQL snapshots of the gateway's database (pg_dump custom format,
 * manifest with size and SHA-256). Subcommands: serve, snapshot, list. */
#include <errno.h>
#include <jansson.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "audit.h"
#include "config.h"
#include "log.h"
#include "runtime.h"
#include "settings.h"
#include "snapshot.h"
#include "store.h"

#define SERVICE            "backup-agent"
#define CLI_AUDIT_FLUSH_MS 10000

static const char usage[] =
    "usage: backup-agent COMMAND\n"
    "\n"
    "  serve                       snapshot every GW_BACKUP_INTERVAL seconds and on\n"
    "                              gw.control {\"command\":\"backup\"}; admin on\n"
    "                              GW_ADMIN_LISTEN (default 127.0.0.1:9104)\n"
    "  snapshot                    take one snapshot now; prints its id\n"
    "  list [--format table|jsonl] list snapshots, newest first, checking each dump\n"
    "  --help                      this text\n"
    "\n"
    "Snapshots are pg_dump custom-format archives in GW_BACKUP_DIR (default\n"
    "./.run/backups), each <id>.dump with an <id>.json manifest. The database is\n"
    "GW_BACKUP_DATABASE_URL (or _FILE), else GW_DATABASE_URL; pg_dump is GW_PG_DUMP.\n";

static int usage_error(void)
{
	fputs(usage, stderr);
	return 2;
}

/* ---- snapshot ---- */

/* The CLI's run. Lives on main's stack for the whole command. */
struct cli {
	struct runtime rt;
	struct snapshot snap;
	struct snapshot_result res;
	int have_res;
	struct kafka_done audit_done;
	int audit_acked; /* 1 acknowledged, -1 failed, 0 no answer */
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
	c->audit_acked = err ? -1 : 1;
}

/* 0 when the event was acknowledged or no broker is configured. */
static int cli_audit(struct cli *c)
{
	if (!config_str("GW_KAFKA_BROKERS", NULL)) {
		log_info("GW_KAFKA_BROKERS is not set: no backup.snapshot audit event was written",
			 LS("snapshot_id", c->res.id));
		return 0;
	}
	struct passwd *pw = getpwuid(geteuid());
	char who[64];
	snprintf(who, sizeof who, "%s", pw && pw->pw_name ? pw->pw_name : "unknown");
	struct kafka_producer p;
	if (kafka_producer_init(&p, c->rt.base, config_instance(SERVICE)) != 0) {
		kafka_producer_close(&p, 0);
		return -1;
	}
	c->audit_done.fn = cli_audit_done;
	int rc = snapshot_audit(&p, &c->res, "cli", who, &c->audit_done);
	int left = kafka_producer_close(&p, CLI_AUDIT_FLUSH_MS);
	if (rc != 0 || left > 0 || c->audit_acked != 1) {
		log_error(
		    "the backup.snapshot audit event was not delivered: check GW_KAFKA_BROKERS",
		    LS("snapshot_id", c->res.id));
		return -1;
	}
	log_info("backup.snapshot audit event delivered", LS("snapshot_id", c->res.id));
	return 0;
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
	if (settings_load(&cfg, SETTINGS_DB) != 0 || runtime_init(&c.rt, SERVICE) != 0 ||
	    store_open(&st, cfg.dir, 1) != 0)
		goto out;
	snap_up = 1;
	if (snapshot_init(&c.snap, c.rt.base, &st, cfg.url, cfg.pg_dump, cli_snapshot_done, &c) !=
	    0)
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
	if (settings_load(&cfg, SETTINGS_DB | SETTINGS_SERVE) != 0)
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
	return usage_error();
}
