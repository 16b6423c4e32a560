/* The snapshot state machine: pg_dump --version, an exported snapshot with the audit
 * state read inside it, then pg_dump -Fc --snapshot into a temporary file, published by
 * rename with its manifest. The dump streams through a pipe rather than straight into the
 * file so that it is encrypted before it touches the disk, the size and SHA-256 come for
 * free, and a write failure is ours to see and report. */
#include "snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit.h"
#include "auditstate.h"
#include "log.h"
#include "wire.h"

#define CONNECT_TIMEOUT_MS 15000
/* The audit counts scan whole tables: minutes on a large log is normal. */
#define QUERY_TIMEOUT_MS   (30 * 60 * 1000)
/* Start writeback every this many bytes, so the final fsync does not have a whole
 * dump's worth of dirty pages to flush while the loop waits. */
#define WRITEBACK_EVERY    (32LL << 20)

static void cleanup_run(struct snapshot *s)
{
	child_kill(&s->child);
	/* Closing ends the exported snapshot's transaction (the server rolls it back). */
	pgq_close(&s->db);
	if (s->catalog)
		PQclear(s->catalog);
	s->catalog = NULL;
	if (s->cw_up)
		crypt_writer_free(&s->cw);
	s->cw_up = 0;
	if (s->tmp_fd >= 0)
		close(s->tmp_fd);
	s->tmp_fd = -1;
	if (s->tmp_name[0])
		store_remove(s->store, s->tmp_name);
	s->tmp_name[0] = 0;
	if (s->md)
		EVP_MD_CTX_free(s->md);
	s->md = NULL;
}

static void deliver(struct snapshot *s)
{
	s->state = SNAP_DONE;
	event_active(s->finish, EV_TIMEOUT, 0);
}

/* Length of the valid UTF-8 sequence at p (as jansson judges it), 0 when invalid. */
static size_t utf8_len(const unsigned char *p)
{
	unsigned char c = p[0];
	size_t n;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0) ||
	    (c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90))
		return 0;
	return n;
}

/* pg_dump's stderr is arbitrary bytes; the error travels in JSON (logs, audit), which
 * needs valid UTF-8 without control characters. */
static void text_clean(char *s)
{
	unsigned char *p = (unsigned char *)s;
	while (*p) {
		size_t n = utf8_len(p);
		if (n == 0) {
			*p++ = '?';
		} else if (n == 1 && (*p < 0x20 || *p == 0x7f)) {
			*p++ = ' ';
		} else {
			p += n;
		}
	}
}

static void fail(struct snapshot *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(struct snapshot *s, const char *fmt, ...)
{
	char msg[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	text_clean(msg);
	cleanup_run(s);
	s->res.ok = 0;
	s->res.m.size = s->size;
	s->res.m.duration_ms = (wire_now_us() - s->start_us) / 1000;
	snprintf(s->res.error, sizeof s->res.error, "snapshot %s failed: %s", s->res.id, msg);
	log_error("snapshot failed", LS("snapshot_id", s->res.id), LS("error", msg),
		  LS("dir", s->store->path));
	deliver(s);
}

static void on_finish(evutil_socket_t fd, short what, void *arg)
{
	struct snapshot *s = arg;
	if (s->state != SNAP_DONE)
		return;
	/* done may start the next snapshot, which reuses s->res. */
	struct snapshot_result r = s->res;
	s->state = SNAP_IDLE;
	s->done(s->arg, &r);
}

static int on_out(void *arg, const void *buf, size_t n)
{
	struct snapshot *s = arg;
	if (s->state == SNAP_VERSION) {
		size_t room = sizeof s->tool_out - 1 - s->tool_len;
		size_t take = n < room ? n : room;
		memcpy(s->tool_out + s->tool_len, buf, take);
		s->tool_len += take;
		s->tool_out[s->tool_len] = 0;
		return 0;
	}
	if (s->state != SNAP_DUMP || s->tmp_fd < 0 || !s->cw_up)
		return -1;
	for (size_t i = 0; s->plain_size + (long long)i < 5 && i < n; i++)
		s->magic[s->plain_size + (long long)i] = ((const unsigned char *)buf)[i];
	s->plain_size += (long long)n;
	return crypt_writer_update(&s->cw, buf, n);
}

/* The encrypted bytes: into the temporary file and the digest. */
static int file_sink(void *arg, const void *buf, size_t n)
{
	struct snapshot *s = arg;
	if (store_write_all(s->tmp_fd, buf, n) != 0) {
		s->write_errno = errno;
		return -1;
	}
	if (EVP_DigestUpdate(s->md, buf, n) != 1) {
		s->write_errno = EIO;
		errno = EIO;
		return -1;
	}
	s->size += (long long)n;
	s->unsynced += (long long)n;
	if (s->unsynced >= WRITEBACK_EVERY) {
		s->unsynced = 0;
		/* Only starts writeback; failures surface again at fsync. */
		(void)sync_file_range(s->tmp_fd, 0, 0, SYNC_FILE_RANGE_WRITE);
	}
	return 0;
}

static void start_dump(struct snapshot *s)
{
	store_tmp_name(s->res.id, "", s->tmp_name, sizeof s->tmp_name);
	s->tmp_fd = store_tmp_create(s->store, s->tmp_name);
	if (s->tmp_fd < 0) {
		s->tmp_name[0] = 0; /* not ours to remove */
		fail(s, "cannot create a temporary file in %s", s->store->path);
		return;
	}
	s->md = EVP_MD_CTX_new();
	if (!s->md || EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) != 1) {
		fail(s, "cannot set up SHA-256");
		return;
	}
	if (crypt_writer_init(&s->cw, s->key, CRYPT_SEGMENT, file_sink, s) != 0) {
		crypt_writer_free(&s->cw);
		if (s->write_errno)
			fail(s, "cannot write %s/%s: %s", s->store->path, s->tmp_name,
			     strerror(s->write_errno));
		else
			fail(s, "cannot start encrypting: %s", s->cw.error);
		return;
	}
	s->cw_up = 1;
	/* The password reaches pg_dump as PGPASSWORD in its environment, which only our
	 * own user (and root) can read, as they could read our environment and memory
	 * anyway; argv is world-readable through ps and /proc. A password file would put
	 * the secret on disk, where a crash could leave it. The rest of the connection
	 * string (host, port, user, database, TLS files) is not secret and goes in argv. */
	char *dbarg = NULL, *snaparg = NULL;
	if ((s->src.conninfo[0] && asprintf(&dbarg, "--dbname=%s", s->src.conninfo) < 0) ||
	    asprintf(&snaparg, "--snapshot=%s", s->pg_snapshot) < 0) {
		free(dbarg);
		fail(s, "out of memory");
		return;
	}
	/* dbarg last: with no conninfo it is NULL and ends argv early. */
	char *argv[] = {
	    (char *)s->pg_dump, "--format=custom", "--no-password", snaparg, dbarg, NULL};
	char **env = source_child_env(&s->src, 1);
	if (!env) {
		free(dbarg);
		fail(s, "out of memory");
		return;
	}
	int rc = child_spawn(&s->child, s->pg_dump, argv, env);
	source_env_free(env);
	free(dbarg);
	free(snaparg);
	if (rc != 0) {
		fail(s, "cannot start %s", s->pg_dump);
		return;
	}
	s->state = SNAP_DUMP;
	log_info("pg_dump started", LS("snapshot_id", s->res.id), LI("pid", s->child.pid),
		 LS("file", s->tmp_name));
}

static void on_heads(void *arg, PGresult *res, const char *error);

static void audit_state_done(struct snapshot *s, const PGresult *heads, const char *source)
{
	char *js = auditstate_json(s->catalog, heads, source);
	size_t n = js ? strlen(js) : 0;
	if (!js || n >= sizeof s->res.m.audit) {
		free(js);
		fail(s, "the audit state does not fit the manifest (%zu bytes)", n);
		return;
	}
	memcpy(s->res.m.audit, js, n + 1);
	free(js);
	PQclear(s->catalog);
	s->catalog = NULL;
	start_dump(s);
}

static void on_catalog(void *arg, PGresult *res, const char *error)
{
	struct snapshot *s = arg;
	if (!res) {
		fail(s, "cannot read the audit tables: %s", error);
		return;
	}
	s->catalog = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
	char *sql = NULL;
	const char *source;
	if (!s->catalog || PQnfields(res) != 5 || auditstate_heads_sql(res, &sql, &source) != 0) {
		fail(s, "out of memory reading the audit tables");
		return;
	}
	if (!sql) {
		audit_state_done(s, NULL, source);
		return;
	}
	s->state = SNAP_HEADS;
	s->heads_source = source;
	int rc = pgq_query(&s->db, sql, QUERY_TIMEOUT_MS, on_heads);
	free(sql);
	if (rc != 0)
		fail(s, "cannot read the audit chain heads: %s", s->db.error);
}

static void on_heads(void *arg, PGresult *res, const char *error)
{
	struct snapshot *s = arg;
	if (!res) {
		fail(s, "cannot read the audit chain heads: %s", error);
		return;
	}
	audit_state_done(s, res, s->heads_source);
}

static void on_export(void *arg, PGresult *res, const char *error)
{
	struct snapshot *s = arg;
	if (!res || PQntuples(res) != 1 || PQnfields(res) != 1) {
		fail(s, "cannot export a database snapshot: %s", error ? error : "no result");
		return;
	}
	snprintf(s->pg_snapshot, sizeof s->pg_snapshot, "%s", PQgetvalue(res, 0, 0));
	s->state = SNAP_CATALOG;
	if (pgq_query(&s->db, auditstate_catalog_sql(), QUERY_TIMEOUT_MS, on_catalog) != 0)
		fail(s, "cannot read the audit tables: %s", s->db.error);
}

static void on_connect(void *arg, PGresult *res, const char *error)
{
	struct snapshot *s = arg;
	if (error) {
		fail(s, "cannot connect to the database: %s", error);
		return;
	}
	struct manifest *m = &s->res.m;
	snprintf(m->database, sizeof m->database, "%s", s->db.database);
	snprintf(m->server_version, sizeof m->server_version, "%s", s->db.server_version);
	m->server_version_num = s->db.server_version_num;
	/* The audit counts and pg_dump must see the same rows: pg_dump imports this
	 * transaction's snapshot, which stays valid while the transaction is open. */
	s->state = SNAP_EXPORT;
	if (pgq_query(
		&s->db,
		"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT pg_export_snapshot()",
		QUERY_TIMEOUT_MS, on_export) != 0)
		fail(s, "cannot export a database snapshot: %s", s->db.error);
}

static void version_done(struct snapshot *s)
{
	char why[CHILD_ERR_MAX + 128];
	if (!child_succeeded(&s->child)) {
		child_describe(&s->child, why, sizeof why);
		fail(s, "%s --version %s", s->pg_dump, why);
		return;
	}
	size_t n = strcspn(s->tool_out, "\r\n");
	s->tool_out[n] = 0;
	if (n == 0 || n >= sizeof s->res.m.tool_version) {
		fail(s, "%s --version printed no usable version line", s->pg_dump);
		return;
	}
	memcpy(s->res.m.tool_version, s->tool_out, n + 1);
	s->state = SNAP_CONNECT;
	if (pgq_connect(&s->db, s->base, s->url, CONNECT_TIMEOUT_MS, on_connect, s) != 0)
		fail(s, "cannot connect to the database: %s", s->db.error);
}

static void dump_done(struct snapshot *s)
{
	char why[CHILD_ERR_MAX + 128];
	char final[STORE_NAME_MAX];
	struct manifest *m = &s->res.m;
	if (s->write_errno) {
		fail(s, "cannot write %s/%s: %s", s->store->path, s->tmp_name,
		     strerror(s->write_errno));
		return;
	}
	if (!child_succeeded(&s->child)) {
		child_describe(&s->child, why, sizeof why);
		fail(s, "pg_dump %s", why);
		return;
	}
	if (s->plain_size < 5 || memcmp(s->magic, "PGDMP", 5) != 0) {
		fail(s, "pg_dump's output is not a custom-format archive (%lld bytes)",
		     s->plain_size);
		return;
	}
	if (crypt_writer_finish(&s->cw) != 0) {
		if (s->write_errno)
			fail(s, "cannot write %s/%s: %s", s->store->path, s->tmp_name,
			     strerror(s->write_errno));
		else
			fail(s, "encryption failed: %s", s->cw.error);
		return;
	}
	if (fsync(s->tmp_fd) != 0) {
		fail(s, "fsync of %s/%s failed: %s", s->store->path, s->tmp_name, strerror(errno));
		return;
	}
	int fd = s->tmp_fd;
	s->tmp_fd = -1;
	if (close(fd) != 0) {
		fail(s, "close of %s/%s failed: %s", s->store->path, s->tmp_name, strerror(errno));
		return;
	}
	unsigned char dg[EVP_MAX_MD_SIZE];
	unsigned int dlen = 0;
	if (EVP_DigestFinal_ex(s->md, dg, &dlen) != 1 || dlen != 32) {
		fail(s, "SHA-256 failed");
		return;
	}
	for (unsigned i = 0; i < dlen; i++)
		snprintf(m->sha256 + 2 * i, 3, "%02x", dg[i]);
	store_dump_name(s->res.id, final, sizeof final);
	if (store_publish(s->store, s->tmp_name, final) != 0) {
		fail(s, "cannot rename %s to %s in %s", s->tmp_name, final, s->store->path);
		return;
	}
	s->tmp_name[0] = 0;
	m->size = s->size;
	m->plain_size = s->plain_size;
	m->encrypted = 1;
	snprintf(m->encryption, sizeof m->encryption, "%s", CRYPT_SCHEME);
	snprintf(m->key_id, sizeof m->key_id, "%s", s->key->id);
	snprintf(m->agent_version, sizeof m->agent_version, "%s", MANIFEST_AGENT_VERSION);
	m->duration_ms = (wire_now_us() - s->start_us) / 1000;
	if (store_write_manifest(s->store, m) != 0) {
		/* A dump without its manifest is not a snapshot anyone can check: take it
		 * back rather than leave it looking complete. */
		store_remove(s->store, final);
		fail(s, "cannot write the manifest in %s", s->store->path);
		return;
	}
	cleanup_run(s);
	s->res.ok = 1;
	log_info("snapshot written", LS("snapshot_id", s->res.id), LS("dir", s->store->path),
		 LS("database", m->database), LI("size", m->size), LI("plain_size", m->plain_size),
		 LS("key_id", m->key_id), LS("sha256", m->sha256),
		 LI("duration_ms", m->duration_ms));
	deliver(s);
}

static void on_exit_child(void *arg)
{
	struct snapshot *s = arg;
	if (s->state == SNAP_VERSION)
		version_done(s);
	else if (s->state == SNAP_DUMP)
		dump_done(s);
}

int snapshot_init(struct snapshot *s, struct event_base *base, struct store *st, const char *url,
		  const char *pg_dump, const struct crypt_key *key,
		  void (*done)(void *arg, const struct snapshot_result *r), void *arg)
{
	char why[256];
	memset(s, 0, sizeof *s);
	s->base = base;
	s->store = st;
	s->url = url;
	s->pg_dump = pg_dump;
	s->key = key;
	s->done = done;
	s->arg = arg;
	s->tmp_fd = -1;
	s->child.out_fd = s->child.err_fd = -1; /* safe to free before child_init */
	if (!key || !key->set) {
		log_error("no backup key: set GW_BACKUP_KEY_FILE (64 hex digits, e.g. from "
			  "`openssl rand -hex 32`)");
		return -1;
	}
	if (source_parse(&s->src, url, why, sizeof why) != 0) {
		log_error("the database URL cannot be used: check GW_BACKUP_DATABASE_URL",
			  LS("error", why));
		return -1;
	}
	if (child_init(&s->child, base, on_out, on_exit_child, s) != 0)
		return -1;
	s->finish = event_new(base, -1, 0, on_finish, s);
	if (!s->finish) {
		log_error("cannot create snapshot events");
		return -1;
	}
	return 0;
}

void snapshot_free(struct snapshot *s)
{
	if (s->state != SNAP_IDLE && s->state != SNAP_DONE)
		cleanup_run(s);
	child_free(&s->child);
	if (s->finish)
		event_free(s->finish);
	s->finish = NULL;
	source_free(&s->src);
	s->state = SNAP_IDLE;
}

int snapshot_running(const struct snapshot *s)
{
	return s->state != SNAP_IDLE;
}

int snapshot_start(struct snapshot *s)
{
	if (s->state != SNAP_IDLE)
		return -1;
	memset(&s->res, 0, sizeof s->res);
	s->size = s->plain_size = s->unsynced = 0;
	s->pg_snapshot[0] = 0;
	s->write_errno = 0;
	s->tool_len = 0;
	s->tool_out[0] = 0;
	memset(s->magic, 0, sizeof s->magic);
	s->start_us = wire_now_us();
	time_t now = (time_t)(s->start_us / 1000000);
	struct manifest *m = &s->res.m;
	if (store_id_new(now, s->res.id) != 0) {
		snprintf(s->res.error, sizeof s->res.error, "cannot make a snapshot id");
		deliver(s);
		return 0;
	}
	memcpy(m->id, s->res.id, sizeof m->id);
	manifest_time_format(now, m->created_at, sizeof m->created_at);
	snprintf(m->format, sizeof m->format, "%s", MANIFEST_FORMAT_PG_DUMP_CUSTOM);
	log_info("snapshot started", LS("snapshot_id", s->res.id), LS("dir", s->store->path));
	s->state = SNAP_VERSION;
	char *argv[] = {(char *)s->pg_dump, "--version", NULL};
	char **env = source_child_env(&s->src, 0);
	if (!env) {
		fail(s, "out of memory");
		return 0;
	}
	int rc = child_spawn(&s->child, s->pg_dump, argv, env);
	source_env_free(env);
	if (rc != 0)
		fail(s, "cannot start %s --version", s->pg_dump);
	return 0;
}

void snapshot_abort(struct snapshot *s, const char *why)
{
	if (s->state == SNAP_IDLE || s->state == SNAP_DONE)
		return;
	fail(s, "aborted: %s", why);
}

int snapshot_audit(struct kafka_producer *p, const struct snapshot_result *r, const char *trigger,
		   const char *requested_by, struct kafka_done *d)
{
	json_t *extra =
	    json_pack("{s:s,s:s,s:I,s:I}", "snapshot_id", r->id, "trigger", trigger, "size",
		      (json_int_t)r->m.size, "duration_ms", (json_int_t)r->m.duration_ms);
	if (!extra) {
		log_error("cannot build the audit event", LS("snapshot_id", r->id));
		return -1;
	}
	int bad =
	    json_object_set_new(extra, "sha256", r->ok ? json_string(r->m.sha256) : json_null());
	if (r->m.database[0])
		bad |= json_object_set_new(extra, "database", json_string(r->m.database));
	if (r->ok)
		bad |= json_object_set_new(extra, "key_id", json_string(r->m.key_id));
	if (requested_by)
		bad |= json_object_set_new(extra, "requested_by", json_string(requested_by));
	if (bad) {
		log_error("cannot build the audit event", LS("snapshot_id", r->id));
		json_decref(extra);
		return -1;
	}
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "backup.snapshot";
	ev.outcome = r->ok ? "ok" : "error";
	ev.reason = r->ok ? trigger : r->error;
	ev.extra = extra;
	int rc = audit_emit(p, &ev, NULL, d);
	json_decref(extra);
	if (rc != 0)
		log_error("cannot emit the backup.snapshot audit event", LS("snapshot_id", r->id));
	return rc;
}
